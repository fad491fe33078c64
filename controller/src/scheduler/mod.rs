//! The scheduler: a pure function from an immutable view of the cluster and the pending
//! replicas to a plan of bindings (Nomad's split: something else commits the plan, by
//! compare-and-swap). No IO, no async, so it is table-tested and benchmarked in-process.
//!
//! Filters: the node holding the replica's local volumes if it has any, node ready, not
//! cordoned, requests fit what is left of allocatable, node selector, node port
//! conflicts. Scores: fewest replicas of the same service on the node first
//! (spread), then least allocated; ties go to the node name, so plans are deterministic.

mod view;

pub use view::{ClusterView, NodeView, PendingReplica, Resources};

use std::collections::BTreeMap;

/// What the scheduler decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub bindings: Vec<Binding>,
    /// `(replica id, why it fits nowhere)`, e.g. "0/3 nodes: 2 insufficient memory, 1 node
    /// selector mismatch".
    pub unschedulable: Vec<(String, String)>,
}

/// A replica placed on a node, and why there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub replica: String,
    pub node: String,
    pub why: Choice,
}

/// Why the scheduler chose a node: its scores, the runner-up's, and the nodes filtered
/// out — the reasons `orch why` shows (kept as numbers: words only when an event is made).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    /// Replicas of the service already on the chosen node (spread: fewest first).
    pub spread: u32,
    /// Its allocation after the placement, in parts per million (least first).
    pub load_ppm: u64,
    /// The next best node that fit: name, spread and load.
    pub runner_up: Option<(String, u32, u64)>,
    /// Nodes that fit, of all.
    pub fit: usize,
    pub nodes: usize,
    /// The filters that kept the others out, with how many each.
    pub filtered: Vec<(&'static str, usize)>,
}

impl Choice {
    /// In words, for the `Scheduled` event of a replica of `service` bound to `node`.
    pub fn describe(&self, node: &str, service: &str) -> String {
        let percent = |ppm: u64| format!("{}%", ppm.div_ceil(10_000));
        let mut text = format!("assigned to node {node}: ");
        text.push_str(&match &self.runner_up {
            None => format!("the only node that fits ({} replicas of {service} there, {} allocated after)", self.spread, percent(self.load_ppm)),
            Some((other, spread, _)) if *spread > self.spread => {
                format!("fewest replicas of {service} ({} there, {spread} on {other}, the next best); {} allocated after", self.spread, percent(self.load_ppm))
            }
            Some((other, _, load)) if *load > self.load_ppm => format!(
                "as many replicas of {service} as {other} ({}), least allocated: {} after, against {}",
                self.spread,
                percent(self.load_ppm),
                percent(*load)
            ),
            Some((other, _, _)) => {
                format!("tied with {other} ({} replicas of {service}, {} allocated after): the first by name", self.spread, percent(self.load_ppm))
            }
        });
        if self.fit < self.nodes {
            let filtered: Vec<String> = self.filtered.iter().map(|(why, count)| format!("{count} {why}")).collect();
            text.push_str(&format!("; {} of {} nodes fit ({})", self.fit, self.nodes, filtered.join(", ")));
        }
        text
    }
}

/// Why a node was filtered out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rejection {
    LocalDataElsewhere,
    NotMoveTarget,
    NotReady,
    Unschedulable,
    SelectorMismatch,
    NodePortConflict,
    InsufficientCpu,
    InsufficientMemory,
}

impl Rejection {
    fn describe(self) -> &'static str {
        match self {
            Rejection::LocalDataElsewhere => "without its slot's local volumes",
            Rejection::NotMoveTarget => "not the node it moves to",
            Rejection::NotReady => "not ready",
            Rejection::Unschedulable => "cordoned",
            Rejection::SelectorMismatch => "node selector mismatch",
            Rejection::NodePortConflict => "node port in use",
            Rejection::InsufficientCpu => "insufficient cpu",
            Rejection::InsufficientMemory => "insufficient memory",
        }
    }
}

/// Working state for one scheduling pass: the view plus what this plan has added.
struct Working<'a> {
    nodes: &'a [NodeView],
    allocated: Vec<Resources>,
    ports: Vec<Vec<u16>>,
    /// service → replicas per node (by node index), created on first use.
    spread: BTreeMap<&'a str, Vec<u32>>,
}

