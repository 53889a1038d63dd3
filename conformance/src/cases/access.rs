//! §8 permissions: the find / read / post table, managers, administrators,
//! scope, and the indistinguishable 404 of rooms one may not find.

use reqwest::Method;
use serde_json::{json, Value};

use super::{case, Case};
use crate::ctx::{Check, Ctx, Flaw, User};
use crate::{check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("PC-8.1a", the_permission_table_holds),
        case!("PC-8.1b", managers_who_are_not_members),
        case!("PC-8.1c", administrators_find_read_and_manage),
        case!("PC-8.2a", out_of_scope_rooms_do_not_exist),
        case!("PC-8.3a", hidden_rooms_look_like_missing_ones),
        case!("PC-8.3b", found_but_not_allowed_is_forbidden),
    ]
}

/// The status of find (GET room), join, read (history) and post for `u`.
async fn probe(cx: &Ctx, u: &User, room: u64) -> Result<[u16; 4], Flaw> {
    let find = cx
        .get(format!("/v1/rooms/{room}"))
        .as_user(u)
        .send()
        .await?;
    let join = cx
        .post(format!("/v1/rooms/{room}/join"))
        .as_user(u)
        .json(json!({"endpoint": cx.endpoint(u)}))
        .send()
        .await?;
    let read = cx
        .get(format!("/v1/rooms/{room}/messages"))
        .as_user(u)
        .send()
        .await?;
    let post = cx
        .post(format!("/v1/rooms/{room}/messages"))
        .as_user(u)
        .json(json!({"text": "probe"}))
        .send()
        .await?;
    for r in [&find, &join, &read, &post] {
        match r.status {
            403 => {
                r.err(403, "forbidden")?;
            }
            404 => {
                r.err(404, "room_not_found")?;
            }
            _ => {}
        }
    }
    Ok([find.status, join.status, read.status, post.status])
}

async fn expect(cx: &Ctx, who: &str, u: &User, room: u64, what: &str, want: [u16; 4]) -> Check {
    let got = probe(cx, u, room).await?;
    check_eq!(
        got,
        want,
        "{who} in a {what} room: [find, join, read, post] statuses"
    );
    Ok(())
}

async fn the_permission_table_holds(cx: &Ctx) -> Check {
    let (m, p, n) = (&cx.w.member, &cx.w.presenter, &cx.w.outsider);
    for (privacy, outsider) in [
        ("open", [200, 200, 200, 201]),
        ("closed", [200, 403, 403, 403]),
        ("secret", [404, 404, 404, 404]),
    ] {
        let room = cx
            .room(json!({"privacy": privacy, "members": [m.principal()]}))
            .await?;
        expect(cx, "a member", m, room, privacy, [200, 200, 200, 201]).await?;
        expect(cx, "a user in scope", n, room, privacy, outsider).await?;
        let aud = cx
            .room(json!({"privacy": privacy, "type": "auditorium",
                "members": [m.principal(), p.principal()], "presenters": [p.principal()]}))
            .await?;
        let what = format!("{privacy} auditorium");
        expect(cx, "a member", m, aud, &what, [200, 200, 200, 403]).await?;
        expect(cx, "a presenter", p, aud, &what, [200, 200, 200, 201]).await?;
        let mut out = outsider;
        if out[3] == 201 {
            out[3] = 403;
        }
        expect(cx, "a user in scope", n, aud, &what, out).await?;
    }
    Ok(())
}

async fn managers_who_are_not_members(cx: &Ctx) -> Check {
    let mgr = &cx.w.manager;
    for privacy in ["closed", "secret"] {
        let room = cx.room(json!({ "privacy": privacy })).await?;
        expect(
            cx,
            "a manager (not member)",
            mgr,
            room,
            privacy,
            [200, 403, 403, 403],
        )
        .await?;
        cx.patch(format!("/v1/rooms/{room}"))
            .as_user(mgr)
            .json(json!({"description": "managed"}))
            .send()
            .await?
            .ok(200)?;
    }
    let aud = cx
        .room(json!({"type": "auditorium", "members": [mgr.principal()]}))
        .await?;
    expect(
        cx,
        "a manager (member, not presenter)",
        mgr,
        aud,
        "auditorium",
        [200, 200, 200, 403],
    )
    .await?;
    Ok(())
}

