//! The vendor's published user model, as data.
//!
//! `data/user-model.toml` is a byte-for-byte copy of the shared model file
//! (`../shared/user-model.toml` beside the workspace); a test keeps the two
//! equal. The figures are the vendor's and are never edited to make a run
//! pass. Planners may load a model of their own with
//! [`UserModel::from_toml_str`]; it must have the same shape, and it is
//! checked for the values that would make scaling meaningless (no users, no
//! rooms, a zero poll interval).
//!
//! Two published figures are easy to misread, so they are noted here:
//! `activity.rooms_joined_per_user` (24) is `rooms_per_user` (16) times
//! `endpoints_per_user` (1.5), that is, every endpoint of a user joins all of
//! the user's rooms; and `activity.visible_rooms_per_user` (2.25) is likewise
//! `visible_rooms_per_endpoint` (1.5) times 1.5 endpoints.

use serde::Deserialize;

use crate::toml_span;

/// The embedded copy of the vendor's model.
pub const VENDOR_MODEL: &str = include_str!("../data/user-model.toml");

/// The whole model file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserModel {
    pub pool: Pool,
    pub rooms: Rooms,
    pub activity: Activity,
    pub limits: Limits,
    /// Alternative chat rate: messages per room per (working) day, by class.
    pub chat_rate_model_per_room_per_day: PerClass,
    /// Alternative chat rate: messages per user per (working) day, by class.
    pub chat_rate_model_per_user_per_day: PerClass,
    pub group_chat_2010_stress_model: GroupChat2010,
    pub configuration_defaults: ConfigurationDefaults,
}

/// The pool the model describes: the figures everything scales from.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Concurrent, connected users (80,000): the scale of every other figure.
    pub active_users: u64,
    pub active_service_instances: u64,
    /// Active plus passive instances (high availability and disaster recovery).
    pub total_service_instances: u64,
    pub provisioned_users: u64,
    pub endpoints: u64,
    pub users_per_active_instance: u64,
    pub endpoints_per_user: f64,
}

/// The three room classes.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rooms {
    pub small: RoomClass,
    pub medium: RoomClass,
    pub large: RoomClass,
}

/// One room class at the model's scale.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoomClass {
    /// Users connected per room.
    pub size: u64,
    /// Rooms of the class in the pool.
    pub count: u64,
    /// Rooms of the class each user is a member of.
    pub rooms_per_user: u64,
    /// Posts per second across all rooms of the class.
    pub chat_rate_per_s: f64,
    pub auditorium_fraction: f64,
    pub open_fraction: f64,
    /// Share of a non-open room's members listed by name rather than
    /// through a group.
    pub direct_membership_fraction: f64,
}

/// What users do, at the model's scale.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Activity {
    pub rooms_per_user: u64,
    /// 24 = 16 rooms per user × 1.5 endpoints: each endpoint joins every
    /// room of its user.
    pub rooms_joined_per_user: u64,
    pub peak_join_rate_per_s: f64,
    pub total_chat_rate_per_s: f64,
    pub invitation_room_fraction: f64,
    pub group_membership_fraction: f64,
    pub ancestor_group_affiliations: Vec<u64>,
    pub subscribed_contacts_per_user: u64,
    /// Rooms open on screen per endpoint (half of them show one, half two).
    pub visible_rooms_per_endpoint: f64,
    pub visible_rooms_per_user: f64,
    pub participants_polled_per_visible_room: u64,
    pub participant_poll_interval_s: f64,
    /// 15,000 = 80,000 users × 2.25 visible rooms × 25 participants / 300 s.
    pub participants_polled_per_s: f64,
    pub presence_changes_per_user_per_hour: f64,
    /// 133.33 = 80,000 users × 6 per hour / 3,600 s.
    pub presence_changes_per_s: f64,
    /// Users and groups on each room's manager list.
    pub managers_per_room: u64,
    pub presenters_per_auditorium: u64,
    /// Groups on the member list of a non-open room: small, medium, large.
    pub groups_per_nonopen_room_membership: [u64; 3],
}

/// Sizes past which the vendor's server degraded, and the sample's totals.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_access_control_entries: u64,
    pub max_invitations: u64,
    pub sample_access_control_entries: u64,
    pub sample_invitations: u64,
}

/// An alternative chat-rate model: messages per room (or per user) per day,
/// by class, and the total rate the vendor computed from it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PerClass {
    pub small: f64,
    pub medium: f64,
    pub large: f64,
    pub total_per_s: f64,
}

/// The older Group Chat stress model (three 8-CPU servers), for comparison
/// runs. Arrays are by channel size: small, medium, large.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupChat2010 {
    pub servers: u64,
    pub users: u64,
    pub channels: u64,
    pub channel_sizes: [u64; 3],
    pub channels_by_size: [u64; 3],
    pub channels_joined_per_user: [u64; 3],
    pub invite_channel_fraction: f64,
    pub join_rate_per_s: f64,
    pub logout_rate_per_s: f64,
    pub chat_rate_per_s: f64,
}

/// Defaults of the vendor's configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigurationDefaults {
    /// Messages a join loads (allowed 1 to 500).
    pub messages_loaded_on_join: u32,
    /// Participants above which join/leave notifications stop; they resume
    /// below 80 % of it.
    pub participant_update_limit: u32,
    pub max_file_size_kb: u64,
    pub compliance_run_interval_s: u64,
    pub survivor_users_per_server_after_loss: u64,
}

