//! How numbers, names and warnings are written, shared by the HTML and
//! Markdown renderers so that both say the same thing in the same words.
//!
//! Everything here returns plain text; each renderer escapes it for its own
//! format.

use std::collections::BTreeSet;

use scenarios::results::{Machine, RunResult, Step};
use scenarios::Slo;

/// Latency keys shown first, in this order: the two the objective is about,
/// then the rest of the load generator's keys. Unknown keys follow,
/// alphabetically, so a new key still shows up.
const KEY_ORDER: [&str; 14] = [
    "delivery",
    "delivery_arrival",
    "delivery_read_lag",
    "delivery_same_node",
    "delivery_cross_node",
    "post_ack",
    "history",
    "search",
    "join",
    "participants",
    "presence",
    "connect",
    "reconnect",
    "rejoin",
];

/// The two latency keys the objective and the timeline cover.
pub(crate) const HEADLINE_KEYS: [&str; 2] = ["delivery", "post_ack"];

/// Milliseconds with precision that matches their size: "0.42", "4.21",
/// "12.3", "182". Rounding a p99 of 182.4 ms to "182" loses nothing a reader
/// acts on, while "0.42" needs its decimals.
pub(crate) fn ms(v: f64) -> String {
    if !v.is_finite() {
        return "–".to_string();
    }
    let a = v.abs();
    if a < 10.0 {
        format!("{v:.2}")
    } else if a < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A count with thousands separators: "20,000".
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A percentage with enough decimals for error ratios near the 0.1 %
/// objective: "0.021 %", "1.50 %".
pub(crate) fn pct(v: f64) -> String {
    if !v.is_finite() {
        "–".to_string()
    } else if v != 0.0 && v.abs() < 1.0 {
        format!("{v:.3} %")
    } else {
        format!("{v:.2} %")
    }
}

/// A number of a plain quantity (CPU percent, MiB, rates): one decimal.
pub(crate) fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "–".to_string()
    }
}

/// A duration: "400 s (6 min 40 s)".
pub(crate) fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "–".to_string();
    }
    let whole = seconds.round() as u64;
    if whole < 60 {
        return format!("{seconds:.1} s");
    }
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    let long = if h > 0 {
        format!("{h} h {m} min {s} s")
    } else {
        format!("{m} min {s} s")
    };
    format!("{whole} s ({long})")
}

/// The latency keys present in any of `steps`, in display order.
pub(crate) fn latency_keys<'a>(steps: impl IntoIterator<Item = &'a Step>) -> Vec<String> {
    ordered_keys(
        steps
            .into_iter()
            .flat_map(|s| s.latencies.keys().map(String::as_str)),
    )
}

/// The operation keys (latencies or counts) present in any of `steps`, in
/// display order.
pub(crate) fn operation_keys<'a>(steps: impl IntoIterator<Item = &'a Step>) -> Vec<String> {
    ordered_keys(steps.into_iter().flat_map(|s| {
        s.latencies
            .keys()
            .chain(s.operations.keys())
            .map(String::as_str)
    }))
}

fn ordered_keys<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    let present: BTreeSet<&str> = keys.collect();
    let mut ordered: Vec<String> = KEY_ORDER
        .iter()
        .filter(|k| present.contains(*k))
        .map(|k| k.to_string())
        .collect();
    ordered.extend(
        present
            .iter()
            .filter(|k| !KEY_ORDER.contains(k))
            .map(|k| k.to_string()),
    );
    ordered
}

/// "20,000 users".
pub(crate) fn users(n: u64) -> String {
    if n == 1 {
        "1 user".to_string()
    } else {
        format!("{} users", count(n))
    }
}

/// Operations attempted in a step, all keys together.
pub(crate) fn operations_total(step: &Step) -> u64 {
    step.operations.values().sum()
}

/// Failed operations in a step, all codes together.
pub(crate) fn errors_total(step: &Step) -> u64 {
    step.errors.values().sum()
}

/// Errors as a percentage of operations, or `None` when nothing was
/// attempted. A measurement to print, not a verdict.
pub(crate) fn error_pct(step: &Step) -> Option<f64> {
    let ops = operations_total(step);
    (ops > 0).then(|| errors_total(step) as f64 * 100.0 / ops as f64)
}

/// "12 (0.03 %)": failed operations with their share, or only the count
/// when nothing was attempted.
pub(crate) fn errors_cell(step: &Step) -> String {
    match error_pct(step) {
        Some(pct) => format!("{} ({})", count(errors_total(step)), self::pct(pct)),
        None => count(errors_total(step)),
    }
}

/// Acknowledged posts of the window by room class, "small / medium /
/// large", or "–" for a result that did not count them.
pub(crate) fn posts_by_class_cell(step: &Step) -> String {
    if step.posts_by_class.is_empty() {
        return "–".to_string();
    }
    ["small", "medium", "large"]
        .map(|c| count(step.posts_by_class.get(c).copied().unwrap_or(0)))
        .join(" / ")
}

