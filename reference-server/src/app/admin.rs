//! Administration (PC-13): users, groups, policies, administrators,
//! categories, service configuration, add-ins, compliance settings, history
//! clearing and message removal, bulk provisioning and bulk tokens.
//!
//! Every operation here requires a Persistent Chat administrator; the HTTP
//! layer checks that before calling in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pchat_protocol::{self as wire, close, ErrorCode, Principal, RemovedReason};

use super::rooms::resolve_all;
use super::views::{self, check_description, check_name};
use super::{now_ms, App, Caller, COMPLIANCE_KEY, SERVICE_KEY};
use crate::auth::{hash_password, now_s};
use crate::domain::{
    name_key, Acl, CategoryId, CategoryRec, Directory, Entry, GroupId, GroupRec, NameOwner, RoomId,
    RoomRec, UserId, UserRec, EVERYONE, EVERYONE_NAME, GLOBAL_POLICY,
};
use crate::error::{ApiError, ApiResult};
use crate::store::{Change, IdKind, MessageFilter};

/// Longest token lifetime an administrator may ask for: 30 days.
const MAX_TOKEN_TTL_S: u64 = 30 * 24 * 3600;

fn check_user_name(field: &str, name: &str) -> ApiResult<()> {
    if !wire::is_valid_name(name) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be 1 to 64 characters of [A-Za-z0-9._@-]"),
        ));
    }
    if name == "operator" {
        return Err(ApiError::new(ErrorCode::NameTaken, "operator is reserved").with_field(field));
    }
    Ok(())
}

fn check_group_name(field: &str, name: &str) -> ApiResult<()> {
    if !wire::is_valid_name(name) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be 1 to 64 characters of [A-Za-z0-9._@-]"),
        ));
    }
    if name == EVERYONE_NAME {
        return Err(
            ApiError::new(ErrorCode::NameTaken, "everyone is a built-in group").with_field(field),
        );
    }
    Ok(())
}

fn check_display_name(field: &str, name: &str) -> ApiResult<()> {
    if name.chars().count() > 256 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be at most 256 characters without control characters"),
        ));
    }
    Ok(())
}

fn user_view(dir: &Directory, u: &UserRec) -> wire::User {
    let mut groups: Vec<String> = dir
        .groups
        .values()
        .filter(|g| g.members.contains(&Entry::User(u.id)))
        .map(|g| g.name.clone())
        .collect();
    groups.sort();
    wire::User {
        name: u.name.clone(),
        display_name: u.display_name.clone(),
        policy: u.policy.clone(),
        admin: u.admin,
        disabled: u.disabled,
        groups,
    }
}

fn group_view(dir: &Directory, g: &GroupRec) -> wire::Group {
    let mut members: Vec<Principal> = g.members.iter().map(|e| dir.principal(*e)).collect();
    members.sort();
    wire::Group {
        name: g.name.clone(),
        members,
    }
}

impl App {
    fn user_id(&self, name: &str) -> ApiResult<UserId> {
        self.dir()
            .user_ids
            .get(name)
            .copied()
            .ok_or_else(|| ApiError::not_found("user", "name"))
    }

    fn group_id(&self, name: &str) -> ApiResult<GroupId> {
        match self.dir().group_ids.get(name).copied() {
            Some(g) if g != EVERYONE => Ok(g),
            _ => Err(ApiError::not_found("group", "name")),
        }
    }

    /// After a change that may take access away: removes, from every room
    /// with people in it, those who may no longer read it, and closes the
    /// streams of users who may no longer use the service.
    pub(super) fn revoke_lost_access(&self) {
        let rooms: Vec<RoomId> = self.dir().rooms.keys().copied().collect();
        for room in rooms {
            if self.hub.participant_count(room) == 0 {
                continue;
            }
            let dir = self.dir();
            self.hub
                .remove_where(room, RemovedReason::AccessRevoked, |u| {
                    dir.rooms.get(&room).is_some_and(|r| dir.access(u, r).read)
                });
        }
        let dir = self.dir();
        for u in dir.users.values() {
            if u.disabled {
                self.hub.close_user(u.id, close::UNAUTHENTICATED);
            } else if !dir.policy_enabled(u) {
                self.hub.close_user(u.id, close::POLICY_DISABLED);
            }
        }
    }

    // ------------------------------------------------------------ users

