//! A whole run: for each load step, provision the workload, ramp endpoints
//! up, hold the steady state under goose, let deliveries drain, check what
//! was received, and sample CPU and memory every second throughout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use pchat_protocol::client::Client;
use scenarios::results::{GeneratorHealth, RunResult, Sample, Step, RESULTS_SCHEMA};
use tokio_util::sync::CancellationToken;

use crate::endpoints::{record_join, run_stream, Endpoint, Pool, PostTimes};
use crate::procfs::CpuSampler;
use crate::record::Recorder;
use crate::schedule::{self, OpKind};
use crate::workload::Workload;

/// The server under test.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port`.
    pub base: String,
    /// A token of a Persistent Chat administrator (provisioning, tokens).
    pub admin_token: String,
    /// Server processes on this machine whose CPU and RSS are sampled; empty
    /// for an external target.
    pub server_pids: Vec<u32>,
    /// How the report names the target.
    pub label: String,
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
    /// goose users executing the request/response operations.
    pub workers: usize,
    /// The directory where goose writes its own HTML report of each step
    /// (`goose-<users>-users.html`), if any.
    pub goose_report: Option<std::path::PathBuf>,
    pub command: String,
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

struct Live {
    phase: Mutex<String>,
    users: AtomicU64,
    pool: Mutex<Option<Arc<Pool>>>,
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
    let recorder = Arc::new(Recorder::default());
    let live = Arc::new(Live {
        phase: Mutex::new("provision".into()),
        users: AtomicU64::new(0),
        pool: Mutex::new(None),
    });
    let timeline: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler_stop = CancellationToken::new();
    let progress: Arc<Mutex<Progress>> = Arc::default();
    let sampler = tokio::spawn(sample_every_second(
        epoch,
        target.server_pids.clone(),
        recorder.clone(),
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
        move |step: usize| {
            let mut p = progress.lock().unwrap_or_else(|p| p.into_inner()).clone();
            p.step = step + 1;
            p.steps = spec.steps.len();
            on_progress(&p);
        }
    };
    for (i, step_spec) in spec.steps.iter().enumerate() {
        if interrupt.is_cancelled() {
            ended_because = Some("interrupted (Ctrl-C)".into());
            break;
        }
        let ns = format!("lg{:x}s{i}r{}-", spec.seed, std::process::id() % 10_000);
        let workload = Arc::new(make(step_spec.users, &ns));
        if let Some(reason) = preflight(&workload, target, soft, spec.workers) {
            // Larger steps would not fit either: stop here.
            not_run.extend(spec.steps[i..].iter().map(|s| scenarios::results::NotRun {
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
            recorder: recorder.clone(),
            live: live.clone(),
            epoch,
            interrupt: interrupt.clone(),
            tick: &|| progress_tick(i),
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
        steps.push(step);
        if interrupt.is_cancelled() {
            ended_because = Some("interrupted (Ctrl-C)".into());
            break;
        }
        if spec.stop_when_broken && !holds {
            break;
        }
    }
    *live.phase.lock().unwrap_or_else(|p| p.into_inner()) = "done".into();
    sampler_stop.cancel();
    let _ = sampler.await;
    let timeline = std::mem::take(&mut *timeline.lock().unwrap_or_else(|p| p.into_inner()));
    for s in &mut steps {
        fill_server_figures(s, &timeline);
    }
    let generator = generator_health(&steps, &timeline, machine.cores, lag_max_us);
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

/// File descriptors a process needs beside its event streams: HTTP
/// connections, databases, the listener, logs.
const FD_HEADROOM: u64 = 600;

/// Why this host cannot run a step, if it cannot: every event stream is a
/// socket in the server process and one in the generator, and one process
/// may hold only its open-file limit.
fn preflight(w: &Workload, target: &Target, own_limit: u64, workers: usize) -> Option<String> {
    let streams = w.endpoints();
    let mut reasons = Vec::new();
    let own_need = streams + FD_HEADROOM + workers as u64;
    if own_limit > 0 && own_need > own_limit {
        reasons.push(format!(
            "the load generator needs about {own_need} open files and may hold {own_limit}"
        ));
    }
    let server_limit = target
        .server_pids
        .iter()
        .filter_map(|p| crate::procfs::fd_limit(*p))
        .sum::<u64>();
    let server_need = streams + FD_HEADROOM;
    if server_limit > 0 && server_need > server_limit {
        reasons.push(format!(
            "the server process needs about {server_need} and may hold {server_limit}"
        ));
    }
    if reasons.is_empty() {
        return None;
    }
    Some(format!(
        "{streams} event streams do not fit: {}. Raise the open-file limit of both \
         processes (ulimit -Hn, LimitNOFILE), or run the server as several processes \
         (the pool, issue #4) and the generator on more than one process or host.",
        reasons.join("; ")
    ))
}

struct StepCtx<'a> {
    spec: &'a RunSpec,
    step_spec: &'a StepSpec,
    target: &'a Target,
    workload: Arc<Workload>,
    recorder: Arc<Recorder>,
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
        recorder,
        live,
        epoch,
        interrupt,
        tick,
    } = cx;
    let set_phase = |p: &str| *live.phase.lock().unwrap_or_else(|e| e.into_inner()) = p.into();
    set_phase("provision");
    live.users.store(0, Ordering::Relaxed);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(120))
        .build()?;
    let admin = Client::with_http(http.clone(), target.base.clone()).as_token(&target.admin_token);
    let answer: serde_json::Value = admin
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

    // The schedule, drawn before anything runs.
    let mut rng = schedule::rng(spec.seed ^ step_spec.users);
    let ramp_ms = (step_spec.ramp_s * 1000.0) as u64;
    let arrivals = schedule::arrivals(workload.users.len(), ramp_ms, &mut rng);
    let steady_ms = (step_spec.steady_s * 1000.0) as u64;
    let ops = schedule::steady_ops(&workload, steady_ms, &mut rng);
    let post_count = ops
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Post { .. }))
        .count();
    let posts = Arc::new(PostTimes::new(epoch, post_count));
    let dest = crate::net::resolve(&target.base).await?;
    let pool = Arc::new(Pool {
        base: target.base.clone(),
        dest,
        recorder: recorder.clone(),
        posts: posts.clone(),
        room_index: room_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as u32))
            .collect::<HashMap<_, _>>(),
        room_ids: room_ids.clone(),
        stop: CancellationToken::new(),
        open: AtomicU64::new(0),
    });
    *live.pool.lock().unwrap_or_else(|p| p.into_inner()) = Some(pool.clone());
    let endpoints: Arc<Vec<Vec<Arc<Endpoint>>>> = Arc::new(
        workload
            .users
            .iter()
            .map(|su| {
                (0..su.endpoints)
                    .map(|e| Arc::new(Endpoint::new(e)))
                    .collect()
            })
            .collect(),
    );

    // Ramp: users arrive at their drawn times; each opens its streams and
    // joins its rooms on every endpoint.
    set_phase("ramp");
    let ramp_start = Instant::now();
    let slots = AtomicUsize::new(0);
    let mut streams = Vec::new();
    let mut arrivals_done = Vec::new();
    let join_limit = Arc::new(tokio::sync::Semaphore::new(256));
    for (u, at) in arrivals.iter().enumerate() {
        let user_endpoints = endpoints[u].clone();
        for ep in &user_endpoints {
            let slot = slots.fetch_add(1, Ordering::Relaxed);
            let (pool, ep, token) = (pool.clone(), ep.clone(), tokens[u].clone());
            let start = ramp_start + Duration::from_millis(*at);
            streams.push(tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                run_stream(pool, ep, token, slot).await;
            }));
        }
        let start = ramp_start + Duration::from_millis(*at);
        let client = Client::with_http(http.clone(), target.base.clone()).as_token(&tokens[u]);
        let rooms = workload.users[u].rooms.clone();
        let (recorder, live, room_ids, limit, stop) = (
            recorder.clone(),
            live.clone(),
            room_ids.clone(),
            join_limit.clone(),
            pool.stop.clone(),
        );
        arrivals_done.push(tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            // Joins follow the stream's ready frame, so the stream carries
            // everything after each join's last_seq (PC-9.3b).
            for ep in &user_endpoints {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !ep.connected.load(Ordering::Acquire)
                    && Instant::now() < deadline
                    && !stop.is_cancelled()
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                for &room in &rooms {
                    let Ok(_permit) = limit.acquire().await else {
                        return;
                    };
                    let t = Instant::now();
                    match client.join(room_ids[room as usize], &ep.name, None).await {
                        Ok(j) => {
                            recorder.ok("join", t.elapsed().as_micros() as u64);
                            let seqs: Vec<u64> = j.messages.iter().map(|m| m.seq).collect();
                            record_join(ep, room, j.last_seq, &seqs);
                        }
                        Err(e) => {
                            let code = e
                                .code()
                                .map(|c| c.as_str().to_owned())
                                .unwrap_or_else(|| "io".into());
                            recorder.failed("join", &code);
                        }
                    }
                }
            }
            live.users.fetch_add(1, Ordering::Relaxed);
        }));
    }
    let ramp_deadline = ramp_start + Duration::from_millis(ramp_ms) + Duration::from_secs(120);
    for a in arrivals_done {
        tokio::select! {
            _ = a => {}
            _ = interrupt.cancelled() => break,
            _ = tokio::time::sleep_until(ramp_deadline.into()) => break,
        }
    }
    let mut limits = Vec::new();
    let connected = endpoints
        .iter()
        .flatten()
        .filter(|e| e.connected.load(Ordering::Acquire))
        .count() as u64;
    let wanted = workload.endpoints();
    if connected < wanted {
        limits.push(format!(
            "only {connected} of {wanted} endpoints were connected when the steady state began \
             (see the connect errors: fd_limit or ports_exhausted name a host limit)"
        ));
    }

    // Steady state under goose, then a grace period for deliveries.
    let window_start = epoch.elapsed().as_secs_f64();
    recorder.take_window();
    recorder.set_window(true);
    set_phase("steady");
    // goose needs a moment to start its users; operations scheduled before
    // they run would start late and count the generator's start-up as
    // server latency.
    let start = Instant::now() + Duration::from_millis(1500);
    let shared = Arc::new(crate::ops::Shared {
        ops,
        next: AtomicUsize::new(0),
        start,
        end: start + Duration::from_millis(steady_ms),
        workload: workload.clone(),
        tokens: tokens.clone(),
        room_ids: Arc::new(room_ids.clone()),
        endpoints: endpoints.clone(),
        recorder: recorder.clone(),
        posts,
        acks: Arc::default(),
        lag_max_us: AtomicU64::new(0),
    });
    let goose_report = spec
        .goose_report
        .as_ref()
        .map(|dir| dir.join(format!("goose-{}-users.html", step_spec.users)));
    if !interrupt.is_cancelled() {
        tokio::select! {
            r = crate::ops::run(shared.clone(), &target.base, spec.workers, goose_report.as_deref()) => { r?; }
            _ = interrupt.cancelled() => {}
        }
    }
    set_phase("drain");
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs_f64(step_spec.grace_s)) => {}
        _ = interrupt.cancelled() => {}
    }
    recorder.set_window(false);
    let window_end = epoch.elapsed().as_secs_f64();
    let figures = recorder.take_window();
    pool.stop.cancel();
    for s in streams {
        let _ = s.await;
    }
    *live.pool.lock().unwrap_or_else(|p| p.into_inner()) = None;
    live.users.store(0, Ordering::Relaxed);

    let acks = std::mem::take(&mut *shared.acks.lock().unwrap_or_else(|p| p.into_inner()));
    let correctness = crate::check::check(&acks, &endpoints, &workload);
    if figures
        .errors
        .keys()
        .any(|k| k.ends_with("fd_limit") || k.ends_with("ports_exhausted"))
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
        correctness,
        server_cpu_mean_pct: 0.0,
        server_cpu_peak_pct: 0.0,
        server_rss_peak_mib: 0.0,
    };
    Ok((step, shared.lag_max_us.load(Ordering::Relaxed), limits))
}

