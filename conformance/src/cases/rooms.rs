//! §7 rooms: the room object, creating, searching, changing, lists,
//! disabling, deleting and invitations.

use pchat_protocol::{Event, RemovedReason};
use serde_json::{json, Value};

use super::{case, Case};
use crate::ctx::{Check, Ctx, Flaw};
use crate::{check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("PC-7.1a", room_object_has_the_documented_fields),
        case!("PC-7.1b", non_numeric_room_ids_are_room_not_found),
        case!("PC-7.1c", lists_are_shown_only_to_insiders),
        case!("PC-7.2a", names_are_checked_and_unique),
        case!("PC-7.3a", create_room_with_defaults),
        case!("PC-7.3b", only_creators_create_rooms),
        case!("PC-7.3c", the_creator_becomes_a_manager),
        case!("PC-7.3d", room_search_filters_and_sorts),
        case!("PC-7.4a", get_room_for_those_who_may_find_it),
        case!("PC-7.5a", managers_patch_rooms),
        case!("PC-7.5b", normal_type_empties_presenters),
        case!("PC-7.5c", managers_move_rooms_only_where_creators),
        case!("PC-7.5d", moving_prunes_out_of_scope_entries),
        case!("PC-7.6a", list_entries_must_be_in_scope_and_known),
        case!("PC-7.7a", presenters_only_in_auditoriums_and_members),
        case!("PC-7.7b", list_changes_remove_then_add),
        case!("PC-7.8a", disabling_removes_endpoints_and_hides_room),
        case!("PC-7.8b", only_administrators_delete_rooms),
        case!("PC-7.9a", new_members_get_one_invitation),
    ]
}

async fn get_room(cx: &Ctx, room: u64, token: &str) -> Result<crate::ctx::Resp, Flaw> {
    cx.get(format!("/v1/rooms/{room}"))
        .bearer(token)
        .send()
        .await
}

async fn room_object_has_the_documented_fields(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = cx
        .room(json!({"privacy": "open", "description": "d", "members": [m.principal()]}))
        .await?;
    let r = get_room(cx, room, &m.token).await?;
    let v = r.ok(200)?.clone();
    cx.shape("room", &v);
    check_eq!(v["id"].as_u64(), Some(room), "id");
    for f in ["name", "description", "created_at"] {
        check!(v[f].is_string(), "{f} is not a string: {v}");
    }
    check_eq!(v["category"].as_u64(), Some(cx.w.category), "category");
    check!(
        ["normal", "auditorium"].contains(&v["type"].as_str().unwrap_or("")),
        "type: {v}"
    );
    check!(
        ["open", "closed", "secret"].contains(&v["privacy"].as_str().unwrap_or("")),
        "privacy: {v}"
    );
    check!(
        ["inherit", "off"].contains(&v["invitations"].as_str().unwrap_or("")),
        "invitations: {v}"
    );
    check!(
        v.get("addin").is_some_and(|a| a.is_null() || a.is_string()),
        "addin: {v}"
    );
    check!(v["disabled"].is_boolean(), "disabled: {v}");
    check!(v["managers"].is_array(), "managers: {v}");
    check!(v["last_seq"].is_u64(), "last_seq: {v}");
    Ok(())
}

async fn non_numeric_room_ids_are_room_not_found(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    for bad in ["abc", "0", "-1", "1.5", "99999999999999999999999"] {
        let r = cx.get(format!("/v1/rooms/{bad}")).as_user(m).send().await?;
        r.err(404, "room_not_found")
            .map_err(|f| Flaw::Fail(format!("/v1/rooms/{bad}: {f:?}")))?;
        let r = cx
            .post(format!("/v1/rooms/{bad}/messages"))
            .as_user(m)
            .json(json!({"text": "x"}))
            .send()
            .await?;
        r.err(404, "room_not_found")
            .map_err(|f| Flaw::Fail(format!("POST /v1/rooms/{bad}/messages: {f:?}")))?;
    }
    Ok(())
}

