//! The request/response operations of the steady state, run by goose.
//!
//! goose holds a fixed set of worker users. Each worker repeatedly takes the
//! next operation of the shared schedule, sleeps until its intended time and
//! performs it through goose's request API (so goose's own metrics and report
//! list every HTTP operation). Latency goes into the run's HdrHistograms from
//! the intended time: when all workers are busy because the server is slow,
//! the operations that wait count that wait (no coordinated omission).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use goose::prelude::*;
use serde_json::{json, Value};

use crate::endpoints::{post_text, record_join, record_leave, Endpoint, PostTimes};
use crate::record::Recorder;
use crate::retry::{self, Backoff, Failure};
use crate::schedule::{Op, OpKind};
use crate::workload::Workload;

/// Everything the goose workers share for one steady state.
pub struct Shared {
    pub ops: Vec<Op>,
    pub next: AtomicUsize,
    /// When the steady state starts: op times are offsets from it.
    pub start: Instant,
    pub end: Instant,
    pub workload: Arc<Workload>,
    pub tokens: Arc<Vec<String>>,
    pub room_ids: Arc<Vec<u64>>,
    /// Base URLs of the target's nodes: user u's requests go to
    /// `nodes[u % nodes.len()]`.
    pub nodes: Arc<Vec<String>>,
    /// Which nodes answer; picks each user's node (see `NodeHealth`).
    pub health: Arc<crate::endpoints::NodeHealth>,
    /// Endpoints by user: `endpoints[user][index]`.
    pub endpoints: Arc<Vec<Vec<Arc<Endpoint>>>>,
    pub recorder: Arc<Recorder>,
    pub posts: Arc<PostTimes>,
    /// Acknowledged posts: (room index, seq, post number).
    pub acks: Arc<Mutex<Vec<(u32, u64, u32)>>>,
    /// Largest lateness of an operation's start behind its intended time (µs).
    pub lag_max_us: AtomicU64,
    /// The run's seed, from which every operation's waits are drawn.
    pub seed: u64,
}

/// goose transactions are plain functions, so the current step's shared state
/// lives here. One attack runs at a time in a process (goose's killswitch and
/// Ctrl-C handler are process-global too).
static SHARED: OnceLock<Mutex<Option<Arc<Shared>>>> = OnceLock::new();

fn shared() -> Option<Arc<Shared>> {
    SHARED
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Runs the schedule with `workers` goose users and returns goose's metrics.
pub async fn run(
    state: Arc<Shared>,
    base: &str,
    workers: usize,
    report_file: Option<&std::path::Path>,
) -> anyhow::Result<goose::metrics::GooseMetrics> {
    *SHARED
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(state.clone());
    // Rounded up: a run cut short would drop the schedule's last operations.
    let run_s = (state
        .end
        .saturating_duration_since(Instant::now())
        .as_secs_f64()
        .ceil() as u64)
        .max(1)
        .to_string();
    let workers_s = workers.to_string();
    let mut args = vec![
        "--host",
        base,
        "--users",
        &workers_s,
        "--increase-rate",
        &workers_s,
        "--run-time",
        &run_s,
        "--no-reset-metrics",
        "--no-telnet",
        "--quiet",
        "--no-print-metrics",
    ];
    let report = report_file.map(|p| p.to_string_lossy().into_owned());
    if let Some(r) = &report {
        args.extend(["--report-file", r.as_str()]);
    }
    let config = goose::config::GooseConfiguration::parse_args_default(&args)
        .map_err(|e| anyhow::anyhow!("goose configuration: {e}"))?;
    let metrics = GooseAttack::initialize_with_config(config)
        .map_err(|e| anyhow::anyhow!("goose: {e}"))?
        .set_scheduler(GooseScheduler::RoundRobin)
        .register_scenario(
            scenario!("chat")
                .register_transaction(transaction!(next_operation).set_name("operation")),
        )
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("goose attack: {e}"))?;
    *SHARED
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = None;
    Ok(metrics)
}

