//! The gRPC face of [`NodeRegistry`]: translation only.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::Stream;
use orch_api::pb;
use orch_api::pb::nodes_server::Nodes;
use tonic::{Request, Response, Status, Streaming};

use super::registry::{NodeError, NodeRegistry};
use crate::store::LeaseId;

pub struct NodesRpc {
    registry: NodeRegistry,
    service_cidr: String,
    /// Each registered node's liveness lease.
    leases: Arc<Mutex<HashMap<String, LeaseId>>>,
}

impl NodesRpc {
    pub fn new(registry: NodeRegistry, service_cidr: String) -> NodesRpc {
        NodesRpc { registry, service_cidr, leases: Arc::default() }
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

type ControllerStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Nodes for NodesRpc {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let info = request.into_inner().node.ok_or_else(|| Status::invalid_argument("node: required"))?;
        let name = info.name.clone();
        let (node, lease) = self.registry.register(info).await.map_err(status)?;
        self.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name, lease);
        Ok(Response::new(pb::RegisterResponse { pod_cidr: node.pod_cidr, service_cidr: self.service_cidr.clone() }))
    }

    type SessionStream = ControllerStream;

    async fn session(&self, request: Request<Streaming<pb::AgentMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let mut incoming = request.into_inner();
        let registry = self.registry.clone();
        let leases = Arc::clone(&self.leases);
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<pb::ControllerMessage, Status>>(16);
        tokio::spawn(async move {
            loop {
                let message = match incoming.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) | Err(_) => return,
                };
                if let Some(pb::agent_message::Body::Heartbeat(_)) = message.body {
                    let lease = leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&message.node).copied();
                    let Some(lease) = lease else {
                        let _ = sender.send(Err(Status::failed_precondition(format!("node {:?} must register first", message.node)))).await;
                        return;
                    };
                    match registry.heartbeat(&message.node, lease).await {
                        Ok(renewed) => {
                            leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(message.node.clone(), renewed);
                        }
                        Err(e) => {
                            let _ = sender.send(Err(status(e))).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}
