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
    match perform(user, &s, op).await {
        Ok(()) => {
            let us = intended.elapsed().as_micros() as u64;
            s.recorder.ok(name, us);
        }
        Err(code) => s.recorder.failed(name, &code),
    }
    Ok(())
}

/// Sends one request through goose to user `u`'s node; answers the body on
/// the expected status, else the protocol error code (or `http:<status>` /
/// `timeout` / `io`). A node that cannot be reached is marked down and the
/// request goes once more to the next node, as a client of a pool would.
#[allow(clippy::too_many_arguments)]
async fn call(
    user: &mut GooseUser,
    s: &Shared,
    u: u32,
    method: GooseMethod,
    path: &str,
    name: &'static str,
    token: &str,
    body: Option<Value>,
    expect: u16,
) -> Result<Option<Value>, String> {
    let node = s.health.pick(u as usize);
    match call_node(
        user,
        s,
        node,
        method,
        path,
        name,
        token,
        body.clone(),
        expect,
    )
    .await
    {
        Err(e) if e == "io" && s.nodes.len() > 1 => {
            s.health.mark_down(node);
            let next = s.health.pick(u as usize);
            if next == node {
                return Err(e);
            }
            call_node(user, s, next, method, path, name, token, body, expect).await
        }
        other => other,
    }
}

#[allow(clippy::too_many_arguments)]
async fn call_node(
    user: &mut GooseUser,
    s: &Shared,
    node: usize,
    method: GooseMethod,
    path: &str,
    name: &'static str,
    token: &str,
    body: Option<Value>,
    expect: u16,
) -> Result<Option<Value>, String> {
    let url = format!("{}{path}", s.nodes[node]);
    let mut rb = user
        .get_request_builder(&method, &url)
        .map_err(|_| "request".to_owned())?
        .bearer_auth(token)
        .timeout(Duration::from_secs(30));
    if let Some(b) = &body {
        rb = rb.json(b);
    }
    let req = GooseRequest::builder()
        .method(method)
        .path(url.as_str())
        .name(name)
        .expect_status_code(expect)
        .set_request_builder(rb)
        .build();
    let resp = user.request(req).await.map_err(|_| "request".to_owned())?;
    let resp = match resp.response {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Err("timeout".into()),
        Err(_) => return Err("io".into()),
    };
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|_| "io".to_owned())?;
    if status != expect {
        let code = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("http:{status}"));
        return Err(code);
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| "bad_json".to_owned())
}

async fn perform(user: &mut GooseUser, s: &Shared, op: &Op) -> Result<(), String> {
    let w = &s.workload;
    match op.kind {
        OpKind::Post { room, poster, post } => {
            let room_id = s.room_ids[room as usize];
            let body = json!({
                "text": post_text(post, post % crate::schedule::SEARCH_TERMS),
                "client_key": format!("{}p{post}", w.namespace),
            });
            let v = call(
                user,
                s,
                poster,
                GooseMethod::Post,
                &format!("/v1/rooms/{room_id}/messages"),
                "post message",
                &s.tokens[poster as usize],
                Some(body),
                201,
            )
            .await?
            .ok_or("bad_json")?;
            let seq = v["seq"].as_u64().ok_or("bad_json")?;
            s.acks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((room, seq, post));
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
            call(
                user,
                s,
                u,
                GooseMethod::Post,
                &format!("/v1/rooms/{room_id}/leave"),
                "leave room",
                token,
                Some(json!({ "endpoint": ep.name })),
                204,
            )
            .await?;
            record_leave(&ep, room);
            let since = ep.log().rooms.get(&room).map(|v| v.max_seen).unwrap_or(0);
            let v = call(
                user,
                s,
                u,
                GooseMethod::Post,
                &format!("/v1/rooms/{room_id}/join"),
                "join room",
                token,
                Some(json!({ "endpoint": ep.name, "since": since })),
                200,
            )
            .await?
            .ok_or("bad_json")?;
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
            call(
                user,
                s,
                u,
                GooseMethod::Get,
                &format!("/v1/rooms/{room_id}/participants?limit=25"),
                "participants",
                &s.tokens[u as usize],
                None,
                200,
            )
            .await
            .map(drop)
        }
        OpKind::Presence { user: u, state } => call(
            user,
            s,
            u,
            GooseMethod::Put,
            "/v1/me/presence",
            "presence",
            &s.tokens[u as usize],
            Some(json!({ "state": state })),
            200,
        )
        .await
        .map(drop),
        OpKind::History { user: u, room } => {
            let room_id = s.room_ids[room as usize];
            call(
                user,
                s,
                u,
                GooseMethod::Get,
                &format!("/v1/rooms/{room_id}/messages?limit=50"),
                "history",
                &s.tokens[u as usize],
                None,
                200,
            )
            .await
            .map(drop)
        }
        OpKind::Search { user: u, term } => call(
            user,
            s,
            u,
            GooseMethod::Get,
            &format!("/v1/search/messages?q=w{term}&limit=20"),
            "search",
            &s.tokens[u as usize],
            None,
            200,
        )
        .await
        .map(drop),
    }
}
