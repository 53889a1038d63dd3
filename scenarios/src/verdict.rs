//! Verdicts, computed from measured results against the objective.
//!
//! A step meets the objective when every criterion holds over its steady
//! window: p99 delivery, p99 post acknowledgement and p99 history read at
//! most their targets, errors below the ratio, and a clean correctness check.
//! An operation the run was supposed to measure but did not is a failure
//! ("not measured"), never a pass.

use crate::results::{RunResult, Step};
use crate::Slo;

/// One criterion of the objective at one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub what: String,
    pub target: String,
    pub measured: String,
    pub holds: bool,
}

/// All criteria at one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub users: u64,
    pub checks: Vec<Check>,
    pub holds: bool,
    /// The failing criteria in words, or "every criterion holds".
    pub why: String,
}

/// The verdict on a claim.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimVerdict {
    pub claim: String,
    pub target: String,
    pub measured: String,
    pub holds: bool,
    pub why: String,
}

/// What a stepped run found.
#[derive(Clone, Debug, PartialEq)]
pub struct Knee {
    /// The largest user count whose step met the objective.
    pub capacity: Option<u64>,
    /// The first user count that broke it, and why.
    pub broke_at: Option<(u64, String)>,
}

fn latency_check(step: &Step, key: &str, what: &str, target_ms: f64) -> Check {
    match step.latencies.get(key).filter(|l| l.count > 0) {
        Some(l) => Check {
            what: what.into(),
            target: format!("p99 ≤ {target_ms} ms"),
            measured: format!("p99 {:.1} ms ({} samples)", l.p99_ms, l.count),
            holds: l.p99_ms <= target_ms,
        },
        None => Check {
            what: what.into(),
            target: format!("p99 ≤ {target_ms} ms"),
            measured: "not measured".into(),
            holds: false,
        },
    }
}

/// Judges one step against the objective.
pub fn judge(step: &Step, slo: &Slo) -> Judgement {
    let mut checks = vec![
        latency_check(step, "delivery", "delivery latency", slo.p99_delivery_ms),
        latency_check(
            step,
            "post_ack",
            "post acknowledgement",
            slo.p99_post_ack_ms,
        ),
        latency_check(step, "history", "history read", slo.p99_history_ms),
    ];
    let ops: u64 = step.operations.values().sum();
    let errors: u64 = step.errors.values().sum();
    let pct = if ops == 0 {
        0.0
    } else {
        100.0 * errors as f64 / ops as f64
    };
    checks.push(Check {
        what: "errors".into(),
        target: format!("< {} % of operations", slo.max_error_pct),
        measured: if ops == 0 {
            "no operations".into()
        } else {
            format!("{pct:.3} % ({errors} of {ops})")
        },
        holds: ops > 0 && pct < slo.max_error_pct,
    });
    let c = &step.correctness;
    checks.push(Check {
        what: "correctness".into(),
        target: "nothing lost, duplicated, reordered or skipped".into(),
        measured: format!(
            "{} lost, {} duplicated, {} reordered, {} gaps of {} owed deliveries",
            c.lost, c.duplicated, c.reordered, c.sequence_gaps, c.expected_deliveries
        ),
        holds: c.is_clean() && c.acknowledged > 0,
    });
    let failing: Vec<String> = checks
        .iter()
        .filter(|c| !c.holds)
        .map(|c| format!("{}: {} (target {})", c.what, c.measured, c.target))
        .collect();
    Judgement {
        users: step.users,
        holds: failing.is_empty(),
        why: if failing.is_empty() {
            "every criterion holds".into()
        } else {
            failing.join("; ")
        },
        checks,
    }
}

/// Why a run cannot support a verdict, if it cannot.
pub fn invalid_because(result: &RunResult) -> Option<String> {
    if result.generator.saturated {
        return Some(format!(
            "invalid run: the load generator saturated ({})",
            result
                .generator
                .reason
                .as_deref()
                .unwrap_or("no reason given")
        ));
    }
    if !result.limits_hit.is_empty() {
        return Some(format!(
            "invalid run: host limit reached ({})",
            result.limits_hit.join("; ")
        ));
    }
    if !result.completed {
        return Some(format!(
            "invalid run: it did not complete ({})",
            result.ended_because.as_deref().unwrap_or("no reason given")
        ));
    }
    None
}

/// The verdict on the run's claim: the step at the claim's user count must
/// meet the objective, in a valid run.
pub fn claim_verdict(result: &RunResult) -> Option<ClaimVerdict> {
    let claim = result.claim.as_ref()?;
    let target = format!(
        "{} users: p99 delivery ≤ {} ms, p99 post ack ≤ {} ms, p99 history ≤ {} ms, errors < {} %, nothing lost",
        claim.users,
        result.slo.p99_delivery_ms,
        result.slo.p99_post_ack_ms,
        result.slo.p99_history_ms,
        result.slo.max_error_pct
    );
    let Some(step) = result.steps.iter().find(|s| s.users == claim.users) else {
        if let Some(n) = result.not_run.iter().find(|n| n.users == claim.users) {
            return Some(ClaimVerdict {
                claim: claim.text.clone(),
                target,
                measured: "not measured".into(),
                holds: false,
                why: format!("not verifiable on this host: {}", n.reason),
            });
        }
        let ran: Vec<String> = result.steps.iter().map(|s| s.users.to_string()).collect();
        return Some(ClaimVerdict {
            claim: claim.text.clone(),
            target,
            measured: "not measured".into(),
            holds: false,
            why: format!(
                "no step ran at {} users (steps: {})",
                claim.users,
                if ran.is_empty() {
                    "none".into()
                } else {
                    ran.join(", ")
                }
            ),
        });
    };
    let j = judge(step, &result.slo);
    let measured = j
        .checks
        .iter()
        .map(|c| format!("{}: {}", c.what, c.measured))
        .collect::<Vec<_>>()
        .join("; ");
    let (holds, why) = match invalid_because(result) {
        Some(reason) => (false, reason),
        None => (j.holds, j.why),
    };
    Some(ClaimVerdict {
        claim: claim.text.clone(),
        target,
        measured,
        holds,
        why,
    })
}

