//! The compliance service (PC-14): a pump that moves events from the chat
//! store's outbox into the compliance database every second, and an adapter
//! that exports them to files on the configured interval.
//!
//! An exported batch is written to temporary files, fsync'd, renamed into
//! place, and only then deleted from the compliance database; a crash at any
//! point leaves the events to be exported again, never lost.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

use crate::app::{views, App};
use crate::store::{ComplianceRecord, Pump};

/// Every kind of compliance event.
pub const KINDS: [&str; 12] = [
    "JOIN",
    "PART",
    "CHAT",
    "BACKCHAT",
    "ROOM_CREATED",
    "ROOM_UPDATED",
    "ROOM_DELETED",
    "LIST_CHANGED",
    "ADMIN",
    "MESSAGE_REMOVED",
    "MESSAGE_REPLACED",
    "HISTORY_CLEARED",
];

/// Records exported per file pair.
const BATCH: usize = 10_000;

/// What one export run wrote.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Exported {
    pub records: usize,
    pub files: Vec<PathBuf>,
}

/// Moves outbox events into the compliance database until shutdown.
pub async fn run_pump(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = app.shutdown.cancelled() => {
                drain(&app, Pump::All).await;
                return;
            }
        }
        drain(&app, Pump::IfFree).await;
    }
}

async fn drain(app: &App, mode: Pump) {
    loop {
        match app.store.pump_compliance(mode).await {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "compliance pump failed; will retry");
                return;
            }
        }
    }
}

/// Exports on the configured interval until shutdown.
pub async fn run_exporter(app: Arc<App>) {
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = app.shutdown.cancelled() => return,
        }
        let interval = Duration::from_secs(app.settings().compliance.interval_s);
        if last.elapsed() < interval {
            continue;
        }
        last = Instant::now();
        if let Err(e) = export_now(&app).await {
            tracing::warn!(error = %e, "compliance export failed; will retry next interval");
        }
    }
}

/// Pumps and exports everything pending now.
pub async fn export_now(app: &App) -> anyhow::Result<Exported> {
    app.hub.flush_notes().await;
    drain(app, Pump::All).await;
    let dir = app.config.export_dir();
    fs::create_dir_all(&dir)?;
    let formats = app.config.compliance.formats.clone();
    let mut out = Exported::default();
    loop {
        let batch = app.store.compliance_pending(BATCH).await?;
        if batch.is_empty() {
            return Ok(out);
        }
        let first = batch.first().map(|r| r.id).unwrap_or(0);
        let last = batch.last().map(|r| r.id).unwrap_or(0);
        let stem = format!("pchat-compliance-{first:012}-{last:012}");
        if formats.iter().any(|f| f == "xml") {
            out.files.push(write_atomically(
                &dir,
                &format!("{stem}.xml"),
                &to_xml(&batch)?,
            )?);
        }
        if formats.iter().any(|f| f == "jsonl") {
            out.files.push(write_atomically(
                &dir,
                &format!("{stem}.jsonl"),
                &to_jsonl(&batch),
            )?);
        }
        if formats.is_empty() {
            // No adapter configured: nothing is exported, nothing deleted (PC-14.4).
            return Ok(out);
        }
        out.records += batch.len();
        app.metrics.compliance_exported.inc_by(batch.len() as u64);
        app.store
            .compliance_delete(batch.iter().map(|r| r.id).collect())
            .await?;
    }
}

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    fs::File::open(dir)?.sync_all()?;
    Ok(path)
}

