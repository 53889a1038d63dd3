//! §10 posting (kinds, idempotency keys, sequence numbers, durability,
//! categories without history) and §11 history and search.

use std::time::Duration;

use pchat_protocol::Event;
use serde_json::{json, Value};

use super::{case, Case};
use crate::ctx::{Check, Ctx, Flaw, User};
use crate::{check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("PC-10.1a", post_kinds_titles_and_keys),
        case!("PC-10.1b", posting_needs_post_permission),
        case!("PC-10.2a", repeated_client_key_returns_the_original),
        case!("PC-10.2b", reused_key_with_other_content_conflicts),
        case!("PC-10.3a", seq_starts_at_one_and_is_dense),
        case!("PC-10.3a", seq_continues_after_a_restart, Restart),
        case!("PC-10.3b", acknowledged_posts_survive_kill_9, Restart),
        case!("PC-10.3c", ts_never_decreases_with_seq),
        case!("PC-10.3d", an_answered_post_is_known_at_once),
        case!("PC-10.4a", history_false_keeps_nothing_readable),
        case!("PC-11.1a", history_pages_before_and_after),
        case!("PC-11.1b", history_and_live_delivery_agree),
        case!("PC-11.2a", message_search_terms_and_flags),
        case!("PC-11.2b", search_rooms_must_all_be_readable),
        case!("PC-11.2c", search_truncated_over_limit),
    ]
}

fn path(room: u64) -> String {
    format!("/v1/rooms/{room}/messages")
}

async fn room_with(cx: &Ctx, users: &[&User]) -> Result<u64, Flaw> {
    let members: Vec<String> = users.iter().map(|u| u.principal()).collect();
    cx.room(json!({"privacy": "closed", "members": members}))
        .await
}

async fn post_kinds_titles_and_keys(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = room_with(cx, &[m]).await?;
    let post = |body: Value| cx.post(path(room)).as_user(m).json(body).send();
    let r = post(json!({"text": "plain"})).await?;
    let v = r.ok(201)?.clone();
    cx.shape("message", &v);
    check_eq!(v["room"].as_u64(), Some(room), "room");
    check_eq!(v["seq"].as_u64(), Some(1), "seq");
    check_eq!(v["sender"].as_str(), Some(m.name.as_str()), "sender");
    check_eq!(v["kind"].as_str(), Some("normal"), "default kind");
    check_eq!(v["text"].as_str(), Some("plain"), "text");
    check!(v["ts"].is_string(), "ts: {v}");
    check!(
        v.get("title").is_none_or(Value::is_null),
        "a normal message has a title: {v}"
    );
    let r = post(json!({"text": "alert!", "kind": "alert"})).await?;
    check_eq!(r.ok(201)?["kind"].as_str(), Some("alert"), "kind");
    let r = post(json!({"text": "once upon", "kind": "story", "title": "Tale"})).await?;
    let v = r.ok(201)?.clone();
    cx.shape("message.story", &v);
    check_eq!(v["title"].as_str(), Some("Tale"), "story title");
    for (bad, why) in [
        (json!({"text": "x", "kind": "story"}), "story without title"),
        (
            json!({"text": "x", "kind": "story", "title": ""}),
            "empty title",
        ),
        (
            json!({"text": "x", "title": "t"}),
            "title on a normal message",
        ),
        (json!({"text": ""}), "empty text"),
        (json!({"text": "x", "kind": "poem"}), "unknown kind"),
        (json!({"text": "x", "client_key": ""}), "empty client_key"),
        (
            json!({"text": "x", "client_key": "has space"}),
            "client_key with a space",
        ),
        (
            json!({"text": "x", "client_key": "k".repeat(65)}),
            "client_key of 65",
        ),
    ] {
        post(bad)
            .await?
            .err(400, "invalid_request")
            .map_err(|f| Flaw::Fail(format!("{why}: {f:?}")))?;
    }
    post(json!({"text": "keyed", "client_key": "k".repeat(64)}))
        .await?
        .ok(201)?;
    Ok(())
}

