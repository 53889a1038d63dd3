//! Redaction of response bodies for snapshots: values the spec leaves to the
//! server (ids, timestamps, request ids, tokens, free text, the run's random
//! namespace) are checked for their format first and then replaced with
//! stable placeholders, numbered in order of appearance.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// Whether `s` is a timestamp of PC-1.4a: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Redacts `v`. Fails, naming the path, when a value does not have the
/// format the spec gives it.
pub fn redact(v: &Value, namespace: &str) -> Result<Value, String> {
    let mut r = Redactor {
        ns: namespace,
        ids: HashMap::new(),
    };
    r.value(v, "", "")
}

struct Redactor<'a> {
    ns: &'a str,
    /// Per kind of id, the placeholders given so far.
    ids: HashMap<String, HashMap<u64, usize>>,
}

impl Redactor<'_> {
    fn id(&mut self, kind: &str, n: u64) -> Value {
        let map = self.ids.entry(kind.to_owned()).or_default();
        let next = map.len() + 1;
        let i = *map.entry(n).or_insert(next);
        Value::String(format!("[{kind}-{i}]"))
    }

    fn value(&mut self, v: &Value, key: &str, path: &str) -> Result<Value, String> {
        Ok(match (key, v) {
            ("request_id", Value::String(s)) => {
                if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "{path}: request id {s:?} is not 1 to 64 visible characters"
                    ));
                }
                Value::String("[request_id]".into())
            }
            ("ts" | "created_at" | "expires_at" | "at", Value::String(s)) => {
                if !is_timestamp(s) {
                    return Err(format!("{path}: {s:?} is not a PC-1.4a timestamp"));
                }
                Value::String("[timestamp]".into())
            }
            ("token", Value::String(s)) => {
                if s.is_empty() || s.len() > 512 {
                    return Err(format!("{path}: token of {} bytes", s.len()));
                }
                Value::String("[token]".into())
            }
            ("message", Value::String(_)) => Value::String("[text]".into()),
            ("retry_after_ms", Value::Number(n)) => {
                if n.as_u64().is_none() {
                    return Err(format!("{path}: retry_after_ms {n} is not a whole number"));
                }
                Value::String("[ms]".into())
            }
            ("id" | "room" | "category", Value::Number(n)) => {
                let n = n
                    .as_u64()
                    .filter(|n| *n >= 1 && *n < 1 << 53)
                    .ok_or_else(|| {
                        format!("{path}: id {n} is not a positive integer below 2^53")
                    })?;
                self.id(if key == "id" { "id" } else { key }, n)
            }
            ("tokens", Value::Object(m)) => {
                let mut out = Map::new();
                for (k, t) in m {
                    let name = self.text(k);
                    out.insert(name, self.value(t, "token", &format!("{path}.{k}"))?);
                }
                Value::Object(out)
            }
            ("room_ids", Value::Object(m)) => {
                let mut out = Map::new();
                for (k, id) in m {
                    let name = self.text(k);
                    out.insert(name, self.value(id, "room", &format!("{path}.{k}"))?);
                }
                Value::Object(out)
            }
            (_, Value::Object(m)) => {
                let mut out = Map::new();
                for (k, x) in m {
                    out.insert(k.clone(), self.value(x, k, &format!("{path}.{k}"))?);
                }
                Value::Object(out)
            }
            (_, Value::Array(a)) => Value::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, x)| self.value(x, key, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            (_, Value::String(s)) => Value::String(self.text(s)),
            _ => v.clone(),
        })
    }

    /// Replaces the namespace and the run's counters in names:
    /// `cf-1a2b-room17` becomes `[ns]-room`.
    fn text(&self, s: &str) -> String {
        let upper = self.ns.to_uppercase();
        if self.ns.is_empty() || !(s.contains(self.ns) || s.contains(&upper)) {
            return s.to_owned();
        }
        let replaced = s.replace(self.ns, "[ns]").replace(&upper, "[ns]");
        let mut out = String::new();
        for part in replaced.split_inclusive(|c: char| !c.is_ascii_alphanumeric()) {
            let (word, sep) = match part.char_indices().last() {
                Some((i, c)) if !c.is_ascii_alphanumeric() => (&part[..i], &part[i..]),
                _ => (part, ""),
            };
            let trimmed = word.trim_end_matches(|c: char| c.is_ascii_digit());
            if trimmed.is_empty() || trimmed.len() == word.len() {
                out.push_str(word);
            } else {
                out.push_str(trimmed);
            }
            out.push_str(sep);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_get_placeholders_in_order_of_appearance() {
        let v = json!({"id": 41, "category": 7, "rooms": [{"room": 41}, {"room": 9}],
            "created_at": "2026-11-25T10:00:00.123Z", "name": "cf-ab-room17",
            "description": "about CF-AB-SRCH3",
            "error": {"message": "free text", "request_id": "abc"}});
        let r = redact(&v, "cf-ab").unwrap();
        assert_eq!(
            r,
            json!({"id": "[id-1]", "category": "[category-1]",
                "rooms": [{"room": "[room-1]"}, {"room": "[room-2]"}],
                "created_at": "[timestamp]", "name": "[ns]-room",
                "description": "about [ns]-SRCH",
                "error": {"message": "[text]", "request_id": "[request_id]"}})
        );
    }

    #[test]
    fn bad_formats_are_refused_not_hidden() {
        assert!(redact(&json!({"ts": "2026-11-25T10:00:00Z"}), "x").is_err());
        assert!(redact(&json!({"id": 0}), "x").is_err());
        assert!(redact(&json!({"request_id": "has space"}), "x").is_err());
        assert!(is_timestamp("2026-11-25T10:00:00.123Z"));
    }
}
