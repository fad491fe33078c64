//! What one node should run, as a pure function of the cluster state: the replicas bound
//! to it (each with the template it was created from) and the services whose local
//! volumes are to be purged; every service's endpoints and the routes to the other
//! nodes' pod subnets go with it, whole or as what changed since the session's previous
//! set ([`SentShared`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use orch_api::pb;

use crate::state::{ClusterState, Versioned};
use crate::store::Revision;

/// Opens a stored Secret (its store key, its record) to its content; `None` when it
/// cannot (no key, or the wrong one: the session says so in its log).
pub type SecretOpener<'a> = &'a dyn Fn(&str, &pb::StoredConfig) -> Option<pb::ConfigData>;

/// What every node's desired set shares but the endpoints: the routes to every node's
/// pod subnet (each node's own left out), the services whose local volumes are to be
/// purged, every running controller's address. Computed once per picture
/// ([`ClusterState::shared_desired`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SharedDesired {
    routes: Vec<pb::NodeRoute>,
    purged_services: Vec<String>,
    controllers: Vec<String>,
}

impl SharedDesired {
    pub fn of(state: &ClusterState) -> SharedDesired {
        let routes = state.nodes.iter().filter_map(|(name, n)| route(name, &n.value)).collect();
        let purged_services = state.purges.keys().cloned().collect();
        SharedDesired { routes, purged_services, controllers: controller_addresses(state) }
    }
}

/// The route to a node's pod subnet, via its address (none for a record without them).
fn route(name: &str, node: &pb::Node) -> Option<pb::NodeRoute> {
    let address = node.info.as_ref().map(|i| i.address.clone())?;
    let subnet = orch_api::cidr::from_wire(node.pod_subnet.as_ref(), &node.pod_cidr).ok()?;
    Some(pb::NodeRoute { node: name.to_owned(), pod_cidr: subnet.to_string(), via: address, pod_subnet: Some(subnet.into()) })
}

/// The routes to every node but `node`, for a whole set.
pub fn whole_routes(state: &ClusterState, node: &str) -> Vec<pb::NodeRoute> {
    let shared = state.shared_desired.get_or_init(|| SharedDesired::of(state));
    shared.routes.iter().filter(|route| route.node != node).cloned().collect()
}

/// Every running controller's address, sorted, each once.
pub fn controller_addresses(state: &ClusterState) -> Vec<String> {
    let addresses: BTreeSet<String> = state.controllers.values().map(|c| c.value.address.clone()).filter(|a| !a.is_empty()).collect();
    addresses.into_iter().collect()
}

/// Every service's endpoints, for a whole set.
pub fn whole_endpoints(state: &ClusterState) -> Vec<pb::ServiceEndpoints> {
    state.endpoints.values().map(|e| pb::ServiceEndpoints::clone(&e.value)).collect()
}

/// The endpoints changed since a session's previous set.
#[derive(Debug, Default, PartialEq)]
pub struct EndpointsDelta {
    /// The services whose record is new or rewritten, as they are now.
    pub changed: Vec<pb::ServiceEndpoints>,
    /// The services whose record is gone.
    pub removed: Vec<String>,
}

/// The routes to the other nodes that changed since a session's previous set.
#[derive(Debug, PartialEq)]
pub enum RouteChanges {
    /// All of them (the session's first routes, an agent that takes no route deltas, or a
    /// picture listed afresh since).
    Whole(Vec<pb::NodeRoute>),
    /// Only the routes new or changed, and the nodes whose route went.
    Partial { changed: Vec<pb::NodeRoute>, removed: Vec<String> },
}

/// What an agent said it takes (in its session's first message): sets as deltas, and
/// within them the routes and each service's ready addresses as what changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deltas {
    pub sets: bool,
    pub routes: bool,
    pub endpoints: bool,
    /// A large set may go in parts ([`cut_into_parts`]).
    pub parts: bool,
}

impl Deltas {
    pub fn said_in(message: &pb::AgentMessage) -> Deltas {
        let sets = message.takes_deltas;
        let (routes, endpoints) = (sets && message.takes_route_deltas, sets && message.takes_endpoint_deltas);
        Deltas { sets, routes, endpoints, parts: routes && endpoints && message.takes_parts }
    }
}

/// About the most a part of a set cut into parts carries, encoded.
pub const PART_BYTES: usize = 16 * 1024;