/// "12 timeout, 3 http:503", or "none".
pub(crate) fn errors_by_code(step: &Step) -> String {
    if step.errors.is_empty() {
        return "none".to_string();
    }
    step.errors
        .iter()
        .map(|(code, n)| format!("{} {code}", count(*n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "presence 5,100,000 (17,000/s), message 410,000 (1,367/s), ...; in all
/// 5,530,000 (18,433/s)": the step's received events by type, most frequent
/// first, with their rate over the window; "none" when none was counted.
pub(crate) fn events_by_type(step: &Step) -> String {
    if step.events_received.is_empty() {
        return "none".to_string();
    }
    let window_s = step.window_end_s - step.window_start_s;
    let with_rate = |n: u64| {
        if window_s > 0.0 {
            format!(
                "{} ({}/s)",
                count(n),
                count((n as f64 / window_s).round() as u64)
            )
        } else {
            count(n)
        }
    };
    let mut by_count: Vec<(&String, &u64)> = step.events_received.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let each = by_count
        .into_iter()
        .map(|(kind, n)| format!("{kind} {}", with_rate(*n)))
        .collect::<Vec<_>>()
        .join(", ");
    let all: u64 = step.events_received.values().sum();
    format!("{each}; in all {}", with_rate(all))
}

/// What the received events are, in words, for a report's reader.
pub(crate) const EVENTS_MEANING: &str = "every event frame the load generator's streams \
     received in the steady window, by type: the server's whole push load, of which the \
     delivery latency measures the messages";

/// Failed attempts that clients retried in a step (not errors).
pub(crate) fn retried_total(step: &Step) -> u64 {
    step.retried.values().sum()
}

/// "1,200 connect:node_down, 35 join:busy": retried attempts by
/// operation and reason, most frequent first, or "none".
pub(crate) fn retried_by_reason(step: &Step) -> String {
    if step.retried.is_empty() {
        return "none".to_string();
    }
    let mut by_count: Vec<(&String, &u64)> = step.retried.iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    by_count
        .into_iter()
        .map(|(reason, n)| format!("{} {reason}", count(*n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the retried attempts are, in words, for a report's reader.
pub(crate) const RETRIED_MEANING: &str = "refusals honoured after their Retry-After, attempts \
     on a node that was down, streams lost before their reconnect; a retry that finally failed \
     counts once among the errors";

/// The machine in one line. Clock and kind appear where the run recorded
/// them (results written before they were recorded have neither).
pub(crate) fn machine(m: &Machine) -> String {
    let clock = m
        .cpu_mhz
        .map(|mhz| format!(", clock {:.2} GHz", mhz / 1000.0))
        .unwrap_or_default();
    let kind = match m.virtual_machine {
        Some(true) => ", virtual machine",
        Some(false) => ", physical",
        None => "",
    };
    format!(
        "{}: {}{clock}, {} cores, {:.1} GiB{kind}, kernel {}, open-file limit {} (soft) / {} (hard)",
        m.hostname,
        m.cpu_model,
        m.cores,
        m.memory_gib,
        m.kernel,
        count(m.fd_limit.0),
        count(m.fd_limit.1)
    )
}

/// The objective in one line.
pub(crate) fn slo(s: &Slo) -> String {
    format!(
        "p99 delivery ≤ {} ms, p99 post acknowledgement ≤ {} ms, p99 history ≤ {} ms, \
         errors ≤ {}, nothing lost, duplicated or reordered",
        ms(s.p99_delivery_ms),
        ms(s.p99_post_ack_ms),
        ms(s.p99_history_ms),
        pct(s.max_error_pct)
    )
}

/// "completed" or "interrupted: <why>".
pub(crate) fn outcome(r: &RunResult) -> String {
    match (r.completed, &r.ended_because) {
        (true, _) => "completed".to_string(),
        (false, Some(why)) => format!("interrupted: {why}"),
        (false, None) => "interrupted (no reason recorded)".to_string(),
    }
}

/// The claim in one line, or `None` for a scenario that verifies none.
pub(crate) fn claim(r: &RunResult) -> Option<String> {
    r.claim
        .as_ref()
        .map(|c| format!("{} ({})", c.text, users(c.users)))
}

/// How serious a [`Banner`] is; renderers choose its colour from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Severity {
    /// The run's figures must not be used for a verdict.
    Invalid,
    /// The figures are real but partial or possibly distorted.
    Warning,
}

/// A warning the reader must see before any figure.
#[derive(Debug, Clone)]
pub(crate) struct Banner {
    pub severity: Severity,
    pub title: &'static str,
    pub text: String,
}

/// The warnings a run calls for, most serious first.
pub(crate) fn banners(r: &RunResult) -> Vec<Banner> {
    let mut out = Vec::new();
    if r.generator.saturated {
        let why = r
            .generator
            .reason
            .clone()
            .unwrap_or_else(|| "no reason recorded".to_string());
        out.push(Banner {
            severity: Severity::Invalid,
            title: "Invalid run: the load generator saturated",
            text: format!(
                "{why}. The load generator could not produce the load it was asked for, so these \
                 figures measure the generator rather than the server; no claim verdict can be \
                 drawn from this run."
            ),
        });
    }
    if !r.limits_hit.is_empty() {
        out.push(Banner {
            severity: Severity::Invalid,
            title: "Host limits were reached",
            text: format!(
                "{}. Errors and latencies may come from the load machine's limits rather than \
                 the server; raise the limits and run again before drawing conclusions.",
                r.limits_hit.join("; ")
            ),
        });
    }
    if !r.completed {
        out.push(Banner {
            severity: Severity::Warning,
            title: "The run did not complete",
            text: format!("{}. Only the steps that finished are reported.", outcome(r)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(20_000), "20,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn milliseconds_keep_precision_by_size() {
        assert_eq!(ms(0.4213), "0.42");
        assert_eq!(ms(12.34), "12.3");
        assert_eq!(ms(182.4), "182");
        assert_eq!(ms(f64::NAN), "–");
    }

    #[test]
    fn durations_read_as_minutes() {
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(400.0), "400 s (6 min 40 s)");
        assert_eq!(duration(3725.0), "3725 s (1 h 2 min 5 s)");
    }
}
