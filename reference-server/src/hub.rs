//! Live state: endpoint sessions, who is in which room, presence, and the
//! fan-out of events to connected endpoints.
//!
//! Nothing here is persisted; it is rebuilt by clients reconnecting.
//!
//! Delivery works like this. Every room has a [`RoomLive`] behind its own
//! mutex holding the room's last published sequence number and the sessions
//! that joined it. The publisher (one task fed by the store's commit channel,
//! so per-room order is commit order) locks the room, bumps `last_seq` and
//! `try_send`s the pre-serialised frame to each session's connection queue.
//! A full queue closes that connection (slow consumer, close code 4008)
//! instead of waiting: one stalled reader never delays the others. The client
//! resumes from its last sequence number and the store fills the gap.
//!
//! Lock order: a room's mutex before a session's mutex; the session table and
//! the user table are never held while taking either.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use pchat_protocol::{close, Event, PresenceState, RemovedReason};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::{RoomId, UserId};
use crate::metrics::Metrics;

/// An item on a connection's outbound queue.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// A message event; `frame` is its serialised JSON, shared by all recipients.
    Message {
        room: RoomId,
        seq: u64,
        frame: Frame,
    },
    /// Any other event, already serialised.
    Frame(Frame),
    /// The endpoint joined `room`; messages after `upto` follow on the stream.
    Joined { room: RoomId, upto: u64 },
    /// The endpoint is no longer in `room`; with a reason, tell the client.
    Left {
        room: RoomId,
        reason: Option<RemovedReason>,
    },
}

/// Closes one connection from elsewhere, with a code.
#[derive(Debug, Default)]
pub struct CloseSignal {
    code: AtomicU16,
    token: CancellationToken,
}

impl CloseSignal {
    pub fn fire(&self, code: u16) {
        // The first code wins.
        let _ = self
            .code
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }

    pub fn code(&self) -> u16 {
        self.code.load(Ordering::SeqCst)
    }

    pub async fn fired(&self) {
        self.token.cancelled().await
    }
}

/// A connected stream of a session.
#[derive(Clone, Debug)]
pub struct Conn {
    pub id: u64,
    pub tx: mpsc::Sender<Outbound>,
    pub close: Arc<CloseSignal>,
}

/// One endpoint of one user: its joined rooms outlive a dropped connection
/// for the linger period.
#[derive(Debug)]
pub struct Session {
    pub user: UserId,
    /// The user's name, for the events that name them.
    pub user_name: String,
    pub endpoint: String,
    state: Mutex<SessionState>,
}

#[derive(Debug, Default)]
struct SessionState {
    rooms: HashSet<RoomId>,
    conn: Option<Conn>,
    /// Bumped on every connect and disconnect, so a linger timer knows
    /// whether it is still the latest.
    generation: u64,
    expired: bool,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().expect("session lock poisoned")
    }

    /// Queues an item for the connected stream, if any. Returns whether it was queued.
    fn deliver(&self, item: Outbound, metrics: &Metrics) -> bool {
        let mut st = self.lock();
        let Some(conn) = &st.conn else { return false };
        match conn.tx.try_send(item) {
            Ok(()) => {
                metrics.deliveries.inc();
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.slow_consumer_closes.inc();
                conn.close.fire(close::SLOW_CONSUMER);
                st.conn = None;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                st.conn = None;
                false
            }
        }
    }

    pub fn rooms(&self) -> Vec<RoomId> {
        self.lock().rooms.iter().copied().collect()
    }

    pub fn is_connected(&self) -> bool {
        self.lock().conn.is_some()
    }
}

/// Live state of one room.
#[derive(Debug, Default)]
pub struct RoomLive {
    pub last_seq: u64,
    subs: HashMap<usize, Arc<Session>>,
    participants: HashMap<UserId, u32>,
    /// Whether join/leave/presence notifications flow (PC-12.3 hysteresis).
    notify: bool,
}

fn session_key(s: &Arc<Session>) -> usize {
    Arc::as_ptr(s) as usize
}

#[derive(Debug, Default)]
struct UserLive {
    presence: PresenceState,
    sessions: Vec<Arc<Session>>,
}

