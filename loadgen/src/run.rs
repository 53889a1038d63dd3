//! A whole run: for each load step, provision the workload, run the step's
//! generator shards (in this process when one holds the step, else as
//! processes: see [`crate::shard`]), merge what they measured, check what was
//! received, and sample CPU and memory every second throughout.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use pchat_protocol::client::Client;
use scenarios::results::{GeneratorHealth, RunResult, Sample, Step, RESULTS_SCHEMA};
use tokio_util::sync::CancellationToken;

use crate::endpoints::Endpoint;
use crate::procfs::CpuSampler;
use crate::record::{RawSecond, RawWindow};
use crate::shard::{self, Command, Event, ShardCommand, ShardOutcome, ShardParams, ShardSpec};
use crate::workload::Workload;

/// The server under test.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port` of the node that takes provisioning and the
    /// administrator's calls.
    pub base: String,
    /// Base URLs of every node of the deployment. Simulated user u's
    /// streams and requests go to `nodes[u % nodes.len()]`; empty means
    /// `[base]`, one node.
    pub nodes: Vec<String>,
    /// A backup pool's nodes: clients move there only when every node of
    /// `nodes` refuses them (a failover).
    pub backup_nodes: Vec<String>,
    /// A token of a Persistent Chat administrator (provisioning, tokens).
    pub admin_token: String,
    /// Server processes on this machine whose CPU and RSS are sampled,
    /// each with every process descending from it (stream workers, the
    /// nodes a pool's `pool local` starts, also after a failover): the
    /// server's process, or a pool's `pool local`; empty for an external
    /// target.
    pub server_pids: Vec<u32>,
    /// Processes per node that hold its event streams: 1 for a node that
    /// holds them itself, N for a node with N stream workers.
    pub stream_processes: usize,
    /// How the report names the target.
    pub label: String,
}

impl Target {
    /// The nodes users are spread over.
    pub fn nodes(&self) -> Vec<String> {
        if self.nodes.is_empty() {
            vec![self.base.clone()]
        } else {
            self.nodes.clone()
        }
    }
}

/// One load level.
#[derive(Clone, Debug)]
pub struct StepSpec {
    pub users: u64,
    pub ramp_s: f64,
    pub steady_s: f64,
    /// Time after the last operation for deliveries to arrive.
    pub grace_s: f64,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub scenario: String,
    pub description: String,
    pub claim: Option<scenarios::Claim>,
    pub slo: scenarios::Slo,
    pub seed: u64,
    pub steps: Vec<StepSpec>,
    /// Stop after the first step that breaks the objective (knee search).
    pub stop_when_broken: bool,
    /// After `steps`, run more steps (with the last step's times) that
    /// bisect the knee to within this many users
    /// ([`scenarios::verdict::next_refinement`]); `None`: none.
    pub refine_to: Option<u64>,
    /// goose users executing the request/response operations, over all
    /// generator processes.
    pub workers: usize,
    /// Generator processes per step; `None`: [`generators_for`] the step.
    pub generators: Option<usize>,
    /// How to start a generator process, for steps that need more than
    /// one; a step that needs several without it fails with a reason.
    pub shard_command: Option<ShardCommand>,
    /// The directory where goose writes its own HTML report of each step
    /// (`goose-<users>-users.html`, `-<k>.html` per process), if any.
    pub goose_report: Option<std::path::PathBuf>,
    pub command: String,
}

/// Event streams one generator process holds at most when the count is
/// chosen automatically: well inside the 20,000 open files one process may
/// have on these machines, with room for its HTTP connections.
pub const STREAMS_PER_GENERATOR: u64 = 15_000;

/// Generator processes for a step of `endpoints` streams: `requested`, or
/// enough that none holds more than [`STREAMS_PER_GENERATOR`]. One means
/// the step runs inside the calling process.
pub fn generators_for(endpoints: u64, requested: Option<usize>) -> usize {
    requested
        .unwrap_or_else(|| endpoints.div_ceil(STREAMS_PER_GENERATOR) as usize)
        .max(1)
}

/// Live figures for a progress display, updated every second.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    pub phase: String,
    pub step: usize,
    pub steps: usize,
    pub users: u64,
    pub endpoints: u64,
    pub delivery_p99_ms: f64,
    pub post_ack_p99_ms: f64,
    pub elapsed_s: f64,
}

/// Builds the workload of a step: (users, namespace) -> workload.
pub type MakeWorkload<'a> = dyn Fn(u64, &str) -> Workload + 'a;

