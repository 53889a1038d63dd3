//! §14 compliance, through the vendor's compliance-export hook: the suite
//! turns compliance on (restoring the setting afterwards), does one of
//! everything in a room of its own, exports, and reads the records the hook
//! prints (the JSON-lines format of PC-14.3a).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{json, Value};

use super::{case, Case};
use crate::ctx::{Check, Ctx, Flaw};
use crate::{check, check_eq};

pub fn cases() -> Vec<Case> {
    vec![
        case!("PC-14.1a", every_kind_of_event_is_recorded, Compliance),
        case!("PC-14.2a", each_event_is_recorded_exactly_once, Compliance),
        case!(
            "PC-14.3a",
            exported_records_have_the_documented_fields,
            Compliance
        ),
    ]
}

/// Records printed by the hook, parsed.
async fn exported(cx: &Ctx) -> Result<Vec<Value>, Flaw> {
    let hook = cx
        .compliance_export
        .as_ref()
        .ok_or_else(|| Flaw::Skip("no compliance_export hook in the profile".into()))?;
    if let Ok(admin) = cx.admin() {
        cx.post("/v1/admin/compliance/export")
            .bearer(&admin)
            .send()
            .await?
            .setup(200, "export compliance records")?;
    }
    let out = hook
        .call(&cx.ns)
        .await
        .map_err(|e| Flaw::NotPossible(format!("compliance_export hook: {e:#}")))?;
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| Flaw::Fail(format!("an exported record is not JSON ({e}): {l}")))
        })
        .collect()
}

fn in_room(records: &[Value], room: u64) -> Vec<&Value> {
    records.iter().filter(|r| r["room"]["id"] == room).collect()
}

/// Turns compliance on, runs `body`, and puts the setting back.
async fn with_compliance<'a, F, Fut>(cx: &'a Ctx, body: F) -> Check
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Check> + 'a,
{
    let admin = cx.admin()?;
    let r = cx.get("/v1/admin/compliance").bearer(&admin).send().await?;
    let was = r.setup(200, "read the compliance settings")?["enabled"].clone();
    cx.patch("/v1/admin/compliance")
        .bearer(&admin)
        .json(json!({"enabled": true}))
        .send()
        .await?
        .setup(200, "enable compliance")?;
    let result = body().await;
    cx.patch("/v1/admin/compliance")
        .bearer(&admin)
        .json(json!({ "enabled": was }))
        .send()
        .await?
        .setup(200, "restore the compliance setting")?;
    result
}

/// Does one of everything in a new room; returns the room.
async fn activity(cx: &Ctx) -> Result<u64, Flaw> {
    let admin = cx.admin()?;
    let m = &cx.w.member;
    let room = cx.room(json!({"privacy": "open"})).await?;
    cx.post(format!("/v1/rooms/{room}/lists/members"))
        .as_user(&cx.w.manager)
        .json(json!({"add": [m.principal()]}))
        .send()
        .await?
        .setup(200, "change a list")?;
    cx.patch(format!("/v1/rooms/{room}"))
        .as_user(&cx.w.manager)
        .json(json!({"description": "audited"}))
        .send()
        .await?
        .setup(200, "update the room")?;
    let (ep, _) = cx.join(m, room).await?;
    for t in ["first words", "second words", "third words"] {
        cx.say(m, room, t).await?;
    }
    cx.get(format!("/v1/rooms/{room}/messages"))
        .as_user(m)
        .send()
        .await?
        .setup(200, "read history")?;
    for (replace, kw) in [(true, "first"), (false, "second")] {
        cx.post(format!("/v1/admin/rooms/{room}/remove-messages"))
            .bearer(&admin)
            .json(json!({"keywords": kw, "replace": replace}))
            .send()
            .await?
            .setup(200, "remove or replace messages")?;
    }
    cx.post(format!("/v1/admin/rooms/{room}/clear"))
        .bearer(&admin)
        .json(json!({"before": "2000-01-01T00:00:00.000Z"}))
        .send()
        .await?
        .setup(200, "clear history")?;
    cx.post(format!("/v1/rooms/{room}/leave"))
        .as_user(m)
        .json(json!({ "endpoint": ep }))
        .send()
        .await?
        .setup(204, "leave")?;
    cx.put(format!("/v1/admin/policies/{}-audit", cx.ns))
        .bearer(&admin)
        .json(json!({"enabled": true}))
        .send()
        .await?
        .setup(200, "an administrative change")?;
    cx.delete(format!("/v1/rooms/{room}"))
        .bearer(&admin)
        .send()
        .await?
        .setup(204, "delete the room")?;
    Ok(room)
}

