//! `orch up [-f FILE]…`: the quick start. A controller on the embedded store and a local
//! agent in this one foreground process; applies the manifests, says where each service
//! answers, and on Ctrl-C stops every container and removes every kernel object it
//! made. The store (services, replicas) survives, so the next `orch up` brings the same
//! services back.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use orch_agent::node::{Agent, AgentConfig, Shutdown};
use orch_api::cidr::{parse_cluster_network, parse_service_range, Ipv4Cidr};
use orch_api::pb;
use orch_controller::server::{Controller, ControllerConfig, ControllerTls};
use orch_controller::store::EmbeddedStore;
use tokio::signal::unix::{signal, SignalKind};

use super::apply::{apply_sources, wait_ready};
use crate::client::{Credentials, Target};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Manifests to apply once everything runs (files, directories or -).
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
    /// Where the store and the agent's state live.
    #[arg(long, env = "ORCH_STATE_DIR", default_value = "/var/lib/orch")]
    pub state_dir: PathBuf,
    /// Registry credentials (Docker's auth.json shape) and plain-HTTP registries, in a
    /// file only root may read [default: /etc/orch/registries.json when it exists].
    #[arg(long, value_name = "PATH")]
    pub registry_config: Option<PathBuf>,
    /// Where containers' DNS queries for names outside the cluster go: `none`, or
    /// IP[:PORT],… [default: the node's resolvers, from /etc/resolv.conf].
    #[arg(long, value_name = "ADDRESSES|none")]
    pub upstream_dns: Option<String>,
    /// The controller's address (the CLI's default server), over mutual TLS with the
    /// PKI in --tls-dir (default /etc/orch/pki, made on the first start).
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Serve the controller on this loopback address and the node API on loopback in
    /// PLAIN TEXT instead, with no PKI: any local user can then drive orch (test
    /// harnesses only; said on every start). The CLI calls it as http://ADDRESS.
    #[arg(long, value_name = "127.0.0.1:PORT", conflicts_with = "listen")]
    pub insecure_listen: Option<SocketAddr>,
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
    /// The service VIP range.
    #[arg(long, default_value = "10.96.0.0/16", value_parser = parse_service_range)]
    pub service_cidr: Ipv4Cidr,
    /// The cluster pod network (a /16): this node gets its first /24.
    #[arg(long, default_value = "10.88.0.0/16", value_parser = parse_cluster_network)]
    pub cluster_cidr: Ipv4Cidr,
    /// Where the controller's /metrics, /healthz and /readyz answer (plain HTTP on
    /// loopback; elsewhere over TLS with the PKI; `none`: nowhere).
    #[arg(long, default_value = orch_api::telemetry::CONTROLLER_METRICS, value_name = "ADDR|none")]
    pub metrics_listen: String,
    /// Where the agent's /metrics, /healthz and /readyz answer.
    #[arg(long, default_value = orch_api::telemetry::AGENT_METRICS, value_name = "ADDR|none")]
    pub node_metrics_listen: String,
    /// The controller's and the agent's log lines for people (`text`) or one JSON object
    /// per line (RUST_LOG sets the level; warn by default).
    #[arg(long, env = "ORCH_LOG_FORMAT", default_value = "text", value_name = "text|json")]
    pub log_format: orch_api::logging::LogFormat,
    /// Give up waiting for the services to be ready after this many seconds (they keep
    /// starting; `orch get replicas` shows why).
    #[arg(long, default_value = "120", value_name = "SECONDS")]
    pub timeout: u64,
}

