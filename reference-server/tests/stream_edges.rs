//! Stream edge cases, most found by the conformance suite: a join before
//! the stream connects (PC-9.3b), a session that expired while its client
//! was away (PC-9.1a, PC-9.4d; found by a knee run), an oversized client
//! frame (PC-9.6b), a slow consumer's Close kept for it while it does not
//! read (PC-9.6c), the closing handshake (PC-9.7a), and syntax checked
//! before fields (PC-3.2a).

mod support;

use std::time::Duration;

use pchat_protocol::client::StreamItem;
use pchat_protocol::Event;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn a_message_posted_between_a_join_and_the_first_stream_is_delivered() {
    let server = TestServer::start().await;
    let (users, room) = server.lobby(&["alice", "bob"]).await;
    users[0].post_message(room, &post("before")).await.unwrap();
    let joined = users[1].join(room, "phone", None).await.unwrap();
    assert_eq!(joined.last_seq, 1);
    users[0].post_message(room, &post("between")).await.unwrap();
    let mut stream = users[1].stream("phone", &[]).await.unwrap();
    match next_event(&mut stream, 5).await {
        StreamItem::Event(Event::Ready { rooms, .. }) => {
            assert_eq!(rooms.len(), 1);
            assert_eq!(
                rooms[0].last_seq, 1,
                "ready starts the room at the join point"
            );
        }
        other => panic!("{other:?}"),
    }
    users[0].post_message(room, &post("after")).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        if let StreamItem::Event(Event::Message(m)) = next_event(&mut stream, 5).await {
            got.push((m.seq, m.text));
        }
    }
    assert_eq!(
        got,
        vec![(2, "between".to_string()), (3, "after".to_string())]
    );
}

