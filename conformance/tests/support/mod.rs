//! Starting the real reference server for the suite: building its binary,
//! starting it on 127.0.0.1 with a temporary data directory and short stream
//! timers, the operator token minted from the data directory's key, a
//! restart hook that kills it with SIGKILL and starts it again on the same
//! port, and a compliance hook that prints the exported JSON lines.
//!
//! Finding the binary: `CARGO_BIN_EXE_*` exists only for a package's own
//! binaries, and a dev-dependency does not build its dependency's binaries
//! (artifact dependencies are unstable). So [`build_server`] asks cargo (the
//! same `cargo` that runs the test, `env!("CARGO")`) to build
//! `reference-server`'s binary into a target directory derived from the
//! test's own path (`<target>/<profile>/deps/<test>`). Under `cargo test
//! --workspace` the plain binary is already built and this is a quick no-op;
//! cargo no longer holds the build lock while tests run.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance::ctx::Hook;
use conformance::profile::Profile;
use conformance::Config;

/// Builds `reference-server`'s binary and returns its path. Without a
/// feature it goes to the workspace's own target directory (the binary the
/// workspace build makes anyway); with one, to `<target>/<feature>`, so the
/// two builds never replace each other's binary.
pub fn build_server(feature: Option<&str>) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let profile = profile_dir.file_name().expect("<target>/<profile>");
    let mut target_dir = profile_dir.parent().expect("<target>/<profile>").to_owned();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "reference-server",
        "--bin",
        "reference-server",
    ]);
    if let Some(f) = feature {
        cmd.args(["--features", f]);
        target_dir = target_dir.join(f);
    }
    cmd.env("CARGO_TARGET_DIR", &target_dir);
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building reference-server failed");
    target_dir.join(profile).join("reference-server")
}

/// Short timers, so the heartbeat, linger and slow-consumer tests are quick.
/// The linger stays long enough for the sessions that tests make by joining
/// without a stream to outlive their set-up: PC-12.2b joins 78 users and
/// needs them all at once, which took more than 2 s on a pool under CI load.
/// The heartbeat timeout stays longer than PC-9.6c's posts take to overflow
/// its slow stream, which answers no Ping either: with 3 s the heartbeat
/// closed it first (4002) on a pool under CI load.
const ENV: [(&str, &str); 5] = [
    ("PCHAT_LOG__FILTER", "error"),
    ("PCHAT_STREAM__HEARTBEAT_INTERVAL_S", "1"),
    ("PCHAT_STREAM__HEARTBEAT_TIMEOUT_S", "12"),
    ("PCHAT_STREAM__ENDPOINT_LINGER_S", "10"),
    ("PCHAT_STREAM__QUEUE_EVENTS", "64"),
];

/// How to start a server process: its binary and any environment beyond [`ENV`].
#[derive(Clone)]
struct Launch {
    binary: PathBuf,
    env: Vec<(String, String)>,
}

impl Launch {
    /// Starts the server on `listen` and returns it with its base URL.
    fn spawn(&self, dir: &Path, listen: &str) -> (Child, String) {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(dir)
            .env_remove("PCHAT_INJECT_BUG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in ENV {
            cmd.env(k, v);
        }
        for (k, v) in &self.env {
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
pub struct Server {
    child: Arc<Mutex<Child>>,
    launch: Launch,
    pub base: String,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Server {
    /// Starts `binary` with the short timers plus `env`, on a free port.
    pub async fn start(binary: &Path, env: &[(&str, &str)]) -> Server {
        let launch = Launch {
            binary: binary.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let (child, base) = launch.spawn(&dir, "127.0.0.1:0");
        wait_healthy(&base).await;
        Server {
            child: Arc::new(Mutex::new(child)),
            launch,
            base,
            dir,
            _tmp: tmp,
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().expect("child lock").id()
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
        let (child, dir, launch) = (self.child.clone(), self.dir.clone(), self.launch.clone());
        let listen = self.base.trim_start_matches("http://").to_owned();
        Hook::Func(Arc::new(move || {
            let (child, dir, launch, listen) =
                (child.clone(), dir.clone(), launch.clone(), listen.clone());
            Box::pin(async move {
                let new = tokio::task::spawn_blocking(move || {
                    let mut c = child.lock().expect("child lock");
                    c.kill()?;
                    c.wait()?;
                    let (new, _) = launch.spawn(&dir, &listen);
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

    /// The profile: the operator token, a fixed seed, short waits, and `extra`.
    /// Events get 15 s to arrive (not the default 5): these runs share two
    /// cores with the rest of the test suite, two suites at a time, and an
    /// event that does come must not be reported missing because the machine
    /// was busy. Tests of an event's absence drain for their own fixed time.
    pub fn profile(&self, extra: &str) -> Profile {
        Profile::parse(&format!(
            "admin_token = \"{}\"\n[run]\nmax_wait_s = 15\nevent_wait_s = 15\nseed = 42\n{extra}",
            self.operator_token()
        ))
        .expect("profile")
    }

    /// A run of the whole suite with both hooks declared.
    pub fn config(&self, profile: Profile) -> Config {
        let mut config = Config::new(self.base.clone(), profile);
        config.restart = Some(self.restart_hook());
        config.compliance_export = Some(self.compliance_hook());
        config
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

/// Asserts a run against `what` is conformant with every test run (all
/// hooks declared; only PC-17.1a, about several pools, may be skipped),
/// naming each MUST failure and each test that did not run.
pub fn assert_conformant(report: &conformance::report::Report, what: &str) {
    use conformance::report::{Outcome, Verdict};
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
        "{what} fails MUST clauses:\n{}",
        failed.join("\n")
    );
    assert!(
        not_run.is_empty(),
        "tests that did not run:\n{}",
        not_run.join("\n")
    );
    assert_eq!(report.verdict, Verdict::Conformant);
}

/// The child processes of `pid` (Linux: `/proc/<pid>/task/*/children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out.sort_unstable();
    out.dedup();
    out
}
