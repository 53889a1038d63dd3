//! The operations of the service, one method per protocol operation.
//!
//! [`App`] ties together the in-memory [`Directory`] (access decisions), the
//! [`Store`] (persistence), the [`Hub`] (live fan-out) and the rate limiter.
//! Handlers in `http` parse requests into calls on it; nothing here knows
//! about HTTP. Submodules group the operations:
//!
//! - `rooms`: categories, rooms, lists, joining, participants;
//! - `messages`: posting, history, search, the publisher task;
//! - `me`: the caller's own state (presence, followed rooms, invitations);
//! - `admin`: administration and bulk provisioning;
//! - `views`: records rendered as wire types.
//!
//! Directory writes are serialised by `admin_guard` (this node's mutex and,
//! in a pool, a PostgreSQL advisory lock for the whole pool, after catching up
//! with the shared directory log): validate against the current directory,
//! write to the store, then apply the same change to the in-memory directory. Readers never wait for the store.

mod admin;
mod me;
mod messages;
pub mod pools;
mod rooms;
pub mod views;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pchat_protocol::{ComplianceConfig, ErrorCode, ServiceConfig};
use tokio_util::sync::CancellationToken;

use crate::auth::Keys;
use crate::config::Config;
use crate::domain::{Directory, RoomId, UserId, OPERATOR};
use crate::error::{ApiError, ApiResult};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{Change, ComplianceEvent, Snapshot, Store};

pub use messages::{run_publisher, HistoryFrom, MessageSearch, Posted};
pub use rooms::{check_endpoint, JOIN_SINCE_MAX};

/// How long a node waits for its own directory change to come back through
/// the shared directory log before it reports an error.
const DIRECTORY_REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings keys in the store.
const SERVICE_KEY: &str = "service";
const COMPLIANCE_KEY: &str = "compliance";

/// Run-time settings changed through the admin API.
#[derive(Clone, Debug)]
pub struct Settings {
    pub service: ServiceConfig,
    pub compliance: ComplianceConfig,
    pub addins: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            service: ServiceConfig {
                messages_on_join: 30,
                participant_update_limit: 75,
                room_management_url: None,
                max_file_size_kb: 20_000,
                disclaimer: None,
            },
            compliance: ComplianceConfig {
                enabled: false,
                interval_s: 900,
            },
            addins: BTreeMap::new(),
        }
    }
}

/// Held while a directory write is validated and committed: this node's
/// mutex and, in a pool, the pool-wide lock.
pub(crate) struct AdminGuard<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    _pool: Option<crate::store::DirectoryLock>,
}

/// The authenticated caller of an operation.
#[derive(Clone, Debug)]
pub struct Caller {
    pub id: UserId,
    pub name: String,
    pub admin: bool,
}

/// The service.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// The stream worker processes, when the node runs them.
    pub workers: Option<Arc<crate::relay::Workers>>,
    /// Bounds on the work a reconnect storm multiplies (PC-2.4b).
    pub admission: crate::admission::Admission,
    /// One permit per stream the node may hold (`limits.max_connections`).
    /// A stream start takes its permit before the upgrade and the stream
    /// holds it until it ends, so the check and the count are one step and
    /// simultaneous upgrades cannot pass the limit together.
    pub stream_slots: Arc<tokio::sync::Semaphore>,
    dir: RwLock<Directory>,
    settings: RwLock<Settings>,
    admin_lock: tokio::sync::Mutex<()>,
    limiter: RateLimiter,
    /// The directory log position applied (pool store; see [`Store::apply`]).
    dir_applied: tokio::sync::watch::Sender<u64>,
    /// The published topology (none for an unpublished deployment).
    topology: RwLock<Option<pools::Published>>,
    /// Other nodes of this pool and when the bus last heard from them.
    pub peers: Mutex<HashMap<String, Instant>>,
}

/// Why a user may not use the service (PC-4.2b, PC-4.3a).
enum Barred {
    /// Deleted (or never known), or disabled.
    Gone,
    /// Their effective policy turns Persistent Chat off.
    PolicyDisabled,
}

fn barred(dir: &Directory, id: UserId) -> Option<Barred> {
    match dir.users.get(&id) {
        None => Some(Barred::Gone),
        Some(u) if u.disabled => Some(Barred::Gone),
        Some(u) if !dir.policy_enabled(u) => Some(Barred::PolicyDisabled),
        Some(_) => None,
    }
}

