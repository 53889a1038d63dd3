//! The concrete deployment a run drives: simulated users with their
//! endpoints and rooms, and rooms with their class, lists and post rate.
//!
//! A workload is derived from a scaled plan of the user model and a seed;
//! it turns into the admin API's provisioning document, so that the server
//! holds exactly the directory the simulated users expect.

pub use scenarios::plan::Class;
use scenarios::plan::Plan;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One simulated user.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimUser {
    pub name: String,
    /// Connected endpoints (1 or 2 in the vendor's model).
    pub endpoints: u8,
    /// Indices into [`Workload::rooms`] this user joins on every endpoint.
    pub rooms: Vec<u32>,
}

/// One room.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimRoom {
    pub name: String,
    #[serde(with = "class_name")]
    pub class: Class,
    pub open: bool,
    pub auditorium: bool,
    /// Users who join it (indices into [`Workload::users`]).
    pub members: Vec<u32>,
    /// Members listed directly; the others are on the list through groups.
    pub direct: Vec<u32>,
    /// Groups on the member list, each a slice of the members.
    pub groups: Vec<Vec<u32>>,
    /// Who may post: every member, or the presenters of an auditorium.
    pub posters: Vec<u32>,
    pub managers: Vec<u32>,
    /// Mean posts per second into this room.
    pub post_rate_per_s: f64,
}

/// Rates of the operations besides posting, for the whole deployment.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Rates {
    pub joins_per_s: f64,
    pub presence_per_s: f64,
    pub participant_polls_per_s: f64,
    pub history_reads_per_s: f64,
    pub searches_per_s: f64,
}

/// A step's whole deployment. It travels to the generator's shard
/// processes (see [`crate::shard`]), hence the serde derives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Workload {
    pub users: Vec<SimUser>,
    pub rooms: Vec<SimRoom>,
    pub rates: Rates,
    /// Messages a join loads (the service configuration's messages_on_join).
    pub messages_on_join: u32,
    /// A prefix that keeps this run's names apart from anything else on the
    /// server (runs may share an external target).
    pub namespace: String,
}

impl Workload {
    pub fn endpoints(&self) -> u64 {
        self.users.iter().map(|u| u.endpoints as u64).sum()
    }

    /// The `POST /v1/admin/provision` document (PC-13.9a) for this workload.
    pub fn provision_doc(&self) -> Value {
        let ns = &self.namespace;
        let user = |i: &u32| format!("user:{}", self.users[*i as usize].name);
        let mut groups = Vec::new();
        let mut rooms = Vec::with_capacity(self.rooms.len());
        for (ri, r) in self.rooms.iter().enumerate() {
            let mut members: Vec<String> = Vec::new();
            if !r.open {
                members.extend(r.direct.iter().map(user));
                for (gi, g) in r.groups.iter().enumerate() {
                    let name = format!("{ns}g{ri}-{gi}");
                    groups.push(json!({
                        "name": name,
                        "members": g.iter().map(user).collect::<Vec<_>>(),
                    }));
                    members.push(format!("group:{name}"));
                }
            } else if r.auditorium {
                // Presenters must be members, even of an open auditorium.
                members.extend(r.posters.iter().map(user));
            }
            let mut room = json!({
                "name": r.name,
                "category": format!("{ns}chat"),
                "description": format!("{} room {ri} of the load generator", r.class.name()),
                "privacy": if r.open { "open" } else { "closed" },
                "type": if r.auditorium { "auditorium" } else { "normal" },
                "managers": r.managers.iter().map(user).collect::<Vec<_>>(),
                "members": members,
            });
            if r.auditorium {
                room["presenters"] = json!(r.posters.iter().map(user).collect::<Vec<_>>());
            }
            rooms.push(room);
        }
        json!({
            "global_policy_enabled": true,
            "users": self.users.iter().map(|u| json!({
                "name": u.name,
                "display_name": format!("Load user {}", u.name),
            })).collect::<Vec<_>>(),
            "groups": groups,
            "categories": [{ "name": format!("{ns}chat"), "description": "load generator rooms" }],
            "rooms": rooms,
        })
    }
}

