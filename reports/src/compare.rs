//! p99 changes between an earlier run (a `results.json` kept from before)
//! and this one.
//!
//! Steps are matched by user count, not position, because a knee run that
//! stopped earlier or started higher still has comparable steps. The lines
//! describe; whether a change matters is for the reader (or the verdicts).

use scenarios::results::{RunResult, Step};

use crate::figures;

/// One line per latency key and step describing how its p99 changed from
/// `previous` to `current`, then lines for steps only one run has.
///
/// ```text
/// delivery p99 at 20,000 users: 182 ms -> 205 ms (+12.6 %, slower)
/// ```
pub fn compare(previous: &RunResult, current: &RunResult) -> Vec<String> {
    let mut lines = Vec::new();
    if previous.scenario != current.scenario {
        lines.push(format!(
            "the baseline is scenario {}, this run is {}: steps are matched by user count",
            previous.scenario, current.scenario
        ));
    }
    let mut used = vec![false; previous.steps.len()];
    for step in &current.steps {
        let matched = previous
            .steps
            .iter()
            .enumerate()
            .find(|(i, p)| !used[*i] && p.users == step.users);
        match matched {
            Some((i, before)) => {
                used[i] = true;
                lines.extend(step_changes(before, step));
            }
            None => lines.push(format!(
                "{}: no step with this user count in the baseline",
                figures::users(step.users)
            )),
        }
    }
    for (before, _) in previous.steps.iter().zip(&used).filter(|(_, u)| !**u) {
        lines.push(format!(
            "{}: a step of the baseline, not in this run",
            figures::users(before.users)
        ));
    }
    lines
}

fn step_changes(before: &Step, after: &Step) -> Vec<String> {
    let users = figures::users(after.users);
    figures::latency_keys([before, after])
        .into_iter()
        .map(|key| {
            let was = before.latencies.get(&key).map(|l| l.p99_ms);
            let now = after.latencies.get(&key).map(|l| l.p99_ms);
            match (was, now) {
                (Some(a), Some(b)) => format!(
                    "{key} p99 at {users}: {} ms -> {} ms ({})",
                    figures::ms(a),
                    figures::ms(b),
                    change(a, b)
                ),
                (None, Some(b)) => format!(
                    "{key} p99 at {users}: {} ms, not measured in the baseline",
                    figures::ms(b)
                ),
                (Some(a), None) => format!(
                    "{key} p99 at {users}: {} ms in the baseline, not measured in this run",
                    figures::ms(a)
                ),
                // latency_keys only lists keys one of the steps has.
                (None, None) => format!("{key} p99 at {users}: not measured"),
            }
        })
        .collect()
}

/// "+12.6 %, slower", "-3.0 %, faster", "unchanged".
fn change(was: f64, now: f64) -> String {
    if figures::ms(was) == figures::ms(now) {
        return "unchanged".to_string();
    }
    if was <= 0.0 || !was.is_finite() || !now.is_finite() {
        return if now > was { "slower" } else { "faster" }.to_string();
    }
    let pct = (now - was) / was * 100.0;
    let word = if pct > 0.0 { "slower" } else { "faster" };
    format!("{pct:+.1} %, {word}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_as_percent_and_direction() {
        assert_eq!(change(200.0, 250.0), "+25.0 %, slower");
        assert_eq!(change(200.0, 150.0), "-25.0 %, faster");
        assert_eq!(change(182.1, 182.3), "unchanged");
        assert_eq!(change(0.0, 3.0), "slower");
    }
}