/// A session joined without a stream lives for `endpoint_linger_s`
/// (PC-9.1a); expired, it has left its rooms, so a plain resume gets
/// `not_joined` (PC-9.4b) and the operator's metric counts it. The client
/// that comes back takes its rooms along with `rejoin` (PC-9.4d) and is
/// replayed everything after its entry.
#[tokio::test]
async fn an_expired_session_is_counted_and_a_rejoining_stream_misses_nothing() {
    let server = TestServer::start_with(&[("PCHAT_STREAM__ENDPOINT_LINGER_S", "1")]).await;
    let (users, room) = server.lobby(&["alice", "bob"]).await;
    let joined = users[1].join(room, "phone", None).await.unwrap();
    assert_eq!(joined.last_seq, 0);
    let expired = "pchat_endpoint_sessions_expired_total";
    assert_eq!(metric(&server, expired).await, 0.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&server, expired).await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the session did not expire"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for text in ["one", "two"] {
        users[0].post_message(room, &post(text)).await.unwrap();
    }
    // Resumed without rejoin: the room is no longer joined.
    let mut stream = users[1].stream("phone", &[(room, 0)]).await.unwrap();
    match next_event(&mut stream, 5).await {
        StreamItem::Event(Event::Ready { rooms, .. }) => assert!(rooms.is_empty(), "{rooms:?}"),
        other => panic!("{other:?}"),
    }
    match next_event(&mut stream, 5).await {
        StreamItem::Event(Event::Removed { room: r, .. }) => assert_eq!(r, room),
        other => panic!("{other:?}"),
    }
    drop(stream);
    // Rejoined: both messages, in order, then live.
    let mut stream = users[1]
        .stream_rejoining("phone", &[(room, 0)])
        .await
        .unwrap();
    match next_event(&mut stream, 5).await {
        StreamItem::Event(Event::Ready { rooms, .. }) => {
            assert_eq!(rooms.iter().map(|r| r.room).collect::<Vec<_>>(), [room]);
        }
        other => panic!("{other:?}"),
    }
    users[0].post_message(room, &post("three")).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        if let StreamItem::Event(Event::Message(m)) = next_event(&mut stream, 5).await {
            got.push(m.seq);
        }
    }
    assert_eq!(got, [1, 2, 3]);
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() {
    let server = TestServer::start().await;
    let (users, _) = server.lobby(&["alice"]).await;
    let mut stream = users[0].stream("desk", &[]).await.unwrap();
    next_event(&mut stream, 5).await;
    stream
        .send_raw(WsMessage::Binary(vec![0u8; 4096 + 100].into()))
        .await
        .unwrap();
    match next_event(&mut stream, 5).await {
        StreamItem::Closed(code, _) => assert_eq!(code, Some(1009)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let server = TestServer::start().await;
    let (users, _) = server.lobby(&["alice"]).await;
    let mut stream = users[0].stream("desk", &[]).await.unwrap();
    next_event(&mut stream, 5).await;
    stream
        .send_raw(WsMessage::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    match next_event(&mut stream, 5).await {
        StreamItem::Closed(code, _) => assert_eq!(code, Some(1000)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_syntax_error_after_an_unknown_field_is_malformed_json() {
    let server = TestServer::start().await;
    let (users, room) = server.lobby(&["alice"]).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/rooms/{room}/messages", server.base))
        .bearer_auth(users[0].token().unwrap())
        .header("content-type", "application/json")
        .body(r#"{"colour": 1,"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");
}

/// PC-9.6c: the Close of a slow consumer (4008) waits behind the frames
/// already in its socket's buffers, so the server keeps it for a client
/// that reads again a few seconds after the server gave up on it; resuming
/// from the last message read then loses nothing. On both socket paths:
/// the node's own and a stream worker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_that_reads_again_gets_4008_and_resumes() {
    for workers in ["0", "1"] {
        slow_consumer_reads_again(workers).await;
    }
}

async fn slow_consumer_reads_again(workers: &str) {
    use futures_util::StreamExt;

    let server = TestServer::start_with(&[
        ("PCHAT_STREAM__WORKERS", workers),
        ("PCHAT_STREAM__QUEUE_EVENTS", "16"),
        ("PCHAT_LIMITS__POST_RATE_PER_S", "10000"),
        ("PCHAT_LIMITS__POST_BURST", "10000"),
        ("PCHAT_LIMITS__REQUEST_RATE_PER_S", "10000"),
        ("PCHAT_LIMITS__REQUEST_BURST", "10000"),
    ])
    .await;
    let (users, room) = server.lobby(&["ann", "bob"]).await;
    let (reader, poster) = (&users[0], &users[1]);
    reader.join(room, "slow", None).await.unwrap();
    // A stream whose client takes frames only when the test reads them,
    // through a 4 KiB receive buffer.
    let request =
        pchat_protocol::client::stream_request(reader.base(), reader.token(), "slow", &[], false)
            .unwrap();
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    let first = slow.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"ready\""), "{first:?}");

    let text = "s".repeat(7990);
    let mut posted = 0u64;
    while metric(&server, "pchat_slow_consumer_closes_total").await < 1.0 {
        assert!(
            posted < 4000,
            "{workers} workers: {posted} posts of 8,000 characters did not overflow a queue of 16"
        );
        for _ in 0..20 {
            poster.post_message(room, &post(&text)).await.unwrap();
            posted += 1;
        }
    }
    // The server's writes to the stream stall from about now; it closes it
    // at the latest once they have stalled for 10 s. Read again 12 s on:
    // longer than the 1 s any other Close gets to leave after that.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut seqs = Vec::new();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                if let Ok(Event::Message(m)) = serde_json::from_str::<Event>(&t) {
                    seqs.push(m.seq);
                }
            }
            Ok(Some(Ok(WsMessage::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("{workers} workers: reading the slow stream: {e}"),
            Ok(None) => break None,
            Err(_) => panic!("{workers} workers: the slow stream was never closed"),
        }
    };
    assert_eq!(
        code,
        Some(4008),
        "{workers} workers: close code after {} of {posted} messages",
        seqs.len()
    );
    let last = seqs.len() as u64;
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "{workers} workers");
    assert!(last < posted, "{workers} workers: it got everything");
    let mut resumed = reader.stream("slow", &[(room, last)]).await.unwrap();
    let rest = messages(&mut resumed, room, (posted - last) as usize, 30).await;
    assert_eq!(
        rest.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (last + 1..=posted).collect::<Vec<_>>(),
        "{workers} workers: messages after the resume"
    );
}
