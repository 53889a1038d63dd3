//! The vendor's published user model, as data.
//!
//! `data/user-model.toml` is a byte-for-byte copy of the shared model file;
//! a test keeps the two equal. Planners may load a model of their own with
//! [`UserModel::from_toml_str`]; it must have the same shape.

use serde::Deserialize;

/// The embedded copy of the vendor's model.
pub const VENDOR_MODEL: &str = include_str!("../data/user-model.toml");

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserModel {
    pub pool: Pool,
    pub rooms: Rooms,
    pub activity: Activity,
    pub limits: Limits,
    pub chat_rate_model_per_room_per_day: PerClass,
    pub chat_rate_model_per_user_per_day: PerClass,
    pub group_chat_2010_stress_model: toml::Table,
    pub configuration_defaults: ConfigurationDefaults,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub active_users: u64,
    pub active_service_instances: u64,
    pub total_service_instances: u64,
    pub provisioned_users: u64,
    pub endpoints: u64,
    pub users_per_active_instance: u64,
    pub endpoints_per_user: f64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rooms {
    pub small: RoomClass,
    pub medium: RoomClass,
    pub large: RoomClass,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoomClass {
    /// Users connected per room.
    pub size: u64,
    pub count: u64,
    pub rooms_per_user: u64,
    /// Posts per second across all rooms of the class.
    pub chat_rate_per_s: f64,
    pub auditorium_fraction: f64,
    pub open_fraction: f64,
    pub direct_membership_fraction: f64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Activity {
    pub rooms_per_user: u64,
    pub rooms_joined_per_user: u64,
    pub peak_join_rate_per_s: f64,
    pub total_chat_rate_per_s: f64,
    pub invitation_room_fraction: f64,
    pub group_membership_fraction: f64,
    pub ancestor_group_affiliations: Vec<u64>,
    pub subscribed_contacts_per_user: u64,
    pub visible_rooms_per_endpoint: f64,
    pub visible_rooms_per_user: f64,
    pub participants_polled_per_visible_room: u64,
    pub participant_poll_interval_s: f64,
    pub participants_polled_per_s: f64,
    pub presence_changes_per_user_per_hour: f64,
    pub presence_changes_per_s: f64,
    pub managers_per_room: u64,
    pub presenters_per_auditorium: u64,
    /// Groups on the member list of a non-open room: small, medium, large.
    pub groups_per_nonopen_room_membership: [u64; 3],
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_access_control_entries: u64,
    pub max_invitations: u64,
    pub sample_access_control_entries: u64,
    pub sample_invitations: u64,
}

/// An alternative chat-rate model: per room (or per user) per day, by class.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PerClass {
    pub small: f64,
    pub medium: f64,
    pub large: f64,
    pub total_per_s: f64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigurationDefaults {
    pub messages_loaded_on_join: u32,
    pub participant_update_limit: u32,
    pub max_file_size_kb: u64,
    pub compliance_run_interval_s: u64,
    pub survivor_users_per_server_after_loss: u64,
}

/// A user model that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("user model: {0}")]
pub struct ModelError(#[from] toml::de::Error);

impl UserModel {
    /// The vendor's published model (embedded).
    pub fn vendor() -> UserModel {
        // The embedded file is checked by the tests below; it always parses.
        UserModel::from_toml_str(VENDOR_MODEL).expect("the embedded vendor model parses")
    }

    /// A model from TOML text of the same shape as the vendor's.
    pub fn from_toml_str(text: &str) -> Result<UserModel, ModelError> {
        Ok(toml::from_str(text)?)
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
            Ok(text) => assert_eq!(
                text,
                VENDOR_MODEL,
                "scenarios/data/user-model.toml differs from {}",
                shared.display()
            ),
            Err(_) => eprintln!("skipped: {} is not present here", shared.display()),
        }
    }

    #[test]
    fn the_vendor_model_parses_with_its_published_figures() {
        let m = UserModel::vendor();
        assert_eq!(m.pool.active_users, 80_000);
        assert_eq!(
            m.rooms.small.count + m.rooms.medium.count + m.rooms.large.count,
            33_077
        );
        assert_eq!(m.activity.groups_per_nonopen_room_membership, [3, 5, 10]);
    }
}
