//! The embedded store: SQLite in WAL mode, one writer thread, a pool of readers.
//!
//! Writes go through a channel to a single writer thread that drains whatever
//! has queued, applies it in one transaction (each command inside its own
//! savepoint, so one failure does not undo its neighbours), commits with
//! `synchronous=FULL`, and only then answers each command. That is group
//! commit: one fsync per batch however many posts arrived meanwhile. Being the
//! only writer, the thread also owns the per-room sequence counters, which is
//! what keeps them dense and strictly increasing.
//!
//! The compliance database is a second SQLite file. Compliance events are first
//! written to an outbox table in the chat database, in the same transaction as
//! the change they record, and then moved to the compliance database
//! (only ids above the highest already taken, then delete from the outbox), so each
//! event lands there exactly once even across a crash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pchat_protocol::{Invitations, Privacy, RoomList, RoomType};
use prometheus_client::metrics::gauge::Gauge;
use rusqlite::functions::FunctionFlags;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::domain::{kind_code, kind_from_code, Acl, Entry};

/// How the embedded store syncs on commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: survives power loss (the default).
    Full,
    /// WAL without fsync on commit: survives a killed process, not power loss.
    Normal,
}

/// Options of the embedded store.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub chat_path: PathBuf,
    pub compliance_path: PathBuf,
    pub synchronous: Synchronous,
    pub readers: usize,
    /// Most commands applied in one transaction.
    pub max_batch: usize,
}

