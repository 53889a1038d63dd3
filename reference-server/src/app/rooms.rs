//! Categories as users see them, rooms, their lists, joining and participants.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use pchat_protocol::{self as wire, ErrorCode, Principal, RemovedReason, RoomList, RoomType};

use super::views::{self, check_description, check_name};
use super::{now_ms, App, Caller};
use crate::admission::Admitted;
use crate::domain::{
    name_key, Access, Acl, CategoryId, Directory, Entry, NameOwner, RoomId, RoomRec, UserId,
};
use crate::error::{ApiError, ApiResult};
use crate::hub::{Session, TooManyEndpoints};
use crate::store::{Change, IdKind, InvitationRec, Slice};

/// Most messages a join with `since` returns (PC-9.3).
pub const JOIN_SINCE_MAX: usize = 500;

/// The error for a room the caller may not act on: 403 if they may know it
/// exists, otherwise the same 404 as a room that does not exist.
pub fn deny(access: Access, what: &str) -> ApiError {
    if access.find {
        ApiError::forbidden(format!("you may not {what} in this room"))
    } else {
        ApiError::room_not_found()
    }
}

/// Resolves wire principals to entries; unknown names are `not_found` naming
/// the offending element.
pub fn resolve_all(dir: &Directory, field: &str, list: &[Principal]) -> ApiResult<Vec<Entry>> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            dir.resolve(p).ok_or_else(|| {
                let what = match p {
                    Principal::User(_) => "user",
                    Principal::Group(_) => "group",
                };
                ApiError::not_found(what, &format!("{field}[{i}]"))
            })
        })
        .collect()
}

/// Checks that every entry of a room list is within the category (PC-7.6).
fn check_scope(dir: &Directory, cat: CategoryId, field: &str, entries: &[Entry]) -> ApiResult<()> {
    let Some(cat) = dir.categories.get(&cat) else {
        return Err(ApiError::not_found("category", "category"));
    };
    for (i, e) in entries.iter().enumerate() {
        if !dir.entry_in_scope(*e, cat) {
            return Err(ApiError::new(
                ErrorCode::NotAllowedByCategory,
                format!(
                    "{} is not allowed by category {:?}",
                    dir.principal(*e),
                    cat.name
                ),
            )
            .with_field(format!("{field}[{i}]")));
        }
    }
    Ok(())
}

/// Whether a presenter entry is also a member (PC-7.7).
fn presenter_is_member(dir: &Directory, room: &RoomRec, e: Entry) -> bool {
    match e {
        Entry::User(u) => room.members.contains_user(u, dir.groups_of(u)),
        Entry::Group(g) => room.members.groups.contains(&g),
    }
}

/// Checks the rules that tie the lists together: presenters only in
/// auditoriums, and every presenter a member.
pub(super) fn check_presenters(dir: &Directory, room: &RoomRec) -> ApiResult<()> {
    if room.room_type == RoomType::Normal && !room.presenters.is_empty() {
        return Err(
            ApiError::new(ErrorCode::InvalidState, "a normal room has no presenters")
                .with_field("presenters"),
        );
    }
    for e in room.presenters.entries() {
        if !presenter_is_member(dir, room, e) {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!("presenter {} must also be a member", dir.principal(e)),
            )
            .with_field("presenters"));
        }
    }
    Ok(())
}

impl App {
    /// Runs `f` on a room the caller may find; otherwise `room_not_found`.
    pub fn with_room<T>(
        &self,
        caller: &Caller,
        room: RoomId,
        f: impl FnOnce(&Directory, &RoomRec, Access) -> ApiResult<T>,
    ) -> ApiResult<T> {
        let dir = self.dir();
        let Some(r) = dir.rooms.get(&room) else {
            drop(dir);
            return Err(self.unknown_room(room));
        };
        let access = dir.access(caller.id, r);
        if !access.find {
            return Err(ApiError::room_not_found());
        }
        f(&dir, r, access)
    }

