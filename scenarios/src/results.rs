//! The measured outcome of one scenario run, as the load generator records it
//! and the report renders it.
//!
//! This is a file format: `results.json` beside every report, read back by
//! later runs to compare against. Fields are only ever added (with serde
//! defaults); [`RESULTS_SCHEMA`] changes when a field changes meaning.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the results format written in [`RunResult::schema`].
pub const RESULTS_SCHEMA: u32 = 1;

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// Always [`RESULTS_SCHEMA`] when written by this version.
    pub schema: u32,
    /// Scenario name (`quick`, `node-20k`, ...).
    pub scenario: String,
    /// One-line description from the scenario file.
    #[serde(default)]
    pub description: String,
    /// The claim the scenario verifies, if any.
    pub claim: Option<crate::Claim>,
    /// The objective the verdicts were computed against.
    pub slo: crate::Slo,
    /// Seed of the schedule: the same seed gives the same schedule.
    pub seed: u64,
    /// What was measured: `embedded reference server` or the external URL.
    pub target: String,
    /// The machine the run happened on.
    pub machine: Machine,
    /// The command line that produced this run.
    pub command: String,
    /// Wall-clock start, RFC 3339.
    pub started_at: String,
    /// Seconds from start to end of measurement.
    pub duration_s: f64,
    /// True when the run ran to its planned end; false when it was
    /// interrupted (Ctrl-C) or aborted, and `ended_because` says why.
    pub completed: bool,
    #[serde(default)]
    pub ended_because: Option<String>,
    /// One entry per load step. A fixed-load scenario has one step; a knee
    /// scenario has one per user count it tried, in order.
    pub steps: Vec<Step>,
    /// One sample per second for the whole run.
    pub timeline: Vec<Sample>,
    /// Health of the load generator itself.
    pub generator: GeneratorHealth,
    /// Host limits the run reached (file descriptors, ports, ...), in words.
    /// A run that hits a limit says so instead of blaming the server.
    #[serde(default)]
    pub limits_hit: Vec<String>,
    /// Steps the run did not attempt because this host cannot hold them
    /// (checked before each step), with what to change.
    #[serde(default)]
    pub not_run: Vec<NotRun>,
}

/// A step left out before it started, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotRun {
    pub users: u64,
    pub endpoints: u64,
    pub reason: String,
}

/// One load level held for a steady-state window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Active simulated users at this step.
    pub users: u64,
    /// Connected endpoints (event streams) at this step.
    pub endpoints: u64,
    /// Rooms in the deployment at this step.
    pub rooms: u64,
    /// Steady-state window, in seconds from the run start. Latencies, errors
    /// and correctness below are for this window only.
    pub window_start_s: f64,
    pub window_end_s: f64,
    /// Latency summaries by operation. Keys used by the load generator:
    /// `post_ack`, `delivery`, `history`, `search`, `join`, `participants`,
    /// `presence`, `connect` (a stream's handshake), `rejoin` (a room joined
    /// again after the endpoint moved to another node, from the first
    /// attempt), `reconnect` (from a stream's loss to its next `ready`).
    pub latencies: BTreeMap<String, Latency>,
    /// Operations attempted in the window, by operation (same keys).
    pub operations: BTreeMap<String, u64>,
    /// Operations that finally failed in the window, as
    /// `<operation>:<code>` (protocol error codes, or `timeout`, `io`,
    /// `http:<status>`; `stream:down:<why>` is an endpoint without its stream
    /// at the window's end: `connecting`, `waiting` to try again, or
    /// `unready`, open without its `ready` frame, followed by what its last
    /// attempt met when one failed, as in `stream:down:waiting:busy` or
    /// `stream:down:waiting:closed:4008`). The error objective is judged on these.
    pub errors: BTreeMap<String, u64>,
    /// Failed attempts that clients retried, as `<operation>:<reason>`, not
    /// counted as errors (a retry that finally failed is one error above):
    /// refusals honoured after `Retry-After` (`join:busy`,
    /// `connect:rate_limited`, ...), attempts on a node that was down
    /// (`connect:node_down`, `post_ack:node_down`, ...) and lost streams
    /// (`stream:closed:<code>`), each followed by a reconnect. Absent from
    /// results written before it existed.
    #[serde(default)]
    pub retried: BTreeMap<String, u64>,
    /// Acknowledged posts in the window by room class (`small`, `medium`,
    /// `large`): a window without a large room's post never saw the
    /// model's largest fan-out. Absent from results written before it
    /// existed.
    #[serde(default)]
    pub posts_by_class: BTreeMap<String, u64>,
    /// Event frames the load generator's streams received in the window,
    /// by event type (`message`, `presence`, `participant_joined`, ...):
    /// everything the server pushed to them, of which `delivery` measures
    /// the messages. Absent from results written before it existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub events_received: BTreeMap<String, u64>,
    /// Users that had joined all their rooms when the steady window began
    /// (the rest were still joining: the step did not carry its users).
    /// Absent from results written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived_users: Option<u64>,
    /// What the receivers saw, checked against what was acknowledged.
    pub correctness: Correctness,
    /// Mean and peak CPU (percent of one core, summed over server
    /// processes) and peak RSS (MiB) of the server in the window.
    pub server_cpu_mean_pct: f64,
    pub server_cpu_peak_pct: f64,
    pub server_rss_peak_mib: f64,
    /// How busy the whole machine's CPU was over the window, in percent of
    /// all its cores (100 = every core busy): server, load generator,
    /// PostgreSQL and the kernel's softirq time together. Absent from
    /// results written before it existed and for an external target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpu_busy_pct: Option<f64>,
    /// The share of the window's seconds (percent) in which the machine's
    /// CPU was at least [`HOST_SATURATED_PCT`] busy. Absent as above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cpu_saturated_pct: Option<f64>,
}

