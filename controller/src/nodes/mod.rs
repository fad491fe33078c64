//! `orch.v1.Nodes`, for agents: registration (pod subnet, cluster config) and the
//! session stream — downwards the node's desired set with a generation whenever it
//! changes (replicas, endpoints, routes), upwards heartbeats (the node's alive key, on its controller's liveness lease)
//! and status reports (written under `/orch/status/<node>/`).

mod cidr;
pub mod desired;
pub mod detector;
pub mod liveness;
mod registry;
pub mod rpc;
mod session;
mod status;

pub use cidr::{next_free_index, node_subnet, subnet_count};
pub use desired::SharedDesired;
pub use registry::{delete_node, list_nodes, set_scheduling, NodeError, NodeRegistry};
pub use status::{status_writes, StatusWrite};
