//! The gRPC face of the node registry and of agent sessions.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use orch_api::events::EventKind;
use orch_api::pb;
use orch_api::pb::nodes_server::Nodes;
use orch_api::tls::{Peer, Role};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

use super::desired::{desired_set, stamp};
use super::registry::{NodeError, NodeRegistry};
use super::status::{status_writes, StatusWrite};
use crate::events::EventLog;
use crate::keys;
use crate::state::ClusterState;
use crate::store::{Expect, LeaseId, Store, StoreError};

pub struct NodesRpc {
    registry: NodeRegistry,
    store: Arc<dyn Store>,
    service_cidr: String,
    state: watch::Receiver<Arc<ClusterState>>,
    events: EventLog,
    /// Each registered node's liveness lease.
    leases: Arc<Mutex<HashMap<String, LeaseId>>>,
    /// Closed (its sender dropped) when the controller stops: every session ends, so that
    /// agents reconnect to whoever serves next.
    stopping: watch::Receiver<()>,
}

impl NodesRpc {
    pub fn new(
        registry: NodeRegistry,
        store: Arc<dyn Store>,
        service_cidr: String,
        state: watch::Receiver<Arc<ClusterState>>,
        events: EventLog,
        stopping: watch::Receiver<()>,
    ) -> NodesRpc {
        NodesRpc { registry, store, service_cidr, state, events, leases: Arc::default(), stopping }
    }

    pub fn into_server(self) -> pb::nodes_server::NodesServer<NodesRpc> {
        pb::nodes_server::NodesServer::new(self)
    }
}

fn status(error: NodeError) -> Status {
    match error {
        NodeError::Invalid(_) => Status::invalid_argument(error.to_string()),
        NodeError::Unknown(_) => Status::failed_precondition(error.to_string()),
        NodeError::Exhausted => Status::resource_exhausted(error.to_string()),
        NodeError::Contended(_) => Status::aborted(error.to_string()),
        NodeError::Store(_) => Status::unavailable(error.to_string()),
        NodeError::Decode(_) => Status::internal(error.to_string()),
    }
}

/// Status writes of one report in flight at once.
const STATUS_WRITES: usize = 16;

/// Over TLS a node speaks only for itself: its certificate's common name is its name.
/// Over TLS, only a node's certificate (role node) with that node's name acts as it.
fn check_node_identity(peer: Option<&Peer>, node: &str) -> Result<(), Status> {
    match peer {
        None => Ok(()),
        Some(Peer { name, role: Some(Role::Node) }) if name == node => Ok(()),
        Some(Peer { name, .. }) => Err(Status::permission_denied(format!("certificate {name:?} may not act as node {node:?}"))),
    }
}

type ControllerStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;
type Outgoing = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

/// One agent's session, once it has said who it is.
#[derive(Clone)]
struct Session {
    node: String,
    registry: NodeRegistry,
    store: Arc<dyn Store>,
    state: watch::Receiver<Arc<ClusterState>>,
    events: EventLog,
    leases: Arc<Mutex<HashMap<String, LeaseId>>>,
}