/// A set as parts of about `max_bytes` each, for an agent that takes parts
/// (`DesiredSet.continued`): taken in one after the other, they say what the set says. The
/// first part is whole or a delta as the set is and carries its removals; the parts after
/// it are deltas whose routes and ready addresses are partial; the last carries the
/// replicas, Configs, purged services and controllers. One part when the set is no larger.
/// (Each session's send buffer grows to its largest message and keeps that size.)
pub fn cut_into_parts(mut set: pb::DesiredSet, max_bytes: usize) -> Vec<pb::DesiredSet> {
    use prost::Message;
    if set.encoded_len() <= max_bytes {
        return vec![set];
    }
    let generation = set.generation;
    let later = || pb::DesiredSet { generation, delta: true, routes_partial: true, continued: true, ..Default::default() };
    let mut part = pb::DesiredSet {
        generation,
        delta: set.delta,
        routes_changed: set.routes_changed,
        routes_partial: set.routes_partial,
        routes_removed: std::mem::take(&mut set.routes_removed),
        endpoints_removed: std::mem::take(&mut set.endpoints_removed),
        continued: true,
        ..Default::default()
    };
    let mut parts = Vec::new();
    let mut size = part.encoded_len();
    // Each item with its field's tag and length (at most 3 bytes for a part's sizes).
    let mut make_room = |part: &mut pb::DesiredSet, size: &mut usize, needed: usize| {
        if *size + needed > max_bytes && *size > 0 {
            parts.push(std::mem::replace(part, later()));
            *size = 0;
        }
        *size += needed;
    };
    for route in std::mem::take(&mut set.routes) {
        make_room(&mut part, &mut size, route.encoded_len() + 3);
        part.routes.push(route);
    }
    for endpoints in std::mem::take(&mut set.endpoints) {
        for piece in endpoint_pieces(endpoints, max_bytes / 2) {
            make_room(&mut part, &mut size, piece.encoded_len() + 3);
            part.endpoints.push(piece);
        }
    }
    let rest = pb::DesiredSet { generation, ..set };
    make_room(&mut part, &mut size, rest.encoded_len());
    part.replicas = rest.replicas;
    part.configs = rest.configs;
    part.purged_services = rest.purged_services;
    part.controllers = rest.controllers;
    part.continued = false;
    parts.push(part);
    parts
}

/// A service's endpoints record as pieces of about `max_bytes` of addresses each: a whole
/// record as its first addresses whole, then the others added; a partial one as its
/// removals, then its additions.
fn endpoint_pieces(endpoints: pb::ServiceEndpoints, max_bytes: usize) -> Vec<pb::ServiceEndpoints> {
    // An IPv4 address in text is at most 15 bytes, 17 with its tag and length.
    let per_piece = (max_bytes / 17).max(1);
    let size: usize = [&endpoints.ready_ips, &endpoints.ready_ips_added, &endpoints.ready_ips_removed].iter().map(|ips| ips.len()).sum();
    if size <= per_piece {
        return vec![endpoints];
    }
    let partial = |added: &[String], removed: &[String]| pb::ServiceEndpoints {
        ready_ips_partial: true,
        ready_ips_added: added.to_vec(),
        ready_ips_removed: removed.to_vec(),
        ..without_addresses(&endpoints)
    };
    let mut pieces = Vec::new();
    let added = if endpoints.ready_ips_partial {
        pieces.extend(endpoints.ready_ips_removed.chunks(per_piece).map(|removed| partial(&[], removed)));
        &endpoints.ready_ips_added[..]
    } else {
        let (first, others) = endpoints.ready_ips.split_at(per_piece.min(endpoints.ready_ips.len()));
        pieces.push(pb::ServiceEndpoints { ready_ips: first.to_vec(), ..without_addresses(&endpoints) });
        others
    };
    pieces.extend(added.chunks(per_piece).map(|added| partial(added, &[])));
    pieces
}

/// A service's endpoints record without any address: its service, VIP and ports.
fn without_addresses(endpoints: &pb::ServiceEndpoints) -> pb::ServiceEndpoints {
    pb::ServiceEndpoints { service: endpoints.service.clone(), vip: endpoints.vip.clone(), ports: endpoints.ports.clone(), ..Default::default() }
}