impl App {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        snapshot: Snapshot,
        keys: Keys,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        notes: tokio::sync::mpsc::UnboundedSender<crate::hub::Note>,
    ) -> ApiResult<Arc<App>> {
        let hub = Arc::new(Hub::new(
            metrics.clone(),
            Duration::from_secs(config.stream.endpoint_linger_s),
            config.stream.queue_events,
            Some(notes),
        ));
        hub.init_rooms(snapshot.last_seqs.iter().map(|(r, s)| (*r, *s)));
        let mut dir = Directory::default();
        for u in snapshot.users {
            dir.users.insert(u.id, u);
        }
        for g in snapshot.groups {
            dir.groups.insert(g.id, g);
        }
        dir.policies = snapshot.policies.into_iter().collect();
        for c in snapshot.categories {
            dir.categories.insert(c.id, c);
        }
        for r in snapshot.rooms {
            dir.rooms.insert(r.id, r);
        }
        dir.reindex();
        let mut settings = Settings::default();
        let mut topology = None;
        for (k, v) in snapshot.settings {
            match k.as_str() {
                pools::TOPOLOGY_KEY => {
                    topology = Some(serde_json::from_str(&v).map_err(ApiError::internal)?)
                }
                SERVICE_KEY => {
                    settings.service = serde_json::from_str(&v).map_err(ApiError::internal)?
                }
                COMPLIANCE_KEY => {
                    settings.compliance = serde_json::from_str(&v).map_err(ApiError::internal)?
                }
                _ => {}
            }
        }
        settings.addins = snapshot.addins.into_iter().collect();
        let (dir_applied, _) = tokio::sync::watch::channel(snapshot.dir_position.unwrap_or(0));
        metrics.rooms.set(dir.rooms.len() as i64);
        metrics.users.set(dir.users.len() as i64);
        let limiter = RateLimiter::new(&config);
        hub.set_update_limit(settings.service.participant_update_limit as usize);
        let workers = match config.stream.workers {
            0 => None,
            n => {
                let cmd = crate::relay::WorkerCommand::from_config(&config.stream)
                    .map_err(ApiError::internal)?;
                Some(crate::relay::Workers::start(n, cmd, shutdown.clone()))
            }
        };
        let admission = crate::admission::Admission::new(&config.admission, &metrics);
        let stream_slots = Arc::new(tokio::sync::Semaphore::new(
            config
                .limits
                .max_connections
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        Ok(Arc::new(App {
            admission,
            stream_slots,
            config,
            store,
            hub,
            keys,
            metrics,
            shutdown,
            workers,
            dir: RwLock::new(dir),
            settings: RwLock::new(settings),
            admin_lock: tokio::sync::Mutex::new(()),
            limiter,
            dir_applied,
            topology: RwLock::new(topology),
            peers: Mutex::new(HashMap::new()),
        }))
    }

    /// A read view of the directory. Never hold it across an await.
    pub fn dir(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        self.dir.read().expect("directory lock poisoned")
    }

    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .expect("settings lock poisoned")
            .clone()
    }

    fn compliance_on(&self) -> bool {
        self.settings
            .read()
            .expect("settings lock poisoned")
            .compliance
            .enabled
    }

    /// Authenticates a bearer token (PC-4.1, PC-4.4).
    pub fn authenticate(&self, token: &str) -> ApiResult<Caller> {
        let unauth = || {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "missing, invalid or expired token",
            )
        };
        let id = self
            .keys
            .verify(token, crate::auth::now_s())
            .ok_or_else(unauth)?;
        let dir = self.dir();
        if id == OPERATOR {
            return Ok(Caller {
                id,
                name: "operator".into(),
                admin: true,
            });
        }
        match barred(&dir, id) {
            Some(Barred::Gone) => return Err(unauth()),
            Some(Barred::PolicyDisabled) => {
                return Err(ApiError::new(
                    ErrorCode::PolicyDisabled,
                    "your policy does not allow Persistent Chat",
                ))
            }
            None => {}
        }
        let user = &dir.users[&id];
        Ok(Caller {
            id,
            name: user.name.clone(),
            admin: user.admin,
        })
    }

    /// Why a stream of `caller` may no longer be served, as its close code:
    /// the user was deleted or disabled (4001), or their policy turned
    /// Persistent Chat off (4003). `None` while they may use the service.
    pub fn lost_service(&self, caller: &Caller) -> Option<u16> {
        use pchat_protocol::close;
        if caller.id == OPERATOR {
            return None;
        }
        barred(&self.dir(), caller.id).map(|b| match b {
            Barred::Gone => close::UNAUTHENTICATED,
            Barred::PolicyDisabled => close::POLICY_DISABLED,
        })
    }

    /// Charges one request (and a post, when `post`) to the caller's buckets.
    pub fn charge(&self, caller: &Caller, post: bool) -> ApiResult<()> {
        if caller.id == OPERATOR {
            return Ok(());
        }
        self.limiter.charge(caller.id, post).map_err(|wait| {
            self.metrics.rate_limited.inc();
            let mut e = ApiError::new(ErrorCode::RateLimited, "too many requests; slow down");
            e.retry_after_ms = Some(wait.as_millis().max(1) as u64);
            e
        })
    }

    /// Writes a compliance record set if compliance is on.
    async fn comply(&self, events: Vec<ComplianceEvent>) -> ApiResult<()> {
        if self.compliance_on() && !events.is_empty() {
            self.store.record(events).await?;
        }
        Ok(())
    }

    fn event(
        &self,
        kind: &'static str,
        room: Option<(RoomId, String)>,
        user: &str,
    ) -> ComplianceEvent {
        ComplianceEvent {
            kind,
            at_ms: now_ms(),
            room,
            user: user.to_owned(),
            seq: None,
            text: None,
            detail: None,
        }
    }

    /// Serialises this node's directory writes and, in a pool, first brings
    /// the directory up to every change already committed by any node, so a
    /// write is validated against the latest directory (a category created
    /// through one node can be used at once through another).
    async fn admin_guard(&self) -> ApiResult<AdminGuard<'_>> {
        let local = self.admin_lock.lock().await;
        let pool = self.store.directory_lock().await?;
        if let Some(top) = self.store.dir_position().await? {
            self.wait_applied(top).await?;
        }
        Ok(AdminGuard {
            _local: local,
            _pool: pool,
        })
    }

    async fn wait_applied(&self, position: u64) -> ApiResult<()> {
        let mut rx = self.dir_applied.subscribe();
        let waited = tokio::time::timeout(
            DIRECTORY_REPLAY_TIMEOUT,
            rx.wait_for(|applied| *applied >= position),
        )
        .await;
        if matches!(waited, Ok(Ok(_))) {
            Ok(())
        } else {
            Err(ApiError::internal(format!(
                "directory change {position} was stored but not yet applied on this node"
            )))
        }
    }

    /// Writes directory changes through the store, then into memory.
    async fn commit(&self, changes: Vec<Change>, audit: Vec<ComplianceEvent>) -> ApiResult<()> {
        let audit = if self.compliance_on() {
            audit
        } else {
            Vec::new()
        };
        match self.store.apply(changes.clone(), audit).await? {
            None => self.apply_changes(changes),
            // A shared store: the change comes back through the directory
            // log, in log order, on every node; wait until it has here.
            Some(position) => self.wait_applied(position).await?,
        }
        Ok(())
    }

    fn apply_changes(&self, changes: Vec<Change>) {
        let mut dir = self.dir.write().expect("directory lock poisoned");
        let mut regroup = false;
        for c in changes {
            if let Change::PutSetting(..) | Change::PutAddin(..) | Change::DeleteAddin(..) = &c {
                self.apply_setting(&c);
            }
            regroup |= apply_to_directory(&mut dir, c);
        }
        if regroup {
            dir.recompute_groups();
        }
        self.metrics.rooms.set(dir.rooms.len() as i64);
        self.metrics.users.set(dir.users.len() as i64);
    }

    /// Mirrors a settings change (made on any node) in this node's settings.
    fn apply_setting(&self, change: &Change) {
        let mut settings = self.settings.write().expect("settings lock poisoned");
        match change {
            Change::PutSetting(k, v) if k == SERVICE_KEY => {
                if let Ok(service) = serde_json::from_str::<ServiceConfig>(v) {
                    self.hub
                        .set_update_limit(service.participant_update_limit as usize);
                    settings.service = service;
                }
            }
            Change::PutSetting(k, v) if k == COMPLIANCE_KEY => {
                if let Ok(c) = serde_json::from_str(v) {
                    settings.compliance = c;
                }
            }
            Change::PutSetting(k, v) if k == pools::TOPOLOGY_KEY => {
                drop(settings);
                self.set_published(v);
            }
            Change::PutAddin(name, url) => {
                settings.addins.insert(name.clone(), url.clone());
            }
            Change::DeleteAddin(name) => {
                settings.addins.remove(name);
            }
            _ => {}
        }
    }

    /// Applies the shared directory log (pool store), in order, on this node.
    pub async fn run_directory_replay(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::store::postgres::DirEntry>,
    ) {
        let this_node = self.config.store.node.clone().unwrap_or_default();
        while let Some(entry) = rx.recv().await {
            if entry.id <= *self.dir_applied.borrow() {
                continue;
            }
            if entry.node == this_node {
                // The writing node tells its own hub once its commit returns.
                self.apply_changes(entry.changes);
            } else {
                self.apply_remote_changes(entry.changes);
            }
            self.dir_applied.send_replace(entry.id);
        }
    }

    /// Applies another node's directory changes and what they mean for the
    /// sessions on this node (what the writing node did for its own).
    fn apply_remote_changes(&self, changes: Vec<Change>) {
        let before: Vec<Option<crate::domain::RoomRec>> = {
            let dir = self.dir();
            changes
                .iter()
                .map(|c| match c {
                    Change::PutRoom(r) => dir.rooms.get(&r.id).cloned(),
                    _ => None,
                })
                .collect()
        };
        self.apply_changes(changes.clone());
        let mut revoke = false;
        for (c, before) in changes.iter().zip(before) {
            match c {
                Change::PutRoom(after) => {
                    if let Some(before) = before {
                        self.after_room_change(&before, after);
                    }
                }
                Change::DeleteRoom(id) => self.hub.drop_room(*id),
                Change::DeleteUser(id) => self
                    .hub
                    .close_user(*id, pchat_protocol::close::UNAUTHENTICATED),
                Change::PutUser(_)
                | Change::PutGroup(_)
                | Change::DeleteGroup(_)
                | Change::PutPolicy(..)
                | Change::PutCategory(_)
                | Change::DeleteCategory(_) => revoke = true,
                Change::PutSetting(..) | Change::PutAddin(..) | Change::DeleteAddin(..) => {}
            }
        }
        if revoke {
            self.revoke_lost_access();
        }
    }

    /// Records the participant joins and parts the hub reports (PC-14.2).
    ///
    /// Notes that queued up while a write was under way are recorded
    /// together, in their order, in one store write (at most
    /// [`NOTES_PER_WRITE`]): joins arriving faster than one commit each
    /// share commits instead of queueing behind each other. A flush is
    /// answered once the write holding every note before it is done.
    pub async fn run_presence_recorder(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::hub::Note>,
    ) {
        use crate::hub::Note;
        let mut notes = Vec::new();
        while rx.recv_many(&mut notes, NOTES_PER_WRITE).await > 0 {
            let mut events = Vec::new();
            let mut flushed = Vec::new();
            {
                let dir = self.dir();
                for note in notes.drain(..) {
                    match note {
                        Note::Participant { room, user, joined } => {
                            let name = dir
                                .rooms
                                .get(&room)
                                .map(|r| r.name.clone())
                                .unwrap_or_default();
                            events.push(self.event(
                                if joined { "JOIN" } else { "PART" },
                                Some((room, name)),
                                &user,
                            ));
                        }
                        Note::Flush(done) => flushed.push(done),
                    }
                }
            }
            let count = events.len();
            if let Err(e) = self.comply(events).await {
                tracing::warn!(error = %e, count, "could not record participant changes");
            }
            for done in flushed {
                let _ = done.send(());
            }
        }
    }
}

