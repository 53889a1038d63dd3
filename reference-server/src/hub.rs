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
//!
//! In a pool, each node's hub holds its own sessions and, as *remote*
//! state, what the other nodes announce on the bus ([`BusEvent`]): which of
//! their users are participants of which rooms, and their presence. A user
//! is a participant of a room while any node has a session of theirs joined
//! to it; `participant_joined` and `participant_left` are sent when that
//! union changes. Remote state of a node that stops announcing itself is
//! dropped ([`Hub::drop_node`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use pchat_protocol::{close, Event, PresenceState, RemovedReason};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::{RoomId, UserId};
use crate::metrics::Metrics;

/// What a node tells the other nodes of its pool about its live state.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum BusEvent {
    /// A user's first session on the sending node joined a room, or its last left.
    Participant {
        room: i64,
        user: i64,
        name: String,
        joined: bool,
    },
    /// A user set their presence on the sending node (`state`), or their
    /// first session there began or their last ended (`online`).
    Presence {
        user: i64,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<PresenceState>,
        online: bool,
    },
    /// An event for every connected endpoint of a user (invitations).
    ToUser { user: i64, event: Event },
    /// An event for everyone in a room that is not a consequence of a
    /// directory change (every node derives those itself).
    Room { room: i64, event: Event },
    /// A node started: the others announce their live state again.
    Hello,
    /// A node is alive (sent every few seconds).
    Alive,
}

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
    /// The route around the connection's task, for a relayed stream.
    pub direct: Option<Arc<Direct>>,
}

impl Conn {
    /// Queues an item for the connection. A message or another event may
    /// take the direct route instead; a join or leave, or an item that
    /// cannot, goes on the queue and ends the direct route until the task
    /// has caught up.
    fn push(&self, item: Outbound) -> Result<Route, mpsc::error::TrySendError<Outbound>> {
        let Some(direct) = &self.direct else {
            return self.tx.try_send(item).map(|()| Route::Queued);
        };
        let mut st = direct.lock();
        if st.parked {
            match &item {
                Outbound::Message { room, seq, frame } => {
                    if let Some(sent) = st.sent.as_mut() {
                        // What the task would do with it (`http::stream`):
                        // drop it when the endpoint is not in the room or
                        // has it already, send it when it is the next one.
                        match sent.get(room).copied() {
                            None => return Ok(Route::Dropped),
                            Some(done) if *seq <= done => return Ok(Route::Dropped),
                            Some(done) if *seq == done + 1 && direct.send.try_send_text(frame) => {
                                sent.insert(*room, *seq);
                                return Ok(Route::Direct);
                            }
                            // A gap to fill from the store, or no credit left.
                            Some(_) => {}
                        }
                    }
                }
                // The task would only send it (presence, participant
                // changes): it neither reads nor moves the record.
                Outbound::Frame(frame) => {
                    if direct.send.try_send_text(frame) {
                        return Ok(Route::Direct);
                    }
                }
                Outbound::Joined { .. } | Outbound::Left { .. } => {}
            }
            st.parked = false;
        }
        // Under the lock: the task parks only while its queue is empty.
        self.tx.try_send(item).map(|()| Route::Queued)
    }
}

/// Where [`Conn::push`] put an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// On the connection's queue.
    Queued,
    /// Straight to the stream worker.
    Direct,
    /// Nowhere: the connection would have dropped it too.
    Dropped,
}

/// The direct route of a relayed stream. A fan-out to thousands of
/// endpoints would otherwise wake thousands of connection tasks for one
/// frame each. While a connection's task is idle with an empty queue, it
/// *parks* here what it last sent per joined room; a message that is the
/// next one of its room then goes from the publishing hub straight to the
/// stream worker (one credit, as the task would take), and the record moves
/// on. Another event (presence, a participant change) goes straight there
/// too and leaves the record as it is. Anything else (a join or leave, a
/// gap, a missing credit) ends the parking and goes on the queue behind
/// everything sent so far; the task takes its record back before it
/// handles the item, and parks again when its queue is empty. Each message
/// is sent once and in order either way: both routes decide under this
/// lock, and the task sends nothing while parked.
pub struct Direct {
    send: crate::relay::DirectSend,
    state: Mutex<DirectState>,
}

