//! §9 endpoints, joining and the event stream, and §12 participants and
//! presence.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pchat_protocol::{Event, PresenceState, RemovedReason};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{case, Case};
use crate::ctx::{Check, Ctx, Flaw, Setup, User};
use crate::rawws::{self, Frame};
use crate::{check, check_eq};

/// PC-9.6c: a connection that takes no frame for this long is a slow consumer.
const SLOW_SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub fn cases() -> Vec<Case> {
    vec![
        case!("PC-9.1a", sessions_linger_then_leave),
        case!("PC-9.1b", participant_while_any_session_joined),
        case!("PC-9.1c", too_many_endpoints_are_refused),
        case!("PC-9.2a", join_answer_and_permission),
        case!("PC-9.3a", join_returns_recent_or_since),
        case!("PC-9.3b", stream_delivers_everything_after_join),
        case!("PC-9.3c", leave_is_idempotent),
        case!("PC-9.4a", stream_upgrade_and_ready_frame),
        case!("PC-9.4b", resume_fills_the_gap_without_duplicates),
        case!("PC-9.4c", second_stream_replaces_the_first),
        case!("PC-9.4d", rejoin_takes_the_resumed_rooms_along),
        case!("PC-9.5a", events_are_typed_json_text_frames),
        case!("PC-9.5b", losing_read_permission_removes_the_endpoint),
        case!(
            "PC-9.5b",
            members_removed_while_joins_are_answered_are_not_left_in
        ),
        case!("PC-9.6a", server_pings_and_closes_silent_clients),
        case!("PC-9.6b", client_data_frames_close_the_stream),
        case!("PC-9.6c", slow_consumers_are_closed_and_resume),
        case!("PC-9.7a", close_codes_for_policy_and_normal_close),
        case!("PC-12.1a", participants_counted_and_sorted),
        case!("PC-12.2a", participant_and_presence_events),
        case!("PC-12.2b", participant_events_stop_above_the_limit),
    ]
}

async fn participants(cx: &Ctx, token: &str, room: u64, query: &str) -> Result<Value, Flaw> {
    let r = cx
        .get(format!("/v1/rooms/{room}/participants{query}"))
        .bearer(token)
        .send()
        .await?;
    Ok(r.ok(200)?.clone())
}

