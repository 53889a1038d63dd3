//! Verdicts, computed from measured results against the objective, and
//! nowhere else.
//!
//! A step meets the objective when every criterion holds over its steady
//! window: p99 delivery, p99 post acknowledgement and p99 history read at
//! most their targets, errors at most `max_error_pct` percent of the
//! operations, and a clean correctness check. A criterion the run was
//! supposed to measure but did not (no samples, no operations, nothing
//! acknowledged) does not hold and says "not measured": an idle run never
//! passes.
//!
//! A verdict on a claim also needs a valid run: one whose generator kept up,
//! that hit no host limit and that ran to its planned end. Otherwise the
//! numbers may describe the load generator or the host rather than the
//! server, and the verdict is inconclusive: "invalid run: ...".
//!
//! A claim may name the hardware it is about (the vendor's figures are for
//! its recommended server; [`crate::HostSpec`]). A run on a host that falls
//! short of it can show that the claim holds (a host with more would carry
//! the load too) but not that it fails: when the objective breaks there, the
//! verdict is inconclusive and says what the host lacks. A claim about a
//! virtual machine (or a physical one) is tested only on a host of that
//! kind.

use crate::results::{Machine, RunResult, Step, HOST_SATURATED_PCT};
use crate::{HostSpec, Slo};

/// What a run says about a claim, or a step about the objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A valid run met it.
    Holds,
    /// A valid run, on a host the claim is about, did not meet it.
    DoesNotHold,
    /// The run cannot tell: it was invalid, did not reach the claim's load,
    /// or ran on a host that cannot test the claim.
    Inconclusive,
}

impl Verdict {
    /// `Holds` or `DoesNotHold`, from a judgement of a valid run.
    pub fn of(holds: bool) -> Verdict {
        if holds {
            Verdict::Holds
        } else {
            Verdict::DoesNotHold
        }
    }
}

/// One criterion of the objective at one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// What is judged: "delivery latency", "errors", ...
    pub what: String,
    /// The objective in words: "p99 ≤ 250 ms".
    pub target: String,
    /// What was measured, in words, or "not measured".
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
    /// The claim in the vendor's words.
    pub claim: String,
    /// The claim's users and the objective, in words.
    pub target: String,
    /// What the judged step measured, in words.
    pub measured: String,
    pub verdict: Verdict,
    pub why: String,
}

/// MemTotal, which the machine's memory is read from, leaves out what the
/// firmware and the kernel keep for themselves: a 32 GiB server shows about
/// 31.3 GiB. A host whose MemTotal is within this share of a specification
/// counts as having it.
pub const MEMTOTAL_SHARE: f64 = 0.95;

/// How the measured machine compares with the hardware a claim is about.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostFit {
    /// What the machine lacks or could not be told to have, in words
    /// ("2 of 12 logical CPUs").
    pub short: Vec<String>,
    /// Why the machine is of the wrong kind (physical for a claim about a
    /// virtual machine, or the other way round, or not known), if it is.
    pub wrong_kind: Option<String>,
}

/// Compares the measured machine with a claim's hardware, field by field.
pub fn host_fit(spec: &HostSpec, m: &Machine) -> HostFit {
    let mut fit = HostFit::default();
    if let Some(cores) = spec.cores {
        if m.cores == 0 {
            fit.short.push("logical CPUs not known".into());
        } else if m.cores < cores {
            fit.short
                .push(format!("{} of {cores} logical CPUs", m.cores));
        }
    }
    if let Some(gib) = spec.memory_gib {
        if m.memory_gib <= 0.0 {
            fit.short.push("memory not known".into());
        } else if m.memory_gib < gib * MEMTOTAL_SHARE {
            fit.short
                .push(format!("{:.1} of {gib} GiB of memory", m.memory_gib));
        }
    }
    if let Some(ghz) = spec.cpu_ghz {
        match m.cpu_mhz {
            None => fit.short.push("processor clock not known".into()),
            // Half a MHz of slack for the decimal rounding of the two figures.
            Some(mhz) if mhz + 0.5 < ghz * 1000.0 => fit.short.push(format!(
                "a {:.2} GHz processor against {ghz} GHz",
                mhz / 1000.0
            )),
            Some(_) => {}
        }
    }
    fit.wrong_kind = match (spec.virtual_machine, m.virtual_machine) {
        (None, _) => None,
        (Some(want), Some(is)) if want == is => None,
        (Some(true), Some(false)) => Some(
            "the claim is about a virtual machine and this host is physical (its processor shows \
             no hypervisor)"
                .into(),
        ),
        (Some(false), Some(true)) => Some(
            "the claim is about a physical server and this host is a virtual machine (its \
             processor shows a hypervisor)"
                .into(),
        ),
        (Some(want), _) => Some(format!(
            "the claim is about a {} and whether this host is one could not be told",
            if want {
                "virtual machine"
            } else {
                "physical server"
            }
        )),
    };
    fit
}

