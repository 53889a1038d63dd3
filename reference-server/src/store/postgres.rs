//! The pool store: PostgreSQL, shared by up to four active nodes.
//!
//! Every write is one PostgreSQL transaction, committed with the server's
//! `synchronous_commit` (on by default: the WAL is flushed before the commit
//! returns, and with a synchronous standby it is on the standby too) before
//! anything is acknowledged. Concurrent commits of different connections
//! share WAL flushes, which is PostgreSQL's own group commit.
//!
//! Semantics shared with the embedded store, and how they are kept when
//! several nodes write at once:
//! - **Dense per-room sequence numbers.** An append first increments
//!   `rooms.last_seq` with `UPDATE ... RETURNING`; the row lock it takes is
//!   held until commit, so appends to one room are serialised across every
//!   node and a rolled-back append gives its number back.
//! - **Idempotent retries.** The client-key lookup runs after that row lock,
//!   so two retries racing on two nodes see each other.
//! - **Cross-node delivery.** The append's transaction also issues
//!   `pg_notify('pchat_msg', ...)`. PostgreSQL delivers notifications only
//!   after commit and in commit order, and commit order within a room is
//!   sequence order (the row lock). Each node's listener hands the messages to
//!   its publisher; a message too large for a notification payload is read
//!   back by its sequence number. After a lost listener connection the node
//!   compares every room's `last_seq` with what it published and reads the
//!   difference, so nothing is skipped.
//! - **Directory changes** are written with a row in `dir_log` whose id is
//!   taken under a transaction-scoped advisory lock, so log order is commit
//!   order. Every node, the writing one included, applies the log in id order
//!   (see [`DirEntry`]), so all nodes converge on the same directory.
//! - **Compliance.** Events go to an outbox in the chat database, in the
//!   transaction of the change they record, tagged with the writing
//!   transaction's id. The pump moves only events of transactions older than
//!   every transaction still running (`pg_snapshot_xmin`), in (transaction,
//!   id) order, to the separate compliance database, which records the last
//!   (transaction, id) it took: each event lands once, in an order no later
//!   commit can get in front of, without serialising the writers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use pchat_protocol::{Invitations, Privacy, RoomList, RoomType};
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::domain::{kind_code, kind_from_code, Acl, Entry};

/// Options of the pool store.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The chat database, `postgres://user@host:port/db`.
    pub url: String,
    /// The compliance database; must be a different database.
    pub compliance_url: String,
    /// Connections in this node's pool.
    pub connections: usize,
    /// This node's name (written into the directory log).
    pub node: String,
}

/// A directory log entry, replayed by every node in id order.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub id: u64,
    /// The node that wrote it.
    pub node: String,
    pub changes: Vec<Change>,
}

