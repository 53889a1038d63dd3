//! Server configuration: a TOML file, overridden by `PCHAT_*` environment
//! variables (nested keys joined by `__`, e.g. `PCHAT_STREAM__QUEUE_EVENTS`).
//!
//! This is the operator's configuration of one process. The service settings
//! an administrator changes at run time (messages on join, participant update
//! limit, ...) live in the store and are changed through the admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::store::sqlite::Synchronous;

/// The whole configuration. Every field has a default.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where the chat and compliance databases, the signing key and exports live.
    pub data_dir: PathBuf,
    pub limits: LimitsConfig,
    pub stream: StreamConfig,
    pub store: StoreConfig,
    pub compliance: ComplianceSettings,
    pub log: LogConfig,
    pub admission: AdmissionConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_provision_bytes: usize,
    pub max_text_chars: usize,
    pub post_rate_per_s: f64,
    pub post_burst: u32,
    pub request_rate_per_s: f64,
    pub request_burst: u32,
    pub max_endpoints_per_user: usize,
    /// Most streams connected at once on this node (its stream workers
    /// included); beyond it new streams get 503 busy. The default holds the
    /// vendor's survivors of a node loss (30,000 users, 45,000 endpoints)
    /// at about 9 KiB an idle stream; one process holds only as many as
    /// its open-file limit, so a node beyond that needs stream workers.
    pub max_connections: usize,
    /// Longest a connection may take to send a request head, counted from
    /// when the server is ready for one (so also the longest a connection
    /// may sit idle between requests); then it is closed. 0: no bound.
    /// Above the 90 s for which common HTTP clients (reqwest, so goose and
    /// the conformance suite) keep an idle connection, so they drop theirs
    /// first instead of racing a request against its close.
    pub request_head_timeout_s: u64,
    /// Lifetime of tokens issued by login, in seconds.
    pub token_ttl_s: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    pub queue_events: usize,
    pub heartbeat_interval_s: u64,
    pub heartbeat_timeout_s: u64,
    pub endpoint_linger_s: u64,
    /// WebSocket read buffer per connection, allocated eagerly.
    pub read_buffer_bytes: usize,
    /// Bytes buffered before a write is pushed to the socket (0: write at once).
    pub write_buffer_bytes: usize,
    pub max_client_frame_bytes: usize,
    /// Stream worker processes holding the client sockets of event streams
    /// (0: this process holds them). One process may hold only as many
    /// sockets as its open-file limit allows; workers let one node hold more
    /// (see ARCHITECTURE.md, "Stream workers").
    pub workers: usize,
    /// The program run as a stream worker (default: this executable), with
    /// the argument `stream-worker`.
    pub worker_program: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Embedded store: sync mode, reader connections, most commands per commit.
    pub synchronous: Synchronous,
    pub readers: usize,
    pub max_batch: usize,
    /// Pool store: the chat database (`postgres://user@host:port/db`). When
    /// set, this node keeps everything in PostgreSQL instead of SQLite.
    pub url: Option<String>,
    /// Pool store: the compliance database (required with `url`; a different database).
    pub compliance_url: Option<String>,
    /// Pool store: connections this node opens to the chat database.
    pub connections: usize,
    /// Pool store: this node's name (default: its listen address).
    pub node: Option<String>,
    /// Pool store: how long the participants announced by a node that fell
    /// silent stay listed, after it is found silent, before they leave
    /// their rooms. Its clients move to the surviving nodes and rejoin
    /// within this time, so a move is not a leave and a join in every room
    /// (a reconnect storm would otherwise send both events to every member
    /// of every small room the moved users were in).
    pub node_grace_ms: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComplianceSettings {
    /// Where the adapter writes its files; default `<data_dir>/compliance-export`.
    pub export_dir: Option<PathBuf>,
    /// Which adapters run: "xml", "jsonl".
    pub formats: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "text" or "json".
    pub format: String,
    /// A tracing filter, e.g. "info" or "reference_server=debug".
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("pchat-data"),
            limits: LimitsConfig::default(),
            stream: StreamConfig::default(),
            store: StoreConfig::default(),
            compliance: ComplianceSettings::default(),
            log: LogConfig::default(),
            admission: AdmissionConfig::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 64 * 1024,
            max_provision_bytes: 256 * 1024 * 1024,
            max_text_chars: 8000,
            post_rate_per_s: 10.0,
            post_burst: 20,
            request_rate_per_s: 100.0,
            request_burst: 200,
            max_endpoints_per_user: 16,
            max_connections: 50_000,
            request_head_timeout_s: 120,
            token_ttl_s: 12 * 3600,
        }
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            queue_events: 1024,
            heartbeat_interval_s: 20,
            heartbeat_timeout_s: 60,
            endpoint_linger_s: 120,
            read_buffer_bytes: 1024,
            write_buffer_bytes: 0,
            max_client_frame_bytes: 4096,
            workers: 0,
            worker_program: None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            synchronous: Synchronous::Full,
            readers: 4,
            max_batch: 512,
            url: None,
            compliance_url: None,
            connections: 16,
            node: None,
            node_grace_ms: 60_000,
        }
    }
}

