//! Where in a TOML file something went wrong: the line and column of a byte
//! offset, and the dotted path of the field a deserialisation error is about.
//!
//! Scenario and model files are written by people, so every error points at
//! the place to edit. Syntax errors are found by a first parse into a plain
//! table (they have a position but no field); data errors come from the
//! typed parse, through `serde_path_to_error`, which knows the field.

use serde::de::DeserializeOwned;

/// An error located in the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Located {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted path of the field at fault; `None` for syntax errors, which
    /// are about the text rather than a field.
    pub field: Option<String>,
    pub message: String,
}

/// Deserialises `text`, locating the first error.
pub(crate) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Located> {
    if let Err(e) = text.parse::<toml::Table>() {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, column) = line_col(text, offset);
        return Err(Located {
            line,
            column,
            field: None,
            message: one_line(e.message()),
        });
    }
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let mut path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|segment| {
                use serde_path_to_error::Segment;
                match segment {
                    Segment::Seq { index } => Some(format!("[{index}]")),
                    // `toml::Spanned` wraps a value in a struct whose field
                    // names start with `$__`; they are not the user's.
                    Segment::Map { key } if key.starts_with("$__") => None,
                    Segment::Map { key } => Some(key.clone()),
                    Segment::Enum { variant } => Some(variant.clone()),
                    Segment::Unknown => Some("?".to_owned()),
                }
            })
            .collect();
        let inner = e.into_inner();
        let message = one_line(inner.message());
        // A missing field is reported against its table; name the field.
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            path.push(missing.to_owned());
        }
        let offset = inner.span().map_or(0, |s| key_start(text, s.start));
        let (line, column) = line_col(text, offset);
        let field = join_path(&path);
        Located {
            line,
            column,
            field: Some(if field.is_empty() {
                "(file)".into()
            } else {
                field
            }),
            message,
        }
    })
}

/// The error for a value that parsed but is not acceptable, at the key of
/// the value whose span starts at `value_start`.
pub(crate) fn at_value(text: &str, value_start: usize, field: &str, message: String) -> Located {
    let (line, column) = line_col(text, key_start(text, value_start));
    Located {
        line,
        column,
        field: Some(field.to_owned()),
        message,
    }
}

/// The position of the table `table` (a header `[table]`, or the first
/// `table.key = ...` or `table = {...}` line), for errors about a table as a
/// whole. `toml::Spanned` cannot wrap a table written with dotted keys, so
/// this looks at the text; a table it cannot find is reported at 1:1.
pub(crate) fn table_start(text: &str, table: &str) -> (usize, usize) {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        let indent = line.len() - line.trim_start().len();
        let header = t
            .strip_prefix('[')
            .and_then(|t| t.split(']').next())
            .map(str::trim);
        let dotted = t
            .strip_prefix(table)
            .is_some_and(|rest| rest.starts_with('.') || rest.trim_start().starts_with('='));
        if header == Some(table) || dotted {
            return line_col(text, offset + indent);
        }
        offset += line.len();
    }
    (1, 1)
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The start of the key of `key = value` when `offset` is where the value
/// starts, so that an error points at the key a person reads first;
/// otherwise `offset` itself (array elements, keys, table headers).
fn key_start(text: &str, offset: usize) -> usize {
    let Some(before) = text.get(..offset) else {
        return offset;
    };
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let Some(lhs) = before[line_start..].trim_end().strip_suffix('=') else {
        return offset;
    };
    let lhs = lhs.trim_end();
    // Walk back over the key (bare or quoted parts joined by dots); a
    // quoted part with a space in it stops the walk early, which only moves
    // the column.
    let key_len = lhs
        .chars()
        .rev()
        .take_while(|c| !c.is_whitespace() && !matches!(c, '{' | ',' | '='))
        .map(char::len_utf8)
        .sum::<usize>();
    if key_len == 0 {
        return offset;
    }
    line_start + lhs.len() - key_len
}

/// toml's messages may span lines ("invalid table header\nexpected ...").
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

fn join_path(path: &[String]) -> String {
    let mut out = String::new();
    for p in path {
        if !out.is_empty() && !p.starts_with('[') {
            out.push('.');
        }
        out.push_str(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // The value starts after a two-byte character.
        let value = text.find('"').unwrap();
        assert_eq!(line_col(text, value), (2, 6));
        assert_eq!(line_col(text, key_start(text, value)), (2, 1));
    }

    #[test]
    fn a_value_in_an_inline_table_points_at_its_own_key() {
        let text = "load = { users = 0 }\n";
        let value = text.find('0').unwrap();
        assert_eq!(line_col(text, key_start(text, value)), (1, 10));
    }

    #[test]
    fn tables_are_found_by_header_or_dotted_key() {
        assert_eq!(table_start("a = 1\n\n[load]\n", "load"), (3, 1));
        assert_eq!(table_start("a = 1\nload.users = 3\n", "load"), (2, 1));
        assert_eq!(table_start("[load.steps]\n", "load.steps"), (1, 1));
        assert_eq!(table_start("loader = 1\n", "load"), (1, 1));
    }
}
