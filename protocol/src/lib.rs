//! Wire types of the pchat protocol, version 1 (`docs/protocol.md`).
//!
//! This crate is the one place that knows the JSON shapes exchanged between a
//! pchat client and server:
//!
//! - [`ErrorCode`] and [`ErrorBody`]: the stable error codes of section 3;
//! - [`Principal`]: `user:<name>` / `group:<name>` list entries;
//! - request and response bodies of every operation, named after the operation
//!   (`CreateRoom`, `Room`, `PostMessage`, `Message`, ...);
//! - [`Event`]: the frames the server pushes on an endpoint's event stream;
//! - [`close`]: the WebSocket close codes;
//! - [`client`] (feature `client`): a small async client used by the tests, the
//!   load generator and the conformance suite.
//!
//! Request types reject unknown fields (clause PC-1.5a); response types ignore
//! them (PC-1.5c), so a newer server never breaks an older client.
//!
//! ```
//! use pchat_protocol::{Principal, ErrorCode};
//! let p: Principal = "group:engineering".parse().unwrap();
//! assert_eq!(p.to_string(), "group:engineering");
//! assert_eq!(ErrorCode::RoomNotFound.status(), 404);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[cfg(feature = "client")]
pub mod client;

/// The protocol version this crate speaks; it is the path prefix of every route.
pub const VERSION_PREFIX: &str = "/v1";
/// Request header carrying a client-chosen request id, echoed on every response.
pub const REQUEST_ID_HEADER: &str = "pchat-request-id";

/// Stable error codes (docs/protocol.md section 3). Clients key on these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    InvalidUtf8,
    UnknownField,
    InvalidRequest,
    UnsupportedMediaType,
    PayloadTooLarge,
    Unauthenticated,
    PolicyDisabled,
    Forbidden,
    NotFound,
    RoomNotFound,
    MethodNotAllowed,
    NameTaken,
    IdempotencyConflict,
    CategoryNotEmpty,
    NotAllowedByCategory,
    InvalidState,
    TooManyEndpoints,
    RateLimited,
    Busy,
    Internal,
    WrongPool,
}

impl ErrorCode {
    /// Every code, in the order of the spec's table.
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::MalformedJson,
        ErrorCode::InvalidUtf8,
        ErrorCode::UnknownField,
        ErrorCode::InvalidRequest,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unauthenticated,
        ErrorCode::PolicyDisabled,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::RoomNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::NameTaken,
        ErrorCode::IdempotencyConflict,
        ErrorCode::CategoryNotEmpty,
        ErrorCode::NotAllowedByCategory,
        ErrorCode::InvalidState,
        ErrorCode::TooManyEndpoints,
        ErrorCode::RateLimited,
        ErrorCode::Busy,
        ErrorCode::Internal,
        ErrorCode::WrongPool,
    ];

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            MalformedJson | InvalidUtf8 | UnknownField | InvalidRequest => 400,
            UnsupportedMediaType => 415,
            PayloadTooLarge => 413,
            Unauthenticated => 401,
            PolicyDisabled | Forbidden => 403,
            NotFound | RoomNotFound => 404,
            MethodNotAllowed => 405,
            NameTaken | IdempotencyConflict | CategoryNotEmpty | InvalidState
            | TooManyEndpoints => 409,
            NotAllowedByCategory => 422,
            RateLimited => 429,
            Busy => 503,
            Internal => 500,
            WrongPool => 421,
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedJson => "malformed_json",
            InvalidUtf8 => "invalid_utf8",
            UnknownField => "unknown_field",
            InvalidRequest => "invalid_request",
            UnsupportedMediaType => "unsupported_media_type",
            PayloadTooLarge => "payload_too_large",
            Unauthenticated => "unauthenticated",
            PolicyDisabled => "policy_disabled",
            Forbidden => "forbidden",
            NotFound => "not_found",
            RoomNotFound => "room_not_found",
            MethodNotAllowed => "method_not_allowed",
            NameTaken => "name_taken",
            IdempotencyConflict => "idempotency_conflict",
            CategoryNotEmpty => "category_not_empty",
            NotAllowedByCategory => "not_allowed_by_category",
            InvalidState => "invalid_state",
            TooManyEndpoints => "too_many_endpoints",
            RateLimited => "rate_limited",
            Busy => "busy",
            Internal => "internal",
            WrongPool => "wrong_pool",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error response: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    pub request_id: String,
    /// The request field at fault, for `invalid_request`, `unknown_field`,
    /// `not_found` and `not_allowed_by_category`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `rate_limited` and `busy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// For `wrong_pool`: the base URL of a node serving the room's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// A user or group named on a list: `user:<name>` or `group:<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    User(String),
    Group(String),
}

