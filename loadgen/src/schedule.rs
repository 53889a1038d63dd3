//! The schedule of a run: when each endpoint connects, and every operation of
//! the steady state with its intended send time.
//!
//! Every draw comes from one `StdRng` seeded with the run's seed, in a fixed
//! order, so the same seed and workload give the same schedule. Arrivals and
//! operations are Poisson processes (exponential gaps) at the workload's
//! rates; latencies are later measured from these intended times, so a server
//! that stalls cannot hide behind a generator that waits for it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};

use crate::workload::Workload;

/// What one scheduled operation does.
#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    /// `poster` posts into `room`; `post` indexes the run's post table.
    Post { room: u32, poster: u32, post: u32 },
    /// An endpoint leaves one of its rooms and joins it again, resuming from
    /// the last message it saw (the join loads history).
    Rejoin { user: u32, endpoint: u8, room: u32 },
    /// A user reads the participant list of one of its rooms.
    Participants { user: u32, room: u32 },
    /// A user changes presence state.
    Presence { user: u32, state: &'static str },
    /// A user pages back through a room's history.
    History { user: u32, room: u32 },
    /// A user searches messages of the rooms they may read.
    Search { user: u32, term: u32 },
}

impl OpKind {
    /// The operation's name in metrics and reports.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::Post { .. } => "post_ack",
            OpKind::Rejoin { .. } => "join",
            OpKind::Participants { .. } => "participants",
            OpKind::Presence { .. } => "presence",
            OpKind::History { .. } => "history",
            OpKind::Search { .. } => "search",
        }
    }

    /// The simulated user who performs the operation (a post's poster).
    pub fn user(&self) -> u32 {
        match *self {
            OpKind::Post { poster, .. } => poster,
            OpKind::Rejoin { user, .. }
            | OpKind::Participants { user, .. }
            | OpKind::Presence { user, .. }
            | OpKind::History { user, .. }
            | OpKind::Search { user, .. } => user,
        }
    }
}

/// A step's whole schedule: arrivals, then the steady state's operations,
/// drawn in that order from one generator seeded with `seed`. Every shard of
/// the generator draws it whole and executes its own users' part.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Arrival of each user, ms from the ramp's start (see [`arrivals`]).
    pub arrivals: Vec<u64>,
    /// Sorted by time (see [`steady_ops`]).
    pub ops: Vec<Op>,
}

impl Schedule {
    pub fn draw(w: &Workload, seed: u64, ramp_ms: u64, steady_ms: u64) -> Schedule {
        let mut rng = rng(seed);
        let arrivals = arrivals(w.users.len(), ramp_ms, &mut rng);
        let ops = steady_ops(w, steady_ms, &mut rng);
        Schedule { arrivals, ops }
    }

    /// Every post's intended time (ms from the steady start), by post number.
    pub fn post_times(&self) -> Vec<u64> {
        let mut at = Vec::new();
        for o in &self.ops {
            if let OpKind::Post { post, .. } = o.kind {
                let i = post as usize;
                if at.len() <= i {
                    at.resize(i + 1, 0);
                }
                at[i] = o.at_ms;
            }
        }
        at
    }

    /// Posts in the schedule.
    pub fn posts(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Post { .. }))
            .count()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// Intended send time, in milliseconds from the start of the steady state.
    pub at_ms: u64,
    pub kind: OpKind,
}

/// When each user arrives during the ramp (ms from the ramp's start), in
/// user order.
pub fn arrivals(users: usize, ramp_ms: u64, rng: &mut StdRng) -> Vec<u64> {
    // Uniform arrival times, sorted, give a Poisson-like ramp that ends on
    // time; each user keeps its drawn time.
    (0..users)
        .map(|_| {
            if ramp_ms == 0 {
                0
            } else {
                rng.gen_range(0..ramp_ms)
            }
        })
        .collect()
}

const PRESENCE: [&str; 5] = [
    "available",
    "busy",
    "away",
    "be_right_back",
    "do_not_disturb",
];

