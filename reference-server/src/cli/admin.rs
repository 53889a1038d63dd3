//! `reference-server admin ...`: the administration surface of the vendor's
//! cmdlets, by purpose, as calls on the admin API. Every command prints the
//! server's JSON answer.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pchat_protocol::client::{Client, StreamItem};
use pchat_protocol::{self as wire, Event, Principal};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Args)]
pub struct AdminArgs {
    /// The server's base URL.
    #[arg(long, env = "PCHAT_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An administrator's bearer token. Without it, an operator token is
    /// minted from the data directory's signing key.
    #[arg(long, env = "PCHAT_TOKEN")]
    token: Option<String>,
    /// The server's data directory (for the signing key).
    #[arg(long, env = "PCHAT_DATA_DIR", default_value = "pchat-data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Users.
    #[command(subcommand)]
    User(UserCmd),
    /// User groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Policies: whether users may use Persistent Chat.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Persistent Chat administrators.
    #[command(subcommand)]
    Admins(AdminsCmd),
    /// Categories.
    #[command(subcommand)]
    Category(CategoryCmd),
    /// Rooms.
    #[command(subcommand)]
    Room(RoomCmd),
    /// Global configuration (messages on join, participant update limit, disclaimer ...).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Add-ins.
    #[command(subcommand)]
    Addin(AddinCmd),
    /// Compliance service settings and export.
    #[command(subcommand)]
    Compliance(ComplianceCmd),
    /// Load users, groups, categories and rooms from a JSON provisioning file.
    Provision { file: PathBuf },
    /// Print a bearer token for a user.
    Token {
        user: String,
        #[arg(long)]
        ttl_s: Option<u64>,
    },
    /// End-to-end check: two users join a room, exchange a message pair, and
    /// the latency is reported (the vendor's synthetic transaction).
    Test {
        #[arg(long)]
        room: u64,
        #[arg(long)]
        user_a: String,
        #[arg(long)]
        user_b: String,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    Add {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        password: Option<String>,
        #[arg(long)]
        policy: Option<String>,
        #[arg(long)]
        admin: bool,
    },
    Show {
        name: String,
    },
    List {
        #[arg(long)]
        prefix: Option<String>,
    },
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    SetPassword {
        name: String,
        password: String,
    },
    SetPolicy {
        name: String,
        policy: Option<String>,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum GroupCmd {
    Add {
        name: String,
        /// Members as user:<name> or group:<name>.
        #[arg(long = "member")]
        members: Vec<Principal>,
    },
    Show {
        name: String,
    },
    Change {
        name: String,
        #[arg(long)]
        add: Vec<Principal>,
        #[arg(long)]
        remove: Vec<Principal>,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    List,
    /// Create or change a policy; the policy named "global" applies to users without one.
    Set {
        name: String,
        #[arg(long, action = clap::ArgAction::Set)]
        enabled: bool,
    },
}

#[derive(Subcommand)]
enum AdminsCmd {
    List,
    Add { user: String },
    Remove { user: String },
}

#[derive(Subcommand)]
enum CategoryCmd {
    List,
    Show {
        id: u64,
    },
    Add {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Allowed principals (default: group:everyone).
        #[arg(long)]
        allowed: Vec<Principal>,
        #[arg(long)]
        denied: Vec<Principal>,
        #[arg(long = "creator")]
        creators: Vec<Principal>,
        #[arg(long)]
        no_invitations: bool,
        #[arg(long)]
        no_file_upload: bool,
        #[arg(long)]
        no_history: bool,
    },
    Set {
        id: u64,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, action = clap::ArgAction::Set)]
        invitations: Option<bool>,
        #[arg(long, action = clap::ArgAction::Set)]
        history: Option<bool>,
        #[arg(long, action = clap::ArgAction::Set)]
        file_upload: Option<bool>,
        #[arg(long = "creator")]
        creators: Option<Vec<Principal>>,
    },
    Delete {
        id: u64,
    },
}

#[derive(Subcommand)]
enum RoomCmd {
    List {
        #[arg(long)]
        q: Option<String>,
    },
    Show {
        id: u64,
    },
    Add {
        name: String,
        #[arg(long)]
        category: u64,
        #[arg(long)]
        description: Option<String>,
        /// normal or auditorium
        #[arg(long = "type")]
        room_type: Option<String>,
        /// open, closed or secret
        #[arg(long)]
        privacy: Option<String>,
        #[arg(long = "manager")]
        managers: Vec<Principal>,
        #[arg(long = "presenter")]
        presenters: Vec<Principal>,
        #[arg(long = "member")]
        members: Vec<Principal>,
    },
    Set {
        id: u64,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        privacy: Option<String>,
        #[arg(long, action = clap::ArgAction::Set)]
        disabled: Option<bool>,
        #[arg(long)]
        category: Option<u64>,
    },
    /// Change a list: managers, presenters or members.
    Lists {
        id: u64,
        list: String,
        #[arg(long)]
        add: Vec<Principal>,
        #[arg(long)]
        remove: Vec<Principal>,
    },
    Delete {
        id: u64,
    },
    /// Clear history older than a time (RFC 3339).
    Clear {
        id: u64,
        before: String,
    },
    /// Remove or replace messages by author, time range and keywords.
    RemoveMessages {
        id: u64,
        #[arg(long)]
        author: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        keywords: Option<String>,
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    Show,
    Set {
        #[arg(long)]
        messages_on_join: Option<u32>,
        #[arg(long)]
        participant_update_limit: Option<u32>,
        #[arg(long)]
        disclaimer: Option<String>,
        #[arg(long)]
        room_management_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum AddinCmd {
    List,
    Add { name: String, url: String },
    Delete { name: String },
}

#[derive(Subcommand)]
enum ComplianceCmd {
    Show,
    Set {
        #[arg(long, action = clap::ArgAction::Set)]
        enabled: Option<bool>,
        #[arg(long)]
        interval_s: Option<u64>,
    },
    /// Export everything pending now.
    Export,
}

fn parse_enum<T: serde::de::DeserializeOwned>(
    field: &str,
    v: Option<String>,
) -> anyhow::Result<Option<T>> {
    v.map(|s| {
        serde_json::from_value(Value::String(s.clone()))
            .with_context(|| format!("bad {field}: {s:?}"))
    })
    .transpose()
}

pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    let token = match args.token {
        Some(t) => t,
        None => {
            let keys = reference_server::auth::Keys::load(&args.data_dir).with_context(|| {
                format!(
                    "no --token given and cannot read the signing key in {} (use --data-dir)",
                    args.data_dir.display()
                )
            })?;
            keys.issue(
                reference_server::domain::OPERATOR,
                reference_server::auth::now_s() + 3600,
            )
        }
    };
    let c = Client::new(args.url).as_token(token);
    let out: Value = match args.command {
        AdminCommand::User(cmd) => match cmd {
            UserCmd::Add {
                name,
                display_name,
                password,
                policy,
                admin,
            } => {
                let req = wire::CreateUser {
                    name,
                    display_name,
                    password,
                    policy,
                    admin: Some(admin),
                    disabled: None,
                };
                c.post("/v1/admin/users", &req).await?
            }
            UserCmd::Show { name } => c.get(&format!("/v1/admin/users/{name}")).await?,
            UserCmd::List { prefix } => {
                let q = prefix.map(|p| format!("?prefix={p}")).unwrap_or_default();
                c.get(&format!("/v1/admin/users{q}")).await?
            }
            UserCmd::Disable { name } => {
                c.patch(
                    &format!("/v1/admin/users/{name}"),
                    &json!({"disabled": true}),
                )
                .await?
            }
            UserCmd::Enable { name } => {
                c.patch(
                    &format!("/v1/admin/users/{name}"),
                    &json!({"disabled": false}),
                )
                .await?
            }
            UserCmd::SetPassword { name, password } => {
                c.patch(
                    &format!("/v1/admin/users/{name}"),
                    &json!({"password": password}),
                )
                .await?
            }
            UserCmd::SetPolicy { name, policy } => {
                c.patch(
                    &format!("/v1/admin/users/{name}"),
                    &json!({"policy": policy}),
                )
                .await?
            }
            UserCmd::Delete { name } => delete(&c, &format!("/v1/admin/users/{name}")).await?,
        },
        AdminCommand::Group(cmd) => match cmd {
            GroupCmd::Add { name, members } => {
                c.post("/v1/admin/groups", &wire::CreateGroup { name, members })
                    .await?
            }
            GroupCmd::Show { name } => c.get(&format!("/v1/admin/groups/{name}")).await?,
            GroupCmd::Change { name, add, remove } => {
                c.patch(
                    &format!("/v1/admin/groups/{name}"),
                    &wire::ChangeList { add, remove },
                )
                .await?
            }
            GroupCmd::Delete { name } => delete(&c, &format!("/v1/admin/groups/{name}")).await?,
        },
        AdminCommand::Policy(cmd) => match cmd {
            PolicyCmd::List => c.get("/v1/admin/policies").await?,
            PolicyCmd::Set { name, enabled } => {
                c.call::<Value>(
                    Method::PUT,
                    &format!("/v1/admin/policies/{name}"),
                    Some(&json!({"enabled": enabled})),
                )
                .await?
                .body
            }
        },
        AdminCommand::Admins(cmd) => match cmd {
            AdminsCmd::List => c.get("/v1/admin/administrators").await?,
            AdminsCmd::Add { user } => {
                c.post("/v1/admin/administrators", &json!({"add": [user]}))
                    .await?
            }
            AdminsCmd::Remove { user } => {
                c.post("/v1/admin/administrators", &json!({"remove": [user]}))
                    .await?
            }
        },
        AdminCommand::Category(cmd) => match cmd {
            CategoryCmd::List => c.get("/v1/admin/categories").await?,
            CategoryCmd::Show { id } => c.get(&format!("/v1/admin/categories/{id}")).await?,
            CategoryCmd::Add {
                name,
                description,
                allowed,
                denied,
                creators,
                no_invitations,
                no_file_upload,
                no_history,
            } => {
                let req = wire::CreateCategory {
                    name,
                    description,
                    allowed: (!allowed.is_empty()).then_some(allowed),
                    denied: Some(denied),
                    creators: Some(creators),
                    invitations: Some(!no_invitations),
                    file_upload: Some(!no_file_upload),
                    history: Some(!no_history),
                };
                c.post("/v1/admin/categories", &req).await?
            }
            CategoryCmd::Set {
                id,
                name,
                description,
                invitations,
                history,
                file_upload,
                creators,
            } => {
                let req = wire::UpdateCategory {
                    name,
                    description,
                    invitations,
                    history,
                    file_upload,
                    creators,
                    ..Default::default()
                };
                c.patch(&format!("/v1/admin/categories/{id}"), &req).await?
            }
            CategoryCmd::Delete { id } => delete(&c, &format!("/v1/admin/categories/{id}")).await?,
        },
        AdminCommand::Room(cmd) => match cmd {
            RoomCmd::List { q } => {
                let q = q
                    .map(|q| format!("?q={q}&limit=500"))
                    .unwrap_or_else(|| "?limit=500".into());
                c.get(&format!("/v1/rooms{q}")).await?
            }
            RoomCmd::Show { id } => c.get(&format!("/v1/rooms/{id}")).await?,
            RoomCmd::Add {
                name,
                category,
                description,
                room_type,
                privacy,
                managers,
                presenters,
                members,
            } => {
                let req = wire::CreateRoom {
                    name,
                    category,
                    description,
                    room_type: parse_enum("type", room_type)?,
                    privacy: parse_enum("privacy", privacy)?,
                    invitations: None,
                    addin: None,
                    managers: Some(managers),
                    presenters: Some(presenters),
                    members: Some(members),
                };
                c.post("/v1/rooms", &req).await?
            }
            RoomCmd::Set {
                id,
                name,
                description,
                privacy,
                disabled,
                category,
            } => {
                let req = wire::UpdateRoom {
                    name,
                    description,
                    privacy: parse_enum("privacy", privacy)?,
                    disabled,
                    category,
                    ..Default::default()
                };
                c.patch(&format!("/v1/rooms/{id}"), &req).await?
            }
            RoomCmd::Lists {
                id,
                list,
                add,
                remove,
            } => {
                c.post(
                    &format!("/v1/rooms/{id}/lists/{list}"),
                    &wire::ChangeList { add, remove },
                )
                .await?
            }
            RoomCmd::Delete { id } => delete(&c, &format!("/v1/rooms/{id}")).await?,
            RoomCmd::Clear { id, before } => {
                c.post(
                    &format!("/v1/admin/rooms/{id}/clear"),
                    &wire::ClearHistory { before },
                )
                .await?
            }
            RoomCmd::RemoveMessages {
                id,
                author,
                from,
                to,
                keywords,
                replace,
            } => {
                let req = wire::RemoveMessages {
                    author,
                    from,
                    to,
                    keywords,
                    replace,
                };
                c.post(&format!("/v1/admin/rooms/{id}/remove-messages"), &req)
                    .await?
            }
        },
        AdminCommand::Config(cmd) => match cmd {
            ConfigCmd::Show => c.get("/v1/admin/config").await?,
            ConfigCmd::Set {
                messages_on_join,
                participant_update_limit,
                disclaimer,
                room_management_url,
            } => {
                let req = wire::UpdateServiceConfig {
                    messages_on_join,
                    participant_update_limit,
                    disclaimer: disclaimer.map(Some),
                    room_management_url: room_management_url.map(Some),
                    max_file_size_kb: None,
                };
                c.patch("/v1/admin/config", &req).await?
            }
        },
        AdminCommand::Addin(cmd) => match cmd {
            AddinCmd::List => c.get("/v1/admin/addins").await?,
            AddinCmd::Add { name, url } => {
                c.post("/v1/admin/addins", &wire::AddIn { name, url })
                    .await?
            }
            AddinCmd::Delete { name } => delete(&c, &format!("/v1/admin/addins/{name}")).await?,
        },
        AdminCommand::Compliance(cmd) => match cmd {
            ComplianceCmd::Show => c.get("/v1/admin/compliance").await?,
            ComplianceCmd::Set {
                enabled,
                interval_s,
            } => {
                c.patch(
                    "/v1/admin/compliance",
                    &wire::UpdateComplianceConfig {
                        enabled,
                        interval_s,
                    },
                )
                .await?
            }
            ComplianceCmd::Export => c.post("/v1/admin/compliance/export", &json!({})).await?,
        },
        AdminCommand::Provision { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let doc: wire::Provision = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a provisioning document", file.display()))?;
            let started = Instant::now();
            let mut out: Value = c.post("/v1/admin/provision", &doc).await?;
            if let Some(o) = out.as_object_mut() {
                o.remove("room_ids");
                o.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
            }
            out
        }
        AdminCommand::Token { user, ttl_s } => {
            let resp: wire::BulkTokenResponse = c
                .post(
                    "/v1/admin/tokens",
                    &wire::BulkTokenRequest {
                        users: vec![user.clone()],
                        ttl_s,
                    },
                )
                .await?;
            println!(
                "{}",
                resp.tokens
                    .get(&user)
                    .context("the server returned no token")?
            );
            return Ok(());
        }
        AdminCommand::Test {
            room,
            user_a,
            user_b,
        } => synthetic_test(&c, room, &user_a, &user_b).await?,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn delete(c: &Client, path: &str) -> anyhow::Result<Value> {
    let status = c.call_empty(Method::DELETE, path, None::<&()>).await?;
    Ok(json!({ "status": status }))
}

/// Signs two users in, joins both to a room, posts one message from each and
/// waits for the other to receive it; reports the round trip.
async fn synthetic_test(admin: &Client, room: u64, a: &str, b: &str) -> anyhow::Result<Value> {
    let tokens: wire::BulkTokenResponse = admin
        .post(
            "/v1/admin/tokens",
            &wire::BulkTokenRequest {
                users: vec![a.into(), b.into()],
                ttl_s: Some(300),
            },
        )
        .await
        .context("could not get tokens for the test users")?;
    let ca = admin.as_token(tokens.tokens[a].clone());
    let cb = admin.as_token(tokens.tokens[b].clone());
    let mut streams = Vec::new();
    for (c, who) in [(&ca, a), (&cb, b)] {
        let mut s = c
            .stream("synthetic-test", &[])
            .await
            .with_context(|| format!("{who} could not open a stream"))?;
        s.next().await?;
        c.join(room, "synthetic-test", None)
            .await
            .with_context(|| format!("{who} could not join room {room}"))?;
        streams.push(s);
    }
    let mut results = Vec::new();
    for (from, to, name) in [(&ca, 1usize, a), (&cb, 0usize, b)] {
        let text = format!(
            "synthetic test from {name} at {}",
            reference_server::auth::now_s()
        );
        let started = Instant::now();
        let posted = from
            .post_message(
                room,
                &wire::PostMessage {
                    text: text.clone(),
                    kind: None,
                    title: None,
                    client_key: None,
                },
            )
            .await
            .with_context(|| format!("{name} could not post"))?;
        let ack_ms = started.elapsed().as_secs_f64() * 1000.0;
        let received = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match streams[to].next().await? {
                    StreamItem::Event(Event::Message(m)) if m.seq == posted.body.seq => {
                        return Ok::<_, anyhow::Error>(())
                    }
                    StreamItem::Closed(code, reason) => bail!("stream closed ({code:?}) {reason}"),
                    _ => continue,
                }
            }
        })
        .await;
        match received {
            Ok(Ok(())) => results.push(json!({"from": name, "ack_ms": ack_ms, "delivered_ms": started.elapsed().as_secs_f64() * 1000.0})),
            Ok(Err(e)) => bail!("the message from {name} was not delivered: {e}"),
            Err(_) => bail!("the message from {name} was not delivered within 10 s"),
        }
    }
    for (c, s) in [(&ca, streams.remove(0)), (&cb, streams.remove(0))] {
        let _ = c
            .call_empty(
                Method::POST,
                &format!("/v1/rooms/{room}/leave"),
                Some(&json!({"endpoint": "synthetic-test"})),
            )
            .await;
        let _ = s.close().await;
    }
    Ok(json!({ "result": "success", "exchanges": results }))
}
