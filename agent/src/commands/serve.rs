//! `orch-agent serve`: the node agent daemon (see `orch_agent::node`), and
//! `orch-agent teardown`: remove everything an agent made on this node.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use orch_api::pb;
use tokio::signal::unix::{signal, SignalKind};

use orch_agent::images::RegistrySettings;
use orch_agent::node::teardown::Leftovers;
use orch_agent::node::{Agent, AgentConfig, Shutdown};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Every controller's gRPC address, HOST:PORT, comma-separated: the agent holds its
    /// session with one and moves to another when it stops answering; it also learns the
    /// running controllers from them, so one added later needs no restart.
    #[arg(long, env = "ORCH_CONTROLLER", default_value = "127.0.0.1:7100", value_delimiter = ',', value_name = "HOST:PORT[,HOST:PORT...]")]
    pub controller: Vec<String>,
    /// This node's name (a DNS label); the hostname by default.
    #[arg(long)]
    pub name: Option<String>,
    /// This node's address: other nodes reach its pods through it and node ports listen on it.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: Ipv4Addr,
    #[command(flatten)]
    pub node: NodeDirs,
    /// CPU the scheduler may hand out, in millicores; all of this machine's by default.
    #[arg(long)]
    pub cpu_millis: Option<u64>,
    /// Memory the scheduler may hand out, e.g. 4Gi; all of this machine's by default.
    #[arg(long)]
    pub memory: Option<String>,
    /// A node label KEY=VALUE (for nodeSelector); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Registry credentials (Docker's auth.json shape) and plain-HTTP registries, in a
    /// file only root may read [default: /etc/orch/registries.json when it exists].
    #[arg(long, value_name = "PATH")]
    pub registry_config: Option<PathBuf>,
    /// Where containers' DNS queries for names outside the cluster go: `none`, or
    /// IP[:PORT],… [default: the node's resolvers, from /etc/resolv.conf].
    #[arg(long, value_name = "ADDRESSES|none")]
    pub upstream_dns: Option<String>,
    /// Where replicas' local volumes live (`<dir>/<service>/<volume>/<slot>`); they
    /// outlive replicas, services and `teardown`.
    #[arg(long, env = "ORCH_VOLUMES_DIR", default_value = "/var/lib/orch/volumes")]
    pub volumes_dir: PathBuf,
    /// Between heartbeats (the controller judges a node silent after about four missed
    /// beats on a steady rhythm; its node lease must be several of these).
    #[arg(long, default_value = "250", value_name = "MILLISECONDS")]
    pub heartbeat_ms: u64,
    /// Where the node API (logs, exec, stats, inspect for the controller) listens, over
    /// mutual TLS (only the controller's certificate may call it); ADDRESS:7101 by
    /// default, `none` for no API.
    #[arg(long, value_name = "HOST:PORT|none")]
    pub api_listen: Option<String>,
    /// Serve the node API on this loopback address in PLAIN TEXT instead: every local
    /// user could then exec into containers (tests only; said on every start).
    #[arg(long, value_name = "127.0.0.1:PORT", conflicts_with = "api_listen")]
    pub insecure_api_listen: Option<std::net::SocketAddr>,
    /// Where /metrics (Prometheus' text format), /healthz and /readyz answer: plain HTTP
    /// on a loopback address; any other address serves over TLS to clients with a
    /// certificate the cluster's CA signed (needs --tls-dir); `none`: nowhere.
    #[arg(long, env = "ORCH_AGENT_METRICS_LISTEN", default_value = orch_api::telemetry::AGENT_METRICS, value_name = "ADDR|none")]
    pub metrics_listen: String,
    /// Mutual TLS with the certificates in this directory (ca.pem, node-NAME.pem and
    /// node-NAME.key, from `orch-controller init`) towards the controller and for the
    /// node API. Without it the controller must be on loopback (plain text) and the node
    /// API needs --insecure-api-listen or --api-listen none.
    #[arg(long, env = "ORCH_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Connections each balancer listener (a VIP port, a node port) relays at once;
    /// one more is closed as soon as it is accepted.
    #[arg(long, default_value = "4096", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_port: u32,
    /// A relayed connection with no byte either way for this many seconds is closed.
    #[arg(long, default_value = "300", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout: u64,
    /// Where TCP service traffic (VIPs, node ports from other machines) is balanced:
    /// `proxy`, the balancer process (connection limits, idle timeout, connect fallback,
    /// least connections), or `kernel`, nftables DNAT (no userspace hop, the clients'
    /// own addresses at local backends of node ports; needs Debian's `conntrack`). DNS,
    /// UDP, and node ports called from the node itself or from its pods stay with the
    /// balancer process either way.
    #[arg(long, value_enum, default_value = "kernel")]
    pub data_path: orch_agent::net::DataPath,
    /// The most one image layer may unpack to (its files' bytes), e.g. 32Gi; a larger
    /// layer fails its pull.
    #[arg(long, default_value = "32Gi", value_name = "BYTES")]
    pub max_layer_size: String,
    /// The most entries (files, directories, links) one image layer may hold.
    #[arg(long, default_value = "1000000", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_layer_entries: u64,
    /// Log lines for people (`text`) or one JSON object per line, with the fields of the
    /// spans around it (a replica's carry `replica` and `service`); RUST_LOG sets the level.
    #[arg(long, env = "ORCH_LOG_FORMAT", default_value = "text", value_name = "text|json")]
    pub log_format: orch_api::logging::LogFormat,
    /// On SIGINT/SIGTERM stop every replica and remove the node network, instead of
    /// leaving the containers running for the next agent.
    #[arg(long)]
    pub drain_on_exit: bool,
    /// Let `orch chaos` take this node down (its replicas killed, none restarted, its
    /// link to the controllers silent) or partition it, for at most 300 s each time; the
    /// agent ends every outage by itself. Off by default: a remote kill is a door.
    #[arg(long)]
    pub allow_chaos: bool,
}

