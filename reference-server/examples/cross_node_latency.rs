//! What delivery through a pool costs: the same paced posting, measured on a
//! single node on the embedded store, and on a pool of nodes sharing a
//! private PostgreSQL (messages fan out through LISTEN/NOTIFY), where each
//! delivery is classed same-node (poster and reader on one node) or
//! cross-node.
//!
//! ```sh
//! cargo build --release -p reference-server
//! cargo run --release -p reference-server --example cross_node_latency -- [posts] [rate_per_s] [nodes]
//! ```
//!
//! Latency runs from a post's intended send time (its slot in a fixed-rate
//! schedule, so a stalled server cannot hide) to its arrival on a reader's
//! stream. Every post must reach every reader; the run fails otherwise. The
//! result is printed as Markdown for `reports/cross-node-latency.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use pchat_protocol::client::{Client, StreamItem};
use pchat_protocol::{self as wire, Event};
use serde_json::json;

/// Rooms the posts rotate over.
const ROOMS: usize = 8;

struct Node {
    child: Child,
    base: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/<name> -> target/<profile>/reference-server
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("reference-server"))
        .context("cannot locate the target directory")?;
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p reference-server` first",
            bin.display()
        );
    }
    Ok(bin)
}

fn start_node(bin: &Path, dir: &Path, env: &[(&str, String)]) -> anyhow::Result<Node> {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("PCHAT_LOG__FILTER", "warn")
        .env("PCHAT_LIMITS__POST_RATE_PER_S", "10000")
        .env("PCHAT_LIMITS__POST_BURST", "10000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let base = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .with_context(|| format!("the server did not say where it listens: {line:?}"))?
        .to_owned();
    Ok(Node { child, base })
}

/// Provisions users r0..rn (readers), p0..pn (posters) and the rooms
/// through `admin`; returns the room ids and every user's token.
async fn provision(
    admin: &Client,
    nodes: usize,
) -> anyhow::Result<(Vec<u64>, HashMap<String, String>)> {
    admin
        .call::<serde_json::Value>(
            reqwest::Method::PUT,
            "/v1/admin/policies/global",
            Some(&json!({"enabled": true})),
        )
        .await?;
    let names: Vec<String> = (0..nodes)
        .flat_map(|i| [format!("r{i}"), format!("p{i}")])
        .collect();
    let rooms: Vec<serde_json::Value> = (0..ROOMS)
        .map(|i| json!({"name": format!("room{i}"), "category": "bench", "privacy": "open"}))
        .collect();
    let doc = json!({
        "users": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
        "categories": [{"name": "bench"}],
        "rooms": rooms,
    });
    let out: serde_json::Value = admin.post("/v1/admin/provision", &doc).await?;
    let ids: Vec<u64> = (0..ROOMS)
        .map(|i| out["room_ids"][format!("room{i}")].as_u64().unwrap_or(0))
        .collect();
    let tokens: wire::BulkTokenResponse = admin
        .post("/v1/admin/tokens", &json!({"users": names}))
        .await?;
    Ok((ids, tokens.tokens.into_iter().collect()))
}

/// (room, seq) -> (intended send time, posting node).
type Sent = HashMap<(u64, u64), (Instant, usize)>;
/// (room, seq, reading node, arrival time).
type Arrival = (u64, u64, usize, Instant);

#[derive(Default)]
struct Classes {
    same: Option<Histogram<u64>>,
    cross: Option<Histogram<u64>>,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Runs the paced posting against `bases` (one reader and one poster per
/// node) and returns the latency histograms, in microseconds.
async fn measure(
    bases: &[String],
    admin_base: &str,
    admin_token: &str,
    posts: usize,
    rate: f64,
) -> anyhow::Result<Classes> {
    let admin = Client::new(admin_base).as_token(admin_token);
    let (rooms, tokens) = provision(&admin, bases.len()).await?;
    let n = bases.len();
    // Readers: one per node, joined to every room.
    let sent: Arc<Mutex<Sent>> = Arc::default();
    let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::default();
    let mut readers = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        let c = Client::new(base.clone()).as_token(tokens[&format!("r{i}")].clone());
        for _ in 0..200 {
            if c.history(rooms[ROOMS - 1], "limit=1").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut stream = c.stream("bench", &[]).await?;
        stream.next().await?;
        for r in &rooms {
            c.join(*r, "bench", None).await?;
        }
        let arrivals = arrivals.clone();
        readers.push(tokio::spawn(async move {
            let mut got = 0usize;
            while got < posts {
                match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                    Ok(Ok(StreamItem::Event(Event::Message(m)))) => {
                        arrivals
                            .lock()
                            .expect("arrivals")
                            .push((m.room, m.seq, i, Instant::now()));
                        got += 1;
                    }
                    Ok(Ok(StreamItem::Event(_))) => {}
                    other => return Err(format!("reader {i} after {got}: {other:?}")),
                }
            }
            Ok(())
        }));
    }
    // Posters: post k goes through node k % n at its slot of the schedule.
    let posters: Vec<Client> = (0..n)
        .map(|i| Client::new(bases[i].clone()).as_token(tokens[&format!("p{i}")].clone()))
        .collect();
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for k in 0..posts {
        let intended = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(intended.into()).await;
        let c = posters[k % n].clone();
        let room = rooms[k % ROOMS];
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let m = c
                .post_message(
                    room,
                    &wire::PostMessage {
                        text: format!("bench {k}"),
                        kind: None,
                        title: None,
                        client_key: None,
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            sent.lock()
                .expect("sent")
                .insert((room, m.body.seq), (intended, k % n));
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await?.map_err(anyhow::Error::msg)?;
    }
    for r in readers {
        r.await?.map_err(anyhow::Error::msg)?;
    }
    let sent = sent.lock().expect("sent");
    let mut out = Classes::default();
    for (room, seq, reader, at) in arrivals.lock().expect("arrivals").iter() {
        let (intended, poster) = sent
            .get(&(*room, *seq))
            .with_context(|| format!("delivered {room}:{seq} was never acknowledged"))?;
        let us = at.saturating_duration_since(*intended).as_micros() as u64;
        let h = if *poster == *reader {
            out.same.get_or_insert_with(hist)
        } else {
            out.cross.get_or_insert_with(hist)
        };
        h.record(us.max(1))?;
    }
    Ok(out)
}

fn row(label: &str, h: &Option<Histogram<u64>>) -> String {
    match h {
        None => format!("| {label} | 0 | | | | |"),
        Some(h) => format!(
            "| {label} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        ),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let posts: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let rate: f64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(50.0);
    let nodes: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let bin = server_binary()?;
    let tmp = tempfile::tempdir()?;

    // One node on the embedded store.
    let single_dir = tmp.path().join("single");
    let single = start_node(&bin, &single_dir, &[])?;
    let keys = reference_server::auth::Keys::load(&single_dir)?;
    let token = keys.issue(
        reference_server::domain::OPERATOR,
        reference_server::auth::now_s() + 3600,
    );
    let embedded = measure(
        std::slice::from_ref(&single.base),
        &single.base,
        &token,
        posts,
        rate,
    )
    .await?;
    drop(single);

    // A pool on a private PostgreSQL.
    let cluster = pgcluster::Cluster::start()?;
    cluster.create_database("chat")?;
    cluster.create_database("compliance")?;
    let pool_dir = tmp.path().join("pool");
    let mut pool = Vec::new();
    for i in 0..nodes {
        pool.push(start_node(
            &bin,
            &pool_dir,
            &[
                ("PCHAT_STORE__URL", cluster.url("chat")),
                ("PCHAT_STORE__COMPLIANCE_URL", cluster.url("compliance")),
                ("PCHAT_STORE__NODE", format!("node{i}")),
            ],
        )?);
    }
    let keys = reference_server::auth::Keys::load(&pool_dir)?;
    let token = keys.issue(
        reference_server::domain::OPERATOR,
        reference_server::auth::now_s() + 3600,
    );
    let bases: Vec<String> = pool.iter().map(|n| n.base.clone()).collect();
    let pooled = measure(&bases, &bases[0], &token, posts, rate).await?;
    drop(pool);

    println!("Command: `cargo run --release -p reference-server --example cross_node_latency -- {posts} {rate} {nodes}`\n");
    println!(
        "{posts} posts at {rate}/s over {ROOMS} rooms; one reader per node joined to every room; \
         latency from the post's intended send time to arrival, in ms.\n"
    );
    println!("| deliveries | n | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|");
    println!("{}", row("one node, embedded store", &embedded.same));
    println!(
        "{}",
        row(&format!("pool of {nodes}, same node"), &pooled.same)
    );
    println!(
        "{}",
        row(&format!("pool of {nodes}, cross-node"), &pooled.cross)
    );
    Ok(())
}
