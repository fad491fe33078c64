//! `orch-agent images pull|list|prune`: the node's image store by hand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use orch_agent::images::{ImageStore, RegistrySettings};
use orch_agent::runtime::{Runtime, RuntimeConfig};
use orch_agent::StateDir;

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// The agent's state directory (images live in its `images/`).
    #[arg(long, env = "ORCH_AGENT_STATE_DIR", default_value = "/var/lib/orch/agent", global = true)]
    pub state_dir: PathBuf,
    /// Registry credentials (Docker's auth.json shape) and plain-HTTP registries, in a
    /// file only root may read [default: /etc/orch/registries.json when it exists].
    #[arg(long, value_name = "PATH", global = true)]
    pub registry_config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Fetch an image into the store (verified, layers unpacked once).
    Pull { reference: String },
    /// List the images in the store.
    List,
    /// Remove every image no container on this node uses, and what only they needed.
    Prune,
}

pub async fn run(args: ImagesArgs) -> ExitCode {
    match run_images(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orch-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_images(args: ImagesArgs) -> anyhow::Result<()> {
    let store = ImageStore::open(&StateDir::new(&args.state_dir).images(), RegistrySettings::from_flag(args.registry_config.clone()))?;
    match args.command {
        ImagesCommand::Pull { reference } => {
            let (record, report) = store.pull(&reference).await?;
            println!(
                "{} {} ({} layer(s): {} unpacked, {} cached; {} blob(s) fetched, {} cached)",
                record.reference,
                record.manifest_digest,
                record.layers.len(),
                report.layers_unpacked,
                report.layers_cached,
                report.blobs_fetched,
                report.blobs_cached
            );
        }
        ImagesCommand::List => {
            for record in store.list() {
                println!("{}\t{}\t{} layer(s)", record.reference, record.manifest_digest, record.layers.len());
            }
        }
        ImagesCommand::Prune => {
            let runtime = Runtime::new(RuntimeConfig { state_dir: args.state_dir.clone(), cgroup_parent: "orch".into(), init_exe: std::env::current_exe()? })?;
            let report = store.prune(&runtime.images_in_use())?;
            for image in &report.images_removed {
                println!("removed {image}");
            }
            println!("{} blob(s) and {} layer(s) removed", report.blobs_removed, report.layers_removed);
        }
    }
    Ok(())
}
