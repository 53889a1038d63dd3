//! The lean connection pool: one tokio task per simulated endpoint holding
//! its event stream, recording every message it receives.
//!
//! goose is not built to hold tens of thousands of long-lived sockets, so the
//! streams live here, beside goose's users in the same process. A stream that
//! closes is reopened with `resume` from the last sequence number seen in each
//! joined room (PC-9.4b), so the checker can hold the server to "nothing lost,
//! nothing duplicated" across reconnects too.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::record::Recorder;
use crate::retry::{self, Backoff, Failure};

/// What one endpoint saw of one room. (Serialisable: a shard process sends
/// its endpoints' views to the parent, which runs the checker.)
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct RoomView {
    /// The `last_seq` its first join answered: everything above it is owed.
    pub base: Option<u64>,
    /// Highest sequence number known (from the stream or a join answer).
    pub max_seen: u64,
    /// Sequence numbers delivered on the stream, in arrival order.
    pub delivered: Vec<u64>,
    /// Sequence numbers that arrived in join answers (history), not counted
    /// as deliveries.
    pub via_join: Vec<u64>,
    /// Currently joined (between a join answer and a leave).
    pub joined: bool,
    /// A stream's resume of the room was answered `not_joined` (PC-9.4b)
    /// while the endpoint counted itself joined: the server had no session
    /// joined to it. Named in a witness of what the endpoint then missed.
    #[serde(default)]
    pub not_joined: bool,
}

/// One endpoint's record, keyed by room index of the workload. (Why a
/// stream ended goes to the recorder as a `stream` error.)
#[derive(Debug, Default)]
pub struct EndpointLog {
    pub rooms: HashMap<u32, RoomView>,
    /// Rooms joined on a node the stream has left and not yet joined again
    /// on the node it is on now, first to rejoin first. A rejoin cut short
    /// (its stream lost again) resumes from here on the next connection.
    pub rejoin: Vec<u32>,
}

/// Shared state of one endpoint: its log is written by the stream task and
/// by goose users that make it leave and rejoin rooms.
pub struct Endpoint {
    pub name: String,
    pub log: Mutex<EndpointLog>,
    /// Set once the stream has received its `ready` frame.
    connected: std::sync::atomic::AtomicBool,
    /// What the stream task is doing (a [`phase`] constant): why an
    /// endpoint is without its stream when the run ends.
    phase: std::sync::atomic::AtomicU8,
    /// Why the last connection attempt failed or the last stream ended
    /// (a failure code: `busy`, `timeout`, `fd_limit`, `closed:4008`, ...);
    /// cleared when a connection opens.
    last_failure: Mutex<Option<String>>,
    /// Wakes those waiting for the stream (joins follow its `ready`).
    ready: tokio::sync::Notify,
}

impl Endpoint {
    pub fn new(index: u8) -> Endpoint {
        Endpoint {
            name: format!("e{index}"),
            log: Mutex::new(EndpointLog::default()),
            connected: false.into(),
            phase: phase::WAITING.into(),
            last_failure: Mutex::new(None),
            ready: tokio::sync::Notify::new(),
        }
    }

    fn set_phase(&self, p: u8) {
        self.phase.store(p, Ordering::Relaxed);
    }

    /// Why the endpoint is without its stream now, in a word: `connecting`
    /// (an attempt under way), `waiting` (before the next attempt) or
    /// `unready` (open, its `ready` frame not yet arrived).
    pub fn absence(&self) -> &'static str {
        match self.phase.load(Ordering::Relaxed) {
            phase::CONNECTING => "connecting",
            phase::OPEN => "unready",
            _ => "waiting",
        }
    }

    /// [`Endpoint::absence`] and, after a colon, why the last attempt
    /// failed or the last stream ended, if one did: `waiting:busy`,
    /// `connecting:timeout`. It names what kept an endpoint away, the
    /// server's refusal or a host limit (`fd_limit`, `ports_exhausted`).
    pub fn absence_detail(&self) -> String {
        let why = self
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match why {
            Some(why) => format!("{}:{why}", self.absence()),
            None => self.absence().to_owned(),
        }
    }

    fn set_failure(&self, why: Option<&str>) {
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = why.map(str::to_owned);
    }

    /// Whether the stream is open (its `ready` frame has arrived).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
        if connected {
            self.ready.notify_waiters();
        }
    }

    /// Waits until the stream is open, at most `within`; whether it is.
    /// (Thousands of endpoints wait at once after a node is lost: they
    /// sleep until told, rather than poll.)
    pub async fn until_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let told = self.ready.notified();
            tokio::pin!(told);
            // Registered before the check, so a `ready` in between is seen.
            told.as_mut().enable();
            if self.is_connected() {
                return true;
            }
            if tokio::time::timeout_at(deadline, told).await.is_err() {
                return self.is_connected();
            }
        }
    }

    pub fn log(&self) -> std::sync::MutexGuard<'_, EndpointLog> {
        // The log holds plain data; a panic mid-update cannot break it.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Intended send times of a step's posts, indexed by post number. Every
