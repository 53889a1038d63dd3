//! §13 administration. Every test needs the administrator token; tests of
//! server-wide settings only write back values they read, so a shared server
//! is left as it was.

use pchat_protocol::Event;
use serde_json::{json, Value};

use super::{case, Case};
use crate::ctx::{Check, Ctx, Flaw, Setup};
use crate::{check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("PC-13.1a", users_are_administered),
        case!("PC-13.2a", groups_are_administered_and_nest),
        case!("PC-13.3a", policies_and_administrators),
        case!("PC-13.4a", categories_are_administered),
        case!("PC-13.5a", room_deletion_is_for_administrators),
        case!("PC-13.6a", service_configuration),
        case!("PC-13.7a", addins_are_administered),
        case!("PC-13.8a", clearing_and_removing_messages),
        case!("PC-13.9a", provisioning_is_all_or_nothing),
        case!("PC-13.10a", bulk_tokens),
        case!("PC-13.11a", compliance_settings),
    ]
}

async fn users_are_administered(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let name = cx.name("adm");
    let r = cx
        .post("/v1/admin/users")
        .bearer(&admin)
        .json(json!({"name": name, "display_name": "Ada", "password": "pw"}))
        .send()
        .await?;
    let v = r.ok(201)?.clone();
    cx.shape("admin.user", &v);
    check_eq!(v["name"].as_str(), Some(name.as_str()), "name");
    check_eq!(v["display_name"].as_str(), Some("Ada"), "display_name");
    check_eq!(v["admin"].as_bool(), Some(false), "admin");
    check_eq!(v["disabled"].as_bool(), Some(false), "disabled");
    check!(
        v["groups"].is_array() && v.get("policy").is_some(),
        "user: {v}"
    );
    let r = cx
        .post("/v1/admin/users")
        .bearer(&admin)
        .json(json!({ "name": name }))
        .send()
        .await?;
    r.err(409, "name_taken")?;
    let r = cx
        .get(format!("/v1/admin/users?prefix={}&limit=500", cx.ns))
        .bearer(&admin)
        .send()
        .await?;
    let listed = r.ok(200)?["users"].as_array().cloned().unwrap_or_default();
    check!(
        listed.iter().any(|u| u["name"] == name.as_str()),
        "the new user is not listed by prefix"
    );
    check!(
        listed
            .iter()
            .all(|u| u["name"].as_str().is_some_and(|n| n.starts_with(&cx.ns))),
        "the prefix filter lets other users through"
    );
    let policy = cx.w.policy.clone().unwrap_or_else(|| "global".into());
    let r = cx
        .patch(format!("/v1/admin/users/{name}"))
        .bearer(&admin)
        .json(json!({"display_name": "Ada L.", "policy": policy}))
        .send()
        .await?;
    let v = r.ok(200)?;
    check_eq!(
        v["display_name"].as_str(),
        Some("Ada L."),
        "display_name after PATCH"
    );
    check_eq!(
        v["policy"].as_str(),
        Some(policy.as_str()),
        "policy after PATCH"
    );
    let r = cx
        .patch(format!("/v1/admin/users/{name}"))
        .bearer(&admin)
        .json(json!({"policy": null}))
        .send()
        .await?;
    check!(
        r.ok(200)?["policy"].is_null(),
        "policy: null does not clear"
    );
    cx.patch(format!("/v1/admin/users/{name}"))
        .bearer(&admin)
        .json(json!({"name": "renamed"}))
        .send()
        .await?
        .err(400, "unknown_field")?;
    let r = cx
        .get(format!("/v1/admin/users/{name}"))
        .bearer(&admin)
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["display_name"].as_str(),
        Some("Ada L."),
        "GET after PATCH"
    );
    cx.delete(format!("/v1/admin/users/{name}"))
        .bearer(&admin)
        .send()
        .await?
        .ok(204)?;
    cx.get(format!("/v1/admin/users/{name}"))
        .bearer(&admin)
        .send()
        .await?
        .err(404, "not_found")?;
    // Not for ordinary users.
    cx.get("/v1/admin/users")
        .as_user(&cx.w.member)
        .send()
        .await?
        .err(403, "forbidden")?;
    Ok(())
}

