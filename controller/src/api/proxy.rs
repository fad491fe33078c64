//! The Api calls that reach into nodes: logs and exec go to the agent of the replica's
//! node, top and topology gather from every ready node (`orch.v1.NodeAgent`).

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use orch_api::pb;
use orch_api::pb::node_agent_client::NodeAgentClient as NodeClient;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::ServiceApi;

pub type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecOutput, Status>> + Send>>;

fn unavailable(node: &str, error: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("node {node}: {error}"))
}

impl ServiceApi {
    async fn nodes(&self) -> Result<Vec<pb::Node>, Status> {
        self.list_nodes().await.map_err(|e| Status::unavailable(e.to_string()))
    }

    /// A client of the node API of the node named `name`, among `nodes` (one listing
    /// serves every node a request reaches).
    async fn node_client(&self, nodes: &[pb::Node], name: &str) -> Result<NodeClient<Channel>, Status> {
        let node =
            nodes.iter().find(|n| n.info.as_ref().is_some_and(|i| i.name == name)).ok_or_else(|| Status::not_found(format!("node {name:?} not found")))?;
        let info = node.info.clone().unwrap_or_default();
        if info.api_port == 0 {
            return Err(Status::failed_precondition(format!("node {name} serves no node API (its agent runs with --api-listen none)")));
        }
        let scheme = if self.node_tls.is_some() { "https" } else { "http" };
        let mut endpoint = Channel::from_shared(format!("{scheme}://{}:{}", info.address, info.api_port)).map_err(|e| unavailable(name, e))?;
        if let Some(tls) = &self.node_tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| unavailable(name, e))?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| unavailable(name, format!("cannot reach its agent at {}:{}: {e}", info.address, info.api_port)))?;
        Ok(NodeClient::new(channel))
    }

    /// The replica named `name`, or every replica of the service named `name`.
    async fn replicas_named(&self, name: &str) -> Result<Vec<pb::Replica>, Status> {
        let all = self.list_replicas(None).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let exact: Vec<pb::Replica> = all.iter().filter(|r| r.id == name).cloned().collect();
        let chosen = if exact.is_empty() { all.into_iter().filter(|r| r.service == name).collect() } else { exact };
        if chosen.is_empty() {
            return Err(Status::not_found(format!("no replica or service named {name:?}")));
        }
        Ok(chosen)
    }

    pub async fn logs(&self, request: pb::LogsRequest) -> Result<LogStream, Status> {
        let replicas = self.replicas_named(&request.replica).await?;
        let nodes = self.nodes().await?;
        let mut streams = Vec::new();
        for replica in replicas.iter().filter(|r| !r.node.is_empty()) {
            let mut client = self.node_client(&nodes, &replica.node).await?;
            let one = pb::LogsRequest { replica: replica.id.clone(), ..request.clone() };
            streams.push(client.logs(one).await?.into_inner());
        }
        if streams.is_empty() {
            return Err(Status::failed_precondition(format!("{} has no replica on a node yet", request.replica)));
        }
        Ok(Box::pin(futures::stream::select_all(streams)))
    }

    pub async fn exec(&self, mut input: Streaming<pb::ExecInput>) -> Result<ExecStream, Status> {
        let first = input.message().await?.ok_or_else(|| Status::invalid_argument("exec: no start message"))?;
        let Some(pb::exec_input::Body::Start(start)) = &first.body else { return Err(Status::invalid_argument("exec: the first message must be start")) };
        let all = self.list_replicas(None).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let replica = all.iter().find(|r| r.id == start.replica).ok_or_else(|| Status::not_found(format!("replica {:?} not found", start.replica)))?;
        if replica.node.is_empty() {
            return Err(Status::failed_precondition(format!("replica {} is not on a node yet", replica.id)));
        }
        let mut client = self.node_client(&self.nodes().await?, &replica.node).await?;
        let forwarded = futures::stream::once(async move { first }).chain(input.filter_map(|m| async move { m.ok() }));
        Ok(Box::pin(client.exec(forwarded).await?.into_inner()))
    }

    /// `orch chaos`: one fault, carried out by the agent of the node it concerns, then
    /// recorded as a Chaos event (the node's own events reach the store only when its
    /// link is back).
    pub async fn chaos(&self, request: pb::ChaosRequest) -> Result<pb::ChaosResponse, Status> {
        let nodes = self.nodes().await?;
        let (node, object) = match &request.fault {
            Some(pb::chaos_request::Fault::KillReplica(id)) => {
                let all = self.list_replicas(None).await.map_err(|e| Status::unavailable(e.to_string()))?;
                let replica = all.iter().find(|r| r.id == *id).ok_or_else(|| Status::not_found(format!("replica {id:?} not found")))?;
                if replica.node.is_empty() {
                    return Err(Status::failed_precondition(format!("replica {id} is not on a node yet")));
                }
                (replica.node.clone(), format!("replica/{id}"))
            }
            Some(pb::chaos_request::Fault::Outage(_)) => {
                if request.node.is_empty() {
                    return Err(Status::invalid_argument("an outage needs a node"));
                }
                (request.node.clone(), format!("node/{}", request.node))
            }
            None => return Err(Status::invalid_argument("no fault given")),
        };
        let mut client = self.node_client(&nodes, &node).await?;
        let done = client.chaos(request).await?.into_inner();
        if let Some(events) = &self.events {
            let event = pb::Event {
                timestamp_unix_ms: done.at_unix_ms,
                kind: orch_api::events::EventKind::Chaos.as_str().into(),
                object,
                message: format!("orch chaos: {}", done.message),
                incident: None,
            };
            if let Err(error) = events.record(event).await {
                tracing::warn!(%error, "recording a Chaos event");
            }
        }
        Ok(done)
    }

    pub async fn top(&self) -> Result<pb::TopResponse, Status> {
        let nodes = self.nodes().await?;
        let mut replicas = Vec::new();
        for node in nodes.iter().filter(|n| n.ready) {
            let name = node.info.as_ref().map(|i| i.name.clone()).unwrap_or_default();
            match self.node_client(&nodes, &name).await {
                Ok(mut client) => match client.stats(pb::StatsRequest {}).await {
                    Ok(stats) => replicas.extend(stats.into_inner().replicas),
                    Err(error) => tracing::warn!(node = %name, %error, "stats"),
                },
                Err(error) => tracing::warn!(node = %name, %error, "stats"),
            }
        }
        Ok(pb::TopResponse { replicas, nodes })
    }

    pub async fn topology(&self) -> Result<pb::TopologyResponse, Status> {
        let nodes = self.nodes().await?;
        let mut inspected = Vec::new();
        for node in nodes.iter().filter(|n| n.ready) {
            let name = node.info.as_ref().map(|i| i.name.clone()).unwrap_or_default();
            let mut client = self.node_client(&nodes, &name).await?;
            inspected.push(client.inspect(pb::InspectRequest {}).await?.into_inner());
        }
        let services = self.list().await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(pb::TopologyResponse { nodes: inspected, services })
    }
}
