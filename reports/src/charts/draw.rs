//! Drawing a [`ChartPlan`] on any plotters backend.
//!
//! The same code draws the SVG and the PNG of a chart, so the two never
//! differ in content. Legends are drawn here rather than by plotters: its
//! legend measures text with the font directly, bypassing the backend, which
//! would make SVG charts need a font after all.

use std::ops::Range;

use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::font::FAMILY;
use super::plan::{nines_label, Mark, Panel, XAxis, YScale};
use super::ChartPlan;

const TITLE_SIZE: f64 = 24.0;
const PANEL_TITLE_SIZE: f64 = 19.0;
const LABEL_SIZE: f64 = 15.0;
const LEGEND_SIZE: f64 = 15.0;
const LEGEND_ROW: i32 = 22;
const SWATCH: i32 = 26;
/// Left edge of legends: where the plot starts, right of the y labels.
const PLOT_LEFT: i32 = 80;

/// A drawing failure, as text: plotters' error type is generic over the
/// backend, and callers only need to know what went wrong.
#[derive(Debug)]
pub(crate) struct DrawError(pub String);

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for DrawError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        DrawError(e.to_string())
    }
}

type Drawn = Result<(), DrawError>;

fn text(size: f64) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

/// Draws `plan` on `root` and presents it (writes the file, for file
/// backends).
pub(crate) fn chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, plan: &ChartPlan) -> Drawn {
    root.fill(&WHITE)?;
    let body = root.titled(&plan.title, text(TITLE_SIZE))?;
    let cells = body.split_evenly((1, plan.panels.len().max(1)));
    for (cell, panel) in cells.iter().zip(&plan.panels) {
        draw_panel(cell, panel)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(cell: &DrawingArea<DB, Shift>, p: &Panel) -> Drawn {
    let area = match &p.title {
        Some(title) => cell.titled(title, text(PANEL_TITLE_SIZE))?,
        None => cell.clone(),
    };
    let Some(extent) = Extent::of(p) else {
        return no_data(&area, &p.no_data);
    };
    let legend_height = legend(&area, p)?;
    let (_, plot) = area.split_vertically(legend_height);
    let mut builder = ChartBuilder::on(&plot);
    builder
        .margin_left(10)
        .margin_right(25)
        .margin_bottom(8)
        .x_label_area_size(48)
        .y_label_area_size(PLOT_LEFT - 10);
    match p.y_scale {
        YScale::Linear => {
            let chart = builder.build_cartesian_2d(extent.x.clone(), extent.y.clone())?;
            fill(chart, p, &extent)
        }
        YScale::Log => {
            let chart =
                builder.build_cartesian_2d(extent.x.clone(), extent.y.clone().log_scale())?;
            fill(chart, p, &extent)
        }
    }
}

/// Draws everything inside the axes. Generic over the y coordinate so one
/// body serves linear and logarithmic panels.
fn fill<DB, Y>(
    mut chart: ChartContext<'_, DB, Cartesian2d<RangedCoordf64, Y>>,
    p: &Panel,
    e: &Extent,
) -> Drawn
where
    DB: DrawingBackend,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let (x0, x1) = (e.x.start, e.x.end);
    let (y0, y1) = (e.y.start, e.y.end);

    // Bands go first so that grid and data are drawn over them.
    for b in &p.bands {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(b.from.max(x0), y0), (b.to.min(x1), y1)],
            b.colour.filled(),
        )))?;
    }

    let x_format = |v: &f64| match p.x_axis {
        XAxis::Linear => axis_number(*v),
        XAxis::Nines => nines_label(*v),
    };
    let y_format = |v: &f64| axis_number(*v);
    chart
        .configure_mesh()
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .x_label_formatter(&x_format)
        .y_label_formatter(&y_format)
        .label_style(text(LABEL_SIZE))
        .axis_desc_style(text(LABEL_SIZE))
        .x_labels(x_ticks(p.x_axis, x1))
        .bold_line_style(RGBColor(215, 215, 215))
        // No minor grid: over the phase bands it reads as texture, not scale.
        .light_line_style(TRANSPARENT)
        .draw()?;

    // Band labels only where they fit, so short phases stay unlabelled
    // rather than overprinted.
    let band_label = text(LABEL_SIZE - 2.0).color(&RGBColor(90, 90, 90));
    for b in p.bands.iter().filter(|b| !b.label.is_empty()) {
        let left = chart.backend_coord(&(b.from.max(x0), y1)).0;
        let right = chart.backend_coord(&(b.to.min(x1), y1)).0;
        let (w, _) = chart
            .plotting_area()
            .estimate_text_size(&b.label, &band_label)?;
        if right - left > w as i32 + 8 {
            chart.plotting_area().draw(
                &(EmptyElement::at((b.from.max(x0), y1))
                    + Text::new(b.label.clone(), (4, 4), band_label.clone())),
            )?;
        }
    }

    // Reference lines under the data, their labels over it: the data
    // must stay visible, and the labels legible.
    for l in &p.hlines {
        let ends = [(x0, l.value), (x1, l.value)];
        chart.draw_series(DashedLineSeries::new(ends, 10, 6, l.colour.stroke_width(2)))?;
    }
    for l in &p.vlines {
        let ends = [(l.value, y0), (l.value, y1)];
        chart.draw_series(DashedLineSeries::new(ends, 10, 6, l.colour.stroke_width(2)))?;
    }

    for s in &p.series {
        for run in drawable_runs(&s.points, p.y_scale) {
            if matches!(s.mark, Mark::Line | Mark::LineAndDots) && run.len() > 1 {
                chart.draw_series(LineSeries::new(
                    run.iter().copied(),
                    s.colour.stroke_width(2),
                ))?;
            }
            // A lone point of a line would be invisible; show it as a dot.
            if matches!(s.mark, Mark::Dots | Mark::LineAndDots) || run.len() == 1 {
                let radius = if s.mark == Mark::LineAndDots { 5 } else { 3 };
                chart.draw_series(
                    run.iter()
                        .map(|&xy| Circle::new(xy, radius, s.colour.filled())),
                )?;
            }
        }
    }

    // Labels sit above their line, except the lowest of several, which
    // goes below so that two close thresholds do not print over each other.
    let lowest = p
        .hlines
        .iter()
        .map(|l| l.value)
        .fold(f64::INFINITY, f64::min);
    for l in &p.hlines {
        let (v_pos, dy) = if p.hlines.len() > 1 && l.value == lowest {
            (VPos::Top, 4)
        } else {
            (VPos::Bottom, -4)
        };
        let style = text(LABEL_SIZE - 1.0)
            .color(&l.colour)
            .pos(Pos::new(HPos::Right, v_pos));
        backed_label(
            chart.plotting_area(),
            (x1, l.value),
            (-6, dy),
            &l.label,
            style,
        )?;
    }
    for l in &p.vlines {
        let style = text(LABEL_SIZE - 1.0)
            .color(&l.colour)
            .pos(Pos::new(HPos::Left, VPos::Top));
        backed_label(
            chart.plotting_area(),
            (l.value, y1),
            (6, 6),
            &l.label,
            style,
        )?;
    }
    Ok(())
}

