//! Charts of a run, as SVG (always) and PNG (when a font is available).
//!
//! - `plan`: what each chart shows, decided from the data ([`ChartPlan`]).
//! - `draw`: one routine drawing any plan on any plotters backend.
//! - `svg`: the SVG backend wrapped to measure text without a font.
//! - `font`: finding and registering a system font for PNG text
//!   ([`font_status`]).
//!
//! The charts: latency percentiles over time, throughput over time, users
//! and endpoints over time, server CPU and memory against users, the latency
//! distribution per step, and for a knee run p99 against users with the knee
//! marked. A chart with nothing to show still renders, saying "no data" and
//! why.

mod draw;
mod font;
mod plan;
mod svg;

use std::path::Path;

use plotters::prelude::{BitMapBackend, IntoDrawingArea};

pub use font::{font_status, FontStatus, FONT_ENV};

use crate::{ReportError, ReportInput};

/// Size of every chart in pixels (width, height), SVG and PNG alike.
pub const CHART_SIZE: (u32, u32) = (1200, 600);

/// One chart, decided but not yet drawn.
#[derive(Debug, Clone)]
pub struct ChartPlan {
    /// File stem, e.g. `latency-over-time`.
    pub id: &'static str,
    pub title: String,
    /// One or two sentences telling the reader how to read the chart.
    pub caption: String,
    panels: Vec<plan::Panel>,
}

impl ChartPlan {
    /// The chart as an SVG document. Needs no font.
    pub fn to_svg(&self) -> Result<String, ReportError> {
        let mut svg = String::new();
        {
            let root = svg::FontFreeSvg::with_string(&mut svg, CHART_SIZE).into_drawing_area();
            draw::chart(&root, self).map_err(|e| self.error("svg", e))?;
        }
        Ok(svg)
    }

    /// Draws the chart into a PNG file at `path`.
    ///
    /// Needs a registered font ([`font_status`] returns
    /// [`FontStatus::Registered`]); without one this fails, because the
    /// chart's text cannot be drawn.
    pub fn write_png(&self, path: &Path) -> Result<(), ReportError> {
        if let FontStatus::Missing(why) = font_status() {
            return Err(self.error("png", draw::DrawError(why.clone())));
        }
        let root = BitMapBackend::new(path, CHART_SIZE).into_drawing_area();
        draw::chart(&root, self).map_err(|e| self.error("png", e))
    }

    fn error(&self, format: &'static str, e: draw::DrawError) -> ReportError {
        ReportError::Chart {
            chart: self.id.to_string(),
            format,
            message: e.0,
        }
    }
}

/// The charts for `input`, in report order.
pub fn plans(input: &ReportInput) -> Vec<ChartPlan> {
    plan::plans(input)
}

/// A chart written to disk, with what the HTML and Markdown need of it.
#[derive(Debug, Clone)]
pub struct RenderedChart {
    pub id: &'static str,
    pub title: String,
    pub caption: String,
    /// The SVG document, for inlining into HTML.
    pub svg: String,
    /// Path of the SVG file relative to the report directory
    /// (`charts/<id>.svg`), with `/` separators so it works as a link.
    pub svg_file: String,
    /// Path of the PNG file relative to the report directory, if drawn.
    pub png_file: Option<String>,
}

/// All charts of a report.
#[derive(Debug, Clone, Default)]
pub struct RenderedCharts {
    pub charts: Vec<RenderedChart>,
    /// Why the PNG charts were skipped (no font), if they were.
    pub png_skipped: Option<String>,
}

/// Directory of the charts inside a report directory.
pub const CHART_DIR: &str = "charts";

/// Draws every chart of `input` into `<dir>/charts/`: an SVG each, and a PNG
/// each when a font is available.
pub fn render(input: &ReportInput, dir: &Path) -> Result<RenderedCharts, ReportError> {
    let chart_dir = dir.join(CHART_DIR);
    std::fs::create_dir_all(&chart_dir).map_err(|source| ReportError::Io {
        path: chart_dir.clone(),
        source,
    })?;
    let png_skipped = match font_status() {
        FontStatus::Registered(_) => None,
        FontStatus::Missing(why) => Some(why.clone()),
    };
    let mut charts = Vec::new();
    for plan in plans(input) {
        let svg = plan.to_svg()?;
        let svg_path = chart_dir.join(format!("{}.svg", plan.id));
        std::fs::write(&svg_path, &svg).map_err(|source| ReportError::Io {
            path: svg_path,
            source,
        })?;
        let png_file = if png_skipped.is_none() {
            plan.write_png(&chart_dir.join(format!("{}.png", plan.id)))?;
            Some(format!("{CHART_DIR}/{}.png", plan.id))
        } else {
            None
        };
        charts.push(RenderedChart {
            id: plan.id,
            svg_file: format!("{CHART_DIR}/{}.svg", plan.id),
            png_file,
            title: plan.title,
            caption: plan.caption,
            svg,
        });
    }
    Ok(RenderedCharts {
        charts,
        png_skipped,
    })
}
