//! Scenario files: which user model, which server, what load, which
//! objective and which claim a run is about, in TOML.
//!
//! A file is parsed in two stages. The text is deserialised into private
//! `Raw*` types whose leaves carry their position (`toml::Spanned`); those
//! are validated and turned into the public [`Scenario`], which is plain
//! data the rest of the code trusts without checking again. Every refusal is
//! a [`ScenarioError`] that names the file, line, column and field:
//!
//! ```text
//! quick.toml:9:1: load.users: must be at least 1
//! ```
//!
//! ```toml
//! name = "quick"
//! description = "A few thousand users for about a minute."
//! seed = 1
//!
//! [claim]                  # optional
//! text = "20,000 active users per front end"
//! users = 20000
//!
//! # [claim.host]           # optional: the hardware the claim is about
//! # text = "the vendor's recommended server"
//! # cores = 12             # fewest logical CPUs
//! # memory_gib = 32
//! # cpu_ghz = 2.26
//! # virtual = true         # about a virtual machine (false: physical)
//!
//! [model]                  # optional; these are the defaults
//! source = "vendor"        # or a path to a model file of the same shape
//! chat_rate = "published"  # or "per_room_per_day", "per_user_per_day"
//!
//! [topology]
//! kind = "standard"        # one node on the embedded store; "external"; or
//!                          # "enterprise": a pool on PostgreSQL, with
//! # nodes = 4              #   1 to 4 active nodes
//! # compliance = true      #   compliance recording on (any kind)
//! # stream_workers = 2     #   worker processes holding each node's stream
//!                          #   sockets (0: the node holds them); one process
//!                          #   holds only as many as its open-file limit
//! # max_connections = 60000 #  streams each node admits at once (the
//!                          #   server's limits.max_connections; unset: its
//!                          #   default, 50,000); beyond it, 503 busy
//!
//! # [fault]                # optional, enterprise only: at steady state ...
//! # kind = "kill-node"     # ... kill -9 one node (its clients move), or
//! # at_s = 60              #     "failover": lose the site, promote the backup
//! # node = 1               # which node (kill-node)
//!
//! [load]                   # a fixed load ...
//! users = 2000
//! ramp_s = 15
//! steady_s = 40
//!
//! # [load.steps]           # ... or a stepped one, instead of users/ramp_s/steady_s
//! # start = 10000
//! # step = 10000
//! # max = 60000
//! # step_ramp_s = 60
//! # step_steady_s = 60
//! # refine_to = 1000       # then bisect between the last step that held and
//!                          # the first that broke, to within 1,000 users
//!
//! [slo]                    # optional; these are the defaults
//! p99_delivery_ms = 250
//! p99_post_ack_ms = 200
//! p99_history_ms = 500
//! max_error_pct = 0.1
//! ```
//!
//! The crate's README describes every field.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::model::{ModelError, UserModel};
use crate::plan::{ChatRateModel, Plan, PlanOptions};
use crate::toml_span::{self, Located};
use crate::{Claim, HostSpec, Slo};

/// The built-in scenario library: (name, file text).
pub const LIBRARY: [(&str, &str); 9] = [
    ("quick", include_str!("../library/quick.toml")),
    ("node-20k", include_str!("../library/node-20k.toml")),
    ("vm-20k", include_str!("../library/vm-20k.toml")),
    ("pool-quick", include_str!("../library/pool-quick.toml")),
    ("pool-80k", include_str!("../library/pool-80k.toml")),
    ("node-loss", include_str!("../library/node-loss.toml")),
    ("failover", include_str!("../library/failover.toml")),
    ("knee", include_str!("../library/knee.toml")),
    ("soak", include_str!("../library/soak.toml")),
];

/// The built-in scenario library: (name, file text), in the order above.
pub fn library() -> Vec<(&'static str, &'static str)> {
    LIBRARY.to_vec()
}

/// Seed of a scenario that names none.
pub const DEFAULT_SEED: u64 = 1;
/// Seconds allowed after a step's last operation for deliveries to arrive.
pub const DEFAULT_GRACE_S: f64 = 5.0;
/// Goose users running the request/response operations.
pub const DEFAULT_WORKERS: usize = 64;
/// Largest user count a file may ask for: far beyond the vendor's 80,000
/// (a typing slip, not a plan), and within what a plan can number.
pub const MAX_USERS: u64 = 10_000_000;
/// Most steps a stepped load may have.
pub const MAX_STEPS: u64 = 1_000;
/// Most logical CPUs a claim's host may name.
pub const MAX_CORES: u32 = 4_096;

/// A validated scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Names the report directory: letters, digits, `-`, `_` and `.`.
    pub name: String,
    pub description: String,
    /// Seed of the schedule and of the room assignment.
    pub seed: u64,
    pub claim: Option<Claim>,
    pub model: ModelChoice,
    pub topology: Topology,
    pub fault: Option<Fault>,
    pub load: Load,
    pub slo: Slo,
}

/// Which user model, and how to read it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelChoice {
    /// `vendor` (the embedded model), or a path to a model file; a relative
    /// path is relative to the scenario file's directory.
    pub source: String,
    pub chat_rate: ChatRateModel,
    /// Overrides `configuration_defaults.messages_loaded_on_join`.
    pub messages_loaded_on_join: Option<u32>,
}

