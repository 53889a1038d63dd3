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
    /// Where the database cluster and the nodes' shared data directory live.
    #[arg(long, default_value = "pchat-pool")]
    dir: PathBuf,
    /// Port of the first node; the others follow. 0 picks free ports.
    #[arg(long, default_value_t = 8080)]
    base_port: u16,
    /// Compliance recording on from the start.
    #[arg(long)]
    compliance: bool,
    /// Write the nodes' URLs, process ids and the data directory here (JSON)
    /// once every node answers.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// What `pool local --ready-file` writes.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct LocalReady {
    pub nodes: Vec<String>,
    pub pids: Vec<u32>,
    pub data_dir: PathBuf,
    pub postgres_port: u16,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn local(args: LocalArgs) -> anyhow::Result<()> {
    if !(1..=4).contains(&args.nodes) {
        bail!("a pool has 1 to 4 active nodes");
    }
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let cluster = pgcluster::Cluster::start_with(pgcluster::Options {
        dir: Some(dir.join("postgres")),
        settings: vec![("max_connections".into(), "300".into())],
    })
    .context("cannot start PostgreSQL")?;
    cluster.create_database("chat")?;
    cluster.create_database("compliance")?;
    let ports: Vec<u16> = (0..args.nodes)
        .map(|i| {
            if args.base_port == 0 {
                free_port()
            } else {
                Ok(args.base_port + i as u16)
            }
        })
        .collect::<anyhow::Result<_>>()?;
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let topology = Topology {
        pools: vec![reference_server::topology::PoolDef {
            name: "local".into(),
            edition: Edition::Enterprise,
            store: cluster.url("chat"),
            compliance_store: Some(cluster.url("compliance")),
            backup: None,
            nodes: urls
                .iter()
                .enumerate()
                .map(|(i, u)| reference_server::topology::NodeDef {
                    name: format!("node{i}"),
                    url: u.clone(),
                    active: true,
                })
                .collect(),
        }],
    };
    let broken = topology.validate();
    if !broken.is_empty() {
        bail!("generated topology is invalid: {broken:?}");
    }
    std::fs::write(dir.join("topology.toml"), toml::to_string(&topology)?)?;
    let doc = serde_json::to_string(&Published::new(topology, "local"))?;
    postgres::publish_setting(&cluster.url("chat"), TOPOLOGY_KEY, &doc, room_id_base(0)).await?;

    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let exe = std::env::current_exe()?;
    let spawn = |i: usize| -> anyhow::Result<std::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("node{i}.log")))?;
        let child = std::process::Command::new(&exe)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", ports[i]), "--data-dir"])
            .arg(&data)
            .env("PCHAT_STORE__URL", cluster.url("chat"))
            .env("PCHAT_STORE__COMPLIANCE_URL", cluster.url("compliance"))
            .env("PCHAT_STORE__NODE", format!("node{i}"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start a node")?;
        std::fs::write(dir.join(format!("node{i}.pid")), child.id().to_string())?;
        Ok(child)
    };
    let children = (0..args.nodes).map(spawn).collect::<anyhow::Result<Vec<_>>>()?;
    let mut guard = Children(children);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, u) in urls.iter().enumerate() {
        loop {
            if http
                .get(format!("{u}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if let Some(status) = guard.0[i].try_wait()? {
                bail!(
                    "node{i} exited ({status}); see {}",
                    dir.join(format!("node{i}.log")).display()
                );
            }
            if Instant::now() > deadline {
                bail!("node{i} did not answer within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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
    if args.compliance {
        http.patch(format!("{}/v1/admin/compliance", urls[0]))
            .bearer_auth(token)
            .json(&serde_json::json!({"enabled": true}))
            .send()
            .await?
            .error_for_status()?;
    }
    println!(
        "pool of {} node(s) on PostgreSQL 127.0.0.1:{} (data in {})",
        args.nodes,
        cluster.port,
        dir.display()
    );
    for (i, u) in urls.iter().enumerate() {
        println!("  node{i}  {u}");
    }
    println!(
        "administer it with: reference-server admin --url {} --data-dir {} ...",
        urls[0],
        data.display()
    );
    println!(
        "an operator token (valid one day) is in {}",
        token_file.display()
    );
    println!("Ctrl-C stops the pool");
    if let Some(f) = &args.ready_file {
        let ready = LocalReady {
            nodes: urls.clone(),
            pids: guard.0.iter().map(|c| c.id()).collect(),
            data_dir: data.clone(),
            postgres_port: cluster.port,
        };
        std::fs::write(f, serde_json::to_string_pretty(&ready)?)?;
    }
    // Like a service manager: a node that dies is started again (its pid
    // file follows), so `kill -9 $(cat pchat-pool/node3.pid)` is a crash
    // and restart.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = check.tick() => {
                for i in 0..guard.0.len() {
                    if let Some(status) = guard.0[i].try_wait()? {
                        eprintln!("node{i} exited ({status}); starting it again");
                        guard.0[i] = spawn(i)?;
                    }
                }
            }
        }
    }
    println!("stopping the pool");
    guard.stop();
    drop(cluster);
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
    postgres::promote(&to.store, 60)
        .await
        .with_context(|| format!("cannot promote {}", to.store))?;
    let doc = postgres::read_setting(&to.store, TOPOLOGY_KEY)
        .await?
        .context("no topology is published in the promoted store")?;
    let mut published: Published = serde_json::from_str(&doc)?;
    published.topology = t.clone();
    if back {
        published.states.insert(pool.clone(), ACTIVE.into());
        published.states.insert(backup_name.clone(), STANDBY.into());
    } else {
        published.states.insert(pool.clone(), FAILED_OVER.into());
        published.states.insert(backup_name.clone(), ACTIVE.into());
    }
    postgres::publish_setting(
        &to.store,
        TOPOLOGY_KEY,
        &serde_json::to_string(&published)?,
        room_id_base(index),
    )
    .await?;
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
