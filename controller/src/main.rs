//! `orch-controller`: the thin binary over the `orch_controller` library. Serves
//! `orch.v1.Api` over gRPC on the configured store.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use orch_controller::api::{rpc::ApiRpc, ServiceApi};
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
    let (address, prefix) = text.split_once('/').with_context(|| format!("--service-cidr {text:?}: expected A.B.C.D/N"))?;
    let address = address.parse().with_context(|| format!("--service-cidr {text:?}: bad address"))?;
    let prefix: u8 = prefix.parse().with_context(|| format!("--service-cidr {text:?}: bad prefix"))?;
    anyhow::ensure!((8..=28).contains(&prefix), "--service-cidr {text:?}: the prefix must be between 8 and 28");
    Ok((address, prefix))
}

async fn run(args: &Args) -> anyhow::Result<()> {
    let (network, prefix) = parse_cidr(&args.service_cidr)?;
    let config = StoreConfig::parse(&args.store)?;
    let store = open_store(&config).await?;
    let api = ServiceApi::new(store, network, prefix);
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, store = %args.store, "serving orch.v1.Api (plain text: for loopback development)");
    tonic::transport::Server::builder()
        .add_service(ApiRpc::new(api).into_server())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the gRPC server failed")
}