/// Applies the claim's hardware to a verdict drawn from the measurements.
fn against_host(spec: &HostSpec, m: &Machine, verdict: Verdict, why: String) -> (Verdict, String) {
    let fit = host_fit(spec, m);
    if let Some(kind) = fit.wrong_kind {
        return match verdict {
            Verdict::Inconclusive => (verdict, format!("{why}; besides, {kind}")),
            _ => (
                Verdict::Inconclusive,
                format!(
                    "{kind}, so the run does not test the claim; the objective {} there: {why}",
                    if verdict == Verdict::Holds {
                        "held"
                    } else {
                        "did not hold"
                    }
                ),
            ),
        };
    }
    if fit.short.is_empty() {
        return (
            verdict,
            format!("{why} (the host meets the claim's: {})", spec.text),
        );
    }
    let short = fit.short.join(", ");
    match verdict {
        Verdict::Holds => (
            verdict,
            format!(
                "{why}, on a host short of the claim's ({short}; the claim is about {}): one \
                 that meets it has more to carry the load with",
                spec.text
            ),
        ),
        Verdict::DoesNotHold => (
            Verdict::Inconclusive,
            format!(
                "the objective did not hold, but this host falls short of the hardware the claim \
                 is about ({short}; the claim is about {}), so the run does not test the claim; \
                 run it on a host that meets it: {why}",
                spec.text
            ),
        ),
        Verdict::Inconclusive => (verdict, format!("{why}; besides, the host has {short}")),
    }
}

/// What a stepped run found.
#[derive(Clone, Debug, PartialEq)]
pub struct Knee {
    /// The user count of the heaviest step that met the objective below
    /// the lightest that broke it; `None` when no step below it met it.
    pub capacity: Option<u64>,
    /// The lightest user count that broke it, and why; `None` when no step
    /// did.
    pub broke_at: Option<(u64, String)>,
    /// The heaviest step above `broke_at` that met the objective anyway
    /// (a host whose figures vary from run to run), if any.
    pub held_above: Option<u64>,
    /// Why the run cannot support the finding, when it cannot (see
    /// [`invalid_because`]).
    pub invalid: Option<String>,
}

/// The operations every step must have measured, with their names in words.
const LATENCIES: [(&str, &str); 3] = [
    ("delivery", "delivery latency"),
    ("post_ack", "post acknowledgement"),
    ("history", "history read"),
];

fn latency_check(step: &Step, key: &str, what: &str, target_ms: f64) -> Check {
    let target = format!("p99 ≤ {target_ms} ms");
    match step.latencies.get(key).filter(|l| l.count > 0) {
        Some(l) => Check {
            what: what.into(),
            target,
            measured: format!("p99 {:.1} ms ({} samples)", l.p99_ms, l.count),
            // A NaN never holds.
            holds: l.p99_ms <= target_ms,
        },
        None => Check {
            what: what.into(),
            target,
            measured: "not measured".into(),
            holds: false,
        },
    }
}

/// Judges one step against the objective.
pub fn judge(step: &Step, slo: &Slo) -> Judgement {
    let targets = [slo.p99_delivery_ms, slo.p99_post_ack_ms, slo.p99_history_ms];
    let mut checks: Vec<Check> = LATENCIES
        .iter()
        .zip(targets)
        .map(|((key, what), target)| latency_check(step, key, what, target))
        .collect();

    // A step judged at its users must have had them: users still joining
    // their rooms when the window began were not part of the load.
    if let Some(arrived) = step.arrived_users {
        checks.push(Check {
            what: "load".into(),
            target: format!("all {} users joined to their rooms", step.users),
            measured: format!(
                "{arrived} of {} users had joined their rooms when the steady window began",
                step.users
            ),
            holds: arrived >= step.users,
        });
    }
    let ops: u64 = step.operations.values().sum();
    let errors: u64 = step.errors.values().sum();
    let target = format!("≤ {} % of operations", slo.max_error_pct);
    checks.push(if ops == 0 {
        Check {
            what: "errors".into(),
            target,
            measured: "not measured (no operations)".into(),
            holds: false,
        }
    } else {
        let pct = 100.0 * errors as f64 / ops as f64;
        Check {
            what: "errors".into(),
            target,
            measured: format!("{pct:.3} % ({errors} of {ops})"),
            holds: pct <= slo.max_error_pct,
        }
    });

    let c = &step.correctness;
    let target = "nothing lost, duplicated, reordered or skipped".to_owned();
    checks.push(if c.acknowledged == 0 {
        Check {
            what: "correctness".into(),
            target,
            measured: "not measured (no post acknowledged)".into(),
            holds: false,
        }
    } else {
        Check {
            what: "correctness".into(),
            target,
            measured: format!(
                "{} lost of {} owed deliveries, {} duplicated, {} reordered, {} sequence gaps, {} conflicting acknowledgements",
                c.lost,
                c.expected_deliveries,
                c.duplicated,
                c.reordered,
                c.sequence_gaps,
                c.conflicting_acks
            ),
            holds: c.is_clean(),
        }
    });

    let failing: Vec<String> = checks
        .iter()
        .filter(|c| !c.holds)
        .map(|c| format!("{}: {} (target {})", c.what, c.measured, c.target))
        .collect();
    let why = if failing.is_empty() {
        "every criterion holds".into()
    } else {
        let mut why = failing.join("; ");
        let delivery_failed = checks.iter().any(|c| c.what == LATENCIES[0].1 && !c.holds);
        if let Some(share) = generator_share(step).filter(|_| delivery_failed) {
            why.push_str("; ");
            why.push_str(&share);
        }
        if let Some(host) = host_cpu(step) {
            why.push_str("; ");
            why.push_str(&host);
        }
        why
    };
    Judgement {
        users: step.users,
        holds: failing.is_empty(),
        why,
        checks,
    }
}

