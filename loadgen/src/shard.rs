//! One shard of the load generator: the part of a step that belongs to the
//! simulated users `u` with `u % shards == shard`.
//!
//! One process may hold only its open-file limit of sockets (20,000 on these
//! machines), so a step with more event streams runs as several shard
//! processes. Each shard draws the step's whole schedule from the seed (so it
//! knows every post's intended send time, including those of other shards'
//! users), opens its own users' streams, performs its own users' operations
//! under goose, and measures from the run's one epoch, which the parent hands
//! over as wall-clock nanoseconds. The parent merges what the shards measured
//! (HdrHistograms travel in their V2 encoding, so percentiles merge exactly)
//! and runs the checker over every endpoint's view.
//!
//! The parent and a shard speak JSON lines: [`Command`]s on the shard's
//! stdin, [`Event`]s on its stdout. A step that fits in one process runs its
//! single shard as a task of the parent through the same channels.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use pchat_protocol::client::Client;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use crate::endpoints::{record_join, run_stream, Endpoint, Node, Pool, PostTimes, RoomView};
use crate::record::{RawSecond, RawWindow, Recorder};
use crate::retry::{self, Backoff, Failure};
use crate::schedule::Schedule;
use crate::workload::Workload;

/// How to start a shard process: `program args... --spec FILE --shard K`.
#[derive(Clone, Debug)]
pub struct ShardCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// The small parameters of a step's shard.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardParams {
    /// This shard's index, and how many there are.
    pub shard: u32,
    pub shards: u32,
    /// The run's epoch in nanoseconds since the UNIX epoch: every shard
    /// measures from the same instant as the parent.
    pub epoch_unix_ns: u64,
    /// Seed of the step's schedule.
    pub schedule_seed: u64,
    pub ramp_ms: u64,
    pub steady_ms: u64,
    pub grace_ms: u64,
    /// goose users of this shard.
    pub workers: usize,
    /// tokio worker threads of a shard process (a shard run inside the
    /// parent uses the parent's runtime).
    pub threads: usize,
    /// Base URLs of the target's nodes; user u talks to `nodes[u % len]`.
    pub nodes: Vec<String>,
    /// How many of `nodes` users live on (the rest are a backup pool's,
    /// used when the home nodes refuse); 0 means all.
    #[serde(default)]
    pub home_nodes: usize,
    /// Where goose writes its HTML report of this shard, if anywhere.
    pub goose_report: Option<PathBuf>,
}

/// Everything a shard needs.
#[derive(Clone)]
pub struct ShardSpec {
    pub params: ShardParams,
    pub workload: Arc<Workload>,
    /// Bearer tokens by user (every user's: the file is shared by shards).
    pub tokens: Arc<Vec<String>>,
    /// Server room ids by workload room index.
    pub room_ids: Arc<Vec<u64>>,
}

/// The spec file as written by the parent ...
#[derive(Serialize)]
struct WireOut<'a> {
    params: &'a ShardParams,
    workload: &'a Workload,
    tokens: &'a [String],
    room_ids: &'a [u64],
}

/// ... and as read by a shard.
#[derive(Deserialize)]
struct WireIn {
    params: ShardParams,
    workload: Workload,
    tokens: Vec<String>,
    room_ids: Vec<u64>,
}

impl ShardSpec {
    /// Whether simulated user `u` belongs to this shard.
    pub fn owns(&self, u: usize) -> bool {
        u % self.params.shards.max(1) as usize == self.params.shard as usize
    }
}

/// What the parent tells a shard.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Start the ramp at this time (µs since the epoch).
    Ramp { at_us: u64 },
    /// Start the steady state at this time (µs since the epoch).
    Steady { at_us: u64 },
    /// Stop now and report what was measured (Ctrl-C).
    Stop,
}

/// What a shard tells the parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Set up (schedule drawn, nodes resolved): ready to ramp.
    Ready,
    /// The second that ended at `epoch + index` seconds, with the users
    /// arrived so far and the streams open.
    Second {
        index: u64,
        users: u64,
        endpoints: u64,
        figures: Box<RawSecond>,
    },
    /// Every arrival is done (or its deadline passed); `connected` of the
    /// shard's endpoints had their stream open and `arrived` of its users
    /// had joined all their rooms. `away` counts the others by
    /// [`Endpoint::absence_detail`].
    Ramped {
        connected: u64,
        arrived: u64,
        #[serde(default)]
        away: BTreeMap<String, u64>,
    },
    /// The schedule is done; deliveries are draining.
    Draining,
    /// The shard's results; its last event.
    Done(Box<ShardOutcome>),
    /// The shard could not run; its last event.
    Failed(String),
}

