//! `cargo xtask sizing-report`: runs scenarios against a reference server it
//! starts itself (or an external target), computes the verdicts, and writes
//! a sizing report per scenario.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use loadgen::run::{Progress, RunSpec, StepSpec, Target};
use loadgen::workload::Workload;
use scenarios::scenario::{FaultKind, TopologyKind};
use scenarios::{verdict, Scenario};
use tokio_util::sync::CancellationToken;

use crate::server::{workspace_root, ServerProcess};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Built-in scenarios to run (quick, node-20k, knee, soak), in order.
    /// Without this and without --scenario-file: quick.
    #[arg(long = "scenario")]
    pub scenarios: Vec<String>,
    /// Scenario files of your own, run after the built-in ones.
    #[arg(long = "scenario-file")]
    pub files: Vec<PathBuf>,
    /// Multiplies every user count (a scaled run cannot verify a claim).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Overrides the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where reports go: one directory per scenario.
    #[arg(long, default_value = "target/sizing-report")]
    pub out: PathBuf,
    /// Size someone else's server: its base URL (http://host:port), or the
    /// base URLs of a pool's nodes separated by commas (simulated users are
    /// spread over the nodes; the first takes provisioning). Needs an
    /// administrator token in PCHAT_ADMIN_TOKEN.
    #[arg(long)]
    pub target: Option<String>,
    /// An earlier results.json to compare against.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// No progress bar (also off when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Load generator processes per step. Default: enough that none holds
    /// more than 15,000 event streams (one process may hold 20,000 open
    /// files here); with one, the step runs inside this process.
    #[arg(long)]
    pub generators: Option<usize>,
}

impl Args {
    /// The built-in scenarios to run: those named, or quick when neither a
    /// built-in scenario nor a file is named.
    fn builtin_names(&self) -> Vec<String> {
        if self.scenarios.is_empty() && self.files.is_empty() {
            vec!["quick".into()]
        } else {
            self.scenarios.clone()
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !(args.scale > 0.0 && args.scale.is_finite()) {
        bail!("--scale must be a positive number");
    }
    if args.generators == Some(0) {
        bail!("--generators must be at least 1");
    }
    let mut scenarios = Vec::new();
    for name in &args.builtin_names() {
        let s = Scenario::builtin(name).with_context(|| {
            let names: Vec<&str> = scenarios::scenario::LIBRARY
                .iter()
                .map(|(n, _)| *n)
                .collect();
            format!(
                "no built-in scenario {name:?} (there are: {})",
                names.join(", ")
            )
        })?;
        scenarios.push((s, None));
    }
    for file in &args.files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        let parsed = Scenario::parse(&text, &file.display().to_string())?;
        scenarios.push((parsed, file.parent().map(Path::to_path_buf)));
    }
    let baseline = match &args.baseline {
        Some(p) => Some(
            serde_json::from_slice(
                &std::fs::read(p).with_context(|| format!("read {}", p.display()))?,
            )
            .with_context(|| format!("{} is not a results.json", p.display()))?,
        ),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let interrupt = CancellationToken::new();
    {
        let interrupt = interrupt.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\nstopping: finishing the current step's measurements and writing the report"
                );
                interrupt.cancel();
            }
        });
    }
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        workspace_root().join(&args.out)
    };
    let mut summaries = Vec::new();
    for (scenario, scenario_dir) in scenarios {
        if interrupt.is_cancelled() {
            break;
        }
        let mut scenario = scenario;
        if args.scale != 1.0 {
            scenario = scenario.scaled(args.scale);
        }
        if let Some(seed) = args.seed {
            scenario.seed = seed;
        }
        let dir = out.join(&scenario.name);
        let summary = run_scenario(
            &rt,
            &scenario,
            &args,
            scenario_dir.as_deref(),
            &dir,
            baseline.clone(),
            interrupt.clone(),
        )?;
        summaries.push(summary);
    }
    println!();
    for s in &summaries {
        println!("{s}");
    }
    Ok(())
}