/// What changed in the shared part since a session's previous set (`None`: nothing).
#[derive(Debug, Default, PartialEq)]
pub struct SharedChanges {
    pub endpoints: Option<EndpointsDelta>,
    pub routes: Option<RouteChanges>,
}

impl SharedChanges {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_none() && self.routes.is_none()
    }
}

/// What a session has sent of the shared part: each service's endpoints record, by
/// revision, and the routes. Each set used to carry every service's endpoints and every
/// route to every node — with 2,000 replicas and 100 nodes, encoding and decoding them
/// was most of a readiness storm's work (`controller.sh`); a session now sends an agent
/// that takes deltas what changed since its previous set — for the routes, through the
/// picture's log of which node changed at which version, so a node joining 1,000 costs
/// each session one route, found without comparing the other 999.
#[derive(Debug, Default)]
pub struct SentShared {
    /// Service → its endpoints record as last sent (shared with the picture it came from).
    endpoints: HashMap<String, (Revision, Arc<pb::ServiceEndpoints>)>,
    /// The routes as last sent whole, for an agent that takes no route deltas.
    routes: Option<Vec<pb::NodeRoute>>,
    /// The content version of the picture the routes were last sent from.
    routes_at: Option<u64>,
}

impl SentShared {
    /// What changed in `state`'s shared part for `node` since the last call (everything
    /// at the first), now recorded as sent; the routes and the ready addresses as partial
    /// changes when the agent takes them (`deltas`).
    pub fn changes(&mut self, state: &ClusterState, node: &str, deltas: Deltas) -> SharedChanges {
        let routes = if deltas.routes { self.route_changes(state, node) } else { self.whole_route_changes(state, node) };
        SharedChanges { endpoints: self.endpoints_changes(state, deltas.endpoints), routes }
    }

    fn whole_route_changes(&mut self, state: &ClusterState, node: &str) -> Option<RouteChanges> {
        let shared = state.shared_desired.get_or_init(|| SharedDesired::of(state));
        let routes = shared.routes.iter().filter(|route| route.node != node);
        match &self.routes {
            Some(sent) if routes.clone().eq(sent.iter()) => None,
            _ => {
                let routes: Vec<pb::NodeRoute> = routes.cloned().collect();
                self.routes = Some(routes.clone());
                Some(RouteChanges::Whole(routes))
            }
        }
    }

    fn route_changes(&mut self, state: &ClusterState, node: &str) -> Option<RouteChanges> {
        let since = self.routes_at.replace(state.content_version);
        let Some(nodes) = since.and_then(|since| state.routes_changed_since(since)) else {
            return Some(RouteChanges::Whole(whole_routes(state, node)));
        };
        let (mut changed, mut removed) = (Vec::new(), Vec::new());
        for name in nodes.filter(|name| *name != node) {
            match state.nodes.get(name).and_then(|n| route(name, &n.value)) {
                Some(route) => changed.push(route),
                None => removed.push(name.to_owned()),
            }
        }
        (!changed.is_empty() || !removed.is_empty()).then_some(RouteChanges::Partial { changed, removed })
    }

    fn endpoints_changes(&mut self, state: &ClusterState, partial: bool) -> Option<EndpointsDelta> {
        let sent = &self.endpoints;
        let changed: Vec<(&String, &Versioned<pb::ServiceEndpoints>)> =
            state.endpoints.iter().filter(|(service, e)| sent.get(*service).map(|(revision, _)| *revision) != Some(e.mod_revision)).collect();
        // Some sent service is gone only if more were sent and changed than there are.
        let removed: Vec<String> = if sent.len() + changed.len() > state.endpoints.len() {
            sent.keys().filter(|service| !state.endpoints.contains_key(*service)).cloned().collect()
        } else {
            Vec::new()
        };
        if changed.is_empty() && removed.is_empty() {
            return None;
        }
        for service in &removed {
            self.endpoints.remove(service);
        }
        let changed = changed
            .into_iter()
            .map(|(service, now)| {
                let before = self.endpoints.insert(service.clone(), (now.mod_revision, Arc::clone(&now.value)));
                match before {
                    Some((revision, before)) if partial => {
                        let changes = state.ready_changes.get_or_init((service.clone(), revision, now.mod_revision), || ready_changes(&before, &now.value));
                        pb::ServiceEndpoints::clone(&changes)
                    }
                    _ => pb::ServiceEndpoints::clone(&now.value),
                }
            })
            .collect();
        Some(EndpointsDelta { changed, removed })
    }
}

