//! A reference server process started by a task: release build, fresh data
//! directory, port 0 on loopback, stopped (SIGTERM) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs `cargo build` with `args` in the workspace.
fn cargo_build(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .arg("build")
        .args(args)
        .current_dir(workspace_root())
        .status()
        .context("run cargo build")?;
    if !status.success() {
        bail!("cargo build {} failed", args.join(" "));
    }
    Ok(())
}

/// Builds the reference server in release mode and returns the binary.
pub fn build_release() -> anyhow::Result<PathBuf> {
    // With xtask in the same build, shared dependencies resolve to the
    // features `cargo xtask` already built them with: no second build.
    cargo_build(&["--release", "-p", "reference-server", "-p", "xtask"])?;
    Ok(target_dir().join("release").join("reference-server"))
}

pub struct ServerProcess {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl ServerProcess {
    /// Builds and starts the release server with extra `PCHAT_*` settings;
    /// its log goes to this process's stderr.
    pub fn start_release(env: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
        ServerProcess::start(env, Stdio::inherit())
    }

    /// Like [`ServerProcess::start_release`], logging into `log`.
    pub fn start_release_logged(
        env: &[(&str, &str)],
        log: std::fs::File,
    ) -> anyhow::Result<ServerProcess> {
        ServerProcess::start(env, Stdio::from(log))
    }

    /// The debug build of the server (tests: `cargo test --workspace` has
    /// built it already), with extra `PCHAT_*` settings.
    #[cfg(test)]
    pub fn start_debug_with(env: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
        let bin = target_dir().join("debug").join("reference-server");
        if !bin.exists() {
            cargo_build(&["-p", "reference-server"])?;
        }
        ServerProcess::spawn(&bin, env, Stdio::inherit())
    }

    /// The debug build of this task binary, built first so that it is the
    /// same code as the test (tests start it as load generator processes).
    #[cfg(test)]
    pub fn xtask_debug_binary() -> anyhow::Result<PathBuf> {
        cargo_build(&["-p", "xtask"])?;
        Ok(target_dir().join("debug").join("xtask"))
    }

    fn start(env: &[(&str, &str)], stderr: Stdio) -> anyhow::Result<ServerProcess> {
        let bin = build_release()?;
        ServerProcess::spawn(&bin, env, stderr)
    }

    fn spawn(bin: &Path, env: &[(&str, &str)], stderr: Stdio) -> anyhow::Result<ServerProcess> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().join("data");
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .env("PCHAT_LOG__FILTER", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(base) = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
        else {
            let _ = child.kill();
            bail!("the server did not say where it listens: {line:?}");
        };
        Ok(ServerProcess {
            base: base.to_owned(),
            child,
            data_dir,
            _tmp: tmp,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A token of the built-in operator, minted from the data directory's
    /// key as `reference-server admin` does.
    pub fn admin_token(&self) -> String {
        let keys = reference_server::auth::Keys::load(&self.data_dir)
            .expect("the server wrote its signing key before listening");
        keys.issue(
            reference_server::domain::OPERATOR,
            reference_server::auth::now_s() + 24 * 3600,
        )
    }

    /// A client acting as the built-in operator.
    pub fn admin_client(&self) -> pchat_protocol::client::Client {
        pchat_protocol::client::Client::new(self.base.clone()).as_token(self.admin_token())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }
}