impl Default for ModelChoice {
    fn default() -> Self {
        ModelChoice {
            source: "vendor".into(),
            chat_rate: ChatRateModel::Published,
            messages_loaded_on_join: None,
        }
    }
}

/// What is measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Topology {
    pub kind: TopologyKind,
    /// Active nodes (1 for standard; 1 to 4 for enterprise).
    pub nodes: usize,
    /// Compliance recording on during the run.
    pub compliance: bool,
    /// Stream worker processes per node (reference-server
    /// `stream.workers`; 0: the node process holds its sockets).
    pub stream_workers: usize,
    /// Streams each node admits at once (reference-server
    /// `limits.max_connections`); `None`: the server's default.
    pub max_connections: Option<usize>,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            kind: TopologyKind::Standard,
            nodes: 1,
            compliance: false,
            stream_workers: 0,
            max_connections: None,
        }
    }
}

/// The kinds of topology a scenario may name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TopologyKind {
    /// One reference-server node on its embedded store, started by the run.
    #[default]
    Standard,
    /// A server the person running the scenario names at run time (a URL).
    External,
    /// A pool of reference-server nodes sharing a PostgreSQL store, started
    /// by the run (`reference-server pool local`).
    Enterprise,
}

/// A fault injected once the steady state has run `at_s` seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    pub at_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `kill -9` of one node of the pool; it is not started again, and its
    /// endpoints move to the surviving nodes.
    KillNode { node: usize },
    /// The pool's site is lost (nodes and database); the backup pool's
    /// standby is promoted and its nodes take over.
    Failover,
}

/// The load: one fixed level or a stepped ramp. Exactly one of `users` and
/// `steps` is set; [`Scenario::user_steps`] lists the levels either way.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    /// Active users of a fixed load.
    pub users: Option<u64>,
    /// A stepped ramp (the knee search).
    pub steps: Option<Steps>,
    /// Seconds over which a step's users arrive (`ramp_s`, or
    /// `steps.step_ramp_s` in a stepped load).
    pub ramp_s: f64,
    /// Seconds of measured steady state per step (`steady_s`, or
    /// `steps.step_steady_s`).
    pub steady_s: f64,
    /// Seconds after a step's last operation for deliveries to arrive.
    pub grace_s: f64,
    /// Overrides the model's endpoints per user.
    pub endpoints_per_user: Option<f64>,
    /// Goose users running the request/response operations.
    pub workers: usize,
}

/// A stepped ramp: start, start + step, ... up to max.
#[derive(Clone, Debug, PartialEq)]
pub struct Steps {
    pub start: u64,
    pub step: u64,
    pub max: u64,
    /// Stop after the first step that breaks the objective (default true):
    /// the knee is found, and heavier steps would only overload the host.
    pub stop_when_broken: bool,
    /// After the ramp, bisect between the heaviest step that held below
    /// the lightest that broke until the two lie at most this many users
    /// apart (`None`: no refinement; the knee's resolution is `step`).
    pub refine_to: Option<u64>,
}

/// A scenario file that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioError {
    /// The file's name as given to [`Scenario::parse`].
    pub origin: String,
    /// 1-based line and column.
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field at fault (`load.users`); `None` for a
    /// syntax error.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.origin, self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl Scenario {
    /// Parses and validates a scenario file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let locate = |l: Located| ScenarioError {
            origin: origin.to_owned(),
            line: l.line,
            column: l.column,
            field: l.field,
            message: l.message,
        };
        let raw: RawScenario = toml_span::from_str(text).map_err(locate)?;
        raw.validate(text).map_err(locate)
    }

    /// A scenario of the built-in library by name.
    pub fn builtin(name: &str) -> Option<Scenario> {
        LIBRARY.iter().find(|(n, _)| *n == name).map(|(n, text)| {
            // Every library file is parsed by the tests below.
            Scenario::parse(text, &format!("{n}.toml")).expect("built-in scenario is valid")
        })
    }

    /// The user counts of the steps, in order.
    pub fn user_steps(&self) -> Vec<u64> {
        match (&self.load.steps, self.load.users) {
            (Some(s), _) => (0..)
                .map(|i| s.start + i * s.step)
                .take_while(|u| *u <= s.max)
                .collect(),
            (None, Some(u)) => vec![u],
            (None, None) => Vec::new(),
        }
    }

    /// True when the run should stop after the first step that breaks the
    /// objective.
    pub fn stop_when_broken(&self) -> bool {
        self.load.steps.as_ref().is_some_and(|s| s.stop_when_broken)
    }

    /// Multiplies every user count by `factor` (at least 1 user each), for
    /// a smaller rehearsal of a scenario. The claim keeps its users, so a
    /// scaled run cannot verify it and its verdict says so.
    pub fn scaled(mut self, factor: f64) -> Scenario {
        let f = |u: u64| ((u as f64 * factor).round() as u64).max(1);
        self.load.users = self.load.users.map(f);
        if let Some(s) = &mut self.load.steps {
            s.start = f(s.start);
            s.step = f(s.step);
            s.max = f(s.max);
            s.refine_to = s.refine_to.map(f);
        }
        self
    }

    /// The options [`Plan::for_users`] takes for this scenario.
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            chat_rate: self.model.chat_rate,
            endpoints_per_user: self.load.endpoints_per_user,
        }
    }

    /// The scenario's user model with its overrides applied. A model path
    /// is relative to `scenario_dir` (the scenario file's directory) when
    /// given, else to the working directory.
    pub fn user_model(&self, scenario_dir: Option<&Path>) -> Result<UserModel, ModelError> {
        let mut model = match self.model.source.as_str() {
            "vendor" => UserModel::vendor(),
            path => {
                let path = match scenario_dir {
                    Some(dir) => dir.join(path),
                    None => path.into(),
                };
                UserModel::from_file(&path)?
            }
        };
        if let Some(n) = self.model.messages_loaded_on_join {
            model.configuration_defaults.messages_loaded_on_join = n;
        }
        Ok(model)
    }

    /// The plan of one step of this scenario.
    pub fn plan(&self, model: &UserModel, users: u64) -> Plan {
        Plan::for_users(model, users, &self.plan_options())
    }
}

