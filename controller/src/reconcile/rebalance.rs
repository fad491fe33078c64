//! Safe rebalancing, pure: when a lost node returns or a new one joins, the replicas
//! piled up elsewhere stay there — the scheduler only places new replicas. This planner
//! moves them back towards the spread the scheduler would choose today, on a cluster the
//! other reconcilers found nothing to do on:
//! - one move at a time in the whole cluster;
//! - a move marks a replica `moving` (to a node): it counts as outdated, so the rolling
//!   update arithmetic starts its replacement bound to that node and stops it only once
//!   the replacement is ready (surge at least 1, no unavailability: never fewer ready
//!   replicas than before);
//! - only between nodes whose counts of the service differ by 2 or more, onto a node
//!   Ready for the cool-down (a flapping node takes nothing), only for a service that
//!   is settled (its count, all ready, all on its template, none on a draining node);
//! - never a service with local volumes (its slots' data stays where it is), never one
//!   with `spec.rebalance: false` — unless `orch rebalance` asked (then without the
//!   cool-down);
//! - a move whose replacement is not ready within the move timeout is given up, and that
//!   service does not move to that node again for `retry_after` (the leader's memory:
//!   [`Rebalancer`]).
//!
//! A service that `orch rebalance` asked for has its request cleared once it is balanced,
//! or at once when it cannot be moved (local volumes, a paused rollout).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use orch_api::events::EventKind;
use orch_api::pb;
use tokio::time::Instant;

use super::{cluster_view, requests_of, Action, Plan};
use crate::scheduler::{self, PendingReplica};
use crate::state::{ClusterState, Versioned};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebalanceSettings {
    /// How long a node must have been Ready before replicas move onto it.
    pub cool_down: Duration,
    /// How long a move waits for its replacement to be ready before it is given up.
    pub move_timeout: Duration,
    /// How long a service does not move to a node again after a move there was given up.
    pub retry_after: Duration,
}

impl Default for RebalanceSettings {
    fn default() -> RebalanceSettings {
        RebalanceSettings { cool_down: Duration::from_secs(30), move_timeout: Duration::from_secs(300), retry_after: Duration::from_secs(600) }
    }
}

/// The rebalancer's memory: the moves given up lately, by service and node (a new
/// leader starts with none).
#[derive(Debug, Default)]
pub struct Rebalancer {
    given_up: BTreeMap<(String, String), Instant>,
    /// When this leader first saw each move under way (its timeout counts from there,
    /// on this leader's clock: another leader's wall clock may be ahead).
    seen: BTreeMap<String, Instant>,
}

/// Whether any replica is being moved (the runner plans again while one is, for its
/// timeout).
pub fn moving(state: &ClusterState) -> bool {
    state.replicas.values().any(|r| r.value.moving.is_some())
}