/// The live state of the whole server.
pub struct Hub {
    rooms: RwLock<HashMap<RoomId, Arc<Mutex<RoomLive>>>>,
    sessions: Mutex<HashMap<(UserId, String), Arc<Session>>>,
    users: Mutex<HashMap<UserId, UserLive>>,
    next_conn: AtomicU64,
    metrics: Arc<Metrics>,
    linger: Duration,
    queue: usize,
    /// The configured participant-update limit, for removals the hub starts
    /// itself (expiry, revocation): kept here so they follow the same
    /// notification rule as a leave, instead of notifying without limit.
    update_limit: std::sync::atomic::AtomicUsize,
    /// Where (room, user name, joined) is reported when a user's presence in
    /// a room begins or ends, for the compliance record.
    notes: Option<mpsc::UnboundedSender<Note>>,
}

/// A message to the compliance recorder of participant changes.
pub enum Note {
    /// A user's presence in a room began (`joined`) or ended.
    Participant {
        room: RoomId,
        user: String,
        joined: bool,
    },
    /// Answered once every note sent before it has been recorded.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// What a new connection starts from.
pub struct Attached {
    pub conn: Conn,
    pub rx: mpsc::Receiver<Outbound>,
    /// Every joined room with the last sequence number published at attach time.
    pub rooms: Vec<(RoomId, u64)>,
    /// The connection this one replaced, if any.
    pub replaced: bool,
}

impl Hub {
    pub fn new(
        metrics: Arc<Metrics>,
        linger: Duration,
        queue: usize,
        notes: Option<mpsc::UnboundedSender<Note>>,
    ) -> Hub {
        Hub {
            rooms: RwLock::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            metrics,
            linger,
            queue: queue.max(1),
            update_limit: std::sync::atomic::AtomicUsize::new(75),
            notes,
        }
    }

    /// Sets the last published sequence number of rooms loaded from the store.
    pub fn init_rooms(&self, last_seqs: impl IntoIterator<Item = (RoomId, u64)>) {
        let mut rooms = self.rooms.write().expect("rooms lock poisoned");
        for (id, seq) in last_seqs {
            rooms.insert(
                id,
                Arc::new(Mutex::new(RoomLive {
                    last_seq: seq,
                    notify: true,
                    ..Default::default()
                })),
            );
        }
    }

