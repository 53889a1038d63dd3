//! `cargo xtask fanout`: how fast one node fans a message out to every
//! endpoint of one large room, the delivery that dominates the vendor's
//! model (its large rooms hold 16,000 users; scaled to 20,000 users, three
//! large rooms of about 13,000 users and 20,000 endpoints each).
//!
//! Starts a release server (optionally with stream workers), provisions
//! users with two endpoints each in one open room, connects every endpoint
//! from client processes of `idle-memory`'s worker (one process holds at
//! most its open-file limit of sockets), then posts `--posts` messages at a
//! fixed interval. Each message carries its intended send time; every
//! client records each arrival's latency from that time into an
//! HdrHistogram, and the histograms are merged exactly. Prints the latency
//! percentiles, whether every endpoint got every message, and the CPU the
//! server and the clients used while posting, per delivery.

use std::io::{BufRead, BufReader, Write};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::idle_memory::{spawn_worker, unix_ns, Deliveries, WorkerEndpoint, WorkerSpec};
use crate::server::ServerProcess;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Endpoints joined to the room (two per user).
    #[arg(long, default_value_t = 20_000)]
    pub endpoints: usize,
    /// The server's stream worker processes (`stream.workers`).
    #[arg(long, default_value_t = 2)]
    pub stream_workers: usize,
    /// Messages posted into the room.
    #[arg(long, default_value_t = 20)]
    pub posts: usize,
    /// Time between two posts, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Client processes holding the endpoints (default: 15,000 a process).
    #[arg(long)]
    pub clients: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.endpoints < 2 || args.posts == 0 {
        bail!("--endpoints must be at least 2 and --posts at least 1");
    }
    loadgen::net::raise_fd_limit();
    let workers = args.stream_workers.to_string();
    let server = ServerProcess::start_release(&[("PCHAT_STREAM__WORKERS", &workers)])?;
    let rt = tokio::runtime::Runtime::new()?;
    let users = args.endpoints / 2;
    eprintln!("provisioning {users} users in one open room");
    let tokens = rt.block_on(crate::idle_memory::provision(&server, users, 1))?;
    let plan: Vec<WorkerEndpoint> = tokens
        .iter()
        .flat_map(|t| ["e0", "e1"].map(|e| WorkerEndpoint::new(t.clone(), e.to_owned(), 1)))
        .collect();
    let clients = args
        .clients
        .unwrap_or_else(|| plan.len().div_ceil(15_000))
        .max(1);
    let mut procs: Vec<Child> = Vec::new();
    let mut first_index = 0;
    let started = Instant::now();
    for chunk in plan.chunks(plan.len().div_ceil(clients)) {
        procs.push(spawn_worker(&WorkerSpec {
            base: server.base.clone(),
            endpoints: chunk.to_vec(),
            first_index,
            measure: true,
        })?);
        first_index += chunk.len();
    }
    eprintln!(
        "{} endpoints connected and joined in {:.1} s from {} client process(es)",
        plan.len(),
        started.elapsed().as_secs_f64(),
        procs.len()
    );
    // Let the joins' work settle before measuring.
    std::thread::sleep(Duration::from_secs(3));

    let client_pids: Vec<u32> = procs.iter().map(Child::id).collect();
    let mut server_cpu = loadgen::procfs::CpuSampler::trees(vec![server.pid()]);
    let mut client_cpu = loadgen::procfs::CpuSampler::new(client_pids);
    let posting = Instant::now();
    let poster = server.admin_client().as_token(tokens[0].clone());
    let interval = Duration::from_millis(args.interval_ms);
    let t0 = unix_ns() + 200_000_000;
    let start = Instant::now() + Duration::from_millis(200);
    rt.block_on(async {
        for k in 0..args.posts {
            let intended = start + interval * k as u32;
            tokio::time::sleep_until(intended.into()).await;
            let sent_ns = t0 + (interval * k as u32).as_nanos() as u64;
            poster
                .post_message(
                    1,
                    &pchat_protocol::PostMessage {
                        text: format!("fanout {sent_ns}"),
                        kind: None,
                        title: None,
                        client_key: None,
                    },
                )
                .await
                .context("post")?;
        }
        anyhow::Ok(())
    })?;
    // The last fan-out's deliveries arrive within this grace.
    std::thread::sleep(Duration::from_secs(5));
    let elapsed = posting.elapsed().as_secs_f64();
    let server_pct = server_cpu.sample();
    let client_pct = client_cpu.sample();

    let mut all = Deliveries::default();
    for p in &mut procs {
        let stdin = p.stdin.as_mut().context("worker stdin")?;
        writeln!(stdin, "report")?;
        stdin.flush()?;
        let mut line = String::new();
        BufReader::new(p.stdout.as_mut().context("worker stdout")?).read_line(&mut line)?;
        all.absorb(serde_json::from_str(&line).context("a worker's report")?);
    }
    for mut p in procs {
        drop(p.stdin.take());
        let _ = p.wait();
    }
    drop(server);

    let h = &all.latency.0;
    let expected = (args.posts * plan.len()) as u64;
    let short = all.short_of(args.posts as u64);
    println!(
        "Command: `cargo xtask fanout --endpoints {} --stream-workers {} --posts {} --interval-ms {}`\n",
        args.endpoints, args.stream_workers, args.posts, args.interval_ms
    );
    println!("Machine: {}\n", crate::util::machine_summary());
    println!(
        "| endpoints | stream workers | deliveries | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | \
         server CPU µs/delivery | client CPU µs/delivery |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} of {} | {} | {:.1} | {:.1} |",
        plan.len(),
        args.stream_workers,
        h.len(),
        expected,
        all.latency_cells(),
        all.cpu_us_each(server_pct, elapsed),
        all.cpu_us_each(client_pct, elapsed),
    );
    all.print_read_and_arrival();
    if h.len() != expected || short > 0 {
        bail!(
            "{} of {expected} deliveries arrived; {short} endpoint(s) missed messages",
            h.len()
        );
    }
    Ok(())
}
