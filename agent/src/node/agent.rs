//! The node agent daemon: registers with the controller, sets the node network up,
//! re-adopts what a previous agent left running, then keeps one session open —
//! converging the node to every desired set it receives (start what is missing, stop
//! what is no longer wanted, balancer table, routes to other nodes) and reporting
//! replica status upward. Static stability: when the controller is unreachable the
//! replicas keep running and restarting; the agent reconnects with back-off.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use orch_api::pb;
use orch_api::pb::nodes_client::NodesClient;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::board::{RunningTable, StatusBoard};
use super::context::NodeContext;
use super::convert::{endpoints_of, route_of};
use super::replica::{load_records, spawn, ReplicaHandle};
use crate::images::ImageStore;
use crate::net::{NodeNetwork, NodeNetworkConfig, PeerRoute, ServiceEndpoints, Strategy, Subnet};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::StateDir;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    /// The node's address: other nodes route to its pods through it; node ports listen on it.
    pub address: Ipv4Addr,
    /// The controller's gRPC address (`http://HOST:PORT`).
    pub controller: String,
    pub state_dir: PathBuf,
    pub cgroup_parent: String,
    pub bridge: String,
    pub capacity: pb::ResourceList,
    pub labels: BTreeMap<String, String>,
    pub insecure_registries: Vec<String>,
    pub heartbeat: Duration,
    /// The agent binary (re-executed for containers and exec probes).
    pub helper: PathBuf,
    /// Where `orch.v1.NodeAgent` (logs, exec, stats, inspect) listens; none when unset.
    pub api_listen: Option<std::net::SocketAddr>,
    /// Mutual TLS with the certificates in this directory (`ca.pem`, `node-<name>.pem`
    /// and `.key`): towards the controller and for the node API. Plain text when unset.
    pub tls_dir: Option<PathBuf>,
}

impl AgentConfig {
    /// The controller, over TLS when configured.
    pub async fn controller_channel(&self) -> Result<tonic::transport::Channel, String> {
        let address = self.controller.split_once("://").map_or(self.controller.as_str(), |(_, rest)| rest);
        let scheme = if self.tls_dir.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}")).map_err(|e| format!("controller {address}: {e}"))?;
        if let Some(dir) = &self.tls_dir {
            let tls = orch_api::tls::client_config(dir, &format!("node-{}", self.name)).map_err(|e| e.to_string())?;
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("controller {address}: {e}"))?;
        }
        endpoint.connect_timeout(Duration::from_secs(3)).connect().await.map_err(|e| format!("controller {address}: {e}"))
    }
}

/// What registration said, kept so that a restarted agent can set its network up and
/// adopt its replicas while the controller is away.
/// Saved as `<state>/node.json`; `orch-agent teardown` reads it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub pod_cidr: String,
    pub service_cidr: String,
}

impl Registration {
    fn path(state_dir: &std::path::Path) -> PathBuf {
        StateDir::new(state_dir).registration()
    }