/// Draws `label` at `offset` pixels from the data point `at`, on a light
/// backing that keeps it legible where data runs close to a threshold,
/// which is exactly where a reader looks.
fn backed_label<DB, CT>(
    area: &DrawingArea<DB, CT>,
    at: CT::From,
    (dx, dy): (i32, i32),
    label: &str,
    style: TextStyle<'_>,
) -> Drawn
where
    DB: DrawingBackend,
    CT: CoordTranslate,
{
    let (w, h) = area.estimate_text_size(label, &style)?;
    let (w, h) = (w as i32, h as i32);
    let left = match style.pos.h_pos {
        HPos::Left => dx,
        HPos::Center => dx - w / 2,
        HPos::Right => dx - w,
    };
    let top = match style.pos.v_pos {
        VPos::Top => dy,
        VPos::Center => dy - h / 2,
        VPos::Bottom => dy - h,
    };
    area.draw(
        &(EmptyElement::at(at)
            + Rectangle::new(
                [(left - 3, top - 2), (left + w + 3, top + h + 2)],
                WHITE.mix(0.8).filled(),
            )
            + Text::new(label.to_string(), (dx, dy), style)),
    )?;
    Ok(())
}

/// How many x labels to ask plotters for. On a percentile axis, one per
/// whole "nine" makes plotters pick 90 %, 99 %, 99.9 % rather than halves.
fn x_ticks(axis: XAxis, x_max: f64) -> usize {
    match axis {
        XAxis::Linear => 10,
        XAxis::Nines => (x_max.floor().max(1.0) as usize) + 1,
    }
}

