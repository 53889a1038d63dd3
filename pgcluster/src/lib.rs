//! A private PostgreSQL cluster started from the installed binaries.
//!
//! Tests and `cargo xtask pool` need a real PostgreSQL without depending on
//! a server that may or may not run on this machine: [`Cluster::start`] runs
//! `initdb` in a directory of its own, starts `postgres` on a free loopback
//! port with its socket in that directory, and [`Drop`] stops it
//! (immediately: the cluster is disposable). A standby of a running cluster
//! comes from [`Cluster::start_standby`] (`pg_basebackup` plus streaming
//! replication), so failover can be exercised on one machine.
//!
//! PostgreSQL refuses to run as root; when this process is root the
//! binaries run as the `postgres` system user (Debian's packages create it)
//! and the data directory is handed to that user.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where PostgreSQL's server binaries are, or why they could not be found.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PCHAT_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    // Debian keeps the server binaries off PATH, one directory per major version.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL's server binaries (initdb, postgres) were not found: install Debian's \
             `postgresql` package, or set PCHAT_PG_BIN to the directory that holds them"
        ),
    }
}

/// Whether PostgreSQL can be started here; the reason when not.
pub fn available() -> Result<(), String> {
    bin_dir().map(|_| ()).map_err(|e| e.to_string())
}

/// The uid and gid to run PostgreSQL as: ours, unless we are root.
fn run_as() -> anyhow::Result<Option<(u32, u32)>> {
    let meta = std::fs::metadata("/proc/self").context("cannot read /proc/self")?;
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == "postgres" {
            return Ok(Some((f[2].parse()?, f[3].parse()?)));
        }
    }
    bail!("running as root, and there is no `postgres` user to run PostgreSQL as")
}

/// A running private cluster. Dropping it stops the server and deletes its
/// directory, unless the caller gave the directory ([`Options::dir`]).
pub struct Cluster {
    pub port: u16,
    pub data: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    _dir: Option<tempfile::TempDir>,
    stopped: bool,
}

/// How to start a cluster.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Directory for the cluster (kept); a fresh temporary one when None.
    pub dir: Option<PathBuf>,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

impl Cluster {
    /// Starts a fresh cluster in a temporary directory.
    pub fn start() -> anyhow::Result<Cluster> {
        Cluster::start_with(Options::default())
    }

