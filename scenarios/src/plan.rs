//! The user model scaled to a number of active users, and a deterministic
//! assignment of those users to rooms.
//!
//! # Scaling
//!
//! Everything scales linearly from the model's pool (80,000 active users),
//! which is how the vendor derived its own per-server figure (20,000 =
//! 80,000 / 4). Per room class:
//!
//! - rooms = round(count × users / 80,000), at least 1 (rounding half away
//!   from zero, so 2.5 rooms become 3);
//! - size (users per room) = the model's, but never more than the users
//!   there are: below 16,000 users the large rooms hold everyone;
//! - chat rate = the class's published rate × users / 80,000, or one of the
//!   two per-day models (see [`ChatRateModel`]);
//! - auditoriums and open rooms = round(fraction × rooms).
//!
//! Then endpoints = round(users × endpoints per user), joins = 10/s × users /
//! 80,000, presence changes = users × 6 / 3,600 s, and participant-list polls
//! = endpoints × 1.5 visible rooms / 300 s, each poll reading up to 25
//! participants. The vendor's 15,000 participants/s is 80,000 users × 2.25
//! visible rooms per user × 25 / 300 s, and 2.25 is 1.5 visible rooms per
//! endpoint × 1.5 endpoints per user: polls follow endpoints, so the same
//! arithmetic holds when a scenario overrides endpoints per user.
//!
//! The two alternative chat-rate models publish messages per day; their
//! published totals (74/s and 56/s at 80,000 users) come out only if a day is
//! an 8-hour working day (28,800 s), so that is the day used here.
//!
//! # Seats
//!
//! Rooms × size is the number of seats of a class. At the model's scale it
//! equals users × rooms per user (32,000 × 30 = 80,000 × 12), but room counts
//! are rounded, so at other scales the two differ a little (at 20,000 users
//! there are 3 large rooms of 16,000, 48,000 seats, for 40,000 memberships
//! the model asks). [`Plan::memberships`] fills every room to its size, which
//! keeps the fan-out of a post (the room size) exactly the model's, and gives
//! each user seats / users rooms of the class on average (some one more than
//! others). A user is never seated twice in one room, so no user holds more
//! rooms of a class than the class has (at 2,000 users, one large room).

use std::fmt;
use std::ops::Range;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::model::{RoomClass, UserModel};

/// Seconds in the working day of the per-day chat-rate models.
pub const WORKING_DAY_S: f64 = 8.0 * 3600.0;

/// Which of the model's chat rates to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatRateModel {
    /// `rooms.*.chat_rate_per_s`: 24 posts/s in all at 80,000 users.
    #[default]
    Published,
    /// `chat_rate_model_per_room_per_day`: 74 posts/s at 80,000 users.
    PerRoomPerDay,
    /// `chat_rate_model_per_user_per_day`: 56 posts/s at 80,000 users.
    PerUserPerDay,
}

/// A room class of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Small,
    Medium,
    Large,
}

impl Class {
    /// The classes in the order their rooms are numbered.
    pub const ALL: [Class; 3] = [Class::Small, Class::Medium, Class::Large];

    pub fn name(self) -> &'static str {
        match self {
            Class::Small => "small",
            Class::Medium => "medium",
            Class::Large => "large",
        }
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One room class at the plan's scale.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassPlan {
    pub class: Class,
    /// Rooms of the class.
    pub rooms: u64,
    /// Index of the class's first room: rooms are numbered small, medium,
    /// large, so the class holds rooms `first_room..first_room + rooms`.
    pub first_room: u32,
    /// Users joined to each room (the model's, capped at the user count).
    pub size: u64,
    /// The model's rooms per user, capped at the rooms there are. The
    /// assignment gives users `seats / users` rooms on average, which is
    /// this within the rounding of the room count.
    pub rooms_per_user: u64,
    /// rooms × size.
    pub seats: u64,
    /// Posts per second across the class.
    pub chat_rate_per_s: f64,
    /// Mean seconds between two posts in one room (rooms / rate); infinite
    /// when the class has no chat.
    pub post_interval_s: f64,
    /// Auditorium rooms: the `auditoriums` rooms after the open ones.
    pub auditoriums: u64,
    /// Open rooms: the class's first `open` rooms.
    pub open: u64,
    /// Share of a non-open room's members listed by name (the rest through
    /// groups).
    pub direct_membership_fraction: f64,
    /// Groups on the member list of each non-open room.
    pub groups_per_nonopen_room: u64,
}