pub async fn run(args: UpArgs, pki: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(nix::unistd::geteuid().is_root(), "orch up creates namespaces, cgroups and a bridge: run it as root (sudo)");
    let cluster_network = args.cluster_cidr;
    orch_api::cidr::Ipv4Cidr::check_apart(&cluster_network, &args.service_cidr).map_err(|e| anyhow::anyhow!(e))?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "node".into()));
    orch_api::manifest::names::check_dns_label(&name).map_err(|e| anyhow::anyhow!("node name {name:?} must be {e}; give --name"))?;
    // The front door: mutual TLS from the PKI directory (made or completed here: the CA,
    // the controller's certificate, this node's, the CLI's `admin`), or plain text on
    // loopback when asked for with --insecure-listen (`tls_dir` None).
    let (listen, tls_dir) = match args.insecure_listen {
        Some(listen) => {
            anyhow::ensure!(listen.ip().is_loopback(), "--insecure-listen {listen}: plain text is for loopback only");
            anyhow::ensure!(
                args.address.is_loopback(),
                "--insecure-listen: the node API would serve plain text on --address {}; use a loopback address",
                args.address
            );
            (listen, None)
        }
        None => {
            let controller_names = vec![args.listen.ip().to_string()];
            orch_api::tls::ensure(pki, &controller_names, &[(name.clone(), args.address.to_string())])
                .with_context(|| format!("the PKI in {}", pki.display()))?;
            (args.listen, Some(pki))
        }
    };
    // Root's alone: the store, container directories, layers and logs live below.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.state_dir)
        .and_then(|()| std::fs::set_permissions(&args.state_dir, std::fs::Permissions::from_mode(0o700)))
        .with_context(|| format!("cannot create {} (mode 0700)", args.state_dir.display()))?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    // Checked (and the TLS loaded) before anything starts.
    let metrics_tls = |flag: &str, identity: &str| -> anyhow::Result<Option<(SocketAddr, Option<Arc<rustls::ServerConfig>>)>> {
        let Some(address) = orch_api::telemetry::parse_listen(flag)? else { return Ok(None) };
        let tls = match tls_dir {
            Some(dir) if !address.ip().is_loopback() => Some(orch_api::telemetry::server_tls(dir, identity, address)?),
            _ => None,
        };
        Ok(Some((address, tls)))
    };
    let mut listeners = Vec::new();
    for (what, flag, identity) in [("controller", &args.metrics_listen, "controller".to_owned()), ("node", &args.node_metrics_listen, format!("node-{name}"))] {
        listeners.push(match metrics_tls(flag, &identity)? {
            Some((address, tls)) => Some((what, orch_api::telemetry::bind(address, tls).await?)),
            None => None,
        });
    }

    let store = EmbeddedStore::open(&args.state_dir.join("controller.redb")).await?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen} (is another orch up running?)"))?;
    let tls = tls_dir.map(|dir| ControllerTls::load(dir).with_context(|| format!("--tls-dir {}", dir.display()))).transpose()?;
    // Secrets are sealed with the key beside the PKI (`tls::ensure` made it), or, in
    // plain text, with one in the state directory.
    let key_dir = tls_dir.unwrap_or(&args.state_dir);
    let key_path = orch_api::secrets::ensure_key_file(key_dir).with_context(|| format!("the secrets key in {}", key_dir.display()))?;
    let secrets = Arc::new(orch_api::secrets::SecretsKey::load(&key_path).with_context(|| format!("{}", key_path.display()))?);
    let controller = Controller::start(
        Arc::new(store),
        ControllerConfig {
            service_range: args.service_cidr,
            cluster_network,
            identity: "orch-up".into(),
            advertise: Some(listen.to_string()),
            tls,
            secrets: Some(secrets),
            ..ControllerConfig::default()
        },
        listener,
    );
    let store_path = args.state_dir.join("controller.redb");
    match tls_dir {
        Some(dir) => eprintln!("orch: controller on {listen} (store {}; mutual TLS, credentials in {})", store_path.display(), dir.display()),
        None => eprintln!(
            "orch: WARNING: controller on {listen} and the node API in PLAIN TEXT (--insecure-listen): every local user can drive orch (store {})",
            store_path.display()
        ),
    }

    let agent = Agent::start(AgentConfig {
        name: name.clone(),
        address: args.address,
        controllers: orch_agent::node::controllers::Controllers::new(&[listen.to_string()]),
        state_dir: args.state_dir.join("agent"),
        volumes_dir: args.state_dir.join("volumes"),
        reserved_paths: vec![args.state_dir.clone(), key_path.clone()],
        cgroup_parent: args.cgroup_parent.clone(),
        bridge: args.bridge.clone(),
        capacity: orch_agent::node::machine_capacity(),
        labels: Default::default(),
        registries: orch_agent::images::RegistrySettings::from_flag(args.registry_config.clone()),
        upstream_dns: orch_agent::net::upstream_dns(args.upstream_dns.as_deref()).map_err(|e| anyhow::anyhow!(e))?,
        heartbeat: Duration::from_millis(250),
        helper: std::env::current_exe().context("cannot find the orch binary")?,
        // On the node's address (where the controller dials it), on a free port
        // (registered as it is); only the controller's certificate may call it.
        api_listen: Some(SocketAddr::new(args.address.into(), 0)),
        tls_dir: tls_dir.map(Path::to_path_buf),
        connection_limits: orch_agent::net::ConnectionLimits::default(),
        data_path: orch_agent::net::DataPath::default(),
        layer_limits: orch_agent::images::LayerLimits::default(),
        allow_chaos: false,
    })
    .await?;
    eprintln!("orch: node {name} up (bridge {}, node ports on {})", args.bridge, args.address);
    let mut telemetry = Vec::new();
    for (listener, endpoints) in listeners.into_iter().zip([controller.telemetry(), agent.telemetry()]) {
        let Some((what, listener)) = listener else { continue };
        let bound = listener.address;
        eprintln!("orch: the {what}'s /metrics, /healthz and /readyz on {}://{bound}", if bound.ip().is_loopback() { "http" } else { "https" });
        telemetry.push(listener.serve(endpoints));
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
        Shutdown::Drain
    }));

    let server = if tls_dir.is_some() { listen.to_string() } else { format!("http://{listen}") };
    let target = Target { servers: vec![server], credentials: Credentials::from_dir(pki) };
    let mut api = crate::client::connect(&target).await?;
    let outcome = async {
        if args.files.is_empty() {
            return Ok::<(), anyhow::Error>(());
        }
        let names = apply_sources(&mut api, &args.files, false).await?;
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
    for task in telemetry {
        task.abort();
    }
    eprintln!("orch: stopped; the store keeps the services for the next `orch up`");
    match failed {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
