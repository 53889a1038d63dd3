//! The deployment topology, our equivalent of the vendor's topology builder:
//! which pools exist, their nodes, their stores, their compliance stores and
//! their backup pools, checked against the vendor's rules before it is
//! published into a pool's store.
//!
//! ```toml
//! [[pool]]
//! name = "chat1"
//! edition = "enterprise"                          # or "standard"
//! store = "postgres://postgres@db1:5432/chat"     # "embedded" for standard
//! compliance_store = "postgres://postgres@db1:5432/compliance"
//! backup = "chat1-dr"                             # optional
//! nodes = [
//!   { name = "fe1", url = "http://10.0.0.11:8080" },
//!   { name = "fe5", url = "http://10.0.0.15:8080", active = false },
//! ]
//! ```
//!
//! Each pool homes the rooms created in it: room ids are drawn from a range
//! of its own (the pool's index in the file times [`ROOM_ID_SPAN`]), so any
//! node can tell from a room id which pool to send a client to.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// Room ids of the pool at index `i` lie in `[i * SPAN + 1, (i + 1) * SPAN]`.
pub const ROOM_ID_SPAN: i64 = 1 << 40;
/// Most active nodes in an enterprise pool (and most passive ones).
pub const MAX_ACTIVE: usize = 4;
pub const MAX_PASSIVE: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(rename = "pool", default)]
    pub pools: Vec<PoolDef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edition {
    /// One node on the embedded store; no high availability.
    Standard,
    /// Up to four active and four passive nodes on PostgreSQL.
    Enterprise,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolDef {
    pub name: String,
    pub edition: Edition,
    /// `embedded`, or the chat database's PostgreSQL URL.
    pub store: String,
    /// The compliance database (PostgreSQL URL, or `embedded`); optional.
    #[serde(default)]
    pub compliance_store: Option<String>,
    /// The pool that takes over this one's rooms in a disaster.
    #[serde(default)]
    pub backup: Option<String>,
    pub nodes: Vec<NodeDef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    pub name: String,
    /// Where clients reach the node, `http://host:port`.
    pub url: String,
    /// Passive nodes are in the topology but serve no clients.
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// One broken rule: which rule, and the entry at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    /// A path into the file, e.g. `pool[1].nodes[4]`.
    pub at: String,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.at, self.detail, self.rule)
    }
}

/// The rules, by name, as `topology validate` reports them.
pub const RULES: &[(&str, &str)] = &[
    ("at-least-one-pool", "a topology defines at least one pool"),
    ("unique-pool-name", "pool names are unique"),
    (
        "unique-node",
        "a node (name or URL) appears once in the whole topology",
    ),
    (
        "enterprise-max-active",
        "an enterprise pool has at most four active nodes",
    ),
    (
        "enterprise-max-passive",
        "an enterprise pool has at most four passive nodes",
    ),
    (
        "enterprise-needs-active",
        "an enterprise pool has at least one active node",
    ),
    (
        "enterprise-store-postgres",
        "an enterprise pool's store is a PostgreSQL database",
    ),
    (
        "standard-one-node",
        "a standard pool has exactly one node, and it is active",
    ),
    (
        "standard-embedded-store",
        "a standard pool uses the embedded store",
    ),
    (
        "standard-no-backup",
        "a standard pool has no backup pool (no high availability)",
    ),
    (
        "compliance-separate",
        "the compliance store is not the chat store of any pool",
    ),
    (
        "backup-exists",
        "a backup pool is defined in the same topology",
    ),
    (
        "backup-enterprise",
        "a backup pool is an enterprise pool and not the pool itself",
    ),
    (
        "backup-store-separate",
        "a pool and its backup do not share a store",
    ),
    ("node-url", "a node URL is http:// or https:// with a host"),
    (
        "name-syntax",
        "pool and node names are 1 to 64 characters of [A-Za-z0-9._-]",
    ),
];

