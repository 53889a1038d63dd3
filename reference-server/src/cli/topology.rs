//! `reference-server topology ...` and `reference-server pool ...`: the
//! equivalent of the vendor's topology builder, and the disaster-recovery
//! procedure (fail a pool over to its backup, and back).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reference_server::app::pools::{Published, ACTIVE, FAILED_OVER, STANDBY, TOPOLOGY_KEY};
use reference_server::store::postgres;
use reference_server::topology::{room_id_base, Edition, Topology, RULES};

#[derive(Args)]
pub struct TopologyArgs {
    #[command(subcommand)]
    command: TopologyCmd,
}

#[derive(Subcommand)]
enum TopologyCmd {
    /// Check a topology file against the rules; lists every broken rule.
    Validate { file: PathBuf },
    /// Record a valid topology in a pool's store; its nodes then start only
    /// if they are active nodes of the pool serving that store.
    Publish {
        file: PathBuf,
        /// The pool whose store to publish into (every pool needs its own publish).
        #[arg(long)]
        pool: String,
        /// For a standard pool: its node's data directory (the embedded store).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// List the rules `validate` checks.
    Rules,
}

#[derive(Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    command: PoolCmd,
}

#[derive(Subcommand)]
enum PoolCmd {
    /// Run a whole pool on this machine: a private PostgreSQL (from the
    /// installed binaries) and N node processes, with a published topology.
    /// Runs until Ctrl-C, then stops everything; the data stays in --dir.
    Local(LocalArgs),
    /// Fail a pool over to its backup: check its nodes are down, promote the
    /// backup's database (a streaming-replication standby of the pool's),
    /// and mark the pool failed over, so the backup pool's nodes may start
    /// and serve its rooms.
    Failover {
        #[arg(long)]
        topology: PathBuf,
        /// The pool that failed.
        #[arg(long)]
        pool: String,
        /// Go ahead even when nodes of the pool still answer.
        #[arg(long)]
        force: bool,
    },
    /// Give a failed-over pool its rooms back: check the backup pool's nodes
    /// are down, promote the pool's own database (rebuilt as a standby of the
    /// backup's), and mark the pool active again.
    Failback {
        #[arg(long)]
        topology: PathBuf,
        #[arg(long)]
        pool: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct LocalArgs {
    /// Active nodes (1 to 4).
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Where the database clusters and the nodes' shared data directory live.
    #[arg(long, default_value = "pchat-pool")]
    dir: PathBuf,
    /// Port of the first node; the others follow (the backup pool's after
    /// them). 0 picks free ports.
    #[arg(long, default_value_t = 8080)]
    base_port: u16,
    /// Compliance recording on from the start.
    #[arg(long)]
    compliance: bool,
    /// Do not start a node again when it dies (to study the loss of a node).
    #[arg(long)]
    no_restart: bool,
    /// Also a backup pool: a synchronous streaming standby of the database
    /// and as many nodes, started when the site is lost. SIGUSR1 to this
    /// process loses the site: every node is killed, the primary database
    /// stops at once, the standby is promoted (`pool failover`) and the
    /// backup pool's nodes start; the timings go to `<dir>/failover.json`.
    #[arg(long)]
    backup: bool,
    /// Write the nodes' URLs, process ids and the data directory here (JSON)
    /// once every node answers, and again after a failover.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// What `pool local --ready-file` writes.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct LocalReady {
    /// The nodes serving now.
    pub nodes: Vec<String>,
    pub pids: Vec<u32>,
    /// The backup pool's nodes (not running until a failover).
    pub backup_nodes: Vec<String>,
    pub data_dir: PathBuf,
    pub admin_token_file: PathBuf,
    pub postgres_port: u16,
    pub failed_over: bool,
}

/// What a failover of `pool local --backup` measured, in ms since the site
/// was lost (`lost_at_unix_ms`).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct LocalFailover {
    pub lost_at_unix_ms: u128,
    pub promoted_ms: u128,
    pub serving_ms: u128,
}

/// `n` free ports below Linux's ephemeral range (32768 and up by default),
/// so that client connections made later (a load test's thousands) cannot
/// take one before the node that starts later (a backup pool's) binds it.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let offset = (std::process::id() % 10_000) as u16;
    let mut held = Vec::new();
    for k in 0..12_000u16 {
        if held.len() == n {
            break;
        }
        let port = 20_000 + (offset + k) % 12_000;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    if held.len() < n {
        bail!("fewer than {n} free ports between 20000 and 31999");
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// A node of `pool local`: how to (re)start it.
#[derive(Clone)]
struct NodeSpec {
    name: String,
    port: u16,
    store: String,
    compliance: String,
}

struct Local {
    exe: PathBuf,
    dir: PathBuf,
    data: PathBuf,
}

impl Local {
    fn spawn(&self, n: &NodeSpec) -> anyhow::Result<std::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", n.name)))?;
        let child = std::process::Command::new(&self.exe)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", n.port),
                "--data-dir",
            ])
            .arg(&self.data)
            .env("PCHAT_STORE__URL", &n.store)
            .env("PCHAT_STORE__COMPLIANCE_URL", &n.compliance)
            .env("PCHAT_STORE__NODE", &n.name)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start a node")?;
        std::fs::write(
            self.dir.join(format!("{}.pid", n.name)),
            child.id().to_string(),
        )?;
        Ok(child)
    }

