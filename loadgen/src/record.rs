//! What a run measures while it runs: latency histograms per operation (for
//! the current second and for the current measurement window), counts,
//! errors by code, and what clients retried and recovered from.
//!
//! An *error* is an operation that finally failed, as its user would see it.
//! A failed attempt that the client retries (a refusal with `Retry-After`, a
//! connection attempt to a node that is down, a lost stream before its
//! reconnect) is *retried*: counted apart, by operation and reason, and not
//! an error; if the retries end in failure, that failure is the error.
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
    retried: BTreeMap<String, u64>,
    tallies: BTreeMap<&'static str, u64>,
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
    pub retried: u64,
    pub post_ack: Option<Latency>,
    pub delivery: Option<Latency>,
}

/// One window's figures, for a step of the results.
#[derive(Debug, Default)]
pub struct WindowFigures {
    pub latencies: BTreeMap<String, Latency>,
    pub operations: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Failed attempts retried (not errors), by `<operation>:<reason>`.
    pub retried: BTreeMap<String, u64>,
    /// Counts that are not operations (acknowledged posts by room class).
    pub tallies: BTreeMap<String, u64>,
}

/// A histogram that crosses process boundaries: HdrHistogram's V2 encoding
/// in base64, so a shard's latencies merge exactly, not as percentiles.
#[derive(Clone, Debug)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(histogram())
    }
}

impl Hist {
    /// Adds `other`'s counts (both have the recorder's bounds).
    pub fn merge(&mut self, other: &Hist) {
        if self.0.add(&other.0).is_err() {
            // Bounds differ only if a peer was built differently: keep every
            // value anyway, at the cost of exactness above our bounds.
            for v in other.0.iter_recorded() {
                self.0
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }
}

impl serde::Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        use hdrhistogram::serialization::Serializer as _;
        let mut bytes = Vec::new();
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(&self.0, &mut bytes)
            .map_err(|e| serde::ser::Error::custom(format!("histogram: {e:?}")))?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

impl<'de> serde::Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)?;
        hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map(Hist)
            .map_err(|e| serde::de::Error::custom(format!("histogram: {e:?}")))
    }
}

/// One second of one recorder, mergeable with the same second of others.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct RawSecond {
    pub posts: u64,
    pub deliveries: u64,
    pub requests: u64,
    pub errors: u64,
    #[serde(default)]
    pub retried: u64,
    pub post_ack: Option<Hist>,
    pub delivery: Option<Hist>,
}

fn merge_opt(into: &mut Option<Hist>, from: &Option<Hist>) {
    match (into.as_mut(), from) {
        (Some(a), Some(b)) => a.merge(b),
        (None, Some(b)) => *into = Some(b.clone()),
        _ => {}
    }
}

impl RawSecond {
    pub fn merge(&mut self, o: &RawSecond) {
        self.posts += o.posts;
        self.deliveries += o.deliveries;
        self.requests += o.requests;
        self.errors += o.errors;
        self.retried += o.retried;
        merge_opt(&mut self.post_ack, &o.post_ack);
        merge_opt(&mut self.delivery, &o.delivery);
    }

    pub fn figures(&self) -> SecondFigures {
        SecondFigures {
            posts: self.posts,
            deliveries: self.deliveries,
            requests: self.requests,
            errors: self.errors,
            retried: self.retried,
            post_ack: self.post_ack.as_ref().map(|h| summary(&h.0, false)),
            delivery: self.delivery.as_ref().map(|h| summary(&h.0, false)),
        }
    }
}

/// One measurement window of one recorder, mergeable with others.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct RawWindow {
    pub latencies: BTreeMap<String, Hist>,
    pub operations: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    #[serde(default)]
    pub retried: BTreeMap<String, u64>,
    #[serde(default)]
    pub tallies: BTreeMap<String, u64>,
}