/// What one shard measured in a step.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShardOutcome {
    pub window: RawWindow,
    /// End of the measurement window, seconds since the epoch.
    pub window_end_s: f64,
    /// Acknowledged posts: (room index, seq, post number).
    pub acks: Vec<(u32, u64, u32)>,
    /// What each of the shard's endpoints saw of its rooms.
    pub views: Vec<EndpointViews>,
    /// Largest lateness of an operation behind its intended time (µs).
    pub lag_max_us: u64,
}

/// One endpoint's views of its rooms, for the checker.
#[derive(Debug, Serialize, Deserialize)]
pub struct EndpointViews {
    pub user: u32,
    pub endpoint: u8,
    pub rooms: Vec<(u32, RoomView)>,
    /// Whether its stream was open (`ready`) when the window ended.
    pub connected: bool,
}

/// Joins in flight during a ramp, over all shards: enough to keep up with
/// arrivals, few enough not to queue thousands of requests at the server.
/// Rejoins after a move share the same bound: every one is an HTTP
/// connection, and a generator process holds a bounded number of files.
const JOINS_IN_FLIGHT: usize = 256;

/// Refusals (busy, rate limited) a ramp's join honours before it fails.
const RAMP_JOIN_REFUSALS: u32 = 6;

/// Why a ramp's join failed, with the wait a refusal asked for.
fn join_failure(e: &pchat_protocol::client::ClientError) -> Failure {
    use pchat_protocol::client::ClientError;
    match e {
        ClientError::Api { body, .. } => Failure {
            code: body.error.code.as_str().to_owned(),
            retry_after: body.error.retry_after_ms.map(Duration::from_millis),
        },
        ClientError::Unexpected { status, .. } => Failure::new(format!("http:{status}")),
        _ => Failure::new("io"),
    }
}

/// Nanoseconds since the UNIX epoch at `at`.
pub fn unix_ns(at: Instant) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    now.saturating_sub(at.elapsed().as_nanos() as u64)
}

