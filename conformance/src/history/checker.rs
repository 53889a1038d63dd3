//! The offline checker. Per room it proves, from a history alone:
//!
//! - no acknowledged message lost: every post acknowledged before a read was
//!   invoked is in that read, and every endpoint's stream delivered every
//!   message after its join point up to the room's last one;
//! - no duplicates: a text sits at one seq, and no stream delivers a seq twice;
//! - one total order: every read and every stream agrees on the text at each
//!   seq, and with the seq each post was acknowledged with; streams deliver in
//!   seq order;
//! - dense sequence numbers: every read of a (fresh) room is exactly 1..=n.
//!
//! Posts that failed definitely must leave no trace; posts with an unknown
//! outcome may appear at most once. Texts are unique per post operation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use super::{Entry, History, Op, Phase};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// An acknowledged message missing from a read or a stream.
    Lost,
    /// A message at two seqs, or delivered twice to one endpoint.
    Duplicate,
    /// A stream or read out of seq order.
    Reorder,
    /// A missing seq: a read that is not 1..=n, a stream that skips.
    Gap,
    /// Two observers (or an acknowledgement) disagree on a seq's message.
    Divergent,
    /// A message nobody posted, or one whose post definitely failed.
    Phantom,
}

impl AnomalyKind {
    /// The clause of docs/protocol.md an anomaly of this kind breaks.
    pub fn clause(self) -> &'static str {
        match self {
            AnomalyKind::Lost => "PC-15.3a",
            AnomalyKind::Duplicate | AnomalyKind::Reorder => "PC-15.2a",
            AnomalyKind::Gap => "PC-10.3a",
            AnomalyKind::Divergent => "PC-15.1a",
            AnomalyKind::Phantom => "PC-3.3a",
        }
    }
}

/// One anomaly and the history entries (by index) that witness it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub room: u64,
    pub detail: String,
    pub witnesses: Vec<usize>,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} in room {}: {} (entries {:?})",
            self.kind, self.room, self.detail, self.witnesses
        )
    }
}

/// What is known about one post operation.
#[derive(Default)]
struct PostOp {
    invoke: Option<usize>,
    done: Option<(usize, Phase, Option<u64>)>,
}

/// Checks a history; an empty answer means it is clean.
pub fn check(h: &History) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let mut rooms: Vec<u64> = h.rooms.clone();
    for e in &h.entries {
        if !rooms.contains(&e.room) {
            rooms.push(e.room);
        }
    }
    for room in rooms {
        let entries: Vec<(usize, &Entry)> = h
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.room == room)
            .collect();
        check_room(room, &entries, &mut out);
    }
    out
}