async fn groups_are_administered_and_nest(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let users = cx.fresh_users(2).await?;
    let (inner, outer) = (cx.name("gi"), cx.name("go"));
    let r = cx
        .post("/v1/admin/groups")
        .bearer(&admin)
        .json(json!({"name": inner, "members": [users[0].principal()]}))
        .send()
        .await?;
    let v = r.ok(201)?.clone();
    cx.shape("admin.group", &v);
    check_eq!(v["members"], json!([users[0].principal()]), "members");
    cx.post("/v1/admin/groups")
        .bearer(&admin)
        .json(json!({"name": outer, "members": [format!("group:{inner}")]}))
        .send()
        .await?
        .ok(201)?;
    // Transitive: a closed room for the outer group admits the inner's member.
    let room = cx
        .room(json!({"privacy": "closed", "members": [format!("group:{outer}")]}))
        .await?;
    let read = |u: usize| {
        cx.get(format!("/v1/rooms/{room}/messages"))
            .as_user(&users[u])
            .send()
    };
    read(0).await?.ok(200)?;
    read(1).await?.err(403, "forbidden")?;
    let r = cx
        .patch(format!("/v1/admin/groups/{inner}"))
        .bearer(&admin)
        .json(json!({"add": [users[1].principal()], "remove": [users[0].principal()]}))
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["members"],
        json!([users[1].principal()]),
        "members after PATCH"
    );
    read(1).await?.ok(200)?;
    read(0).await?.err(403, "forbidden")?;
    let r = cx
        .get(format!("/v1/admin/groups/{outer}"))
        .bearer(&admin)
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["members"],
        json!([format!("group:{inner}")]),
        "outer members"
    );
    let r = cx
        .get(format!("/v1/admin/users/{}", users[1].name))
        .bearer(&admin)
        .send()
        .await?;
    let groups = r.ok(200)?["groups"].clone();
    check!(
        groups.as_array().is_some_and(|g| g.contains(&json!(inner))),
        "the user's groups lack {inner}: {groups}"
    );
    cx.delete(format!("/v1/admin/groups/{outer}"))
        .bearer(&admin)
        .send()
        .await?
        .ok(204)?;
    cx.get(format!("/v1/admin/groups/{outer}"))
        .bearer(&admin)
        .send()
        .await?
        .err(404, "not_found")?;
    Ok(())
}

async fn policies_and_administrators(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let name = format!("{}-pol", cx.ns);
    let r = cx
        .put(format!("/v1/admin/policies/{name}"))
        .bearer(&admin)
        .json(json!({"enabled": true}))
        .send()
        .await?;
    r.ok(200)?;
    let r = cx.get("/v1/admin/policies").bearer(&admin).send().await?;
    let v = r.ok(200)?.clone();
    let p = v["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name.as_str())
        .cloned()
        .ok_or_else(|| Flaw::Fail(format!("policy {name} not listed: {v}")))?;
    check_eq!(p["enabled"].as_bool(), Some(true), "enabled");
    check!(
        v["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == "global"),
        "the global policy is not listed"
    );
    let u = cx.fresh_users(1).await?.remove(0);
    let me = |u: &crate::ctx::User| cx.get("/v1/me").as_user(u).send();
    check_eq!(
        me(&u).await?.ok(200)?["admin"].as_bool(),
        Some(false),
        "admin before"
    );
    let change = |body: Value| {
        cx.post("/v1/admin/administrators")
            .bearer(&admin)
            .json(body)
            .send()
    };
    change(json!({"add": [u.name]})).await?.ok(200)?;
    let r = cx
        .get("/v1/admin/administrators")
        .bearer(&admin)
        .send()
        .await?;
    check!(
        r.ok(200)?["administrators"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(u.name))),
        "new administrator not listed"
    );
    check_eq!(
        me(&u).await?.ok(200)?["admin"].as_bool(),
        Some(true),
        "admin after add"
    );
    cx.get("/v1/admin/policies")
        .as_user(&u)
        .send()
        .await?
        .ok(200)?;
    change(json!({"remove": [u.name]})).await?.ok(200)?;
    check_eq!(
        me(&u).await?.ok(200)?["admin"].as_bool(),
        Some(false),
        "admin after remove"
    );
    cx.get("/v1/admin/policies")
        .as_user(&u)
        .send()
        .await?
        .err(403, "forbidden")?;
    Ok(())
}

async fn categories_are_administered(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let name = cx.name("cat");
    let r = cx
        .post("/v1/admin/categories")
        .bearer(&admin)
        .json(json!({"name": name, "description": "d", "creators": [cx.w.manager.principal()]}))
        .send()
        .await?;
    let v = r.ok(201)?.clone();
    cx.shape("admin.category", &v);
    let id = v["id"].as_u64().setup("category id")?;
    for f in ["invitations", "file_upload", "history"] {
        check_eq!(v[f].as_bool(), Some(true), "default of {f}");
    }
    check_eq!(v["rooms"].as_u64(), Some(0), "rooms");
    check!(
        v["allowed"].is_array() && v["denied"].is_array(),
        "lists: {v}"
    );
    cx.room(json!({ "category": id })).await?;
    let r = cx
        .get(format!("/v1/admin/categories/{id}"))
        .bearer(&admin)
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["rooms"].as_u64(),
        Some(1),
        "rooms after creating one"
    );
    let r = cx
        .patch(format!("/v1/admin/categories/{id}"))
        .bearer(&admin)
        .json(json!({"description": "new", "history": false}))
        .send()
        .await?;
    let v = r.ok(200)?;
    check_eq!(v["description"].as_str(), Some("new"), "description");
    check_eq!(v["history"].as_bool(), Some(false), "history");
    let r = cx.get("/v1/admin/categories").bearer(&admin).send().await?;
    check!(
        r.ok(200)?["categories"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["id"] == id),
        "the category is not listed"
    );
    let empty = cx.category(json!({})).await?;
    cx.delete(format!("/v1/admin/categories/{empty}"))
        .bearer(&admin)
        .send()
        .await?
        .ok(204)?;
    cx.get(format!("/v1/admin/categories/{empty}"))
        .bearer(&admin)
        .send()
        .await?
        .err(404, "not_found")?;
    Ok(())
}