fn names(v: &Value) -> Vec<String> {
    v["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["user"].as_str().map(str::to_owned))
        .collect()
}

async fn open_room_for(cx: &Ctx, users: &[&User]) -> Result<u64, Flaw> {
    let members: Vec<String> = users.iter().map(|u| u.principal()).collect();
    cx.room(json!({"privacy": "open", "members": members}))
        .await
}

/// Whether `r` is one of the refusals that have no effect and may answer any
/// request of many sent at once: 429 `rate_limited` (PC-2.3a) or 503 `busy`
/// (PC-2.4a). Either status with another code is a flaw.
fn refused_without_effect(r: &crate::ctx::Resp) -> Result<bool, Flaw> {
    match r.status {
        429 => r.err(429, "rate_limited").map(|_| true),
        503 => r.err(503, "busy").map(|_| true),
        _ => Ok(false),
    }
}

async fn join_ep(
    cx: &Ctx,
    u: &User,
    room: u64,
    ep: &str,
    since: Option<u64>,
) -> Result<crate::ctx::Resp, Flaw> {
    let mut body = json!({ "endpoint": ep });
    if let Some(s) = since {
        body["since"] = json!(s);
    }
    cx.post(format!("/v1/rooms/{room}/join"))
        .as_user(u)
        .json(body)
        .send()
        .await
}

async fn sessions_linger_then_leave(cx: &Ctx) -> Check {
    let linger = cx.limits.endpoint_linger_s as u64;
    cx.can_wait("endpoint_linger_s", linger + 3)?;
    let u = cx.actors(1).await?.remove(0);
    let room = open_room_for(cx, &[&u]).await?;
    let ep = cx.endpoint(&u);
    let (s, _) = cx.stream(&u, &ep, &[]).await?;
    join_ep(cx, &u, room, &ep, None).await?.ok(200)?;
    s.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v = participants(cx, &cx.w.manager.token, room, "").await?;
    check!(
        names(&v).contains(&u.name),
        "the session left as soon as its stream closed (it must linger {linger} s)"
    );
    // The session keeps its rooms while lingering: a new stream lists it.
    let (s2, rooms) = cx.stream(&u, &ep, &[]).await?;
    check!(
        rooms.iter().any(|r| r.room == room),
        "a reconnected session lost its joined room"
    );
    s2.close().await;
    let deadline = Instant::now() + Duration::from_secs(linger + 3);
    loop {
        let v = participants(cx, &cx.w.manager.token, room, "").await?;
        if !names(&v).contains(&u.name) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Flaw::Fail(format!(
                "still a participant {} s after its last stream closed (linger {linger} s)",
                linger + 3
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn participant_while_any_session_joined(cx: &Ctx) -> Check {
    let u = cx.actors(1).await?.remove(0);
    let room = open_room_for(cx, &[&u]).await?;
    let (e1, e2) = (cx.endpoint(&u), cx.endpoint(&u));
    join_ep(cx, &u, room, &e1, None).await?.ok(200)?;
    join_ep(cx, &u, room, &e2, None).await?.ok(200)?;
    let leave = |ep: String| {
        cx.post(format!("/v1/rooms/{room}/leave"))
            .as_user(&u)
            .json(json!({ "endpoint": ep }))
            .send()
    };
    leave(e1).await?.ok(204)?;
    let v = participants(cx, &cx.w.manager.token, room, "").await?;
    check!(
        names(&v).contains(&u.name),
        "not a participant though one session is joined"
    );
    leave(e2).await?.ok(204)?;
    let v = participants(cx, &cx.w.manager.token, room, "").await?;
    check!(
        !names(&v).contains(&u.name),
        "still a participant with no session joined"
    );
    Ok(())
}

async fn too_many_endpoints_are_refused(cx: &Ctx) -> Check {
    let max = cx.limits.max_endpoints_per_user as usize;
    if max > 200 {
        return Err(Flaw::NotPossible(format!(
            "max_endpoints_per_user {max} is too many to open"
        )));
    }
    let u = cx.fresh_users(1).await?.remove(0);
    let room = open_room_for(cx, &[&u]).await?;
    for i in 0..max {
        join_ep(cx, &u, room, &format!("{}-many{i}", cx.ns), None)
            .await?
            .ok(200)?;
    }
    let r = join_ep(cx, &u, room, &format!("{}-many{max}", cx.ns), None).await?;
    r.err(409, "too_many_endpoints")?;
    cx.shape("error.too_many_endpoints", &r.body);
    // An existing session is still usable.
    join_ep(cx, &u, room, &format!("{}-many0", cx.ns), None)
        .await?
        .ok(200)?;

    // Joins answered at the same time count against one another. They
    // read history (the room has a message), which widens the moment
    // between a server's look at the user's sessions and its new one.
    let v = cx.fresh_users(1).await?.remove(0);
    let room = open_room_for(cx, &[&v]).await?;
    cx.say(&v, room, "history to read on join").await?;
    let tries = max + 8;
    let eps: Vec<String> = (0..tries).map(|i| format!("{}-race{i}", cx.ns)).collect();
    let answers =
        futures_util::future::join_all(eps.iter().map(|ep| join_ep(cx, &v, room, ep, None))).await;
    let mut made = 0;
    for r in answers {
        let r = r?;
        match r.status {
            200 => made += 1,
            409 => {
                r.err(409, "too_many_endpoints")?;
            }
            _ if refused_without_effect(&r)? => {}
            _ => {
                return Err(Flaw::Fail(format!(
                    "a join at once answered {}: {}",
                    r.status, r.body
                )))
            }
        }
    }
    check!(
        made <= max,
        "{tries} joins of new endpoints at once made {made} sessions; max_endpoints_per_user is {max}"
    );
    Ok(())
}

async fn join_answer_and_permission(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = cx
        .room(json!({"privacy": "closed", "members": [m.principal()]}))
        .await?;
    cx.say(m, room, "hello").await?;
    let (_, v) = cx.join(m, room).await?;
    cx.shape("joined", &v);
    check_eq!(v["room"]["id"].as_u64(), Some(room), "room.id");
    check_eq!(v["last_seq"].as_u64(), Some(1), "last_seq");
    check!(v["messages"].is_array(), "messages: {v}");
    check!(v["has_more"].is_boolean(), "has_more: {v}");
    check!(v["participants"].is_u64(), "participants: {v}");
    check!(v.get("disclaimer").is_some(), "disclaimer missing: {v}");
    let r = join_ep(cx, &cx.w.outsider, room, &cx.endpoint(&cx.w.outsider), None).await?;
    r.err(403, "forbidden")?;
    Ok(())
}

fn seqs(v: &Value) -> Vec<u64> {
    v["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["seq"].as_u64())
        .collect()
}

async fn join_returns_recent_or_since(cx: &Ctx) -> Check {
    let on_join = match cx.admin() {
        Ok(admin) => {
            let r = cx.get("/v1/admin/config").bearer(&admin).send().await?;
            r.setup(200, "read the configuration")?["messages_on_join"].as_u64()
        }
        Err(_) => None,
    };
    let k = on_join.unwrap_or(5);
    if k > 120 {
        return Err(Flaw::NotPossible(format!(
            "messages_on_join {k} needs too many posts"
        )));
    }
    let users = cx.actors(2).await?;
    let room = open_room_for(cx, &[&users[0], &users[1]]).await?;
    let total = k + 3;
    for i in 0..total {
        cx.say(&users[(i % 2) as usize], room, &format!("m{i}"))
            .await?;
    }
    let (_, v) = cx.join(&users[0], room).await?;
    let l = v["last_seq"].as_u64().unwrap_or(0);
    check_eq!(l, total, "last_seq");
    let got = seqs(&v);
    if on_join.is_some() {
        let want: Vec<u64> = (total - k + 1..=total).collect();
        check_eq!(got, want, "messages without since (messages_on_join {k})");
        check_eq!(
            v["has_more"].as_bool(),
            Some(true),
            "has_more when some were cut"
        );
    } else {
        check!(
            got.windows(2).all(|w| w[1] == w[0] + 1) && got.last() == Some(&l),
            "messages without since are not the most recent, ascending: {got:?}"
        );
    }
    let r = join_ep(
        cx,
        &users[1],
        room,
        &cx.endpoint(&users[1]),
        Some(total - 2),
    )
    .await?;
    let v = r.ok(200)?;
    check_eq!(seqs(v), vec![total - 1, total], "messages with since");
    check_eq!(v["has_more"].as_bool(), Some(false), "has_more with since");
    let max = cx.limits.join_since_max as u64;
    if max < total {
        let r = join_ep(cx, &users[1], room, &cx.endpoint(&users[1]), Some(0)).await?;
        let v = r.ok(200)?;
        check_eq!(
            seqs(v).len() as u64,
            max,
            "messages capped at join_since_max"
        );
        check_eq!(v["has_more"].as_bool(), Some(true), "has_more when capped");
    }
    Ok(())
}

async fn stream_delivers_everything_after_join(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let (reader, writer) = (&users[0], &users[1]);
    let room = open_room_for(cx, &[reader, writer]).await?;
    cx.say(writer, room, "before").await?;
    let (ep, v) = cx.join(reader, room).await?;
    let l = v["last_seq"].as_u64().unwrap_or(0);
    cx.say(writer, room, "between join and stream").await?;
    let (mut s, _) = cx.stream(reader, &ep, &[]).await?;
    for i in 0..4 {
        cx.say(writer, room, &format!("live {i}")).await?;
    }
    let got = s.messages(room, 5).await?;
    let got_seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    check_eq!(
        got_seqs,
        (l + 1..=l + 5).collect::<Vec<_>>(),
        "delivered seqs"
    );
    let extra = s.drain(Duration::from_millis(300)).await?;
    check!(
        !extra
            .iter()
            .any(|e| matches!(e, Event::Message(m) if m.room == room)),
        "more messages than were posted: {extra:?}"
    );
    s.close().await;
    Ok(())
}

async fn leave_is_idempotent(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let room = open_room_for(cx, &[m]).await?;
    let (ep, _) = cx.join(m, room).await?;
    for _ in 0..2 {
        let r = cx
            .post(format!("/v1/rooms/{room}/leave"))
            .as_user(m)
            .json(json!({ "endpoint": ep }))
            .send()
            .await?;
        r.ok(204)?;
    }
    let hidden = cx.room(json!({"privacy": "secret"})).await?;
    cx.post(format!("/v1/rooms/{hidden}/leave"))
        .as_user(m)
        .json(json!({ "endpoint": ep }))
        .send()
        .await?
        .err(404, "room_not_found")?;
    Ok(())
}

async fn stream_upgrade_and_ready_frame(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let r = cx
        .get(format!("/v1/stream?endpoint={}", cx.endpoint(m)))
        .as_user(m)
        .send()
        .await?;
    r.err(400, "invalid_request")?;
    let room = open_room_for(cx, &[m]).await?;
    cx.say(m, room, "one").await?;
    let (ep, _) = cx.join(m, room).await?;
    let (s, rooms) = cx.stream(m, &ep, &[]).await?;
    let entry = rooms.iter().find(|r| r.room == room);
    check_eq!(
        entry.map(|r| r.last_seq),
        Some(1),
        "ready lists the joined room with its last_seq"
    );
    s.close().await;
    Ok(())
}

/// A client that moved (here: an endpoint with no session yet) opens its
/// stream with `rejoin`: it is joined to the readable rooms of its resume
/// entries and gets what it missed after each entry, then live; a room it
/// may not read is `not_joined` and joins nothing.
async fn rejoin_takes_the_resumed_rooms_along(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let (reader, writer) = (&users[0], &users[1]);
    let a = open_room_for(cx, &[reader, writer]).await?;
    let b = open_room_for(cx, &[reader, writer]).await?;
    let closed = cx
        .room(json!({"privacy": "closed", "members": [writer.principal()]}))
        .await?;
    cx.say(writer, a, "a1").await?;
    let seen = cx.say(writer, a, "a2").await?;
    for i in 3..=5 {
        cx.say(writer, a, &format!("a{i}")).await?;
    }
    let b1 = cx.say(writer, b, "b1").await?;
    let ep = cx.endpoint(reader);
    let (mut s, ready) = cx
        .stream_rejoining(reader, &ep, &[(a, seen), (b, 0), (closed, 0)])
        .await?;
    let mut listed: Vec<(u64, u64)> = ready.iter().map(|r| (r.room, r.last_seq)).collect();
    listed.sort();
    let mut want = vec![(a, seen + 3), (b, b1)];
    want.sort();
    check_eq!(listed, want, "rooms and join points in ready");
    let mut events = Vec::new();
    let count = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Message(m) if m.room == a || m.room == b))
            .count()
    };
    while count(&events) < 4 {
        events.push(
            s.until("the messages after the resume entries", |_| true)
                .await?,
        );
    }
    events.extend(s.drain(Duration::from_millis(500)).await?);
    let live = cx.say(writer, a, "a6").await?;
    events.extend(s.drain(Duration::from_millis(700)).await?);
    let of = |room: u64| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message(m) if m.room == room => Some(m.text.clone()),
                _ => None,
            })
            .collect()
    };
    check_eq!(
        of(a),
        vec!["a3", "a4", "a5", "a6"],
        "room a after its entry {seen}, then live (seq {live})"
    );
    check_eq!(of(b), vec!["b1"], "room b after its entry 0");
    check!(
        events.iter().any(|e| matches!(e, Event::Removed { room, reason: RemovedReason::NotJoined } if *room == closed)),
        "no removed/not_joined for a resume entry naming a room the caller may not read"
    );
    check!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Message(m) if m.room == closed)),
        "a message of a room the caller may not read was delivered"
    );
    let v = participants(cx, &cx.w.manager.token, a, "").await?;
    check!(
        names(&v).contains(&reader.name),
        "the rejoined user is not a participant of the room"
    );
    let v = participants(cx, &writer.token, closed, "").await?;
    check!(
        !names(&v).contains(&reader.name),
        "the caller became a participant of a room it may not read"
    );
    s.close().await;
    let r = cx
        .get(format!("/v1/stream?endpoint={ep}&rejoin=maybe"))
        .bearer(&reader.token)
        .send()
        .await?;
    r.err(400, "invalid_request")?;
    // Without upgrade headers the answer is 400 anyway (PC-9.4a): the
    // field tells that the value was judged.
    check_eq!(r.field(), Some("rejoin"), "field of the bad rejoin value");
    Ok(())
}

