//! The user model scaled to a number of active users.
//!
//! Everything scales linearly from the model's pool figures (80,000 active
//! users), which is how the vendor derived its own per-server figure (20,000
//! = 80,000 / 4). Two things cannot scale below a size: a room class keeps at
//! least one room, and no room holds more users than exist (at 2,000 users the
//! one large room holds all 2,000 instead of 16,000).
//!
//! The two alternative chat-rate models publish messages "per day"; their
//! published totals (74/s and 56/s at 80,000 users) come out only if a day is
//! an 8-hour working day (28,800 s), so that is the day used here.

use serde::{Deserialize, Serialize};

use crate::model::{RoomClass, UserModel};

/// Seconds in the working day of the per-day chat-rate models.
pub const WORKING_DAY_S: f64 = 8.0 * 3600.0;

/// Which of the model's chat rates to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatRateModel {
    /// `rooms.*.chat_rate_per_s` (24/s in all at 80,000 users).
    #[default]
    Published,
    /// `chat_rate_model_per_room_per_day` (74/s).
    PerRoomPerDay,
    /// `chat_rate_model_per_user_per_day` (56/s).
    PerUserPerDay,
}

/// One room class at the plan's scale.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassPlan {
    pub name: &'static str,
    pub rooms: u64,
    /// Users joined to each room (capped at the user count).
    pub size: u64,
    pub rooms_per_user: u64,
    /// Posts per second across the class.
    pub chat_rate_per_s: f64,
    pub auditoriums: u64,
    pub open: u64,
    pub direct_membership_fraction: f64,
    pub groups_per_nonopen_room: u64,
}

