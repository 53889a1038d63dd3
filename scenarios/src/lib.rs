//! Scenarios: the vendor's user model, scaled; scenario files; the
//! service-level objective and the verdicts computed from measured results.
//!
//! - [`model`]: the vendor's published user model, embedded as data.
//! - [`plan`]: the model scaled to a number of active users.
//! - [`scenario`]: scenario files and the built-in library.
//! - [`verdict`]: the objective applied to measured steps; claims; the knee.
//! - [`results`]: what a run measured (the `results.json` format).

pub mod model;
pub mod plan;
pub mod results;
pub mod scenario;
pub mod verdict;

pub use scenario::Scenario;

use serde::{Deserialize, Serialize};

/// A claim a scenario verifies, such as "20,000 active users per front end".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// The claim in words, as the vendor made it.
    pub text: String,
    /// Active users the claim is about.
    pub users: u64,
}

/// The service-level objective. Defaults are the issue's: at the target load,
/// p99 delivery at most 250 ms, p99 post acknowledgement at most 200 ms, p99
/// history read at most 500 ms, errors below 0.1 %, nothing lost, duplicated
/// or reordered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Slo {
    pub p99_delivery_ms: f64,
    pub p99_post_ack_ms: f64,
    pub p99_history_ms: f64,
    /// Highest acceptable error ratio, in percent of operations.
    pub max_error_pct: f64,
}

impl Default for Slo {
    fn default() -> Self {
        Slo {
            p99_delivery_ms: 250.0,
            p99_post_ack_ms: 200.0,
            p99_history_ms: 500.0,
            max_error_pct: 0.1,
        }
    }
}
