//! How an agent is configured, and why it may fail to start.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use orch_api::pb;

use crate::images::RegistrySettings;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("node API: cannot listen on {address}: {source}")]
    Listen { address: std::net::SocketAddr, source: std::io::Error },
    #[error("node API: {0}")]
    NodeApi(String),
    #[error("{what} from the controller: {reason}")]
    Registration { what: &'static str, reason: String },
    #[error("runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("image store: {0}")]
    Images(#[from] crate::images::ImageError),
    #[error("node network: {0}")]
    Network(#[from] crate::net::NetError),
    #[error("volumes: {0}")]
    Volumes(String),
}

/// Why the link to the controller failed (the agent retries with back-off).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("controller {controller}: {reason}")]
    Endpoint { controller: String, reason: String },
    #[error("controller {controller}: TLS: {source}")]
    Tls { controller: String, source: orch_api::tls::TlsError },
    #[error("controller {controller}: {source}")]
    Connect { controller: String, source: tonic::transport::Error },
    #[error("controller {controller}: {call}: {}", status.message())]
    Call { controller: String, call: &'static str, status: tonic::Status },
    #[error("controller {controller}: {what}: {source}")]
    Registration { controller: String, what: &'static str, source: orch_api::cidr::CidrError },
    #[error("no controller answered: {}", tried.join("; "))]
    NoController { tried: Vec<String> },
    #[error("the controller ended the session")]
    Ended,
    #[error("the session's upward stream closed")]
    UpwardClosed,
    /// `orch chaos` cut the link for an outage (now over): a new session starts whole.
    #[error("the link to the controllers was silent for an outage (orch chaos)")]
    Silenced,
    /// A set that does not follow from the session's earlier ones: a new session starts
    /// whole.
    #[error("controller {controller}: the session is out of step: {error}")]
    OutOfStep { controller: String, error: orch_api::deltas::DeltaError },
}

/// How long one controller may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    /// The node's address: other nodes route to its pods through it; node ports listen on it.
    pub address: Ipv4Addr,
    /// The controllers' gRPC addresses: the ones given and the ones learned since
    /// (shared by every clone of this config).
    pub controllers: super::controllers::Controllers,
    pub state_dir: PathBuf,
    /// Local volumes: `<volumes_dir>/<service>/<volume>/<slot>`.
    pub volumes_dir: PathBuf,
    /// More host paths no hostPath may overlap, besides the agent's own directories
    /// (`orch up`: its whole state directory — the store — and the secrets key).
    pub reserved_paths: Vec<PathBuf>,
    pub cgroup_parent: String,
    pub bridge: String,
    pub capacity: pb::ResourceList,
    pub labels: BTreeMap<String, String>,
    /// Registry credentials and plain-HTTP registries (`--registry-config`).
    pub registries: RegistrySettings,
    /// Where containers' DNS queries for names outside the cluster go (`--upstream-dns`).
    pub upstream_dns: Vec<std::net::SocketAddr>,
    pub heartbeat: Duration,
    /// The agent binary (re-executed for containers and exec probes).
    pub helper: PathBuf,
    /// Where `orch.v1.NodeAgent` (logs, exec, stats, inspect) listens; none when unset.
    pub api_listen: Option<std::net::SocketAddr>,
    /// Mutual TLS with the certificates in this directory (`ca.pem`, `node-<name>.pem`
    /// and `.key`): towards the controller and for the node API. Plain text when unset.
    pub tls_dir: Option<PathBuf>,
    /// What clients of the balancer's listeners can hold (`--max-connections-per-port`,
    /// `--idle-timeout`).
    pub connection_limits: crate::net::ConnectionLimits,
    /// Where TCP service traffic is balanced (`--data-path`).
    pub data_path: crate::net::DataPath,
    /// What one image layer may unpack to (`--max-layer-size`, `--max-layer-entries`).
    pub layer_limits: crate::images::LayerLimits,
    /// `orch chaos` may take the node down or partition it (`--allow-chaos`).
    pub allow_chaos: bool,
}

impl AgentConfig {
    /// The controller at `address` (HOST:PORT), over TLS when configured: connected (TLS
    /// handshake included — a frozen controller still accepts TCP) within
    /// [`CONNECT_TIMEOUT`]. HTTP/2 pings every second find one that stops answering later
    /// (its machine gone, no reset; frozen) within about three.
    pub async fn controller_channel(&self, address: &str) -> Result<tonic::transport::Channel, LinkError> {
        let address = super::controllers::address_of(address);
        let controller = || address.to_owned();
        let scheme = if self.tls_dir.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| LinkError::Endpoint { controller: controller(), reason: e.to_string() })?;
        if let Some(dir) = &self.tls_dir {
            let tls =
                orch_api::tls::client_config(dir, &format!("node-{}", self.name)).map_err(|source| LinkError::Tls { controller: controller(), source })?;
            endpoint = endpoint.tls_config(tls.timeout(CONNECT_TIMEOUT)).map_err(|source| LinkError::Connect { controller: controller(), source })?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(1))
            // Not tighter: on a slow link a ping's answer may queue behind a large set.
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true);
        match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
            Ok(connected) => connected.map_err(|source| LinkError::Connect { controller: controller(), source }),
            Err(_) => Err(LinkError::Endpoint { controller: controller(), reason: format!("no connection within {CONNECT_TIMEOUT:?}") }),
        }
    }
}

impl AgentConfig {
    pub fn node_info(&self) -> pb::NodeInfo {
        pb::NodeInfo {
            name: self.name.clone(),
            address: self.address.to_string(),
            capacity: Some(self.capacity),
            labels: self.labels.clone().into_iter().collect(),
            api_port: self.api_listen.map_or(0, |a| u32::from(a.port())),
            allows_chaos: self.allow_chaos,
        }
    }
}