/// A second in which the machine's cores were at least this busy (percent
/// of all of them) counts as saturated: whatever ran then waited for CPU.
pub const HOST_SATURATED_PCT: f64 = 95.0;

/// A latency distribution in milliseconds, from an HdrHistogram.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// The distribution for charts: (upper bound in ms, count) pairs, in
    /// increasing order of bound, empty buckets left out.
    #[serde(default)]
    pub buckets: Vec<(f64, u64)>,
}

/// Delivery correctness over a window, computed by the checker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Correctness {
    /// Posts acknowledged by the server.
    pub acknowledged: u64,
    /// (message, endpoint) deliveries the protocol requires: every endpoint
    /// joined to the room for the whole time from post to the end of the
    /// grace period and the drain after it (the exact rule is in the load
    /// generator's `check` module).
    pub expected_deliveries: u64,
    /// Required deliveries that arrived: `expected_deliveries - lost`.
    pub delivered: u64,
    /// Required deliveries that never arrived.
    pub lost: u64,
    /// Of the lost, those owed to endpoints whose stream was not open when
    /// the window ended: lost with the stream and not back yet, the owed
    /// messages still waiting for the rejoin that never came. Counted
    /// among `lost` all the same.
    #[serde(default)]
    pub lost_while_away: u64,
    /// Messages received more than once by one endpoint.
    pub duplicated: u64,
    /// Messages received out of sequence order by one endpoint.
    pub reordered: u64,
    /// Sequence numbers that were not dense (a gap in what the server
    /// assigned in a room).
    pub sequence_gaps: u64,
    /// Acknowledgements that contradict each other: one sequence number
    /// given to two messages of a room, or one message acknowledged at two
    /// sequence numbers.
    #[serde(default)]
    pub conflicting_acks: u64,
    /// Up to 20 human-readable witnesses of anomalies.
    #[serde(default)]
    pub witnesses: Vec<String>,
}

impl Correctness {
    /// True when nothing was lost, duplicated, reordered or skipped, and no
    /// two acknowledgements contradict each other.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.sequence_gaps == 0
            && self.conflicting_acks == 0
    }
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run start (end of this one-second interval).
    pub t_s: f64,
    /// Phase name: `provision`, `ramp`, `steady`, `drain`, ...
    pub phase: String,
    pub users: u64,
    pub endpoints: u64,
    /// Rates over this second.
    pub posts_per_s: f64,
    pub deliveries_per_s: f64,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    /// Latencies over this second (0 when nothing was measured).
    pub post_ack_p50_ms: f64,
    pub post_ack_p99_ms: f64,
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
    pub delivery_max_ms: f64,
    /// Server CPU (percent of one core, summed over its processes) and RSS.
    pub server_cpu_pct: f64,
    pub server_rss_mib: f64,
    /// The load generator's own CPU (percent of one core).
    pub loadgen_cpu_pct: f64,
    /// The whole machine's busy CPU (percent of one core), every process
    /// and the kernel's interrupt time included. Absent (0) from results
    /// written before it existed.
    #[serde(default)]
    pub host_cpu_pct: f64,
}

/// The machine a run happened on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub cpu_model: String,
    pub cores: u32,
    pub memory_gib: f64,
    pub kernel: String,
    /// Open-file limit of the load generator process (soft, hard).
    pub fd_limit: (u64, u64),
    /// The processor's clock in MHz: its highest frequency where the kernel
    /// reports one (cpufreq), else what /proc/cpuinfo says. Absent from
    /// results written before it was recorded, and where neither is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_mhz: Option<f64>,
    /// Whether the machine runs under a hypervisor (the processor's
    /// `hypervisor` flag). Absent where it could not be told, and from
    /// results written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<bool>,
}

/// Whether the load generator could do what it was asked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GeneratorHealth {
    /// Peak CPU of the generator process over the run (percent of one core).
    pub cpu_peak_pct: f64,
    /// Mean CPU of the generator process over the steady windows.
    pub cpu_mean_pct: f64,
    /// Cores the generator may use.
    pub cores: u32,
    /// True when the generator itself saturated (its CPU stayed near the
    /// machine's capacity, or its schedule fell behind): the run is invalid
    /// and no claim verdict is drawn from it.
    pub saturated: bool,
    /// Why it is considered saturated, in words.
    #[serde(default)]
    pub reason: Option<String>,
    /// Largest lag of the schedule behind its intended send times (ms).
    pub schedule_lag_max_ms: f64,
}
