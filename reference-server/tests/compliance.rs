//! Compliance capture is complete, exactly once, across kill -9, and exported
//! in both adapter formats (PC-14).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{json, Value};
use support::*;

/// Reads every exported JSON-lines record under `dir`, in file-name order.
fn exported_jsonl(dir: &std::path::Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("a JSON object per line"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Counts `Message` elements by their `type` attribute in every exported XML file.
fn exported_xml_kinds(dir: &std::path::Path) -> BTreeMap<String, usize> {
    use quick_xml::events::Event;
    let mut kinds = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "xml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut reader = quick_xml::Reader::from_str(&text);
        let mut saw_root = false;
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Start(e) | Event::Empty(e) => {
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    if name == "Conversations" {
                        saw_root = true;
                    }
                    if name == "Message" {
                        let kind = e
                            .try_get_attribute("type")
                            .unwrap()
                            .expect("Message has a type")
                            .unescape_value()
                            .unwrap()
                            .into_owned();
                        *kinds.entry(kind).or_insert(0) += 1;
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert!(saw_root, "{} has no Conversations root", path.display());
    }
    kinds
}

/// A server started with compliance recording enabled.
async fn with_compliance() -> TestServer {
    let server = TestServer::start().await;
    server
        .admin
        .patch::<Value>("/v1/admin/compliance", &json!({ "enabled": true }))
        .await
        .expect("enable compliance");
    server
}

#[tokio::test]
async fn every_event_is_recorded_once_and_exported_in_both_formats_even_across_kill_9() {
    let mut server = with_compliance().await;
    let users = server.users(&["alice", "bob", "carol"]).await;
    let cat = server.category("general", json!({})).await;
    let quiet = server
        .category("ephemeral", json!({ "history": false }))
        .await;
    let room = server
        .room(
            "lobby",
            cat,
            json!({ "privacy": "closed", "members": ["user:alice", "user:bob"] }),
        )
        .await;
    let off_room = server
        .room("no-history", quiet, json!({ "privacy": "open" }))
        .await;
    server
        .admin_post(
            &format!("/v1/rooms/{room}/lists/members"),
            json!({ "add": ["user:carol"] }),
        )
        .await;
    for (i, u) in users.iter().enumerate() {
        u.join(room, &format!("e{i}"), None).await.expect("join");
    }

    // Concurrent posts from three users.
    let per_user = 15;
    let mut tasks = Vec::new();
    for u in users.clone() {
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..per_user {
                let m = u.post_message(room, &post(&format!("m{n}"))).await.unwrap();
                seqs.push(m.body.seq);
            }
            seqs
        }));
    }
    let mut acked = BTreeSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let off = users[0]
        .post_message(off_room, &post("recorded though not kept"))
        .await
        .unwrap()
        .body;
    users[1].history(room, "limit=5").await.expect("history");

    // Kill without shutdown: what was acknowledged must still be recorded.
    server.kill9();
    let server = server.restart().await;
    // The restarted server listens on a new port; tokens stay valid.
    let carol = pchat_protocol::client::Client::new(server.base.clone())
        .as_token(users[2].token().expect("token"));
    carol
        .join(room, "e9", None)
        .await
        .expect("join after restart");
    let left = carol
        .call_empty(
            reqwest::Method::POST,
            &format!("/v1/rooms/{room}/leave"),
            Some(&json!({ "endpoint": "e9" })),
        )
        .await
        .expect("leave");
    assert_eq!(left, 204);

    let exported: Value = server
        .admin_post("/v1/admin/compliance/export", json!({}))
        .await;
    assert!(exported["records"].as_u64().unwrap() > 0, "{exported}");
    let dir = server.dir.join("compliance-export");
    let records = exported_jsonl(&dir);

    // CHAT: each acknowledged message exactly once, with its text.
    let chats: Vec<&Value> = records.iter().filter(|r| r["kind"] == "CHAT").collect();
    let lobby: Vec<u64> = chats
        .iter()
        .filter(|r| r["room"]["id"] == room)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    let unique: BTreeSet<u64> = lobby.iter().copied().collect();
    assert_eq!(lobby.len(), unique.len(), "a CHAT record was duplicated");
    assert_eq!(unique, acked, "CHAT records differ from acknowledged posts");
    assert!(
        chats
            .iter()
            .any(|r| r["room"]["id"] == off_room && r["seq"] == off.seq),
        "a message in a history-off category was not recorded"
    );

    // The other kinds this session caused.
    let kinds: BTreeMap<&str, usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["kind"].as_str().unwrap()).or_insert(0) += 1;
        m
    });
    for kind in [
        "JOIN",
        "PART",
        "BACKCHAT",
        "ROOM_CREATED",
        "LIST_CHANGED",
        "ADMIN",
    ] {
        assert!(kinds.contains_key(kind), "no {kind} record in {kinds:?}");
    }
    // Ids are unique and increasing across files.
    let ids: Vec<u64> = records.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing");

    // The XML adapter wrote the same records.
    let xml = exported_xml_kinds(&dir);
    let jsonl_kinds: BTreeMap<String, usize> =
        kinds.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    assert_eq!(xml, jsonl_kinds, "XML and JSON lines disagree");

    // Exported records are deleted: a second export finds nothing.
    let again: Value = server
        .admin_post("/v1/admin/compliance/export", json!({}))
        .await;
    assert_eq!(again["records"], 0, "{again}");
}

