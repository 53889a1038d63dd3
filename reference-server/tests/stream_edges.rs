//! Stream edge cases, most found by the conformance suite: a join before
//! the stream connects (PC-9.3b), a session that expired while its client
//! was away (PC-9.1a, PC-9.4d; found by a knee run), an oversized client
//! frame (PC-9.6b), a slow consumer's Close kept for it while it does not
//! read (PC-9.6c), the closing handshake (PC-9.7a), syntax checked before
//! fields (PC-3.2a), and the node's stream limit under streams started at
//! once (PC-2.4a, `limits.max_connections`; found by a CI run of the
//! sizing test that admitted one stream over the limit).

mod support;

use std::time::Duration;

use pchat_protocol::client::{Client, ClientError, EventStream, StreamItem};
use pchat_protocol::{ErrorCode, Event};
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

/// How a stream start ended: connected (its first event read), or refused
/// with this HTTP status before the upgrade.
async fn start_stream(
    user: &Client,
    endpoint: String,
    resume: &[(u64, u64)],
) -> Result<EventStream, u16> {
    ready_or_status(user.stream(&endpoint, resume).await).await
}

/// A started stream once it is ready, or the HTTP status that refused it.
async fn ready_or_status(started: Result<EventStream, ClientError>) -> Result<EventStream, u16> {
    let (stream, first) = first_or_status(started).await?;
    match first {
        StreamItem::Event(Event::Ready { .. }) => Ok(stream),
        other => panic!("a connected stream starts with ready: {other:?}"),
    }
}

