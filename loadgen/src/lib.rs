//! The load generator: simulated users of the persistent-chat protocol,
//! driven by a scaled user model, measured from their intended send times.
//!
//! - [`workload`]: the concrete users and rooms of a run, and their
//!   provisioning document.
//! - [`schedule`]: seeded arrivals and steady-state operations.
//! - [`endpoints`]: the lean pool of event streams (one task per endpoint).
//! - [`ops`]: the request/response operations, run as goose users.
//! - [`record`]: HdrHistograms and counters per second and per window;
//!   errors apart from what clients retried.
//! - [`retry`]: how a simulated client waits before trying again
//!   (`Retry-After` plus jitter, jittered exponential reconnects).
//! - [`check`]: the correctness checker (lost, duplicated, reordered, gaps).
//! - [`shard`]: one generator shard's part of a step (the users `u` with
//!   `u % shards == k`), run in this process or as a process of its own.
//! - [`run`]: a whole run, step by step, with CPU/RSS sampling.
//! - [`ws`]: the event streams' WebSocket client, over [`stamp`]'s reads.
//! - [`net`], [`procfs`]: sockets, fd limits, /proc sampling.

pub mod check;
pub mod endpoints;
pub mod net;
pub mod ops;
pub mod procfs;
pub mod record;
pub mod retry;
pub mod run;
pub mod schedule;
pub mod shard;
pub mod stamp;
pub mod workload;
pub mod ws;

pub use procfs::machine;

use anyhow::Context;

/// Tokens for `names` from the admin API (PC-13.10a), 1,000 names per call.
pub async fn tokens(
    admin: &pchat_protocol::client::Client,
    names: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(names.len());
    for chunk in names.chunks(1000) {
        let resp: pchat_protocol::BulkTokenResponse = admin
            .post(
                "/v1/admin/tokens",
                &serde_json::json!({ "users": chunk, "ttl_s": 86_400 }),
            )
            .await
            .context("issue tokens")?;
        for n in chunk {
            out.push(
                resp.tokens
                    .get(n)
                    .with_context(|| format!("no token for {n}"))?
                    .clone(),
            );
        }
    }
    Ok(out)
}
