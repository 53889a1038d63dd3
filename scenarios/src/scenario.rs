//! Scenario files: the model, topology, load shape, objective and claim of a
//! run, in TOML. Errors name the file, line, column and field.
//!
//! ```toml
//! name = "quick"
//! description = "A few thousand users for about a minute."
//! seed = 1
//!
//! [claim]                 # optional
//! text = "20,000 active users per front end"
//! users = 20000
//!
//! [model]                 # optional; these are the defaults
//! source = "vendor"       # or a path to a model file of the same shape
//! chat_rate = "published" # or "per_room_per_day", "per_user_per_day"
//!
//! [topology]
//! kind = "standard"       # one node on the embedded store; or "external"
//!
//! [load]
//! users = 2000            # or a [load.steps] table for a stepped ramp
//! ramp_s = 15
//! steady_s = 40
//!
//! [slo]                   # optional; defaults are the issue's
//! p99_delivery_ms = 250
//! ```

use serde::Deserialize;

use crate::plan::ChatRateModel;
use crate::{Claim, Slo};

/// The built-in scenario library: (name, file text).
pub const LIBRARY: [(&str, &str); 4] = [
    ("quick", include_str!("../library/quick.toml")),
    ("node-20k", include_str!("../library/node-20k.toml")),
    ("knee", include_str!("../library/knee.toml")),
    ("soak", include_str!("../library/soak.toml")),
];

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub claim: Option<Claim>,
    #[serde(default)]
    pub model: ModelChoice,
    #[serde(default)]
    pub topology: Topology,
    pub load: Load,
    #[serde(default)]
    pub slo: Slo,
}