/// The `Instant` of a wall-clock time given by [`unix_ns`] (same machine).
pub fn instant_of_unix_ns(ns: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let ago = Duration::from_nanos(now.saturating_sub(ns));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

/// Runs one shard's part of a step, then sends [`Event::Done`] or
/// [`Event::Failed`]. `commands` closing counts as [`Command::Stop`].
pub async fn run_reporting(
    spec: ShardSpec,
    epoch: Instant,
    commands: UnboundedReceiver<Command>,
    events: UnboundedSender<Event>,
) {
    let last = match run(spec, epoch, commands, events.clone()).await {
        Ok(o) => Event::Done(Box::new(o)),
        Err(e) => Event::Failed(format!("{e:#}")),
    };
    let _ = events.send(last);
}

async fn run(
    spec: ShardSpec,
    epoch: Instant,
    mut commands: UnboundedReceiver<Command>,
    events: UnboundedSender<Event>,
) -> anyhow::Result<ShardOutcome> {
    let p = spec.params.clone();
    let w = spec.workload.clone();
    // Stop: asked for, or the parent is gone.
    let stop = CancellationToken::new();
    let (ctl_tx, mut ctl) = unbounded_channel();
    let reader = {
        let stop = stop.clone();
        tokio::spawn(async move {
            while let Some(c) = commands.recv().await {
                match c {
                    Command::Stop => stop.cancel(),
                    other => {
                        let _ = ctl_tx.send(other);
                    }
                }
            }
            stop.cancel();
        })
    };
    let _reader = AbortOnDrop(reader);

    let schedule = Schedule::draw(&w, p.schedule_seed, p.ramp_ms, p.steady_ms);
    let recorder = Arc::new(Recorder::default());
    let posts = Arc::new(PostTimes::new(epoch, schedule.post_times()));
    let mut nodes = Vec::with_capacity(p.nodes.len());
    for base in &p.nodes {
        let dest = crate::net::resolve(base).await?;
        nodes.push(Node {
            base: base.clone(),
            dest,
        });
    }
    anyhow::ensure!(!nodes.is_empty(), "the target has no nodes");
    let home = if p.home_nodes == 0 {
        nodes.len()
    } else {
        p.home_nodes
    };
    let health = Arc::new(crate::endpoints::NodeHealth::new(nodes.len(), home));
    let node_of = |u: usize| health.home_of(u);
    // The shards share the joins in flight (the ramp's and the rejoins).
    let join_limit = Arc::new(tokio::sync::Semaphore::new(
        (JOINS_IN_FLIGHT / p.shards.max(1) as usize).max(16),
    ));
    let pool = Arc::new(Pool {
        joins: join_limit.clone(),
        health: health.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
        nodes: nodes.clone(),
        recorder: recorder.clone(),
        posts: posts.clone(),
        room_index: spec
            .room_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as u32))
            .collect::<HashMap<_, _>>(),
        room_ids: spec.room_ids.to_vec(),
        stop: CancellationToken::new(),
        open: AtomicU64::new(0),
        messages: AtomicU64::new(0),
        seed: p.schedule_seed,
    });
    // Other shards' users get no endpoints here.
    let endpoints: Arc<Vec<Vec<Arc<Endpoint>>>> = Arc::new(
        w.users
            .iter()
            .enumerate()
            .map(|(u, su)| {
                if spec.owns(u) {
                    (0..su.endpoints)
                        .map(|e| Arc::new(Endpoint::new(e)))
                        .collect()
                } else {
                    Vec::new()
                }
            })
            .collect(),
    );
    let arrived = Arc::new(AtomicU64::new(0));
    let _ticker = AbortOnDrop(tokio::spawn(report_seconds(
        epoch,
        recorder.clone(),
        pool.clone(),
        arrived.clone(),
        events.clone(),
    )));
    let _ = events.send(Event::Ready);

    let at = |us: u64| epoch + Duration::from_micros(us);
    let Some(Command::Ramp { at_us }) = next_command(&mut ctl, &stop).await else {
        return Ok(ShardOutcome::default());
    };

    // Ramp: users arrive at their drawn times; each opens its streams and
    // joins its rooms on every endpoint.
    let ramp_start = at(at_us);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut streams = Vec::new();
    let mut arrivals_done = Vec::new();
    // An endpoint's index over the whole run picks its source address, so
    // shards together spread over 127.0.0.x as one process would.
    let mut slot = 0usize;
    for (u, arrival) in schedule.arrivals.iter().enumerate() {
        let first_slot = slot;
        slot += w.users[u].endpoints as usize;
        if !spec.owns(u) {
            continue;
        }
        let start = ramp_start + Duration::from_millis(*arrival);
        let user_endpoints = endpoints[u].clone();
        for (e, ep) in user_endpoints.iter().enumerate() {
            let (pool, ep, token) = (pool.clone(), ep.clone(), spec.tokens[u].clone());
            streams.push(tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                run_stream(pool, ep, token, first_slot + e, u).await;
            }));
        }
        let client = Client::with_http(http.clone(), nodes[node_of(u)].base.clone())
            .as_token(&spec.tokens[u]);
        let rooms = w.users[u].rooms.clone();
        let (recorder, arrived, room_ids, limit, pool_stop) = (
            recorder.clone(),
            arrived.clone(),
            spec.room_ids.clone(),
            join_limit.clone(),
            pool.stop.clone(),
        );
        let mut backoff = Backoff::new(retry::seed(
            p.schedule_seed,
            retry::kind::RAMP_JOIN,
            u as u64,
        ));
        arrivals_done.push(tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            // Joins follow the stream's ready frame, so the stream carries
            // everything after each join's last_seq (PC-9.3b).
            for ep in &user_endpoints {
                tokio::select! {
                    _ = ep.until_connected(Duration::from_secs(30)) => {}
                    _ = pool_stop.cancelled() => return,
                }
                for &room in &rooms {
                    let t = Instant::now();
                    // A refusal (busy, rate limited) is asked again after its
                    // Retry-After plus jitter, a few times.
                    let mut refusals = 0;
                    loop {
                        let Ok(permit) = limit.acquire().await else {
                            return;
                        };
                        let failure =
                            match client.join(room_ids[room as usize], &ep.name, None).await {
                                Ok(j) => {
                                    recorder.ok("join", t.elapsed().as_micros() as u64);
                                    let seqs: Vec<u64> = j.messages.iter().map(|m| m.seq).collect();
                                    record_join(ep, room, j.last_seq, &seqs);
                                    break;
                                }
                                Err(e) => join_failure(&e),
                            };
                        drop(permit);
                        if !failure.is_refusal() || refusals >= RAMP_JOIN_REFUSALS {
                            recorder.failed("join", &failure.code);
                            break;
                        }
                        refusals += 1;
                        recorder.retried("join", &failure.code);
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.after_refusal(failure.retry_after)) => {}
                            _ = pool_stop.cancelled() => return,
                        }
                    }
                }
            }
            arrived.fetch_add(1, Ordering::Relaxed);
        }));
    }
    let ramp_deadline = ramp_start + Duration::from_millis(p.ramp_ms) + Duration::from_secs(120);
    for a in arrivals_done {
        tokio::select! {
            _ = a => {}
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(ramp_deadline.into()) => break,
        }
    }
    let (mut connected, mut away) = (0, BTreeMap::new());
    for ep in endpoints.iter().flatten() {
        if ep.is_connected() {
            connected += 1;
        } else {
            *away.entry(ep.absence_detail()).or_insert(0) += 1;
        }
    }
    let _ = events.send(Event::Ramped {
        connected,
        arrived: arrived.load(Ordering::Relaxed),
        away,
    });

    // Steady state under goose, then a grace period for deliveries.
    let steady = next_command(&mut ctl, &stop).await;
    recorder.take_window_raw();
    recorder.set_window(true);
    let start = match steady {
        Some(Command::Steady { at_us }) => at(at_us),
        _ => Instant::now(),
    };
    posts.start(start);
    let ops = schedule
        .ops
        .into_iter()
        .filter(|o| spec.owns(o.kind.user() as usize))
        .collect();
    let shared = Arc::new(crate::ops::Shared {
        ops,
        next: Default::default(),
        start,
        end: start + Duration::from_millis(p.steady_ms),
        workload: w.clone(),
        tokens: spec.tokens.clone(),
        room_ids: spec.room_ids.clone(),
        nodes: Arc::new(p.nodes.clone()),
        health: health.clone(),
        endpoints: endpoints.clone(),
        recorder: recorder.clone(),
        posts,
        acks: Arc::default(),
        lag_max_us: AtomicU64::new(0),
        seed: p.schedule_seed,
    });
    if !stop.is_cancelled() {
        tokio::select! {
            r = crate::ops::run(shared.clone(), &p.nodes[0], p.workers.max(1), p.goose_report.as_deref()) => { r?; }
            _ = stop.cancelled() => {}
        }
    }
    let _ = events.send(Event::Draining);
    tokio::select! {
        _ = drain(&pool, Duration::from_millis(p.grace_ms)) => {}
        _ = stop.cancelled() => {}
    }
    // Every endpoint's stream is checked once at the end: one without it
    // (lost and not back, or never opened) is what its user would notice,
    // an error; the losses it recovered from are only retried.
    let mut connected_at_end = Vec::new();
    for ep in endpoints.iter().flatten() {
        connected_at_end.push(ep.is_connected());
        if ep.is_connected() {
            recorder.succeeded("stream");
        } else {
            // Down, and why: still connecting, waiting to try again, or
            // open without its `ready` frame; and what the last attempt
            // met (a refusal, a timeout, a host limit).
            recorder.failed("stream", &format!("down:{}", ep.absence_detail()));
        }
    }
    recorder.set_window(false);
    let window_end_s = epoch.elapsed().as_secs_f64();
    let window = recorder.take_window_raw();
    pool.stop.cancel();
    for s in streams {
        let _ = s.await;
    }

    let acks = std::mem::take(&mut *shared.acks.lock().unwrap_or_else(|p| p.into_inner()));
    let mut views = Vec::new();
    let mut connected = connected_at_end.into_iter();
    for (u, eps) in endpoints.iter().enumerate() {
        for (e, ep) in eps.iter().enumerate() {
            let rooms = std::mem::take(&mut ep.log().rooms);
            views.push(EndpointViews {
                user: u as u32,
                endpoint: e as u8,
                rooms: rooms.into_iter().collect(),
                connected: connected.next().unwrap_or(false),
            });
        }
    }
    Ok(ShardOutcome {
        window,
        window_end_s,
        acks,
        views,
        lag_max_us: shared.lag_max_us.load(Ordering::Relaxed),
    })
}

