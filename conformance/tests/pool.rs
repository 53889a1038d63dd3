//! The suite against a pool: `reference-server pool local` (a private
//! PostgreSQL and two nodes sharing it), everything through the second node,
//! with a restart hook that kills that node (the pool starts it again) and
//! the compliance export of the shared data directory. The same suite as
//! `reference_server.rs`, on the other store backend.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use conformance::Config;

struct PoolProcess(Child);

impl Drop for PoolProcess {
    fn drop(&mut self) {
        // SIGTERM lets `pool local` stop its nodes and its database.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..200 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_postgresql_is_conformant() {
    if let Err(why) = pgcluster::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to start PostgreSQL: {why}"
        );
        eprintln!("SKIPPED (pool): {why}");
        return;
    }
    let binary = support::build_server(None);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let ready = tmp.path().join("ready.json");
    let child = Command::new(&binary)
        .args(["pool", "local", "--nodes", "2", "--base-port", "0", "--dir"])
        .arg(&dir)
        .arg("--ready-file")
        .arg(&ready)
        .env("PCHAT_LOG__FILTER", "warn")
        .env("PCHAT_STREAM__HEARTBEAT_INTERVAL_S", "1")
        .env("PCHAT_STREAM__HEARTBEAT_TIMEOUT_S", "12")
        // As in support::ENV: long enough for PC-12.2b's joined sessions.
        .env("PCHAT_STREAM__ENDPOINT_LINGER_S", "10")
        .stdout(Stdio::null())
        .spawn()
        .expect("start pool local");
    let mut pool = PoolProcess(child);
    let mut waited = 0;
    while !ready.exists() {
        if let Some(status) = pool.0.try_wait().unwrap() {
            panic!("pool local exited early: {status}");
        }
        assert!(waited < 1200, "the pool did not come up within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let ready: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
    let target = ready["nodes"][1].as_str().unwrap().to_owned();
    let profile = conformance::profile::Profile::parse(&format!(
        "admin_token_file = \"{token}\"\n\
         [hooks]\n\
         restart = \"kill -9 $(cat {pid}) && sleep 0.5\"\n\
         compliance_export = \"cat {data}/compliance-export/*.jsonl 2>/dev/null || true\"\n\
         [run]\nmax_wait_s = 15\nevent_wait_s = 15\nseed = 42\n",
        token = dir.join("admin-token").display(),
        pid = dir.join("node1.pid").display(),
        data = dir.join("data").display(),
    ))
    .expect("profile");
    let report = conformance::run(Config::new(target, profile))
        .await
        .expect("the suite runs");
    eprintln!("{}", conformance::report::table(&report));
    support::assert_conformant(&report, "the pool");
}