#[tokio::test]
async fn nothing_is_recorded_while_compliance_is_disabled() {
    let server = TestServer::start().await;
    let (users, room) = server.lobby(&["alice"]).await;
    users[0]
        .post_message(room, &post("unrecorded"))
        .await
        .unwrap();
    let exported: Value = server
        .admin_post("/v1/admin/compliance/export", json!({}))
        .await;
    assert_eq!(exported["records"], 0, "{exported}");
}

/// Regression: outbox ids were reused once the outbox had been emptied, and
/// the compliance database then silently ignored the new events as repeats.
#[tokio::test]
async fn events_after_an_export_are_recorded_too() {
    let server = with_compliance().await;
    let (users, room) = server.lobby(&["alice"]).await;
    let mut seqs = BTreeSet::new();
    for round in 0..3 {
        for n in 0..4 {
            let m = users[0]
                .post_message(room, &post(&format!("r{round} m{n}")))
                .await
                .unwrap();
            seqs.insert(m.body.seq);
        }
        let exported: Value = server
            .admin_post("/v1/admin/compliance/export", json!({}))
            .await;
        assert!(
            exported["records"].as_u64().unwrap() >= 4,
            "round {round}: {exported}"
        );
    }
    let records = exported_jsonl(&server.dir.join("compliance-export"));
    let chats: BTreeSet<u64> = records
        .iter()
        .filter(|r| r["kind"] == "CHAT")
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(chats, seqs);
}

/// A burst of joins at once (the participant recorder writes them together):
/// every answered join has its JOIN record, even when the server is killed
/// right after the last answer.
#[tokio::test]
async fn every_answered_join_of_a_burst_is_recorded_across_kill_9() {
    let mut server = with_compliance().await;
    let names: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let users = server.users(&names).await;
    let cat = server.category("general", json!({})).await;
    let mut rooms = Vec::new();
    for r in 0..5 {
        rooms.push(
            server
                .room(&format!("burst{r}"), cat, json!({ "privacy": "open" }))
                .await,
        );
    }
    let mut joins = Vec::new();
    for (i, u) in users.iter().enumerate() {
        for &room in &rooms {
            let u = u.clone();
            joins.push(tokio::spawn(async move {
                u.join(room, &format!("e{i}"), None).await
            }));
        }
    }
    let mut answered = 0;
    for j in joins {
        j.await.unwrap().expect("join");
        answered += 1;
    }
    server.kill9();
    let server = server.restart().await;
    let exported: Value = server
        .admin_post("/v1/admin/compliance/export", json!({}))
        .await;
    assert!(exported["records"].as_u64().unwrap() > 0, "{exported}");
    let records = exported_jsonl(&server.dir.join("compliance-export"));
    let mut seen = BTreeSet::new();
    for r in records.iter().filter(|r| r["kind"] == "JOIN") {
        let key = (
            r["user"].as_str().unwrap().to_owned(),
            r["room"]["id"].as_u64().unwrap(),
        );
        assert!(seen.insert(key.clone()), "JOIN {key:?} recorded twice");
    }
    assert_eq!(answered, 100);
    for (i, _) in users.iter().enumerate() {
        for &room in &rooms {
            let key = (format!("u{i}"), room);
            assert!(seen.contains(&key), "no JOIN record for {key:?}");
        }
    }
}
