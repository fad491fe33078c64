//! Scheduler tables: fit, selectors, node ports, spread, least allocated, reasons.

use std::collections::BTreeMap;

use super::*;

const GI: u64 = 1 << 30;

fn node(name: &str, cpu: u64, memory_gi: u64) -> NodeView {
    NodeView { name: name.into(), ready: true, allocatable: Resources { cpu_millis: cpu, memory_bytes: memory_gi * GI }, ..NodeView::default() }
}

fn replica(id: &str, service: &str, cpu: u64, memory_gi: u64) -> PendingReplica {
    PendingReplica {
        id: id.into(),
        service: service.into(),
        requests: Resources { cpu_millis: cpu, memory_bytes: memory_gi * GI },
        ..PendingReplica::default()
    }
}

fn bound(plan: &Plan) -> Vec<(&str, &str)> {
    plan.bindings.iter().map(|b| (b.replica.as_str(), b.node.as_str())).collect()
}

#[test]
fn replicas_of_a_service_spread_across_nodes() {
    let view = ClusterView { nodes: vec![node("a", 4000, 8), node("b", 4000, 8), node("c", 4000, 8)] };
    let pending: Vec<PendingReplica> = (0..6).map(|i| replica(&format!("web-{i}"), "web", 100, 0)).collect();
    let plan = schedule(&view, &pending);
    assert!(plan.unschedulable.is_empty());
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, n) in bound(&plan) {
        *per_node.entry(n).or_default() += 1;
    }
    assert_eq!(per_node, BTreeMap::from([("a", 2), ("b", 2), ("c", 2)]));
    assert_eq!(bound(&plan)[..3], [("web-0", "a"), ("web-1", "b"), ("web-2", "c")], "deterministic order");
}

#[test]
fn spread_counts_replicas_already_running() {
    let mut a = node("a", 4000, 8);
    a.replicas_by_service.insert("web".into(), 2);
    let view = ClusterView { nodes: vec![a, node("b", 4000, 8)] };
    let plan = schedule(&view, &[replica("web-2", "web", 100, 0), replica("web-3", "web", 100, 0)]);
    assert_eq!(bound(&plan), [("web-2", "b"), ("web-3", "b")]);
}

#[test]
fn least_allocated_wins_when_spread_ties() {
    let mut busy = node("a", 4000, 8);
    busy.allocated = Resources { cpu_millis: 3000, memory_bytes: GI };
    let view = ClusterView { nodes: vec![busy, node("b", 4000, 8)] };
    let plan = schedule(&view, &[replica("api-0", "api", 500, 1)]);
    assert_eq!(bound(&plan), [("api-0", "b")]);
}

#[test]
fn fit_selectors_ports_and_readiness_filter_with_reasons() {
    let mut ssd = node("ssd", 1000, 1);
    ssd.labels.insert("disk".into(), "ssd".into());
    let mut down = node("down", 8000, 16);
    down.ready = false;
    let mut port_taken = node("ports", 8000, 1);
    port_taken.node_ports.push(30080);
    port_taken.labels.insert("disk".into(), "ssd".into());
    let view = ClusterView { nodes: vec![ssd, down, port_taken, node("small", 100, 1)] };

    let mut wants_ssd = replica("db-0", "db", 500, 2);
    wants_ssd.node_selector.insert("disk".into(), "ssd".into());
    let mut wants_port = replica("web-0", "web", 100, 0);
    wants_port.node_ports.push(30080);
    wants_port.node_selector.insert("disk".into(), "ssd".into());
    let plan = schedule(&view, &[wants_ssd, wants_port]);
    assert_eq!(bound(&plan), [("web-0", "ssd")], "web fits only ssd (ports has its node port); db needs 2Gi nowhere free");
    assert_eq!(plan.unschedulable, vec![("db-0".to_owned(), "0/4 nodes: 1 not ready, 1 node selector mismatch, 2 insufficient memory".to_owned())]);
}

#[test]
fn node_ports_and_resources_used_by_this_plan_count() {
    let view = ClusterView { nodes: vec![node("a", 1000, 1), node("b", 1000, 1)] };
    let mut first = replica("web-0", "web", 600, 0);
    first.node_ports.push(30080);
    let mut second = first.clone();
    second.id = "web-1".into();
    let mut third = first.clone();
    third.id = "web-2".into();
    let plan = schedule(&view, &[first, second, third]);
    assert_eq!(bound(&plan), [("web-0", "a"), ("web-1", "b")]);
    assert_eq!(plan.unschedulable, vec![("web-2".to_owned(), "0/2 nodes: 2 node port in use".to_owned())]);

    let plan = schedule(&view, &[replica("big-0", "big", 700, 0), replica("big-1", "big", 700, 0), replica("big-2", "big", 700, 0)]);
    assert_eq!(plan.bindings.len(), 2);
    assert_eq!(plan.unschedulable, vec![("big-2".to_owned(), "0/2 nodes: 2 insufficient cpu".to_owned())]);
}