async fn resume_fills_the_gap_without_duplicates(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let (reader, writer) = (&users[0], &users[1]);
    let a = open_room_for(cx, &[reader, writer]).await?;
    let b = open_room_for(cx, &[reader, writer]).await?;
    let (ep, _) = cx.join(reader, a).await?;
    join_ep(cx, reader, b, &ep, None).await?.ok(200)?;
    let (mut s, _) = cx.stream(reader, &ep, &[]).await?;
    cx.say(writer, a, "a1").await?;
    cx.say(writer, a, "a2").await?;
    let got = s.messages(a, 2).await?;
    let last = got[1].seq;
    s.close().await;
    for i in 3..=5 {
        cx.say(writer, a, &format!("a{i}")).await?;
    }
    cx.say(writer, b, "b1").await?;
    let not_joined = open_room_for(cx, &[reader]).await?;
    // Resume room a after the last seq seen; room b has no entry.
    let (mut s, ready) = cx
        .stream(reader, &ep, &[(a, last), (not_joined, 0)])
        .await?;
    let b_ready = ready.iter().find(|r| r.room == b).map(|r| r.last_seq);
    let mut events = Vec::new();
    let is_a = |e: &Event| matches!(e, Event::Message(m) if m.room == a);
    while events.iter().filter(|e| is_a(e)).count() < 3 {
        events.push(s.until("the resumed messages of room a", |_| true).await?);
    }
    let got: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) if m.room == a => Some(m.text.as_str()),
            _ => None,
        })
        .collect();
    check_eq!(got, vec!["a3", "a4", "a5"], "resumed messages");
    events.extend(s.drain(Duration::from_millis(500)).await?);
    cx.say(writer, a, "a6").await?;
    events.extend(s.drain(Duration::from_millis(700)).await?);
    let a_after: Vec<u64> = events
        .iter()
        .skip_while(|e| !matches!(e, Event::Message(m) if m.room == a && m.text == "a5"))
        .skip(1)
        .filter_map(|e| match e {
            Event::Message(m) if m.room == a => Some(m.seq),
            _ => None,
        })
        .collect();
    check_eq!(
        a_after,
        vec![last + 4],
        "room a after the resume (live, no duplicate)"
    );
    let b_msgs: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) if m.room == b => Some(m.seq),
            _ => None,
        })
        .collect();
    let want_b: Vec<u64> = if b_ready == Some(0) { vec![1] } else { vec![] };
    check_eq!(
        b_msgs,
        want_b,
        "room b (no resume entry) after ready last_seq {b_ready:?}"
    );
    check!(
        events.iter().any(|e| matches!(e, Event::Removed { room, reason: RemovedReason::NotJoined } if *room == not_joined)),
        "no removed/not_joined for a resume entry naming a room not joined"
    );
    s.close().await;
    Ok(())
}