/// One JSON object per line.
pub fn to_jsonl(batch: &[ComplianceRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in batch {
        let e = &r.event;
        let line = serde_json::json!({
            "id": r.id,
            "at": views::timestamp(e.at_ms),
            "kind": e.kind,
            "room": e.room.as_ref().map(|(id, name)| serde_json::json!({"id": id.0, "name": name})),
            "user": e.user,
            "seq": e.seq,
            "text": e.text,
            "detail": e.detail,
        });
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// The XML adapter's format: a `Conversation` per room (and one without a
/// room for administrative events), each with its `Messages`.
pub fn to_xml(batch: &[ComplianceRecord]) -> anyhow::Result<Vec<u8>> {
    let mut by_room: BTreeMap<Option<i64>, Vec<&ComplianceRecord>> = BTreeMap::new();
    for r in batch {
        by_room
            .entry(r.event.room.as_ref().map(|(id, _)| id.0))
            .or_default()
            .push(r);
    }
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))?;
    let mut root = BytesStart::new("Conversations");
    root.push_attribute(("xmlns", "urn:pchat:compliance:1"));
    w.write_event(Event::Start(root))?;
    for (room, records) in by_room {
        w.write_event(Event::Start(BytesStart::new("Conversation")))?;
        if let Some(room) = room {
            let name = records[0]
                .event
                .room
                .as_ref()
                .map(|(_, n)| n.as_str())
                .unwrap_or("");
            let mut el = BytesStart::new("Room");
            el.push_attribute(("id", room.to_string().as_str()));
            el.push_attribute(("name", name));
            w.write_event(Event::Empty(el))?;
        }
        let start = records.iter().map(|r| r.event.at_ms).min().unwrap_or(0);
        let end = records.iter().map(|r| r.event.at_ms).max().unwrap_or(0);
        text_element(&mut w, "StartTimeUTC", &views::timestamp(start))?;
        text_element(&mut w, "EndTimeUTC", &views::timestamp(end))?;
        w.write_event(Event::Start(BytesStart::new("Messages")))?;
        for r in records {
            let e = &r.event;
            let mut m = BytesStart::new("Message");
            m.push_attribute(("type", e.kind));
            m.push_attribute(("recordId", r.id.to_string().as_str()));
            if let Some(seq) = e.seq {
                m.push_attribute(("id", seq.to_string().as_str()));
            }
            w.write_event(Event::Start(m))?;
            let mut sender = BytesStart::new("Sender");
            sender.push_attribute(("username", e.user.as_str()));
            sender.push_attribute(("internal", "true"));
            w.write_event(Event::Empty(sender))?;
            text_element(&mut w, "DateTimeUTC", &views::timestamp(e.at_ms))?;
            if let Some(t) = &e.text {
                text_element(&mut w, "Content", t)?;
            }
            if let Some(d) = &e.detail {
                text_element(&mut w, "Detail", d)?;
            }
            w.write_event(Event::End(BytesEnd::new("Message")))?;
        }
        w.write_event(Event::End(BytesEnd::new("Messages")))?;
        w.write_event(Event::End(BytesEnd::new("Conversation")))?;
    }
    w.write_event(Event::End(BytesEnd::new("Conversations")))?;
    let mut out = w.into_inner();
    out.push(b'\n');
    Ok(out)
}

fn text_element(w: &mut Writer<Vec<u8>>, name: &str, text: &str) -> anyhow::Result<()> {
    w.write_event(Event::Start(BytesStart::new(name)))?;
    w.write_event(Event::Text(BytesText::new(text)))?;
    w.write_event(Event::End(BytesEnd::new(name)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RoomId;
    use crate::store::ComplianceEvent;

    fn rec(id: i64, kind: &'static str, room: Option<i64>, text: Option<&str>) -> ComplianceRecord {
        ComplianceRecord {
            id,
            event: ComplianceEvent {
                kind,
                at_ms: 1_000 * id,
                room: room.map(|r| (RoomId(r), format!("room <{r}> & co"))),
                user: "alice".into(),
                seq: text.map(|_| id as u64),
                text: text.map(str::to_owned),
                detail: None,
            },
        }
    }

    #[test]
    fn xml_groups_by_room_and_escapes() {
        let batch = vec![
            rec(1, "JOIN", Some(7), None),
            rec(2, "CHAT", Some(7), Some("a < b & \"c\"")),
            rec(3, "ADMIN", None, None),
        ];
        let xml = String::from_utf8(to_xml(&batch).unwrap()).unwrap();
        assert!(
            xml.contains(r#"<Room id="7" name="room &lt;7&gt; &amp; co"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains("<Content>a &lt; b &amp; &quot;c&quot;</Content>"),
            "{xml}"
        );
        assert_eq!(xml.matches("<Conversation>").count(), 2);
        assert_eq!(xml.matches("<Message ").count(), 3);
    }

    #[test]
    fn jsonl_has_one_line_per_record() {
        let batch = vec![
            rec(1, "CHAT", Some(1), Some("hi")),
            rec(2, "PART", Some(1), None),
        ];
        let text = String::from_utf8(to_jsonl(&batch)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["kind"], "CHAT");
        assert_eq!(lines[0]["text"], "hi");
        assert_eq!(lines[1]["room"]["id"], 1);
    }
}