/// The capacity a stepped run found: the largest step that met the
/// objective before the first that broke it.
pub fn knee(result: &RunResult) -> Option<Knee> {
    if result.steps.len() < 2 && result.claim.is_some() {
        return None;
    }
    let mut capacity = None;
    for s in &result.steps {
        let j = judge(s, &result.slo);
        if j.holds {
            capacity = Some(s.users);
        } else {
            return Some(Knee {
                capacity,
                broke_at: Some((s.users, j.why)),
            });
        }
    }
    Some(Knee {
        capacity,
        broke_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Correctness, GeneratorHealth, Latency, Machine};
    use crate::Claim;

    fn lat(p99: f64) -> Latency {
        Latency {
            count: 1000,
            p99_ms: p99,
            ..Latency::default()
        }
    }

    fn step(users: u64, delivery_p99: f64) -> Step {
        Step {
            users,
            endpoints: users * 3 / 2,
            rooms: 10,
            window_start_s: 0.0,
            window_end_s: 60.0,
            latencies: [
                ("delivery".to_string(), lat(delivery_p99)),
                ("post_ack".to_string(), lat(20.0)),
                ("history".to_string(), lat(30.0)),
            ]
            .into_iter()
            .collect(),
            operations: [("post_ack".to_string(), 10_000)].into_iter().collect(),
            errors: Default::default(),
            correctness: Correctness {
                acknowledged: 100,
                expected_deliveries: 1000,
                delivered: 1000,
                ..Correctness::default()
            },
            server_cpu_mean_pct: 0.0,
            server_cpu_peak_pct: 0.0,
            server_rss_peak_mib: 0.0,
        }
    }

    fn result(steps: Vec<Step>, claim: Option<u64>) -> RunResult {
        RunResult {
            schema: 1,
            scenario: "t".into(),
            description: String::new(),
            claim: claim.map(|users| Claim {
                text: "the claim".into(),
                users,
            }),
            slo: Slo::default(),
            seed: 1,
            target: "test".into(),
            machine: Machine::default(),
            command: String::new(),
            started_at: String::new(),
            duration_s: 1.0,
            completed: true,
            ended_because: None,
            steps,
            timeline: vec![],
            generator: GeneratorHealth::default(),
            limits_hit: vec![],
            not_run: vec![],
        }
    }

    #[test]
    fn a_step_within_every_target_holds() {
        let j = judge(&step(100, 40.0), &Slo::default());
        assert!(j.holds, "{}", j.why);
        assert_eq!(j.checks.len(), 5);
    }

    #[test]
    fn each_criterion_can_break_a_step() {
        let slo = Slo::default();
        let j = judge(&step(100, 251.0), &slo);
        assert!(
            !j.holds && j.why.starts_with("delivery latency"),
            "{}",
            j.why
        );

        let mut s = step(100, 40.0);
        s.errors.insert("post_ack:busy".into(), 11);
        let j = judge(&s, &slo);
        assert!(!j.holds && j.why.starts_with("errors"), "{}", j.why);

        let mut s = step(100, 40.0);
        s.correctness.lost = 1;
        assert!(!judge(&s, &slo).holds);

        let mut s = step(100, 40.0);
        s.latencies.remove("history");
        let j = judge(&s, &slo);
        assert!(
            !j.holds && j.why.contains("history read: not measured"),
            "{}",
            j.why
        );
    }

    #[test]
    fn a_claim_holds_only_at_its_user_count_in_a_valid_run() {
        let v = claim_verdict(&result(vec![step(20_000, 50.0)], Some(20_000))).unwrap();
        assert!(v.holds, "{}", v.why);

        let v = claim_verdict(&result(vec![step(2_000, 50.0)], Some(20_000))).unwrap();
        assert!(
            !v.holds && v.why.contains("no step ran at 20000 users"),
            "{}",
            v.why
        );

        let mut r = result(vec![step(20_000, 50.0)], Some(20_000));
        r.generator.saturated = true;
        r.generator.reason = Some("100 % CPU".into());
        let v = claim_verdict(&r).unwrap();
        assert!(!v.holds && v.why.starts_with("invalid run"), "{}", v.why);

        let mut r = result(vec![], Some(20_000));
        r.not_run.push(crate::results::NotRun {
            users: 20_000,
            endpoints: 30_000,
            reason: "the server may hold 20000 open files".into(),
        });
        let v = claim_verdict(&r).unwrap();
        assert!(
            !v.holds && v.why.starts_with("not verifiable on this host"),
            "{}",
            v.why
        );

        let mut r = result(vec![step(20_000, 50.0)], Some(20_000));
        r.limits_hit.push("fd limit".into());
        assert!(!claim_verdict(&r).unwrap().holds);
        assert!(claim_verdict(&result(vec![], None)).is_none());
    }

    #[test]
    fn the_knee_is_the_last_step_before_the_first_break() {
        let r = result(
            vec![
                step(10, 50.0),
                step(20, 90.0),
                step(30, 400.0),
                step(40, 50.0),
            ],
            None,
        );
        let k = knee(&r).unwrap();
        assert_eq!(k.capacity, Some(20));
        assert_eq!(k.broke_at.as_ref().map(|b| b.0), Some(30));
        let r = result(vec![step(10, 300.0)], None);
        assert_eq!(knee(&r).unwrap().capacity, None);
    }
}