async fn posting_needs_post_permission(cx: &Ctx) -> Check {
    let (m, o) = (&cx.w.member, &cx.w.outsider);
    let closed = room_with(cx, &[m]).await?;
    cx.post(path(closed))
        .as_user(o)
        .json(json!({"text": "x"}))
        .send()
        .await?
        .err(403, "forbidden")?;
    let open = cx.room(json!({"privacy": "open"})).await?;
    cx.post(path(open))
        .as_user(o)
        .json(json!({"text": "x"}))
        .send()
        .await?
        .ok(201)?;
    let count = cx.all_messages(&m.token, closed).await?.len();
    check_eq!(count, 0, "messages after a refused post");
    Ok(())
}

async fn repeated_client_key_returns_the_original(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = room_with(cx, &[m]).await?;
    let body = json!({"text": "once", "client_key": "key-1"});
    let first = cx
        .post(path(room))
        .as_user(m)
        .json(body.clone())
        .send()
        .await?;
    let original = first.ok(201)?.clone();
    cx.say(m, room, "in between").await?;
    let again = cx.post(path(room)).as_user(m).json(body).send().await?;
    check_eq!(
        again.ok(200)?.clone(),
        original,
        "the repeated post's answer"
    );
    let texts: Vec<String> = cx
        .all_messages(&m.token, room)
        .await?
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect();
    check_eq!(
        texts,
        vec!["once".to_owned(), "in between".to_owned()],
        "history"
    );
    // The same key in another room, or by another sender, is a new message.
    let other = room_with(cx, &[m, &cx.w.presenter]).await?;
    let r = cx
        .post(path(other))
        .as_user(m)
        .json(json!({"text": "once", "client_key": "key-1"}))
        .send()
        .await?;
    r.ok(201)?;
    let r = cx
        .post(path(other))
        .as_user(&cx.w.presenter)
        .json(json!({"text": "once", "client_key": "key-1"}))
        .send()
        .await?;
    r.ok(201)?;
    Ok(())
}

async fn reused_key_with_other_content_conflicts(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = room_with(cx, &[m]).await?;
    cx.post(path(room))
        .as_user(m)
        .json(json!({"text": "first", "client_key": "k"}))
        .send()
        .await?
        .ok(201)?;
    for body in [
        json!({"text": "second", "client_key": "k"}),
        json!({"text": "first", "kind": "alert", "client_key": "k"}),
        json!({"text": "first", "kind": "story", "title": "t", "client_key": "k"}),
    ] {
        let r = cx.post(path(room)).as_user(m).json(body).send().await?;
        r.err(409, "idempotency_conflict")?;
        cx.shape("error.idempotency_conflict", &r.body);
    }
    check_eq!(cx.all_messages(&m.token, room).await?.len(), 1, "messages");
    Ok(())
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().filter_map(|m| m["seq"].as_u64()).collect()
}

async fn seq_starts_at_one_and_is_dense(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let room = room_with(cx, &[&users[0], &users[1]]).await?;
    let mut acked = Vec::new();
    for i in 0..6 {
        acked.push(cx.say(&users[i % 2], room, &format!("n{i}")).await?);
    }
    check_eq!(acked, (1..=6).collect::<Vec<u64>>(), "acknowledged seqs");
    // Concurrent posts still get distinct, dense numbers.
    let texts: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    let futs = texts
        .iter()
        .enumerate()
        .map(|(i, t)| cx.say(&users[i % 2], room, t));
    let mut more: Vec<u64> = futures_util::future::join_all(futs)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    more.sort_unstable();
    check_eq!(
        more,
        (7..=12).collect::<Vec<u64>>(),
        "seqs of concurrent posts"
    );
    let stored = seqs(&cx.all_messages(&users[0].token, room).await?);
    check_eq!(stored, (1..=12).collect::<Vec<u64>>(), "seqs in history");
    Ok(())
}

async fn seq_continues_after_a_restart(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = room_with(cx, &[m]).await?;
    for i in 0..3 {
        cx.say(m, room, &format!("before {i}")).await?;
    }
    cx.restart_server().await?;
    let r = cx
        .post(path(room))
        .as_user(m)
        .json(json!({"text": "after"}))
        .send()
        .await?;
    check_eq!(
        r.ok(201)?["seq"].as_u64(),
        Some(4),
        "first seq after the restart"
    );
    let stored = seqs(&cx.all_messages(&m.token, room).await?);
    check_eq!(stored, vec![1, 2, 3, 4], "seqs in history");
    Ok(())
}

