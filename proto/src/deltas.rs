//! Desired sets as deltas: what a session's receiving end keeps to make every set whole
//! again (the agent's session, the controller's fake agents).

use std::collections::{BTreeMap, HashSet};

use crate::pb;

/// A set that does not follow from what the session's earlier sets said: the session is
/// out of step, and a new one (whose first set is whole) puts it right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("a change to the ready addresses of service {0:?}, whose endpoints no earlier set gave")]
    UnknownService(String),
}

/// What a session's sets have said so far of what every node's set shares: each service's
/// endpoints, the routes to the other nodes (one per session: a new session starts with
/// a whole set).
#[derive(Debug, Default, Clone)]
pub struct KnownShared {
    endpoints: BTreeMap<String, pb::ServiceEndpoints>,
    /// In node order (as a whole set lists them; kept so by partial changes).
    routes: Vec<pb::NodeRoute>,
}

impl KnownShared {
    /// Takes in a set as it came down the session and leaves it whole: a whole set
    /// replaces what was known, a delta is applied to it; either way `set.endpoints` ends
    /// with every service's endpoints (in service order) and `set.routes` with every
    /// route, and the delta's marks are cleared.
    pub fn take(&mut self, set: &mut pb::DesiredSet) -> Result<(), DeltaError> {
        self.learn(set)?;
        set.endpoints = self.endpoints.values().cloned().collect();
        set.routes = self.routes.clone();
        Ok(())
    }

    /// Learns what a set says of the shared part and takes it out of the set (its
    /// endpoints and routes end empty, the delta's marks cleared). A change to the ready
    /// addresses of a service no earlier set gave is an error (the rest is learnt).
    pub fn learn(&mut self, set: &mut pb::DesiredSet) -> Result<(), DeltaError> {
        let mut unknown = None;
        if !set.delta {
            self.endpoints.clear();
        }
        for service in std::mem::take(&mut set.endpoints_removed) {
            self.endpoints.remove(&service);
        }
        for endpoints in std::mem::take(&mut set.endpoints) {
            if endpoints.ready_ips_partial {
                match self.endpoints.get_mut(&endpoints.service) {
                    Some(known) => apply_ready_changes(known, endpoints),
                    None => unknown = Some(endpoints.service),
                }
            } else {
                self.endpoints.insert(endpoints.service.clone(), endpoints);
            }
        }
        if set.delta && set.routes_partial {
            for node in std::mem::take(&mut set.routes_removed) {
                if let Ok(at) = self.routes.binary_search_by(|r| r.node.cmp(&node)) {
                    self.routes.remove(at);
                }
            }
            for route in std::mem::take(&mut set.routes) {
                match self.routes.binary_search_by(|r| r.node.cmp(&route.node)) {
                    Ok(at) => self.routes[at] = route,
                    Err(at) => self.routes.insert(at, route),
                }
            }
        } else if !set.delta || set.routes_changed {
            self.routes = std::mem::take(&mut set.routes);
            self.routes.sort_by(|a, b| a.node.cmp(&b.node));
        }
        set.routes.clear();
        set.delta = false;
        set.routes_changed = false;
        set.routes_partial = false;
        set.routes_removed.clear();
        unknown.map_or(Ok(()), |service| Err(DeltaError::UnknownService(service)))
    }

    /// Every service's endpoints, in service order.
    pub fn endpoints(&self) -> impl Iterator<Item = &pb::ServiceEndpoints> {
        self.endpoints.values()
    }

    pub fn routes(&self) -> &[pb::NodeRoute] {
        &self.routes
    }
}