    pub async fn create_user(
        &self,
        caller: &Caller,
        req: wire::CreateUser,
    ) -> ApiResult<wire::User> {
        check_user_name("name", &req.name)?;
        if let Some(d) = &req.display_name {
            check_display_name("display_name", d)?;
        }
        let _guard = self.admin_guard().await?;
        {
            let dir = self.dir();
            if dir.user_ids.contains_key(&req.name) {
                return Err(
                    ApiError::new(ErrorCode::NameTaken, "a user has this name").with_field("name")
                );
            }
            if let Some(p) = &req.policy {
                if !dir.policies.contains_key(p) {
                    return Err(ApiError::not_found("policy", "policy"));
                }
            }
        }
        let id = UserId(self.store.reserve_ids(IdKind::User, 1).await?);
        let user = UserRec {
            id,
            display_name: req.display_name.clone().unwrap_or_else(|| req.name.clone()),
            name: req.name,
            password_hash: req.password.as_deref().map(hash_password),
            policy: req.policy,
            admin: req.admin.unwrap_or(false),
            disabled: req.disabled.unwrap_or(false),
        };
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("user created: {}", user.name));
        self.commit(vec![Change::PutUser(user.clone())], vec![audit])
            .await?;
        Ok(user_view(&self.dir(), &user))
    }

    pub fn list_users(&self, prefix: Option<&str>, limit: usize) -> Vec<wire::User> {
        let dir = self.dir();
        let mut users: Vec<&UserRec> = dir
            .users
            .values()
            .filter(|u| prefix.is_none_or(|p| u.name.starts_with(p)))
            .collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
            .into_iter()
            .take(limit)
            .map(|u| user_view(&dir, u))
            .collect()
    }

    pub fn get_user(&self, name: &str) -> ApiResult<wire::User> {
        let dir = self.dir();
        let id = dir
            .user_ids
            .get(name)
            .ok_or_else(|| ApiError::not_found("user", "name"))?;
        Ok(user_view(&dir, &dir.users[id]))
    }

    pub async fn update_user(
        &self,
        caller: &Caller,
        name: &str,
        req: wire::UpdateUser,
    ) -> ApiResult<wire::User> {
        if let Some(d) = &req.display_name {
            check_display_name("display_name", d)?;
        }
        let _guard = self.admin_guard().await?;
        let id = self.user_id(name)?;
        let mut user = self.dir().users[&id].clone();
        if let Some(d) = req.display_name {
            user.display_name = d;
        }
        if let Some(p) = req.password {
            user.password_hash = Some(hash_password(&p));
        }
        if let Some(p) = req.policy {
            if let Some(p) = &p {
                if !self.dir().policies.contains_key(p) {
                    return Err(ApiError::not_found("policy", "policy"));
                }
            }
            user.policy = p;
        }
        if let Some(a) = req.admin {
            user.admin = a;
        }
        if let Some(d) = req.disabled {
            user.disabled = d;
        }
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("user updated: {}", user.name));
        self.commit(vec![Change::PutUser(user.clone())], vec![audit])
            .await?;
        self.revoke_lost_access();
        Ok(user_view(&self.dir(), &user))
    }

    pub async fn delete_user(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        let _guard = self.admin_guard().await?;
        let id = self.user_id(name)?;
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("user deleted: {name}"));
        self.commit(vec![Change::DeleteUser(id)], vec![audit])
            .await?;
        // After the directory has lost the user, so that a stream attached
        // before this is closed here and one attached after finds the user
        // gone (`App::lost_service`); `revoke_lost_access` no longer sees
        // the user.
        self.hub.close_user(id, close::UNAUTHENTICATED);
        self.revoke_lost_access();
        Ok(())
    }

    // ------------------------------------------------------------ groups

    pub async fn create_group(
        &self,
        caller: &Caller,
        req: wire::CreateGroup,
    ) -> ApiResult<wire::Group> {
        check_group_name("name", &req.name)?;
        let _guard = self.admin_guard().await?;
        let members = {
            let dir = self.dir();
            if dir.group_ids.contains_key(&req.name) {
                return Err(
                    ApiError::new(ErrorCode::NameTaken, "a group has this name").with_field("name")
                );
            }
            resolve_all(&dir, "members", &req.members)?
        };
        let id = GroupId(self.store.reserve_ids(IdKind::Group, 1).await?);
        let group = GroupRec {
            id,
            name: req.name,
            members: members.into_iter().collect(),
        };
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("group created: {}", group.name));
        self.commit(vec![Change::PutGroup(group.clone())], vec![audit])
            .await?;
        Ok(group_view(&self.dir(), &group))
    }

    pub fn get_group(&self, name: &str) -> ApiResult<wire::Group> {
        let id = self.group_id(name)?;
        let dir = self.dir();
        Ok(group_view(&dir, &dir.groups[&id]))
    }

    pub async fn change_group(
        &self,
        caller: &Caller,
        name: &str,
        req: wire::ChangeList,
    ) -> ApiResult<wire::Group> {
        let _guard = self.admin_guard().await?;
        let id = self.group_id(name)?;
        let group = {
            let dir = self.dir();
            let add = resolve_all(&dir, "add", &req.add)?;
            let remove = resolve_all(&dir, "remove", &req.remove)?;
            let mut g = dir.groups[&id].clone();
            for e in remove {
                g.members.remove(&e);
            }
            g.members.extend(add);
            g
        };
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("group changed: {name}"));
        self.commit(vec![Change::PutGroup(group.clone())], vec![audit])
            .await?;
        self.revoke_lost_access();
        Ok(group_view(&self.dir(), &group))
    }

    pub async fn delete_group(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        let _guard = self.admin_guard().await?;
        let id = self.group_id(name)?;
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("group deleted: {name}"));
        self.commit(vec![Change::DeleteGroup(id)], vec![audit])
            .await?;
        self.revoke_lost_access();
        Ok(())
    }

    // ------------------------------------------------------------ policies and administrators

    pub fn policies(&self) -> wire::Policies {
        let dir = self.dir();
        let mut policies: Vec<wire::Policy> = dir
            .policies
            .iter()
            .map(|(name, enabled)| wire::Policy {
                name: name.clone(),
                enabled: *enabled,
            })
            .collect();
        if !dir.policies.contains_key(GLOBAL_POLICY) {
            policies.push(wire::Policy {
                name: GLOBAL_POLICY.into(),
                enabled: false,
            });
        }
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        wire::Policies { policies }
    }

    pub async fn set_policy(
        &self,
        caller: &Caller,
        name: &str,
        enabled: bool,
    ) -> ApiResult<wire::Policy> {
        if !wire::is_valid_name(name) {
            return Err(ApiError::invalid(
                "name",
                "policy names are 1 to 64 characters of [A-Za-z0-9._@-]",
            ));
        }
        let _guard = self.admin_guard().await?;
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("policy {name} enabled={enabled}"));
        self.commit(
            vec![Change::PutPolicy(name.to_owned(), enabled)],
            vec![audit],
        )
        .await?;
        self.revoke_lost_access();
        Ok(wire::Policy {
            name: name.to_owned(),
            enabled,
        })
    }

    pub fn administrators(&self) -> wire::Administrators {
        let dir = self.dir();
        let mut administrators: Vec<String> = dir
            .users
            .values()
            .filter(|u| u.admin)
            .map(|u| u.name.clone())
            .collect();
        administrators.sort();
        wire::Administrators { administrators }
    }

    pub async fn change_administrators(
        &self,
        caller: &Caller,
        req: wire::ChangeAdministrators,
    ) -> ApiResult<wire::Administrators> {
        let _guard = self.admin_guard().await?;
        let changes = {
            let dir = self.dir();
            let mut out: BTreeMap<UserId, UserRec> = BTreeMap::new();
            for (field, names, admin) in [("add", &req.add, true), ("remove", &req.remove, false)] {
                for (i, n) in names.iter().enumerate() {
                    let id = dir
                        .user_ids
                        .get(n)
                        .ok_or_else(|| ApiError::not_found("user", &format!("{field}[{i}]")))?;
                    let u = out.entry(*id).or_insert_with(|| dir.users[id].clone());
                    u.admin = admin;
                }
            }
            out.into_values().map(Change::PutUser).collect::<Vec<_>>()
        };
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!(
            "administrators: add {:?} remove {:?}",
            req.add, req.remove
        ));
        self.commit(changes, vec![audit]).await?;
        Ok(self.administrators())
    }

    // ------------------------------------------------------------ categories

    pub fn admin_categories(&self) -> wire::AdminCategories {
        let dir = self.dir();
        let mut categories: Vec<_> = dir
            .categories
            .values()
            .map(|c| views::category(&dir, c))
            .collect();
        categories.sort_by(|a, b| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then(a.id.cmp(&b.id))
        });
        wire::AdminCategories { categories }
    }

    pub fn admin_category(&self, id: CategoryId) -> ApiResult<wire::Category> {
        let dir = self.dir();
        let c = dir
            .categories
            .get(&id)
            .ok_or_else(|| ApiError::not_found("category", "id"))?;
        Ok(views::category(&dir, c))
    }

    pub async fn create_category(
        &self,
        caller: &Caller,
        req: wire::CreateCategory,
    ) -> ApiResult<wire::Category> {
        let _guard = self.admin_guard().await?;
        let mut cat = build_category(&self.dir(), CategoryId(0), req)?;
        cat.id = CategoryId(self.store.reserve_ids(IdKind::Category, 1).await?);
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("category created: {}", cat.name));
        self.commit(vec![Change::PutCategory(cat.clone())], vec![audit])
            .await?;
        Ok(views::category(&self.dir(), &cat))
    }

    pub async fn update_category(
        &self,
        caller: &Caller,
        id: CategoryId,
        req: wire::UpdateCategory,
    ) -> ApiResult<wire::Category> {
        if let Some(n) = &req.name {
            check_name("name", n)?;
        }
        if let Some(d) = &req.description {
            check_description("description", d)?;
        }
        let _guard = self.admin_guard().await?;
        let (cat, rooms) = {
            let dir = self.dir();
            let mut cat = dir
                .categories
                .get(&id)
                .cloned()
                .ok_or_else(|| ApiError::not_found("category", "id"))?;
            if let Some(n) = &req.name {
                match dir.names.get(&name_key(n)) {
                    Some(NameOwner::Category(c)) if *c == id => {}
                    Some(_) => {
                        return Err(ApiError::new(
                            ErrorCode::NameTaken,
                            "a room or category already has this name",
                        )
                        .with_field("name"))
                    }
                    None => {}
                }
                cat.name = n.clone();
            }
            if let Some(d) = req.description {
                cat.description = d;
            }
            if let Some(l) = &req.allowed {
                cat.allowed = Acl::from_entries(resolve_all(&dir, "allowed", l)?);
            }
            if let Some(l) = &req.denied {
                cat.denied = Acl::from_entries(resolve_all(&dir, "denied", l)?);
            }
            if let Some(l) = &req.creators {
                cat.creators = Acl::from_entries(resolve_all(&dir, "creators", l)?);
            }
            check_creators(&dir, &cat)?;
            if let Some(v) = req.invitations {
                cat.invitations = v;
            }
            if let Some(v) = req.file_upload {
                cat.file_upload = v;
            }
            if let Some(v) = req.history {
                cat.history = v;
            }
            // Room lists may hold only what the category allows (PC-6.3).
            let rooms: Vec<RoomRec> = dir
                .rooms
                .values()
                .filter(|r| r.category == id)
                .filter_map(|r| {
                    let mut new = r.clone();
                    let mut changed = false;
                    for list in [
                        wire::RoomList::Managers,
                        wire::RoomList::Presenters,
                        wire::RoomList::Members,
                    ] {
                        for e in new.list(list).entries() {
                            if !dir.entry_in_scope(e, &cat) {
                                new.list_mut(list).remove(e);
                                changed = true;
                            }
                        }
                    }
                    changed.then_some(new)
                })
                .collect();
            (cat, rooms)
        };
        let mut changes = vec![Change::PutCategory(cat.clone())];
        changes.extend(rooms.into_iter().map(Change::PutRoom));
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("category updated: {}", cat.name));
        self.commit(changes, vec![audit]).await?;
        self.revoke_lost_access();
        Ok(views::category(&self.dir(), &cat))
    }

    pub async fn delete_category(&self, caller: &Caller, id: CategoryId) -> ApiResult<()> {
        let _guard = self.admin_guard().await?;
        let name = {
            let dir = self.dir();
            let c = dir
                .categories
                .get(&id)
                .ok_or_else(|| ApiError::not_found("category", "id"))?;
            if dir.rooms.values().any(|r| r.category == id) {
                return Err(ApiError::new(
                    ErrorCode::CategoryNotEmpty,
                    "the category still has rooms",
                ));
            }
            c.name.clone()
        };
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("category deleted: {name}"));
        self.commit(vec![Change::DeleteCategory(id)], vec![audit])
            .await
    }

    // ------------------------------------------------------------ settings

    pub async fn update_service_config(
        &self,
        caller: &Caller,
        req: wire::UpdateServiceConfig,
    ) -> ApiResult<wire::ServiceConfig> {
        let _guard = self.admin_guard().await?;
        let mut s = self.settings().service;
        if let Some(v) = req.messages_on_join {
            if !(1..=500).contains(&v) {
                return Err(ApiError::invalid(
                    "messages_on_join",
                    "messages_on_join must be 1 to 500",
                ));
            }
            s.messages_on_join = v;
        }
        if let Some(v) = req.participant_update_limit {
            if !(1..=1_000_000).contains(&v) {
                return Err(ApiError::invalid(
                    "participant_update_limit",
                    "participant_update_limit must be 1 to 1000000",
                ));
            }
            s.participant_update_limit = v;
        }
        if let Some(v) = req.room_management_url {
            if let Some(url) = &v {
                check_url("room_management_url", url)?;
            }
            s.room_management_url = v;
        }
        if let Some(v) = req.max_file_size_kb {
            if !(1..=10_000_000).contains(&v) {
                return Err(ApiError::invalid(
                    "max_file_size_kb",
                    "max_file_size_kb must be 1 to 10000000",
                ));
            }
            s.max_file_size_kb = v;
        }
        if let Some(v) = req.disclaimer {
            if let Some(text) = &v {
                if text.chars().count() > 4000 {
                    return Err(ApiError::invalid(
                        "disclaimer",
                        "disclaimer must be at most 4000 characters",
                    ));
                }
            }
            s.disclaimer = v;
        }
        let json = serde_json::to_string(&s).map_err(ApiError::internal)?;
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("configuration: {json}"));
        self.commit(
            vec![Change::PutSetting(SERVICE_KEY.into(), json)],
            vec![audit],
        )
        .await?;
        self.hub
            .set_update_limit(s.participant_update_limit as usize);
        self.settings
            .write()
            .expect("settings lock poisoned")
            .service = s.clone();
        Ok(s)
    }

    pub async fn update_compliance(
        &self,
        caller: &Caller,
        req: wire::UpdateComplianceConfig,
    ) -> ApiResult<wire::ComplianceConfig> {
        let _guard = self.admin_guard().await?;
        let mut c = self.settings().compliance;
        if let Some(v) = req.interval_s {
            if !(60..=2_592_000).contains(&v) {
                return Err(ApiError::invalid(
                    "interval_s",
                    "interval_s must be 60 to 2592000",
                ));
            }
            c.interval_s = v;
        }
        if let Some(v) = req.enabled {
            c.enabled = v;
        }
        let json = serde_json::to_string(&c).map_err(ApiError::internal)?;
        // This audit record is written whatever the old setting was, so that
        // turning compliance off is itself on record.
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("compliance: {json}"));
        self.store
            .apply(
                vec![Change::PutSetting(COMPLIANCE_KEY.into(), json)],
                vec![audit],
            )
            .await?;
        self.settings
            .write()
            .expect("settings lock poisoned")
            .compliance = c.clone();
        Ok(c)
    }

    pub fn addins(&self) -> wire::AddIns {
        let addins = self
            .settings()
            .addins
            .into_iter()
            .map(|(name, url)| wire::AddIn { name, url })
            .collect();
        wire::AddIns { addins }
    }

    pub async fn add_addin(&self, caller: &Caller, req: wire::AddIn) -> ApiResult<wire::AddIn> {
        check_name("name", &req.name)?;
        check_url("url", &req.url)?;
        let _guard = self.admin_guard().await?;
        if self.settings().addins.contains_key(&req.name) {
            return Err(
                ApiError::new(ErrorCode::NameTaken, "an add-in has this name").with_field("name"),
            );
        }
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("add-in added: {}", req.name));
        self.commit(
            vec![Change::PutAddin(req.name.clone(), req.url.clone())],
            vec![audit],
        )
        .await?;
        self.settings
            .write()
            .expect("settings lock poisoned")
            .addins
            .insert(req.name.clone(), req.url.clone());
        Ok(req)
    }

    pub async fn delete_addin(&self, caller: &Caller, name: &str) -> ApiResult<()> {
        let _guard = self.admin_guard().await?;
        if !self.settings().addins.contains_key(name) {
            return Err(ApiError::not_found("add-in", "name"));
        }
        let used = self
            .dir()
            .rooms
            .values()
            .filter(|r| r.addin.as_deref() == Some(name))
            .count();
        if used > 0 {
            return Err(ApiError::new(
                ErrorCode::InvalidState,
                format!("the add-in is used by {used} room(s)"),
            ));
        }
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!("add-in deleted: {name}"));
        self.commit(vec![Change::DeleteAddin(name.to_owned())], vec![audit])
            .await?;
        self.settings
            .write()
            .expect("settings lock poisoned")
            .addins
            .remove(name);
        Ok(())
    }

    // ------------------------------------------------------------ content

    fn admin_room_name(&self, room: RoomId) -> ApiResult<String> {
        self.dir()
            .rooms
            .get(&room)
            .map(|r| r.name.clone())
            .ok_or_else(ApiError::room_not_found)
    }

    pub async fn clear_history(
        &self,
        caller: &Caller,
        room: RoomId,
        before_ms: i64,
    ) -> ApiResult<wire::Affected> {
        let name = self.admin_room_name(room)?;
        let mut audit = self.event("HISTORY_CLEARED", Some((room, name)), &caller.name);
        audit.detail = Some(format!("before {}", views::timestamp(before_ms)));
        let affected = self.store.clear_history(room, before_ms, audit).await?;
        Ok(wire::Affected { affected })
    }

    pub async fn remove_messages(
        &self,
        caller: &Caller,
        room: RoomId,
        req: wire::RemoveMessages,
    ) -> ApiResult<wire::Affected> {
        let name = self.admin_room_name(room)?;
        let filter = MessageFilter {
            author: req.author,
            from_ms: req
                .from
                .as_deref()
                .map(|t| views::parse_timestamp("from", t))
                .transpose()?,
            to_ms: req
                .to
                .as_deref()
                .map(|t| views::parse_timestamp("to", t))
                .transpose()?,
            keywords: req
                .keywords
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_lowercase)
                .collect(),
        };
        if filter.author.is_none()
            && filter.from_ms.is_none()
            && filter.to_ms.is_none()
            && filter.keywords.is_empty()
        {
            return Err(ApiError::invalid(
                "author",
                "give author, from, to or keywords",
            ));
        }
        let kind = if req.replace {
            "MESSAGE_REPLACED"
        } else {
            "MESSAGE_REMOVED"
        };
        let audit = self.event(kind, Some((room, name)), &caller.name);
        let replacement = req.replace.then(|| views::REPLACEMENT_TEXT.to_owned());
        let seqs = self
            .store
            .remove_messages(room, filter, replacement, audit)
            .await?;
        for seq in &seqs {
            self.hub.broadcast_everywhere(
                room,
                &wire::Event::MessageReplaced {
                    room: room.0 as u64,
                    seq: *seq,
                },
            );
        }
        Ok(wire::Affected {
            affected: seqs.len() as u64,
        })
    }

    // ------------------------------------------------------------ tokens

    pub fn issue_tokens(&self, req: wire::BulkTokenRequest) -> ApiResult<wire::BulkTokenResponse> {
        let ttl = req.ttl_s.unwrap_or(self.config.limits.token_ttl_s);
        if ttl == 0 || ttl > MAX_TOKEN_TTL_S {
            return Err(ApiError::invalid(
                "ttl_s",
                format!("ttl_s must be 1 to {MAX_TOKEN_TTL_S}"),
            ));
        }
        let expires = now_s() + ttl as i64;
        let dir = self.dir();
        let mut tokens = BTreeMap::new();
        for (i, name) in req.users.iter().enumerate() {
            let id = dir
                .user_ids
                .get(name)
                .ok_or_else(|| ApiError::not_found("user", &format!("users[{i}]")))?;
            tokens.insert(name.clone(), self.keys.issue(*id, expires));
        }
        Ok(wire::BulkTokenResponse {
            tokens,
            expires_at: views::timestamp(expires * 1000),
        })
    }

    /// `POST /v1/auth/token`.
    pub fn login(&self, req: wire::TokenRequest) -> ApiResult<wire::TokenResponse> {
        let refuse = || ApiError::new(ErrorCode::Unauthenticated, "unknown user or wrong password");
        let (id, hash) = {
            let dir = self.dir();
            let id = *dir.user_ids.get(&req.user).ok_or_else(refuse)?;
            let u = &dir.users[&id];
            if u.disabled {
                return Err(refuse());
            }
            (id, u.password_hash.clone().ok_or_else(refuse)?)
        };
        if !crate::auth::verify_password(&req.password, &hash) {
            return Err(refuse());
        }
        let expires = now_s() + self.config.limits.token_ttl_s as i64;
        Ok(wire::TokenResponse {
            token: self.keys.issue(id, expires),
            user: req.user,
            expires_at: views::timestamp(expires * 1000),
        })
    }

    // ------------------------------------------------------------ bulk provisioning

    /// `POST /v1/admin/provision` (PC-13.9): all or nothing.
    pub async fn provision(
        &self,
        caller: &Caller,
        doc: wire::Provision,
    ) -> ApiResult<wire::Provisioned> {
        let _guard = self.admin_guard().await?;
        // Work on a copy of the directory; swap it in after the store commits.
        let mut dir = self.dir().clone();
        let mut changes: Vec<Change> = Vec::new();

        if let Some(enabled) = doc.global_policy_enabled {
            dir.policies.insert(GLOBAL_POLICY.into(), enabled);
            changes.push(Change::PutPolicy(GLOBAL_POLICY.into(), enabled));
        }
        for (i, p) in doc.policies.iter().enumerate() {
            if !wire::is_valid_name(&p.name) {
                return Err(ApiError::invalid(
                    &format!("policies[{i}].name"),
                    "policy names are 1 to 64 characters",
                ));
            }
            dir.policies.insert(p.name.clone(), p.enabled);
            changes.push(Change::PutPolicy(p.name.clone(), p.enabled));
        }

        let first_user = self
            .store
            .reserve_ids(IdKind::User, doc.users.len() as u64)
            .await?;
        let mut users = Vec::with_capacity(doc.users.len());
        for (i, u) in doc.users.iter().enumerate() {
            check_user_name(&format!("users[{i}].name"), &u.name)?;
            if let Some(d) = &u.display_name {
                check_display_name(&format!("users[{i}].display_name"), d)?;
            }
            if dir.user_ids.contains_key(&u.name) {
                return Err(
                    ApiError::new(ErrorCode::NameTaken, format!("user {} exists", u.name))
                        .with_field(format!("users[{i}].name")),
                );
            }
            if let Some(p) = &u.policy {
                if !dir.policies.contains_key(p) {
                    return Err(ApiError::not_found("policy", &format!("users[{i}].policy")));
                }
            }
            let rec = UserRec {
                id: UserId(first_user + i as i64),
                name: u.name.clone(),
                display_name: u.display_name.clone().unwrap_or_else(|| u.name.clone()),
                password_hash: u.password.as_deref().map(hash_password),
                policy: u.policy.clone(),
                admin: u.admin.unwrap_or(false),
                disabled: u.disabled.unwrap_or(false),
            };
            dir.user_ids.insert(rec.name.clone(), rec.id);
            dir.users.insert(rec.id, rec.clone());
            users.push(rec);
        }

        let first_group = self
            .store
            .reserve_ids(IdKind::Group, doc.groups.len() as u64)
            .await?;
        for (i, g) in doc.groups.iter().enumerate() {
            check_group_name(&format!("groups[{i}].name"), &g.name)?;
            if dir.group_ids.contains_key(&g.name) {
                return Err(ApiError::new(
                    ErrorCode::NameTaken,
                    format!("group {} exists", g.name),
                )
                .with_field(format!("groups[{i}].name")));
            }
            let id = GroupId(first_group + i as i64);
            dir.group_ids.insert(g.name.clone(), id);
            dir.groups.insert(
                id,
                GroupRec {
                    id,
                    name: g.name.clone(),
                    members: BTreeSet::new(),
                },
            );
        }
        // Members may name groups defined later in the document.
        for (i, g) in doc.groups.iter().enumerate() {
            let members = resolve_all(&dir, &format!("groups[{i}].members"), &g.members)?;
            let id = GroupId(first_group + i as i64);
            dir.groups.get_mut(&id).expect("inserted above").members =
                members.into_iter().collect();
        }
        dir.recompute_groups();

        let first_cat = self
            .store
            .reserve_ids(IdKind::Category, doc.categories.len() as u64)
            .await?;
        let mut cat_by_name: HashMap<String, CategoryId> = dir
            .categories
            .values()
            .map(|c| (c.name.clone(), c.id))
            .collect();
        for (i, c) in doc.categories.iter().enumerate() {
            let id = CategoryId(first_cat + i as i64);
            let cat = build_category(&dir, id, c.clone())
                .map_err(|e| prefix_field(e, &format!("categories[{i}]")))?;
            dir.names
                .insert(name_key(&cat.name), NameOwner::Category(id));
            cat_by_name.insert(cat.name.clone(), id);
            dir.categories.insert(id, cat);
        }

        let first_room = self
            .store
            .reserve_ids(IdKind::Room, doc.rooms.len() as u64)
            .await?;
        let mut room_ids = BTreeMap::new();
        let mut entries = 0u64;
        let now = now_ms();
        for (i, r) in doc.rooms.iter().enumerate() {
            let at = |f: &str| format!("rooms[{i}].{f}");
            check_name(&at("name"), &r.name)?;
            if let Some(d) = &r.description {
                check_description(&at("description"), d)?;
            }
            if dir.names.contains_key(&name_key(&r.name)) {
                return Err(
                    ApiError::new(ErrorCode::NameTaken, format!("{:?} is taken", r.name))
                        .with_field(at("name")),
                );
            }
            let cat = *cat_by_name
                .get(&r.category)
                .ok_or_else(|| ApiError::not_found("category", &at("category")))?;
            let mut lists = Vec::new();
            for (field, list) in [
                ("managers", &r.managers),
                ("presenters", &r.presenters),
                ("members", &r.members),
            ] {
                let resolved = resolve_all(&dir, &at(field), list)?;
                let category = &dir.categories[&cat];
                for (j, e) in resolved.iter().enumerate() {
                    if !dir.entry_in_scope(*e, category) {
                        return Err(ApiError::new(
                            ErrorCode::NotAllowedByCategory,
                            "not allowed by the category",
                        )
                        .with_field(format!("rooms[{i}].{field}[{j}]")));
                    }
                }
                entries += resolved.len() as u64;
                lists.push(Acl::from_entries(resolved));
            }
            let members = lists.pop().unwrap_or_default();
            let presenters = lists.pop().unwrap_or_default();
            let managers = lists.pop().unwrap_or_default();
            let room = RoomRec {
                id: RoomId(first_room + i as i64),
                name: r.name.clone(),
                description: r.description.clone().unwrap_or_default(),
                category: cat,
                room_type: r.room_type.unwrap_or_default(),
                privacy: r.privacy.unwrap_or_default(),
                invitations: r.invitations.unwrap_or_default(),
                addin: None,
                disabled: false,
                managers,
                presenters,
                members,
                created_at: now,
            };
            super::rooms::check_presenters(&dir, &room)
                .map_err(|e| prefix_field(e, &format!("rooms[{i}]")))?;
            dir.names
                .insert(name_key(&room.name), NameOwner::Room(room.id));
            room_ids.insert(room.name.clone(), room.id.0 as u64);
            dir.rooms.insert(room.id, room);
        }

        changes.extend(users.iter().cloned().map(Change::PutUser));
        for i in 0..doc.groups.len() {
            changes.push(Change::PutGroup(
                dir.groups[&GroupId(first_group + i as i64)].clone(),
            ));
        }
        for i in 0..doc.categories.len() {
            changes.push(Change::PutCategory(
                dir.categories[&CategoryId(first_cat + i as i64)].clone(),
            ));
        }
        for i in 0..doc.rooms.len() {
            changes.push(Change::PutRoom(
                dir.rooms[&RoomId(first_room + i as i64)].clone(),
            ));
        }
        let mut audit = self.event("ADMIN", None, &caller.name);
        audit.detail = Some(format!(
            "provisioned {} users, {} groups, {} categories, {} rooms",
            users.len(),
            doc.groups.len(),
            doc.categories.len(),
            doc.rooms.len()
        ));
        let audit = if self.compliance_on() {
            vec![audit]
        } else {
            Vec::new()
        };
        self.store.apply(changes, audit).await?;
        self.metrics.rooms.set(dir.rooms.len() as i64);
        self.metrics.users.set(dir.users.len() as i64);
        *self.dir.write().expect("directory lock poisoned") = dir;
        Ok(wire::Provisioned {
            users: users.len() as u64,
            groups: doc.groups.len() as u64,
            categories: doc.categories.len() as u64,
            rooms: doc.rooms.len() as u64,
            entries,
            room_ids,
        })
    }
}

