//! Disaster recovery: a pool on a PostgreSQL primary with a synchronous
//! streaming standby as its backup pool's store. The whole site dies (nodes
//! killed, database stopped at once); `pool failover` promotes the standby;
//! the backup pool's node starts and serves every acknowledged message.
//! Also: the published topology decides which nodes may start, and rooms
//! homed in another pool get `wrong_pool` (PC-17.1a).

mod support;

use std::process::Command;

use pchat_protocol::client::Client;
use pchat_protocol::{self as wire, ErrorCode};
use serde_json::json;
use support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_reference-server"))
        .args(args)
        .env("PCHAT_LOG__FILTER", "warn")
        .output()
        .expect("run reference-server")
}

fn node_env<'a>(
    store: &'a str,
    compliance: &'a str,
    name: &'a str,
    listen: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("PCHAT_STORE__URL", store),
        ("PCHAT_STORE__COMPLIANCE_URL", compliance),
        ("PCHAT_STORE__NODE", name),
        ("PCHAT_LISTEN", listen),
        ("PCHAT_LIMITS__POST_RATE_PER_S", "1000"),
        ("PCHAT_LIMITS__POST_BURST", "1000"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_fails_over_to_its_backup_and_loses_no_acknowledged_message() {
    if let Err(why) = pgcluster::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to start PostgreSQL: {why}"
        );
        eprintln!("SKIPPED (failover): {why}");
        return;
    }
    let mut primary = pgcluster::Cluster::start().unwrap();
    primary.create_database("chat").unwrap();
    primary.create_database("compliance").unwrap();
    let standby = pgcluster::Cluster::start_standby(&primary, "dr").unwrap();
    // From now on every commit waits until the standby named "dr" has it.
    primary
        .psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = 'dr'",
        )
        .unwrap();
    primary.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    let mut sync = String::new();
    for _ in 0..100 {
        sync = primary
            .psql("postgres", "SELECT sync_state FROM pg_stat_replication")
            .unwrap();
        if sync == "sync" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(sync, "sync", "the standby replicates synchronously");

    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let topo = format!(
        r#"
[[pool]]
name = "chat1"
edition = "enterprise"
store = "{p_chat}"
compliance_store = "{p_comp}"
backup = "chat1-dr"
nodes = [{{ name = "fe1", url = "{u0}" }}, {{ name = "fe2", url = "{u1}" }}]

[[pool]]
name = "chat1-dr"
edition = "enterprise"
store = "{s_chat}"
compliance_store = "{s_comp}"
nodes = [{{ name = "dr1", url = "{u2}" }}]

[[pool]]
name = "far"
edition = "enterprise"
store = "postgres://postgres@far.invalid:5432/chat"
compliance_store = "postgres://postgres@far.invalid:5432/compliance"
nodes = [{{ name = "far1", url = "{u3}" }}]
"#,
        p_chat = primary.url("chat"),
        p_comp = primary.url("compliance"),
        s_chat = standby.url("chat"),
        s_comp = standby.url("compliance"),
        u0 = url(ports[0]),
        u1 = url(ports[1]),
        u2 = url(ports[2]),
        u3 = url(ports[3]),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topology.toml");
    std::fs::write(&file, &topo).unwrap();
    let file_s = file.to_str().unwrap();
    let out = cli(&["topology", "validate", file_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["topology", "publish", file_s, "--pool", "chat1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let data = dir.path().join("data");
    let (p_chat, p_comp) = (primary.url("chat"), primary.url("compliance"));
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();

    // Only the active nodes of the pool serving this store may start on it.
    for (name, why) in [
        ("stranger", "not in the published topology"),
        ("dr1", "belongs to pool"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reference-server"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data);
        for (k, v) in node_env(&p_chat, &p_comp, name, "127.0.0.1:0") {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{name} must not start");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refusing to start") && err.contains(why),
            "{name}: {err}"
        );
    }

    let mut fe1 =
        TestServer::start_node(&data, &node_env(&p_chat, &p_comp, "fe1", &listen[0])).await;
    let mut fe2 =
        TestServer::start_node(&data, &node_env(&p_chat, &p_comp, "fe2", &listen[1])).await;
    fe1.admin_put("/v1/admin/policies/global", json!({"enabled": true}))
        .await;
    let users: Vec<String> = {
        for n in ["alice", "bob"] {
            fe1.admin_post("/v1/admin/users", json!({ "name": n }))
                .await;
        }
        let resp: wire::BulkTokenResponse = fe1
            .admin
            .post("/v1/admin/tokens", &json!({ "users": ["alice", "bob"] }))
            .await
            .unwrap();
        vec![resp.tokens["alice"].clone(), resp.tokens["bob"].clone()]
    };
    let cat = fe1.category("general", json!({})).await;
    let room = fe2.room("lobby", cat, json!({ "privacy": "open" })).await;
    assert!(
        (1..(1u64 << 40)).contains(&room),
        "pool chat1 homes ids of its own range"
    );

    // Both nodes take posts; every acknowledged one is remembered.
    let mut acked: Vec<(u64, String)> = Vec::new();
    for (i, (node, token)) in [(&fe1, &users[0]), (&fe2, &users[1])].iter().enumerate() {
        let c = Client::new(node.base.clone()).as_token(token.as_str());
        // The room was created through fe2: fe1 learns of it from the
        // store's log shortly after.
        let mut known = false;
        for _ in 0..200 {
            if c.history(room, "limit=1").await.is_ok() {
                known = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(known, "room {room} never reached {}", node.base);
        for n in 0..25 {
            let m = c
                .post_message(room, &post(&format!("{i}-{n}")))
                .await
                .unwrap();
            acked.push((m.body.seq, m.body.text));
        }
    }

    // The site dies: nodes killed, the primary database stopped at once.
    fe1.kill9();
    fe2.kill9();
    primary.stop(false).unwrap();

    let out = cli(&["pool", "failover", "--topology", file_s, "--pool", "chat1"]);
    assert!(
        out.status.success(),
        "failover: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let (s_chat, s_comp) = (standby.url("chat"), standby.url("compliance"));
    let dr1 = TestServer::start_node(&data, &node_env(&s_chat, &s_comp, "dr1", &listen[2])).await;
    let alice = Client::new(dr1.base.clone()).as_token(users[0].as_str());
    let history = alice.history(room, "after=0&limit=500").await.unwrap();
    let kept: Vec<(u64, String)> = history
        .messages
        .iter()
        .map(|m| (m.seq, m.text.clone()))
        .collect();
    acked.sort();
    assert_eq!(
        kept, acked,
        "recovery point: every acknowledged message is on the backup"
    );
    let next = alice
        .post_message(room, &post("after the failover"))
        .await
        .unwrap();
    assert_eq!(next.body.seq, 51);

    // The pools as the backup sees them.
    let pools: wire::Pools = dr1.admin.get("/v1/admin/pools").await.unwrap();
    let state = |name: &str| pools.pools.iter().find(|p| p.name == name).unwrap().clone();
    assert_eq!(state("chat1").state, "failed_over");
    assert_eq!(state("chat1-dr").state, "active");
    assert_eq!(state("chat1-dr").serving, vec!["chat1", "chat1-dr"]);
    assert_eq!(state("chat1-dr").nodes[0].alive, Some(true));

    // A room of another pool: told where to go, whatever the id's fate.
    let far_room = 2 * (1u64 << 40) + 7;
    let err = alice.history(far_room, "").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::WrongPool), "{err}");
    let body = format!("{err:?}");
    assert!(
        body.contains(&url(ports[3])),
        "location names pool far's node: {body}"
    );

    // Failback: the primary site's database is rebuilt as a standby of the
    // backup's (a new cluster here, so the topology names its new address),
    // the backup pool stops, `pool failback` promotes the rebuilt database,
    // and the pool's own node serves everything again.
    drop(dr1);
    let rebuilt = pgcluster::Cluster::start_standby(&standby, "home").unwrap();
    let topo2 = topo
        .replace(&primary.url("chat"), &rebuilt.url("chat"))
        .replace(&primary.url("compliance"), &rebuilt.url("compliance"));
    let file2 = dir.path().join("topology-2.toml");
    std::fs::write(&file2, topo2).unwrap();
    let file2_s = file2.to_str().unwrap();
    // A rebuilt standby must have caught up before it is promoted.
    let mut caught_up = String::new();
    for _ in 0..100 {
        caught_up = rebuilt
            .psql("chat", "SELECT count(*) FROM messages")
            .unwrap_or_default();
        if caught_up == "51" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(caught_up, "51");
    let out = cli(&["pool", "failback", "--topology", file2_s, "--pool", "chat1"]);
    assert!(
        out.status.success(),
        "failback: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (r_chat, r_comp) = (rebuilt.url("chat"), rebuilt.url("compliance"));
    let fe1 = TestServer::start_node(&data, &node_env(&r_chat, &r_comp, "fe1", &listen[0])).await;
    let alice = Client::new(fe1.base.clone()).as_token(users[0].as_str());
    let history = alice.history(room, "after=0&limit=500").await.unwrap();
    assert_eq!(history.messages.len(), 51, "everything is back home");
    let pools: wire::Pools = fe1.admin.get("/v1/admin/pools").await.unwrap();
    let state = |name: &str| pools.pools.iter().find(|p| p.name == name).unwrap().clone();
    assert_eq!(state("chat1").state, "active");
    assert_eq!(state("chat1-dr").state, "standby");
    // The backup pool's node may not serve the rooms any more.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reference-server"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data);
    for (k, v) in node_env(&r_chat, &r_comp, "dr1", "127.0.0.1:0") {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "dr1 must not start after the failback"
    );
}