impl SqliteOptions {
    pub fn in_dir(dir: &Path) -> SqliteOptions {
        SqliteOptions {
            chat_path: dir.join("chat.db"),
            compliance_path: dir.join("compliance.db"),
            synchronous: Synchronous::Full,
            readers: 4,
            max_batch: 512,
        }
    }
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS counters(kind TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, display_name TEXT NOT NULL,
    password_hash TEXT, policy TEXT, admin INTEGER NOT NULL, disabled INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS groups(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS group_members(
    group_id INTEGER NOT NULL, kind INTEGER NOT NULL, member INTEGER NOT NULL,
    PRIMARY KEY(group_id, kind, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policies(name TEXT PRIMARY KEY, enabled INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS categories(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,
    invitations INTEGER NOT NULL, file_upload INTEGER NOT NULL, history INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS category_entries(
    category_id INTEGER NOT NULL, list INTEGER NOT NULL, kind INTEGER NOT NULL, member INTEGER NOT NULL,
    PRIMARY KEY(category_id, list, kind, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rooms(
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, category_id INTEGER NOT NULL,
    type INTEGER NOT NULL, privacy INTEGER NOT NULL, invitations INTEGER NOT NULL, addin TEXT,
    disabled INTEGER NOT NULL, created_at INTEGER NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS room_entries(
    room_id INTEGER NOT NULL, list INTEGER NOT NULL, kind INTEGER NOT NULL, member INTEGER NOT NULL,
    PRIMARY KEY(room_id, list, kind, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages(
    room_id INTEGER NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, ts INTEGER NOT NULL,
    kind INTEGER NOT NULL, text TEXT, title TEXT, client_key TEXT, state INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(room_id, seq)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_client_key
    ON messages(room_id, sender, client_key) WHERE client_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS followed(user_id INTEGER NOT NULL, room_id INTEGER NOT NULL,
    PRIMARY KEY(user_id, room_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS invitations(
    id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, room_id INTEGER NOT NULL,
    invited_by TEXT NOT NULL, at INTEGER NOT NULL, delivered INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS invitations_pending ON invitations(user_id) WHERE delivered = 0;
CREATE TABLE IF NOT EXISTS addins(name TEXT PRIMARY KEY, url TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS compliance_outbox(
    id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, kind TEXT NOT NULL, room_id INTEGER, room_name TEXT,
    user_name TEXT NOT NULL, seq INTEGER, text TEXT, detail TEXT);
"#;

// Outbox ids are AUTOINCREMENT so that they are never reused once pumped
// and deleted; the compliance database remembers the highest id it has taken
// (`pumped`), so a pump repeated after a crash, even after an export has
// already deleted the events, never records an event twice.
const COMPLIANCE_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY, at INTEGER NOT NULL, kind TEXT NOT NULL, room_id INTEGER, room_name TEXT,
    user_name TEXT NOT NULL, seq INTEGER, text TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS pumped(one INTEGER PRIMARY KEY CHECK (one = 1), last_id INTEGER NOT NULL);
INSERT OR IGNORE INTO pumped(one, last_id) VALUES (1, 0);
"#;

/// The embedded SQLite store.
pub struct SqliteStore {
    writer: mpsc::UnboundedSender<Command>,
    /// Commands sent to the writer and not yet answered.
    pending: Gauge,
    readers: Arc<ReaderPool>,
    compliance: Arc<Mutex<Connection>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Reader connections, checked out for one blocking call at a time.
struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    path: PathBuf,
}

impl ReaderPool {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.idle.lock().expect("reader pool lock poisoned").pop();
        let conn = match conn {
            Some(c) => c,
            None => open_reader(&self.path)?,
        };
        let out = f(&conn);
        self.idle
            .lock()
            .expect("reader pool lock poisoned")
            .push(conn);
        out
    }
}

type Reply<T> = oneshot::Sender<Result<T>>;

enum Command {
    Append(Box<NewMessage>, Reply<Appended>),
    Apply(Vec<Change>, Vec<ComplianceEvent>, Reply<()>),
    Record(Vec<ComplianceEvent>, Reply<()>),
    Reserve(IdKind, u64, Reply<i64>),
    Follow(UserId, RoomId, bool, Reply<()>),
    Invite(Vec<InvitationRec>, Reply<()>),
    TakeInvitations(UserId, Reply<Vec<InvitationRec>>),
    Clear(RoomId, i64, ComplianceEvent, Reply<u64>),
    Remove(
        RoomId,
        MessageFilter,
        Option<String>,
        ComplianceEvent,
        Reply<Vec<u64>>,
    ),
    OutboxDelete(Vec<i64>, Reply<()>),
    Close(Reply<()>),
}

fn open_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    register_functions(&conn)?;
    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection> {
    let conn = open_conn(path)?;
    conn.pragma_update(None, "query_only", "ON")?;
    Ok(conn)
}

/// `pc_icontains(haystack, needle)`: Unicode case-insensitive substring test;
/// the needle is already lower-cased.
fn register_functions(conn: &Connection) -> Result<()> {
    conn.create_scalar_function(
        "pc_icontains",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let hay: Option<String> = ctx.get(0)?;
            let needle: String = ctx.get(1)?;
            Ok(hay.is_some_and(|h| h.to_lowercase().contains(&needle)))
        },
    )?;
    conn.create_scalar_function(
        "pc_contains",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let hay: Option<String> = ctx.get(0)?;
            let needle: String = ctx.get(1)?;
            Ok(hay.is_some_and(|h| h.contains(&needle)))
        },
    )?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating when absent) the chat and compliance databases and
    /// starts the writer thread. Newly committed messages are sent, in order,
    /// on `commits`.
    pub fn open(
        opts: SqliteOptions,
        commits: mpsc::UnboundedSender<StoredMessage>,
        pending: Gauge,
        publish_pending: Gauge,
    ) -> Result<SqliteStore> {
        let conn = open_conn(&opts.chat_path)?;
        let sync = match opts.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.execute_batch(SCHEMA)?;
        let compliance = open_conn(&opts.compliance_path)?;
        compliance.pragma_update(None, "synchronous", "FULL")?;
        compliance.execute_batch(COMPLIANCE_SCHEMA)?;

        let readers = (0..opts.readers.max(1))
            .map(|_| open_reader(&opts.chat_path))
            .collect::<Result<Vec<_>>>()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut writer = Writer::new(conn, commits, publish_pending)?;
        let max_batch = opts.max_batch.max(1);
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run(rx, max_batch))?;
        Ok(SqliteStore {
            writer: tx,
            pending,
            readers: Arc::new(ReaderPool {
                idle: Mutex::new(readers),
                path: opts.chat_path,
            }),
            compliance: Arc::new(Mutex::new(compliance)),
            writer_thread: Mutex::new(Some(handle)),
        })
    }

    /// Makes room ids handed out from now on at least `next` (a published
    /// topology gives each pool its own range).
    pub async fn raise_room_counter(&self, next: i64) -> Result<()> {
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let conn = open_conn(&path)?;
            conn.execute(
                "INSERT INTO counters(kind, next) VALUES ('room', ?1)
                 ON CONFLICT(kind) DO UPDATE SET next = MAX(next, ?1)",
                [next],
            )?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(make(tx)).map_err(|_| StoreError::Closed)?;
        self.pending.inc();
        let out = rx.await.map_err(|_| StoreError::Closed);
        self.pending.dec();
        out?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn load(&self) -> Result<Snapshot> {
        self.read(load_snapshot).await
    }

    async fn reserve_ids(&self, kind: IdKind, count: u64) -> Result<i64> {
        self.ask(|r| Command::Reserve(kind, count, r)).await
    }

    async fn apply(
        &self,
        changes: Vec<Change>,
        audit: Vec<ComplianceEvent>,
    ) -> Result<Option<u64>> {
        self.ask(|r| Command::Apply(changes, audit, r)).await?;
        Ok(None)
    }

    async fn append(&self, msg: NewMessage) -> Result<Appended> {
        self.ask(|r| Command::Append(Box::new(msg), r)).await
    }

    async fn record(&self, events: Vec<ComplianceEvent>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.ask(|r| Command::Record(events, r)).await
    }

    async fn messages(
        &self,
        room: RoomId,
        slice: Slice,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool)> {
        self.read(move |c| read_messages(c, room, slice, limit))
            .await
    }

    async fn search(&self, query: SearchQuery) -> Result<(Vec<StoredMessage>, bool)> {
        self.read(move |c| search_messages(c, &query)).await
    }

    async fn set_followed(&self, user: UserId, room: RoomId, follow: bool) -> Result<()> {
        self.ask(|r| Command::Follow(user, room, follow, r)).await
    }

    async fn followed(&self, user: UserId) -> Result<Vec<RoomId>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT room_id FROM followed WHERE user_id = ? ORDER BY room_id",
            )?;
            let rows = st.query_map([user.0], |r| Ok(RoomId(r.get(0)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn add_invitations(&self, invitations: Vec<InvitationRec>) -> Result<()> {
        if invitations.is_empty() {
            return Ok(());
        }
        self.ask(|r| Command::Invite(invitations, r)).await
    }

    async fn take_invitations(&self, user: UserId) -> Result<Vec<InvitationRec>> {
        self.ask(|r| Command::TakeInvitations(user, r)).await
    }

    async fn clear_history(
        &self,
        room: RoomId,
        before_ms: i64,
        audit: ComplianceEvent,
    ) -> Result<u64> {
        self.ask(|r| Command::Clear(room, before_ms, audit, r))
            .await
    }

    async fn remove_messages(
        &self,
        room: RoomId,
        filter: MessageFilter,
        replacement: Option<String>,
        audit: ComplianceEvent,
    ) -> Result<Vec<u64>> {
        self.ask(|r| Command::Remove(room, filter, replacement, audit, r))
            .await
    }

    async fn pump_compliance(&self, _mode: Pump) -> Result<usize> {
        // One process pumps its own file: there is no other pump to wait for.
        let pending = self
            .read(|c| {
                let mut st = c.prepare_cached(
                    "SELECT id, at, kind, room_id, room_name, user_name, seq, text, detail
                     FROM compliance_outbox ORDER BY id LIMIT 5000",
                )?;
                let rows = st.query_map([], compliance_row)?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = pending.iter().map(|r| r.id).collect();
        let db = self.compliance.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut conn = db.lock().expect("compliance db lock poisoned");
            let tx = conn.transaction()?;
            {
                let last: i64 =
                    tx.query_row("SELECT last_id FROM pumped WHERE one = 1", [], |r| r.get(0))?;
                let mut st = tx.prepare_cached(
                    "INSERT INTO events(id, at, kind, room_id, room_name, user_name, seq, text, detail)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )?;
                for r in pending.iter().filter(|r| r.id > last) {
                    let e = &r.event;
                    st.execute(params![
                        r.id,
                        e.at_ms,
                        e.kind,
                        e.room.as_ref().map(|(id, _)| id.0),
                        e.room.as_ref().map(|(_, n)| n.as_str()),
                        e.user,
                        e.seq.map(|s| s as i64),
                        e.text,
                        e.detail
                    ])?;
                }
                let top = pending.iter().map(|r| r.id).max().unwrap_or(last).max(last);
                tx.execute("UPDATE pumped SET last_id = ? WHERE one = 1", [top])?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        let n = ids.len();
        self.ask(|r| Command::OutboxDelete(ids, r)).await?;
        Ok(n)
    }

    async fn compliance_pending(&self, limit: usize) -> Result<Vec<ComplianceRecord>> {
        let db = self.compliance.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<ComplianceRecord>> {
            let conn = db.lock().expect("compliance db lock poisoned");
            let mut st = conn.prepare_cached(
                "SELECT id, at, kind, room_id, room_name, user_name, seq, text, detail
                 FROM events ORDER BY id LIMIT ?",
            )?;
            let rows = st.query_map([limit as i64], compliance_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn compliance_delete(&self, ids: Vec<i64>) -> Result<()> {
        let db = self.compliance.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut conn = db.lock().expect("compliance db lock poisoned");
            let tx = conn.transaction()?;
            {
                let mut st = tx.prepare_cached("DELETE FROM events WHERE id = ?")?;
                for id in ids {
                    st.execute([id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn close(&self) -> Result<()> {
        let res = self.ask(Command::Close).await;
        let handle = self
            .writer_thread
            .lock()
            .expect("writer handle lock poisoned")
            .take();
        if let Some(h) = handle {
            tokio::task::spawn_blocking(move || h.join()).await.ok();
        }
        match res {
            Err(StoreError::Closed) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn compliance_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ComplianceRecord> {
    let kind: String = r.get(2)?;
    let room_id: Option<i64> = r.get(3)?;
    let room_name: Option<String> = r.get(4)?;
    Ok(ComplianceRecord {
        id: r.get(0)?,
        event: ComplianceEvent {
            kind: compliance_kind(&kind),
            at_ms: r.get(1)?,
            room: room_id.map(|id| (RoomId(id), room_name.unwrap_or_default())),
            user: r.get(5)?,
            seq: r.get::<_, Option<i64>>(6)?.map(|s| s as u64),
            text: r.get(7)?,
            detail: r.get(8)?,
        },
    })
}

/// Maps a stored kind back to its static name.
pub fn compliance_kind(s: &str) -> &'static str {
    crate::compliance::KINDS
        .iter()
        .find(|k| **k == s)
        .copied()
        .unwrap_or("ADMIN")
}

// ---------------------------------------------------------------- encoding

fn list_code(l: RoomList) -> i64 {
    match l {
        RoomList::Managers => 0,
        RoomList::Presenters => 1,
        RoomList::Members => 2,
    }
}

const CAT_ALLOWED: i64 = 0;
const CAT_DENIED: i64 = 1;
const CAT_CREATORS: i64 = 2;

fn entry_parts(e: Entry) -> (i64, i64) {
    match e {
        Entry::User(u) => (0, u.0),
        Entry::Group(g) => (1, g.0),
    }
}

fn entry_from(kind: i64, member: i64) -> Entry {
    if kind == 0 {
        Entry::User(UserId(member))
    } else {
        Entry::Group(GroupId(member))
    }
}

fn type_code(t: RoomType) -> i64 {
    match t {
        RoomType::Normal => 0,
        RoomType::Auditorium => 1,
    }
}

fn privacy_code(p: Privacy) -> i64 {
    match p {
        Privacy::Open => 0,
        Privacy::Closed => 1,
        Privacy::Secret => 2,
    }
}

fn privacy_from(c: i64) -> Privacy {
    match c {
        0 => Privacy::Open,
        2 => Privacy::Secret,
        _ => Privacy::Closed,
    }
}

fn counter_name(k: IdKind) -> &'static str {
    match k {
        IdKind::User => "user",
        IdKind::Group => "group",
        IdKind::Category => "category",
        IdKind::Room => "room",
    }
}

// ---------------------------------------------------------------- reads

fn load_snapshot(c: &Connection) -> Result<Snapshot> {
    let mut snap = Snapshot::default();
    let mut st = c.prepare(
        "SELECT id, name, display_name, password_hash, policy, admin, disabled FROM users",
    )?;
    snap.users = st
        .query_map([], |r| {
            Ok(UserRec {
                id: UserId(r.get(0)?),
                name: r.get(1)?,
                display_name: r.get(2)?,
                password_hash: r.get(3)?,
                policy: r.get(4)?,
                admin: r.get(5)?,
                disabled: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;

    let mut groups: HashMap<i64, GroupRec> = HashMap::new();
    let mut st = c.prepare("SELECT id, name FROM groups")?;
    for row in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
        let (id, name) = row?;
        groups.insert(
            id,
            GroupRec {
                id: GroupId(id),
                name,
                members: Default::default(),
            },
        );
    }
    let mut st = c.prepare("SELECT group_id, kind, member FROM group_members")?;
    for row in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?)))? {
        let (g, kind, member) = row?;
        if let Some(g) = groups.get_mut(&g) {
            g.members.insert(entry_from(kind, member));
        }
    }
    snap.groups = groups.into_values().collect();

    let mut st = c.prepare("SELECT name, enabled FROM policies")?;
    snap.policies = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;

    let mut cats: HashMap<i64, CategoryRec> = HashMap::new();
    let mut st = c.prepare(
        "SELECT id, name, description, invitations, file_upload, history FROM categories",
    )?;
    for row in st.query_map([], |r| {
        Ok(CategoryRec {
            id: CategoryId(r.get(0)?),
            name: r.get(1)?,
            description: r.get(2)?,
            allowed: Acl::default(),
            denied: Acl::default(),
            creators: Acl::default(),
            invitations: r.get(3)?,
            file_upload: r.get(4)?,
            history: r.get(5)?,
        })
    })? {
        let cat = row?;
        cats.insert(cat.id.0, cat);
    }
    let mut st = c.prepare("SELECT category_id, list, kind, member FROM category_entries")?;
    for row in st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get(2)?,
            r.get(3)?,
        ))
    })? {
        let (cat, list, kind, member) = row?;
        if let Some(cat) = cats.get_mut(&cat) {
            let acl = match list {
                CAT_ALLOWED => &mut cat.allowed,
                CAT_DENIED => &mut cat.denied,
                _ => &mut cat.creators,
            };
            acl.insert(entry_from(kind, member));
        }
    }
    snap.categories = cats.into_values().collect();

    let mut rooms: HashMap<i64, RoomRec> = HashMap::new();
    let mut st = c.prepare(
        "SELECT id, name, description, category_id, type, privacy, invitations, addin, disabled, created_at, last_seq
         FROM rooms",
    )?;
    for row in st.query_map([], |r| {
        Ok((
            RoomRec {
                id: RoomId(r.get(0)?),
                name: r.get(1)?,
                description: r.get(2)?,
                category: CategoryId(r.get(3)?),
                room_type: if r.get::<_, i64>(4)? == 1 {
                    RoomType::Auditorium
                } else {
                    RoomType::Normal
                },
                privacy: privacy_from(r.get(5)?),
                invitations: if r.get::<_, i64>(6)? == 1 {
                    Invitations::Off
                } else {
                    Invitations::Inherit
                },
                addin: r.get(7)?,
                disabled: r.get(8)?,
                managers: Acl::default(),
                presenters: Acl::default(),
                members: Acl::default(),
                created_at: r.get(9)?,
            },
            r.get::<_, i64>(10)?,
        ))
    })? {
        let (room, last_seq) = row?;
        snap.last_seqs.push((room.id, last_seq as u64));
        rooms.insert(room.id.0, room);
    }
    let mut st = c.prepare("SELECT room_id, list, kind, member FROM room_entries")?;
    for row in st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get(2)?,
            r.get(3)?,
        ))
    })? {
        let (room, list, kind, member) = row?;
        if let Some(room) = rooms.get_mut(&room) {
            let list = match list {
                0 => RoomList::Managers,
                1 => RoomList::Presenters,
                _ => RoomList::Members,
            };
            room.list_mut(list).insert(entry_from(kind, member));
        }
    }
    snap.rooms = rooms.into_values().collect();

    let mut st = c.prepare("SELECT key, value FROM settings")?;
    snap.settings = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut st = c.prepare("SELECT name, url FROM addins")?;
    snap.addins = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(snap)
}

const MESSAGE_COLUMNS: &str = "room_id, seq, sender, ts, kind, text, title, state";

fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        room: RoomId(r.get(0)?),
        seq: r.get::<_, i64>(1)? as u64,
        sender: r.get(2)?,
        ts_ms: r.get(3)?,
        kind: kind_from_code(r.get(4)?),
        text: r.get(5)?,
        title: r.get(6)?,
        state: MessageState::from_code(r.get(7)?),
    })
}

/// Readable rows only: removed messages and history-off rows are skipped.
const READABLE: &str = "state != 2 AND text IS NOT NULL";

fn read_messages(
    c: &Connection,
    room: RoomId,
    slice: Slice,
    limit: usize,
) -> Result<(Vec<StoredMessage>, bool)> {
    let take = (limit + 1) as i64;
    let (sql, a, b) = match slice {
        Slice::Latest => (
            format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = ?1 AND {READABLE} AND ?2 = ?2 ORDER BY seq DESC LIMIT ?3"),
            0,
            0,
        ),
        Slice::Before(s) => (
            format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = ?1 AND {READABLE} AND seq < ?2 ORDER BY seq DESC LIMIT ?3"),
            s as i64,
            0,
        ),
        Slice::After(s) => (
            format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = ?1 AND {READABLE} AND seq > ?2 ORDER BY seq ASC LIMIT ?3"),
            s as i64,
            0,
        ),
        Slice::Between(lo, hi) => (
            format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = ?1 AND {READABLE} AND seq > ?2 AND seq <= ?4 ORDER BY seq ASC LIMIT ?3"),
            lo as i64,
            hi as i64,
        ),
    };
    let mut st = c.prepare_cached(&sql)?;
    let mut rows: Vec<StoredMessage> = if matches!(slice, Slice::Between(..)) {
        st.query_map(params![room.0, a, take, b], message_row)?
            .collect::<rusqlite::Result<_>>()?
    } else {
        st.query_map(params![room.0, a, take], message_row)?
            .collect::<rusqlite::Result<_>>()?
    };
    let more = rows.len() > limit;
    rows.truncate(limit);
    if matches!(slice, Slice::Latest | Slice::Before(_)) {
        rows.reverse();
    }
    Ok((rows, more))
}

fn search_messages(c: &Connection, q: &SearchQuery) -> Result<(Vec<StoredMessage>, bool)> {
    if q.rooms.is_empty() {
        return Ok((Vec::new(), false));
    }
    let mut sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE {READABLE} AND state = 0 AND room_id IN ("
    );
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    for (i, r) in q.rooms.iter().enumerate() {
        if i > 0 {
            sql.push(',');
        }
        sql.push('?');
        args.push(r.0.into());
    }
    sql.push(')');
    let func = if q.case_sensitive {
        "pc_contains"
    } else {
        "pc_icontains"
    };
    for t in &q.terms {
        sql.push_str(&format!(" AND {func}(text, ?)"));
        args.push(t.clone().into());
    }
    if let Some(a) = &q.author {
        sql.push_str(" AND sender = ?");
        args.push(a.clone().into());
    }
    if let Some(f) = q.from_ms {
        sql.push_str(" AND ts >= ?");
        args.push(f.into());
    }
    if let Some(t) = q.to_ms {
        sql.push_str(" AND ts < ?");
        args.push(t.into());
    }
    sql.push_str(" ORDER BY ts DESC, room_id ASC, seq DESC LIMIT ?");
    args.push(((q.limit + 1) as i64).into());
    let mut st = c.prepare(&sql)?;
    let mut rows: Vec<StoredMessage> = st
        .query_map(rusqlite::params_from_iter(args), message_row)?
        .collect::<rusqlite::Result<_>>()?;
    let more = rows.len() > q.limit;
    rows.truncate(q.limit);
    Ok((rows, more))
}

// ---------------------------------------------------------------- the writer

struct Writer {
    conn: Connection,
    commits: mpsc::UnboundedSender<StoredMessage>,
    publish_pending: Gauge,
    /// The last sequence number of every room with messages.
    last_seq: HashMap<RoomId, u64>,
    /// The last timestamp handed out, so timestamps never go backwards.
    last_ts: i64,
}

/// What to do once a batch is committed.
enum After {
    Reply(Box<dyn FnOnce() + Send>),
    Publish(StoredMessage, Reply<Appended>),
}

impl Writer {
    fn new(
        conn: Connection,
        commits: mpsc::UnboundedSender<StoredMessage>,
        publish_pending: Gauge,
    ) -> Result<Writer> {
        let mut last_seq = HashMap::new();
        {
            let mut st = conn.prepare("SELECT id, last_seq FROM rooms")?;
            for row in st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
                let (room, seq) = row?;
                last_seq.insert(RoomId(room), seq as u64);
            }
        }
        Ok(Writer {
            conn,
            commits,
            publish_pending,
            last_seq,
            last_ts: 0,
        })
    }

    fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Command>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        loop {
            let Some(first) = rx.blocking_recv() else {
                return;
            };
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let closing = batch.iter().any(|c| matches!(c, Command::Close(_)));
            self.run_batch(&mut batch);
            if closing {
                rx.close();
                // Answer whatever raced in behind the close.
                while let Ok(c) = rx.try_recv() {
                    batch.push(c);
                }
                self.run_batch(&mut batch);
                return;
            }
        }
    }

    fn run_batch(&mut self, batch: &mut Vec<Command>) {
        if batch.is_empty() {
            return;
        }
        let seqs_before = self.last_seq.clone();
        let ts = now_ms().max(self.last_ts);
        self.last_ts = ts;
        let mut after: Vec<After> = Vec::with_capacity(batch.len());
        let outcome = (|| -> Result<()> {
            let tx = self.conn.transaction()?;
            for cmd in batch.drain(..) {
                tx.execute_batch("SAVEPOINT cmd")?;
                match apply_command(&tx, &mut self.last_seq, ts, cmd) {
                    Ok(a) => {
                        tx.execute_batch("RELEASE cmd")?;
                        after.push(a);
                    }
                    Err(failed) => {
                        let (e, a) = *failed;
                        tracing::warn!(error = %e, "store command failed");
                        tx.execute_batch("ROLLBACK TO cmd; RELEASE cmd")?;
                        after.push(a);
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                for a in after {
                    match a {
                        After::Reply(f) => f(),
                        After::Publish(m, reply) => {
                            // The receiver lives as long as the server; if it is
                            // gone the server is stopping and nobody listens.
                            if self.commits.send(m.clone()).is_ok() {
                                self.publish_pending.inc();
                            }
                            let _ = reply.send(Ok(Appended::New(m)));
                        }
                    }
                }
            }
            Err(e) => {
                // The transaction did not commit: nothing in it is acknowledged.
                tracing::error!(error = %e, "store batch failed to commit");
                self.last_seq = seqs_before;
                for a in after {
                    if let After::Publish(_, reply) = a {
                        let _ = reply.send(Err(StoreError::Task(format!("commit failed: {e}"))));
                    }
                    // Other replies are dropped; their callers see `Closed`.
                }
            }
        }
    }
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_millis() as i64
}

/// Wraps a reply so it is sent only after the batch commits.
fn later<T: Send + 'static>(reply: Reply<T>, value: Result<T>) -> After {
    After::Reply(Box::new(move || {
        let _ = reply.send(value);
    }))
}

/// A failed command: the error (for the log) and the reply carrying it.
type Failed = Box<(StoreError, After)>;

// The immediately-called closures give each command's body its own `?` scope.
#[allow(clippy::redundant_closure_call)]
fn apply_command(
    tx: &Transaction<'_>,
    last_seq: &mut HashMap<RoomId, u64>,
    ts: i64,
    cmd: Command,
) -> Result<After, Failed> {
    macro_rules! run {
        ($reply:expr, $body:expr) => {{
            let reply = $reply;
            let result: Result<_> = (|| $body)();
            match result {
                Ok(v) => Ok(later(reply, Ok(v))),
                Err(e) => {
                    let msg = e.to_string();
                    Err(Box::new((e, later(reply, Err(StoreError::Task(msg))))))
                }
            }
        }};
    }
    match cmd {
        Command::Append(msg, reply) => match append(tx, last_seq, ts, &msg) {
            Ok(Appended::New(m)) => Ok(After::Publish(m, reply)),
            Ok(other) => Ok(later(reply, Ok(other))),
            Err(e) => {
                let msg = e.to_string();
                // The savepoint is rolled back; the counter was not advanced.
                Err(Box::new((e, later(reply, Err(StoreError::Task(msg))))))
            }
        },
        Command::Apply(changes, audit, reply) => run!(reply, {
            for c in &changes {
                apply_change(tx, c, last_seq)?;
            }
            outbox(tx, &audit)
        }),
        Command::Record(events, reply) => run!(reply, outbox(tx, &events)),
        Command::Reserve(kind, count, reply) => run!(reply, {
            let name = counter_name(kind);
            let table = match kind {
                IdKind::User => "users",
                IdKind::Group => "groups",
                IdKind::Category => "categories",
                IdKind::Room => "rooms",
            };
            let stored: Option<i64> = tx
                .query_row("SELECT next FROM counters WHERE kind = ?", [name], |r| {
                    r.get(0)
                })
                .optional()?;
            let max: i64 = tx.query_row(
                &format!("SELECT COALESCE(MAX(id), 0) FROM {table}"),
                [],
                |r| r.get(0),
            )?;
            let first = stored.unwrap_or(1).max(max + 1);
            tx.execute(
                "INSERT INTO counters(kind, next) VALUES (?1, ?2) ON CONFLICT(kind) DO UPDATE SET next = ?2",
                params![name, first + count as i64],
            )?;
            Ok(first)
        }),
        Command::Follow(user, room, follow, reply) => run!(reply, {
            if follow {
                tx.execute(
                    "INSERT OR IGNORE INTO followed(user_id, room_id) VALUES (?, ?)",
                    [user.0, room.0],
                )?;
            } else {
                tx.execute(
                    "DELETE FROM followed WHERE user_id = ? AND room_id = ?",
                    [user.0, room.0],
                )?;
            }
            Ok(())
        }),
        Command::Invite(invs, reply) => run!(reply, {
            let mut st = tx.prepare_cached(
                "INSERT INTO invitations(user_id, room_id, invited_by, at) VALUES (?, ?, ?, ?)",
            )?;
            for i in &invs {
                st.execute(params![i.user.0, i.room.0, i.invited_by, i.at_ms])?;
            }
            Ok(())
        }),
        Command::TakeInvitations(user, reply) => run!(reply, {
            let mut st = tx.prepare_cached(
                "SELECT room_id, invited_by, at FROM invitations WHERE user_id = ? AND delivered = 0 ORDER BY id",
            )?;
            let out = st
                .query_map([user.0], |r| {
                    Ok(InvitationRec {
                        user,
                        room: RoomId(r.get(0)?),
                        invited_by: r.get(1)?,
                        at_ms: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            tx.execute(
                "UPDATE invitations SET delivered = 1 WHERE user_id = ? AND delivered = 0",
                [user.0],
            )?;
            Ok(out)
        }),
        Command::Clear(room, before, audit, reply) => run!(reply, {
            let n = tx.execute(
                "UPDATE messages SET state = 2, text = NULL, title = NULL WHERE room_id = ? AND ts < ? AND state != 2",
                [room.0, before],
            )?;
            outbox(tx, std::slice::from_ref(&audit))?;
            Ok(n as u64)
        }),
        Command::Remove(room, filter, replacement, audit, reply) => run!(reply, {
            let seqs = select_for_removal(tx, room, &filter)?;
            {
                let mut st = match replacement {
                    Some(_) => tx.prepare_cached(
                        "UPDATE messages SET state = 1, text = ?3, title = NULL WHERE room_id = ?1 AND seq = ?2",
                    )?,
                    None => tx.prepare_cached(
                        "UPDATE messages SET state = 2, text = NULL, title = NULL WHERE room_id = ?1 AND seq = ?2 AND ?3 IS NULL",
                    )?,
                };
                for s in &seqs {
                    st.execute(params![room.0, *s as i64, replacement])?;
                }
            }
            let mut audit = audit;
            audit.detail = Some(format!("{} message(s): {:?}", seqs.len(), seqs));
            outbox(tx, std::slice::from_ref(&audit))?;
            Ok(seqs)
        }),
        Command::OutboxDelete(ids, reply) => run!(reply, {
            let mut st = tx.prepare_cached("DELETE FROM compliance_outbox WHERE id = ?")?;
            for id in &ids {
                st.execute([id])?;
            }
            Ok(())
        }),
        Command::Close(reply) => Ok(later(reply, Ok(()))),
    }
}

fn select_for_removal(tx: &Transaction<'_>, room: RoomId, f: &MessageFilter) -> Result<Vec<u64>> {
    let mut sql = String::from(
        "SELECT seq FROM messages WHERE room_id = ? AND state = 0 AND text IS NOT NULL",
    );
    let mut args: Vec<rusqlite::types::Value> = vec![room.0.into()];
    if let Some(a) = &f.author {
        sql.push_str(" AND sender = ?");
        args.push(a.clone().into());
    }
    if let Some(v) = f.from_ms {
        sql.push_str(" AND ts >= ?");
        args.push(v.into());
    }
    if let Some(v) = f.to_ms {
        sql.push_str(" AND ts < ?");
        args.push(v.into());
    }
    for k in &f.keywords {
        sql.push_str(" AND pc_icontains(text, ?)");
        args.push(k.clone().into());
    }
    sql.push_str(" ORDER BY seq");
    let mut st = tx.prepare(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, i64>(0))?;
    Ok(rows
        .map(|r| r.map(|s| s as u64))
        .collect::<rusqlite::Result<_>>()?)
}

fn append(
    tx: &Transaction<'_>,
    last_seq: &mut HashMap<RoomId, u64>,
    ts: i64,
    m: &NewMessage,
) -> Result<Appended> {
    if let Some(key) = &m.client_key {
        let existing = tx
            .query_row(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = ? AND sender = ? AND client_key = ?"
                ),
                params![m.room.0, m.sender, key],
                message_row,
            )
            .optional()?;
        if let Some(mut old) = existing {
            // Compare against what was posted. A history-off row keeps no text,
            // so only kind and title can be compared there.
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
    let seq = last_seq.get(&m.room).copied().unwrap_or(0) + 1;
    let stored_text = m.keep_text.then(|| m.text.clone());
    tx.prepare_cached(
        "INSERT INTO messages(room_id, seq, sender, ts, kind, text, title, client_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        m.room.0,
        seq as i64,
        m.sender,
        ts,
        kind_code(m.kind),
        stored_text,
        if m.keep_text { m.title.clone() } else { None },
        m.client_key
    ])?;
    tx.prepare_cached("UPDATE rooms SET last_seq = ? WHERE id = ?")?
        .execute(params![seq as i64, m.room.0])?;
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
        outbox(tx, std::slice::from_ref(&ev))?;
    }
    last_seq.insert(m.room, seq);
    Ok(Appended::New(StoredMessage {
        room: m.room,
        seq,
        sender: m.sender.clone(),
        ts_ms: ts,
        kind: m.kind,
        text: Some(m.text.clone()),
        title: m.title.clone(),
        state: MessageState::Normal,
    }))
}

fn outbox(tx: &Transaction<'_>, events: &[ComplianceEvent]) -> Result<()> {
    let mut st = tx.prepare_cached(
        "INSERT INTO compliance_outbox(at, kind, room_id, room_name, user_name, seq, text, detail)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )?;
    for e in events {
        st.execute(params![
            e.at_ms,
            e.kind,
            e.room.as_ref().map(|(id, _)| id.0),
            e.room.as_ref().map(|(_, n)| n.as_str()),
            e.user,
            e.seq.map(|s| s as i64),
            e.text,
            e.detail
        ])?;
    }
    Ok(())
}

fn apply_change(
    tx: &Transaction<'_>,
    c: &Change,
    last_seq: &mut HashMap<RoomId, u64>,
) -> Result<()> {
    match c {
        Change::PutUser(u) => {
            tx.prepare_cached(
                "INSERT INTO users(id, name, display_name, password_hash, policy, admin, disabled)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, display_name = ?3, password_hash = ?4, policy = ?5,
                 admin = ?6, disabled = ?7",
            )?
            .execute(params![u.id.0, u.name, u.display_name, u.password_hash, u.policy, u.admin, u.disabled])?;
        }
        Change::DeleteUser(id) => {
            tx.execute("DELETE FROM users WHERE id = ?", [id.0])?;
            tx.execute(
                "DELETE FROM group_members WHERE kind = 0 AND member = ?",
                [id.0],
            )?;
            tx.execute(
                "DELETE FROM category_entries WHERE kind = 0 AND member = ?",
                [id.0],
            )?;
            tx.execute(
                "DELETE FROM room_entries WHERE kind = 0 AND member = ?",
                [id.0],
            )?;
            tx.execute("DELETE FROM followed WHERE user_id = ?", [id.0])?;
            tx.execute("DELETE FROM invitations WHERE user_id = ?", [id.0])?;
        }
        Change::PutGroup(g) => {
            tx.prepare_cached("INSERT INTO groups(id, name) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET name = ?2")?
                .execute(params![g.id.0, g.name])?;
            tx.execute("DELETE FROM group_members WHERE group_id = ?", [g.id.0])?;
            let mut st = tx.prepare_cached(
                "INSERT INTO group_members(group_id, kind, member) VALUES (?, ?, ?)",
            )?;
            for e in &g.members {
                let (k, m) = entry_parts(*e);
                st.execute(params![g.id.0, k, m])?;
            }
        }
        Change::DeleteGroup(id) => {
            tx.execute("DELETE FROM groups WHERE id = ?", [id.0])?;
            tx.execute("DELETE FROM group_members WHERE group_id = ?", [id.0])?;
            tx.execute(
                "DELETE FROM group_members WHERE kind = 1 AND member = ?",
                [id.0],
            )?;
            tx.execute(
                "DELETE FROM category_entries WHERE kind = 1 AND member = ?",
                [id.0],
            )?;
            tx.execute(
                "DELETE FROM room_entries WHERE kind = 1 AND member = ?",
                [id.0],
            )?;
        }
        Change::PutPolicy(name, enabled) => {
            tx.execute(
                "INSERT INTO policies(name, enabled) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET enabled = ?2",
                params![name, enabled],
            )?;
        }
        Change::PutCategory(cat) => {
            tx.prepare_cached(
                "INSERT INTO categories(id, name, description, invitations, file_upload, history)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, description = ?3, invitations = ?4, file_upload = ?5,
                 history = ?6",
            )?
            .execute(params![cat.id.0, cat.name, cat.description, cat.invitations, cat.file_upload, cat.history])?;
            tx.execute(
                "DELETE FROM category_entries WHERE category_id = ?",
                [cat.id.0],
            )?;
            let mut st = tx.prepare_cached(
                "INSERT INTO category_entries(category_id, list, kind, member) VALUES (?, ?, ?, ?)",
            )?;
            for (list, acl) in [
                (CAT_ALLOWED, &cat.allowed),
                (CAT_DENIED, &cat.denied),
                (CAT_CREATORS, &cat.creators),
            ] {
                for e in acl.entries() {
                    let (k, m) = entry_parts(e);
                    st.execute(params![cat.id.0, list, k, m])?;
                }
            }
        }
        Change::DeleteCategory(id) => {
            tx.execute("DELETE FROM categories WHERE id = ?", [id.0])?;
            tx.execute("DELETE FROM category_entries WHERE category_id = ?", [id.0])?;
        }
        Change::PutRoom(r) => {
            tx.prepare_cached(
                "INSERT INTO rooms(id, name, description, category_id, type, privacy, invitations, addin, disabled,
                 created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, description = ?3, category_id = ?4, type = ?5,
                 privacy = ?6, invitations = ?7, addin = ?8, disabled = ?9",
            )?
            .execute(params![
                r.id.0,
                r.name,
                r.description,
                r.category.0,
                type_code(r.room_type),
                privacy_code(r.privacy),
                if r.invitations == Invitations::Off { 1 } else { 0 },
                r.addin,
                r.disabled,
                r.created_at
            ])?;
            tx.prepare_cached("DELETE FROM room_entries WHERE room_id = ?")?
                .execute([r.id.0])?;
            let mut st = tx.prepare_cached(
                "INSERT INTO room_entries(room_id, list, kind, member) VALUES (?, ?, ?, ?)",
            )?;
            for list in [RoomList::Managers, RoomList::Presenters, RoomList::Members] {
                for e in r.list(list).entries() {
                    let (k, m) = entry_parts(e);
                    st.execute(params![r.id.0, list_code(list), k, m])?;
                }
            }
        }
        Change::DeleteRoom(id) => {
            tx.execute("DELETE FROM rooms WHERE id = ?", [id.0])?;
            tx.execute("DELETE FROM room_entries WHERE room_id = ?", [id.0])?;
            tx.execute("DELETE FROM messages WHERE room_id = ?", [id.0])?;
            tx.execute("DELETE FROM followed WHERE room_id = ?", [id.0])?;
            tx.execute("DELETE FROM invitations WHERE room_id = ?", [id.0])?;
            // Room ids are never reused (counters), so the sequence can go.
            last_seq.remove(id);
        }
        Change::PutSetting(key, value) => {
            tx.execute(
                "INSERT INTO settings(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                params![key, value],
            )?;
        }
        Change::PutAddin(name, url) => {
            tx.execute(
                "INSERT INTO addins(name, url) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET url = ?2",
                params![name, url],
            )?;
        }
        Change::DeleteAddin(name) => {
            tx.execute("DELETE FROM addins WHERE name = ?", [name])?;
        }
    }
    Ok(())
}