// ------------------------------------------------------------ the raw file

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    claim: Option<RawClaim>,
    #[serde(default)]
    model: RawModel,
    #[serde(default)]
    topology: RawTopology,
    #[serde(default)]
    fault: Option<RawFault>,
    load: RawLoad,
    #[serde(default)]
    slo: RawSlo,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaim {
    text: Spanned<String>,
    users: Spanned<u64>,
    host: Option<RawHost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    text: Spanned<String>,
    cores: Option<Spanned<u64>>,
    memory_gib: Option<Spanned<f64>>,
    cpu_ghz: Option<Spanned<f64>>,
    #[serde(rename = "virtual")]
    virtual_machine: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    source: Option<Spanned<String>>,
    chat_rate: Option<ChatRateModel>,
    messages_loaded_on_join: Option<Spanned<u32>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    kind: Option<Spanned<String>>,
    nodes: Option<Spanned<u64>>,
    compliance: Option<bool>,
    stream_workers: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: Spanned<String>,
    at_s: Spanned<f64>,
    node: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoad {
    users: Option<Spanned<u64>>,
    ramp_s: Option<Spanned<f64>>,
    steady_s: Option<Spanned<f64>>,
    grace_s: Option<Spanned<f64>>,
    endpoints_per_user: Option<Spanned<f64>>,
    workers: Option<Spanned<u64>>,
    steps: Option<RawSteps>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSteps {
    start: Spanned<u64>,
    step: Spanned<u64>,
    max: Spanned<u64>,
    step_ramp_s: Spanned<f64>,
    step_steady_s: Spanned<f64>,
    #[serde(default)]
    stop_when_broken: Option<bool>,
    #[serde(default)]
    refine_to: Option<Spanned<u64>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlo {
    p99_delivery_ms: Option<Spanned<f64>>,
    p99_post_ack_ms: Option<Spanned<f64>>,
    p99_history_ms: Option<Spanned<f64>>,
    max_error_pct: Option<Spanned<f64>>,
}

/// Validation of one file: each check names the field and finds its text.
struct Checker<'a> {
    text: &'a str,
}

impl Checker<'_> {
    fn bad<T>(&self, field: &str, value: &Spanned<T>, message: impl Into<String>) -> Located {
        toml_span::at_value(self.text, value.span().start, field, message.into())
    }

    /// An error about a field that is missing, at its table.
    fn missing(&self, table: &str, field: &str, message: impl Into<String>) -> Located {
        let (line, column) = toml_span::table_start(self.text, table);
        Located {
            line,
            column,
            field: Some(format!("{table}.{field}")),
            message: message.into(),
        }
    }

    fn seconds(&self, field: &str, v: &Spanned<f64>, zero_ok: bool) -> Result<f64, Located> {
        let s = *v.get_ref();
        let ok = s.is_finite() && if zero_ok { s >= 0.0 } else { s > 0.0 };
        match (ok, zero_ok) {
            (true, _) => Ok(s),
            (false, true) => Err(self.bad(field, v, "must be zero or more seconds")),
            (false, false) => Err(self.bad(field, v, "must be more than zero seconds")),
        }
    }

    fn users(&self, field: &str, v: &Spanned<u64>) -> Result<u64, Located> {
        match *v.get_ref() {
            0 => Err(self.bad(field, v, "must be at least 1")),
            u if u > MAX_USERS => Err(self.bad(
                field,
                v,
                format!("must be at most {MAX_USERS} (the vendor's pool tops out at 80,000)"),
            )),
            u => Ok(u),
        }
    }

    fn millis(&self, field: &str, v: &Option<Spanned<f64>>, default: f64) -> Result<f64, Located> {
        Ok(self.positive(field, v, "milliseconds")?.unwrap_or(default))
    }

    /// A number more than zero, in `unit`, if given.
    fn positive(
        &self,
        field: &str,
        v: &Option<Spanned<f64>>,
        unit: &str,
    ) -> Result<Option<f64>, Located> {
        match v {
            None => Ok(None),
            Some(v) if v.get_ref().is_finite() && *v.get_ref() > 0.0 => Ok(Some(*v.get_ref())),
            Some(v) => Err(self.bad(field, v, format!("must be more than zero {unit}"))),
        }
    }
}

impl RawHost {
    fn validate(self, c: &Checker<'_>) -> Result<HostSpec, Located> {
        if self.text.get_ref().trim().is_empty() {
            return Err(c.bad(
                "claim.host.text",
                &self.text,
                "must say what the specification is",
            ));
        }
        let cores = match self.cores {
            None => None,
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(k @ 1..=MAX_CORES) => Some(k),
                _ => {
                    return Err(c.bad(
                        "claim.host.cores",
                        &n,
                        format!("must be 1 to {MAX_CORES} logical CPUs"),
                    ))
                }
            },
        };
        Ok(HostSpec {
            text: self.text.into_inner(),
            cores,
            memory_gib: c.positive("claim.host.memory_gib", &self.memory_gib, "GiB")?,
            cpu_ghz: c.positive("claim.host.cpu_ghz", &self.cpu_ghz, "GHz")?,
            virtual_machine: self.virtual_machine,
        })
    }
}

