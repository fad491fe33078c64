//! What one node should run, as a pure function of the cluster state: the replicas bound
//! to it (each with the template it was created from) and the services whose local
//! volumes are to be purged; every service's endpoints and the routes to the other
//! nodes' pod subnets go with it, whole or as what changed since the session's previous
//! set ([`SentShared`]).

use std::collections::{BTreeSet, HashMap};

use orch_api::pb;

use crate::state::ClusterState;
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
    endpoints: HashMap<String, Revision>,
    /// The routes as last sent whole, for an agent that takes no route deltas.
    routes: Option<Vec<pb::NodeRoute>>,
    /// The content version of the picture the routes were last sent from.
    routes_at: Option<u64>,
}

impl SentShared {
    /// What changed in `state`'s shared part for `node` since the last call (everything
    /// at the first), now recorded as sent; the routes as a partial change when the
    /// agent takes them (`partial_routes`).
    pub fn changes(&mut self, state: &ClusterState, node: &str, partial_routes: bool) -> SharedChanges {
        let routes = if partial_routes { self.route_changes(state, node) } else { self.whole_route_changes(state, node) };
        SharedChanges { endpoints: self.endpoints_changes(state), routes }
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

    fn endpoints_changes(&mut self, state: &ClusterState) -> Option<EndpointsDelta> {
        let sent = &self.endpoints;
        let changed: Vec<(&String, Revision, &pb::ServiceEndpoints)> = state
            .endpoints
            .iter()
            .filter(|(service, e)| sent.get(*service) != Some(&e.mod_revision))
            .map(|(service, e)| (service, e.mod_revision, &*e.value))
            .collect();
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
            .map(|(service, revision, endpoints)| {
                self.endpoints.insert(service.clone(), revision);
                endpoints.clone()
            })
            .collect();
        Some(EndpointsDelta { changed, removed })
    }
}

/// The node's desired set, generation 0, without endpoints and routes: the session stamps
/// the generation and adds those (whole or what changed, [`SentShared`]) when it sends
/// it. Configs and Secrets go only to the nodes whose replicas use them.
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
            let mut replica = pb::Replica::clone(&r.value);
            let spec = replica.spec.take();
            replica.status = None;
            pb::DesiredReplica { replica: Some(replica), spec }
        })
        .collect();
    pb::DesiredSet {
        generation: 0,
        replicas,
        purged_services: shared.purged_services.clone(),
        configs,
        controllers: shared.controllers.clone(),
        ..Default::default()
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
    use crate::state::Versioned;
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
        assert_eq!(sent.endpoints_changes(&state), None, "no services: nothing to send");
        write(&mut state, "web", &["10.88.0.2"], 2);
        write(&mut state, "api", &["10.88.0.3"], 3);
        assert_eq!(sent.endpoints_changes(&state), delta(&[("api", &["10.88.0.3"]), ("web", &["10.88.0.2"])], &[]), "the first: every service");
        assert_eq!(sent.endpoints_changes(&state), None, "nothing written since");
        write(&mut state, "web", &["10.88.0.2", "10.88.0.4"], 4);
        assert_eq!(sent.endpoints_changes(&state), delta(&[("web", &["10.88.0.2", "10.88.0.4"])], &[]), "one rewritten");
        state.endpoints.remove("api");
        write(&mut state, "db", &[], 6);
        assert_eq!(sent.endpoints_changes(&state), delta(&[("db", &[])], &["api"]), "one gone, one new: same count, both seen");
        state.endpoints.remove("db");
        assert_eq!(sent.endpoints_changes(&state), delta(&[], &["db"]), "one gone");
        assert_eq!(sent.endpoints_changes(&state), None);
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
        assert_eq!(vias(sent.changes(&two, "n1", false)), Some(vec!["192.0.2.2".to_owned()]), "the first: every other node");
        assert_eq!(vias(sent.changes(&two, "n1", false)), None, "unchanged");
        let three = with_nodes(&[("n1", "192.0.2.1", 1), ("n2", "192.0.2.2", 2), ("n3", "192.0.2.3", 3)]);
        assert_eq!(vias(sent.changes(&three, "n1", false)), Some(vec!["192.0.2.2".to_owned(), "192.0.2.3".to_owned()]), "a node joined");
        let moved = with_nodes(&[("n1", "192.0.2.9", 1), ("n2", "192.0.2.2", 2), ("n3", "192.0.2.3", 3)]);
        assert_eq!(vias(sent.changes(&moved, "n1", false)), None, "the node's own address is in no route of its own");
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
        let changes = |sent: &mut SentShared, state: &ClusterState| match sent.changes(state, "n1", true).routes {
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
}