/// What the sampler reads while a step runs.
#[derive(Default)]
struct Live {
    phase: Mutex<String>,
    /// Latest (users arrived, streams open) of each shard of the step.
    shards: Mutex<HashMap<usize, (u64, u64)>>,
    /// Per-second figures merged over the shards, by second of the epoch.
    seconds: Mutex<BTreeMap<u64, RawSecond>>,
    /// Generator processes besides this one: (pid, CPU capacity in percent
    /// of one core, i.e. 100 per worker thread).
    processes: Mutex<Vec<(u32, f64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic mid-update cannot break it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Live {
    fn set_phase(&self, p: &str) {
        *lock(&self.phase) = p.into();
    }

    fn totals(&self) -> (u64, u64) {
        lock(&self.shards)
            .values()
            .fold((0, 0), |(u, e), (su, se)| (u + su, e + se))
    }
}

/// CPU of one generator process in one second.
struct ProcessCpu {
    t_s: f64,
    pid: u32,
    pct: f64,
    capacity_pct: f64,
}

/// Runs every step of `spec` against `target`. Stops early, keeping what
/// was measured, when `interrupt` fires. `on_progress` is called every second.
pub async fn run(
    spec: &RunSpec,
    target: &Target,
    make: &MakeWorkload<'_>,
    judge: &dyn Fn(&Step) -> bool,
    interrupt: CancellationToken,
    on_progress: &(dyn Fn(&Progress) + Sync),
) -> anyhow::Result<RunResult> {
    let epoch = Instant::now();
    let started_at = time::OffsetDateTime::now_utc();
    let (soft, hard) = crate::net::raise_fd_limit();
    let mut machine = crate::procfs::machine();
    machine.fd_limit = (soft, hard);
    let live = Arc::new(Live::default());
    live.set_phase("provision");
    let timeline: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler_stop = CancellationToken::new();
    let progress: Arc<Mutex<Progress>> = Arc::default();
    let sampler = tokio::spawn(sample_every_second(
        epoch,
        machine.cores,
        target.server_pids.clone(),
        live.clone(),
        timeline.clone(),
        progress.clone(),
        sampler_stop.clone(),
    ));

    let mut steps: Vec<Step> = Vec::new();
    let mut limits_hit = Vec::new();
    let mut not_run = Vec::new();
    let mut lag_max_us = 0u64;
    let mut ended_because = None;
    let progress_tick = {
        let progress = progress.clone();
        move |step: usize, steps: usize| {
            let mut p = lock(&progress).clone();
            p.step = step + 1;
            p.steps = steps;
            on_progress(&p);
        }
    };
    let mut planned: std::collections::VecDeque<StepSpec> = spec.steps.iter().cloned().collect();
    // (users, held) of every step run, for the knee's refinement.
    let mut outcomes: Vec<(u64, bool)> = Vec::new();
    for i in 0.. {
        let step_spec = match planned.pop_front() {
            Some(s) => s,
            None => match refinement(spec, &outcomes) {
                Some(s) => s,
                None => break,
            },
        };
        let step_spec = &step_spec;
        let steps_known = i + 1 + planned.len();
        if interrupt.is_cancelled() {
            ended_because = Some("interrupted (Ctrl-C)".into());
            break;
        }
        let ns = format!("lg{:x}s{i}r{}-", spec.seed, std::process::id() % 10_000);
        let workload = Arc::new(make(step_spec.users, &ns));
        let generators = generators_for(workload.endpoints(), spec.generators);
        let fits = Fit {
            own_limit: soft,
            workers: spec.workers,
            generators,
            can_spawn: spec.shard_command.is_some(),
            // The lowest limit must hold the fullest node's share per
            // stream-holding process.
            server_limit: target
                .server_pids
                .iter()
                .filter_map(|p| crate::procfs::fd_limit(*p))
                .min(),
        };
        if let Some(reason) = preflight(&workload, target, &fits) {
            // Larger steps would not fit either: stop here.
            let rest = std::iter::once(step_spec).chain(planned.iter());
            not_run.extend(rest.map(|s| scenarios::results::NotRun {
                users: s.users,
                endpoints: if s.users == step_spec.users {
                    workload.endpoints()
                } else {
                    0
                },
                reason: reason.clone(),
            }));
            break;
        }
        let outcome = run_step(StepCtx {
            spec,
            step_spec,
            target,
            workload,
            generators,
            live: live.clone(),
            epoch,
            interrupt: interrupt.clone(),
            tick: &|| progress_tick(i, steps_known),
        })
        .await;
        let (step, lag, limits) = match outcome {
            Ok(v) => v,
            Err(e) => {
                ended_because = Some(format!("step {} failed: {e:#}", i + 1));
                break;
            }
        };
        lag_max_us = lag_max_us.max(lag);
        limits_hit.extend(limits);
        let holds = judge(&step);
        outcomes.push((step.users, holds));
        steps.push(step);
        if interrupt.is_cancelled() {
            ended_because = Some("interrupted (Ctrl-C)".into());
            break;
        }
        if spec.stop_when_broken && !holds {
            // The knee is bracketed: heavier steps would only overload the
            // host; refinement steps (if any) follow.
            planned.clear();
        }
    }
    live.set_phase("done");
    sampler_stop.cancel();
    let process_cpu = sampler.await.unwrap_or_default();
    let mut timeline = std::mem::take(&mut *lock(&timeline));
    fill_seconds(&mut timeline, &lock(&live.seconds));
    // The host's CPU says something about the server only when it runs here.
    let local_server = !target.server_pids.is_empty();
    for s in &mut steps {
        fill_server_figures(s, &timeline, local_server.then_some(machine.cores));
    }
    let generator = generator_health(&steps, &timeline, &process_cpu, machine.cores, lag_max_us);
    Ok(RunResult {
        schema: RESULTS_SCHEMA,
        scenario: spec.scenario.clone(),
        description: spec.description.clone(),
        claim: spec.claim.clone(),
        slo: spec.slo.clone(),
        seed: spec.seed,
        target: target.label.clone(),
        machine,
        command: spec.command.clone(),
        started_at: started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        duration_s: epoch.elapsed().as_secs_f64(),
        completed: ended_because.is_none(),
        ended_because,
        steps,
        timeline,
        generator,
        limits_hit,
        not_run,
    })
}

/// The next step of a refined knee search once the planned steps are
/// done: its users from [`scenarios::verdict::next_refinement`], its times
/// those of the last planned step.
fn refinement(spec: &RunSpec, outcomes: &[(u64, bool)]) -> Option<StepSpec> {
    let users = scenarios::verdict::next_refinement(outcomes, spec.refine_to?)?;
    Some(StepSpec {
        users,
        ..spec.steps.last()?.clone()
    })
}

/// The longest a provisioning call may take (the whole directory in one
/// request and one transaction).
const PROVISION_TIMEOUT: Duration = Duration::from_secs(900);

/// File descriptors a process needs beside its event streams: HTTP
/// connections, databases, the listener, logs.
const FD_HEADROOM: u64 = 600;

/// The processes a step would run in, and their limits.
struct Fit {
    /// Open files one generator process may hold.
    own_limit: u64,
    workers: usize,
    generators: usize,
    /// Whether generator processes can be started at all.
    can_spawn: bool,
    /// Open files the most limited server node process may hold, when the
    /// server runs on this machine.
    server_limit: Option<u64>,
}

/// Streams of the fullest of `parts` groups when user u goes to group
/// `u % parts`.
fn fullest_part(w: &Workload, parts: usize) -> u64 {
    let parts = parts.max(1);
    let mut per = vec![0u64; parts];
    for (u, su) in w.users.iter().enumerate() {
        per[u % parts] += su.endpoints as u64;
    }
    per.into_iter().max().unwrap_or(0)
}

/// Why this host cannot run a step, if it cannot: every event stream is a
/// socket in a server node's process and one in a generator process, and
/// one process may hold only its open-file limit.
fn preflight(w: &Workload, target: &Target, fit: &Fit) -> Option<String> {
    let streams = w.endpoints();
    let mut reasons = Vec::new();
    let g = fit.generators;
    if g > 1 && !fit.can_spawn {
        reasons.push(format!(
            "the step needs {g} load generator processes and this caller cannot start them"
        ));
    }
    let own_need = fullest_part(w, g) + FD_HEADROOM + fit.workers.div_ceil(g) as u64;
    if fit.own_limit > 0 && own_need > fit.own_limit {
        reasons.push(format!(
            "each of {g} load generator process(es) needs about {own_need} open files and may \
             hold {} (use more: --generators)",
            fit.own_limit
        ));
    }
    let nodes = target.nodes().len();
    let per_node = target.stream_processes.max(1) as u64;
    let server_need = fullest_part(w, nodes).div_ceil(per_node) + FD_HEADROOM;
    if let Some(limit) = fit.server_limit.filter(|l| *l > 0 && server_need > *l) {
        reasons.push(format!(
            "a server process needs about {server_need} ({streams} streams over {nodes} \
             node(s), {per_node} stream-holding process(es) each) and may hold {limit}"
        ));
    }
    if reasons.is_empty() {
        return None;
    }
    Some(format!(
        "{streams} event streams do not fit: {}. Raise the open-file limit (ulimit -Hn, \
         LimitNOFILE), or spread the streams over more processes: stream workers \
         (topology.stream_workers), more server nodes (the pool) and more load generator \
         processes.",
        reasons.join("; ")
    ))
}

struct StepCtx<'a> {
    spec: &'a RunSpec,
    step_spec: &'a StepSpec,
    target: &'a Target,
    workload: Arc<Workload>,
    generators: usize,
    live: Arc<Live>,
    epoch: Instant,
    interrupt: CancellationToken,
    tick: &'a (dyn Fn() + Sync),
}

async fn run_step(cx: StepCtx<'_>) -> anyhow::Result<(Step, u64, Vec<String>)> {
    let StepCtx {
        spec,
        step_spec,
        target,
        workload,
        generators: n,
        live,
        epoch,
        interrupt,
        tick,
    } = cx;
    live.set_phase("provision");
    lock(&live.shards).clear();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(120))
        .build()?;
    let admin = Client::with_http(http.clone(), target.base.clone()).as_token(&target.admin_token);
    // One document for the whole directory, one transaction: on
    // PostgreSQL, the vendor's 80,000 users take minutes, not seconds.
    let provisioner = reqwest::Client::builder()
        .timeout(PROVISION_TIMEOUT)
        .build()?;
    let answer: serde_json::Value = Client::with_http(provisioner, target.base.clone())
        .as_token(&target.admin_token)
        .post("/v1/admin/provision", &workload.provision_doc())
        .await
        .context("provision the workload")?;
    // Joins load as many messages as the scenario's model says.
    let _: serde_json::Value = admin
        .patch(
            "/v1/admin/config",
            &serde_json::json!({ "messages_on_join": workload.messages_on_join }),
        )
        .await
        .context("set messages_on_join")?;
    let room_ids: Vec<u64> = workload
        .rooms
        .iter()
        .map(|r| {
            answer["room_ids"][&r.name]
                .as_u64()
                .context("room id missing from the provision answer")
        })
        .collect::<anyhow::Result<_>>()?;
    let names: Vec<String> = workload.users.iter().map(|u| u.name.clone()).collect();
    let tokens = Arc::new(crate::tokens(&admin, &names).await?);
    tick();

