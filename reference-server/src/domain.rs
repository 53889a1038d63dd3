//! The domain: users, groups, categories and rooms as records, and the rules
//! of who may find, read, post in and manage a room (docs/protocol.md §8).
//!
//! Records here are what the store persists and what the [`Directory`] holds
//! in memory. The rules are pure functions of a directory snapshot, so every
//! permission check costs no database read.

use std::collections::{BTreeSet, HashMap, HashSet};

use pchat_protocol::{Invitations, MessageKind, Privacy, RoomList, RoomType};
use serde::{Deserialize, Serialize};

/// Store-assigned identities. Users and groups are addressed by name on the
/// wire; ids never leave the server except for rooms and categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserId(pub i64);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub i64);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoomId(pub i64);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CategoryId(pub i64);

/// The user id of the built-in `operator` principal: an administrator that is
/// not a chat user, used by the admin CLI that holds the data directory's key.
pub const OPERATOR: UserId = UserId(0);
/// The built-in group every user belongs to.
pub const EVERYONE: GroupId = GroupId(0);
pub const EVERYONE_NAME: &str = "everyone";
/// The name of the global policy.
pub const GLOBAL_POLICY: &str = "global";

/// A list entry, resolved to an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Entry {
    User(UserId),
    Group(GroupId),
}

/// A set of entries, kept both ordered (for output) and hashed (for checks).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    pub users: HashSet<UserId>,
    pub groups: HashSet<GroupId>,
}

impl Acl {
    pub fn from_entries(entries: impl IntoIterator<Item = Entry>) -> Acl {
        let mut acl = Acl::default();
        for e in entries {
            acl.insert(e);
        }
        acl
    }

    pub fn insert(&mut self, e: Entry) -> bool {
        match e {
            Entry::User(u) => self.users.insert(u),
            Entry::Group(g) => self.groups.insert(g),
        }
    }

    pub fn remove(&mut self, e: Entry) -> bool {
        match e {
            Entry::User(u) => self.users.remove(&u),
            Entry::Group(g) => self.groups.remove(&g),
        }
    }

