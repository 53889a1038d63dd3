//! Stream workers (`stream.workers`): a node hands its stream sockets to
//! child processes. What a client sees is covered by the conformance suite
//! against a node with workers; these are the failures of the processes,
//! and the hand-over between the hub's direct route and a connection's task.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use pchat_protocol::client::StreamItem;
use pchat_protocol::{Event, PresenceState};
use support::*;

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Polls `cond` every 50 ms for up to `secs`.
async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 20 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

fn kill9(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// The ready event's rooms.
async fn ready(s: &mut pchat_protocol::client::EventStream) -> Vec<(u64, u64)> {
    match next_event(s, 10).await {
        StreamItem::Event(Event::Ready { rooms, .. }) => {
            rooms.into_iter().map(|r| (r.room, r.last_seq)).collect()
        }
        other => panic!("expected ready, got {other:?}"),
    }
}

#[tokio::test]
async fn a_killed_worker_costs_only_its_connections_and_is_replaced() {
    let server = TestServer::start_with(&[("PCHAT_STREAM__WORKERS", "2")]).await;
    let pid = server.child.id();
    let workers = children_of(pid);
    assert_eq!(workers.len(), 2, "{workers:?}");
    let (users, room) = server.lobby(&["ann", "bob"]).await;
    // Four streams: the least loaded worker takes each, so two a worker.
    let mut streams = Vec::new();
    for u in &users {
        for ep in ["desk", "phone"] {
            let mut s = u.stream(ep, &[]).await.unwrap();
            ready(&mut s).await;
            u.join(room, ep, None).await.unwrap();
            streams.push(s);
        }
    }
    users[0].post_message(room, &post("before")).await.unwrap();
    for s in &mut streams {
        assert_eq!(messages(s, room, 1, 10).await[0].text, "before");
    }

    kill9(workers[0]);
    // Exactly the streams of the killed worker end; the others carry on.
    users[1].post_message(room, &post("during")).await.unwrap();
    let mut ended = 0;
    for s in &mut streams {
        let item = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("each stream either ends or gets the message");
        match item {
            Ok(StreamItem::Event(Event::Message(m))) => assert_eq!(m.text, "during"),
            Ok(StreamItem::Closed(..)) | Err(_) => ended += 1,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ended, 2, "the killed worker held two of the four streams");

    // A new worker replaces it.
    assert!(
        eventually(10, || {
            let now = children_of(pid);
            now.len() == 2 && !now.contains(&workers[0])
        })
        .await,
        "no replacement worker: {:?}",
        children_of(pid)
    );

    // The cut-off endpoints resume from what they saw and miss nothing.
    for u in &users {
        for ep in ["desk", "phone"] {
            let mut s = u.stream(ep, &[(room, 1)]).await.unwrap();
            let rooms = ready(&mut s).await;
            assert_eq!(rooms, vec![(room, 2)]);
            assert_eq!(messages(&mut s, room, 1, 10).await[0].text, "during");
        }
    }
}

#[tokio::test]
async fn workers_leave_with_their_node() {
    let mut server = TestServer::start_with(&[("PCHAT_STREAM__WORKERS", "2")]).await;
    let workers = children_of(server.child.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    let (users, _) = server.lobby(&["ann"]).await;
    let mut s = users[0].stream("desk", &[]).await.unwrap();
    ready(&mut s).await;
    server.kill9();
    assert!(
        eventually(10, || workers.iter().all(|w| !alive(*w))).await,
        "workers outlived their node"
    );
    // The client's socket, held by a worker, is closed too.
    let end = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("the stream ends");
    assert!(
        matches!(end, Err(_) | Ok(StreamItem::Closed(..))),
        "{end:?}"
    );
}

/// On a relayed stream, messages and other events take the hub's direct
/// route while the connection's task is idle, and go through the task when
/// joins, gaps or a missing credit come between them (`hub::Direct`).
/// However the two interleave, every message arrives once and in order, and
/// so does every presence change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_between_other_events_arrive_once_and_in_order() {
    let server = TestServer::start_with(&[
        ("PCHAT_STREAM__WORKERS", "1"),
        ("PCHAT_LIMITS__POST_RATE_PER_S", "1000"),
        ("PCHAT_LIMITS__POST_BURST", "1000"),
        ("PCHAT_LIMITS__REQUEST_RATE_PER_S", "1000"),
        ("PCHAT_LIMITS__REQUEST_BURST", "1000"),
    ])
    .await;
    let (users, lobby) = server.lobby(&["ann", "bob", "cid"]).await;
    let cat = server.category("more", serde_json::json!({})).await;
    let open = serde_json::json!({ "privacy": "open" });
    let side = server.room("side", cat, open.clone()).await;
    let late = server.room("late", cat, open).await;
    let reader = &users[0];
    let mut s = reader.stream("desk", &[]).await.unwrap();
    ready(&mut s).await;
    for room in [lobby, side] {
        reader.join(room, "desk", None).await.unwrap();
    }
    const EACH: usize = 150;
    const PRESENCE_CHANGES: usize = 60;
    let mut tasks = Vec::new();
    for (poster, room) in [(&users[1], lobby), (&users[2], side), (&users[1], side)] {
        let poster = poster.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                poster
                    .post_message(room, &post(&format!("m{i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    // Presence events for the reader between the messages (bob's changes
    // reach the rooms his endpoint is in: he joins the lobby, and his
    // stream is drained meanwhile), and a room joined in the middle (its
    // messages start at the join point).
    let mut bobs_stream = users[1].stream("phone", &[]).await.unwrap();
    ready(&mut bobs_stream).await;
    users[1].join(lobby, "phone", None).await.unwrap();
    let drain =
        tokio::spawn(
            async move { while let Ok(StreamItem::Event(_)) = bobs_stream.next().await {} },
        );
    let bob = users[1].clone();
    tasks.push(tokio::spawn(async move {
        for i in 0..PRESENCE_CHANGES {
            let state = if i % 2 == 0 { "busy" } else { "available" };
            bob.call::<serde_json::Value>(
                reqwest::Method::PUT,
                "/v1/me/presence",
                Some(&serde_json::json!({ "state": state })),
            )
            .await
            .unwrap();
        }
    }));
    let (cid, joiner) = (users[2].clone(), reader.clone());
    tasks.push(tokio::spawn(async move {
        for i in 0..40 {
            if i == 10 {
                joiner.join(late, "desk", None).await.unwrap();
            }
            cid.post_message(late, &post(&format!("l{i}")))
                .await
                .unwrap();
        }
    }));
    for t in tasks {
        t.await.unwrap();
    }
    let last = |room| async move { users[2].history(room, "limit=1").await.unwrap() };
    let late_last = last(late).await.messages[0].seq;
    let mut want: HashMap<u64, u64> = [(lobby, EACH as u64), (side, 2 * EACH as u64)].into();
    let mut got: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut bobs_presence = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = want
            .iter()
            .all(|(r, n)| got.get(r).and_then(|v| v.last()) == Some(n))
            && got.get(&late).and_then(|v| v.last()) == Some(&late_last)
            && bobs_presence.len() >= PRESENCE_CHANGES;
        if done {
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, s.next()).await {
            Ok(Ok(StreamItem::Event(Event::Message(m)))) => {
                got.entry(m.room).or_default().push(m.seq)
            }
            Ok(Ok(StreamItem::Event(Event::Presence { user, state }))) if user == "bob" => {
                bobs_presence.push(state)
            }
            Ok(Ok(StreamItem::Event(_))) => {}
            other => panic!(
                "stream ended or stalled: {other:?}; got {got:?}, bob's presence {bobs_presence:?}"
            ),
        }
    }
    want.insert(late, late_last);
    for (room, last) in want {
        let seqs = &got[&room];
        let first = seqs[0];
        let expected: Vec<u64> = (first..=last).collect();
        assert_eq!(
            seqs, &expected,
            "room {room}: not every message once, in order"
        );
        if room != late {
            assert_eq!(first, 1, "room {room} starts at its first message");
        }
    }
    drain.abort();
    // Every change once, in the order bob made them (none repeats the one
    // before it, so none is left out as unchanged).
    let expected: Vec<PresenceState> = (0..PRESENCE_CHANGES)
        .map(|i| {
            if i % 2 == 0 {
                PresenceState::Busy
            } else {
                PresenceState::Available
            }
        })
        .collect();
    assert_eq!(bobs_presence, expected, "bob's presence changes");
    // The direct route carried events (the queue carried the rest).
    assert!(metric(&server, "pchat_direct_deliveries_total").await > 0.0);
}