impl RawWindow {
    pub fn merge(&mut self, o: &RawWindow) {
        for (k, h) in &o.latencies {
            self.latencies.entry(k.clone()).or_default().merge(h);
        }
        for (k, v) in &o.operations {
            *self.operations.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &o.retried {
            *self.retried.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &o.tallies {
            *self.tallies.entry(k.clone()).or_insert(0) += v;
        }
    }

    pub fn figures(&self) -> WindowFigures {
        WindowFigures {
            latencies: self
                .latencies
                .iter()
                .map(|(k, h)| (k.clone(), summary(&h.0, true)))
                .collect(),
            operations: self.operations.clone(),
            errors: self.errors.clone(),
            retried: self.retried.clone(),
            tallies: self.tallies.clone(),
        }
    }
}

/// Records one latency (already clamped) in `key`'s histogram of `map`.
fn sample(map: &mut BTreeMap<&'static str, Histogram<u64>>, key: &'static str, us: u64) {
    map.entry(key)
        .or_insert_with(histogram)
        .saturating_record(us);
}

impl State {
    fn ok(&mut self, op: &'static str, latency_us: u64) {
        let v = latency_us.clamp(1, MAX_US);
        sample(&mut self.second, op, v);
        self.second_counts.requests += (op != "delivery") as u64;
        if op == "post_ack" {
            self.second_counts.posts += 1;
        }
        if op == "delivery" {
            self.second_counts.deliveries += 1;
        }
        if self.in_window {
            sample(&mut self.window, op, v);
            *self.window_counts.operations.entry(op).or_insert(0) += 1;
        }
    }

    fn breakdown(&mut self, key: &'static str, latency_us: u64) {
        if self.in_window {
            sample(&mut self.window, key, latency_us.clamp(1, MAX_US));
        }
    }
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
        self.lock().ok(op, latency_us);
    }

    /// A latency that breaks down samples already recorded under another
    /// operation (deliveries by node): kept in the window's histograms
    /// only, so that it adds no operation, request or per-second figure.
    pub fn breakdown(&self, key: &'static str, latency_us: u64) {
        self.lock().breakdown(key, latency_us);
    }

    /// A delivery and the latencies that break it down, under one lock (a
    /// fan-out records thousands at once from every thread).
    pub fn delivery(&self, latency_us: u64, breakdowns: &[(&'static str, u64)]) {
        let mut s = self.lock();
        s.ok("delivery", latency_us);
        for (key, us) in breakdowns {
            s.breakdown(key, *us);
        }
    }

    /// A completed operation without a latency of its own (an endpoint's
    /// stream found open at the end of a window).
    pub fn succeeded(&self, op: &'static str) {
        let mut s = self.lock();
        if s.in_window {
            *s.window_counts.operations.entry(op).or_insert(0) += 1;
        }
    }

    /// Counts one `what` in the window: a fact, not an operation (it does
    /// not enter the error rate).
    pub fn tally(&self, what: &'static str) {
        let mut s = self.lock();
        if s.in_window {
            *s.window_counts.tallies.entry(what).or_insert(0) += 1;
        }
    }

    /// A failed attempt of `op` that the client retries, and why (`busy`,
    /// `node_down`, `closed:1006`, ...): counted apart, not an error.
    pub fn retried(&self, op: &'static str, why: &str) {
        let key = format!("{op}:{why}");
        let mut s = self.lock();
        if s.in_window {
            *s.window_counts.retried.entry(key.clone()).or_insert(0) += 1;
        }
        *s.second_counts.retried.entry(key).or_insert(0) += 1;
    }

    /// An operation that finally failed, and why (a protocol error code,
    /// `timeout`, ...): an error.
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

    /// The raw figures of the second that just ended; starts the next one.
    pub fn take_second_raw(&self) -> RawSecond {
        let mut s = self.lock();
        let mut second = std::mem::take(&mut s.second);
        let c = std::mem::take(&mut s.second_counts);
        RawSecond {
            posts: c.posts,
            deliveries: c.deliveries,
            requests: c.requests,
            errors: c.errors.values().sum(),
            retried: c.retried.values().sum(),
            post_ack: second.remove("post_ack").map(Hist),
            delivery: second.remove("delivery").map(Hist),
        }
    }

    /// The figures of the second that just ended; starts the next one.
    pub fn take_second(&self) -> SecondFigures {
        self.take_second_raw().figures()
    }

    /// The raw figures of the window so far; starts a new window.
    pub fn take_window_raw(&self) -> RawWindow {
        let mut s = self.lock();
        let window = std::mem::take(&mut s.window);
        let c = std::mem::take(&mut s.window_counts);
        RawWindow {
            latencies: window
                .into_iter()
                .map(|(k, h)| (k.to_owned(), Hist(h)))
                .collect(),
            operations: c
                .operations
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            errors: c.errors,
            retried: c.retried,
            tallies: c.tallies.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    /// The figures of the window so far; starts a new window.
    pub fn take_window(&self) -> WindowFigures {
        self.take_window_raw().figures()
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
        r.retried("join", "busy");
        r.retried("join", "busy");
        r.set_window(false);
        r.retried("join", "busy");
        r.ok("post_ack", 900_000);
        let w = r.take_window();
        let p = &w.latencies["post_ack"];
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{}", p.p50_ms);
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{}", p.p99_ms);
        assert_eq!(p.buckets.iter().map(|b| b.1).sum::<u64>(), 100);
        assert_eq!(w.operations["post_ack"], 101);
        assert_eq!(w.errors["post_ack:rate_limited"], 1);
        // Retried attempts are counted apart: neither operations nor errors.
        assert_eq!(w.retried["join:busy"], 2);
        assert!(!w.operations.contains_key("join"));
        let s = r.take_second();
        assert_eq!(s.posts, 102);
        assert_eq!(s.errors, 1);
        assert_eq!(s.retried, 3);
        assert!(r.take_second().post_ack.is_none());
    }

    #[test]
    fn a_breakdown_adds_a_histogram_but_no_operation() {
        let r = Recorder::default();
        r.breakdown("delivery_cross_node", 5_000);
        r.set_window(true);
        for us in [1_000, 2_000] {
            r.ok("delivery", us);
        }
        r.breakdown("delivery_same_node", 1_000);
        r.breakdown("delivery_cross_node", 2_000);
        // A delivery with its breakdowns at once.
        r.delivery(3_000, &[("delivery_cross_node", 3_000)]);
        let w = r.take_window();
        assert_eq!(w.latencies["delivery"].count, 3);
        assert_eq!(w.latencies["delivery_same_node"].count, 1);
        // The sample before the window is not in it.
        assert_eq!(w.latencies["delivery_cross_node"].count, 2);
        assert!((w.latencies["delivery_cross_node"].max_ms - 3.0).abs() < 0.01);
        assert_eq!(w.operations.keys().collect::<Vec<_>>(), vec!["delivery"]);
        let s = r.take_second();
        assert_eq!((s.deliveries, s.requests), (3, 0));
    }

    #[test]
    fn windows_merged_across_processes_equal_one_recorder_of_everything() {
        let (a, b, all) = (
            Recorder::default(),
            Recorder::default(),
            Recorder::default(),
        );
        for r in [&a, &b, &all] {
            r.set_window(true);
        }
        for i in 1..=1000u64 {
            let one = if i % 3 == 0 { &a } else { &b };
            one.ok("delivery", i * 37);
            all.ok("delivery", i * 37);
        }
        a.failed("post_ack", "busy");
        all.failed("post_ack", "busy");
        b.retried("connect", "node_down");
        all.retried("connect", "node_down");
        // Through the wire format, as a shard process sends it.
        let wire = |r: &Recorder| -> RawWindow {
            serde_json::from_str(&serde_json::to_string(&r.take_window_raw()).unwrap()).unwrap()
        };
        let mut merged = wire(&a);
        merged.merge(&wire(&b));
        let (m, w) = (merged.figures(), all.take_window());
        assert_eq!(
            format!("{:?}", m.latencies["delivery"]),
            format!("{:?}", w.latencies["delivery"])
        );
        assert_eq!(m.latencies["delivery"].count, 1000);
        assert_eq!(m.operations, w.operations);
        assert_eq!(m.errors, w.errors);
        assert_eq!(m.retried, w.retried);
        assert_eq!(m.retried["connect:node_down"], 1);
    }
}
