use std::collections::{BTreeMap, BTreeSet};

use orch_api::events::EventKind;
use orch_api::pb;

use super::*;
use crate::state::{ClusterState, Versioned};

fn service(name: &str, replicas: u32, hash: &str) -> pb::Service {
    pb::Service {
        name: name.into(),
        spec: Some(pb::ServiceSpec {
            replicas,
            image: format!("registry.example/{hash}"),
            resources: Some(pb::Resources { requests: Some(pb::ResourceList { cpu_millis: 100, memory_bytes: 64 << 20, pids: 0 }), limits: None }),
            ports: vec![pb::ServicePort { name: "http".into(), container_port: 80, service_port: 80, node_port: 30080, protocol: 0 }],
            ..Default::default()
        }),
        generation: 1,
        vip: "10.96.0.1".into(),
        spec_hash: hash.into(),
        ..Default::default()
    }
}

fn node(name: &str, cpu_millis: u64) -> pb::Node {
    pb::Node {
        info: Some(pb::NodeInfo {
            name: name.into(),
            address: "192.0.2.1".into(),
            capacity: Some(pb::ResourceList { cpu_millis, memory_bytes: 8 << 30, pids: 0 }),
            labels: Default::default(),
            api_port: 0,
            allows_chaos: false,
        }),
        ready: true,
        conditions: Vec::new(),
        pod_cidr: "10.88.1.0/24".into(),
        allocated: None,
        pod_subnet: None,
        scheduling: None,
    }
}

/// A tiny in-memory store: applies plans the way the runner would, with revisions.
struct World {
    state: ClusterState,
    next_id: u32,
}

impl World {
    fn new(nodes: &[&str]) -> World {
        let mut world = World { state: ClusterState { revision: 1, ..ClusterState::default() }, next_id: 0 };
        for name in nodes {
            world.put_node(name, 4000);
        }
        world
    }

    fn bump(&mut self) -> Revision {
        self.state.revision += 1;
        self.state.revision
    }

    fn put_node(&mut self, name: &str, cpu_millis: u64) {
        let revision = self.bump();
        self.state.nodes.insert(name.into(), Versioned { key: keys::node(name), value: std::sync::Arc::new(node(name, cpu_millis)), mod_revision: revision });
        self.state.alive.insert(name.into());
    }

    fn put_service(&mut self, service: pb::Service) {
        let revision = self.bump();
        self.state
            .services
            .insert(service.name.clone(), Versioned { key: keys::service(&service.name), value: std::sync::Arc::new(service), mod_revision: revision });
    }

    /// The node reports the replica running and ready (or not).
    fn report(&mut self, id: &str, ready: bool) {
        let replica = self.state.replicas.values().find(|r| r.value.id == id).expect("replica exists").value.as_ref().clone();
        let revision = self.bump();
        let ip = format!("10.88.1.{}", 10 + self.state.statuses.len());
        let status = pb::ReplicaStatus { phase: pb::ReplicaPhase::Running.into(), ready, ip, ..Default::default() };
        let reported = pb::ReplicaReport { status: Some(status), ..pb::ReplicaReport::from(&replica) };
        self.state.statuses.insert(
            (replica.node.clone(), id.to_owned()),
            Versioned { key: keys::status(&replica.node, id), value: std::sync::Arc::new(reported), mod_revision: revision },
        );
    }

    fn plan(&mut self, lost: &[&str]) -> Plan {
        let lost: BTreeSet<String> = lost.iter().map(|s| (*s).to_owned()).collect();
        let mut counter = self.next_id;
        let plan = plan(&self.state, &lost, &mut |service| {
            counter += 1;
            format!("{service}-{counter:05}")
        });
        self.next_id = counter;
        plan
    }

    fn apply(&mut self, plan: &Plan) {
        for action in &plan.actions {
            let revision = self.bump();
            match action {
                Action::CreateReplica { key, replica } => {
                    assert!(!self.state.replicas.contains_key(key), "{key} created twice");
                    self.state
                        .replicas
                        .insert(key.clone(), Versioned { key: key.clone(), value: std::sync::Arc::new(replica.clone()), mod_revision: revision });
                }
                Action::UpdateReplica { key, revision: expected, replica } => {
                    let existing = self.state.replicas.get_mut(key).expect("updated replica exists");
                    assert_eq!(existing.mod_revision, *expected, "CAS on {key}");
                    *existing = Versioned { key: key.clone(), value: std::sync::Arc::new(replica.clone()), mod_revision: revision };
                }
                Action::PutEndpoints { key, endpoints, .. } => {
                    self.state.endpoints.insert(
                        endpoints.service.clone(),
                        Versioned { key: key.clone(), value: std::sync::Arc::new(endpoints.clone()), mod_revision: revision },
                    );
                }
                Action::UpdateService { key, revision: expected, service } => {
                    let existing = self.state.services.get_mut(&service.name).expect("updated service exists");
                    assert_eq!(existing.mod_revision, *expected, "CAS on {key}");
                    *existing = Versioned { key: key.clone(), value: std::sync::Arc::new(service.clone()), mod_revision: revision };
                }
                Action::PutClaim { key, expect, claim } => {
                    let slot = (claim.service.clone(), claim.slot);
                    let existing = self.state.claims.get(&slot).map(|c| c.mod_revision);
                    match expect {
                        Expect::Absent => assert_eq!(existing, None, "CAS on {key}"),
                        Expect::Revision(r) => assert_eq!(existing, Some(*r), "CAS on {key}"),
                        Expect::Any => {}
                    }
                    self.state.claims.insert(slot, Versioned { key: key.clone(), value: std::sync::Arc::new(claim.clone()), mod_revision: revision });
                }
                Action::CreateRevision { key, revision: record } => {
                    assert!(!self.state.revisions.contains_key(key), "{key} created twice");
                    self.state
                        .revisions
                        .insert(key.clone(), Versioned { key: key.clone(), value: std::sync::Arc::new(record.clone()), mod_revision: revision });
                }
                Action::Delete { key, .. } => {
                    self.state.replicas.remove(key);
                    self.state.endpoints.retain(|_, e| e.key != *key);
                    self.state.statuses.retain(|_, s| s.key != *key);
                    self.state.revisions.remove(key);
                }
            }
        }
        // The node index, as the state watcher keeps it.
        self.state.by_node.clear();
        for (key, replica) in &self.state.replicas {
            if !replica.value.node.is_empty() {
                self.state.by_node.entry(replica.value.node.clone()).or_default().insert(key.clone());
            }
        }
    }