/// Where the listener delivers what other nodes (and this one) committed.
pub struct Feed {
    pub commits: mpsc::UnboundedSender<StoredMessage>,
    pub directory: mpsc::UnboundedSender<DirEntry>,
    /// Payloads of the nodes' bus (`pchat_bus`), as sent.
    pub bus: mpsc::UnboundedSender<String>,
    pub publish_pending: Gauge,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS counters(kind TEXT PRIMARY KEY, next BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS users(
    id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE, display_name TEXT NOT NULL,
    password_hash TEXT, policy TEXT, admin BOOLEAN NOT NULL, disabled BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS groups(id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS group_members(
    group_id BIGINT NOT NULL, kind SMALLINT NOT NULL, member BIGINT NOT NULL,
    PRIMARY KEY(group_id, kind, member));
CREATE TABLE IF NOT EXISTS policies(name TEXT PRIMARY KEY, enabled BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS categories(
    id BIGINT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,
    invitations BOOLEAN NOT NULL, file_upload BOOLEAN NOT NULL, history BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS category_entries(
    category_id BIGINT NOT NULL, list SMALLINT NOT NULL, kind SMALLINT NOT NULL, member BIGINT NOT NULL,
    PRIMARY KEY(category_id, list, kind, member));
CREATE TABLE IF NOT EXISTS rooms(
    id BIGINT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, category_id BIGINT NOT NULL,
    type SMALLINT NOT NULL, privacy SMALLINT NOT NULL, invitations SMALLINT NOT NULL, addin TEXT,
    disabled BOOLEAN NOT NULL, created_at BIGINT NOT NULL,
    last_seq BIGINT NOT NULL DEFAULT 0, last_ts BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS room_entries(
    room_id BIGINT NOT NULL, list SMALLINT NOT NULL, kind SMALLINT NOT NULL, member BIGINT NOT NULL,
    PRIMARY KEY(room_id, list, kind, member));
CREATE INDEX IF NOT EXISTS room_entries_member ON room_entries(kind, member);
CREATE TABLE IF NOT EXISTS messages(
    room_id BIGINT NOT NULL, seq BIGINT NOT NULL, sender TEXT NOT NULL, ts BIGINT NOT NULL,
    kind SMALLINT NOT NULL, text TEXT, title TEXT, client_key TEXT, state SMALLINT NOT NULL DEFAULT 0,
    PRIMARY KEY(room_id, seq));
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_key
    ON messages(room_id, sender, client_key) WHERE client_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_ts ON messages(ts);
CREATE TABLE IF NOT EXISTS followed(user_id BIGINT NOT NULL, room_id BIGINT NOT NULL,
    PRIMARY KEY(user_id, room_id));
CREATE TABLE IF NOT EXISTS invitations(
    id BIGSERIAL PRIMARY KEY, user_id BIGINT NOT NULL, room_id BIGINT NOT NULL,
    invited_by TEXT NOT NULL, at BIGINT NOT NULL, delivered BOOLEAN NOT NULL DEFAULT false);
CREATE INDEX IF NOT EXISTS invitations_pending ON invitations(user_id) WHERE NOT delivered;
CREATE TABLE IF NOT EXISTS addins(name TEXT PRIMARY KEY, url TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS compliance_outbox(
    id BIGSERIAL PRIMARY KEY, xid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    at BIGINT NOT NULL, kind TEXT NOT NULL, room_id BIGINT, room_name TEXT,
    user_name TEXT NOT NULL, seq BIGINT, text TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS compliance_outbox_order ON compliance_outbox(xid, id);
CREATE TABLE IF NOT EXISTS dir_log(id BIGINT PRIMARY KEY, node TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dir_log_top(one INT PRIMARY KEY CHECK (one = 1), id BIGINT NOT NULL);
INSERT INTO dir_log_top(one, id) VALUES (1, 0) ON CONFLICT DO NOTHING;
"#;

const COMPLIANCE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events(
    id BIGINT PRIMARY KEY, xid BIGINT NOT NULL, at BIGINT NOT NULL, kind TEXT NOT NULL,
    room_id BIGINT, room_name TEXT, user_name TEXT NOT NULL, seq BIGINT, text TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS events_order ON events(xid, id);
CREATE TABLE IF NOT EXISTS pumped(one INT PRIMARY KEY CHECK (one = 1), xid BIGINT NOT NULL, id BIGINT NOT NULL);
INSERT INTO pumped(one, xid, id) VALUES (1, 0, 0) ON CONFLICT DO NOTHING;
"#;

/// Serialises schema creation between nodes starting at once.
const SCHEMA_LOCK: i64 = 0x7063_6861_7401;
/// Serialises directory-log writers so log order is commit order.
const DIR_LOCK: i64 = 0x7063_6861_7402;
/// Serialises directory writes (validate, then write) across the pool.
const ADMIN_LOCK: i64 = 0x7063_6861_7403;
/// Largest notification payload we send (PostgreSQL's limit is 8000 bytes).
const MAX_PAYLOAD: usize = 7000;

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    compliance: Pool,
    node: String,
    pending: Gauge,
    /// The chat database lower-cases only ASCII (its ctype is C or POSIX), so
    /// case-insensitive search cannot be narrowed down in SQL.
    ascii_lower: bool,
    closed: AtomicBool,
    stop: CancellationToken,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn make_pool(url: &str, size: usize) -> Result<Pool> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Config(format!("{url}: {e}")))?;
    let mgr = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size.max(2))
        .build()
        .map_err(|e| StoreError::Config(e.to_string()))
}

impl PgStore {
    /// Connects, creates the schema when absent, and starts this node's
    /// listener, which feeds `feed` from the snapshot position on.
    pub async fn open(opts: PgOptions, feed: Feed, pending: Gauge) -> Result<Arc<PgStore>> {
        if same_database(&opts.url, &opts.compliance_url) {
            return Err(StoreError::Config(
                "the compliance database must not be the chat database".into(),
            ));
        }
        let pool = make_pool(&opts.url, opts.connections)?;
        let compliance = make_pool(&opts.compliance_url, 2)?;
        {
            let mut c = pool.get().await?;
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            tx.batch_execute(SCHEMA).await?;
            tx.commit().await?;
            let mut c = compliance.get().await?;
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            tx.batch_execute(COMPLIANCE_SCHEMA).await?;
            tx.commit().await?;
        }
        let ctype: String = pool
            .get()
            .await?
            .query_one("SELECT current_setting('lc_ctype')", &[])
            .await?
            .get(0);
        let ascii_lower = matches!(ctype.as_str(), "C" | "POSIX");
        let stop = CancellationToken::new();
        let store = Arc::new(PgStore {
            pool: pool.clone(),
            ascii_lower,
            compliance,
            node: opts.node.clone(),
            pending,
            closed: AtomicBool::new(false),
            stop: stop.clone(),
            listener: Mutex::new(None),
        });
        // The listener starts from what the store holds now: every room's
        // last_seq and the directory log's top. A snapshot loaded later can
        // only be newer; the hub ignores sequence numbers it has passed and
        // the directory replay skips entries at or below the snapshot's.
        let start = Position::read(&pool).await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(listen(opts.url.clone(), pool, feed, start, stop, ready_tx));
        *store.listener.lock().expect("listener lock poisoned") = Some(handle);
        ready_rx.await.map_err(|_| StoreError::Closed)?;
        Ok(store)
    }

    /// Sends a payload to every node's listener (the pool's bus).
    pub async fn notify_bus(&self, payload: &str) -> Result<()> {
        let c = self.client().await?;
        c.execute("SELECT pg_notify('pchat_bus', $1)", &[&payload])
            .await?;
        Ok(())
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.check_open()?;
        Ok(self.pool.get().await?)
    }
}

fn same_database(a: &str, b: &str) -> bool {
    let parse = |u: &str| -> Option<(Vec<String>, Vec<u16>, Option<String>)> {
        let c: tokio_postgres::Config = u.parse().ok()?;
        let hosts = c
            .get_hosts()
            .iter()
            .map(|h| format!("{h:?}"))
            .collect::<Vec<_>>();
        Some((
            hosts,
            c.get_ports().to_vec(),
            c.get_dbname().map(str::to_owned),
        ))
    };
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Where a listener starts.
struct Position {
    last_seqs: HashMap<RoomId, u64>,
    dir_top: u64,
}

impl Position {
    async fn read(pool: &Pool) -> Result<Position> {
        let c = pool.get().await?;
        let rows = c.query("SELECT id, last_seq FROM rooms", &[]).await?;
        let last_seqs = rows
            .iter()
            .map(|r| (RoomId(r.get(0)), r.get::<_, i64>(1) as u64))
            .collect();
        let dir_top: i64 = c
            .query_one("SELECT id FROM dir_log_top WHERE one = 1", &[])
            .await?
            .get(0);
        Ok(Position {
            last_seqs,
            dir_top: dir_top as u64,
        })
    }
}

/// A message as carried in a notification.
#[derive(Serialize, Deserialize)]
struct Note {
    r: i64,
    s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<NoteBody>,
}

#[derive(Serialize, Deserialize)]
struct NoteBody {
    u: String,
    t: i64,
    k: i64,
    x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ti: Option<String>,
}

fn note_payload(m: &StoredMessage) -> String {
    let full = Note {
        r: m.room.0,
        s: m.seq,
        m: Some(NoteBody {
            u: m.sender.clone(),
            t: m.ts_ms,
            k: kind_code(m.kind),
            x: m.text.clone().unwrap_or_default(),
            ti: m.title.clone(),
        }),
    };
    let text = serde_json::to_string(&full).unwrap_or_default();
    if text.len() <= MAX_PAYLOAD {
        return text;
    }
    serde_json::to_string(&Note {
        r: m.room.0,
        s: m.seq,
        m: None,
    })
    .unwrap_or_default()
}

/// The listener: one dedicated connection per node, LISTENing on the
/// message and directory channels, reconnecting with catch-up reads.
async fn listen(
    url: String,
    pool: Pool,
    feed: Feed,
    start: Position,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut published = start.last_seqs;
    let mut dir_applied = start.dir_top;
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let session = async {
            let (client, mut conn) = tokio_postgres::connect(&url, NoTls).await?;
            let (tx, mut rx) = mpsc::unbounded_channel();
            let driver = tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(m) = messages.next().await {
                    match m {
                        Ok(AsyncMessage::Notification(n)) => {
                            if tx
                                .send((n.channel().to_owned(), n.payload().to_owned()))
                                .is_err()
                            {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "store listener connection failed");
                            break;
                        }
                    }
                }
            });
            client
                .batch_execute("LISTEN pchat_msg; LISTEN pchat_dir; LISTEN pchat_bus")
                .await?;
            // Whatever committed before LISTEN took effect is read back now.
            catch_up(&pool, &feed, &mut published).await?;
            replay_dir(&pool, &feed, &mut dir_applied).await?;
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    n = rx.recv() => n,
                };
                let Some((channel, payload)) = next else {
                    break;
                };
                if channel == "pchat_bus" {
                    let _ = feed.bus.send(payload);
                    continue;
                }
                if channel == "pchat_dir" {
                    replay_dir(&pool, &feed, &mut dir_applied).await?;
                    continue;
                }
                let Ok(note) = serde_json::from_str::<Note>(&payload) else {
                    tracing::warn!(%payload, "unreadable message notification");
                    continue;
                };
                let room = RoomId(note.r);
                let last = published.get(&room).copied().unwrap_or(0);
                if note.s <= last {
                    continue;
                }
                match note.m {
                    Some(b) if note.s == last + 1 => {
                        let m = StoredMessage {
                            room,
                            seq: note.s,
                            sender: b.u,
                            ts_ms: b.t,
                            kind: kind_from_code(b.k),
                            text: Some(b.x),
                            title: b.ti,
                            state: MessageState::Normal,
                        };
                        emit(&feed, &mut published, m);
                    }
                    // A gap (or a payload without its message): read the
                    // missing range back in order.
                    _ => read_range(&pool, &feed, &mut published, room, last, note.s).await?,
                }
            }
            drop(client);
            driver.abort();
            Ok::<(), StoreError>(())
        }
        .await;
        match session {
            Ok(()) => {
                if stop.is_cancelled() {
                    break;
                }
                tracing::warn!("store listener connection closed; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "store listener failed; reconnecting"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn emit(feed: &Feed, published: &mut HashMap<RoomId, u64>, m: StoredMessage) {
    published.insert(m.room, m.seq);
    if feed.commits.send(m).is_ok() {
        feed.publish_pending.inc();
    }
}

async fn read_range(
    pool: &Pool,
    feed: &Feed,
    published: &mut HashMap<RoomId, u64>,
    room: RoomId,
    after: u64,
    upto: u64,
) -> Result<()> {
    let c = pool.get().await?;
    let rows = c
        .query(
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq"
            ),
            &[&room.0, &(after as i64), &(upto as i64)],
        )
        .await?;
    for r in rows {
        let mut m = message_row(&r);
        if m.state == MessageState::Removed {
            // Removed before this node saw it: still published so that the
            // sequence stays dense on the stream, without its text.
            m.text = None;
        }
        emit(feed, published, m);
    }
    Ok(())
}

async fn catch_up(pool: &Pool, feed: &Feed, published: &mut HashMap<RoomId, u64>) -> Result<()> {
    let rows = {
        let c = pool.get().await?;
        c.query("SELECT id, last_seq FROM rooms WHERE last_seq > 0", &[])
            .await?
    };
    for r in rows {
        let room = RoomId(r.get(0));
        let top = r.get::<_, i64>(1) as u64;
        let last = published.get(&room).copied().unwrap_or(0);
        if top > last {
            read_range(pool, feed, published, room, last, top).await?;
        }
    }
    Ok(())
}

async fn replay_dir(pool: &Pool, feed: &Feed, applied: &mut u64) -> Result<()> {
    let c = pool.get().await?;
    let rows = c
        .query(
            "SELECT id, body, node FROM dir_log WHERE id > $1 ORDER BY id",
            &[&(*applied as i64)],
        )
        .await?;
    for r in rows {
        let id = r.get::<_, i64>(0) as u64;
        let body: String = r.get(1);
        let changes: Vec<Change> = serde_json::from_str(&body)
            .map_err(|e| StoreError::Task(format!("directory log entry {id}: {e}")))?;
        *applied = id;
        let _ = feed.directory.send(DirEntry {
            id,
            node: r.get(2),
            changes,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- encoding

const MESSAGE_COLUMNS: &str = "room_id, seq, sender, ts, kind, text, title, state";

fn message_row(r: &Row) -> StoredMessage {
    StoredMessage {
        room: RoomId(r.get(0)),
        seq: r.get::<_, i64>(1) as u64,
        sender: r.get(2),
        ts_ms: r.get(3),
        kind: kind_from_code(r.get::<_, i16>(4) as i64),
        text: r.get(5),
        title: r.get(6),
        state: MessageState::from_code(r.get::<_, i16>(7) as i64),
    }
}

fn list_code(l: RoomList) -> i16 {
    match l {
        RoomList::Managers => 0,
        RoomList::Presenters => 1,
        RoomList::Members => 2,
    }
}

const CAT_ALLOWED: i16 = 0;
const CAT_DENIED: i16 = 1;
const CAT_CREATORS: i16 = 2;

fn entry_parts(e: Entry) -> (i16, i64) {
    match e {
        Entry::User(u) => (0, u.0),
        Entry::Group(g) => (1, g.0),
    }
}

fn entry_from(kind: i16, member: i64) -> Entry {
    if kind == 0 {
        Entry::User(UserId(member))
    } else {
        Entry::Group(GroupId(member))
    }
}

fn privacy_code(p: Privacy) -> i16 {
    match p {
        Privacy::Open => 0,
        Privacy::Closed => 1,
        Privacy::Secret => 2,
    }
}

fn privacy_from(c: i16) -> Privacy {
    match c {
        0 => Privacy::Open,
        2 => Privacy::Secret,
        _ => Privacy::Closed,
    }
}

fn compliance_row(r: &Row) -> ComplianceRecord {
    let kind: String = r.get(2);
    let room_id: Option<i64> = r.get(3);
    let room_name: Option<String> = r.get(4);
    ComplianceRecord {
        id: r.get(0),
        event: ComplianceEvent {
            kind: super::sqlite::compliance_kind(&kind),
            at_ms: r.get(1),
            room: room_id.map(|id| (RoomId(id), room_name.unwrap_or_default())),
            user: r.get(5),
            seq: r.get::<_, Option<i64>>(6).map(|s| s as u64),
            text: r.get(7),
            detail: r.get(8),
        },
    }
}

/// Writes `events` to the compliance outbox in one statement, in their
/// order (the outbox id follows the array position).
async fn outbox(c: &impl GenericClient, events: &[ComplianceEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let st = c
        .prepare_cached(
            "INSERT INTO compliance_outbox(at, kind, room_id, room_name, user_name, seq, text, detail)
             SELECT at, kind, room_id, room_name, user_name, seq, text, detail
             FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                         $6::bigint[], $7::text[], $8::text[])
                  WITH ORDINALITY AS e(at, kind, room_id, room_name, user_name, seq, text, detail, n)
             ORDER BY n",
        )
        .await?;
    let cols = EventColumns::of(events.iter());
    c.execute(
        &st,
        &[
            &cols.at,
            &cols.kind,
            &cols.room_id,
            &cols.room_name,
            &cols.user,
            &cols.seq,
            &cols.text,
            &cols.detail,
        ],
    )
    .await?;
    Ok(())
}

/// Compliance events as one array per column, for a multi-row `UNNEST`.
struct EventColumns<'a> {
    at: Vec<i64>,
    kind: Vec<&'a str>,
    room_id: Vec<Option<i64>>,
    room_name: Vec<Option<&'a str>>,
    user: Vec<&'a str>,
    seq: Vec<Option<i64>>,
    text: Vec<Option<&'a str>>,
    detail: Vec<Option<&'a str>>,
}

impl<'a> EventColumns<'a> {
    fn of(events: impl Iterator<Item = &'a ComplianceEvent>) -> EventColumns<'a> {
        let mut c = EventColumns {
            at: Vec::new(),
            kind: Vec::new(),
            room_id: Vec::new(),
            room_name: Vec::new(),
            user: Vec::new(),
            seq: Vec::new(),
            text: Vec::new(),
            detail: Vec::new(),
        };
        for e in events {
            c.at.push(e.at_ms);
            c.kind.push(e.kind);
            c.room_id.push(e.room.as_ref().map(|r| r.0 .0));
            c.room_name.push(e.room.as_ref().map(|r| r.1.as_str()));
            c.user.push(&e.user);
            c.seq.push(e.seq.map(|s| s as i64));
            c.text.push(e.text.as_deref());
            c.detail.push(e.detail.as_deref());
        }
        c
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

// ---------------------------------------------------------------- the trait

#[async_trait]
impl Store for PgStore {
    async fn load(&self) -> Result<Snapshot> {
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut snap = Snapshot::default();
        for r in tx
            .query(
                "SELECT id, name, display_name, password_hash, policy, admin, disabled FROM users",
                &[],
            )
            .await?
        {
            snap.users.push(UserRec {
                id: UserId(r.get(0)),
                name: r.get(1),
                display_name: r.get(2),
                password_hash: r.get(3),
                policy: r.get(4),
                admin: r.get(5),
                disabled: r.get(6),
            });
        }
        let mut groups: HashMap<i64, GroupRec> = HashMap::new();
        for r in tx.query("SELECT id, name FROM groups", &[]).await? {
            let id: i64 = r.get(0);
            groups.insert(
                id,
                GroupRec {
                    id: GroupId(id),
                    name: r.get(1),
                    members: Default::default(),
                },
            );
        }
        for r in tx
            .query("SELECT group_id, kind, member FROM group_members", &[])
            .await?
        {
            if let Some(g) = groups.get_mut(&r.get::<_, i64>(0)) {
                g.members.insert(entry_from(r.get(1), r.get(2)));
            }
        }
        snap.groups = groups.into_values().collect();
        for r in tx.query("SELECT name, enabled FROM policies", &[]).await? {
            snap.policies.push((r.get(0), r.get(1)));
        }
        let mut cats: HashMap<i64, CategoryRec> = HashMap::new();
        for r in tx
            .query(
                "SELECT id, name, description, invitations, file_upload, history FROM categories",
                &[],
            )
            .await?
        {
            let cat = CategoryRec {
                id: CategoryId(r.get(0)),
                name: r.get(1),
                description: r.get(2),
                allowed: Acl::default(),
                denied: Acl::default(),
                creators: Acl::default(),
                invitations: r.get(3),
                file_upload: r.get(4),
                history: r.get(5),
            };
            cats.insert(cat.id.0, cat);
        }
        for r in tx
            .query(
                "SELECT category_id, list, kind, member FROM category_entries",
                &[],
            )
            .await?
        {
            if let Some(cat) = cats.get_mut(&r.get::<_, i64>(0)) {
                let acl = match r.get::<_, i16>(1) {
                    CAT_ALLOWED => &mut cat.allowed,
                    CAT_DENIED => &mut cat.denied,
                    _ => &mut cat.creators,
                };
                acl.insert(entry_from(r.get(2), r.get(3)));
            }
        }
        snap.categories = cats.into_values().collect();
        let mut rooms: HashMap<i64, RoomRec> = HashMap::new();
        for r in tx
            .query(
                "SELECT id, name, description, category_id, type, privacy, invitations, addin, disabled,
                 created_at, last_seq FROM rooms",
                &[],
            )
            .await?
        {
            let room = RoomRec {
                id: RoomId(r.get(0)),
                name: r.get(1),
                description: r.get(2),
                category: CategoryId(r.get(3)),
                room_type: if r.get::<_, i16>(4) == 1 {
                    RoomType::Auditorium
                } else {
                    RoomType::Normal
                },
                privacy: privacy_from(r.get(5)),
                invitations: if r.get::<_, i16>(6) == 1 {
                    Invitations::Off
                } else {
                    Invitations::Inherit
                },
                addin: r.get(7),
                disabled: r.get(8),
                managers: Acl::default(),
                presenters: Acl::default(),
                members: Acl::default(),
                created_at: r.get(9),
            };
            snap.last_seqs.push((room.id, r.get::<_, i64>(10) as u64));
            rooms.insert(room.id.0, room);
        }
        for r in tx
            .query("SELECT room_id, list, kind, member FROM room_entries", &[])
            .await?
        {
            if let Some(room) = rooms.get_mut(&r.get::<_, i64>(0)) {
                let list = match r.get::<_, i16>(1) {
                    0 => RoomList::Managers,
                    1 => RoomList::Presenters,
                    _ => RoomList::Members,
                };
                room.list_mut(list).insert(entry_from(r.get(2), r.get(3)));
            }
        }
        snap.rooms = rooms.into_values().collect();
        for r in tx.query("SELECT key, value FROM settings", &[]).await? {
            snap.settings.push((r.get(0), r.get(1)));
        }
        for r in tx.query("SELECT name, url FROM addins", &[]).await? {
            snap.addins.push((r.get(0), r.get(1)));
        }
        let top: i64 = tx
            .query_one("SELECT id FROM dir_log_top WHERE one = 1", &[])
            .await?
            .get(0);
        snap.dir_position = Some(top as u64);
        tx.commit().await?;
        Ok(snap)
    }

    async fn reserve_ids(&self, kind: IdKind, count: u64) -> Result<i64> {
        let (name, table) = match kind {
            IdKind::User => ("user", "users"),
            IdKind::Group => ("group", "groups"),
            IdKind::Category => ("category", "categories"),
            IdKind::Room => ("room", "rooms"),
        };
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        // Seed the counter past any existing id, then advance it atomically;
        // the row lock makes concurrent reservations from several nodes disjoint.
        tx.execute(
            &format!(
                "INSERT INTO counters(kind, next) SELECT $1, COALESCE(MAX(id), 0) + 1 FROM {table}
                 ON CONFLICT(kind) DO NOTHING"
            ),
            &[&name],
        )
        .await?;
        let row = tx
            .query_one(
                "UPDATE counters SET next = next + $2 WHERE kind = $1 RETURNING next - $2",
                &[&name, &(count as i64)],
            )
            .await?;
        tx.commit().await?;
        Ok(row.get(0))
    }

    async fn apply(
        &self,
        changes: Vec<Change>,
        audit: Vec<ComplianceEvent>,
    ) -> Result<Option<u64>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        for ch in &changes {
            apply_change(&tx, ch).await?;
        }
        outbox(&tx, &audit).await?;
        let id = log_changes(&tx, &self.node, &changes).await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    async fn directory_lock(&self) -> Result<Option<DirectoryLock>> {
        let c = self.client().await?;
        c.execute("SELECT pg_advisory_lock($1)", &[&ADMIN_LOCK])
            .await?;
        // Released by closing the connection: the guard takes it out of the
        // pool, so dropping the guard ends the session and with it the lock,
        // whatever happens to the caller.
        Ok(Some(DirectoryLock(Box::new(
            deadpool_postgres::Object::take(c),
        ))))
    }

    async fn dir_position(&self) -> Result<Option<u64>> {
        let c = self.client().await?;
        let top: i64 = c
            .query_one("SELECT id FROM dir_log_top WHERE one = 1", &[])
            .await?
            .get(0);
        Ok(Some(top as u64))
    }

    async fn append(&self, m: NewMessage) -> Result<Appended> {
        self.pending.inc();
        let out = self.append_inner(m).await;
        self.pending.dec();
        out
    }

    async fn record(&self, events: Vec<ComplianceEvent>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        outbox(&tx, &events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn messages(
        &self,
        room: RoomId,
        slice: Slice,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool)> {
        let c = self.client().await?;
        let take = (limit + 1) as i64;
        let readable = "state != 2 AND text IS NOT NULL";
        let (sql, a, b) = match slice {
            Slice::Latest => (
                format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = $1 AND {readable} AND $2::bigint = $2 AND $4::bigint = $4 ORDER BY seq DESC LIMIT $3"),
                0i64,
                0i64,
            ),
            Slice::Before(s) => (
                format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = $1 AND {readable} AND seq < $2 AND $4::bigint = $4 ORDER BY seq DESC LIMIT $3"),
                s as i64,
                0,
            ),
            Slice::After(s) => (
                format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = $1 AND {readable} AND seq > $2 AND $4::bigint = $4 ORDER BY seq ASC LIMIT $3"),
                s as i64,
                0,
            ),
            Slice::Between(lo, hi) => (
                format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = $1 AND {readable} AND seq > $2 AND seq <= $4 ORDER BY seq ASC LIMIT $3"),
                lo as i64,
                hi as i64,
            ),
        };
        let st = c.prepare_cached(&sql).await?;
        let mut rows: Vec<StoredMessage> = c
            .query(&st, &[&room.0, &a, &take, &b])
            .await?
            .iter()
            .map(message_row)
            .collect();
        let more = rows.len() > limit;
        rows.truncate(limit);
        if matches!(slice, Slice::Latest | Slice::Before(_)) {
            rows.reverse();
        }
        Ok((rows, more))
    }

    async fn search(&self, q: SearchQuery) -> Result<(Vec<StoredMessage>, bool)> {
        if q.rooms.is_empty() {
            return Ok((Vec::new(), false));
        }
        let c = self.client().await?;
        let rooms: Vec<i64> = q.rooms.iter().map(|r| r.0).collect();
        let mut sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE state = 0 AND text IS NOT NULL AND room_id = ANY($1)"
        );
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(rooms)];
        // Case-insensitive terms are narrowed in SQL with lower() where the
        // database lower-cases Unicode; the final word is Rust's Unicode
        // lower-casing (the embedded store's rule) on every row.
        let narrow = q.case_sensitive || !self.ascii_lower;
        if narrow {
            for t in &q.terms {
                args.push(Box::new(t.clone()));
                // strpos, not LIKE: terms are literal text, wildcards included.
                if q.case_sensitive {
                    sql.push_str(&format!(" AND strpos(text, ${}) > 0", args.len()));
                } else {
                    sql.push_str(&format!(" AND strpos(lower(text), ${}) > 0", args.len()));
                }
            }
        }
        if let Some(a) = &q.author {
            args.push(Box::new(a.clone()));
            sql.push_str(&format!(" AND sender = ${}", args.len()));
        }
        if let Some(f) = q.from_ms {
            args.push(Box::new(f));
            sql.push_str(&format!(" AND ts >= ${}", args.len()));
        }
        if let Some(t) = q.to_ms {
            args.push(Box::new(t));
            sql.push_str(&format!(" AND ts < ${}", args.len()));
        }
        const PAGE: i64 = 1000;
        args.push(Box::new(if narrow { (q.limit + 1) as i64 } else { PAGE }));
        let limit_arg = args.len();
        args.push(Box::new(0i64));
        sql.push_str(&format!(
            " ORDER BY ts DESC, room_id ASC, seq DESC LIMIT ${limit_arg} OFFSET ${}",
            args.len()
        ));
        let st = c.prepare(&sql).await?;
        let mut out: Vec<StoredMessage> = Vec::new();
        let mut offset = 0i64;
        loop {
            *args.last_mut().expect("offset argument") = Box::new(offset);
            let params: Vec<&(dyn ToSql + Sync)> = args
                .iter()
                .map(|a| a.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = c.query(&st, &params).await?;
            let fetched = rows.len() as i64;
            out.extend(rows.iter().map(message_row).filter(|m| {
                if q.case_sensitive {
                    return true;
                }
                let t = m.text.as_deref().unwrap_or_default().to_lowercase();
                q.terms.iter().all(|term| t.contains(term.as_str()))
            }));
            if narrow || fetched < PAGE || out.len() > q.limit {
                break;
            }
            offset += PAGE;
        }
        let more = out.len() > q.limit;
        out.truncate(q.limit);
        Ok((out, more))
    }

    async fn set_followed(&self, user: UserId, room: RoomId, follow: bool) -> Result<()> {
        let c = self.client().await?;
        if follow {
            c.execute(
                "INSERT INTO followed(user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&user.0, &room.0],
            )
            .await?;
        } else {
            c.execute(
                "DELETE FROM followed WHERE user_id = $1 AND room_id = $2",
                &[&user.0, &room.0],
            )
            .await?;
        }
        Ok(())
    }

    async fn followed(&self, user: UserId) -> Result<Vec<RoomId>> {
        let c = self.client().await?;
        Ok(c.query(
            "SELECT room_id FROM followed WHERE user_id = $1 ORDER BY room_id",
            &[&user.0],
        )
        .await?
        .iter()
        .map(|r| RoomId(r.get(0)))
        .collect())
    }

    async fn add_invitations(&self, invitations: Vec<InvitationRec>) -> Result<()> {
        if invitations.is_empty() {
            return Ok(());
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let st = tx
            .prepare_cached(
                "INSERT INTO invitations(user_id, room_id, invited_by, at) VALUES ($1, $2, $3, $4)",
            )
            .await?;
        for i in &invitations {
            tx.execute(&st, &[&i.user.0, &i.room.0, &i.invited_by, &i.at_ms])
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn take_invitations(&self, user: UserId) -> Result<Vec<InvitationRec>> {
        let c = self.client().await?;
        let mut rows = c
            .query(
                "UPDATE invitations SET delivered = true WHERE user_id = $1 AND NOT delivered
                 RETURNING id, room_id, invited_by, at",
                &[&user.0],
            )
            .await?;
        rows.sort_by_key(|r| r.get::<_, i64>(0));
        Ok(rows
            .iter()
            .map(|r| InvitationRec {
                user,
                room: RoomId(r.get(1)),
                invited_by: r.get(2),
                at_ms: r.get(3),
            })
            .collect())
    }

    async fn clear_history(
        &self,
        room: RoomId,
        before_ms: i64,
        audit: ComplianceEvent,
    ) -> Result<u64> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let n = tx
            .execute(
                "UPDATE messages SET state = 2, text = NULL, title = NULL WHERE room_id = $1 AND ts < $2 AND state != 2",
                &[&room.0, &before_ms],
            )
            .await?;
        outbox(&tx, std::slice::from_ref(&audit)).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn remove_messages(
        &self,
        room: RoomId,
        f: MessageFilter,
        replacement: Option<String>,
        audit: ComplianceEvent,
    ) -> Result<Vec<u64>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let mut sql = String::from(
            "SELECT seq, text FROM messages WHERE room_id = $1 AND state = 0 AND text IS NOT NULL",
        );
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(room.0)];
        if let Some(a) = &f.author {
            args.push(Box::new(a.clone()));
            sql.push_str(&format!(" AND sender = ${}", args.len()));
        }
        if let Some(v) = f.from_ms {
            args.push(Box::new(v));
            sql.push_str(&format!(" AND ts >= ${}", args.len()));
        }
        if let Some(v) = f.to_ms {
            args.push(Box::new(v));
            sql.push_str(&format!(" AND ts < ${}", args.len()));
        }
        sql.push_str(" ORDER BY seq FOR UPDATE");
        let params: Vec<&(dyn ToSql + Sync)> = args
            .iter()
            .map(|a| a.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let seqs: Vec<u64> = tx
            .query(&sql, &params)
            .await?
            .iter()
            .filter(|r| {
                let t = r.get::<_, String>(1).to_lowercase();
                f.keywords.iter().all(|k| t.contains(k.as_str()))
            })
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect();
        for s in &seqs {
            match &replacement {
                Some(text) => {
                    tx.execute(
                        "UPDATE messages SET state = 1, text = $3, title = NULL WHERE room_id = $1 AND seq = $2",
                        &[&room.0, &(*s as i64), text],
                    )
                    .await?
                }
                None => {
                    tx.execute(
                        "UPDATE messages SET state = 2, text = NULL, title = NULL WHERE room_id = $1 AND seq = $2",
                        &[&room.0, &(*s as i64)],
                    )
                    .await?
                }
            };
        }
        let mut audit = audit;
        audit.detail = Some(format!("{} message(s): {:?}", seqs.len(), seqs));
        outbox(&tx, std::slice::from_ref(&audit)).await?;
        tx.commit().await?;
        Ok(seqs)
    }

    async fn pump_compliance(&self, mode: Pump) -> Result<usize> {
        // One node of a pool pumps at a time, holding the mark's row lock;
        // with `IfFree` the others skip the round instead of waiting for the
        // lock and then reading the same rows again.
        let mut cc = self.compliance.get().await?;
        let tx = cc.transaction().await?;
        let lock = match mode {
            Pump::IfFree => "SELECT xid, id FROM pumped WHERE one = 1 FOR UPDATE SKIP LOCKED",
            Pump::All => "SELECT xid, id FROM pumped WHERE one = 1 FOR UPDATE",
        };
        let Some(mark) = tx.query_opt(lock, &[]).await? else {
            return Ok(0);
        };
        let mark: (i64, i64) = (mark.get(0), mark.get(1));
        // Only events of transactions that finished before every running one
        // began: no later commit can add an event in front of them.
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT id, at, kind, room_id, room_name, user_name, seq, text, detail, xid
                 FROM compliance_outbox
                 WHERE xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
                   AND (xid, id) > ($1, $2)
                 ORDER BY xid, id LIMIT 5000",
                &[&mark.0, &mark.1],
            )
            .await?;
        drop(c);
        let Some(last) = rows.last() else {
            return Ok(0);
        };
        let top: (i64, i64) = (last.get(9), last.get(0));
        let id: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let xid: Vec<i64> = rows.iter().map(|r| r.get(9)).collect();
        let records: Vec<ComplianceRecord> = rows.iter().map(compliance_row).collect();
        let cols = EventColumns::of(records.iter().map(|r| &r.event));
        tx.execute(
            "INSERT INTO events(id, xid, at, kind, room_id, room_name, user_name, seq, text, detail)
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[],
                                  $5::bigint[], $6::text[], $7::text[], $8::bigint[],
                                  $9::text[], $10::text[])
             ON CONFLICT (id) DO NOTHING",
            &[
                &id, &xid, &cols.at, &cols.kind, &cols.room_id, &cols.room_name, &cols.user,
                &cols.seq, &cols.text, &cols.detail,
            ],
        )
        .await?;
        tx.execute(
            "UPDATE pumped SET xid = $1, id = $2 WHERE one = 1",
            &[&top.0, &top.1],
        )
        .await?;
        tx.commit().await?;
        // Everything up to the mark is in the compliance database, rows
        // left by a pumper that died before this delete included.
        let c = self.client().await?;
        c.execute(
            "DELETE FROM compliance_outbox WHERE (xid, id) <= ($1, $2)",
            &[&top.0, &top.1],
        )
        .await?;
        Ok(rows.len())
    }

    async fn compliance_pending(&self, limit: usize) -> Result<Vec<ComplianceRecord>> {
        self.check_open()?;
        let c = self.compliance.get().await?;
        Ok(c.query(
            "SELECT id, at, kind, room_id, room_name, user_name, seq, text, detail
                 FROM events ORDER BY xid, id LIMIT $1",
            &[&(limit as i64)],
        )
        .await?
        .iter()
        .map(compliance_row)
        .collect())
    }

    async fn compliance_delete(&self, ids: Vec<i64>) -> Result<()> {
        self.check_open()?;
        let c = self.compliance.get().await?;
        c.execute("DELETE FROM events WHERE id = ANY($1)", &[&ids])
            .await?;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.stop.cancel();
        let handle = self.listener.lock().expect("listener lock poisoned").take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        self.pool.close();
        self.compliance.close();
        Ok(())
    }
}

impl PgStore {
    async fn append_inner(&self, m: NewMessage) -> Result<Appended> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let now = now_ms();
        let row = tx
            .query_opt(
                "UPDATE rooms SET last_seq = last_seq + 1, last_ts = GREATEST(last_ts, $2)
                 WHERE id = $1 RETURNING last_seq, last_ts",
                &[&m.room.0, &now],
            )
            .await?
            .ok_or_else(|| StoreError::Task(format!("room {} is not in the store", m.room.0)))?;
        let seq = row.get::<_, i64>(0) as u64;
        let ts: i64 = row.get(1);
        if let Some(key) = &m.client_key {
            let existing = tx
                .query_opt(
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = $1 AND sender = $2 AND client_key = $3"
                    ),
                    &[&m.room.0, &m.sender, key],
                )
                .await?;
            if let Some(r) = existing {
                // Give the sequence number back: nothing new is written.
                tx.rollback().await?;
                let mut old = message_row(&r);
                let same_text = old.text.as_deref().is_none_or(|t| t == m.text)
                    || old.state != MessageState::Normal;
                if old.kind != m.kind || old.title != m.title || !same_text {
                    return Ok(Appended::Conflict);
                }
                if old.text.is_none() && old.state == MessageState::Normal {
                    old.text = Some(m.text.clone());
                }
                return Ok(Appended::Existing(old));
            }
        }
        let stored_text = m.keep_text.then(|| m.text.clone());
        let stored_title = if m.keep_text { m.title.clone() } else { None };
        tx.execute(
            "INSERT INTO messages(room_id, seq, sender, ts, kind, text, title, client_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &m.room.0,
                &(seq as i64),
                &m.sender,
                &ts,
                &(kind_code(m.kind) as i16),
                &stored_text,
                &stored_title,
                &m.client_key,
            ],
        )
        .await?;
        if let Some(room_name) = &m.compliance_room_name {
            let ev = ComplianceEvent {
                kind: "CHAT",
                at_ms: ts,
                room: Some((m.room, room_name.clone())),
                user: m.sender.clone(),
                seq: Some(seq),
                text: Some(m.text.clone()),
                detail: m.title.clone().map(|t| format!("title: {t}")),
            };
            outbox(&tx, std::slice::from_ref(&ev)).await?;
        }
        let stored = StoredMessage {
            room: m.room,
            seq,
            sender: m.sender.clone(),
            ts_ms: ts,
            kind: m.kind,
            text: Some(m.text.clone()),
            title: m.title.clone(),
            state: MessageState::Normal,
        };
        tx.execute(
            "SELECT pg_notify('pchat_msg', $1)",
            &[&note_payload(&stored)],
        )
        .await?;
        tx.commit().await?;
        Ok(Appended::New(stored))
    }
}

/// Appends changes to the directory log (in commit order: the id is taken
/// under an advisory lock held to commit) and tells every node.
async fn log_changes(tx: &impl GenericClient, node: &str, changes: &[Change]) -> Result<u64> {
    let body = serde_json::to_string(changes)
        .map_err(|e| StoreError::Task(format!("cannot encode directory changes: {e}")))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&DIR_LOCK])
        .await?;
    let id: i64 = tx
        .query_one(
            "UPDATE dir_log_top SET id = id + 1 WHERE one = 1 RETURNING id",
            &[],
        )
        .await?
        .get(0);
    tx.execute(
        "INSERT INTO dir_log(id, node, body) VALUES ($1, $2, $3)",
        &[&id, &node, &body],
    )
    .await?;
    tx.execute("SELECT pg_notify('pchat_dir', $1)", &[&id.to_string()])
        .await?;
    Ok(id as u64)
}

/// Writes a setting into a pool's store from outside the pool (`topology
/// publish`, `pool failover`), creating the schema when absent, and makes
/// sure room ids handed out from now on are above `room_floor`. Running
/// nodes pick the setting up from the directory log.
pub async fn publish_setting(url: &str, key: &str, value: &str, room_floor: i64) -> Result<()> {
    let pool = make_pool(url, 2)?;
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    tx.batch_execute(SCHEMA).await?;
    let change = Change::PutSetting(key.to_owned(), value.to_owned());
    apply_change(&tx, &change).await?;
    tx.execute(
        "INSERT INTO counters(kind, next) VALUES ('room', $1)
         ON CONFLICT(kind) DO UPDATE SET next = GREATEST(counters.next, $1)",
        &[&(room_floor + 1)],
    )
    .await?;
    log_changes(&tx, "publisher", std::slice::from_ref(&change)).await?;
    tx.commit().await?;
    Ok(())
}

/// Reads a setting from a pool's store (None when absent, or when the store
/// has no schema yet).
pub async fn read_setting(url: &str, key: &str) -> Result<Option<String>> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    let driver = tokio::spawn(conn);
    let exists: bool = client
        .query_one("SELECT to_regclass('settings') IS NOT NULL", &[])
        .await?
        .get(0);
    let out = if exists {
        client
            .query_opt("SELECT value FROM settings WHERE key = $1", &[&key])
            .await?
            .map(|r| r.get(0))
    } else {
        None
    };
    drop(client);
    driver.abort();
    Ok(out)
}

/// Promotes a streaming-replication standby to a primary, waiting up to
/// `wait_s` seconds until it accepts writes. A primary is left as it is.
pub async fn promote(url: &str, wait_s: i32) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    let driver = tokio::spawn(conn);
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    if in_recovery {
        let done: bool = client
            .query_one("SELECT pg_promote(true, $1)", &[&wait_s])
            .await?
            .get(0);
        if !done {
            return Err(StoreError::Task(format!(
                "the standby did not finish its promotion within {wait_s} s"
            )));
        }
    }
    drop(client);
    driver.abort();
    Ok(())
}

async fn apply_change(tx: &impl GenericClient, c: &Change) -> Result<()> {
    match c {
        Change::PutUser(u) => {
            tx.execute(
                "INSERT INTO users(id, name, display_name, password_hash, policy, admin, disabled)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT(id) DO UPDATE SET name = $2, display_name = $3, password_hash = $4, policy = $5,
                 admin = $6, disabled = $7",
                &[&u.id.0, &u.name, &u.display_name, &u.password_hash, &u.policy, &u.admin, &u.disabled],
            )
            .await?;
        }
        Change::DeleteUser(id) => {
            for sql in [
                "DELETE FROM users WHERE id = $1",
                "DELETE FROM group_members WHERE kind = 0 AND member = $1",
                "DELETE FROM category_entries WHERE kind = 0 AND member = $1",
                "DELETE FROM room_entries WHERE kind = 0 AND member = $1",
                "DELETE FROM followed WHERE user_id = $1",
                "DELETE FROM invitations WHERE user_id = $1",
            ] {
                tx.execute(sql, &[&id.0]).await?;
            }
        }
        Change::PutGroup(g) => {
            tx.execute(
                "INSERT INTO groups(id, name) VALUES ($1, $2) ON CONFLICT(id) DO UPDATE SET name = $2",
                &[&g.id.0, &g.name],
            )
            .await?;
            tx.execute("DELETE FROM group_members WHERE group_id = $1", &[&g.id.0])
                .await?;
            let (kinds, members): (Vec<i16>, Vec<i64>) =
                g.members.iter().map(|e| entry_parts(*e)).unzip();
            tx.execute(
                "INSERT INTO group_members(group_id, kind, member)
                 SELECT $1, k, m FROM unnest($2::smallint[], $3::bigint[]) AS t(k, m)",
                &[&g.id.0, &kinds, &members],
            )
            .await?;
        }
        Change::DeleteGroup(id) => {
            for sql in [
                "DELETE FROM groups WHERE id = $1",
                "DELETE FROM group_members WHERE group_id = $1",
                "DELETE FROM group_members WHERE kind = 1 AND member = $1",
                "DELETE FROM category_entries WHERE kind = 1 AND member = $1",
                "DELETE FROM room_entries WHERE kind = 1 AND member = $1",
            ] {
                tx.execute(sql, &[&id.0]).await?;
            }
        }
        Change::PutPolicy(name, enabled) => {
            tx.execute(
                "INSERT INTO policies(name, enabled) VALUES ($1, $2) ON CONFLICT(name) DO UPDATE SET enabled = $2",
                &[name, enabled],
            )
            .await?;
        }
        Change::PutCategory(cat) => {
            tx.execute(
                "INSERT INTO categories(id, name, description, invitations, file_upload, history)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT(id) DO UPDATE SET name = $2, description = $3, invitations = $4, file_upload = $5,
                 history = $6",
                &[&cat.id.0, &cat.name, &cat.description, &cat.invitations, &cat.file_upload, &cat.history],
            )
            .await?;
            tx.execute(
                "DELETE FROM category_entries WHERE category_id = $1",
                &[&cat.id.0],
            )
            .await?;
            let mut lists = Vec::new();
            let mut kinds = Vec::new();
            let mut members = Vec::new();
            for (list, acl) in [
                (CAT_ALLOWED, &cat.allowed),
                (CAT_DENIED, &cat.denied),
                (CAT_CREATORS, &cat.creators),
            ] {
                for e in acl.entries() {
                    let (k, m) = entry_parts(e);
                    lists.push(list);
                    kinds.push(k);
                    members.push(m);
                }
            }
            tx.execute(
                "INSERT INTO category_entries(category_id, list, kind, member)
                 SELECT $1, l, k, m FROM unnest($2::smallint[], $3::smallint[], $4::bigint[]) AS t(l, k, m)",
                &[&cat.id.0, &lists, &kinds, &members],
            )
            .await?;
        }
        Change::DeleteCategory(id) => {
            tx.execute("DELETE FROM categories WHERE id = $1", &[&id.0])
                .await?;
            tx.execute(
                "DELETE FROM category_entries WHERE category_id = $1",
                &[&id.0],
            )
            .await?;
        }
        Change::PutRoom(r) => {
            let room_type: i16 = match r.room_type {
                RoomType::Normal => 0,
                RoomType::Auditorium => 1,
            };
            let invitations: i16 = if r.invitations == Invitations::Off {
                1
            } else {
                0
            };
            tx.execute(
                "INSERT INTO rooms(id, name, description, category_id, type, privacy, invitations, addin, disabled,
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT(id) DO UPDATE SET name = $2, description = $3, category_id = $4, type = $5,
                 privacy = $6, invitations = $7, addin = $8, disabled = $9",
                &[
                    &r.id.0,
                    &r.name,
                    &r.description,
                    &r.category.0,
                    &room_type,
                    &privacy_code(r.privacy),
                    &invitations,
                    &r.addin,
                    &r.disabled,
                    &r.created_at,
                ],
            )
            .await?;
            tx.execute("DELETE FROM room_entries WHERE room_id = $1", &[&r.id.0])
                .await?;
            let mut lists = Vec::new();
            let mut kinds = Vec::new();
            let mut members = Vec::new();
            for list in [RoomList::Managers, RoomList::Presenters, RoomList::Members] {
                for e in r.list(list).entries() {
                    let (k, m) = entry_parts(e);
                    lists.push(list_code(list));
                    kinds.push(k);
                    members.push(m);
                }
            }
            tx.execute(
                "INSERT INTO room_entries(room_id, list, kind, member)
                 SELECT $1, l, k, m FROM unnest($2::smallint[], $3::smallint[], $4::bigint[]) AS t(l, k, m)",
                &[&r.id.0, &lists, &kinds, &members],
            )
            .await?;
        }
        Change::DeleteRoom(id) => {
            for sql in [
                "DELETE FROM rooms WHERE id = $1",
                "DELETE FROM room_entries WHERE room_id = $1",
                "DELETE FROM messages WHERE room_id = $1",
                "DELETE FROM followed WHERE room_id = $1",
                "DELETE FROM invitations WHERE room_id = $1",
            ] {
                tx.execute(sql, &[&id.0]).await?;
            }
        }
        Change::PutSetting(key, value) => {
            tx.execute(
                "INSERT INTO settings(key, value) VALUES ($1, $2) ON CONFLICT(key) DO UPDATE SET value = $2",
                &[key, value],
            )
            .await?;
        }
        Change::PutAddin(name, url) => {
            tx.execute(
                "INSERT INTO addins(name, url) VALUES ($1, $2) ON CONFLICT(name) DO UPDATE SET url = $2",
                &[name, url],
            )
            .await?;
        }
        Change::DeleteAddin(name) => {
            tx.execute("DELETE FROM addins WHERE name = $1", &[name])
                .await?;
        }
    }
    Ok(())
}
