//! `cargo xtask idle-memory`: the reference server's resident memory per idle
//! connected endpoint.
//!
//! Starts a release build of the server on a fresh data directory, provisions
//! users and open rooms, then opens idle event streams in batches from worker
//! processes (one process may hold at most ~20,000 open files here, so the
//! clients are spread over several), each endpoint joined to one room. After
//! every batch it waits for the server's RSS to settle and records it. The
//! figure is the least-squares slope of RSS against endpoints, and the
//! end-to-end difference divided by the endpoint count.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::server::ServerProcess;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Idle endpoints to connect in all. The server process may hold at most
    /// its hard open-file limit of sockets (20,000 on these machines).
    #[arg(long, default_value_t = 19_000)]
    pub endpoints: usize,
    /// Batches (one client worker process each), measured after each.
    #[arg(long, default_value_t = 4)]
    pub batches: usize,
    /// Where the Markdown and JSON results go.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
}

/// One measurement point.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Point {
    endpoints: usize,
    server_rss_bytes: u64,
}

/// The machine-readable result written beside the Markdown.
#[derive(Serialize, Deserialize, Debug)]
struct IdleMemory {
    measured_at: String,
    machine: String,
    command: String,
    users: usize,
    rooms: usize,
    endpoints: usize,
    generator_fd_limit: String,
    points: Vec<Point>,
    slope_bytes_per_endpoint: f64,
    delta_bytes_per_endpoint: f64,
    target_bytes_per_endpoint: u64,
    holds: bool,
}

/// The target: at most 16 KiB per idle endpoint.
const TARGET: u64 = 16 * 1024;

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.endpoints == 0 || args.batches == 0 {
        bail!("--endpoints and --batches must be at least 1");
    }
    let (soft, hard) = loadgen::net::raise_fd_limit();
    let server = ServerProcess::start_release(&[])?;
    let rt = tokio::runtime::Runtime::new()?;
    // 1.5 endpoints per user as in the vendor's model: the first half of the
    // users have two endpoints, the rest one.
    let users = (args.endpoints * 2).div_ceil(3);
    let rooms = users.div_ceil(20).max(1);
    eprintln!("provisioning {users} users and {rooms} open rooms");
    let tokens = rt.block_on(provision(&server, users, rooms))?;
    let mut plan = Vec::with_capacity(args.endpoints);
    let mut u = 0;
    while plan.len() < args.endpoints {
        let two = plan.len() + 2 <= args.endpoints && u < users - users / 3;
        for e in 0..if two { 2 } else { 1 } {
            plan.push(WorkerEndpoint {
                token: tokens[u % users].clone(),
                endpoint: format!("e{e}"),
                room: (u % rooms) as u64 + 1,
            });
        }
        u += 1;
    }

    std::thread::sleep(Duration::from_secs(2));
    let mut points = vec![Point {
        endpoints: 0,
        server_rss_bytes: settle(server.pid()),
    }];
    eprintln!("baseline RSS {} MiB", points[0].server_rss_bytes >> 20);
    let per_batch = args.endpoints.div_ceil(args.batches);
    let mut workers: Vec<Child> = Vec::new();
    let mut connected = 0;
    for (i, chunk) in plan.chunks(per_batch).enumerate() {
        let spec = WorkerSpec {
            base: server.base.clone(),
            endpoints: chunk.to_vec(),
            first_index: connected,
            measure: false,
        };
        let started = Instant::now();
        let worker = spawn_worker(&spec)?;
        workers.push(worker);
        connected += chunk.len();
        let rss = settle(server.pid());
        eprintln!(
            "batch {}: {connected} endpoints in {:.1} s, server RSS {} MiB",
            i + 1,
            started.elapsed().as_secs_f64(),
            rss >> 20
        );
        points.push(Point {
            endpoints: connected,
            server_rss_bytes: rss,
        });
    }
    for mut w in workers {
        // Closing its stdin tells a worker to exit.
        drop(w.stdin.take());
        let _ = w.wait();
    }
    drop(server);

    let slope = slope(&points);
    let first = points.first().expect("baseline point");
    let last = points.last().expect("at least one batch");
    let delta = (last.server_rss_bytes as f64 - first.server_rss_bytes as f64)
        / last.endpoints.max(1) as f64;
    let result = IdleMemory {
        measured_at: crate::util::now_rfc3339(),
        machine: crate::util::machine_summary(),
        command: format!(
            "cargo xtask idle-memory --endpoints {} --batches {}",
            args.endpoints, args.batches
        ),
        users,
        rooms,
        endpoints: args.endpoints,
        generator_fd_limit: format!("soft {soft}, hard {hard}"),
        points,
        slope_bytes_per_endpoint: slope,
        delta_bytes_per_endpoint: delta,
        target_bytes_per_endpoint: TARGET,
        holds: slope <= TARGET as f64 && delta <= TARGET as f64,
    };
    write_report(&args.out, &result)?;
    println!(
        "idle endpoint cost: {:.1} KiB (slope), {:.1} KiB (end-to-end); target {} KiB: {}",
        slope / 1024.0,
        delta / 1024.0,
        TARGET / 1024,
        if result.holds {
            "holds"
        } else {
            "does not hold"
        }
    );
    Ok(())
}

