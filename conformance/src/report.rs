//! Outcomes, the verdict, and the three renderings of a run: the human
//! table, the versioned JSON result and JUnit XML.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use serde::Serialize;
use serde_json::Value;

use crate::spec::{self, Keyword};

/// The JSON result format's version; bumped on any incompatible change.
pub const RESULT_FORMAT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Pass,
    Fail,
    /// A SHOULD not met.
    NonStrict,
    Skip,
    NotPossible,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::NonStrict => "non-strict",
            Outcome::Skip => "skip",
            Outcome::NotPossible => "not-possible",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Conformant,
    NotConformant,
    Incomplete,
}

impl Verdict {
    /// The runner's exit code: 0 conformant, 1 not, 2 incomplete.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Conformant => 0,
            Verdict::NotConformant => 1,
            Verdict::Incomplete => 2,
        }
    }
}

/// One test's result.
#[derive(Clone, Debug, Serialize)]
pub struct TestResult {
    pub clause: String,
    pub keyword: String,
    pub section: u32,
    pub test: String,
    pub outcome: Outcome,
    /// Why it did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The clause's text, for tests that failed or were non-strict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clause_text: Option<String>,
    pub duration_ms: u64,
    /// The transcript file, relative to the output directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<String>,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub format: &'static str,
    pub version: u32,
    pub suite_version: &'static str,
    pub target: String,
    pub namespace: String,
    pub seed: u64,
    pub started_at: String,
    pub verdict: Verdict,
    pub counts: BTreeMap<&'static str, usize>,
    pub results: Vec<TestResult>,
    /// Redacted response samples by name (for the crate's snapshot tests).
    #[serde(skip)]
    pub shapes: BTreeMap<String, Value>,
}

impl Report {
    pub fn new(
        target: String,
        namespace: String,
        seed: u64,
        started_at: String,
        results: Vec<TestResult>,
        shapes: BTreeMap<String, Value>,
    ) -> Report {
        let verdict = verdict(&results);
        let mut counts = BTreeMap::new();
        for r in &results {
            *counts.entry(r.outcome.as_str()).or_insert(0) += 1;
        }
        Report {
            format: "pchat-conformance-result",
            version: RESULT_FORMAT_VERSION,
            suite_version: env!("CARGO_PKG_VERSION"),
            target,
            namespace,
            seed,
            started_at,
            verdict,
            counts,
            results,
            shapes,
        }
    }

    /// Results of MUST clauses that did not pass.
    pub fn must_failures(&self) -> Vec<&TestResult> {
        self.results
            .iter()
            .filter(|r| r.keyword == "MUST" && r.outcome == Outcome::Fail)
            .collect()
    }
}

/// Not conformant when a MUST test fails; otherwise incomplete when a MUST
/// test could not be run, or an unconditional MUST clause has no passing
/// test (all its tests skipped because a hook is missing); otherwise
/// conformant. A conditional MUST (`MUST (servers deployed as several
/// pools)`) that does not apply may be skipped.
pub fn verdict(results: &[TestResult]) -> Verdict {
    let mut passed: BTreeMap<&str, bool> = BTreeMap::new();
    let mut incomplete = results.is_empty();
    for r in results.iter().filter(|r| r.keyword == "MUST") {
        match r.outcome {
            Outcome::Fail => return Verdict::NotConformant,
            Outcome::NotPossible => incomplete = true,
            _ => {}
        }
        let conditional = spec::clause(&r.clause).is_some_and(|c| c.keyword_text != "MUST");
        *passed.entry(r.clause.as_str()).or_default() |=
            r.outcome == Outcome::Pass || (conditional && r.outcome == Outcome::Skip);
    }
    if incomplete || passed.values().any(|p| !p) {
        Verdict::Incomplete
    } else {
        Verdict::Conformant
    }
}

/// The human table, grouped by spec section, with the clause text of every
/// test that did not pass.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let mut by_section: BTreeMap<u32, Vec<&TestResult>> = BTreeMap::new();
    for r in &report.results {
        by_section.entry(r.section).or_default().push(r);
    }
    for (section, results) in by_section {
        let title = spec::clauses()
            .iter()
            .find(|c| c.section == section)
            .map(|c| c.section_title.as_str())
            .unwrap_or("");
        out.push_str(&format!("\n§{section} {title}\n"));
        for r in results {
            out.push_str(&format!(
                "  {:<13} {:<9} {:<7} {}\n",
                r.outcome.as_str(),
                r.clause,
                r.keyword,
                r.test
            ));
            if r.outcome != Outcome::Pass {
                if let Some(d) = &r.detail {
                    out.push_str(&format!("      why:    {d}\n"));
                }
            }
            if matches!(r.outcome, Outcome::Fail | Outcome::NonStrict) {
                if let Some(c) = spec::clause(&r.clause) {
                    out.push_str(&format!("      clause: {}\n", c.text));
                }
                if let Some(t) = &r.transcript {
                    out.push_str(&format!("      wire:   {t}\n"));
                }
            }
        }
    }
    let counts: Vec<String> = report
        .counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    out.push_str(&format!(
        "\n{} tests: {}\nverdict: {:?} (namespace {}, seed {})\n",
        report.results.len(),
        counts.join(", "),
        report.verdict,
        report.namespace,
        report.seed
    ));
    out
}

