//! Test data: a synthetic run shaped like a real knee run of two steps.
//!
//! THIS IS NOT A MEASUREMENT. Every figure below is generated from formulas
//! so the tests are deterministic; none of it describes any server.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeMap;

use reports::{Knee, ReportInput, Verdict, VerdictRow};
use scenarios::results::{
    Correctness, GeneratorHealth, Latency, Machine, RunResult, Sample, Step, RESULTS_SCHEMA,
};
use scenarios::{Claim, Slo};

/// Seconds of the synthetic timeline: provision 1-20, ramp 21-80, steady
/// 81-200 (10,000 users), ramp 201-260, steady 261-380 (20,000 users),
/// drain 381-400.
pub const SECONDS: u32 = 400;

/// A latency distribution shaped like a log-logistic one with the given
/// median and spread, as histogram buckets, with the percentiles read off
/// the buckets the way the load generator reads them off its HdrHistogram.
pub fn latency(median_ms: f64, spread: f64, count: u64) -> Latency {
    let mut buckets = Vec::new();
    let mut bound = 0.25;
    let mut below = 0u64;
    while below < count {
        bound *= 1.2;
        let z = (f64::ln(bound) - f64::ln(median_ms)) / spread;
        let cdf = 1.0 / (1.0 + (-z).exp());
        let at_or_below = if cdf > 0.99995 {
            count
        } else {
            (cdf * count as f64).round() as u64
        };
        if at_or_below > below {
            buckets.push(((bound * 100.0).round() / 100.0, at_or_below - below));
            below = at_or_below;
        }
    }
    let percentile = |q: f64| {
        let wanted = (q * count as f64).ceil() as u64;
        let mut seen = 0;
        for &(b, n) in &buckets {
            seen += n;
            if seen >= wanted {
                return b;
            }
        }
        buckets.last().map_or(0.0, |b| b.0)
    };
    let mean = buckets.iter().map(|&(b, n)| b * n as f64).sum::<f64>() / count as f64;
    Latency {
        count,
        mean_ms: (mean * 100.0).round() / 100.0,
        p50_ms: percentile(0.5),
        p90_ms: percentile(0.9),
        p99_ms: percentile(0.99),
        p999_ms: percentile(0.999),
        max_ms: buckets.last().map_or(0.0, |b| b.0),
        buckets,
    }
}

fn users_at(t: u32) -> u64 {
    match t {
        0..=20 => 0,
        21..=80 => (t - 20) as u64 * 10_000 / 60,
        81..=200 => 10_000,
        201..=260 => 10_000 + (t - 200) as u64 * 10_000 / 60,
        261..=380 => 20_000,
        _ => 20_000 - (t.min(400) - 380) as u64 * 1_000,
    }
}

fn phase_at(t: u32) -> &'static str {
    match t {
        0..=20 => "provision",
        21..=80 | 201..=260 => "ramp",
        81..=200 | 261..=380 => "steady",
        _ => "drain",
    }
}

/// Deterministic wobble in [-1, 1], so lines look measured rather than drawn.
fn wobble(t: u32, k: f64) -> f64 {
    let t = t as f64;
    ((t * 0.37 * k).sin() * 0.6 + (t * 1.91 * k).cos() * 0.4).clamp(-1.0, 1.0)
}