async fn second_stream_replaces_the_first(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let ep = cx.endpoint(m);
    let (mut first, _) = cx.stream(m, &ep, &[]).await?;
    let (second, _) = cx.stream(m, &ep, &[]).await?;
    let code = first.closed(cx.event_wait).await?;
    check_eq!(code, Some(4009), "close code of the replaced stream");
    second.close().await;
    Ok(())
}

async fn events_are_typed_json_text_frames(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let (watcher, other) = (&users[0], &users[1]);
    let room = open_room_for(cx, &[watcher, other]).await?;
    let (ep, _) = cx.join(watcher, room).await?;
    // A raw socket shows the frames exactly as sent.
    let mut raw = rawws::connect(&cx.base, &watcher.token, &ep, &[], None)
        .await
        .setup("open a raw stream")?;
    let mut seen = std::collections::BTreeMap::new();
    // Events are promised from `ready` on (PC-9.4a): the other user joins
    // only once the stream has said it.
    let deadline = Instant::now() + cx.event_wait;
    while !seen.contains_key("ready") && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, raw.next_frame()).await {
            Ok(Ok(Some(frame))) => record_typed_frame(cx, frame, &mut seen)?,
            _ => break,
        }
    }
    check!(seen.contains_key("ready"), "no ready frame arrived");
    cx.join(other, room).await?;
    cx.say(other, room, "typed").await?;
    cx.patch(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.manager)
        .json(json!({"description": "changed"}))
        .send()
        .await?
        .ok(200)?;
    let deadline = Instant::now() + cx.event_wait;
    while seen.len() < 4 && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, raw.next_frame()).await {
            Ok(Ok(Some(frame))) => record_typed_frame(cx, frame, &mut seen)?,
            _ => break,
        }
    }
    let fields: [(&str, &[&str]); 4] = [
        ("ready", &["endpoint", "rooms"]),
        ("participant_joined", &["room", "user"]),
        ("message", &["room", "seq", "sender", "ts", "kind", "text"]),
        ("room_updated", &["room"]),
    ];
    for (ty, want) in fields {
        let v = seen
            .get(ty)
            .ok_or_else(|| Flaw::Fail(format!("no {ty} event arrived; saw {:?}", seen.keys())))?;
        for f in want {
            check!(v.get(*f).is_some(), "{ty} event lacks {f}: {v}");
        }
        cx.shape(&format!("event.{ty}"), v);
    }
    Ok(())
}

