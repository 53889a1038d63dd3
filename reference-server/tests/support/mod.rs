//! Test support: starts the real `reference-server` binary on 127.0.0.1
//! port 0 with a temporary data directory, and hands out clients.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pchat_protocol::client::{Client, EventStream, StreamItem};
use pchat_protocol::{self as wire, Event};
use serde_json::{json, Value};

/// A server process under test.
pub struct TestServer {
    pub child: Child,
    pub base: String,
    pub dir: PathBuf,
    /// Keeps the temporary directory alive (None when the caller owns it).
    _tmp: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
    pub admin: Client,
}

impl TestServer {
    /// A fresh server with the global policy enabled.
    pub async fn start() -> TestServer {
        TestServer::start_with(&[]).await
    }

    /// A fresh server with extra `PCHAT_*` settings.
    pub async fn start_with(env: &[(&str, &str)]) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let s = TestServer::spawn(&dir, env, Some(tmp));
        s.wait_ready().await;
        s.admin_put("/v1/admin/policies/global", json!({"enabled": true}))
            .await;
        s
    }

    /// A server process on a directory the caller owns (a node of a pool
    /// shares it with the other nodes: the signing key lives there).
    pub async fn start_node(dir: &Path, env: &[(&str, &str)]) -> TestServer {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let s = TestServer::spawn(dir, env, None);
        s.wait_ready().await;
        s
    }

    fn spawn(dir: &Path, env: Vec<(String, String)>, tmp: Option<tempfile::TempDir>) -> TestServer {
        let listen = env
            .iter()
            .find(|(k, _)| k == "PCHAT_LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reference-server"));
        cmd.args(["serve", "--listen", &listen, "--data-dir"])
            .arg(dir)
            .env("PCHAT_LOG__FILTER", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start reference-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let base = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("server did not say where it listens: {line:?}"))
            .to_owned();
        let keys = reference_server::auth::Keys::load(dir).expect("signing key");
        let token = keys.issue(
            reference_server::domain::OPERATOR,
            reference_server::auth::now_s() + 3600,
        );
        let admin = Client::new(base.clone()).as_token(token);
        TestServer {
            child,
            base,
            dir: dir.to_owned(),
            _tmp: tmp,
            env,
            admin,
        }
    }

    async fn wait_ready(&self) {
        for _ in 0..100 {
            if let Ok(r) = reqwest::get(format!("{}/healthz", self.base)).await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server at {} never became healthy", self.base);
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// Stops the process (SIGSTOP) until [`TestServer::resume`]: alive,
    /// but silent, as on a host starved of CPU.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("wait")
    }

    /// Starts a new process on the same data directory (after kill9 or terminate).
    pub async fn restart(mut self) -> TestServer {
        let tmp = self._tmp.take();
        let env = std::mem::take(&mut self.env);
        let dir = self.dir.clone();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let s = TestServer::spawn(&dir, env, tmp);
        s.wait_ready().await;
        s
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> Value {
        self.admin
            .post(path, &body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub async fn admin_put(&self, path: &str, body: Value) -> Value {
        self.admin
            .call::<Value>(reqwest::Method::PUT, path, Some(&body))
            .await
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"))
            .body
    }

    /// Creates users and returns a client acting as each.
    pub async fn users(&self, names: &[&str]) -> Vec<Client> {
        for n in names {
            self.admin_post("/v1/admin/users", json!({ "name": n }))
                .await;
        }
        let resp: wire::BulkTokenResponse = self
            .admin
            .post("/v1/admin/tokens", &json!({ "users": names }))
            .await
            .expect("tokens");
        names
            .iter()
            .map(|n| self.admin.as_token(resp.tokens[*n].clone()))
            .collect()
    }

    /// Users, a category `general` and an open room `lobby` in it: the
    /// setting most tests start from.
    pub async fn lobby(&self, names: &[&str]) -> (Vec<Client>, u64) {
        let users = self.users(names).await;
        let cat = self.category("general", json!({})).await;
        let room = self.room("lobby", cat, json!({ "privacy": "open" })).await;
        (users, room)
    }

    /// Creates a category (everyone allowed; `creators` may create rooms).
    pub async fn category(&self, name: &str, extra: Value) -> u64 {
        let mut body = json!({ "name": name });
        merge(&mut body, extra);
        self.admin_post("/v1/admin/categories", body).await["id"]
            .as_u64()
            .expect("category id")
    }

    /// Creates a room as the operator.
    pub async fn room(&self, name: &str, category: u64, extra: Value) -> u64 {
        let mut body = json!({ "name": name, "category": category });
        merge(&mut body, extra);
        self.admin_post("/v1/rooms", body).await["id"]
            .as_u64()
            .expect("room id")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
}

/// The value of one metric line of the server's `/metrics` (0 when absent):
/// `name` is the metric's name with its labels, as the line starts.
pub async fn metric(server: &TestServer, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

/// Reads events until one matches, or fails after `secs`.
pub async fn next_event(stream: &mut EventStream, secs: u64) -> StreamItem {
    tokio::time::timeout(Duration::from_secs(secs), stream.next())
        .await
        .expect("no event within the time limit")
        .expect("stream error")
}

/// Reads events until `want` messages of `room` have arrived; fails on a close.
pub async fn messages(
    stream: &mut EventStream,
    room: u64,
    want: usize,
    secs: u64,
) -> Vec<wire::Message> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while out.len() < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let item = tokio::time::timeout(left, stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {want} messages arrived", out.len()))
            .expect("stream error");
        match item {
            StreamItem::Event(Event::Message(m)) if m.room == room => out.push(m),
            StreamItem::Event(_) => {}
            StreamItem::Closed(code, reason) => panic!(
                "stream closed {code:?} {reason} after {} messages",
                out.len()
            ),
        }
    }
    out
}

pub fn post(text: &str) -> wire::PostMessage {
    wire::PostMessage {
        text: text.into(),
        kind: None,
        title: None,
        client_key: None,
    }
}
