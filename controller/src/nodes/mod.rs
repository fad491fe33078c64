//! `orch.v1.Nodes`, for agents: registration (pod subnet, cluster config) and the
//! session stream. So far the session carries heartbeats upward (the node's liveness
//! lease); the desired set, endpoints and routes downward come with the reconcilers.

mod cidr;
mod registry;
pub mod rpc;

pub use cidr::{next_free_index, node_subnet};
pub use registry::{list_nodes, NodeError, NodeRegistry};