    /// Plans and applies until nothing is left to do; returns the passes it took.
    fn converge(&mut self, lost: &[&str]) -> usize {
        for pass in 1..20 {
            let plan = self.plan(lost);
            if plan.actions.is_empty() {
                return pass;
            }
            self.apply(&plan);
        }
        panic!("no convergence: {:?}", self.plan(lost));
    }

    fn placement(&self) -> Vec<(String, String)> {
        self.state.replicas.values().map(|r| (r.value.id.clone(), r.value.node.clone())).collect()
    }

    fn report_all_ready(&mut self) {
        let ids: Vec<String> = self.state.replicas.values().filter(|r| !r.value.node.is_empty()).map(|r| r.value.id.clone()).collect();
        for id in ids {
            self.report(&id, true);
        }
    }
}

impl World {
    /// Plans, applies and reports every bound replica ready, pass after pass, until the
    /// 3 replicas of a service with the default bounds all satisfy `done`; at every
    /// step at most 4 exist (maxSurge 25% of 3 rounds up to 1) and at least 3 are ready
    /// (maxUnavailable 25% of 3 rounds down to 0: a replacement is ready before the
    /// replica it replaces goes).
    fn roll_three_until(&mut self, what: &str, done: impl Fn(&pb::Replica) -> bool) {
        for _ in 0..30 {
            let plan = self.plan(&[]);
            self.apply(&plan);
            let all: Vec<&pb::Replica> = self.state.replicas.values().map(|r| &*r.value).collect();
            assert!(all.len() <= 4, "{what}: {} replicas, more than maxSurge allows", all.len());
            let ready = all.iter().filter(|r| self.state.is_ready(r)).count();
            assert!(ready >= 3, "{what}: {ready} ready, fewer than maxUnavailable allows");
            if all.len() == 3 && all.iter().all(|r| done(r)) && plan.actions.is_empty() {
                return;
            }
            self.report_all_ready();
        }
        panic!("{what} does not finish: {:?}", self.placement());
    }
}

#[test]
fn a_new_service_gets_its_replicas_bound_and_spread() {
    let mut world = World::new(&["n1", "n2", "n3"]);
    world.put_service(service("web", 3, "h1"));
    world.converge(&[]);
    let nodes: BTreeSet<String> = world.placement().into_iter().map(|(_, n)| n).collect();
    assert_eq!(nodes, BTreeSet::from(["n1".to_owned(), "n2".to_owned(), "n3".to_owned()]), "one replica per node");
    assert!(world.plan(&[]).actions.is_empty(), "planning again changes nothing");
}

#[test]
fn endpoints_hold_ready_replicas_on_live_nodes_only() {
    let mut world = World::new(&["n1", "n2"]);
    world.put_service(service("web", 2, "h1"));
    world.converge(&[]);
    let ids: Vec<String> = world.placement().into_iter().map(|(id, _)| id).collect();
    world.report(&ids[0], true);
    world.report(&ids[1], false);
    world.converge(&[]);
    let ready = |world: &World| world.state.endpoints["web"].value.ready_ips.clone();
    assert_eq!(ready(&world).len(), 1, "only the ready replica");
    assert_eq!(world.state.endpoints["web"].value.vip, "10.96.0.1");
    let node_of_ready = world.placement()[0].1.clone();
    world.state.alive.remove(&node_of_ready);
    world.converge(&[]);
    assert!(ready(&world).is_empty(), "a NotReady node's replicas leave the endpoints");
}

#[test]
fn replicas_of_a_lost_node_are_replaced_elsewhere() {
    let mut world = World::new(&["n1", "n2"]);
    world.put_service(service("web", 2, "h1"));
    world.converge(&[]);
    world.report_all_ready();
    world.converge(&[]);
    let before = world.placement();
    world.state.alive.remove("n1");
    world.converge(&[]);
    assert_eq!(world.placement(), before, "NotReady within the grace: nothing moves");
    let plan = world.plan(&["n1"]);
    assert!(plan.events.iter().any(|e| e.kind == EventKind::Rescheduled), "{:?}", plan.events);
    world.apply(&plan);
    world.converge(&["n1"]);
    let after = world.placement();
    assert_eq!(after.len(), 2, "no duplicates, none missing: {after:?}");
    assert!(after.iter().all(|(_, n)| n == "n2"), "{after:?}");
    assert!(world.state.statuses.keys().all(|(n, _)| n != "n1"), "the lost node's status records are gone");
}

#[test]
fn deleting_a_service_deletes_its_replicas_and_endpoints() {
    let mut world = World::new(&["n1"]);
    world.put_service(service("web", 2, "h1"));
    world.put_service(service("api", 1, "h2"));
    world.converge(&[]);
    world.report_all_ready();
    world.converge(&[]);
    world.state.services.remove("web");
    world.converge(&[]);
    let services: BTreeSet<String> = world.state.replicas.values().map(|r| r.value.service.clone()).collect();
    assert_eq!(services, BTreeSet::from(["api".to_owned()]));
    assert!(!world.state.endpoints.contains_key("web"));
    assert!(world.state.statuses.values().all(|s| s.value.service == "api"));
}