    async fn wait_healthy(
        &self,
        nodes: &[NodeSpec],
        children: &mut [std::process::Child],
    ) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for (i, n) in nodes.iter().enumerate() {
            let url = format!("http://127.0.0.1:{}/healthz", n.port);
            loop {
                if http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    break;
                }
                if let Some(status) = children[i].try_wait()? {
                    bail!(
                        "{} exited ({status}); see {}",
                        n.name,
                        self.dir.join(format!("{}.log", n.name)).display()
                    );
                }
                if Instant::now() > deadline {
                    bail!("{} did not answer within 60 s", n.name);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

fn urls_of(nodes: &[NodeSpec]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| format!("http://127.0.0.1:{}", n.port))
        .collect()
}

async fn local(args: LocalArgs) -> anyhow::Result<()> {
    if !(1..=4).contains(&args.nodes) {
        bail!("a pool has 1 to 4 active nodes");
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let mut primary = pgcluster::Cluster::start_with(pgcluster::Options {
        dir: Some(dir.join("postgres")),
        settings: Vec::new(),
    })
    .context("cannot start PostgreSQL")?;
    primary.create_database("chat")?;
    primary.create_database("compliance")?;
    let standby = if args.backup {
        let s = pgcluster::Cluster::start_standby(&primary, "backup")
            .context("cannot start the standby")?;
        // Every commit now waits until the standby has it.
        primary.psql(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = 'backup'",
        )?;
        primary.psql("postgres", "SELECT pg_reload_conf()")?;
        Some(s)
    } else {
        None
    };
    let count = args.nodes * if args.backup { 2 } else { 1 };
    let ports: Vec<u16> = if args.base_port == 0 {
        free_ports(count)?
    } else {
        (0..count).map(|i| args.base_port + i as u16).collect()
    };
    let main_nodes: Vec<NodeSpec> = (0..args.nodes)
        .map(|i| NodeSpec {
            name: format!("node{i}"),
            port: ports[i],
            store: primary.url("chat"),
            compliance: primary.url("compliance"),
        })
        .collect();
    let dr_nodes: Vec<NodeSpec> = match &standby {
        None => Vec::new(),
        Some(s) => (0..args.nodes)
            .map(|i| NodeSpec {
                name: format!("dr{i}"),
                port: ports[args.nodes + i],
                store: s.url("chat"),
                compliance: s.url("compliance"),
            })
            .collect(),
    };
    let pool_def = |name: &str, nodes: &[NodeSpec], backup: Option<String>| {
        reference_server::topology::PoolDef {
            name: name.into(),
            edition: Edition::Enterprise,
            store: nodes[0].store.clone(),
            compliance_store: Some(nodes[0].compliance.clone()),
            backup,
            nodes: nodes
                .iter()
                .map(|n| reference_server::topology::NodeDef {
                    name: n.name.clone(),
                    url: format!("http://127.0.0.1:{}", n.port),
                    active: true,
                })
                .collect(),
        }
    };
    let mut pools = vec![pool_def(
        "local",
        &main_nodes,
        standby.as_ref().map(|_| "local-dr".to_owned()),
    )];
    if !dr_nodes.is_empty() {
        pools.push(pool_def("local-dr", &dr_nodes, None));
    }
    let topology = Topology { pools };
    let broken = topology.validate();
    if !broken.is_empty() {
        bail!("generated topology is invalid: {broken:?}");
    }
    std::fs::write(dir.join("topology.toml"), toml::to_string(&topology)?)?;
    let doc = serde_json::to_string(&Published::new(topology.clone(), "local"))?;
    postgres::publish_setting(&primary.url("chat"), TOPOLOGY_KEY, &doc, room_id_base(0)).await?;

    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let local = Local {
        exe: std::env::current_exe()?,
        dir: dir.clone(),
        data: data.clone(),
    };
    let mut serving = main_nodes.clone();
    let children = serving
        .iter()
        .map(|n| local.spawn(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut guard = Children(children);
    local.wait_healthy(&serving, &mut guard.0).await?;

    // An operator token for a day, for tools run against the pool (the
    // conformance suite's `admin_token_file`, the sizing report).
    let keys = reference_server::auth::Keys::load(&data)?;
    let token = keys.issue(
        reference_server::domain::OPERATOR,
        reference_server::auth::now_s() + 86_400,
    );
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, &token)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    }
    let http = reqwest::Client::new();
    if args.compliance {
        http.patch(format!(
            "http://127.0.0.1:{}/v1/admin/compliance",
            serving[0].port
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({"enabled": true}))
        .send()
        .await?
        .error_for_status()?;
    }
    println!(
        "pool of {} node(s) on PostgreSQL 127.0.0.1:{} (data in {}){}",
        args.nodes,
        primary.port,
        dir.display(),
        if args.backup {
            ", with a backup pool on a synchronous standby (SIGUSR1 fails over)"
        } else {
            ""
        }
    );
    for (n, u) in serving.iter().zip(urls_of(&serving)) {
        println!("  {}  {u}", n.name);
    }
    println!(
        "administer it with: reference-server admin --url {} --data-dir {} ...",
        urls_of(&serving)[0],
        data.display()
    );
    println!(
        "an operator token (valid one day) is in {}",
        token_file.display()
    );
    println!("Ctrl-C stops the pool");
    let postgres_port = primary.port;
    let write_ready = |serving: &[NodeSpec],
                       children: &[std::process::Child],
                       failed_over: bool|
     -> anyhow::Result<()> {
        if let Some(f) = &args.ready_file {
            let ready = LocalReady {
                nodes: urls_of(serving),
                pids: children.iter().map(|c| c.id()).collect(),
                backup_nodes: urls_of(&dr_nodes),
                data_dir: data.clone(),
                admin_token_file: token_file.clone(),
                postgres_port,
                failed_over,
            };
            let tmp = f.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_string_pretty(&ready)?)?;
            std::fs::rename(&tmp, f)?;
        }
        Ok(())
    };
    write_ready(&serving, &guard.0, false)?;

    // Like a service manager: a node that dies is started again (its pid
    // file follows), unless --no-restart; so `kill -9 $(cat
    // pchat-pool/node3.pid)` is a crash and a restart.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let mut check = tokio::time::interval(Duration::from_millis(250));
    let mut failed_over = false;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = usr1.recv() => {
                if dr_nodes.is_empty() || failed_over {
                    eprintln!("SIGUSR1: no backup pool to fail over to");
                    continue;
                }
                let lost = Instant::now();
                let lost_at = unix_ms();
                eprintln!("the site is lost: killing the nodes, stopping the primary database");
                for c in guard.0.iter_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                guard.0.clear();
                primary.stop(false)?;
                switch_roles(&topology, 0, &dr_nodes[0].store, false).await?;
                let promoted = lost.elapsed().as_millis();
                serving = dr_nodes.clone();
                guard.0 = serving
                    .iter()
                    .map(|n| local.spawn(n))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                local.wait_healthy(&serving, &mut guard.0).await?;
                let report = LocalFailover {
                    lost_at_unix_ms: lost_at,
                    promoted_ms: promoted,
                    serving_ms: lost.elapsed().as_millis(),
                };
                std::fs::write(dir.join("failover.json"), serde_json::to_string_pretty(&report)?)?;
                eprintln!(
                    "failed over: standby promoted after {} ms, backup nodes serving after {} ms",
                    report.promoted_ms, report.serving_ms
                );
                failed_over = true;
                write_ready(&serving, &guard.0, true)?;
            }
            _ = check.tick() => {
                for (child, node) in guard.0.iter_mut().zip(&serving) {
                    if let Some(status) = child.try_wait()? {
                        if args.no_restart {
                            continue;
                        }
                        eprintln!("{} exited ({status}); starting it again", node.name);
                        *child = local.spawn(node)?;
                    }
                }
            }
        }
    }
    println!("stopping the pool");
    guard.stop();
    drop(standby);
    drop(primary);
    Ok(())
}

/// Promotes `store` (the database taking the pool's rooms over) and records
/// the new pool states in it: the pool at `index` failed over to its backup,
/// or (`back`) active again on its own nodes.
async fn switch_roles(t: &Topology, index: usize, store: &str, back: bool) -> anyhow::Result<()> {
    let pool = t.pools[index].name.clone();
    let backup = t.pools[index]
        .backup
        .clone()
        .context("the pool has no backup")?;
    postgres::promote(store, 60)
        .await
        .with_context(|| format!("cannot promote {store}"))?;
    let doc = postgres::read_setting(store, TOPOLOGY_KEY)
        .await?
        .context("no topology is published in the promoted store")?;
    let mut published: Published = serde_json::from_str(&doc)?;
    published.topology = t.clone();
    if back {
        published.states.insert(pool, ACTIVE.into());
        published.states.insert(backup, STANDBY.into());
    } else {
        published.states.insert(pool, FAILED_OVER.into());
        published.states.insert(backup, ACTIVE.into());
    }
    postgres::publish_setting(
        store,
        TOPOLOGY_KEY,
        &serde_json::to_string(&published)?,
        room_id_base(index),
    )
    .await?;
    Ok(())
}

/// Node processes, stopped (SIGTERM, then kill) when dropped.
struct Children(Vec<std::process::Child>);

impl Children {
    fn stop(&mut self) {
        for c in &mut self.0 {
            if c.try_wait().ok().flatten().is_none() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for mut c in self.0.drain(..) {
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read(file: &Path) -> anyhow::Result<Topology> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let t = Topology::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let broken = t.validate();
    if !broken.is_empty() {
        for v in &broken {
            eprintln!("{}: {v}", file.display());
        }
        bail!("{} rule(s) broken; nothing was changed", broken.len());
    }
    Ok(t)
}

pub async fn topology(args: TopologyArgs) -> anyhow::Result<()> {
    match args.command {
        TopologyCmd::Rules => {
            for (rule, meaning) in RULES {
                println!("{rule:28} {meaning}");
            }
            Ok(())
        }
        TopologyCmd::Validate { file } => {
            let t = read(&file)?;
            let nodes: usize = t.pools.iter().map(|p| p.nodes.len()).sum();
            println!(
                "{}: valid ({} pool(s), {nodes} node(s))",
                file.display(),
                t.pools.len()
            );
            Ok(())
        }
        TopologyCmd::Publish {
            file,
            pool,
            data_dir,
        } => {
            let t = read(&file)?;
            let index = t
                .pools
                .iter()
                .position(|p| p.name == pool)
                .with_context(|| format!("no pool named {pool:?} in {}", file.display()))?;
            let def = t.pools[index].clone();
            let doc = serde_json::to_string(&Published::new(t, &pool))?;
            match def.edition {
                Edition::Enterprise => {
                    postgres::publish_setting(&def.store, TOPOLOGY_KEY, &doc, room_id_base(index))
                        .await
                        .with_context(|| format!("cannot publish into {}", def.store))?;
                }
                Edition::Standard => {
                    let dir = data_dir.context(
                        "a standard pool's store is embedded: give its node's --data-dir",
                    )?;
                    publish_embedded(&dir, &doc, room_id_base(index)).await?;
                }
            }
            println!("published the topology into pool {pool:?}'s store");
            Ok(())
        }
    }
}

async fn publish_embedded(dir: &Path, doc: &str, floor: i64) -> anyhow::Result<()> {
    use prometheus_client::metrics::gauge::Gauge;
    use reference_server::store::sqlite::{SqliteOptions, SqliteStore};
    use reference_server::store::{Change, Store};
    std::fs::create_dir_all(dir)?;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let store = SqliteStore::open(
        SqliteOptions::in_dir(dir),
        tx,
        Gauge::default(),
        Gauge::default(),
    )?;
    store
        .apply(
            vec![Change::PutSetting(TOPOLOGY_KEY.into(), doc.into())],
            Vec::new(),
        )
        .await?;
    store.raise_room_counter(floor + 1).await?;
    store.close().await?;
    Ok(())
}

/// Whether any of these nodes answers its health check.
async fn answering(urls: &[String]) -> Vec<String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let mut up = Vec::new();
    for u in urls {
        if http
            .get(format!("{}/healthz", u.trim_end_matches('/')))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up.push(u.clone());
        }
    }
    up
}

pub async fn pool(args: PoolArgs) -> anyhow::Result<()> {
    let (file, pool, force, back) = match args.command {
        PoolCmd::Local(a) => return local(a).await,
        PoolCmd::Failover {
            topology,
            pool,
            force,
        } => (topology, pool, force, false),
        PoolCmd::Failback {
            topology,
            pool,
            force,
        } => (topology, pool, force, true),
    };
    let t = read(&file)?;
    let index = t
        .pools
        .iter()
        .position(|p| p.name == pool)
        .with_context(|| format!("no pool named {pool:?}"))?;
    let def = t.pools[index].clone();
    let backup_name = def
        .backup
        .clone()
        .with_context(|| format!("pool {pool:?} has no backup pool"))?;
    let backup = t
        .pools
        .iter()
        .find(|p| p.name == backup_name)
        .cloned()
        .context("the backup pool is not in the topology")?;
    // Failing over takes the pool's rooms from its nodes to the backup's;
    // failing back the other way round.
    let (from, to) = if back {
        (&backup, &def)
    } else {
        (&def, &backup)
    };
    let started = Instant::now();
    let urls: Vec<String> = from.nodes.iter().map(|n| n.url.clone()).collect();
    let up = answering(&urls).await;
    if !up.is_empty() && !force {
        bail!(
            "nodes of pool {:?} still answer ({}): stop them first, or they keep \
             clients writing to a database that is about to stop being the primary \
             (--force to go ahead anyway)",
            from.name,
            up.join(", ")
        );
    }
    println!("promoting the database of pool {:?}", to.name);
    switch_roles(&t, index, &to.store, back).await?;
    println!(
        "pool {pool:?} is {} (took {:.1} s): start the nodes of pool {:?}: {}",
        if back {
            "back on its own nodes"
        } else {
            "failed over"
        },
        started.elapsed().as_secs_f64(),
        to.name,
        to.nodes
            .iter()
            .filter(|n| n.active)
            .map(|n| format!("{} ({})", n.name, n.url))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "then rebuild the database of pool {:?} as a streaming standby of {:?}'s before failing {}",
        from.name,
        to.name,
        if back { "over again" } else { "back" }
    );
    Ok(())
}
