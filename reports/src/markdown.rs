//! `summary.md`: the short form of a report, for a pull request, an issue or
//! a commit next to the figures.
//!
//! It carries the verdicts, the knee, the steps, the machine and command,
//! links to the chart PNGs and the notes; the full detail (every chart
//! inline, witnesses, generator health) is in `report.html`.

use std::fmt::Write as _;

use scenarios::results::RunResult;

use crate::charts::RenderedCharts;
use crate::{compare, figures, ReportInput, Verdict, VerdictRow};

/// Renders the summary. Deterministic: the same input and charts give the
/// same text, so it can be snapshot-tested and diffed between runs.
pub fn render(input: &ReportInput, charts: &RenderedCharts) -> String {
    let r = &input.result;
    let mut md = String::new();
    // Writing to a String cannot fail; `w!` hides the Result that
    // `fmt::Write` makes every call return.
    macro_rules! w {
        ($($arg:tt)*) => { let _ = writeln!(md, $($arg)*); };
    }

    w!("# Sizing report: {}", inline(&r.scenario));
    w!();
    if !r.description.is_empty() {
        w!("{}", inline(&r.description));
        w!();
    }
    for b in figures::banners(r) {
        w!("> **{}.** {}", b.title, inline(&b.text));
        w!();
    }

    w!("| | |");
    w!("|---|---|");
    if let Some(claim) = figures::claim(r) {
        w!("| claim | {} |", cell(&claim));
    }
    w!("| target | {} |", cell(&r.target));
    w!("| started | {} |", cell(&r.started_at));
    w!("| duration | {} |", figures::duration(r.duration_s));
    w!("| outcome | {} |", cell(&figures::outcome(r)));
    w!("| seed | {} |", r.seed);
    w!("| machine | {} |", cell(&figures::machine(&r.machine)));
    w!("| command | {} |", code_cell(&r.command));
    w!("| objective | {} |", cell(&figures::slo(&r.slo)));
    w!();

    w!("## Verdicts");
    w!();
    md.push_str(&verdict_table(&input.verdicts));
    w!();
    if let Some(knee) = &input.knee {
        w!("**Knee:** {}", inline(&knee.text));
        w!();
    }

    w!("## Steps");
    w!();
    step_table(&mut md, r);
    w!();
    latency_table(&mut md, r);
    let with_events: Vec<_> = r
        .steps
        .iter()
        .filter(|s| !s.events_received.is_empty())
        .collect();
    if !with_events.is_empty() {
        w!();
        w!("Events received ({}):", inline(figures::EVENTS_MEANING));
        w!();
        for s in with_events {
            w!(
                "- {}: {}",
                figures::users(s.users),
                inline(&figures::events_by_type(s))
            );
        }
    }
    let with_errors: Vec<_> = r.steps.iter().filter(|s| !s.errors.is_empty()).collect();
    if !with_errors.is_empty() {
        w!();
        w!("Errors by code:");
        w!();
        for s in with_errors {
            w!(
                "- {}: {}",
                figures::users(s.users),
                inline(&figures::errors_by_code(s))
            );
        }
    }
    let with_retries: Vec<_> = r.steps.iter().filter(|s| !s.retried.is_empty()).collect();
    if !with_retries.is_empty() {
        w!();
        w!(
            "Retried, not errors ({}):",
            inline(figures::RETRIED_MEANING)
        );
        w!();
        for s in with_retries {
            w!(
                "- {}: {}",
                figures::users(s.users),
                inline(&figures::retried_by_reason(s))
            );
        }
    }
    let witnesses: Vec<(u64, &String)> = r
        .steps
        .iter()
        .flat_map(|s| s.correctness.witnesses.iter().map(move |w| (s.users, w)))
        .collect();
    if !witnesses.is_empty() {
        w!();
        w!("Correctness witnesses:");
        w!();
        for (users, witness) in witnesses {
            w!("- {}: {}", figures::users(users), inline(witness));
        }
    }
    w!();

    w!("## Load generator");
    w!();
    let g = &r.generator;
    w!(
        "CPU peak {} %, mean {} % over the steady windows, {} cores; schedule lag at most {} ms; {}.",
        figures::num(g.cpu_peak_pct),
        figures::num(g.cpu_mean_pct),
        g.cores,
        figures::ms(g.schedule_lag_max_ms),
        if g.saturated { "**saturated: the run is invalid**" } else { "not saturated" }
    );
    w!();

    if let Some(baseline) = &input.baseline {
        w!("## Compared with the baseline");
        w!();
        w!("Baseline started {}.", inline(&baseline.started_at));
        w!();
        for line in compare(baseline, r) {
            w!("- {}", inline(&line));
        }
        w!();
    }

    w!("## Charts");
    w!();
    for c in &charts.charts {
        let file = c.png_file.as_deref().unwrap_or(&c.svg_file);
        w!("- [{}]({file})", inline(&c.title));
    }
    w!();

    let notes: Vec<&String> = input.notes.iter().chain(&charts.png_skipped).collect();
    if !notes.is_empty() {
        w!("## Notes");
        w!();
        for note in notes {
            w!("- {}", inline(note));
        }
        w!();
    }

    w!("Full report: [report.html](report.html); raw results: [results.json](results.json).");
    md
}