async fn sample_every_second(
    epoch: Instant,
    server_pids: Vec<u32>,
    recorder: Arc<Recorder>,
    live: Arc<Live>,
    timeline: Arc<Mutex<Vec<Sample>>>,
    progress: Arc<Mutex<Progress>>,
    stop: CancellationToken,
) {
    let mut server = CpuSampler::new(server_pids);
    let mut me = CpuSampler::new(vec![std::process::id()]);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // A late tick must not be followed by catch-up ticks: CPU over a few
    // milliseconds, in 10 ms clock ticks, would read as thousands of percent.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let f = recorder.take_second();
        let phase = live.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let endpoints = live
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| p.open.load(Ordering::Relaxed))
            .unwrap_or(0);
        let s = Sample {
            t_s: epoch.elapsed().as_secs_f64(),
            phase: phase.clone(),
            users: live.users.load(Ordering::Relaxed),
            endpoints,
            posts_per_s: f.posts as f64,
            deliveries_per_s: f.deliveries as f64,
            requests_per_s: f.requests as f64,
            errors_per_s: f.errors as f64,
            post_ack_p50_ms: f.post_ack.as_ref().map_or(0.0, |l| l.p50_ms),
            post_ack_p99_ms: f.post_ack.as_ref().map_or(0.0, |l| l.p99_ms),
            delivery_p50_ms: f.delivery.as_ref().map_or(0.0, |l| l.p50_ms),
            delivery_p99_ms: f.delivery.as_ref().map_or(0.0, |l| l.p99_ms),
            delivery_max_ms: f.delivery.as_ref().map_or(0.0, |l| l.max_ms),
            server_cpu_pct: server.sample(),
            server_rss_mib: server.rss() as f64 / 1048576.0,
            loadgen_cpu_pct: me.sample(),
        };
        {
            let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
            p.phase = phase;
            p.users = s.users;
            p.endpoints = s.endpoints;
            if s.delivery_p99_ms > 0.0 {
                p.delivery_p99_ms = s.delivery_p99_ms;
            }
            if s.post_ack_p99_ms > 0.0 {
                p.post_ack_p99_ms = s.post_ack_p99_ms;
            }
            p.elapsed_s = s.t_s;
        }
        timeline.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }
}