async fn room_deletion_is_for_administrators(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let room = cx.room(json!({})).await?;
    cx.delete(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.manager)
        .send()
        .await?
        .err(403, "forbidden")?;
    cx.delete(format!("/v1/rooms/{room}"))
        .bearer(&admin)
        .send()
        .await?
        .ok(204)?;
    Ok(())
}

async fn service_configuration(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let r = cx.get("/v1/admin/config").bearer(&admin).send().await?;
    let v = r.ok(200)?.clone();
    cx.shape("admin.config", &v);
    let n = v["messages_on_join"].as_u64().unwrap_or(0);
    check!((1..=500).contains(&n), "messages_on_join {n}");
    check!(
        v["participant_update_limit"].is_u64(),
        "participant_update_limit: {v}"
    );
    check!(v["max_file_size_kb"].is_u64(), "max_file_size_kb: {v}");
    for f in ["room_management_url", "disclaimer"] {
        check!(
            v.get(f).is_some_and(|x| x.is_null() || x.is_string()),
            "{f}: {v}"
        );
    }
    for bad in [
        json!({"messages_on_join": 0}),
        json!({"messages_on_join": 501}),
        json!({"room_management_url": "ftp://x"}),
    ] {
        let r = cx
            .patch("/v1/admin/config")
            .bearer(&admin)
            .json(bad.clone())
            .send()
            .await?;
        r.err(400, "invalid_request")
            .map_err(|f| Flaw::Fail(format!("{bad}: {f:?}")))?;
    }
    // Writing back what was read changes nothing and answers the same.
    let r = cx
        .patch("/v1/admin/config")
        .bearer(&admin)
        .json(json!({"messages_on_join": n, "disclaimer": v["disclaimer"]}))
        .send()
        .await?;
    check_eq!(r.ok(200)?.clone(), v, "configuration after writing it back");
    let room = cx.room(json!({"privacy": "open"})).await?;
    let (_, joined) = cx.join(&cx.w.member, room).await?;
    check_eq!(
        joined["disclaimer"],
        v["disclaimer"],
        "disclaimer in the join answer"
    );
    Ok(())
}