fn run_scenario(
    rt: &tokio::runtime::Runtime,
    scenario: &Scenario,
    args: &Args,
    scenario_dir: Option<&Path>,
    dir: &Path,
    baseline: Option<scenarios::results::RunResult>,
    interrupt: CancellationToken,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let model = scenario.user_model(scenario_dir)?;
    // The server: one started here (one node, or a pool), or the one named
    // by --target.
    let mut pool_process: Option<Arc<Mutex<crate::pool::PoolProcess>>> = None;
    let (server, target) = match (&args.target, scenario.topology.kind) {
        (Some(url), _) => {
            let token = std::env::var("PCHAT_ADMIN_TOKEN")
                .context("--target needs an administrator token in PCHAT_ADMIN_TOKEN")?;
            let nodes: Vec<String> = url
                .split(',')
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty())
                .collect();
            let t = Target {
                base: nodes.first().context("--target names no URL")?.clone(),
                nodes,
                backup_nodes: Vec::new(),
                admin_token: token,
                server_pids: Vec::new(),
                stream_processes: 1,
                label: format!("external server at {url}"),
            };
            (None, t)
        }
        (None, TopologyKind::External) => {
            bail!("scenario {} needs --target URL", scenario.name)
        }
        (None, TopologyKind::Enterprise) => {
            let binary = crate::server::build_release()?;
            let log = std::fs::File::create(dir.join("pool.log"))?;
            let opts = crate::pool::PoolOptions {
                nodes: scenario.topology.nodes,
                compliance: scenario.topology.compliance,
                backup: matches!(scenario.fault.map(|f| f.kind), Some(FaultKind::Failover)),
                no_restart: matches!(
                    scenario.fault.map(|f| f.kind),
                    Some(FaultKind::KillNode { .. })
                ),
                node_env: node_env(&scenario.topology),
            };
            let pool = crate::pool::PoolProcess::start(&binary, &opts, log)?;
            let t = Target {
                base: pool.ready.nodes[0].clone(),
                nodes: pool.ready.nodes.clone(),
                backup_nodes: pool.ready.backup_nodes.clone(),
                admin_token: pool.admin_token()?,
                server_pids: pool.pids(),
                stream_processes: scenario.topology.stream_workers.max(1),
                label: format!(
                    "reference server pool: {} node(s) on PostgreSQL{}{}{}, release build",
                    scenario.topology.nodes,
                    nodes_label(&scenario.topology),
                    if opts.compliance {
                        ", compliance on"
                    } else {
                        ""
                    },
                    if opts.backup {
                        ", backup pool on a synchronous standby"
                    } else {
                        ""
                    }
                ),
            };
            pool_process = Some(Arc::new(Mutex::new(pool)));
            (None, t)
        }
        (None, TopologyKind::Standard) => {
            let log = std::fs::File::create(dir.join("server.log"))?;
            let env = node_env(&scenario.topology);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let server = ServerProcess::start_release_logged(&env, log)?;
            let t = Target {
                base: server.base.clone(),
                nodes: Vec::new(),
                backup_nodes: Vec::new(),
                admin_token: server.admin_token(),
                server_pids: vec![server.pid()],
                stream_processes: scenario.topology.stream_workers.max(1),
                label: format!(
                    "reference server (one node, embedded SQLite store{}, release build)",
                    nodes_label(&scenario.topology)
                ),
            };
            (Some(server), t)
        }
    };
    let steps: Vec<StepSpec> = scenario
        .user_steps()
        .into_iter()
        .map(|users| StepSpec {
            users,
            ramp_s: scenario.load.ramp_s,
            steady_s: scenario.load.steady_s,
            grace_s: scenario.load.grace_s,
        })
        .collect();
    let command = std::iter::once("cargo xtask".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let spec = RunSpec {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        claim: scenario.claim.clone(),
        slo: scenario.slo.clone(),
        seed: scenario.seed,
        stop_when_broken: scenario.stop_when_broken(),
        refine_to: scenario.load.steps.as_ref().and_then(|s| s.refine_to),
        steps,
        workers: scenario.load.workers,
        generators: args.generators,
        shard_command: Some(shard_command()?),
        goose_report: Some(dir.to_path_buf()),
        command,
    };
    let seed = scenario.seed;
    let make = |users: u64, ns: &str| {
        let plan = scenario.plan(&model, users);
        Workload::build(&plan, ns, seed ^ users)
    };
    let slo = scenario.slo.clone();
    let judge = move |step: &scenarios::results::Step| verdict::judge(step, &slo).holds;
    let bar = progress_bar(args.no_progress);
    // A fault strikes once the steady state has run `at_s` seconds.
    let fault_log: Arc<Mutex<Vec<String>>> = Arc::default();
    let steady_since: Mutex<Option<Instant>> = Mutex::new(None);
    let fault_fired = std::sync::atomic::AtomicBool::new(false);
    let on_progress = |p: &Progress| {
        if let (Some(fault), Some(pool)) = (scenario.fault, &pool_process) {
            let mut since = steady_since.lock().unwrap_or_else(|e| e.into_inner());
            if p.phase == "steady" && since.is_none() {
                *since = Some(Instant::now());
            }
            let due = since.is_some_and(|t| t.elapsed().as_secs_f64() >= fault.at_s);
            if due && !fault_fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
                let (pool, log, run_s) = (pool.clone(), fault_log.clone(), p.elapsed_s);
                std::thread::spawn(move || inject(fault.kind, &pool, &log, run_s));
            }
        }
        if let Some(bar) = &bar {
            bar.set_message(format!(
                "{} step {}/{} · {} · users {} · endpoints {} · p99 delivery {:.1} ms · p99 post {:.1} ms",
                scenario.name,
                p.step,
                p.steps,
                p.phase,
                p.users,
                p.endpoints,
                p.delivery_p99_ms,
                p.post_ack_p99_ms
            ));
        }
    };
    eprintln!(
        "running scenario {} against {}",
        scenario.name, target.label
    );
    // Only of a deployment this command started: someone else's server
    // may not export metrics, or not to us.
    let own = server.is_some() || pool_process.is_some();
    let result = rt.block_on(async {
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Some(b) = &bar {
                        b.tick();
                    }
                }
            })
        };
        let r = loadgen::run::run(
            &spec,
            &target,
            &make,
            &judge,
            interrupt.clone(),
            &on_progress,
        )
        .await;
        ticker.abort();
        if own {
            save_server_metrics(&target, dir).await;
        }
        r
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    drop(server);
    let mut result = result?;
    if goose::is_killswitch_triggered() && result.completed {
        result.completed = false;
        result.ended_because = Some("interrupted (goose stopped the attack)".into());
    }
    // Wait for a fault still in progress (a failover takes a moment), then
    // let the pool go.
    if scenario.fault.is_some() && pool_process.is_some() {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline
            && fault_fired.load(std::sync::atomic::Ordering::SeqCst)
            && fault_log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(pool_process);
    let stepped = scenario.load.steps.is_some();
    let mut input = report_input(result, baseline, stepped);
    input
        .notes
        .push(generators_note(&input.result, args.generators));
    if let Some(fault) = scenario.fault {
        let happened = fault_log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if happened.is_empty() {
            input.notes.push(format!(
                "Fault {:?} was due {:.0} s into the steady state but did not happen (the run ended first).",
                fault.kind, fault.at_s
            ));
        }
        let struck = !happened.is_empty() && !happened.iter().any(|l| l.contains("failed"));
        input.notes.extend(happened);
        input.notes.push(fault_outcome(&input.result));
        input
            .verdicts
            .push(fault_verdict(fault.kind, struck, &input.result));
    }
    let files = reports::write_report(&input, dir)?;
    let mut lines = vec![format!(
        "scenario {}: {}",
        input.result.scenario,
        files.html.display()
    )];
    for v in &input.verdicts {
        lines.push(format!(
            "  {} {} — {}",
            match v.verdict {
                reports::Verdict::Holds => "HOLDS        ",
                reports::Verdict::DoesNotHold => "DOES NOT HOLD",
                reports::Verdict::Inconclusive => "INCONCLUSIVE ",
            },
            v.claim,
            v.why
        ));
    }
    if let Some(k) = &input.knee {
        lines.push(format!("  knee: {}", k.text));
    }
    Ok(lines.join("\n"))
}

