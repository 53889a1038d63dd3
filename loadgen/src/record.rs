//! What a run measures while it runs: latency histograms per operation (for
//! the current second and for the current measurement window), counts, and
//! errors by code.
//!
//! Latencies are recorded in microseconds into HdrHistograms (3 significant
//! digits, up to 10 minutes) and always measured from an operation's intended
//! time. One mutex guards it all: a run records at most tens of thousands of
//! values a second, far below what an uncontended lock costs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use scenarios::results::Latency;

/// Highest latency a histogram holds: 10 minutes in microseconds.
const MAX_US: u64 = 600_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

#[derive(Default)]
struct Counters {
    operations: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
    posts: u64,
    deliveries: u64,
    requests: u64,
}

struct State {
    /// Histograms of the current second (reset by [`Recorder::take_second`]).
    second: BTreeMap<&'static str, Histogram<u64>>,
    second_counts: Counters,
    /// Histograms of the current window (reset by [`Recorder::take_window`]).
    window: BTreeMap<&'static str, Histogram<u64>>,
    window_counts: Counters,
    /// Whether operations currently count towards the window.
    in_window: bool,
}

/// The run's measurements.
pub struct Recorder {
    state: Mutex<State>,
}

/// One second's figures, for the timeline.
#[derive(Debug, Default)]
pub struct SecondFigures {
    pub posts: u64,
    pub deliveries: u64,
    pub requests: u64,
    pub errors: u64,
    pub post_ack: Option<Latency>,
    pub delivery: Option<Latency>,
}

/// One window's figures, for a step of the results.
#[derive(Debug, Default)]
pub struct WindowFigures {
    pub latencies: BTreeMap<String, Latency>,
    pub operations: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            state: Mutex::new(State {
                second: BTreeMap::new(),
                second_counts: Counters::default(),
                window: BTreeMap::new(),
                window_counts: Counters::default(),
                in_window: false,
            }),
        }
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves only counters half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts or stops counting towards the window.
    pub fn set_window(&self, on: bool) {
        self.lock().in_window = on;
    }

    /// A completed operation and its latency from the intended time.
    pub fn ok(&self, op: &'static str, latency_us: u64) {
        let mut s = self.lock();
        let v = latency_us.clamp(1, MAX_US);
        s.second
            .entry(op)
            .or_insert_with(histogram)
            .saturating_record(v);
        s.second_counts.requests += (op != "delivery") as u64;
        if op == "post_ack" {
            s.second_counts.posts += 1;
        }
        if op == "delivery" {
            s.second_counts.deliveries += 1;
        }
        if s.in_window {
            s.window
                .entry(op)
                .or_insert_with(histogram)
                .saturating_record(v);
            *s.window_counts.operations.entry(op).or_insert(0) += 1;
        }
    }

    /// A failed operation and why (a protocol error code, `timeout`, ...).
    pub fn failed(&self, op: &'static str, code: &str) {
        let mut s = self.lock();
        s.second_counts.requests += 1;
        *s.second_counts.errors.entry(code.to_owned()).or_insert(0) += 1;
        if s.in_window {
            *s.window_counts.operations.entry(op).or_insert(0) += 1;
            *s.window_counts
                .errors
                .entry(format!("{op}:{code}"))
                .or_insert(0) += 1;
        }
    }

    /// The figures of the second that just ended; starts the next one.
    pub fn take_second(&self) -> SecondFigures {
        let mut s = self.lock();
        let second = std::mem::take(&mut s.second);
        let c = std::mem::take(&mut s.second_counts);
        SecondFigures {
            posts: c.posts,
            deliveries: c.deliveries,
            requests: c.requests,
            errors: c.errors.values().sum(),
            post_ack: second.get("post_ack").map(|h| summary(h, false)),
            delivery: second.get("delivery").map(|h| summary(h, false)),
        }
    }

    /// The figures of the window so far; starts a new window.
    pub fn take_window(&self) -> WindowFigures {
        let mut s = self.lock();
        let window = std::mem::take(&mut s.window);
        let c = std::mem::take(&mut s.window_counts);
        WindowFigures {
            latencies: window
                .iter()
                .map(|(k, h)| (k.to_string(), summary(h, true)))
                .collect(),
            operations: c
                .operations
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            errors: c.errors,
        }
    }
}

/// A histogram as the results format holds it, in milliseconds.
pub fn summary(h: &Histogram<u64>, with_buckets: bool) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut buckets = Vec::new();
    if with_buckets && !h.is_empty() {
        // Logarithmic buckets from 0.1 ms doubling: enough for a chart.
        let mut bound_us = 100u64;
        let mut below = 0u64;
        loop {
            let upto = h.count_between(0, bound_us);
            if upto > below {
                buckets.push((ms(bound_us), upto - below));
            }
            below = upto;
            if bound_us >= h.max() || bound_us >= MAX_US {
                break;
            }
            bound_us *= 2;
        }
    }
    Latency {
        count: h.len(),
        mean_ms: h.mean() / 1000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_figures_hold_only_what_was_recorded_inside_the_window() {
        let r = Recorder::default();
        r.ok("post_ack", 5_000);
        r.set_window(true);
        for i in 1..=100 {
            r.ok("post_ack", i * 1000);
        }
        r.failed("post_ack", "rate_limited");
        r.set_window(false);
        r.ok("post_ack", 900_000);
        let w = r.take_window();
        let p = &w.latencies["post_ack"];
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{}", p.p50_ms);
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{}", p.p99_ms);
        assert_eq!(p.buckets.iter().map(|b| b.1).sum::<u64>(), 100);
        assert_eq!(w.operations["post_ack"], 101);
        assert_eq!(w.errors["post_ack:rate_limited"], 1);
        let s = r.take_second();
        assert_eq!(s.posts, 102);
        assert_eq!(s.errors, 1);
        assert!(r.take_second().post_ack.is_none());
    }
}
