//! The published topology as this node sees it: which pool its store
//! belongs to, which pool serves it (itself, or its backup after a
//! failover), where rooms of other pools are served (PC-17.1a), and the pool
//! states of `GET /v1/admin/pools` (PC-17.2a).

use std::collections::BTreeMap;

use pchat_protocol as wire;
use serde::{Deserialize, Serialize};

use super::App;
use crate::domain::RoomId;
use crate::error::ApiError;
use crate::topology::Topology;

/// The settings key the topology is published under.
pub const TOPOLOGY_KEY: &str = "topology";

/// What `topology publish` writes into a pool's store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// The pool whose rooms this store holds.
    pub pool: String,
    pub topology: Topology,
    /// Pool name -> `active`, `failed_over` or `standby`.
    #[serde(default)]
    pub states: BTreeMap<String, String>,
}

pub const ACTIVE: &str = "active";
pub const FAILED_OVER: &str = "failed_over";
pub const STANDBY: &str = "standby";

impl Published {
    /// The initial document for the store of pool `pool`: every pool that is
    /// some pool's backup starts as a standby, every other one active.
    pub fn new(topology: Topology, pool: &str) -> Published {
        let states = topology
            .pools
            .iter()
            .map(|p| {
                let standby = !topology.backed_up_by(&p.name).is_empty();
                (
                    p.name.clone(),
                    if standby { STANDBY } else { ACTIVE }.to_owned(),
                )
            })
            .collect();
        Published {
            pool: pool.to_owned(),
            topology,
            states,
        }
    }

    pub fn state(&self, pool: &str) -> &str {
        self.states.get(pool).map(String::as_str).unwrap_or(ACTIVE)
    }

    /// The pool whose nodes serve the rooms of `pool` now.
    pub fn serving(&self, pool: &str) -> String {
        if self.state(pool) == FAILED_OVER {
            if let Some(b) = self
                .topology
                .pools
                .iter()
                .find(|p| p.name == pool)
                .and_then(|p| p.backup.clone())
            {
                return b;
            }
        }
        pool.to_owned()
    }

    /// Where a client reaches the pool serving `pool`'s rooms.
    pub fn location(&self, pool: &str) -> Option<String> {
        let serving = self.serving(pool);
        self.topology
            .pools
            .iter()
            .find(|p| p.name == serving)
            .and_then(|p| p.nodes.iter().find(|n| n.active))
            .map(|n| n.url.trim_end_matches('/').to_owned())
    }

    /// Why `node` may not serve this store, if it may not.
    pub fn refuses(&self, node: &str) -> Option<String> {
        let serving = self.serving(&self.pool);
        match self.topology.pool_of_node(node) {
            None => Some(format!(
                "node {node:?} is not in the published topology (pool {:?} is served by {serving:?})",
                self.pool
            )),
            Some((_, p, _)) if p.name != serving => Some(format!(
                "node {node:?} belongs to pool {:?}, but this store's rooms (pool {:?}) are served by pool {serving:?}",
                p.name, self.pool
            )),
            Some((_, _, n)) if !n.active => Some(format!(
                "node {node:?} is a passive node of pool {serving:?}"
            )),
            Some(_) => None,
        }
    }
}

impl App {
    /// The published topology, if any.
    pub fn published(&self) -> Option<Published> {
        self.topology
            .read()
            .expect("topology lock poisoned")
            .clone()
    }

    pub(super) fn set_published(&self, json: &str) {
        match serde_json::from_str::<Published>(json) {
            Ok(p) => *self.topology.write().expect("topology lock poisoned") = Some(p),
            Err(e) => tracing::error!(error = %e, "unreadable published topology"),
        }
    }

    /// For a room this node does not know: `wrong_pool` when its id is homed
    /// in a pool this store does not hold (PC-17.1a), else `room_not_found`.
    pub fn unknown_room(&self, room: RoomId) -> ApiError {
        let Some(p) = self.published() else {
            return ApiError::room_not_found();
        };
        match p.topology.pool_of_room(room.0) {
            Some((_, home)) if home.name != p.pool => match p.location(&home.name) {
                Some(url) => ApiError::wrong_pool(&home.name, url),
                None => ApiError::room_not_found(),
            },
            _ => ApiError::room_not_found(),
        }
    }

    /// `GET /v1/admin/pools` (PC-17.2a).
    pub fn pools(&self) -> wire::Pools {
        let Some(p) = self.published() else {
            return wire::Pools { pools: Vec::new() };
        };
        let me = self.config.store.node.clone().unwrap_or_default();
        let peers = self.peers.lock().expect("peers lock poisoned").clone();
        let my_pool = p.serving(&p.pool);
        let pools =
            p.topology
                .pools
                .iter()
                .map(|pool| {
                    let serving: Vec<String> = p
                        .topology
                        .pools
                        .iter()
                        .filter(|q| p.state(&q.name) != STANDBY && p.serving(&q.name) == pool.name)
                        .map(|q| q.name.clone())
                        .collect();
                    wire::PoolView {
                        name: pool.name.clone(),
                        edition: format!("{:?}", pool.edition).to_lowercase(),
                        state: p.state(&pool.name).to_owned(),
                        serving,
                        backup: pool.backup.clone(),
                        nodes: pool
                            .nodes
                            .iter()
                            .map(|n| wire::PoolNode {
                                name: n.name.clone(),
                                url: n.url.clone(),
                                active: n.active,
                                alive: if pool.name != my_pool {
                                    None
                                } else if n.name == me {
                                    Some(true)
                                } else {
                                    Some(peers.get(&n.name).is_some_and(|seen| {
                                        seen.elapsed() <= crate::bus::DEAD_AFTER
                                    }))
                                },
                            })
                            .collect(),
                    }
                })
                .collect();
        wire::Pools { pools }
    }
}
