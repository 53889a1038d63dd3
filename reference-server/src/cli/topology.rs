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