impl RawScenario {
    fn validate(self, text: &str) -> Result<Scenario, Located> {
        let c = Checker { text };

        let name = self.name.get_ref();
        let name_ok = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'));
        if !name_ok {
            return Err(c.bad(
                "name",
                &self.name,
                "must be letters, digits, '-', '_' or '.', not starting with '.' (it names the report directory)",
            ));
        }

        let load = self.load.validate(&c)?;
        let most_users = match (&load.steps, load.users) {
            (Some(s), _) => s.start + (s.max - s.start) / s.step * s.step,
            (None, u) => u.unwrap_or(0),
        };

        let claim = match self.claim {
            None => None,
            Some(claim) => {
                if claim.text.get_ref().trim().is_empty() {
                    return Err(c.bad("claim.text", &claim.text, "must not be empty"));
                }
                let users = c.users("claim.users", &claim.users)?;
                if users > most_users {
                    return Err(c.bad(
                        "claim.users",
                        &claim.users,
                        format!("{users} is more than the load reaches ({most_users}): no step could verify the claim"),
                    ));
                }
                let host = match claim.host {
                    None => None,
                    Some(h) => Some(h.validate(&c)?),
                };
                Some(Claim {
                    text: claim.text.into_inner(),
                    users,
                    host,
                })
            }
        };

        let mut model = ModelChoice::default();
        if let Some(source) = self.model.source {
            if source.get_ref().trim().is_empty() {
                return Err(c.bad(
                    "model.source",
                    &source,
                    "must be \"vendor\" or the path of a model file",
                ));
            }
            model.source = source.into_inner();
        }
        model.chat_rate = self.model.chat_rate.unwrap_or_default();
        if let Some(n) = self.model.messages_loaded_on_join {
            if !(1..=500).contains(n.get_ref()) {
                return Err(c.bad(
                    "model.messages_loaded_on_join",
                    &n,
                    "must be 1 to 500 (the vendor's allowed range)",
                ));
            }
            model.messages_loaded_on_join = Some(n.into_inner());
        }

        let kind = match &self.topology.kind {
            None => TopologyKind::Standard,
            Some(kind) => match kind.get_ref().as_str() {
                "standard" => TopologyKind::Standard,
                "external" => TopologyKind::External,
                "enterprise" => TopologyKind::Enterprise,
                other => {
                    return Err(c.bad(
                        "topology.kind",
                        kind,
                        format!("unknown kind {other:?}, expected \"standard\", \"enterprise\" or \"external\""),
                    ))
                }
            },
        };
        let nodes = match (&self.topology.nodes, kind) {
            (None, _) => 1,
            (Some(n), TopologyKind::Enterprise) => {
                if !(1..=4).contains(n.get_ref()) {
                    return Err(c.bad(
                        "topology.nodes",
                        n,
                        "an enterprise pool has 1 to 4 active nodes",
                    ));
                }
                *n.get_ref() as usize
            }
            (Some(n), _) => {
                return Err(c.bad(
                    "topology.nodes",
                    n,
                    "only an \"enterprise\" topology has several nodes",
                ))
            }
        };
        let stream_workers = match &self.topology.stream_workers {
            None => 0,
            Some(w) if kind == TopologyKind::External => {
                return Err(c.bad(
                    "topology.stream_workers",
                    w,
                    "an \"external\" server is configured by its operator, not by the scenario",
                ))
            }
            Some(w) if *w.get_ref() > 16 => {
                return Err(c.bad("topology.stream_workers", w, "at most 16 per node"))
            }
            Some(w) => *w.get_ref() as usize,
        };
        let max_connections = match &self.topology.max_connections {
            None => None,
            Some(m) if kind == TopologyKind::External => {
                return Err(c.bad(
                    "topology.max_connections",
                    m,
                    "an \"external\" server is configured by its operator, not by the scenario",
                ))
            }
            Some(m) if *m.get_ref() == 0 => {
                return Err(c.bad(
                    "topology.max_connections",
                    m,
                    "a node admits at least one stream",
                ))
            }
            Some(m) => Some(*m.get_ref() as usize),
        };
        let topology = Topology {
            kind,
            nodes,
            compliance: self.topology.compliance.unwrap_or(false),
            stream_workers,
            max_connections,
        };
        let fault = match &self.fault {
            None => None,
            Some(f) => {
                if kind != TopologyKind::Enterprise {
                    return Err(c.bad(
                        "fault.kind",
                        &f.kind,
                        "faults are injected into an \"enterprise\" topology only",
                    ));
                }
                if f.at_s.get_ref().is_nan() || *f.at_s.get_ref() < 0.0 {
                    return Err(c.bad("fault.at_s", &f.at_s, "must be 0 or more"));
                }
                let kind = match f.kind.get_ref().as_str() {
                    "kill-node" => {
                        let node = match &f.node {
                            Some(n) if (*n.get_ref() as usize) < nodes => *n.get_ref() as usize,
                            Some(n) => {
                                return Err(c.bad(
                                    "fault.node",
                                    n,
                                    format!("the pool has nodes 0 to {}", nodes - 1),
                                ))
                            }
                            None => {
                                return Err(c.bad("fault.kind", &f.kind, "kill-node needs `node`"))
                            }
                        };
                        if nodes < 2 {
                            return Err(c.bad(
                                "fault.kind",
                                &f.kind,
                                "killing the only node leaves nobody to move to",
                            ));
                        }
                        FaultKind::KillNode { node }
                    }
                    "failover" => FaultKind::Failover,
                    other => {
                        return Err(c.bad(
                            "fault.kind",
                            &f.kind,
                            format!(
                                "unknown fault {other:?}, expected \"kill-node\" or \"failover\""
                            ),
                        ))
                    }
                };
                Some(Fault {
                    kind,
                    at_s: *f.at_s.get_ref(),
                })
            }
        };

        let slo_defaults = Slo::default();
        let slo = Slo {
            p99_delivery_ms: c.millis(
                "slo.p99_delivery_ms",
                &self.slo.p99_delivery_ms,
                slo_defaults.p99_delivery_ms,
            )?,
            p99_post_ack_ms: c.millis(
                "slo.p99_post_ack_ms",
                &self.slo.p99_post_ack_ms,
                slo_defaults.p99_post_ack_ms,
            )?,
            p99_history_ms: c.millis(
                "slo.p99_history_ms",
                &self.slo.p99_history_ms,
                slo_defaults.p99_history_ms,
            )?,
            max_error_pct: match &self.slo.max_error_pct {
                None => slo_defaults.max_error_pct,
                Some(v) if (0.0..=100.0).contains(v.get_ref()) => *v.get_ref(),
                Some(v) => return Err(c.bad("slo.max_error_pct", v, "must be 0 to 100 (percent)")),
            },
        };

        Ok(Scenario {
            name: self.name.into_inner(),
            description: self.description,
            seed: self.seed.unwrap_or(DEFAULT_SEED),
            claim,
            model,
            topology,
            fault,
            load,
            slo,
        })
    }
}