#[test]
fn no_nodes_says_so() {
    let plan = schedule(&ClusterView::default(), &[replica("x-0", "x", 1, 0)]);
    assert_eq!(plan.unschedulable, vec![("x-0".to_owned(), "0/0 nodes: no node has registered".to_owned())]);
}

#[test]
fn memory_is_checked_too() {
    let view = ClusterView { nodes: vec![node("a", 8000, 1)] };
    let plan = schedule(&view, &[replica("m-0", "m", 10, 2)]);
    assert_eq!(plan.unschedulable, vec![("m-0".to_owned(), "0/1 nodes: 1 insufficient memory".to_owned())]);
}

#[test]
fn a_replica_with_local_data_goes_to_its_node_only() {
    let view = ClusterView { nodes: vec![node("a", 4000, 8), node("b", 4000, 8), NodeView { ready: false, ..node("c", 4000, 8) }] };
    let pinned = |id: &str, to: &str| PendingReplica { pinned_node: Some(to.into()), ..replica(id, "db", 100, 1) };
    // Spread would pick a for the second replica of db; its data is on b.
    let plan = schedule(&view, &[pinned("db-0", "b"), pinned("db-1", "b")]);
    assert_eq!(bound(&plan), [("db-0", "b"), ("db-1", "b")]);
    let stuck = schedule(&view, &[pinned("db-2", "c")]);
    assert_eq!(stuck.unschedulable, [("db-2".to_owned(), "0/3 nodes: 2 without its slot's local volumes, 1 not ready".to_owned())]);
}

#[test]
fn a_cordoned_node_takes_no_new_replica_and_says_so() {
    let mut cordoned = node("a", 4000, 8);
    cordoned.unschedulable = true;
    let view = ClusterView { nodes: vec![cordoned.clone(), node("b", 4000, 8)] };
    let plan = schedule(&view, &[replica("web-0", "web", 100, 0), replica("web-1", "web", 100, 0)]);
    assert_eq!(bound(&plan), [("web-0", "b"), ("web-1", "b")], "spread gives way: only b takes replicas");
    let plan = schedule(&ClusterView { nodes: vec![cordoned] }, &[replica("web-0", "web", 100, 0)]);
    assert_eq!(plan.unschedulable, [("web-0".to_owned(), "0/1 nodes: 1 cordoned".to_owned())]);
}

#[test]
fn each_binding_says_why_its_node_won() {
    let mut a = node("a", 4000, 8);
    a.replicas_by_service.insert("web".into(), 1);
    let mut busy = node("b", 4000, 8);
    busy.allocated = Resources { cpu_millis: 2000, memory_bytes: GI };
    let mut cordoned = node("c", 4000, 8);
    cordoned.unschedulable = true;
    let view = ClusterView { nodes: vec![a, busy, cordoned, node("d", 4000, 8)] };
    let plan = schedule(&view, &[replica("web-1", "web", 400, 0), replica("web-2", "web", 400, 0), replica("web-3", "web", 400, 0)]);
    let said: Vec<String> = plan.bindings.iter().map(|b| b.why.describe(&b.node, "web")).collect();
    assert_eq!(
        said,
        [
            "assigned to node d: as many replicas of web as b (0), least allocated: 10% after, against 60%; 3 of 4 nodes fit (1 cordoned)",
            "assigned to node b: fewest replicas of web (0 there, 1 on a, the next best); 60% allocated after; 3 of 4 nodes fit (1 cordoned)",
            "assigned to node a: as many replicas of web as d (1), least allocated: 10% after, against 20%; 3 of 4 nodes fit (1 cordoned)",
        ]
    );
    let alone = ClusterView { nodes: vec![node("solo", 1000, 1)] };
    let plan = schedule(&alone, &[replica("api-1", "api", 500, 0)]);
    assert_eq!(plan.bindings[0].why.describe("solo", "api"), "assigned to node solo: the only node that fits (0 replicas of api there, 50% allocated after)");
    let twins = ClusterView { nodes: vec![node("y", 1000, 1), node("x", 1000, 1)] };
    let plan = schedule(&twins, &[replica("api-1", "api", 500, 0)]);
    assert_eq!(plan.bindings[0].why.describe("x", "api"), "assigned to node x: tied with y (0 replicas of api, 50% allocated after): the first by name");
}