impl ClassPlan {
    /// The global indices of the class's rooms.
    pub fn room_range(&self) -> Range<u32> {
        self.first_room..self.first_room + self.rooms as u32
    }
}

/// What a room is, from its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomInfo {
    pub class: Class,
    /// Index within its class.
    pub index_in_class: u32,
    /// Only presenters post.
    pub auditorium: bool,
    /// Anyone may find, join and read it; no member list.
    pub open: bool,
}

/// The model at a given number of active users.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub users: u64,
    /// round(users × endpoints per user).
    pub endpoints: u64,
    pub small: ClassPlan,
    pub medium: ClassPlan,
    pub large: ClassPlan,
    /// Room joins per second (the model's peak join rate, scaled).
    pub joins_per_s: f64,
    pub presence_changes_per_s: f64,
    /// Rooms each endpoint shows (and polls the participants of).
    pub visible_rooms_per_endpoint: f64,
    /// Participant-list reads per second, each of up to
    /// `participants_per_poll` participants.
    pub participant_polls_per_s: f64,
    pub participants_per_poll: u64,
    /// History pages read per second besides the page every join loads. Not
    /// in the model: one page per (re)join, so that history reads are
    /// measured at all.
    pub history_reads_per_s: f64,
    /// Searches per second. Not in the model: one per user per working day.
    pub searches_per_s: f64,
    pub managers_per_room: u64,
    pub presenters_per_auditorium: u64,
    /// Messages a join loads.
    pub messages_on_join: u32,
}

/// Options of a plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanOptions {
    pub chat_rate: ChatRateModel,
    /// Overrides the model's endpoints per user.
    pub endpoints_per_user: Option<f64>,
}

impl Plan {
    /// Scales `model` to `users` active users.
    pub fn for_users(model: &UserModel, users: u64, opts: &PlanOptions) -> Plan {
        let scale = users as f64 / model.pool.active_users as f64;
        let a = &model.activity;
        let per_room = &model.chat_rate_model_per_room_per_day;
        let per_user = &model.chat_rate_model_per_user_per_day;
        let mut first_room = 0u32;
        let mut class = |class: Class, c: &RoomClass, per_room_day: f64, per_user_day: f64| {
            let groups = a.groups_per_nonopen_room_membership[class as usize];
            let rooms = ((c.count as f64 * scale).round() as u64).max(1);
            let size = c.size.min(users);
            let chat_rate_per_s = match opts.chat_rate {
                ChatRateModel::Published => c.chat_rate_per_s * scale,
                ChatRateModel::PerRoomPerDay => per_room_day * rooms as f64 / WORKING_DAY_S,
                ChatRateModel::PerUserPerDay => per_user_day * users as f64 / WORKING_DAY_S,
            };
            let plan = ClassPlan {
                class,
                rooms,
                first_room,
                size,
                rooms_per_user: c.rooms_per_user.min(rooms),
                seats: rooms * size,
                chat_rate_per_s,
                post_interval_s: if chat_rate_per_s > 0.0 {
                    rooms as f64 / chat_rate_per_s
                } else {
                    f64::INFINITY
                },
                auditoriums: (rooms as f64 * c.auditorium_fraction).round() as u64,
                open: (rooms as f64 * c.open_fraction).round() as u64,
                direct_membership_fraction: c.direct_membership_fraction,
                groups_per_nonopen_room: groups,
            };
            first_room += rooms as u32;
            plan
        };
        let small = class(
            Class::Small,
            &model.rooms.small,
            per_room.small,
            per_user.small,
        );
        let medium = class(
            Class::Medium,
            &model.rooms.medium,
            per_room.medium,
            per_user.medium,
        );
        let large = class(
            Class::Large,
            &model.rooms.large,
            per_room.large,
            per_user.large,
        );
        let endpoints_per_user = opts
            .endpoints_per_user
            .unwrap_or(model.pool.endpoints_per_user);
        let endpoints = (users as f64 * endpoints_per_user).round() as u64;
        let joins_per_s = a.peak_join_rate_per_s * scale;
        Plan {
            users,
            endpoints,
            small,
            medium,
            large,
            joins_per_s,
            presence_changes_per_s: a.presence_changes_per_user_per_hour * users as f64 / 3600.0,
            visible_rooms_per_endpoint: a.visible_rooms_per_endpoint,
            participant_polls_per_s: endpoints as f64 * a.visible_rooms_per_endpoint
                / a.participant_poll_interval_s,
            participants_per_poll: a.participants_polled_per_visible_room,
            history_reads_per_s: joins_per_s,
            searches_per_s: users as f64 / WORKING_DAY_S,
            managers_per_room: a.managers_per_room,
            presenters_per_auditorium: a.presenters_per_auditorium,
            messages_on_join: model.configuration_defaults.messages_loaded_on_join,
        }
    }