/// A started stream with the first item it read, or the HTTP status that
/// refused it before the upgrade.
async fn first_or_status(
    started: Result<EventStream, ClientError>,
) -> Result<(EventStream, StreamItem), u16> {
    match started {
        Ok(mut stream) => {
            let first = next_event(&mut stream, 10).await;
            Ok((stream, first))
        }
        Err(ClientError::WebSocket(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("stream start failed otherwise: {e}"),
    }
}

/// PC-2.4a for the reference server's `limits.max_connections` (§2): many
/// streams started at the same moment are admitted up to the limit and
/// not one more; the others are refused with 503 before the upgrade. A
/// slot comes free when a stream ends, and is taken again by the next
/// start.
///
/// The starts resume a room with a message to replay, and the stream gate
/// lets one replay run at a time (PC-2.4b), so each start waits a while
/// between its admission and its connection: a server that checked its
/// count of connected streams at admission, and counted a stream only once
/// connected, would let them all through.
#[tokio::test]
async fn streams_started_at_once_never_exceed_the_connection_limit() {
    const LIMIT: usize = 4;
    const USERS: usize = 8;
    const ENDPOINTS: usize = 4;
    let server = TestServer::start_with(&[
        ("PCHAT_LIMITS__MAX_CONNECTIONS", &LIMIT.to_string()),
        ("PCHAT_ADMISSION__STREAM__CONCURRENCY", "1"),
    ])
    .await;
    let names: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (users, room) = server.lobby(&names).await;
    for user in &users {
        for e in 0..ENDPOINTS {
            user.join(room, &format!("e{e}"), None).await.unwrap();
        }
    }
    users[0]
        .post_message(room, &post("to replay"))
        .await
        .unwrap();
    let resume = [(room, 0)];
    let resume = &resume;
    let starts = users
        .iter()
        .flat_map(|u| (0..ENDPOINTS).map(move |e| start_stream(u, format!("e{e}"), resume)));
    let outcomes = futures_util::future::join_all(starts).await;
    let mut open = Vec::new();
    let mut refused = 0;
    for outcome in outcomes {
        match outcome {
            Ok(stream) => open.push(stream),
            Err(503) => refused += 1,
            Err(status) => panic!("a refused start answers 503, not {status}"),
        }
    }
    assert_eq!(open.len(), LIMIT, "streams admitted at once");
    assert_eq!(refused, USERS * ENDPOINTS - LIMIT);
    assert_eq!(
        metric(&server, "pchat_stream_connections").await,
        LIMIT as f64
    );

    // Full: one more is refused; once a stream ends, its slot is free again.
    assert_eq!(
        start_stream(&users[0], "late".into(), &[]).await.err(),
        Some(503)
    );
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        match start_stream(&users[0], "late".into(), &[]).await {
            Ok(stream) => break stream,
            Err(503) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(status) => panic!("the freed slot was not given again: {status}"),
        }
    };
    assert_eq!(
        start_stream(&users[1], "later".into(), &[]).await.err(),
        Some(503)
    );
    drop(again);
}

/// PC-9.1c under concurrency: joins of one user from new endpoints, all at
/// the same moment, make at most `max_endpoints_per_user` sessions; the
/// others are refused with 409 `too_many_endpoints`. The joins read history
/// (the room has a message) and the join gate lets one read run at a time
/// (PC-2.4b), so each waits between its first look at the user's sessions
/// and the moment it makes its own: a server that counted at the first
/// look would let them all through.
#[tokio::test]
async fn joins_from_new_endpoints_at_once_never_exceed_the_endpoint_limit() {
    const LIMIT: usize = 3;
    const JOINS: usize = 16;
    let server = TestServer::start_with(&[
        ("PCHAT_LIMITS__MAX_ENDPOINTS_PER_USER", &LIMIT.to_string()),
        ("PCHAT_ADMISSION__JOIN__CONCURRENCY", "1"),
    ])
    .await;
    let (users, room) = server.lobby(&["ann", "bob"]).await;
    users[1].post_message(room, &post("history")).await.unwrap();
    let ann = &users[0];
    let endpoints: Vec<String> = (0..JOINS).map(|e| format!("e{e}")).collect();
    let joins = endpoints.iter().map(|e| ann.join(room, e, None));
    let outcomes = futures_util::future::join_all(joins).await;
    let mut joined = Vec::new();
    for (endpoint, outcome) in endpoints.iter().zip(outcomes) {
        match outcome {
            Ok(_) => joined.push(endpoint.clone()),
            Err(e) => assert_eq!(
                e.code(),
                Some(ErrorCode::TooManyEndpoints),
                "a join beyond the limit is refused 409 too_many_endpoints, not: {e}"
            ),
        }
    }
    assert_eq!(joined.len(), LIMIT, "sessions made at once: {joined:?}");
    assert_eq!(
        metric(&server, "pchat_endpoint_sessions").await,
        LIMIT as f64
    );

    // The sessions made are the user's: each may join again, a new one may not.
    for endpoint in &joined {
        ann.join(room, endpoint, None).await.unwrap();
    }
    let late = ann.join(room, "late", None).await.unwrap_err();
    assert_eq!(late.code(), Some(ErrorCode::TooManyEndpoints));
}

/// PC-9.1c for stream starts at once, as for joins above: each start
/// rejoins a room with a message to replay, so it waits at the stream gate
/// (one replay at a time) before its session is made.
#[tokio::test]
async fn streams_from_new_endpoints_at_once_never_exceed_the_endpoint_limit() {
    const LIMIT: usize = 3;
    const STARTS: usize = 16;
    let server = TestServer::start_with(&[
        ("PCHAT_LIMITS__MAX_ENDPOINTS_PER_USER", &LIMIT.to_string()),
        ("PCHAT_ADMISSION__STREAM__CONCURRENCY", "1"),
    ])
    .await;
    let (users, room) = server.lobby(&["ann", "bob"]).await;
    users[1]
        .post_message(room, &post("to replay"))
        .await
        .unwrap();
    let ann = &users[0];
    let resume = [(room, 0)];
    let endpoints: Vec<String> = (0..STARTS).map(|e| format!("e{e}")).collect();
    let starts = endpoints
        .iter()
        .map(|e| async { ready_or_status(ann.stream_rejoining(e, &resume).await).await });
    let outcomes = futures_util::future::join_all(starts).await;
    let mut open = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(stream) => open.push(stream),
            Err(status) => assert_eq!(status, 409, "a start beyond the limit answers 409"),
        }
    }
    assert_eq!(
        open.len(),
        LIMIT,
        "streams of new endpoints admitted at once"
    );
    assert_eq!(
        metric(&server, "pchat_endpoint_sessions").await,
        LIMIT as f64
    );
    assert_eq!(start_stream(ann, "late".into(), &[]).await.err(), Some(409));
}

