//! History checks in the manner of Jepsen: seeded concurrent clients post,
//! read, reconnect and resume across several rooms ([`workload`]); every
//! operation is recorded as invoked and then ok, failed or unknown; the
//! offline [`checker`] then proves the per-room properties of PC-10.3a and
//! §15 and names the entries that witness any anomaly.
//!
//! A history is saved as JSON, so a run can be re-checked with
//! `conformance check-history FILE`.

pub mod checker;
pub mod workload;

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use checker::{check, Anomaly, AnomalyKind};

/// The history file format's version.
pub const HISTORY_FORMAT_VERSION: u32 = 1;

/// A history and what the checker found in it.
#[derive(Clone, Debug)]
pub struct Checked {
    pub history: History,
    pub anomalies: Vec<Anomaly>,
    /// Where the history was saved, if anywhere.
    pub saved: Option<std::path::PathBuf>,
}

/// Size of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub clients: usize,
    pub rooms: usize,
    /// Operations per client.
    pub ops: usize,
}

/// A recorded run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub format: String,
    pub version: u32,
    pub seed: u64,
    pub rooms: Vec<u64>,
    pub entries: Vec<Entry>,
}

impl History {
    pub fn new(seed: u64, rooms: Vec<u64>, entries: Vec<Entry>) -> History {
        History {
            format: "pchat-history".into(),
            version: HISTORY_FORMAT_VERSION,
            seed,
            rooms,
            entries,
        }
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn load(path: &Path) -> anyhow::Result<History> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let h: History = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a history file", path.display()))?;
        anyhow::ensure!(
            h.format == "pchat-history" && h.version == HISTORY_FORMAT_VERSION,
            "{} is format {:?} version {}, this suite reads pchat-history version {}",
            path.display(),
            h.format,
            h.version,
            HISTORY_FORMAT_VERSION
        );
        Ok(h)
    }
}

/// Phase of an operation, as in Jepsen: `invoke`, then `ok`, `fail`
/// (definitely did not happen) or `info` (unknown: timed out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// What the operation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Post `text`; ok carries the acknowledged `seq`.
    Post,
    /// Read the whole room; ok carries `messages`.
    Read,
    /// The endpoint joined the room; `seq` is the join's `last_seq`.
    Join,
    /// A new stream connection resumed the room after `seq`.
    Resume,
    /// The stream delivered message `seq` with `text` (ok only).
    Deliver,
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub process: u32,
    #[serde(rename = "type")]
    pub phase: Phase,
    pub f: Op,
    pub room: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<(u64, String)>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Entry {
    pub fn new(process: u32, phase: Phase, f: Op, room: u64) -> Entry {
        Entry {
            process,
            phase,
            f,
            room,
            text: None,
            seq: None,
            messages: None,
            error: None,
        }
    }
    pub fn text(mut self, t: &str) -> Entry {
        self.text = Some(t.to_owned());
        self
    }
    pub fn seq(mut self, s: u64) -> Entry {
        self.seq = Some(s);
        self
    }
    pub fn messages(mut self, m: Vec<(u64, String)>) -> Entry {
        self.messages = Some(m);
        self
    }
    pub fn error(mut self, e: &str) -> Entry {
        self.error = Some(e.to_owned());
        self
    }
}

/// Appends entries in real-time order from many tasks.
#[derive(Default)]
pub struct Recorder {
    entries: Mutex<Vec<Entry>>,
}

impl Recorder {
    pub fn record(&self, e: Entry) {
        self.entries.lock().expect("recorder lock").push(e);
    }

    /// Runs `f` under the recorder's lock, so what it records and what it
    /// changes happen at one instant.
    pub fn with<R>(&self, f: impl FnOnce(&mut Vec<Entry>) -> R) -> R {
        f(&mut self.entries.lock().expect("recorder lock"))
    }

    pub fn snapshot(&self) -> Vec<Entry> {
        self.entries.lock().expect("recorder lock").clone()
    }
}