/// post's time is known from the schedule, so a shard measures the delivery
/// of a message that another shard's user posted.
pub struct PostTimes {
    pub epoch: Instant,
    /// Intended times in milliseconds from the steady state's start.
    at_ms: Vec<u64>,
    /// The steady state's start in microseconds since `epoch`; `u64::MAX`
    /// until it is known (no post is sent before).
    start_us: AtomicU64,
}

impl PostTimes {
    pub fn new(epoch: Instant, at_ms: Vec<u64>) -> PostTimes {
        PostTimes {
            epoch,
            at_ms,
            start_us: AtomicU64::new(u64::MAX),
        }
    }

    /// Fixes the steady state's start.
    pub fn start(&self, start: Instant) {
        let us = start.saturating_duration_since(self.epoch).as_micros() as u64;
        self.start_us.store(us, Ordering::Release);
    }

    /// Microseconds from the post's intended send time to now.
    pub fn since(&self, post: u32) -> Option<u64> {
        let start = self.start_us.load(Ordering::Acquire);
        let at = *self.at_ms.get(post as usize)?;
        (start != u64::MAX)
            .then(|| (self.epoch.elapsed().as_micros() as u64).saturating_sub(start + at * 1000))
    }
}

/// The text of a generated post: carries the post number (for delivery
/// latency), the node it was posted through (to tell cross-node deliveries
/// from same-node ones) and a search term.
pub fn post_text(post: u32, term: u32, node: usize) -> String {
    format!("lg {post} n{node} w{term} persistent chat load message")
}

/// The post number and posting node a generated post's text carries.
fn post_tag(text: &str) -> Option<(u32, Option<usize>)> {
    let mut words = text.strip_prefix("lg ")?.split(' ');
    let post = words.next()?.parse().ok()?;
    let node = words
        .next()
        .and_then(|w| w.strip_prefix('n'))
        .and_then(|n| n.parse().ok());
    Some((post, node))
}

/// The parts of a stream frame the generator reads; everything else is
/// skipped without allocating.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    room: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    reason: Option<&'a str>,
    /// A `ready` frame's joined rooms.
    #[serde(default)]
    rooms: Vec<ReadyRoom>,
}

#[derive(serde::Deserialize)]
struct ReadyRoom {
    room: u64,
}

/// Which nodes a simulated client may use, and which it found down. A
/// client knows every node of the deployment (as it would through the
/// pool's DNS name): it talks to its home node, `u % home`, and when that
/// refuses it moves to one of the other home nodes not known to be down,
/// or, when every home node is down, to the backup pool's. The clients of
/// a lost node spread evenly over the survivors, as the pool's DNS name
/// would spread them, rather than all landing on the next node.
pub struct NodeHealth {
    home: usize,
    down_until_ms: Vec<AtomicU64>,
    epoch: Instant,
}

/// How long a node that refused a connection is avoided.
const DOWN_FOR_MS: u64 = 2_000;