impl<'a> Working<'a> {
    fn new(view: &'a ClusterView) -> Working<'a> {
        Working {
            nodes: &view.nodes,
            allocated: view.nodes.iter().map(|n| n.allocated).collect(),
            ports: view.nodes.iter().map(|n| n.node_ports.to_vec()).collect(),
            spread: BTreeMap::new(),
        }
    }

    fn spread_of(&mut self, service: &'a str) -> &mut Vec<u32> {
        let nodes = self.nodes;
        self.spread.entry(service).or_insert_with(|| nodes.iter().map(|n| n.replicas_by_service.get(service).copied().unwrap_or(0)).collect())
    }

    fn check(&self, index: usize, replica: &PendingReplica, selector_ok: bool) -> Result<(), Rejection> {
        let node = &self.nodes[index];
        if replica.pinned_node.as_ref().is_some_and(|pinned| *pinned != node.name) {
            return Err(if replica.moving { Rejection::NotMoveTarget } else { Rejection::LocalDataElsewhere });
        }
        if !node.ready {
            return Err(Rejection::NotReady);
        }
        if node.unschedulable {
            return Err(Rejection::Unschedulable);
        }
        if !selector_ok {
            return Err(Rejection::SelectorMismatch);
        }
        if replica.node_ports.iter().any(|p| self.ports[index].contains(p)) {
            return Err(Rejection::NodePortConflict);
        }
        let allocated = self.allocated[index];
        if allocated.cpu_millis + replica.requests.cpu_millis > node.allocatable.cpu_millis {
            return Err(Rejection::InsufficientCpu);
        }
        if allocated.memory_bytes + replica.requests.memory_bytes > node.allocatable.memory_bytes {
            return Err(Rejection::InsufficientMemory);
        }
        Ok(())
    }

    /// Allocation after placing `requests` on node `index`, as the larger of the cpu and
    /// memory fractions, in parts per million (integers keep the order total).
    fn load_after(&self, index: usize, requests: Resources) -> u64 {
        let node = &self.nodes[index];
        let fraction = |used: u64, total: u64| used.saturating_mul(1_000_000).checked_div(total).unwrap_or(1_000_000);
        let allocated = self.allocated[index];
        fraction(allocated.cpu_millis + requests.cpu_millis, node.allocatable.cpu_millis)
            .max(fraction(allocated.memory_bytes + requests.memory_bytes, node.allocatable.memory_bytes))
    }
}

/// Places `pending` replicas, in order, onto the nodes of `view`.
pub fn schedule(view: &ClusterView, pending: &[PendingReplica]) -> Plan {
    let mut working = Working::new(view);
    let mut plan = Plan::default();
    // Selector results per distinct selector: every replica of a service shares one.
    let mut selector_cache: BTreeMap<&BTreeMap<String, String>, Vec<bool>> = BTreeMap::new();
    // Each node's place in name order, once: ties (for the best and the runner-up) are
    // broken by comparing numbers, not names.
    let mut by_name: Vec<usize> = (0..view.nodes.len()).collect();
    by_name.sort_by(|&a, &b| view.nodes[a].name.cmp(&view.nodes[b].name));
    let mut rank = vec![0usize; view.nodes.len()];
    for (place, &index) in by_name.iter().enumerate() {
        rank[index] = place;
    }
    for replica in pending {
        let selector_ok =
            selector_cache.entry(&replica.node_selector).or_insert_with(|| view.nodes.iter().map(|n| n.matches(&replica.node_selector)).collect()).clone();
        let mut best: Option<(u32, u64, usize)> = None;
        let mut second: Option<(u32, u64, usize)> = None;
        let mut fit = 0;
        let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
        let spread = working.spread_of(&replica.service).clone();
        for index in 0..view.nodes.len() {
            match working.check(index, replica, selector_ok[index]) {
                Err(why) => *rejections.entry(why).or_default() += 1,
                Ok(()) => {
                    fit += 1;
                    let score = (spread[index], working.load_after(index, replica.requests), index);
                    let beats = |than: Option<(u32, u64, usize)>| match than {
                        None => true,
                        Some((s, l, i)) => (score.0, score.1, rank[score.2]) < (s, l, rank[i]),
                    };
                    if beats(best) {
                        second = best;
                        best = Some(score);
                    } else if beats(second) {
                        second = Some(score);
                    }
                }
            }
        }
        match best {
            Some((spread, load_ppm, index)) => {
                working.allocated[index].cpu_millis += replica.requests.cpu_millis;
                working.allocated[index].memory_bytes += replica.requests.memory_bytes;
                working.ports[index].extend(&replica.node_ports);
                working.spread_of(&replica.service)[index] += 1;
                let why = Choice {
                    spread,
                    load_ppm,
                    runner_up: second.map(|(s, l, i)| (view.nodes[i].name.clone(), s, l)),
                    fit,
                    nodes: view.nodes.len(),
                    filtered: rejections.iter().map(|(why, count)| (why.describe(), *count)).collect(),
                };
                plan.bindings.push(Binding { replica: replica.id.clone(), node: view.nodes[index].name.clone(), why });
            }
            None => {
                let reasons: Vec<String> = rejections.iter().map(|(why, count)| format!("{count} {}", why.describe())).collect();
                let reason = if view.nodes.is_empty() {
                    "0/0 nodes: no node has registered".to_owned()
                } else {
                    format!("0/{} nodes: {}", view.nodes.len(), reasons.join(", "))
                };
                plan.unschedulable.push((replica.id.clone(), reason));
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests;
