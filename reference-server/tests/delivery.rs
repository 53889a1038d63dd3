//! Ordering, exactly-once delivery, resume and stream policies (PC-9, PC-15).

mod support;

use std::collections::HashSet;

use pchat_protocol::client::StreamItem;
use pchat_protocol::{close, Event};
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const FAST: [(&str, &str); 4] = [
    ("PCHAT_LIMITS__POST_RATE_PER_S", "1000"),
    ("PCHAT_LIMITS__POST_BURST", "1000"),
    ("PCHAT_LIMITS__REQUEST_RATE_PER_S", "10000"),
    ("PCHAT_LIMITS__REQUEST_BURST", "10000"),
];

async fn ready(s: &mut pchat_protocol::client::EventStream) -> Vec<(u64, u64)> {
    match next_event(s, 5).await {
        StreamItem::Event(Event::Ready { rooms, .. }) => {
            rooms.into_iter().map(|r| (r.room, r.last_seq)).collect()
        }
        other => panic!("expected ready, got {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_posts_reach_every_endpoint_once_in_order() {
    let server = TestServer::start_with(&FAST).await;
    let (users, room) = server.lobby(&["a", "b", "c"]).await;
    let mut streams = Vec::new();
    for (i, u) in users.iter().enumerate() {
        for ep in ["desk", "phone"] {
            let mut s = u.stream(ep, &[]).await.unwrap();
            ready(&mut s).await;
            u.join(room, ep, None).await.unwrap();
            streams.push((i, s));
        }
    }
    let per_user = 30;
    let mut tasks = Vec::new();
    for u in users.clone() {
        tasks.push(tokio::spawn(async move {
            for n in 0..per_user {
                u.post_message(room, &post(&format!("n{n}"))).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = per_user * users.len();
    for (i, s) in &mut streams {
        let got = messages(s, room, total, 10).await;
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=total as u64).collect::<Vec<_>>(),
            "endpoint of user {i}"
        );
    }
}

#[tokio::test]
async fn a_resumed_stream_gets_exactly_what_it_missed() {
    let server = TestServer::start_with(&FAST).await;
    let (users, room) = server.lobby(&["reader", "writer"]).await;
    let mut s = users[0].stream("desk", &[]).await.unwrap();
    ready(&mut s).await;
    users[0].join(room, "desk", None).await.unwrap();
    for n in 0..5 {
        users[1]
            .post_message(room, &post(&format!("before {n}")))
            .await
            .unwrap();
    }
    let first = messages(&mut s, room, 5, 5).await;
    let last_seen = first.last().unwrap().seq;
    drop(s); // vanish without a close handshake
    for n in 0..7 {
        users[1]
            .post_message(room, &post(&format!("while away {n}")))
            .await
            .unwrap();
    }
    let mut s = users[0].stream("desk", &[(room, last_seen)]).await.unwrap();
    let joined = ready(&mut s).await;
    assert_eq!(joined, vec![(room, 12)]);
    users[1].post_message(room, &post("live")).await.unwrap();
    let rest = messages(&mut s, room, 8, 5).await;
    let seqs: Vec<u64> = rest.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (6..=13).collect::<Vec<_>>());
    assert_eq!(rest.last().unwrap().text, "live");
    // A join with `since` returns the same gap in its answer.
    let again = users[0].join(room, "desk", Some(5)).await.unwrap();
    assert_eq!(
        again.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (6..=13).collect::<Vec<_>>()
    );
}

/// A poster who was answered reads its own message at once, although the
/// fan-out runs after the acknowledgement: in the room's `last_seq` and in
/// a stream started right after (whose catch-up then holds the message).
#[tokio::test]
async fn an_acknowledged_message_is_known_at_once() {
    let server = TestServer::start_with(&FAST).await;
    let (users, room) = server.lobby(&["reader", "writer"]).await;
    let mut s = users[0].stream("desk", &[]).await.unwrap();
    ready(&mut s).await;
    users[0].join(room, "desk", None).await.unwrap();
    drop(s);
    for n in 0..50u64 {
        let acked = users[1]
            .post_message(room, &post(&format!("m{n}")))
            .await
            .unwrap()
            .body
            .seq;
        let shown: pchat_protocol::Room = users[1].get(&format!("/v1/rooms/{room}")).await.unwrap();
        assert_eq!(shown.last_seq, acked, "room after post {n}");
        let mut s = users[0].stream("desk", &[(room, acked - 1)]).await.unwrap();
        assert_eq!(
            ready(&mut s).await,
            vec![(room, acked)],
            "ready after post {n}"
        );
        let got = messages(&mut s, room, 1, 5).await;
        assert_eq!(got[0].seq, acked);
        drop(s);
    }
}

#[tokio::test]
async fn a_second_connection_replaces_the_first_and_data_frames_are_refused() {
    let server = TestServer::start().await;
    let users = server.users(&["a"]).await;
    let mut old = users[0].stream("desk", &[]).await.unwrap();
    ready(&mut old).await;
    let mut new = users[0].stream("desk", &[]).await.unwrap();
    ready(&mut new).await;
    match next_event(&mut old, 5).await {
        StreamItem::Closed(code, _) => assert_eq!(code, Some(close::REPLACED)),
        other => panic!("expected a close, got {other:?}"),
    }
    new.send_raw(WsMessage::Text("hello".into())).await.unwrap();
    match next_event(&mut new, 5).await {
        StreamItem::Closed(code, _) => assert_eq!(code, Some(close::UNSUPPORTED_DATA)),
        other => panic!("expected a close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_and_others_get_everything() {
    let server = TestServer::start_with(&[
        ("PCHAT_LIMITS__POST_RATE_PER_S", "10000"),
        ("PCHAT_LIMITS__POST_BURST", "10000"),
        ("PCHAT_LIMITS__REQUEST_RATE_PER_S", "10000"),
        ("PCHAT_LIMITS__REQUEST_BURST", "10000"),
        ("PCHAT_STREAM__QUEUE_EVENTS", "16"),
    ])
    .await;
    let (users, room) = server.lobby(&["stalled", "reader", "writer"]).await;
    let mut stalled = users[0].stream("desk", &[]).await.unwrap();
    ready(&mut stalled).await;
    users[0].join(room, "desk", None).await.unwrap();
    let mut reader = users[1].stream("desk", &[]).await.unwrap();
    ready(&mut reader).await;
    users[1].join(room, "desk", None).await.unwrap();
    // Large messages fill the stalled socket's buffers, then its queue.
    let text = "x".repeat(7000);
    let total = 2000;
    let writer = users[2].clone();
    let posting = tokio::spawn(async move {
        for _ in 0..total {
            writer.post_message(room, &post(&text)).await.unwrap();
        }
    });
    let got = messages(&mut reader, room, total, 30).await;
    posting.await.unwrap();
    let distinct: HashSet<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(distinct.len(), total);
    // Now read the stalled stream: it must end with the slow-consumer close.
    let mut code = None;
    for _ in 0..(total + 10) {
        match next_event(&mut stalled, 10).await {
            StreamItem::Closed(c, _) => {
                code = c;
                break;
            }
            StreamItem::Event(_) => {}
        }
    }
    assert_eq!(code, Some(close::SLOW_CONSUMER));
}

#[tokio::test]
async fn a_silent_client_is_closed_by_the_heartbeat() {
    let server = TestServer::start_with(&[
        ("PCHAT_STREAM__HEARTBEAT_INTERVAL_S", "1"),
        ("PCHAT_STREAM__HEARTBEAT_TIMEOUT_S", "2"),
    ])
    .await;
    let users = server.users(&["a"]).await;
    let mut s = users[0].stream("desk", &[]).await.unwrap();
    ready(&mut s).await;
    // Not reading means never answering pings.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let mut code = None;
    for _ in 0..10 {
        if let StreamItem::Closed(c, _) = next_event(&mut s, 5).await {
            code = c;
            break;
        }
    }
    assert_eq!(code, Some(close::HEARTBEAT_TIMEOUT));
}