#[test]
fn an_unschedulable_replica_stays_pending_with_its_reason_written_once() {
    let mut world = World::new(&[]);
    world.put_node("small", 50);
    world.put_service(service("web", 1, "h1"));
    world.converge(&[]);
    let replica = world.state.replicas.values().next().expect("a replica").value.as_ref().clone();
    assert_eq!(replica.node, "");
    assert_eq!(replica.status.map(|s| s.reason), Some("0/1 nodes: 1 insufficient cpu".to_owned()));
    assert!(world.plan(&[]).events.is_empty(), "the same reason is not reported again");
    world.put_node("big", 4000);
    world.converge(&[]);
    assert_eq!(world.placement(), [(replica.id, "big".to_owned())]);
}

#[test]
fn a_new_template_rolls_replicas_over_as_they_become_ready() {
    let mut world = World::new(&["n1", "n2", "n3"]);
    world.put_service(service("web", 3, "h1"));
    world.converge(&[]);
    world.report_all_ready();
    world.converge(&[]);
    world.put_service(service("web", 3, "h2"));
    world.roll_three_until("the rollout", |r| r.spec_hash == "h2");
}

impl World {
    /// The service's revisions: (number, template hash, change).
    fn history(&self, service: &str) -> Vec<(u64, String, String)> {
        self.state.revisions_of(service).map(|r| (r.value.revision, r.value.spec_hash.clone(), r.value.change.clone())).collect()
    }
}

#[test]
fn each_template_becomes_a_revision_and_one_that_ran_before_moves_to_the_newest() {
    let mut world = World::new(&["n1"]);
    world.put_service(pb::Service { change_cause: "apply web.yaml".into(), ..service("web", 1, "h1") });
    world.converge(&[]);
    assert_eq!(world.history("web"), [(1, "h1".into(), "apply web.yaml".into())]);
    world.put_service(pb::Service { change_cause: "apply web.yaml".into(), ..service("web", 1, "h2") });
    world.converge(&[]);
    world.put_service(pb::Service { change_cause: "undo to revision 1".into(), ..service("web", 1, "h1") });
    world.converge(&[]);
    let changes: Vec<(u64, String, String)> = vec![
        (2, "h2".into(), "apply web.yaml: image registry.example/h1 -> registry.example/h2".into()),
        (3, "h1".into(), "undo to revision 1: image registry.example/h2 -> registry.example/h1".into()),
    ];
    assert_eq!(world.history("web"), changes);
    // Scaling makes no revision.
    world.put_service(pb::Service { change_cause: "undo to revision 1".into(), ..service("web", 3, "h1") });
    world.converge(&[]);
    assert_eq!(world.history("web").len(), 2);
    world.state.services.remove("web");
    world.converge(&[]);
    assert!(world.state.revisions.is_empty(), "a deleted service's history goes with it");
}

#[test]
fn a_paused_service_rolls_nothing_and_scales_with_the_template_its_replicas_run() {
    let mut world = World::new(&["n1", "n2", "n3"]);
    world.put_service(service("web", 3, "h1"));
    world.converge(&[]);
    world.report_all_ready();
    world.converge(&[]);
    world.put_service(pb::Service { paused: true, ..service("web", 3, "h2") });
    world.converge(&[]);
    world.put_service(pb::Service { paused: true, ..service("web", 4, "h2") });
    world.converge(&[]);
    let replicas: Vec<&pb::Replica> = world.state.replicas.values().map(|r| &*r.value).collect();
    assert_eq!(replicas.len(), 4, "scaling goes on while paused");
    assert!(replicas.iter().all(|r| r.spec_hash == "h1" && r.spec.as_ref().is_some_and(|s| s.image.ends_with("/h1"))), "paused: nothing rolled {replicas:#?}");
    assert_eq!(world.history("web").last().map(|r| r.1.clone()), Some("h2".into()), "the new template is recorded all the same");
    // Resumed: it rolls.
    world.put_service(service("web", 3, "h2"));
    world.roll_three_until("the resumed rollout", |r| r.spec_hash == "h2");
}

#[test]
fn a_rollout_paused_midway_stays_where_it_got() {
    let mut world = World::new(&["n1", "n2", "n3"]);
    world.put_service(service("web", 3, "h1"));
    world.converge(&[]);
    world.report_all_ready();
    world.converge(&[]);
    // One pass of the rollout: a surge replica of h2 appears, and becomes ready.
    world.put_service(service("web", 3, "h2"));
    let plan = world.plan(&[]);
    world.apply(&plan);
    world.report_all_ready();
    let mix = |world: &World| -> Vec<String> {
        let mut hashes: Vec<String> = world.state.replicas.values().map(|r| r.value.spec_hash.clone()).collect();
        hashes.sort();
        hashes
    };
    assert_eq!(mix(&world), ["h1", "h1", "h1", "h2"], "mid-rollout: the surge replica is there");
    world.put_service(pb::Service { paused: true, ..service("web", 3, "h2") });
    world.converge(&[]);
    assert_eq!(mix(&world), ["h1", "h1", "h1", "h2"], "paused: the rollout stays as far as it got (the surge replica within maxSurge)");
    assert!(world.plan(&[]).actions.is_empty(), "and nothing moves after");
    // Scaled down while paused: to the count.
    world.put_service(pb::Service { paused: true, ..service("web", 2, "h2") });
    world.converge(&[]);
    assert_eq!(world.state.replicas.len(), 2, "{:?}", mix(&world));
}