async fn lists_are_shown_only_to_insiders(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = cx
        .room(json!({"privacy": "open", "members": [m.principal()]}))
        .await?;
    let outsider = get_room(cx, room, &cx.w.outsider.token).await?;
    let v = outsider.ok(200)?;
    check!(
        v.get("members").is_none() && v.get("presenters").is_none(),
        "an outsider sees the lists: {v}"
    );
    for token in [m.token.clone(), cx.w.manager.token.clone()]
        .into_iter()
        .chain(cx.w.admin.clone())
    {
        let r = get_room(cx, room, &token).await?;
        let v = r.ok(200)?;
        check!(
            v["members"].is_array() && v["presenters"].is_array(),
            "an insider does not see the lists: {v}"
        );
    }
    Ok(())
}

async fn names_are_checked_and_unique(cx: &Ctx) -> Check {
    let create = |name: Value| {
        cx.post("/v1/rooms")
            .as_user(&cx.w.manager)
            .json(json!({"name": name, "category": cx.w.category}))
            .send()
    };
    for bad in [
        json!(""),
        json!("   "),
        json!("tab\there"),
        json!("n".repeat(257)),
    ] {
        create(bad.clone())
            .await?
            .err(400, "invalid_request")
            .map_err(|f| Flaw::Fail(format!("name {bad}: {f:?}")))?;
    }
    let r = cx
        .post("/v1/rooms")
        .as_user(&cx.w.manager)
        .json(json!({"name": cx.name("room"), "category": cx.w.category, "description": "d".repeat(257)}))
        .send()
        .await?;
    r.err(400, "invalid_request")?;
    let name = cx.name("Unique");
    create(json!(name)).await?.ok(201)?;
    let r = create(json!(name.to_uppercase())).await?;
    r.err(409, "name_taken")?;
    cx.shape("error.name_taken", &r.body);
    if cx.w.admin.is_some() {
        let cat_name = cx.name("shared");
        cx.category(json!({"name": cat_name})).await?;
        create(json!(cat_name.to_lowercase()))
            .await?
            .err(409, "name_taken")?;
    }
    Ok(())
}

async fn create_room_with_defaults(cx: &Ctx) -> Check {
    let r = cx
        .post("/v1/rooms")
        .as_user(&cx.w.manager)
        .json(json!({"name": cx.name("room"), "category": cx.w.category}))
        .send()
        .await?;
    let v = r.ok(201)?;
    check_eq!(v["type"].as_str(), Some("normal"), "default type");
    check_eq!(v["privacy"].as_str(), Some("closed"), "default privacy");
    check_eq!(
        v["invitations"].as_str(),
        Some("inherit"),
        "default invitations"
    );
    check_eq!(v["members"], json!([]), "default members");
    check_eq!(v["presenters"], json!([]), "default presenters");
    check_eq!(v["last_seq"].as_u64(), Some(0), "last_seq of a new room");
    Ok(())
}

async fn only_creators_create_rooms(cx: &Ctx) -> Check {
    let r = cx
        .post("/v1/rooms")
        .as_user(&cx.w.member)
        .json(json!({"name": cx.name("room"), "category": cx.w.category}))
        .send()
        .await?;
    r.err(403, "forbidden")?;
    cx.shape("error.forbidden", &r.body);
    if cx.w.admin.is_some() {
        let cat = cx
            .category(json!({"allowed": [cx.w.manager.principal()]}))
            .await?;
        let r = cx
            .post("/v1/rooms")
            .as_user(&cx.w.member)
            .json(json!({"name": cx.name("room"), "category": cat}))
            .send()
            .await?;
        r.err(404, "not_found")?;
        check_eq!(r.field(), Some("category"), "field of the refusal");
        // An administrator may create anywhere.
        cx.post("/v1/rooms")
            .bearer(&cx.admin()?)
            .json(json!({"name": cx.name("room"), "category": cat}))
            .send()
            .await?
            .ok(201)?;
    }
    Ok(())
}

async fn the_creator_becomes_a_manager(cx: &Ctx) -> Check {
    let r = cx
        .post("/v1/rooms")
        .as_user(&cx.w.manager)
        .json(json!({"name": cx.name("room"), "category": cx.w.category,
            "managers": [cx.w.member.principal()]}))
        .send()
        .await?;
    let v = r.ok(201)?;
    let managers = v["managers"].as_array().cloned().unwrap_or_default();
    check!(
        managers.contains(&json!(cx.w.manager.principal()))
            && managers.contains(&json!(cx.w.member.principal())),
        "managers: {managers:?}"
    );
    Ok(())
}