    /// `GET /v1/categories`.
    pub fn categories(&self, caller: &Caller) -> wire::Categories {
        let dir = self.dir();
        let mut categories: Vec<_> = dir
            .categories
            .values()
            .filter(|c| caller.admin || dir.user_in_scope(caller.id, c))
            .map(|c| wire::CategorySummary {
                id: c.id.0 as u64,
                name: c.name.clone(),
                description: c.description.clone(),
                invitations: c.invitations,
                file_upload: c.file_upload,
                history: c.history,
                can_create: dir.can_create(caller.id, c),
            })
            .collect();
        categories.sort_by(|a, b| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then(a.id.cmp(&b.id))
        });
        wire::Categories { categories }
    }

    /// `POST /v1/rooms`.
    pub async fn create_room(
        &self,
        caller: &Caller,
        req: wire::CreateRoom,
    ) -> ApiResult<wire::Room> {
        check_name("name", &req.name)?;
        if let Some(d) = &req.description {
            check_description("description", d)?;
        }
        let _guard = self.admin_guard().await?;
        // Validate first; reserve an id only for a request that will succeed.
        let mut room = {
            let dir = self.dir();
            let cat_id = CategoryId(req.category as i64);
            let cat = dir
                .categories
                .get(&cat_id)
                .filter(|c| caller.admin || dir.user_in_scope(caller.id, c))
                .ok_or_else(|| ApiError::not_found("category", "category"))?;
            if !dir.can_create(caller.id, cat) {
                return Err(ApiError::forbidden(
                    "you are not a creator in this category",
                ));
            }
            if dir.names.contains_key(&name_key(&req.name)) {
                return Err(ApiError::new(
                    ErrorCode::NameTaken,
                    "a room or category already has this name",
                )
                .with_field("name"));
            }
            if let Some(a) = &req.addin {
                if !self.settings().addins.contains_key(a) {
                    return Err(ApiError::not_found("add-in", "addin"));
                }
            }
            let managers = resolve_all(&dir, "managers", req.managers.as_deref().unwrap_or(&[]))?;
            let presenters =
                resolve_all(&dir, "presenters", req.presenters.as_deref().unwrap_or(&[]))?;
            let members = resolve_all(&dir, "members", req.members.as_deref().unwrap_or(&[]))?;
            check_scope(&dir, cat_id, "managers", &managers)?;
            check_scope(&dir, cat_id, "presenters", &presenters)?;
            check_scope(&dir, cat_id, "members", &members)?;
            let mut managers = Acl::from_entries(managers);
            if caller.id != crate::domain::OPERATOR {
                // A creator becomes manager of the rooms they create (PC-7.3c).
                managers.insert(Entry::User(caller.id));
            }
            let room = RoomRec {
                id: RoomId(0),
                name: req.name.clone(),
                description: req.description.clone().unwrap_or_default(),
                category: cat_id,
                room_type: req.room_type.unwrap_or_default(),
                privacy: req.privacy.unwrap_or_default(),
                invitations: req.invitations.unwrap_or_default(),
                addin: req.addin.clone(),
                disabled: false,
                managers,
                presenters: Acl::from_entries(presenters),
                members: Acl::from_entries(members),
                created_at: now_ms(),
            };
            check_presenters(&dir, &room)?;
            room
        };
        room.id = RoomId(self.store.reserve_ids(IdKind::Room, 1).await?);
        let audit = self.event(
            "ROOM_CREATED",
            Some((room.id, room.name.clone())),
            &caller.name,
        );
        self.commit(vec![Change::PutRoom(room.clone())], vec![audit])
            .await?;
        let invited: Vec<UserId> = {
            let dir = self.dir();
            if dir.invitations_on(&room) {
                members_of(&dir, &room).into_iter().collect()
            } else {
                Vec::new()
            }
        };
        self.invite(caller, &room, invited).await?;
        let dir = self.dir();
        Ok(views::room(&dir, &room, dir.access(caller.id, &room), 0))
    }

    /// `GET /v1/rooms`.
    pub fn search_rooms(
        &self,
        caller: &Caller,
        q: Option<&str>,
        category: Option<u64>,
        limit: usize,
    ) -> wire::RoomSearch {
        let needle = q.map(str::to_lowercase);
        let dir = self.dir();
        let mut found: Vec<&RoomRec> = dir
            .rooms
            .values()
            .filter(|r| category.is_none_or(|c| r.category.0 as u64 == c))
            .filter(|r| {
                needle.as_deref().is_none_or(|n| {
                    r.name.to_lowercase().contains(n) || r.description.to_lowercase().contains(n)
                })
            })
            .filter(|r| {
                #[cfg(feature = "bug-injection")]
                if crate::inject::secret_room_found(&dir, caller.id, r) {
                    return true;
                }
                dir.access(caller.id, r).find
            })
            .collect();
        found.sort_by(|a, b| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then(a.id.cmp(&b.id))
        });
        let truncated = found.len() > limit;
        found.truncate(limit);
        wire::RoomSearch {
            rooms: found.into_iter().map(views::room_summary).collect(),
            truncated,
        }
    }

    /// `GET /v1/rooms/{id}`.
    pub fn get_room(&self, caller: &Caller, room: RoomId) -> ApiResult<wire::Room> {
        let last = self.hub.last_seq(room);
        self.with_room(caller, room, |dir, r, access| {
            Ok(views::room(dir, r, access, last))
        })
    }

    /// `GET /v1/me/rooms`.
    pub fn my_rooms(&self, caller: &Caller) -> wire::MyRooms {
        let dir = self.dir();
        let mut rooms: Vec<_> = dir
            .rooms
            .values()
            .filter_map(|r| {
                let a = dir.access(caller.id, r);
                (a.find && (a.member || a.manager)).then(|| wire::MyRoom {
                    room: r.id.0 as u64,
                    name: r.name.clone(),
                    manager: a.manager,
                    presenter: a.presenter,
                    member: a.member,
                })
            })
            .collect();
        rooms.sort_by(|a, b| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then(a.room.cmp(&b.room))
        });
        wire::MyRooms { rooms }
    }

    /// `PATCH /v1/rooms/{id}`.
    pub async fn update_room(
        &self,
        caller: &Caller,
        room: RoomId,
        req: wire::UpdateRoom,
    ) -> ApiResult<wire::Room> {
        if let Some(n) = &req.name {
            check_name("name", n)?;
        }
        if let Some(d) = &req.description {
            check_description("description", d)?;
        }
        let _guard = self.admin_guard().await?;
        let (before, after) = self.with_room(caller, room, |dir, r, access| {
            #[cfg(feature = "bug-injection")]
            let access = crate::inject::member_manages(access);
            if !access.manage {
                return Err(ApiError::forbidden(
                    "only managers and administrators may change a room",
                ));
            }
            let mut new = r.clone();
            if let Some(n) = &req.name {
                match dir.names.get(&name_key(n)) {
                    Some(NameOwner::Room(id)) if *id == room => {}
                    Some(_) => {
                        return Err(ApiError::new(
                            ErrorCode::NameTaken,
                            "a room or category already has this name",
                        )
                        .with_field("name"))
                    }
                    None => {}
                }
                new.name = n.clone();
            }
            if let Some(d) = &req.description {
                new.description = d.clone();
            }
            if let Some(p) = req.privacy {
                new.privacy = p;
            }
            if let Some(i) = req.invitations {
                new.invitations = i;
            }
            if let Some(a) = &req.addin {
                if let Some(name) = a {
                    if !self.settings().addins.contains_key(name) {
                        return Err(ApiError::not_found("add-in", "addin"));
                    }
                }
                new.addin = a.clone();
            }
            if let Some(d) = req.disabled {
                new.disabled = d;
            }
            if let Some(t) = req.room_type {
                new.room_type = t;
                if t == RoomType::Normal {
                    new.presenters = Acl::default();
                }
            }
            if let Some(c) = req.category {
                let cat_id = CategoryId(c as i64);
                let cat = dir
                    .categories
                    .get(&cat_id)
                    .filter(|c| caller.admin || dir.user_in_scope(caller.id, c))
                    .ok_or_else(|| ApiError::not_found("category", "category"))?;
                if cat_id != r.category {
                    if !dir.can_create(caller.id, cat) {
                        return Err(ApiError::forbidden(
                            "you are not a creator in the target category",
                        ));
                    }
                    new.category = cat_id;
                    // Moving removes whoever the new category does not allow (PC-7.5d).
                    for list in [RoomList::Managers, RoomList::Presenters, RoomList::Members] {
                        let out: Vec<Entry> = new
                            .list(list)
                            .entries()
                            .into_iter()
                            .filter(|e| !dir.entry_in_scope(*e, cat))
                            .collect();
                        for e in out {
                            new.list_mut(list).remove(e);
                        }
                    }
                }
            }
            Ok((r.clone(), new))
        })?;
        let audit = self.event(
            "ROOM_UPDATED",
            Some((room, after.name.clone())),
            &caller.name,
        );
        self.commit(vec![Change::PutRoom(after.clone())], vec![audit])
            .await?;
        self.after_room_change(&before, &after);
        let last = self.hub.last_seq(room);
        let dir = self.dir();
        Ok(views::room(
            &dir,
            &after,
            dir.access(caller.id, &after),
            last,
        ))
    }

    /// Tells the hub what a room change means for those present.
    pub(super) fn after_room_change(&self, before: &RoomRec, after: &RoomRec) {
        if after.disabled && !before.disabled {
            self.hub
                .remove_where(after.id, RemovedReason::Disabled, |_| false);
            return;
        }
        {
            let dir = self.dir();
            self.hub
                .remove_where(after.id, RemovedReason::AccessRevoked, |u| {
                    dir.rooms
                        .get(&after.id)
                        .is_some_and(|r| dir.access(u, r).read)
                });
        }
        self.hub.broadcast(
            after.id,
            &wire::Event::RoomUpdated {
                room: after.id.0 as u64,
            },
        );
    }

    /// `DELETE /v1/rooms/{id}`: administrators only.
    pub async fn delete_room(&self, caller: &Caller, room: RoomId) -> ApiResult<()> {
        let _guard = self.admin_guard().await?;
        let name = self.with_room(caller, room, |_, r, _| {
            if !caller.admin {
                return Err(ApiError::forbidden("only administrators delete rooms"));
            }
            Ok(r.name.clone())
        })?;
        let audit = self.event("ROOM_DELETED", Some((room, name)), &caller.name);
        self.commit(vec![Change::DeleteRoom(room)], vec![audit])
            .await?;
        self.hub.drop_room(room);
        Ok(())
    }

    /// `POST /v1/rooms/{id}/lists/{list}`.
    pub async fn change_list(
        &self,
        caller: &Caller,
        room: RoomId,
        list: RoomList,
        req: wire::ChangeList,
    ) -> ApiResult<wire::Room> {
        let _guard = self.admin_guard().await?;
        let (before, after, invited) = self.with_room(caller, room, |dir, r, access| {
            #[cfg(feature = "bug-injection")]
            let access = crate::inject::member_manages(access);
            if !access.manage {
                return Err(ApiError::forbidden(
                    "only managers and administrators may change a room's lists",
                ));
            }
            let add = resolve_all(dir, "add", &req.add)?;
            let remove = resolve_all(dir, "remove", &req.remove)?;
            check_scope(dir, r.category, "add", &add)?;
            if list == RoomList::Presenters && r.room_type == RoomType::Normal && !add.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::InvalidState,
                    "a normal room has no presenters",
                )
                .with_field("add"));
            }
            let mut new = r.clone();
            for e in &remove {
                new.list_mut(list).remove(*e);
            }
            for e in &add {
                new.list_mut(list).insert(*e);
            }
            if list == RoomList::Members {
                // Presenters who are no longer members stop presenting.
                let stale: Vec<Entry> = new
                    .presenters
                    .entries()
                    .into_iter()
                    .filter(|e| !presenter_is_member(dir, &new, *e))
                    .collect();
                for e in stale {
                    new.presenters.remove(e);
                }
            }
            check_presenters(dir, &new)?;
            let invited: Vec<UserId> = if list == RoomList::Members && dir.invitations_on(&new) {
                let was = members_of(dir, r);
                members_of(dir, &new).difference(&was).copied().collect()
            } else {
                Vec::new()
            };
            Ok((r.clone(), new, invited))
        })?;
        let mut audit = self.event(
            "LIST_CHANGED",
            Some((room, after.name.clone())),
            &caller.name,
        );
        audit.detail = Some(format!(
            "{}: add {:?} remove {:?}",
            list.as_str(),
            req.add.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            req.remove.iter().map(|p| p.to_string()).collect::<Vec<_>>()
        ));
        self.commit(vec![Change::PutRoom(after.clone())], vec![audit])
            .await?;
        self.after_room_change(&before, &after);
        self.invite(caller, &after, invited).await?;
        let last = self.hub.last_seq(room);
        let dir = self.dir();
        Ok(views::room(
            &dir,
            &after,
            dir.access(caller.id, &after),
            last,
        ))
    }

    /// Stores invitations and tells connected endpoints (PC-5.5).
    async fn invite(&self, caller: &Caller, room: &RoomRec, users: Vec<UserId>) -> ApiResult<()> {
        let users: Vec<UserId> = users.into_iter().filter(|u| *u != caller.id).collect();
        if users.is_empty() {
            return Ok(());
        }
        let at = now_ms();
        let recs = users
            .iter()
            .map(|u| InvitationRec {
                user: *u,
                room: room.id,
                invited_by: caller.name.clone(),
                at_ms: at,
            })
            .collect();
        self.store.add_invitations(recs).await?;
        let ev = wire::Event::Invitation {
            room: room.id.0 as u64,
            room_name: room.name.clone(),
            invited_by: caller.name.clone(),
        };
        for u in users {
            self.hub.to_user_everywhere(u, &ev);
        }
        Ok(())
    }

    /// `POST /v1/rooms/{id}/join`.
    pub async fn join(
        &self,
        caller: &Caller,
        room: RoomId,
        req: wire::JoinRoom,
    ) -> ApiResult<wire::Joined> {
        check_endpoint(&req.endpoint)?;
        let settings = self.settings();
        let (summary, history_on, room_name) = self.with_room(caller, room, |dir, r, access| {
            if !access.read {
                return Err(deny(access, "join"));
            }
            let history = dir.categories.get(&r.category).is_some_and(|c| c.history);
            Ok((views::room_summary(r), history, r.name.clone()))
        })?;
        // Refused here before any wait when already over; the session below
        // keeps the limit (PC-9.1c).
        let limit = self.config.limits.max_endpoints_per_user;
        let (exists, count) = self.hub.sessions_of(caller.id, &req.endpoint);
        if !exists && count >= limit {
            return Err(TooManyEndpoints.into());
        }
        // A join that reads history waits for a turn first; refused, it
        // has changed nothing: no session, no participant, no record
        // (PC-2.4b). The turn is held to the answer.
        // A room with nothing in it yet has no history to read.
        let known = self.hub.last_seq(room);
        let reads_history = history_on
            && known > 0
            && match req.since {
                Some(since) => since < known,
                None => settings.service.messages_on_join > 0,
            };
        let _turn = if reads_history {
            self.admission.join.admit().await?
        } else {
            Admitted::free()
        };
        // Access again, now, with the session made and joined under the
        // same look at the directory: a change that took the caller's read
        // permission while this join waited has refused it, and one made
        // after it finds the session in the room and removes it (PC-9.5b).
        let update_limit = settings.service.participant_update_limit as usize;
        let (_hold, upto) = self.with_room(caller, room, |_, _, access| {
            if !access.read {
                return Err(deny(access, "join"));
            }
            // Held to the answer: the session cannot expire under the join.
            let hold = self
                .hub
                .session(caller.id, &caller.name, &req.endpoint, limit)?;
            let upto = self.hub.join(room, hold.session(), update_limit);
            Ok((hold, upto))
        })?;
        let (stored, has_more) = if !history_on || upto == 0 {
            (Vec::new(), false)
        } else {
            match req.since {
                Some(since) if since >= upto => (Vec::new(), false),
                Some(since) => {
                    self.store
                        .messages(room, Slice::Between(since, upto), JOIN_SINCE_MAX)
                        .await?
                }
                None => {
                    let n = settings.service.messages_on_join as usize;
                    self.store
                        .messages(room, Slice::Before(upto + 1), n)
                        .await?
                }
            }
        };
        if let (Some(first), Some(last)) = (stored.first(), stored.last()) {
            let mut ev = self.event("BACKCHAT", Some((room, room_name)), &caller.name);
            ev.detail = Some(format!("join loaded seq {}..={}", first.seq, last.seq));
            self.comply(vec![ev]).await?;
        }
        // The JOIN record is durable before the join is answered.
        self.hub.flush_notes().await;
        Ok(wire::Joined {
            room: summary,
            last_seq: upto,
            messages: stored.iter().map(views::message).collect(),
            has_more,
            participants: self.hub.participant_count(room) as u64,
            disclaimer: settings.service.disclaimer.clone(),
        })
    }

    /// A turn at the stream gate for a stream start (`GET /v1/stream`) that
    /// will replay missed messages from the store: one whose `resume` names
    /// a room the endpoint's session has joined at a point behind what the
    /// room has published, or, with `rejoin`, any room behind. Other starts
    /// need no turn. Call it before the stream changes anything, and hold
    /// the turn until the replay is done.
    pub async fn admit_stream(
        &self,
        caller: &Caller,
        endpoint: &str,
        resume: &HashMap<RoomId, u64>,
        rejoin: bool,
    ) -> ApiResult<Admitted> {
        let is_behind = |room: &RoomId| {
            resume
                .get(room)
                .is_some_and(|seq| *seq < self.hub.last_seq(*room))
        };
        let behind = !resume.is_empty()
            && if rejoin {
                resume.keys().any(is_behind)
            } else {
                self.hub
                    .find_session(caller.id, endpoint)
                    .is_some_and(|s| s.rooms().iter().any(is_behind))
            };
        if behind {
            self.admission.stream.admit().await
        } else {
            Ok(Admitted::free())
        }
    }

    /// A stream start's `rejoin` (PC-9.4d): joins `session` to each room
    /// of `resume` it has not joined and the caller may read, as a join
    /// would (participant, compliance record), without reading history:
    /// the stream replays from the resume entry. Rooms that cannot be
    /// joined are left out (the stream tells of them as `not_joined`).
    /// Returns once the joins' records are durable.
    pub async fn rejoin(
        &self,
        caller: &Caller,
        session: &Arc<Session>,
        resume: &HashMap<RoomId, u64>,
    ) {
        let joined = session.rooms();
        let mut rooms: Vec<RoomId> = resume
            .keys()
            .filter(|r| !joined.contains(r))
            .copied()
            .collect();
        if rooms.is_empty() {
            return;
        }
        rooms.sort();
        let limit = self.settings().service.participant_update_limit as usize;
        for room in rooms {
            // Checked and joined under one look at the directory, as in
            // `join`: a permission taken away at the same time either
            // stops this join or finds it and removes it (PC-9.5b).
            let _ = self.with_room(caller, room, |_, _, access| {
                if access.read {
                    self.hub.join(room, session, limit);
                }
                Ok(())
            });
        }
        // The JOIN records are durable before the stream answers.
        self.hub.flush_notes().await;
    }

    /// `POST /v1/rooms/{id}/leave`.
    pub async fn leave(
        &self,
        caller: &Caller,
        room: RoomId,
        req: wire::LeaveRoom,
    ) -> ApiResult<()> {
        check_endpoint(&req.endpoint)?;
        let session = self.hub.find_session(caller.id, &req.endpoint);
        let Some(session) = session.filter(|s| s.rooms().contains(&room)) else {
            // Leaving a room one is not in is a no-op, but only for rooms the
            // caller may know of.
            self.with_room(caller, room, |_, _, _| Ok(()))?;
            return Ok(());
        };
        let limit = self.settings().service.participant_update_limit as usize;
        self.hub.unsubscribe(room, &session, None, limit);
        // The PART record, if this ended the user's presence, is durable
        // before the leave is answered.
        self.hub.flush_notes().await;
        Ok(())
    }

    /// `GET /v1/rooms/{id}/participants`.
    pub fn participants(
        &self,
        caller: &Caller,
        room: RoomId,
        limit: usize,
    ) -> ApiResult<wire::Participants> {
        self.with_room(caller, room, |dir, _, access| {
            if !access.read {
                return Err(deny(access, "list participants"));
            }
            let (count, page) = self
                .hub
                .participants_page(room, limit, |u| dir.users.contains_key(&u));
            let count = count as u64;
            let participants = page
                .into_iter()
                .filter_map(|u| dir.users.get(&u).map(|rec| (rec.name.as_str(), u)))
                .map(|(name, u)| wire::Participant {
                    user: name.to_owned(),
                    display_name: dir
                        .users
                        .get(&u)
                        .map(|r| r.display_name.clone())
                        .unwrap_or_default(),
                    presence: self.hub.shown_presence(u),
                })
                .collect();
            Ok(wire::Participants {
                count,
                participants,
            })
        })
    }
}

/// Every user who is a member of a room (groups expanded).
fn members_of(dir: &Directory, room: &RoomRec) -> BTreeSet<UserId> {
    let mut out = BTreeSet::new();
    for e in room.members.entries() {
        for u in dir.users_of_entry(e) {
            if dir.users.contains_key(&u) {
                out.insert(u);
            }
        }
    }
    out
}

pub fn check_endpoint(id: &str) -> ApiResult<()> {
    if wire::is_valid_endpoint(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "endpoint",
            "endpoint must be 1 to 64 characters of [A-Za-z0-9._-]",
        ))
    }
}

/// The refusal of a session beyond `max_endpoints_per_user` (PC-9.1c).
impl From<TooManyEndpoints> for ApiError {
    fn from(_: TooManyEndpoints) -> ApiError {
        ApiError::new(
            ErrorCode::TooManyEndpoints,
            "too many endpoints for this user",
        )
    }
}
