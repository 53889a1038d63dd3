//! The suite against the real reference server (started by `support`: the
//! binary on 127.0.0.1 with a temporary data directory and short stream
//! timers, and both hooks declared). Set `PCHAT_REFERENCE_SERVER` to use a
//! binary of your own instead of the one built from this workspace.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use conformance::report::Outcome;
use conformance::{history, redact, report};

use support::Server;

/// The reference server binary, built once per test process.
fn server_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var("PCHAT_REFERENCE_SERVER") {
        Ok(p) => PathBuf::from(p),
        Err(_) => support::build_server(None),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_server_is_conformant() {
    let started = Instant::now();
    let server = Server::start(server_binary(), &[]).await;
    let out = tempfile::tempdir().expect("output dir");
    let mut config = server.config(server.profile(""));
    config.out_dir = Some(out.path().to_owned());
    let report = conformance::run(config).await.expect("the suite runs");
    eprintln!("{}", report::table(&report));
    eprintln!("suite took {:.1} s", started.elapsed().as_secs_f64());

    // The outputs are all there and well-formed.
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.path().join("result.json")).expect("result.json"),
    )
    .expect("result.json is JSON");
    assert_eq!(json["format"], "pchat-conformance-result");
    assert_eq!(json["version"], report::RESULT_FORMAT_VERSION);
    assert_eq!(
        json["results"].as_array().map(Vec::len),
        Some(report.results.len())
    );
    let junit = std::fs::read_to_string(out.path().join("junit.xml")).expect("junit.xml");
    assert!(
        junit.contains("<testsuites") && junit.contains("<testcase"),
        "{junit}"
    );
    for r in &report.results {
        let t = r.transcript.as_ref().expect("a transcript per test");
        let text = std::fs::read_to_string(out.path().join(t)).expect("transcript file");
        assert!(text.starts_with(&format!("# {}", r.clause)), "{t}");
    }
    let h = history::History::load(&out.path().join("history.json")).expect("history.json");
    assert_eq!(h.seed, 42);

    // Response shapes, redacted; see tests/snapshots/.
    for (name, body) in &report.shapes {
        let redacted =
            redact::redact(body, &report.namespace).unwrap_or_else(|e| panic!("shape {name}: {e}"));
        insta::assert_json_snapshot!(name.as_str(), redacted);
    }
    for required in [
        "room",
        "message",
        "joined",
        "error.room_not_found",
        "error.unknown_field",
    ] {
        assert!(
            report.shapes.contains_key(required),
            "no {required} shape recorded"
        );
    }

    // Every test ran (hooks declared; only §17 does not apply to one
    // pool), and every MUST test passed.
    support::assert_conformant(&report, "the reference server");
}

/// The same suite against a node whose stream sockets are held by two
/// stream worker processes (reference-server `stream.workers`): handing a
/// socket over must not change anything a client can observe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_stream_workers_is_conformant() {
    let server = Server::start(server_binary(), &[("PCHAT_STREAM__WORKERS", "2")]).await;
    let workers = support::children_of(server.pid());
    assert_eq!(workers.len(), 2, "two stream workers run: {workers:?}");
    let report = conformance::run(server.config(server.profile("")))
        .await
        .expect("the suite runs");
    eprintln!("{}", report::table(&report));
    support::assert_conformant(&report, "a node with stream workers");
    // The suite's streams really went through the workers.
    let metrics = reqwest::get(format!("{}/metrics", server.base))
        .await
        .and_then(|r| r.error_for_status())
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let relayed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pchat_streams_relayed_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pchat_streams_relayed_total in {metrics}"));
    assert!(relayed >= 20, "only {relayed} streams were relayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_check_finds_no_anomalies_with_a_fixed_seed() {
    let server = Server::start(server_binary(), &[]).await;
    let out = tempfile::tempdir().expect("output dir");
    let profile = server
        .profile("only = [\"PC-15.\"]\nhistory_clients = 4\nhistory_rooms = 3\nhistory_ops = 60\n");
    let mut config = server.config(profile);
    config.out_dir = Some(out.path().to_owned());
    let report = conformance::run(config).await.expect("the suite runs");
    assert_eq!(report.results.len(), 3, "{:?}", report.results);
    for r in &report.results {
        assert_eq!(
            r.outcome,
            Outcome::Pass,
            "{} {}: {:?}",
            r.clause,
            r.test,
            r.detail
        );
    }
    // The saved history re-checks clean and holds real work.
    let h = history::History::load(&out.path().join("history.json")).expect("history.json");
    assert_eq!(h.seed, 42);
    assert_eq!(h.rooms.len(), 3);
    let anomalies = history::check(&h);
    assert!(anomalies.is_empty(), "{anomalies:?}");
    let count = |f: history::Op| {
        h.entries
            .iter()
            .filter(|e| e.f == f && e.phase == history::Phase::Ok)
            .count()
    };
    assert!(
        count(history::Op::Post) >= 50,
        "only {} posts acknowledged",
        count(history::Op::Post)
    );
    assert!(count(history::Op::Deliver) >= count(history::Op::Post));
    assert!(count(history::Op::Resume) > 3 * 4, "no reconnects happened");
    assert!(count(history::Op::Read) >= 12);
}