async fn room_search_filters_and_sorts(cx: &Ctx) -> Check {
    let tag = cx.name("srch");
    let m = &cx.w.member;
    let mut ids = Vec::new();
    for (name, desc, privacy) in [
        (format!("{tag}-b"), "x", "open"),
        (format!("{tag}-A"), "x", "closed"),
        (format!("{tag}-c"), "x", "secret"),
        (
            format!("other-{}", cx.name("r")),
            "mentions SRCH-tag",
            "open",
        ),
    ] {
        let desc = desc.replace("SRCH-tag", &tag.to_uppercase());
        ids.push(
            cx.room(json!({"name": name, "description": desc, "privacy": privacy}))
                .await?,
        );
    }
    let r = cx
        .get(format!("/v1/rooms?q={}", tag.to_uppercase()))
        .as_user(m)
        .send()
        .await?;
    let v = r.ok(200)?.clone();
    cx.shape("room_search", &v);
    check_eq!(v["truncated"].as_bool(), Some(false), "truncated");
    let found: Vec<u64> = v["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["id"].as_u64())
        .collect();
    // Sorted by name: "-A" < "-b" (case-insensitive), then "other-...".
    let want = vec![ids[1], ids[0], ids[3]];
    check!(
        found == want,
        "search found {found:?}, want {want:?} (the secret room {} must not show)",
        ids[2]
    );
    if let Some(s) = v["rooms"].as_array().and_then(|a| a.first()) {
        for f in [
            "id",
            "name",
            "description",
            "category",
            "type",
            "privacy",
            "disabled",
        ] {
            check!(s.get(f).is_some(), "summary lacks {f}: {s}");
        }
    }
    let r = cx
        .get(format!("/v1/rooms?q={tag}&limit=1"))
        .as_user(m)
        .send()
        .await?;
    let v = r.ok(200)?;
    check_eq!(
        v["rooms"].as_array().map(Vec::len),
        Some(1),
        "rooms with limit=1"
    );
    check_eq!(
        v["truncated"].as_bool(),
        Some(true),
        "truncated with limit=1"
    );
    let r = cx
        .get(format!("/v1/rooms?q={tag}&category={}", cx.w.category))
        .as_user(&cx.w.manager)
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["rooms"].as_array().map(Vec::len),
        Some(4),
        "a manager finds all four (secret included)"
    );
    Ok(())
}

async fn get_room_for_those_who_may_find_it(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = cx
        .room(json!({"privacy": "secret", "members": [m.principal()]}))
        .await?;
    get_room(cx, room, &m.token).await?.ok(200)?;
    get_room(cx, room, &cx.w.outsider.token)
        .await?
        .err(404, "room_not_found")?;
    let closed = cx.room(json!({"privacy": "closed"})).await?;
    get_room(cx, closed, &cx.w.outsider.token).await?.ok(200)?;
    Ok(())
}

async fn managers_patch_rooms(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = cx
        .room(json!({"privacy": "open", "members": [m.principal()]}))
        .await?;
    let new_name = cx.name("renamed");
    let r = cx
        .patch(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.manager)
        .json(
            json!({"name": new_name, "description": "new", "privacy": "closed",
            "invitations": "off"}),
        )
        .send()
        .await?;
    let v = r.ok(200)?;
    check_eq!(v["name"].as_str(), Some(new_name.as_str()), "name");
    check_eq!(v["privacy"].as_str(), Some("closed"), "privacy");
    check_eq!(v["invitations"].as_str(), Some("off"), "invitations");
    let r = cx
        .patch(format!("/v1/rooms/{room}"))
        .as_user(m)
        .json(json!({"description": "member was here"}))
        .send()
        .await?;
    r.err(403, "forbidden")?;
    if let Ok(admin) = cx.admin() {
        let r = cx
            .patch(format!("/v1/rooms/{room}"))
            .bearer(&admin)
            .json(json!({"description": "admin"}))
            .send()
            .await?;
        check_eq!(
            r.ok(200)?["description"].as_str(),
            Some("admin"),
            "description"
        );
    }
    Ok(())
}