async fn addins_are_administered(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let name = cx.name("addin");
    let r = cx
        .post("/v1/admin/addins")
        .bearer(&admin)
        .json(json!({"name": name, "url": "https://addin.example/x"}))
        .send()
        .await?;
    r.ok(201)?;
    cx.post("/v1/admin/addins")
        .bearer(&admin)
        .json(json!({"name": cx.name("addin"), "url": "ftp://addin.example/x"}))
        .send()
        .await?
        .err(400, "invalid_request")?;
    let r = cx.get("/v1/admin/addins").bearer(&admin).send().await?;
    check!(
        r.ok(200)?["addins"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["name"] == name.as_str()),
        "the add-in is not listed"
    );
    let room = cx.room(json!({ "addin": name })).await?;
    let del = || {
        cx.delete(format!("/v1/admin/addins/{name}"))
            .bearer(&admin)
            .send()
    };
    del().await?.err(409, "invalid_state")?;
    let r = cx
        .patch(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.manager)
        .json(json!({"addin": null}))
        .send()
        .await?;
    check!(
        r.ok(200)?["addin"].is_null(),
        "addin: null does not remove the add-in"
    );
    del().await?.ok(204)?;
    Ok(())
}

async fn clearing_and_removing_messages(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let users = cx.actors(2).await?;
    let (a, b) = (&users[0], &users[1]);
    let room = cx
        .room(json!({"privacy": "open", "members": [a.principal(), b.principal()]}))
        .await?;
    cx.say(a, room, "old one").await?;
    cx.say(b, room, "old two").await?;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let r = cx
        .post(format!("/v1/rooms/{room}/messages"))
        .as_user(a)
        .json(json!({"text": "new three secretword"}))
        .send()
        .await?;
    let cut = r.ok(201)?["ts"].as_str().unwrap_or("").to_owned();
    cx.say(b, room, "new four secretword").await?;
    cx.say(a, room, "new five").await?;
    let r = cx
        .post(format!("/v1/admin/rooms/{room}/clear"))
        .bearer(&admin)
        .json(json!({ "before": cut }))
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["affected"].as_u64(),
        Some(2),
        "affected by clear"
    );
    let texts = |v: Vec<Value>| -> Vec<String> {
        v.iter()
            .filter_map(|m| m["text"].as_str().map(str::to_owned))
            .collect()
    };
    let left = texts(cx.all_messages(&a.token, room).await?);
    check_eq!(
        left,
        vec!["new three secretword", "new four secretword", "new five"],
        "history after clear"
    );
    let (ep, _) = cx.join(a, room).await?;
    let (mut s, _) = cx.stream(a, &ep, &[]).await?;
    let r = cx
        .post(format!("/v1/admin/rooms/{room}/remove-messages"))
        .bearer(&admin)
        .json(json!({"author": b.name, "keywords": "secretword", "replace": true}))
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["affected"].as_u64(),
        Some(1),
        "affected by replace"
    );
    s.until(
        "message_replaced for seq 4",
        |e| matches!(e, Event::MessageReplaced { room: r, seq: 4 } if *r == room),
    )
    .await?;
    let msgs = cx.all_messages(&a.token, room).await?;
    let four = msgs
        .iter()
        .find(|m| m["seq"] == 4)
        .cloned()
        .unwrap_or(Value::Null);
    check!(
        four["text"]
            .as_str()
            .is_some_and(|t| !t.contains("secretword")),
        "the replaced message still shows its text: {four}"
    );
    let r = cx
        .post(format!("/v1/admin/rooms/{room}/remove-messages"))
        .bearer(&admin)
        .json(json!({"keywords": "secretword", "replace": false}))
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["affected"].as_u64(),
        Some(1),
        "affected by remove"
    );
    let seqs: Vec<u64> = cx
        .all_messages(&a.token, room)
        .await?
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    check_eq!(seqs, vec![4, 5], "seqs after removing seq 3");
    let next = cx.say(a, room, "after").await?;
    check_eq!(next, 6, "seq after removals (never reused)");
    Ok(())
}

