//! Proof that the suite catches bugs: the reference server built with its
//! `bug-injection` feature, run once per bug of `bugs.toml` with
//! `PCHAT_INJECT_BUG=<name>`, must fail exactly the clauses the bug declares;
//! the same build with no bug selected must be conformant.
//!
//! A clause is *broken* by a run when one of its tests ends `fail` (or
//! `non-strict`, a SHOULD not met). A test that ends `not-possible`, or a
//! skip other than §17's (one pool), is a mismatch of its own: a bug that
//! stops the suite from judging a clause makes the verdict incomplete
//! instead of caught, and has to be looked at, not declared.
//!
//! The feature build goes to `<target>/bug-injection` (see
//! `support::build_server`), so it never replaces the plain binary. Runs go
//! two at a time (each is a server and a suite; CI has two cores). Set
//! `PCHAT_INJECT_ONLY=name,name` to run only some bugs (`none` is the run
//! without a bug) while working on them; the test says what it left out.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use conformance::report::{self, Outcome, Report, Verdict};
use futures_util::StreamExt;
use serde::Deserialize;

use support::Server;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bugs {
    bug: Vec<Bug>,
}

/// One entry of `bugs.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bug {
    name: String,
    description: String,
    breaks: BTreeSet<String>,
}

fn declared() -> Vec<Bug> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bugs.toml");
    let text = std::fs::read_to_string(&path).expect("read bugs.toml");
    let bugs: Bugs = toml::from_str(&text).expect("bugs.toml is valid");
    bugs.bug
}

/// The names of `reference-server/src/inject.rs`'s `BUGS` list, read from
/// the source (this crate links the server without the feature).
fn injectable() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../reference-server/src/inject.rs");
    let src = std::fs::read_to_string(&path).expect("read reference-server/src/inject.rs");
    let list = src
        .split_once("pub const BUGS: &[&str] = &[")
        .and_then(|(_, rest)| rest.split_once("];"))
        .expect("inject.rs has `pub const BUGS: &[&str] = &[ ... ];`")
        .0;
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// What one run broke, and what it could not judge.
struct Outcomes {
    broken: BTreeSet<String>,
    unjudged: Vec<String>,
    verdict: Verdict,
    table: String,
}

fn outcomes(report: &Report) -> Outcomes {
    let broken = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Fail | Outcome::NonStrict))
        .map(|r| r.clause.clone())
        .collect();
    let unjudged = report
        .results
        .iter()
        .filter(|r| match r.outcome {
            Outcome::NotPossible => true,
            Outcome::Skip => r.clause != "PC-17.1a",
            _ => false,
        })
        .map(|r| format!("{} {}: {:?}", r.clause, r.test, r.detail))
        .collect();
    Outcomes {
        broken,
        unjudged,
        verdict: report.verdict,
        table: report::table(report),
    }
}

/// Runs the whole suite against a fresh feature-build server with `bug`
/// selected (none: the variable unset).
async fn run(binary: PathBuf, bug: Option<String>) -> (Option<String>, Outcomes, f64) {
    let started = Instant::now();
    let env: Vec<(&str, &str)> = bug
        .as_deref()
        .map(|b| ("PCHAT_INJECT_BUG", b))
        .into_iter()
        .collect();
    let server = Server::start(&binary, &env).await;
    let config = server.config(server.profile(""));
    let report = conformance::run(config).await.expect("the suite runs");
    drop(server);
    (bug, outcomes(&report), started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_injected_bug_fails_exactly_its_declared_clauses() {
    let started = Instant::now();
    let bugs = declared();

    // The declarations are well-formed and match what the server can inject.
    let names: BTreeSet<String> = bugs.iter().map(|b| b.name.clone()).collect();
    assert_eq!(names.len(), bugs.len(), "a bug is declared twice");
    assert_eq!(
        names,
        injectable(),
        "bugs.toml and reference-server/src/inject.rs name different bugs"
    );
    for b in &bugs {
        assert!(
            !b.description.trim().is_empty(),
            "{} has no description",
            b.name
        );
        assert!(!b.breaks.is_empty(), "{} declares no clause", b.name);
        for c in &b.breaks {
            assert!(
                conformance::spec::clause(c).is_some(),
                "{} declares {c}, which docs/protocol.md does not have",
                b.name
            );
        }
    }

    let only: Option<BTreeSet<String>> = std::env::var("PCHAT_INJECT_ONLY")
        .ok()
        .map(|s| s.split(',').map(|n| n.trim().to_owned()).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.contains(name));
    let mut runs: Vec<Option<String>> = Vec::new();
    if wanted("none") {
        runs.push(None);
    }
    runs.extend(
        bugs.iter()
            .filter(|b| wanted(&b.name))
            .map(|b| Some(b.name.clone())),
    );
    if let Some(o) = &only {
        eprintln!(
            "PCHAT_INJECT_ONLY={o:?}: running {} of {} runs",
            runs.len(),
            bugs.len() + 1
        );
    }

    let binary = tokio::task::spawn_blocking(|| support::build_server(Some("bug-injection")))
        .await
        .expect("build task");
    eprintln!(
        "built {} in {:.1} s",
        binary.display(),
        started.elapsed().as_secs_f64()
    );

    let results: Vec<_> = futures_util::stream::iter(runs)
        .map(|bug| run(binary.clone(), bug))
        .buffer_unordered(2)
        .collect()
        .await;

    let mut problems = Vec::new();
    for (bug, got, secs) in &results {
        let label = bug.as_deref().unwrap_or("none");
        eprintln!(
            "{label}: broke {:?} ({:?}) in {secs:.1} s",
            got.broken, got.verdict
        );
        let want: BTreeSet<String> = match bug {
            None => BTreeSet::new(),
            Some(name) => bugs
                .iter()
                .find(|b| &b.name == name)
                .map(|b| b.breaks.clone())
                .unwrap_or_default(),
        };
        let want_verdict = if bug.is_none() {
            Verdict::Conformant
        } else {
            Verdict::NotConformant
        };
        if got.broken != want || !got.unjudged.is_empty() || got.verdict != want_verdict {
            problems.push(format!(
                "{label}: declared {want:?}\n  broke {:?}\n  missed {:?}\n  extra {:?}\n  \
                 not judged {:?}\n  verdict {:?}\n{}",
                got.broken,
                want.difference(&got.broken).collect::<Vec<_>>(),
                got.broken.difference(&want).collect::<Vec<_>>(),
                got.unjudged,
                got.verdict,
                got.table
            ));
        }
    }
    eprintln!(
        "{} runs in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "runs that did not break exactly their declared clauses:\n{}",
        problems.join("\n")
    );
}
