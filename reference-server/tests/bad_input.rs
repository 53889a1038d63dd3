//! Bad input gets a documented error and changes nothing (PC-2, PC-3, PC-4.1).
//!
//! Each case sends raw bytes over HTTP to a real server and snapshots the
//! status, the headers the spec fixes and the error body, with the request id
//! checked for its format and then replaced by a placeholder.

mod support;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use serde_json::Value;
use support::*;

/// What a refused request looked like on the wire, in the parts the spec fixes.
#[derive(serde::Serialize)]
struct Refusal {
    status: u16,
    /// Headers the spec requires on this answer (absent ones are left out).
    headers: std::collections::BTreeMap<String, String>,
    body: Value,
}

async fn refusal(resp: reqwest::Response) -> Refusal {
    let status = resp.status().as_u16();
    let headers = fixed_headers(resp.headers());
    let bytes = resp.bytes().await.expect("body");
    let body: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {bytes:?}"));
    Refusal {
        status,
        headers,
        body,
    }
}

fn fixed_headers(h: &HeaderMap) -> std::collections::BTreeMap<String, String> {
    ["www-authenticate", "retry-after", "allow"]
        .iter()
        .filter_map(|name| {
            h.get(*name)
                .map(|v| (name.to_string(), v.to_str().unwrap_or("?").to_owned()))
        })
        .collect()
}

/// Snapshots a refusal with its request id redacted after checking its shape.
#[track_caller]
fn check(name: &str, r: &Refusal) {
    insta::assert_json_snapshot!(name, r, {
        ".body.error.request_id" => insta::dynamic_redaction(|value, _path| {
            let id = value.as_str().expect("request_id is a string");
            assert!(
                !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_graphic()),
                "request_id {id:?} is not a short visible token"
            );
            "[request_id]"
        }),
        // Retry-After is a whole number of seconds of at least 1 (PC-2.3a);
        // its exact value depends on timing.
        ".headers[\"retry-after\"]" => insta::dynamic_redaction(|value, _path| {
            let n: u64 = value.as_str().and_then(|s| s.parse().ok()).expect("whole seconds");
            assert!(n >= 1, "Retry-After {n} is below 1");
            "[seconds]"
        }),
        ".body.error.retry_after_ms" => insta::dynamic_redaction(|value, _path| {
            assert!(value.as_u64().is_some(), "retry_after_ms is a whole number");
            "[ms]"
        }),
    });
}

struct Fixture {
    server: TestServer,
    http: reqwest::Client,
    token: String,
    room: u64,
}

async fn fixture_with(env: &[(&str, &str)]) -> Fixture {
    let server = TestServer::start_with(env).await;
    let (users, room) = server.lobby(&["alice"]).await;
    Fixture {
        token: users[0].token().expect("token").to_owned(),
        server,
        http: reqwest::Client::new(),
        room,
    }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base)
    }

    async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Refusal {
        let mut req = self.http.post(self.url(path)).bearer_auth(&self.token);
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        refusal(req.body(body).send().await.expect("send")).await
    }

    async fn post_json(&self, body: &str) -> Refusal {
        let path = format!("/v1/rooms/{}/messages", self.room);
        self.post_raw(&path, Some("application/json"), body.as_bytes().to_vec())
            .await
    }

    async fn get(&self, path: &str) -> Refusal {
        let req = self.http.get(self.url(path)).bearer_auth(&self.token);
        refusal(req.send().await.expect("send")).await
    }

    /// Number of messages in the room: refused requests must not change it.
    async fn message_count(&self) -> usize {
        let h = self
            .server
            .admin
            .history(self.room, "limit=500")
            .await
            .expect("history");
        h.messages.len()
    }
}