/// Waits until the server's RSS stops growing (two readings a second apart
/// within 256 KiB), at most 15 s, and returns it.
fn settle(pid: u32) -> u64 {
    let mut last = loadgen::procfs::rss_bytes(pid).unwrap_or(0);
    for _ in 0..15 {
        std::thread::sleep(Duration::from_secs(1));
        let now = loadgen::procfs::rss_bytes(pid).unwrap_or(0);
        if now.abs_diff(last) < 256 * 1024 {
            return now;
        }
        last = now;
    }
    last
}

/// Least-squares slope of RSS against endpoints, in bytes per endpoint.
fn slope(points: &[Point]) -> f64 {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.endpoints as f64).sum::<f64>() / n;
    let my = points
        .iter()
        .map(|p| p.server_rss_bytes as f64)
        .sum::<f64>()
        / n;
    let (mut num, mut den) = (0.0, 0.0);
    for p in points {
        let dx = p.endpoints as f64 - mx;
        num += dx * (p.server_rss_bytes as f64 - my);
        den += dx * dx;
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

pub async fn provision(
    server: &ServerProcess,
    users: usize,
    rooms: usize,
) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = (0..users).map(|i| format!("idle{i:05}")).collect();
    let doc = json!({
        "global_policy_enabled": true,
        "users": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
        "categories": [{"name": "idle"}],
        "rooms": (0..rooms).map(|r| json!({
            "name": format!("idle-room-{r}"), "category": "idle", "privacy": "open"
        })).collect::<Vec<_>>(),
    });
    let admin = server.admin_client();
    let _: serde_json::Value = admin
        .post("/v1/admin/provision", &doc)
        .await
        .context("provision")?;
    loadgen::tokens(&admin, &names).await
}

/// What one worker process connects.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WorkerEndpoint {
    token: String,
    endpoint: String,
    room: u64,
}