impl Topology {
    /// Parses a topology file; errors name the line and the field.
    pub fn parse(text: &str) -> Result<Topology, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Every broken rule, in file order (empty when the topology is valid).
    pub fn validate(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        let mut v = |rule: &'static str, at: String, detail: String| {
            out.push(Violation { rule, at, detail })
        };
        if self.pools.is_empty() {
            v(
                "at-least-one-pool",
                "pool".into(),
                "no pool is defined".into(),
            );
        }
        let mut pool_names: HashMap<&str, usize> = HashMap::new();
        let mut node_names: HashMap<&str, String> = HashMap::new();
        let mut node_urls: HashMap<String, String> = HashMap::new();
        let stores: Vec<String> = self.pools.iter().map(|p| store_key(&p.store)).collect();
        for (i, p) in self.pools.iter().enumerate() {
            let at = format!("pool[{i}]");
            if !name_ok(&p.name) {
                v("name-syntax", format!("{at}.name"), format!("{:?}", p.name));
            }
            if let Some(first) = pool_names.insert(&p.name, i) {
                v(
                    "unique-pool-name",
                    format!("{at}.name"),
                    format!("pool {:?} is also pool[{first}]", p.name),
                );
            }
            for (j, n) in p.nodes.iter().enumerate() {
                let nat = format!("{at}.nodes[{j}]");
                if !name_ok(&n.name) {
                    v(
                        "name-syntax",
                        format!("{nat}.name"),
                        format!("{:?}", n.name),
                    );
                }
                if let Some(first) = node_names.insert(&n.name, nat.clone()) {
                    v(
                        "unique-node",
                        format!("{nat}.name"),
                        format!("node {:?} is also {first}", n.name),
                    );
                }
                if !url_ok(&n.url) {
                    v("node-url", format!("{nat}.url"), format!("{:?}", n.url));
                }
                let key = n.url.trim_end_matches('/').to_ascii_lowercase();
                if let Some(first) = node_urls.insert(key, nat.clone()) {
                    v(
                        "unique-node",
                        format!("{nat}.url"),
                        format!("{} is also {first}", n.url),
                    );
                }
            }
            let active = p.nodes.iter().filter(|n| n.active).count();
            let passive = p.nodes.len() - active;
            match p.edition {
                Edition::Enterprise => {
                    if active > MAX_ACTIVE {
                        v(
                            "enterprise-max-active",
                            format!("{at}.nodes"),
                            format!("{active} active nodes; at most {MAX_ACTIVE}"),
                        );
                    }
                    if passive > MAX_PASSIVE {
                        v(
                            "enterprise-max-passive",
                            format!("{at}.nodes"),
                            format!("{passive} passive nodes; at most {MAX_PASSIVE}"),
                        );
                    }
                    if active == 0 {
                        v(
                            "enterprise-needs-active",
                            format!("{at}.nodes"),
                            "no active node".into(),
                        );
                    }
                    if !is_postgres(&p.store) {
                        v(
                            "enterprise-store-postgres",
                            format!("{at}.store"),
                            format!("{:?} is not a postgres:// URL", p.store),
                        );
                    }
                }
                Edition::Standard => {
                    if p.nodes.len() != 1 || active != 1 {
                        v(
                            "standard-one-node",
                            format!("{at}.nodes"),
                            format!("{} node(s), {active} active", p.nodes.len()),
                        );
                    }
                    if p.store != "embedded" {
                        v(
                            "standard-embedded-store",
                            format!("{at}.store"),
                            format!("{:?}; a standard pool's store is \"embedded\"", p.store),
                        );
                    }
                    if let Some(b) = &p.backup {
                        v(
                            "standard-no-backup",
                            format!("{at}.backup"),
                            format!("standard pool {:?} names backup {b:?}", p.name),
                        );
                    }
                }
            }
            if let Some(c) = &p.compliance_store {
                let key = store_key(c);
                if c != "embedded" {
                    if let Some(k) = stores.iter().position(|s| *s == key) {
                        v(
                            "compliance-separate",
                            format!("{at}.compliance_store"),
                            format!("it is the chat store of pool[{k}]"),
                        );
                    }
                }
            }
        }
        for (i, p) in self.pools.iter().enumerate() {
            let Some(b) = &p.backup else { continue };
            if p.edition == Edition::Standard {
                continue;
            }
            let at = format!("pool[{i}].backup");
            match self.pools.iter().position(|q| &q.name == b) {
                None => v("backup-exists", at, format!("no pool is named {b:?}")),
                Some(k) if k == i => v(
                    "backup-enterprise",
                    at,
                    "a pool cannot back itself up".into(),
                ),
                Some(k) => {
                    let q = &self.pools[k];
                    if q.edition != Edition::Enterprise {
                        v(
                            "backup-enterprise",
                            at.clone(),
                            format!("pool {b:?} is a standard pool"),
                        );
                    }
                    if stores[k] == stores[i] {
                        v(
                            "backup-store-separate",
                            at,
                            format!("pool {b:?} uses the same store"),
                        );
                    }
                }
            }
        }
        out
    }

    /// The pool a node belongs to, and its index.
    pub fn pool_of_node(&self, node: &str) -> Option<(usize, &PoolDef, &NodeDef)> {
        self.pools
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.nodes.iter().find(|n| n.name == node).map(|n| (i, p, n)))
    }

    /// The pool homing a room id.
    pub fn pool_of_room(&self, room: i64) -> Option<(usize, &PoolDef)> {
        let i = ((room.max(1) - 1) / ROOM_ID_SPAN) as usize;
        self.pools.get(i).map(|p| (i, p))
    }

    /// The pools whose backup is `name`.
    pub fn backed_up_by(&self, name: &str) -> Vec<&PoolDef> {
        self.pools
            .iter()
            .filter(|p| p.backup.as_deref() == Some(name))
            .collect()
    }
}