/// Latency keys of the load generator that split a delivery at the
/// message's arrival on the receiving socket (the kernel's receive stamp).
pub const DELIVERY_ARRIVAL: &str = "delivery_arrival";
pub const DELIVERY_READ_LAG: &str = "delivery_read_lag";

/// How much of the delivery latency was the load generator's own wait, in
/// words, when it stamped arrivals: a planner must know whether messages
/// reached the generator late (the server, or the host's network stack) or
/// arrived in time and waited for the generator to read them (then the
/// generator needs cores of its own before the figure can blame the
/// server).
fn generator_share(step: &Step) -> Option<String> {
    let arrival = step
        .latencies
        .get(DELIVERY_ARRIVAL)
        .filter(|l| l.count > 0)?;
    let lag = step
        .latencies
        .get(DELIVERY_READ_LAG)
        .filter(|l| l.count > 0)?;
    Some(format!(
        "at their arrival on the load generator's sockets, before it read them, deliveries \
         had p99 {:.1} ms; they waited for the generator's read p99 {:.1} ms",
        arrival.p99_ms, lag.p99_ms
    ))
}

/// What the machine's CPU did over a step's window, in words, when the
/// server ran on the measuring machine: a planner reading why a step broke
/// needs to know whether the host ran out of CPU (then a bigger host, or
/// the load generator on another one, is the next run) or not (then the
/// server's software, or bursts shorter than the one-second samples, set
/// the limit).
fn host_cpu(step: &Step) -> Option<String> {
    let busy = step.host_cpu_busy_pct?;
    let saturated = step.host_cpu_saturated_pct.unwrap_or(0.0);
    let figures = format!(
        "its cores were {busy:.0} % busy on average over the window and \
         {HOST_SATURATED_PCT:.0} % busy or more in {saturated:.0} % of its seconds (server, load \
         generator, database and kernel together; the server's processes alone {:.0} % of one core)",
        step.server_cpu_mean_pct
    );
    Some(if busy >= 90.0 || saturated >= 10.0 {
        format!("the host ran out of CPU: {figures}")
    } else {
        format!(
            "host CPU: {figures}; a burst shorter than a second (such as a large room's fan-out) \
             does not show in these one-second samples"
        )
    })
}

/// Why a run cannot support a verdict, if it cannot: the generator
/// saturated, a host limit was hit, or the run did not reach its planned
/// end. A stepped run that stopped at the first broken step, as planned,
/// is complete.
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

