//! What one node should run, as a pure function of the cluster state: the replicas bound
//! to it (each with the template it was created from), every service's endpoints, and
//! routes to the other nodes' pod subnets, and the services whose local volumes are to
//! be purged.

use orch_api::pb;

use crate::state::ClusterState;

/// The node's desired set, generation 0: the session stamps the generation when the set
/// differs from the last one it sent.
pub fn desired_set(state: &ClusterState, node: &str) -> pb::DesiredSet {
    let replicas = state
        .replicas_on(node)
        .map(|r| {
            let mut replica = r.value.clone();
            let spec = replica.spec.take();
            replica.status = None;
            pb::DesiredReplica { replica: Some(replica), spec }
        })
        .collect();
    let endpoints = state.endpoints.values().map(|e| e.value.clone()).collect();
    let routes = state
        .nodes
        .iter()
        .filter(|(name, _)| name.as_str() != node)
        .filter_map(|(name, n)| {
            let address = n.value.info.as_ref().map(|i| i.address.clone())?;
            let subnet = orch_api::cidr::from_wire(n.value.pod_subnet.as_ref(), &n.value.pod_cidr).ok()?;
            Some(pb::NodeRoute { node: name.clone(), pod_cidr: subnet.to_string(), via: address, pod_subnet: Some(subnet.into()) })
        })
        .collect();
    let purged_services = state.purges.keys().cloned().collect();
    pb::DesiredSet { generation: 0, replicas, endpoints, routes, purged_services }
}

/// Stamps `generation` on the set.
pub fn stamp(mut set: pb::DesiredSet, generation: u64) -> pb::DesiredSet {
    set.generation = generation;
    set
}