async fn administrators_find_read_and_manage(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let room = cx
        .room(json!({"privacy": "secret", "members": [cx.w.member.principal()]}))
        .await?;
    cx.say(&cx.w.member, room, "for the admin").await?;
    cx.get(format!("/v1/rooms/{room}"))
        .bearer(&admin)
        .send()
        .await?
        .ok(200)?;
    cx.post(format!("/v1/rooms/{room}/join"))
        .bearer(&admin)
        .json(json!({"endpoint": format!("{}-admin", cx.ns)}))
        .send()
        .await?
        .ok(200)?;
    let r = cx
        .get(format!("/v1/rooms/{room}/messages"))
        .bearer(&admin)
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["messages"].as_array().map(Vec::len),
        Some(1),
        "messages"
    );
    cx.patch(format!("/v1/rooms/{room}"))
        .bearer(&admin)
        .json(json!({"description": "admin"}))
        .send()
        .await?
        .ok(200)?;
    cx.post(format!("/v1/rooms/{room}/messages"))
        .bearer(&admin)
        .json(json!({"text": "not a member"}))
        .send()
        .await?
        .err(403, "forbidden")?;
    Ok(())
}

async fn out_of_scope_rooms_do_not_exist(cx: &Ctx) -> Check {
    cx.admin()?;
    let cat = cx
        .category(
            json!({"allowed": [cx.w.manager.principal(), cx.w.member.principal()],
            "creators": [cx.w.manager.principal()]}),
        )
        .await?;
    let room = cx
        .room(json!({"category": cat, "privacy": "open", "members": [cx.w.member.principal()]}))
        .await?;
    expect(
        cx,
        "a user out of scope",
        &cx.w.outsider,
        room,
        "open",
        [404, 404, 404, 404],
    )
    .await?;
    expect(
        cx,
        "a member in scope",
        &cx.w.member,
        room,
        "open",
        [200, 200, 200, 201],
    )
    .await?;
    Ok(())
}

fn without_request_id(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(e) = v.get_mut("error").and_then(Value::as_object_mut) {
        e.remove("request_id");
    }
    v
}

async fn hidden_rooms_look_like_missing_ones(cx: &Ctx) -> Check {
    let hidden = cx.room(json!({"privacy": "secret"})).await?;
    let missing: u64 = (1 << 53) - 1;
    let o = &cx.w.outsider;
    let ops: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "", None),
        (Method::PATCH, "", Some(json!({"description": "x"}))),
        (
            Method::POST,
            "/join",
            Some(json!({"endpoint": cx.endpoint(o)})),
        ),
        (
            Method::POST,
            "/leave",
            Some(json!({"endpoint": cx.endpoint(o)})),
        ),
        (Method::GET, "/messages", None),
        (Method::POST, "/messages", Some(json!({"text": "x"}))),
        (Method::GET, "/participants", None),
        (Method::POST, "/lists/members", Some(json!({"add": []}))),
    ];
    for (method, suffix, body) in ops {
        let mut answers = Vec::new();
        for room in [hidden, missing] {
            let mut req = cx
                .req(method.clone(), format!("/v1/rooms/{room}{suffix}"))
                .as_user(o);
            if let Some(b) = &body {
                req = req.json(b.clone());
            }
            answers.push(req.send().await?);
        }
        answers[0]
            .err(404, "room_not_found")
            .map_err(|f| Flaw::Fail(format!("{method} /v1/rooms/{{hidden}}{suffix}: {f:?}")))?;
        check_eq!(
            (answers[0].status, without_request_id(&answers[0].body)),
            (answers[1].status, without_request_id(&answers[1].body)),
            "{method} {suffix}: a hidden room vs a room that never existed"
        );
    }
    for path in [format!("/v1/me/followed/{hidden}")] {
        let a = cx.put(path.clone()).as_user(o).send().await?;
        let b = cx
            .put(format!("/v1/me/followed/{missing}"))
            .as_user(o)
            .send()
            .await?;
        check_eq!(
            (a.status, without_request_id(&a.body)),
            (b.status, without_request_id(&b.body)),
            "PUT {path}: hidden vs missing"
        );
    }
    Ok(())
}

async fn found_but_not_allowed_is_forbidden(cx: &Ctx) -> Check {
    let room = cx.room(json!({"privacy": "closed"})).await?;
    let o = &cx.w.outsider;
    cx.get(format!("/v1/rooms/{room}"))
        .as_user(o)
        .send()
        .await?
        .ok(200)?;
    let r = cx
        .get(format!("/v1/rooms/{room}/participants"))
        .as_user(o)
        .send()
        .await?;
    r.err(403, "forbidden")?;
    let r = cx
        .patch(format!("/v1/rooms/{room}"))
        .as_user(o)
        .json(json!({"description": "x"}))
        .send()
        .await?;
    r.err(403, "forbidden")?;
    check!(
        probe(cx, o, room).await? == [200, 403, 403, 403],
        "join, read and post by a user who may find a closed room are not all 403"
    );
    Ok(())
}