/// Makes `known` what a partial endpoints record says: its ready addresses with the
/// removed ones taken out and the added ones put in (sorted, each once), the rest as
/// the record has it.
fn apply_ready_changes(known: &mut pb::ServiceEndpoints, changes: pb::ServiceEndpoints) {
    let removed: HashSet<&str> = changes.ready_ips_removed.iter().map(String::as_str).collect();
    let mut ready = std::mem::take(&mut known.ready_ips);
    ready.retain(|ip| !removed.contains(ip.as_str()));
    ready.extend(changes.ready_ips_added);
    ready.sort();
    ready.dedup();
    *known = pb::ServiceEndpoints { service: changes.service, vip: changes.vip, ports: changes.ports, ready_ips: ready, ..Default::default() };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(service: &str, ready: &[&str]) -> pb::ServiceEndpoints {
        pb::ServiceEndpoints { service: service.into(), ready_ips: ready.iter().map(|s| (*s).to_owned()).collect(), ..Default::default() }
    }

    fn route(node: &str) -> pb::NodeRoute {
        pb::NodeRoute { node: node.into(), ..Default::default() }
    }

    fn set(delta: bool, endpoints: Vec<pb::ServiceEndpoints>, removed: &[&str], routes: Option<Vec<pb::NodeRoute>>) -> pb::DesiredSet {
        pb::DesiredSet {
            delta,
            endpoints,
            endpoints_removed: removed.iter().map(|s| (*s).to_owned()).collect(),
            routes_changed: delta && routes.is_some(),
            routes: routes.unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn deltas_rebuild_the_whole_set_and_a_whole_set_starts_over() {
        let mut known = KnownShared::default();
        let (web, api, db) = (endpoints("web", &["a"]), endpoints("api", &["b"]), endpoints("db", &["d"]));
        let web2 = endpoints("web", &["a", "c"]);
        #[rustfmt::skip]
        let cases: Vec<(&str, pb::DesiredSet, Vec<pb::ServiceEndpoints>, Vec<pb::NodeRoute>)> = vec![
            ("the first set is whole", set(false, vec![web.clone(), api.clone()], &[], Some(vec![route("n2")])), vec![api.clone(), web.clone()], vec![route("n2")]),
            ("a delta changes one service", set(true, vec![web2.clone()], &[], None), vec![api.clone(), web2.clone()], vec![route("n2")]),
            ("an empty delta changes nothing", set(true, vec![], &[], None), vec![api.clone(), web2.clone()], vec![route("n2")]),
            ("a delta adds one, removes one, changes the routes", set(true, vec![db.clone()], &["api"], Some(vec![route("n2"), route("n3")])), vec![db.clone(), web2.clone()], vec![route("n2"), route("n3")]),
            ("routes changed to none", set(true, vec![], &[], Some(vec![])), vec![db.clone(), web2.clone()], vec![]),
            ("a whole set forgets what it does not list", set(false, vec![web.clone()], &[], None), vec![web.clone()], vec![]),
        ];
        for (case, mut set, endpoints, routes) in cases {
            known.take(&mut set).expect(case);
            assert_eq!((&set.endpoints, &set.routes), (&endpoints, &routes), "{case}");
            assert!(!set.delta && !set.routes_changed && set.endpoints_removed.is_empty(), "{case}: the set leaves whole");
        }
    }

    #[test]
    fn partial_endpoint_changes_keep_each_services_ready_addresses_whole() {
        let partial = |service: &str, vip: &str, added: &[&str], removed: &[&str]| pb::ServiceEndpoints {
            service: service.into(),
            vip: vip.into(),
            ready_ips_partial: true,
            ready_ips_added: added.iter().map(|s| (*s).to_owned()).collect(),
            ready_ips_removed: removed.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let whole = |service: &str, vip: &str, ready: &[&str]| pb::ServiceEndpoints { vip: vip.into(), ..endpoints(service, ready) };
        let mut known = KnownShared::default();
        let mut first = set(false, vec![whole("web", "10.96.0.1", &["a", "c"]), whole("api", "10.96.0.2", &["b"])], &[], None);
        known.take(&mut first).expect("a whole set");
        #[rustfmt::skip]
        let cases: Vec<(&str, pb::DesiredSet, Vec<pb::ServiceEndpoints>)> = vec![
            ("one added, in address order", set(true, vec![partial("web", "10.96.0.1", &["b"], &[])], &[], None),
                vec![whole("api", "10.96.0.2", &["b"]), whole("web", "10.96.0.1", &["a", "b", "c"])]),
            ("one gone, one added, the VIP as the record has it", set(true, vec![partial("web", "10.96.0.9", &["d"], &["a"])], &[], None),
                vec![whole("api", "10.96.0.2", &["b"]), whole("web", "10.96.0.9", &["b", "c", "d"])]),
            ("an address removed that was never known, one added twice", set(true, vec![partial("api", "10.96.0.2", &["e", "b"], &["z"])], &[], None),
                vec![whole("api", "10.96.0.2", &["b", "e"]), whole("web", "10.96.0.9", &["b", "c", "d"])]),
            ("a whole record replaces a partial history", set(true, vec![whole("web", "10.96.0.1", &["x"])], &["api"], None),
                vec![whole("web", "10.96.0.1", &["x"])]),
        ];
        for (case, mut set, endpoints) in cases {
            known.take(&mut set).expect(case);
            assert_eq!(set.endpoints, endpoints, "{case}");
        }
        let mut out_of_step = set(true, vec![partial("db", "10.96.0.3", &["f"], &[])], &[], None);
        assert_eq!(known.take(&mut out_of_step), Err(DeltaError::UnknownService("db".into())), "a change to a service never given");
        assert_eq!(known.endpoints().map(|e| e.service.as_str()).collect::<Vec<_>>(), ["web"], "and nothing made up for it");
    }

    #[test]
    fn partial_route_changes_keep_the_routes_whole_and_in_node_order() {
        let via = |node: &str, via: &str| pb::NodeRoute { node: node.into(), via: via.into(), ..Default::default() };
        let partial = |changed: Vec<pb::NodeRoute>, removed: &[&str]| pb::DesiredSet {
            delta: true,
            routes_partial: true,
            routes: changed,
            routes_removed: removed.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let mut known = KnownShared::default();
        let mut whole = set(false, vec![], &[], Some(vec![via("n3", "c"), via("n2", "b")]));
        known.take(&mut whole).expect("a whole set");
        assert_eq!(whole.routes, vec![via("n2", "b"), via("n3", "c")], "a whole set, put in node order");
        #[rustfmt::skip]
        let cases: Vec<(&str, pb::DesiredSet, Vec<pb::NodeRoute>)> = vec![
            ("a node joined", partial(vec![via("n4", "d")], &[]), vec![via("n2", "b"), via("n3", "c"), via("n4", "d")]),
            ("one joined before the others, one moved", partial(vec![via("n1", "a"), via("n3", "c2")], &[]), vec![via("n1", "a"), via("n2", "b"), via("n3", "c2"), via("n4", "d")]),
            ("two gone, one of them never known", partial(vec![], &["n2", "n9"]), vec![via("n1", "a"), via("n3", "c2"), via("n4", "d")]),
            ("a delta without route changes keeps them", set(true, vec![], &[], None), vec![via("n1", "a"), via("n3", "c2"), via("n4", "d")]),
        ];
        for (case, mut set, routes) in cases {
            known.take(&mut set).expect(case);
            assert_eq!(set.routes, routes, "{case}");
            assert!(!set.routes_partial && set.routes_removed.is_empty(), "{case}: the set leaves whole");
        }
    }
}
