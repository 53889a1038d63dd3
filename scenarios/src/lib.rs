//! Scenarios: the vendor's user model, scaled; scenario files; the
//! service-level objective and the verdicts computed from measured results.
//!
//! - [`model`]: the vendor's published user model, embedded as data.
//! - [`plan`]: the model scaled to a number of active users, and the seeded
//!   assignment of users to rooms, endpoints and visible rooms.
//! - [`scenario`]: scenario files, their errors, and the built-in library.
//! - [`verdict`]: the objective applied to measured steps; claims; the knee.
//! - [`results`]: what a run measured (the `results.json` format).
//!
//! Nothing here talks to a server or renders a report.
//!
//! ```
//! use scenarios::{plan::Plan, Scenario};
//!
//! let quick = Scenario::builtin("quick").unwrap();
//! let model = quick.user_model(None).unwrap();
//! let plan: Plan = quick.plan(&model, quick.user_steps()[0]);
//! assert_eq!((plan.users, plan.endpoints), (2_000, 3_000));
//! let rooms = plan.memberships(quick.seed);
//! assert_eq!(rooms.members(0).len() as u64, plan.small.size);
//! ```

pub mod model;
pub mod plan;
pub mod results;
pub mod scenario;
mod toml_span;
pub mod verdict;

pub use scenario::{library, Scenario, ScenarioError};

use serde::{Deserialize, Serialize};

/// A claim a scenario verifies, such as "20,000 active users per front end".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// The claim in words, as the vendor made it.
    pub text: String,
    /// Active users the claim is about.
    pub users: u64,
    /// The hardware the claim is about, when it names one (the vendor's
    /// figures are for its recommended server). A run on a host that falls
    /// short of it cannot show that the claim fails, only that it holds
    /// ([`verdict::claim_verdict`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostSpec>,
}

/// The hardware a claim is about, compared with the measured
/// [`results::Machine`]. A field left out is not compared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// What the specification is, in words ("the vendor's recommended
    /// front-end server: two hex-core 2.26 GHz processors, 32 GB").
    pub text: String,
    /// Fewest logical CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Least memory, in GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gib: Option<f64>,
    /// Lowest processor clock, in GHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ghz: Option<f64>,
    /// `Some(true)`: the claim is about a virtual machine; `Some(false)`:
    /// about a physical server; `None`: either.
    #[serde(default, rename = "virtual", skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<bool>,
}

/// The service-level objective. Defaults are the issue's: at the target load,
/// p99 delivery at most 250 ms, p99 post acknowledgement at most 200 ms, p99
/// history read at most 500 ms, errors at most 0.1 % of operations, nothing
/// lost, duplicated or reordered.
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

#[cfg(test)]
mod tidy {
    /// Every module opens with `//!` documentation that says what it is for.
    #[test]
    fn every_module_has_module_docs() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let entries = std::fs::read_dir(&src).expect("src is readable");
        for entry in entries {
            let path = entry.expect("src entry is readable").path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source is readable");
                assert!(
                    text.starts_with("//!"),
                    "{} does not start with //! module documentation",
                    path.display()
                );
            }
        }
    }
}
