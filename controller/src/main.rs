//! `orch-controller`: the thin binary over the `orch_controller` library. Serves
//! `orch.v1.Api` over gRPC on the configured store.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use orch_controller::api::{rpc::ApiRpc, ServiceApi};
use orch_controller::nodes::{rpc::NodesRpc, NodeRegistry};
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
    #[arg(long, default_value = "10s", value_parser = parse_seconds)]
    node_lease: std::time::Duration,
}

fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    let seconds = text.strip_suffix('s').unwrap_or(text);
    seconds.parse::<u64>().map(std::time::Duration::from_secs).map_err(|_| format!("{text:?} is not a duration in seconds such as 10s"))
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
    let (network, prefix) = parse_cidr(&args.service_cidr).context("--service-cidr")?;
    let config = StoreConfig::parse(&args.store)?;
    let store = open_store(&config).await?;
    let (cluster, cluster_prefix) = parse_cidr(&args.cluster_cidr).map_err(|e| anyhow::anyhow!("{e}").context("--cluster-cidr"))?;
    anyhow::ensure!(cluster_prefix == 16, "--cluster-cidr {}: must be a /16 (node n gets its n-th /24)", args.cluster_cidr);
    let api = ServiceApi::new(store.clone(), network, prefix);
    let nodes = NodesRpc::new(NodeRegistry::new(store, cluster, args.node_lease), args.service_cidr.clone());
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, store = %args.store, "serving orch.v1.Api and orch.v1.Nodes (plain text: for loopback development)");
    tonic::transport::Server::builder()
        .add_service(ApiRpc::new(api).into_server())
        .add_service(nodes.into_server())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the gRPC server failed")
}
