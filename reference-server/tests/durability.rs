//! Idempotent retries and durability across kill -9 and SIGTERM (PC-10.2, PC-10.3).

mod support;

use pchat_protocol::{ErrorCode, PostMessage};
use serde_json::json;
use support::*;

fn keyed(text: &str, key: &str) -> PostMessage {
    PostMessage {
        text: text.into(),
        kind: None,
        title: None,
        client_key: Some(key.into()),
    }
}

#[tokio::test]
async fn a_retried_post_returns_the_original_message_never_a_duplicate() {
    let server = TestServer::start().await;
    let (users, room) = server.lobby(&["alice"]).await;
    let first = users[0]
        .post_message(room, &keyed("once", "k1"))
        .await
        .unwrap();
    let again = users[0]
        .post_message(room, &keyed("once", "k1"))
        .await
        .unwrap();
    assert_eq!((first.status, again.status), (201, 200));
    assert_eq!(first.body, again.body);
    let conflict = users[0]
        .post_message(room, &keyed("different", "k1"))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Some(ErrorCode::IdempotencyConflict));
    let history = users[0].history(room, "").await.unwrap();
    assert_eq!(history.messages.len(), 1);
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9() {
    let server = TestServer::start_with(&[
        ("PCHAT_LIMITS__POST_RATE_PER_S", "1000"),
        ("PCHAT_LIMITS__POST_BURST", "1000"),
    ])
    .await;
    let (users, room) = server.lobby(&["alice", "bob"]).await;
    // Concurrent posters; every acknowledged post is remembered.
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..40 {
                let m = u
                    .post_message(room, &post(&format!("{i}-{n}")))
                    .await
                    .unwrap();
                acked.push((m.body.seq, m.body.text));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let mut server = server;
    server.kill9();
    let server = server.restart().await;
    let token = server
        .admin
        .post::<serde_json::Value>("/v1/admin/tokens", &json!({"users": ["alice"]}))
        .await
        .unwrap();
    let alice = server
        .admin
        .as_token(token["tokens"]["alice"].as_str().unwrap());
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = alice
            .history(room, &format!("after={after}&limit=500"))
            .await
            .unwrap();
        stored.extend(page.messages.iter().map(|m| (m.seq, m.text.clone())));
        after = stored.last().map(|m| m.0).unwrap_or(0);
        if !page.has_more {
            break;
        }
    }
    acked.sort();
    assert_eq!(
        stored, acked,
        "history after kill -9 differs from what was acknowledged"
    );
    let seqs: Vec<u64> = stored.iter().map(|m| m.0).collect();
    assert_eq!(
        seqs,
        (1..=80).collect::<Vec<_>>(),
        "sequence numbers are dense from 1"
    );
    let next = alice
        .post_message(room, &post("after restart"))
        .await
        .unwrap();
    assert_eq!(next.body.seq, 81);
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_keeps_everything() {
    let mut server = TestServer::start().await;
    let (users, room) = server.lobby(&["alice"]).await;
    for n in 0..10 {
        users[0]
            .post_message(room, &post(&format!("m{n}")))
            .await
            .unwrap();
    }
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    let server = server.restart().await;
    let page = server.admin.history(room, "").await.unwrap();
    assert_eq!(page.messages.len(), 10);
}