async fn normal_type_empties_presenters(cx: &Ctx) -> Check {
    let p = &cx.w.presenter;
    let room = cx
        .room(json!({"type": "auditorium", "members": [p.principal()], "presenters": [p.principal()]}))
        .await?;
    let r = cx
        .patch(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.manager)
        .json(json!({"type": "normal"}))
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["presenters"],
        json!([]),
        "presenters after type normal"
    );
    Ok(())
}

async fn managers_move_rooms_only_where_creators(cx: &Ctx) -> Check {
    cx.admin()?;
    let room = cx.room(json!({})).await?;
    let elsewhere = cx.category(json!({})).await?;
    let r = cx
        .patch(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.manager)
        .json(json!({ "category": elsewhere }))
        .send()
        .await?;
    r.err(403, "forbidden")?;
    let mine = cx
        .category(json!({"creators": [cx.w.manager.principal()]}))
        .await?;
    let r = cx
        .patch(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.manager)
        .json(json!({ "category": mine }))
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["category"].as_u64(),
        Some(mine),
        "category after the move"
    );
    Ok(())
}

async fn moving_prunes_out_of_scope_entries(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let users = cx.fresh_users(2).await?;
    let room = cx
        .room(json!({"members": [users[0].principal(), users[1].principal()]}))
        .await?;
    let narrow = cx
        .category(
            json!({"allowed": [users[0].principal(), cx.w.manager.principal()],
            "creators": [cx.w.manager.principal()]}),
        )
        .await?;
    cx.patch(format!("/v1/rooms/{room}"))
        .bearer(&admin)
        .json(json!({ "category": narrow }))
        .send()
        .await?
        .ok(200)?;
    let r = get_room(cx, room, &admin).await?;
    check_eq!(
        r.ok(200)?["members"],
        json!([users[0].principal()]),
        "members after moving to a narrower category"
    );
    Ok(())
}

async fn list_entries_must_be_in_scope_and_known(cx: &Ctx) -> Check {
    let room = cx.room(json!({})).await?;
    let change = |body: Value| {
        cx.post(format!("/v1/rooms/{room}/lists/members"))
            .as_user(&cx.w.manager)
            .json(body)
            .send()
    };
    let ghost = format!("user:{}", cx.name("ghost"));
    let r = change(json!({"add": [cx.w.member.principal(), ghost]})).await?;
    r.err(404, "not_found")?;
    check_eq!(r.field(), Some("add[1]"), "field naming the unknown entry");
    if cx.w.admin.is_some() {
        let u = cx.fresh_users(1).await?.remove(0);
        let cat = cx
            .category(
                json!({"allowed": [cx.w.manager.principal(), cx.w.member.principal()],
                "creators": [cx.w.manager.principal()]}),
            )
            .await?;
        let room2 = cx.room(json!({ "category": cat })).await?;
        let r = cx
            .post(format!("/v1/rooms/{room2}/lists/members"))
            .as_user(&cx.w.manager)
            .json(json!({"add": [cx.w.member.principal(), u.principal()]}))
            .send()
            .await?;
        r.err(422, "not_allowed_by_category")?;
        check_eq!(
            r.field(),
            Some("add[1]"),
            "field naming the out-of-scope entry"
        );
        // A group entry is judged by the group, not only by its users: a
        // group the category does not allow is out of scope too.
        let g = cx.name("g");
        cx.post("/v1/admin/groups")
            .bearer(&cx.admin()?)
            .json(json!({"name": g, "members": [u.principal()]}))
            .send()
            .await?
            .setup(201, "create a group")?;
        let r = cx
            .post(format!("/v1/rooms/{room2}/lists/members"))
            .as_user(&cx.w.manager)
            .json(json!({"add": [format!("group:{g}")]}))
            .send()
            .await?;
        r.err(422, "not_allowed_by_category")?;
        check_eq!(
            r.field(),
            Some("add[0]"),
            "field naming the out-of-scope group"
        );
    }
    Ok(())
}