async fn acknowledged_posts_survive_kill_9(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let room = room_with(cx, &[&users[0], &users[1]]).await?;
    // Posts keep flowing while the server is killed; every one answered 201
    // must be there afterwards.
    let acked = std::sync::Mutex::new(Vec::<(u64, String)>::new());
    let poster = |u: &User| {
        let u = u.clone();
        let acked = &acked;
        async move {
            for i in 0..200 {
                let text = format!("{}-{i}", u.name);
                let r = cx
                    .post(path(room))
                    .as_user(&u)
                    .json(json!({ "text": text }))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status == 201 => {
                        let seq = r.body["seq"].as_u64().unwrap_or(0);
                        acked.lock().expect("acked lock").push((seq, text));
                    }
                    _ => return,
                }
            }
        }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cx.restart_server().await
    };
    let (_, _, restarted) = tokio::join!(poster(&users[0]), poster(&users[1]), killer);
    restarted?;
    let acked = acked.into_inner().expect("acked lock");
    check!(
        !acked.is_empty(),
        "no post was acknowledged before the restart"
    );
    let stored: Vec<(u64, String)> = cx
        .all_messages(&users[0].token, room)
        .await?
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap_or(0),
                m["text"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for a in &acked {
        check!(
            stored.contains(a),
            "acknowledged {a:?} is gone after the restart"
        );
    }
    Ok(())
}

async fn ts_never_decreases_with_seq(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let room = room_with(cx, &[&users[0], &users[1]]).await?;
    let texts: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let futs = texts
        .iter()
        .enumerate()
        .map(|(i, t)| cx.say(&users[i % 2], room, t));
    for r in futures_util::future::join_all(futs).await {
        r?;
    }
    let msgs = cx.all_messages(&users[0].token, room).await?;
    let ts: Vec<&str> = msgs.iter().filter_map(|m| m["ts"].as_str()).collect();
    check!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "ts decreases with seq: {ts:?}"
    );
    Ok(())
}

async fn an_answered_post_is_known_at_once(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let (reader, writer) = (&users[0], &users[1]);
    let room = room_with(cx, &[reader, writer]).await?;
    for n in 0..30 {
        let seq = cx.say(writer, room, &format!("known {n}")).await?;
        let shown = cx
            .get(format!("/v1/rooms/{room}"))
            .as_user(reader)
            .send()
            .await?;
        let last = shown.ok(200)?["last_seq"].as_u64();
        check!(
            last.is_some_and(|l| l >= seq),
            "post {n} was answered with seq {seq}, then the room showed last_seq {last:?}"
        );
    }
    Ok(())
}

async fn history_false_keeps_nothing_readable(cx: &Ctx) -> Check {
    cx.admin()?;
    let users = cx.actors(2).await?;
    let (reader, writer) = (&users[0], &users[1]);
    let cat = cx
        .category(json!({"history": false, "creators": [cx.w.manager.principal()]}))
        .await?;
    let room = cx
        .room(json!({"category": cat, "privacy": "open", "members": [reader.principal(), writer.principal()]}))
        .await?;
    let (ep, _) = cx.join(reader, room).await?;
    let (mut s, _) = cx.stream(reader, &ep, &[]).await?;
    let r = cx
        .post(path(room))
        .as_user(writer)
        .json(json!({"text": "ephemeral words"}))
        .send()
        .await?;
    check_eq!(r.ok(201)?["seq"].as_u64(), Some(1), "seq without history");
    let live = s.messages(room, 1).await?;
    check_eq!(live[0].text.as_str(), "ephemeral words", "delivered live");
    s.close().await;
    check_eq!(
        cx.all_messages(&reader.token, room).await?.len(),
        0,
        "history"
    );
    let (_, v) = cx.join(writer, room).await?;
    check_eq!(
        v["messages"].as_array().map(Vec::len),
        Some(0),
        "join messages"
    );
    let r = cx
        .get(format!("/v1/search/messages?q=ephemeral&rooms={room}"))
        .as_user(reader)
        .send()
        .await?;
    check_eq!(
        r.ok(200)?["results"].as_array().map(Vec::len),
        Some(0),
        "search results"
    );
    let (mut s, _) = cx.stream(reader, &ep, &[(room, 0)]).await?;
    let replay = s.drain(Duration::from_millis(500)).await?;
    check!(
        !replay
            .iter()
            .any(|e| matches!(e, Event::Message(m) if m.room == room)),
        "a resume replayed a message of a room without history"
    );
    Ok(())
}

