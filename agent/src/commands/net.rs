//! `orch-agent net up`: a node network in the foreground, by hand — the bridge, the
//! balancer namespace converged to a service table from a JSON file, routes to other
//! nodes — until Ctrl-C or SIGTERM, then torn down. For debugging and benchmarks; the
//! agent proper drives the same code from the controller's desired state.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use orch_agent::net::{NodeNetwork, NodeNetworkConfig, PeerRoute, ServiceEndpoints, Strategy, Subnet};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Args)]
pub struct NetArgs {
    #[command(subcommand)]
    pub command: NetCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    RoundRobin,
    LeastConnections,
}

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Set up the node network, apply a service table, run until interrupted.
    Up {
        #[arg(long, default_value = "orch0")]
        bridge: String,
        #[arg(long, default_value = "10.88.1.0/24")]
        pod_subnet: String,
        #[arg(long, default_value = "10.96.0.0/16")]
        service_cidr: String,
        /// The node's own address: node ports are published there.
        #[arg(long)]
        node_address: Option<std::net::Ipv4Addr>,
        #[arg(long, value_enum, default_value = "round-robin")]
        strategy: StrategyArg,
        /// Where TCP service traffic is balanced: the balancer process or nftables DNAT.
        #[arg(long, value_enum, default_value = "kernel")]
        data_path: orch_agent::net::DataPath,
        /// A JSON array of services: name, vip, ports, ready (re-read on SIGHUP).
        #[arg(long)]
        services: Option<PathBuf>,
        /// A route to another node's pods, SUBNET=VIA; repeatable.
        #[arg(long = "route", value_name = "SUBNET=VIA")]
        routes: Vec<String>,
        #[arg(long, env = "ORCH_AGENT_STATE_DIR", default_value = "/var/lib/orch/agent")]
        state_dir: PathBuf,
        /// Leave the network in place on exit.
        #[arg(long)]
        keep: bool,
    },
}

pub async fn run(args: NetArgs) -> ExitCode {
    match run_net(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orch-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_services(path: &std::path::Path) -> anyhow::Result<Vec<ServiceEndpoints>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not a JSON array of services", path.display()))
}

async fn run_net(args: NetArgs) -> anyhow::Result<()> {
    let NetCommand::Up { bridge, pod_subnet, service_cidr, node_address, strategy, data_path, services, routes, state_dir, keep } = args.command;
    let mut peer_routes = Vec::new();
    for route in &routes {
        let (subnet, via) = route.split_once('=').with_context(|| format!("--route {route:?}: expected SUBNET=VIA"))?;
        let subnet = Subnet::parse(subnet).with_context(|| format!("--route {route:?}"))?;
        let via = via.parse().with_context(|| format!("--route {route:?}: {via:?} is not an IPv4 address"))?;
        peer_routes.push(PeerRoute { subnet_network: subnet.network, prefix: subnet.prefix, via });
    }
    let table = services.as_deref().map(read_services).transpose()?.unwrap_or_default();
    let network = NodeNetwork::setup(NodeNetworkConfig {
        bridge,
        subnet: Subnet::parse(&pod_subnet).context("--pod-subnet")?,
        service_cidr: Subnet::parse(&service_cidr).context("--service-cidr")?,
        cluster_cidr: Subnet::parse(&pod_subnet).context("--pod-subnet")?.supernet(16),
        upstream_dns: Vec::new(),
        state_dir,
        node_address,
        strategy: match strategy {
            StrategyArg::RoundRobin => Strategy::RoundRobin,
            StrategyArg::LeastConnections => Strategy::LeastConnections,
        },
        limits: orch_agent::net::ConnectionLimits::default(),
        node_netns: None,
        helper: Some(std::env::current_exe().context("cannot find this binary (/proc/self/exe)")?),
        data_path,
    })
    .await?;
    let outcome = serve(&network, &table, &peer_routes, services.as_deref()).await;
    if !keep {
        network.teardown(false).await?;
    }
    outcome
}

/// Listeners the balancer could not open (the others are served), on stderr.
fn report_failures(failures: &[orch_agent::net::ListenerFailure]) {
    for failure in failures {
        eprintln!("orch-agent: cannot open {failure}");
    }
}

async fn serve(network: &NodeNetwork, table: &[ServiceEndpoints], routes: &[PeerRoute], services: Option<&std::path::Path>) -> anyhow::Result<()> {
    network.set_peer_routes(routes).await?;
    report_failures(&network.apply_services(table).await?);
    println!("{}", serde_json::to_string_pretty(&network.view().await?)?);
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = hangup.recv() => {
                if let Some(path) = services {
                    match read_services(path) {
                        Ok(table) => report_failures(&network.apply_services(&table).await?),
                        Err(e) => eprintln!("orch-agent: {e:#}; keeping the current table"),
                    }
                }
            }
        }
    }
}
