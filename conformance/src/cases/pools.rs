//! §17 pools: applies only to deployments of several pools, which the
//! profile declares by naming a room homed in a pool other than the target's.

use serde_json::{json, Value};

use super::{case, Case};
use crate::ctx::{Check, Ctx, Flaw};
use crate::{check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![case!(
        "PC-17.1a",
        rooms_of_other_pools_answer_wrong_pool,
        Pools
    )]
}

async fn rooms_of_other_pools_answer_wrong_pool(cx: &Ctx) -> Check {
    let room = cx.foreign_room.ok_or_else(|| {
        Flaw::Skip("not applicable: the profile declares no other pool ([pools])".into())
    })?;
    let m = &cx.w.member;
    let admin = cx.admin()?;
    let ops = [
        cx.get(format!("/v1/rooms/{room}"))
            .as_user(m)
            .send()
            .await?,
        cx.get(format!("/v1/rooms/{room}/messages"))
            .as_user(m)
            .send()
            .await?,
        cx.post(format!("/v1/rooms/{room}/messages"))
            .bearer(&admin)
            .json(json!({"text": "must have no effect"}))
            .send()
            .await?,
        cx.post(format!("/v1/rooms/{room}/join"))
            .as_user(m)
            .json(json!({"endpoint": cx.endpoint(m)}))
            .send()
            .await?,
    ];
    let mut location = None;
    for r in &ops {
        r.err(421, "wrong_pool")?;
        let loc = r.body["error"]["location"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        check!(
            loc.starts_with("http://") || loc.starts_with("https://"),
            "location {loc:?} is not a base URL"
        );
        location.get_or_insert(loc);
    }
    cx.shape("error.wrong_pool", &ops[0].body);
    // The same answer whether or not the caller could see the room.
    let as_admin = cx
        .get(format!("/v1/rooms/{room}"))
        .bearer(&admin)
        .send()
        .await?;
    let strip = |v: &Value| {
        let mut v = v.clone();
        v["error"]["request_id"] = Value::Null;
        v
    };
    check_eq!(
        (as_admin.status, strip(&as_admin.body)),
        (ops[0].status, strip(&ops[0].body)),
        "the answer to an administrator vs a member"
    );
    // The node named by `location` serves the room, and the refused post
    // left nothing there.
    let base = location.unwrap_or_default();
    let url = format!(
        "{}/v1/rooms/{room}/messages?limit=5",
        base.trim_end_matches('/')
    );
    cx.log(format!("> GET {url}"));
    let r = cx
        .http
        .get(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .map_err(|e| Flaw::Fail(format!("GET {url}: {e}")))?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    cx.log(format!("< {status} {body}"));
    check!(
        status != 421,
        "the node at location {base} also answers wrong_pool"
    );
    if status == 200 {
        check!(
            !body["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|msg| msg["text"] == "must have no effect"),
            "a post answered wrong_pool took effect"
        );
    }
    Ok(())
}
