//! The pure scheduler placing 10,000 replicas (100 services × 100) over 1,000 nodes, against a
//! first-fit baseline run in the same invocation. Prints bindings per second and the
//! ratio. Aim: over 10,000 bindings/s (kube-scheduler's published throughput is in the
//! hundreds of pods per second).
//!
//!   cargo bench -p orch-controller --bench scheduler
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

use std::collections::BTreeMap;
use std::time::Instant;

use orch_controller::scheduler::{schedule, ClusterView, NodeView, PendingReplica, Resources};

const NODES: usize = 1_000;
const SERVICES: usize = 100;
const REPLICAS_PER_SERVICE: usize = 100;

fn cluster() -> ClusterView {
    ClusterView {
        nodes: (0..NODES)
            .map(|i| NodeView {
                name: format!("node-{i:04}"),
                ready: true,
                labels: BTreeMap::from([("zone".to_owned(), format!("z{}", i % 3))]),
                allocatable: Resources { cpu_millis: 16_000, memory_bytes: 64 << 30 },
                ..NodeView::default()
            })
            .collect(),
    }
}

fn pending() -> Vec<PendingReplica> {
    (0..SERVICES)
        .flat_map(|s| {
            (0..REPLICAS_PER_SERVICE).map(move |r| PendingReplica {
                id: format!("svc-{s}-{r}"),
                service: format!("svc-{s}"),
                requests: Resources { cpu_millis: 100, memory_bytes: 128 << 20 },
                node_selector: if s % 10 == 0 { BTreeMap::from([("zone".to_owned(), "z1".to_owned())]) } else { BTreeMap::new() },
                node_ports: Vec::new(),
                pinned_node: None,
                moving: false,
            })
        })
        .collect()
}

/// The peer: first node that fits, no scoring.
fn first_fit(view: &ClusterView, pending: &[PendingReplica]) -> usize {
    let mut allocated: Vec<Resources> = view.nodes.iter().map(|n| n.allocated).collect();
    let mut bound = 0;
    for replica in pending {
        for (i, node) in view.nodes.iter().enumerate() {
            let fits = node.ready
                && node.matches(&replica.node_selector)
                && allocated[i].cpu_millis + replica.requests.cpu_millis <= node.allocatable.cpu_millis
                && allocated[i].memory_bytes + replica.requests.memory_bytes <= node.allocatable.memory_bytes;
            if fits {
                allocated[i].cpu_millis += replica.requests.cpu_millis;
                allocated[i].memory_bytes += replica.requests.memory_bytes;
                bound += 1;
                break;
            }
        }
    }
    bound
}

fn main() {
    let view = cluster();
    let pending = pending();
    let mut best_orch = f64::MAX;
    let mut best_peer = f64::MAX;
    let mut bindings = 0;
    for _ in 0..3 {
        let start = Instant::now();
        let plan = schedule(&view, &pending);
        best_orch = best_orch.min(start.elapsed().as_secs_f64());
        bindings = plan.bindings.len();
        assert!(plan.unschedulable.is_empty(), "everything fits");
        let start = Instant::now();
        let bound = first_fit(&view, &pending);
        best_peer = best_peer.min(start.elapsed().as_secs_f64());
        assert_eq!(bound, pending.len());
    }
    let orch_rate = bindings as f64 / best_orch;
    let peer_rate = pending.len() as f64 / best_peer;
    println!(
        "scheduler: {bindings} replicas over {NODES} nodes in {:.1} ms = {orch_rate:.0} bindings/s (filters + spread + least-allocated)",
        best_orch * 1000.0
    );
    println!("first-fit baseline: {:.1} ms = {peer_rate:.0} bindings/s (no scoring)", best_peer * 1000.0);
    println!("ratio scheduler/first-fit: {:.2}; aim: over 10000 bindings/s ({})", orch_rate / peer_rate, if orch_rate > 10_000.0 { "met" } else { "not met" });
}