/// The first room id of the pool at `index`.
pub fn room_id_base(index: usize) -> i64 {
    index as i64 * ROOM_ID_SPAN
}

fn name_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn url_ok(s: &str) -> bool {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
}

fn is_postgres(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// What identifies a store: host, port and database of a URL (so two URLs
/// that differ only in user or options name the same database).
fn store_key(s: &str) -> String {
    if !is_postgres(s) {
        return s.to_owned();
    }
    match s.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let hosts: BTreeSet<String> = c.get_hosts().iter().map(|h| format!("{h:?}")).collect();
            let ports: Vec<u16> = c.get_ports().to_vec();
            format!(
                "{hosts:?}:{ports:?}/{}",
                c.get_dbname().unwrap_or(c.get_user().unwrap_or("postgres"))
            )
        }
        Err(_) => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[pool]]
name = "chat1"
edition = "enterprise"
store = "postgres://postgres@db1:5432/chat"
compliance_store = "postgres://postgres@db1:5432/compliance"
backup = "chat1-dr"
nodes = [
  { name = "fe1", url = "http://10.0.0.11:8080" },
  { name = "fe2", url = "http://10.0.0.12:8080" },
  { name = "fe3", url = "http://10.0.0.13:8080" },
  { name = "fe4", url = "http://10.0.0.14:8080" },
  { name = "fe5", url = "http://10.0.0.15:8080", active = false },
]

[[pool]]
name = "chat1-dr"
edition = "enterprise"
store = "postgres://postgres@db2:5432/chat"
compliance_store = "postgres://postgres@db2:5432/compliance"
nodes = [{ name = "dr1", url = "http://10.1.0.11:8080" }]