/// A service's endpoints as what changed from `before` to `now` (`ready_ips_partial`:
/// the addresses added and removed), or whole when that says no less.
pub fn ready_changes(before: &pb::ServiceEndpoints, now: &pb::ServiceEndpoints) -> pb::ServiceEndpoints {
    let was: HashSet<&str> = before.ready_ips.iter().map(String::as_str).collect();
    let is: HashSet<&str> = now.ready_ips.iter().map(String::as_str).collect();
    let added: Vec<String> = now.ready_ips.iter().filter(|ip| !was.contains(ip.as_str())).cloned().collect();
    let removed: Vec<String> = before.ready_ips.iter().filter(|ip| !is.contains(ip.as_str())).cloned().collect();
    if added.len() + removed.len() >= now.ready_ips.len() {
        return now.clone();
    }
    pb::ServiceEndpoints { ready_ips_partial: true, ready_ips_added: added, ready_ips_removed: removed, ..without_addresses(now) }
}

/// What a node's set says but the endpoints and routes, with its replicas as the picture's
/// records (shared: a session keeps the last one it sent to compare with the next, and a
/// thousand sessions' deep copies were ~50 MiB of a readiness storm's heap).
#[derive(Debug, Clone)]
pub struct NodeDesired {
    replicas: Vec<Arc<pb::Replica>>,
    configs: Vec<pb::NodeConfig>,
    purged_services: Vec<String>,
    controllers: Vec<String>,
}

impl PartialEq for NodeDesired {
    /// Equal when the sets would be: a replica's status is in no set.
    fn eq(&self, other: &NodeDesired) -> bool {
        self.replicas.len() == other.replicas.len()
            && self.replicas.iter().zip(&other.replicas).all(|(a, b)| Arc::ptr_eq(a, b) || same_but_status(a, b))
            && (&self.configs, &self.purged_services, &self.controllers) == (&other.configs, &other.purged_services, &other.controllers)
    }
}

/// Two replica records alike but for their status (every field named: a new one must be
/// placed on one side or the other).
fn same_but_status(a: &pb::Replica, b: &pb::Replica) -> bool {
    // A move mark is the leader's business: the node runs the replica the same.
    let pb::Replica { id, service, node, spec_hash, status: _, spec, slot, moving: _ } = a;
    (id, service, node, spec_hash, spec, slot) == (&b.id, &b.service, &b.node, &b.spec_hash, &b.spec, &b.slot)
}

impl NodeDesired {
    /// The set, generation 0, without endpoints and routes: the session stamps the
    /// generation and adds those (whole or what changed, [`SentShared`]) when it sends it.
    pub fn to_set(&self) -> pb::DesiredSet {
        let replicas = self
            .replicas
            .iter()
            .map(|r| {
                let mut replica = pb::Replica::clone(r);
                let spec = replica.spec.take();
                replica.status = None;
                replica.moving = None;
                pb::DesiredReplica { replica: Some(replica), spec }
            })
            .collect();
        pb::DesiredSet {
            generation: 0,
            replicas,
            purged_services: self.purged_services.clone(),
            configs: self.configs.clone(),
            controllers: self.controllers.clone(),
            ..Default::default()
        }
    }
}

