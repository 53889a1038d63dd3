//! The clauses of docs/protocol.md, parsed from the copy compiled into the
//! suite, so a verdict always quotes the text it was judged against.
//!
//! A clause is a list item of the form `- **PC-<section>.<n><letter>**
//! KEYWORD: text`; the keyword may carry a parenthesised note, as in
//! `MUST (clients)`.

use std::sync::OnceLock;

/// The protocol specification this suite was built against.
pub const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

/// The RFC 2119 strength of a clause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Keyword {
    Must,
    Should,
    May,
}

impl Keyword {
    pub fn as_str(self) -> &'static str {
        match self {
            Keyword::Must => "MUST",
            Keyword::Should => "SHOULD",
            Keyword::May => "MAY",
        }
    }
}

/// One numbered requirement of the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// `PC-9.3a`.
    pub id: String,
    pub keyword: Keyword,
    /// The keyword as written, with its note: `MUST (clients)`.
    pub keyword_text: String,
    pub text: String,
    /// The section number (`9`) and heading (`Endpoints, joining and the event stream`).
    pub section: u32,
    pub section_title: String,
}

/// Parses every clause of a protocol document, in document order.
pub fn parse(doc: &str) -> Vec<Clause> {
    let mut out = Vec::new();
    let (mut section, mut section_title) = (0u32, String::new());
    for line in doc.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            if let Some((num, title)) = h.split_once(". ") {
                if let Ok(n) = num.trim().parse() {
                    section = n;
                    section_title = title.trim().to_owned();
                }
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("- **PC-") else {
            continue;
        };
        let Some((id, rest)) = rest.split_once("** ") else {
            continue;
        };
        let Some((kw, text)) = rest.split_once(':') else {
            continue;
        };
        let keyword = if kw.starts_with("MUST") {
            Keyword::Must
        } else if kw.starts_with("SHOULD") {
            Keyword::Should
        } else if kw.starts_with("MAY") {
            Keyword::May
        } else {
            continue;
        };
        out.push(Clause {
            id: format!("PC-{id}"),
            keyword,
            keyword_text: kw.trim().to_owned(),
            text: text.trim().to_owned(),
            section,
            section_title: section_title.clone(),
        });
    }
    out
}

/// The clauses of the compiled-in spec.
pub fn clauses() -> &'static [Clause] {
    static CLAUSES: OnceLock<Vec<Clause>> = OnceLock::new();
    CLAUSES.get_or_init(|| parse(PROTOCOL_MD))
}

/// Looks a clause up by id.
pub fn clause(id: &str) -> Option<&'static Clause> {
    clauses().iter().find(|c| c.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keywords_notes_and_sections() {
        let doc = "## 9. Streams\n\n- **PC-9.3a** MUST: Do it.\n- **PC-9.9z** SHOULD (not observable from outside): Maybe: really.\nnot a clause\n## 10. Posting\n- **PC-10.1a** MAY: Fine.\n";
        let c = parse(doc);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].id, "PC-9.3a");
        assert_eq!(c[0].keyword, Keyword::Must);
        assert_eq!(c[0].section_title, "Streams");
        assert_eq!(c[1].keyword, Keyword::Should);
        assert_eq!(c[1].keyword_text, "SHOULD (not observable from outside)");
        assert_eq!(c[1].text, "Maybe: really.");
        assert_eq!((c[2].section, c[2].keyword), (10, Keyword::May));
    }

    #[test]
    fn the_real_spec_has_its_clauses() {
        let all = clauses();
        assert!(all.len() > 100, "only {} clauses parsed", all.len());
        let must = all.iter().filter(|c| c.keyword == Keyword::Must).count();
        assert!(must >= 100, "only {must} MUST clauses");
        let c = clause("PC-9.3b").expect("PC-9.3b");
        assert_eq!(c.section, 9);
        assert!(c.text.contains("exactly once"));
    }
}
