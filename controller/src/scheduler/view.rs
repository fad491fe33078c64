//! The immutable inputs of a scheduling pass.

use std::collections::BTreeMap;

/// Cpu in millicores, memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub ready: bool,
    /// Cordoned (or draining): takes no new replica.
    pub unschedulable: bool,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    /// What the replicas already bound to it request.
    pub allocated: Resources,
    pub node_ports: Vec<u16>,
    /// Service name → replicas of it already on the node.
    pub replicas_by_service: BTreeMap<String, u32>,
}

impl NodeView {
    /// Every selector label is on the node with the same value.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingReplica {
    pub id: String,
    pub service: String,
    pub requests: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub node_ports: Vec<u16>,
    /// The only node it may go to: the one holding its slot's local volumes, or the
    /// one a rebalancing move takes it to.
    pub pinned_node: Option<String>,
    /// `pinned_node` is a move's (the rejection says so).
    pub moving: bool,
}