impl World {
    fn set_scheduling(&mut self, node: &str, unschedulable: bool, draining: bool) {
        let revision = self.bump();
        let value = pb::NodeScheduling { unschedulable, draining, since_unix_ms: 0 };
        self.state.scheduling.insert(node.into(), Versioned { key: keys::node_scheduling(node), value: std::sync::Arc::new(value), mod_revision: revision });
    }
}

#[test]
fn a_cordoned_node_keeps_its_replicas_and_takes_no_new_one() {
    let mut world = World::new(&["n1", "n2"]);
    world.put_service(service("web", 2, "h1"));
    world.converge(&[]);
    let before = world.placement();
    world.set_scheduling("n1", true, false);
    world.converge(&[]);
    assert_eq!(world.placement(), before, "cordoning moves nothing");
    world.put_service(service("web", 4, "h1"));
    world.converge(&[]);
    let on_n1 = world.placement().iter().filter(|(_, n)| n == "n1").count();
    assert_eq!((world.placement().len(), on_n1), (4, 1), "the new replicas all went to n2");
}

#[test]
fn draining_replaces_a_nodes_replicas_elsewhere_within_the_update_bounds() {
    let mut world = World::new(&["n1", "n2", "n3"]);
    world.put_service(service("web", 3, "h1"));
    world.converge(&[]);
    world.report_all_ready();
    world.converge(&[]);
    let drained: Vec<String> = world.placement().into_iter().filter(|(_, n)| n == "n1").map(|(id, _)| id).collect();
    assert_eq!(drained.len(), 1);
    world.set_scheduling("n1", true, true);
    world.roll_three_until("the drain", |r| r.node != "n1");
    let kept: Vec<String> = world.placement().into_iter().map(|(id, _)| id).collect();
    assert!(drained.iter().all(|id| !kept.contains(id)), "the drained replica is gone");
    world.set_scheduling("n1", false, false);
    world.converge(&[]);
    assert!(world.placement().iter().all(|(_, n)| n != "n1"), "uncordoning moves nothing back");
}

#[test]
fn scaling_keeps_existing_replicas() {
    let mut world = World::new(&["n1", "n2"]);
    world.put_service(service("web", 2, "h1"));
    world.converge(&[]);
    let first: BTreeSet<String> = world.placement().into_iter().map(|(id, _)| id).collect();
    world.put_service(service("web", 4, "h1"));
    world.converge(&[]);
    let scaled: BTreeSet<String> = world.placement().into_iter().map(|(id, _)| id).collect();
    assert_eq!(scaled.len(), 4);
    assert!(first.is_subset(&scaled), "scaling up keeps the replicas that run");
    world.put_service(service("web", 1, "h1"));
    world.converge(&[]);
    assert_eq!(world.placement().len(), 1);
}

fn with_local_volume(mut service: pb::Service) -> pb::Service {
    if let Some(spec) = service.spec.as_mut() {
        spec.volumes = vec![pb::Volume { name: "data".into(), source: Some(pb::volume::Source::Local(pb::LocalVolume {})) }];
        spec.update = Some(pb::UpdateStrategy {
            max_surge: Some(pb::IntOrPercent { value: 1, percent: false }),
            max_unavailable: Some(pb::IntOrPercent { value: 0, percent: false }),
        });
    }
    service
}

/// (slot, node) pairs.
type Slots = BTreeSet<(u32, String)>;

/// (slot, node) of every replica, and (slot, node) of every claim.
fn slots(world: &World) -> (Slots, Slots) {
    let replicas = world.state.replicas.values().map(|r| (r.value.slot.expect("a slot"), r.value.node.clone())).collect();
    let claims = world.state.claims.values().map(|c| (c.value.slot, c.value.node.clone())).collect();
    (replicas, claims)
}

#[test]
fn replicas_get_the_lowest_free_slots() {
    let mut world = World::new(&["n1", "n2"]);
    world.put_service(service("web", 3, "h1"));
    world.converge(&[]);
    let mut numbers: Vec<u32> = world.state.replicas.values().filter_map(|r| r.value.slot).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [0, 1, 2]);
    assert!(world.state.claims.is_empty(), "no local volumes, no claims");
    // Scale down to 1 and up to 3 again: the freed slots are taken again.
    world.put_service(service("web", 1, "h1"));
    world.converge(&[]);
    world.put_service(service("web", 3, "h1"));
    world.converge(&[]);
    let mut numbers: Vec<u32> = world.state.replicas.values().filter_map(|r| r.value.slot).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, [0, 1, 2]);
}

