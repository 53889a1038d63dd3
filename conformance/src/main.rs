//! `conformance`: run the suite against a server, re-check a saved history,
//! or list the catalogue.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use conformance::profile::Profile;
use conformance::{history, report, spec, Config};

#[derive(Parser)]
#[command(
    version,
    about = "Conformance suite for pchat servers (docs/protocol.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the suite against a server.
    Run {
        /// The server's base URL (overrides `target` in the profile).
        #[arg(long)]
        target: Option<String>,
        /// The vendor profile (see the README).
        #[arg(long)]
        profile: PathBuf,
        /// Output directory: result.json, junit.xml, transcripts/, history.json.
        #[arg(long, default_value = "conformance-out")]
        out: PathBuf,
        /// Seed of the randomised parts (overrides the profile).
        #[arg(long)]
        seed: Option<u64>,
        /// Only tests whose clause id or name contains this (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Print nothing while running.
        #[arg(long)]
        quiet: bool,
    },
    /// Re-check a saved history file and print its anomalies.
    CheckHistory { file: PathBuf },
    /// List the catalogue: clause, keyword, test.
    List,
}

#[tokio::main]
async fn main() -> ExitCode {
    match real_main().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

async fn real_main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Run {
            target,
            profile,
            out,
            seed,
            only,
            quiet,
        } => {
            let mut p = Profile::load(&profile)?;
            if seed.is_some() {
                p.run.seed = seed;
            }
            if !only.is_empty() {
                p.run.only = only;
            }
            let target = target
                .or_else(|| p.target.clone())
                .ok_or_else(|| anyhow::anyhow!("no --target and no `target` in the profile"))?;
            let mut config = Config::new(target, p);
            config.out_dir = Some(out.clone());
            config.progress = !quiet;
            let r = conformance::run(config).await?;
            println!("{}", report::table(&r));
            println!(
                "results: {0}/result.json, {0}/junit.xml, transcripts in {0}/transcripts/",
                out.display()
            );
            Ok(ExitCode::from(r.verdict.exit_code() as u8))
        }
        Command::CheckHistory { file } => {
            let h = history::History::load(&file)?;
            let anomalies = history::check(&h);
            println!(
                "{}: seed {}, {} entries, rooms {:?}",
                file.display(),
                h.seed,
                h.entries.len(),
                h.rooms
            );
            for a in &anomalies {
                println!("  {} [{}] {a}", a.kind.clause(), h.seed);
            }
            if anomalies.is_empty() {
                println!("no anomalies");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{} anomalies", anomalies.len());
                Ok(ExitCode::from(1))
            }
        }
        Command::List => {
            for c in conformance::cases::catalogue() {
                let kw = spec::clause(c.clause).map_or("?", |s| s.keyword.as_str());
                println!("{:<9} {:<6} {}", c.clause, kw, c.name);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
