//! Command-line parsing and the commands: `serve` runs the server, `admin`
//! drives the admin API (the vendor's cmdlets, by purpose), `chat` is a
//! terminal client, `topology` and `pool` are the deployment's topology and
//! its disaster recovery.

mod admin;
mod chat;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reference_server::config::Config;

#[derive(Parser)]
#[command(
    name = "reference-server",
    version,
    about = "pchat reference persistent-chat server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Administer a running server through its admin API.
    Admin(admin::AdminArgs),
    /// Chat in a room from this terminal: lines you type are posted.
    Chat(chat::ChatArgs),
    /// Validate and publish the deployment topology (pools, nodes, stores).
    Topology(topology::TopologyArgs),
    /// Disaster recovery: fail a pool over to its backup pool, and back.
    Pool(topology::PoolArgs),
    /// A stream worker: started by `serve` when `stream.workers` > 0, never by hand.
    #[command(hide = true)]
    StreamWorker(WorkerArgs),
}

#[derive(clap::Args)]
struct WorkerArgs {
    #[arg(long)]
    read_buffer_bytes: usize,
    #[arg(long)]
    max_frame_bytes: usize,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see reference-server/README.md).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Listen address, overriding the file (e.g. 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory, overriding the file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Admin(args) => runtime().and_then(|rt| rt.block_on(admin::run(args))),
        Command::Chat(args) => runtime().and_then(|rt| rt.block_on(chat::run(args))),
        Command::Topology(args) => runtime().and_then(|rt| rt.block_on(topology::topology(args))),
        Command::Pool(args) => runtime().and_then(|rt| rt.block_on(topology::pool(args))),
        Command::StreamWorker(args) => stream_worker(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Print the whole chain: what failed, then why.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config =
        Config::load(args.config.as_deref()).context("cannot read the configuration")?;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    init_tracing(&config);
    // One socket per stream: use every file descriptor the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(open_files = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    let rt = runtime()?;
    rt.block_on(async move {
        let server = reference_server::start(config).await?;
        println!("pchat reference server listening on http://{}", server.addr);
        let token = server.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: finishing acknowledged work");
            token.cancel();
        });
        server.wait().await
    })
}

fn stream_worker(args: WorkerArgs) -> anyhow::Result<()> {
    init_tracing(&Config::default());
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "could not raise the file descriptor limit");
    }
    reference_server::relay::worker::main(reference_server::relay::worker::Options {
        read_buffer_bytes: args.read_buffer_bytes,
        max_frame_bytes: args.max_frame_bytes,
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