#[test]
fn local_volumes_pin_each_slot_to_its_node_through_a_rollout() {
    let mut world = World::new(&["n1", "n2", "n3"]);
    world.put_service(with_local_volume(service("db", 2, "h1")));
    world.converge(&[]);
    let (replicas, claims) = slots(&world);
    assert_eq!(replicas, claims, "every slot claimed where its replica runs");
    assert_eq!(claims.len(), 2);
    world.report_all_ready();
    world.converge(&[]);

    // A new template rolls one slot at a time without surge (the manifest's maxSurge 1 is
    // overridden), and each replacement lands on its slot's node.
    world.put_service(with_local_volume(service("db", 2, "h2")));
    let mut passes = 0;
    loop {
        passes += 1;
        assert!(passes < 30, "the rollout does not finish: {:?}", world.placement());
        let plan = world.plan(&[]);
        world.apply(&plan);
        let (replicas, _) = slots(&world);
        assert!(world.state.replicas.len() <= 2, "no surge: {:?}", world.placement());
        assert!(replicas.is_subset(&claims), "a replica is never off its slot's node: {replicas:?} vs {claims:?}");
        if world.state.replicas.values().all(|r| r.value.spec_hash == "h2") && world.state.replicas.len() == 2 && plan.actions.is_empty() {
            break;
        }
        world.report_all_ready();
    }
    assert_eq!(slots(&world).1, claims, "the claims never moved");

    // The service deleted and applied again: its slots go back to their nodes.
    world.state.services.remove("db");
    world.converge(&[]);
    world.put_service(with_local_volume(service("db", 2, "h3")));
    world.converge(&[]);
    assert_eq!(slots(&world).0, claims, "a new service of the name finds its data");

    // A slot's node lost: its replacement goes elsewhere, the event says the data stayed.
    let (lost_slot, lost_node) = claims.iter().next().cloned().expect("a claim");
    world.state.alive.remove(&lost_node);
    let plan = world.plan(&[lost_node.as_str()]);
    world.apply(&plan);
    let mut events = plan.events;
    for _ in 0..5 {
        let plan = world.plan(&[lost_node.as_str()]);
        world.apply(&plan);
        events.extend(plan.events);
    }
    let left = events.iter().find(|e| e.kind == EventKind::DataLeftBehind).expect("a DataLeftBehind event");
    assert!(left.message.contains(&format!("slot {lost_slot} stayed on node {lost_node}")), "{}", left.message);
    let (replicas, claims) = slots(&world);
    assert_eq!(replicas, claims, "the claim moved with the new binding");
    assert!(replicas.iter().all(|(_, node)| *node != lost_node));
}

#[test]
fn a_slot_whose_node_is_not_ready_yet_waits_for_it() {
    let mut world = World::new(&["n1", "n2"]);
    world.put_service(with_local_volume(service("db", 1, "h1")));
    world.converge(&[]);
    let node = world.placement()[0].1.clone();
    world.state.services.remove("db");
    world.converge(&[]);
    world.state.alive.remove(&node);
    world.put_service(with_local_volume(service("db", 1, "h1")));
    world.converge(&[]);
    let replica = world.state.replicas.values().next().expect("a replica").value.as_ref().clone();
    assert_eq!(replica.node, "", "not bound away from its data while the node is only NotReady");
    assert_eq!(replica.status.map(|s| s.reason), Some("0/2 nodes: 1 without its slot's local volumes, 1 not ready".to_owned()));
}

#[test]
fn a_claim_left_on_a_lost_node_follows_its_bound_replica() {
    let mut world = World::new(&["n1", "n2"]);
    world.put_service(with_local_volume(service("db", 1, "h1")));
    world.converge(&[]);
    let node = world.placement()[0].1.clone();
    // As if the claim's write had failed after a move: it still names a node that is gone.
    let claim = world.state.claims.values_mut().next().expect("a claim");
    std::sync::Arc::make_mut(&mut claim.value).node = "gone".into();
    world.converge(&[]);
    assert_eq!(slots(&world).1, BTreeSet::from([(0, node)]), "the claim follows the replica");
    assert!(world.plan(&[]).actions.is_empty());
}

fn put_config(world: &mut World, name: &str) -> u64 {
    let revision = world.bump();
    let stored = pb::StoredConfig { name: name.into(), kind: pb::ConfigKind::Config.into(), generation: 1, ..Default::default() };
    world.state.configs.insert(
        (pb::ConfigKind::Config.into(), name.into()),
        Versioned { key: keys::config(pb::ConfigKind::Config, name), value: std::sync::Arc::new(stored), mod_revision: revision },
    );
    u64::try_from(revision).expect("positive")
}

#[test]
fn a_service_behind_its_configs_gets_a_new_template_then_rolls() {
    let mut world = World::new(&["node-a"]);
    let first = put_config(&mut world, "site");
    let mut web = service("web", 2, "h1");
    if let Some(spec) = web.spec.as_mut() {
        spec.volumes =
            vec![pb::Volume { name: "www".into(), source: Some(pb::volume::Source::Config(pb::ConfigVolume { name: "site".into(), ..Default::default() })) }];
    }
    web.config_revisions = [("config/site".to_owned(), first)].into_iter().collect();
    world.put_service(web);
    world.converge(&[]);
    let before: Vec<String> = world.state.replicas.values().map(|r| r.value.spec_hash.clone()).collect();
    assert_eq!(before, ["h1", "h1"], "up to date: no new template");

    // The Config changed and the API's update of the service was lost (a controller
    // stopped between the two writes): the reconciler makes the new template itself.
    let second = put_config(&mut world, "site");
    let plan = world.plan(&[]);
    let updated: Vec<&pb::Service> =
        plan.actions.iter().filter_map(|a| if let Action::UpdateService { service, .. } = a { Some(service) } else { None }).collect();
    assert_eq!(updated.len(), 1, "{plan:?}");
    assert_eq!(updated[0].config_revisions.get("config/site"), Some(&second));
    assert_eq!(updated[0].generation, 2);
    assert_ne!(updated[0].spec_hash, "h1");
    assert!(plan.events.iter().any(|e| e.kind == EventKind::ConfigChanged && e.message.contains("config/site")), "{:?}", plan.events);
    world.apply(&plan);
    world.converge(&[]);
    let hash = world.state.services["web"].value.spec_hash.clone();
    assert!(world.state.replicas.values().all(|r| r.value.spec_hash == hash), "rolled to the new template");

    // Deleted while in use: nothing rolls (the replicas keep their files); re-created: it rolls.
    world.state.configs.clear();
    assert!(world.plan(&[]).actions.iter().all(|a| !matches!(a, Action::UpdateService { .. })), "a deleted Config rolls nothing");
    let third = put_config(&mut world, "site");
    let plan = world.plan(&[]);
    assert!(
        plan.actions.iter().any(|a| matches!(a, Action::UpdateService { service, .. } if service.config_revisions.get("config/site") == Some(&third))),
        "re-created: a new template"
    );
}

