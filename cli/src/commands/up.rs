//! `orch up [-f FILE]…`: the quick start. A controller on the embedded store and a local
//! agent in this one foreground process; applies the manifests, says where each service
//! answers, and on Ctrl-C stops every container and removes every kernel object it
//! made. The store (services, replicas) survives, so the next `orch up` brings the same
//! services back.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use orch_agent::node::{Agent, AgentConfig, Shutdown};
use orch_api::pb;
use orch_controller::server::{Controller, ControllerConfig};
use orch_controller::store::EmbeddedStore;
use tokio::signal::unix::{signal, SignalKind};

use super::apply::{apply_sources, wait_ready};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Manifests to apply once everything runs (files, directories or -).
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
    /// Where the store and the agent's state live.
    #[arg(long, env = "ORCH_STATE_DIR", default_value = "/var/lib/orch")]
    pub state_dir: PathBuf,
    /// The controller's address (the CLI's default server).
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// This node's name; the hostname by default.
    #[arg(long)]
    pub name: Option<String>,
    /// Where node ports listen.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: Ipv4Addr,
    /// The node bridge.
    #[arg(long, default_value = "orch0")]
    pub bridge: String,
    /// Parent of the containers' cgroups.
    #[arg(long, default_value = "orch")]
    pub cgroup_parent: String,
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: String,
    #[arg(long, default_value = "10.88.0.0/16")]
    pub cluster_cidr: String,
    /// Give up waiting for the services to be ready after this many seconds (they keep
    /// starting; `orch get replicas` shows why).
    #[arg(long, default_value = "120", value_name = "SECONDS")]
    pub timeout: u64,
}

fn cidr(text: &str, flag: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (address, prefix) = text.split_once('/').with_context(|| format!("{flag} {text:?}: expected A.B.C.D/N"))?;
    let address: Ipv4Addr = address.parse().with_context(|| format!("{flag} {text:?}: bad address"))?;
    let prefix: u8 = prefix.parse().with_context(|| format!("{flag} {text:?}: bad prefix"))?;
    Ok((address, prefix))
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "orch up creates namespaces, cgroups and a bridge: run it as root (sudo)");
    let (service_network, service_prefix) = cidr(&args.service_cidr, "--service-cidr")?;
    let (cluster_network, cluster_prefix) = cidr(&args.cluster_cidr, "--cluster-cidr")?;
    anyhow::ensure!(cluster_prefix == 16, "--cluster-cidr {}: must be a /16", args.cluster_cidr);
    anyhow::ensure!(args.listen.ip().is_loopback(), "--listen {}: orch up serves in plain text, so on loopback only", args.listen);
    std::fs::create_dir_all(&args.state_dir).with_context(|| format!("cannot create {}", args.state_dir.display()))?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;

    let store = EmbeddedStore::open(&args.state_dir.join("controller.redb")).await?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {} (is another orch up running?)", args.listen))?;
    let controller = Controller::start(
        Arc::new(store),
        ControllerConfig { service_network, service_prefix, cluster_network, identity: "orch-up".into(), ..ControllerConfig::default() },
        listener,
    );
    eprintln!("orch: controller on {} (store {}; plain text, for this machine only)", args.listen, args.state_dir.join("controller.redb").display());

    let name = args
        .name
        .clone()
        .unwrap_or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "node".into()));
    orch_api::manifest::names::check_dns_label(&name).map_err(|e| anyhow::anyhow!("node name {name:?} must be {e}; give --name"))?;
    let agent = Agent::start(AgentConfig {
        name: name.clone(),
        address: args.address,
        controller: format!("http://{}", args.listen),
        state_dir: args.state_dir.join("agent"),
        cgroup_parent: args.cgroup_parent.clone(),
        bridge: args.bridge.clone(),
        capacity: orch_agent::node::machine_capacity(),
        labels: Default::default(),
        insecure_registries: Vec::new(),
        heartbeat: Duration::from_secs(1),
        helper: std::env::current_exe().context("cannot find the orch binary")?,
        // On loopback next to the controller, on a free port (registered as it is).
        api_listen: Some(SocketAddr::new(args.listen.ip(), 0)),
        tls_dir: None,
    })
    .await?;
    eprintln!("orch: node {name} up (bridge {}, node ports on {})", args.bridge, args.address);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
        Shutdown::Drain
    }));

    let mut api = crate::client::connect(&args.listen.to_string(), None).await?;
    let outcome = async {
        if args.files.is_empty() {
            return Ok::<(), anyhow::Error>(());
        }
        let names = apply_sources(&mut api, &args.files).await?;
        if let Err(error) = wait_ready(&mut api, &names, Duration::from_secs(args.timeout)).await {
            eprintln!("orch: {error:#}");
        }
        for name in &names {
            let service = api.get_service(pb::GetServiceRequest { name: name.clone() }).await.map_err(crate::client::explain)?.into_inner();
            for port in service.spec.as_ref().map(|s| s.ports.clone()).unwrap_or_default() {
                let mut line = format!("service/{name} answers on {}:{} (VIP, from this machine and its containers)", service.vip, port.service_port);
                if port.node_port > 0 {
                    line.push_str(&format!(" and on http://{}:{}", args.address, port.node_port));
                }
                println!("{line}");
            }
        }
        Ok(())
    };
    let applied = tokio::select! {
        result = outcome => Some(result),
        _ = interrupt.recv() => None,
        _ = terminate.recv() => None,
    };
    let failed = match applied {
        Some(Err(error)) => Some(error),
        Some(Ok(())) => {
            eprintln!("orch: running; `orch get replicas -w` in another terminal; Ctrl-C stops everything");
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            None
        }
        None => None,
    };
    eprintln!("orch: stopping every replica and removing the node network");
    let _ = stop.send(());
    let _ = agent_task.await;
    controller.stop().await;
    eprintln!("orch: stopped; the store keeps the services for the next `orch up`");
    match failed {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