fn sample(t: u32) -> Sample {
    let users = users_at(t);
    let load = users as f64 / 20_000.0;
    let measuring = users > 0;
    let lat = |base: f64, k: f64| {
        if measuring {
            ((base * (1.0 + 0.15 * wobble(t, k))) * 100.0).round() / 100.0
        } else {
            0.0
        }
    };
    let posts = users as f64 * 0.01 * (1.0 + 0.05 * wobble(t, 0.7));
    Sample {
        t_s: t as f64,
        phase: phase_at(t).to_string(),
        users,
        endpoints: users * 13 / 10,
        posts_per_s: posts,
        deliveries_per_s: posts * 38.0,
        requests_per_s: users as f64 * 0.05 * (1.0 + 0.04 * wobble(t, 1.3)),
        errors_per_s: if (300..=305).contains(&t) { 1.0 } else { 0.0 },
        post_ack_p50_ms: lat(4.0 + 10.0 * load, 1.1),
        post_ack_p99_ms: lat(20.0 + 160.0 * load * load, 1.7),
        delivery_p50_ms: lat(8.0 + 18.0 * load, 0.9),
        delivery_p99_ms: lat(40.0 + 150.0 * load * load, 2.3),
        delivery_max_ms: lat(80.0 + 300.0 * load, 2.9),
        server_cpu_pct: 4.0 + 150.0 * load + 6.0 * wobble(t, 0.5),
        server_rss_mib: 118.0 + 0.0045 * users as f64,
        loadgen_cpu_pct: 3.0 + 55.0 * load + 3.0 * wobble(t, 0.8),
        host_cpu_pct: (12.0 + 210.0 * load + 6.0 * wobble(t, 0.7)).min(200.0),
    }
}

fn step(users: u64, window: (f64, f64), scale: f64) -> Step {
    let seconds = window.1 - window.0;
    let posts = (users as f64 * 0.01 * seconds) as u64;
    let mut latencies = BTreeMap::new();
    latencies.insert(
        "delivery".to_string(),
        latency(9.0 + 16.0 * scale, 0.32, posts * 38),
    );
    latencies.insert(
        "post_ack".to_string(),
        latency(5.0 + 9.0 * scale, 0.3, posts),
    );
    latencies.insert(
        "history".to_string(),
        latency(14.0 + 20.0 * scale, 0.3, posts / 20),
    );
    latencies.insert(
        "join".to_string(),
        latency(6.0 + 4.0 * scale, 0.25, posts / 50),
    );
    latencies.insert(
        "search".to_string(),
        latency(30.0 + 40.0 * scale, 0.3, posts / 100),
    );
    let operations: BTreeMap<String, u64> = latencies
        .iter()
        .map(|(k, l)| (k.clone(), l.count))
        .collect();
    let (errors, correctness) = if users < 20_000 {
        (
            BTreeMap::new(),
            Correctness {
                acknowledged: posts,
                expected_deliveries: posts * 38,
                delivered: posts * 38,
                ..Correctness::default()
            },
        )
    } else {
        (
            BTreeMap::from([("timeout".to_string(), 4), ("http:503".to_string(), 2)]),
            Correctness {
                acknowledged: posts,
                expected_deliveries: posts * 38,
                delivered: posts * 38,
                reordered: 1,
                witnesses: vec![
                    "room 17: endpoint 4411 received seq 9002 before seq 9001".to_string()
                ],
                ..Correctness::default()
            },
        )
    };
    Step {
        users,
        endpoints: users * 13 / 10,
        rooms: users / 4,
        window_start_s: window.0,
        window_end_s: window.1,
        latencies,
        operations,
        errors,
        retried: if users < 20_000 {
            BTreeMap::new()
        } else {
            BTreeMap::from([
                ("connect:node_down".to_string(), 120),
                ("join:busy".to_string(), 35),
                ("stream:closed:1006".to_string(), 90),
            ])
        },
        posts_by_class: BTreeMap::from([
            ("small".to_string(), 30 * users / 1000),
            ("medium".to_string(), 2 * users / 1000),
            ("large".to_string(), users / 10_000),
        ]),
        events_received: BTreeMap::from([
            ("message".to_string(), 60 * users),
            ("presence".to_string(), 800 * users),
            ("participant_joined".to_string(), 3 * users),
            ("participant_left".to_string(), 3 * users),
        ]),
        arrived_users: None,
        correctness,
        server_cpu_mean_pct: 4.0 + 150.0 * scale,
        server_cpu_peak_pct: 10.0 + 160.0 * scale,
        server_rss_peak_mib: 118.0 + 0.0045 * users as f64 + 4.0,
        host_cpu_busy_pct: None,
        host_cpu_saturated_pct: None,
    }
}

