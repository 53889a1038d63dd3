//! §5 the caller's own state and §6 categories.

use serde_json::{json, Value};

use super::{case, Case};
use crate::ctx::{Check, Ctx, Flaw};
use crate::{check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("PC-5.1a", me_has_the_documented_fields),
        case!("PC-5.2a", presence_states_and_what_others_see),
        case!("PC-5.3a", follow_unfollow_and_list),
        case!("PC-5.4a", invitations_are_returned_once),
        case!("PC-5.5a", my_rooms_lists_my_roles),
        case!("PC-6.1a", categories_in_scope_sorted),
        case!("PC-6.2a", scope_is_allowed_minus_denied),
        case!("PC-6.2b", creators_must_be_in_scope),
        case!("PC-6.3a", narrowing_scope_prunes_room_lists),
        case!("PC-6.4a", categories_with_rooms_cannot_be_deleted),
        case!("PC-6.5a", categories_without_invitations_send_none),
    ]
}

async fn me_has_the_documented_fields(cx: &Ctx) -> Check {
    let r = cx.get("/v1/me").as_user(&cx.w.member).send().await?;
    let v = r.ok(200)?;
    check_eq!(v["user"].as_str(), Some(cx.w.member.name.as_str()), "user");
    check!(v["display_name"].is_string(), "display_name: {v}");
    check_eq!(v["admin"].as_bool(), Some(false), "admin");
    check!(v["presence"].is_string(), "presence: {v}");
    cx.shape("me", v);
    Ok(())
}

