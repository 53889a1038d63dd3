//! Admission control (PC-2.4b): joins that read history beyond the node's
//! bound are refused with 503 `busy` and a `Retry-After`, change nothing,
//! and succeed when retried; the joins let in are answered in full.

mod support;

use std::collections::BTreeSet;

use pchat_protocol::client::Client;
use pchat_protocol::{self as wire, ErrorBody, ErrorCode};
use serde_json::{json, Value};
use support::*;

/// Messages in the room before the joins: each join with `since` 0 reads
/// them all back.
const POSTED: u64 = 40;
/// Concurrent joins per round, each by a new user.
const BURST: usize = 48;
/// Rounds tried before concluding that nothing is ever refused.
const ROUNDS: usize = 6;

/// What one raw join answered.
enum Answer {
    Joined(Box<wire::Joined>),
    /// 503 busy: the `Retry-After` header (seconds) and `retry_after_ms`.
    Busy {
        header_s: u64,
        retry_after_ms: u64,
    },
}

/// `POST /v1/rooms/{room}/join` with `since`, read raw so the headers of a
/// refusal can be checked.
async fn join(http: &reqwest::Client, client: &Client, room: u64, since: u64) -> Answer {
    let resp = http
        .post(format!("{}/v1/rooms/{room}/join", client.base()))
        .bearer_auth(client.token().expect("a user's client"))
        .json(&json!({ "endpoint": "e1", "since": since }))
        .send()
        .await
        .expect("join request");
    let status = resp.status().as_u16();
    let header_s = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse::<u64>().expect("whole seconds"));
    let bytes = resp.bytes().await.expect("join answer");
    match status {
        200 => Answer::Joined(serde_json::from_slice(&bytes).expect("a join answer")),
        503 => {
            let body: ErrorBody = serde_json::from_slice(&bytes).expect("an error body");
            assert_eq!(body.error.code, ErrorCode::Busy);
            Answer::Busy {
                header_s: header_s.expect("a 503 busy carries Retry-After"),
                retry_after_ms: body.error.retry_after_ms.expect("and retry_after_ms"),
            }
        }
        other => panic!("join answered {other}: {}", String::from_utf8_lossy(&bytes)),
    }
}

/// A join let in is answered in full: everything after `since` 0.
#[track_caller]
fn check_joined(j: &wire::Joined, room: u64) {
    assert_eq!(j.room.id, room);
    assert_eq!(j.last_seq, POSTED);
    let seqs: Vec<u64> = j.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=POSTED).collect::<Vec<_>>());
    assert!(!j.has_more);
}

/// The value of an unlabelled metric, or of one with exactly `labels`.
#[tokio::test]
async fn joins_beyond_the_admission_bound_are_refused_without_effect_and_succeed_when_retried() {
    let server = TestServer::start_with(&[
        ("PCHAT_ADMISSION__JOIN__CONCURRENCY", "1"),
        ("PCHAT_ADMISSION__JOIN__QUEUE", "0"),
        ("PCHAT_ADMISSION__RETRY_AFTER_MIN_MS", "1500"),
        ("PCHAT_ADMISSION__RETRY_AFTER_MAX_MS", "4000"),
    ])
    .await;
    server
        .admin
        .patch::<Value>("/v1/admin/compliance", &json!({ "enabled": true }))
        .await
        .expect("enable compliance");
    let (posters, room) = server.lobby(&["p0", "p1", "p2", "p3"]).await;
    for n in 0..POSTED {
        posters[(n % 4) as usize]
            .post_message(room, &post(&format!("m{n}")))
            .await
            .expect("post");
    }

    // Bursts of concurrent joins, one turn and no queue: some are refused.
    let http = reqwest::Client::new();
    let mut admitted: Vec<String> = Vec::new();
    let mut refused: Vec<(String, Client)> = Vec::new();
    for round in 0..ROUNDS {
        let names: Vec<String> = (0..BURST).map(|i| format!("r{round}u{i}")).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let clients = server.users(&name_refs).await;
        let answers =
            futures_util::future::join_all(clients.iter().map(|c| join(&http, c, room, 0))).await;
        for ((name, client), answer) in names.into_iter().zip(clients).zip(answers) {
            match answer {
                Answer::Joined(j) => {
                    check_joined(&j, room);
                    admitted.push(name);
                }
                Answer::Busy {
                    header_s,
                    retry_after_ms,
                } => {
                    assert!((1500..=4000).contains(&retry_after_ms), "{retry_after_ms}");
                    assert_eq!(header_s, retry_after_ms.div_ceil(1000));
                    refused.push((name, client));
                }
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    assert!(
        !refused.is_empty(),
        "no join was refused in {ROUNDS} rounds of {BURST} concurrent joins through one turn"
    );
    assert!(!admitted.is_empty(), "every join was refused");

    // The refused had no effect: no participant, no endpoint session, no
    // compliance record; the metric counts them.
    let participants: wire::Participants = server
        .admin
        .get(&format!("/v1/rooms/{room}/participants?limit=1000"))
        .await
        .expect("participants");
    let present: BTreeSet<String> = participants
        .participants
        .iter()
        .map(|p| p.user.clone())
        .collect();
    assert_eq!(present, admitted.iter().cloned().collect());
    assert_eq!(participants.count, admitted.len() as u64);
    assert_eq!(
        metric(&server, "pchat_endpoint_sessions").await,
        admitted.len() as f64
    );
    assert_eq!(
        metric(&server, "pchat_admission_refused_total{gate=\"join\"}").await,
        refused.len() as f64
    );
    let exported: Value = server
        .admin_post("/v1/admin/compliance/export", json!({}))
        .await;
    assert!(exported["records"].as_u64().unwrap() > 0, "{exported}");
    let records = compliance_records(&server.dir.join("compliance-export"));
    for kind in ["JOIN", "BACKCHAT"] {
        let users: BTreeSet<String> = records
            .iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["user"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            users,
            admitted.iter().cloned().collect(),
            "{kind} records are of the admitted joins only"
        );
    }

    // Retried one at a time, each refused join is let in and answered in full.
    for (name, client) in &refused {
        match join(&http, client, room, 0).await {
            Answer::Joined(j) => check_joined(&j, room),
            Answer::Busy { .. } => panic!("{name}'s retry was refused with nothing else running"),
        }
    }
    let participants: wire::Participants = server
        .admin
        .get(&format!("/v1/rooms/{room}/participants?limit=1000"))
        .await
        .expect("participants");
    assert_eq!(participants.count, (admitted.len() + refused.len()) as u64);
}

/// Every exported JSON-lines compliance record under `dir`.
fn compliance_records(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_dir(dir)
        .expect("export directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|p| {
            std::fs::read_to_string(&p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("a JSON object per line"))
                .collect::<Vec<_>>()
        })
        .collect()
}