/// Where one agent keeps its things on the node: `serve` and `teardown` share them.
#[derive(Debug, Args)]
pub struct NodeDirs {
    /// Where container directories, images, logs and replica records live.
    #[arg(long, env = "ORCH_AGENT_STATE_DIR", default_value = "/var/lib/orch/agent")]
    pub state_dir: PathBuf,
    /// Parent of every container's cgroup in every hierarchy.
    #[arg(long, env = "ORCH_CGROUP_PARENT", default_value = "orch")]
    pub cgroup_parent: String,
    /// The node bridge (at most 12 characters: the balancer's names derive from it).
    #[arg(long, default_value = "orch0")]
    pub bridge: String,
}

#[derive(Debug, Args)]
pub struct TeardownArgs {
    #[command(flatten)]
    pub node: NodeDirs,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "node".into())
}

fn config(args: &ServeArgs) -> anyhow::Result<AgentConfig> {
    let name = args.name.clone().unwrap_or_else(hostname);
    orch_api::manifest::names::check_dns_label(&name).map_err(|e| anyhow::anyhow!("--name {name:?}: must be {e}"))?;
    let machine = orch_agent::node::machine_capacity();
    let memory = match &args.memory {
        Some(text) => orch_api::manifest::quantity::parse_memory_bytes(text).map_err(|e| anyhow::anyhow!("--memory {text:?}: {e}"))?,
        None => machine.memory_bytes,
    };
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let (key, value) = label.split_once('=').ok_or_else(|| anyhow::anyhow!("--label {label:?}: expected KEY=VALUE"))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    anyhow::ensure!(args.heartbeat_ms >= 100, "--heartbeat-ms: at least 100");
    let controllers: Vec<String> = args.controller.iter().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect();
    anyhow::ensure!(!controllers.is_empty(), "--controller: give at least one HOST:PORT");
    for controller in &controllers {
        let (host, _) = orch_api::host_port(orch_agent::node::controllers::address_of(controller))
            .ok_or_else(|| anyhow::anyhow!("--controller {controller:?}: expected HOST:PORT"))?;
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        anyhow::ensure!(
            loopback || args.tls_dir.is_some(),
            "--controller {controller}: plain text is for loopback only; give --tls-dir (orch-controller init makes the certificates)"
        );
    }
    let api_listen = match (args.api_listen.as_deref(), args.insecure_api_listen) {
        (_, Some(address)) => {
            anyhow::ensure!(address.ip().is_loopback(), "--insecure-api-listen {address}: plain text is for loopback only");
            anyhow::ensure!(args.tls_dir.is_none(), "--insecure-api-listen with --tls-dir: give one (the node API is either mutual TLS or plain text)");
            tracing::warn!(%address, "--insecure-api-listen: the node API serves PLAIN TEXT; every local user can exec into this node's containers");
            Some(address)
        }
        (Some("none"), None) => None,
        (Some(text), None) => Some(text.parse().map_err(|_| anyhow::anyhow!("--api-listen {text:?}: expected HOST:PORT or none"))?),
        (None, None) => Some(std::net::SocketAddr::from((args.address, 7101))),
    };
    if args.tls_dir.is_none() {
        anyhow::ensure!(
            api_listen.is_none() || args.insecure_api_listen.is_some(),
            "the node API serves mutual TLS only: give --tls-dir (orch-controller init makes the certificates), --api-listen none, or --insecure-api-listen 127.0.0.1:PORT for tests"
        );
    }
    Ok(AgentConfig {
        name,
        address: args.address,
        controllers: orch_agent::node::controllers::Controllers::new(&controllers),
        state_dir: args.node.state_dir.clone(),
        volumes_dir: args.volumes_dir.clone(),
        reserved_paths: Vec::new(),
        cgroup_parent: args.node.cgroup_parent.clone(),
        bridge: args.node.bridge.clone(),
        capacity: pb::ResourceList { cpu_millis: args.cpu_millis.unwrap_or(machine.cpu_millis), memory_bytes: memory, pids: 0 },
        labels,
        registries: RegistrySettings::from_flag(args.registry_config.clone()),
        upstream_dns: orch_agent::net::upstream_dns(args.upstream_dns.as_deref()).map_err(|e| anyhow::anyhow!(e))?,
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        helper: std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find the agent binary: {e}"))?,
        api_listen,
        tls_dir: args.tls_dir.clone(),
        connection_limits: orch_agent::net::ConnectionLimits {
            max_connections: usize::try_from(args.max_connections_per_port).unwrap_or(usize::MAX),
            idle_timeout: Duration::from_secs(args.idle_timeout),
        },
        data_path: args.data_path,
        layer_limits: orch_agent::images::LayerLimits {
            max_bytes: orch_api::manifest::quantity::parse_memory_bytes(&args.max_layer_size)
                .map_err(|e| anyhow::anyhow!("--max-layer-size {:?}: {e}", args.max_layer_size))?,
            max_entries: usize::try_from(args.max_layer_entries).unwrap_or(usize::MAX),
        },
        allow_chaos: args.allow_chaos,
    })
}

