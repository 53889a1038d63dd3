//! Project tasks, run as `cargo xtask <task>`; one module per task.
//!
//! - `sizing-report` ([`sizing`]): runs scenarios and writes sizing reports.
//! - `idle-memory` ([`idle_memory`]): the server's RSS per idle endpoint.
//! - `fanout` ([`fanout`]): delivery latency of one message to every
//!   endpoint of one large room, and its CPU cost.
//! - `loopback-floor` ([`floor`]): the same fan-out over bare loopback
//!   TCP, with no server: what the host's kernel alone costs per delivery.
//! - `server` / `util`: shared helpers (a release server process, tokens).

mod fanout;
mod floor;
mod idle_memory;
mod pool;
mod server;
mod sizing;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "pchat project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run scenarios (default: quick) against a reference server started
    /// here, or --target, and write a sizing report per scenario.
    SizingReport(sizing::Args),
    /// Measure the reference server's resident memory per idle endpoint and
    /// write reports/idle-memory.md.
    IdleMemory(idle_memory::Args),
    /// Measure how fast one node fans messages out to every endpoint of one
    /// large room (latency percentiles, CPU per delivery).
    Fanout(fanout::Args),
    /// Measure the same fan-out over bare loopback TCP sockets, with no
    /// server: the host's floor under `fanout`'s figures.
    LoopbackFloor(floor::Args),
    /// (internal) A sending process of loopback-floor.
    #[command(hide = true)]
    FloorSender {
        #[arg(long)]
        sockets: usize,
    },
    /// (internal) A receiving process of loopback-floor.
    #[command(hide = true)]
    FloorReceiver {
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        sockets: usize,
        #[arg(long)]
        bytes: usize,
    },
    /// (internal) A client worker process of idle-memory.
    #[command(hide = true)]
    IdleWorker {
        #[arg(long)]
        spec: std::path::PathBuf,
    },
    /// (internal) A load generator process of sizing-report: shard K of a
    /// step whose spec is in FILE (see loadgen::shard).
    #[command(hide = true)]
    LoadgenShard {
        #[arg(long)]
        spec: std::path::PathBuf,
        #[arg(long)]
        shard: u32,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::SizingReport(args) => sizing::run(args),
        Task::IdleMemory(args) => idle_memory::run(args),
        Task::Fanout(args) => fanout::run(args),
        Task::LoopbackFloor(args) => floor::run(args),
        Task::FloorSender { sockets } => floor::sender(sockets),
        Task::FloorReceiver {
            ports,
            first,
            sockets,
            bytes,
        } => floor::receiver(&ports, first, sockets, bytes),
        Task::IdleWorker { spec } => idle_memory::worker(&spec),
        Task::LoadgenShard { spec, shard } => loadgen::shard::process_main(&spec, shard),
    }
}