fn default_seed() -> u64 {
    1
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelChoice {
    /// `vendor`, or a path to a model file.
    pub source: String,
    pub chat_rate: ChatRateModel,
    pub endpoints_per_user: Option<f64>,
}

impl Default for ModelChoice {
    fn default() -> Self {
        ModelChoice {
            source: "vendor".into(),
            chat_rate: ChatRateModel::Published,
            endpoints_per_user: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topology {
    pub kind: TopologyKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopologyKind {
    /// One reference-server node on the embedded store, started by the run.
    #[default]
    Standard,
    /// A server the planner names with `--target`.
    External,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Active users of a fixed-load scenario.
    #[serde(default)]
    pub users: Option<u64>,
    /// A stepped ramp (the knee search) instead of a fixed load.
    #[serde(default)]
    pub steps: Option<Steps>,
    /// Seconds over which users arrive (per step).
    pub ramp_s: f64,
    /// Seconds of steady state measured (per step).
    pub steady_s: f64,
    /// Seconds after the last operation for deliveries to arrive.
    #[serde(default = "default_grace")]
    pub grace_s: f64,
    /// goose users executing the request/response operations.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_grace() -> f64 {
    5.0
}

fn default_workers() -> usize {
    64
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Steps {
    pub start: u64,
    pub step: u64,
    pub max: u64,
}

/// A scenario file that could not be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{origin}:{line}:{column}: {field}: {message}")]
pub struct ScenarioError {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the field at fault (`load.users`), or `(file)`.
    pub field: String,
    pub message: String,
}

impl Scenario {
    /// Parses and validates a scenario file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let (line, column) = line_col(text, offset);
            // toml's message may repeat the position; keep its first line.
            let message = e.message().lines().next().unwrap_or("").to_owned();
            let field = field_at(text, offset, &message);
            ScenarioError {
                origin: origin.to_owned(),
                line,
                column,
                field,
                message,
            }
        })?;
        scenario.validate(text, origin)?;
        Ok(scenario)
    }

    /// A scenario of the built-in library by name.
    pub fn builtin(name: &str) -> Option<Scenario> {
        LIBRARY
            .iter()
            .find(|(n, _)| *n == name)
            // The library files are parsed by the tests; they are valid.
            .map(|(n, text)| {
                Scenario::parse(text, &format!("{n}.toml")).expect("built-in scenario parses")
            })
    }

    /// The user counts of the steps, in order.
    pub fn user_steps(&self) -> Vec<u64> {
        match (&self.load.steps, self.load.users) {
            (Some(s), _) => (0..)
                .map(|i| s.start + i * s.step)
                .take_while(|u| *u <= s.max)
                .collect(),
            (None, Some(u)) => vec![u],
            (None, None) => Vec::new(),
        }
    }

    /// Multiplies every user count by `factor` (at least 1 user each); the
    /// claim keeps its users, so a scaled run cannot verify it.
    pub fn scaled(mut self, factor: f64) -> Scenario {
        let f = |u: u64| ((u as f64 * factor).round() as u64).max(1);
        self.load.users = self.load.users.map(f);
        if let Some(s) = &mut self.load.steps {
            s.start = f(s.start);
            s.step = f(s.step);
            s.max = f(s.max);
        }
        self
    }

    fn validate(&self, text: &str, origin: &str) -> Result<(), ScenarioError> {
        let fail = |field: &str, message: &str| {
            let (line, column) = locate(text, field);
            Err(ScenarioError {
                origin: origin.to_owned(),
                line,
                column,
                field: field.to_owned(),
                message: message.to_owned(),
            })
        };
        if self.name.trim().is_empty() {
            return fail("name", "must not be empty");
        }
        match (&self.load.steps, self.load.users) {
            (Some(_), Some(_)) => {
                return fail("load.users", "give users or [load.steps], not both")
            }
            (None, None) => return fail("load", "give users or a [load.steps] table"),
            (None, Some(0)) => return fail("load.users", "must be at least 1"),
            (Some(s), None) => {
                if s.start == 0 {
                    return fail("load.steps.start", "must be at least 1");
                }
                if s.step == 0 {
                    return fail("load.steps.step", "must be at least 1");
                }
                if s.max < s.start {
                    return fail("load.steps.max", "must be at least start");
                }
            }
            _ => {}
        }
        if !(self.load.ramp_s >= 0.0 && self.load.ramp_s.is_finite()) {
            return fail("load.ramp_s", "must be zero or more seconds");
        }
        if !(self.load.steady_s > 0.0 && self.load.steady_s.is_finite()) {
            return fail("load.steady_s", "must be more than zero seconds");
        }
        if !(self.load.grace_s >= 0.0 && self.load.grace_s.is_finite()) {
            return fail("load.grace_s", "must be zero or more seconds");
        }
        if self.load.workers == 0 {
            return fail("load.workers", "must be at least 1");
        }
        if let Some(e) = self.model.endpoints_per_user {
            if !(1.0..=16.0).contains(&e) {
                return fail("model.endpoints_per_user", "must be 1 to 16");
            }
        }
        if let Some(c) = &self.claim {
            if c.users == 0 {
                return fail("claim.users", "must be at least 1");
            }
        }
        for (field, v) in [
            ("slo.p99_delivery_ms", self.slo.p99_delivery_ms),
            ("slo.p99_post_ack_ms", self.slo.p99_post_ack_ms),
            ("slo.p99_history_ms", self.slo.p99_history_ms),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return fail(field, "must be more than zero milliseconds");
            }
        }
        if !(self.slo.max_error_pct >= 0.0 && self.slo.max_error_pct <= 100.0) {
            return fail("slo.max_error_pct", "must be 0 to 100");
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted field at a byte offset: the table header above it plus the key
/// on its line; an unknown-field message names the key itself.
fn field_at(text: &str, offset: usize, message: &str) -> String {
    let before = &text[..offset.min(text.len())];
    let table = before
        .lines()
        .rev()
        .find_map(|l| {
            let t = l.trim();
            (t.starts_with('[') && t.ends_with(']'))
                .then(|| t.trim_matches(['[', ']']).trim().to_owned())
        })
        .unwrap_or_default();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = if let Some(rest) = message.strip_prefix("unknown field `") {
        rest.split('`').next().unwrap_or("").to_owned()
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        rest.split('`').next().unwrap_or("").to_owned()
    } else if line.trim_start().starts_with('[') {
        String::new()
    } else {
        line.split('=').next().unwrap_or("").trim().to_owned()
    };
    match (table.is_empty(), key.is_empty()) {
        (true, true) => "(file)".into(),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// Line and column of `field` (dotted) in the text, or of its table, or 1:1.
fn locate(text: &str, field: &str) -> (usize, usize) {
    let (table, key) = match field.rsplit_once('.') {
        Some((t, k)) => (t, k),
        None => ("", field),
    };
    let mut current = String::new();
    let mut table_line = None;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') && t.ends_with(']') {
            current = t.trim_matches(['[', ']']).trim().to_owned();
            if current == field {
                table_line = Some(i + 1);
            }
            continue;
        }
        if current == table {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim() == key {
                    let col = l.len() - l.trim_start().len() + 1;
                    return (i + 1, col);
                }
            }
        }
    }
    (table_line.unwrap_or(1), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_library_scenario_parses() {
        for (name, text) in LIBRARY {
            let s = Scenario::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(s.name, name);
            assert!(!s.user_steps().is_empty());
        }
        let knee = Scenario::builtin("knee").unwrap().user_steps();
        assert_eq!(knee.len(), 24);
        assert_eq!((knee[0], knee[1], knee[23]), (2_500, 5_000, 60_000));
        assert!(Scenario::builtin("nope").is_none());
    }

    #[track_caller]
    fn error(text: &str) -> ScenarioError {
        Scenario::parse(text, "mine.toml").expect_err("must be refused")
    }

    const GOOD: &str = "name = \"mine\"\n\n[load]\nusers = 100\nramp_s = 5\nsteady_s = 10\n";

    #[test]
    fn a_good_file_gets_the_defaults() {
        let s = Scenario::parse(GOOD, "mine.toml").unwrap();
        assert_eq!(s.slo, Slo::default());
        assert_eq!(s.topology.kind, TopologyKind::Standard);
        assert_eq!((s.seed, s.load.grace_s, s.load.workers), (1, 5.0, 64));
    }

    #[test]
    fn a_wrong_type_names_the_field_and_line() {
        let e = error(&GOOD.replace("users = 100", "users = \"many\""));
        assert_eq!((e.line, e.field.as_str()), (4, "load.users"), "{e}");
        insta::assert_snapshot!(e.to_string(), @"mine.toml:4:9: load.users: invalid type: string \"many\", expected u64");
    }

    #[test]
    fn an_unknown_field_names_the_field_and_line() {
        let e = error(&format!("{GOOD}userz = 3\n"));
        assert_eq!((e.line, e.field.as_str()), (7, "load.userz"), "{e}");
        assert!(e.message.contains("unknown field `userz`"), "{e}");
    }

    #[test]
    fn a_missing_field_names_it() {
        let e = error("name = \"mine\"\n\n[load]\nusers = 100\nramp_s = 5\n");
        assert!(e.field.ends_with("steady_s"), "{e}");
        assert!(e.message.contains("missing field `steady_s`"), "{e}");
    }

    #[test]
    fn a_bad_value_names_the_field_and_line() {
        let e = error(&GOOD.replace("users = 100", "users = 0"));
        assert_eq!(
            e.to_string(),
            "mine.toml:4:1: load.users: must be at least 1"
        );
        let e = error(&format!("{GOOD}\n[slo]\np99_delivery_ms = -1\n"));
        assert_eq!(
            e.to_string(),
            "mine.toml:9:1: slo.p99_delivery_ms: must be more than zero milliseconds"
        );
        let e = error(&format!(
            "{GOOD}\n[load.steps]\nstart = 1\nstep = 1\nmax = 2\n"
        ));
        assert_eq!(e.field, "load.users");
        let e = error(
            &GOOD
                .replace("[topology]", "")
                .replace("[load]", "[topology]\nkind = \"cloud\"\n\n[load]"),
        );
        assert_eq!((e.line, e.field.as_str()), (4, "topology.kind"), "{e}");
    }

    #[test]
    fn a_syntax_error_gives_its_line() {
        let e = error("name = \"mine\"\n[load\nusers = 1\n");
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn scaling_changes_users_but_not_the_claim() {
        let s = Scenario::builtin("node-20k").unwrap().scaled(0.1);
        assert_eq!(s.user_steps(), vec![2_000]);
        assert_eq!(s.claim.unwrap().users, 20_000);
    }
}
