//! `orch-controller`: the thin binary over the `orch_controller` library.
//!
//! For now it opens the configured store and reports its revision, which checks an
//! embedded file or an etcd address end to end; the gRPC API comes with the
//! controller issue.

use std::process::ExitCode;

use clap::Parser;
use orch_controller::store::{open_store, StoreConfig};

#[derive(Debug, Parser)]
#[command(name = "orch-controller", version, about = "orch controller: desired state, scheduling, reconciliation")]
struct Args {
    /// Where desired state lives: embedded:PATH (a redb file) or etcd://HOST:PORT[,HOST:PORT...]
    #[arg(long, env = "ORCH_STORE", default_value = "embedded:/var/lib/orch/controller.redb")]
    store: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let config = StoreConfig::parse(&args.store)?;
    let store = open_store(&config).await?;
    let listing = store.list("/orch/").await?;
    println!("store {} is reachable at revision {} with {} key(s) under /orch/", args.store, listing.revision, listing.items.len());
    anyhow::bail!("the controller API is not served yet: it arrives with the controller issue")
}