async fn history_pages_before_and_after(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = room_with(cx, &[m]).await?;
    for i in 1..=7 {
        cx.say(m, room, &format!("h{i}")).await?;
    }
    let page = |q: String| cx.get(format!("{}?{q}", path(room))).as_user(m).send();
    let r = page("limit=3".into()).await?;
    let v = r.ok(200)?.clone();
    cx.shape("history", &v);
    check_eq!(
        seqs(v["messages"].as_array().map_or(&[][..], |a| a)),
        vec![5, 6, 7],
        "most recent 3"
    );
    check_eq!(v["has_more"].as_bool(), Some(true), "has_more");
    let r = page("before=5&limit=3".into()).await?;
    let v = r.ok(200)?;
    check_eq!(
        seqs(v["messages"].as_array().map_or(&[][..], |a| a)),
        vec![2, 3, 4],
        "before=5"
    );
    let r = page("after=5&limit=3".into()).await?;
    let v = r.ok(200)?;
    check_eq!(
        seqs(v["messages"].as_array().map_or(&[][..], |a| a)),
        vec![6, 7],
        "after=5"
    );
    check_eq!(v["has_more"].as_bool(), Some(false), "has_more after=5");
    let r = page("after=0&limit=2".into()).await?;
    check_eq!(
        seqs(r.ok(200)?["messages"].as_array().map_or(&[][..], |a| a)),
        vec![1, 2],
        "after=0"
    );
    for bad in ["before=5&after=2", "limit=0"] {
        page(bad.into()).await?.err(400, "invalid_request")?;
    }
    let r = page(format!("limit={}", cx.limits.history_limit_max + 1)).await?;
    r.err(400, "invalid_request")?;
    cx.get(path(room))
        .as_user(&cx.w.outsider)
        .send()
        .await?
        .err(403, "forbidden")?;
    Ok(())
}

async fn history_and_live_delivery_agree(cx: &Ctx) -> Check {
    let users = cx.actors(3).await?;
    let room = room_with(cx, &[&users[0], &users[1], &users[2]]).await?;
    let (ep, _) = cx.join(&users[0], room).await?;
    let (mut s, _) = cx.stream(&users[0], &ep, &[]).await?;
    let futs = (0..8).map(|i| {
        let u = &users[1 + i % 2];
        cx.post(path(room))
            .as_user(u)
            .json(json!({"text": format!("agree {i}"), "kind": if i == 3 { "alert" } else { "normal" }}))
            .send()
    });
    for r in futures_util::future::join_all(futs).await {
        r?.ok(201)?;
    }
    let live = s.messages(room, 8).await?;
    let live: Vec<Value> = live
        .iter()
        .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
        .collect();
    let stored = cx.all_messages(&users[0].token, room).await?;
    check_eq!(live, stored, "live delivery vs history");
    Ok(())
}

fn texts(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect()
}