/// Exports until the room's three CHAT records are there (the pump may lag).
async fn records_for(cx: &Ctx, room: u64) -> Result<Vec<Value>, Flaw> {
    let mut records = Vec::new();
    for _ in 0..20 {
        records = exported(cx).await?;
        let chats = in_room(&records, room)
            .iter()
            .filter(|r| r["kind"] == "CHAT")
            .count();
        let deleted = in_room(&records, room)
            .iter()
            .any(|r| r["kind"] == "ROOM_DELETED");
        if chats >= 3 && deleted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(records)
}

async fn every_kind_of_event_is_recorded(cx: &Ctx) -> Check {
    with_compliance(cx, || async {
        let room = activity(cx).await?;
        let records = records_for(cx, room).await?;
        let kinds: BTreeSet<&str> = in_room(&records, room)
            .iter()
            .filter_map(|r| r["kind"].as_str())
            .collect();
        for k in [
            "JOIN",
            "PART",
            "CHAT",
            "BACKCHAT",
            "ROOM_CREATED",
            "ROOM_UPDATED",
            "ROOM_DELETED",
            "LIST_CHANGED",
            "MESSAGE_REMOVED",
            "MESSAGE_REPLACED",
            "HISTORY_CLEARED",
        ] {
            check!(
                kinds.contains(k),
                "no {k} record for room {room}; got {kinds:?}"
            );
        }
        check!(
            records.iter().any(|r| r["kind"] == "ADMIN"),
            "no ADMIN record for an administrative change"
        );
        let chats: Vec<(u64, String)> = in_room(&records, room)
            .iter()
            .filter(|r| r["kind"] == "CHAT")
            .map(|r| {
                (
                    r["seq"].as_u64().unwrap_or(0),
                    r["text"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        check!(
            chats.contains(&(3, "third words".to_owned())),
            "CHAT records lack room, seq and text: {chats:?}"
        );
        Ok(())
    })
    .await
}

async fn each_event_is_recorded_exactly_once(cx: &Ctx) -> Check {
    with_compliance(cx, || async {
        let m = &cx.w.member;
        let room = activity(cx).await?;
        let mut records = records_for(cx, room).await?;
        if cx.restart.is_some() {
            let room2 = cx.room(json!({"privacy": "open"})).await?;
            for i in 0..5 {
                cx.say(m, room2, &format!("around the kill {i}")).await?;
            }
            cx.restart_server().await?;
            // The records reach the export once the restarted pump runs.
            let mut sorted = Vec::new();
            for _ in 0..20 {
                records = exported(cx).await?;
                sorted = in_room(&records, room2)
                    .iter()
                    .filter(|r| r["kind"] == "CHAT")
                    .filter_map(|r| r["seq"].as_u64())
                    .collect();
                sorted.sort_unstable();
                if sorted.len() >= 5 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            check_eq!(sorted, vec![1, 2, 3, 4, 5], "CHAT records across a kill -9");
        }
        let mut ids: HashMap<String, usize> = HashMap::new();
        for r in &records {
            *ids.entry(r["id"].to_string()).or_default() += 1;
        }
        let dup: Vec<&String> = ids
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id)
            .collect();
        check!(
            dup.is_empty(),
            "record ids exported more than once: {dup:?}"
        );
        let mut chats: HashMap<(u64, u64), usize> = HashMap::new();
        for r in records.iter().filter(|r| r["kind"] == "CHAT") {
            let key = (
                r["room"]["id"].as_u64().unwrap_or(0),
                r["seq"].as_u64().unwrap_or(0),
            );
            *chats.entry(key).or_default() += 1;
        }
        let twice: Vec<_> = chats.iter().filter(|(_, n)| **n > 1).collect();
        check!(twice.is_empty(), "CHAT recorded more than once: {twice:?}");
        let ours = chats.keys().filter(|(r, _)| *r == room).count();
        check_eq!(ours, 3, "CHAT records of the room");
        Ok(())
    })
    .await
}

async fn exported_records_have_the_documented_fields(cx: &Ctx) -> Check {
    with_compliance(cx, || async {
        let room = activity(cx).await?;
        let records = records_for(cx, room).await?;
        let ours = in_room(&records, room);
        check!(!ours.is_empty(), "no records for room {room}");
        for r in ours {
            for f in ["id", "at", "kind", "room", "user", "seq", "text", "detail"] {
                check!(r.get(f).is_some(), "record lacks `{f}`: {r}");
            }
            check!(r["id"].is_u64(), "id: {r}");
            check!(
                r["at"].as_str().is_some_and(crate::redact::is_timestamp),
                "at: {r}"
            );
            check!(r["room"]["name"].is_string(), "room.name: {r}");
        }
        Ok(())
    })
    .await
}