pub async fn serve(args: ServeArgs) -> ExitCode {
    match serve_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("orch-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_inner(args: ServeArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    let metrics_listen = orch_api::telemetry::parse_listen(&args.metrics_listen)?;
    let metrics_tls = match (metrics_listen, &args.tls_dir) {
        (Some(address), Some(dir)) if !address.ip().is_loopback() => Some(orch_api::telemetry::server_tls(dir, &format!("node-{}", config.name), address)?),
        _ => None,
    };
    // Bound before the agent starts: a taken port stops it before it changes anything.
    let metrics_listener = match metrics_listen {
        Some(address) => Some(orch_api::telemetry::bind(address, metrics_tls).await?),
        None => None,
    };
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tracing::info!(node = %config.name, controllers = %config.controllers.with(|set| set.known().join(",")), state = %config.state_dir.display(), "orch-agent starting");
    let agent = tokio::select! {
        agent = Agent::start(config) => agent?,
        _ = interrupt.recv() => return Ok(()),
        _ = terminate.recv() => return Ok(()),
    };
    let metrics = metrics_listener.map(|listener| {
        tracing::info!(listen = %listener.address, tls = !listener.address.ip().is_loopback(), "serving /metrics, /healthz and /readyz");
        listener.serve(agent.telemetry())
    });
    let how = if args.drain_on_exit { Shutdown::Drain } else { Shutdown::Leave };
    agent
        .run(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            how
        })
        .await;
    if let Some(task) = metrics {
        task.abort();
    }
    Ok(())
}

/// Stops and removes every container the agent's state dir knows, frees their
/// addresses, and removes the node network and the agent's records.
pub async fn teardown(args: TeardownArgs) -> ExitCode {
    let args = args.node;
    let helper = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("orch-agent"));
    let leftovers = Leftovers { state_dir: args.state_dir.clone(), bridge: args.bridge.clone(), cgroup_parent: args.cgroup_parent.clone(), helper };
    match orch_agent::node::teardown::teardown(&leftovers).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failures) => {
            for failure in failures {
                eprintln!("orch-agent teardown: {failure}");
            }
            ExitCode::FAILURE
        }
    }
}