async fn message_search_terms_and_flags(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let (a, b) = (&users[0], &users[1]);
    let room = room_with(cx, &[a, b]).await?;
    let tag = cx.name("zq").replace('-', "");
    let lines = [
        (a, format!("{tag} Apple banana")),
        (b, format!("banana {tag} cherry")),
        (a, format!("{tag} apple-banana pie")),
        (b, format!("ÉCLAIR {tag}")),
    ];
    let mut stamps = Vec::new();
    for (u, t) in &lines {
        let r = cx
            .post(path(room))
            .as_user(u)
            .json(json!({ "text": t }))
            .send()
            .await?;
        stamps.push(r.ok(201)?["ts"].as_str().unwrap_or("").to_owned());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let search = |q: String| {
        let u = a.clone();
        async move {
            let r = cx
                .get(format!("/v1/search/messages?{q}&rooms={room}"))
                .as_user(&u)
                .send()
                .await?;
            let v = r.ok(200)?.clone();
            Ok::<Value, Flaw>(v)
        }
    };
    let enc = |s: &str| s.replace(' ', "%20").replace('+', "%2B");
    let v = search(format!("q={tag}%20banana")).await?;
    cx.shape("search", &v);
    check_eq!(
        texts(&v),
        vec![lines[2].1.clone(), lines[1].1.clone(), lines[0].1.clone()],
        "every term, newest first"
    );
    let v = search(format!("q={}&exact=true", enc(&format!("{tag} apple")))).await?;
    check_eq!(
        texts(&v),
        vec![lines[2].1.clone(), lines[0].1.clone()],
        "exact (case-insensitive)"
    );
    let v = search(format!(
        "q={}&exact=true&case_sensitive=true",
        enc(&format!("{tag} Apple"))
    ))
    .await?;
    check_eq!(
        texts(&v),
        vec![lines[0].1.clone()],
        "exact and case-sensitive"
    );
    let v = search(format!("q=%C3%A9clair%20{tag}")).await?;
    check_eq!(texts(&v), vec![lines[3].1.clone()], "Unicode lower-casing");
    let v = search(format!("author={}&q={tag}", b.name)).await?;
    check_eq!(
        texts(&v),
        vec![lines[3].1.clone(), lines[1].1.clone()],
        "author"
    );
    let (from, to) = (&stamps[1], &stamps[3]);
    if from < &stamps[2] && &stamps[2] < to && &stamps[0] < from {
        let v = search(format!("q={tag}&from={from}&to={to}")).await?;
        check_eq!(
            texts(&v),
            vec![lines[2].1.clone(), lines[1].1.clone()],
            "from inclusive, to exclusive"
        );
    }
    let r = cx
        .get(format!("/v1/search/messages?rooms={room}"))
        .as_user(a)
        .send()
        .await?;
    r.err(400, "invalid_request")?;
    Ok(())
}

async fn search_rooms_must_all_be_readable(cx: &Ctx) -> Check {
    let (m, o) = (&cx.w.member, &cx.w.outsider);
    let tag = cx.name("sr").replace('-', "");
    let closed = room_with(cx, &[m]).await?;
    let secret = cx
        .room(json!({"privacy": "secret", "members": [m.principal()]}))
        .await?;
    let open = cx.room(json!({"privacy": "open"})).await?;
    cx.say(m, closed, &format!("{tag} closed")).await?;
    cx.say(m, open, &format!("{tag} open")).await?;
    let q = |rooms: String, u: &User| {
        cx.get(format!("/v1/search/messages?q={tag}{rooms}"))
            .as_user(u)
            .send()
    };
    let r = q(format!("&rooms={open},{closed}"), o).await?;
    r.err(403, "forbidden")?;
    let r = q(format!("&rooms={open},{secret},{closed}"), o).await?;
    r.err(404, "room_not_found")?;
    let r = q(String::new(), o).await?;
    check_eq!(
        texts(r.ok(200)?),
        vec![format!("{tag} open")],
        "outsider search of all rooms"
    );
    let r = q(String::new(), m).await?;
    let mut t = texts(r.ok(200)?);
    t.sort();
    check_eq!(
        t,
        vec![format!("{tag} closed"), format!("{tag} open")],
        "member search of all rooms"
    );
    Ok(())
}

async fn search_truncated_over_limit(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = room_with(cx, &[m]).await?;
    let tag = cx.name("tr").replace('-', "");
    for i in 0..3 {
        cx.say(m, room, &format!("{tag} {i}")).await?;
    }
    let get = |limit: u32| {
        cx.get(format!("/v1/search/messages?q={tag}&limit={limit}"))
            .as_user(m)
            .send()
    };
    let r = get(2).await?;
    let v = r.ok(200)?;
    check_eq!(texts(v).len(), 2, "results with limit=2");
    check_eq!(
        v["truncated"].as_bool(),
        Some(true),
        "truncated with 3 matches, limit 2"
    );
    let r = get(3).await?;
    check_eq!(
        r.ok(200)?["truncated"].as_bool(),
        Some(false),
        "truncated with 3 matches, limit 3"
    );
    Ok(())
}