    pub fn entries(&self) -> BTreeSet<Entry> {
        self.users
            .iter()
            .map(|u| Entry::User(*u))
            .chain(self.groups.iter().map(|g| Entry::Group(*g)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.users.len() + self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a user whose transitive groups are `groups` is on the list.
    pub fn contains_user(&self, user: UserId, groups: &[GroupId]) -> bool {
        self.users.contains(&user) || groups.iter().any(|g| self.groups.contains(g))
    }

    /// Whether a group (given with its ancestors, itself included) is on the list.
    pub fn contains_group(&self, ancestors: &[GroupId]) -> bool {
        ancestors.iter().any(|g| self.groups.contains(g))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRec {
    pub id: UserId,
    pub name: String,
    pub display_name: String,
    pub password_hash: Option<String>,
    pub policy: Option<String>,
    pub admin: bool,
    pub disabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRec {
    pub id: GroupId,
    pub name: String,
    pub members: BTreeSet<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryRec {
    pub id: CategoryId,
    pub name: String,
    pub description: String,
    pub allowed: Acl,
    pub denied: Acl,
    pub creators: Acl,
    pub invitations: bool,
    pub file_upload: bool,
    pub history: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRec {
    pub id: RoomId,
    pub name: String,
    pub description: String,
    pub category: CategoryId,
    pub room_type: RoomType,
    pub privacy: Privacy,
    pub invitations: Invitations,
    pub addin: Option<String>,
    pub disabled: bool,
    pub managers: Acl,
    pub presenters: Acl,
    pub members: Acl,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl RoomRec {
    pub fn list(&self, list: RoomList) -> &Acl {
        match list {
            RoomList::Managers => &self.managers,
            RoomList::Presenters => &self.presenters,
            RoomList::Members => &self.members,
        }
    }

    pub fn list_mut(&mut self, list: RoomList) -> &mut Acl {
        match list {
            RoomList::Managers => &mut self.managers,
            RoomList::Presenters => &mut self.presenters,
            RoomList::Members => &mut self.members,
        }
    }
}

/// Kinds of stored messages as integers in the store.
pub fn kind_code(kind: MessageKind) -> i64 {
    match kind {
        MessageKind::Normal => 0,
        MessageKind::Alert => 1,
        MessageKind::Story => 2,
    }
}

pub fn kind_from_code(code: i64) -> MessageKind {
    match code {
        1 => MessageKind::Alert,
        2 => MessageKind::Story,
        _ => MessageKind::Normal,
    }
}

/// What a caller may do with one room, computed once per request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// May learn that the room exists (search, get).
    pub find: bool,
    /// May join, read history, follow, list participants.
    pub read: bool,
    /// May post.
    pub post: bool,
    /// May change settings and lists.
    pub manage: bool,
    /// Sees the presenter and member lists.
    pub see_lists: bool,
    pub member: bool,
    pub manager: bool,
    pub presenter: bool,
}

/// The in-memory view of everything an access decision needs.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    pub users: HashMap<UserId, UserRec>,
    pub user_ids: HashMap<String, UserId>,
    pub groups: HashMap<GroupId, GroupRec>,
    pub group_ids: HashMap<String, GroupId>,
    pub policies: HashMap<String, bool>,
    pub categories: HashMap<CategoryId, CategoryRec>,
    pub rooms: HashMap<RoomId, RoomRec>,
    /// Lower-cased names of rooms and categories: they share one namespace.
    pub names: HashMap<String, NameOwner>,
    /// Each user's groups, transitively, always including [`EVERYONE`]; sorted.
    closure: HashMap<UserId, Vec<GroupId>>,
    /// Each group's ancestors, itself and [`EVERYONE`] included; sorted.
    ancestors: HashMap<GroupId, Vec<GroupId>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameOwner {
    Room(RoomId),
    Category(CategoryId),
}

/// The name-space key of a room or category name.
pub fn name_key(name: &str) -> String {
    name.to_lowercase()
}

impl Directory {
    /// Rebuilds the derived indexes (names, group closures) after records changed.
    pub fn reindex(&mut self) {
        self.user_ids = self
            .users
            .values()
            .map(|u| (u.name.clone(), u.id))
            .collect();
        self.group_ids = self
            .groups
            .values()
            .map(|g| (g.name.clone(), g.id))
            .collect();
        self.group_ids.insert(EVERYONE_NAME.to_owned(), EVERYONE);
        self.names.clear();
        for c in self.categories.values() {
            self.names
                .insert(name_key(&c.name), NameOwner::Category(c.id));
        }
        for r in self.rooms.values() {
            self.names.insert(name_key(&r.name), NameOwner::Room(r.id));
        }
        self.recompute_groups();
    }

    /// Recomputes group ancestry and each user's transitive groups.
    pub fn recompute_groups(&mut self) {
        let mut parents: HashMap<GroupId, Vec<GroupId>> = HashMap::new();
        let mut direct: HashMap<UserId, Vec<GroupId>> = HashMap::new();
        for g in self.groups.values() {
            for m in &g.members {
                match m {
                    Entry::Group(child) => parents.entry(*child).or_default().push(g.id),
                    Entry::User(u) => direct.entry(*u).or_default().push(g.id),
                }
            }
        }
        let climb = |start: &[GroupId]| {
            let mut seen: BTreeSet<GroupId> = start.iter().copied().collect();
            let mut stack: Vec<GroupId> = start.to_vec();
            while let Some(g) = stack.pop() {
                for p in parents.get(&g).into_iter().flatten() {
                    if seen.insert(*p) {
                        stack.push(*p);
                    }
                }
            }
            seen.insert(EVERYONE);
            seen.into_iter().collect::<Vec<_>>()
        };
        self.ancestors = self.groups.keys().map(|g| (*g, climb(&[*g]))).collect();
        self.ancestors.insert(EVERYONE, vec![EVERYONE]);
        self.closure = self
            .users
            .keys()
            .map(|u| (*u, climb(direct.get(u).map(Vec::as_slice).unwrap_or(&[]))))
            .collect();
    }

    /// The user's groups, transitively (with [`EVERYONE`]).
    pub fn groups_of(&self, user: UserId) -> &[GroupId] {
        self.closure
            .get(&user)
            .map(Vec::as_slice)
            .unwrap_or(&[EVERYONE])
    }

    fn ancestors_of(&self, group: GroupId) -> &[GroupId] {
        self.ancestors.get(&group).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether the user may use the service at all (PC-4.4).
    pub fn policy_enabled(&self, user: &UserRec) -> bool {
        if user.id == OPERATOR {
            return true;
        }
        let global = self.policies.get(GLOBAL_POLICY).copied().unwrap_or(false);
        match &user.policy {
            Some(p) => self.policies.get(p).copied().unwrap_or(global),
            None => global,
        }
    }

    pub fn is_admin(&self, user: UserId) -> bool {
        user == OPERATOR || self.users.get(&user).is_some_and(|u| u.admin)
    }

    /// Whether a user is within a category's scope: allowed and not denied.
    pub fn user_in_scope(&self, user: UserId, cat: &CategoryRec) -> bool {
        let groups = self.groups_of(user);
        cat.allowed.contains_user(user, groups) && !cat.denied.contains_user(user, groups)
    }

    /// Whether a list entry is within a category's scope (PC-7.6).
    pub fn entry_in_scope(&self, entry: Entry, cat: &CategoryRec) -> bool {
        match entry {
            Entry::User(u) => self.user_in_scope(u, cat),
            Entry::Group(g) => {
                let anc = self.ancestors_of(g);
                cat.allowed.contains_group(anc) && !cat.denied.contains_group(anc)
            }
        }
    }

    /// Whether the user may create rooms in the category.
    pub fn can_create(&self, user: UserId, cat: &CategoryRec) -> bool {
        self.is_admin(user)
            || (self.user_in_scope(user, cat)
                && cat.creators.contains_user(user, self.groups_of(user)))
    }

    /// The caller's access to a room (docs/protocol.md §8).
    pub fn access(&self, user: UserId, room: &RoomRec) -> Access {
        let admin = self.is_admin(user);
        let Some(cat) = self.categories.get(&room.category) else {
            return Access::default();
        };
        let groups = self.groups_of(user);
        let in_scope = user != OPERATOR && self.user_in_scope(user, cat);
        let member = in_scope && room.members.contains_user(user, groups);
        let manager = in_scope && room.managers.contains_user(user, groups);
        let presenter = member
            && room.room_type == RoomType::Auditorium
            && room.presenters.contains_user(user, groups);
        let find = admin
            || manager
            || (in_scope
                && match room.privacy {
                    Privacy::Open | Privacy::Closed => true,
                    Privacy::Secret => member,
                });
        let read_rule = match room.privacy {
            Privacy::Open => in_scope,
            Privacy::Closed | Privacy::Secret => member,
        };
        let post = read_rule
            && match room.room_type {
                RoomType::Normal => true,
                RoomType::Auditorium => presenter,
            };
        let mut access = Access {
            find,
            read: read_rule || admin,
            post,
            manage: admin || manager,
            see_lists: admin || manager || member,
            member,
            manager,
            presenter,
        };
        if room.disabled {
            // A disabled room is hidden from everyone but its managers and the
            // administrators, and nobody may join, read or post (PC-7.8).
            access.find = access.manage;
            access.read = false;
            access.post = false;
        }
        access
    }

    /// Whether invitations are in effect for the room (PC-7.9).
    pub fn invitations_on(&self, room: &RoomRec) -> bool {
        room.invitations == Invitations::Inherit
            && self
                .categories
                .get(&room.category)
                .is_some_and(|c| c.invitations)
    }

    /// Every user who is a member of the room through an entry (expanding groups).
    pub fn users_of_entry(&self, entry: Entry) -> Vec<UserId> {
        match entry {
            Entry::User(u) => vec![u],
            Entry::Group(g) => self
                .closure
                .iter()
                .filter(|(_, gs)| gs.binary_search(&g).is_ok())
                .map(|(u, _)| *u)
                .collect(),
        }
    }

    pub fn user_name(&self, user: UserId) -> &str {
        if user == OPERATOR {
            return "operator";
        }
        self.users.get(&user).map(|u| u.name.as_str()).unwrap_or("")
    }

    pub fn group_name(&self, group: GroupId) -> &str {
        if group == EVERYONE {
            return EVERYONE_NAME;
        }
        self.groups
            .get(&group)
            .map(|g| g.name.as_str())
            .unwrap_or("")
    }

    /// The wire form of an entry.
    pub fn principal(&self, entry: Entry) -> pchat_protocol::Principal {
        match entry {
            Entry::User(u) => pchat_protocol::Principal::User(self.user_name(u).to_owned()),
            Entry::Group(g) => pchat_protocol::Principal::Group(self.group_name(g).to_owned()),
        }
    }

    /// An ordered wire list.
    pub fn principals(&self, acl: &Acl) -> Vec<pchat_protocol::Principal> {
        let mut out: Vec<_> = acl
            .entries()
            .into_iter()
            .map(|e| self.principal(e))
            .collect();
        out.sort();
        out
    }

    /// Resolves a wire principal to an entry, if it names a known user or group.
    pub fn resolve(&self, p: &pchat_protocol::Principal) -> Option<Entry> {
        match p {
            pchat_protocol::Principal::User(n) => self.user_ids.get(n).map(|u| Entry::User(*u)),
            pchat_protocol::Principal::Group(n) => self.group_ids.get(n).map(|g| Entry::Group(*g)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, name: &str) -> UserRec {
        UserRec {
            id: UserId(id),
            name: name.into(),
            display_name: name.into(),
            password_hash: None,
            policy: None,
            admin: false,
            disabled: false,
        }
    }

    /// Users 1..=5: mgr, pres, mem, out (in scope, on no list), far (out of scope).
    fn fixture(privacy: Privacy, room_type: RoomType) -> Directory {
        let mut d = Directory::default();
        for (i, n) in ["mgr", "pres", "mem", "out", "far"].iter().enumerate() {
            d.users.insert(UserId(i as i64 + 1), user(i as i64 + 1, n));
        }
        d.groups.insert(
            GroupId(1),
            GroupRec {
                id: GroupId(1),
                name: "staff".into(),
                members: [1, 2, 3, 4]
                    .iter()
                    .map(|u| Entry::User(UserId(*u)))
                    .collect(),
            },
        );
        d.categories.insert(
            CategoryId(1),
            CategoryRec {
                id: CategoryId(1),
                name: "cat".into(),
                description: String::new(),
                allowed: Acl::from_entries([Entry::Group(GroupId(1))]),
                denied: Acl::default(),
                creators: Acl::from_entries([Entry::User(UserId(1))]),
                invitations: true,
                file_upload: true,
                history: true,
            },
        );
        d.rooms.insert(
            RoomId(1),
            RoomRec {
                id: RoomId(1),
                name: "room".into(),
                description: String::new(),
                category: CategoryId(1),
                room_type,
                privacy,
                invitations: Invitations::Inherit,
                addin: None,
                disabled: false,
                managers: Acl::from_entries([Entry::User(UserId(1))]),
                presenters: Acl::from_entries([Entry::User(UserId(2))]),
                members: Acl::from_entries([Entry::User(UserId(2)), Entry::User(UserId(3))]),
                created_at: 0,
            },
        );
        d.reindex();
        d
    }

    /// (find, read, post) for mgr, pres, mem, out, far.
    fn matrix(privacy: Privacy, room_type: RoomType) -> Vec<(bool, bool, bool)> {
        let d = fixture(privacy, room_type);
        let room = &d.rooms[&RoomId(1)];
        (1..=5)
            .map(|u| {
                let a = d.access(UserId(u), room);
                (a.find, a.read, a.post)
            })
            .collect()
    }

    #[test]
    fn permission_matrix_follows_the_domain_rules() {
        use Privacy::*;
        use RoomType::*;
        let t = (true, true, true);
        let f = (false, false, false);
        let find_only = (true, false, false);
        let read_only = (true, true, false);
        // mgr is not a member: finds, cannot read (PC-8: managers are not members).
        assert_eq!(matrix(Open, Normal), vec![t, t, t, t, f]);
        assert_eq!(matrix(Closed, Normal), vec![find_only, t, t, find_only, f]);
        assert_eq!(matrix(Secret, Normal), vec![find_only, t, t, f, f]);
        assert_eq!(
            matrix(Open, Auditorium),
            vec![read_only, t, read_only, read_only, f]
        );
        assert_eq!(
            matrix(Closed, Auditorium),
            vec![find_only, t, read_only, find_only, f]
        );
        assert_eq!(
            matrix(Secret, Auditorium),
            vec![find_only, t, read_only, f, f]
        );
    }

    #[test]
    fn denied_wins_over_allowed() {
        let mut d = fixture(Privacy::Open, RoomType::Normal);
        d.categories
            .get_mut(&CategoryId(1))
            .unwrap()
            .denied
            .insert(Entry::User(UserId(3)));
        let room = d.rooms[&RoomId(1)].clone();
        assert!(!d.access(UserId(3), &room).find);
        assert!(d.access(UserId(4), &room).post);
    }

    #[test]
    fn nested_group_membership_counts() {
        let mut d = fixture(Privacy::Closed, RoomType::Normal);
        d.groups.insert(
            GroupId(2),
            GroupRec {
                id: GroupId(2),
                name: "outer".into(),
                members: [Entry::Group(GroupId(1))].into(),
            },
        );
        d.rooms
            .get_mut(&RoomId(1))
            .unwrap()
            .members
            .insert(Entry::Group(GroupId(2)));
        d.reindex();
        let room = d.rooms[&RoomId(1)].clone();
        assert!(
            d.access(UserId(4), &room).read,
            "member through staff -> outer"
        );
        assert!(!d.access(UserId(5), &room).find, "out of scope stays out");
    }

    #[test]
    fn disabled_room_is_hidden_except_from_managers() {
        let mut d = fixture(Privacy::Open, RoomType::Normal);
        d.rooms.get_mut(&RoomId(1)).unwrap().disabled = true;
        let room = d.rooms[&RoomId(1)].clone();
        assert!(!d.access(UserId(3), &room).find);
        let mgr = d.access(UserId(1), &room);
        assert!(mgr.find && mgr.manage && !mgr.read);
    }
}
