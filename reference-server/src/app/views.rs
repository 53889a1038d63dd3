//! Records rendered as wire types, and wire values parsed into records.

use pchat_protocol as wire;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::domain::{Access, CategoryRec, Directory, RoomRec};
use crate::error::{ApiError, ApiResult};
use crate::store::{MessageState, StoredMessage};

/// Milliseconds since the epoch as `2026-11-25T10:00:00.123Z` (PC-1.4).
pub fn timestamp(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    // Every in-range date formats.
    t.format(&fmt).expect("timestamp format")
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
pub fn parse_timestamp(field: &str, s: &str) -> ApiResult<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| ApiError::invalid(field, format!("{field} is not an RFC 3339 timestamp")))
}

/// The text shown in place of a replaced message (PC-13.8).
pub const REPLACEMENT_TEXT: &str = "This message was removed by an administrator.";

pub fn message(m: &StoredMessage) -> wire::Message {
    let text = match m.state {
        MessageState::Replaced => m
            .text
            .clone()
            .unwrap_or_else(|| REPLACEMENT_TEXT.to_owned()),
        _ => m.text.clone().unwrap_or_default(),
    };
    wire::Message {
        room: m.room.0 as u64,
        seq: m.seq,
        sender: m.sender.clone(),
        ts: timestamp(m.ts_ms),
        kind: m.kind,
        text,
        title: m.title.clone(),
    }
}

pub fn room_summary(r: &RoomRec) -> wire::RoomSummary {
    wire::RoomSummary {
        id: r.id.0 as u64,
        name: r.name.clone(),
        description: r.description.clone(),
        category: r.category.0 as u64,
        room_type: r.room_type,
        privacy: r.privacy,
        disabled: r.disabled,
    }
}

pub fn room(dir: &Directory, r: &RoomRec, access: Access, last_seq: u64) -> wire::Room {
    #[cfg(feature = "bug-injection")]
    let access = crate::inject::lists_for_all(access);
    wire::Room {
        id: r.id.0 as u64,
        name: r.name.clone(),
        description: r.description.clone(),
        category: r.category.0 as u64,
        room_type: r.room_type,
        privacy: r.privacy,
        invitations: r.invitations,
        addin: r.addin.clone(),
        disabled: r.disabled,
        managers: dir.principals(&r.managers),
        presenters: access.see_lists.then(|| dir.principals(&r.presenters)),
        members: access.see_lists.then(|| dir.principals(&r.members)),
        last_seq,
        created_at: timestamp(r.created_at),
    }
}

pub fn category(dir: &Directory, c: &CategoryRec) -> wire::Category {
    wire::Category {
        id: c.id.0 as u64,
        name: c.name.clone(),
        description: c.description.clone(),
        allowed: dir.principals(&c.allowed),
        denied: dir.principals(&c.denied),
        creators: dir.principals(&c.creators),
        invitations: c.invitations,
        file_upload: c.file_upload,
        history: c.history,
        rooms: dir.rooms.values().filter(|r| r.category == c.id).count() as u64,
    }
}

/// Checks a room or category name (PC-7.2).
pub fn check_name(field: &str, name: &str) -> ApiResult<()> {
    let n = name.chars().count();
    if n == 0 || n > 256 || name.trim().is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be 1 to 256 characters, not all blank"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(())
}

pub fn check_description(field: &str, d: &str) -> ApiResult<()> {
    if d.chars().count() > 256 {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be at most 256 characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_milliseconds_and_z() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_764_064_800_123), "2025-11-25T10:00:00.123Z");
        assert_eq!(
            parse_timestamp("t", "2025-11-25T10:00:00.123Z").unwrap(),
            1_764_064_800_123
        );
        assert_eq!(
            parse_timestamp("t", "2025-11-25T11:00:00.123+01:00").unwrap(),
            1_764_064_800_123
        );
        assert!(parse_timestamp("t", "yesterday").is_err());
    }
}