/// The most participant notes one store write records.
const NOTES_PER_WRITE: usize = 1_000;

/// Mirrors a store change in the directory; returns whether group closures
/// must be recomputed.
fn apply_to_directory(dir: &mut Directory, change: Change) -> bool {
    use crate::domain::{name_key, NameOwner};
    match change {
        Change::PutUser(u) => {
            if let Some(old) = dir.users.get(&u.id) {
                dir.user_ids.remove(&old.name);
            }
            dir.user_ids.insert(u.name.clone(), u.id);
            dir.users.insert(u.id, u);
            true
        }
        Change::DeleteUser(id) => {
            if let Some(old) = dir.users.remove(&id) {
                dir.user_ids.remove(&old.name);
            }
            let e = crate::domain::Entry::User(id);
            for g in dir.groups.values_mut() {
                g.members.remove(&e);
            }
            for c in dir.categories.values_mut() {
                c.allowed.remove(e);
                c.denied.remove(e);
                c.creators.remove(e);
            }
            for r in dir.rooms.values_mut() {
                r.managers.remove(e);
                r.presenters.remove(e);
                r.members.remove(e);
            }
            true
        }
        Change::PutGroup(g) => {
            if let Some(old) = dir.groups.get(&g.id) {
                dir.group_ids.remove(&old.name);
            }
            dir.group_ids.insert(g.name.clone(), g.id);
            dir.groups.insert(g.id, g);
            true
        }
        Change::DeleteGroup(id) => {
            if let Some(old) = dir.groups.remove(&id) {
                dir.group_ids.remove(&old.name);
            }
            let e = crate::domain::Entry::Group(id);
            for g in dir.groups.values_mut() {
                g.members.remove(&e);
            }
            for c in dir.categories.values_mut() {
                c.allowed.remove(e);
                c.denied.remove(e);
                c.creators.remove(e);
            }
            for r in dir.rooms.values_mut() {
                r.managers.remove(e);
                r.presenters.remove(e);
                r.members.remove(e);
            }
            true
        }
        Change::PutPolicy(name, enabled) => {
            dir.policies.insert(name, enabled);
            false
        }
        Change::PutCategory(c) => {
            if let Some(old) = dir.categories.get(&c.id) {
                dir.names.remove(&name_key(&old.name));
            }
            dir.names
                .insert(name_key(&c.name), NameOwner::Category(c.id));
            dir.categories.insert(c.id, c);
            false
        }
        Change::DeleteCategory(id) => {
            if let Some(old) = dir.categories.remove(&id) {
                dir.names.remove(&name_key(&old.name));
            }
            false
        }
        Change::PutRoom(r) => {
            if let Some(old) = dir.rooms.get(&r.id) {
                dir.names.remove(&name_key(&old.name));
            }
            dir.names.insert(name_key(&r.name), NameOwner::Room(r.id));
            dir.rooms.insert(r.id, r);
            false
        }
        Change::DeleteRoom(id) => {
            if let Some(old) = dir.rooms.remove(&id) {
                dir.names.remove(&name_key(&old.name));
            }
            false
        }
        Change::PutSetting(..) | Change::PutAddin(..) | Change::DeleteAddin(..) => false,
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Per-user token buckets: one for all requests, one for posts (PC-2.3).
struct RateLimiter {
    request: (f64, f64),
    post: (f64, f64),
    buckets: Mutex<HashMap<UserId, Buckets>>,
}

struct Buckets {
    request: f64,
    post: f64,
    at: Instant,
}

impl RateLimiter {
    fn new(cfg: &Config) -> RateLimiter {
        RateLimiter {
            request: (
                cfg.limits.request_rate_per_s,
                cfg.limits.request_burst as f64,
            ),
            post: (cfg.limits.post_rate_per_s, cfg.limits.post_burst as f64),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token; on refusal, how long until one is available.
    fn charge(&self, user: UserId, post: bool) -> Result<(), Duration> {
        let now = Instant::now();
        let mut all = self.buckets.lock().expect("rate limiter lock poisoned");
        let b = all.entry(user).or_insert(Buckets {
            request: self.request.1,
            post: self.post.1,
            at: now,
        });
        let dt = now.duration_since(b.at).as_secs_f64();
        b.at = now;
        b.request = (b.request + dt * self.request.0).min(self.request.1);
        b.post = (b.post + dt * self.post.0).min(self.post.1);
        if b.request < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - b.request) / self.request.0));
        }
        if post && b.post < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - b.post) / self.post.0));
        }
        b.request -= 1.0;
        if post {
            b.post -= 1.0;
        }
        Ok(())
    }
}