/// Why a principal string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPrincipal(pub String);

impl fmt::Display for BadPrincipal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a principal (want user:<name> or group:<name>): {:?}",
            self.0
        )
    }
}

impl std::error::Error for BadPrincipal {}

/// Whether `name` is a valid user, group or endpoint name: 1 to 64 characters
/// of `[A-Za-z0-9._@-]` (endpoints: without `@`).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// Whether `id` is a valid endpoint id: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_endpoint(id: &str) -> bool {
    is_valid_name(id) && !id.contains('@')
}

impl FromStr for Principal {
    type Err = BadPrincipal;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| BadPrincipal(s.to_owned()))?;
        if !is_valid_name(name) {
            return Err(BadPrincipal(s.to_owned()));
        }
        match kind {
            "user" => Ok(Principal::User(name.to_owned())),
            "group" => Ok(Principal::Group(name.to_owned())),
            _ => Err(BadPrincipal(s.to_owned())),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User(n) => write!(f, "user:{n}"),
            Principal::Group(n) => write!(f, "group:{n}"),
        }
    }
}

impl Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Room type (PC-7): who may post.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomType {
    #[default]
    Normal,
    Auditorium,
}

/// Room privacy (PC-8): who may find and read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Privacy {
    Open,
    #[default]
    Closed,
    Secret,
}

/// A room's invitation setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Invitations {
    #[default]
    Inherit,
    Off,
}

/// The three lists of a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomList {
    Managers,
    Presenters,
    Members,
}

impl RoomList {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomList::Managers => "managers",
            RoomList::Presenters => "presenters",
            RoomList::Members => "members",
        }
    }
}

/// Message kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    #[default]
    Normal,
    Alert,
    Story,
}

/// Presence states a user may set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    #[default]
    Available,
    Busy,
    DoNotDisturb,
    BeRightBack,
    Away,
    /// Set by the user; shown to others as `offline`.
    AppearOffline,
    /// Shown only; never accepted from a client.
    Offline,
}

// ---------------------------------------------------------------- limits

/// `GET /v1/limits`: the server's limits (PC-2.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_provision_bytes: u64,
    pub max_text_chars: u32,
    pub max_title_chars: u32,
    pub max_name_chars: u32,
    pub max_description_chars: u32,
    pub max_client_key_len: u32,
    pub max_endpoints_per_user: u32,
    pub history_limit_default: u32,
    pub history_limit_max: u32,
    pub search_limit_default: u32,
    pub search_limit_max: u32,
    pub rooms_limit_default: u32,
    pub rooms_limit_max: u32,
    pub join_since_max: u32,
    pub post_rate_per_s: f64,
    pub post_burst: u32,
    pub request_rate_per_s: f64,
    pub request_burst: u32,
    pub stream_queue_events: u32,
    pub heartbeat_interval_s: u32,
    pub heartbeat_timeout_s: u32,
    pub endpoint_linger_s: u32,
    pub max_client_frame_bytes: u32,
}

