//! `orch-controller`: the thin binary over the `orch_controller` library: serves
//! `orch.v1.Api` and `orch.v1.Nodes`, and runs the reconcilers while it leads.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use orch_api::cidr::{parse_cluster_network, parse_service_range, Ipv4Cidr};
use orch_controller::server::{Controller, ControllerConfig, ControllerTls};
use orch_controller::store::{open_store, EtcdTls, StoreConfig};

#[derive(Debug, Parser)]
#[command(name = "orch-controller", version, about = "orch controller: desired state, scheduling, reconciliation")]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Serve (and call agents) over mutual TLS with the certificates in this directory
    /// (`orch-controller init` makes them). Required, unless --insecure-listen.
    #[arg(long, env = "ORCH_TLS_DIR", global = true)]
    tls_dir: Option<std::path::PathBuf>,
    /// Where desired state lives: embedded:PATH (a redb file) or etcd://HOST:PORT[,HOST:PORT...]
    /// (every member of the etcd cluster: requests move off one that fails)
    #[arg(long, env = "ORCH_STORE", default_value = "embedded:/var/lib/orch/controller.redb")]
    store: String,
    /// Call etcd over TLS, trusting the members' certificates this CA signed (with
    /// `init --etcd-member`: the cluster's ca.pem)
    #[arg(long, env = "ORCH_ETCD_CA", value_name = "PATH", global = true)]
    etcd_ca: Option<std::path::PathBuf>,
    /// The certificate this controller shows etcd (members with --client-cert-auth), with --etcd-key
    #[arg(long, env = "ORCH_ETCD_CERT", value_name = "PATH", global = true)]
    etcd_cert: Option<std::path::PathBuf>,
    /// The key of --etcd-cert
    #[arg(long, env = "ORCH_ETCD_KEY", value_name = "PATH", global = true)]
    etcd_key: Option<std::path::PathBuf>,
    /// Address the gRPC API listens on (mutual TLS).
    #[arg(long, env = "ORCH_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Where agents and the CLI reach this controller: published in the store, so every
    /// agent learns of it and fails over to it [default: the listen address, unless it is
    /// 0.0.0.0 — then give it]
    #[arg(long, env = "ORCH_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Listen on this loopback address in PLAIN TEXT instead, with no certificates:
    /// every local user can then drive the cluster (tests and development only; said on
    /// every start).
    #[arg(long, value_name = "127.0.0.1:PORT", conflicts_with_all = ["listen", "tls_dir"])]
    insecure_listen: Option<SocketAddr>,
    /// Where /metrics (Prometheus' text format), /healthz and /readyz answer: plain HTTP
    /// on a loopback address; any other address serves over TLS to clients with a
    /// certificate the cluster's CA signed (needs --tls-dir); `none`: nowhere.
    #[arg(long, env = "ORCH_METRICS_LISTEN", default_value = orch_api::telemetry::CONTROLLER_METRICS, value_name = "ADDR|none")]
    metrics_listen: String,
    /// Log lines for people (`text`) or one JSON object per line, with the fields of the
    /// spans around it (a replica's carry `replica` and `service`); RUST_LOG sets the level.
    #[arg(long, env = "ORCH_LOG_FORMAT", default_value = "text", value_name = "text|json", global = true)]
    log_format: orch_api::logging::LogFormat,
    /// The service VIP range.
    #[arg(long, default_value = "10.96.0.0/16", value_parser = parse_service_range)]
    service_cidr: Ipv4Cidr,
    /// The cluster pod network, /8 to /16: node n gets its n-th /24 (a /16 holds 254
    /// nodes, a /14 1,022, a /12 4,094).
    #[arg(long, default_value = "10.88.0.0/16", value_parser = parse_cluster_network)]
    cluster_cidr: Ipv4Cidr,
    /// A node whose heartbeats stop for this long is NotReady.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    node_lease: Duration,
    /// A NotReady node's replicas are replaced elsewhere after this.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    node_grace: Duration,
    /// The leadership lease: a dead leader is replaced within about this (plus etcd's
    /// half-second expiry sweep). 2s, etcd's minimum, keeps a failover under 3 s; the
    /// leader steps down when no renewal (every 500 ms) got through for 1.33 s.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_lease: Duration,
    /// How long events are kept.
    #[arg(long, default_value = "3600s", value_parser = parse_duration)]
    event_ttl: Duration,
    /// How long a node must have been Ready (returned or joined) before the leader moves
    /// replicas onto it to rebalance their services: a flapping node takes none.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    rebalance_cooldown: Duration,
    /// This controller's name in leader election (default: hostname and PID).
    #[arg(long)]
    identity: Option<String>,
    /// The key that seals Secrets in the store (every controller of a cluster needs the
    /// same file) [default: secrets.key in --tls-dir, which `init` writes].
    #[arg(long, env = "ORCH_SECRETS_KEY", value_name = "PATH")]
    secrets_key: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Create the cluster's CA and certificates (controller, one per node, the CLI's
    /// `admin`) in --tls-dir; an existing CA is reused, so this also adds nodes.
    Init {
        /// A name or address agents and the CLI use to reach the controller; repeatable.
        #[arg(long = "controller-name", value_name = "NAME|IP")]
        controller_names: Vec<String>,
        /// A node and its address, NAME=IP; repeatable.
        #[arg(long = "node", value_name = "NAME=IP")]
        nodes: Vec<String>,
        /// An etcd member and its address, NAME=IP; repeatable: etcd-NAME.pem/.key for its
        /// client and peer ports (role orch:store; no orch service admits it).
        #[arg(long = "etcd-member", value_name = "NAME=IP")]
        etcd_members: Vec<String>,
    },
    /// Write every orch key of --store, read at one revision with its revision metadata,
    /// to FILE (mode 0600; Secrets stay sealed). Reads etcd while controllers run; an
    /// embedded file only while none uses it (else: `orch backup FILE` through the
    /// controller).
    Backup {
        /// The backup file to write (replaced whole, or left as it was).
        file: std::path::PathBuf,
    },
    /// Put a backup into --store, which must be empty (a new file, or a new etcd) and
    /// used by no controller: every key gets its revisions back, so nothing rolls and
    /// no replica restarts when the controllers start on it again.
    Restore {
        /// A file `orch-controller backup` or `orch backup` wrote.
        file: std::path::PathBuf,
    },
    /// Re-issue every certificate in --tls-dir (same names, roles and addresses; new keys
    /// and a new lifetime) with the same CA; then hand each machine its new files and
    /// restart its controller or agent.
    Renew {
        /// How long the new certificates are valid.
        #[arg(long, default_value_t = orch_api::tls::LEAF_VALIDITY_DAYS)]
        days: u32,
    },
}