/// The steady-state operations of `w` for `duration_ms`, sorted by time.
pub fn steady_ops(w: &Workload, duration_ms: u64, rng: &mut StdRng) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut post = 0u32;
    for (ri, room) in w.rooms.iter().enumerate() {
        if room.posters.is_empty() {
            continue;
        }
        for at_ms in poisson(room.post_rate_per_s, duration_ms, rng) {
            let poster = room.posters[rng.gen_range(0..room.posters.len())];
            ops.push(Op {
                at_ms,
                kind: OpKind::Post {
                    room: ri as u32,
                    poster,
                    post,
                },
            });
            post += 1;
        }
    }
    let users = w.users.len() as u32;
    let pick_room = |rng: &mut StdRng, u: u32| -> Option<u32> {
        let rooms = &w.users[u as usize].rooms;
        (!rooms.is_empty()).then(|| rooms[rng.gen_range(0..rooms.len())])
    };
    for at_ms in poisson(w.rates.joins_per_s, duration_ms, rng) {
        let user = rng.gen_range(0..users);
        let endpoint = rng.gen_range(0..w.users[user as usize].endpoints);
        if let Some(room) = pick_room(rng, user) {
            ops.push(Op {
                at_ms,
                kind: OpKind::Rejoin {
                    user,
                    endpoint,
                    room,
                },
            });
        }
    }
    for at_ms in poisson(w.rates.participant_polls_per_s, duration_ms, rng) {
        let user = rng.gen_range(0..users);
        if let Some(room) = pick_room(rng, user) {
            ops.push(Op {
                at_ms,
                kind: OpKind::Participants { user, room },
            });
        }
    }
    for at_ms in poisson(w.rates.presence_per_s, duration_ms, rng) {
        let user = rng.gen_range(0..users);
        let state = PRESENCE[rng.gen_range(0..PRESENCE.len())];
        ops.push(Op {
            at_ms,
            kind: OpKind::Presence { user, state },
        });
    }
    for at_ms in poisson(w.rates.history_reads_per_s, duration_ms, rng) {
        let user = rng.gen_range(0..users);
        if let Some(room) = pick_room(rng, user) {
            ops.push(Op {
                at_ms,
                kind: OpKind::History { user, room },
            });
        }
    }
    for at_ms in poisson(w.rates.searches_per_s, duration_ms, rng) {
        let user = rng.gen_range(0..users);
        let term = rng.gen_range(0..SEARCH_TERMS);
        ops.push(Op {
            at_ms,
            kind: OpKind::Search { user, term },
        });
    }
    // A stable sort keeps the drawing order among equal times: deterministic.
    ops.sort_by_key(|o| o.at_ms);
    ops
}

/// Distinct words posted messages carry, so searches find something.
pub const SEARCH_TERMS: u32 = 50;

/// Event times (ms) of a Poisson process with `rate_per_s` over `duration_ms`.
fn poisson(rate_per_s: f64, duration_ms: u64, rng: &mut StdRng) -> Vec<u64> {
    let mut out = Vec::new();
    if rate_per_s <= 0.0 || !rate_per_s.is_finite() {
        return out;
    }
    let gap = Exp::new(rate_per_s).expect("a positive finite rate");
    let mut t = 0.0f64;
    loop {
        t += gap.sample(rng) * 1000.0;
        if t >= duration_ms as f64 {
            return out;
        }
        out.push(t as u64);
    }
}

/// The generator for a run's schedule.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Class, Rates, SimRoom, SimUser, Workload};

    fn workload() -> Workload {
        let users = (0..100)
            .map(|i| SimUser {
                name: format!("u{i}"),
                endpoints: 1 + (i % 2) as u8,
                rooms: vec![i % 10],
            })
            .collect();
        let rooms = (0..10)
            .map(|r| SimRoom {
                name: format!("r{r}"),
                class: Class::Small,
                open: false,
                auditorium: false,
                members: (0..100).filter(|u| u % 10 == r).collect(),
                direct: vec![],
                groups: vec![],
                posters: (0..100).filter(|u| u % 10 == r).collect(),
                managers: vec![],
                post_rate_per_s: 0.5,
            })
            .collect();
        Workload {
            users,
            rooms,
            rates: Rates {
                joins_per_s: 1.0,
                presence_per_s: 2.0,
                participant_polls_per_s: 3.0,
                history_reads_per_s: 1.0,
                searches_per_s: 0.5,
            },
            messages_on_join: 30,
            namespace: "t".into(),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let w = workload();
        let a = steady_ops(&w, 60_000, &mut rng(7));
        let b = steady_ops(&w, 60_000, &mut rng(7));
        let c = steady_ops(&w, 60_000, &mut rng(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows(2).all(|p| p[0].at_ms <= p[1].at_ms));
    }

    #[test]
    fn rates_come_out_near_what_was_asked() {
        let w = workload();
        let secs = 2_000.0;
        let ops = steady_ops(&w, (secs * 1000.0) as u64, &mut rng(1));
        let count = |name: &str| ops.iter().filter(|o| o.kind.name() == name).count() as f64;
        // Ten rooms at 0.5/s: 5 posts/s. Poisson counts over 2,000 s stay
        // within a few percent of the mean.
        assert!((count("post_ack") / secs - 5.0).abs() < 0.25);
        assert!((count("participants") / secs - 3.0).abs() < 0.2);
        assert!((count("presence") / secs - 2.0).abs() < 0.15);
        // Posters are members of the room they post to.
        for o in &ops {
            if let OpKind::Post { room, poster, .. } = o.kind {
                assert!(w.rooms[room as usize].posters.contains(&poster));
            }
        }
    }
}