impl NodeHealth {
    /// `nodes` in all, the first `home` of them the ones users live on.
    pub fn new(nodes: usize, home: usize) -> NodeHealth {
        let nodes = nodes.max(1);
        NodeHealth {
            home: home.clamp(1, nodes),
            down_until_ms: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The home node of user `u`.
    pub fn home_of(&self, u: usize) -> usize {
        u % self.home
    }

    /// The node `u` should use now: its home node while that is not
    /// known to be down; else one of the other home nodes that are not,
    /// chosen by `u` so that a lost node's users spread evenly over them;
    /// else the first backup node that is not; else the home node.
    pub fn pick(&self, u: usize) -> usize {
        let now = self.now_ms();
        let up = |i: usize| self.down_until_ms[i].load(Ordering::Relaxed) <= now;
        let h = self.home_of(u);
        if up(h) {
            return h;
        }
        // The users of home h are h, h + home, h + 2·home, ...: the
        // quotient deals them out over the survivors in turn.
        let others: Vec<usize> = (1..self.home)
            .map(|k| (h + k) % self.home)
            .filter(|&i| up(i))
            .collect();
        if !others.is_empty() {
            return others[(u / self.home) % others.len()];
        }
        (self.home..self.down_until_ms.len())
            .find(|&i| up(i))
            .unwrap_or(h)
    }

    /// Marks a node down for a while after it refused a connection.
    pub fn mark_down(&self, node: usize) {
        if let Some(d) = self.down_until_ms.get(node) {
            d.store(self.now_ms() + DOWN_FOR_MS, Ordering::Relaxed);
        }
    }
}

/// One server node: its base URL and address.
#[derive(Clone, Debug)]
pub struct Node {
    pub base: String,
    pub dest: SocketAddr,
}

/// Phases of an endpoint's stream task.
mod phase {
    /// Before an attempt: its first, or after a lost or refused stream.
    pub const WAITING: u8 = 0;
    /// Opening the connection and its upgrade.
    pub const CONNECTING: u8 = 1;
    /// Open; `connected` says whether its `ready` frame has come.
    pub const OPEN: u8 = 2;
}

/// What the stream tasks share.
pub struct Pool {
    /// The nodes of the target; a user's streams go to
    /// `nodes[user % nodes.len()]`.
    pub nodes: Vec<Node>,
    pub recorder: Arc<Recorder>,
    pub posts: Arc<PostTimes>,
    /// Server room id to workload room index.
    pub room_index: HashMap<u64, u32>,
    /// Workload room index to server room id.
    pub room_ids: Vec<u64>,
    pub stop: CancellationToken,
    /// Streams currently open.
    pub open: AtomicU64,
    /// Message frames received so far: the drain after a step waits while
    /// this still grows.
    pub messages: AtomicU64,
    /// Which nodes answer (shared with the request workers).
    pub health: Arc<NodeHealth>,
    /// For rejoining rooms on another node after a move.
    pub http: reqwest::Client,
    /// Joins in flight from this process (the ramp's and the rejoins).
    pub joins: Arc<tokio::sync::Semaphore>,
    /// The run's seed, from which every endpoint's waits are drawn.
    pub seed: u64,
}

/// Runs one endpoint's stream until `pool.stop` fires, on the node
/// `pool.health` picks for `user` (its home node while that answers).
/// `slot` (the endpoint's index in the whole run, over every shard) picks the
/// source address and seeds its waits. When the stream has to move to
/// another node, the session does not exist there: the endpoint rejoins each
/// room it was in with `since` = the last sequence number it saw (PC-9.3a),
/// so it misses nothing. On the same node, too, every stream that resumes
/// rooms takes them along (`rejoin`, PC-9.4d): a session that stayed without
/// a stream for `endpoint_linger_s` has expired and left its rooms
/// (PC-9.1a), and a plain resume would be answered `not_joined` and miss
/// everything after. A lost stream is reopened after a jittered,
/// growing delay, a refused one after the server's `Retry-After` plus
/// jitter (PC-2.4c), never at once. Returns when stopped.
pub async fn run_stream(
    pool: Arc<Pool>,
    ep: Arc<Endpoint>,
    token: String,
    slot: usize,
    user: usize,
) {
    let mut backoff = Backoff::new(retry::seed(pool.seed, retry::kind::STREAM, slot as u64));
    let mut last_node: Option<usize> = None;
    // Since when the stream is down after it was lost (not before the
    // first connection): the reconnect time.
    let mut lost_at: Option<Instant> = None;
    while !pool.stop.is_cancelled() {
        let node = pool.health.pick(user);
        let Node { base, dest } = &pool.nodes[node];
        let source = crate::net::source_for(dest.ip(), slot);
        let joined: Vec<(u32, u64)> = {
            let log = ep.log();
            log.rooms
                .iter()
                .filter(|(_, v)| v.joined)
                .map(|(r, v)| (*r, v.max_seen))
                .collect()
        };
        let resume: Vec<(u64, u64)> = joined
            .iter()
            .map(|(r, s)| (pool.room_ids[*r as usize], *s))
            .collect();
        // On another node the session does not exist: the stream takes the
        // rooms along (PC-9.4d), and so does the next stream of a move whose
        // rooms were not all joined yet.
        let moved = last_node.is_some_and(|n| n != node) && !joined.is_empty();
        let rejoin = {
            let mut log = ep.log();
            if moved {
                log.rejoin = joined.iter().map(|(r, _)| *r).collect();
            }
            !log.rejoin.is_empty()
        };
        let started = Instant::now();
        ep.set_phase(phase::CONNECTING);
        let take_along = rejoin || !resume.is_empty();
        let connect =
            crate::net::connect_stream(base, *dest, &token, &ep.name, &resume, take_along, source);
        let ws = tokio::select! {
            r = connect => r,
            _ = pool.stop.cancelled() => return,
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                ep.set_phase(phase::WAITING);
                let failure = connect_failure(&e);
                ep.set_failure(Some(&failure.code));
                let wait = if failure.is_refusal() {
                    backoff.after_refusal(failure.retry_after)
                } else if failure.code == NODE_DOWN {
                    // Refused or unreachable: another node next, soon.
                    pool.health.mark_down(node);
                    if pool.health.pick(user) != node {
                        backoff.first_delay()
                    } else {
                        backoff.next_delay()
                    }
                } else {
                    backoff.next_delay()
                };
                pool.recorder.retried("connect", &failure.code);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = pool.stop.cancelled() => return,
                }
                continue;
            }
        };
        pool.recorder
            .ok("connect", started.elapsed().as_micros() as u64);
        if let Some(at) = lost_at.take() {
            pool.recorder
                .ok("reconnect", at.elapsed().as_micros() as u64);
        }
        let connected_at = Instant::now();
        ep.set_failure(None);
        ep.set_phase(phase::OPEN);
        pool.open.fetch_add(1, Ordering::Relaxed);
        last_node = Some(node);
        // What the stream could not take along (a server that could not
        // join a room there) is joined one room at a time.
        let took_along = rejoin.then_some(started);
        let rejoin = rejoin.then(|| {
            tokio::spawn(rejoin_rooms(
                pool.clone(),
                ep.clone(),
                token.clone(),
                base.clone(),
                slot,
            ))
        });
        let why = read_stream(&pool, &ep, &mut ws, node, took_along).await;
        if let Some(r) = rejoin {
            r.abort();
        }
        pool.open.fetch_sub(1, Ordering::Relaxed);
        ep.set_connected(false);
        ep.set_phase(phase::WAITING);
        let Some(reason) = why else {
            // Stopped: close politely, briefly.
            let _ = tokio::time::timeout(Duration::from_millis(200), ws.close()).await;
            return;
        };
        pool.recorder.retried("stream", &reason);
        ep.set_failure(Some(&reason));
        lost_at = Some(Instant::now());
        if connected_at.elapsed() >= STABLE_STREAM {
            backoff.reset();
        }
        // Not at once: every client of a lost node would come back in the
        // same instant.
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = pool.stop.cancelled() => return,
        }
    }
}