impl WorkerEndpoint {
    pub fn new(token: String, endpoint: String, room: u64) -> WorkerEndpoint {
        WorkerEndpoint {
            token,
            endpoint,
            room,
        }
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub struct WorkerSpec {
    pub base: String,
    pub endpoints: Vec<WorkerEndpoint>,
    /// Index of the first endpoint overall, for spreading source addresses.
    pub first_index: usize,
    /// Record the latency of every message whose text is
    /// `fanout <unix ns of its intended send time>` (`cargo xtask fanout`);
    /// on a line `report` on stdin, print them as one line of JSON
    /// ([`Deliveries`]).
    #[serde(default)]
    pub measure: bool,
}

/// What a measuring worker received.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct Deliveries {
    /// Latency from the intended send time to the client's read, in
    /// microseconds.
    pub latency: loadgen::record::Hist,
    /// Latency from the intended send time to the kernel's receive stamp
    /// of the read that completed the message ([`loadgen::stamp`]), in
    /// microseconds; empty where the client does not stamp.
    #[serde(default)]
    pub arrival: loadgen::record::Hist,
    /// Messages received, per endpoint (in the spec's order).
    pub per_endpoint: Vec<u64>,
}

impl Deliveries {
    /// Adds another process's report (its histogram merged exactly, its
    /// endpoints after ours).
    pub fn absorb(&mut self, part: Deliveries) {
        self.latency.merge(&part.latency);
        self.arrival.merge(&part.arrival);
        self.per_endpoint.extend(part.per_endpoint);
    }

    /// One message to endpoint `i`, sent (intended) at `sent_ns` and read
    /// at `read_ns`; `arrived_ns` is the kernel's receive stamp of the read
    /// that completed it, if it had one (all nanoseconds since the epoch).
    pub fn record(&mut self, i: usize, sent_ns: u64, read_ns: u64, arrived_ns: Option<u64>) {
        let us = |at: u64| (at.saturating_sub(sent_ns) / 1000).max(1);
        self.latency.0.saturating_record(us(read_ns));
        if let Some(at) = arrived_ns {
            self.arrival.0.saturating_record(us(at));
        }
        self.per_endpoint[i] += 1;
    }

    /// Endpoints that received fewer than `n` messages.
    pub fn short_of(&self, n: u64) -> usize {
        self.per_endpoint.iter().filter(|got| **got < n).count()
    }

    /// The latency cells of a fan-out table row: p50, p90, p99, p99.9 and
    /// max, in milliseconds.
    pub fn latency_cells(&self) -> String {
        cells(&self.latency)
    }

    /// The latency at the clients' reads beside the latency at arrival on
    /// their sockets (the kernel's receive stamps), as a table: the
    /// difference is how long messages waited for the clients themselves.
    pub fn print_read_and_arrival(&self) {
        if self.arrival.0.is_empty() {
            return;
        }
        println!("\n| measured at | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |");
        println!("|---|---:|---:|---:|---:|---:|");
        println!("| the client's read | {} |", self.latency_cells());
        println!(
            "| arrival on the client's socket (kernel receive stamp) | {} |",
            cells(&self.arrival)
        );
    }

    /// CPU of `pct` percent of one core over `elapsed_s` seconds, in
    /// microseconds per recorded delivery.
    pub fn cpu_us_each(&self, pct: f64, elapsed_s: f64) -> f64 {
        pct / 100.0 * elapsed_s * 1e6 / self.latency.0.len().max(1) as f64
    }
}

/// p50, p90, p99, p99.9 and max of `h`, in milliseconds, as table cells.
fn cells(h: &loadgen::record::Hist) -> String {
    let h = &h.0;
    let ms = |us: u64| us as f64 / 1000.0;
    [0.5, 0.9, 0.99, 0.999]
        .map(|q| ms(h.value_at_quantile(q)))
        .into_iter()
        .chain([ms(h.max())])
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(" | ")
}

pub fn spawn_worker(spec: &WorkerSpec) -> anyhow::Result<Child> {
    let file = tempfile::NamedTempFile::new()?;
    serde_json::to_writer(&file, spec)?;
    let (_, path) = file.keep()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["idle-worker", "--spec"])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start an idle-worker process")?;
    // The worker writes nothing after this line until it is asked to, so
    // the reader takes no more than the line and stdout stays usable.
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let _ = std::fs::remove_file(&path);
    if !line.starts_with("connected") {
        bail!("idle worker failed: {line:?}");
    }
    Ok(child)
}