    pub fn start_with(opts: Options) -> anyhow::Result<Cluster> {
        let bin = bin_dir()?;
        let user = run_as()?;
        let (tmp, root) = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new().prefix("pchat-pg-").tempdir()?;
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        hand_over(&root, user)?;
        let data = root.join("data");
        if data.join("PG_VERSION").exists() {
            // A cluster this crate made earlier in the same directory: start it again.
            let mut cluster = Cluster {
                port: 0,
                data,
                bin,
                user,
                _dir: tmp,
                stopped: true,
            };
            cluster.configure(&opts.settings, false)?;
            cluster.run()?;
            return Ok(cluster);
        }
        let out = pg_command(&bin, "initdb", user)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "-N",
            ])
            .output()
            .context("cannot run initdb")?;
        check(&out, "initdb")?;
        let mut cluster = Cluster {
            port: 0,
            data,
            bin,
            user,
            _dir: tmp,
            stopped: true,
        };
        cluster.configure(&opts.settings, true)?;
        cluster.run()?;
        Ok(cluster)
    }

    /// Starts a streaming-replication standby of `primary`, with its own
    /// directory, named `name` in the primary's `synchronous_standby_names`
    /// when `synchronous`.
    pub fn start_standby(primary: &Cluster, name: &str) -> anyhow::Result<Cluster> {
        let bin = primary.bin.clone();
        let user = primary.user;
        let t = tempfile::Builder::new()
            .prefix("pchat-pg-standby-")
            .tempdir()?;
        let root = t.path().to_owned();
        hand_over(&root, user)?;
        let data = root.join("data");
        let out = pg_command(&bin, "pg_basebackup", user)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(&data)
            .args(["-X", "stream", "-R", "--no-sync", "-c", "fast", "-d"])
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres application_name={name}",
                primary.port
            ))
            .output()
            .context("cannot run pg_basebackup")?;
        check(&out, "pg_basebackup")?;
        let mut cluster = Cluster {
            port: 0,
            data,
            bin,
            user,
            _dir: Some(t),
            stopped: true,
        };
        cluster.configure(&[], false)?;
        cluster.run()?;
        Ok(cluster)
    }

    /// Writes the settings every cluster of ours runs with, and a free port.
    fn configure(&mut self, extra: &[(String, String)], fresh: bool) -> anyhow::Result<()> {
        self.port = free_port()?;
        let mut conf = String::from("\n# pchat private cluster\n");
        let sock = self.data.parent().unwrap_or(&self.data).to_owned();
        let mut settings: Vec<(String, String)> = vec![
            ("port".into(), self.port.to_string()),
            ("listen_addresses".into(), "'127.0.0.1'".into()),
            (
                "unix_socket_directories".into(),
                format!("'{}'", sock.display()),
            ),
            ("max_connections".into(), "300".into()),
            ("shared_buffers".into(), "128MB".into()),
        ];
        if fresh {
            settings.extend([
                ("wal_level".into(), "replica".into()),
                ("max_wal_senders".into(), "8".into()),
                ("hot_standby".into(), "on".into()),
            ]);
        }
        settings.extend(extra.iter().cloned());
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let path = self.data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(&conf);
        std::fs::write(&path, text)?;
        if fresh {
            let hba = self.data.join("pg_hba.conf");
            let mut text = std::fs::read_to_string(&hba).unwrap_or_default();
            text.push_str("\nhost replication all 127.0.0.1/32 trust\n");
            std::fs::write(&hba, text)?;
        }
        Ok(())
    }

    fn run(&mut self) -> anyhow::Result<()> {
        let log = self
            .data
            .parent()
            .unwrap_or(&self.data)
            .join("postgres.log");
        // The server inherits pg_ctl's standard streams: pipes would keep a
        // reader waiting for as long as the server runs, so they go nowhere.
        let status = pg_command(&self.bin, "pg_ctl", self.user)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run pg_ctl start")?;
        if !status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let mut tail: Vec<&str> = tail.lines().rev().take(20).collect();
            tail.reverse();
            bail!(
                "PostgreSQL did not start ({status}); its log ends:\n{}",
                tail.join("\n")
            );
        }
        self.stopped = false;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL on port {} did not accept connections",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL through `psql` as the superuser, returning its output.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = pg_command(&self.bin, "psql", self.user)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .context("cannot run psql")?;
        check(&out, "psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Creates a database (no error if it exists).
    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let exists = self.psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        )?;
        if exists.is_empty() {
            self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        }
        Ok(())
    }

    /// Promotes a standby to a primary and waits until it accepts writes.
    pub fn promote(&self) -> anyhow::Result<()> {
        let out = pg_command(&self.bin, "pg_ctl", self.user)
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "promote"])
            .output()
            .context("cannot run pg_ctl promote")?;
        check(&out, "pg_ctl promote")
    }

    /// Stops the server: `fast` waits for clients to be disconnected and
    /// checkpoints; otherwise it stops at once, as a crash would.
    pub fn stop(&mut self, fast: bool) -> anyhow::Result<()> {
        if self.stopped {
            return Ok(());
        }
        let out = pg_command(&self.bin, "pg_ctl", self.user)
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", if fast { "fast" } else { "immediate" }, "stop"])
            .output()
            .context("cannot run pg_ctl stop")?;
        self.stopped = true;
        check(&out, "pg_ctl stop")
    }

    /// Starts a stopped cluster again on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if !self.stopped {
            return Ok(());
        }
        self.run()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop(false);
    }
}

fn pg_command(bin: &Path, name: &str, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(bin.join(name));
    cmd.stdin(Stdio::null()).env("LC_ALL", "C");
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    cmd
}

fn hand_over(root: &Path, user: Option<(u32, u32)>) -> anyhow::Result<()> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(root, Some(uid), Some(gid))
            .with_context(|| format!("cannot hand {} to the postgres user", root.display()))?;
    }
    Ok(())
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    bail!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_replicates() {
        if let Err(why) = available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have PostgreSQL: {why}"
            );
            eprintln!("SKIPPED: {why}");
            return;
        }
        let primary = Cluster::start().expect("start a private cluster");
        primary.create_database("t").unwrap();
        primary
            .psql("t", "CREATE TABLE x(v int); INSERT INTO x VALUES (41), (1)")
            .unwrap();
        assert_eq!(primary.psql("t", "SELECT sum(v) FROM x").unwrap(), "42");
        let standby = Cluster::start_standby(&primary, "standby1").expect("start a standby");
        primary.psql("t", "INSERT INTO x VALUES (8)").unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = standby
                .psql("t", "SELECT sum(v) FROM x")
                .unwrap_or_default();
            if got == "50" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the standby never caught up: {got}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            standby.psql("t", "INSERT INTO x VALUES (1)").is_err(),
            "a standby is read-only"
        );
        standby.promote().unwrap();
        standby.psql("t", "INSERT INTO x VALUES (1)").unwrap();
        assert_eq!(standby.psql("t", "SELECT sum(v) FROM x").unwrap(), "51");
    }
}
