//! Persistence: the [`Store`] trait and its two implementations, SQLite
//! (`sqlite`, one node) and PostgreSQL (`postgres`, a pool of nodes).
//!
//! The store is the source of truth; the [`crate::directory`] is a cache of
//! its directory records that is loaded once at start and then kept in step by
//! writing through. Messages are never cached: history, resume catch-up and
//! search read them from the store.
//!
//! Invariants every implementation keeps:
//! - `append` returns only after the message and its compliance record are
//!   durable, and hands committed messages to the commit channel in sequence
//!   order per room;
//! - per-room sequence numbers start at 1, are dense and never reused;
//! - an append with a `client_key` already used by the same sender in the same
//!   room returns the original message (or a conflict), never a new one.

pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use pchat_protocol::MessageKind;

use crate::domain::{CategoryId, CategoryRec, GroupId, GroupRec, RoomId, RoomRec, UserId, UserRec};

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("store configuration: {0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("the store is shut down")]
    Closed,
    #[error("store task failed: {0}")]
    Task(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A message to append.
#[derive(Clone, Debug)]
pub struct NewMessage {
    pub room: RoomId,
    pub sender: String,
    pub kind: MessageKind,
    pub text: String,
    pub title: Option<String>,
    pub client_key: Option<String>,
    /// False in categories whose history is off: the row keeps its sequence
    /// number and idempotency key but no readable text.
    pub keep_text: bool,
    /// The room's name, when compliance is on (the record names the room).
    pub compliance_room_name: Option<String>,
}

/// A message as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub room: RoomId,
    pub seq: u64,
    pub sender: String,
    pub ts_ms: i64,
    pub kind: MessageKind,
    /// None where history is off or an administrator removed it.
    pub text: Option<String>,
    pub title: Option<String>,
    pub state: MessageState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageState {
    Normal,
    Replaced,
    Removed,
}

impl MessageState {
    pub fn code(self) -> i64 {
        match self {
            MessageState::Normal => 0,
            MessageState::Replaced => 1,
            MessageState::Removed => 2,
        }
    }

    pub fn from_code(c: i64) -> MessageState {
        match c {
            1 => MessageState::Replaced,
            2 => MessageState::Removed,
            _ => MessageState::Normal,
        }
    }
}

/// The outcome of an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    New(StoredMessage),
    /// The key was used before with the same content: the original message.
    Existing(StoredMessage),
    /// The key was used before with different content.
    Conflict,
}

/// Which slice of a room's history to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slice {
    /// The most recent messages.
    Latest,
    /// Messages with seq < n, most recent first (returned ascending).
    Before(u64),
    /// Messages with seq > n, oldest first.
    After(u64),
    /// Messages with lo < seq <= hi (resume catch-up), oldest first.
    Between(u64, u64),
}

/// A message search.
#[derive(Clone, Debug, Default)]
pub struct SearchQuery {
    pub rooms: Vec<RoomId>,
    /// Every term must occur; already lower-cased when not case-sensitive.
    pub terms: Vec<String>,
    pub case_sensitive: bool,
    pub author: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub limit: usize,
}

/// One event for the compliance database (PC-14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComplianceEvent {
    pub kind: &'static str,
    pub at_ms: i64,
    pub room: Option<(RoomId, String)>,
    pub user: String,
    pub seq: Option<u64>,
    pub text: Option<String>,
    pub detail: Option<String>,
}

/// A compliance record as kept in the compliance database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComplianceRecord {
    pub id: i64,
    pub event: ComplianceEvent,
}

/// A stored invitation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvitationRec {
    pub user: UserId,
    pub room: RoomId,
    pub invited_by: String,
    pub at_ms: i64,
}

/// A write to the directory records. Serialisable: a pool's nodes replay
/// each other's changes from the store's directory log.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Change {
    PutUser(UserRec),
    DeleteUser(UserId),
    PutGroup(GroupRec),
    DeleteGroup(GroupId),
    PutPolicy(String, bool),
    PutCategory(CategoryRec),
    DeleteCategory(CategoryId),
    PutRoom(RoomRec),
    DeleteRoom(RoomId),
    /// A JSON document under a key (service and compliance configuration).
    PutSetting(String, String),
    PutAddin(String, String),
    DeleteAddin(String),
}

/// What id space to reserve from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    User,
    Group,
    Category,
    Room,
}

