//! Where things live in the store (see ARCHITECTURE.md, "Store"), and how records are
//! encoded: the `orch.v1` protobuf messages themselves.

use prost::Message;

pub const ROOT: &str = "/orch/";
pub const SERVICES: &str = "/orch/services/";
pub const REPLICAS: &str = "/orch/replicas/";
pub const NODES: &str = "/orch/nodes/";
pub const EVENTS: &str = "/orch/events/";
pub const VIPS: &str = "/orch/ipam/vips/";
/// Node index → node name: node n owns the n-th /24 of the pod network.
pub const NODE_SUBNETS: &str = "/orch/ipam/nodes/";
/// One key per live node, attached to the lease its heartbeats keep alive.
pub const NODES_ALIVE: &str = "/orch/alive/nodes/";
/// `silent/nodes/<node>`: the controller holding the node's session judged it silent —
/// its heartbeats stopped while the connection stayed open, as when a machine dies or
/// its link goes (a closed connection is an agent restarting: its lease decides then).
/// The node is lost at once, without the grace; the key goes with its next heartbeat.
pub const NODES_SILENT: &str = "/orch/silent/nodes/";
/// `sessions/nodes/<node>`: the session (a nonce) that holds the node now; only that
/// one judges its silence.
pub const NODE_SESSIONS: &str = "/orch/sessions/nodes/";
/// `status/<node>/<replica id>`: a replica as its node last reported it (agents write,
/// through their session; only the node a replica is bound to counts).
pub const STATUS: &str = "/orch/status/";
/// `endpoints/<service>`: the service's VIP, ports and ready replica addresses, kept by
/// the endpoints reconciler and sent to every agent.
pub const ENDPOINTS: &str = "/orch/endpoints/";
/// `configs/<name>`: a Config, its data in clear.
pub const CONFIGS: &str = "/orch/configs/";
/// `secrets/<name>`: a Secret, its data sealed with the cluster's secrets key.
pub const SECRETS: &str = "/orch/secrets/";
/// `volumes/claims/<service>/<slot>`: the node holding a slot's local volumes.
pub const VOLUME_CLAIMS: &str = "/orch/volumes/claims/";
/// `volumes/purged/<service>`: a service deleted with its volumes, for the nodes to act on.
pub const VOLUME_PURGES: &str = "/orch/volumes/purged/";
/// `conditions/nodes/<node>`: what the node's agent last reported wrong (a
/// `NodeConditions`); absent while nothing is.
pub const NODE_CONDITIONS: &str = "/orch/conditions/nodes/";
/// `scheduling/nodes/<node>`: a node cordoned or draining (a `NodeScheduling`); absent
/// while it takes replicas as usual.
pub const NODE_SCHEDULING: &str = "/orch/scheduling/nodes/";
/// `ipam/nodeports/<tcp|udp>/<port>`: the service that holds a node port (its name).
pub const NODE_PORTS: &str = "/orch/ipam/nodeports/";
/// `revisions/<service>/<number, 20 digits>`: a template the service ran (a
/// `ServiceRevision`), kept by the reconciler; the digits keep them in order.
pub const REVISIONS: &str = "/orch/revisions/";
/// Held, on a lease, by the controller that runs the reconcilers.
pub const LEADER: &str = "/orch/leader";
/// `controllers/<identity>`: a running controller (a `ControllerInfo`: where clients
/// reach it), on a lease of its own while it runs.
pub const CONTROLLERS: &str = "/orch/controllers/";

pub fn controller(identity: &str) -> String {
    format!("{CONTROLLERS}{identity}")
}

pub fn service(name: &str) -> String {
    format!("{SERVICES}{name}")
}

pub fn replicas_of(service: &str) -> String {
    format!("{REPLICAS}{service}/")
}

pub fn replica(service: &str, id: &str) -> String {
    format!("{REPLICAS}{service}/{id}")
}

pub fn status_of_node(node: &str) -> String {
    format!("{STATUS}{node}/")
}

pub fn status(node: &str, replica: &str) -> String {
    format!("{STATUS}{node}/{replica}")
}

pub fn revisions_of(service: &str) -> String {
    format!("{REVISIONS}{service}/")
}

pub fn revision(service: &str, number: u64) -> String {
    format!("{REVISIONS}{service}/{number:020}")
}

pub fn endpoints(service: &str) -> String {
    format!("{ENDPOINTS}{service}")
}

pub fn configs_of(kind: orch_api::pb::ConfigKind) -> &'static str {
    match kind {
        orch_api::pb::ConfigKind::Config => CONFIGS,
        orch_api::pb::ConfigKind::Secret => SECRETS,
    }
}

pub fn config(kind: orch_api::pb::ConfigKind, name: &str) -> String {
    format!("{}{name}", configs_of(kind))
}

pub fn volume_claims_of(service: &str) -> String {
    format!("{VOLUME_CLAIMS}{service}/")
}

pub fn volume_claim(service: &str, slot: u32) -> String {
    format!("{VOLUME_CLAIMS}{service}/{slot}")
}

pub fn volume_purge(service: &str) -> String {
    format!("{VOLUME_PURGES}{service}")
}

pub fn node(name: &str) -> String {
    format!("{NODES}{name}")
}

pub fn node_alive(name: &str) -> String {
    format!("{NODES_ALIVE}{name}")
}

pub fn node_silent(name: &str) -> String {
    format!("{NODES_SILENT}{name}")
}

pub fn node_session(name: &str) -> String {
    format!("{NODE_SESSIONS}{name}")
}

pub fn node_subnet(index: u32) -> String {
    format!("{NODE_SUBNETS}{index}")
}

pub fn node_conditions(node: &str) -> String {
    format!("{NODE_CONDITIONS}{node}")
}

pub fn node_scheduling(node: &str) -> String {
    format!("{NODE_SCHEDULING}{node}")
}

pub fn node_port(protocol: orch_api::pb::Protocol, port: u32) -> String {
    let protocol = match protocol {
        orch_api::pb::Protocol::Tcp => "tcp",
        orch_api::pb::Protocol::Udp => "udp",
    };
    format!("{NODE_PORTS}{protocol}/{port}")
}

pub fn vip(address: std::net::Ipv4Addr) -> String {
    format!("{VIPS}{address}")
}

/// A stored record that is not the message it should be.
#[derive(Debug, thiserror::Error)]
#[error("corrupt record at {key}: {source}")]
pub struct DecodeError {
    pub key: String,
    pub source: prost::DecodeError,
}

pub fn decode<T: Message + Default>(key: &str, bytes: &[u8]) -> Result<T, DecodeError> {
    T::decode(bytes).map_err(|source| DecodeError { key: key.to_owned(), source })
}

/// Every record of a listing, decoded.
pub fn decode_all<T: Message + Default>(items: &[crate::store::KeyValue]) -> Result<Vec<T>, DecodeError> {
    items.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
}

pub fn encode<T: Message>(message: &T) -> Vec<u8> {
    message.encode_to_vec()
}