/// The code of a connection attempt refused or unreachable at the TCP
/// level: the node is down.
const NODE_DOWN: &str = "node_down";
/// Deliveries on a pool to a stream on the node the post went through, and
/// to a stream on another node: the same samples as `delivery`, split.
pub const DELIVERY_SAME_NODE: &str = "delivery_same_node";
pub const DELIVERY_CROSS_NODE: &str = "delivery_cross_node";
/// Delivery latency to the message's arrival on the endpoint's socket (the
/// kernel's receive stamp), before the generator read it; and from that
/// arrival to the generator's read: how long deliveries waited for the
/// generator itself.
pub use scenarios::verdict::{DELIVERY_ARRIVAL, DELIVERY_READ_LAG};
/// A stream that stayed open this long was a success: the waits before
/// the next reconnect start short again.
const STABLE_STREAM: Duration = Duration::from_secs(5);
/// Failed attempts (refusals aside) after which a rejoin gives up.
const REJOIN_TRIES: u32 = 8;
/// The longest a rejoin keeps trying, refusals included.
const REJOIN_GIVE_UP: Duration = Duration::from_secs(120);

/// Joins again, on the node at `base`, the rooms of the endpoint's
/// `rejoin` list, each from the last sequence number it has seen; a room
/// leaves the list once it is joined (or given up). A refusal (busy, rate
/// limited) is retried after its `Retry-After` plus jitter; other failures
/// up to [`REJOIN_TRIES`] times, backing off. A rejoin that gives up is an
/// error; the attempts before a success are only counted as retried. When
/// the stream is lost meanwhile this task is aborted and what is left of the
/// list is rejoined over the next connection.
async fn rejoin_rooms(
    pool: Arc<Pool>,
    ep: Arc<Endpoint>,
    token: String,
    base: String,
    slot: usize,
) {
    // The stream's ready frame first, so it carries what follows each join.
    ep.until_connected(Duration::from_secs(10)).await;
    let mut backoff = Backoff::new(retry::seed(pool.seed, retry::kind::REJOIN, slot as u64));
    loop {
        let next = {
            let mut log = ep.log();
            loop {
                let Some(&room) = log.rejoin.first() else {
                    break None;
                };
                match log.rooms.get(&room) {
                    Some(v) if v.joined => break Some((room, v.max_seen)),
                    // Left meanwhile: nothing to rejoin.
                    _ => {
                        log.rejoin.remove(0);
                    }
                }
            }
        };
        let Some((room, since)) = next else {
            return;
        };
        let room_id = pool.room_ids[room as usize];
        let started = Instant::now();
        let mut failures = 0;
        let answer = loop {
            if pool.stop.is_cancelled() {
                return;
            }
            let Ok(turn) = pool.joins.acquire().await else {
                return;
            };
            let answer = rejoin_once(&pool, &ep, &token, &base, room_id, since).await;
            drop(turn);
            let failure = match answer {
                Ok(v) => break Some(v),
                Err(f) => f,
            };
            let wait = if failure.is_refusal() {
                backoff.after_refusal(failure.retry_after)
            } else {
                // A node that has just taken over may still be settling.
                failures += 1;
                backoff.next_delay()
            };
            if failures >= REJOIN_TRIES || started.elapsed() + wait > REJOIN_GIVE_UP {
                pool.recorder.failed("rejoin", &failure.code);
                break None;
            }
            pool.recorder.retried("rejoin", &failure.code);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = pool.stop.cancelled() => return,
            }
        };
        // Joined (or given up): off the list.
        let mut log = ep.log();
        if log.rejoin.first() == Some(&room) {
            log.rejoin.remove(0);
        }
        drop(log);
        let Some((last, history)) = answer else {
            continue;
        };
        pool.recorder
            .ok("rejoin", started.elapsed().as_micros() as u64);
        backoff.reset();
        record_join(&ep, room, last, &history);
    }
}

