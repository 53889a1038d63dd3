//! The caller's own state: who they are, presence, followed rooms, invitations.

use pchat_protocol::{self as wire, PresenceState};

use super::rooms::deny;
use super::{views, App, Caller};
use crate::domain::RoomId;
use crate::error::{ApiError, ApiResult};

impl App {
    /// `GET /v1/me`.
    pub fn me(&self, caller: &Caller) -> wire::Me {
        let dir = self.dir();
        let display_name = dir
            .users
            .get(&caller.id)
            .map(|u| u.display_name.clone())
            .unwrap_or_else(|| caller.name.clone());
        wire::Me {
            user: caller.name.clone(),
            display_name,
            admin: caller.admin,
            presence: self.hub.own_presence(caller.id),
        }
    }

    /// `PUT /v1/me/presence` (PC-12.4).
    pub fn set_presence(
        &self,
        caller: &Caller,
        state: PresenceState,
    ) -> ApiResult<wire::SetPresence> {
        if state == PresenceState::Offline {
            return Err(ApiError::invalid(
                "state",
                "offline is shown, not set; use appear_offline",
            ));
        }
        self.hub.set_presence(caller.id, caller.name.clone(), state);
        Ok(wire::SetPresence { state })
    }

    /// `GET /v1/me/followed`: followed rooms the caller may still read.
    pub async fn followed(&self, caller: &Caller) -> ApiResult<wire::FollowedRooms> {
        let ids = self.store.followed(caller.id).await?;
        let dir = self.dir();
        let rooms = ids
            .into_iter()
            .filter_map(|id| dir.rooms.get(&id))
            .filter(|r| dir.access(caller.id, r).read)
            .map(|r| wire::FollowedRoom {
                room: r.id.0 as u64,
                name: r.name.clone(),
                last_seq: self.hub.last_seq(r.id),
            })
            .collect();
        Ok(wire::FollowedRooms { rooms })
    }

    /// `PUT` / `DELETE /v1/me/followed/{room}`.
    pub async fn set_followed(&self, caller: &Caller, room: RoomId, follow: bool) -> ApiResult<()> {
        self.with_room(caller, room, |_, _, access| {
            if follow && !access.read {
                return Err(deny(access, "follow"));
            }
            Ok(())
        })?;
        self.store.set_followed(caller.id, room, follow).await?;
        Ok(())
    }

    /// `GET /v1/me/invitations`: pending invitations, each returned once.
    pub async fn invitations(&self, caller: &Caller) -> ApiResult<wire::InvitationList> {
        let recs = self.store.take_invitations(caller.id).await?;
        let dir = self.dir();
        let invitations = recs
            .into_iter()
            .filter_map(|i| {
                let room = dir.rooms.get(&i.room)?;
                Some(wire::Invitation {
                    room: i.room.0 as u64,
                    room_name: room.name.clone(),
                    invited_by: i.invited_by,
                    at: views::timestamp(i.at_ms),
                })
            })
            .collect();
        Ok(wire::InvitationList { invitations })
    }
}
