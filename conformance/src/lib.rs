//! Conformance suite for pchat servers: points at a running server and gives
//! a verdict per numbered clause of docs/protocol.md.
//!
//! - [`spec`]: the clauses, parsed from the spec compiled into the suite;
//! - [`profile`]: the vendor profile (`vendor.toml`);
//! - [`setup`]: getting accounts and a category (admin API, pre-made
//!   accounts, or a provisioning command);
//! - [`ctx`]: what a test sees: recorded raw HTTP, event streams, outcomes;
//! - [`rawws`]: a minimal WebSocket client for misbehaving on purpose;
//! - [`cases`]: the catalogue, one test per clause (some clauses have two);
//! - [`history`]: the Jepsen-style workload and its offline checker;
//! - [`report`]: outcomes, the verdict, table, JSON and JUnit renderings;
//! - [`redact`]: placeholders for ids and timestamps in snapshots.
//!
//! [`run`] is the whole suite as a library call; the `conformance` binary is
//! a thin shell around it.

pub mod cases;
pub mod ctx;
pub mod history;
pub mod profile;
pub mod rawws;
pub mod redact;
pub mod report;
pub mod setup;
pub mod spec;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;

use crate::cases::{Case, Need};
use crate::ctx::{Ctx, CtxParts, Flaw, Hook};
use crate::profile::Profile;
use crate::report::{Outcome, Report, TestResult};

/// Everything a run needs.
pub struct Config {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub target: String,
    pub profile: Profile,
    /// Where result.json, junit.xml, transcripts/ and history.json go.
    pub out_dir: Option<PathBuf>,
    /// Hooks given as functions override the profile's commands.
    pub restart: Option<Hook>,
    pub compliance_export: Option<Hook>,
    /// Print one line per test to stderr as it finishes.
    pub progress: bool,
}

impl Config {
    pub fn new(target: impl Into<String>, profile: Profile) -> Config {
        Config {
            target: target.into(),
            profile,
            out_dir: None,
            restart: None,
            compliance_export: None,
            progress: false,
        }
    }
}

/// Runs the catalogue against the target and returns the report (also
/// written to `out_dir` when set). Errors only when the run cannot start.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let p = &config.profile;
    let seed = p.run.seed.unwrap_or_else(|| rand::thread_rng().gen());
    let ns = p
        .run
        .namespace
        .clone()
        .unwrap_or_else(|| format!("cf{:06x}", rand::random::<u32>() & 0xff_ffff));
    let base = config.target.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let limits: pchat_protocol::Limits = http
        .get(format!("{base}/v1/limits"))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}/v1/limits"))?
        .json()
        .await
        .context("GET /v1/limits did not answer the limits object")?;
    let admin = p.admin_token()?;
    let world = setup::world(&http, &base, &ns, p, admin)
        .await
        .context("setting up the run's accounts")?;
    let restart = config
        .restart
        .clone()
        .or_else(|| p.hooks.restart.clone().map(Hook::Command));
    let compliance_export = config
        .compliance_export
        .clone()
        .or_else(|| p.hooks.compliance_export.clone().map(Hook::Command));
    if let Some(dir) = &config.out_dir {
        std::fs::create_dir_all(dir.join("transcripts"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let cx = Ctx::new(CtxParts {
        base: base.clone(),
        http,
        ns: ns.clone(),
        w: world,
        limits,
        restart,
        compliance_export,
        foreign_room: p.pools.as_ref().map(|x| x.foreign_room),
        max_wait: Duration::from_secs(p.run.max_wait_s),
        event_wait: Duration::from_secs(p.run.event_wait_s),
        seed,
        history: history::Params {
            clients: p.run.history_clients,
            rooms: p.run.history_rooms,
            ops: p.run.history_ops,
        },
        out_dir: config.out_dir.clone(),
    });
    let mut results = Vec::new();
    for case in cases::catalogue() {
        if !p.run.only.is_empty()
            && !p
                .run
                .only
                .iter()
                .any(|o| case.clause.contains(o.as_str()) || case.name.contains(o.as_str()))
        {
            continue;
        }
        let r = run_case(&cx, &case, config.out_dir.as_ref()).await;
        if config.progress {
            eprintln!(
                "{:<13} {:<9} {} ({} ms)",
                r.outcome.as_str(),
                r.clause,
                r.test,
                r.duration_ms
            );
        }
        results.push(r);
    }
    let mut shapes = std::collections::BTreeMap::new();
    for (k, v) in cx.take_shapes() {
        shapes.insert(k, v);
    }
    let report = Report::new(base, ns, seed, started_at, results, shapes);
    if let Some(dir) = &config.out_dir {
        report::write(&report, dir)?;
    }
    if config.progress {
        eprintln!("ran in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(report)
}

async fn run_case(cx: &Ctx, case: &Case, out_dir: Option<&PathBuf>) -> TestResult {
    let keyword = report::keyword_of(case.clause);
    let section = spec::clause(case.clause).map_or(0, |c| c.section);
    let declared = match case.needs {
        Need::Nothing => None,
        Need::Restart => Some(cx.restart.is_some()),
        Need::Compliance => Some(cx.compliance_export.is_some()),
        Need::Pools => Some(cx.foreign_room.is_some()),
    };
    let started = Instant::now();
    cx.log(format!("# {} {}", case.clause, case.name));
    let limit = cx.max_wait + Duration::from_secs(90);
    let flaw = if declared == Some(false) {
        Err(Flaw::Skip(
            "the profile does not declare the hook this test needs".into(),
        ))
    } else {
        match tokio::time::timeout(limit, (case.run)(cx)).await {
            Ok(r) => r,
            Err(_) => Err(Flaw::Fail(format!(
                "the test did not finish within {limit:?}"
            ))),
        }
    };
    let (outcome, detail) = match flaw {
        Ok(()) => (Outcome::Pass, None),
        Err(Flaw::Fail(m)) if keyword == "MUST" => (Outcome::Fail, Some(m)),
        Err(Flaw::Fail(m)) => (Outcome::NonStrict, Some(m)),
        Err(Flaw::Skip(m)) if declared == Some(true) => (
            Outcome::Fail,
            Some(format!("a declared feature skipped: {m}")),
        ),
        Err(Flaw::Skip(m)) => (Outcome::Skip, Some(m)),
        Err(Flaw::NotPossible(m)) => (Outcome::NotPossible, Some(m)),
    };
    let lines = cx.take_transcript();
    let transcript = out_dir.and_then(|dir| {
        let name = format!("transcripts/{}-{}.txt", case.clause, case.name);
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(dir.join(&name), text).ok().map(|_| name)
    });
    let clause_text = matches!(outcome, Outcome::Fail | Outcome::NonStrict)
        .then(|| spec::clause(case.clause).map(|c| c.text.clone()))
        .flatten();
    TestResult {
        clause: case.clause.to_owned(),
        keyword,
        section,
        test: case.name.to_owned(),
        outcome,
        detail,
        clause_text,
        duration_ms: started.elapsed().as_millis() as u64,
        transcript,
    }
}