    fn room(&self, id: RoomId) -> Arc<Mutex<RoomLive>> {
        if let Some(r) = self.rooms.read().expect("rooms lock poisoned").get(&id) {
            return r.clone();
        }
        self.rooms
            .write()
            .expect("rooms lock poisoned")
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Mutex::new(RoomLive {
                    notify: true,
                    ..Default::default()
                }))
            })
            .clone()
    }

    /// The last published sequence number of a room.
    pub fn last_seq(&self, id: RoomId) -> u64 {
        self.room(id).lock().expect("room lock poisoned").last_seq
    }

    /// Publishes a committed message to every session in its room.
    pub fn publish(&self, room: RoomId, seq: u64, frame: Frame) {
        let live = self.room(room);
        let mut live = live.lock().expect("room lock poisoned");
        if seq <= live.last_seq {
            return;
        }
        live.last_seq = seq;
        for s in live.subs.values() {
            s.deliver(
                Outbound::Message {
                    room,
                    seq,
                    frame: frame.clone(),
                },
                &self.metrics,
            );
        }
    }

    /// Sends a non-message event to every session in a room.
    pub fn broadcast(&self, room: RoomId, event: &Event) {
        let frame = to_frame(event);
        let live = self.room(room);
        let live = live.lock().expect("room lock poisoned");
        for s in live.subs.values() {
            s.deliver(Outbound::Frame(frame.clone()), &self.metrics);
        }
    }

    /// Sends an event to every connected endpoint of a user.
    pub fn to_user(&self, user: UserId, event: &Event) {
        let frame = to_frame(event);
        for s in self.user_sessions(user) {
            s.deliver(Outbound::Frame(frame.clone()), &self.metrics);
        }
    }

    fn user_sessions(&self, user: UserId) -> Vec<Arc<Session>> {
        let users = self.users.lock().expect("users lock poisoned");
        users
            .get(&user)
            .map(|u| u.sessions.clone())
            .unwrap_or_default()
    }

    /// The session of (user, endpoint), if there is one.
    pub fn find_session(&self, user: UserId, endpoint: &str) -> Option<Arc<Session>> {
        let sessions = self.sessions.lock().expect("sessions lock poisoned");
        sessions.get(&(user, endpoint.to_owned())).cloned()
    }

    /// The session of (user, endpoint), created when absent.
    pub fn session(
        self: &Arc<Self>,
        user: UserId,
        user_name: &str,
        endpoint: &str,
    ) -> Arc<Session> {
        let key = (user, endpoint.to_owned());
        let mut sessions = self.sessions.lock().expect("sessions lock poisoned");
        if let Some(s) = sessions.get(&key) {
            return s.clone();
        }
        let s = Arc::new(Session {
            user,
            user_name: user_name.to_owned(),
            endpoint: endpoint.to_owned(),
            state: Mutex::default(),
        });
        sessions.insert(key, s.clone());
        drop(sessions);
        self.users
            .lock()
            .expect("users lock poisoned")
            .entry(user)
            .or_default()
            .sessions
            .push(s.clone());
        self.metrics.sessions.inc();
        // A session made by a join without a stream lingers like a dropped one.
        self.start_linger(&s);
        s
    }

    /// Whether (user, endpoint) has a session, and how many sessions the user has.
    pub fn sessions_of(&self, user: UserId, endpoint: &str) -> (bool, usize) {
        let sessions = self.user_sessions(user);
        (
            sessions.iter().any(|s| s.endpoint == endpoint),
            sessions.len(),
        )
    }

    /// Attaches a new stream to a session, replacing (and closing) any older one.
    pub fn attach(&self, session: &Arc<Session>) -> Attached {
        let (tx, rx) = mpsc::channel(self.queue);
        let conn = Conn {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            tx,
            close: Arc::new(CloseSignal::default()),
        };
        let (rooms, replaced) = {
            let mut st = session.lock();
            let replaced = match st.conn.replace(conn.clone()) {
                Some(old) => {
                    old.close.fire(close::REPLACED);
                    true
                }
                None => false,
            };
            st.generation += 1;
            st.expired = false;
            (st.rooms.iter().copied().collect::<Vec<_>>(), replaced)
        };
        let rooms = rooms.into_iter().map(|r| (r, self.last_seq(r))).collect();
        Attached {
            conn,
            rx,
            rooms,
            replaced,
        }
    }

    /// Sets the participant-update limit the hub applies to removals it
    /// makes itself.
    pub fn set_update_limit(&self, limit: usize) {
        self.update_limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
    }

    fn update_limit(&self) -> usize {
        self.update_limit.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Detaches a finished stream; the session lingers before it leaves its rooms.
    pub fn detach(self: &Arc<Self>, session: &Arc<Session>, conn_id: u64) {
        {
            let mut st = session.lock();
            if st.conn.as_ref().is_some_and(|c| c.id == conn_id) {
                st.conn = None;
            }
            if st.conn.is_some() {
                return;
            }
            st.generation += 1;
        }
        self.start_linger(session);
    }

    fn start_linger(self: &Arc<Self>, session: &Arc<Session>) {
        let generation = session.lock().generation;
        let hub = Arc::clone(self);
        let session = session.clone();
        let linger = self.linger;
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            hub.expire(&session, generation);
        });
    }

    /// Ends a session that stayed disconnected for the whole linger period.
    fn expire(&self, session: &Arc<Session>, generation: u64) {
        let rooms = {
            let mut st = session.lock();
            if st.conn.is_some() || st.generation != generation || st.expired {
                return;
            }
            st.expired = true;
            std::mem::take(&mut st.rooms)
        };
        {
            let mut sessions = self.sessions.lock().expect("sessions lock poisoned");
            let key = (session.user, session.endpoint.clone());
            if sessions.get(&key).is_some_and(|s| Arc::ptr_eq(s, session)) {
                sessions.remove(&key);
            }
        }
        {
            let mut users = self.users.lock().expect("users lock poisoned");
            if let Some(u) = users.get_mut(&session.user) {
                u.sessions.retain(|s| !Arc::ptr_eq(s, session));
                if u.sessions.is_empty() {
                    users.remove(&session.user);
                }
            }
        }
        self.metrics.sessions.dec();
        let limit = self.update_limit();
        for room in rooms {
            self.unsubscribe(room, session, None, limit);
        }
    }

    /// Joins a session to a room. Returns the last published sequence number:
    /// the stream delivers every message after it.
    pub fn join(&self, room: RoomId, session: &Arc<Session>, update_limit: usize) -> u64 {
        let live = self.room(room);
        let mut live = live.lock().expect("room lock poisoned");
        let upto = live.last_seq;
        let newly = live
            .subs
            .insert(session_key(session), session.clone())
            .is_none();
        {
            let mut st = session.lock();
            st.rooms.insert(room);
            if let Some(conn) = &st.conn {
                // Under the room lock: nothing for this room can be queued before it.
                if conn.tx.try_send(Outbound::Joined { room, upto }).is_err() {
                    conn.close.fire(close::SLOW_CONSUMER);
                    st.conn = None;
                }
            }
        }
        if newly {
            let count = live.participants.entry(session.user).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.metrics.participants.inc();
                self.note(room, &session.user_name, true);
                update_notify(&mut live, update_limit);
                if live.notify {
                    self.participant_event(&live, room, &session.user_name, true);
                }
            }
        }
        upto
    }

    /// Takes a session out of a room (leave, expiry, or removal with a reason).
    pub fn unsubscribe(
        &self,
        room: RoomId,
        session: &Arc<Session>,
        reason: Option<RemovedReason>,
        update_limit: usize,
    ) {
        let live = self.room(room);
        let mut live = live.lock().expect("room lock poisoned");
        let was_in = live.subs.remove(&session_key(session)).is_some();
        {
            let mut st = session.lock();
            st.rooms.remove(&room);
            if let Some(conn) = &st.conn {
                if conn.tx.try_send(Outbound::Left { room, reason }).is_err() {
                    conn.close.fire(close::SLOW_CONSUMER);
                    st.conn = None;
                }
            }
        }
        if !was_in {
            return;
        }
        let user = session.user;
        let gone = match live.participants.get_mut(&user) {
            Some(c) if *c > 1 => {
                *c -= 1;
                false
            }
            Some(_) => {
                live.participants.remove(&user);
                true
            }
            None => false,
        };
        if gone {
            self.metrics.participants.dec();
            self.note(room, &session.user_name, false);
            if live.notify {
                self.participant_event(&live, room, &session.user_name, false);
            }
            update_notify(&mut live, update_limit);
        }
    }

    /// Removes from a room every session whose user `keep` rejects.
    pub fn remove_where(&self, room: RoomId, reason: RemovedReason, keep: impl Fn(UserId) -> bool) {
        let victims: Vec<Arc<Session>> = {
            let live = self.room(room);
            let live = live.lock().expect("room lock poisoned");
            live.subs
                .values()
                .filter(|s| !keep(s.user))
                .cloned()
                .collect()
        };
        let limit = self.update_limit();
        for s in victims {
            self.unsubscribe(room, &s, Some(reason), limit);
        }
    }

    /// Forgets a deleted room after removing everyone from it.
    pub fn drop_room(&self, room: RoomId) {
        self.remove_where(room, RemovedReason::Deleted, |_| false);
        self.rooms
            .write()
            .expect("rooms lock poisoned")
            .remove(&room);
    }

    /// Closes every stream of a user with `code` (disabled user, policy off).
    pub fn close_user(&self, user: UserId, code: u16) {
        for s in self.user_sessions(user) {
            let st = s.lock();
            if let Some(c) = &st.conn {
                c.close.fire(code);
            }
        }
    }

    fn note(&self, room: RoomId, user: &str, joined: bool) {
        if let Some(n) = &self.notes {
            let _ = n.send(Note::Participant {
                room,
                user: user.to_owned(),
                joined,
            });
        }
    }

    /// Waits until every participant change noted so far is recorded, so a
    /// join or leave is answered only after its compliance record is durable.
    pub async fn flush_notes(&self) {
        if let Some(n) = &self.notes {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if n.send(Note::Flush(tx)).is_ok() {
                // An error means the recorder stopped (shutdown): nothing to wait for.
                let _ = rx.await;
            }
        }
    }

    fn participant_event(&self, live: &RoomLive, room: RoomId, name: &str, joined: bool) {
        let name = name.to_owned();
        let ev = if joined {
            Event::ParticipantJoined {
                room: room.0 as u64,
                user: name,
            }
        } else {
            Event::ParticipantLeft {
                room: room.0 as u64,
                user: name,
            }
        };
        let frame = to_frame(&ev);
        for s in live.subs.values() {
            s.deliver(Outbound::Frame(frame.clone()), &self.metrics);
        }
    }

    /// Participants of a room (user ids), and whether notifications flow.
    pub fn participants(&self, room: RoomId) -> Vec<UserId> {
        let live = self.room(room);
        let live = live.lock().expect("room lock poisoned");
        live.participants.keys().copied().collect()
    }

    pub fn participant_count(&self, room: RoomId) -> usize {
        self.room(room)
            .lock()
            .expect("room lock poisoned")
            .participants
            .len()
    }

    /// The presence others see for a user.
    pub fn shown_presence(&self, user: UserId) -> PresenceState {
        let users = self.users.lock().expect("users lock poisoned");
        match users.get(&user) {
            None => PresenceState::Offline,
            Some(u) if u.sessions.is_empty() => PresenceState::Offline,
            Some(u) if u.presence == PresenceState::AppearOffline => PresenceState::Offline,
            Some(u) => u.presence,
        }
    }

    /// The presence a user set for themself.
    pub fn own_presence(&self, user: UserId) -> PresenceState {
        let users = self.users.lock().expect("users lock poisoned");
        users.get(&user).map(|u| u.presence).unwrap_or_default()
    }

    /// Sets a user's presence and tells everyone sharing a notifying room.
    pub fn set_presence(&self, user: UserId, name: String, state: PresenceState) {
        let sessions = {
            let mut users = self.users.lock().expect("users lock poisoned");
            let u = users.entry(user).or_default();
            u.presence = state;
            u.sessions.clone()
        };
        let shown = if state == PresenceState::AppearOffline {
            PresenceState::Offline
        } else {
            state
        };
        let frame = to_frame(&Event::Presence {
            user: name,
            state: shown,
        });
        let rooms: HashSet<RoomId> = sessions.iter().flat_map(|s| s.rooms()).collect();
        let mut told: HashSet<usize> = HashSet::new();
        for room in rooms {
            let live = self.room(room);
            let live = live.lock().expect("room lock poisoned");
            if !live.notify {
                continue;
            }
            for (key, s) in &live.subs {
                if told.insert(*key) {
                    s.deliver(Outbound::Frame(frame.clone()), &self.metrics);
                }
            }
        }
    }

    /// Closes every stream (shutdown).
    pub fn close_all(&self, code: u16) {
        let sessions: Vec<Arc<Session>> = self
            .sessions
            .lock()
            .expect("sessions lock poisoned")
            .values()
            .cloned()
            .collect();
        for s in sessions {
            if let Some(c) = &s.lock().conn {
                c.close.fire(code);
            }
        }
    }
}

fn update_notify(live: &mut RoomLive, limit: usize) {
    let n = live.participants.len();
    if n > limit {
        live.notify = false;
    } else if (n as f64) < 0.8 * limit as f64 {
        live.notify = true;
    }
}

/// A serialised event; cloning it shares the bytes.
pub type Frame = axum::extract::ws::Utf8Bytes;

/// Serialises an event once for many recipients.
pub fn to_frame(event: &Event) -> Frame {
    // Serialising these plain structs cannot fail.
    Frame::from(serde_json::to_string(event).expect("events serialise"))
}