/// The worker process: joins and connects its endpoints, says `connected N`
/// on stdout, keeps the streams open (answering pings) until stdin closes.
pub fn worker(spec: &Path) -> anyhow::Result<()> {
    let spec: WorkerSpec = serde_json::from_slice(&std::fs::read(spec)?)?;
    loadgen::net::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dest = loadgen::net::resolve(&spec.base).await?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(16)
            .build()?;
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = Vec::new();
        for (i, ep) in spec.endpoints.into_iter().enumerate() {
            let permit = sem.clone().acquire_owned().await?;
            let http = http.clone();
            let base = spec.base.clone();
            let index = spec.first_index + i;
            tasks.push(tokio::spawn(async move {
                let client = pchat_protocol::client::Client::with_http(http, base.clone())
                    .as_token(ep.token.clone());
                client
                    .join(ep.room, &ep.endpoint, None)
                    .await
                    .context("join")?;
                let source = loadgen::net::source_for(dest.ip(), index);
                let ws = loadgen::net::connect_stream(
                    &base,
                    dest,
                    &ep.token,
                    &ep.endpoint,
                    &[],
                    false,
                    source,
                )
                .await?;
                drop(permit);
                anyhow::Ok(ws)
            }));
        }
        let mut streams = Vec::with_capacity(tasks.len());
        for t in tasks {
            streams.push(t.await??);
        }
        println!("connected {}", streams.len());
        std::io::stdout().flush()?;
        // Read every stream so pings are answered; stop when stdin closes.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Deliveries {
            per_endpoint: vec![0; streams.len()],
            ..Deliveries::default()
        }));
        for (i, mut ws) in streams.into_iter().enumerate() {
            let seen = seen.clone();
            let measure = spec.measure;
            tokio::spawn(async move {
                while let Some(Ok(frame)) = ws.next().await {
                    let loadgen::ws::Frame::Text { text, arrived_ns } = frame else {
                        continue;
                    };
                    if !measure {
                        continue;
                    }
                    if let Some(sent_ns) = fanout_sent_ns(text) {
                        let read_ns = unix_ns();
                        let arrived_ns = Some(arrived_ns).filter(|&ns| ns > 0);
                        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                        seen.record(i, sent_ns, read_ns, arrived_ns);
                    }
                }
            });
        }
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut buf = String::new();
        while tokio::io::AsyncBufReadExt::read_line(&mut stdin, &mut buf).await? > 0 {
            if buf.trim() == "report" {
                let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                println!("{}", serde_json::to_string(&*seen)?);
                std::io::stdout().flush()?;
            }
            buf.clear();
        }
        anyhow::Ok(())
    })
}

/// Nanoseconds since the UNIX epoch.
pub use loadgen::stamp::unix_ns;

/// The intended send time of a `cargo xtask fanout` message frame.
fn fanout_sent_ns(frame: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(borrow)]
        text: Option<&'a str>,
    }
    let f: Frame<'_> = serde_json::from_str(frame).ok()?;
    (f.kind == "message")
        .then_some(f.text?)
        .and_then(|t| t.strip_prefix("fanout "))
        .and_then(|n| n.parse().ok())
}

