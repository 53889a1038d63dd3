//! The pool's bus: how the nodes sharing a PostgreSQL store tell each other
//! about their live state (participants, presence, events for a user or a
//! room), over PostgreSQL's NOTIFY on channel `pchat_bus`.
//!
//! Each node sends its hub's [`BusEvent`]s in batches (one notification per
//! batch, under PostgreSQL's payload limit), says `Alive` every
//! [`ALIVE_EVERY`], and `Hello` when it starts, to which every other node
//! answers by announcing its whole live state again. A node heard from with
//! a new boot id (it restarted) has its announced state dropped at once: its
//! users leave the rooms they were in through it. A node not heard from for
//! [`DEAD_AFTER`] is silent: its clients reconnect elsewhere, and its
//! announced state stays for the pool's grace (`store.node_grace_ms`)
//! before it is dropped, so that a user whose endpoints moved to another
//! node within the grace never leaves its rooms (no `participant_left` and
//! `participant_joined` pair for every member of every small room it is
//! in). A silent node heard from again within the grace keeps its state
//! if it has the same boot id (it was only slow), and loses it first if not.
//! A node heard from again after its state was dropped (it was only slow,
//! but for longer than the grace: a host starved of CPU) is asked to
//! announce it again: this node says `Hello`, which every node answers.
//!
//! The bus carries live state only. Messages and directory changes travel
//! through the store itself (see `store::postgres`), where nothing is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::app::App;
use crate::hub::BusEvent;
use crate::store::postgres::PgStore;

/// How often a node says it is alive.
pub const ALIVE_EVERY: Duration = Duration::from_secs(2);
/// How long a silent node is trusted before its state is dropped.
pub const DEAD_AFTER: Duration = Duration::from_secs(8);
/// Largest batch payload (PostgreSQL allows 8000 bytes).
const MAX_PAYLOAD: usize = 7000;

/// One notification on the bus.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    node: String,
    boot: u64,
    events: Vec<BusEvent>,
}

struct Peer {
    boot: u64,
    seen: Instant,
}

/// Runs this node's side of the bus until the server shuts down.
pub async fn run(
    app: Arc<App>,
    store: Arc<PgStore>,
    mut outgoing: mpsc::UnboundedReceiver<BusEvent>,
    mut incoming: mpsc::UnboundedReceiver<String>,
) {
    let node = store.node().to_owned();
    let boot = rand::random::<u64>() >> 11;
    let mut peers: HashMap<String, Peer> = HashMap::new();
    let grace = Duration::from_millis(app.config.store.node_grace_ms);
    // Silent nodes whose state is kept until the grace ends.
    let mut silent: HashMap<String, Peer> = HashMap::new();
    // Nodes whose state was dropped after the grace, by boot id.
    let mut dropped: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(ALIVE_EVERY);
    send(&store, &node, boot, vec![BusEvent::Hello]).await;
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            ev = outgoing.recv() => {
                let Some(ev) = ev else { return };
                let mut batch = vec![ev];
                while let Ok(ev) = outgoing.try_recv() {
                    batch.push(ev);
                    if batch.len() >= 512 {
                        break;
                    }
                }
                send(&store, &node, boot, batch).await;
            }
            payload = incoming.recv() => {
                let Some(payload) = payload else { return };
                let Ok(env) = serde_json::from_str::<Envelope>(&payload) else {
                    tracing::warn!("unreadable bus payload");
                    continue;
                };
                if env.node == node {
                    continue;
                }
                let was_silent = silent.remove(&env.node);
                let known = peers.get(&env.node).or(was_silent.as_ref());
                let restarted = known.is_some_and(|p| p.boot != env.boot);
                if was_silent.is_some() && !restarted {
                    tracing::info!(node = %env.node, "silent pool node heard from again; its live state stays");
                }
                if restarted {
                    app.hub.drop_node(&env.node);
                }
                peers.insert(env.node.clone(), Peer { boot: env.boot, seen: Instant::now() });
                app.peers
                    .lock()
                    .expect("peers lock poisoned")
                    .insert(env.node.clone(), Instant::now());
                let mut hello = false;
                for ev in env.events {
                    hello |= ev == BusEvent::Hello;
                    app.hub.remote(&env.node, ev);
                }
                if hello {
                    send(&store, &node, boot, app.hub.local_state()).await;
                }
                // Back after its state went: the same process (a restart
                // says Hello itself) is asked for its state again.
                if dropped.remove(&env.node).is_some_and(|b| b == env.boot) && !hello {
                    tracing::info!(node = %env.node, "pool node heard from after its live state was dropped; asking for it again");
                    send(&store, &node, boot, vec![BusEvent::Hello]).await;
                }
            }
            _ = tick.tick() => {
                send(&store, &node, boot, vec![BusEvent::Alive]).await;
                peers.retain(|n, p| {
                    if p.seen.elapsed() <= DEAD_AFTER {
                        return true;
                    }
                    tracing::warn!(node = %n, grace_ms = grace.as_millis() as u64,
                        "pool node silent; its live state goes when the grace ends");
                    silent.insert(n.clone(), Peer { seen: Instant::now(), ..*p });
                    false
                });
                silent.retain(|n, p| {
                    if p.seen.elapsed() < grace {
                        return true;
                    }
                    tracing::warn!(node = %n, "pool node still silent; dropping its live state");
                    app.hub.drop_node(n);
                    dropped.insert(n.clone(), p.boot);
                    false
                });
            }
        }
    }
}

/// Sends events in as few notifications as the payload limit allows.
async fn send(store: &PgStore, node: &str, boot: u64, events: Vec<BusEvent>) {
    let mut batch: Vec<BusEvent> = Vec::new();
    let mut size = 0;
    let flush = |batch: Vec<BusEvent>| async move {
        if batch.is_empty() {
            return;
        }
        let env = Envelope {
            node: node.to_owned(),
            boot,
            events: batch,
        };
        let payload = serde_json::to_string(&env).unwrap_or_default();
        if let Err(e) = store.notify_bus(&payload).await {
            tracing::warn!(error = %e, "could not send on the pool's bus");
        }
    };
    for ev in events {
        let len = serde_json::to_string(&ev).map(|s| s.len()).unwrap_or(0) + 1;
        if size + len > MAX_PAYLOAD - 200 && !batch.is_empty() {
            flush(std::mem::take(&mut batch)).await;
            size = 0;
        }
        size += len;
        batch.push(ev);
    }
    flush(batch).await;
}