impl Rebalancer {
    /// The move to start, a move to give up, or the requests to clear, on `state` —
    /// `ready_since`: when each node was last seen becoming Ready (by this leader).
    pub fn plan(
        &mut self,
        state: &ClusterState,
        ready_since: &BTreeMap<String, Instant>,
        now: Instant,
        now_unix_ms: i64,
        settings: &RebalanceSettings,
    ) -> Plan {
        let mut plan = Plan::default();
        self.given_up.retain(|_, at| now.saturating_duration_since(*at) < settings.retry_after);
        let under_way: Vec<&Versioned<pb::Replica>> = state.replicas.values().filter(|r| r.value.moving.is_some()).collect();
        self.seen.retain(|id, _| under_way.iter().any(|r| r.value.id == *id));
        if !under_way.is_empty() {
            let seen = &mut self.seen;
            let stuck: Vec<&Versioned<pb::Replica>> = under_way
                .into_iter()
                .filter(|r| now.saturating_duration_since(*seen.entry(r.value.id.clone()).or_insert(now)) > settings.move_timeout)
                .collect();
            for stuck in stuck {
                let mut replica = stuck.value.as_ref().clone();
                let to = replica.moving.take().map(|m| m.to_node).unwrap_or_default();
                plan.event(
                    EventKind::Rebalancing,
                    format!("replica/{}", replica.id),
                    format!(
                        "the move to node {to} is given up: its replacement was not ready within {:?}; the replica stays (no move of {} there for {:?})",
                        settings.move_timeout, replica.service, settings.retry_after
                    ),
                );
                self.given_up.insert((replica.service.clone(), to), now);
                plan.actions.push(Action::UpdateReplica { key: stuck.key.clone(), revision: stuck.mod_revision, replica });
            }
            return plan;
        }
        let everything: Vec<&Versioned<pb::Replica>> = state.replicas.values().collect();
        let view = cluster_view(state, &BTreeSet::new(), &everything);
        for (name, service) in &state.services {
            let Some(spec) = service.value.spec.as_ref() else { continue };
            let requested = service.value.rebalance_requested_unix_ms > 0;
            let immovable = if orch_api::manifest::has_local_volumes(spec) {
                Some("its slots' local volumes stay on their nodes")
            } else if service.value.paused {
                Some("its rollouts are paused")
            } else {
                None
            };
            if let Some(why) = immovable {
                if requested {
                    answer(&mut plan, service, format!("not rebalanced: {why}"));
                }
                continue;
            }
            if !requested && spec.rebalance == Some(false) {
                continue;
            }
            let members: Vec<&Versioned<pb::Replica>> = state.replicas_of(name).collect();
            let settled = members.len() == spec.replicas as usize
                && members.iter().all(|m| {
                    let r = &m.value;
                    !r.node.is_empty() && r.spec_hash == service.value.spec_hash && state.is_ready(r) && !state.is_draining(&r.node)
                });
            let timeout_ms = i64::try_from(settings.move_timeout.as_millis()).unwrap_or(i64::MAX);
            if !settled {
                if requested && now_unix_ms.saturating_sub(service.value.rebalance_requested_unix_ms) > timeout_ms {
                    // Asked, but never settled (a replica crash-looping or unplaceable):
                    // answered, so that the request does not linger.
                    let message = format!("not rebalanced: not settled (its count ready on its template) within {:?} of the request", settings.move_timeout);
                    answer(&mut plan, service, message);
                }
                continue;
            }
            let given_up = &self.given_up;
            let cooled = |node: &str| {
                !given_up.contains_key(&(name.clone(), node.to_owned()))
                    && (requested || ready_since.get(node).is_some_and(|since| now.saturating_duration_since(*since) >= settings.cool_down))
            };
            match one_move(&view, name, spec, &members, &cooled) {
                Some((victim, to, reason)) => {
                    let mut replica = victim.value.as_ref().clone();
                    plan.event(
                        EventKind::Rebalancing,
                        format!("replica/{}", replica.id),
                        format!("moving to node {to}: {reason}; its replacement starts first"),
                    );
                    replica.moving = Some(pb::ReplicaMove { reason, to_node: to, since_unix_ms: now_unix_ms });
                    plan.actions.push(Action::UpdateReplica { key: victim.key.clone(), revision: victim.mod_revision, replica });
                    return plan;
                }
                None if requested => {
                    let message = if self.given_up.keys().any(|(service, _)| service == name) {
                        "no replica to move: a move of it was given up lately and is not tried again yet"
                    } else {
                        "balanced: no replica to move"
                    };
                    answer(&mut plan, service, message.into());
                }
                None => {}
            }
        }
        plan
    }
}

/// Answers an `orch rebalance` request for `service`: clears it, saying `message`.
fn answer(plan: &mut Plan, service: &Versioned<pb::Service>, message: String) {
    let mut cleared = service.value.as_ref().clone();
    cleared.rebalance_requested_unix_ms = 0;
    plan.event(EventKind::Rebalancing, format!("service/{}", cleared.name), message);
    plan.actions.push(Action::UpdateService { key: service.key.clone(), revision: service.mod_revision, service: cleared });
}

/// The replica of `service` to move, where, and why — when its most crowded node has
/// at least 2 more of it than the node the scheduler would choose among the cooled ones.
fn one_move<'a>(
    view: &scheduler::ClusterView,
    name: &str,
    spec: &pb::ServiceSpec,
    members: &[&'a Versioned<pb::Replica>],
    cooled: &dyn Fn(&str) -> bool,
) -> Option<(&'a Versioned<pb::Replica>, String, String)> {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for m in members {
        *counts.entry(m.value.node.as_str()).or_default() += 1;
    }
    // The most crowded node (the first by name among equals).
    let (&from, &most) = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))?;
    let mut candidates = view.clone();
    for node in &mut candidates.nodes {
        node.ready = node.ready && node.name != from && cooled(&node.name);
    }
    let pending = PendingReplica {
        id: format!("{name}-rebalance"),
        service: name.to_owned(),
        requests: requests_of(Some(spec)),
        node_selector: spec.node_selector.clone().into_iter().collect(),
        node_ports: Vec::new(),
        pinned_node: None,
        moving: false,
    };
    let chosen = scheduler::schedule(&candidates, &[pending]).bindings.pop()?;
    let there = counts.get(chosen.node.as_str()).copied().unwrap_or(0);
    if most < there + 2 {
        return None;
    }
    // The newest-looking replica on the crowded node (the highest id), as a scale-down picks.
    let victim = members.iter().filter(|m| m.value.node == from).max_by(|a, b| a.value.id.cmp(&b.value.id))?;
    let reason = format!("node {from} runs {most} replicas of {name}, node {} {there}", chosen.node);
    Some((victim, chosen.node, reason))
}