/// One goose transaction: the next scheduled operation, at its time.
async fn next_operation(user: &mut GooseUser) -> TransactionResult {
    let Some(s) = shared() else {
        return Ok(());
    };
    let i = s.next.fetch_add(1, Ordering::Relaxed);
    let Some(op) = s.ops.get(i) else {
        // Schedule done: idle until the attack ends, in short naps so goose
        // notices its end between transactions.
        tokio::time::sleep(Duration::from_millis(200)).await;
        return Ok(());
    };
    let intended = s.start + Duration::from_millis(op.at_ms);
    tokio::time::sleep_until(intended.into()).await;
    let lag = Instant::now()
        .saturating_duration_since(intended)
        .as_micros() as u64;
    s.lag_max_us.fetch_max(lag, Ordering::Relaxed);
    let name = op.kind.name();
    // The operation's own draws: the same seed waits the same way.
    let mut cx = Attempts {
        op: name,
        backoff: Backoff::new(retry::seed(s.seed, retry::kind::OPERATION, i as u64)),
    };
    match perform(user, &s, op, &mut cx).await {
        Ok(()) => {
            let us = intended.elapsed().as_micros() as u64;
            s.recorder.ok(name, us);
        }
        Err(code) => s.recorder.failed(name, &code),
    }
    Ok(())
}

/// The tally of acknowledged posts into a class of room.
pub fn posted_to(class: scenarios::plan::Class) -> &'static str {
    match class {
        scenarios::plan::Class::Small => "posted:small",
        scenarios::plan::Class::Medium => "posted:medium",
        scenarios::plan::Class::Large => "posted:large",
    }
}

/// Refusals (busy, rate limited) one operation honours before it fails.
const MAX_REFUSALS: u32 = 6;

/// What one operation's requests share: its name, under which retried
/// attempts are counted, and its waits.
struct Attempts {
    op: &'static str,
    backoff: Backoff,
}

/// One request of an operation.
struct Request<'a> {
    /// The simulated user sending it.
    u: u32,
    method: GooseMethod,
    path: &'a str,
    /// goose's name of the request.
    name: &'static str,
    token: &'a str,
    body: Option<Value>,
    expect: u16,
}

/// Sends one request through goose to user `u`'s node; answers the body on
/// the expected status, else the protocol error code (or `http:<status>` /
/// `timeout` / `io`). As a client of a pool would: a node that cannot be
/// reached is marked down and the request goes to the next node not found
/// down by this operation; a refusal
/// (503 busy, 429) is asked again after its `Retry-After` plus jitter, up to
/// [`MAX_REFUSALS`] times. Those attempts are counted as retried; only the
/// final failure is the operation's error.
async fn call(
    user: &mut GooseUser,
    s: &Shared,
    cx: &mut Attempts,
    req: Request<'_>,
) -> Result<Option<Value>, String> {
    let mut refusals = 0;
    // The nodes this operation found unreachable: each is tried once.
    let mut unreachable: Vec<usize> = Vec::new();
    loop {
        let node = s.health.pick(req.u as usize);
        let failure = match call_node(user, s, node, &req).await {
            Ok(v) => return Ok(v),
            Err(f) => f,
        };
        if failure.code == "io" && s.nodes.len() > 1 {
            s.health.mark_down(node);
            unreachable.push(node);
            // A lost site takes several nodes at once: on to the next one
            // not yet found down (a backup pool's, after a failover).
            if !unreachable.contains(&s.health.pick(req.u as usize)) {
                s.recorder.retried(cx.op, "node_down");
                continue;
            }
        }
        if failure.is_refusal() && refusals < MAX_REFUSALS {
            refusals += 1;
            s.recorder.retried(cx.op, &failure.code);
            tokio::time::sleep(cx.backoff.after_refusal(failure.retry_after)).await;
            continue;
        }
        return Err(failure.code);
    }
}

async fn call_node(
    user: &mut GooseUser,
    s: &Shared,
    node: usize,
    req: &Request<'_>,
) -> Result<Option<Value>, Failure> {
    let url = format!("{}{}", s.nodes[node], req.path);
    let mut rb = user
        .get_request_builder(&req.method, &url)
        .map_err(|_| Failure::new("request"))?
        .bearer_auth(req.token)
        .timeout(Duration::from_secs(30));
    if let Some(b) = &req.body {
        rb = rb.json(b);
    }
    let goose_req = GooseRequest::builder()
        .method(req.method)
        .path(url.as_str())
        .name(req.name)
        .expect_status_code(req.expect)
        .set_request_builder(rb)
        .build();
    let resp = user
        .request(goose_req)
        .await
        .map_err(|_| Failure::new("request"))?;
    let resp = match resp.response {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Err(Failure::new("timeout")),
        Err(_) => return Err(Failure::new("io")),
    };
    let status = resp.status().as_u16();
    let header = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.bytes().await.map_err(|_| Failure::new("io"))?;
    if status != req.expect {
        return Err(Failure::from_answer(status, header.as_deref(), &bytes));
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| Failure::new("bad_json"))
}

