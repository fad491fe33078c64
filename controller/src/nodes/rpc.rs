//! The gRPC face of the node registry and of agent sessions (the sessions themselves
//! live in `session.rs`).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use orch_api::cidr::Ipv4Cidr;
use orch_api::events::EventKind;
use orch_api::pb;
use orch_api::pb::nodes_server::Nodes;
use orch_api::tls::{Peer, Role};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::liveness::{LivenessLease, RuntimeLag};
use super::registry::{NodeError, NodeRegistry};
use super::session::Session;
use crate::events::EventLog;
use crate::state::ClusterState;
use crate::store::Store;

pub struct NodesRpc {
    registry: NodeRegistry,
    store: Arc<dyn Store>,
    service_range: Ipv4Cidr,
    state: watch::Receiver<Arc<ClusterState>>,
    events: EventLog,
    /// The lease this controller puts the alive keys of its sessions' nodes on.
    liveness: Arc<LivenessLease>,
    lag: Arc<RuntimeLag>,
    /// Closed (its sender dropped) when the controller stops: every session ends, so that
    /// agents reconnect to whoever serves next.
    stopping: watch::Receiver<()>,
    secrets: Option<Arc<orch_api::secrets::SecretsKey>>,
    metrics: Arc<crate::metrics::ControllerMetrics>,
    /// Registrations served at once; the others wait their turn a while, then are told to
    /// come back (load shed, so that a thousand agents starting together neither queue
    /// without end nor starve the sessions already running).
    registering: Arc<tokio::sync::Semaphore>,
    /// See `ControllerConfig::desired_part_bytes`.
    part_bytes: usize,
}

/// See `NodesRpc::registering`.
const REGISTRATIONS_AT_ONCE: usize = 32;
const REGISTRATION_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl NodesRpc {
    pub fn new(
        registry: NodeRegistry,
        store: Arc<dyn Store>,
        service_range: Ipv4Cidr,
        state: watch::Receiver<Arc<ClusterState>>,
        events: EventLog,
        stopping: watch::Receiver<()>,
    ) -> NodesRpc {
        let liveness = LivenessLease::spawn(Arc::clone(&store), registry.lease_ttl());
        NodesRpc {
            registry,
            store,
            service_range,
            state,
            events,
            liveness,
            lag: RuntimeLag::spawn(),
            stopping,
            secrets: None,
            metrics: Arc::default(),
            registering: Arc::new(tokio::sync::Semaphore::new(REGISTRATIONS_AT_ONCE)),
            part_bytes: super::desired::PART_BYTES,
        }
    }

    /// Cuts desired sets into parts of about `part_bytes` (for agents that take parts).
    pub fn with_part_bytes(self, part_bytes: usize) -> NodesRpc {
        NodesRpc { part_bytes, ..self }
    }

    /// Counts the heartbeats the sessions receive into `metrics`.
    pub fn with_metrics(self, metrics: Arc<crate::metrics::ControllerMetrics>) -> NodesRpc {
        NodesRpc { metrics, ..self }
    }

    /// Sends Secrets, opened with this key, to the nodes that use them.
    pub fn with_secrets(self, secrets: Option<Arc<orch_api::secrets::SecretsKey>>) -> NodesRpc {
        NodesRpc { secrets, ..self }
    }

    pub fn into_server(self) -> pb::nodes_server::NodesServer<NodesRpc> {
        pb::nodes_server::NodesServer::new(self)
    }
}

pub(super) fn status(error: NodeError) -> Status {
    match error {
        NodeError::Invalid(_) => Status::invalid_argument(error.to_string()),
        NodeError::Unknown(_) | NodeError::StillReady(_) => Status::failed_precondition(error.to_string()),
        NodeError::Exhausted(_) => Status::resource_exhausted(error.to_string()),
        NodeError::Contended(_) => Status::aborted(error.to_string()),
        NodeError::Store(_) => Status::unavailable(error.to_string()),
        NodeError::Decode(_) => Status::internal(error.to_string()),
    }
}

/// Over TLS a node speaks only for itself: its certificate's common name is its name.
/// Over TLS, only a node's certificate (role node) with that node's name acts as it.
pub(super) fn check_node_identity(peer: Option<&Peer>, node: &str) -> Result<(), Status> {
    match peer {
        None => Ok(()),
        Some(Peer { name, role: Some(Role::Node) }) if name == node => Ok(()),
        Some(Peer { name, .. }) => Err(Status::permission_denied(format!("certificate {name:?} may not act as node {node:?}"))),
    }
}

type ControllerStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Nodes for NodesRpc {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let peer = orch_api::tls::peer(&request);
        let info = request.into_inner().node.ok_or_else(|| Status::invalid_argument("node: required"))?;
        check_node_identity(peer.as_ref(), &info.name)?;
        let name = info.name.clone();
        let _turn = match tokio::time::timeout(REGISTRATION_QUEUE_WAIT, self.registering.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(Status::unavailable("the controller is busy registering other nodes; try again shortly")),
        };
        let (node, _) = self.registry.register(info).await.map_err(status)?;
        self.events.emit(EventKind::Registered, format!("node/{name}"), format!("pod subnet {}", node.pod_cidr));
        let service_range = self.service_range;
        Ok(Response::new(pb::RegisterResponse {
            pod_cidr: node.pod_cidr,
            service_cidr: service_range.to_string(),
            pod_subnet: node.pod_subnet,
            service_range: Some(service_range.into()),
            cluster_network: Some(self.registry.cluster_network().into()),
            controllers: crate::nodes::desired::controller_addresses(&self.state.borrow()),
        }))
    }

    type SessionStream = ControllerStream;

    async fn session(&self, request: Request<Streaming<pb::AgentMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let peer = orch_api::tls::peer(&request);
        let incoming = request.into_inner();
        // Desired sets are level-triggered: one waiting is enough (a slow agent gets the
        // latest picture next, not a queue of stale ones held in memory).
        let (outgoing, receiver) = mpsc::channel::<Result<pb::ControllerMessage, Status>>(1);
        let session = Session {
            node: String::new(),
            registry: self.registry.clone(),
            store: Arc::clone(&self.store),
            state: self.state.clone(),
            events: self.events.clone(),
            liveness: Arc::clone(&self.liveness),
            lag: Arc::clone(&self.lag),
            secrets: self.secrets.clone(),
            metrics: Arc::clone(&self.metrics),
            part_bytes: self.part_bytes,
        };
        tokio::spawn(session.serve(peer, incoming, outgoing, self.stopping.clone()));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
