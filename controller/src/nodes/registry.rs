//! Nodes in the store: registration (a pod subnet per node, claimed by CAS, kept across
//! re-registrations), and liveness — the node is Ready while its alive key exists: put
//! on a lease of its own at registration, moved to its session's controller's liveness
//! lease at the session's first beat (`liveness.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use orch_api::pb;

use super::cidr::{next_free_index, node_subnet, subnet_count};
use crate::keys;
use crate::state::ClusterState;
use crate::store::{retry_on_conflict, Expect, LeaseId, MaybeConflict, Store, StoreError, CAS_ATTEMPTS};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid node: {0}")]
    Invalid(String),
    #[error("node {0:?} is not registered")]
    Unknown(String),
    #[error("node {0:?} is Ready: drain it and stop its agent first (or force: its agent registers it again)")]
    StillReady(String),
    #[error(
        "the cluster pod network {0} has no free /24 left: give the controllers a larger --cluster-cidr (a /16 holds 254 nodes, a /14 1,022, a /12 4,094)"
    )]
    Exhausted(orch_api::cidr::Ipv4Cidr),
    #[error("too much contention on {0}; try again")]
    Contended(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Decode(#[from] keys::DecodeError),
}

impl MaybeConflict for NodeError {
    fn is_conflict(&self) -> bool {
        matches!(self, NodeError::Store(e) if e.is_conflict())
    }
}

#[derive(Clone)]
pub struct NodeRegistry {
    store: Arc<dyn Store>,
    cluster_network: orch_api::cidr::Ipv4Cidr,
    lease_ttl: Duration,
    /// The controller's picture, where the claimed pod subnets are found (none: listed).
    state: Option<watch::Receiver<Arc<ClusterState>>>,
    /// The pod subnets this registry claimed lately (see `claim_subnet`).
    reserved: Arc<std::sync::Mutex<BTreeMap<u32, Reservation>>>,
}

/// A pod subnet this registry is claiming, or claimed before the picture shows it.
#[derive(Debug, Clone)]
struct Reservation {
    node: String,
    at: std::time::Instant,
    /// Its claim was written.
    landed: bool,
}

/// How long a subnet just claimed is kept from others without the picture showing it.
const RESERVED_FOR: Duration = Duration::from_secs(10);

impl NodeRegistry {
    pub fn new(store: Arc<dyn Store>, cluster_network: orch_api::cidr::Ipv4Cidr, lease_ttl: Duration) -> NodeRegistry {
        NodeRegistry { store, cluster_network, lease_ttl, state: None, reserved: Arc::default() }
    }

    /// Finds the claimed pod subnets in the controller's picture instead of listing them.
    pub fn with_state(self, state: watch::Receiver<Arc<ClusterState>>) -> NodeRegistry {
        NodeRegistry { state: Some(state), ..self }
    }

    /// How long a node's liveness lease lives without a renewal.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// The cluster's pod network: where every node's /24 comes from.
    pub fn cluster_network(&self) -> orch_api::cidr::Ipv4Cidr {
        self.cluster_network
    }

    /// Registers (or re-registers) a node: the same name keeps its pod subnet. Returns
    /// the node record and the lease its heartbeats must keep alive.
    pub async fn register(&self, info: pb::NodeInfo) -> Result<(pb::Node, LeaseId), NodeError> {
        orch_api::manifest::names::check_dns_label(&info.name).map_err(|e| NodeError::Invalid(format!("name: must be {e}")))?;
        if info.address.parse::<Ipv4Addr>().is_err() {
            return Err(NodeError::Invalid(format!("address: {:?} is not an IPv4 address", info.address)));
        }
        let key = keys::node(&info.name);
        let attempt = || async {
            let (pod_cidr, stored_subnet, expect) = match self.store.get(&key).await? {
                Some(kv) => {
                    let node: pb::Node = keys::decode(&key, &kv.value)?;
                    (node.pod_cidr, node.pod_subnet, Expect::Revision(kv.mod_revision))
                }
                None => (self.claim_subnet(&info.name).await?, None, Expect::Absent),
            };
            let pod_subnet =
                orch_api::cidr::from_wire(stored_subnet.as_ref(), &pod_cidr).map_err(|e| NodeError::Invalid(format!("pod subnet of {}: {e}", info.name)))?;
            let node = pb::Node {
                info: Some(info.clone()),
                ready: true,
                pod_cidr: pod_subnet.to_string(),
                allocated: None,
                conditions: Vec::new(),
                pod_subnet: Some(pod_subnet.into()),
                scheduling: None,
            };
            // Alive first: a new node is never seen registered but NotReady (the
            // reconciler would record a NodeNotReady for that instant).
            // On a lease of its own: a node that registers and never holds a session is
            // NotReady a node lease later (a session moves the key to its controller's
            // liveness lease at its first beat).
            let lease = self.store.grant_lease(self.lease_ttl).await?;
            self.store.put_with_lease(&keys::node_alive(&info.name), Vec::new(), Expect::Any, Some(lease)).await?;
            self.store.put(&key, keys::encode(&node), expect).await?;
            Ok::<_, NodeError>((node, lease))
        };
        retry_on_conflict(attempt).await?.ok_or(NodeError::Contended(key.clone()))
    }

    /// Every claimed pod subnet, index → node, as the store has them now.
    async fn list_claims(&self) -> Result<BTreeMap<u32, String>, NodeError> {
        let listing = self.store.list(keys::NODE_SUBNETS).await?;
        Ok(listing
            .items
            .into_iter()
            .filter_map(|kv| Some((kv.key[keys::NODE_SUBNETS.len()..].parse().ok()?, String::from_utf8_lossy(&kv.value).into_owned())))
            .collect())
    }

    /// The node's pod subnet: the one it claimed before (a registration that failed
    /// half-way), or the lowest free one, claimed now by compare-and-swap.
    ///
    /// The claims come from the controller's picture when it has one (else a listing),
    /// and the subnets this registry claimed that the picture does not show yet (for at
    /// most [`RESERVED_FOR`]) count as claimed: a thousand nodes registering at once claim a
    /// thousand subnets in order, one write each, instead of each listing every claim
    /// and racing the others for the same lowest index.
    async fn claim_subnet(&self, node: &str) -> Result<String, NodeError> {
        let count = subnet_count(self.cluster_network);
        // Found claimed (by another controller) during this registration.
        let mut taken = BTreeSet::new();
        for _ in 0..CAS_ATTEMPTS {
            let picture = self.state.as_ref().map(|state| state.borrow().clone()).filter(|state| state.synced());
            let listed;
            let claims = match &picture {
                Some(picture) => &picture.subnets,
                None => {
                    listed = self.list_claims().await?;
                    &listed
                }
            };
            if let Some((index, _)) = claims.iter().find(|(_, owner)| *owner == node) {
                return Ok(node_subnet(self.cluster_network, *index));
            }
            let index = {
                let mut reserved = self.reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let now = std::time::Instant::now();
                // Kept until the claims show it (a listing shows every claim already).
                reserved.retain(|index, r| picture.is_some() && !claims.contains_key(index) && now.duration_since(r.at) < RESERVED_FOR);
                // This node's own claim, written but not in the picture yet (a retried
                // registration); one still being written: the other registration wins.
                match reserved.iter().find(|(_, r)| r.node == node) {
                    Some((index, r)) if r.landed => return Ok(node_subnet(self.cluster_network, *index)),
                    Some(_) => return Err(NodeError::Contended(format!("{}{node}", keys::NODE_SUBNETS))),
                    None => {}
                }
                let used: BTreeSet<u32> = claims.keys().chain(reserved.keys()).chain(taken.iter()).copied().collect();
                let index = next_free_index(&used, count).ok_or(NodeError::Exhausted(self.cluster_network))?;
                reserved.insert(index, Reservation { node: node.to_owned(), at: now, landed: false });
                index
            };
            drop(picture);
            match self.store.put(&keys::node_subnet(index), node.as_bytes().to_vec(), Expect::Absent).await {
                // Still reserved until the picture shows it claimed.
                Ok(_) => {
                    if let Some(r) = self.reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_mut(&index) {
                        r.landed = true;
                    }
                    return Ok(node_subnet(self.cluster_network, index));
                }
                Err(error) => {
                    self.reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&index);
                    if !error.is_conflict() {
                        return Err(error.into());
                    }
                    taken.insert(index);
                }
            }
        }
        Err(NodeError::Contended(keys::NODE_SUBNETS.to_owned()))
    }

    /// A heartbeat: keeps the node's lease alive. An expired lease (the node was gone
    /// too long) is replaced, making the node Ready again; so is lease 0 (none known).
    pub async fn heartbeat(&self, node: &str, lease: LeaseId) -> Result<LeaseId, NodeError> {
        if self.store.get(&keys::node(node)).await?.is_none() {
            return Err(NodeError::Unknown(node.to_owned()));
        }
        let renewed = if lease == 0 { Err(StoreError::LeaseNotFound(0)) } else { self.store.keep_alive(lease).await };
        match renewed {
            Ok(()) if self.store.get(&keys::node_alive(node)).await?.is_some() => Ok(lease),
            Ok(()) | Err(StoreError::LeaseNotFound(_)) => {
                let lease = self.store.grant_lease(self.lease_ttl).await?;
                self.store.put_with_lease(&keys::node_alive(node), Vec::new(), Expect::Any, Some(lease)).await?;
                Ok(lease)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list(&self) -> Result<Vec<pb::Node>, NodeError> {
        list_nodes(self.store.as_ref()).await
    }
}

/// The records under `prefix` (`…/<node>`), decoded, by node name.
async fn per_node<T: prost::Message + Default>(store: &dyn Store, prefix: &str) -> Result<BTreeMap<String, T>, NodeError> {
    let mut records = BTreeMap::new();
    for kv in store.list(prefix).await?.items {
        records.insert(kv.key[prefix.len()..].to_owned(), keys::decode(&kv.key, &kv.value)?);
    }
    Ok(records)
}

/// Every registered node, Ready while its lease is alive, with what the replicas bound
/// to it request.
pub async fn list_nodes(store: &dyn Store) -> Result<Vec<pb::Node>, NodeError> {
    let alive: BTreeSet<String> = store.list(keys::NODES_ALIVE).await?.items.into_iter().map(|kv| kv.key[keys::NODES_ALIVE.len()..].to_owned()).collect();
    let mut nodes: Vec<pb::Node> = keys::decode_all(&store.list(keys::NODES).await?.items)?;
    let replicas: Vec<pb::Replica> = keys::decode_all(&store.list(keys::REPLICAS).await?.items)?;
    let mut conditions: BTreeMap<String, pb::NodeConditions> = per_node(store, keys::NODE_CONDITIONS).await?;
    let mut scheduling: BTreeMap<String, pb::NodeScheduling> = per_node(store, keys::NODE_SCHEDULING).await?;
    for node in &mut nodes {
        let name = node.info.as_ref().map(|i| i.name.clone()).unwrap_or_default();
        node.ready = alive.contains(&name);
        node.conditions = conditions.remove(&name).map(|c| c.conditions).unwrap_or_default();
        node.scheduling = scheduling.remove(&name);
        let mut allocated = pb::ResourceList::default();
        for replica in replicas.iter().filter(|r| r.node == name) {
            if let Some(requests) = replica.spec.as_ref().and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref()) {
                allocated.cpu_millis += requests.cpu_millis;
                allocated.memory_bytes += requests.memory_bytes;
                allocated.pids += requests.pids;
            }
        }
        node.allocated = Some(allocated);
    }
    Ok(nodes)
}

/// Cordons (`unschedulable`), drains (`drain`: cordoned, and its replicas replaced
/// elsewhere by the reconciler) or, with both false, uncordons a registered node;
/// returns it as listed.
pub async fn set_scheduling(store: &dyn Store, node: &str, unschedulable: bool, drain: bool) -> Result<pb::Node, NodeError> {
    if store.get(&keys::node(node)).await?.is_none() {
        return Err(NodeError::Unknown(node.to_owned()));
    }
    let key = keys::node_scheduling(node);
    if unschedulable || drain {
        let since_unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let scheduling = pb::NodeScheduling { unschedulable: true, draining: drain, since_unix_ms };
        store.put(&key, keys::encode(&scheduling), Expect::Any).await?;
    } else {
        store.delete(&key, Expect::Any).await?;
    }
    list_nodes(store).await?.into_iter().find(|n| n.info.as_ref().is_some_and(|i| i.name == node)).ok_or_else(|| NodeError::Unknown(node.to_owned()))
}

/// Forgets a node that is gone for good: its record, liveness, scheduling, conditions,
/// the status its agent reported and its pod subnet (free for the next node). The
/// replicas bound to it (returned) are replaced elsewhere by the reconciler, as a lost
/// node's are. A Ready node is refused unless `force`.
pub async fn delete_node(store: &dyn Store, node: &str, force: bool) -> Result<Vec<String>, NodeError> {
    let key = keys::node(node);
    let Some(record) = store.get(&key).await? else {
        return Err(NodeError::Unknown(node.to_owned()));
    };
    if !force && store.get(&keys::node_alive(node)).await?.is_some() {
        return Err(NodeError::StillReady(node.to_owned()));
    }
    // The record first: once it is gone the node counts as lost, whatever is left.
    store.delete(&key, Expect::Revision(record.mod_revision)).await?;
    for other in [keys::node_alive(node), keys::node_scheduling(node), keys::node_conditions(node), keys::node_silent(node), keys::node_session(node)] {
        store.delete(&other, Expect::Any).await?;
    }
    for kv in store.list(&keys::status_of_node(node)).await?.items {
        store.delete(&kv.key, Expect::Revision(kv.mod_revision)).await?;
    }
    for kv in store.list(keys::NODE_SUBNETS).await?.items.into_iter().filter(|kv| kv.value == node.as_bytes()) {
        store.delete(&kv.key, Expect::Revision(kv.mod_revision)).await?;
    }
    let replicas: Vec<pb::Replica> = keys::decode_all(&store.list(keys::REPLICAS).await?.items)?;
    Ok(replicas.into_iter().filter(|r| r.node == node).map(|r| r.id).collect())
}