/// The model at a given number of active users.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub users: u64,
    pub endpoints: u64,
    pub small: ClassPlan,
    pub medium: ClassPlan,
    pub large: ClassPlan,
    pub joins_per_s: f64,
    pub presence_changes_per_s: f64,
    /// Participant-list reads per second (each of up to 25 participants).
    pub participant_polls_per_s: f64,
    /// History pages read per second besides the history every join loads.
    pub history_reads_per_s: f64,
    pub searches_per_s: f64,
    pub managers_per_room: u64,
    pub presenters_per_auditorium: u64,
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
        let groups = model.activity.groups_per_nonopen_room_membership;
        let class = |name: &'static str,
                     c: &RoomClass,
                     per_room_day: f64,
                     per_user_day: f64,
                     groups: u64| {
            let rooms = ((c.count as f64 * scale).round() as u64).max(1);
            let chat_rate_per_s = match opts.chat_rate {
                ChatRateModel::Published => c.chat_rate_per_s * scale,
                ChatRateModel::PerRoomPerDay => per_room_day * rooms as f64 / WORKING_DAY_S,
                ChatRateModel::PerUserPerDay => per_user_day * users as f64 / WORKING_DAY_S,
            };
            ClassPlan {
                name,
                rooms,
                size: c.size.min(users.max(1)),
                rooms_per_user: c.rooms_per_user,
                chat_rate_per_s,
                auditoriums: (rooms as f64 * c.auditorium_fraction).round() as u64,
                open: (rooms as f64 * c.open_fraction).round() as u64,
                direct_membership_fraction: c.direct_membership_fraction,
                groups_per_nonopen_room: groups,
            }
        };
        let per_room = &model.chat_rate_model_per_room_per_day;
        let per_user = &model.chat_rate_model_per_user_per_day;
        let a = &model.activity;
        let joins_per_s = a.peak_join_rate_per_s * scale;
        let epu = opts
            .endpoints_per_user
            .unwrap_or(model.pool.endpoints_per_user);
        Plan {
            users,
            endpoints: (users as f64 * epu).round() as u64,
            small: class(
                "small",
                &model.rooms.small,
                per_room.small,
                per_user.small,
                groups[0],
            ),
            medium: class(
                "medium",
                &model.rooms.medium,
                per_room.medium,
                per_user.medium,
                groups[1],
            ),
            large: class(
                "large",
                &model.rooms.large,
                per_room.large,
                per_user.large,
                groups[2],
            ),
            joins_per_s,
            presence_changes_per_s: a.presence_changes_per_user_per_hour * users as f64 / 3600.0,
            participant_polls_per_s: users as f64 * a.visible_rooms_per_user
                / a.participant_poll_interval_s,
            // Not in the model: one page of history per (re)join besides the
            // page the join itself loads, and one search per user per working
            // day. Both are stated in the report's scenario description.
            history_reads_per_s: joins_per_s,
            searches_per_s: users as f64 / WORKING_DAY_S,
            managers_per_room: a.managers_per_room,
            presenters_per_auditorium: a.presenters_per_auditorium,
            messages_on_join: model.configuration_defaults.messages_loaded_on_join,
        }
    }

    pub fn classes(&self) -> [&ClassPlan; 3] {
        [&self.small, &self.medium, &self.large]
    }

    pub fn rooms(&self) -> u64 {
        self.classes().iter().map(|c| c.rooms).sum()
    }

    pub fn chat_rate_per_s(&self) -> f64 {
        self.classes().iter().map(|c| c.chat_rate_per_s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(users: u64) -> Plan {
        Plan::for_users(&UserModel::vendor(), users, &PlanOptions::default())
    }

    #[test]
    fn at_the_pool_size_the_plan_is_the_published_model() {
        let m = UserModel::vendor();
        let p = plan(80_000);
        assert_eq!(p.endpoints, m.pool.endpoints);
        assert_eq!(
            (p.small.rooms, p.medium.rooms, p.large.rooms),
            (32_000, 1_067, 10)
        );
        assert_eq!(p.rooms(), 33_077);
        assert_eq!((p.small.size, p.large.size), (30, 16_000));
        assert!((p.chat_rate_per_s() - 24.04).abs() < 1e-9);
        assert!((p.presence_changes_per_s - m.activity.presence_changes_per_s).abs() < 0.01);
        // 600 polls/s of 25 participants: the model's 15,000 participants/s.
        let polled =
            p.participant_polls_per_s * m.activity.participants_polled_per_visible_room as f64;
        assert!((polled - m.activity.participants_polled_per_s).abs() < 1e-6);
        assert!((p.joins_per_s - 10.0).abs() < 1e-9);
        assert_eq!((p.small.auditoriums, p.small.open), (320, 960));
        assert_eq!((p.large.auditoriums, p.large.open), (5, 5));
    }

    #[test]
    fn scaled_plans_keep_the_models_ratios() {
        let m = UserModel::vendor();
        for users in [20_000u64, 2_000] {
            let p = plan(users);
            let s = users as f64 / 80_000.0;
            assert_eq!(p.endpoints as f64, (users as f64 * 1.5).round());
            // Rooms per user: seats over users match the model for classes
            // whose rooms are not capped by the user count.
            for (c, mc) in [(&p.small, &m.rooms.small), (&p.medium, &m.rooms.medium)] {
                // Room counts are rounded, so seats may be off by up to
                // half a room's worth either way.
                let seats = (c.rooms * c.size) as f64;
                let want = (mc.rooms_per_user * users) as f64;
                assert!(
                    (seats - want).abs() <= c.size as f64 / 2.0,
                    "{users} users, {}: {seats} seats for {want}",
                    c.name
                );
                assert!((c.chat_rate_per_s - mc.chat_rate_per_s * s).abs() < 1e-9);
            }
            // Chat, presence, polls and joins per user are the model's.
            let per_user = p.chat_rate_per_s() / users as f64;
            assert!((per_user - 24.04 / 80_000.0).abs() < 1e-12);
            assert!((p.presence_changes_per_s / users as f64 - 6.0 / 3600.0).abs() < 1e-12);
            assert!((p.participant_polls_per_s / users as f64 - 2.25 / 300.0).abs() < 1e-12);
            assert!((p.joins_per_s / users as f64 - 10.0 / 80_000.0).abs() < 1e-12);
        }
        assert_eq!(plan(20_000).small.rooms, 8_000);
        assert_eq!(plan(20_000).large.rooms, 3);
        // Below 16,000 users the large room holds everyone.
        let p = plan(2_000);
        assert_eq!((p.large.rooms, p.large.size), (1, 2_000));
    }

    #[test]
    fn the_per_day_models_reach_their_published_totals_over_a_working_day() {
        let m = UserModel::vendor();
        let rooms = Plan::for_users(
            &m,
            80_000,
            &PlanOptions {
                chat_rate: ChatRateModel::PerRoomPerDay,
                ..PlanOptions::default()
            },
        );
        assert!(
            (rooms.chat_rate_per_s() - m.chat_rate_model_per_room_per_day.total_per_s).abs() < 0.5
        );
        let users = Plan::for_users(
            &m,
            80_000,
            &PlanOptions {
                chat_rate: ChatRateModel::PerUserPerDay,
                ..PlanOptions::default()
            },
        );
        assert!(
            (users.chat_rate_per_s() - m.chat_rate_model_per_user_per_day.total_per_s).abs() < 0.5
        );
    }
}