    pub fn load(state_dir: &std::path::Path) -> Option<Registration> {
        std::fs::read(Registration::path(state_dir)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }

    fn save(&self, state_dir: &std::path::Path) {
        if let Ok(bytes) = serde_json::to_vec(self) {
            let _ = std::fs::create_dir_all(state_dir);
            let _ = std::fs::write(Registration::path(state_dir), bytes);
        }
    }

    pub fn forget(state_dir: &std::path::Path) {
        let _ = std::fs::remove_file(Registration::path(state_dir));
    }
}

impl AgentConfig {
    fn node_info(&self) -> pb::NodeInfo {
        pb::NodeInfo {
            name: self.name.clone(),
            address: self.address.to_string(),
            capacity: Some(self.capacity),
            labels: self.labels.clone().into_iter().collect(),
            api_port: self.api_listen.map_or(0, |a| u32::from(a.port())),
        }
    }
}

/// Registers through `client` and saves what the controller said.
async fn register(config: &AgentConfig, client: &mut NodesClient<tonic::transport::Channel>) -> Result<Registration, String> {
    let response = client
        .register(pb::RegisterRequest { node: Some(config.node_info()) })
        .await
        .map_err(|e| format!("controller {}: register: {}", config.controller, e.message()))?
        .into_inner();
    let registration = Registration { pod_cidr: response.pod_cidr, service_cidr: response.service_cidr };
    registration.save(&config.state_dir);
    Ok(registration)
}

/// The first registration: from the controller, else (restarting while it is away) from
/// the last one saved. Retries until one of them is there.
async fn first_registration(config: &AgentConfig) -> Registration {
    let saved = Registration::load(&config.state_dir);
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = match config.controller_channel().await {
            Ok(channel) => register(config, &mut NodesClient::new(channel)).await,
            Err(error) => Err(error),
        };
        match attempt {
            Ok(registration) => return registration,
            Err(error) => {
                if let Some(saved) = &saved {
                    tracing::warn!(%error, "controller unreachable: using the last registration");
                    return saved.clone();
                }
                tracing::warn!(%error, "cannot register yet; retrying");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// How the agent ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Leave every container running (an agent upgrade or restart): the next agent adopts.
    Leave,
    /// Stop every replica and remove the node network (`orch up` ending).
    Drain,
}

pub struct Agent {
    config: AgentConfig,
    ctx: Arc<NodeContext>,
    replicas: BTreeMap<String, ReplicaHandle>,
    terminating: Vec<ReplicaHandle>,
    generation: u64,
    api: Option<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// Registers (or falls back on the saved registration), sets the node network up and
    /// re-adopts the replicas a previous agent left.
    pub async fn start(mut config: AgentConfig) -> Result<Agent, AgentError> {
        // Bound first, so that a port 0 becomes the real one the controller is told.
        let api_listener = match config.api_listen {
            Some(address) => {
                let listener =
                    tokio::net::TcpListener::bind(address).await.map_err(|e| AgentError::Setup(format!("node API: cannot listen on {address}: {e}")))?;
                config.api_listen = listener.local_addr().ok();
                Some(listener)
            }
            None => None,
        };
        let registration = first_registration(&config).await;
        let subnet = Subnet::parse(&registration.pod_cidr).map_err(|e| AgentError::Setup(format!("pod subnet from the controller: {e}")))?;
        let service_cidr = Subnet::parse(&registration.service_cidr).map_err(|e| AgentError::Setup(format!("service range from the controller: {e}")))?;
        let runtime =
            Runtime::new(RuntimeConfig { state_dir: config.state_dir.clone(), cgroup_parent: config.cgroup_parent.clone(), init_exe: config.helper.clone() })
                .map_err(|e| AgentError::Setup(format!("runtime: {e}")))?;
        let state = StateDir::new(&config.state_dir);
        let images = ImageStore::open(&state.images(), config.insecure_registries.clone()).map_err(|e| AgentError::Setup(format!("image store: {e}")))?;
        let network = NodeNetwork::setup(NodeNetworkConfig {
            bridge: config.bridge.clone(),
            subnet,
            service_cidr,
            state_dir: config.state_dir.clone(),
            node_address: Some(config.address),
            strategy: Strategy::RoundRobin,
            node_netns: None,
        })
        .await
        .map_err(|e| AgentError::Setup(format!("node network: {e}")))?;
        let ctx = Arc::new(NodeContext {
            node: config.name.clone(),
            runtime,
            images,
            network,
            state,
            helper: config.helper.clone(),
            board: StatusBoard::default(),
            running: RunningTable::default(),
        });
        let api = match api_listener {
            Some(listener) => {
                let server = super::api::NodeApi::new(&ctx, config.cgroup_parent.clone(), config.address.to_string()).into_server();
                let mut builder = tonic::transport::Server::builder();
                if let Some(dir) = &config.tls_dir {
                    let tls = orch_api::tls::server_config(dir, &format!("node-{}", config.name)).map_err(|e| AgentError::Setup(format!("node API: {e}")))?;
                    builder = builder.tls_config(tls).map_err(|e| AgentError::Setup(format!("node API: {e}")))?;
                }
                Some(tokio::spawn(async move {
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    if let Err(error) = builder.add_service(server).serve_with_incoming(incoming).await {
                        tracing::warn!(%error, "the node API stopped");
                    }
                }))
            }
            None => None,
        };
        let mut agent = Agent { config, ctx, replicas: BTreeMap::new(), terminating: Vec::new(), generation: 0, api };
        agent.adopt().await;
        Ok(agent)
    }

    pub fn context(&self) -> &Arc<NodeContext> {
        &self.ctx
    }

    /// Resumes supervising every replica with a record; removes containers without one
    /// (a start interrupted by the previous agent's death).
    async fn adopt(&mut self) {
        let records = load_records(&self.ctx.state.records());
        for record in records {
            let container = match self.ctx.runtime.adopt(&record.id) {
                Ok(container) => Some(container),
                Err(error) => {
                    // A start the previous agent did not finish: clear it so it can start again.
                    if self.ctx.runtime.container_ids().contains(&record.id) {
                        tracing::warn!(replica = %record.id, %error, "discarding a half-started container");
                        if let Err(error) = self.ctx.runtime.discard(&record.id) {
                            tracing::warn!(replica = %record.id, %error, "discarding a half-started container");
                        }
                    }
                    None
                }
            };
            tracing::info!(replica = %record.id, running = container.is_some(), "re-adopting");
            let id = record.id.clone();
            self.replicas.insert(id, spawn(Arc::clone(&self.ctx), record, container));
        }
        for id in self.ctx.runtime.container_ids() {
            if self.replicas.contains_key(&id) {
                continue;
            }
            tracing::warn!(container = %id, "removing a container no replica owns");
            match self.ctx.runtime.adopt(&id) {
                Ok(container) => {
                    container.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(1)).await;
                    let _ = container.remove().await;
                }
                Err(_) => {
                    let _ = self.ctx.runtime.discard(&id);
                }
            }
            let _ = self.ctx.network.detach(&id).await;
        }
    }

    /// Converges the node to a desired set.
    async fn converge(&mut self, set: pb::DesiredSet) {
        self.generation = set.generation;
        let mut wanted: BTreeMap<String, pb::Replica> = BTreeMap::new();
        for desired in set.replicas {
            let Some(mut replica) = desired.replica else { continue };
            replica.spec = desired.spec;
            wanted.insert(replica.id.clone(), replica);
        }
        let unwanted: Vec<String> = self.replicas.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
        for id in unwanted {
            if let Some(handle) = self.replicas.remove(&id) {
                tracing::info!(replica = %id, "no longer wanted: stopping");
                handle.stop();
                self.terminating.push(handle);
            }
        }
        for (id, mut replica) in wanted {
            if self.replicas.contains_key(&id) {
                continue;
            }
            replica.status = Some(pb::ReplicaStatus { phase: pb::ReplicaPhase::Pending.into(), ..Default::default() });
            self.replicas.insert(id, spawn(Arc::clone(&self.ctx), replica, None));
        }
        self.terminating.retain(|handle| !handle.is_finished());
        let table: Vec<ServiceEndpoints> = set.endpoints.iter().filter_map(endpoints_of).collect();
        if let Err(error) = self.ctx.network.apply_services(&table).await {
            tracing::warn!(%error, "applying the service table");
        }
        let routes: Vec<PeerRoute> = set.routes.iter().filter_map(route_of).collect();
        if let Err(error) = self.ctx.network.set_peer_routes(&routes).await {
            tracing::warn!(%error, "setting routes to the other nodes");
        }
    }

    fn report(&self) -> pb::AgentMessage {
        pb::AgentMessage {
            node: self.config.name.clone(),
            body: Some(pb::agent_message::Body::Status(pb::StatusReport {
                observed_generation: self.generation,
                replicas: self.ctx.board.snapshot(),
                events: self.ctx.board.take_events(),
            })),
        }
    }

    /// Serves until `shutdown` resolves: sessions with the controller, reconnecting
    /// with back-off whenever one ends.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = Shutdown>) {
        tokio::pin!(shutdown);
        let mut delay = Duration::from_millis(100);
        let how = loop {
            tokio::select! {
                how = &mut shutdown => break how,
                result = self.session() => {
                    match result {
                        Ok(()) => delay = Duration::from_millis(100),
                        Err(error) => tracing::warn!(%error, "controller session ended"),
                    }
                }
            }
            tokio::select! {
                how = &mut shutdown => break how,
                () = tokio::time::sleep(delay) => {}
            }
            // Capped well under a node lease: a controller that restarts finds its agents
            // back before their nodes turn NotReady.
            delay = (delay * 2).min(Duration::from_secs(1));
        };
        self.shut_down(how).await;
    }

    async fn session(&mut self) -> Result<(), String> {
        let mut client = NodesClient::new(self.config.controller_channel().await?);
        register(&self.config, &mut client).await?;
        let (upward, outgoing) = mpsc::channel::<pb::AgentMessage>(16);
        let heartbeat = pb::AgentMessage { node: self.config.name.clone(), body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat { unix_ms: 0 })) };
        upward.send(heartbeat.clone()).await.map_err(|e| e.to_string())?;
        upward.send(self.report()).await.map_err(|e| e.to_string())?;
        let mut downward =
            client.session(tokio_stream::wrappers::ReceiverStream::new(outgoing)).await.map_err(|e| format!("session: {}", e.message()))?.into_inner();
        tracing::info!(controller = %self.config.controller, "session open");
        let mut beats = tokio::time::interval(self.config.heartbeat);
        // A full report now and then even when nothing changed, in case one was lost.
        let mut refresh = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = beats.tick() => upward.send(heartbeat.clone()).await.map_err(|e| e.to_string())?,
                _ = refresh.tick() => upward.send(self.report()).await.map_err(|e| e.to_string())?,
                () = self.ctx.board.changed() => {
                    // Let a burst of changes settle into one report.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    upward.send(self.report()).await.map_err(|e| e.to_string())?;
                }
                message = downward.message() => {
                    let message = message.map_err(|e| format!("session: {}", e.message()))?.ok_or("the controller ended the session")?;
                    if let Some(pb::controller_message::Body::Desired(set)) = message.body {
                        self.converge(set).await;
                    }
                }
            }
        }
    }

    async fn shut_down(mut self, how: Shutdown) {
        if let Some(api) = self.api.take() {
            api.abort();
            let _ = api.await;
        }
        match how {
            Shutdown::Leave => {
                tracing::info!("stopping; the containers keep running for the next agent");
                for (_, handle) in std::mem::take(&mut self.replicas) {
                    handle.abandon();
                }
            }
            Shutdown::Drain => {
                tracing::info!("draining: stopping every replica");
                for (_, handle) in std::mem::take(&mut self.replicas) {
                    handle.stop();
                    self.terminating.push(handle);
                }
                for handle in std::mem::take(&mut self.terminating) {
                    handle.finished().await;
                }
                let ctx = self.ctx;
                match Arc::try_unwrap(ctx) {
                    Ok(ctx) => {
                        if let Err(error) = ctx.network.teardown(true).await {
                            tracing::warn!(%error, "removing the node network");
                        }
                    }
                    Err(_) => tracing::warn!("the node network is still in use; not removed"),
                }
            }
        }
    }
}

/// What this machine has: all its CPUs (millicores) and memory (bytes), from
/// `/proc/meminfo`; what a node offers the scheduler unless told otherwise.
pub fn machine_capacity() -> pb::ResourceList {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches("kB").trim().to_owned())))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    pb::ResourceList { cpu_millis: cpus * 1000, memory_bytes: memory, pids: 0 }
}