    /// The classes in room order: small, medium, large.
    pub fn classes(&self) -> [&ClassPlan; 3] {
        [&self.small, &self.medium, &self.large]
    }

    pub fn class(&self, class: Class) -> &ClassPlan {
        match class {
            Class::Small => &self.small,
            Class::Medium => &self.medium,
            Class::Large => &self.large,
        }
    }

    /// Rooms in all classes.
    pub fn rooms(&self) -> u64 {
        self.classes().iter().map(|c| c.rooms).sum()
    }

    /// Posts per second in all classes.
    pub fn chat_rate_per_s(&self) -> f64 {
        self.classes().iter().map(|c| c.chat_rate_per_s).sum()
    }

    /// Participants read per second (the model's `participants_polled_per_s`
    /// at this scale).
    pub fn participants_polled_per_s(&self) -> f64 {
        self.participant_polls_per_s * self.participants_per_poll as f64
    }

    /// The class and kind of a room by its global index.
    pub fn room_info(&self, room: u32) -> Option<RoomInfo> {
        let c = self
            .classes()
            .into_iter()
            .find(|c| c.room_range().contains(&room))?;
        let index_in_class = room - c.first_room;
        Some(RoomInfo {
            class: c.class,
            index_in_class,
            // Open rooms first, then auditoriums, so the two do not overlap
            // while the fractions allow (an open auditorium would let anyone
            // read but only presenters post, a mix the model does not ask for).
            open: u64::from(index_in_class) < c.open,
            auditorium: (c.open..c.open + c.auditoriums).contains(&u64::from(index_in_class)),
        })
    }