/// What the node's desired set says but the endpoints and routes. Configs and Secrets go
/// only to the nodes whose replicas use them.
pub fn node_desired(state: &ClusterState, node: &str, open: SecretOpener<'_>) -> NodeDesired {
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
    NodeDesired {
        replicas: state.replicas_on(node).map(|r| Arc::clone(&r.value)).collect(),
        configs,
        purged_services: shared.purged_services.clone(),
        controllers: shared.controllers.clone(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use crate::store::{KeyValue, WatchEvent};

    fn write(state: &mut ClusterState, service: &str, ready: &[&str], revision: Revision) {
        let value = pb::ServiceEndpoints { service: service.into(), ready_ips: ready.iter().map(|s| (*s).to_owned()).collect(), ..Default::default() };
        state.endpoints.insert(service.into(), Versioned { key: keys::endpoints(service), value: std::sync::Arc::new(value), mod_revision: revision });
    }

    fn delta(changed: &[(&str, &[&str])], removed: &[&str]) -> Option<EndpointsDelta> {
        let changed = changed
            .iter()
            .map(|(service, ready)| pb::ServiceEndpoints {
                service: (*service).into(),
                ready_ips: ready.iter().map(|s| (*s).to_owned()).collect(),
                ..Default::default()
            })
            .collect();
        Some(EndpointsDelta { changed, removed: removed.iter().map(|s| (*s).to_owned()).collect() })
    }

    #[test]
    fn a_session_sends_the_endpoints_that_changed_since_its_previous_set() {
        let mut state = ClusterState::default();
        let mut sent = SentShared::default();
        assert_eq!(sent.endpoints_changes(&state, false), None, "no services: nothing to send");
        write(&mut state, "web", &["10.88.0.2"], 2);
        write(&mut state, "api", &["10.88.0.3"], 3);
        assert_eq!(sent.endpoints_changes(&state, false), delta(&[("api", &["10.88.0.3"]), ("web", &["10.88.0.2"])], &[]), "the first: every service");
        assert_eq!(sent.endpoints_changes(&state, false), None, "nothing written since");
        write(&mut state, "web", &["10.88.0.2", "10.88.0.4"], 4);
        assert_eq!(sent.endpoints_changes(&state, false), delta(&[("web", &["10.88.0.2", "10.88.0.4"])], &[]), "one rewritten");
        state.endpoints.remove("api");
        write(&mut state, "db", &[], 6);
        assert_eq!(sent.endpoints_changes(&state, false), delta(&[("db", &[])], &["api"]), "one gone, one new: same count, both seen");
        state.endpoints.remove("db");
        assert_eq!(sent.endpoints_changes(&state, false), delta(&[], &["db"]), "one gone");
        assert_eq!(sent.endpoints_changes(&state, false), None);
    }

    #[test]
    fn an_agent_that_takes_endpoint_deltas_gets_the_addresses_that_changed() {
        let mut state = ClusterState::default();
        let mut sent = SentShared::default();
        let many: Vec<String> = (1..=20).map(|i| format!("10.88.0.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        write(&mut state, "web", &many, 2);
        assert_eq!(sent.endpoints_changes(&state, true), delta(&[("web", &many)], &[]), "the first: whole");
        let mut next = many.clone();
        next.retain(|ip| *ip != "10.88.0.5");
        next.push("10.88.0.99");
        write(&mut state, "web", &next, 3);
        let partial = pb::ServiceEndpoints {
            service: "web".into(),
            ready_ips_partial: true,
            ready_ips_added: vec!["10.88.0.99".into()],
            ready_ips_removed: vec!["10.88.0.5".into()],
            ..Default::default()
        };
        assert_eq!(sent.endpoints_changes(&state, true), Some(EndpointsDelta { changed: vec![partial.clone()], removed: vec![] }), "one in, one out");
        // A second session from the same record: the change is computed once per picture.
        let mut other = SentShared::default();
        write(&mut state, "web", &many, 2);
        other.endpoints_changes(&state, true);
        write(&mut state, "web", &next, 3);
        assert_eq!(other.endpoints_changes(&state, true), Some(EndpointsDelta { changed: vec![partial], removed: vec![] }));
        assert_eq!(state.ready_changes.computed(), 1, "one change, computed once");
        write(&mut state, "web", &["10.88.0.1"], 4);
        assert_eq!(sent.endpoints_changes(&state, true), delta(&[("web", &["10.88.0.1"])], &[]), "19 gone, 1 left: whole says less");
    }

    #[test]
    fn a_session_sends_the_routes_again_only_when_they_change() {
        let with_nodes = |nodes: &[(&str, &str, u8)]| {
            let mut state = ClusterState::default();
            for (name, address, index) in nodes {
                let subnet: orch_api::cidr::Ipv4Cidr = format!("10.88.{index}.0/24").parse().expect("a subnet");
                let node = pb::Node {
                    info: Some(pb::NodeInfo { name: (*name).into(), address: (*address).into(), ..Default::default() }),
                    pod_subnet: Some(subnet.into()),
                    ..Default::default()
                };
                state.nodes.insert((*name).into(), Versioned { key: keys::node(name), value: std::sync::Arc::new(node), mod_revision: 1 });
            }
            state
        };
        let vias = |changes: SharedChanges| match changes.routes {
            Some(RouteChanges::Whole(routes)) => Some(routes.into_iter().map(|r| r.via).collect::<Vec<_>>()),
            Some(partial) => panic!("an agent that takes no route deltas got {partial:?}"),
            None => None,
        };
        let mut sent = SentShared::default();
        let two = with_nodes(&[("n1", "192.0.2.1", 1), ("n2", "192.0.2.2", 2)]);
        assert_eq!(vias(sent.changes(&two, "n1", Deltas::default())), Some(vec!["192.0.2.2".to_owned()]), "the first: every other node");
        assert_eq!(vias(sent.changes(&two, "n1", Deltas::default())), None, "unchanged");
        let three = with_nodes(&[("n1", "192.0.2.1", 1), ("n2", "192.0.2.2", 2), ("n3", "192.0.2.3", 3)]);
        assert_eq!(vias(sent.changes(&three, "n1", Deltas::default())), Some(vec!["192.0.2.2".to_owned(), "192.0.2.3".to_owned()]), "a node joined");
        let moved = with_nodes(&[("n1", "192.0.2.9", 1), ("n2", "192.0.2.2", 2), ("n3", "192.0.2.3", 3)]);
        assert_eq!(vias(sent.changes(&moved, "n1", Deltas::default())), None, "the node's own address is in no route of its own");
    }

    #[test]
    fn a_session_sends_only_the_routes_that_changed_to_an_agent_that_takes_route_deltas() {
        let node = |name: &str, address: &str, index: u8| {
            let subnet: orch_api::cidr::Ipv4Cidr = format!("10.88.{index}.0/24").parse().expect("a subnet");
            let node = pb::Node {
                info: Some(pb::NodeInfo { name: name.into(), address: address.into(), ..Default::default() }),
                pod_subnet: Some(subnet.into()),
                ..Default::default()
            };
            WatchEvent::Put(KeyValue { key: keys::node(name), value: keys::encode(&node), create_revision: 1, mod_revision: 1, lease: 0 })
        };
        let gone = |name: &str| WatchEvent::Delete { key: keys::node(name), revision: 1 };
        let changes =
            |sent: &mut SentShared, state: &ClusterState| match sent.changes(state, "n1", Deltas { sets: true, routes: true, ..Deltas::default() }).routes {
                Some(RouteChanges::Whole(routes)) => format!("whole {:?}", routes.iter().map(|r| r.via.as_str()).collect::<Vec<_>>()),
                Some(RouteChanges::Partial { changed, removed }) => {
                    format!("changed {:?} removed {removed:?}", changed.iter().map(|r| r.via.as_str()).collect::<Vec<_>>())
                }
                None => "none".to_owned(),
            };
        let mut state = ClusterState::default();
        state.apply(&node("n1", "192.0.2.1", 1));
        state.apply(&node("n2", "192.0.2.2", 2));
        // As a listing does.
        state.stamp(1);
        state.routes_since = 1;
        let mut sent = SentShared::default();
        #[rustfmt::skip]
        let steps: Vec<(&str, Vec<WatchEvent>, &str)> = vec![
            ("the first: whole", vec![], r#"whole ["192.0.2.2"]"#),
            ("unchanged", vec![], "none"),
            ("a node joined: that route alone", vec![node("n3", "192.0.2.3", 3)], r#"changed ["192.0.2.3"] removed []"#),
            ("the node's own record: no route of its own", vec![node("n1", "192.0.2.9", 1)], "none"),
            ("one moved, one went", vec![node("n3", "192.0.2.33", 3), gone("n2")], r#"changed ["192.0.2.33"] removed ["n2"]"#),
        ];
        for (version, (step, events, want)) in (2..).zip(steps) {
            for event in &events {
                state.apply(event);
            }
            state.stamp(version);
            assert_eq!(changes(&mut sent, &state), want, "{step}");
        }
        // Listed afresh (a watch ended): the log starts again, the routes go whole (from
        // a picture of its own, as every published one is).
        state.stamp(20);
        state.shared_desired = crate::state::Memo::default();
        state.routes_since = 20;
        assert_eq!(changes(&mut sent, &state), r#"whole ["192.0.2.33"]"#, "after a re-list");
    }

    #[test]
    fn a_large_set_cut_into_parts_says_what_the_set_says() {
        use orch_api::deltas::KnownShared;
        use prost::Message;
        // Sorted, as the controller writes them.
        let ips = |service: u32, n: u32| {
            let mut ips: Vec<String> = (0..n).map(|i| format!("10.{service}.{}.{}", i / 250, i % 250 + 1)).collect();
            ips.sort();
            ips
        };
        let whole_endpoints = |service: u32, n: u32| pb::ServiceEndpoints {
            service: format!("svc-{service}"),
            vip: format!("10.96.0.{service}"),
            ready_ips: ips(service, n),
            ..Default::default()
        };
        let routes = |from: u32, to: u32| {
            (from..to)
                .map(|i| pb::NodeRoute {
                    node: format!("node-{i:04}"),
                    pod_cidr: format!("10.64.{i}.0/24"),
                    via: format!("192.0.2.{}", i % 250),
                    pod_subnet: None,
                })
                .collect::<Vec<_>>()
        };
        let replicas: Vec<pb::DesiredReplica> =
            (0..10).map(|i| pb::DesiredReplica { replica: Some(pb::Replica { id: format!("r{i}"), ..Default::default() }), spec: None }).collect();
        let base = pb::DesiredSet {
            generation: 7,
            replicas,
            endpoints: vec![whole_endpoints(1, 1500), whole_endpoints(2, 3), whole_endpoints(3, 700)],
            routes: routes(0, 999),
            purged_services: vec!["old".into()],
            controllers: vec!["127.0.0.1:7443".into()],
            ..Default::default()
        };
        let partial = pb::ServiceEndpoints {
            service: "svc-1".into(),
            vip: "10.96.0.1".into(),
            ready_ips_partial: true,
            ready_ips_added: ips(9, 900),
            ready_ips_removed: ips(1, 1500)[..1200].to_vec(),
            ..Default::default()
        };
        #[rustfmt::skip]
        let sets: Vec<(&str, pb::DesiredSet)> = vec![
            ("whole", base.clone()),
            ("a delta with whole routes, a service gone", pb::DesiredSet { delta: true, routes_changed: true, routes: routes(0, 500), endpoints: vec![whole_endpoints(3, 800)], endpoints_removed: vec!["svc-2".into()], ..base.clone() }),
            ("a delta with partial routes and ready addresses", pb::DesiredSet { delta: true, routes_partial: true, routes: routes(999, 1400), routes_removed: vec!["node-0001".into()], endpoints: vec![partial], ..base.clone() }),
            ("a delta with no route change", pb::DesiredSet { delta: true, routes: vec![], endpoints: vec![whole_endpoints(2, 2000)], ..base.clone() }),
            ("small: one part", pb::DesiredSet { delta: true, routes: vec![], endpoints: vec![], ..base.clone() }),
        ];
        let (mut whole, mut cut) = (KnownShared::default(), KnownShared::default());
        for (case, set) in sets {
            let mut expected = set.clone();
            whole.take(&mut expected).expect(case);
            let parts = cut_into_parts(set.clone(), PART_BYTES);
            assert_eq!(parts.len() == 1, set.encoded_len() <= PART_BYTES, "{case}: cut only when larger than a part");
            let (last, before) = parts.split_last().expect("at least one part");
            assert!(before.iter().all(|p| p.continued && p.replicas.is_empty() && p.controllers.is_empty()), "{case}: only the last part acts");
            assert!(!last.continued && last.replicas.len() == 10 && last.controllers == set.controllers, "{case}: the last part carries the replicas");
            for part in &parts {
                assert!(part.encoded_len() <= PART_BYTES + 64, "{case}: a part of {} bytes", part.encoded_len());
                assert_eq!(part.generation, 7, "{case}");
            }
            let mut made = pb::DesiredSet::default();
            for mut part in parts {
                cut.take(&mut part).expect(case);
                made = part;
            }
            // (Not assert_eq: the sets are thousands of lines.)
            assert!(made.endpoints == expected.endpoints, "{case}: the parts say what the set says of the endpoints");
            assert!(made.routes == expected.routes, "{case}: the parts say what the set says of the routes");
            assert!((made.replicas, made.purged_services) == (expected.replicas, expected.purged_services), "{case}");
        }
    }
}