impl RawLoad {
    fn validate(self, c: &Checker<'_>) -> Result<Load, Located> {
        let grace_s = match &self.grace_s {
            None => DEFAULT_GRACE_S,
            Some(v) => c.seconds("load.grace_s", v, true)?,
        };
        let endpoints_per_user = match &self.endpoints_per_user {
            None => None,
            Some(v) if (1.0..=16.0).contains(v.get_ref()) => Some(*v.get_ref()),
            Some(v) => {
                return Err(c.bad(
                    "load.endpoints_per_user",
                    v,
                    "must be 1 to 16 (every user has at least one endpoint)",
                ))
            }
        };
        let workers = match &self.workers {
            None => DEFAULT_WORKERS,
            Some(v) if (1..=100_000).contains(v.get_ref()) => *v.get_ref() as usize,
            Some(v) => return Err(c.bad("load.workers", v, "must be 1 to 100000")),
        };
        let (users, steps, ramp_s, steady_s) = match (self.users, self.steps) {
            (Some(users), Some(_)) => {
                return Err(c.bad(
                    "load.users",
                    &users,
                    "give users for a fixed load or a [load.steps] table for a stepped one, not both",
                ))
            }
            (None, None) => {
                return Err(c.missing(
                    "load",
                    "users",
                    "missing: give users (with ramp_s and steady_s) for a fixed load, or a [load.steps] table",
                ))
            }
            (Some(users), None) => {
                let users = c.users("load.users", &users)?;
                let Some(ramp) = &self.ramp_s else {
                    return Err(c.missing("load", "ramp_s", "missing field `ramp_s`"));
                };
                let Some(steady) = &self.steady_s else {
                    return Err(c.missing("load", "steady_s", "missing field `steady_s`"));
                };
                (
                    Some(users),
                    None,
                    c.seconds("load.ramp_s", ramp, true)?,
                    c.seconds("load.steady_s", steady, false)?,
                )
            }
            (None, Some(s)) => {
                for (field, v) in [("load.ramp_s", &self.ramp_s), ("load.steady_s", &self.steady_s)]
                {
                    if let Some(v) = v {
                        return Err(c.bad(
                            field,
                            v,
                            "a stepped load takes step_ramp_s and step_steady_s in [load.steps] instead",
                        ));
                    }
                }
                let start = c.users("load.steps.start", &s.start)?;
                let step = match *s.step.get_ref() {
                    0 => return Err(c.bad("load.steps.step", &s.step, "must be at least 1")),
                    n => n,
                };
                let max = c.users("load.steps.max", &s.max)?;
                if max < start {
                    return Err(c.bad(
                        "load.steps.max",
                        &s.max,
                        format!("must be at least start ({start})"),
                    ));
                }
                if (max - start) / step + 1 > MAX_STEPS {
                    return Err(c.bad(
                        "load.steps.step",
                        &s.step,
                        format!("makes more than {MAX_STEPS} steps from {start} to {max}"),
                    ));
                }
                let refine_to = match &s.refine_to {
                    None => None,
                    Some(r) if *r.get_ref() == 0 => {
                        return Err(c.bad("load.steps.refine_to", r, "must be at least 1"))
                    }
                    Some(r) if *r.get_ref() >= step => {
                        return Err(c.bad(
                            "load.steps.refine_to",
                            r,
                            format!("must be below step ({step}): steps of {step} already resolve the knee that finely"),
                        ))
                    }
                    Some(r) => Some(*r.get_ref()),
                };
                (
                    None,
                    Some(Steps {
                        start,
                        step,
                        max,
                        stop_when_broken: s.stop_when_broken.unwrap_or(true),
                        refine_to,
                    }),
                    c.seconds("load.steps.step_ramp_s", &s.step_ramp_s, true)?,
                    c.seconds("load.steps.step_steady_s", &s.step_steady_s, false)?,
                )
            }
        };
        Ok(Load {
            users,
            steps,
            ramp_s,
            steady_s,
            grace_s,
            endpoints_per_user,
            workers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_library_scenario_parses() {
        for (name, text) in library() {
            let s =
                Scenario::parse(text, &format!("{name}.toml")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.name, name);
            assert!(!s.user_steps().is_empty());
            let pool = name.starts_with("pool-") || ["node-loss", "failover"].contains(&name);
            let want = if pool {
                TopologyKind::Enterprise
            } else {
                TopologyKind::Standard
            };
            assert_eq!(s.topology.kind, want, "{name}");
        }
        let p = Scenario::builtin("pool-80k").unwrap();
        assert_eq!((p.topology.nodes, p.topology.compliance), (4, true));
        assert_eq!(p.claim.as_ref().map(|c| c.users), Some(80_000));
        let loss = Scenario::builtin("node-loss").unwrap();
        assert_eq!(
            loss.fault.map(|f| f.kind),
            Some(FaultKind::KillNode { node: 1 })
        );
        let quick = Scenario::builtin("quick").unwrap();
        assert_eq!(quick.user_steps(), vec![2_000]);
        // About a minute: ramp, steady state and grace.
        let l = &quick.load;
        assert!(l.ramp_s + l.steady_s + l.grace_s <= 70.0);

        let node = Scenario::builtin("node-20k").unwrap();
        assert_eq!(node.claim.as_ref().map(|c| c.users), Some(20_000));
        let model = node.user_model(None).unwrap();
        assert_eq!(node.plan(&model, 20_000).endpoints, 30_000);
        // The vendor's figures are for its recommended server.
        let host = node.claim.as_ref().and_then(|c| c.host.clone()).unwrap();
        assert_eq!(
            (
                host.cores,
                host.memory_gib,
                host.cpu_ghz,
                host.virtual_machine
            ),
            (Some(12), Some(32.0), Some(2.26), None)
        );
        // The VM claim: the same load, on a virtual machine of that size.
        let vm = Scenario::builtin("vm-20k").unwrap();
        assert_eq!((&vm.load, &vm.topology), (&node.load, &node.topology));
        let vm_host = vm.claim.as_ref().and_then(|c| c.host.clone()).unwrap();
        assert_eq!(
            (vm_host.cores, vm_host.virtual_machine),
            (Some(12), Some(true))
        );

        let knee = Scenario::builtin("knee").unwrap();
        assert!(knee.stop_when_broken());
        assert_eq!(knee.load.steady_s, 180.0);
        assert_eq!(knee.user_steps().last(), Some(&60_000));

        assert_eq!(Scenario::builtin("soak").unwrap().load.steady_s, 3_600.0);
        assert!(Scenario::builtin("nope").is_none());
    }

    #[track_caller]
    fn error(text: &str) -> ScenarioError {
        Scenario::parse(text, "mine.toml").expect_err("must be refused")
    }

    const GOOD: &str = "name = \"mine\"\n\n[load]\nusers = 100\nramp_s = 5\nsteady_s = 10\n";

    #[test]
    fn a_good_file_gets_the_defaults() {
        let s = Scenario::parse(GOOD, "mine.toml").unwrap();
        assert_eq!(s.slo, Slo::default());
        assert_eq!(s.topology.kind, TopologyKind::Standard);
        assert_eq!(s.model, ModelChoice::default());
        assert_eq!(s.claim, None);
        assert_eq!(
            (
                s.seed,
                s.load.grace_s,
                s.load.workers,
                s.load.endpoints_per_user
            ),
            (DEFAULT_SEED, DEFAULT_GRACE_S, DEFAULT_WORKERS, None)
        );
        assert_eq!(s.user_steps(), vec![100]);
        assert!(!s.stop_when_broken());
    }

    #[test]
    fn every_field_is_read() {
        let text = r#"
name = "all"
description = "every field"
seed = 9

[claim]
text = "3,000 users"
users = 3000

[claim.host]
text = "a small VM"
cores = 4
memory_gib = 8
cpu_ghz = 2.5
virtual = true

[model]
source = "vendor"
chat_rate = "per_user_per_day"
messages_loaded_on_join = 50

[topology]
kind = "external"

[load]
grace_s = 2
endpoints_per_user = 2
workers = 8

[load.steps]
start = 1000
step = 1000
max = 3500
step_ramp_s = 10
step_steady_s = 20
stop_when_broken = false
refine_to = 250

[slo]
p99_delivery_ms = 100
p99_post_ack_ms = 90
p99_history_ms = 80
max_error_pct = 0
"#;
        let s = Scenario::parse(text, "all.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.user_steps(), vec![1_000, 2_000, 3_000]);
        assert!(!s.stop_when_broken());
        assert_eq!(s.load.steps.as_ref().unwrap().refine_to, Some(250));
        assert_eq!(
            s.clone().scaled(0.5).load.steps.unwrap().refine_to,
            Some(125)
        );
        assert_eq!(
            (s.load.ramp_s, s.load.steady_s, s.load.grace_s),
            (10.0, 20.0, 2.0)
        );
        assert_eq!((s.load.endpoints_per_user, s.load.workers), (Some(2.0), 8));
        assert_eq!(s.topology.kind, TopologyKind::External);
        assert_eq!(s.model.chat_rate, ChatRateModel::PerUserPerDay);
        assert_eq!(
            s.user_model(None)
                .unwrap()
                .configuration_defaults
                .messages_loaded_on_join,
            50
        );
        assert_eq!(s.plan_options().endpoints_per_user, Some(2.0));
        assert_eq!(
            s.slo,
            Slo {
                p99_delivery_ms: 100.0,
                p99_post_ack_ms: 90.0,
                p99_history_ms: 80.0,
                max_error_pct: 0.0
            }
        );
        assert_eq!(s.seed, 9);
        let claim = s.claim.unwrap();
        assert_eq!(claim.users, 3_000);
        assert_eq!(
            claim.host,
            Some(HostSpec {
                text: "a small VM".into(),
                cores: Some(4),
                memory_gib: Some(8.0),
                cpu_ghz: Some(2.5),
                virtual_machine: Some(true),
            })
        );
    }

    #[test]
    fn a_wrong_type_names_the_field_and_line() {
        let e = error(&GOOD.replace("users = 100", "users = \"many\""));
        assert_eq!((e.line, e.field.as_deref()), (4, Some("load.users")));
        insta::assert_snapshot!(e, @r#"mine.toml:4:1: load.users: invalid type: string "many", expected u64"#);

        let e = error(&format!("{GOOD}\n[slo]\np99_delivery_ms = \"fast\"\n"));
        insta::assert_snapshot!(e, @r#"mine.toml:9:1: slo.p99_delivery_ms: invalid type: string "fast", expected f64"#);
    }

    #[test]
    fn an_unknown_field_names_the_field_and_line() {
        let e = error(&format!("{GOOD}userz = 3\n"));
        assert_eq!((e.line, e.field.as_deref()), (7, Some("load.userz")));
        insta::assert_snapshot!(e, @"mine.toml:7:1: load.userz: unknown field `userz`, expected one of `users`, `ramp_s`, `steady_s`, `grace_s`, `endpoints_per_user`, `workers`, `steps`");

        let e = error(&format!("{GOOD}\n[slo]\np99_delivery = 3\n"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (9, Some("slo.p99_delivery")),
            "{e}"
        );
    }

    #[test]
    fn a_missing_field_names_it_and_its_table() {
        let e = error("[load]\nusers = 100\nramp_s = 5\nsteady_s = 10\n");
        insta::assert_snapshot!(e, @"mine.toml:1:1: name: missing field `name`");

        let e = error("name = \"mine\"\n\n[load]\nusers = 100\nramp_s = 5\n");
        insta::assert_snapshot!(e, @"mine.toml:3:1: load.steady_s: missing field `steady_s`");

        let e = error("name = \"mine\"\n\n[load]\ngrace_s = 1\n\n[load.steps]\nstart = 1\nstep = 1\nmax = 2\nstep_ramp_s = 1\n");
        insta::assert_snapshot!(e, @"mine.toml:6:1: load.steps.step_steady_s: missing field `step_steady_s`");

        let e = error("name = \"mine\"\n\n[load]\ngrace_s = 1\n");
        assert_eq!((e.line, e.field.as_deref()), (3, Some("load.users")), "{e}");
    }

    #[test]
    fn a_bad_value_names_the_field_and_line() {
        let e = error(&GOOD.replace("users = 100", "users = 0"));
        assert_eq!(
            e.to_string(),
            "mine.toml:4:1: load.users: must be at least 1"
        );

        let e = error(&GOOD.replace("steady_s = 10", "steady_s = 0"));
        assert_eq!(
            e.to_string(),
            "mine.toml:6:1: load.steady_s: must be more than zero seconds"
        );

        let e = error(&format!("{GOOD}\n[slo]\np99_delivery_ms = -1\n"));
        assert_eq!(
            e.to_string(),
            "mine.toml:9:1: slo.p99_delivery_ms: must be more than zero milliseconds"
        );

        let stepped = "name = \"k\"\n[load.steps]\nstart = 5\nstep = 1\nmax = 2\nstep_ramp_s = 1\nstep_steady_s = 1\n";
        let e = error(stepped);
        insta::assert_snapshot!(e, @"mine.toml:5:1: load.steps.max: must be at least start (5)");

        let refined = "name = \"k\"\n[load.steps]\nstart = 5\nstep = 5\nmax = 20\nstep_ramp_s = 1\nstep_steady_s = 1\nrefine_to = 5\n";
        let e = error(refined);
        insta::assert_snapshot!(e, @"mine.toml:8:1: load.steps.refine_to: must be below step (5): steps of 5 already resolve the knee that finely");
        let e = error(&refined.replace("refine_to = 5", "refine_to = 0"));
        insta::assert_snapshot!(e, @"mine.toml:8:1: load.steps.refine_to: must be at least 1");

        let e = error(&format!("{GOOD}\n[load.steps]\nstart = 1\nstep = 1\nmax = 2\nstep_ramp_s = 1\nstep_steady_s = 1\n"));
        assert_eq!((e.line, e.field.as_deref()), (4, Some("load.users")), "{e}");

        let e = error(&format!("{GOOD}\n[topology]\nkind = \"cloud\"\n"));
        insta::assert_snapshot!(e, @r#"mine.toml:9:1: topology.kind: unknown kind "cloud", expected "standard", "enterprise" or "external""#);

        let e = error(&format!(
            "{GOOD}\n[topology]\nkind = \"enterprise\"\nnodes = 5\n"
        ));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (10, Some("topology.nodes")),
            "{e}"
        );
        let e = error(&format!("{GOOD}\n[topology]\nnodes = 2\n"));
        assert!(e.message.contains("only an \"enterprise\""), "{e}");
        let e = error(&format!("{GOOD}\n[topology]\nmax_connections = 0\n"));
        insta::assert_snapshot!(e, @"mine.toml:9:1: topology.max_connections: a node admits at least one stream");
        let e = error(&format!(
            "{GOOD}\n[topology]\nkind = \"external\"\nmax_connections = 9\n"
        ));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (10, Some("topology.max_connections")),
            "{e}"
        );
        let e = error(&format!("{GOOD}\n[topology]\nstream_workers = 17\n"));
        insta::assert_snapshot!(e, @"mine.toml:9:1: topology.stream_workers: at most 16 per node");
        let e = error(&format!(
            "{GOOD}\n[topology]\nkind = \"external\"\nstream_workers = 2\n"
        ));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (10, Some("topology.stream_workers")),
            "{e}"
        );
        let e = error(&format!(
            "{GOOD}\n[topology]\nkind = \"enterprise\"\nnodes = 2\n[fault]\nkind = \"kill-node\"\nat_s = 5\nnode = 2\n"
        ));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (14, Some("fault.node")),
            "{e}"
        );
        let e = error(&format!("{GOOD}\n[fault]\nkind = \"failover\"\nat_s = 5\n"));
        assert_eq!(e.field.as_deref(), Some("fault.kind"), "{e}");
        let e = error(&format!(
            "{GOOD}\n[topology]\nkind = \"enterprise\"\nnodes = 2\n[fault]\nkind = \"meteor\"\nat_s = 5\n"
        ));
        assert!(e.message.contains("unknown fault"), "{e}");

        let e = error(&format!("{GOOD}\n[claim]\ntext = \"big\"\nusers = 200\n"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (10, Some("claim.users")),
            "{e}"
        );

        let host = format!("{GOOD}\n[claim]\ntext = \"small\"\nusers = 10\n[claim.host]\n");
        let e = error(&format!("{host}text = \"spec\"\ncores = 0\n"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (13, Some("claim.host.cores")),
            "{e}"
        );
        let e = error(&format!("{host}text = \"spec\"\nmemory_gib = -32\n"));
        assert_eq!(
            e.to_string(),
            "mine.toml:13:1: claim.host.memory_gib: must be more than zero GiB"
        );
        let e = error(&format!("{host}text = \" \"\n"));
        assert_eq!(e.field.as_deref(), Some("claim.host.text"), "{e}");
        let e = error(&format!("{host}text = \"spec\"\nvirtual = \"yes\"\n"));
        assert_eq!(e.line, 13, "{e}");
        let e = error(&format!("{host}text = \"spec\"\nram = 32\n"));
        assert!(e.message.contains("unknown field `ram`"), "{e}");

        let e = error(&GOOD.replace("mine", "../up"));
        assert_eq!((e.line, e.field.as_deref()), (1, Some("name")), "{e}");

        let e = error(&format!("{GOOD}\n[model]\nchat_rate = \"hourly\"\n"));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (9, Some("model.chat_rate")),
            "{e}"
        );
    }

    #[test]
    fn dotted_keys_and_inline_tables_are_located_too() {
        let e = error("name = \"mine\"\nload.users = 0\nload.ramp_s = 1\nload.steady_s = 1\n");
        assert_eq!(
            e.to_string(),
            "mine.toml:2:1: load.users: must be at least 1"
        );
        let e = error("name = \"mine\"\nload = { users = 10, ramp_s = 1, steady_s = -3 }\n");
        assert_eq!(
            e.to_string(),
            "mine.toml:2:34: load.steady_s: must be more than zero seconds"
        );
    }

    #[test]
    fn a_syntax_error_gives_its_line_and_no_field() {
        let e = error("name = \"mine\"\n[load\nusers = 1\n");
        assert_eq!((e.line, e.field.as_deref()), (2, None));
        insta::assert_snapshot!(e, @"mine.toml:2:6: invalid table header: expected `.`, `]`");
    }

    #[test]
    fn scaling_changes_users_but_not_the_claim() {
        let s = Scenario::builtin("node-20k").unwrap().scaled(0.1);
        assert_eq!(s.user_steps(), vec![2_000]);
        assert_eq!(s.claim.unwrap().users, 20_000);
    }
}