impl Default for ComplianceSettings {
    fn default() -> Self {
        ComplianceSettings {
            export_dir: None,
            formats: vec!["xml".into(), "jsonl".into()],
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

/// The top-level keys of [`Config`].
const TOP_LEVEL_KEYS: [&str; 8] = [
    "listen",
    "data_dir",
    "limits",
    "stream",
    "store",
    "compliance",
    "log",
    "admission",
];

impl Config {
    /// Defaults, then the file (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        // Only variables naming a configuration key: the CLI's own PCHAT_URL,
        // PCHAT_TOKEN and the like may sit in the same environment.
        let env = Env::prefixed("PCHAT_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase().replace("__", ".");
            TOP_LEVEL_KEYS.contains(&key.split('.').next().unwrap_or(""))
        });
        fig = fig.merge(env);
        let cfg: Config = fig.extract().map_err(Box::new)?;
        Ok(cfg)
    }

    pub fn export_dir(&self) -> PathBuf {
        self.compliance
            .export_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("compliance-export"))
    }
}

/// Admission control (docs/protocol.md PC-2.4b; `crate::admission`): the
/// work a reconnect storm multiplies runs a bounded number at a time, a
/// short queue waits for a turn, and the rest is refused with 503 `busy`
/// before it changes anything.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Joins that read history from the store: with `since` behind the
    /// room, or loading the last messages on join.
    pub join: GateConfig,
    /// Stream starts whose `resume` lies behind a joined room, so that the
    /// connection replays missed messages from the store.
    pub stream: GateConfig,
    /// The `Retry-After` of a refusal is drawn uniformly from this range
    /// (milliseconds), so refused clients do not come back together.
    pub retry_after_min_ms: u64,
    pub retry_after_max_ms: u64,
}

/// One admission gate.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// At most this many at once; 0 lifts the bound (and the gate).
    pub concurrency: usize,
    /// At most this many wait for a turn; one more is refused at once.
    pub queue: usize,
    /// The longest wait for a turn before the request is refused.
    pub max_wait_ms: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            // As many as the store has connections (16 on PostgreSQL; 4
            // SQLite readers): enough to keep the store busy, few enough
            // that a storm's reads leave room for posts and history pages.
            // The queue absorbs a ramp's bursts (the load generator keeps
            // 256 joins in flight) without refusing them.
            join: GateConfig {
                concurrency: 16,
                queue: 512,
                max_wait_ms: 2_000,
            },
            stream: GateConfig {
                concurrency: 16,
                queue: 512,
                max_wait_ms: 2_000,
            },
            retry_after_min_ms: 1_000,
            retry_after_max_ms: 5_000,
        }
    }
}

impl Default for GateConfig {
    fn default() -> Self {
        AdmissionConfig::default().join
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // figment's Jail closure returns its own (large) error type.
    #[allow(clippy::result_large_err)]
    #[test]
    fn file_and_environment_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pchat.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[stream]\nqueue_events = 64\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("PCHAT_STREAM__HEARTBEAT_INTERVAL_S", "5");
            jail.set_env("PCHAT_URL", "http://127.0.0.1:1");
            let cfg = Config::load(Some(&file)).map_err(|e| e.to_string())?;
            assert_eq!(cfg.listen.port(), 9000);
            assert_eq!(cfg.stream.queue_events, 64);
            assert_eq!(cfg.stream.heartbeat_interval_s, 5);
            assert_eq!(cfg.stream.heartbeat_timeout_s, 60);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pchat.toml");
        std::fs::write(&file, "[stream]\nqueue_evnts = 64\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("queue_evnts"), "{err}");
    }
}