#[derive(Default)]
struct DirectState {
    /// Messages may take the direct route.
    parked: bool,
    /// The task's record while it is parked (or until it takes it back).
    sent: Option<HashMap<RoomId, u64>>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").finish_non_exhaustive()
    }
}

impl Direct {
    pub fn new(send: crate::relay::DirectSend) -> Direct {
        Direct {
            send,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DirectState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The task parks `sent` if `queue_empty()` holds (asked under the
    /// lock, so nothing can be queued in between).
    pub fn park(&self, sent: &mut HashMap<RoomId, u64>, queue_empty: impl FnOnce() -> bool) {
        let mut st = self.lock();
        if st.sent.is_none() && queue_empty() {
            st.sent = Some(std::mem::take(sent));
            st.parked = true;
        }
    }

    /// The task takes its record back (before it handles a queued item).
    pub fn unpark(&self, sent: &mut HashMap<RoomId, u64>) {
        let mut st = self.lock();
        st.parked = false;
        if let Some(record) = st.sent.take() {
            *sent = record;
        }
    }
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
    /// Rooms joined while no stream was connected, with the `last_seq` the
    /// join answered: the next stream starts each of them there (PC-9.3b).
    join_points: HashMap<RoomId, u64>,
    conn: Option<Conn>,
    /// Bumped on every connect and disconnect, so a linger timer knows
    /// whether it is still the latest.
    generation: u64,
    /// Requests using the session now (`SessionHold`): it does not expire
    /// while any is held, so a join or a stream start cannot land in a
    /// session that leaves its rooms under it.
    holds: u32,
    expired: bool,
}

impl SessionState {
    /// Whether nothing uses the session any more (no stream, no hold): its
    /// linger begins, and the generation moves on so that older linger
    /// timers lapse. Called where a stream or a hold lets go.
    fn begin_idle(&mut self) -> bool {
        let idle = self.conn.is_none() && self.holds == 0;
        if idle {
            self.generation += 1;
        }
        idle
    }
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().expect("session lock poisoned")
    }

    /// Queues an item for the connected stream, if any. Returns whether it was queued.
    fn deliver(&self, item: Outbound, metrics: &Metrics) -> bool {
        let mut st = self.lock();
        let Some(conn) = &st.conn else { return false };
        match conn.push(item) {
            Ok(route) => {
                // What the direct route drops (as the task would) was
                // never queued or sent, so it is no delivery.
                if route != Route::Dropped {
                    metrics.deliveries.inc();
                }
                if route == Route::Direct {
                    metrics.direct_deliveries.inc();
                }
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
    /// The last sequence number published to the room's sessions.
    pub last_seq: u64,
    /// The last sequence number this node has acknowledged to a poster,
    /// which the publisher may not have fanned out yet.
    acked: u64,
    subs: HashMap<usize, Arc<Session>>,
    participants: HashMap<UserId, u32>,
    /// Participants through other nodes of the pool: name and the nodes.
    remote: HashMap<UserId, (String, HashSet<String>)>,
    /// Every participant, through this node or another, ordered by name:
    /// a page of the participant list costs its length, not the room's.
    by_name: BTreeSet<(String, UserId)>,
    /// Whether join/leave/presence notifications flow (PC-12.3 hysteresis).
    notify: bool,
}

impl RoomLive {
    /// What a session joining now starts after. A committed message not yet
    /// published lies at or below it and is read from the store; the
    /// publisher's copy then arrives as a duplicate and is dropped.
    fn known(&self) -> u64 {
        self.last_seq.max(self.acked)
    }
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
    /// The pool's bus, when this node is one of several.
    bus: std::sync::OnceLock<mpsc::UnboundedSender<BusEvent>>,
    /// Presence announced by other nodes: user -> node -> state, for users
    /// with a session there.
    remote_presence: Mutex<HashMap<UserId, HashMap<String, PresenceState>>>,
    /// Rooms each user is a remote participant of.
    remote_rooms: Mutex<HashMap<UserId, HashSet<RoomId>>>,
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

/// `Hub::session` refused a new session: the user has as many as the
/// limit allows (PC-9.1c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyEndpoints;

/// A request's use of a session (`Hub::session`): while it is held the
/// session does not expire. Dropping the last hold of a session that has no
/// stream starts its linger.
pub struct SessionHold {
    hub: Arc<Hub>,
    session: Arc<Session>,
}

impl SessionHold {
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl Drop for SessionHold {
    fn drop(&mut self) {
        let idle = {
            let mut st = self.session.lock();
            st.holds -= 1;
            st.begin_idle()
        };
        if idle {
            self.hub.start_linger(&self.session);
        }
    }
}

/// What a new connection starts from.
pub struct Attached {
    pub conn: Conn,
    pub rx: mpsc::Receiver<Outbound>,
    /// Every joined room with where its stream starts: the join point for
    /// rooms joined while disconnected, else the last sequence number
    /// published at attach time.
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
            bus: std::sync::OnceLock::new(),
            remote_presence: Mutex::new(HashMap::new()),
            remote_rooms: Mutex::new(HashMap::new()),
        }
    }

    /// Connects the hub to the pool's bus: from now on it announces its
    /// participants and presence there.
    pub fn set_bus(&self, tx: mpsc::UnboundedSender<BusEvent>) {
        let _ = self.bus.set(tx);
    }

    fn announce(&self, ev: BusEvent) {
        if let Some(b) = self.bus.get() {
            let _ = b.send(ev);
        }
    }

    /// Every room's live state, taken out from under the rooms lock.
    fn all_rooms(&self) -> Vec<(RoomId, Arc<Mutex<RoomLive>>)> {
        self.rooms
            .read()
            .expect("rooms lock poisoned")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    /// Everything this node would announce to a node that just started.
    pub fn local_state(&self) -> Vec<BusEvent> {
        let mut out = Vec::new();
        let rooms = self.all_rooms();
        for (room, live) in rooms {
            let live = live.lock().expect("room lock poisoned");
            let mut names: HashMap<UserId, String> = HashMap::new();
            for s in live.subs.values() {
                names.insert(s.user, s.user_name.clone());
            }
            for user in live.participants.keys() {
                out.push(BusEvent::Participant {
                    room: room.0,
                    user: user.0,
                    name: names.get(user).cloned().unwrap_or_default(),
                    joined: true,
                });
            }
        }
        let users = self.users.lock().expect("users lock poisoned");
        for (id, u) in users.iter() {
            if let Some(s) = u.sessions.first() {
                out.push(BusEvent::Presence {
                    user: id.0,
                    name: s.user_name.clone(),
                    state: Some(u.presence),
                    online: true,
                });
            }
        }
        out
    }

    /// Applies what another node announced.
    pub fn remote(&self, node: &str, ev: BusEvent) {
        match ev {
            BusEvent::Participant {
                room,
                user,
                name,
                joined,
            } => self.remote_participant(node, RoomId(room), UserId(user), name, joined),
            BusEvent::Presence {
                user,
                name,
                state,
                online,
            } => self.remote_presence(node, UserId(user), name, state, online),
            BusEvent::ToUser { user, event } => self.to_user(UserId(user), &event),
            BusEvent::Room { room, event } => self.broadcast(RoomId(room), &event),
            BusEvent::Hello | BusEvent::Alive => {}
        }
    }

    fn remote_participant(
        &self,
        node: &str,
        room: RoomId,
        user: UserId,
        name: String,
        joined: bool,
    ) {
        let live = self.room(room);
        let mut live = live.lock().expect("room lock poisoned");
        let before = live.participants.contains_key(&user) || live.remote.contains_key(&user);
        if joined {
            let e = live
                .remote
                .entry(user)
                .or_insert_with(|| (name.clone(), HashSet::new()));
            e.1.insert(node.to_owned());
            self.remote_rooms
                .lock()
                .expect("remote rooms lock poisoned")
                .entry(user)
                .or_default()
                .insert(room);
        } else {
            let empty = match live.remote.get_mut(&user) {
                Some(e) => {
                    e.1.remove(node);
                    e.1.is_empty()
                }
                None => false,
            };
            if empty {
                live.remote.remove(&user);
                let mut rr = self
                    .remote_rooms
                    .lock()
                    .expect("remote rooms lock poisoned");
                if let Some(set) = rr.get_mut(&user) {
                    set.remove(&room);
                    if set.is_empty() {
                        rr.remove(&user);
                    }
                }
            }
        }
        let after = live.participants.contains_key(&user) || live.remote.contains_key(&user);
        if before != after {
            if after {
                live.by_name.insert((name.clone(), user));
            } else {
                live.by_name.remove(&(name.clone(), user));
            }
            let limit = self.update_limit();
            if joined {
                update_notify(&mut live, limit);
            }
            if live.notify {
                self.participant_event(&live, room, &name, after);
            }
            if !joined {
                update_notify(&mut live, limit);
            }
        }
    }

    fn remote_presence(
        &self,
        node: &str,
        user: UserId,
        name: String,
        state: Option<PresenceState>,
        online: bool,
    ) {
        let before = self.shown_presence(user);
        // Presence is the user's, whichever node it was set on.
        if let Some(state) = state {
            if let Some(u) = self
                .users
                .lock()
                .expect("users lock poisoned")
                .get_mut(&user)
            {
                u.presence = state;
            }
        }
        {
            let known = state.unwrap_or_else(|| self.own_presence(user));
            let mut rp = self.remote_presence.lock().expect("presence lock poisoned");
            if online {
                let m = rp.entry(user).or_default();
                if state.is_some() {
                    for v in m.values_mut() {
                        *v = known;
                    }
                }
                m.insert(node.to_owned(), known);
            } else if let Some(m) = rp.get_mut(&user) {
                m.remove(node);
                if m.is_empty() {
                    rp.remove(&user);
                }
            }
        }
        let shown = self.shown_presence(user);
        // Only a change is news: a user whose endpoints moved to another
        // node comes online there with the presence it had.
        if shown == before {
            return;
        }
        let frame = to_frame(&Event::Presence {
            user: name,
            state: shown,
        });
        let rooms: Vec<RoomId> = self
            .remote_rooms
            .lock()
            .expect("remote rooms lock poisoned")
            .get(&user)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default();
        // One event per endpoint, however many rooms it shares (PC-12.2a).
        let mut told: HashSet<usize> = HashSet::new();
        for room in rooms {
            let live = self.room(room);
            let live = live.lock().expect("room lock poisoned");
            if !live.notify {
                continue;
            }
            for (key, s) in &live.subs {
                if s.user != user && told.insert(*key) {
                    s.deliver(Outbound::Frame(frame.clone()), &self.metrics);
                }
            }
        }
    }

    /// Forgets everything a node announced (it stopped, or restarted).
    pub fn drop_node(&self, node: &str) {
        let rooms: Vec<(RoomId, Vec<(UserId, String)>)> = {
            self.all_rooms()
                .into_iter()
                .filter_map(|(id, live)| {
                    let live = live.lock().expect("room lock poisoned");
                    let users: Vec<(UserId, String)> = live
                        .remote
                        .iter()
                        .filter(|(_, (_, nodes))| nodes.contains(node))
                        .map(|(u, (n, _))| (*u, n.clone()))
                        .collect();
                    (!users.is_empty()).then_some((id, users))
                })
                .collect()
        };
        for (room, users) in rooms {
            for (user, name) in users {
                self.remote_participant(node, room, user, name, false);
            }
        }
        let users: Vec<UserId> = {
            let rp = self.remote_presence.lock().expect("presence lock poisoned");
            rp.iter()
                .filter(|(_, m)| m.contains_key(node))
                .map(|(u, _)| *u)
                .collect()
        };
        for u in users {
            let mut rp = self.remote_presence.lock().expect("presence lock poisoned");
            if let Some(m) = rp.get_mut(&u) {
                m.remove(node);
                if m.is_empty() {
                    rp.remove(&u);
                }
            }
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

    /// The last sequence number of a room that is published or that this
    /// node has acknowledged: a poster who was answered reads its own
    /// message in what follows (room, join, stream start).
    pub fn last_seq(&self, id: RoomId) -> u64 {
        self.room(id).lock().expect("room lock poisoned").known()
    }

    /// Notes that `seq` of `room` is committed and about to be
    /// acknowledged, before the publisher may have fanned it out.
    pub fn acked(&self, id: RoomId, seq: u64) {
        let live = self.room(id);
        let mut live = live.lock().expect("room lock poisoned");
        live.acked = live.acked.max(seq);
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

    /// Sends an event to everyone in a room on every node of the pool.
    pub fn broadcast_everywhere(&self, room: RoomId, event: &Event) {
        self.broadcast(room, event);
        self.announce(BusEvent::Room {
            room: room.0,
            event: event.clone(),
        });
    }

    /// Sends an event to every connected endpoint of a user on every node.
    pub fn to_user_everywhere(&self, user: UserId, event: &Event) {
        self.to_user(user, event);
        self.announce(BusEvent::ToUser {
            user: user.0,
            event: event.clone(),
        });
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

    /// The session of (user, endpoint), created when absent, held for the
    /// caller's request: it cannot expire until the hold is dropped, and it
    /// lingers from then when no stream is attached (PC-9.1a). A session
    /// that has begun to expire is never handed out; a new one takes its
    /// place.
    ///
    /// A new session is refused when the user already has `limit` others
    /// (PC-9.1c). The count and the insertion happen under the sessions
    /// lock, so requests racing for the same user's last place cannot all
    /// take it.
    pub fn session(
        self: &Arc<Self>,
        user: UserId,
        user_name: &str,
        endpoint: &str,
        limit: usize,
    ) -> Result<SessionHold, TooManyEndpoints> {
        let key = (user, endpoint.to_owned());
        let mut sessions = self.sessions.lock().expect("sessions lock poisoned");
        if let Some(s) = sessions.get(&key) {
            let mut st = s.lock();
            if !st.expired {
                st.holds += 1;
                drop(st);
                return Ok(SessionHold {
                    hub: Arc::clone(self),
                    session: s.clone(),
                });
            }
        }
        let s = Arc::new(Session {
            user,
            user_name: user_name.to_owned(),
            endpoint: endpoint.to_owned(),
            state: Mutex::new(SessionState {
                holds: 1,
                ..SessionState::default()
            }),
        });
        // A user already online through another node keeps the presence
        // set there (its endpoints may have moved here).
        let elsewhere = self.presence_elsewhere(user);
        let first = {
            // Taken inside the sessions lock: nothing takes the sessions
            // lock while it holds the users lock (or the presence lock).
            let mut users = self.users.lock().expect("users lock poisoned");
            let others = users.get(&user).map_or(0, |u| {
                // An expiring session of this endpoint is being replaced.
                u.sessions.iter().filter(|o| o.endpoint != endpoint).count()
            });
            if others >= limit {
                return Err(TooManyEndpoints);
            }
            sessions.insert(key, s.clone());
            drop(sessions);
            let u = users.entry(user).or_insert_with(|| UserLive {
                presence: elsewhere.unwrap_or_default(),
                ..UserLive::default()
            });
            u.sessions.push(s.clone());
            u.sessions.len() == 1
        };
        if first {
            self.announce(BusEvent::Presence {
                user: user.0,
                name: user_name.to_owned(),
                state: None,
                online: true,
            });
        }
        self.metrics.sessions.inc();
        // A session made by a join without a stream lingers like a dropped
        // one, from when the hold is dropped.
        Ok(SessionHold {
            hub: Arc::clone(self),
            session: s,
        })
    }

    /// Whether (user, endpoint) has a session, and how many sessions the user has.
    pub fn sessions_of(&self, user: UserId, endpoint: &str) -> (bool, usize) {
        let sessions = self.user_sessions(user);
        (
            sessions.iter().any(|s| s.endpoint == endpoint),
            sessions.len(),
        )
    }

    /// Attaches a new stream to a held session, replacing (and closing) any
    /// older one. The caller's hold kept the session from expiring.
    pub fn attach(&self, hold: &SessionHold, direct: Option<Arc<Direct>>) -> Attached {
        let session = hold.session();
        let (tx, rx) = mpsc::channel(self.queue);
        let conn = Conn {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            tx,
            close: Arc::new(CloseSignal::default()),
            direct,
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
            debug_assert!(!st.expired, "a held session does not expire");
            let points = std::mem::take(&mut st.join_points);
            let rooms: Vec<(RoomId, Option<u64>)> = st
                .rooms
                .iter()
                .map(|r| (*r, points.get(r).copied()))
                .collect();
            (rooms, replaced)
        };
        // A room joined while disconnected starts at its join point; any
        // other at what is published now.
        let rooms = rooms
            .into_iter()
            .map(|(r, point)| (r, point.unwrap_or_else(|| self.last_seq(r))))
            .collect();
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
        let idle = {
            let mut st = session.lock();
            if st.conn.as_ref().is_some_and(|c| c.id == conn_id) {
                st.conn = None;
            }
            st.begin_idle()
        };
        if idle {
            self.start_linger(session);
        }
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
            if st.conn.is_some() || st.holds > 0 || st.generation != generation || st.expired {
                return;
            }
            st.expired = true;
            std::mem::take(&mut st.rooms)
        };
        self.metrics.sessions_expired.inc();
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
                    self.announce(BusEvent::Presence {
                        user: session.user.0,
                        name: session.user_name.clone(),
                        state: None,
                        online: false,
                    });
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
        let upto = live.known();
        let newly = live
            .subs
            .insert(session_key(session), session.clone())
            .is_none();
        {
            let mut st = session.lock();
            st.rooms.insert(room);
            match &st.conn {
                Some(conn) => {
                    // Under the room lock: nothing for this room can be queued before it.
                    if conn.push(Outbound::Joined { room, upto }).is_err() {
                        conn.close.fire(close::SLOW_CONSUMER);
                        st.conn = None;
                        st.join_points.insert(room, upto);
                    }
                }
                None => {
                    st.join_points.insert(room, upto);
                }
            }
        }
        if newly {
            let count = live.participants.entry(session.user).or_insert(0);
            *count += 1;
            if *count == 1 {
                if !live.remote.contains_key(&session.user) {
                    live.by_name
                        .insert((session.user_name.clone(), session.user));
                }
                self.metrics.participants.inc();
                self.note(room, &session.user_name, true);
                self.announce(BusEvent::Participant {
                    room: room.0,
                    user: session.user.0,
                    name: session.user_name.clone(),
                    joined: true,
                });
                update_notify(&mut live, update_limit);
                if live.notify && !live.remote.contains_key(&session.user) {
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
            st.join_points.remove(&room);
            if let Some(conn) = &st.conn {
                if conn.push(Outbound::Left { room, reason }).is_err() {
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
            if !live.remote.contains_key(&user) {
                live.by_name.remove(&(session.user_name.clone(), user));
            }
            self.metrics.participants.dec();
            self.note(room, &session.user_name, false);
            self.announce(BusEvent::Participant {
                room: room.0,
                user: user.0,
                name: session.user_name.clone(),
                joined: false,
            });
            if live.notify && !live.remote.contains_key(&user) {
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

    /// How many participants a room has, and the first of them by name
    /// for which `keep` holds, at most `limit`.
    pub fn participants_page(
        &self,
        room: RoomId,
        limit: usize,
        mut keep: impl FnMut(UserId) -> bool,
    ) -> (usize, Vec<UserId>) {
        let live = self.room(room);
        let live = live.lock().expect("room lock poisoned");
        let page = live
            .by_name
            .iter()
            .map(|(_, u)| *u)
            .filter(|u| keep(*u))
            .take(limit)
            .collect();
        (live.by_name.len(), page)
    }

    pub fn participant_count(&self, room: RoomId) -> usize {
        participant_total(&self.room(room).lock().expect("room lock poisoned"))
    }

    /// The presence others see for a user.
    pub fn shown_presence(&self, user: UserId) -> PresenceState {
        let local = {
            let users = self.users.lock().expect("users lock poisoned");
            users
                .get(&user)
                .filter(|u| !u.sessions.is_empty())
                .map(|u| u.presence)
        };
        let state = local.or_else(|| self.presence_elsewhere(user));
        match state {
            None | Some(PresenceState::AppearOffline) => PresenceState::Offline,
            Some(s) => s,
        }
    }

    /// The presence a user set for themself.
    pub fn own_presence(&self, user: UserId) -> PresenceState {
        let own = {
            let users = self.users.lock().expect("users lock poisoned");
            users.get(&user).map(|u| u.presence)
        };
        own.or_else(|| self.presence_elsewhere(user))
            .unwrap_or_default()
    }

    /// The presence another node of the pool announced for a user online
    /// through it, if any.
    fn presence_elsewhere(&self, user: UserId) -> Option<PresenceState> {
        let rp = self.remote_presence.lock().expect("presence lock poisoned");
        rp.get(&user).and_then(|m| m.values().next().copied())
    }

    /// Sets a user's presence and tells everyone sharing a notifying room.
    pub fn set_presence(&self, user: UserId, name: String, state: PresenceState) {
        let sessions = {
            let mut users = self.users.lock().expect("users lock poisoned");
            let u = users.entry(user).or_default();
            u.presence = state;
            u.sessions.clone()
        };
        self.announce(BusEvent::Presence {
            user: user.0,
            name: name.clone(),
            state: Some(state),
            online: !sessions.is_empty(),
        });
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

/// Participants through this node or any other.
fn participant_total(live: &RoomLive) -> usize {
    live.by_name.len()
}

fn update_notify(live: &mut RoomLive, limit: usize) {
    let n = participant_total(live);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &str) -> Frame {
        Frame::from(s.to_owned())
    }

    fn queued(rx: &mut mpsc::Receiver<Outbound>) -> Vec<String> {
        let mut texts = Vec::new();
        while let Ok(item) = rx.try_recv() {
            texts.push(match item {
                Outbound::Message { frame, .. } | Outbound::Frame(frame) => frame.to_string(),
                Outbound::Joined { room, .. } => format!("joined {}", room.0),
                Outbound::Left { room, .. } => format!("left {}", room.0),
            });
        }
        texts
    }

    /// While the task is parked, the next message of a room and any other
    /// event go straight to the worker, each for a credit. The first item
    /// that cannot (no credit left) goes on the queue and ends the parking,
    /// so nothing after it overtakes it, even once a credit is back.
    #[test]
    fn the_direct_route_carries_events_until_one_must_wait_and_then_nothing_overtakes_it() {
        let (send, credits, sent) = crate::relay::DirectSend::for_test(2);
        let direct = Arc::new(Direct::new(send));
        let (tx, mut rx) = mpsc::channel(16);
        let conn = Conn {
            id: 1,
            tx,
            close: Arc::default(),
            direct: Some(direct.clone()),
        };
        let room = RoomId(7);
        let mut record = HashMap::from([(room, 0)]);
        direct.park(&mut record, || rx.is_empty());

        let message = |seq: u64| Outbound::Message {
            room,
            seq,
            frame: frame(&format!("m{seq}")),
        };
        assert_eq!(
            conn.push(Outbound::Frame(frame("p1"))).unwrap(),
            Route::Direct
        );
        assert_eq!(conn.push(message(1)).unwrap(), Route::Direct);
        // Both credits taken: the next event waits on the queue.
        assert_eq!(
            conn.push(Outbound::Frame(frame("p2"))).unwrap(),
            Route::Queued
        );
        credits.add_permits(4);
        // A credit is back, but the task has not caught up: behind p2.
        assert_eq!(
            conn.push(Outbound::Frame(frame("p3"))).unwrap(),
            Route::Queued
        );
        assert_eq!(conn.push(message(2)).unwrap(), Route::Queued);
        assert_eq!(sent(), ["p1", "m1"]);
        assert_eq!(queued(&mut rx), ["p2", "p3", "m2"]);

        // The task takes its record back (message 1 sent) and parks again.
        direct.unpark(&mut record);
        assert_eq!(record[&room], 1);
        direct.park(&mut record, || rx.is_empty());
        assert_eq!(
            conn.push(Outbound::Frame(frame("p4"))).unwrap(),
            Route::Direct
        );
        // A join is the task's to record: it ends the parking too.
        let joined = Outbound::Joined {
            room: RoomId(8),
            upto: 0,
        };
        assert_eq!(conn.push(joined).unwrap(), Route::Queued);
        assert_eq!(
            conn.push(Outbound::Frame(frame("p5"))).unwrap(),
            Route::Queued
        );
        assert_eq!(sent(), ["p4"]);
        assert_eq!(queued(&mut rx), ["joined 8", "p5"]);
    }

    /// A session's linger fires while a stream start (or a join) holds it:
    /// the session must not expire under the request, or the stream would
    /// attach to a session that has left its rooms (its resume answered
    /// `not_joined`) while a later join made another one. Once the stream
    /// is attached and gone again, the session lingers and expires as
    /// PC-9.1a says.
    #[tokio::test(start_paused = true)]
    async fn a_held_session_outlives_its_linger_and_expires_once_let_go() {
        let linger = Duration::from_secs(1);
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new()), linger, 16, None));
        let (user, room) = (UserId(3), RoomId(5));
        let expired = || hub.metrics.sessions_expired.get();

        // A join without a stream: the session lingers from its answer.
        let hold = hub.session(user, "ann", "e0", 16).unwrap();
        hub.join(room, hold.session(), 75);
        let session = hold.session().clone();
        drop(hold);

        // Most of the linger later a stream starts; the old timer fires
        // while it is still being set up.
        tokio::time::sleep(linger * 9 / 10).await;
        let hold = hub.session(user, "ann", "e0", 16).unwrap();
        assert!(Arc::ptr_eq(hold.session(), &session));
        tokio::time::sleep(linger).await;
        assert_eq!(expired(), 0);
        assert_eq!(session.rooms(), [room]);

        let attached = hub.attach(&hold, None);
        drop(hold);
        assert_eq!(attached.rooms, [(room, 0)]);
        tokio::time::sleep(linger * 3).await;
        assert_eq!(expired(), 0, "a session with its stream does not expire");

        hub.detach(&session, attached.conn.id);
        tokio::time::sleep(linger / 2).await;
        assert_eq!(expired(), 0);
        tokio::time::sleep(linger).await;
        assert_eq!(expired(), 1);
        assert!(session.rooms().is_empty());
        assert_eq!(hub.participant_count(room), 0);
        // The next request gets a new session, not the expired one.
        let hold = hub.session(user, "ann", "e0", 16).unwrap();
        assert!(!Arc::ptr_eq(hold.session(), &session));
    }

    /// PC-9.1c in the hub: a user's sessions stop at the limit, an existing
    /// one is still handed out at the limit, and an expired one frees its
    /// place.
    #[tokio::test(start_paused = true)]
    async fn a_user_gets_no_session_beyond_the_limit_until_one_expires() {
        let linger = Duration::from_secs(1);
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new()), linger, 16, None));
        let user = UserId(4);
        let a = hub.session(user, "ann", "a", 2).unwrap();
        let b = hub.session(user, "ann", "b", 2).unwrap();
        assert_eq!(
            hub.session(user, "ann", "c", 2).err(),
            Some(TooManyEndpoints)
        );
        let again = hub.session(user, "ann", "a", 2).unwrap();
        assert!(Arc::ptr_eq(again.session(), a.session()));
        assert!(
            hub.session(UserId(5), "bob", "c", 2).is_ok(),
            "the limit is per user"
        );
        drop((a, again));
        drop(b);
        tokio::time::sleep(linger * 2).await;
        assert_eq!(hub.metrics.sessions_expired.get(), 3);
        assert!(hub.session(user, "ann", "c", 2).is_ok());
    }

    /// `pchat_deliveries_total` counts what reached the connection's queue
    /// or its stream worker; an item the direct route drops (as the task
    /// would: the endpoint is not in the room, or has the message) is none.
    #[tokio::test]
    async fn items_the_direct_route_drops_are_not_counted_as_deliveries() {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone(), Duration::from_secs(60), 16, None));
        let (send, _credits, sent) = crate::relay::DirectSend::for_test(4);
        let direct = Arc::new(Direct::new(send));
        let hold = hub.session(UserId(1), "ann", "e0", 16).unwrap();
        let attached = hub.attach(&hold, Some(direct.clone()));
        let session = hold.session().clone();
        drop(hold);
        let (room, other) = (RoomId(7), RoomId(8));
        let mut record = HashMap::from([(room, 1)]);
        let rx = attached.rx;
        direct.park(&mut record, || rx.is_empty());
        let message = |room, seq: u64| Outbound::Message {
            room,
            seq,
            frame: frame(&format!("{}:{seq}", room.0)),
        };

        assert!(session.deliver(message(other, 1), &metrics));
        assert!(session.deliver(message(room, 1), &metrics));
        assert_eq!(metrics.deliveries.get(), 0, "both dropped");
        assert!(session.deliver(message(room, 2), &metrics));
        assert_eq!(sent(), ["7:2"]);
        assert_eq!(
            (metrics.deliveries.get(), metrics.direct_deliveries.get()),
            (1, 1)
        );
    }
}