async fn perform(
    user: &mut GooseUser,
    s: &Shared,
    op: &Op,
    cx: &mut Attempts,
) -> Result<(), String> {
    let w = &s.workload;
    match op.kind {
        OpKind::Post { room, poster, post } => {
            let room_id = s.room_ids[room as usize];
            // The node this post is meant for; a retry that moves to
            // another (its node went down) keeps the text, and its
            // deliveries count as crossing from the first.
            let node = s.health.pick(poster as usize);
            let body = json!({
                "text": post_text(post, post % crate::schedule::SEARCH_TERMS, node),
                "client_key": format!("{}p{post}", w.namespace),
            });
            let req = Request {
                u: poster,
                method: GooseMethod::Post,
                path: &format!("/v1/rooms/{room_id}/messages"),
                name: "post message",
                token: &s.tokens[poster as usize],
                body: Some(body),
                expect: 201,
            };
            let v = call(user, s, cx, req).await?.ok_or("bad_json")?;
            let seq = v["seq"].as_u64().ok_or("bad_json")?;
            s.acks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((room, seq, post));
            // Which class of room it went to: a window without a large
            // room's post has not seen the model's largest fan-out.
            s.recorder.tally(posted_to(w.rooms[room as usize].class));
            Ok(())
        }
        OpKind::Rejoin {
            user: u,
            endpoint,
            room,
        } => {
            let ep = s.endpoints[u as usize][endpoint as usize].clone();
            let room_id = s.room_ids[room as usize];
            let token = &s.tokens[u as usize];
            let leave = Request {
                u,
                method: GooseMethod::Post,
                path: &format!("/v1/rooms/{room_id}/leave"),
                name: "leave room",
                token,
                body: Some(json!({ "endpoint": ep.name })),
                expect: 204,
            };
            call(user, s, cx, leave).await?;
            record_leave(&ep, room);
            let since = ep.log().rooms.get(&room).map(|v| v.max_seen).unwrap_or(0);
            let join = Request {
                u,
                method: GooseMethod::Post,
                path: &format!("/v1/rooms/{room_id}/join"),
                name: "join room",
                token,
                body: Some(json!({ "endpoint": ep.name, "since": since })),
                expect: 200,
            };
            let v = call(user, s, cx, join).await?.ok_or("bad_json")?;
            let last = v["last_seq"].as_u64().ok_or("bad_json")?;
            let history: Vec<u64> = v["messages"]
                .as_array()
                .map(|a| a.iter().filter_map(|m| m["seq"].as_u64()).collect())
                .unwrap_or_default();
            record_join(&ep, room, last, &history);
            Ok(())
        }
        OpKind::Participants { user: u, room } => {
            let room_id = s.room_ids[room as usize];
            let req = Request {
                u,
                method: GooseMethod::Get,
                path: &format!("/v1/rooms/{room_id}/participants?limit=25"),
                name: "participants",
                token: &s.tokens[u as usize],
                body: None,
                expect: 200,
            };
            call(user, s, cx, req).await.map(drop)
        }
        OpKind::Presence { user: u, state } => {
            let req = Request {
                u,
                method: GooseMethod::Put,
                path: "/v1/me/presence",
                name: "presence",
                token: &s.tokens[u as usize],
                body: Some(json!({ "state": state })),
                expect: 200,
            };
            call(user, s, cx, req).await.map(drop)
        }
        OpKind::History { user: u, room } => {
            let room_id = s.room_ids[room as usize];
            let req = Request {
                u,
                method: GooseMethod::Get,
                path: &format!("/v1/rooms/{room_id}/messages?limit=50"),
                name: "history",
                token: &s.tokens[u as usize],
                body: None,
                expect: 200,
            };
            call(user, s, cx, req).await.map(drop)
        }
        OpKind::Search { user: u, term } => {
            let req = Request {
                u,
                method: GooseMethod::Get,
                path: &format!("/v1/search/messages?q=w{term}&limit=20"),
                name: "search",
                token: &s.tokens[u as usize],
                body: None,
                expect: 200,
            };
            call(user, s, cx, req).await.map(drop)
        }
    }
}