    /// Assigns users to rooms, endpoints to users and visible rooms to
    /// endpoints. The same plan and seed always give the same assignment.
    ///
    /// Each room of a class gets exactly its size in members, all different.
    /// Users are dealt to rooms in a fresh seeded shuffle on every pass over
    /// them, so who shares rooms with whom is mixed, and each user gets floor
    /// or ceil of seats / users rooms of the class. Endpoints are spread the
    /// same way (1 or 2 per user with the model's 1.5), and so are visible
    /// rooms (1 or 2 per endpoint, chosen among its user's rooms), so that the
    /// totals are the plan's rounded figures. Work and memory are
    /// proportional to the seats.
    ///
    /// # Panics
    ///
    /// When the users or seats do not fit in a `u32` (over four billion);
    /// scenario validation refuses user counts anywhere near that.
    pub fn memberships(&self, seed: u64) -> Memberships {
        let users = u32::try_from(self.users).expect("user count fits in u32");
        let seats: u64 = self.classes().iter().map(|c| c.seats).sum();
        assert!(seats <= u64::from(u32::MAX), "seat count fits in u32");

        // Room-major first: rooms are filled one after the other.
        let mut room_start = Vec::with_capacity(self.rooms() as usize + 1);
        room_start.push(0u32);
        let mut room_members = Vec::with_capacity(seats as usize);
        for (part, c) in self.classes().into_iter().enumerate() {
            let mut rng = sub_rng(seed, part as u64);
            deal(c, users, &mut rng, &mut room_start, &mut room_members);
        }

        // Then user-major, by counting: each user's rooms come out ascending.
        let mut user_start = vec![0u32; users as usize + 1];
        for &u in &room_members {
            user_start[u as usize + 1] += 1;
        }
        for i in 1..user_start.len() {
            user_start[i] += user_start[i - 1];
        }
        let mut next = user_start.clone();
        let mut user_rooms = vec![0u32; room_members.len()];
        for room in 0..room_start.len() - 1 {
            let members = &room_members[room_start[room] as usize..room_start[room + 1] as usize];
            for &u in members {
                user_rooms[next[u as usize] as usize] = room as u32;
                next[u as usize] += 1;
            }
        }

        // Endpoints per user, then visible rooms per endpoint, each spread
        // evenly with a seeded choice of who gets one more.
        let endpoints = u32::try_from(self.endpoints).expect("endpoint count fits in u32");
        let mut endpoint_start = vec![0u32];
        endpoint_start.extend(
            spread(u64::from(endpoints), users, &mut sub_rng(seed, 3))
                .into_iter()
                .scan(0u32, |sum, n| {
                    *sum += n;
                    Some(*sum)
                }),
        );
        let mut rng = sub_rng(seed, 4);
        let total_visible = (f64::from(endpoints) * self.visible_rooms_per_endpoint).round() as u64;
        let per_endpoint = spread(total_visible, endpoints, &mut rng);
        let mut visible_start = Vec::with_capacity(endpoints as usize + 1);
        visible_start.push(0u32);
        let mut visible_rooms = Vec::with_capacity(total_visible as usize);
        for u in 0..users as usize {
            let rooms = &user_rooms[user_start[u] as usize..user_start[u + 1] as usize];
            for ep in endpoint_start[u]..endpoint_start[u + 1] {
                let want = per_endpoint[ep as usize] as usize;
                visible_rooms.extend(rooms.choose_multiple(&mut rng, want).copied());
                visible_start.push(visible_rooms.len() as u32);
            }
        }

        Memberships {
            room_start,
            room_members,
            user_start,
            user_rooms,
            endpoint_start,
            visible_start,
            visible_rooms,
        }
    }
}

/// `total` spread over `over` items: each gets floor(total / over), and a
/// seeded choice of `total % over` of them one more.
fn spread(total: u64, over: u32, rng: &mut StdRng) -> Vec<u32> {
    let Some(base) = total.checked_div(u64::from(over)) else {
        return Vec::new();
    };
    let extra = total % u64::from(over);
    let mut order: Vec<u32> = (0..over).collect();
    order.shuffle(rng);
    let mut counts = vec![base as u32; over as usize];
    for &i in &order[..extra as usize] {
        counts[i as usize] += 1;
    }
    counts
}

