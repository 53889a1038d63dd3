//! Sizing reports: one measured scenario run, rendered as files a person
//! reads and a program compares against later.
//!
//! The report renders; it never judges. The caller computes the verdicts
//! (with `scenarios`' verdict functions) and passes them in as
//! [`VerdictRow`]s, so what the report says is exactly what the caller
//! decided.
//!
//! - [`input`]: what a report is made from: [`ReportInput`], [`VerdictRow`],
//!   [`Knee`].
//! - [`charts`]: the charts, as SVG always and PNG when a system font is
//!   available.
//! - [`html`]: `report.html`, self-contained (inline SVG, no scripts, no
//!   external references).
//! - [`markdown`]: `summary.md`, the short form.
//! - [`mod@compare`]: p99 changes against an earlier run's `results.json`.
//! - [`error`]: why a report could not be written ([`ReportError`]).
//! - `figures` (private): how numbers and warnings are worded, shared by the
//!   HTML and Markdown.
//!
//! [`write_report`] writes all of it into one directory:
//!
//! ```no_run
//! use reports::{write_report, ReportInput, Verdict, VerdictRow};
//! # fn run(result: scenarios::results::RunResult) -> Result<(), reports::ReportError> {
//! let input = ReportInput {
//!     result,
//!     verdicts: vec![VerdictRow {
//!         claim: "p99 delivery at 20,000 users".into(),
//!         target: "≤ 250 ms".into(),
//!         measured: "182 ms".into(),
//!         verdict: Verdict::Holds,
//!         why: "the steady window at 20,000 users measured 182 ms".into(),
//!     }],
//!     knee: None,
//!     notes: vec![],
//!     baseline: None,
//! };
//! let files = write_report(&input, std::path::Path::new("target/report"))?;
//! println!("open {}", files.html.display());
//! # Ok(()) }
//! ```

pub mod charts;
pub mod compare;
pub mod error;
mod figures;
pub mod html;
pub mod input;
pub mod markdown;

use std::path::{Path, PathBuf};

pub use compare::compare;
pub use error::ReportError;
pub use input::{Knee, ReportInput, Verdict, VerdictRow};

/// The file names inside a report directory.
pub const HTML_FILE: &str = "report.html";
pub const MARKDOWN_FILE: &str = "summary.md";
pub const RESULTS_FILE: &str = "results.json";

/// What [`write_report`] wrote.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    /// `report.html`.
    pub html: PathBuf,
    /// `summary.md`.
    pub markdown: PathBuf,
    /// `results.json`: the run as measured, for later comparison.
    pub results_json: PathBuf,
    /// Every SVG chart, in report order (`charts/<id>.svg`).
    pub svg_charts: Vec<PathBuf>,
    /// Every PNG chart (`charts/<id>.png`); empty when no font was found.
    pub png_charts: Vec<PathBuf>,
    /// Why the PNG charts were skipped, if they were. The same text is in
    /// the report's notes.
    pub png_skipped: Option<String>,
}

/// Writes a report into `dir` (created if missing; existing files of the
/// same names are replaced): `report.html`, `summary.md`, `results.json`
/// and `charts/*.svg` plus `charts/*.png`.
///
/// PNG charts need a TrueType font found at runtime (see
/// [`charts::font_status`]); without one they are skipped, the report says
/// why, and everything else is still written.
pub fn write_report(input: &ReportInput, dir: &Path) -> Result<ReportFiles, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;

    // results.json first: if drawing fails, the measurement is still kept.
    let results_json = dir.join(RESULTS_FILE);
    let json = serde_json::to_string_pretty(&input.result).map_err(ReportError::Json)?;
    write(&results_json, json + "\n")?;

    let charts = charts::render(input, dir)?;

    let html = dir.join(HTML_FILE);
    write(&html, html::render(input, &charts))?;
    let markdown = dir.join(MARKDOWN_FILE);
    write(&markdown, markdown::render(input, &charts))?;

    Ok(ReportFiles {
        html,
        markdown,
        results_json,
        svg_charts: charts
            .charts
            .iter()
            .map(|c| dir.join(&c.svg_file))
            .collect(),
        png_charts: charts
            .charts
            .iter()
            .filter_map(|c| c.png_file.as_ref().map(|f| dir.join(f)))
            .collect(),
        png_skipped: charts.png_skipped,
    })
}

fn write(path: &Path, contents: String) -> Result<(), ReportError> {
    std::fs::write(path, contents).map_err(|source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    })
}