    // The shards: one in this process, or n processes.
    let cores = crate::procfs::machine().cores as usize;
    let threads = (cores / n).max(1);
    let shard_spec = ShardSpec {
        params: ShardParams {
            shard: 0,
            shards: n as u32,
            epoch_unix_ns: shard::unix_ns(epoch),
            schedule_seed: spec.seed ^ step_spec.users,
            ramp_ms: (step_spec.ramp_s * 1000.0) as u64,
            steady_ms: (step_spec.steady_s * 1000.0) as u64,
            grace_ms: (step_spec.grace_s * 1000.0) as u64,
            workers: spec.workers.div_ceil(n).max(1),
            threads,
            nodes: target
                .nodes()
                .into_iter()
                .chain(target.backup_nodes.iter().cloned())
                .collect(),
            home_nodes: target.nodes().len(),
            // A shard process adds its index to the name (`-<k>.html`).
            goose_report: spec
                .goose_report
                .as_ref()
                .map(|dir| dir.join(format!("goose-{}-users.html", step_spec.users))),
        },
        workload: workload.clone(),
        tokens: tokens.clone(),
        room_ids: Arc::new(room_ids),
    };
    let (out, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut shards = Vec::with_capacity(n);
    let mut spec_file = None;
    if n == 1 {
        shards.push(shard::start_in_process(shard_spec, epoch, 0, out));
    } else {
        let command = spec
            .shard_command
            .as_ref()
            .context("this step needs several generator processes and no way to start them")?;
        // One file for all: each process learns its index on its command line.
        let file = shard::SpecFile::write(&shard_spec)?;
        for k in 0..n {
            shards.push(shard::start_process(command, &file, k, out.clone())?);
        }
        spec_file = Some(file);
        drop(out);
        *lock(&live.processes) = shards
            .iter()
            .filter_map(|s| s.pid)
            .map(|pid| (pid, 100.0 * threads as f64))
            .collect();
    }
    let send_all = |c: Command| shards.iter().for_each(|s| s.send(c.clone()));

    // Drive the shards through ramp and steady state together, merging
    // their seconds as they come.
    let mut outcomes: Vec<Option<ShardOutcome>> = (0..n).map(|_| None).collect();
    let (mut ready, mut ramped, mut done, mut connected) = (0, 0, 0, 0u64);
    let mut away: BTreeMap<String, u64> = BTreeMap::new();
    let mut window_start = 0.0;
    let mut arrived_at_start = 0;
    let mut stopped = false;
    let mut failed = None;
    let at_us = |after: Duration| (epoch.elapsed() + after).as_micros() as u64;
    while done < n {
        let next = tokio::select! {
            e = events.recv() => e,
            _ = interrupt.cancelled(), if !stopped => {
                stopped = true;
                send_all(Command::Stop);
                continue;
            }
        };
        let Some((k, ev)) = next else { break };
        match ev {
            Event::Ready => {
                ready += 1;
                if ready == n {
                    live.set_phase("ramp");
                    send_all(Command::Ramp {
                        at_us: at_us(Duration::from_millis(200)),
                    });
                }
            }
            Event::Second {
                index,
                users,
                endpoints,
                figures,
            } => {
                lock(&live.shards).insert(k, (users, endpoints));
                lock(&live.seconds)
                    .entry(index)
                    .or_default()
                    .merge(&figures);
                if k == 0 {
                    tick();
                }
            }
            Event::Ramped {
                connected: c,
                arrived,
                away: a,
            } => {
                ramped += 1;
                connected += c;
                for (why, k) in a {
                    *away.entry(why).or_insert(0) += k;
                }
                arrived_at_start += arrived;
                if ramped == n {
                    // goose needs a moment to start its users; operations
                    // scheduled before they run would start late and count
                    // the generator's start-up as server latency.
                    window_start = epoch.elapsed().as_secs_f64();
                    live.set_phase("steady");
                    send_all(Command::Steady {
                        at_us: at_us(Duration::from_millis(1500)),
                    });
                }
            }
            Event::Draining => live.set_phase("drain"),
            Event::Done(o) => {
                done += 1;
                outcomes[k] = Some(*o);
            }
            Event::Failed(why) => {
                done += 1;
                failed.get_or_insert(format!("generator {k}: {why}"));
                if !stopped {
                    stopped = true;
                    send_all(Command::Stop);
                }
            }
        }
    }
    for s in shards {
        s.finish().await;
    }
    drop(spec_file);
    lock(&live.processes).clear();
    lock(&live.shards).clear();
    if let Some(why) = failed {
        anyhow::bail!(why);
    }
    let outcomes: Vec<ShardOutcome> = outcomes
        .into_iter()
        .enumerate()
        .map(|(k, o)| o.with_context(|| format!("generator {k} sent no results")))
        .collect::<anyhow::Result<_>>()?;

    // Merge the shards and check what every endpoint received.
    let mut window = RawWindow::default();
    let mut acks = Vec::new();
    let mut window_end = window_start;
    let mut lag = 0;
    let endpoints: Vec<Vec<Arc<Endpoint>>> = workload
        .users
        .iter()
        .map(|u| {
            (0..u.endpoints)
                .map(|e| Arc::new(Endpoint::new(e)))
                .collect()
        })
        .collect();
    for o in outcomes {
        window.merge(&o.window);
        acks.extend(o.acks);
        window_end = f64::max(window_end, o.window_end_s);
        lag = lag.max(o.lag_max_us);
        for v in o.views {
            if let Some(ep) = endpoints
                .get(v.user as usize)
                .and_then(|e| e.get(v.endpoint as usize))
            {
                ep.log().rooms.extend(v.rooms);
                ep.set_connected(v.connected);
            }
        }
    }
    let figures = window.figures();
    let correctness = crate::check::check(&acks, &endpoints, &workload);
    let wanted = workload.endpoints();
    let mut limits = Vec::new();
    // Endpoints without their stream when the steady state began, by what
    // their last attempt met. A host limit makes the step unmeasurable; a
    // refusal or a timeout is the server's answer, and the endpoints still
    // away at the end are among the step's errors.
    let host_limited: u64 = away
        .iter()
        .filter(|(why, _)| is_host_limit(why))
        .map(|(_, k)| k)
        .sum();
    if host_limited > 0 && !interrupt.is_cancelled() {
        limits.push(format!(
            "only {connected} of {wanted} endpoints were connected when the steady state began; \
             {host_limited} of the others last met a host limit ({})",
            away.iter()
                .map(|(why, k)| format!("{why} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // Connection attempts that hit a host limit are retried, so they are
    // among the retried attempts (and among the errors if never recovered).
    if figures
        .errors
        .keys()
        .chain(figures.retried.keys())
        .any(|k| is_host_limit(k))
    {
        limits.push("the load generator ran out of file descriptors or ports".into());
    }
    let step = Step {
        users: workload.users.len() as u64,
        endpoints: wanted,
        rooms: workload.rooms.len() as u64,
        window_start_s: window_start,
        window_end_s: window_end,
        latencies: figures.latencies,
        operations: figures.operations,
        errors: figures.errors,
        retried: figures.retried,
        posts_by_class: tallied(&figures.tallies, "posted:"),
        events_received: tallied(&figures.tallies, "received:"),
        arrived_users: Some(arrived_at_start),
        correctness,
        server_cpu_mean_pct: 0.0,
        server_cpu_peak_pct: 0.0,
        server_rss_peak_mib: 0.0,
        host_cpu_busy_pct: None,
        host_cpu_saturated_pct: None,
    };
    Ok((step, lag, limits))
}

/// The tallies whose key starts with `prefix`, by the rest of the key.
fn tallied(tallies: &BTreeMap<String, u64>, prefix: &str) -> BTreeMap<String, u64> {
    tallies
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.to_owned(), *v)))
        .collect()
}

/// Whether a failure code (or an error or retry key ending in one) names
/// a limit of the load generator's host rather than the server's answer.
fn is_host_limit(code: &str) -> bool {
    code.ends_with("fd_limit") || code.ends_with("ports_exhausted")
}

/// Samples CPU and RSS every second, on the seconds of the epoch (as the
/// shards report theirs). Returns the CPU of each generator process.
async fn sample_every_second(
    epoch: Instant,
    cores: u32,
    server_pids: Vec<u32>,
    live: Arc<Live>,
    timeline: Arc<Mutex<Vec<Sample>>>,
    progress: Arc<Mutex<Progress>>,
    stop: CancellationToken,
) -> Vec<ProcessCpu> {
    let mut server = CpuSampler::trees(server_pids);
    let mut me = CpuSampler::new(vec![std::process::id()]);
    let mut host = crate::procfs::HostCpu::new(cores);
    let mut others: HashMap<u32, CpuSampler> = HashMap::new();
    let mut per_process = Vec::new();
    let mut tick = tokio::time::interval_at(
        (epoch + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    // A late tick must not be followed by catch-up ticks (CPU over a few
    // milliseconds, in 10 ms clock ticks, would read as thousands of
    // percent), and ticks stay on the epoch's seconds, as the shards' do.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return per_process,
        }
        let t_s = epoch.elapsed().as_secs_f64();
        let processes = lock(&live.processes).clone();
        others.retain(|pid, _| processes.iter().any(|(p, _)| p == pid));
        let mut generator_pct = me.sample();
        for (pid, capacity_pct) in processes {
            let sampler = others
                .entry(pid)
                .or_insert_with(|| CpuSampler::new(vec![pid]));
            let pct = sampler.sample();
            generator_pct += pct;
            per_process.push(ProcessCpu {
                t_s,
                pid,
                pct,
                capacity_pct,
            });
        }
        let phase = lock(&live.phase).clone();
        let (users, endpoints) = live.totals();
        let s = Sample {
            t_s,
            phase: phase.clone(),
            users,
            endpoints,
            server_cpu_pct: server.sample(),
            server_rss_mib: server.rss() as f64 / 1048576.0,
            loadgen_cpu_pct: generator_pct,
            host_cpu_pct: host.sample(),
            ..Sample::default()
        };
        {
            // The shards' figures of the second before this one are in.
            let last = lock(&live.seconds)
                .get(&(t_s.floor() as u64).saturating_sub(1))
                .map(RawSecond::figures);
            let mut p = lock(&progress);
            p.phase = phase;
            p.users = s.users;
            p.endpoints = s.endpoints;
            if let Some(f) = last {
                if let Some(l) = f.delivery {
                    p.delivery_p99_ms = l.p99_ms;
                }
                if let Some(l) = f.post_ack {
                    p.post_ack_p99_ms = l.p99_ms;
                }
            }
            p.elapsed_s = s.t_s;
        }
        lock(&timeline).push(s);
    }
}

/// Puts the merged recorder figures into the timeline: each sample gets the
/// seconds since the sample before it (one, unless a tick came late).
fn fill_seconds(timeline: &mut [Sample], seconds: &BTreeMap<u64, RawSecond>) {
    let mut prev: Option<u64> = None;
    for s in timeline {
        // A tick fires at or after its second (never before), so the floor
        // is the second it samples.
        let k = s.t_s.floor() as u64;
        let from = prev.map_or(k, |p| p + 1);
        prev = Some(k.max(prev.unwrap_or(0)));
        let mut raw = RawSecond::default();
        if from <= k {
            for (_, r) in seconds.range(from..=k) {
                raw.merge(r);
            }
        }
        let span = (k + 1).saturating_sub(from).max(1) as f64;
        let f = raw.figures();
        s.posts_per_s = f.posts as f64 / span;
        s.deliveries_per_s = f.deliveries as f64 / span;
        s.requests_per_s = f.requests as f64 / span;
        s.errors_per_s = f.errors as f64 / span;
        s.post_ack_p50_ms = f.post_ack.as_ref().map_or(0.0, |l| l.p50_ms);
        s.post_ack_p99_ms = f.post_ack.as_ref().map_or(0.0, |l| l.p99_ms);
        s.delivery_p50_ms = f.delivery.as_ref().map_or(0.0, |l| l.p50_ms);
        s.delivery_p99_ms = f.delivery.as_ref().map_or(0.0, |l| l.p99_ms);
        s.delivery_max_ms = f.delivery.as_ref().map_or(0.0, |l| l.max_ms);
    }
}

fn in_window<'a>(step: &Step, timeline: &'a [Sample]) -> impl Iterator<Item = &'a Sample> {
    let (a, b) = (step.window_start_s, step.window_end_s);
    timeline
        .iter()
        .filter(move |s| s.t_s > a && s.t_s <= b + 0.5)
}

/// The server's CPU and RSS over the step's window, and, when the server
/// runs on this machine of `host_cores`, how busy the machine was.
fn fill_server_figures(step: &mut Step, timeline: &[Sample], host_cores: Option<u32>) {
    let samples: Vec<&Sample> = in_window(step, timeline).collect();
    if samples.is_empty() {
        return;
    }
    step.server_cpu_mean_pct =
        samples.iter().map(|s| s.server_cpu_pct).sum::<f64>() / samples.len() as f64;
    step.server_cpu_peak_pct = samples.iter().map(|s| s.server_cpu_pct).fold(0.0, f64::max);
    step.server_rss_peak_mib = samples.iter().map(|s| s.server_rss_mib).fold(0.0, f64::max);
    if let Some(cores) = host_cores {
        let busy = |s: &Sample| s.host_cpu_pct / f64::from(cores.max(1));
        let n = samples.len() as f64;
        step.host_cpu_busy_pct = Some(samples.iter().map(|s| busy(s)).sum::<f64>() / n);
        let saturated = samples
            .iter()
            .filter(|s| busy(s) >= scenarios::results::HOST_SATURATED_PCT)
            .count();
        step.host_cpu_saturated_pct = Some(100.0 * saturated as f64 / n);
    }
}

/// Judges whether the generator could do what it was asked. It is
/// saturated when, in a steady window, it alone used at least 90 % of the
/// machine's cores, or one of its processes used 90 % of what its worker
/// threads can, or when the machine as a whole was saturated (generator
/// plus server at 95 % or more) while its schedule fell more than 500 ms
/// behind: then nobody can say whether the server or the generator was slow.
fn generator_health(
    steps: &[Step],
    timeline: &[Sample],
    processes: &[ProcessCpu],
    cores: u32,
    lag_max_us: u64,
) -> GeneratorHealth {
    let capacity = 100.0 * cores.max(1) as f64;
    let peak = timeline
        .iter()
        .map(|s| s.loadgen_cpu_pct)
        .fold(0.0, f64::max);
    let mut mean_all = Vec::new();
    let mut reason = None;
    for step in steps {
        let w: Vec<&Sample> = in_window(step, timeline).collect();
        if w.is_empty() {
            continue;
        }
        let gen = w.iter().map(|s| s.loadgen_cpu_pct).sum::<f64>() / w.len() as f64;
        let total = w
            .iter()
            .map(|s| s.loadgen_cpu_pct + s.server_cpu_pct)
            .sum::<f64>()
            / w.len() as f64;
        mean_all.push(gen);
        // Each generator process over the window: (sum, samples, capacity).
        let mut per: BTreeMap<u32, (f64, f64, f64)> = BTreeMap::new();
        for p in processes
            .iter()
            .filter(|p| p.t_s > step.window_start_s && p.t_s <= step.window_end_s + 0.5)
        {
            let e = per.entry(p.pid).or_insert((0.0, 0.0, p.capacity_pct));
            e.0 += p.pct;
            e.1 += 1.0;
        }
        let busiest = per
            .iter()
            .map(|(pid, (sum, n, cap))| (*pid, sum / n, *cap))
            .max_by(|a, b| (a.1 / a.2).total_cmp(&(b.1 / b.2)));
        if gen >= 0.9 * capacity {
            reason.get_or_insert(format!(
                "at {} users the load generator used {gen:.0} % CPU of {capacity:.0} %",
                step.users
            ));
        } else if let Some((pid, pct, cap)) = busiest.filter(|(_, pct, cap)| *pct >= 0.9 * cap) {
            reason.get_or_insert(format!(
                "at {} users load generator process {pid} (one of {}) used {pct:.0} % CPU of the \
                 {cap:.0} % its worker threads can use",
                step.users,
                per.len()
            ));
        } else if total >= 0.95 * capacity && lag_max_us > 500_000 {
            reason.get_or_insert(format!(
                "at {} users the machine was saturated ({total:.0} % of {capacity:.0} %) and the \
                 schedule fell {:.1} s behind",
                step.users,
                lag_max_us as f64 / 1e6
            ));
        }
    }
    let mean = if mean_all.is_empty() {
        0.0
    } else {
        mean_all.iter().sum::<f64>() / mean_all.len() as f64
    };
    GeneratorHealth {
        cpu_peak_pct: peak,
        cpu_mean_pct: mean,
        cores,
        saturated: reason.is_some(),
        reason,
        schedule_lag_max_ms: lag_max_us as f64 / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Rates, SimUser};

    /// `users` users with the model's 1.5 endpoints each on average, one
    /// or two scattered over user numbers as the plan scatters them.
    fn workload(users: usize) -> Workload {
        Workload {
            users: (0..users)
                .map(|u| SimUser {
                    name: format!("u{u}"),
                    endpoints: 1 + ((u as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 63) as u8,
                    rooms: vec![],
                })
                .collect(),
            rooms: vec![],
            rates: Rates::default(),
            messages_on_join: 30,
            namespace: "t".into(),
        }
    }

    fn target(nodes: usize) -> Target {
        Target {
            base: "http://127.0.0.1:1".into(),
            nodes: (0..nodes)
                .map(|i| format!("http://127.0.0.1:{}", 1 + i))
                .collect(),
            backup_nodes: Vec::new(),
            admin_token: String::new(),
            server_pids: vec![],
            stream_processes: 1,
            label: "test".into(),
        }
    }

    fn fit(generators: usize) -> Fit {
        Fit {
            own_limit: 20_000,
            workers: 64,
            generators,
            can_spawn: true,
            server_limit: Some(20_000),
        }
    }

    fn sample(t_s: f64) -> Sample {
        Sample {
            t_s,
            ..Sample::default()
        }
    }

    #[test]
    fn every_second_lands_in_one_sample_even_when_ticks_come_late() {
        let seconds: BTreeMap<u64, RawSecond> = (1..=6)
            .map(|k| {
                let raw = RawSecond {
                    posts: 10 * k,
                    ..RawSecond::default()
                };
                (k, raw)
            })
            .collect();
        // The tick of second 3 came 0.9 s late and that of 4 was skipped;
        // then one came at 5.0 and two at 5.x (a repeat).
        let mut timeline: Vec<Sample> = [1.0, 2.0, 3.9, 5.0, 5.2, 6.0]
            .into_iter()
            .map(sample)
            .collect();
        fill_seconds(&mut timeline, &seconds);
        let per_s: Vec<f64> = timeline.iter().map(|s| s.posts_per_s).collect();
        assert_eq!(per_s, [10.0, 20.0, 30.0, 45.0, 0.0, 60.0]);
    }

    #[test]
    fn generators_default_to_at_most_15000_streams_each() {
        assert_eq!(generators_for(450, None), 1);
        assert_eq!(generators_for(15_000, None), 1);
        assert_eq!(generators_for(30_000, None), 2);
        assert_eq!(generators_for(120_000, None), 8);
        assert_eq!(generators_for(120_000, Some(3)), 3);
        assert_eq!(generators_for(0, None), 1);
    }

    #[test]
    fn one_generator_cannot_hold_node_20k_but_two_can() {
        // node-20k: 20,000 users, 30,000 streams, one node.
        let w = workload(20_000);
        assert!(w.endpoints().abs_diff(30_000) < 300, "{}", w.endpoints());
        let one = preflight(&w, &target(0), &fit(1)).expect("one process cannot hold it");
        assert!(one.contains("generator process(es) needs"), "{one}");
        // Sharded, only the single server process is short of files.
        let two = preflight(&w, &target(0), &fit(2)).expect("one server node cannot hold it");
        assert!(!two.contains("generator process(es) needs"), "{two}");
        assert!(two.contains("a server process needs"), "{two}");
        // Two stream workers hold the node's 30,000 streams.
        let workers = Target {
            stream_processes: 2,
            ..target(0)
        };
        assert_eq!(preflight(&w, &workers, &fit(2)), None);
        let no_limit = Fit {
            server_limit: None,
            ..fit(2)
        };
        assert_eq!(preflight(&w, &target(0), &no_limit), None);
        let cannot_spawn = Fit {
            can_spawn: false,
            server_limit: None,
            ..fit(2)
        };
        assert!(preflight(&w, &target(0), &cannot_spawn).is_some());
    }

    #[test]
    fn pool_80k_fits_four_nodes_and_eight_generators() {
        // 80,000 users, 120,000 streams: 30,000 a node on four nodes is too
        // many for one process each; on eight nodes 15,000 fit.
        let w = workload(80_000);
        let g = generators_for(w.endpoints(), None);
        assert_eq!(g, 8);
        let four = preflight(&w, &target(4), &fit(g)).expect("30,000 a node does not fit");
        assert!(four.contains("over 4 node(s)"), "{four}");
        assert_eq!(preflight(&w, &target(8), &fit(g)), None);
        let four_with_workers = Target {
            stream_processes: 2,
            ..target(4)
        };
        assert_eq!(preflight(&w, &four_with_workers, &fit(g)), None);
    }
}
