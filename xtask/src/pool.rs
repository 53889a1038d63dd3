//! A pool of reference-server nodes started by a task: `reference-server
//! pool local` (a private PostgreSQL, a published topology, N node
//! processes, optionally a backup pool on a synchronous standby) in a
//! temporary directory, stopped (SIGTERM) when dropped. Faults are injected
//! through it: killing a node, losing the site (SIGUSR1: the pool fails over).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;

/// What `pool local --ready-file` writes (see reference-server's cli).
#[derive(Clone, Debug, Deserialize)]
pub struct Ready {
    pub nodes: Vec<String>,
    pub pids: Vec<u32>,
    pub backup_nodes: Vec<String>,
    pub admin_token_file: PathBuf,
    pub failed_over: bool,
}

/// What a failover measured, in ms since the site was lost.
#[derive(Clone, Debug, Deserialize)]
pub struct FailoverTimes {
    pub promoted_ms: u128,
    pub serving_ms: u128,
}

/// How to start a pool.
#[derive(Clone, Debug, Default)]
pub struct PoolOptions {
    pub nodes: usize,
    pub compliance: bool,
    pub backup: bool,
    /// Leave a killed node down (node-loss studies).
    pub no_restart: bool,
    /// Each node's `PCHAT_*` settings (stream workers, max connections:
    /// `sizing::node_env`).
    pub node_env: Vec<(&'static str, String)>,
}

pub struct PoolProcess {
    child: Child,
    dir: tempfile::TempDir,
    ready_file: PathBuf,
    pub ready: Ready,
}

impl PoolProcess {
    /// Starts `binary pool local` with `opts`; its output goes to `log`.
    pub fn start(
        binary: &Path,
        opts: &PoolOptions,
        log: std::fs::File,
    ) -> anyhow::Result<PoolProcess> {
        // `pool local` inherits this process's open-file limit, and the
        // run reads the limit of the process it samples (`pids`): raise it
        // to the hard limit first, as each node raises its own.
        loadgen::net::raise_fd_limit();
        let dir = tempfile::Builder::new().prefix("pchat-pool-").tempdir()?;
        let ready_file = dir.path().join("ready.json");
        let mut cmd = Command::new(binary);
        cmd.args(["pool", "local", "--base-port", "0", "--nodes"])
            .arg(opts.nodes.to_string())
            .arg("--dir")
            .arg(dir.path().join("pool"))
            .arg("--ready-file")
            .arg(&ready_file)
            .env("PCHAT_LOG__FILTER", "warn")
            .envs(opts.node_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        if opts.compliance {
            cmd.arg("--compliance");
        }
        if opts.backup {
            cmd.arg("--backup");
        }
        if opts.no_restart {
            cmd.arg("--no-restart");
        }
        let mut child = cmd
            .spawn()
            .context("cannot start `reference-server pool local`")?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready_file.exists() {
            if let Some(status) = child.try_wait()? {
                bail!("`reference-server pool local` exited ({status}); see its log");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("the pool did not come up within 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let ready = read_ready(&ready_file)?;
        Ok(PoolProcess {
            child,
            dir,
            ready_file,
            ready,
        })
    }

    /// An operator token (valid one day).
    pub fn admin_token(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&self.ready.admin_token_file)?
            .trim()
            .to_owned())
    }

    /// The process ids to sample, each with its descendants: `pool local`
    /// itself, so that its nodes are found, the backup pool's nodes it
    /// starts at a failover too, with their worker processes. (PostgreSQL
    /// is not among them: `pg_ctl` leaves its server to init.)
    pub fn pids(&self) -> Vec<u32> {
        vec![self.child.id()]
    }

    /// `kill -9` of one node.
    pub fn kill_node(&self, node: usize) -> anyhow::Result<u32> {
        let pid = *self
            .ready
            .pids
            .get(node)
            .with_context(|| format!("the pool has no node {node}"))?;
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?;
        Ok(pid)
    }

    /// Loses the site and waits for the backup pool to serve; returns the
    /// timings `pool local` measured.
    pub fn fail_over(&mut self) -> anyhow::Result<FailoverTimes> {
        let times = self.dir.path().join("pool").join("failover.json");
        Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if times.exists() {
                let ready = read_ready(&self.ready_file)?;
                if ready.failed_over {
                    self.ready = ready;
                    let t: FailoverTimes = serde_json::from_slice(&std::fs::read(&times)?)?;
                    return Ok(t);
                }
            }
            if Instant::now() > deadline {
                bail!("the failover did not finish within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn read_ready(path: &Path) -> anyhow::Result<Ready> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))
}

impl Drop for PoolProcess {
    fn drop(&mut self) {
        // SIGTERM lets `pool local` stop its nodes and its databases.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