/// The verdict table alone, as Markdown.
pub fn verdict_table(verdicts: &[VerdictRow]) -> String {
    if verdicts.is_empty() {
        return "No verdicts were computed for this run.\n".to_string();
    }
    let mut md =
        String::from("| claim | target | measured | verdict | why |\n|---|---|---|---|---|\n");
    for v in verdicts {
        let verdict = match v.verdict {
            Verdict::Holds => "holds",
            Verdict::DoesNotHold => "**does not hold**",
            Verdict::Inconclusive => "*inconclusive*",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {verdict} | {} |",
            cell(&v.claim),
            cell(&v.target),
            cell(&v.measured),
            cell(&v.why)
        );
    }
    md
}

/// One row per step: load, headline latencies, volume, correctness.
fn step_table(md: &mut String, r: &RunResult) {
    if r.steps.is_empty() {
        md.push_str("The run has no completed steps.\n");
        return;
    }
    md.push_str(
        "| users | endpoints | rooms | posts small / medium / large | delivery p50 / p99 / p99.9 \
         (ms) | post ack p50 / p99 / p99.9 (ms) | operations | errors | lost / duplicated / \
         reordered / gaps |\n",
    );
    md.push_str("|---:|---:|---:|---:|---|---|---:|---|---|\n");
    for s in &r.steps {
        let lat = |key: &str| {
            s.latencies.get(key).map_or("–".to_string(), |l| {
                format!(
                    "{} / {} / {}",
                    figures::ms(l.p50_ms),
                    figures::ms(l.p99_ms),
                    figures::ms(l.p999_ms)
                )
            })
        };
        let errors = figures::errors_cell(s);
        let c = &s.correctness;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} / {} |",
            figures::count(s.users),
            figures::count(s.endpoints),
            figures::count(s.rooms),
            figures::posts_by_class_cell(s),
            lat("delivery"),
            lat("post_ack"),
            figures::count(figures::operations_total(s)),
            cell(&errors),
            c.lost,
            c.duplicated,
            c.reordered,
            c.sequence_gaps
        );
    }
}

/// One row per step and latency key.
fn latency_table(md: &mut String, r: &RunResult) {
    let keys = figures::latency_keys(&r.steps);
    if keys.is_empty() {
        return;
    }
    md.push_str("Latency by operation (ms):\n\n");
    md.push_str("| users | operation | count | p50 | p90 | p99 | p99.9 | max |\n");
    md.push_str("|---:|---|---:|---:|---:|---:|---:|---:|\n");
    for s in &r.steps {
        for key in &keys {
            if let Some(l) = s.latencies.get(key) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    figures::count(s.users),
                    cell(key),
                    figures::count(l.count),
                    figures::ms(l.p50_ms),
                    figures::ms(l.p90_ms),
                    figures::ms(l.p99_ms),
                    figures::ms(l.p999_ms),
                    figures::ms(l.max_ms)
                );
            }
        }
    }
}

/// Text for a table cell: pipes would end the cell and newlines the row.
fn cell(s: &str) -> String {
    inline(s).replace('|', "\\|")
}

/// A cell showing code: a backtick span longer than any backtick run
/// inside, so the command cannot close it early (CommonMark allows any run
/// length). Backslash escapes do not work inside code spans, so only what
/// would break the table is replaced; GFM unescapes `\|` even there.
fn code_cell(s: &str) -> String {
    let (mut run, mut longest) = (0, 0);
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let body = s.replace(['\n', '\r'], " ").replace('|', "\\|");
    format!("{fence} {body} {fence}")
}

/// Text on one line: Markdown ends paragraphs and list items at newlines.
/// Characters Markdown would interpret as markup are escaped, since these
/// strings come from the run (commands, witnesses), not from us.
fn inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            '\\' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '`' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cannot_break_the_table() {
        assert_eq!(cell("a | b\nc"), "a \\| b c");
        assert_eq!(inline("p99_ms <= 250 *ms*"), "p99\\_ms \\<= 250 \\*ms\\*");
    }
}
