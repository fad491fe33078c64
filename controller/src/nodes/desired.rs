//! What one node should run, as a pure function of the cluster state: the replicas bound
//! to it (each with the template it was created from), every service's endpoints, and
//! routes to the other nodes' pod subnets, and the services whose local volumes are to
//! be purged.

use std::collections::BTreeSet;

use orch_api::pb;

use crate::state::ClusterState;

/// Opens a stored Secret (its store key, its record) to its content; `None` when it
/// cannot (no key, or the wrong one: the session says so in its log).
pub type SecretOpener<'a> = &'a dyn Fn(&str, &pb::StoredConfig) -> Option<pb::ConfigData>;

/// What every node's desired set shares: the services' endpoints, the routes to every
/// node's pod subnet (each node's own left out), the services whose local volumes are to
/// be purged. Computed once per picture ([`ClusterState::shared_desired`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedDesired {
    endpoints: Vec<pb::ServiceEndpoints>,
    routes: Vec<pb::NodeRoute>,
    purged_services: Vec<String>,
}

impl SharedDesired {
    pub fn of(state: &ClusterState) -> SharedDesired {
        let endpoints = state.endpoints.values().map(|e| e.value.clone()).collect();
        let routes = state
            .nodes
            .iter()
            .filter_map(|(name, n)| {
                let address = n.value.info.as_ref().map(|i| i.address.clone())?;
                let subnet = orch_api::cidr::from_wire(n.value.pod_subnet.as_ref(), &n.value.pod_cidr).ok()?;
                Some(pb::NodeRoute { node: name.clone(), pod_cidr: subnet.to_string(), via: address, pod_subnet: Some(subnet.into()) })
            })
            .collect();
        let purged_services = state.purges.keys().cloned().collect();
        SharedDesired { endpoints, routes, purged_services }
    }
}

/// The node's desired set, generation 0: the session stamps the generation when the set
/// differs from the last one it sent. Configs and Secrets go only to the nodes whose
/// replicas use them.
pub fn desired_set(state: &ClusterState, node: &str, open: SecretOpener<'_>) -> pb::DesiredSet {
    let shared = state.shared_desired.get_or_init(|| SharedDesired::of(state));
    let mut used: BTreeSet<(pb::ConfigKind, String)> = BTreeSet::new();
    for replica in state.replicas_on(node) {
        used.extend(replica.value.spec.as_ref().map(orch_api::manifest::config_refs).unwrap_or_default());
    }
    let configs = used
        .into_iter()
        .filter_map(|(kind, name)| {
            let stored = state.configs.get(&(kind.into(), name.clone()))?;
            let data = match kind {
                pb::ConfigKind::Config => stored.value.data.clone().unwrap_or_default(),
                pb::ConfigKind::Secret => open(&stored.key, &stored.value)?,
            };
            Some(pb::NodeConfig { kind: kind.into(), name, generation: stored.value.generation, data: Some(data) })
        })
        .collect();
    let replicas = state
        .replicas_on(node)
        .map(|r| {
            let mut replica = r.value.clone();
            let spec = replica.spec.take();
            replica.status = None;
            pb::DesiredReplica { replica: Some(replica), spec }
        })
        .collect();
    let routes = shared.routes.iter().filter(|route| route.node != node).cloned().collect();
    pb::DesiredSet { generation: 0, replicas, endpoints: shared.endpoints.clone(), routes, purged_services: shared.purged_services.clone(), configs }
}

/// A stored Secret's content, opened with the cluster's key; `None` (with a warning)
/// when this controller holds no key or another one.
pub fn open_secret(key: Option<&orch_api::secrets::SecretsKey>, store_key: &str, stored: &pb::StoredConfig) -> Option<pb::ConfigData> {
    use prost::Message;
    let Some(key) = key else {
        tracing::warn!(secret = %stored.name, "a node needs a secret, and this controller has no secrets key (--secrets-key)");
        return None;
    };
    let opened = stored.sealed.as_ref().ok_or_else(|| "no sealed data".to_owned()).and_then(|sealed| key.open(store_key, sealed).map_err(|e| e.to_string()));
    match opened.and_then(|bytes| pb::ConfigData::decode(bytes.as_slice()).map_err(|e| e.to_string())) {
        Ok(data) => Some(data),
        Err(error) => {
            tracing::warn!(secret = %stored.name, %error, "cannot open a secret for a node");
            None
        }
    }
}

/// Stamps `generation` on the set.
pub fn stamp(mut set: pb::DesiredSet, generation: u64) -> pb::DesiredSet {
    set.generation = generation;
    set
}