#[test]
fn a_second_replica_of_a_slot_that_owns_data_is_replaced_by_one_of_a_free_slot() {
    let mut world = World::new(&["node-a", "node-b"]);
    let mut db = with_local_volume(service("db", 3, "h1"));
    if let Some(spec) = db.spec.as_mut() {
        spec.ports.clear(); // (three replicas on two nodes: no node port)
    }
    world.put_service(db);
    world.converge(&[]);
    // A record of slot 2 turns out to say slot 1 (a crash, an older build).
    let key = world.state.replicas.iter().find(|(_, r)| r.value.slot == Some(2)).map(|(k, _)| k.clone()).expect("slot 2");
    if let Some(record) = world.state.replicas.get_mut(&key) {
        std::sync::Arc::make_mut(&mut record.value).slot = Some(1);
    }
    let plan = world.plan(&[]);
    assert!(plan.events.iter().any(|e| e.message.starts_with("a second replica of slot 1")), "{:?}", plan.events);
    world.apply(&plan);
    world.converge(&[]);
    let slots: BTreeSet<u32> = world.state.replicas.values().filter_map(|r| r.value.slot).collect();
    assert_eq!((world.state.replicas.len(), slots), (3, [0, 1, 2].into_iter().collect()), "one replica per slot again");
}

#[test]
fn a_lost_nodes_services_recover_when_as_many_replicas_are_ready_as_before() {
    use crate::incidents::{LostNode, Outages};
    use std::time::Duration;
    use tokio::time::Instant;

    let mut world = World::new(&["n1", "n2", "n3"]);
    let mut web = service("web", 3, "h1");
    web.spec.as_mut().expect("spec").recovery = Some(pb::RecoveryTargets { restart_within_millis: 0, reschedule_within_seconds: 30 });
    world.put_service(web);
    world.put_service(service("idle", 1, "h2"));
    world.converge(&[]);
    let web_ids: Vec<String> = world.state.replicas_of("web").map(|r| r.value.id.clone()).collect();
    for id in &web_ids {
        world.report(id, true);
    }
    assert!(world.state.replicas_on("n3").any(|r| r.value.service == "web"), "spread: web has a replica on n3");
    let t0 = Instant::now();
    let at = |seconds: u64| t0 + Duration::from_secs(seconds);
    let (unix0, mut outages) = (1_000_000, Outages::default());
    world.state.alive.remove("n3");
    let lost = std::collections::BTreeMap::from([("n3".to_owned(), LostNode { since: t0, why: "no heartbeat within its lease".into() })]);
    assert!(outages.observe(&world.state, &lost, at(10), unix0 + 10_000).is_empty());
    assert!(!outages.is_empty(), "web served from n3: an outage is open");
    assert!(outages.observe(&world.state, &lost, at(11), unix0 + 11_000).is_empty(), "opened once per service and node");
    world.converge(&["n3"]);
    assert!(outages.observe(&world.state, &lost, at(12), unix0 + 12_000).is_empty(), "the replacement is not ready yet");
    let replacement = world.state.replicas_of("web").map(|r| r.value.id.clone()).find(|id| !web_ids.contains(id)).expect("a replacement");
    world.report(&replacement, true);
    let events = outages.observe(&world.state, &lost, at(40), unix0 + 40_000);
    assert_eq!(events.len(), 1, "web only (idle was never ready on n3): {events:?}");
    let event = &events[0];
    assert_eq!((event.kind.as_str(), event.object.as_str()), ("RecoveryTargetMissed", "service/web"));
    let incident = event.incident.as_ref().expect("incident");
    assert_eq!((incident.kind.as_str(), incident.recovered_ms, incident.target_ms, incident.fault_unix_ms), ("reschedule", 40_000, 30_000, unix0));
    assert_eq!(incident.fault, "node n3 lost: no heartbeat within its lease");
    assert!(event.message.contains("missed by 10000 ms"), "{}", event.message);
    assert!(outages.is_empty(), "closed");
}

#[test]
fn a_restart_is_judged_against_the_services_target_as_it_is_now() {
    let mut world = World::new(&["n1"]);
    let mut web = service("web", 1, "h1");
    web.spec.as_mut().expect("spec").recovery = Some(pb::RecoveryTargets { restart_within_millis: 500, reschedule_within_seconds: 0 });
    world.put_service(web);
    let reported = |recovered_ms: u64, service: &str| pb::Event {
        kind: "Recovered".into(),
        object: "replica/web-1".into(),
        message: format!("ready again {recovered_ms} ms after: killed by SIGKILL (exit code 137)"),
        incident: Some(pb::Incident { service: service.into(), kind: "restart".into(), recovered_ms, ..Default::default() }),
        ..Default::default()
    };
    let fast = crate::incidents::judged(reported(120, "web"), &world.state, "n1");
    assert_eq!(fast.kind, "Recovered");
    assert_eq!(fast.message, "ready again 120 ms after: killed by SIGKILL (exit code 137) (target 500 ms)");
    assert_eq!(fast.incident.as_ref().map(|i| (i.target_ms, i.node.as_str())), Some((500, "n1")));
    let slow = crate::incidents::judged(reported(900, "web"), &world.state, "n1");
    assert_eq!(slow.kind, "RecoveryTargetMissed");
    assert!(slow.message.ends_with("(target 500 ms: missed by 400 ms)"), "{}", slow.message);
    let untargeted = crate::incidents::judged(reported(900, "gone"), &world.state, "n1");
    assert_eq!((untargeted.kind.as_str(), untargeted.incident.as_ref().map(|i| i.target_ms)), ("Recovered", Some(0)));
    let plain = pb::Event { kind: "Started".into(), ..Default::default() };
    assert_eq!(crate::incidents::judged(plain.clone(), &world.state, "n1"), plain, "other events pass as they came");
}