/// A user model that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{origin}: {source}")]
    Read {
        origin: String,
        source: std::io::Error,
    },
    #[error("{origin}:{line}:{column}: {}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        field: Option<String>,
        message: String,
    },
    /// A value that parsed but makes the model unusable.
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
}

impl UserModel {
    /// The vendor's published model (the embedded copy).
    pub fn vendor() -> UserModel {
        // The embedded file is parsed and checked by the tests below, and it
        // is compiled in, so it cannot fail here.
        UserModel::parse(VENDOR_MODEL, "vendor user model")
            .expect("the embedded vendor model is valid")
    }

    /// A model from TOML text of the same shape as the vendor's (errors call
    /// it "user model"; [`UserModel::from_file`] names the file instead).
    pub fn from_toml_str(text: &str) -> Result<UserModel, ModelError> {
        UserModel::parse(text, "user model")
    }

    /// A model file; a relative path is relative to the working directory.
    pub fn from_file(path: &std::path::Path) -> Result<UserModel, ModelError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            origin: origin.clone(),
            source,
        })?;
        UserModel::parse(&text, &origin)
    }

    fn parse(text: &str, origin: &str) -> Result<UserModel, ModelError> {
        let model: UserModel = toml_span::from_str(text).map_err(|e| ModelError::Parse {
            origin: origin.to_owned(),
            line: e.line,
            column: e.column,
            field: e.field,
            message: e.message,
        })?;
        model
            .validate()
            .map_err(|(field, message)| ModelError::Invalid {
                origin: origin.to_owned(),
                field,
                message: message.to_owned(),
            })?;
        Ok(model)
    }

    /// The room classes in order small, medium, large.
    pub fn classes(&self) -> [&RoomClass; 3] {
        [&self.rooms.small, &self.rooms.medium, &self.rooms.large]
    }

    /// Refuses values that scaling divides by or multiplies into nonsense.
    fn validate(&self) -> Result<(), (String, &'static str)> {
        let fail = |field: &str, message| Err((field.to_owned(), message));
        if self.pool.active_users == 0 {
            return fail("pool.active_users", "must be at least 1");
        }
        if !(self.pool.endpoints_per_user >= 1.0 && self.pool.endpoints_per_user.is_finite()) {
            return fail("pool.endpoints_per_user", "must be at least 1");
        }
        for (name, c) in ["small", "medium", "large"].into_iter().zip(self.classes()) {
            if c.size == 0 {
                return fail(&format!("rooms.{name}.size"), "must be at least 1");
            }
            if c.count == 0 {
                return fail(&format!("rooms.{name}.count"), "must be at least 1");
            }
            if !(c.chat_rate_per_s >= 0.0 && c.chat_rate_per_s.is_finite()) {
                return fail(
                    &format!("rooms.{name}.chat_rate_per_s"),
                    "must be zero or more",
                );
            }
        }
        if !(self.activity.participant_poll_interval_s > 0.0
            && self.activity.participant_poll_interval_s.is_finite())
        {
            return fail(
                "activity.participant_poll_interval_s",
                "must be more than zero seconds",
            );
        }
        if !(self.activity.visible_rooms_per_endpoint >= 0.0
            && self.activity.visible_rooms_per_endpoint.is_finite())
        {
            return fail(
                "activity.visible_rooms_per_endpoint",
                "must be zero or more",
            );
        }
        let on_join = self.configuration_defaults.messages_loaded_on_join;
        if !(1..=500).contains(&on_join) {
            return fail(
                "configuration_defaults.messages_loaded_on_join",
                "must be 1 to 500 (the vendor's allowed range)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_model_matches_shared_copy() {
        let shared =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/user-model.toml");
        match std::fs::read_to_string(&shared) {
            Ok(text) => assert!(
                text == VENDOR_MODEL,
                "scenarios/data/user-model.toml differs from {}: copy it again, byte for byte",
                shared.display()
            ),
            Err(_) => eprintln!(
                "skipped embedded_model_matches_shared_copy: {} is not present here",
                shared.display()
            ),
        }
    }

    #[test]
    fn the_vendor_model_parses_with_its_published_figures() {
        let m = UserModel::vendor();
        assert_eq!(m.pool.active_users, 80_000);
        assert_eq!(
            m.classes().map(|c| c.count),
            [32_000, 1_067, 10],
            "room counts"
        );
        assert_eq!(m.activity.groups_per_nonopen_room_membership, [3, 5, 10]);
        assert_eq!(m.group_chat_2010_stress_model.channels_by_size[2], 24);
        // The figures the module documentation explains.
        let joined = m.activity.rooms_per_user as f64 * m.pool.endpoints_per_user;
        assert_eq!(joined, m.activity.rooms_joined_per_user as f64);
        let polled = m.pool.active_users as f64
            * m.activity.visible_rooms_per_user
            * m.activity.participants_polled_per_visible_room as f64
            / m.activity.participant_poll_interval_s;
        assert_eq!(polled, m.activity.participants_polled_per_s);
    }

    #[test]
    fn a_planners_model_with_a_bad_value_is_refused_with_its_field() {
        let text = VENDOR_MODEL.replace("active_users = 80_000", "active_users = 0");
        let e = UserModel::parse(&text, "mine.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "mine.toml: pool.active_users: must be at least 1"
        );

        let text = VENDOR_MODEL.replace("size = 150", "size = \"big\"");
        let e = UserModel::parse(&text, "mine.toml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("mine.toml:28:1: rooms.medium.size: invalid type"),
            "{e}"
        );
    }
}