impl Workload {
    /// Builds the concrete users and rooms of a scaled plan. Who is in which
    /// room comes from [`Plan::memberships`] (seeded: the same seed gives the
    /// same workload); this adds the lists a room needs on the server.
    pub fn build(plan: &Plan, namespace: &str, seed: u64) -> Workload {
        let m = plan.memberships(seed);
        let users = (0..m.users())
            .map(|u| SimUser {
                name: format!("{namespace}u{u}"),
                endpoints: m.endpoints_of(u).len() as u8,
                rooms: m.rooms_of(u).to_vec(),
            })
            .collect();
        let rooms = (0..m.rooms())
            .map(|r| {
                let info = plan
                    .room_info(r)
                    .expect("memberships number every room of the plan");
                let c = plan.class(info.class);
                let members = m.members(r).to_vec();
                let posters = if info.auditorium {
                    members
                        .iter()
                        .take(plan.presenters_per_auditorium.max(1) as usize)
                        .copied()
                        .collect()
                } else {
                    members.clone()
                };
                let (direct, groups) = if info.open {
                    (Vec::new(), Vec::new())
                } else {
                    member_lists(
                        &members,
                        c.direct_membership_fraction,
                        c.groups_per_nonopen_room,
                    )
                };
                let managers = members
                    .iter()
                    .rev()
                    .take(plan.managers_per_room as usize)
                    .copied()
                    .collect();
                SimRoom {
                    name: format!("{namespace}{}{}", info.class.name(), info.index_in_class),
                    class: info.class,
                    open: info.open,
                    auditorium: info.auditorium,
                    members,
                    direct,
                    groups,
                    posters,
                    managers,
                    post_rate_per_s: c.chat_rate_per_s / c.rooms.max(1) as f64,
                }
            })
            .collect();
        Workload {
            users,
            rooms,
            rates: Rates {
                joins_per_s: plan.joins_per_s,
                presence_per_s: plan.presence_changes_per_s,
                participant_polls_per_s: plan.participant_polls_per_s,
                history_reads_per_s: plan.history_reads_per_s,
                searches_per_s: plan.searches_per_s,
            },
            messages_on_join: plan.messages_on_join,
            namespace: namespace.to_owned(),
        }
    }
}

/// A room class on the shard wire: its name.
mod class_name {
    use super::Class;

    pub fn serialize<S: serde::Serializer>(c: &Class, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.name())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Class, D::Error> {
        let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        Class::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("no room class {name:?}")))
    }
}

/// Splits a non-open room's members into those listed by name and the
/// groups that list the rest (`groups` of about equal size).
fn member_lists(members: &[u32], direct_fraction: f64, groups: u64) -> (Vec<u32>, Vec<Vec<u32>>) {
    if groups == 0 || members.is_empty() {
        return (members.to_vec(), Vec::new());
    }
    let d = ((members.len() as f64) * direct_fraction).round() as usize;
    let d = d.min(members.len());
    let rest = &members[d..];
    if rest.is_empty() {
        return (members.to_vec(), Vec::new());
    }
    let k = (groups as usize).clamp(1, rest.len());
    let groups = rest
        .chunks(rest.len().div_ceil(k))
        .map(<[u32]>::to_vec)
        .collect();
    (members[..d].to_vec(), groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scenarios::model::UserModel;
    use scenarios::plan::PlanOptions;

    fn spec(users: u64) -> Plan {
        Plan::for_users(&UserModel::vendor(), users, &PlanOptions::default())
    }

    #[test]
    fn rooms_get_their_size_and_users_their_rooms() {
        // 2,000 users: 800 small rooms of 30, 27 medium of 150, one large
        // room holding everyone.
        let w = Workload::build(&spec(2_000), "t-", 3);
        assert_eq!(w.endpoints(), 3_000);
        let of = |c: Class| w.rooms.iter().filter(move |r| r.class == c);
        assert_eq!(of(Class::Small).count(), 800);
        assert!(of(Class::Small).all(|r| r.members.len() == 30));
        assert_eq!(of(Class::Medium).count(), 27);
        let large: Vec<&SimRoom> = of(Class::Large).collect();
        assert_eq!(large.len(), 1);
        assert_eq!(large[0].members.len(), 2_000);
        // Seats are dealt without repeats: about 12 + 2 + 1 rooms per user.
        let mean = w.users.iter().map(|u| u.rooms.len()).sum::<usize>() as f64 / 2_000.0;
        assert!((mean - 15.0).abs() < 0.2, "mean rooms per user {mean}");
        // Auditoriums let only their presenters post; closed rooms list half
        // their members directly and the rest through three groups.
        let aud = of(Class::Small).find(|r| r.auditorium).unwrap();
        assert_eq!(aud.posters.len(), 6);
        let closed = of(Class::Small).find(|r| !r.open && !r.auditorium).unwrap();
        assert_eq!(closed.direct.len(), 15);
        assert_eq!(closed.groups.len(), 3);
        assert_eq!(closed.groups.iter().map(Vec::len).sum::<usize>(), 15);
        assert_eq!(closed.managers.len(), 6);
        let doc = w.provision_doc();
        assert_eq!(doc["rooms"].as_array().unwrap().len(), w.rooms.len());
    }

    #[test]
    fn the_same_seed_builds_the_same_workload() {
        let a = Workload::build(&spec(300), "t-", 9);
        let b = Workload::build(&spec(300), "t-", 9);
        let c = Workload::build(&spec(300), "t-", 10);
        let members = |w: &Workload| {
            w.rooms
                .iter()
                .map(|r| r.members.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(members(&a), members(&b));
        assert_ne!(members(&a), members(&c));
    }
}