/// Checks that a raw frame is a typed JSON text frame (or a control frame)
/// and keeps the first event of each type.
fn record_typed_frame(
    cx: &Ctx,
    frame: Frame,
    seen: &mut std::collections::BTreeMap<String, Value>,
) -> Check {
    cx.log(format!("ws< raw {frame:?}"));
    match frame {
        Frame::Text(t) => {
            let v: Value = serde_json::from_str(&t)
                .map_err(|e| Flaw::Fail(format!("an event is not JSON ({e}): {t}")))?;
            let ty = v["type"].as_str().unwrap_or("").to_owned();
            check!(!ty.is_empty(), "an event without a type: {t}");
            seen.entry(ty).or_insert(v);
            Ok(())
        }
        Frame::Ping | Frame::Pong => Ok(()),
        other => Err(Flaw::Fail(format!("a non-text data frame: {other:?}"))),
    }
}

async fn losing_read_permission_removes_the_endpoint(cx: &Ctx) -> Check {
    let u = cx.actors(1).await?.remove(0);
    let room = cx
        .room(json!({"privacy": "closed", "members": [u.principal()]}))
        .await?;
    let (ep, _) = cx.join(&u, room).await?;
    let (mut s, _) = cx.stream(&u, &ep, &[]).await?;
    cx.post(format!("/v1/rooms/{room}/lists/members"))
        .as_user(&cx.w.manager)
        .json(json!({"remove": [u.principal()]}))
        .send()
        .await?
        .ok(200)?;
    s.until("removed (access_revoked)", |e| {
        matches!(e, Event::Removed { room: r, reason: RemovedReason::AccessRevoked } if *r == room)
    })
    .await?;
    cx.say(&cx.w.manager, room, "after revocation").await.ok();
    let later = s.drain(Duration::from_millis(500)).await?;
    check!(
        !later
            .iter()
            .any(|e| matches!(e, Event::Message(m) if m.room == room)),
        "messages still arrive after access was revoked"
    );
    Ok(())
}