fn in_window<'a>(step: &Step, timeline: &'a [Sample]) -> impl Iterator<Item = &'a Sample> {
    let (a, b) = (step.window_start_s, step.window_end_s);
    timeline
        .iter()
        .filter(move |s| s.t_s > a && s.t_s <= b + 0.5)
}

fn fill_server_figures(step: &mut Step, timeline: &[Sample]) {
    let samples: Vec<&Sample> = in_window(step, timeline).collect();
    if samples.is_empty() {
        return;
    }
    step.server_cpu_mean_pct =
        samples.iter().map(|s| s.server_cpu_pct).sum::<f64>() / samples.len() as f64;
    step.server_cpu_peak_pct = samples.iter().map(|s| s.server_cpu_pct).fold(0.0, f64::max);
    step.server_rss_peak_mib = samples.iter().map(|s| s.server_rss_mib).fold(0.0, f64::max);
}

/// Judges whether the generator could do what it was asked. It is
/// saturated when, in a steady window, it alone used at least 90 % of the
/// machine's cores, or when the machine as a whole was saturated (generator
/// plus server at 95 % or more) while its schedule fell more than 500 ms
/// behind: then nobody can say whether the server or the generator was slow.
fn generator_health(
    steps: &[Step],
    timeline: &[Sample],
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
        if gen >= 0.9 * capacity {
            reason.get_or_insert(format!(
                "at {} users the load generator used {gen:.0} % CPU of {capacity:.0} %",
                step.users
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