async fn presence_states_and_what_others_see(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let (a, b) = (&users[0], &users[1]);
    let set = |state: &str| {
        cx.put("/v1/me/presence")
            .as_user(a)
            .json(json!({ "state": state }))
            .send()
    };
    for s in [
        "available",
        "busy",
        "do_not_disturb",
        "be_right_back",
        "away",
        "appear_offline",
    ] {
        let r = set(s).await?;
        check_eq!(r.ok(200)?["state"].as_str(), Some(s), "presence answer");
    }
    set("offline").await?.err(400, "invalid_request")?;
    set("sleeping").await?.err(400, "invalid_request")?;
    let room = cx
        .room(json!({"privacy": "open", "members": [a.principal(), b.principal()]}))
        .await?;
    cx.join(a, room).await?;
    let seen = |who: &str| {
        let who = who.to_owned();
        async move {
            let r = cx
                .get(format!("/v1/rooms/{room}/participants"))
                .as_user(b)
                .send()
                .await?;
            let v = r.ok(200)?.clone();
            Ok::<Option<String>, Flaw>(
                v["participants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["user"] == who.as_str())
                    .and_then(|p| p["presence"].as_str().map(str::to_owned)),
            )
        }
    };
    check_eq!(
        seen(&a.name).await?.as_deref(),
        Some("offline"),
        "appear_offline as others see it"
    );
    set("busy").await?.ok(200)?;
    check_eq!(
        seen(&a.name).await?.as_deref(),
        Some("busy"),
        "busy as others see it"
    );
    Ok(())
}

async fn follow_unfollow_and_list(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = cx
        .room(json!({"privacy": "closed", "members": [m.principal()]}))
        .await?;
    cx.say(m, room, "one").await?;
    cx.say(m, room, "two").await?;
    cx.put(format!("/v1/me/followed/{room}"))
        .as_user(m)
        .send()
        .await?
        .ok(204)?;
    let list = cx.get("/v1/me/followed").as_user(m).send().await?;
    let v = list.ok(200)?.clone();
    cx.shape("followed", &v);
    let entry = v["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["room"] == room)
        .cloned();
    let entry = entry.ok_or_else(|| Flaw::Fail(format!("followed room missing: {v}")))?;
    check_eq!(
        entry["last_seq"].as_u64(),
        Some(2),
        "last_seq of the followed room"
    );
    check!(entry["name"].is_string(), "no name: {entry}");
    // Someone who may not read the room may not follow it.
    cx.put(format!("/v1/me/followed/{room}"))
        .as_user(&cx.w.outsider)
        .send()
        .await?
        .err(403, "forbidden")?;
    // A reader who loses access no longer sees it.
    cx.post(format!("/v1/rooms/{room}/lists/members"))
        .as_user(&cx.w.manager)
        .json(json!({"remove": [m.principal()]}))
        .send()
        .await?
        .setup(200, "remove the member")?;
    let v = cx.get("/v1/me/followed").as_user(m).send().await?;
    check!(
        !v.ok(200)?["rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["room"] == room),
        "a room the user may no longer read is still followed"
    );
    for _ in 0..2 {
        cx.delete(format!("/v1/me/followed/{room}"))
            .as_user(m)
            .send()
            .await?
            .ok(204)?;
    }
    Ok(())
}

async fn invitations_of(cx: &Ctx, token: &str) -> Result<Vec<Value>, Flaw> {
    let r = cx.get("/v1/me/invitations").bearer(token).send().await?;
    Ok(r.ok(200)?["invitations"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

async fn invitations_are_returned_once(cx: &Ctx) -> Check {
    let u = cx.actors(1).await?.remove(0);
    invitations_of(cx, &u.token).await?;
    let room = cx.room(json!({"privacy": "closed"})).await?;
    cx.post(format!("/v1/rooms/{room}/lists/members"))
        .as_user(&cx.w.manager)
        .json(json!({"add": [u.principal()]}))
        .send()
        .await?
        .ok(200)?;
    let first = invitations_of(cx, &u.token).await?;
    let mine: Vec<&Value> = first.iter().filter(|i| i["room"] == room).collect();
    check_eq!(mine.len(), 1, "invitations for the room");
    let i = mine[0];
    check_eq!(
        i["invited_by"].as_str(),
        Some(cx.w.manager.name.as_str()),
        "invited_by"
    );
    check!(
        i["room_name"].is_string() && i["at"].is_string(),
        "invitation {i}"
    );
    cx.shape("invitations", &json!({"invitations": [i]}));
    let second = invitations_of(cx, &u.token).await?;
    check!(
        !second.iter().any(|i| i["room"] == room),
        "an invitation was returned twice"
    );
    Ok(())
}

async fn my_rooms_lists_my_roles(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let (p, other) = (&users[0], &users[1]);
    let room = cx
        .room(json!({"type": "auditorium", "privacy": "closed",
            "members": [p.principal()], "presenters": [p.principal()]}))
        .await?;
    let unrelated = cx
        .room(json!({"privacy": "open", "members": [other.principal()]}))
        .await?;
    let r = cx.get("/v1/me/rooms").as_user(p).send().await?;
    let v = r.ok(200)?.clone();
    let rooms = v["rooms"].as_array().cloned().unwrap_or_default();
    let mine = rooms
        .iter()
        .find(|r| r["room"] == room)
        .ok_or_else(|| Flaw::Fail(format!("room {room} missing from /v1/me/rooms: {v}")))?;
    check_eq!(mine["presenter"].as_bool(), Some(true), "presenter flag");
    check_eq!(mine["member"].as_bool(), Some(true), "member flag");
    check_eq!(mine["manager"].as_bool(), Some(false), "manager flag");
    check!(
        !rooms.iter().any(|r| r["room"] == unrelated),
        "a room the user is on no list of is listed"
    );
    let r = cx.get("/v1/me/rooms").as_user(&cx.w.manager).send().await?;
    let v = r.ok(200)?;
    let mine = v["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["room"] == room)
        .ok_or_else(|| Flaw::Fail("the manager's room is missing".into()))?;
    check_eq!(mine["manager"].as_bool(), Some(true), "manager flag");
    Ok(())
}

async fn category_names(cx: &Ctx, token: &str) -> Result<Vec<Value>, Flaw> {
    let r = cx.get("/v1/categories").bearer(token).send().await?;
    Ok(r.ok(200)?["categories"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

async fn categories_in_scope_sorted(cx: &Ctx) -> Check {
    let cats = category_names(cx, &cx.w.manager.token).await?;
    let names: Vec<String> = cats
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_lowercase))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    check_eq!(names, sorted, "category order (case-insensitive)");
    let ours = cats
        .iter()
        .find(|c| c["id"] == cx.w.category)
        .ok_or_else(|| Flaw::Fail("the run's category is not listed".into()))?;
    cx.shape("category_summary", ours);
    for f in ["name", "description"] {
        check!(ours[f].is_string(), "{f}: {ours}");
    }
    for f in ["invitations", "file_upload", "history"] {
        check!(ours[f].is_boolean(), "{f}: {ours}");
    }
    check_eq!(
        ours["can_create"].as_bool(),
        Some(true),
        "can_create for a creator"
    );
    let as_member = category_names(cx, &cx.w.member.token).await?;
    let c = as_member.iter().find(|c| c["id"] == cx.w.category);
    check_eq!(
        c.and_then(|c| c["can_create"].as_bool()),
        Some(false),
        "can_create for a non-creator"
    );
    if cx.w.admin.is_some() {
        let cat = cx
            .category(json!({"allowed": [cx.w.manager.principal()]}))
            .await?;
        let member_sees = category_names(cx, &cx.w.member.token).await?;
        check!(
            !member_sees.iter().any(|c| c["id"] == cat),
            "a category out of the caller's scope is listed"
        );
        let admin_sees = category_names(cx, &cx.admin()?).await?;
        check!(
            admin_sees.iter().any(|c| c["id"] == cat),
            "an administrator does not see every category"
        );
    }
    Ok(())
}

async fn scope_is_allowed_minus_denied(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let users = cx.fresh_users(3).await?;
    let (inner, denied, plain) = (&users[0], &users[1], &users[2]);
    let g1 = cx.name("g");
    let g2 = cx.name("g");
    for (g, members) in [
        (&g1, json!([inner.principal(), denied.principal()])),
        (&g2, json!([format!("group:{g1}")])),
    ] {
        cx.post("/v1/admin/groups")
            .bearer(&admin)
            .json(json!({"name": g, "members": members}))
            .send()
            .await?
            .setup(201, "create a group")?;
    }
    let cat = cx
        .category(json!({"allowed": [format!("group:{g2}")], "denied": [denied.principal()]}))
        .await?;
    let sees = |u: &crate::ctx::User| {
        let token = u.token.clone();
        async move {
            Ok::<bool, Flaw>(
                category_names(cx, &token)
                    .await?
                    .iter()
                    .any(|c| c["id"] == cat),
            )
        }
    };
    check!(
        sees(inner).await?,
        "a member of a nested allowed group is out of scope"
    );
    check!(!sees(denied).await?, "a denied user is in scope");
    check!(!sees(plain).await?, "a user on no allowed list is in scope");
    let default_cat = cx.category(json!({})).await?;
    let seen = category_names(cx, &plain.token).await?;
    check!(
        seen.iter().any(|c| c["id"] == default_cat),
        "omitting `allowed` does not mean everyone"
    );
    let r = cx
        .get(format!("/v1/admin/categories/{default_cat}"))
        .bearer(&admin)
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["allowed"],
        json!(["group:everyone"]),
        "default allowed list"
    );
    Ok(())
}

async fn creators_must_be_in_scope(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let users = cx.fresh_users(2).await?;
    let r = cx
        .post("/v1/admin/categories")
        .bearer(&admin)
        .json(
            json!({"name": cx.name("cat"), "allowed": [users[0].principal()],
            "creators": [users[1].principal()]}),
        )
        .send()
        .await?;
    r.err(422, "not_allowed_by_category")?;
    cx.shape("error.not_allowed_by_category", &r.body);
    Ok(())
}

async fn narrowing_scope_prunes_room_lists(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let users = cx.fresh_users(2).await?;
    let (stay, go) = (&users[0], &users[1]);
    let cat = cx
        .category(json!({"creators": [cx.w.manager.principal()]}))
        .await?;
    let room = cx
        .room(json!({"category": cat, "members": [stay.principal(), go.principal()]}))
        .await?;
    cx.patch(format!("/v1/admin/categories/{cat}"))
        .bearer(&admin)
        .json(json!({"denied": [go.principal()]}))
        .send()
        .await?
        .ok(200)?;
    let r = cx
        .get(format!("/v1/rooms/{room}"))
        .bearer(&admin)
        .send()
        .await?;
    let members = r.ok(200)?["members"].clone();
    check!(
        members.as_array().is_some_and(
            |m| m.contains(&json!(stay.principal())) && !m.contains(&json!(go.principal()))
        ),
        "members after narrowing the scope: {members}"
    );
    Ok(())
}

async fn categories_with_rooms_cannot_be_deleted(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let cat = cx
        .category(json!({"creators": [cx.w.manager.principal()]}))
        .await?;
    let room = cx.room(json!({"category": cat})).await?;
    let r = cx
        .delete(format!("/v1/admin/categories/{cat}"))
        .bearer(&admin)
        .send()
        .await?;
    r.err(409, "category_not_empty")?;
    cx.delete(format!("/v1/rooms/{room}"))
        .bearer(&admin)
        .send()
        .await?
        .setup(204, "delete the room")?;
    cx.delete(format!("/v1/admin/categories/{cat}"))
        .bearer(&admin)
        .send()
        .await?
        .ok(204)?;
    Ok(())
}

async fn categories_without_invitations_send_none(cx: &Ctx) -> Check {
    cx.admin()?;
    let u = cx.fresh_users(1).await?.remove(0);
    let cat = cx
        .category(json!({"invitations": false, "creators": [cx.w.manager.principal()]}))
        .await?;
    let room = cx.room(json!({"category": cat})).await?;
    cx.post(format!("/v1/rooms/{room}/lists/members"))
        .as_user(&cx.w.manager)
        .json(json!({"add": [u.principal()]}))
        .send()
        .await?
        .ok(200)?;
    let inv = invitations_of(cx, &u.token).await?;
    check!(
        !inv.iter().any(|i| i["room"] == room),
        "an invitation was sent in a category with invitations: false"
    );
    Ok(())
}