/// One rejoin: the join answer's `last_seq` and the sequence numbers it
/// carried, or why it failed.
async fn rejoin_once(
    pool: &Pool,
    ep: &Endpoint,
    token: &str,
    base: &str,
    room_id: u64,
    since: u64,
) -> Result<(u64, Vec<u64>), Failure> {
    let io = |e: reqwest::Error| Failure::new(if e.is_timeout() { "timeout" } else { "io" });
    let resp = pool
        .http
        .post(format!("{base}/v1/rooms/{room_id}/join"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "endpoint": ep.name, "since": since }))
        .send()
        .await
        .map_err(io)?;
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let header = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.unwrap_or_default();
        return Err(Failure::from_answer(status, header.as_deref(), &body));
    }
    let v: serde_json::Value = resp.json().await.map_err(|_| Failure::new("bad_json"))?;
    let last = v["last_seq"]
        .as_u64()
        .ok_or_else(|| Failure::new("bad_json"))?;
    let history = v["messages"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["seq"].as_u64()).collect())
        .unwrap_or_default();
    Ok((last, history))
}

/// Why a stream could not be opened: the server's refusal (with what it
/// asked for), a host limit of this process, a node that is down, or a
/// failed handshake.
fn connect_failure(e: &anyhow::Error) -> Failure {
    if let Some(r) = e.downcast_ref::<crate::net::StreamRefused>() {
        return Failure {
            code: r
                .code
                .clone()
                .unwrap_or_else(|| format!("http:{}", r.status)),
            retry_after: r.retry_after,
        };
    }
    if e.is::<crate::net::ConnectTimedOut>() {
        return Failure::new("timeout");
    }
    let text = format!("{e:#}");
    let code = if text.contains("Address already in use")
        || text.contains("Cannot assign requested address")
    {
        "ports_exhausted"
    } else if text.contains("Too many open files") {
        "fd_limit"
    } else if text.starts_with("connect to") {
        NODE_DOWN
    } else {
        "handshake"
    };
    Failure::new(code)
}