/// The `PCHAT_*` settings a scenario's topology gives each node the run
/// starts, alone or in a pool.
fn node_env(t: &scenarios::scenario::Topology) -> Vec<(&'static str, String)> {
    let mut env = vec![("PCHAT_STREAM__WORKERS", t.stream_workers.to_string())];
    if let Some(m) = t.max_connections {
        env.push(("PCHAT_LIMITS__MAX_CONNECTIONS", m.to_string()));
    }
    env
}

/// ", N stream workers" and ", max_connections M" for a target's label
/// ("" for the server's defaults).
fn nodes_label(t: &scenarios::scenario::Topology) -> String {
    let mut label = match t.stream_workers {
        0 => String::new(),
        1 => ", 1 stream worker process".into(),
        n => format!(", {n} stream worker processes"),
    };
    if let Some(m) = t.max_connections {
        label.push_str(&format!(", max_connections {m}"));
    }
    label
}

/// Keeps each node's `/metrics` as the run left them (admission refusals,
/// slow-consumer closes, heartbeat timeouts, ...) under `server-metrics/`,
/// beside the report: what the server saw of the run that the client's
/// figures do not show. A node that does not answer (killed by the fault)
/// is skipped with a line on stderr.
async fn save_server_metrics(target: &Target, dir: &Path) {
    let nodes: Vec<&String> = if target.nodes.is_empty() {
        vec![&target.base]
    } else {
        target.nodes.iter().collect()
    };
    let out = dir.join("server-metrics");
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("cannot keep the server metrics in {}: {e}", out.display());
        return;
    }
    let http = reqwest::Client::new();
    for (i, base) in nodes.into_iter().enumerate() {
        let url = format!("{}/metrics", base.trim_end_matches('/'));
        let text = async {
            http.get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        };
        match text.await {
            Ok(t) => {
                if let Err(e) = std::fs::write(out.join(format!("node{i}.prom")), t) {
                    eprintln!("cannot keep the metrics of node {i}: {e}");
                }
            }
            Err(e) => eprintln!("no metrics from node {i} ({url}): {e}"),
        }
    }
}