impl Session {
    fn known_lease(&self) -> Option<LeaseId> {
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&self.node).copied()
    }

    /// Renews the node's liveness lease. The lease may have been granted by another
    /// controller (the agent registered there before a failover): it is found through
    /// the node's alive key, and replaced when it is gone.
    async fn heartbeat(&self) -> Result<(), Status> {
        let lease = match self.known_lease() {
            Some(lease) => lease,
            None => {
                let alive = self.store.get(&keys::node_alive(&self.node)).await.map_err(|e| status(NodeError::Store(e)))?;
                alive.map_or(0, |kv| kv.lease)
            }
        };
        let renewed = self.registry.heartbeat(&self.node, lease).await.map_err(status)?;
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(self.node.clone(), renewed);
        Ok(())
    }

    /// Writes the latest report of the node, one at a time, off the receive loop (so
    /// heartbeats never queue behind slow writes). Before comparing with the cached
    /// state it waits for that state to include this session's own last writes, so a
    /// change is never skipped because the cache still showed it.
    async fn write_statuses(self, mut reports: watch::Receiver<Option<pb::StatusReport>>) {
        let mut state = self.state.clone();
        let mut written: crate::store::Revision = 0;
        while reports.changed().await.is_ok() {
            let Some(report) = reports.borrow_and_update().clone() else { continue };
            let caught_up = tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| s.revision >= written))
                .await
                .map(|result| result.map(|current| current.clone()));
            let current = match caught_up {
                Ok(Ok(current)) => current,
                Ok(Err(_)) => return,
                Err(_) => self.state.borrow().clone(),
            };
            let writes = status_writes(&current, &self.node, &report);
            let results: Vec<Result<Option<crate::store::Revision>, StoreError>> = futures::stream::iter(writes)
                .map(|write| {
                    let store = Arc::clone(&self.store);
                    async move {
                        match write {
                            StatusWrite::Put { key, replica } => store.put(&key, keys::encode(&replica), Expect::Any).await.map(Some),
                            StatusWrite::Delete { key, revision } => store.delete(&key, Expect::Revision(revision)).await,
                        }
                    }
                })
                .buffer_unordered(STATUS_WRITES)
                .collect()
                .await;
            for result in results {
                match result {
                    Ok(revision) => written = written.max(revision.unwrap_or(0)),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(error) => tracing::warn!(node = %self.node, %error, "recording a status report"),
                }
            }
        }
    }

    /// Sends the node's desired set now and whenever it changes, until the agent goes.
    async fn send_desired(mut state: watch::Receiver<Arc<ClusterState>>, node: String, outgoing: Outgoing) {
        let mut last: Option<pb::DesiredSet> = None;
        let mut seen_version = None;
        loop {
            let current = state.borrow_and_update().clone();
            if current.synced() && seen_version != Some(current.content_version) {
                seen_version = Some(current.content_version);
                let wanted = desired_set(&current, &node);
                if last.as_ref() != Some(&wanted) {
                    let generation = u64::try_from(current.revision).unwrap_or(0);
                    let message = pb::ControllerMessage { body: Some(pb::controller_message::Body::Desired(stamp(wanted.clone(), generation))) };
                    if outgoing.send(Ok(message)).await.is_err() {
                        return;
                    }
                    last = Some(wanted);
                }
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                () = outgoing.closed() => return,
            }
        }
    }
}

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
        Ok(Response::new(pb::RegisterResponse { pod_cidr: node.pod_cidr, service_cidr: self.service_cidr.clone() }))
    }

    type SessionStream = ControllerStream;

    async fn session(&self, request: Request<Streaming<pb::AgentMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let peer = orch_api::tls::peer(&request);
        let mut incoming = request.into_inner();
        let (outgoing, receiver) = mpsc::channel::<Result<pb::ControllerMessage, Status>>(16);
        let mut session = Session {
            node: String::new(),
            registry: self.registry.clone(),
            store: Arc::clone(&self.store),
            state: self.state.clone(),
            events: self.events.clone(),
            leases: Arc::clone(&self.leases),
        };
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
            let (reports, latest_report) = watch::channel::<Option<pb::StatusReport>>(None);
            loop {
                let message = tokio::select! {
                    message = incoming.message() => match message {
                        Ok(Some(message)) => message,
                        Ok(None) | Err(_) => break,
                    },
                    _ = stopping.changed() => {
                        let _ = outgoing.send(Err(Status::unavailable("the controller is stopping; reconnect"))).await;
                        break;
                    }
                };
                if session.node.is_empty() {
                    if let Err(status) = check_node_identity(peer.as_ref(), &message.node) {
                        let _ = outgoing.send(Err(status)).await;
                        break;
                    }
                    session.node = message.node.clone();
                    match session.store.get(&keys::node(&session.node)).await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            let _ = outgoing.send(Err(Status::failed_precondition(format!("node {:?} must register first", message.node)))).await;
                            break;
                        }
                        Err(e) => {
                            let _ = outgoing.send(Err(status(NodeError::Store(e)))).await;
                            break;
                        }
                    }
                    tasks.push(tokio::spawn(Session::send_desired(session.state.clone(), session.node.clone(), outgoing.clone())));
                    tasks.push(tokio::spawn(session.clone().write_statuses(latest_report.clone())));
                } else if message.node != session.node {
                    let _ = outgoing.send(Err(Status::invalid_argument(format!("this session is node {:?}'s, not {:?}'s", session.node, message.node)))).await;
                    break;
                }
                match message.body {
                    Some(pb::agent_message::Body::Heartbeat(_)) => {
                        if let Err(error) = session.heartbeat().await {
                            let _ = outgoing.send(Err(error)).await;
                            break;
                        }
                    }
                    Some(pb::agent_message::Body::Status(mut report)) => {
                        for event in std::mem::take(&mut report.events) {
                            session.events.emit_reported(event);
                        }
                        // Each report is the node's full set: only the latest matters.
                        reports.send_replace(Some(report));
                    }
                    None => {}
                }
            }
            for task in tasks {
                task.abort();
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
