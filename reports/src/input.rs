//! What a report is made from: one measured run and the verdicts the caller
//! computed from it.
//!
//! The report never judges. Verdicts, the knee and the notes arrive here
//! already computed (by `scenarios`' verdict functions, in the caller), so a
//! report cannot disagree with the verdicts a program acted on, and this crate
//! does not depend on how they are computed.

use scenarios::results::RunResult;
pub use scenarios::verdict::Verdict;

/// Everything [`crate::write_report`] renders.
#[derive(Debug, Clone)]
pub struct ReportInput {
    /// The run, exactly as measured; written back out as `results.json`.
    pub result: RunResult,
    /// One row per checked criterion, in the order the report shows them.
    pub verdicts: Vec<VerdictRow>,
    /// The knee of a knee run (the load beyond which the objective no longer
    /// holds), if the caller looked for one.
    pub knee: Option<Knee>,
    /// Free-text remarks for the reader (caveats, what changed since the last
    /// run). The report adds its own notes, such as skipped PNG charts, after
    /// these.
    pub notes: Vec<String>,
    /// An earlier run of the same scenario (its `results.json`), to report p99
    /// changes against. See [`crate::compare()`].
    pub baseline: Option<RunResult>,
}

/// One line of the verdict table, already decided by the caller.
///
/// All fields are display text except `verdict`: the report prints them as
/// they are (escaped), so units and rounding are the caller's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictRow {
    /// What is claimed or required, e.g. "p99 delivery at 20,000 users".
    pub claim: String,
    /// The threshold, e.g. "≤ 250 ms".
    pub target: String,
    /// What the run measured, e.g. "182 ms".
    pub measured: String,
    /// Whether the claim holds on this run, does not, or the run cannot tell.
    pub verdict: Verdict,
    /// Why, in one sentence, e.g. which step or window decided it.
    pub why: String,
}

/// The knee of a knee run, as the caller's analysis found it.
///
/// A separate type rather than a bare string because the knee chart marks it:
/// it needs the user count, while the text is what the tables print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Knee {
    /// The user count to mark on the knee chart, or `None` when there is no
    /// single point to mark (every step held, or none did).
    pub users: Option<u64>,
    /// The knee in words, e.g. "the objective holds up to 30,000 users; at
    /// 35,000 p99 delivery is 410 ms".
    pub text: String,
}
