//! The gRPC face of the node registry and of agent sessions (the sessions themselves
//! live in `session.rs`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use orch_api::cidr::Ipv4Cidr;
use orch_api::events::EventKind;
use orch_api::pb;
use orch_api::pb::nodes_server::Nodes;
use orch_api::tls::{Peer, Role};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::registry::{NodeError, NodeRegistry};
use super::session::Session;
use crate::events::EventLog;
use crate::state::ClusterState;
use crate::store::{LeaseId, Store};

pub struct NodesRpc {
    registry: NodeRegistry,
    store: Arc<dyn Store>,
    service_range: Ipv4Cidr,
    state: watch::Receiver<Arc<ClusterState>>,
    events: EventLog,
    /// Each registered node's liveness lease.
    leases: Arc<Mutex<HashMap<String, LeaseId>>>,
    /// Closed (its sender dropped) when the controller stops: every session ends, so that
    /// agents reconnect to whoever serves next.
    stopping: watch::Receiver<()>,
    secrets: Option<Arc<orch_api::secrets::SecretsKey>>,
    metrics: Arc<crate::metrics::ControllerMetrics>,
}

impl NodesRpc {
    pub fn new(
        registry: NodeRegistry,
        store: Arc<dyn Store>,
        service_range: Ipv4Cidr,
        state: watch::Receiver<Arc<ClusterState>>,
        events: EventLog,
        stopping: watch::Receiver<()>,
    ) -> NodesRpc {
        NodesRpc { registry, store, service_range, state, events, leases: Arc::default(), stopping, secrets: None, metrics: Arc::default() }
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
        let (node, lease) = self.registry.register(info).await.map_err(status)?;
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.clone(), lease);
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
        let (outgoing, receiver) = mpsc::channel::<Result<pb::ControllerMessage, Status>>(16);
        let session = Session {
            node: String::new(),
            registry: self.registry.clone(),
            store: Arc::clone(&self.store),
            state: self.state.clone(),
            events: self.events.clone(),
            leases: Arc::clone(&self.leases),
            secrets: self.secrets.clone(),
            metrics: Arc::clone(&self.metrics),
        };
        tokio::spawn(session.serve(peer, incoming, outgoing, self.stopping.clone()));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