fn prefix_field(mut e: ApiError, prefix: &str) -> ApiError {
    e.field = Some(match e.field.take() {
        Some(f) => format!("{prefix}.{f}"),
        None => prefix.to_owned(),
    });
    e
}

fn check_url(field: &str, url: &str) -> ApiResult<()> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 2048
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("{field} must be an http or https URL"),
        ))
    }
}

/// Creators must be within the category's allowed set (PC-6.2).
fn check_creators(dir: &Directory, cat: &CategoryRec) -> ApiResult<()> {
    for (i, e) in cat.creators.entries().into_iter().enumerate() {
        if !dir.entry_in_scope(e, cat) {
            return Err(ApiError::new(
                ErrorCode::NotAllowedByCategory,
                format!(
                    "creator {} is not allowed by the category",
                    dir.principal(e)
                ),
            )
            .with_field(format!("creators[{i}]")));
        }
    }
    Ok(())
}

fn build_category(
    dir: &Directory,
    id: CategoryId,
    req: wire::CreateCategory,
) -> ApiResult<CategoryRec> {
    check_name("name", &req.name)?;
    if let Some(d) = &req.description {
        check_description("description", d)?;
    }
    if dir.names.contains_key(&name_key(&req.name)) {
        return Err(ApiError::new(
            ErrorCode::NameTaken,
            "a room or category already has this name",
        )
        .with_field("name"));
    }
    let allowed = match &req.allowed {
        Some(l) => Acl::from_entries(resolve_all(dir, "allowed", l)?),
        // Omitted: everyone (PC-6.2).
        None => Acl::from_entries([Entry::Group(EVERYONE)]),
    };
    let cat = CategoryRec {
        id,
        name: req.name,
        description: req.description.unwrap_or_default(),
        allowed,
        denied: Acl::from_entries(resolve_all(
            dir,
            "denied",
            req.denied.as_deref().unwrap_or(&[]),
        )?),
        creators: Acl::from_entries(resolve_all(
            dir,
            "creators",
            req.creators.as_deref().unwrap_or(&[]),
        )?),
        invitations: req.invitations.unwrap_or(true),
        file_upload: req.file_upload.unwrap_or(true),
        history: req.history.unwrap_or(true),
    };
    check_creators(dir, &cat)?;
    Ok(cat)
}
