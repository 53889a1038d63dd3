//! Stream edge cases found by the conformance suite: a join before the
//! stream connects (PC-9.3b), an oversized client frame (PC-9.6b), the
//! closing handshake (PC-9.7a), and syntax checked before fields (PC-3.2a).

mod support;

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