/// How long the drain goes on past the grace while messages still arrive.
const DRAIN_MAX: Duration = Duration::from_secs(120);
/// A drain past the grace ends once this passes without a message.
const DRAIN_QUIET: Duration = Duration::from_secs(3);

/// Waits for the last deliveries of a step: the grace, and then, while
/// messages still arrive on this shard's streams (a server behind by more
/// than the grace), until [`DRAIN_QUIET`] passes without one, at most
/// [`DRAIN_MAX`] more. A late message is then measured as late, not
/// counted lost because the run stopped looking.
async fn drain(pool: &Pool, grace: Duration) {
    let seen = || pool.messages.load(Ordering::Relaxed);
    let end_of_grace = tokio::time::Instant::now() + grace;
    // The grace's last quiet stretch says whether anything still arrives.
    tokio::time::sleep_until(end_of_grace - grace.min(DRAIN_QUIET)).await;
    let mut last = seen();
    tokio::time::sleep_until(end_of_grace).await;
    let until = end_of_grace + DRAIN_MAX;
    loop {
        let now = seen();
        if now == last || tokio::time::Instant::now() >= until {
            return;
        }
        last = now;
        tokio::time::sleep(DRAIN_QUIET).await;
    }
}

/// The parent's next command, or `None` once the shard is to stop.
async fn next_command(
    ctl: &mut UnboundedReceiver<Command>,
    stop: &CancellationToken,
) -> Option<Command> {
    tokio::select! {
        c = ctl.recv() => c,
        _ = stop.cancelled() => None,
    }
}