async fn presenters_only_in_auditoriums_and_members(cx: &Ctx) -> Check {
    let p = &cx.w.presenter;
    let normal = cx.room(json!({"members": [p.principal()]})).await?;
    let r = cx
        .post(format!("/v1/rooms/{normal}/lists/presenters"))
        .as_user(&cx.w.manager)
        .json(json!({"add": [p.principal()]}))
        .send()
        .await?;
    r.err(409, "invalid_state")?;
    cx.shape("error.invalid_state", &r.body);
    let aud = cx.room(json!({"type": "auditorium"})).await?;
    let r = cx
        .post(format!("/v1/rooms/{aud}/lists/presenters"))
        .as_user(&cx.w.manager)
        .json(json!({"add": [p.principal()]}))
        .send()
        .await?;
    r.err(409, "invalid_state")?;
    cx.post(format!("/v1/rooms/{aud}/lists/members"))
        .as_user(&cx.w.manager)
        .json(json!({"add": [p.principal()]}))
        .send()
        .await?
        .ok(200)?;
    cx.post(format!("/v1/rooms/{aud}/lists/presenters"))
        .as_user(&cx.w.manager)
        .json(json!({"add": [p.principal()]}))
        .send()
        .await?
        .ok(200)?;
    let r = cx
        .post(format!("/v1/rooms/{aud}/lists/members"))
        .as_user(&cx.w.manager)
        .json(json!({"remove": [p.principal()]}))
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["presenters"],
        json!([]),
        "presenters after removing the member"
    );
    Ok(())
}

async fn list_changes_remove_then_add(cx: &Ctx) -> Check {
    let (m, o) = (&cx.w.member, &cx.w.outsider);
    let room = cx.room(json!({"members": [m.principal()]})).await?;
    let change = |body: Value| {
        cx.post(format!("/v1/rooms/{room}/lists/members"))
            .as_user(&cx.w.manager)
            .json(body)
            .send()
    };
    // Removes apply before adds: removing and adding the same entry keeps it.
    let r =
        change(json!({"add": [o.principal()], "remove": [o.principal(), m.principal()]})).await?;
    let v = r.ok(200)?.clone();
    cx.shape("room_after_list_change", &v);
    check_eq!(v["members"], json!([o.principal()]), "members");
    change(json!({"add": [o.principal()]})).await?.ok(200)?;
    let r = change(json!({"remove": [m.principal()]})).await?;
    check_eq!(r.ok(200)?["members"], json!([o.principal()]), "members");
    let r = cx
        .post(format!("/v1/rooms/{room}/lists/managers"))
        .as_user(&cx.w.manager)
        .json(json!({"add": [m.principal()]}))
        .send()
        .await?;
    let managers = r.ok(200)?["managers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    check!(
        managers.contains(&json!(m.principal())),
        "managers: {managers:?}"
    );
    Ok(())
}

async fn disabling_removes_endpoints_and_hides_room(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = cx
        .room(json!({"privacy": "open", "members": [m.principal()]}))
        .await?;
    cx.say(m, room, "kept").await?;
    let (ep, _) = cx.join(m, room).await?;
    let (mut s, _) = cx.stream(m, &ep, &[]).await?;
    let patch = |disabled: bool| {
        cx.patch(format!("/v1/rooms/{room}"))
            .as_user(&cx.w.manager)
            .json(json!({ "disabled": disabled }))
            .send()
    };
    check_eq!(
        patch(true).await?.ok(200)?["disabled"].as_bool(),
        Some(true),
        "disabled"
    );
    s.until(
        "removed (disabled)",
        |e| matches!(e, Event::Removed { room: r, reason: RemovedReason::Disabled } if *r == room),
    )
    .await?;
    get_room(cx, room, &m.token)
        .await?
        .err(404, "room_not_found")?;
    get_room(cx, room, &cx.w.manager.token).await?.ok(200)?;
    let r = cx
        .post(format!("/v1/rooms/{room}/join"))
        .as_user(&cx.w.manager)
        .json(json!({"endpoint": cx.endpoint(&cx.w.manager)}))
        .send()
        .await?;
    r.err(403, "forbidden")?;
    cx.get(format!("/v1/rooms/{room}/messages"))
        .as_user(&cx.w.manager)
        .send()
        .await?
        .err(403, "forbidden")?;
    cx.post(format!("/v1/rooms/{room}/messages"))
        .as_user(m)
        .json(json!({"text": "x"}))
        .send()
        .await?
        .err(404, "room_not_found")?;
    patch(false).await?.ok(200)?;
    let after = get_room(cx, room, &m.token).await?;
    let v = after.ok(200)?;
    check_eq!(
        v["members"],
        json!([m.principal()]),
        "members after re-enabling"
    );
    let msgs = cx.all_messages(&m.token, room).await?;
    check!(
        msgs.len() == 1 && msgs[0]["text"] == "kept",
        "history after re-enabling: {msgs:?}"
    );
    Ok(())
}

