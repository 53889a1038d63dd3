//! The correctness checker: what every endpoint received against what the
//! server acknowledged.
//!
//! The rule follows the protocol's guarantee (PC-9.3b, PC-9.4b): once an
//! endpoint's first join of a room answered `last_seq = L`, the endpoint is
//! owed every message of that room with a sequence number above L, exactly
//! once on its stream or in the answer of a later rejoin, and its stream
//! delivers them in increasing order. Acknowledged posts are what the server
//! promised; a message delivered but never acknowledged (its answer was lost)
//! is fine. Sequence numbers the server assigned must be dense.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use scenarios::results::Correctness;

use crate::endpoints::{Endpoint, RoomView};
use crate::workload::Workload;

/// Witnesses kept for the report.
const MAX_WITNESSES: usize = 20;

/// Checks every endpoint's log against the acknowledged posts
/// (room index, seq, post number).
pub fn check(
    acks: &[(u32, u64, u32)],
    endpoints: &[Vec<Arc<Endpoint>>],
    workload: &Workload,
) -> Correctness {
    let mut acked: HashMap<u32, BTreeSet<u64>> = HashMap::new();
    let mut c = Correctness {
        acknowledged: acks.len() as u64,
        ..Correctness::default()
    };
    // One sequence number for two messages of a room, or one message at two
    // sequence numbers, contradicts the server's own acknowledgements.
    let mut by_seq: HashMap<(u32, u64), u32> = HashMap::new();
    let mut by_post: HashMap<u32, (u32, u64)> = HashMap::new();
    for &(room, seq, post) in acks {
        acked.entry(room).or_default().insert(seq);
        let name = &workload.rooms[room as usize].name;
        if let Some(other) = by_seq.insert((room, seq), post).filter(|p| *p != post) {
            c.conflicting_acks += 1;
            witness(
                &mut c,
                format!("room {name}: seq {seq} acknowledged for posts {other} and {post}"),
            );
        }
        if let Some(prev) = by_post
            .insert(post, (room, seq))
            .filter(|p| *p != (room, seq))
        {
            c.conflicting_acks += 1;
            witness(
                &mut c,
                format!("post {post} acknowledged as {prev:?} and ({room}, {seq})"),
            );
        }
    }
    let mut seen_anywhere: HashMap<u32, HashSet<u64>> = HashMap::new();
    for (u, eps) in endpoints.iter().enumerate() {
        for ep in eps {
            let log = ep.log();
            for (room, view) in &log.rooms {
                let seen = seen_anywhere.entry(*room).or_default();
                seen.extend(view.delivered.iter().chain(&view.via_join));
                // Who, and what the endpoint knew, for a witness.
                let away = !ep.is_connected();
                let who = format!(
                    "room {} endpoint {}/{} ({}{}joined at {}, highest seen {}{})",
                    workload.rooms[*room as usize].name,
                    workload.users[u].name,
                    ep.name,
                    if away {
                        "without its stream at the end; "
                    } else {
                        ""
                    },
                    if log.rejoin.contains(room) {
                        "moved to another node and not yet joined there again; "
                    } else if view.not_joined {
                        "a resume was answered not_joined; "
                    } else {
                        ""
                    },
                    view.base.map_or("-".to_owned(), |b| b.to_string()),
                    view.max_seen,
                    if view.joined { "" } else { ", left" },
                );
                let lost = c.lost;
                check_view(view, acked.get(room), &who, &mut c);
                if away {
                    c.lost_while_away += c.lost - lost;
                }
            }
        }
    }
    // Density: between the lowest and highest acknowledged seq of a room,
    // every number was either acknowledged or received by someone.
    let mut rooms: Vec<_> = acked.iter().collect();
    rooms.sort_by_key(|(r, _)| **r);
    for (room, seqs) in rooms {
        let (Some(&lo), Some(&hi)) = (seqs.first(), seqs.last()) else {
            continue;
        };
        let seen = seen_anywhere.get(room);
        for s in lo..=hi {
            if !seqs.contains(&s) && !seen.is_some_and(|x| x.contains(&s)) {
                c.sequence_gaps += 1;
                witness(
                    &mut c,
                    format!(
                        "room {}: seq {s} was never seen although {lo} and {hi} were acknowledged",
                        workload.rooms[*room as usize].name
                    ),
                );
            }
        }
    }
    c
}

/// Checks one endpoint's view of one room.
pub fn check_view(view: &RoomView, acked: Option<&BTreeSet<u64>>, who: &str, c: &mut Correctness) {
    let mut got: HashSet<u64> = HashSet::with_capacity(view.delivered.len());
    let mut highest = 0u64;
    for &s in &view.delivered {
        if !got.insert(s) {
            c.duplicated += 1;
            witness(c, format!("{who}: seq {s} delivered twice"));
        } else if s < highest {
            c.reordered += 1;
            witness(c, format!("{who}: seq {s} delivered after seq {highest}"));
        }
        highest = highest.max(s);
    }
    got.extend(&view.via_join);
    let (Some(base), Some(acked)) = (view.base, acked) else {
        return;
    };
    for &s in acked.range(base + 1..) {
        c.expected_deliveries += 1;
        if got.contains(&s) {
            c.delivered += 1;
        } else {
            c.lost += 1;
            witness(c, format!("{who}: acknowledged seq {s} never arrived"));
        }
    }
}