/// Replicas of `service` per node.
fn spread_of(world: &World, service: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in world.state.replicas_of(service) {
        *counts.entry(r.value.node.clone()).or_default() += 1;
    }
    counts
}

#[test]
fn a_joining_node_gets_replicas_back_one_move_at_a_time_replacement_first() {
    use super::rebalance::{self, RebalanceSettings};
    use std::time::Duration;
    use tokio::time::Instant;

    let mut world = World::new(&["n1", "n2"]);
    world.put_service(service("web", 4, "h1"));
    world.put_service(with_local_volume(service("db", 4, "h2")));
    let mut opted_out = service("static", 4, "h3");
    opted_out.spec.as_mut().expect("spec").rebalance = Some(false);
    world.put_service(opted_out);
    world.converge(&[]);
    world.report_all_ready();
    world.converge(&[]);
    world.put_node("n3", 4000);
    let settings = RebalanceSettings { cool_down: Duration::from_secs(30), move_timeout: Duration::from_secs(300), retry_after: Duration::from_secs(600) };
    let mut rebalancer = rebalance::Rebalancer::default();
    let t0 = Instant::now();
    let ready_since = BTreeMap::from([("n1".to_owned(), t0), ("n2".to_owned(), t0), ("n3".to_owned(), t0 + Duration::from_secs(100))]);
    let at = |seconds: u64| t0 + Duration::from_secs(seconds);
    assert_eq!(rebalancer.plan(&world.state, &ready_since, at(110), 0, &settings), Plan::default(), "n3 is within its cool-down");

    let moves = rebalancer.plan(&world.state, &ready_since, at(130), 130_000, &settings);
    let [Action::UpdateReplica { replica: marked, .. }] = moves.actions.as_slice() else { panic!("one move: {moves:?}") };
    assert_eq!((marked.service.as_str(), marked.node.as_str()), ("web", "n1"), "web only: db's slots own data, static opted out");
    let moving = marked.moving.clone().expect("marked");
    assert_eq!((moving.to_node.as_str(), moving.since_unix_ms), ("n3", 130_000));
    assert_eq!(moving.reason, "node n1 runs 2 replicas of web, node n3 0");
    assert_eq!(moves.events[0].kind, EventKind::Rebalancing);
    world.apply(&moves);

    // The replacement starts on n3; the marked replica stays until it is ready.
    world.converge(&[]);
    assert_eq!(spread_of(&world, "web"), BTreeMap::from([("n1".to_owned(), 2), ("n2".to_owned(), 2), ("n3".to_owned(), 1)]));
    assert!(rebalancer.plan(&world.state, &ready_since, at(131), 131_000, &settings).actions.is_empty(), "one move at a time");
    let ready_web = world.state.replicas_of("web").filter(|r| world.state.is_ready(&r.value)).count();
    assert_eq!(ready_web, 4, "as many ready as before");
    world.report_all_ready();
    let plan = world.plan(&[]);
    assert!(
        plan.events
            .iter()
            .any(|e| e.kind == EventKind::Killing && e.object == format!("replica/{}", marked.id) && e.message.contains("moved to node n3 to rebalance")),
        "{:?}",
        plan.events
    );
    world.apply(&plan);
    world.converge(&[]);
    assert_eq!(spread_of(&world, "web"), BTreeMap::from([("n1".to_owned(), 1), ("n2".to_owned(), 2), ("n3".to_owned(), 1)]));
    assert!(rebalancer.plan(&world.state, &ready_since, at(140), 140_000, &settings).actions.is_empty(), "balanced: within one of each other");
    assert_eq!(spread_of(&world, "db"), BTreeMap::from([("n1".to_owned(), 2), ("n2".to_owned(), 2)]), "local data never moves");

    // `orch rebalance static` moves the opted-out service too, then the request clears.
    let mut asked = world.state.services["static"].value.as_ref().clone();
    asked.rebalance_requested_unix_ms = 140_000;
    world.put_service(asked);
    let moves = rebalancer.plan(&world.state, &ready_since, at(141), 141_000, &settings);
    assert!(matches!(moves.actions.as_slice(), [Action::UpdateReplica { replica, .. }] if replica.service == "static"), "{moves:?}");
    world.apply(&moves);
    world.converge(&[]);
    world.report_all_ready();
    world.converge(&[]);
    let cleared = rebalancer.plan(&world.state, &ready_since, at(150), 150_000, &settings);
    assert!(
        matches!(cleared.actions.as_slice(), [Action::UpdateService { service, .. }] if service.name == "static" && service.rebalance_requested_unix_ms == 0),
        "{cleared:?}"
    );
}

/// web's 4 replicas ready on n1 and n2, then n3 joins; every node Ready since the
/// returned instant.
fn web_and_a_new_node() -> (World, tokio::time::Instant, BTreeMap<String, tokio::time::Instant>) {
    let mut world = World::new(&["n1", "n2"]);
    world.put_service(service("web", 4, "h1"));
    world.converge(&[]);
    world.report_all_ready();
    world.converge(&[]);
    world.put_node("n3", 4000);
    let t0 = tokio::time::Instant::now();
    let ready_since = BTreeMap::from([("n1".to_owned(), t0), ("n2".to_owned(), t0), ("n3".to_owned(), t0)]);
    (world, t0, ready_since)
}

