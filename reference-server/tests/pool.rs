//! A pool: several server processes sharing one PostgreSQL database.
//! Messages posted on any node reach members connected to every other node,
//! in one order; directory changes made on one node reach the others; the
//! clients of a killed node resume on a survivor without a gap.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use pchat_protocol::client::{Client, EventStream, StreamItem};
use pchat_protocol::{self as wire, Event};
use serde_json::json;
use support::*;

struct Pool {
    nodes: Vec<TestServer>,
    // Dropped after the nodes (fields drop in order).
    _dir: tempfile::TempDir,
    _cluster: pgcluster::Cluster,
}

impl Pool {
    /// None (after saying why) when PostgreSQL cannot run here and this is not CI.
    async fn start(n: usize) -> Option<Pool> {
        Pool::start_with_grace(n, 2_000).await
    }

    /// A pool whose nodes keep a silent node's participants `grace_ms`
    /// (`store.node_grace_ms`) before they leave.
    async fn start_with_grace(n: usize, grace_ms: u64) -> Option<Pool> {
        let grace = grace_ms.to_string();
        if let Err(why) = pgcluster::available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to start PostgreSQL: {why}"
            );
            eprintln!("SKIPPED (pool on PostgreSQL): {why}");
            return None;
        }
        let cluster = pgcluster::Cluster::start().expect("start a private PostgreSQL");
        cluster.create_database("chat").unwrap();
        cluster.create_database("compliance").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (chat, compliance) = (cluster.url("chat"), cluster.url("compliance"));
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("node{i}");
            nodes.push(
                TestServer::start_node(
                    &data,
                    &[
                        ("PCHAT_STORE__URL", chat.as_str()),
                        ("PCHAT_STORE__COMPLIANCE_URL", compliance.as_str()),
                        ("PCHAT_STORE__NODE", name.as_str()),
                        ("PCHAT_LIMITS__POST_RATE_PER_S", "1000"),
                        ("PCHAT_LIMITS__POST_BURST", "1000"),
                        ("PCHAT_STORE__NODE_GRACE_MS", grace.as_str()),
                    ],
                )
                .await,
            );
        }
        nodes[0]
            .admin_put("/v1/admin/policies/global", json!({"enabled": true}))
            .await;
        Some(Pool {
            nodes,
            _dir: dir,
            _cluster: cluster,
        })
    }

    /// Tokens for new users (created through node 0).
    async fn tokens(&self, names: &[&str]) -> Vec<String> {
        let n0 = &self.nodes[0];
        for n in names {
            n0.admin_post("/v1/admin/users", json!({ "name": n })).await;
        }
        let resp: wire::BulkTokenResponse = n0
            .admin
            .post("/v1/admin/tokens", &json!({ "users": names }))
            .await
            .expect("tokens");
        names.iter().map(|n| resp.tokens[*n].clone()).collect()
    }

    fn client(&self, node: usize, token: &str) -> Client {
        Client::new(self.nodes[node].base.clone()).as_token(token)
    }
}