/// A generator per part of the assignment, so that changing one part (say,
/// endpoints per user) leaves the others as they were.
fn sub_rng(seed: u64, part: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ part.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Fills the rooms of one class in order from passes over the users, each
/// pass a fresh shuffle (the last one partial), so every user is dealt once
/// per pass. Only a room that straddles two passes could get a user twice;
/// before such a pass is dealt, users already in that room are swapped out
/// of the positions that complete it, to random positions further on.
fn deal(
    c: &ClassPlan,
    users: u32,
    rng: &mut StdRng,
    room_start: &mut Vec<u32>,
    room_members: &mut Vec<u32>,
) {
    let size = c.size as usize;
    let u = users as usize;
    if size == 0 || u == 0 {
        for _ in 0..c.rooms {
            room_start.push(room_members.len() as u32);
        }
        return;
    }
    let base = room_members.len();
    let total = c.seats as usize;
    let mut order: Vec<u32> = (0..users).collect();
    // `mark[u] == pass` means u sits in the room straddling into `pass`.
    let mut mark = vec![0u32; u];
    let mut pass = 0u32;
    while room_members.len() - base < total {
        let dealt = room_members.len() - base;
        order.shuffle(rng);
        pass += 1;
        let take = (total - dealt).min(u);
        let already = dealt % size;
        if already > 0 {
            // size ≤ users, so the room's first part is all from the
            // previous pass, and there are enough users outside it.
            let completing = (size - already).min(take);
            for &m in &room_members[room_members.len() - already..] {
                mark[m as usize] = pass;
            }
            let clashes: Vec<usize> = (0..completing)
                .filter(|&i| mark[order[i] as usize] == pass)
                .collect();
            if !clashes.is_empty() {
                let mut free: Vec<usize> = (completing..u)
                    .filter(|&i| mark[order[i] as usize] != pass)
                    .collect();
                let (chosen, _) = free.partial_shuffle(rng, clashes.len());
                for (&i, &j) in clashes.iter().zip(chosen.iter()) {
                    order.swap(i, j);
                }
            }
        }
        for &m in &order[..take] {
            room_members.push(m);
            if (room_members.len() - base) % size == 0 {
                room_start.push(room_members.len() as u32);
            }
        }
    }
}

/// Who is in which room, which endpoints each user has, and which rooms each
/// endpoint shows. Users, rooms and endpoints are numbered from 0; rooms as
/// in [`Plan::room_info`], endpoints consecutively per user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memberships {
    /// Members of room r: `room_members[room_start[r]..room_start[r + 1]]`.
    room_start: Vec<u32>,
    room_members: Vec<u32>,
    /// Rooms of user u, ascending: `user_rooms[user_start[u]..user_start[u + 1]]`.
    user_start: Vec<u32>,
    user_rooms: Vec<u32>,
    /// Endpoints of user u: `endpoint_start[u]..endpoint_start[u + 1]`.
    endpoint_start: Vec<u32>,
    /// Visible rooms of endpoint e: `visible_rooms[visible_start[e]..visible_start[e + 1]]`.
    visible_start: Vec<u32>,
    visible_rooms: Vec<u32>,
}

impl Memberships {
    pub fn users(&self) -> u32 {
        (self.user_start.len() - 1) as u32
    }

    pub fn rooms(&self) -> u32 {
        (self.room_start.len() - 1) as u32
    }

    pub fn endpoints(&self) -> u32 {
        (self.visible_start.len() - 1) as u32
    }

    /// The members of a room, in the order they were dealt.
    pub fn members(&self, room: u32) -> &[u32] {
        let r = room as usize;
        &self.room_members[self.room_start[r] as usize..self.room_start[r + 1] as usize]
    }

    /// The rooms of a user, ascending (so small, then medium, then large).
    pub fn rooms_of(&self, user: u32) -> &[u32] {
        let u = user as usize;
        &self.user_rooms[self.user_start[u] as usize..self.user_start[u + 1] as usize]
    }

    /// The endpoints of a user.
    pub fn endpoints_of(&self, user: u32) -> Range<u32> {
        let u = user as usize;
        self.endpoint_start[u]..self.endpoint_start[u + 1]
    }

    /// The user an endpoint belongs to.
    pub fn user_of(&self, endpoint: u32) -> u32 {
        (self.endpoint_start.partition_point(|&s| s <= endpoint) - 1) as u32
    }