#[test]
fn a_move_whose_replacement_never_gets_ready_is_given_up() {
    use super::rebalance::{self, RebalanceSettings};
    use std::time::Duration;

    let (mut world, t0, ready_since) = web_and_a_new_node();
    let settings = RebalanceSettings { cool_down: Duration::ZERO, move_timeout: Duration::from_secs(60), retry_after: Duration::from_secs(600) };
    let mut rebalancer = rebalance::Rebalancer::default();
    let at = |seconds: u64| t0 + Duration::from_secs(seconds);
    world.apply(&rebalancer.plan(&world.state, &ready_since, t0, 0, &settings));
    world.converge(&[]);
    // The timeout counts on this leader's clock from when it first saw the move: a
    // mark stamped far in the past by another leader's clock changes nothing.
    assert!(rebalancer.plan(&world.state, &ready_since, at(1), 999_999_999, &settings).actions.is_empty(), "just seen");
    assert!(rebalancer.plan(&world.state, &ready_since, at(61), 0, &settings).actions.is_empty(), "not yet");
    let given_up = rebalancer.plan(&world.state, &ready_since, at(62), 0, &settings);
    assert!(matches!(given_up.actions.as_slice(), [Action::UpdateReplica { replica, .. }] if replica.moving.is_none()), "{given_up:?}");
    assert!(given_up.events[0].message.contains("given up"), "{:?}", given_up.events);
    world.apply(&given_up);
    world.converge(&[]);
    assert_eq!(world.state.replicas_of("web").count(), 4, "the replacement that never got ready goes; the replica stays");
    assert!(world.state.replicas_of("web").all(|r| r.value.node != "n3"));
    assert!(rebalancer.plan(&world.state, &ready_since, at(62 + 599), 0, &settings).actions.is_empty(), "not n3 again so soon");
    let again = rebalancer.plan(&world.state, &ready_since, at(62 + 601), 0, &settings);
    assert!(
        matches!(again.actions.as_slice(), [Action::UpdateReplica { replica, .. }] if replica.moving.as_ref().is_some_and(|m| m.to_node == "n3")),
        "{again:?}"
    );
}

#[test]
fn asking_to_rebalance_a_service_that_cannot_move_answers_at_once() {
    use super::rebalance::{RebalanceSettings, Rebalancer};
    use tokio::time::Instant;

    let mut world = World::new(&["n1"]);
    let mut db = with_local_volume(service("db", 2, "h1"));
    db.rebalance_requested_unix_ms = 5;
    world.put_service(db);
    world.converge(&[]);
    world.report_all_ready();
    world.converge(&[]);
    let plan = Rebalancer::default().plan(&world.state, &BTreeMap::new(), Instant::now(), 10, &RebalanceSettings::default());
    assert!(matches!(plan.actions.as_slice(), [Action::UpdateService { service, .. }] if service.rebalance_requested_unix_ms == 0), "{plan:?}");
    assert_eq!(plan.events[0].message, "not rebalanced: its slots' local volumes stay on their nodes");
}

#[test]
fn a_move_whose_node_can_no_longer_take_it_is_called_off() {
    use super::rebalance::{RebalanceSettings, Rebalancer};
    use std::time::Duration;

    let (mut world, t0, ready_since) = web_and_a_new_node();
    let settings = RebalanceSettings { cool_down: Duration::ZERO, ..RebalanceSettings::default() };
    world.apply(&Rebalancer::default().plan(&world.state, &ready_since, t0, 0, &settings));
    let before = world.placement();
    // n3 goes NotReady before the replacement is even placed.
    world.state.alive.remove("n3");
    let plan = world.plan(&[]);
    assert!(
        matches!(plan.actions.as_slice(), [Action::UpdateReplica { replica, .. }] if replica.moving.is_none()),
        "the mark goes, nothing else this pass: {plan:?}"
    );
    assert!(plan.events[0].message.contains("called off: node n3 can no longer take its replacement"), "{:?}", plan.events);
    world.apply(&plan);
    world.converge(&[]);
    assert_eq!(world.placement(), before, "nothing moved, nothing restarted");

    // Paused meanwhile: called off too.
    world.state.alive.insert("n3".into());
    world.apply(&Rebalancer::default().plan(&world.state, &ready_since, t0, 0, &settings));
    let mut paused = world.state.services["web"].value.as_ref().clone();
    paused.paused = true;
    world.put_service(paused);
    let plan = world.plan(&[]);
    assert!(plan.events.iter().any(|e| e.message.contains("called off: its rollouts are paused")), "{:?}", plan.events);
}

#[test]
fn a_request_for_a_service_that_never_settles_is_answered_after_the_move_timeout() {
    use super::rebalance::{RebalanceSettings, Rebalancer};
    use tokio::time::Instant;

    let mut world = World::new(&["n1"]);
    let mut web = service("web", 2, "h1");
    web.rebalance_requested_unix_ms = 1_000;
    world.put_service(web);
    world.converge(&[]);
    // Never ready: not settled.
    let settings = RebalanceSettings::default();
    let mut rebalancer = Rebalancer::default();
    assert!(rebalancer.plan(&world.state, &BTreeMap::new(), Instant::now(), 1_000 + 300_000, &settings).actions.is_empty(), "within the timeout");
    let answered = rebalancer.plan(&world.state, &BTreeMap::new(), Instant::now(), 1_000 + 300_001, &settings);
    assert!(matches!(answered.actions.as_slice(), [Action::UpdateService { service, .. }] if service.rebalance_requested_unix_ms == 0), "{answered:?}");
    assert!(answered.events[0].message.starts_with("not rebalanced: not settled"), "{:?}", answered.events);
}