/// Directory changes reach the other nodes through the store's log, shortly
/// after the writing node answered: wait until `node` knows the room.
async fn until_known(client: &Client, room: u64) {
    for _ in 0..200 {
        if client.history(room, "limit=1").await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("room {room} never reached {}", client.base());
}

/// Reads message events of `room` until `n` arrived.
async fn messages(stream: &mut EventStream, room: u64, n: usize) -> Vec<wire::Message> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
            Ok(Ok(StreamItem::Event(Event::Message(m)))) if m.room == room => out.push(m),
            Ok(Ok(StreamItem::Event(_))) => {}
            other => panic!("after {} of {n} messages: {other:?}", out.len()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_posted_on_any_node_reach_every_node_in_one_order() {
    let Some(pool) = Pool::start(4).await else {
        return;
    };
    let tokens = pool.tokens(&["alice", "bob", "carol", "dave"]).await;
    let cat = pool.nodes[0].category("general", json!({})).await;
    let room = pool.nodes[0]
        .room("lobby", cat, json!({ "privacy": "open" }))
        .await;
    // bob, carol and dave listen on nodes 1, 2 and 3.
    let mut listeners = Vec::new();
    for (i, token) in tokens.iter().enumerate().skip(1) {
        let c = pool.client(i, token);
        until_known(&c, room).await;
        let mut stream = c.stream("desk", &[]).await.unwrap();
        assert!(matches!(
            next_event(&mut stream, 5).await,
            StreamItem::Event(Event::Ready { .. })
        ));
        let joined = c.join(room, "desk", None).await.unwrap();
        listeners.push((stream, joined.last_seq));
    }
    // alice posts through node 0 and bob through node 1, at the same time.
    let posters: Vec<_> = [(0usize, 0usize), (1, 1)]
        .into_iter()
        .map(|(node, who)| {
            let c = pool.client(node, &tokens[who]);
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..30 {
                    let m = c
                        .post_message(room, &post(&format!("{who}:{i}")))
                        .await
                        .unwrap();
                    acked.push((m.body.seq, m.body.text));
                }
                acked
            })
        })
        .collect();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    for p in posters {
        for (seq, text) in p.await.unwrap() {
            assert!(
                acked.insert(seq, text).is_none(),
                "seq {seq} acknowledged twice"
            );
        }
    }
    assert_eq!(acked.len(), 60);
    let mut orders = Vec::new();
    for (stream, base) in listeners.iter_mut() {
        let got = messages(stream, room, 60).await;
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        let want: Vec<u64> = (*base + 1..=*base + 60).collect();
        assert_eq!(seqs, want, "every message once, dense and in order");
        for m in &got {
            assert_eq!(acked.get(&m.seq), Some(&m.text), "the acknowledged text");
        }
        orders.push(got);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "one order on every node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_and_settings_changes_reach_every_node() {
    let Some(pool) = Pool::start(3).await else {
        return;
    };
    let tokens = pool.tokens(&["erin"]).await;
    let cat = pool.nodes[1].category("eng", json!({})).await;
    let room = pool.nodes[2]
        .room("builds", cat, json!({ "privacy": "open" }))
        .await;
    let erin0 = pool.client(0, &tokens[0]);
    until_known(&erin0, room).await;
    pool.nodes[1]
        .admin
        .patch::<serde_json::Value>("/v1/admin/config", &json!({ "messages_on_join": 3 }))
        .await
        .unwrap();
    let want = Some(3);
    let mut seen = None;
    for _ in 0..200 {
        let cfg: serde_json::Value = pool.nodes[0].admin.get("/v1/admin/config").await.unwrap();
        seen = cfg["messages_on_join"].as_u64();
        if seen == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(seen, want, "a setting changed on node 1 reaches node 0");
    for i in 0..5 {
        erin0
            .post_message(room, &post(&format!("m{i}")))
            .await
            .unwrap();
    }
    let erin2 = pool.client(2, &tokens[0]);
    // Node 2 answers a join with what it has published; the last post
    // reaches it through the store's notification a moment after node 0
    // acknowledged it.
    let mut joined = erin2.join(room, "laptop", None).await.unwrap();
    for _ in 0..100 {
        if joined.last_seq == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        joined = erin2.join(room, "laptop", None).await.unwrap();
    }
    assert_eq!(
        joined.messages.len(),
        3,
        "node 2 applies node 1's messages_on_join"
    );
    assert_eq!(joined.last_seq, 5);

    // Directory writes are validated pool-wide: the same name created through
    // three nodes at once is created once.
    let attempts: Vec<_> = pool
        .nodes
        .iter()
        .map(|n| {
            let admin = n.admin.clone();
            tokio::spawn(async move {
                admin
                    .post::<serde_json::Value>(
                        "/v1/rooms",
                        &json!({ "name": "standup", "category": cat }),
                    )
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for a in attempts {
        match a.await.unwrap() {
            Ok(_) => created += 1,
            Err(e) => assert_eq!(e.code(), Some(wire::ErrorCode::NameTaken), "{e}"),
        }
    }
    assert_eq!(created, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_on_a_survivor_without_gaps() {
    resume_after_a_kill(Rejoin::ByJoin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_take_their_rooms_along_on_the_stream() {
    resume_after_a_kill(Rejoin::OnStream).await;
}

/// How a moved client joins its rooms on the survivor.
#[derive(Clone, Copy, PartialEq)]
enum Rejoin {
    /// `POST /join` with `since` (PC-9.3a).
    ByJoin,
    /// The stream start's `rejoin` (PC-9.4d).
    OnStream,
}

/// Carol reads a room through node 2 while Alice posts through node 0;
/// node 2 is killed, Carol moves to node 1 and must get every message
/// once, in order.
async fn resume_after_a_kill(how: Rejoin) {
    let Some(mut pool) = Pool::start(3).await else {
        return;
    };
    let tokens = pool.tokens(&["alice", "carol"]).await;
    let cat = pool.nodes[0].category("general", json!({})).await;
    let room = pool.nodes[0]
        .room("lobby", cat, json!({ "privacy": "open" }))
        .await;
    let carol2 = pool.client(2, &tokens[1]);
    until_known(&carol2, room).await;
    let mut stream = carol2.stream("phone", &[]).await.unwrap();
    next_event(&mut stream, 5).await;
    let joined = carol2.join(room, "phone", None).await.unwrap();
    let mut last = joined.last_seq;
    let alice = pool.client(0, &tokens[0]);
    let poster = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..80 {
            let m = alice
                .post_message(room, &post(&format!("m{i}")))
                .await
                .unwrap();
            acked.push(m.body.seq);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        acked
    });
    let mut received = Vec::new();
    for m in messages(&mut stream, room, 20).await {
        received.push(m.seq);
        last = m.seq;
    }
    // Node 2 dies; carol moves to node 1 and rejoins from what she has.
    pool.nodes[2].kill9();
    drop(stream);
    let carol1 = pool.client(1, &tokens[1]);
    let (mut stream, upto) = match how {
        Rejoin::ByJoin => {
            let mut stream = carol1.stream("phone", &[]).await.unwrap();
            next_event(&mut stream, 5).await;
            let rejoined = carol1.join(room, "phone", Some(last)).await.unwrap();
            assert!(!rejoined.has_more);
            received.extend(rejoined.messages.iter().map(|m| m.seq));
            (stream, rejoined.last_seq)
        }
        Rejoin::OnStream => {
            let mut stream = carol1
                .stream_rejoining("phone", &[(room, last)])
                .await
                .unwrap();
            match next_event(&mut stream, 5).await {
                StreamItem::Event(Event::Ready { rooms, .. }) => assert!(
                    rooms.iter().any(|r| r.room == room),
                    "the room is joined on the survivor: {rooms:?}"
                ),
                other => panic!("expected ready, got {other:?}"),
            }
            (stream, last)
        }
    };
    let acked = poster.await.unwrap();
    let top = *acked.last().unwrap();
    let more = top.saturating_sub(upto) as usize;
    received.extend(
        messages(&mut stream, room, more)
            .await
            .iter()
            .map(|m| m.seq),
    );
    let want: Vec<u64> = (joined.last_seq + 1..=top).collect();
    assert_eq!(
        received, want,
        "nothing lost, nothing twice, in order, across the move"
    );
}

/// Reads events until one matches `want`, skipping others.
async fn until_event(stream: &mut EventStream, want: impl Fn(&Event) -> bool, secs: u64) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Ok(StreamItem::Event(e))) if want(&e) => return e,
            Ok(Ok(StreamItem::Event(_))) => {}
            other => panic!("the awaited event never came: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_and_presence_span_the_pool_and_a_dead_node_lets_go() {
    let Some(mut pool) = Pool::start(3).await else {
        return;
    };
    let tokens = pool.tokens(&["bob", "carol"]).await;
    let cat = pool.nodes[0].category("general", json!({})).await;
    let room = pool.nodes[0]
        .room("lobby", cat, json!({ "privacy": "open" }))
        .await;
    let carol = pool.client(2, &tokens[1]);
    until_known(&carol, room).await;
    let mut carol_stream = carol.stream("desk", &[]).await.unwrap();
    next_event(&mut carol_stream, 5).await;
    carol.join(room, "desk", None).await.unwrap();

    let bob = pool.client(1, &tokens[0]);
    until_known(&bob, room).await;
    let mut bob_stream = bob.stream("laptop", &[]).await.unwrap();
    next_event(&mut bob_stream, 5).await;
    bob.join(room, "laptop", None).await.unwrap();
    let joined = until_event(
        &mut carol_stream,
        |e| matches!(e, Event::ParticipantJoined { user, .. } if user == "bob"),
        10,
    )
    .await;
    assert!(matches!(joined, Event::ParticipantJoined { room: r, .. } if r == room));

    // Node 0 has no session at all, and still lists both, with presence.
    let observer = pool.client(0, &tokens[1]);
    let mut listed: wire::Participants = observer
        .get(&format!("/v1/rooms/{room}/participants"))
        .await
        .unwrap();
    for _ in 0..100 {
        if listed.count == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        listed = observer
            .get(&format!("/v1/rooms/{room}/participants"))
            .await
            .unwrap();
    }
    let names: Vec<&str> = listed
        .participants
        .iter()
        .map(|p| p.user.as_str())
        .collect();
    assert_eq!((listed.count, names), (2, vec!["bob", "carol"]));
    assert!(listed
        .participants
        .iter()
        .all(|p| p.presence == wire::PresenceState::Available));

    // Presence set on node 1 reaches carol on node 2.
    bob.call::<serde_json::Value>(
        reqwest::Method::PUT,
        "/v1/me/presence",
        Some(&json!({ "state": "busy" })),
    )
    .await
    .unwrap();
    let presence = until_event(
        &mut carol_stream,
        |e| matches!(e, Event::Presence { .. }),
        10,
    )
    .await;
    assert_eq!(
        presence,
        Event::Presence {
            user: "bob".into(),
            state: wire::PresenceState::Busy
        }
    );

    // Node 1 dies: once it has been silent long enough (and the grace of
    // 2 s is over), bob leaves the room.
    pool.nodes[1].kill9();
    drop(bob_stream);
    let left = until_event(
        &mut carol_stream,
        |e| matches!(e, Event::ParticipantLeft { user, .. } if user == "bob"),
        20,
    )
    .await;
    assert!(matches!(left, Event::ParticipantLeft { room: r, .. } if r == room));
    // Each node counts node 1 silent on its own clock (checked every 2 s),
    // so the observer's node may drop bob a little after carol's did.
    let mut count = 0;
    for _ in 0..50 {
        let listed: wire::Participants = observer
            .get(&format!("/v1/rooms/{room}/participants"))
            .await
            .unwrap();
        count = listed.count;
        if count == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count, 1, "bob still listed 5 s after carol saw him leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_moves_to_another_node_within_the_grace_never_leaves() {
    let Some(mut pool) = Pool::start_with_grace(3, 60_000).await else {
        return;
    };
    let tokens = pool.tokens(&["bob", "carol"]).await;
    let cat = pool.nodes[0].category("general", json!({})).await;
    let room = pool.nodes[0]
        .room("lobby", cat, json!({ "privacy": "open" }))
        .await;
    let carol = pool.client(2, &tokens[1]);
    until_known(&carol, room).await;
    let mut carol_stream = carol.stream("desk", &[]).await.unwrap();
    next_event(&mut carol_stream, 5).await;
    carol.join(room, "desk", None).await.unwrap();
    let bob1 = pool.client(1, &tokens[0]);
    until_known(&bob1, room).await;
    let mut bob_stream = bob1.stream("laptop", &[]).await.unwrap();
    next_event(&mut bob_stream, 5).await;
    bob1.join(room, "laptop", None).await.unwrap();
    until_event(
        &mut carol_stream,
        |e| matches!(e, Event::ParticipantJoined { user, .. } if user == "bob"),
        10,
    )
    .await;
    bob1.call::<serde_json::Value>(
        reqwest::Method::PUT,
        "/v1/me/presence",
        Some(&json!({ "state": "busy" })),
    )
    .await
    .unwrap();
    until_event(
        &mut carol_stream,
        |e| matches!(e, Event::Presence { user, .. } if user == "bob"),
        10,
    )
    .await;

    // Node 1 dies. Its clients are slow to come back: bob moves to node 0
    // only after node 1 counts as silent (8 s, checked every 2 s), but
    // within the grace.
    pool.nodes[1].kill9();
    drop(bob_stream);
    let mut seen = Vec::new();
    membership_events(&mut carol_stream, Duration::from_secs(12), &mut seen).await;
    let bob0 = pool.client(0, &tokens[0]);
    let mut bob_stream = bob0.stream("laptop", &[]).await.unwrap();
    next_event(&mut bob_stream, 5).await;
    bob0.join(room, "laptop", Some(0)).await.unwrap();
    membership_events(&mut carol_stream, Duration::from_secs(3), &mut seen).await;
    // Carol saw bob neither leave nor join again, nor change presence.
    assert_eq!(
        seen,
        Vec::<Event>::new(),
        "a move is not a leave and a join, and not a presence change"
    );
    let listed: wire::Participants = carol
        .get(&format!("/v1/rooms/{room}/participants"))
        .await
        .unwrap();
    let names: Vec<&str> = listed
        .participants
        .iter()
        .map(|p| p.user.as_str())
        .collect();
    assert_eq!((listed.count, names), (2, vec!["bob", "carol"]));
    // Through the node bob moved to, he is still busy.
    let through_new_node: wire::Participants = bob0
        .get(&format!("/v1/rooms/{room}/participants"))
        .await
        .unwrap();
    let bob = through_new_node
        .participants
        .iter()
        .find(|p| p.user == "bob");
    assert_eq!(
        bob.map(|p| p.presence),
        Some(wire::PresenceState::Busy),
        "presence survives the move"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_silent_past_the_grace_is_listed_again_once_it_is_heard_from() {
    let Some(pool) = Pool::start_with_grace(2, 1_000).await else {
        return;
    };
    let tokens = pool.tokens(&["bob", "carol"]).await;
    let cat = pool.nodes[0].category("general", json!({})).await;
    let room = pool.nodes[0]
        .room("lobby", cat, json!({ "privacy": "open" }))
        .await;
    let carol = pool.client(0, &tokens[1]);
    let mut carol_stream = carol.stream("desk", &[]).await.unwrap();
    next_event(&mut carol_stream, 5).await;
    carol.join(room, "desk", None).await.unwrap();
    let bob = pool.client(1, &tokens[0]);
    until_known(&bob, room).await;
    let mut bob_stream = bob.stream("laptop", &[]).await.unwrap();
    next_event(&mut bob_stream, 5).await;
    bob.join(room, "laptop", None).await.unwrap();
    until_present(&mut carol_stream, "bob", true, 10).await;

    // Node 1 stops answering for longer than it takes to count as silent
    // (8 s, checked every 2 s) plus the grace: node 0 lets bob go.
    pool.nodes[1].pause();
    until_present(&mut carol_stream, "bob", false, 20).await;
    // It was only slow: heard from again, its state comes back.
    pool.nodes[1].resume();
    until_present(&mut carol_stream, "bob", true, 15).await;
    let listed: wire::Participants = carol
        .get(&format!("/v1/rooms/{room}/participants"))
        .await
        .unwrap();
    let names: Vec<&str> = listed
        .participants
        .iter()
        .map(|p| p.user.as_str())
        .collect();
    assert_eq!(names, ["bob", "carol"]);
    drop(bob_stream);
}

/// Waits until `stream` tells that `who` joined (`present`) or left.
async fn until_present(stream: &mut EventStream, who: &str, present: bool, secs: u64) {
    until_event(
        stream,
        |e| match e {
            Event::ParticipantJoined { user, .. } => present && user == who,
            Event::ParticipantLeft { user, .. } => !present && user == who,
            _ => false,
        },
        secs,
    )
    .await;
}

/// Collects the participant and presence events a stream receives for `time`.
async fn membership_events(stream: &mut EventStream, time: Duration, seen: &mut Vec<Event>) {
    let deadline = tokio::time::Instant::now() + time;
    while let Ok(item) = tokio::time::timeout_at(deadline, stream.next()).await {
        match item {
            Ok(StreamItem::Event(
                e @ (Event::ParticipantJoined { .. }
                | Event::ParticipantLeft { .. }
                | Event::Presence { .. }),
            )) => seen.push(e),
            Ok(_) => {}
            Err(e) => panic!("the stream failed: {e}"),
        }
    }
}