fn write_report(dir: &Path, r: &IdleMemory) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("idle-memory.json"),
        serde_json::to_string_pretty(r)? + "\n",
    )?;
    let mut md = String::new();
    md.push_str("# Idle endpoint memory of the reference server\n\n");
    md.push_str(&format!(
        "Resident memory the reference server needs per idle connected endpoint \
         (an event stream joined to one open room, nothing flowing but heartbeats). \
         Target: at most {} KiB per endpoint. Result: **{:.1} KiB per endpoint** \
         (least-squares slope over the batches; {:.1} KiB end to end): the target \
         **{}**.\n\n",
        r.target_bytes_per_endpoint / 1024,
        r.slope_bytes_per_endpoint / 1024.0,
        r.delta_bytes_per_endpoint / 1024.0,
        if r.holds { "holds" } else { "does not hold" },
    ));
    md.push_str(&format!(
        "- measured: {}\n- machine: {}\n- command: `{}`\n- deployment: {} users \
         (1.5 endpoints per user), {} open rooms, release build, SQLite store\n\n",
        r.measured_at, r.machine, r.command, r.users, r.rooms
    ));
    md.push_str("| endpoints | server RSS (MiB) |\n|---:|---:|\n");
    for p in &r.points {
        md.push_str(&format!(
            "| {} | {:.1} |\n",
            p.endpoints,
            p.server_rss_bytes as f64 / 1048576.0
        ));
    }
    md.push_str(
        "\nWhy 19,000 and not 20,000: one process may hold at most 20,000 open files on \
         these machines (hard limit, not raisable), and the server also needs descriptors \
         for its databases, HTTP connections and listener. The per-endpoint figure is a \
         slope, so it does not depend on reaching exactly 20,000.\n\n\
         What an idle endpoint costs in the server: the socket and its kernel buffers \
         (kernel memory, not in RSS), a 1 KiB WebSocket read buffer (configurable: \
         `stream.read_buffer_bytes`), no write buffer (`stream.write_buffer_bytes = 0`), \
         the connection task, the endpoint session, its room subscription and a bounded \
         event queue that allocates only when events wait.\n\n\
         Raw figures: [idle-memory.json](idle-memory.json).\n",
    );
    std::fs::write(dir.join("idle-memory.md"), md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_of_several_processes_add_up() {
        let part = |lat: &[u64], per: Vec<u64>| {
            let mut d = Deliveries {
                per_endpoint: per,
                ..Deliveries::default()
            };
            for us in lat {
                d.latency.0.saturating_record(*us);
            }
            d
        };
        let mut all = Deliveries::default();
        all.absorb(part(&[1_000, 2_000], vec![2, 1]));
        all.absorb(part(&[100_000], vec![2]));
        assert_eq!(all.per_endpoint, vec![2, 1, 2]);
        assert_eq!(all.short_of(2), 1);
        assert_eq!(all.latency.0.len(), 3);
        // p50 is the second of three, p90 and up the slowest.
        assert_eq!(all.latency_cells(), "2.0 | 100.0 | 100.0 | 100.0 | 100.0");
        // 50 % of one core for 3 s is 1.5 s of CPU over 3 deliveries.
        assert!((all.cpu_us_each(50.0, 3.0) - 500_000.0).abs() < 1e-6);
    }

    #[test]
    fn a_message_is_timed_at_its_read_and_at_its_arrival() {
        let mut d = Deliveries {
            per_endpoint: vec![0, 0],
            ..Deliveries::default()
        };
        let sent = 1_000_000_000;
        // Read 5 ms after it was due, arrived 2 ms after.
        d.record(1, sent, sent + 5_000_000, Some(sent + 2_000_000));
        // No stamp: timed at the read only.
        d.record(1, sent, sent + 7_000_000, None);
        assert_eq!(d.per_endpoint, vec![0, 2]);
        assert_eq!(d.latency.0.len(), 2);
        assert_eq!(d.arrival.0.len(), 1);
        // (Equal within the histogram's precision.)
        assert!(d.arrival.0.equivalent(d.arrival.0.max(), 2_000));
        assert!(d
            .latency
            .0
            .equivalent(d.latency.0.value_at_quantile(0.5), 5_000));
        assert!(d.latency.0.equivalent(d.latency.0.max(), 7_000));
    }

    #[test]
    fn slope_of_a_straight_line_is_its_gradient() {
        let pts: Vec<Point> = (0..5)
            .map(|i| Point {
                endpoints: i * 1000,
                server_rss_bytes: 50_000_000 + (i as u64) * 1000 * 12_000,
            })
            .collect();
        assert!((slope(&pts) - 12_000.0).abs() < 1e-6);
    }
}