/// Reads frames until the stream ends (Some(reason)) or the run stops (None).
async fn read_stream(
    pool: &Pool,
    ep: &Endpoint,
    ws: &mut crate::net::Ws,
    node: usize,
    mut rejoin_started: Option<Instant>,
) -> Option<String> {
    // Made once: a fan-out wakes every stream for a frame each.
    let stopped = pool.stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let frame = tokio::select! {
            f = ws.next() => f,
            _ = &mut stopped => return None,
        };
        match frame {
            None => return Some("closed:eof".into()),
            Some(Err(e)) => return Some(format!("closed:{}", e.short())),
            Some(Ok(crate::ws::Frame::Text { text, arrived_ns })) => {
                on_frame(pool, ep, node, text, arrived_ns, &mut rejoin_started)
            }
            Some(Ok(crate::ws::Frame::Close(code))) => {
                return Some(format!("closed:{}", code.unwrap_or(1005)));
            }
        }
    }
}

/// Takes one frame into the endpoint's log. `arrived_ns` is the kernel's
/// receive stamp of the read that completed it (0 if none);
/// `rejoin_started` is when the connection of a stream that takes rooms
/// along (PC-9.4d) was begun.
fn on_frame(
    pool: &Pool,
    ep: &Endpoint,
    node: usize,
    text: &str,
    arrived_ns: u64,
    rejoin_started: &mut Option<Instant>,
) {
    let Ok(f) = serde_json::from_str::<Frame<'_>>(text) else {
        pool.recorder.failed("stream", "bad_frame");
        return;
    };
    pool.recorder.tally(received_tally(f.kind));
    match f.kind {
        "ready" => {
            // The rooms this stream took along are joined again; the rest
            // of a move's list is left to its rejoin task, which waits for
            // this frame.
            {
                let mut log = ep.log();
                if !log.rejoin.is_empty() {
                    let here: HashSet<u32> = f
                        .rooms
                        .iter()
                        .filter_map(|r| pool.room_index.get(&r.room).copied())
                        .collect();
                    let before = log.rejoin.len();
                    log.rejoin.retain(|r| !here.contains(r));
                    if let Some(at) = rejoin_started.take().filter(|_| log.rejoin.len() < before) {
                        // From the start of the connection to its ready frame.
                        pool.recorder
                            .ok("stream_rejoin", at.elapsed().as_micros() as u64);
                    }
                }
            }
            ep.set_connected(true);
        }
        "message" => {
            let (Some(room_id), Some(seq)) = (f.room, f.seq) else {
                pool.recorder.failed("stream", "bad_frame");
                return;
            };
            let Some(&room) = pool.room_index.get(&room_id) else {
                return;
            };
            pool.messages.fetch_add(1, Ordering::Relaxed);
            {
                let mut log = ep.log();
                let v = log.rooms.entry(room).or_default();
                v.delivered.push(seq);
                v.max_seen = v.max_seen.max(seq);
            }
            let Some((post, from)) = f.text.as_deref().and_then(post_tag) else {
                return;
            };
            if let Some(us) = pool.posts.since(post) {
                let mut parts = [("", 0); 3];
                let mut n = 0;
                if arrived_ns > 0 {
                    // How long the frame waited in this process's socket
                    // before it was read: the generator's share of `us`.
                    let lag_us = crate::stamp::unix_ns().saturating_sub(arrived_ns) / 1000;
                    parts[0] = (DELIVERY_ARRIVAL, us.saturating_sub(lag_us));
                    parts[1] = (DELIVERY_READ_LAG, lag_us);
                    n = 2;
                }
                // On a pool: the same delivery again, by whether it
                // crossed from the posting node to another.
                if let Some(from) = from.filter(|_| pool.nodes.len() > 1) {
                    let split = if from == node {
                        DELIVERY_SAME_NODE
                    } else {
                        DELIVERY_CROSS_NODE
                    };
                    parts[n] = (split, us);
                    n += 1;
                }
                pool.recorder.delivery(us, &parts[..n]);
            }
        }
        // `not_joined` answers a resume entry on a node that has no session
        // for the endpoint (it moved); the endpoint rejoins there itself.
        "removed" if f.reason != Some("not_joined") => {
            if let Some(room) = f.room.and_then(|r| pool.room_index.get(&r)) {
                ep.log().rooms.entry(*room).or_default().joined = false;
            }
        }
        // A room of a move's list is the rejoin task's; any other was
        // taken along and could not be joined again.
        "removed" => {
            if let Some(room) = f.room.and_then(|r| pool.room_index.get(&r)) {
                let mut log = ep.log();
                if !log.rejoin.contains(room) {
                    if let Some(v) = log.rooms.get_mut(room) {
                        v.not_joined = true;
                    }
                }
            }
        }
        _ => {}
    }
}