/// Strikes a fault at the pool and writes down what happened.
fn inject(
    kind: FaultKind,
    pool: &Mutex<crate::pool::PoolProcess>,
    log: &Mutex<Vec<String>>,
    run_s: f64,
) {
    let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
    let line = match kind {
        FaultKind::KillNode { node } => match pool.kill_node(node) {
            Ok(pid) => format!(
                "Fault: node {node} (pid {pid}) was killed with SIGKILL {run_s:.0} s into the run and \
                 not started again; its endpoints moved to the surviving nodes and rejoined their \
                 rooms from the last message they had seen."
            ),
            Err(e) => format!("Fault: killing node {node} failed: {e:#}"),
        },
        FaultKind::Failover => match pool.fail_over() {
            Ok(t) => format!(
                "Fault: the pool's site was lost {run_s:.0} s into the run (every node killed, the \
                 primary database stopped at once). The synchronous standby was promoted after \
                 {} ms and the backup pool's nodes answered after {} ms (server side, measured by \
                 `pool local`); clients moved to them on their own.",
                t.promoted_ms, t.serving_ms
            ),
            Err(e) => format!("Fault: the failover failed: {e:#}"),
        },
    };
    log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

/// The claim a fault scenario is about, judged from the checker's counts:
/// every endpoint resumes across the fault with nothing lost, duplicated or
/// out of order (for a failover: the recovery point is zero).
fn fault_verdict(
    kind: FaultKind,
    struck: bool,
    result: &scenarios::results::RunResult,
) -> reports::VerdictRow {
    let sum = |f: fn(&scenarios::results::Correctness) -> u64| -> u64 {
        result.steps.iter().map(|s| f(&s.correctness)).sum()
    };
    let (lost, dup, reord, gaps, owed) = (
        sum(|c| c.lost),
        sum(|c| c.duplicated),
        sum(|c| c.reordered),
        sum(|c| c.sequence_gaps),
        sum(|c| c.expected_deliveries),
    );
    let clean = lost == 0 && dup == 0 && reord == 0 && gaps == 0;
    let claim = match kind {
        FaultKind::KillNode { node } => {
            format!("clients of killed node {node} resume on the survivors without a gap")
        }
        FaultKind::Failover => {
            "failover loses no acknowledged message (recovery point zero)".into()
        }
    };
    let (verdict, why) = if !struck {
        (
            reports::Verdict::Inconclusive,
            "the fault did not strike as planned (see the notes)".to_owned(),
        )
    } else if result.steps.is_empty() {
        (reports::Verdict::Inconclusive, "no step ran".to_owned())
    } else if clean {
        (
            reports::Verdict::Holds,
            "every owed delivery arrived once and in order".to_owned(),
        )
    } else {
        (
            reports::Verdict::DoesNotHold,
            "the checker found lost, duplicated or reordered messages or gaps".to_owned(),
        )
    };
    reports::VerdictRow {
        claim,
        target: "0 lost, 0 duplicated, 0 reordered, 0 gaps".into(),
        measured: format!(
            "{lost} lost of {owed} owed deliveries, {dup} duplicated, {reord} reordered, {gaps} gaps"
        ),
        verdict,
        why,
    }
}

/// What a fault cost, from the measurements: the recovery point
/// (acknowledged messages never seen again) and the longest stretch of
/// steady-state seconds without an acknowledged post (the recovery time a
/// client saw).
fn fault_outcome(result: &scenarios::results::RunResult) -> String {
    let lost: u64 = result.steps.iter().map(|s| s.correctness.lost).sum();
    let away: u64 = result
        .steps
        .iter()
        .map(|s| s.correctness.lost_while_away)
        .sum();
    let mut longest = 0.0f64;
    let mut run = 0.0f64;
    let mut seen_posts = false;
    for s in result.timeline.iter().filter(|s| s.phase == "steady") {
        if s.posts_per_s > 0.0 {
            seen_posts = true;
            run = 0.0;
        } else if seen_posts {
            run += 1.0;
            longest = longest.max(run);
        }
    }
    let owed: u64 = result
        .steps
        .iter()
        .map(|s| s.correctness.expected_deliveries)
        .sum();
    let reconnects = result
        .steps
        .iter()
        .filter_map(|s| s.latencies.get("reconnect"))
        .filter(|l| l.count > 0)
        .map(|l| {
            format!(
                " Streams back: {} reconnects, from a stream's loss to its `ready` on \
                 another node p50 {:.1} s, p99 {:.1} s, the last after {:.1} s; a message \
                 posted meanwhile reaches an endpoint that is still away when it is back, \
                 which is what the delivery latency of the fault's seconds shows.",
                l.count,
                l.p50_ms / 1000.0,
                l.p99_ms / 1000.0,
                l.max_ms / 1000.0
            )
        })
        .collect::<String>();
    let away = if away > 0 {
        format!(
            "; {away} of them were owed to endpoints whose stream was not back when the \
             window ended"
        )
    } else {
        String::new()
    };
    format!(
        "After the fault: {lost} of {owed} owed deliveries never arrived (an acknowledged \
         message that an endpoint joined to its room never received, on its stream or in a \
         rejoin answer){away}. Recovery time as clients saw it: the longest stretch of the steady \
         state without an acknowledged post was {longest:.0} s (one-second resolution; posts \
         are a few per second at this load, so a second without one is not by itself an \
         outage).{reconnects}"
    )
}

/// Verdict rows, knee and notes, all computed from the measured result.
/// `stepped`: the scenario searched for the knee in steps, so the report
/// says where it lies even when the first step broke.
pub fn report_input(
    result: scenarios::results::RunResult,
    baseline: Option<scenarios::results::RunResult>,
    stepped: bool,
) -> reports::ReportInput {
    let mut verdicts = Vec::new();
    if let Some(v) = verdict::claim_verdict(&result) {
        verdicts.push(reports::VerdictRow {
            claim: v.claim,
            target: v.target,
            measured: v.measured,
            verdict: v.verdict,
            why: v.why,
        });
    }
    let invalid = verdict::invalid_because(&result);
    for step in &result.steps {
        let j = verdict::judge(step, &result.slo);
        let (verdict, why) = match &invalid {
            Some(reason) => (reports::Verdict::Inconclusive, reason.clone()),
            None => (reports::Verdict::of(j.holds), j.why.clone()),
        };
        verdicts.push(reports::VerdictRow {
            claim: format!("objective met at {} active users", step.users),
            target: format!(
                "p99 delivery ≤ {} ms, p99 post ack ≤ {} ms, p99 history ≤ {} ms, errors ≤ {} %, nothing lost",
                result.slo.p99_delivery_ms, result.slo.p99_post_ack_ms, result.slo.p99_history_ms, result.slo.max_error_pct
            ),
            measured: j
                .checks
                .iter()
                .map(|c| format!("{}: {}", c.what, c.measured))
                .collect::<Vec<_>>()
                .join("; "),
            verdict,
            why,
        });
    }
    let knee = (stepped || result.steps.len() > 1)
        .then(|| verdict::knee(&result))
        .flatten()
        .map(|k| {
            let mut text = match (&k.capacity, &k.broke_at) {
                (Some(c), Some((b, why))) => {
                    format!(
                        "capacity {c} active users (the heaviest step that met the objective \
                         below the lightest that broke it); the objective broke at {b}: {why}"
                    )
                }
                (None, Some((b, why))) => {
                    format!(
                        "below {b} active users: no step met the objective; the lightest ({b} \
                         users) broke it: {why}"
                    )
                }
                (Some(c), None) => match result.not_run.first() {
                    Some(n) => format!(
                        "at least {c} active users: no step broke the objective; from {} users on, \
                         this host could not run the steps ({})",
                        n.users, n.reason
                    ),
                    None => format!("at least {c} active users: no step broke the objective"),
                },
                (None, None) => "no step completed".into(),
            };
            if let (Some(above), Some((b, _))) = (k.held_above, &k.broke_at) {
                text.push_str(&format!(
                    ". A heavier step, {above} users, met the objective although {b} broke it: \
                     near the knee the outcome is not repeatable on this host; repeat the run to \
                     see how far it varies"
                ));
            }
            reports::Knee {
                users: k.capacity,
                text,
            }
        });
    let mut notes = vec![
        "Workload: the vendor's published user model scaled linearly to the step's user count \
         (rooms per user, room sizes, chat rate, joins, presence changes and participant-list polls \
         per user as published). Not in the model and chosen here: one history page read per rejoin \
         and one search per user per 8-hour day."
            .to_owned(),
        "Latencies are measured from each operation's intended send time (no coordinated \
         omission); delivery latency runs from a post's intended send time to its arrival at each \
         receiving endpoint, where the load generator reads it (the verdict's figure); \
         delivery_arrival stops at the kernel's receive stamp on the endpoint's socket instead, and \
         delivery_read_lag is the wait from that stamp to the read, the generator's own share. \
         The steady window includes the grace period after the last operation, and, while \
         messages still arrive at its end, up to two minutes more until three seconds pass \
         without one: a late message is measured late, not counted lost."
            .to_owned(),
    ];
    for step in &result.steps {
        if !step.posts_by_class.is_empty() && !step.posts_by_class.contains_key("large") {
            notes.push(format!(
                "At {} users the steady window held no post into a large room: its verdict has \
                 not seen the model's largest fan-out (one post to every endpoint of a large \
                 room). A longer window (load.steady_s, load.steps.step_steady_s) would.",
                step.users
            ));
        }
    }
    for step in &result.steps {
        let split = (
            step.latencies.get(loadgen::endpoints::DELIVERY_SAME_NODE),
            step.latencies.get(loadgen::endpoints::DELIVERY_CROSS_NODE),
        );
        if let (Some(same), Some(cross)) = split {
            notes.push(format!(
                "Cross-node delivery at {} users: p99 {:.1} ms over {} deliveries to a stream on \
                 another node than the one the post went through, against {:.1} ms over {} on the \
                 same node ({:+.1} ms; a pool's target is at most 20 ms more).",
                step.users,
                cross.p99_ms,
                cross.count,
                same.p99_ms,
                same.count,
                cross.p99_ms - same.p99_ms
            ));
        }
    }
    for n in &result.not_run {
        notes.push(format!(
            "Not run: the step at {} active users. {}",
            n.users, n.reason
        ));
    }
    if result.machine.fd_limit.1 > 0 && result.machine.fd_limit.1 <= 20_000 {
        notes.push(format!(
            "Open-file limit of this host: {} per process. One process cannot hold more event \
             streams than that: a node beyond it hands its streams to stream worker processes \
             (topology.stream_workers, the server's stream.workers; the target above says how \
             many this run had), and the load generator runs as several processes; or raise the \
             limit (ulimit -Hn, /etc/security/limits.conf or the service's LimitNOFILE).",
            result.machine.fd_limit.1
        ));
    }
    reports::ReportInput {
        result,
        verdicts,
        knee,
        notes,
        baseline,
    }
}

/// This binary as a load generator process (`xtask loadgen-shard`).
fn shard_command() -> anyhow::Result<loadgen::shard::ShardCommand> {
    Ok(loadgen::shard::ShardCommand {
        program: std::env::current_exe().context("find the xtask binary")?,
        args: vec!["loadgen-shard".into()],
    })
}

/// How the load generator was spread over processes, step by step.
fn generators_note(result: &scenarios::results::RunResult, requested: Option<usize>) -> String {
    let per_step: Vec<String> = result
        .steps
        .iter()
        .map(|s| {
            let n = loadgen::run::generators_for(s.endpoints, requested);
            format!("{} at {} users", n, s.users)
        })
        .collect();
    format!(
        "Load generator processes: {} (one process holds at most its open-file limit of event \
         streams; a step's simulated users are dealt to the processes by user number, and every \
         process measures from the same clock; their histograms are merged exactly).",
        if per_step.is_empty() {
            "none ran".to_owned()
        } else {
            per_step.join(", ")
        }
    )
}

fn progress_bar(disabled: bool) -> Option<indicatif::ProgressBar> {
    if disabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scenarios::model::UserModel;
    use scenarios::plan::{Plan, PlanOptions};

    /// The tests below run real loads: one at a time, so that neither
    /// measures the other.
    static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    const USERS: u64 = 300;
    const SEED: u64 = 42;

    #[test]
    fn quick_runs_only_when_nothing_else_is_named() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let names = |argv: &[&str]| {
            let cli = Cli::parse_from(std::iter::once("t").chain(argv.iter().copied()));
            cli.args.builtin_names()
        };
        assert_eq!(names(&[]), ["quick"]);
        assert!(names(&["--scenario-file", "mine.toml"]).is_empty());
        assert_eq!(
            names(&["--scenario", "knee", "--scenario-file", "mine.toml"]),
            ["knee"]
        );
        assert_eq!(
            names(&["--scenario", "node-20k", "--scenario", "knee"]),
            ["node-20k", "knee"]
        );
    }

    fn short_step() -> StepSpec {
        StepSpec {
            users: USERS,
            ramp_s: 3.0,
            steady_s: 8.0,
            grace_s: 2.0,
        }
    }

    /// The test load: the model at 300 users with the chat rate raised far
    /// above the model's, so that a short window carries enough messages
    /// to check; this tests the machinery, it does not size anything.
    fn short_workload(users: u64, ns: &str) -> Workload {
        let mut plan = Plan::for_users(&UserModel::vendor(), users, &PlanOptions::default());
        for c in [&mut plan.small, &mut plan.medium, &mut plan.large] {
            c.chat_rate_per_s *= 400.0;
        }
        plan.history_reads_per_s = 2.0;
        plan.searches_per_s = 1.0;
        Workload::build(&plan, ns, SEED)
    }

    /// Runs the short load against a fresh debug server.
    fn short_run(
        generators: Option<usize>,
        shard_command: Option<loadgen::shard::ShardCommand>,
    ) -> scenarios::results::RunResult {
        short_run_of(generators, shard_command, &[], |_| {}, &|_| true)
    }

    /// [`short_run`] with the spec edited and the steps judged by `judge`.
    fn short_run_of(
        generators: Option<usize>,
        shard_command: Option<loadgen::shard::ShardCommand>,
        server_env: &[(&str, &str)],
        edit: impl FnOnce(&mut RunSpec),
        judge: &dyn Fn(&scenarios::results::Step) -> bool,
    ) -> scenarios::results::RunResult {
        let server =
            ServerProcess::start_debug_with(server_env).expect("start the reference server");
        run_against(&server, generators, shard_command, edit, judge)
    }

    /// The short load against `server`, which the caller may inspect after.
    fn run_against(
        server: &ServerProcess,
        generators: Option<usize>,
        shard_command: Option<loadgen::shard::ShardCommand>,
        edit: impl FnOnce(&mut RunSpec),
        judge: &dyn Fn(&scenarios::results::Step) -> bool,
    ) -> scenarios::results::RunResult {
        let target = Target {
            base: server.base.clone(),
            nodes: Vec::new(),
            backup_nodes: Vec::new(),
            admin_token: server.admin_token(),
            server_pids: vec![server.pid()],
            stream_processes: 1,
            label: "reference server (test)".into(),
        };
        let mut spec = RunSpec {
            scenario: "ci-short".into(),
            description: "test load".into(),
            claim: None,
            slo: scenarios::Slo::default(),
            seed: SEED,
            steps: vec![short_step()],
            stop_when_broken: false,
            refine_to: None,
            workers: 8,
            generators,
            shard_command,
            goose_report: None,
            command: "cargo test -p xtask".into(),
        };
        edit(&mut spec);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let result = rt
            .block_on(loadgen::run::run(
                &spec,
                &target,
                &short_workload,
                judge,
                CancellationToken::new(),
                &|_| {},
            ))
            .expect("the run");
        assert!(result.completed, "{:?}", result.ended_because);
        result
    }

    /// Posts the step's schedule holds, drawn as the generator draws it.
    fn scheduled_posts() -> usize {
        let s = short_step();
        loadgen::schedule::Schedule::draw(
            &short_workload(USERS, "any-"),
            SEED ^ USERS,
            (s.ramp_s * 1000.0) as u64,
            (s.steady_s * 1000.0) as u64,
        )
        .posts()
    }

    /// A short real run: a reference server process on loopback, a few
    /// hundred simulated users, the whole pipeline through the report, the
    /// generator inside the test process.
    #[test]
    fn a_short_real_run_produces_a_clean_checked_report() {
        let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        // A claim about a host far bigger than any here: the run can show
        // that it holds, never that it fails.
        let claim = scenarios::Claim {
            text: "300 users on a big host".into(),
            users: USERS,
            host: Some(scenarios::HostSpec {
                text: "a host of 4,096 logical CPUs".into(),
                cores: Some(4_096),
                ..Default::default()
            }),
        };
        let result = short_run_of(None, None, &[], |spec| spec.claim = Some(claim), &|_| true);
        let step = result.steps[0].clone();
        assert_eq!(step.endpoints, 450);
        // The machine is recorded as the verdict needs it.
        let m = &result.machine;
        assert!(m.cores > 0 && m.memory_gib > 0.0, "{m:?}");
        if cfg!(target_arch = "x86_64") {
            assert!(m.virtual_machine.is_some(), "x86 lists its flags: {m:?}");
        }
        let v = verdict::claim_verdict(&result).expect("a claim verdict");
        let want = if verdict::judge(&step, &result.slo).holds {
            verdict::Verdict::Holds
        } else {
            verdict::Verdict::Inconclusive
        };
        assert_eq!(v.verdict, want, "{}", v.why);
        assert!(
            v.why.contains(&format!("{} of 4096 logical CPUs", m.cores)),
            "{}",
            v.why
        );
        let c = &step.correctness;
        assert!(
            c.acknowledged > 20,
            "only {} posts acknowledged",
            c.acknowledged
        );
        assert!(c.expected_deliveries > 0 && c.delivered > 0, "{c:?}");
        assert!(c.is_clean(), "{c:?}");
        for op in ["post_ack", "delivery", "participants", "presence"] {
            assert!(
                step.latencies.get(op).is_some_and(|l| l.count > 0),
                "no {op} latencies: {:?}",
                step.latencies.keys()
            );
        }
        // Every frame the streams took is counted by type: the messages
        // are the deliveries (give or take the window's edges, where a
        // frame is counted before the window opens and recorded after),
        // and presence changes reached the users' small rooms.
        let events = &step.events_received;
        let delivered = step.latencies["delivery"].count;
        let messages = events.get("message").copied().unwrap_or(0);
        assert!(
            messages.abs_diff(delivered) <= delivered / 100 + 10,
            "{messages} message frames, {delivered} deliveries: {events:?}"
        );
        assert!(events.get("presence").is_some_and(|&n| n > 0), "{events:?}");
        assert!(!events.contains_key("other"), "{events:?}");
        // Deliveries are also dated at their arrival on the sockets; the
        // host starts stamping a moment after the first socket asks, so
        // the earliest few may lack a stamp, never the most.
        let arrival = &step.latencies[verdict::DELIVERY_ARRIVAL];
        let lag = &step.latencies[verdict::DELIVERY_READ_LAG];
        assert!(
            arrival.count * 10 >= delivered * 9 && arrival.count == lag.count,
            "{} stamped of {delivered} deliveries, {} lags",
            arrival.count,
            lag.count
        );
        // A delivery is no later at its arrival than at its read.
        assert!(
            arrival.p50_ms <= step.latencies["delivery"].p50_ms,
            "{arrival:?}"
        );
        assert!(!result.timeline.is_empty());
        assert!(result.timeline.iter().any(|s| s.server_rss_mib > 0.0));
        let dir = tempfile::tempdir().unwrap();
        let files = reports::write_report(&report_input(result, None, false), dir.path()).unwrap();
        let html = std::fs::read_to_string(&files.html).unwrap();
        assert!(html.contains("objective met at 300 active users"));
        let back: scenarios::results::RunResult =
            serde_json::from_slice(&std::fs::read(&files.results_json).unwrap()).unwrap();
        assert_eq!(back.steps[0].correctness.acknowledged, c.acknowledged);
    }

    /// Streams lost and kept away long enough for their sessions to expire
    /// (PC-9.1a): small queues close them as slow consumers (PC-9.6c), and
    /// a stream gate of one turn refuses most replays with a Retry-After
    /// longer than the linger (PC-2.4b). Every endpoint with its stream at
    /// the end must still have everything it was owed: its reconnect takes
    /// its rooms along (PC-9.4d) instead of resuming rooms the server has
    /// left. (A resume without them was answered `not_joined`, and the
    /// generator counted what followed as lost at a connected endpoint.)
    #[test]
    fn endpoints_whose_sessions_expired_while_away_miss_nothing_once_back() {
        let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let server = ServerProcess::start_debug_with(&[
            ("PCHAT_STREAM__ENDPOINT_LINGER_S", "1"),
            ("PCHAT_STREAM__QUEUE_EVENTS", "2"),
            ("PCHAT_ADMISSION__STREAM__CONCURRENCY", "1"),
            ("PCHAT_ADMISSION__STREAM__QUEUE", "0"),
            ("PCHAT_ADMISSION__RETRY_AFTER_MIN_MS", "1500"),
            ("PCHAT_ADMISSION__RETRY_AFTER_MAX_MS", "2000"),
        ])
        .expect("start the reference server");
        let result = run_against(&server, None, None, |_| {}, &|_| true);
        let metrics = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async {
                reqwest::get(format!("{}/metrics", server.base))
                    .await?
                    .text()
                    .await
            })
            .expect("the server's metrics");
        let counter = |name: &str| -> f64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .map_or(0.0, |v| v.trim().parse().expect("a number"))
        };
        let step = &result.steps[0];
        let lost_streams: u64 = step
            .retried
            .iter()
            .filter(|(k, _)| k.starts_with("stream:"))
            .map(|(_, n)| n)
            .sum();
        assert!(lost_streams > 0, "no stream was lost: {:?}", step.retried);
        assert!(
            counter("pchat_endpoint_sessions_expired_total") > 0.0,
            "no session expired: {:?}",
            step.retried
        );
        let c = &step.correctness;
        assert!(c.expected_deliveries > 0 && c.delivered > 0, "{c:?}");
        assert_eq!(
            c.lost - c.lost_while_away,
            0,
            "lost at endpoints with their stream: {:?}",
            c.witnesses
        );
        assert_eq!(
            (
                c.duplicated,
                c.reordered,
                c.sequence_gaps,
                c.conflicting_acks
            ),
            (0, 0, 0, 0),
            "{c:?}"
        );
    }

    /// A server that admits fewer streams than the step has endpoints
    /// (`max_connections`) refuses the rest with 503 busy: that is the
    /// server's answer, judged as errors that name it, not a limit of the
    /// generator's host that would make the step unmeasurable.
    #[test]
    fn streams_the_server_refuses_are_its_errors_not_a_host_limit() {
        let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let result = short_run_of(
            None,
            None,
            &[("PCHAT_LIMITS__MAX_CONNECTIONS", "440")],
            |_| {},
            &|_| true,
        );
        assert!(result.limits_hit.is_empty(), "{:?}", result.limits_hit);
        assert_eq!(verdict::invalid_because(&result), None);
        let step = &result.steps[0];
        assert_eq!(step.endpoints, 450);
        let refused: u64 = step
            .errors
            .iter()
            .filter(|(k, _)| k.starts_with("stream:down:") && k.ends_with(":busy"))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(refused, 10, "{:?}", step.errors);
        let c = &step.correctness;
        assert_eq!(c.lost, c.lost_while_away, "{:?}", c.witnesses);
    }

    /// A knee search with refinement, on a real server, its steps judged by
    /// their size alone (holding up to 35 users) so that the test pins the
    /// search, not the host: the ramp's one step (60 users) breaks, then the
    /// bisection on multiples of 20 tries 40 (breaks) and 20 (holds), and
    /// stops, the two 20 apart. Every step is a full, checked run.
    #[test]
    fn a_knee_search_bisects_after_the_ramp_breaks() {
        let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let result = short_run_of(
            None,
            None,
            &[],
            |spec| {
                spec.steps = vec![StepSpec {
                    users: 60,
                    ramp_s: 2.0,
                    steady_s: 3.0,
                    grace_s: 1.0,
                }];
                spec.stop_when_broken = true;
                spec.refine_to = Some(20);
            },
            &|step| step.users <= 35,
        );
        let users: Vec<u64> = result.steps.iter().map(|s| s.users).collect();
        assert_eq!(users, [60, 40, 20]);
        for s in &result.steps {
            assert_eq!(s.endpoints * 2, s.users * 3, "{} users", s.users);
            assert!(s.correctness.is_clean(), "{}: {:?}", s.users, s.correctness);
        }
    }

    /// The same load from two load generator processes (this task binary's
    /// `loadgen-shard`): every scheduled post is acknowledged, every
    /// endpoint gets what it is owed, and the merged figures cover both.
    #[test]
    fn two_generator_processes_run_the_whole_schedule_and_check_clean() {
        let _one = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let command = loadgen::shard::ShardCommand {
            program: ServerProcess::xtask_debug_binary().expect("build the xtask binary"),
            args: vec!["loadgen-shard".into()],
        };
        let result = short_run(Some(2), Some(command));
        let step = &result.steps[0];
        let c = &step.correctness;
        assert_eq!(c.acknowledged as usize, scheduled_posts(), "{c:?}");
        assert!(c.expected_deliveries > 0 && c.delivered > 0, "{c:?}");
        assert!(c.is_clean(), "{c:?}");
        assert!(result.limits_hit.is_empty(), "{:?}", result.limits_hit);
        // Both processes' operations and deliveries are in the merged
        // window; posts/s of the timeline add up over the processes.
        assert_eq!(step.latencies["post_ack"].count, c.acknowledged);
        assert!(step.latencies["delivery"].count > 0);
        // One sample a second: the timeline's posts are the acknowledged
        // ones (a sample that came late spreads its seconds, hence the 5 %).
        let timeline_posts: f64 = result.timeline.iter().map(|s| s.posts_per_s).sum();
        let acked = c.acknowledged as f64;
        assert!(
            (timeline_posts - acked).abs() <= 0.05 * acked,
            "timeline {timeline_posts} posts, acknowledged {acked}"
        );
        assert!(result.timeline.iter().any(|s| s.endpoints == 450));
        assert!(result.generator.cpu_peak_pct > 0.0);
        assert!(!result.generator.saturated, "{:?}", result.generator.reason);
        let note = generators_note(&result, Some(2));
        assert!(note.contains("2 at 300 users"), "{note}");
    }
}
