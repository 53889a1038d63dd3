//! The one error type of this crate.

use std::path::PathBuf;

/// Why a report could not be written.
///
/// Messages name what failed and leave the cause to the `source` chain, so a
/// caller printing the whole chain (as `anyhow` does) says each thing once.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Creating a directory or writing a file failed.
    #[error("cannot write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The run could not be serialised as `results.json`.
    #[error("cannot serialise the run results as JSON")]
    Json(#[source] serde_json::Error),
    /// plotters failed to draw a chart. plotters' error types are generic
    /// over the backend, so the cause is kept as its message.
    #[error("cannot draw the {format} chart {chart}: {message}")]
    Chart {
        /// The chart's file stem, e.g. `latency-over-time`.
        chart: String,
        /// `svg` or `png`.
        format: &'static str,
        message: String,
    },
}