/// The synthetic run (test data, see the module docs).
pub fn synthetic_run() -> RunResult {
    RunResult {
        schema: RESULTS_SCHEMA,
        scenario: "knee-test".to_string(),
        description: "Synthetic test data: two steps of a knee search (not a measurement)"
            .to_string(),
        claim: Some(Claim {
            text: "20,000 active users per front end".to_string(),
            users: 20_000,
            host: None,
        }),
        slo: Slo::default(),
        seed: 42,
        target: "embedded reference server".to_string(),
        machine: Machine {
            hostname: "test-host".to_string(),
            cpu_model: "Synthetic CPU @ 3.0GHz".to_string(),
            cores: 2,
            memory_gib: 24.0,
            kernel: "6.1.0-test".to_string(),
            fd_limit: (1_048_576, 1_048_576),
            cpu_mhz: Some(3000.0),
            virtual_machine: Some(false),
        },
        command: "loadgen run --scenario knee-test --seed 42 | tee log".to_string(),
        started_at: "2026-12-01T10:00:00Z".to_string(),
        duration_s: SECONDS as f64,
        completed: true,
        ended_because: None,
        steps: vec![
            step(10_000, (100.0, 200.0), 0.5),
            step(20_000, (280.0, 380.0), 1.0),
        ],
        timeline: (1..=SECONDS).map(sample).collect(),
        generator: GeneratorHealth {
            cpu_peak_pct: 64.0,
            cpu_mean_pct: 41.5,
            cores: 2,
            saturated: false,
            reason: None,
            schedule_lag_max_ms: 3.2,
        },
        limits_hit: Vec::new(),
        not_run: Vec::new(),
    }
}

/// Verdict rows as a caller would compute them for [`synthetic_run`]
/// (test data: written by hand here, computed by `scenarios` in real use).
pub fn synthetic_verdicts() -> Vec<VerdictRow> {
    vec![
        VerdictRow {
            claim: "p99 delivery at 20,000 users".to_string(),
            target: "≤ 250 ms".to_string(),
            measured: "123 ms".to_string(),
            verdict: Verdict::Holds,
            why: "steady window 280–380 s: p99 <= 250 ms & no gap".to_string(),
        },
        VerdictRow {
            claim: "p99 post acknowledgement at 20,000 users".to_string(),
            target: "≤ 200 ms".to_string(),
            measured: "59.3 ms".to_string(),
            verdict: Verdict::Holds,
            why: "steady window 280–380 s".to_string(),
        },
        VerdictRow {
            claim: "errors at 20,000 users".to_string(),
            target: "≤ 0.1 %".to_string(),
            measured: "0.001 %".to_string(),
            verdict: Verdict::Holds,
            why: "6 of 781,600 operations failed (4 timeout, 2 http:503)".to_string(),
        },
        VerdictRow {
            claim: "delivery correctness at 20,000 users".to_string(),
            target: "nothing lost, duplicated or reordered".to_string(),
            measured: "1 reordered".to_string(),
            verdict: Verdict::DoesNotHold,
            why: "room 17: endpoint 4411 received seq 9002 before seq 9001".to_string(),
        },
        VerdictRow {
            claim: "20,000 active users per front end".to_string(),
            target: "20,000 users on the recommended server".to_string(),
            measured: "p99 delivery 123 ms".to_string(),
            verdict: Verdict::Inconclusive,
            why: "the host has 2 of 12 logical CPUs".to_string(),
        },
    ]
}

/// A complete report input around [`synthetic_run`].
pub fn synthetic_input() -> ReportInput {
    ReportInput {
        result: synthetic_run(),
        verdicts: synthetic_verdicts(),
        knee: Some(Knee {
            users: Some(10_000),
            text: "the objective holds at 10,000 users; at 20,000 a message was reordered"
                .to_string(),
        }),
        notes: vec!["Synthetic test data, not a measurement.".to_string()],
        baseline: None,
    }
}