fn init(args: &Args, controller_names: &[String], nodes: &[String], etcd_members: &[String]) -> anyhow::Result<()> {
    let dir = args.tls_dir.clone().context("init needs --tls-dir DIR (where the certificates go)")?;
    let pairs = |flag: &str, given: &[String]| -> anyhow::Result<Vec<(String, String)>> {
        let mut pairs = Vec::new();
        for pair in given {
            let (name, address) = pair.split_once('=').with_context(|| format!("--{flag} {pair:?}: expected NAME=IP"))?;
            orch_api::manifest::names::check_dns_label(name).map_err(|e| anyhow::anyhow!("--{flag} {pair:?}: the name must be {e}"))?;
            pairs.push((name.to_owned(), address.to_owned()));
        }
        Ok(pairs)
    };
    let (nodes, members) = (pairs("node", nodes)?, pairs("etcd-member", etcd_members)?);
    for path in orch_api::tls::init_with_store(&dir, controller_names, &nodes, &members)? {
        println!("{}", path.display());
    }
    Ok(())
}

async fn backup(args: &Args, file: &std::path::Path) -> anyhow::Result<()> {
    let config = store_config(args)?;
    if let StoreConfig::Embedded { path } = &config {
        // Opening would create it: a backup of nothing is a mistake, not an empty file.
        anyhow::ensure!(path.exists(), "--store {}: no such file", args.store);
    }
    let store = open_store(&config).await?;
    let snapshot = orch_controller::store::take_snapshot(store.as_ref(), orch_controller::keys::ROOT, &args.store).await?;
    snapshot.write_file(file)?;
    println!("{}: {} keys at revision {} from {}", file.display(), snapshot.records.len(), snapshot.revision, args.store);
    Ok(())
}

async fn restore(args: &Args, file: &std::path::Path) -> anyhow::Result<()> {
    let snapshot = orch_controller::store::Snapshot::read_file(file)?;
    let config = store_config(args)?;
    let summary = orch_controller::store::restore_store(&config, &snapshot).await?;
    println!(
        "{}: restored {} keys into {} (revision {}); {} keys on a lease left out (their owners write them again)",
        file.display(),
        summary.restored,
        args.store,
        summary.revision,
        summary.left_out
    );
    Ok(())
}