/// PC-9.5b for joins in flight: members taken off a closed room's list while
/// many of their joins are being answered are not left in the room. The
/// joins read history (the room has a message), so a server that bounds its
/// history reads makes most of them wait after their first permission
/// check; the removal starts once the first join is answered.
async fn members_removed_while_joins_are_answered_are_not_left_in(cx: &Ctx) -> Check {
    const USERS: usize = 10;
    let per_user = (cx.limits.max_endpoints_per_user as usize).min(12);
    let mut users = cx.fresh_users(USERS + 1).await?;
    let watcher = users.pop().expect("USERS + 1 users");
    let everyone: Vec<String> = users
        .iter()
        .chain([&watcher])
        .map(|u| u.principal())
        .collect();
    let room = cx
        .room(json!({"privacy": "closed", "members": everyone}))
        .await?;
    cx.say(&watcher, room, "history to read on join").await?;
    let joins: Vec<(&User, String)> = users
        .iter()
        .flat_map(|u| (0..per_user).map(move |i| (u, format!("{}-inflight{i}", cx.ns))))
        .collect();
    let first_answer = tokio::sync::Notify::new();
    let answers = futures_util::future::join_all(joins.iter().map(|(u, ep)| async {
        let r = join_ep(cx, u, room, ep, None).await;
        first_answer.notify_one();
        r
    }));
    let removal = async {
        first_answer.notified().await;
        cx.post(format!("/v1/rooms/{room}/lists/members"))
            .as_user(&cx.w.manager)
            .json(json!({"remove": users.iter().map(|u| u.principal()).collect::<Vec<_>>()}))
            .send()
            .await
    };
    let (answers, removed) = tokio::join!(answers, removal);
    removed?.ok(200)?;
    for r in answers {
        let r = r?;
        match r.status {
            200 => {}
            403 => {
                r.err(403, "forbidden")?;
            }
            _ if refused_without_effect(&r)? => {}
            _ => {
                return Err(Flaw::Fail(format!(
                    "a join answered {}: {}",
                    r.status, r.body
                )))
            }
        }
    }
    // The removal is the list change's effect; give it a moment to show.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let v = participants(cx, &watcher.token, room, "?limit=1000").await?;
        let left: Vec<String> = names(&v)
            .into_iter()
            .filter(|n| users.iter().any(|u| &u.name == n))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Flaw::Fail(format!(
                "{} members taken off the list while their joins were answered are still participants 2 s later: {left:?}",
                left.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn server_pings_and_closes_silent_clients(cx: &Ctx) -> Check {
    let (interval, timeout) = (
        cx.limits.heartbeat_interval_s as u64,
        cx.limits.heartbeat_timeout_s as u64,
    );
    cx.can_wait("heartbeat_timeout_s", timeout + interval + 2)?;
    let m = &cx.w.member;
    let ep = cx.endpoint(m);
    let mut raw = rawws::connect(&cx.base, &m.token, &ep, &[], None)
        .await
        .setup("open a raw stream")?;
    let start = Instant::now();
    let mut first_ping = None;
    let limit = Duration::from_secs(timeout + interval + 2);
    let code = loop {
        let left = limit.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, raw.next_frame()).await {
            Err(_) => {
                return Err(Flaw::Fail(format!(
                    "a client that never answered was not closed within {} s",
                    limit.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(Flaw::Fail(format!("reading the raw stream: {e}"))),
            Ok(Ok(None)) => break None,
            Ok(Ok(Some(Frame::Ping))) => {
                first_ping.get_or_insert(start.elapsed());
            }
            Ok(Ok(Some(Frame::Close(code)))) => break code,
            Ok(Ok(Some(_))) => {}
        }
    };
    let elapsed = start.elapsed();
    cx.log(format!(
        "first ping after {first_ping:?}, closed {code:?} after {elapsed:?}"
    ));
    let ping = first_ping.ok_or_else(|| Flaw::Fail("the server never sent a Ping".into()))?;
    check!(
        ping <= Duration::from_secs(interval) + Duration::from_millis(1500),
        "first Ping after {ping:?}, interval {interval} s"
    );
    check_eq!(code, Some(4002), "close code for a silent client");
    check!(
        elapsed + Duration::from_millis(1000) >= Duration::from_secs(timeout),
        "closed after {elapsed:?}, before the {timeout} s timeout"
    );
    Ok(())
}

async fn client_data_frames_close_the_stream(cx: &Ctx) -> Check {
    let m = &cx.w.member;
    let ep = cx.endpoint(m);
    let (mut s, _) = cx.stream(m, &ep, &[]).await?;
    s.send_raw(WsMessage::Text("hello".into())).await?;
    check_eq!(
        s.closed(cx.event_wait).await?,
        Some(1003),
        "close code for a text frame"
    );
    let (mut s, _) = cx.stream(m, &ep, &[]).await?;
    let big = vec![0u8; cx.limits.max_client_frame_bytes as usize + 100];
    s.send_raw(WsMessage::Binary(big.into())).await?;
    check_eq!(
        s.closed(cx.event_wait).await?,
        Some(1009),
        "close code for an oversized frame"
    );
    Ok(())
}

async fn slow_consumers_are_closed_and_resume(cx: &Ctx) -> Check {
    let q = cx.limits.stream_queue_events as usize;
    let text_len = (cx.limits.max_text_chars as usize).min(8000);
    // Enough to fill the queue plus a few megabytes of socket buffers.
    let posts = q + (4 << 20) / text_len.max(1);
    if posts > 2500 {
        return Err(Flaw::NotPossible(format!(
            "stream_queue_events {q} needs {posts} posts to overflow"
        )));
    }
    let burst = cx.limits.post_burst.max(1) as usize;
    let writers = cx.fresh_users(posts.div_ceil(burst).min(150)).await?;
    let posts = posts.min(writers.len() * burst);
    let (reader, fast) = {
        let mut two = cx.fresh_users(2).await?;
        (two.remove(0), two.remove(0))
    };
    let mut members: Vec<String> = writers.iter().map(|u| u.principal()).collect();
    members.push(reader.principal());
    members.push(fast.principal());
    let room = cx
        .room(json!({"privacy": "open", "members": members}))
        .await?;
    let (slow_ep, _) = cx.join(&reader, room).await?;
    let (fast_ep, _) = cx.join(&fast, room).await?;
    let mut slow = rawws::connect(&cx.base, &reader.token, &slow_ep, &[], Some(4096))
        .await
        .setup("open the slow stream")?;
    let (mut quick, _) = cx.stream(&fast, &fast_ep, &[]).await?;
    let text = "s".repeat(text_len.saturating_sub(8).max(1));
    let text = &text;
    let started = Instant::now();
    let mut sent = 0usize;
    // When the fast reader had seen as many posts as fill the slow
    // stream's socket buffers: the server's writes to it stall by then.
    let buffers_full_at: OnceLock<Instant> = OnceLock::new();
    let buffer_posts = posts.saturating_sub(q).max(1);
    let writers_took: OnceLock<Duration> = OnceLock::new();
    let fast_reader = async {
        let mut n = 0;
        while n < posts {
            match quick.next_item(Duration::from_secs(20)).await? {
                Some(pchat_protocol::client::StreamItem::Event(Event::Message(m)))
                    if m.room == room =>
                {
                    n += 1;
                    if n == buffer_posts {
                        let _ = buffers_full_at.set(Instant::now());
                    }
                }
                Some(pchat_protocol::client::StreamItem::Closed(c, r)) => {
                    return Err(Flaw::Fail(format!(
                        "the fast reader was closed ({c:?} {r}) after {n}"
                    )))
                }
                Some(_) => {}
                None => {
                    return Err(Flaw::Fail(format!(
                        "the fast reader stalled after {n} of {posts}"
                    )))
                }
            }
        }
        Ok::<Duration, Flaw>(started.elapsed())
    };
    let writer_loop = async {
        for chunk in writers.chunks(8) {
            let mut futs = Vec::new();
            for w in chunk {
                let n = burst.min(posts.saturating_sub(sent + futs.len() * burst));
                if n == 0 {
                    break;
                }
                futs.push(async move {
                    for i in 0..n {
                        let r = cx
                            .post(format!("/v1/rooms/{room}/messages"))
                            .as_user(w)
                            .json(json!({ "text": format!("{i} {text}") }))
                            .send()
                            .await?;
                        r.ok(201)?;
                    }
                    Ok::<usize, Flaw>(n)
                });
            }
            for n in futures_util::future::join_all(futs).await {
                sent += n?;
            }
        }
        let _ = writers_took.set(started.elapsed());
        Ok::<(), Flaw>(())
    };
    // The slow stream reads nothing until the writers are done, or until
    // the server must have closed it for taking no frame for 10 s (its
    // writes stalled once the buffers were full), whichever comes first;
    // then it reads everything up to the Close, which the server keeps for
    // it at least 10 s (PC-9.6c).
    let slow_reader = async {
        let must_be_closed = SLOW_SEND_TIMEOUT + Duration::from_secs(1);
        while writers_took.get().is_none()
            && buffers_full_at
                .get()
                .is_none_or(|at| at.elapsed() < must_be_closed)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drain_from = started.elapsed();
        let mut last = 0u64;
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(20), slow.next_frame()).await {
                Err(_) => return Err(Flaw::Fail("the slow stream was never closed".into())),
                Ok(Err(e)) => return Err(Flaw::Fail(format!("reading the slow stream: {e}"))),
                Ok(Ok(None)) => break None,
                Ok(Ok(Some(Frame::Close(c)))) => break c,
                Ok(Ok(Some(Frame::Text(t)))) => {
                    if let Ok(Event::Message(m)) = serde_json::from_str::<Event>(&t) {
                        last = m.seq;
                    }
                }
                Ok(Ok(Some(_))) => {}
            }
        };
        Ok::<_, Flaw>((code, last, drain_from))
    };
    let (fast_done, posted, slow_done) = tokio::join!(fast_reader, writer_loop, slow_reader);
    posted?;
    let fast_took = fast_done?;
    let (code, last, drain_from) = slow_done?;
    cx.log(format!(
        "{sent} posts in {:?}; the fast reader had them all after {fast_took:?}",
        writers_took.get().copied().unwrap_or_default()
    ));
    cx.log(format!(
        "slow stream read from {drain_from:?} (buffers full by {:?}) and closed {code:?} \
         after seq {last}",
        buffers_full_at.get().map(|at| *at - started)
    ));
    // The slow stream is also silent (it answers no Ping), so a server
    // whose heartbeat expires before the posts overflow the queue closes it
    // with 4002 as PC-9.6a says: the server is right, the test did not run.
    let heartbeat = Duration::from_secs(cx.limits.heartbeat_timeout_s as u64);
    if code == Some(4002) && drain_from + Duration::from_secs(1) >= heartbeat {
        return Err(Flaw::NotPossible(format!(
            "the heartbeat closed the silent slow stream (4002) before {sent} posts \
             overflowed its queue (it read nothing for {drain_from:?}): \
             heartbeat_timeout_s = {} s is too short for this test; run the server with a \
             longer one",
            heartbeat.as_secs()
        )));
    }
    check_eq!(code, Some(4008), "close code of the slow consumer");
    check!(
        (last as usize) < sent,
        "the slow consumer got everything, {last} of {sent}: not slow enough"
    );
    let (mut resumed, _) = cx.stream(&reader, &slow_ep, &[(room, last)]).await?;
    let rest = resumed.messages(room, sent - last as usize).await?;
    let want: Vec<u64> = (last + 1..=sent as u64).collect();
    check_eq!(
        rest.iter().map(|m| m.seq).collect::<Vec<_>>(),
        want,
        "messages after the resume"
    );
    Ok(())
}

async fn close_codes_for_policy_and_normal_close(cx: &Ctx) -> Check {
    // A normal close by the client is answered with a normal close.
    let m = &cx.w.member;
    let ep = cx.endpoint(m);
    let (mut s, _) = cx.stream(m, &ep, &[]).await?;
    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "done".into(),
    };
    s.send_raw(WsMessage::Close(Some(frame))).await?;
    let normal = s.closed(cx.event_wait).await?;
    // 4003 when the user's policy is disabled (administrator needed).
    let policy = policy_close_code(cx).await;
    check_eq!(normal, Some(1000), "close code answering a normal close");
    check_eq!(
        policy?,
        Some(4003),
        "close code when the policy is disabled"
    );
    Ok(())
}

async fn policy_close_code(cx: &Ctx) -> Result<Option<u16>, Flaw> {
    let admin = cx.admin()?;
    let off = format!("{}-off", cx.ns);
    cx.put(format!("/v1/admin/policies/{off}"))
        .bearer(&admin)
        .json(json!({"enabled": false}))
        .send()
        .await?
        .setup(200, "create a disabled policy")?;
    let u = cx.fresh_users(1).await?.remove(0);
    let ep = cx.endpoint(&u);
    let (mut s, _) = cx.stream(&u, &ep, &[]).await?;
    cx.patch(format!("/v1/admin/users/{}", u.name))
        .bearer(&admin)
        .json(json!({ "policy": off }))
        .send()
        .await?
        .setup(200, "disable the user's policy")?;
    s.closed(cx.event_wait).await
}

async fn participants_counted_and_sorted(cx: &Ctx) -> Check {
    let users = cx.actors(3).await?;
    let refs: Vec<&User> = users.iter().collect();
    let room = cx
        .room(json!({"privacy": "closed", "members": refs.iter().map(|u| u.principal()).collect::<Vec<_>>()}))
        .await?;
    for u in &users {
        cx.join(u, room).await?;
    }
    let v = participants(cx, &users[0].token, room, "").await?;
    cx.shape("participants", &v);
    check_eq!(v["count"].as_u64(), Some(3), "count");
    let mut want: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
    want.sort();
    check_eq!(names(&v), want, "participants by user name");
    for p in v["participants"].as_array().into_iter().flatten() {
        check!(
            p["display_name"].is_string() && p["presence"].is_string(),
            "participant {p}"
        );
    }
    let v = participants(cx, &users[0].token, room, "?limit=2").await?;
    check_eq!(v["count"].as_u64(), Some(3), "count with limit=2");
    check_eq!(names(&v), want[..2].to_vec(), "first two by name");
    for bad in ["0", "1001"] {
        cx.get(format!("/v1/rooms/{room}/participants?limit={bad}"))
            .as_user(&users[0])
            .send()
            .await?
            .err(400, "invalid_request")?;
    }
    // The manager is not a member of this closed room, so may not read it.
    cx.get(format!("/v1/rooms/{room}/participants"))
        .as_user(&cx.w.manager)
        .send()
        .await?
        .err(403, "forbidden")?;
    Ok(())
}

async fn participant_and_presence_events(cx: &Ctx) -> Check {
    let users = cx.actors(2).await?;
    let (watcher, other) = (&users[0], &users[1]);
    let room = open_room_for(cx, &[watcher, other]).await?;
    let (ep, _) = cx.join(watcher, room).await?;
    let (mut s, _) = cx.stream(watcher, &ep, &[]).await?;
    let (oep, _) = cx.join(other, room).await?;
    let name = other.name.clone();
    s.until(
        "participant_joined",
        |e| matches!(e, Event::ParticipantJoined { room: r, user } if *r == room && *user == name),
    )
    .await?;
    cx.put("/v1/me/presence")
        .as_user(other)
        .json(json!({"state": "busy"}))
        .send()
        .await?
        .ok(200)?;
    s.until(
        "presence",
        |e| matches!(e, Event::Presence { user, state: PresenceState::Busy } if *user == name),
    )
    .await?;
    cx.post(format!("/v1/rooms/{room}/leave"))
        .as_user(other)
        .json(json!({ "endpoint": oep }))
        .send()
        .await?
        .ok(204)?;
    s.until(
        "participant_left",
        |e| matches!(e, Event::ParticipantLeft { room: r, user } if *r == room && *user == name),
    )
    .await?;
    Ok(())
}

async fn participant_events_stop_above_the_limit(cx: &Ctx) -> Check {
    let admin = cx.admin()?;
    let r = cx.get("/v1/admin/config").bearer(&admin).send().await?;
    let limit = r.setup(200, "read the configuration")?["participant_update_limit"]
        .as_u64()
        .setup("participant_update_limit")? as usize;
    if limit > 300 {
        return Err(Flaw::NotPossible(format!(
            "participant_update_limit {limit} needs too many users"
        )));
    }
    let users = cx.fresh_users(limit + 3).await?;
    let room = cx.room(json!({"privacy": "open"})).await?;
    // The members below join without a stream: their sessions live for
    // endpoint_linger_s (PC-9.1a), and one that expired meanwhile would
    // leave on its own and spoil the count.
    let linger = Duration::from_secs(cx.limits.endpoint_linger_s as u64);
    let started = Instant::now();
    let watcher = &users[0];
    let (ep, _) = cx.join(watcher, room).await?;
    let (mut s, _) = cx.stream(watcher, &ep, &[]).await?;
    let mut eps = Vec::new();
    // Bring the count to limit + 1 (the watcher included).
    for u in &users[1..=limit] {
        eps.push(cx.join(u, room).await?.0);
    }
    s.drain(Duration::from_millis(500)).await?;
    // Above the limit: a further join produces no event.
    let extra = &users[limit + 1];
    let (extra_ep, _) = cx.join(extra, room).await?;
    let events = s.drain(Duration::from_millis(800)).await?;
    check!(
        !events
            .iter()
            .any(|e| matches!(e, Event::ParticipantJoined { user, .. } if *user == extra.name)),
        "participant_joined sent with {} participants, above the limit {limit}",
        limit + 2
    );
    let leave = |u: &User, ep: String| {
        cx.post(format!("/v1/rooms/{room}/leave"))
            .as_user(u)
            .json(json!({ "endpoint": ep }))
            .send()
    };
    leave(extra, extra_ep).await?.ok(204)?;
    // Fall below 80 % of the limit, then a change is announced again.
    let target = (limit * 8).div_ceil(10).saturating_sub(2);
    let mut count = limit + 1;
    let mut i = 0;
    while count > target {
        leave(&users[1 + i], eps[i].clone()).await?.ok(204)?;
        count -= 1;
        i += 1;
    }
    s.drain(Duration::from_millis(500)).await?;
    if started.elapsed() >= linger {
        return Err(Flaw::NotPossible(format!(
            "joining {} users and leaving took {:.1} s, not less than endpoint_linger_s = {} s: \
             sessions made by a join without a stream may have expired meanwhile",
            limit + 2,
            started.elapsed().as_secs_f64(),
            linger.as_secs()
        )));
    }
    let u = &users[1 + i];
    leave(u, eps[i].clone()).await?.ok(204)?;
    let name = u.name.clone();
    s.until(
        "participant_left below 80 % of the limit",
        |e| matches!(e, Event::ParticipantLeft { room: r, user } if *r == room && *user == name),
    )
    .await?;
    Ok(())
}