#[tokio::test]
async fn every_malformed_body_is_refused_with_its_documented_code_and_changes_nothing() {
    let f = fixture_with(&[]).await;
    let ok = f.post_json(r#"{"text": "kept"}"#).await;
    assert_eq!(ok.status, 201, "a good post first: {:?}", ok.body);

    check("malformed_json", &f.post_json(r#"{"text": "x""#).await);
    check("trailing_data", &f.post_json(r#"{"text": "x"} {}"#).await);
    check("not_an_object", &f.post_json(r#"["text"]"#).await);
    check("not_json_at_all", &f.post_json("text=hello").await);
    check(
        "unknown_field",
        &f.post_json(r#"{"text": "x", "colour": "red"}"#).await,
    );
    check("wrong_type", &f.post_json(r#"{"text": 42}"#).await);
    check("missing_field", &f.post_json(r#"{"kind": "normal"}"#).await);
    check("empty_text", &f.post_json(r#"{"text": ""}"#).await);
    check(
        "story_without_title",
        &f.post_json(r#"{"text": "x", "kind": "story"}"#).await,
    );
    let long = format!(r#"{{"text": "{}"}}"#, "é".repeat(8001));
    check("text_too_long", &f.post_json(&long).await);
    check(
        "client_key_not_visible_ascii",
        &f.post_json(r#"{"text": "x", "client_key": "has space"}"#)
            .await,
    );

    let path = format!("/v1/rooms/{}/messages", f.room);
    let mut bad_utf8 = br#"{"text": "caf"#.to_vec();
    bad_utf8.extend_from_slice(&[0xC3, 0x28]);
    bad_utf8.extend_from_slice(br#""}"#);
    check(
        "invalid_utf8",
        &f.post_raw(&path, Some("application/json"), bad_utf8).await,
    );
    check(
        "wrong_content_type",
        &f.post_raw(&path, Some("text/plain"), br#"{"text": "x"}"#.to_vec())
            .await,
    );
    check(
        "missing_content_type",
        &f.post_raw(&path, None, br#"{"text": "x"}"#.to_vec()).await,
    );
    let huge = format!(r#"{{"text": "{}"}}"#, "a".repeat(70 * 1024));
    check(
        "body_over_limit",
        &f.post_raw(&path, Some("application/json"), huge.into_bytes())
            .await,
    );
    // PC-3.2a orders the checks: an oversized body of invalid UTF-8 is a size
    // problem first.
    let mut huge_bad = vec![b'{'; 70 * 1024];
    huge_bad.push(0xFF);
    let r = f.post_raw(&path, Some("application/json"), huge_bad).await;
    assert_eq!(r.body["error"]["code"], "payload_too_large");

    assert_eq!(f.message_count().await, 1, "refused posts changed the room");
}

#[tokio::test]
async fn authentication_paths_and_queries_are_refused_with_documented_codes() {
    let f = fixture_with(&[]).await;
    let http = &f.http;

    let none = http.get(f.url("/v1/me")).send().await.unwrap();
    check("no_token", &refusal(none).await);
    let forged = http
        .get(f.url("/v1/me"))
        .bearer_auth("v1.1.99999999999.AAAA")
        .send()
        .await
        .unwrap();
    check("forged_token", &refusal(forged).await);
    let oversized = http
        .get(f.url("/v1/me"))
        .bearer_auth("x".repeat(600))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refusal(oversized).await.body["error"]["code"],
        "unauthenticated"
    );

    check("unknown_path", &f.get("/v1/no/such/thing").await);
    let wrong_method = http
        .delete(f.url("/v1/me"))
        .bearer_auth(&f.token)
        .send()
        .await
        .unwrap();
    check("wrong_method", &refusal(wrong_method).await);
    check("unknown_room", &f.get("/v1/rooms/999999/messages").await);
    check(
        "room_id_not_a_number",
        &f.get("/v1/rooms/lobby/messages").await,
    );

    let room = f.room;
    check(
        "before_and_after",
        &f.get(&format!("/v1/rooms/{room}/messages?before=5&after=1"))
            .await,
    );
    check(
        "limit_out_of_range",
        &f.get(&format!("/v1/rooms/{room}/messages?limit=501")).await,
    );
    check(
        "limit_not_a_number",
        &f.get(&format!("/v1/rooms/{room}/messages?limit=many"))
            .await,
    );
    // Undefined query parameters are ignored (PC-1.5d), unlike body fields.
    let ignored = f
        .get(&format!("/v1/rooms/{room}/messages?colour=red"))
        .await;
    assert_eq!(ignored.status, 200, "{:?}", ignored.body);
    check(
        "search_without_criteria",
        &f.get("/v1/search/messages").await,
    );

    let plain = http
        .get(f.url("/v1/stream?endpoint=e1"))
        .bearer_auth(&f.token)
        .send()
        .await
        .unwrap();
    check("stream_without_upgrade", &refusal(plain).await);

    let not_admin = f.get("/v1/admin/users").await;
    check("admin_api_as_a_user", &not_admin);
}

#[tokio::test]
async fn a_flood_from_one_user_is_rate_limited_without_losing_what_was_acknowledged() {
    // A small post bucket so the flood is short: 3 posts, refilling at 1/s.
    let f = fixture_with(&[
        ("PCHAT_LIMITS__POST_BURST", "3"),
        ("PCHAT_LIMITS__POST_RATE_PER_S", "1"),
    ])
    .await;
    let mut accepted = Vec::new();
    let mut limited = None;
    for n in 0..10 {
        let r = f.post_json(&format!(r#"{{"text": "flood {n}"}}"#)).await;
        match r.status {
            201 => accepted.push(r.body["seq"].as_u64().expect("seq")),
            429 => {
                limited.get_or_insert(r);
            }
            other => panic!("unexpected status {other}: {:?}", r.body),
        }
    }
    let limited = limited.expect("ten posts in a burst of three were never limited");
    check("rate_limited", &limited);
    let retry_ms = limited.body["error"]["retry_after_ms"].as_u64().unwrap();
    assert!(
        retry_ms > 0 && retry_ms <= 1000,
        "retry_after_ms {retry_ms}"
    );
    assert!(
        accepted.len() >= 3 && accepted.len() < 10,
        "accepted {accepted:?}"
    );
    // Everything acknowledged is there, densely numbered; nothing refused is.
    let h = f
        .server
        .admin
        .history(f.room, "limit=500")
        .await
        .expect("history");
    let seqs: Vec<u64> = h.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, accepted);
    // Other users are not limited by alice's flood.
    let bob = f.server.users(&["bob"]).await.remove(0);
    bob.post_message(f.room, &post("bob is fine"))
        .await
        .expect("another user's post");
}

/// A slow or silent client cannot hold a connection for ever:
/// `limits.request_head_timeout_s` closes a connection that sends no
/// request head, trickles one, or sits idle after its answer, while an
/// event stream (no longer waiting for a head) and a request answered in
/// time are not affected.
#[tokio::test]
async fn connections_that_send_no_request_head_in_time_are_closed() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let server = TestServer::start_with(&[("PCHAT_LIMITS__REQUEST_HEAD_TIMEOUT_S", "1")]).await;
    let addr = server.base.trim_start_matches("http://").to_owned();

    // Reads until the server closes the connection; what it sent, and when.
    async fn until_closed(tcp: &mut TcpStream, started: Instant) -> (Vec<u8>, Duration) {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (seen, started.elapsed()),
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                Err(_) => panic!("connection still open 10 s later; read {seen:?}"),
            }
        }
    }

    // Connected, nothing sent.
    let started = Instant::now();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let (_, after) = until_closed(&mut silent, started).await;
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );

    // A head sent a line every 300 ms, never finished.
    let started = Instant::now();
    let mut trickle = TcpStream::connect(&addr).await.unwrap();
    trickle
        .write_all(b"GET /v1/limits HTTP/1.1\r\n")
        .await
        .unwrap();
    for i in 0..30 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let line = format!("x-slow-{i}: 1\r\n");
        if trickle.write_all(line.as_bytes()).await.is_err() {
            break;
        }
    }
    let (_, after) = until_closed(&mut trickle, started).await;
    assert!(
        after < Duration::from_secs(5),
        "a trickled head held its connection {after:?}"
    );

    // One request answered, then idle: closed after the timeout, not before.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /v1/limits HTTP/1.1\r\nhost: pchat\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (answer, after) = until_closed(&mut idle, started).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );

    // An event stream outlives the timeout and still delivers.
    let (users, room) = server.lobby(&["ann", "bob"]).await;
    users[1].join(room, "phone", None).await.unwrap();
    let mut stream = users[1].stream("phone", &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    users[0]
        .post_message(room, &post("still here"))
        .await
        .unwrap();
    let got = messages(&mut stream, room, 1, 10).await;
    assert_eq!(got[0].text, "still here");
}
