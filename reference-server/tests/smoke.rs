//! The shortest end-to-end path: two users, one open room, a message each way.

mod support;

use pchat_protocol::client::StreamItem;
use pchat_protocol::Event;
use support::*;

#[tokio::test]
async fn two_users_exchange_messages_in_an_open_room() {
    let server = TestServer::start().await;
    let (users, room) = server.lobby(&["alice", "bob"]).await;

    let mut streams = Vec::new();
    for u in &users {
        let mut s = u.stream("desk", &[]).await.unwrap();
        assert!(matches!(
            next_event(&mut s, 5).await,
            StreamItem::Event(Event::Ready { .. })
        ));
        let joined = u.join(room, "desk", None).await.unwrap();
        assert_eq!(joined.last_seq, 0);
        streams.push(s);
    }
    let first = users[0]
        .post_message(room, &post("hello bob"))
        .await
        .unwrap();
    assert_eq!((first.status, first.body.seq), (201, 1));
    let second = users[1]
        .post_message(room, &post("hello alice"))
        .await
        .unwrap();
    assert_eq!(second.body.seq, 2);
    for s in &mut streams {
        let got = messages(s, room, 2, 5).await;
        let texts: Vec<_> = got
            .iter()
            .map(|m| (m.seq, m.sender.as_str(), m.text.as_str()))
            .collect();
        assert_eq!(
            texts,
            vec![(1, "alice", "hello bob"), (2, "bob", "hello alice")]
        );
    }
}
