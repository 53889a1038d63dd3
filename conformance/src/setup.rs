//! Getting the accounts and the category of a run ([`World`]) in one of the
//! profile's three ways: through the admin API, from pre-made accounts, or
//! from a provisioning command's JSON.

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::ctx::{Hook, User, World};
use crate::profile::{Account, Fixtures, Profile};

const ROLES: [&str; 4] = ["manager", "presenter", "member", "outsider"];

/// Builds the run's world. `admin` is the administrator token, if any.
pub async fn world(
    http: &reqwest::Client,
    base: &str,
    ns: &str,
    profile: &Profile,
    admin: Option<String>,
) -> anyhow::Result<World> {
    let policy = match &admin {
        Some(token) => Some(create_policy(http, base, token, ns).await?),
        None => None,
    };
    let fixtures = if let Some(f) = &profile.fixtures {
        Some(f.clone())
    } else if let Some(cmd) = &profile.provision_command {
        let out = Hook::Command(cmd.clone())
            .call(ns)
            .await
            .context("provision_command failed")?;
        let f: Fixtures = serde_json::from_str(&out)
            .with_context(|| format!("provision_command did not print fixtures JSON: {out}"))?;
        Some(f)
    } else {
        None
    };
    match (fixtures, admin) {
        (Some(f), admin) => {
            let mut users = Vec::new();
            for role in ROLES {
                let acct = f
                    .users
                    .get(role)
                    .with_context(|| format!("the fixtures lack the `{role}` account"))?;
                users.push(account(http, base, acct).await.with_context(|| {
                    format!("cannot act as the `{role}` account {}", acct.name)
                })?);
            }
            let [manager, presenter, member, outsider] =
                <[User; 4]>::try_from(users).expect("four roles, four users");
            Ok(World {
                admin,
                manager,
                presenter,
                member,
                outsider,
                category: f.category,
                policy,
            })
        }
        (None, Some(admin)) => provision(http, base, ns, admin, policy).await,
        (None, None) => bail!("no administrator token and no fixtures: nothing to test with"),
    }
}

async fn create_policy(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    ns: &str,
) -> anyhow::Result<String> {
    let name = format!("{ns}-on");
    call(
        http,
        reqwest::Method::PUT,
        &format!("{base}/v1/admin/policies/{name}"),
        Some(token),
        json!({"enabled": true}),
    )
    .await
    .context("cannot create the run's policy with the admin token")?;
    Ok(name)
}

/// Creates the four users and a category through the admin API.
async fn provision(
    http: &reqwest::Client,
    base: &str,
    ns: &str,
    admin: String,
    policy: Option<String>,
) -> anyhow::Result<World> {
    let names: Vec<String> = ROLES.iter().map(|r| format!("{ns}-{r}")).collect();
    let users: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "password": format!("pw-{n}"), "policy": policy}))
        .collect();
    call(
        http,
        reqwest::Method::POST,
        &format!("{base}/v1/admin/provision"),
        Some(&admin),
        json!({ "users": users }),
    )
    .await
    .context("provisioning the run's users")?;
    let cat = call(
        http,
        reqwest::Method::POST,
        &format!("{base}/v1/admin/categories"),
        Some(&admin),
        json!({"name": format!("{ns}-cat"), "creators": [format!("user:{}", names[0])]}),
    )
    .await
    .context("creating the run's category")?;
    let tokens = call(
        http,
        reqwest::Method::POST,
        &format!("{base}/v1/admin/tokens"),
        Some(&admin),
        json!({ "users": names }),
    )
    .await
    .context("issuing the run's tokens")?;
    let mut users = names.iter().map(|n| {
        let token = tokens["tokens"][n].as_str().unwrap_or_default().to_owned();
        User {
            name: n.clone(),
            token,
            password: Some(format!("pw-{n}")),
        }
    });
    let mut next = || users.next().expect("four names were made");
    Ok(World {
        manager: next(),
        presenter: next(),
        member: next(),
        outsider: next(),
        category: cat["id"].as_u64().context("no category id")?,
        admin: Some(admin),
        policy,
    })
}

async fn account(http: &reqwest::Client, base: &str, a: &Account) -> anyhow::Result<User> {
    let token = match (&a.token, &a.password) {
        (Some(t), _) => t.clone(),
        (None, Some(pw)) => {
            let v = call(
                http,
                reqwest::Method::POST,
                &format!("{base}/v1/auth/token"),
                None,
                json!({"user": a.name, "password": pw}),
            )
            .await?;
            v["token"]
                .as_str()
                .context("no token in the sign-in answer")?
                .to_owned()
        }
        (None, None) => bail!("account {} has neither token nor password", a.name),
    };
    Ok(User {
        name: a.name.clone(),
        token,
        password: a.password.clone(),
    })
}

/// One JSON call for set-up; any non-2xx answer is an error.
pub async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut rb = http.request(method.clone(), url).json(&body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let resp = rb.send().await.with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{method} {url}: {status} {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}