[[pool]]
name = "branch"
edition = "standard"
store = "embedded"
nodes = [{ name = "se1", url = "http://10.2.0.1:8080" }]
"#;

    fn rules(t: &Topology) -> Vec<(&'static str, String)> {
        t.validate().into_iter().map(|v| (v.rule, v.at)).collect()
    }

    #[test]
    fn the_example_is_valid_and_answers_where_things_are() {
        let t = Topology::parse(GOOD).unwrap();
        assert_eq!(rules(&t), vec![]);
        let (i, p, n) = t.pool_of_node("fe5").unwrap();
        assert_eq!((i, p.name.as_str(), n.active), (0, "chat1", false));
        assert_eq!(t.pool_of_room(1).unwrap().1.name, "chat1");
        assert_eq!(t.pool_of_room(ROOM_ID_SPAN).unwrap().1.name, "chat1");
        assert_eq!(t.pool_of_room(ROOM_ID_SPAN + 1).unwrap().1.name, "chat1-dr");
        assert_eq!(t.backed_up_by("chat1-dr")[0].name, "chat1");
    }

    fn broken(edit: impl FnOnce(&mut Topology)) -> Vec<(&'static str, String)> {
        let mut t = Topology::parse(GOOD).unwrap();
        edit(&mut t);
        rules(&t)
    }

    #[test]
    fn each_vendor_rule_names_itself_and_the_entry() {
        let node = |name: &str, n: u8| NodeDef {
            name: name.into(),
            url: format!("http://10.0.0.{n}:8080"),
            active: true,
        };
        assert_eq!(
            broken(|t| t.pools[0].nodes[4].active = true),
            vec![("enterprise-max-active", "pool[0].nodes".into())]
        );
        assert_eq!(
            broken(|t| {
                for k in 0..4 {
                    let mut n = node(&format!("p{k}"), 100 + k);
                    n.active = false;
                    t.pools[0].nodes.push(n);
                }
            }),
            vec![("enterprise-max-passive", "pool[0].nodes".into())]
        );
        assert_eq!(
            broken(|t| t.pools[2].backup = Some("chat1-dr".into())),
            vec![("standard-no-backup", "pool[2].backup".into())]
        );
        assert_eq!(
            broken(|t| {
                t.pools[1].compliance_store = Some("postgres://admin@db1:5432/chat".into())
            }),
            vec![("compliance-separate", "pool[1].compliance_store".into())]
        );
        assert_eq!(
            broken(|t| t.pools[1].nodes.push(node("fe2", 99))),
            vec![("unique-node", "pool[1].nodes[1].name".into())]
        );
        assert_eq!(
            broken(|t| t.pools[1].nodes.push(node("dr2", 11))),
            vec![("unique-node", "pool[1].nodes[1].url".into())]
        );
        assert_eq!(
            broken(|t| t.pools[0].backup = Some("nowhere".into())),
            vec![("backup-exists", "pool[0].backup".into())]
        );
        assert_eq!(
            broken(|t| t.pools[0].backup = Some("branch".into())),
            vec![("backup-enterprise", "pool[0].backup".into())]
        );
        assert_eq!(
            broken(|t| t.pools[1].store = "postgres://other@db1:5432/chat".into()),
            vec![("backup-store-separate", "pool[0].backup".into())]
        );
        assert_eq!(
            broken(|t| t.pools[2].nodes.push(node("se2", 77))),
            vec![("standard-one-node", "pool[2].nodes".into())]
        );
        assert_eq!(
            broken(|t| t.pools[2].store = "postgres://x@db3/chat".into()),
            vec![("standard-embedded-store", "pool[2].store".into())]
        );
        assert_eq!(
            broken(|t| t.pools[1].store = "embedded".into()),
            vec![("enterprise-store-postgres", "pool[1].store".into())]
        );
        assert_eq!(
            broken(|t| t.pools[1].name = "chat1".into()),
            vec![
                ("unique-pool-name", "pool[1].name".into()),
                ("backup-exists", "pool[0].backup".into())
            ]
        );
        assert_eq!(
            broken(|t| t.pools[0].backup = Some("chat1".into())),
            vec![("backup-enterprise", "pool[0].backup".into())]
        );
        assert_eq!(
            broken(|t| t.pools[1].nodes[0].url = "ftp://x".into()),
            vec![("node-url", "pool[1].nodes[0].url".into())]
        );
        assert_eq!(
            broken(|t| t.pools.clear()),
            vec![("at-least-one-pool", "pool".into())]
        );
    }

    #[test]
    fn every_rule_is_listed_with_its_meaning() {
        let listed: Vec<&str> = RULES.iter().map(|(r, _)| *r).collect();
        let src = include_str!("topology.rs");
        let code = &src[..src.find("#[cfg(test)]").unwrap()];
        for (rule, _) in RULES {
            assert!(
                code.matches(&format!("\"{rule}\",")).count() >= 2,
                "rule {rule} is listed but never checked"
            );
        }
        assert_eq!(listed.len(), listed.iter().collect::<BTreeSet<_>>().len());
    }

    #[test]
    fn a_malformed_file_names_the_line_and_field() {
        let err = Topology::parse("[[pool]]\nname = \"a\"\nedition = \"deluxe\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("edition"), "{err}");
    }
}