fn check_room(room: u64, entries: &[(usize, &Entry)], out: &mut Vec<Anomaly>) {
    let mut push = |kind, detail: String, witnesses: Vec<usize>| {
        out.push(Anomaly {
            kind,
            room,
            detail,
            witnesses,
        })
    };

    // Post operations by their (unique) text.
    let mut posts: HashMap<&str, PostOp> = HashMap::new();
    for (i, e) in entries {
        if e.f != Op::Post {
            continue;
        }
        let Some(text) = e.text.as_deref() else {
            continue;
        };
        let p = posts.entry(text).or_default();
        match e.phase {
            Phase::Invoke => p.invoke = Some(*i),
            phase => p.done = Some((*i, phase, e.seq)),
        }
    }

    // Every observation of (seq, text): reads, deliveries, acknowledgements.
    let mut at_seq: BTreeMap<u64, (&str, usize)> = BTreeMap::new();
    let mut seq_of: HashMap<&str, (u64, usize)> = HashMap::new();
    let mut seen_divergent: HashSet<(u64, usize)> = HashSet::new();
    let mut seen_dup: HashSet<&str> = HashSet::new();
    let mut observations: Vec<(u64, &str, usize)> = Vec::new();
    for (i, e) in entries {
        match (e.f, e.phase) {
            (Op::Read, Phase::Ok) => {
                for (seq, text) in e.messages.iter().flatten() {
                    observations.push((*seq, text.as_str(), *i));
                }
            }
            (Op::Deliver, _) | (Op::Post, Phase::Ok) => {
                if let (Some(seq), Some(text)) = (e.seq, e.text.as_deref()) {
                    observations.push((seq, text, *i));
                }
            }
            _ => {}
        }
    }
    for (seq, text, i) in observations {
        match at_seq.get(&seq) {
            None => {
                at_seq.insert(seq, (text, i));
            }
            Some((other, j)) if *other != text => {
                if seen_divergent.insert((seq, i)) {
                    push(
                        AnomalyKind::Divergent,
                        format!("seq {seq} is {other:?} at entry {j} but {text:?} at entry {i}"),
                        vec![*j, i],
                    );
                }
            }
            Some(_) => {}
        }
        match seq_of.get(text) {
            None => {
                seq_of.insert(text, (seq, i));
            }
            Some((s, j)) if *s != seq => {
                if seen_dup.insert(text) {
                    push(
                        AnomalyKind::Duplicate,
                        format!("{text:?} is at seq {s} (entry {j}) and at seq {seq} (entry {i})"),
                        vec![*j, i],
                    );
                }
            }
            Some(_) => {}
        }
    }

    // Phantoms: observed texts with no post, or whose post definitely failed.
    for (text, (seq, i)) in &seq_of {
        match posts.get(text) {
            None => push(
                AnomalyKind::Phantom,
                format!("{text:?} at seq {seq} was never posted"),
                vec![*i],
            ),
            Some(PostOp {
                done: Some((j, Phase::Fail, _)),
                ..
            }) => push(
                AnomalyKind::Phantom,
                format!("{text:?} appears at seq {seq} though its post failed"),
                vec![*j, *i],
            ),
            _ => {}
        }
    }

    // Reads: ascending, dense, and holding every post acknowledged before
    // the read was invoked.
    let mut read_invoked: HashMap<u32, usize> = HashMap::new();
    for (i, e) in entries {
        if e.f != Op::Read {
            continue;
        }
        match e.phase {
            Phase::Invoke => {
                read_invoked.insert(e.process, *i);
            }
            Phase::Ok => {
                let msgs = e.messages.as_deref().unwrap_or(&[]);
                for (k, w) in msgs.windows(2).enumerate() {
                    if w[1].0 < w[0].0 {
                        push(
                            AnomalyKind::Reorder,
                            format!(
                                "read lists seq {} after seq {} (position {})",
                                w[1].0,
                                w[0].0,
                                k + 1
                            ),
                            vec![*i],
                        );
                    } else if w[1].0 == w[0].0 {
                        push(
                            AnomalyKind::Duplicate,
                            format!("read lists seq {} twice", w[0].0),
                            vec![*i],
                        );
                    }
                }
                let mut seqs: Vec<u64> = msgs.iter().map(|m| m.0).collect();
                seqs.sort_unstable();
                seqs.dedup();
                let missing: Vec<u64> = match seqs.last() {
                    Some(&max) => (1..=max)
                        .filter(|s| seqs.binary_search(s).is_err())
                        .collect(),
                    None => Vec::new(),
                };
                if !missing.is_empty() {
                    push(
                        AnomalyKind::Gap,
                        format!("read lacks seqs {missing:?} below its highest"),
                        vec![*i],
                    );
                }
                let texts: HashSet<&str> = msgs.iter().map(|m| m.1.as_str()).collect();
                let since = read_invoked.get(&e.process).copied().unwrap_or(0);
                for (text, p) in &posts {
                    if let Some((j, Phase::Ok, seq)) = p.done {
                        if j < since && !texts.contains(text) {
                            push(
                                AnomalyKind::Lost,
                                format!(
                                    "{text:?} acknowledged as seq {} before the read was invoked, missing from it",
                                    seq.map_or("?".into(), |s| s.to_string())
                                ),
                                vec![j, *i],
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }

    // Streams: per process, deliveries continue exactly from the join or
    // resume point, and reach the room's last seq by the end.
    let last = at_seq.keys().next_back().copied().unwrap_or(0);
    let mut cursor: BTreeMap<u32, (u64, usize)> = BTreeMap::new();
    let mut delivered: HashMap<u32, HashSet<u64>> = HashMap::new();
    for (i, e) in entries {
        match (e.f, e.phase) {
            (Op::Join | Op::Resume, Phase::Ok) => {
                cursor.insert(e.process, (e.seq.unwrap_or(0), *i));
            }
            (Op::Deliver, _) => {
                let Some(seq) = e.seq else { continue };
                let Some((c, _)) = cursor.get(&e.process).copied() else {
                    push(
                        AnomalyKind::Phantom,
                        format!("process {} got seq {seq} without joining", e.process),
                        vec![*i],
                    );
                    continue;
                };
                let seen = delivered.entry(e.process).or_default();
                if seq <= c {
                    let kind = if seen.contains(&seq) {
                        AnomalyKind::Duplicate
                    } else {
                        AnomalyKind::Reorder
                    };
                    push(
                        kind,
                        format!("process {} got seq {seq} after seq {c}", e.process),
                        vec![*i],
                    );
                } else if seq > c + 1 {
                    push(
                        AnomalyKind::Gap,
                        format!(
                            "process {} got seq {seq} right after seq {c}: {}..={} never came",
                            e.process,
                            c + 1,
                            seq - 1
                        ),
                        vec![*i],
                    );
                }
                seen.insert(seq);
                cursor.insert(e.process, (c.max(seq), *i));
            }
            _ => {}
        }
    }
    for (process, (c, i)) in cursor {
        if c < last {
            push(
                AnomalyKind::Lost,
                format!(
                    "process {process} stayed joined but its stream never delivered seqs {}..={last}",
                    c + 1
                ),
                vec![i],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Entry, History, Op, Phase};

    const R: u64 = 7;

    fn post(p: u32, text: &str, seq: Option<u64>) -> Vec<Entry> {
        let inv = Entry::new(p, Phase::Invoke, Op::Post, R).text(text);
        let done = match seq {
            Some(s) => Entry::new(p, Phase::Ok, Op::Post, R).text(text).seq(s),
            None => Entry::new(p, Phase::Info, Op::Post, R)
                .text(text)
                .error("timeout"),
        };
        vec![inv, done]
    }

    fn read(p: u32, msgs: &[(u64, &str)]) -> Vec<Entry> {
        vec![
            Entry::new(p, Phase::Invoke, Op::Read, R),
            Entry::new(p, Phase::Ok, Op::Read, R)
                .messages(msgs.iter().map(|(s, t)| (*s, t.to_string())).collect()),
        ]
    }

    fn deliver(p: u32, seq: u64, text: &str) -> Entry {
        Entry::new(p, Phase::Ok, Op::Deliver, R).seq(seq).text(text)
    }

    fn join(p: u32, seq: u64) -> Entry {
        Entry::new(p, Phase::Ok, Op::Join, R).seq(seq)
    }

    /// Two processes, three posts, a stream each, and reads that agree.
    fn clean() -> Vec<Entry> {
        let mut h = vec![join(1, 0), join(2, 0)];
        h.extend(post(1, "a", Some(1)));
        h.push(deliver(1, 1, "a"));
        h.push(deliver(2, 1, "a"));
        h.extend(post(2, "b", Some(2)));
        h.extend(post(2, "c", Some(3)));
        h.push(deliver(1, 2, "b"));
        h.push(deliver(2, 2, "b"));
        h.push(Entry::new(1, Phase::Ok, Op::Resume, R).seq(2));
        h.push(deliver(1, 3, "c"));
        h.push(deliver(2, 3, "c"));
        h.extend(read(1, &[(1, "a"), (2, "b"), (3, "c")]));
        h
    }

    fn kinds(entries: Vec<Entry>) -> Vec<AnomalyKind> {
        let mut k: Vec<AnomalyKind> = check(&History::new(1, vec![R], entries))
            .into_iter()
            .map(|a| a.kind)
            .collect();
        k.sort();
        k.dedup();
        k
    }

    #[test]
    fn a_clean_history_has_no_anomalies() {
        assert_eq!(kinds(clean()), vec![]);
    }

    #[test]
    fn an_unknown_post_may_appear_once_or_not_at_all() {
        let mut h = clean();
        h.extend(post(1, "maybe", None));
        assert_eq!(kinds(h.clone()), vec![]);
        h.extend(post(2, "d", None));
        h.push(deliver(1, 4, "d"));
        h.push(deliver(2, 4, "d"));
        h.extend(read(2, &[(1, "a"), (2, "b"), (3, "c"), (4, "d")]));
        assert_eq!(kinds(h), vec![]);
    }

    #[test]
    fn a_lost_acknowledged_message_is_flagged() {
        let mut h = clean();
        h.extend(post(1, "d", Some(4)));
        // The read after the acknowledgement lacks seq 4; the streams too.
        h.extend(read(2, &[(1, "a"), (2, "b"), (3, "c")]));
        let anomalies = check(&History::new(1, vec![R], h));
        assert!(
            anomalies
                .iter()
                .any(|a| a.kind == AnomalyKind::Lost && a.detail.contains("\"d\"")),
            "{anomalies:?}"
        );
    }

    #[test]
    fn a_message_delivered_twice_is_flagged() {
        let mut h = clean();
        h.push(deliver(2, 3, "c"));
        assert_eq!(kinds(h), vec![AnomalyKind::Duplicate]);
    }

    #[test]
    fn a_message_stored_twice_is_flagged() {
        let mut h = clean();
        h.extend(read(2, &[(1, "a"), (2, "b"), (3, "c"), (4, "a")]));
        assert!(kinds(h).contains(&AnomalyKind::Duplicate));
    }

    #[test]
    fn a_reordered_delivery_is_flagged() {
        let mut h = vec![join(1, 0)];
        h.extend(post(2, "a", Some(1)));
        h.extend(post(2, "b", Some(2)));
        h.push(deliver(1, 2, "b"));
        h.push(deliver(1, 1, "a"));
        let k = kinds(h);
        assert!(k.contains(&AnomalyKind::Reorder), "{k:?}");
    }

    #[test]
    fn a_reordered_read_is_flagged() {
        let mut h = clean();
        h.extend(read(2, &[(2, "b"), (1, "a"), (3, "c")]));
        assert_eq!(kinds(h), vec![AnomalyKind::Reorder]);
    }

    #[test]
    fn a_gap_in_sequence_numbers_is_flagged() {
        let mut h = vec![join(1, 0)];
        h.extend(post(2, "a", Some(1)));
        h.extend(post(2, "b", Some(3)));
        h.push(deliver(1, 1, "a"));
        h.push(deliver(1, 3, "b"));
        h.extend(read(1, &[(1, "a"), (3, "b")]));
        assert_eq!(kinds(h), vec![AnomalyKind::Gap]);
    }

    #[test]
    fn a_stream_that_skips_is_flagged() {
        let mut h = clean();
        h.extend(post(1, "d", Some(4)));
        h.extend(post(1, "e", Some(5)));
        h.push(deliver(1, 4, "d"));
        h.push(deliver(1, 5, "e"));
        h.push(deliver(2, 5, "e"));
        let k = kinds(h);
        assert_eq!(k, vec![AnomalyKind::Gap]);
    }

    #[test]
    fn divergent_orders_are_flagged() {
        let mut h = vec![join(1, 0), join(2, 0)];
        h.extend(post(1, "a", Some(1)));
        h.extend(post(2, "b", Some(2)));
        h.push(deliver(1, 1, "a"));
        h.push(deliver(1, 2, "b"));
        h.push(deliver(2, 1, "b"));
        h.push(deliver(2, 2, "a"));
        let anomalies = check(&History::new(1, vec![R], h));
        assert!(
            anomalies
                .iter()
                .any(|a| a.kind == AnomalyKind::Divergent && a.witnesses.len() == 2),
            "{anomalies:?}"
        );
    }

    #[test]
    fn a_failed_post_that_took_effect_is_flagged() {
        let mut h = clean();
        h.push(Entry::new(1, Phase::Invoke, Op::Post, R).text("no"));
        h.push(
            Entry::new(1, Phase::Fail, Op::Post, R)
                .text("no")
                .error("rate_limited"),
        );
        h.extend(read(2, &[(1, "a"), (2, "b"), (3, "c"), (4, "no")]));
        let k = kinds(h);
        assert!(k.contains(&AnomalyKind::Phantom), "{k:?}");
    }

    #[test]
    fn histories_round_trip_through_json() {
        let h = History::new(42, vec![R], clean());
        let dir = std::env::temp_dir().join(format!("pchat-history-{}", std::process::id()));
        let path = dir.join("h.json");
        h.save(&path).unwrap();
        assert_eq!(History::load(&path).unwrap(), h);
        let _ = std::fs::remove_dir_all(dir);
    }
}
