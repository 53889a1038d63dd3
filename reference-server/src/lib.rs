//! The pchat reference server: persistent chat rooms on an embedded SQLite
//! store (one node) or on PostgreSQL (a pool of nodes sharing one database),
//! speaking the protocol of `docs/protocol.md`.
//!
//! Modules, each with one job, data flowing downwards:
//!
//! - [`config`]: the operator's TOML file and `PCHAT_*` overrides;
//! - [`http`]: routes, extractors and the WebSocket event stream;
//! - [`app`]: one method per protocol operation;
//! - [`domain`]: records and the access rules (pure functions);
//! - [`hub`]: live sessions, participants, presence and fan-out;
//! - [`store`]: the persistence trait, on SQLite or PostgreSQL;
//! - [`compliance`]: moving and exporting compliance records;
//! - [`auth`]: tokens and password hashes; [`fscheck`]: data directory checks;
//! - [`metrics`]: Prometheus metrics; [`error`]: the protocol error type.
//!
//! A test or an embedding program starts a server on a port of its choice:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut config = reference_server::config::Config::default();
//! config.listen = "127.0.0.1:0".parse()?;
//! config.data_dir = "/tmp/pchat-demo".into();
//! let server = reference_server::start(config).await?;
//! println!("listening on {}", server.addr);
//! server.stop().await?;
//! # Ok(()) }
//! ```

pub mod admission;
pub mod app;
pub mod auth;
pub mod bus;
pub mod compliance;
pub mod config;
pub mod domain;
pub mod error;
pub mod fscheck;
pub mod http;
pub mod hub;
#[cfg(feature = "bug-injection")]
pub mod inject;
pub mod metrics;
pub mod relay;
pub mod store;
pub mod topology;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::Keys;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::postgres::{Feed, PgOptions, PgStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::Store;

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops gracefully: no new requests, acknowledged work finished, store flushed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await.context("server task panicked")?
    }

    /// Waits until the server stops by itself (its shutdown token fired).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Connections the kernel may hold for the server before it accepts them
/// (capped by `net.core.somaxconn`). The default of 1,024 overflowed when
/// a lost node's 20,000 endpoints came back at once: the kernel then drops
/// handshakes, and a client can wait a minute or more for its retransmits.
const LISTEN_BACKLOG: u32 = 16_384;

/// Binds `config.listen` and starts serving in the background.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let listener =
        bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    start_on(listener, config, CancellationToken::new()).await
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted server may take its port
    // back while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Starts serving on an already bound listener; `shutdown` stops it.
pub async fn start_on(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    fscheck::check_data_dir(&config.data_dir)?;
    let keys =
        Keys::load_or_create(&config.data_dir).context("cannot load or create the signing key")?;
    let metrics = Arc::new(Metrics::new());
    let (commits_tx, commits_rx) = tokio::sync::mpsc::unbounded_channel();
    let (dir_tx, dir_rx) = tokio::sync::mpsc::unbounded_channel();
    let (bus_in_tx, bus_in_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut config = config;
    let mut pool_store: Option<Arc<PgStore>> = None;
    let store: Arc<dyn Store> = match config.store.url.clone() {
        Some(url) => {
            let compliance_url = config.store.compliance_url.clone().context(
                "the pool store needs store.compliance_url (PCHAT_STORE__COMPLIANCE_URL) too",
            )?;
            let node = config.store.node.clone().unwrap_or_else(|| {
                listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            });
            config.store.node = Some(node.clone());
            let pg = PgStore::open(
                PgOptions {
                    url,
                    compliance_url,
                    connections: config.store.connections,
                    node,
                },
                Feed {
                    commits: commits_tx,
                    directory: dir_tx,
                    bus: bus_in_tx,
                    publish_pending: metrics.publish_pending.clone(),
                },
                metrics.store_pending.clone(),
            )
            .await
            .context("cannot open the PostgreSQL store")?;
            pool_store = Some(pg.clone());
            pg
        }
        None => {
            drop((dir_tx, bus_in_tx));
            let mut opts = SqliteOptions::in_dir(&config.data_dir);
            opts.synchronous = config.store.synchronous;
            opts.readers = config.store.readers;
            opts.max_batch = config.store.max_batch;
            Arc::new(
                SqliteStore::open(
                    opts,
                    commits_tx,
                    metrics.store_pending.clone(),
                    metrics.publish_pending.clone(),
                )
                .context("cannot open the store")?,
            )
        }
    };
    let snapshot = store.load().await.context("cannot load the directory")?;
    let (notes_tx, notes_rx) = tokio::sync::mpsc::unbounded_channel();
    let app = App::new(
        config,
        store.clone(),
        snapshot,
        keys,
        metrics.clone(),
        shutdown.clone(),
        notes_tx,
    )
    .map_err(|e| anyhow::anyhow!("cannot start: {e}"))?;
    if let Some(published) = app.published() {
        let node = app.config.store.node.clone().context(
            "a topology is published in this store: name this node (store.node, PCHAT_STORE__NODE)",
        )?;
        if let Some(why) = published.refuses(&node) {
            store.close().await.ok();
            anyhow::bail!("refusing to start: {why}");
        }
    }
    if let Some(workers) = &app.workers {
        let want = app.config.stream.workers;
        let up = workers.ready(Duration::from_secs(10)).await;
        if up < want {
            tracing::warn!(
                up,
                want,
                "not every stream worker started; streams stay in this process until they do"
            );
        }
    }
    let addr = listener.local_addr()?;

    let publisher = tokio::spawn(app::run_publisher(
        app.hub.clone(),
        metrics.clone(),
        commits_rx,
    ));
    tokio::spawn(app.clone().run_presence_recorder(notes_rx));
    tokio::spawn(app.clone().run_directory_replay(dir_rx));
    if let Some(pg) = pool_store {
        let (bus_out_tx, bus_out_rx) = tokio::sync::mpsc::unbounded_channel();
        app.hub.set_bus(bus_out_tx);
        tokio::spawn(bus::run(app.clone(), pg, bus_out_rx, bus_in_rx));
    }
    let pump = tokio::spawn(compliance::run_pump(app.clone()));
    tokio::spawn(compliance::run_exporter(app.clone()));

    let router = http::router(app.clone());
    let task = {
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tracing::info!(%addr, data_dir = %app.config.data_dir.display(), "serving");
            // Stream sockets go to workers: keep a handle to each one.
            let keep_fd = app.workers.is_some();
            let head_timeout = match app.config.limits.request_head_timeout_s {
                0 => None,
                s => Some(Duration::from_secs(s)),
            };
            http::serve::run(listener, router, keep_fd, head_timeout, shutdown.clone()).await;
            // Streams saw the shutdown token and are closing; give them a moment.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while app.metrics.connections.get() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = pump.await;
            store.close().await?;
            let _ = publisher.await;
            tracing::info!("stopped");
            Ok(())
        })
    };
    Ok(Running {
        addr,
        app,
        shutdown,
        task,
    })
}