/// The verdict on the run's claim, or `None` when the run verifies no
/// claim.
///
/// The judged step is the one at the claim's user count, else the last
/// step. The claim holds when that step carried at least the claimed users
/// and met the objective, in a valid run; it does not hold when the step
/// broke the objective in a valid run on a host that can test the claim.
/// Anything else is inconclusive (see the module's documentation).
pub fn claim_verdict(result: &RunResult) -> Option<ClaimVerdict> {
    let claim = result.claim.as_ref()?;
    let slo = &result.slo;
    let on = claim
        .host
        .as_ref()
        .map(|h| format!(" on {}", h.text))
        .unwrap_or_default();
    let target = format!(
        "{} users{on}: p99 delivery ≤ {} ms, p99 post ack ≤ {} ms, p99 history ≤ {} ms, errors ≤ {} %, nothing lost, duplicated or reordered",
        claim.users, slo.p99_delivery_ms, slo.p99_post_ack_ms, slo.p99_history_ms, slo.max_error_pct
    );
    let verdict = |measured: String, verdict: Verdict, why: String| {
        let (verdict, why) = match &claim.host {
            Some(spec) => against_host(spec, &result.machine, verdict, why),
            None => (verdict, why),
        };
        ClaimVerdict {
            claim: claim.text.clone(),
            target: target.clone(),
            measured,
            verdict,
            why,
        }
    };
    let exact = result.steps.iter().find(|s| s.users == claim.users);
    if exact.is_none() {
        if let Some(n) = result.not_run.iter().find(|n| n.users == claim.users) {
            return Some(verdict(
                "not measured".into(),
                Verdict::Inconclusive,
                format!("not verifiable on this host: {}", n.reason),
            ));
        }
    }
    let Some(step) = exact.or(result.steps.last()) else {
        return Some(verdict(
            "not measured".into(),
            Verdict::Inconclusive,
            match &result.ended_because {
                Some(why) => format!(
                    "no step ran at {} users: the run ended before its first step completed ({why})",
                    claim.users
                ),
                None => format!("no step ran at {} users (no step ran at all)", claim.users),
            },
        ));
    };
    let j = judge(step, slo);
    let measured = format!(
        "at {} users: {}",
        step.users,
        j.checks
            .iter()
            .map(|c| format!("{}: {}", c.what, c.measured))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let (outcome, why) = if let Some(reason) = invalid_because(result) {
        (Verdict::Inconclusive, reason)
    } else if step.users < claim.users {
        (
            Verdict::Inconclusive,
            format!(
                "no step ran at {} users: the run reached {} users",
                claim.users, step.users
            ),
        )
    } else if step.users > claim.users && j.holds {
        (
            Verdict::Holds,
            format!(
                "the objective held at {} users, more than the claim's {}",
                step.users, claim.users
            ),
        )
    } else {
        (Verdict::of(j.holds), j.why)
    };
    Some(verdict(measured, outcome, why))
}

/// The capacity a stepped run found: the heaviest step that met the
/// objective below the lightest step that broke it (heavier steps that
/// held do not raise it: capacity is where the objective first fails).
/// Steps may come in any order, as a refined knee search runs them (see
/// [`next_refinement`]). `None` when no step ran.
pub fn knee(result: &RunResult) -> Option<Knee> {
    if result.steps.is_empty() {
        return None;
    }
    let judged: Vec<(&Step, Judgement)> = result
        .steps
        .iter()
        .map(|s| (s, judge(s, &result.slo)))
        .collect();
    let outcomes: Vec<(u64, bool)> = judged.iter().map(|(s, j)| (s.users, j.holds)).collect();
    let Bracket {
        held_below: capacity,
        broke,
        held_above,
    } = bracket(&outcomes);
    let broke_at = broke.map(|users| {
        let why = judged
            .iter()
            .find(|(s, j)| !j.holds && s.users == users)
            .map(|(_, j)| j.why.clone())
            .unwrap_or_default();
        (users, why)
    });
    Some(Knee {
        capacity,
        broke_at,
        held_above,
        invalid: invalid_because(result),
    })
}

/// Where a stepped run's outcomes, (users, held) in any order, place the
/// knee: the lightest step that broke the objective, the heaviest that met
/// it below that (below every step when none broke), and the heaviest that
/// met it above the break.
struct Bracket {
    held_below: Option<u64>,
    broke: Option<u64>,
    held_above: Option<u64>,
}

fn bracket(outcomes: &[(u64, bool)]) -> Bracket {
    let broke = outcomes.iter().filter(|o| !o.1).map(|o| o.0).min();
    let heaviest_held = |keep: &dyn Fn(u64) -> bool| {
        outcomes
            .iter()
            .filter(|o| o.1 && keep(o.0))
            .map(|o| o.0)
            .max()
    };
    Bracket {
        held_below: heaviest_held(&|users| broke.is_none_or(|b| users < b)),
        broke,
        held_above: broke.and_then(|b| heaviest_held(&|users| users > b)),
    }
}

/// The user count of the next step of a refined knee search, from the
/// steps run so far as (users, held): a multiple of `resolution` strictly
/// between the heaviest step that held below the lightest that broke (0
/// when none held) and that broken step, as near their middle as the
/// multiples allow. `None` when no step broke, when the two lie at most
/// `resolution` apart, or when no multiple lies between them.
pub fn next_refinement(outcomes: &[(u64, bool)], resolution: u64) -> Option<u64> {
    let resolution = resolution.max(1);
    let bracket = bracket(outcomes);
    let broke = bracket.broke?;
    let held = bracket.held_below.unwrap_or(0);
    if broke - held <= resolution {
        return None;
    }
    let middle = held + (broke - held) / 2;
    let mut next = (middle + resolution / 2) / resolution * resolution;
    if next <= held {
        next += resolution;
    }
    if next >= broke {
        next = next.checked_sub(resolution)?;
    }
    (next > held && next < broke && !outcomes.iter().any(|o| o.0 == next)).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{Correctness, GeneratorHealth, Latency, Machine, NotRun};
    use crate::Claim;

    fn lat(p99: f64) -> Latency {
        Latency {
            count: 1000,
            p99_ms: p99,
            ..Latency::default()
        }
    }

    /// A step that meets the default objective unless `delivery_p99` is
    /// above 250 ms.
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
            retried: Default::default(),
            posts_by_class: Default::default(),
            events_received: Default::default(),
            arrived_users: Some(users),
            correctness: Correctness {
                acknowledged: 100,
                expected_deliveries: 1000,
                delivered: 1000,
                ..Correctness::default()
            },
            server_cpu_mean_pct: 0.0,
            server_cpu_peak_pct: 0.0,
            server_rss_peak_mib: 0.0,
            host_cpu_busy_pct: None,
            host_cpu_saturated_pct: None,
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
                host: None,
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
    fn a_late_delivery_says_how_long_it_waited_for_the_generator() {
        let mut s = step(100, 400.0);
        let j = judge(&s, &Slo::default());
        assert!(!j.why.contains("generator"), "{}", j.why);

        s.latencies.insert(DELIVERY_ARRIVAL.into(), lat(180.0));
        s.latencies.insert(DELIVERY_READ_LAG.into(), lat(220.0));
        let j = judge(&s, &Slo::default());
        assert!(!j.holds);
        assert!(
            j.why.contains(
                "at their arrival on the load generator's sockets, before it read them, \
                 deliveries had p99 180.0 ms; they waited for the generator's read p99 220.0 ms"
            ),
            "{}",
            j.why
        );

        // Said only when delivery is what broke.
        let mut fast = step(100, 100.0);
        fast.latencies.insert(DELIVERY_ARRIVAL.into(), lat(80.0));
        fast.latencies.insert(DELIVERY_READ_LAG.into(), lat(20.0));
        fast.latencies.insert("post_ack".into(), lat(900.0));
        let j = judge(&fast, &Slo::default());
        assert!(!j.holds);
        assert!(!j.why.contains("generator's read"), "{}", j.why);
    }

    #[test]
    fn a_broken_step_says_whether_the_host_ran_out_of_cpu() {
        let mut s = step(100, 400.0);
        // Unknown (an external target): nothing said about the host.
        let j = judge(&s, &Slo::default());
        assert!(!j.why.contains("host"), "{}", j.why);

        s.server_cpu_mean_pct = 120.0;
        s.host_cpu_busy_pct = Some(93.0);
        s.host_cpu_saturated_pct = Some(60.0);
        let j = judge(&s, &Slo::default());
        assert!(
            j.why.contains(
                "the host ran out of CPU: its cores were 93 % busy on average over the window \
                 and 95 % busy or more in 60 % of its seconds"
            ),
            "{}",
            j.why
        );
        assert!(j.why.contains("alone 120 % of one core"), "{}", j.why);

        // Busy in bursts: a fan-out saturates the host for part of the time.
        s.host_cpu_busy_pct = Some(70.0);
        s.host_cpu_saturated_pct = Some(12.0);
        assert!(judge(&s, &Slo::default()).why.contains("ran out of CPU"));

        s.host_cpu_busy_pct = Some(40.0);
        s.host_cpu_saturated_pct = Some(1.0);
        let why = judge(&s, &Slo::default()).why;
        assert!(!why.contains("ran out of CPU"), "{why}");
        assert!(why.contains("host CPU: its cores were 40 % busy"), "{why}");

        // A step that holds needs no explanation.
        let mut ok = step(100, 40.0);
        ok.host_cpu_busy_pct = Some(99.0);
        ok.host_cpu_saturated_pct = Some(100.0);
        assert_eq!(judge(&ok, &Slo::default()).why, "every criterion holds");
    }

    #[test]
    fn a_step_within_every_target_holds() {
        let j = judge(&step(100, 40.0), &Slo::default());
        assert!(j.holds, "{}", j.why);
        assert_eq!(j.why, "every criterion holds");
        assert_eq!(
            j.checks.iter().map(|c| c.what.as_str()).collect::<Vec<_>>(),
            [
                "delivery latency",
                "post acknowledgement",
                "history read",
                "load",
                "errors",
                "correctness"
            ]
        );
        // Exactly at the target holds.
        assert!(judge(&step(100, 250.0), &Slo::default()).holds);
    }

    #[test]
    fn each_criterion_can_break_a_step_and_is_named() {
        let slo = Slo::default();
        let broken = |s: &Step| {
            let j = judge(s, &slo);
            assert!(!j.holds);
            let failing: Vec<String> = j
                .checks
                .iter()
                .filter(|c| !c.holds)
                .map(|c| c.what.clone())
                .collect();
            (failing, j.why)
        };

        let (failing, why) = broken(&step(100, 251.0));
        assert_eq!(failing, ["delivery latency"]);
        assert_eq!(
            why,
            "delivery latency: p99 251.0 ms (1000 samples) (target p99 ≤ 250 ms)"
        );

        let mut s = step(100, 40.0);
        s.latencies.get_mut("post_ack").unwrap().p99_ms = 201.0;
        assert_eq!(broken(&s).0, ["post acknowledgement"]);

        let mut s = step(100, 40.0);
        s.latencies.get_mut("history").unwrap().p99_ms = 501.0;
        assert_eq!(broken(&s).0, ["history read"]);

        // 11 errors in 10,000 operations is 0.11 %; 10 is exactly 0.1 %.
        let mut s = step(100, 40.0);
        s.errors.insert("busy".into(), 11);
        let (failing, why) = broken(&s);
        assert_eq!(failing, ["errors"]);
        assert!(why.contains("0.110 % (11 of 10000)"), "{why}");
        s.errors.insert("busy".into(), 10);
        assert!(judge(&s, &slo).holds);

        for spoil in [
            |c: &mut Correctness| c.lost = 1,
            |c: &mut Correctness| c.duplicated = 1,
            |c: &mut Correctness| c.reordered = 1,
            |c: &mut Correctness| c.sequence_gaps = 1,
            |c: &mut Correctness| c.conflicting_acks = 1,
        ] {
            let mut s = step(100, 40.0);
            spoil(&mut s.correctness);
            assert_eq!(broken(&s).0, ["correctness"]);
        }
    }

    #[test]
    fn a_missing_measurement_does_not_hold() {
        let slo = Slo::default();
        let mut s = step(100, 40.0);
        s.latencies.remove("history");
        s.latencies.get_mut("delivery").unwrap().count = 0;
        let j = judge(&s, &slo);
        assert!(!j.holds);
        assert!(j.why.contains("history read: not measured"), "{}", j.why);
        assert!(
            j.why.contains("delivery latency: not measured"),
            "{}",
            j.why
        );

        let mut s = step(100, 40.0);
        s.operations.clear();
        s.correctness.acknowledged = 0;
        let j = judge(&s, &slo);
        assert!(j.why.contains("errors: not measured"), "{}", j.why);
        assert!(j.why.contains("correctness: not measured"), "{}", j.why);
    }

    #[test]
    fn a_claim_holds_only_at_its_users_in_a_valid_run() {
        let v = claim_verdict(&result(vec![step(20_000, 50.0)], Some(20_000))).unwrap();
        assert_eq!(v.verdict, Verdict::Holds, "{}", v.why);
        assert!(v.measured.starts_with("at 20000 users: delivery latency"));
        assert!(v.target.starts_with("20000 users: p99 delivery ≤ 250 ms"));

        let v = claim_verdict(&result(vec![step(20_000, 300.0)], Some(20_000))).unwrap();
        assert!(
            v.verdict == Verdict::DoesNotHold && v.why.starts_with("delivery latency"),
            "{}",
            v.why
        );

        // The step at the claim's users is judged, not the last one.
        let r = result(vec![step(20_000, 50.0), step(25_000, 900.0)], Some(20_000));
        assert_eq!(claim_verdict(&r).unwrap().verdict, Verdict::Holds);

        // Without it, the last step; short of the claim, it cannot hold.
        let v = claim_verdict(&result(vec![step(2_000, 50.0)], Some(20_000))).unwrap();
        assert_eq!(v.verdict, Verdict::Inconclusive);
        assert_eq!(
            v.why,
            "no step ran at 20000 users: the run reached 2000 users"
        );
        let v = claim_verdict(&result(vec![step(25_000, 50.0)], Some(20_000))).unwrap();
        assert_eq!(v.verdict, Verdict::Holds, "{}", v.why);

        let v = claim_verdict(&result(vec![], Some(20_000))).unwrap();
        assert!(v.verdict == Verdict::Inconclusive && v.measured == "not measured");
        // A step whose users were still joining did not carry its load.
        let mut short = step(20_000, 50.0);
        short.arrived_users = Some(2_100);
        let v = claim_verdict(&result(vec![short], Some(20_000))).unwrap();
        assert_eq!(v.verdict, Verdict::DoesNotHold);
        assert_eq!(
            v.why,
            "load: 2100 of 20000 users had joined their rooms when the steady window began \
             (target all 20000 users joined to their rooms)"
        );
        // A run that ended before any step says why.
        let mut r = result(vec![], Some(20_000));
        r.ended_because = Some("step 1 failed: provision the workload: timed out".into());
        let v = claim_verdict(&r).unwrap();
        assert_eq!(v.verdict, Verdict::Inconclusive);
        assert!(
            v.why
                .ends_with("(step 1 failed: provision the workload: timed out)"),
            "{}",
            v.why
        );

        let mut r = result(vec![], Some(20_000));
        r.not_run.push(NotRun {
            users: 20_000,
            endpoints: 30_000,
            reason: "the server may hold 20000 open files".into(),
        });
        let v = claim_verdict(&r).unwrap();
        assert!(
            v.verdict == Verdict::Inconclusive && v.why.starts_with("not verifiable on this host"),
            "{}",
            v.why
        );

        assert!(claim_verdict(&result(vec![step(10, 50.0)], None)).is_none());
    }

    /// The vendor's recommended server, as node-20k names it.
    fn recommended(virtual_machine: Option<bool>) -> HostSpec {
        HostSpec {
            text: "the recommended server".into(),
            cores: Some(12),
            memory_gib: Some(32.0),
            cpu_ghz: Some(2.26),
            virtual_machine,
        }
    }

    /// This project's measuring VM: 2 logical CPUs, 23.5 GiB, 2.6 GHz.
    fn small_vm() -> Machine {
        Machine {
            cores: 2,
            memory_gib: 23.5,
            cpu_mhz: Some(2596.1),
            virtual_machine: Some(true),
            ..Machine::default()
        }
    }

    fn on_host(delivery_p99: f64, spec: HostSpec, machine: Machine) -> ClaimVerdict {
        let mut r = result(vec![step(20_000, delivery_p99)], Some(20_000));
        r.claim.as_mut().unwrap().host = Some(spec);
        r.machine = machine;
        claim_verdict(&r).unwrap()
    }

    #[test]
    fn a_host_short_of_the_claims_can_show_it_holds_but_not_that_it_fails() {
        let v = on_host(300.0, recommended(None), small_vm());
        assert_eq!(v.verdict, Verdict::Inconclusive, "{}", v.why);
        assert!(
            v.target
                .starts_with("20000 users on the recommended server: p99"),
            "{}",
            v.target
        );
        assert!(
            v.why.starts_with(
                "the objective did not hold, but this host falls short of the hardware the \
                 claim is about (2 of 12 logical CPUs, 23.5 of 32 GiB of memory; the claim is \
                 about the recommended server)"
            ),
            "{}",
            v.why
        );
        // What broke is still said.
        assert!(v.why.ends_with("(target p99 ≤ 250 ms)"), "{}", v.why);

        let v = on_host(50.0, recommended(None), small_vm());
        assert_eq!(v.verdict, Verdict::Holds, "{}", v.why);
        assert!(
            v.why.contains("on a host short of the claim's (2 of 12"),
            "{}",
            v.why
        );

        // A host that meets it (MemTotal a little under the installed 32
        // GiB, a clock equal to the figure within rounding) is a test.
        let big = Machine {
            cores: 16,
            memory_gib: 31.3,
            cpu_mhz: Some(2259.8),
            virtual_machine: Some(false),
            ..Machine::default()
        };
        let v = on_host(300.0, recommended(None), big.clone());
        assert_eq!(v.verdict, Verdict::DoesNotHold, "{}", v.why);
        assert!(
            v.why
                .ends_with("(the host meets the claim's: the recommended server)"),
            "{}",
            v.why
        );
        assert_eq!(host_fit(&recommended(None), &big), HostFit::default());

        // A clock that is slower, or not known, falls short.
        let slow = Machine {
            cpu_mhz: Some(2000.0),
            ..big.clone()
        };
        assert_eq!(
            host_fit(&recommended(None), &slow).short,
            ["a 2.00 GHz processor against 2.26 GHz"]
        );
        let unknown = Machine {
            cpu_mhz: None,
            memory_gib: 0.0,
            ..big
        };
        assert_eq!(
            host_fit(&recommended(None), &unknown).short,
            ["memory not known", "processor clock not known"]
        );

        // Whatever else left the run inconclusive stays so, and says the host too.
        let mut r = result(vec![step(20_000, 300.0)], Some(20_000));
        r.claim.as_mut().unwrap().host = Some(recommended(None));
        r.machine = small_vm();
        r.generator.saturated = true;
        let v = claim_verdict(&r).unwrap();
        assert_eq!(v.verdict, Verdict::Inconclusive);
        assert!(
            v.why.starts_with("invalid run")
                && v.why.ends_with(
                    "besides, the host has 2 of 12 logical CPUs, 23.5 of 32 GiB of memory"
                ),
            "{}",
            v.why
        );
    }

    #[test]
    fn a_claim_about_a_virtual_machine_is_tested_only_on_one() {
        let big_vm = Machine {
            cores: 12,
            memory_gib: 31.5,
            cpu_mhz: Some(2600.0),
            virtual_machine: Some(true),
            ..Machine::default()
        };
        let v = on_host(50.0, recommended(Some(true)), big_vm.clone());
        assert_eq!(v.verdict, Verdict::Holds, "{}", v.why);
        let v = on_host(300.0, recommended(Some(true)), big_vm.clone());
        assert_eq!(v.verdict, Verdict::DoesNotHold, "{}", v.why);

        // On a physical host, or one that could not be told, it neither
        // holds nor fails, however the objective came out.
        for (is, words) in [
            (Some(false), "this host is physical"),
            (None, "whether this host is one could not be told"),
        ] {
            for p99 in [50.0, 300.0] {
                let host = Machine {
                    virtual_machine: is,
                    ..big_vm.clone()
                };
                let v = on_host(p99, recommended(Some(true)), host);
                assert_eq!(v.verdict, Verdict::Inconclusive, "{}", v.why);
                assert!(
                    v.why.contains(words) && v.why.contains("does not test the claim"),
                    "{}",
                    v.why
                );
            }
        }
        // And a claim about a physical server is not tested on a VM.
        let v = on_host(50.0, recommended(Some(false)), big_vm);
        assert_eq!(v.verdict, Verdict::Inconclusive, "{}", v.why);
        assert!(
            v.why.contains("this host is a virtual machine"),
            "{}",
            v.why
        );
    }

    #[test]
    fn an_invalid_run_supports_no_claim() {
        let mut r = result(vec![step(20_000, 50.0)], Some(20_000));
        r.generator.saturated = true;
        r.generator.reason = Some("CPU at 100 % for 30 s".into());
        let v = claim_verdict(&r).unwrap();
        assert_eq!(v.verdict, Verdict::Inconclusive);
        assert_eq!(
            v.why,
            "invalid run: the load generator saturated (CPU at 100 % for 30 s)"
        );

        let mut r = result(vec![step(20_000, 50.0)], Some(20_000));
        r.completed = false;
        r.ended_because = Some("interrupted (Ctrl-C)".into());
        let v = claim_verdict(&r).unwrap();
        assert_eq!(v.verdict, Verdict::Inconclusive);
        assert_eq!(
            v.why,
            "invalid run: it did not complete (interrupted (Ctrl-C))"
        );

        let mut r = result(vec![step(20_000, 50.0)], Some(20_000));
        r.limits_hit.push("open files: 1024".into());
        let v = claim_verdict(&r).unwrap();
        assert!(v.verdict == Verdict::Inconclusive && v.why.starts_with("invalid run: host limit"));
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
        let (at, why) = k.broke_at.unwrap();
        assert_eq!(at, 30);
        assert!(why.starts_with("delivery latency: p99 400.0 ms"), "{why}");
        assert_eq!(k.invalid, None);

        let k = knee(&result(vec![step(10, 300.0)], None)).unwrap();
        assert_eq!((k.capacity, k.broke_at.map(|b| b.0)), (None, Some(10)));

        let k = knee(&result(vec![step(10, 50.0), step(20, 50.0)], None)).unwrap();
        assert_eq!((k.capacity, k.broke_at), (Some(20), None));

        let mut r = result(vec![step(10, 50.0)], None);
        r.generator.saturated = true;
        assert!(knee(&r)
            .unwrap()
            .invalid
            .unwrap()
            .starts_with("invalid run"));

        assert_eq!(knee(&result(vec![], None)), None);
    }

    #[test]
    fn a_refined_knee_lies_between_the_heaviest_hold_and_the_lightest_break_in_any_order() {
        // A ramp 10, 20 (broke), then refinement steps 15 (held), 18 (broke).
        let r = result(
            vec![
                step(10, 50.0),
                step(20, 300.0),
                step(15, 90.0),
                step(18, 260.0),
            ],
            None,
        );
        let k = knee(&r).unwrap();
        assert_eq!(k.capacity, Some(15));
        assert_eq!(k.broke_at.map(|b| b.0), Some(18));
        assert_eq!(k.held_above, None);

        // A heavier step that held after a lighter one broke is named.
        let k = knee(&result(
            vec![step(10, 50.0), step(20, 300.0), step(30, 90.0)],
            None,
        ))
        .unwrap();
        assert_eq!((k.capacity, k.held_above), (Some(10), Some(30)));
    }

    #[test]
    fn refinement_bisects_on_multiples_of_its_resolution_until_close_enough() {
        // Held 5,000, broke 10,000: try 8,000 (the middle, 7,500, rounds up).
        assert_eq!(
            next_refinement(&[(5_000, true), (10_000, false)], 1_000),
            Some(8_000)
        );
        // 8,000 broke: the middle of 5,000 and 8,000, 6,500, rounds to 7,000.
        let runs = [(5_000, true), (10_000, false), (8_000, false)];
        assert_eq!(next_refinement(&runs, 1_000), Some(7_000));
        let runs = [
            (5_000, true),
            (10_000, false),
            (8_000, false),
            (7_000, true),
        ];
        assert_eq!(
            next_refinement(&runs, 1_000),
            None,
            "7,000 and 8,000 are 1,000 apart"
        );
        // The first step broke: search down from it towards 0.
        assert_eq!(next_refinement(&[(5_000, false)], 1_000), Some(3_000));
        // Nothing broke, or nothing fits between the ends: no further step.
        assert_eq!(
            next_refinement(&[(5_000, true), (10_000, true)], 1_000),
            None
        );
        assert_eq!(
            next_refinement(&[(5_000, true), (6_500, false)], 1_000),
            Some(6_000)
        );
        assert_eq!(
            next_refinement(&[(5_100, true), (6_900, false)], 1_000),
            Some(6_000)
        );
        assert_eq!(
            next_refinement(&[(5_100, true), (5_900, false)], 500),
            Some(5_500)
        );
        assert_eq!(
            next_refinement(&[(5_100, true), (5_400, false)], 100),
            Some(5_300)
        );
        // A lighter step that held counts only below the lightest break.
        let runs = [(5_000, true), (10_000, false), (12_000, true)];
        assert_eq!(next_refinement(&runs, 1_000), Some(8_000));
    }
}