async fn provisioning_is_all_or_nothing(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let (u1, u2, g1, g2, cat, room) = (
        cx.name("pu"),
        cx.name("pu"),
        cx.name("pg"),
        cx.name("pg"),
        cx.name("pc"),
        cx.name("pr"),
    );
    let policy = cx.w.policy.clone();
    let good = json!({
        "users": [{"name": u1, "policy": policy}, {"name": u2, "policy": policy}],
        "groups": [
            {"name": g1, "members": [format!("group:{g2}")]},
            {"name": g2, "members": [format!("user:{u1}")]}
        ],
        "categories": [{"name": cat}],
        "rooms": [{"name": room, "category": cat, "members": [format!("group:{g1}"), format!("user:{u2}")]}]
    });
    let bad_user = cx.name("pu");
    let bad = json!({
        "users": [{"name": bad_user}],
        "categories": [{"name": cx.name("pc")}],
        "rooms": [
            {"name": cx.name("pr"), "category": cat},
            {"name": cx.name("pr"), "category": cat, "members": [format!("user:{bad_user}"), format!("user:{}", cx.name("ghost"))]}
        ]
    });
    let send = |doc: Value| {
        cx.post("/v1/admin/provision")
            .bearer(&admin)
            .json(doc)
            .send()
    };
    let r = send(good.clone()).await?;
    let v = r.ok(200)?.clone();
    cx.shape("provisioned", &v);
    check_eq!(
        (
            v["users"].as_u64(),
            v["groups"].as_u64(),
            v["categories"].as_u64(),
            v["rooms"].as_u64()
        ),
        (Some(2), Some(2), Some(1), Some(1)),
        "counts"
    );
    check!(v["entries"].is_u64(), "entries: {v}");
    let room_id = v["room_ids"][&room]
        .as_u64()
        .setup("room id of the provisioned room")?;
    let u = cx.tokens_for(std::slice::from_ref(&u1)).await?.remove(0);
    cx.get(format!("/v1/rooms/{room_id}/messages"))
        .as_user(&u)
        .send()
        .await?
        .ok(200)?;
    // The bad document names the category of the good one (it exists now),
    // and its second room has an unknown member.
    let r = send(bad).await?;
    r.err(404, "not_found")?;
    check_eq!(
        r.field(),
        Some("rooms[1].members[1]"),
        "field of the offending entry"
    );
    cx.get(format!("/v1/admin/users/{bad_user}"))
        .bearer(&admin)
        .send()
        .await?
        .err(404, "not_found")?;
    let r = send(good).await?;
    r.err(409, "name_taken")?;
    Ok(())
}

async fn bulk_tokens(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let users = cx.fresh_users(2).await?;
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    let r = cx
        .post("/v1/admin/tokens")
        .bearer(&admin)
        .json(json!({"users": names, "ttl_s": 60}))
        .send()
        .await?;
    let v = r.ok(200)?.clone();
    cx.shape("tokens", &v);
    for u in &users {
        let t = v["tokens"][&u.name].as_str().setup("a token per user")?;
        let r = cx.get("/v1/me").bearer(t).send().await?;
        check_eq!(
            r.ok(200)?["user"].as_str(),
            Some(u.name.as_str()),
            "token's user"
        );
    }
    let exp = v["expires_at"].as_str().unwrap_or("");
    let exp = time::OffsetDateTime::parse(exp, &time::format_description::well_known::Rfc3339)
        .map_err(|e| Flaw::Fail(format!("expires_at {exp:?}: {e}")))?;
    let delta = (exp - time::OffsetDateTime::now_utc()).whole_seconds();
    check!(
        (30..=90).contains(&delta),
        "expires_at is {delta} s away for ttl_s 60"
    );
    for ttl in [0, 2_592_001] {
        cx.post("/v1/admin/tokens")
            .bearer(&admin)
            .json(json!({"users": names, "ttl_s": ttl}))
            .send()
            .await?
            .err(400, "invalid_request")?;
    }
    Ok(())
}

async fn compliance_settings(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let r = cx.get("/v1/admin/compliance").bearer(&admin).send().await?;
    let v = r.ok(200)?.clone();
    cx.shape("admin.compliance", &v);
    check!(v["enabled"].is_boolean(), "enabled: {v}");
    let interval = v["interval_s"].as_u64().unwrap_or(0);
    check!(
        (60..=2_592_000).contains(&interval),
        "interval_s {interval}"
    );
    for bad in [59, 2_592_001] {
        cx.patch("/v1/admin/compliance")
            .bearer(&admin)
            .json(json!({ "interval_s": bad }))
            .send()
            .await?
            .err(400, "invalid_request")?;
    }
    let r = cx
        .patch("/v1/admin/compliance")
        .bearer(&admin)
        .json(json!({ "interval_s": interval }))
        .send()
        .await?;
    check_eq!(r.ok(200)?.clone(), v, "settings after writing them back");
    let r = cx
        .post("/v1/admin/compliance/export")
        .bearer(&admin)
        .send()
        .await?;
    let e = r.ok(200)?;
    check!(
        e["records"].is_u64() && (e["files"].is_array() || e["files"].is_u64()),
        "export answer: {e}"
    );
    Ok(())
}