async fn only_administrators_delete_rooms(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = cx
        .room(json!({"privacy": "open", "members": [m.principal()]}))
        .await?;
    cx.say(m, room, "doomed").await?;
    cx.delete(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.manager)
        .send()
        .await?
        .err(403, "forbidden")?;
    let admin = cx.admin()?;
    let (ep, _) = cx.join(m, room).await?;
    let (mut s, _) = cx.stream(m, &ep, &[]).await?;
    cx.delete(format!("/v1/rooms/{room}"))
        .bearer(&admin)
        .send()
        .await?
        .ok(204)?;
    s.until(
        "removed (deleted)",
        |e| matches!(e, Event::Removed { room: r, reason: RemovedReason::Deleted } if *r == room),
    )
    .await?;
    get_room(cx, room, &admin)
        .await?
        .err(404, "room_not_found")?;
    let r = cx
        .get(format!("/v1/search/messages?q=doomed&author={}", m.name))
        .as_user(m)
        .send()
        .await?;
    check!(
        !r.ok(200)?["results"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["room"] == room),
        "messages of a deleted room are still searchable"
    );
    Ok(())
}

async fn new_members_get_one_invitation(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let room = cx.room(json!({"privacy": "closed"})).await?;
    let (ep, _) = cx
        .join(&users[0], cx.room(json!({"privacy": "open"})).await?)
        .await?;
    let (mut s, _) = cx.stream(&users[0], &ep, &[]).await?;
    // Drain what earlier runs queued for the account.
    for u in &users {
        cx.get("/v1/me/invitations")
            .as_user(u)
            .send()
            .await?
            .ok(200)?;
    }
    let adds: Vec<String> = match cx.admin() {
        Ok(admin) => {
            let g = cx.name("g");
            cx.post("/v1/admin/groups")
                .bearer(&admin)
                .json(json!({"name": g, "members": [users[0].principal(), users[1].principal()]}))
                .send()
                .await?
                .setup(201, "create a group")?;
            vec![format!("group:{g}")]
        }
        Err(_) => users.iter().map(|u| u.principal()).collect(),
    };
    let mut adds = adds;
    adds.push(cx.w.manager.principal());
    cx.post(format!("/v1/rooms/{room}/lists/members"))
        .as_user(&cx.w.manager)
        .json(json!({ "add": adds }))
        .send()
        .await?
        .ok(200)?;
    let ev = s
        .until(
            "invitation event",
            |e| matches!(e, Event::Invitation { room: r, .. } if *r == room),
        )
        .await?;
    if let Event::Invitation { invited_by, .. } = ev {
        check_eq!(invited_by, cx.w.manager.name.clone(), "invited_by");
    }
    for u in &users {
        let r = cx.get("/v1/me/invitations").as_user(u).send().await?;
        let n = r.ok(200)?["invitations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["room"] == room)
            .count();
        check_eq!(n, 1, "invitations of {}", u.name);
    }
    let r = cx
        .get("/v1/me/invitations")
        .as_user(&cx.w.manager)
        .send()
        .await?;
    check!(
        !r.ok(200)?["invitations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["room"] == room),
        "the user who made the change was invited"
    );
    Ok(())
}