/// The tally that counts a received frame of event type `kind`
/// (`Step::events_received`); a type this generator does not know counts
/// as `other`.
fn received_tally(kind: &str) -> &'static str {
    match kind {
        "ready" => "received:ready",
        "message" => "received:message",
        "participant_joined" => "received:participant_joined",
        "participant_left" => "received:participant_left",
        "presence" => "received:presence",
        "invitation" => "received:invitation",
        "removed" => "received:removed",
        "room_updated" => "received:room_updated",
        "message_replaced" => "received:message_replaced",
        _ => "received:other",
    }
}

/// Records a join answer into an endpoint's log: the first join of a room
/// fixes what the endpoint is owed; history is kept apart from deliveries.
pub fn record_join(ep: &Endpoint, room: u32, last_seq: u64, history: &[u64]) {
    let mut log = ep.log();
    let v = log.rooms.entry(room).or_default();
    if v.base.is_none() {
        v.base = Some(last_seq);
    } else {
        for &s in history {
            if s > v.max_seen || !v.delivered.contains(&s) {
                v.via_join.push(s);
            }
        }
    }
    v.max_seen = v.max_seen.max(last_seq);
    v.joined = true;
}

/// Marks a room left (the stream owes nothing until the next join).
pub fn record_leave(ep: &Endpoint, room: u32) {
    ep.log().rooms.entry(room).or_default().joined = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_nodes_users_spread_evenly_over_the_survivors() {
        let h = NodeHealth::new(4, 4);
        assert_eq!(
            (0..8).map(|u| h.pick(u)).collect::<Vec<_>>(),
            [0, 1, 2, 3, 0, 1, 2, 3]
        );
        h.mark_down(1);
        // Users 1, 5, 9, ... lived on node 1: dealt out over 2, 3 and 0.
        let moved: Vec<usize> = (0..12).map(|j| h.pick(1 + 4 * j)).collect();
        assert_eq!(moved, [2, 3, 0, 2, 3, 0, 2, 3, 0, 2, 3, 0]);
        // Everyone else stays home.
        assert!((0..400).filter(|u| u % 4 != 1).all(|u| h.pick(u) == u % 4));
    }

    #[test]
    fn the_backup_nodes_take_over_only_when_every_home_node_is_down() {
        let h = NodeHealth::new(6, 4);
        for n in 0..3 {
            h.mark_down(n);
        }
        assert!((0..40).all(|u| h.pick(u) == 3), "the last home node first");
        h.mark_down(3);
        assert!((0..40).all(|u| h.pick(u) == 4));
        h.mark_down(4);
        assert!((0..40).all(|u| h.pick(u) == 5));
        h.mark_down(5);
        assert!((0..40).all(|u| h.pick(u) == u % 4), "all down: home again");
    }

    #[test]
    fn post_numbers_and_nodes_round_trip_through_the_text() {
        assert_eq!(post_tag(&post_text(4711, 3, 2)), Some((4711, Some(2))));
        assert_eq!(post_tag(&post_text(0, 0, 0)), Some((0, Some(0))));
        // A post without a node (an older generator's) still has its number.
        assert_eq!(post_tag("lg 12 w3 persistent"), Some((12, None)));
        assert_eq!(post_tag("hello"), None);
        assert_eq!(post_tag("lg x n1"), None);
    }
}
