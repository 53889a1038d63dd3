//! What each chart shows, decided from the run without drawing anything.
//!
//! Every chart is a list of [`Panel`]s: series of points, dashed reference
//! lines (objective thresholds, the knee) and shaded bands (phases). One
//! drawing routine (`draw.rs`) renders any panel to any backend, so the six
//! charts share their axes, legends and "no data" handling instead of each
//! carrying its own copy.

use plotters::style::RGBColor;
use scenarios::results::{Latency, RunResult, Sample};

use super::ChartPlan;
use crate::figures;
use crate::ReportInput;

/// How the x axis is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XAxis {
    /// Plain numbers (seconds, users).
    Linear,
    /// Percentiles spread by their "nines": x = -log10(1 - q), labelled as
    /// percentiles, so 90 %, 99 % and 99.9 % are evenly spaced and the tail
    /// gets as much room as the median.
    Nines,
}

/// How the y axis is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum YScale {
    Linear,
    /// Logarithmic: latencies span orders of magnitude, and a linear axis
    /// would flatten everything below a single spike.
    Log,
}

/// How a series is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    Line,
    /// Unconnected points: for scatter plots, where neighbours in the data
    /// are not neighbours in time.
    Dots,
    LineAndDots,
}

#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub label: String,
    pub colour: RGBColor,
    pub mark: Mark,
    pub points: Vec<(f64, f64)>,
}

/// A dashed reference line across the panel at `value`.
#[derive(Debug, Clone)]
pub(crate) struct Level {
    pub label: String,
    pub colour: RGBColor,
    pub value: f64,
}

/// A shaded stretch of the x axis, such as a phase of the run.
#[derive(Debug, Clone)]
pub(crate) struct Band {
    pub label: String,
    pub colour: RGBColor,
    pub from: f64,
    pub to: f64,
}

/// One set of axes.
#[derive(Debug, Clone)]
pub(crate) struct Panel {
    /// Shown above the panel when a chart has several.
    pub title: Option<String>,
    pub x_label: String,
    pub y_label: String,
    pub x_axis: XAxis,
    pub y_scale: YScale,
    pub series: Vec<Series>,
    /// Horizontal dashed lines (objective thresholds).
    pub hlines: Vec<Level>,
    /// Vertical dashed lines (the knee).
    pub vlines: Vec<Level>,
    pub bands: Vec<Band>,
    /// Shown after "no data:" when nothing in `series` can be drawn.
    pub no_data: String,
}

impl Panel {
    fn new(x_label: &str, y_label: &str, x_axis: XAxis, y_scale: YScale, no_data: String) -> Self {
        Panel {
            title: None,
            x_label: x_label.to_string(),
            y_label: y_label.to_string(),
            x_axis,
            y_scale,
            series: Vec::new(),
            hlines: Vec::new(),
            vlines: Vec::new(),
            bands: Vec::new(),
            no_data,
        }
    }

    fn series(&mut self, label: &str, colour: RGBColor, mark: Mark, points: Vec<(f64, f64)>) {
        self.series.push(Series {
            label: label.to_string(),
            colour,
            mark,
            points,
        });
    }

    fn level(&mut self, label: String, colour: RGBColor, value: f64) {
        self.hlines.push(Level {
            label,
            colour,
            value,
        });
    }
}

// Colours: Tableau 10, which stays distinguishable for the common forms of
// colour blindness; the lighter tint of a hue is its p50, the full hue p99.
const BLUE: RGBColor = RGBColor(31, 119, 180);
const LIGHT_BLUE: RGBColor = RGBColor(140, 190, 225);
const DARK_BLUE: RGBColor = RGBColor(8, 48, 107);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const LIGHT_ORANGE: RGBColor = RGBColor(253, 190, 133);
const DARK_ORANGE: RGBColor = RGBColor(166, 54, 3);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const GREY: RGBColor = RGBColor(127, 127, 127);
const BROWN: RGBColor = RGBColor(140, 86, 75);
const PINK: RGBColor = RGBColor(227, 119, 194);
const OLIVE: RGBColor = RGBColor(188, 189, 34);
const CYAN: RGBColor = RGBColor(23, 190, 207);

/// One colour per step of a knee run, cycling when there are more steps.
const STEP_COLOURS: [RGBColor; 10] = [
    BLUE, ORANGE, GREEN, RED, PURPLE, BROWN, PINK, GREY, OLIVE, CYAN,
];

