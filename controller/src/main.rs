//! `orch-controller`: the thin binary over the `orch_controller` library: serves
//! `orch.v1.Api` and `orch.v1.Nodes`, and runs the reconcilers while it leads.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use orch_controller::server::{Controller, ControllerConfig};
use orch_controller::store::{open_store, StoreConfig};

#[derive(Debug, Parser)]
#[command(name = "orch-controller", version, about = "orch controller: desired state, scheduling, reconciliation")]
struct Args {
    /// Where desired state lives: embedded:PATH (a redb file) or etcd://HOST:PORT[,HOST:PORT...]
    #[arg(long, env = "ORCH_STORE", default_value = "embedded:/var/lib/orch/controller.redb")]
    store: String,
    /// Address the gRPC API listens on.
    #[arg(long, env = "ORCH_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// The service VIP range.
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: String,
    /// The cluster pod network (a /16): node n gets its n-th /24.
    #[arg(long, default_value = "10.88.0.0/16")]
    cluster_cidr: String,
    /// A node whose heartbeats stop for this long is NotReady.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    node_lease: Duration,
    /// A NotReady node's replicas are replaced elsewhere after this.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    node_grace: Duration,
    /// The leadership lease: a dead leader is replaced within about this.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    leader_lease: Duration,
    /// How long events are kept.
    #[arg(long, default_value = "3600s", value_parser = parse_duration)]
    event_ttl: Duration,
    /// This controller's name in leader election (default: hostname and PID).
    #[arg(long)]
    identity: Option<String>,
}

/// "10s", "500ms" or a bare number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 10s or 500ms");
    if let Some(millis) = text.strip_suffix("ms") {
        return millis.parse::<u64>().map(Duration::from_millis).map_err(|_| bad());
    }
    let seconds = text.strip_suffix('s').unwrap_or(text);
    seconds.parse::<u64>().map(Duration::from_secs).map_err(|_| bad())
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

fn parse_cidr(text: &str) -> anyhow::Result<(std::net::Ipv4Addr, u8)> {
    let (address, prefix) = text.split_once('/').with_context(|| format!("{text:?}: expected A.B.C.D/N"))?;
    let address = address.parse().with_context(|| format!("{text:?}: bad address"))?;
    let prefix: u8 = prefix.parse().with_context(|| format!("{text:?}: bad prefix"))?;
    anyhow::ensure!((8..=28).contains(&prefix), "{text:?}: the prefix must be between 8 and 28");
    Ok((address, prefix))
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let (service_network, service_prefix) = parse_cidr(&args.service_cidr).context("--service-cidr")?;
    let (cluster_network, cluster_prefix) = parse_cidr(&args.cluster_cidr).context("--cluster-cidr")?;
    anyhow::ensure!(cluster_prefix == 16, "--cluster-cidr {}: must be a /16 (node n gets its n-th /24)", args.cluster_cidr);
    anyhow::ensure!(args.leader_lease >= Duration::from_secs(2), "--leader-lease: must be at least 2s (etcd's minimum lease)");
    anyhow::ensure!(args.node_lease >= Duration::from_secs(2), "--node-lease: must be at least 2s (etcd's minimum lease)");
    let config = StoreConfig::parse(&args.store)?;
    let store = open_store(&config).await?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "controller".into());
        format!("{host}-{}", std::process::id())
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, store = %args.store, %identity, "serving orch.v1.Api and orch.v1.Nodes (plain text: for loopback development)");
    let mut controller = Controller::start(
        store,
        ControllerConfig {
            service_network,
            service_prefix,
            cluster_network,
            node_lease: args.node_lease,
            node_grace: args.node_grace,
            leader_lease: args.leader_lease,
            event_ttl: args.event_ttl,
            identity,
        },
        listener,
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        served = controller.serve() => served.context("the gRPC server failed")?,
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping: handing leadership over");
    controller.stop().await;
    Ok(())
}
