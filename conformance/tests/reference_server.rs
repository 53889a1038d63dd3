//! The suite against the real reference server: the binary on 127.0.0.1
//! with a temporary data directory and short stream timers, the operator
//! token minted from the data directory's key, a restart hook that kills it
//! with SIGKILL and starts it again on the same port, and a compliance hook
//! that prints the exported JSON lines.
//!
//! Finding the binary: `CARGO_BIN_EXE_*` exists only for a package's own
//! binaries, and a dev-dependency does not build its dependency's binaries
//! (artifact dependencies are unstable). So the test asks cargo (the same
//! `cargo` that runs it, `env!("CARGO")`) to build `reference-server`'s binary
//! into the same target directory, derived from this test's own path
//! (`<target>/<profile>/deps/<test>`), once per test binary. Under `cargo
//! test --workspace` the binary is already built and this is a quick no-op;
//! cargo no longer holds the build lock while tests run. Set
//! `PCHAT_REFERENCE_SERVER` to use a binary of your own instead.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use conformance::ctx::Hook;
use conformance::profile::Profile;
use conformance::report::{Outcome, Verdict};
use conformance::{history, redact, report, Config};

/// The reference server binary, built once per test process.
fn server_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("PCHAT_REFERENCE_SERVER") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("the test's own path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("<target>/<profile>");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "reference-server",
            "--bin",
            "reference-server",
        ])
        .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building reference-server failed");
        profile_dir.join("reference-server")
    })
}

/// Short timers, so the heartbeat, linger and slow-consumer tests are quick.
const ENV: [(&str, &str); 5] = [
    ("PCHAT_LOG__FILTER", "error"),
    ("PCHAT_STREAM__HEARTBEAT_INTERVAL_S", "1"),
    ("PCHAT_STREAM__HEARTBEAT_TIMEOUT_S", "3"),
    ("PCHAT_STREAM__ENDPOINT_LINGER_S", "2"),
    ("PCHAT_STREAM__QUEUE_EVENTS", "64"),
];

/// Starts the server on `listen` and returns it with its base URL.
fn spawn(dir: &Path, listen: &str) -> (Child, String) {
    let mut cmd = Command::new(server_binary());
    cmd.args(["serve", "--listen", listen, "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in ENV {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start reference-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read the listening line");
    let base = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .unwrap_or_else(|| panic!("server did not say where it listens: {line:?}"))
        .to_owned();
    (child, base)
}

async fn wait_healthy(base: &str) {
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {base} never became healthy");
}

/// A running reference server that the restart hook can kill and restart.
struct Server {
    child: Arc<Mutex<Child>>,
    base: String,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let (child, base) = spawn(&dir, "127.0.0.1:0");
        wait_healthy(&base).await;
        Server {
            child: Arc::new(Mutex::new(child)),
            base,
            dir,
            _tmp: tmp,
        }
    }

    fn operator_token(&self) -> String {
        let keys = reference_server::auth::Keys::load(&self.dir).expect("signing key");
        keys.issue(
            reference_server::domain::OPERATOR,
            reference_server::auth::now_s() + 3600,
        )
    }

    /// SIGKILL, then a new process on the same address and data directory.
    fn restart_hook(&self) -> Hook {
        let (child, dir) = (self.child.clone(), self.dir.clone());
        let listen = self.base.trim_start_matches("http://").to_owned();
        Hook::Func(Arc::new(move || {
            let (child, dir, listen) = (child.clone(), dir.clone(), listen.clone());
            Box::pin(async move {
                let new = tokio::task::spawn_blocking(move || {
                    let mut c = child.lock().expect("child lock");
                    c.kill()?;
                    c.wait()?;
                    let (new, _) = spawn(&dir, &listen);
                    *c = new;
                    Ok::<(), std::io::Error>(())
                });
                new.await??;
                Ok(String::new())
            })
        }))
    }

    fn compliance_hook(&self) -> Hook {
        Hook::Command(format!(
            "cat {}/compliance-export/*.jsonl 2>/dev/null || true",
            self.dir.display()
        ))
    }

    fn profile(&self, extra: &str) -> Profile {
        Profile::parse(&format!(
            "admin_token = \"{}\"\n[run]\nmax_wait_s = 15\nseed = 42\n{extra}",
            self.operator_token()
        ))
        .expect("profile")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_server_is_conformant() {
    let started = Instant::now();
    let server = Server::start().await;
    let out = tempfile::tempdir().expect("output dir");
    let mut config = Config::new(server.base.clone(), server.profile(""));
    config.out_dir = Some(out.path().to_owned());
    config.restart = Some(server.restart_hook());
    config.compliance_export = Some(server.compliance_hook());
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
    let not_run: Vec<String> = report
        .results
        .iter()
        .filter(|r| match r.outcome {
            Outcome::NotPossible => true,
            Outcome::Skip => r.clause != "PC-17.1a",
            _ => false,
        })
        .map(|r| format!("{} {}: {:?}", r.clause, r.test, r.detail))
        .collect();
    let failed: Vec<String> = report
        .must_failures()
        .iter()
        .map(|r| {
            format!(
                "{} {}: {}",
                r.clause,
                r.test,
                r.detail.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "the reference server fails MUST clauses:\n{}",
        failed.join("\n")
    );
    assert!(
        not_run.is_empty(),
        "tests that did not run:\n{}",
        not_run.join("\n")
    );
    assert_eq!(report.verdict, Verdict::Conformant);
    assert!(
        started.elapsed() < Duration::from_secs(110),
        "the suite took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_check_finds_no_anomalies_with_a_fixed_seed() {
    let server = Server::start().await;
    let out = tempfile::tempdir().expect("output dir");
    let profile = server
        .profile("only = [\"PC-15.\"]\nhistory_clients = 4\nhistory_rooms = 3\nhistory_ops = 60\n");
    let mut config = Config::new(server.base.clone(), profile);
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