/// Pale fills for phase bands, light enough that lines stay readable.
fn phase_colour(phase: &str) -> RGBColor {
    match phase {
        "provision" => RGBColor(232, 232, 232),
        "ramp" => RGBColor(255, 242, 204),
        "steady" => RGBColor(221, 241, 221),
        "drain" => RGBColor(236, 226, 246),
        _ => RGBColor(226, 236, 246),
    }
}

/// The charts for one report, in the order the report shows them.
pub(crate) fn plans(input: &ReportInput) -> Vec<ChartPlan> {
    let r = &input.result;
    let mut plans = vec![
        latency_over_time(r),
        throughput(r),
        users_and_endpoints(r),
        resources_vs_users(r),
        latency_distribution(r),
    ];
    // A knee chart only means something with several steps, or when the
    // caller found a knee to mark.
    if r.steps.len() > 1 || input.knee.is_some() {
        plans.push(knee(input));
    }
    plans
}

/// Why a timeline chart may be empty.
fn timeline_no_data(r: &RunResult, what: &str) -> String {
    if r.timeline.is_empty() {
        "the run recorded no timeline samples".to_string()
    } else {
        format!("no sample of the timeline measured {what}")
    }
}

fn over_time(r: &RunResult, value: impl Fn(&Sample) -> f64) -> Vec<(f64, f64)> {
    r.timeline.iter().map(|s| (s.t_s, value(s))).collect()
}

/// Contiguous runs of one phase in the timeline. A sample covers the second
/// that ends at its `t_s`, so a band starts one second before its first
/// sample.
fn phase_bands(timeline: &[Sample]) -> Vec<Band> {
    let mut bands: Vec<Band> = Vec::new();
    for s in timeline {
        match bands.last_mut() {
            Some(b) if b.label == s.phase => b.to = s.t_s,
            _ => bands.push(Band {
                label: s.phase.clone(),
                colour: phase_colour(&s.phase),
                from: s.t_s - 1.0,
                to: s.t_s,
            }),
        }
    }
    bands
}

fn slo_levels(panel: &mut Panel, r: &RunResult) {
    panel.level(
        format!(
            "objective: p99 delivery {} ms",
            figures::ms(r.slo.p99_delivery_ms)
        ),
        DARK_BLUE,
        r.slo.p99_delivery_ms,
    );
    panel.level(
        format!(
            "objective: p99 post ack {} ms",
            figures::ms(r.slo.p99_post_ack_ms)
        ),
        DARK_ORANGE,
        r.slo.p99_post_ack_ms,
    );
}

fn latency_over_time(r: &RunResult) -> ChartPlan {
    let mut p = Panel::new(
        "seconds since start",
        "latency (ms, log scale)",
        XAxis::Linear,
        YScale::Log,
        timeline_no_data(r, "a latency"),
    );
    p.bands = phase_bands(&r.timeline);
    p.series(
        "delivery p50",
        LIGHT_BLUE,
        Mark::Line,
        over_time(r, |s| s.delivery_p50_ms),
    );
    p.series(
        "delivery p99",
        BLUE,
        Mark::Line,
        over_time(r, |s| s.delivery_p99_ms),
    );
    p.series(
        "post ack p50",
        LIGHT_ORANGE,
        Mark::Line,
        over_time(r, |s| s.post_ack_p50_ms),
    );
    p.series(
        "post ack p99",
        ORANGE,
        Mark::Line,
        over_time(r, |s| s.post_ack_p99_ms),
    );
    slo_levels(&mut p, r);
    ChartPlan {
        id: "latency-over-time",
        title: "Latency percentiles over time".to_string(),
        caption: "Per-second p50 and p99 of delivery (post to receipt by another endpoint) and of \
                  post acknowledgement; dashed lines are the objective's p99 limits; shading \
                  shows the phases. Seconds with nothing measured are gaps."
            .to_string(),
        panels: vec![p],
    }
}