/// Splits points into runs that can be drawn: finite, and positive on a log
/// axis. Gaps (a second with nothing measured records 0) break a line
/// instead of plunging it to the bottom of the chart.
fn drawable_runs(points: &[(f64, f64)], scale: YScale) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for &(x, y) in points {
        if drawable(x, y, scale) {
            // Invariant: `runs` is never empty; it starts with one run.
            runs.last_mut().expect("runs starts non-empty").push((x, y));
        } else if runs.last().is_some_and(|r| !r.is_empty()) {
            runs.push(Vec::new());
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

fn drawable(x: f64, y: f64, scale: YScale) -> bool {
    x.is_finite() && y.is_finite() && (scale == YScale::Linear || y > 0.0)
}

/// The ranges a panel's axes cover.
struct Extent {
    x: Range<f64>,
    y: Range<f64>,
}

impl Extent {
    /// `None` when there is nothing worth drawing: no drawable point, or
    /// every value zero (an all-zero line says nothing an axis could show).
    fn of(p: &Panel) -> Option<Extent> {
        let points: Vec<(f64, f64)> = p
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|&(x, y)| drawable(x, y, p.y_scale))
            .collect();
        if !points.iter().any(|&(_, y)| y != 0.0) {
            return None;
        }
        let xs = points
            .iter()
            .map(|&(x, _)| x)
            .chain(p.bands.iter().flat_map(|b| [b.from, b.to]))
            .chain(p.vlines.iter().map(|l| l.value))
            .filter(|x| x.is_finite());
        let (mut x_lo, mut x_hi) = min_max(xs)?;
        if p.x_axis == XAxis::Nines {
            // Percentile axes always start at the minimum (0 nines).
            x_lo = 0.0;
        }
        if x_hi - x_lo < 1e-9 {
            // One sample, or one step: give the point some room.
            let pad = (x_lo.abs() * 0.05).max(1.0);
            (x_lo, x_hi) = (x_lo - pad, x_hi + pad);
        } else if p.x_axis == XAxis::Linear && p.series.iter().any(|s| s.mark != Mark::Line) {
            // Dots on the frame would be half hidden by the axis.
            let pad = (x_hi - x_lo) * 0.04;
            (x_lo, x_hi) = (x_lo - pad, x_hi + pad);
        }
        // Thresholds are part of the y range so the reader sees the
        // headroom, not just the data.
        let ys = points
            .iter()
            .map(|&(_, y)| y)
            .chain(p.hlines.iter().map(|l| l.value))
            .filter(|&y| drawable(0.0, y, p.y_scale));
        let (y_lo, y_hi) = min_max(ys)?;
        let y = match p.y_scale {
            YScale::Linear => {
                let lo = y_lo.min(0.0);
                let hi = if y_hi > lo { y_hi * 1.08 } else { lo + 1.0 };
                lo..hi
            }
            YScale::Log => (y_lo / 1.6)..(y_hi * 1.6),
        };
        Some(Extent { x: x_lo..x_hi, y })
    }
}

fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Draws the legend row(s) at the top of `area` and returns their height.
fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> Result<i32, DrawError> {
    enum Swatch {
        Line,
        Dot,
        Dashed,
    }
    let entries = p
        .series
        .iter()
        .map(|s| {
            let swatch = if s.mark == Mark::Dots {
                Swatch::Dot
            } else {
                Swatch::Line
            };
            (s.label.as_str(), s.colour, swatch)
        })
        .chain(
            p.hlines
                .iter()
                .chain(&p.vlines)
                .map(|l| (l.label.as_str(), l.colour, Swatch::Dashed)),
        );
    let style = text(LEGEND_SIZE);
    let width = area.dim_in_pixel().0 as i32;
    let (mut x, mut y) = (PLOT_LEFT, LEGEND_ROW / 2 + 2);
    for (label, colour, swatch) in entries {
        let (w, _) = area.estimate_text_size(label, &style)?;
        let entry = SWATCH + 6 + w as i32 + 20;
        if x + entry > width - 10 && x > PLOT_LEFT {
            (x, y) = (PLOT_LEFT, y + LEGEND_ROW);
        }
        let line = colour.stroke_width(3);
        match swatch {
            Swatch::Line => area.draw(&PathElement::new([(x, y), (x + SWATCH, y)], line))?,
            Swatch::Dot => area.draw(&Circle::new((x + SWATCH / 2, y), 4, colour.filled()))?,
            Swatch::Dashed => {
                area.draw(&PathElement::new([(x, y), (x + 10, y)], line))?;
                area.draw(&PathElement::new([(x + 16, y), (x + SWATCH, y)], line))?;
            }
        }
        area.draw(&Text::new(
            label.to_string(),
            (x + SWATCH + 6, y),
            style.clone().pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        x += entry;
    }
    Ok(y + LEGEND_ROW / 2 + 4)
}

fn no_data<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, why: &str) -> Drawn {
    let (w, h) = area.dim_in_pixel();
    let (cx, cy) = (w as i32 / 2, h as i32 / 2);
    let centred = Pos::new(HPos::Center, VPos::Center);
    area.draw(&Rectangle::new(
        [(10, 10), (w as i32 - 10, h as i32 - 10)],
        RGBColor(200, 200, 200).stroke_width(1),
    ))?;
    area.draw(&Text::new(
        "no data",
        (cx, cy - 16),
        text(30.0).color(&RGBColor(110, 110, 110)).pos(centred),
    ))?;
    area.draw(&Text::new(
        why.to_string(),
        (cx, cy + 20),
        text(LABEL_SIZE)
            .color(&RGBColor(110, 110, 110))
            .pos(centred),
    ))?;
    Ok(())
}

/// Axis numbers: "0", "2.5", "120", "5k", "1.5M". Thousands are shortened
/// because user counts and rates otherwise crowd the axis.
fn axis_number(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = if (scaled - scaled.round()).abs() < 1e-9 {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(axis_number(0.0), "0");
        assert_eq!(axis_number(2.5), "2.5");
        assert_eq!(axis_number(120.0), "120");
        assert_eq!(axis_number(20_000.0), "20k");
        assert_eq!(axis_number(2_500.0), "2.5k");
        assert_eq!(axis_number(1_500_000.0), "1.5M");
        assert_eq!(axis_number(0.25), "0.25");
    }

    #[test]
    fn zero_latencies_break_log_lines() {
        let runs = drawable_runs(
            &[(1.0, 5.0), (2.0, 0.0), (3.0, 6.0), (4.0, 7.0)],
            YScale::Log,
        );
        assert_eq!(runs, vec![vec![(1.0, 5.0)], vec![(3.0, 6.0), (4.0, 7.0)]]);
    }
}