// ---------------------------------------------------------------- auth and self

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub user: String,
    pub password: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub user: String,
    pub expires_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkTokenRequest {
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BulkTokenResponse {
    pub tokens: BTreeMap<String, String>,
    pub expires_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Me {
    pub user: String,
    pub display_name: String,
    pub admin: bool,
    pub presence: PresenceState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPresence {
    pub state: PresenceState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FollowedRoom {
    pub room: u64,
    pub name: String,
    pub last_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FollowedRooms {
    pub rooms: Vec<FollowedRoom>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Invitation {
    pub room: u64,
    pub room_name: String,
    pub invited_by: String,
    pub at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvitationList {
    pub invitations: Vec<Invitation>,
}

/// `GET /v1/me/rooms`: rooms on whose lists the caller stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MyRoom {
    pub room: u64,
    pub name: String,
    pub manager: bool,
    pub presenter: bool,
    pub member: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MyRooms {
    pub rooms: Vec<MyRoom>,
}

// ---------------------------------------------------------------- categories

/// A category as an ordinary user sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategorySummary {
    pub id: u64,
    pub name: String,
    pub description: String,
    pub invitations: bool,
    pub file_upload: bool,
    pub history: bool,
    pub can_create: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Categories {
    pub categories: Vec<CategorySummary>,
}

/// A category as administrators see and set it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Category {
    pub id: u64,
    pub name: String,
    pub description: String,
    pub allowed: Vec<Principal>,
    pub denied: Vec<Principal>,
    pub creators: Vec<Principal>,
    pub invitations: bool,
    pub file_upload: bool,
    pub history: bool,
    pub rooms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCategory {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub allowed: Option<Vec<Principal>>,
    #[serde(default)]
    pub denied: Option<Vec<Principal>>,
    #[serde(default)]
    pub creators: Option<Vec<Principal>>,
    #[serde(default)]
    pub invitations: Option<bool>,
    #[serde(default)]
    pub file_upload: Option<bool>,
    #[serde(default)]
    pub history: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateCategory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<Principal>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<Vec<Principal>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creators: Option<Vec<Principal>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitations: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_upload: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdminCategories {
    pub categories: Vec<Category>,
}

// ---------------------------------------------------------------- rooms

/// A room as the caller may see it. `presenters` and `members` are present
/// only for members, managers and administrators (PC-7.1c).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Room {
    pub id: u64,
    pub name: String,
    pub description: String,
    pub category: u64,
    #[serde(rename = "type")]
    pub room_type: RoomType,
    pub privacy: Privacy,
    pub invitations: Invitations,
    pub addin: Option<String>,
    pub disabled: bool,
    pub managers: Vec<Principal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presenters: Option<Vec<Principal>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Principal>>,
    pub last_seq: u64,
    pub created_at: String,
}

/// A room in search results and join responses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub id: u64,
    pub name: String,
    pub description: String,
    pub category: u64,
    #[serde(rename = "type")]
    pub room_type: RoomType,
    pub privacy: Privacy,
    pub disabled: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomSearch {
    pub rooms: Vec<RoomSummary>,
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    pub name: String,
    pub category: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub room_type: Option<RoomType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<Privacy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitations: Option<Invitations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managers: Option<Vec<Principal>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presenters: Option<Vec<Principal>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Principal>>,
}

/// `PATCH /v1/rooms/{id}`. `addin: null` removes the add-in, absent keeps it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub room_type: Option<RoomType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<Privacy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitations: Option<Invitations>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub addin: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<u64>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// `POST /v1/rooms/{id}/lists/{list}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeList {
    #[serde(default)]
    pub add: Vec<Principal>,
    #[serde(default)]
    pub remove: Vec<Principal>,
}

// ---------------------------------------------------------------- joining

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRoom {
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub room: RoomSummary,
    pub last_seq: u64,
    pub messages: Vec<Message>,
    pub has_more: bool,
    pub participants: u64,
    #[serde(default)]
    pub disclaimer: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveRoom {
    pub endpoint: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    pub user: String,
    pub display_name: String,
    pub presence: PresenceState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Participants {
    pub count: u64,
    pub participants: Vec<Participant>,
}

// ---------------------------------------------------------------- messages

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MessageKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

/// A message as stored and delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub room: u64,
    pub seq: u64,
    pub sender: String,
    pub ts: String,
    pub kind: MessageKind,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    pub results: Vec<Message>,
    pub truncated: bool,
}

// ---------------------------------------------------------------- events

/// Why an endpoint was taken out of a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovedReason {
    Disabled,
    AccessRevoked,
    Deleted,
    NotJoined,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinedRoom {
    pub room: u64,
    pub last_seq: u64,
}

/// A frame the server pushes on the event stream (PC-9.4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Ready {
        endpoint: String,
        rooms: Vec<JoinedRoom>,
    },
    Message(Message),
    ParticipantJoined {
        room: u64,
        user: String,
    },
    ParticipantLeft {
        room: u64,
        user: String,
    },
    Presence {
        user: String,
        state: PresenceState,
    },
    Invitation {
        room: u64,
        room_name: String,
        invited_by: String,
    },
    Removed {
        room: u64,
        reason: RemovedReason,
    },
    RoomUpdated {
        room: u64,
    },
    MessageReplaced {
        room: u64,
        seq: u64,
    },
    /// An event type this client does not know (PC-1.5c).
    #[serde(other)]
    Unknown,
}

/// WebSocket close codes of the event stream (PC-9.7).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const UNAUTHENTICATED: u16 = 4001;
    pub const HEARTBEAT_TIMEOUT: u16 = 4002;
    pub const POLICY_DISABLED: u16 = 4003;
    pub const SLOW_CONSUMER: u16 = 4008;
    pub const REPLACED: u16 = 4009;
}

// ---------------------------------------------------------------- administration

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub policy: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub display_name: String,
    pub policy: Option<String>,
    pub admin: bool,
    pub disabled: bool,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
    #[serde(default)]
    pub members: Vec<Principal>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub members: Vec<Principal>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPolicy {
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    pub enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policies {
    pub policies: Vec<Policy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeAdministrators {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Administrators {
    pub administrators: Vec<String>,
}

/// Global configuration (PC-13.6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceConfig {
    pub messages_on_join: u32,
    pub participant_update_limit: u32,
    pub room_management_url: Option<String>,
    pub max_file_size_kb: u32,
    pub disclaimer: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateServiceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_on_join: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_update_limit: Option<u32>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub room_management_url: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_size_kb: Option<u32>,
    #[serde(
        default,
        with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub disclaimer: Option<Option<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddIn {
    pub name: String,
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddIns {
    pub addins: Vec<AddIn>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComplianceConfig {
    pub enabled: bool,
    pub interval_s: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateComplianceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearHistory {
    pub before: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveMessages {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords: Option<String>,
    #[serde(default)]
    pub replace: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Affected {
    pub affected: u64,
}

/// The bulk provisioning document (PC-13.9). Rooms name their category by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    #[serde(default)]
    pub global_policy_enabled: Option<bool>,
    #[serde(default)]
    pub policies: Vec<Policy>,
    #[serde(default)]
    pub users: Vec<CreateUser>,
    #[serde(default)]
    pub groups: Vec<CreateGroup>,
    #[serde(default)]
    pub categories: Vec<CreateCategory>,
    #[serde(default)]
    pub rooms: Vec<ProvisionRoom>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRoom {
    pub name: String,
    pub category: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub room_type: Option<RoomType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<Privacy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitations: Option<Invitations>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<Principal>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presenters: Vec<Principal>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Principal>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provisioned {
    pub users: u64,
    pub groups: u64,
    pub categories: u64,
    pub rooms: u64,
    pub entries: u64,
    /// Room ids by room name, so a load tool can address what it provisioned.
    pub room_ids: BTreeMap<String, u64>,
}

/// `GET /v1/admin/pools` (PC-17.2a).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pools {
    pub pools: Vec<PoolView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub edition: String,
    /// `active`, `failed_over` or `standby`.
    pub state: String,
    /// The pools whose rooms this pool serves.
    pub serving: Vec<String>,
    #[serde(default)]
    pub backup: Option<String>,
    pub nodes: Vec<PoolNode>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolNode {
    pub name: String,
    pub url: String,
    pub active: bool,
    /// None where the answering node cannot tell.
    pub alive: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principal_round_trips_and_rejects_bad_forms() {
        for good in ["user:alice", "group:eng.team", "user:a@b.c"] {
            let p: Principal = good.parse().unwrap();
            assert_eq!(p.to_string(), good);
        }
        for bad in ["alice", "user:", "role:x", "user:has space", "group:a/b"] {
            assert!(bad.parse::<Principal>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn error_codes_serialize_as_their_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let err = serde_json::from_str::<PostMessage>(r#"{"text":"hi","colour":"red"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn unknown_event_types_are_tolerated() {
        let ev: Event = serde_json::from_str(r#"{"type":"hologram","room":1}"#).unwrap();
        assert_eq!(ev, Event::Unknown);
    }

    #[test]
    fn update_room_distinguishes_null_from_absent() {
        let absent: UpdateRoom = serde_json::from_str("{}").unwrap();
        assert_eq!(absent.addin, None);
        let null: UpdateRoom = serde_json::from_str(r#"{"addin":null}"#).unwrap();
        assert_eq!(null.addin, Some(None));
    }
}
