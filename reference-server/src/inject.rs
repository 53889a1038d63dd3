//! Deliberate bugs, compiled in only with the `bug-injection` feature, so the
//! conformance suite can prove it catches them (`conformance/bugs.toml`
//! declares the clauses each must break; `conformance/tests/bug_injection.rs`
//! checks that exactly those fail).
//!
//! `PCHAT_INJECT_BUG=<name>` selects one bug when the process starts; unset or
//! empty, the server behaves exactly like the normal build. Each injection
//! point elsewhere is a small `#[cfg(feature = "bug-injection")]` block that
//! calls one function of this module. An unknown name stops the server at
//! its first injection point, so a typo cannot pass as a clean run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pchat_protocol::Privacy;

use crate::app::HistoryFrom;
use crate::domain::{Access, Directory, RoomId, RoomRec, UserId};
use crate::hub::{Frame, Hub};

/// Every bug this build knows, by the name `PCHAT_INJECT_BUG` selects.
pub const BUGS: &[&str] = &[
    "secret-room-in-search",
    "drop-every-hundredth",
    "reordered-delivery",
    "missing-manager-check",
    "history-off-by-one",
    "lists-shown-to-outsiders",
];

/// The bug selected by the environment, read once.
fn selected() -> Option<&'static str> {
    static SELECTED: OnceLock<Option<String>> = OnceLock::new();
    SELECTED
        .get_or_init(|| {
            let name = std::env::var("PCHAT_INJECT_BUG")
                .ok()
                .filter(|n| !n.is_empty())?;
            if !BUGS.contains(&name.as_str()) {
                eprintln!(
                    "PCHAT_INJECT_BUG={name:?} is not a known bug; known: {}",
                    BUGS.join(", ")
                );
                std::process::exit(2);
            }
            tracing::warn!(bug = %name, "a deliberate bug is injected");
            Some(name)
        })
        .as_deref()
}

/// Whether the bug `name` is the one selected.
pub fn active(name: &str) -> bool {
    debug_assert!(BUGS.contains(&name), "unknown bug name {name}");
    selected() == Some(name)
}

/// `secret-room-in-search`: room search also finds secret rooms the caller
/// is in scope of but not a member of.
pub fn secret_room_found(dir: &Directory, user: UserId, room: &RoomRec) -> bool {
    active("secret-room-in-search")
        && room.privacy == Privacy::Secret
        && !room.disabled
        && dir
            .categories
            .get(&room.category)
            .is_some_and(|c| dir.user_in_scope(user, c))
}

/// `missing-manager-check`: a member may change the room's settings and
/// lists as if a manager.
pub fn member_manages(access: Access) -> Access {
    if active("missing-manager-check") && access.member {
        Access {
            manage: true,
            ..access
        }
    } else {
        access
    }
}

/// `lists-shown-to-outsiders`: everyone who may find a room sees its
/// presenter and member lists.
pub fn lists_for_all(access: Access) -> Access {
    if active("lists-shown-to-outsiders") {
        Access {
            see_lists: true,
            ..access
        }
    } else {
        access
    }
}

/// `history-off-by-one`: `before=S` includes message S itself.
pub fn history_from(from: HistoryFrom) -> HistoryFrom {
    match from {
        HistoryFrom::Before(s) if active("history-off-by-one") => HistoryFrom::Before(s + 1),
        other => other,
    }
}

/// The message `reordered-delivery` holds back, per room, until the next.
fn held() -> &'static Mutex<HashMap<RoomId, (u64, Frame)>> {
    static HELD: OnceLock<Mutex<HashMap<RoomId, (u64, Frame)>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// The first of the two messages of every room that `reordered-delivery` swaps.
const SWAPPED_SEQ: u64 = 2;
/// How long a held message waits for its successor before it goes out alone
/// (shorter than the suite's default wait for an event, 5 s).
const HOLD: Duration = Duration::from_secs(3);

/// `reordered-delivery`, called by the publisher for every committed
/// message before it goes to the hub; true when this function has published
/// it (or will). Message 2 of every room waits for message 3 (at most
/// [`HOLD`]); then the hub gets seq 2 with message 3's frame and seq 3 with
/// message 2's, so every joined stream sends 3 before 2. (Swapping the
/// publications alone would not do: a stream fills any gap from the store.)
/// While message 2 waits, the room's published `last_seq` lags by one (the
/// acknowledged one, which answers show, does not).
pub fn reorder(hub: &Arc<Hub>, room: RoomId, seq: u64, frame: &Frame) -> bool {
    if !active("reordered-delivery") {
        return false;
    }
    let mut held_back = held().lock().expect("inject lock poisoned");
    if seq == SWAPPED_SEQ {
        held_back.insert(room, (seq, frame.clone()));
        let hub = hub.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HOLD).await;
            let mut held_back = held().lock().expect("inject lock poisoned");
            if let Some((seq, frame)) = held_back.remove(&room) {
                hub.publish(room, seq, frame);
            }
        });
        return true;
    }
    if seq == SWAPPED_SEQ + 1 {
        if let Some((first, first_frame)) = held_back.remove(&room) {
            hub.publish(room, first, frame.clone());
            hub.publish(room, seq, first_frame);
            return true;
        }
    }
    false
}

/// `drop-every-hundredth`: every hundredth message of a room (seq 100, 200,
/// ...) is stored but skipped on every live stream.
pub fn dropped(seq: u64) -> bool {
    active("drop-every-hundredth") && seq.is_multiple_of(100)
}