    /// The rooms an endpoint shows (and polls the participants of); each is
    /// one of its user's rooms.
    pub fn visible_rooms(&self, endpoint: u32) -> &[u32] {
        let e = endpoint as usize;
        &self.visible_rooms[self.visible_start[e] as usize..self.visible_start[e + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(users: u64) -> Plan {
        Plan::for_users(&UserModel::vendor(), users, &PlanOptions::default())
    }

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    #[test]
    fn at_the_pool_size_the_plan_is_the_published_model() {
        let m = UserModel::vendor();
        let p = plan(80_000);
        assert_eq!(p.endpoints, m.pool.endpoints);
        assert_eq!(
            p.classes().map(|c| c.rooms),
            [32_000, 1_067, 10],
            "room counts"
        );
        assert_eq!(p.rooms(), 33_077);
        assert_eq!(p.classes().map(|c| c.size), [30, 150, 16_000]);
        assert_eq!(p.classes().map(|c| c.rooms_per_user), [12, 2, 2]);
        assert_eq!(
            p.classes().map(|c| c.first_room),
            [0, 32_000, 33_067],
            "room numbering"
        );
        assert!(close(p.chat_rate_per_s(), 24.04, 1e-9));
        assert!(close(p.small.chat_rate_per_s, 22.22, 1e-9));
        // 32,000 rooms at 22.22 posts/s: one post per room every 24 minutes.
        assert!(close(p.small.post_interval_s, 1_440.1, 0.1));
        assert!(close(p.large.post_interval_s, 66.7, 0.1));
        assert!(close(
            p.presence_changes_per_s,
            m.activity.presence_changes_per_s,
            0.01
        ));
        // 600 polls/s of 25 participants: the model's 15,000 participants/s.
        assert!(close(p.participant_polls_per_s, 600.0, 1e-9));
        assert!(close(
            p.participants_polled_per_s(),
            m.activity.participants_polled_per_s,
            1e-6
        ));
        assert!(close(p.joins_per_s, 10.0, 1e-9));
        assert_eq!((p.small.auditoriums, p.small.open), (320, 960));
        assert_eq!((p.large.auditoriums, p.large.open), (5, 5));
        assert_eq!(p.classes().map(|c| c.groups_per_nonopen_room), [3, 5, 10]);
        assert_eq!((p.managers_per_room, p.messages_on_join), (6, 30));
        // Seats are the model's memberships (medium rounds to 1,067 rooms).
        assert_eq!(p.small.seats, 80_000 * 12);
        assert_eq!(p.medium.seats, 160_050);
        assert_eq!(p.large.seats, 80_000 * 2);
    }

    #[test]
    fn scaled_plans_keep_the_models_ratios() {
        let m = UserModel::vendor();
        for users in [20_000u64, 2_000] {
            let p = plan(users);
            let u = users as f64;
            assert_eq!(p.endpoints as f64, (u * 1.5).round(), "{users}: endpoints");
            for (c, mc) in [
                (&p.small, &m.rooms.small),
                (&p.medium, &m.rooms.medium),
                (&p.large, &m.rooms.large),
            ] {
                // Room counts are rounded, so the rooms per user implied by
                // the seats are the model's within half a room's seats.
                if c.size == mc.size {
                    let want = (mc.rooms_per_user * users) as f64;
                    assert!(
                        close(c.seats as f64, want, c.size as f64 / 2.0),
                        "{users} users, {}: {} seats for {want}",
                        c.class,
                        c.seats
                    );
                }
                // Chat per user is the model's exactly.
                assert!(close(
                    c.chat_rate_per_s / u,
                    mc.chat_rate_per_s / 80_000.0,
                    1e-15
                ));
            }
            assert!(close(p.chat_rate_per_s() / u, 24.04 / 80_000.0, 1e-15));
            assert!(close(p.presence_changes_per_s / u, 6.0 / 3600.0, 1e-15));
            assert!(close(p.participant_polls_per_s / u, 2.25 / 300.0, 1e-15));
            assert!(close(p.joins_per_s / u, 10.0 / 80_000.0, 1e-15));
        }
        let p = plan(20_000);
        assert_eq!(p.classes().map(|c| c.rooms), [8_000, 267, 3]);
        // Below 16,000 users the one large room holds everyone.
        let p = plan(2_000);
        assert_eq!(p.classes().map(|c| c.rooms), [800, 27, 1]);
        assert_eq!((p.large.size, p.large.rooms_per_user), (2_000, 1));
    }

    #[test]
    fn the_per_day_models_reach_their_published_totals_over_a_working_day() {
        let m = UserModel::vendor();
        for (chat_rate, published) in [
            (
                ChatRateModel::PerRoomPerDay,
                m.chat_rate_model_per_room_per_day.total_per_s,
            ),
            (
                ChatRateModel::PerUserPerDay,
                m.chat_rate_model_per_user_per_day.total_per_s,
            ),
        ] {
            let opts = PlanOptions {
                chat_rate,
                ..PlanOptions::default()
            };
            let p = Plan::for_users(&m, 80_000, &opts);
            assert!(
                close(p.chat_rate_per_s(), published, 0.5),
                "{chat_rate:?}: {}",
                p.chat_rate_per_s()
            );
        }
    }

    #[test]
    fn rooms_know_their_class_and_kind() {
        let p = plan(80_000);
        let first_large = p.large.first_room;
        assert_eq!(p.room_info(0).map(|r| r.class), Some(Class::Small));
        let r = p.room_info(first_large).unwrap();
        assert_eq!((r.class, r.open, r.auditorium), (Class::Large, true, false));
        let r = p.room_info(first_large + 9).unwrap();
        assert_eq!((r.open, r.auditorium), (false, true));
        let small = (0..p.small.rooms as u32).map(|r| p.room_info(r).unwrap());
        let (open, auditoriums) = small.fold((0, 0), |(o, a), r| {
            (o + u64::from(r.open), a + u64::from(r.auditorium))
        });
        assert_eq!((open, auditoriums), (960, 320));
        assert_eq!(p.room_info(33_077), None);
    }

    #[track_caller]
    fn check_memberships(p: &Plan, m: &Memberships) {
        assert_eq!(m.users() as u64, p.users);
        assert_eq!(m.rooms() as u64, p.rooms());
        assert_eq!(m.endpoints() as u64, p.endpoints);
        for c in p.classes() {
            for room in c.room_range() {
                let members = m.members(room);
                assert_eq!(members.len() as u64, c.size, "room {room}");
                let mut sorted = members.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), members.len(), "room {room}: a user twice");
            }
            // Users hold floor or ceil of seats / users rooms of the class.
            let mean = c.seats as f64 / p.users as f64;
            for u in 0..m.users() {
                let n = m
                    .rooms_of(u)
                    .iter()
                    .filter(|r| c.room_range().contains(r))
                    .count() as f64;
                assert!(
                    n >= mean.floor() && n <= mean.ceil(),
                    "user {u}: {n} {} rooms, mean {mean}",
                    c.class
                );
            }
        }
        let mut visible = 0;
        for u in 0..m.users() {
            let eps = m.endpoints_of(u);
            assert!((1..=2).contains(&eps.len()), "user {u}: {eps:?}");
            for e in eps {
                assert_eq!(m.user_of(e), u);
                let v = m.visible_rooms(e);
                assert!((1..=2).contains(&v.len()));
                assert!(v.iter().all(|r| m.rooms_of(u).contains(r)));
                visible += v.len();
            }
        }
        assert_eq!(visible as f64, (p.endpoints as f64 * 1.5).round());
    }

    #[test]
    fn memberships_fill_rooms_to_their_size() {
        for users in [2_000, 20_000, 15_001, 16_001, 10_000] {
            let p = plan(users);
            let m = p.memberships(7);
            check_memberships(&p, &m);
        }
    }

    #[test]
    fn memberships_for_the_whole_pool_are_complete_and_quick() {
        let p = plan(80_000);
        let started = std::time::Instant::now();
        let m = p.memberships(1);
        eprintln!(
            "memberships for 80,000 users: {:?} (this is a debug build)",
            started.elapsed()
        );
        check_memberships(&p, &m);
        assert_eq!(
            (0..m.users())
                .map(|u| m.rooms_of(u).len() as u64)
                .sum::<u64>(),
            80_000 * 12 + 160_050 + 80_000 * 2
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_assignment_and_another_seed_another() {
        let p = plan(2_000);
        assert_eq!(p.memberships(42), p.memberships(42));
        let (a, b) = (p.memberships(42), p.memberships(43));
        assert_ne!(a.members(0), b.members(0));
        assert_ne!(a.rooms_of(0), b.rooms_of(0));
    }

    #[test]
    fn tiny_and_empty_plans_do_not_break() {
        for users in [0, 1, 7, 31] {
            let p = plan(users);
            let m = p.memberships(1);
            assert_eq!(m.users() as u64, users);
            if users > 0 {
                check_memberships(&p, &m);
            }
        }
    }
}
