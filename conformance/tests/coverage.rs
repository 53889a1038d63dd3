//! Coverage: every MUST clause of docs/protocol.md has at least one test in
//! the catalogue or a written reason in `untestable.toml` why it cannot be
//! tested from outside; every test names a real clause.

use std::collections::{BTreeMap, BTreeSet};

use conformance::cases::catalogue;
use conformance::spec::{clauses, Keyword};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Untestable {
    clause: Vec<Reason>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reason {
    id: String,
    reason: String,
}

fn reasons() -> BTreeMap<String, String> {
    let text = include_str!("../untestable.toml");
    let u: Untestable = toml::from_str(text).expect("untestable.toml parses");
    u.clause.into_iter().map(|r| (r.id, r.reason)).collect()
}

#[test]
fn every_must_clause_has_a_test_or_a_reason() {
    let tested: BTreeSet<&str> = catalogue().iter().map(|c| c.clause).collect();
    let reasons = reasons();
    let must: Vec<_> = clauses()
        .iter()
        .filter(|c| c.keyword == Keyword::Must)
        .collect();
    let missing: Vec<&str> = must
        .iter()
        .map(|c| c.id.as_str())
        .filter(|id| !tested.contains(id) && !reasons.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "MUST clauses with neither a test nor a reason in untestable.toml: {missing:?}"
    );
    let with_tests = must
        .iter()
        .filter(|c| tested.contains(c.id.as_str()))
        .count();
    eprintln!(
        "coverage: {} MUST clauses, {with_tests} with tests, {} with reasons",
        must.len(),
        reasons.len()
    );
    assert!(
        reasons.len() * 10 <= must.len(),
        "the untestable list has grown to {} of {} MUST clauses; keep it short",
        reasons.len(),
        must.len()
    );
}

#[test]
fn reasons_name_untested_must_clauses_and_say_something() {
    let tested: BTreeSet<&str> = catalogue().iter().map(|c| c.clause).collect();
    for (id, reason) in reasons() {
        let c = conformance::spec::clause(&id)
            .unwrap_or_else(|| panic!("untestable.toml names {id}, which is not in the spec"));
        assert_eq!(c.keyword, Keyword::Must, "{id} is not a MUST clause");
        assert!(
            !tested.contains(id.as_str()),
            "{id} has a test; drop its reason"
        );
        assert!(
            reason.split_whitespace().count() >= 10,
            "{id}: say why in a sentence or two"
        );
    }
}

#[test]
fn every_test_names_a_clause_of_the_spec_and_names_are_unique() {
    let mut names = BTreeSet::new();
    for case in catalogue() {
        assert!(
            conformance::spec::clause(case.clause).is_some(),
            "test {} names {}, which is not a clause of docs/protocol.md",
            case.name,
            case.clause
        );
        assert!(names.insert(case.name), "two tests are named {}", case.name);
    }
}