fn witness(c: &mut Correctness, w: String) {
    if c.witnesses.len() < MAX_WITNESSES {
        c.witnesses.push(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(base: u64, delivered: &[u64], via_join: &[u64]) -> RoomView {
        RoomView {
            base: Some(base),
            max_seen: delivered
                .iter()
                .chain(via_join)
                .copied()
                .max()
                .unwrap_or(base),
            delivered: delivered.to_vec(),
            via_join: via_join.to_vec(),
            joined: true,
            not_joined: false,
        }
    }

    fn run(v: &RoomView, acked: &[u64]) -> Correctness {
        let acked: BTreeSet<u64> = acked.iter().copied().collect();
        let mut c = Correctness::default();
        check_view(v, Some(&acked), "room r endpoint u/e0", &mut c);
        c
    }

    #[test]
    fn a_clean_history_passes() {
        let c = run(&view(2, &[3, 4, 5, 6], &[]), &[3, 4, 5, 6]);
        assert!(c.is_clean(), "{c:?}");
        assert_eq!((c.expected_deliveries, c.delivered), (4, 4));
    }

    #[test]
    fn a_lost_message_is_flagged_with_its_witness() {
        let c = run(&view(0, &[1, 2, 4], &[]), &[1, 2, 3, 4]);
        assert_eq!((c.lost, c.duplicated, c.reordered), (1, 0, 0));
        assert!(
            c.witnesses[0].contains("seq 3 never arrived"),
            "{:?}",
            c.witnesses
        );
    }

    #[test]
    fn a_duplicated_message_is_flagged() {
        let c = run(&view(0, &[1, 2, 2, 3], &[]), &[1, 2, 3]);
        assert_eq!((c.lost, c.duplicated, c.reordered), (0, 1, 0));
        assert!(c.witnesses[0].contains("seq 2 delivered twice"));
    }

    #[test]
    fn a_reordered_message_is_flagged() {
        let c = run(&view(0, &[1, 3, 2, 4], &[]), &[1, 2, 3, 4]);
        assert_eq!((c.lost, c.duplicated, c.reordered), (0, 0, 1));
        assert!(c.witnesses[0].contains("seq 2 delivered after seq 3"));
    }

    #[test]
    fn messages_owed_before_the_first_join_or_received_on_rejoin_are_fine() {
        // Joined at 5: 1..=5 are history. 7 came in a rejoin answer.
        let c = run(&view(5, &[6, 8], &[7]), &[2, 6, 7, 8]);
        assert!(c.is_clean(), "{c:?}");
        assert_eq!((c.expected_deliveries, c.delivered), (3, 3));
    }

    #[test]
    fn an_unacknowledged_delivery_is_not_an_error() {
        let c = run(&view(0, &[1, 2, 3], &[]), &[1, 3]);
        assert!(c.is_clean(), "{c:?}");
    }

    #[test]
    fn a_sequence_gap_is_flagged() {
        use crate::workload::{Class, Rates, SimRoom, SimUser};
        let w = Workload {
            users: vec![SimUser {
                name: "u0".into(),
                endpoints: 1,
                rooms: vec![0],
            }],
            rooms: vec![SimRoom {
                name: "r0".into(),
                class: Class::Small,
                open: true,
                auditorium: false,
                members: vec![0],
                direct: vec![],
                groups: vec![],
                posters: vec![0],
                managers: vec![],
                post_rate_per_s: 1.0,
            }],
            rates: Rates::default(),
            messages_on_join: 30,
            namespace: "t".into(),
        };
        let ep = Arc::new(Endpoint::new(0));
        ep.log().rooms.insert(0, view(0, &[1, 2, 4], &[]));
        // 1, 2 and 4 acknowledged; 3 neither acknowledged nor seen anywhere.
        let c = check(&[(0, 1, 0), (0, 2, 1), (0, 4, 2)], &[vec![ep]], &w);
        assert_eq!(c.sequence_gaps, 1, "{c:?}");
        assert_eq!(c.lost, 0);
        assert!(c
            .witnesses
            .iter()
            .any(|w| w.contains("seq 3 was never seen")));
    }

    #[test]
    fn contradicting_acknowledgements_are_flagged() {
        use crate::workload::{Class, Rates, SimRoom};
        let w = Workload {
            users: vec![],
            rooms: vec![SimRoom {
                name: "r0".into(),
                class: Class::Small,
                open: true,
                auditorium: false,
                members: vec![],
                direct: vec![],
                groups: vec![],
                posters: vec![],
                managers: vec![],
                post_rate_per_s: 1.0,
            }],
            rates: Rates::default(),
            messages_on_join: 30,
            namespace: "t".into(),
        };
        // Seq 2 given to posts 1 and 2.
        let c = check(&[(0, 1, 0), (0, 2, 1), (0, 2, 2)], &[], &w);
        assert_eq!(c.conflicting_acks, 1, "{c:?}");
        assert!(!c.is_clean());
        assert!(c.witnesses[0].contains("seq 2 acknowledged for posts 1 and 2"));
    }
}