/// A task that ends with its holder.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `--store` with the etcd TLS flags.
fn store_config(args: &Args) -> anyhow::Result<StoreConfig> {
    let tls = EtcdTls::from_flags(args.etcd_ca.clone(), args.etcd_cert.clone(), args.etcd_key.clone())?;
    Ok(StoreConfig::parse(&args.store)?.with_etcd_tls(tls)?)
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

/// The address published for clients: `--advertise` (checked: HOST:PORT), else the
/// listen address unless it is unspecified.
fn advertised(flag: Option<&str>, listening: SocketAddr) -> anyhow::Result<Option<String>> {
    match flag {
        Some(address) => {
            anyhow::ensure!(orch_api::host_port(address).is_some(), "--advertise {address:?}: expected HOST:PORT with a port from 1 to 65535");
            Ok(Some(address.to_owned()))
        }
        None if listening.ip().is_unspecified() => {
            tracing::warn!(%listening, "listening on every address and no --advertise: agents will not learn of this controller (they use only the addresses they were given)");
            Ok(None)
        }
        None => Ok(Some(listening.to_string())),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    orch_api::logging::init(args.log_format, "info");
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    match &args.command {
        Some(Sub::Init { controller_names, nodes, etcd_members }) => return init(args, controller_names, nodes, etcd_members),
        Some(Sub::Renew { days }) => {
            anyhow::ensure!(*days >= 1, "--days: at least 1");
            let dir = args.tls_dir.clone().context("renew needs --tls-dir DIR (the PKI to renew)")?;
            for path in orch_api::tls::renew(&dir, *days)? {
                println!("{}", path.display());
            }
            return Ok(());
        }
        Some(Sub::Backup { file }) => return backup(args, file).await,
        Some(Sub::Restore { file }) => return restore(args, file).await,
        None => {}
    }
    let (listen, tls) = match (&args.tls_dir, args.insecure_listen) {
        (_, Some(listen)) => {
            anyhow::ensure!(listen.ip().is_loopback(), "--insecure-listen {listen}: plain text is for loopback only");
            (listen, None)
        }
        (Some(dir), None) => (args.listen, Some(ControllerTls::load(dir).with_context(|| format!("--tls-dir {}", dir.display()))?)),
        (None, None) => anyhow::bail!(
            "no --tls-dir: the controller serves mutual TLS only (orch-controller --tls-dir DIR init makes the certificates); --insecure-listen 127.0.0.1:PORT serves plain text on loopback for tests"
        ),
    };
    let cluster_network = args.cluster_cidr;
    orch_api::cidr::Ipv4Cidr::check_apart(&cluster_network, &args.service_cidr).map_err(|e| anyhow::anyhow!(e))?;
    anyhow::ensure!(args.leader_lease >= Duration::from_secs(2), "--leader-lease: must be at least 2s (etcd's minimum lease)");
    anyhow::ensure!(args.node_lease >= Duration::from_secs(2), "--node-lease: must be at least 2s (etcd's minimum lease)");
    let config = store_config(args)?;
    let store = open_store(&config).await?;
    let marker = orch_controller::store::restore_marker_key(orch_controller::keys::ROOT);
    anyhow::ensure!(
        store.get(&marker).await?.is_none(),
        "--store {}: a restore into it did not finish ({marker} is there): wipe it and run `orch-controller restore` again",
        args.store
    );
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "controller".into());
        format!("{host}-{}", std::process::id())
    });
    let secrets_path = args.secrets_key.clone().or_else(|| args.tls_dir.as_ref().map(|dir| dir.join(orch_api::secrets::SECRETS_KEY_FILE)));
    let secrets = match secrets_path {
        // Named by the flag: it must load. Beside the PKI: a cluster made before secrets
        // existed has none yet, and runs without Secrets until `init` writes it.
        Some(path) if args.secrets_key.is_some() || path.exists() => {
            Some(std::sync::Arc::new(orch_api::secrets::SecretsKey::load(&path).with_context(|| format!("--secrets-key {}", path.display()))?))
        }
        _ => {
            tracing::warn!("no secrets key (--secrets-key, or secrets.key in --tls-dir): Secrets are refused");
            None
        }
    };
    let metrics_listen = orch_api::telemetry::parse_listen(&args.metrics_listen)?;
    let metrics_tls = match (metrics_listen, &args.tls_dir) {
        (Some(address), Some(dir)) if !address.ip().is_loopback() => Some(orch_api::telemetry::server_tls(dir, "controller", address)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let advertise = advertised(args.advertise.as_deref(), listener.local_addr().unwrap_or(listen))?;
    let metrics_listener = match metrics_listen {
        Some(address) => Some(orch_api::telemetry::bind(address, metrics_tls).await?),
        None => None,
    };
    if tls.is_some() {
        tracing::info!(%listen, store = %args.store, %identity, "serving orch.v1.Api and orch.v1.Nodes over mutual TLS");
    } else {
        tracing::warn!(%listen, store = %args.store, %identity, "--insecure-listen: serving orch.v1.Api and orch.v1.Nodes in PLAIN TEXT; every local user can drive this controller");
    }
    let mut controller = Controller::start(
        store,
        ControllerConfig {
            service_range: args.service_cidr,
            cluster_network,
            node_lease: args.node_lease,
            node_grace: args.node_grace,
            leader_lease: args.leader_lease,
            event_ttl: args.event_ttl,
            rebalance_cooldown: args.rebalance_cooldown,
            identity,
            advertise,
            tls,
            secrets,
            // etcd: renewals on a connection of their own (an embedded file opens once).
            election_store: matches!(config, StoreConfig::Etcd { .. }).then(|| config.clone()),
            ..ControllerConfig::default()
        },
        listener,
    );
    let _metrics = metrics_listener.map(|listener| {
        tracing::info!(listen = %listener.address, tls = !listener.address.ip().is_loopback(), "serving /metrics, /healthz and /readyz");
        AbortOnDrop(listener.serve(controller.telemetry()))
    });
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