/// Everything the directory is built from.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub users: Vec<UserRec>,
    pub groups: Vec<GroupRec>,
    pub policies: Vec<(String, bool)>,
    pub categories: Vec<CategoryRec>,
    pub rooms: Vec<RoomRec>,
    pub last_seqs: Vec<(RoomId, u64)>,
    pub settings: Vec<(String, String)>,
    pub addins: Vec<(String, String)>,
    /// Position in the shared directory log this snapshot includes (pool
    /// store only; see [`Store::apply`]).
    pub dir_position: Option<u64>,
}

/// An administrator's selection of messages to remove or replace.
#[derive(Clone, Debug, Default)]
pub struct MessageFilter {
    pub author: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Lower-cased keywords; every one must occur.
    pub keywords: Vec<String>,
}

/// A held pool-wide lock; released when dropped.
pub struct DirectoryLock(pub Box<dyn Send + Sync>);

/// Whether a compliance pump waits for another node's pump of the same
/// database (a pool's nodes share one compliance database).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pump {
    /// Skips the round when another node is pumping: the periodic pump,
    /// which would otherwise wait for the lock and read the same rows again.
    IfFree,
    /// Waits for it, so that everything recorded before the call is moved:
    /// an export and a node's last pump at shutdown.
    All,
}

/// The persistence interface. One implementation per backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads every directory record.
    async fn load(&self) -> Result<Snapshot>;
    /// Reserves `count` consecutive fresh ids and returns the first.
    async fn reserve_ids(&self, kind: IdKind, count: u64) -> Result<i64>;
    /// Applies directory writes and their audit records atomically. A
    /// store shared by several nodes returns the changes' position in its
    /// directory log: every node, the caller included, then applies them from
    /// the log in log order (so all converge), and the caller waits for that.
    /// A single-node store returns None and the caller applies them itself.
    async fn apply(&self, changes: Vec<Change>, audit: Vec<ComplianceEvent>)
        -> Result<Option<u64>>;
    /// Takes the pool-wide directory-write lock (a shared store; None for a
    /// single node, whose own mutex suffices). Held until the guard drops.
    async fn directory_lock(&self) -> Result<Option<DirectoryLock>> {
        Ok(None)
    }
    /// The directory log's current top (a shared store), or None.
    async fn dir_position(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    /// Appends a message durably (see the module invariants).
    async fn append(&self, msg: NewMessage) -> Result<Appended>;
    /// Records compliance events that change nothing else (join, part, backchat).
    async fn record(&self, events: Vec<ComplianceEvent>) -> Result<()>;
    /// Reads a slice of a room's history, at most `limit` messages, ascending,
    /// and whether more lay beyond the limit.
    async fn messages(
        &self,
        room: RoomId,
        slice: Slice,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool)>;
    /// Searches message text; newest first; and whether the limit cut it.
    async fn search(&self, query: SearchQuery) -> Result<(Vec<StoredMessage>, bool)>;
    async fn set_followed(&self, user: UserId, room: RoomId, follow: bool) -> Result<()>;
    async fn followed(&self, user: UserId) -> Result<Vec<RoomId>>;
    async fn add_invitations(&self, invitations: Vec<InvitationRec>) -> Result<()>;
    /// Returns the user's pending invitations and marks them delivered.
    async fn take_invitations(&self, user: UserId) -> Result<Vec<InvitationRec>>;
    /// Hides messages older than `before_ms`; returns how many.
    async fn clear_history(
        &self,
        room: RoomId,
        before_ms: i64,
        audit: ComplianceEvent,
    ) -> Result<u64>;
    /// Removes (or replaces with `replacement`) the selected messages; returns their seqs.
    async fn remove_messages(
        &self,
        room: RoomId,
        filter: MessageFilter,
        replacement: Option<String>,
        audit: ComplianceEvent,
    ) -> Result<Vec<u64>>;
    /// Moves pending compliance events into the compliance database; returns
    /// how many (0: nothing pending, or with [`Pump::IfFree`] another node
    /// of the pool is pumping).
    async fn pump_compliance(&self, mode: Pump) -> Result<usize>;
    /// Reads up to `limit` compliance records awaiting export, oldest first.
    async fn compliance_pending(&self, limit: usize) -> Result<Vec<ComplianceRecord>>;
    /// Deletes exported compliance records (after the adapter succeeded).
    async fn compliance_delete(&self, ids: Vec<i64>) -> Result<()>;
    /// Flushes and stops accepting writes.
    async fn close(&self) -> Result<()>;
}