fn throughput(r: &RunResult) -> ChartPlan {
    let mut p = Panel::new(
        "seconds since start",
        "per second",
        XAxis::Linear,
        YScale::Linear,
        timeline_no_data(r, "any traffic"),
    );
    p.bands = phase_bands(&r.timeline);
    p.series(
        "deliveries/s",
        BLUE,
        Mark::Line,
        over_time(r, |s| s.deliveries_per_s),
    );
    p.series(
        "requests/s",
        PURPLE,
        Mark::Line,
        over_time(r, |s| s.requests_per_s),
    );
    p.series(
        "posts/s",
        GREEN,
        Mark::Line,
        over_time(r, |s| s.posts_per_s),
    );
    p.series(
        "errors/s",
        RED,
        Mark::Line,
        over_time(r, |s| s.errors_per_s),
    );
    ChartPlan {
        id: "throughput",
        title: "Throughput over time".to_string(),
        caption: "Posts, deliveries (one per receiving endpoint), HTTP requests and failed \
                  operations per second."
            .to_string(),
        panels: vec![p],
    }
}

fn users_and_endpoints(r: &RunResult) -> ChartPlan {
    let mut p = Panel::new(
        "seconds since start",
        "count",
        XAxis::Linear,
        YScale::Linear,
        timeline_no_data(r, "an active user"),
    );
    p.bands = phase_bands(&r.timeline);
    p.series(
        "active users",
        BLUE,
        Mark::Line,
        over_time(r, |s| s.users as f64),
    );
    p.series(
        "connected endpoints",
        ORANGE,
        Mark::Line,
        over_time(r, |s| s.endpoints as f64),
    );
    ChartPlan {
        id: "users-endpoints",
        title: "Users and endpoints over time".to_string(),
        caption: "Simulated active users and connected event streams; shading shows the phases \
                  (ramp: load rising, steady: the measured window)."
            .to_string(),
        panels: vec![p],
    }
}

fn resources_vs_users(r: &RunResult) -> ChartPlan {
    let by_users = |value: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        r.timeline
            .iter()
            .map(|s| (s.users as f64, value(s)))
            .collect()
    };
    let mut cpu = Panel::new(
        "active users",
        "CPU (% of one core)",
        XAxis::Linear,
        YScale::Linear,
        timeline_no_data(r, "CPU use"),
    );
    cpu.title = Some("CPU".to_string());
    cpu.series(
        "server CPU",
        RED,
        Mark::Dots,
        by_users(|s| s.server_cpu_pct),
    );
    cpu.series(
        "load generator CPU",
        GREY,
        Mark::Dots,
        by_users(|s| s.loadgen_cpu_pct),
    );
    // Results written before the machine was sampled have none.
    if r.timeline.iter().any(|s| s.host_cpu_pct > 0.0) {
        cpu.series(
            "whole machine CPU",
            BLUE,
            Mark::Dots,
            by_users(|s| s.host_cpu_pct),
        );
    }
    let mut rss = Panel::new(
        "active users",
        "server RSS (MiB)",
        XAxis::Linear,
        YScale::Linear,
        timeline_no_data(r, "server memory"),
    );
    rss.title = Some("Memory".to_string());
    rss.series(
        "server RSS",
        PURPLE,
        Mark::Dots,
        by_users(|s| s.server_rss_mib),
    );
    ChartPlan {
        id: "resources-vs-users",
        title: "Server CPU and memory against users".to_string(),
        caption: "One point per second of the timeline. The load generator's own CPU is shown \
                  so that a saturated generator is visible next to the server it measures; the \
                  whole machine's CPU (every process, the database included, and the kernel's \
                  interrupt time) shows when the host itself ran out of cores."
            .to_string(),
        panels: vec![cpu, rss],
    }
}

/// The distribution as (nines, latency) points: for each bucket, the
/// fraction of samples at or below its upper bound.
fn distribution_points(l: &Latency) -> Vec<(f64, f64)> {
    let total: u64 = l.buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return Vec::new();
    }
    // The highest percentile a sample of `total` can resolve; the last
    // bucket (q = 1) would otherwise sit at infinity.
    let q_max = 1.0 - 1.0 / total as f64;
    let mut seen = 0u64;
    l.buckets
        .iter()
        .map(|&(bound, n)| {
            seen += n;
            let q = (seen as f64 / total as f64).min(q_max);
            (nines(q), bound)
        })
        .collect()
}

/// -log10(1 - q): 0 for the minimum, 1 for p90, 2 for p99, 3 for p99.9.
pub(crate) fn nines(q: f64) -> f64 {
    -(1.0 - q).log10()
}