/// Sends the recorder's figures every second, on the seconds of the epoch
/// (as the parent samples), so seconds of different shards line up.
async fn report_seconds(
    epoch: Instant,
    recorder: Arc<Recorder>,
    pool: Arc<Pool>,
    arrived: Arc<AtomicU64>,
    events: UnboundedSender<Event>,
) {
    let index = epoch.elapsed().as_secs() + 1;
    let first = epoch + Duration::from_secs(index);
    let mut tick = tokio::time::interval_at(first.into(), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        // Ticks fire at or after their second, never before.
        let index = epoch.elapsed().as_secs();
        let ev = Event::Second {
            index,
            users: arrived.load(Ordering::Relaxed),
            endpoints: pool.open.load(Ordering::Relaxed),
            figures: Box::new(recorder.take_second_raw()),
        };
        if events.send(ev).is_err() {
            return;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ------------------------------------------------------------ the parent side

/// A running shard, seen from the parent.
pub struct ShardHandle {
    commands: UnboundedSender<Command>,
    /// The shard's process, if it runs in one.
    pub pid: Option<u32>,
    task: tokio::task::JoinHandle<()>,
}

impl ShardHandle {
    pub fn send(&self, c: Command) {
        // A shard that is gone has sent its last event already.
        let _ = self.commands.send(c);
    }

    /// Waits for the shard (its process) to end.
    pub async fn finish(self) {
        drop(self.commands);
        let _ = self.task.await;
    }
}

/// Runs shard `k` as a task of this process; its events go to `out`.
pub fn start_in_process(
    spec: ShardSpec,
    epoch: Instant,
    k: usize,
    out: UnboundedSender<(usize, Event)>,
) -> ShardHandle {
    let (commands, rx) = unbounded_channel();
    let (etx, mut erx) = unbounded_channel();
    tokio::spawn(async move {
        while let Some(ev) = erx.recv().await {
            let _ = out.send((k, ev));
        }
    });
    ShardHandle {
        commands,
        pid: None,
        task: tokio::spawn(run_reporting(spec, epoch, rx, etx)),
    }
}

/// The spec file the shard processes of a step read; removed when dropped.
pub struct SpecFile(PathBuf);

impl SpecFile {
    /// Writes `spec` (its shard index is given to each process apart).
    pub fn write(spec: &ShardSpec) -> anyhow::Result<SpecFile> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "loadgen-shard-{}-{}.json",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file =
            std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let mut out = std::io::BufWriter::new(file);
        serde_json::to_writer(
            &mut out,
            &WireOut {
                params: &spec.params,
                workload: &spec.workload,
                tokens: &spec.tokens,
                room_ids: &spec.room_ids,
            },
        )?;
        std::io::Write::flush(&mut out)?;
        Ok(SpecFile(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SpecFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts shard `k` as a process: `command ... --spec FILE --shard K`. It
/// gets a process group of its own, so a Ctrl-C at the terminal reaches
/// only the parent, which then tells every shard to stop.
pub fn start_process(
    command: &ShardCommand,
    spec: &SpecFile,
    k: usize,
    out: UnboundedSender<(usize, Event)>,
) -> anyhow::Result<ShardHandle> {
    let mut child = tokio::process::Command::new(&command.program)
        .args(&command.args)
        .arg("--spec")
        .arg(spec.path())
        .arg("--shard")
        .arg(k.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start generator process {}", command.program.display()))?;
    let pid = child.id();
    let mut stdin = child.stdin.take().context("shard stdin")?;
    let stdout = child.stdout.take().context("shard stdout")?;
    let (commands, mut rx) = unbounded_channel::<Command>();
    tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&c) else {
                continue;
            };
            line.push(b'\n');
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                return;
            }
        }
        // Dropping stdin tells the shard that the parent is done with it.
    });
    let task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut ended = false;
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Event>(&line) {
                Ok(ev) => {
                    ended |= matches!(ev, Event::Done(_) | Event::Failed(_));
                    let _ = out.send((k, ev));
                }
                // Anything else a library printed (goose's "All N users
                // launched."): pass it on as a log line.
                Err(_) if line.trim().is_empty() => {}
                Err(_) => eprintln!(
                    "generator {k}: {}",
                    line.chars().take(300).collect::<String>()
                ),
            }
        }
        let status = child.wait().await;
        if !ended {
            let _ = out.send((
                k,
                Event::Failed(format!(
                    "generator process {k} ended ({}) without its results",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                )),
            ));
        }
    });
    Ok(ShardHandle {
        commands,
        pid,
        task,
    })
}