/// PC-4.2b against stream starts in flight: a user disabled while their
/// streams are being started keeps none open. Each start resumes a room
/// with a message to replay and the stream gate lets one replay run at a
/// time (PC-2.4b), so most starts wait after their authentication; the user
/// is disabled once the first start is answered. Every start is then
/// refused (401) or its stream closes with 4001.
#[tokio::test]
async fn a_user_disabled_while_streams_start_keeps_none_open() {
    user_gone_while_streams_start(Gone::Disabled).await;
}

/// PC-4.2b as above, for a user deleted while their streams start.
#[tokio::test]
async fn a_user_deleted_while_streams_start_keeps_none_open() {
    user_gone_while_streams_start(Gone::Deleted).await;
}

enum Gone {
    Disabled,
    Deleted,
}

async fn user_gone_while_streams_start(how: Gone) {
    const ENDPOINTS: usize = 12;
    let server = TestServer::start_with(&[("PCHAT_ADMISSION__STREAM__CONCURRENCY", "1")]).await;
    let (users, room) = server.lobby(&["ann", "bob"]).await;
    let ann = &users[0];
    let endpoints: Vec<String> = (0..ENDPOINTS).map(|e| format!("e{e}")).collect();
    for e in &endpoints {
        ann.join(room, e, None).await.unwrap();
    }
    users[1]
        .post_message(room, &post("to replay"))
        .await
        .unwrap();
    let resume = [(room, 0)];
    let first_answer = tokio::sync::Notify::new();
    let starts = futures_util::future::join_all(endpoints.iter().map(|e| async {
        // The first item is `ready`, or the close of a start that found
        // its user gone once attached.
        let started = first_or_status(ann.stream(e, &resume).await).await;
        first_answer.notify_one();
        started
    }));
    let disable = async {
        first_answer.notified().await;
        match how {
            Gone::Disabled => {
                server
                    .admin
                    .patch::<serde_json::Value>(
                        "/v1/admin/users/ann",
                        &serde_json::json!({"disabled": true}),
                    )
                    .await
                    .unwrap();
            }
            Gone::Deleted => {
                let resp = server
                    .admin
                    .send(
                        reqwest::Method::DELETE,
                        "/v1/admin/users/ann",
                        None::<&serde_json::Value>,
                    )
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 204);
            }
        }
    };
    let (outcomes, ()) = tokio::join!(starts, disable);
    let (mut closed, mut refused) = (0, 0);
    for outcome in outcomes {
        match outcome {
            Ok((_, StreamItem::Closed(code, _))) => {
                assert_eq!(
                    code,
                    Some(4001),
                    "a disabled or deleted user's stream closes with 4001"
                );
                closed += 1;
            }
            Ok((mut stream, StreamItem::Event(first))) => {
                assert!(
                    matches!(first, Event::Ready { .. }),
                    "first event: {first:?}"
                );
                // What was replayed may arrive first; then the close.
                let code = loop {
                    let item = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
                    match item {
                        Ok(Ok(StreamItem::Closed(code, _))) => break code,
                        Ok(Ok(StreamItem::Event(_))) => continue,
                        Ok(Err(e)) => panic!("stream error: {e}"),
                        Err(_) => {
                            panic!("a disabled or deleted user's stream is still open 5 s later")
                        }
                    }
                };
                assert_eq!(
                    code,
                    Some(4001),
                    "a disabled or deleted user's stream closes with 4001"
                );
                closed += 1;
            }
            Err(status) => {
                assert_eq!(
                    status, 401,
                    "a disabled or deleted user's start is refused 401"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(closed + refused, ENDPOINTS);
    // The server counts a stream until its close handshake is over.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let open = metric(&server, "pchat_stream_connections").await;
        if open == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} streams of the gone user still counted 5 s later"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