/// The percentile at `x` nines, as an axis label: "90%", "99.9%".
pub(crate) fn nines_label(x: f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = if x <= 2.0 {
        0
    } else {
        (x.ceil() as usize).saturating_sub(2)
    };
    format!("{q:.decimals$}%")
}

fn latency_distribution(r: &RunResult) -> ChartPlan {
    let panels = figures::HEADLINE_KEYS
        .iter()
        .map(|&key| {
            let (name, limit, limit_colour) = match key {
                "delivery" => ("delivery", r.slo.p99_delivery_ms, DARK_BLUE),
                _ => ("post ack", r.slo.p99_post_ack_ms, DARK_ORANGE),
            };
            let no_data = if r.steps.is_empty() {
                "the run has no steps".to_string()
            } else {
                format!("no step recorded a {name} distribution")
            };
            let mut p = Panel::new(
                "percentile",
                "latency (ms, log scale)",
                XAxis::Nines,
                YScale::Log,
                no_data,
            );
            p.title = Some(name.to_string());
            for (i, step) in r.steps.iter().enumerate() {
                let points = step
                    .latencies
                    .get(key)
                    .map(distribution_points)
                    .unwrap_or_default();
                p.series(
                    &figures::users(step.users),
                    STEP_COLOURS[i % STEP_COLOURS.len()],
                    Mark::Line,
                    points,
                );
            }
            p.level(
                format!("objective: p99 {} ms", figures::ms(limit)),
                limit_colour,
                limit,
            );
            p
        })
        .collect();
    ChartPlan {
        id: "latency-distribution",
        title: "Latency distribution per step".to_string(),
        caption: "Latency at each percentile over each step's steady window, from the recorded \
                  histogram buckets; the x axis spreads the tail (90 %, 99 %, 99.9 %) evenly."
            .to_string(),
        panels,
    }
}

fn knee(input: &ReportInput) -> ChartPlan {
    let r = &input.result;
    // In user order: a refined knee search runs its steps out of order.
    let p99_by_users = |key: &str| -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = r
            .steps
            .iter()
            .filter_map(|s| s.latencies.get(key).map(|l| (s.users as f64, l.p99_ms)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    };
    let mut p = Panel::new(
        "active users",
        "p99 latency (ms, log scale)",
        XAxis::Linear,
        YScale::Log,
        if r.steps.is_empty() {
            "the run has no steps".to_string()
        } else {
            "no step measured delivery or post acknowledgement".to_string()
        },
    );
    p.series(
        "p99 delivery",
        BLUE,
        Mark::LineAndDots,
        p99_by_users("delivery"),
    );
    p.series(
        "p99 post ack",
        ORANGE,
        Mark::LineAndDots,
        p99_by_users("post_ack"),
    );
    slo_levels(&mut p, r);
    if let Some(users) = input.knee.as_ref().and_then(|k| k.users) {
        p.vlines.push(Level {
            label: format!("knee: {}", figures::users(users)),
            colour: RED,
            value: users as f64,
        });
    }
    ChartPlan {
        id: "knee",
        title: "p99 latency against users, per step".to_string(),
        caption: "Each point is one step's steady window; the dashed horizontal lines are the \
                  objective and the dashed vertical line marks the knee the analysis found."
            .to_string(),
        panels: vec![p],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_spread_the_tail_evenly() {
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
    }

    #[test]
    fn distribution_never_reaches_infinity() {
        let l = Latency {
            count: 4,
            buckets: vec![(1.0, 2), (2.0, 1), (8.0, 1)],
            ..Latency::default()
        };
        let points = distribution_points(&l);
        assert_eq!(points.len(), 3);
        assert!(points.iter().all(|(x, _)| x.is_finite()));
        // 4 samples resolve up to p75: the last bucket sits there.
        assert!((points[2].0 - nines(0.75)).abs() < 1e-9);
    }

    #[test]
    fn phases_become_contiguous_bands() {
        let sample = |t: f64, phase: &str| Sample {
            t_s: t,
            phase: phase.to_string(),
            ..Sample::default()
        };
        let timeline = [
            sample(1.0, "ramp"),
            sample(2.0, "ramp"),
            sample(3.0, "steady"),
        ];
        let bands = phase_bands(&timeline);
        assert_eq!(bands.len(), 2);
        assert_eq!((bands[0].from, bands[0].to), (0.0, 2.0));
        assert_eq!((bands[1].from, bands[1].to), (2.0, 3.0));
    }
}