/// The main of a shard process: reads its spec, runs, and speaks JSON
/// lines (commands on stdin, events on stdout) until its last event.
pub fn process_main(spec_path: &Path, shard: u32) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(spec_path).with_context(|| format!("read {}", spec_path.display()))?;
    let wire: WireIn = serde_json::from_slice(&bytes).context("parse the shard spec")?;
    drop(bytes);
    let mut params = wire.params;
    params.shard = shard;
    if let Some(report) = &mut params.goose_report {
        let stem = report.file_stem().unwrap_or_default().to_string_lossy();
        *report = report.with_file_name(format!("{stem}-{shard}.html"));
    }
    let spec = ShardSpec {
        params,
        workload: Arc::new(wire.workload),
        tokens: Arc::new(wire.tokens),
        room_ids: Arc::new(wire.room_ids),
    };
    crate::net::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(spec.params.threads.max(1))
        .enable_all()
        .build()?;
    let (commands, rx) = unbounded_channel();
    // A plain thread reads stdin (blocking): tokio's stdin would hold the
    // runtime's shutdown until the parent closes it.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Command>(&line) {
                Ok(c) => {
                    if commands.send(c).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("generator {shard}: bad command {line:?}: {e}"),
            }
        }
        // Dropping `commands` stops the shard: the parent is gone.
    });
    rt.block_on(async move {
        let epoch = instant_of_unix_ns(spec.params.epoch_unix_ns);
        let (events, mut erx) = unbounded_channel();
        let writer = tokio::spawn(async move {
            let mut out = tokio::io::stdout();
            while let Some(ev) = erx.recv().await {
                let mut line = serde_json::to_vec(&ev)?;
                line.push(b'\n');
                out.write_all(&line).await?;
                out.flush().await?;
            }
            anyhow::Ok(())
        });
        run_reporting(spec, epoch, rx, events).await;
        writer.await.context("stdout writer")?
    })?;
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_crosses_processes_as_wall_clock_nanoseconds() {
        let epoch = Instant::now() - Duration::from_secs(5);
        let back = instant_of_unix_ns(unix_ns(epoch));
        let diff = if back > epoch {
            back - epoch
        } else {
            epoch - back
        };
        assert!(diff < Duration::from_millis(5), "{diff:?}");
    }

    #[test]
    fn events_and_commands_survive_their_wire_form() {
        let r = Recorder::default();
        r.ok("post_ack", 1234);
        let ev = Event::Second {
            index: 7,
            users: 3,
            endpoints: 4,
            figures: Box::new(r.take_second_raw()),
        };
        let back: Event = serde_json::from_str(&serde_json::to_string(&ev).unwrap()).unwrap();
        let Event::Second { index, figures, .. } = back else {
            panic!("not a second: {back:?}");
        };
        assert_eq!(index, 7);
        assert_eq!(figures.posts, 1);
        assert_eq!(figures.post_ack.unwrap().0.max(), 1234);
        let c: Command =
            serde_json::from_str(&serde_json::to_string(&Command::Steady { at_us: 5 }).unwrap())
                .unwrap();
        assert!(matches!(c, Command::Steady { at_us: 5 }));
    }
}