/// JUnit XML: one `testsuite` per spec section, one `testcase` per test.
pub fn junit(report: &Report) -> anyhow::Result<String> {
    let mut w = quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let mut root = BytesStart::new("testsuites");
    root.push_attribute(("name", "pchat conformance"));
    root.push_attribute(("tests", report.results.len().to_string().as_str()));
    w.write_event(Event::Start(root))?;
    let mut by_section: BTreeMap<u32, Vec<&TestResult>> = BTreeMap::new();
    for r in &report.results {
        by_section.entry(r.section).or_default().push(r);
    }
    for (section, results) in by_section {
        let failures = results
            .iter()
            .filter(|r| r.outcome == Outcome::Fail)
            .count();
        let skipped = results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Skip | Outcome::NotPossible))
            .count();
        let mut s = BytesStart::new("testsuite");
        s.push_attribute(("name", format!("section {section}").as_str()));
        s.push_attribute(("tests", results.len().to_string().as_str()));
        s.push_attribute(("failures", failures.to_string().as_str()));
        s.push_attribute(("skipped", skipped.to_string().as_str()));
        w.write_event(Event::Start(s))?;
        for r in results {
            let mut c = BytesStart::new("testcase");
            c.push_attribute(("classname", format!("pchat.section{section}").as_str()));
            c.push_attribute(("name", format!("{} {}", r.clause, r.test).as_str()));
            c.push_attribute((
                "time",
                format!("{:.3}", r.duration_ms as f64 / 1000.0).as_str(),
            ));
            w.write_event(Event::Start(c))?;
            let text = spec::clause(&r.clause)
                .map(|c| format!("{} {}: {}", c.id, c.keyword_text, c.text))
                .unwrap_or_default();
            let detail = r.detail.clone().unwrap_or_default();
            let element = match (r.outcome, r.keyword.as_str()) {
                (Outcome::Fail, _) => Some(("failure", "fail")),
                (Outcome::NonStrict, _) => Some(("failure", "non-strict")),
                (Outcome::Skip, _) => Some(("skipped", "skip")),
                (Outcome::NotPossible, _) => Some(("skipped", "not-possible")),
                (Outcome::Pass, _) => None,
            };
            if let Some((tag, kind)) = element {
                let mut e = BytesStart::new(tag);
                e.push_attribute(("message", format!("{kind}: {detail}").as_str()));
                e.push_attribute(("type", kind));
                w.write_event(Event::Start(e))?;
                w.write_event(Event::Text(BytesText::new(&text)))?;
                w.write_event(Event::End(BytesEnd::new(tag)))?;
            }
            w.write_event(Event::End(BytesEnd::new("testcase")))?;
        }
        w.write_event(Event::End(BytesEnd::new("testsuite")))?;
    }
    w.write_event(Event::End(BytesEnd::new("testsuites")))?;
    Ok(String::from_utf8(w.into_inner())?)
}

/// Writes `result.json` and `junit.xml` into `dir`.
pub fn write(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::File::create(dir.join("result.json"))?.write_all(&json)?;
    std::fs::write(dir.join("junit.xml"), junit(report)?)?;
    Ok(())
}

/// The keyword of a clause as the result names it.
pub fn keyword_of(clause: &str) -> String {
    spec::clause(clause)
        .map(|c| c.keyword)
        .unwrap_or(Keyword::Must)
        .as_str()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(clause: &str, outcome: Outcome) -> TestResult {
        TestResult {
            clause: clause.into(),
            keyword: keyword_of(clause),
            section: 1,
            test: "t".into(),
            outcome,
            detail: Some("because".into()),
            clause_text: None,
            duration_ms: 3,
            transcript: None,
        }
    }

    #[test]
    fn verdict_follows_the_must_clauses() {
        use Outcome::*;
        let ok = [result("PC-1.1a", Pass), result("PC-16.2a", NonStrict)];
        assert_eq!(verdict(&ok), Verdict::Conformant);
        let skipped = [result("PC-1.1a", Pass), result("PC-1.1b", Skip)];
        assert_eq!(verdict(&skipped), Verdict::Incomplete);
        let other_passed = [
            result("PC-1.1a", Pass),
            result("PC-1.1b", Skip),
            result("PC-1.1b", Pass),
        ];
        assert_eq!(verdict(&other_passed), Verdict::Conformant);
        let conditional = [result("PC-1.1a", Pass), result("PC-17.1a", Skip)];
        assert_eq!(verdict(&conditional), Verdict::Conformant);
        let np = [result("PC-1.1a", Pass), result("PC-1.1b", NotPossible)];
        assert_eq!(verdict(&np), Verdict::Incomplete);
        let bad = [result("PC-1.1a", Fail), result("PC-1.1b", NotPossible)];
        assert_eq!(verdict(&bad), Verdict::NotConformant);
        assert_eq!(Verdict::NotConformant.exit_code(), 1);
        assert_eq!(verdict(&[]), Verdict::Incomplete);
    }

    #[test]
    fn junit_and_table_carry_the_clause_text_of_failures() {
        let r = Report::new(
            "http://x".into(),
            "ns".into(),
            1,
            "now".into(),
            vec![
                result("PC-1.1a", Outcome::Pass),
                result("PC-9.3b", Outcome::Fail),
            ],
            BTreeMap::new(),
        );
        let xml = junit(&r).unwrap();
        assert!(xml.contains("<failure message=\"fail: because\""), "{xml}");
        assert!(xml.contains("exactly once"), "{xml}");
        let t = table(&r);
        assert!(t.contains("clause: After a join answers L"), "{t}");
        assert!(t.contains("NotConformant"), "{t}");
    }
}
