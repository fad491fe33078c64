//! The reconcilers' decisions, as one pure function of the cluster state: what to write
//! so that the store converges to what the services ask for. Level-triggered and
//! idempotent (kube-rs style): `plan` is never told why it runs, and planning again on
//! the state its own actions produce yields nothing new.
//!
//! One pass, in order:
//! 1. node lifecycle — replicas on lost nodes (NotReady past the grace) and replicas of
//!    deleted services are deleted;
//! 2. services → replica records — counts and rolling updates ([`rollout::decide`]);
//! 3. binding — every unbound replica (old and new) goes through [`scheduler::schedule`];
//!    new replicas are created already bound, each with the lowest slot its service
//!    does not use; a replica with local volumes is pinned to the node holding its
//!    slot's claim unless that node is lost (then the data stays behind, an event says
//!    so, and the claim moves with the new binding);
//! 4. endpoints — each service's ready replica addresses;
//! 5. history — each service's current template recorded as its newest revision
//!    ([`history::plan`]), at most [`history::MAX_REVISIONS`] kept;
//! 6. garbage — status records of replicas that are gone or bound elsewhere, revisions
//!    of services that are gone.
//!
//! When it finds nothing to do, [`rebalance::plan`] may move one replica (a replica
//! marked `moving` counts as outdated in step 2, its replacement is pinned to the move's
//! node in step 3).
//!
//! [`runner`] carries the plan out with compare-and-swap writes; a conflict just means
//! the next pass sees newer state.

pub mod history;
pub mod rebalance;
pub mod rollout;
pub mod runner;

use std::collections::{BTreeMap, BTreeSet};

use orch_api::events::EventKind;
use orch_api::pb;

use self::rollout::resolve_update;
use crate::api::services::{config_revisions_of, with_config_revisions};
use crate::keys;
use crate::scheduler::{self, ClusterView, NodeView, PendingReplica, Resources};
use crate::state::{ClusterState, Versioned};
use crate::store::{Expect, Revision};

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Creates a replica record (bound when the scheduler found it a node).
    CreateReplica {
        key: String,
        replica: pb::Replica,
    },
    /// Rewrites a replica record read at `revision` (a binding or a pending reason).
    UpdateReplica {
        key: String,
        revision: Revision,
        replica: pb::Replica,
    },
    PutEndpoints {
        key: String,
        expect: Expect,
        endpoints: pb::ServiceEndpoints,
    },
    /// Rewrites a service read at `revision` (a new template over its Configs' revisions).
    UpdateService {
        key: String,
        revision: Revision,
        service: pb::Service,
    },
    /// Records a template as a service's newest revision (the writer stamps its time).
    CreateRevision {
        key: String,
        revision: pb::ServiceRevision,
    },
    /// Records which node holds a slot's local volumes.
    PutClaim {
        key: String,
        expect: Expect,
        claim: pb::VolumeClaim,
    },
    /// Deletes a record read at `revision`: replica, endpoints or status.
    Delete {
        key: String,
        revision: Revision,
    },
}

/// An event to record along with the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDraft {
    pub kind: EventKind,
    pub object: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub events: Vec<EventDraft>,
}

impl Plan {
    fn event(&mut self, kind: EventKind, object: String, message: String) {
        self.events.push(EventDraft { kind, object, message });
    }
}

fn requests_of(spec: Option<&pb::ServiceSpec>) -> Resources {
    let requests = spec.and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref());
    Resources { cpu_millis: requests.map_or(0, |r| r.cpu_millis), memory_bytes: requests.map_or(0, |r| r.memory_bytes) }
}

fn pending_status(reason: &str) -> pb::ReplicaStatus {
    pb::ReplicaStatus { phase: pb::ReplicaPhase::Pending.into(), reason: reason.to_owned(), ..Default::default() }
}

/// `lost_nodes`: nodes NotReady for longer than the grace period. `new_id` names a new
/// replica of the given service.
pub fn plan(state: &ClusterState, lost_nodes: &BTreeSet<String>, new_id: &mut dyn FnMut(&str) -> String) -> Plan {
    let mut plan = Plan::default();
    let mut deleted: BTreeSet<&str> = BTreeSet::new();

    // 1. Node lifecycle and deleted services.
    for (key, replica) in &state.replicas {
        let r = &replica.value;
        let reason = if !state.services.contains_key(&r.service) {
            Some((EventKind::Deleted, format!("service {} was deleted", r.service)))
        } else if !r.node.is_empty() && (lost_nodes.contains(&r.node) || !state.nodes.contains_key(&r.node)) {
            Some((EventKind::Rescheduled, format!("node {} is lost; a new replica replaces this one", r.node)))
        } else {
            None
        };
        if let Some((kind, message)) = reason {
            plan.actions.push(Action::Delete { key: key.clone(), revision: replica.mod_revision });
            plan.event(kind, format!("replica/{}", r.id), message);
            deleted.insert(key);
        }
    }

    // 2. Counts and rollouts, per service.
    let mut new_replicas: Vec<pb::Replica> = Vec::new();
    // A replica created to replace one being moved goes to the move's node, by service.
    let mut move_targets: BTreeMap<String, String> = BTreeMap::new();
    for (name, service) in &state.services {
        let Some(spec) = service.value.spec.as_ref() else { continue };
        // A Config or Secret it uses changed since its template was made: a new template
        // first (the API does this on apply; this catches a controller that stopped
        // between the two writes). The next pass rolls it.
        let revisions = config_revisions_of(spec, |kind, name| {
            state.configs.get(&(kind.into(), name.to_owned())).map_or(0, |c| u64::try_from(c.mod_revision).unwrap_or(0))
        });
        if let Some(updated) = with_config_revisions(&service.value, &revisions) {
            plan.event(EventKind::ConfigChanged, format!("service/{name}"), format!("{}: the service rolls to a new template", updated.change_cause));
            plan.actions.push(Action::UpdateService { key: service.key.clone(), revision: service.mod_revision, service: updated });
            continue;
        }
        let members: Vec<&Versioned<pb::Replica>> = state.replicas_of(name).filter(|r| !deleted.contains(r.key.as_str())).collect();
        // Paused: every replica keeps the template it runs (a rollout under way stays as
        // far as it got), and new ones — a scale-up, a drained node's — get the one most
        // of them run; the service's own waits for the resume.
        let paused = service.value.paused;
        let (template_hash, template) = if paused { paused_template(&service.value, spec, &members) } else { (service.value.spec_hash.as_str(), spec) };
        let crowd = |node: &str| members.iter().filter(|m| !node.is_empty() && m.value.node == node).count() as u32;
        let slots_own_data = orch_api::manifest::has_local_volumes(spec);
        // Two replicas of one slot (which no plan makes, but records of a crash or an
        // older build may hold): all but one count as outdated, so the rollout replaces
        // them, one at a time, with replicas of the free slots.
        let mut slot_keepers: BTreeMap<u32, &str> = BTreeMap::new();
        if slots_own_data {
            for m in members.iter().filter(|m| state.is_ready(&m.value)).chain(members.iter()) {
                if let Some(slot) = m.value.slot {
                    slot_keepers.entry(slot).or_insert(m.value.id.as_str());
                }
            }
        }
        let duplicate = |r: &pb::Replica| r.slot.is_some_and(|slot| slot_keepers.get(&slot).is_some_and(|keeper| *keeper != r.id));
        // A move whose node can no longer take the replacement (gone, not Ready,
        // cordoned, draining), or of a service paused since, is called off: the replica
        // stays where it is.
        let mut called_off = false;
        for m in &members {
            let Some(moving) = m.value.moving.as_ref() else { continue };
            let to = moving.to_node.as_str();
            let why = if paused {
                Some("its rollouts are paused".to_owned())
            } else if !state.nodes.contains_key(to) || !state.alive.contains(to) || lost_nodes.contains(to) || state.is_unschedulable(to) {
                Some(format!("node {to} can no longer take its replacement"))
            } else {
                None
            };
            if let Some(why) = why {
                let mut replica = m.value.as_ref().clone();
                replica.moving = None;
                plan.event(EventKind::Rebalancing, format!("replica/{}", replica.id), format!("the move to node {to} is called off: {why}; the replica stays"));
                plan.actions.push(Action::UpdateReplica { key: m.key.clone(), revision: m.mod_revision, replica });
                called_off = true;
            }
        }
        if called_off {
            // The rest of this service next pass, on records without the mark (one write
            // per key a pass).
            continue;
        }
        let is_moving = |r: &pb::Replica| r.moving.is_some();
        let facts: Vec<rollout::Member> = members
            .iter()
            .map(|m| rollout::Member {
                // A replica on a draining node, or being moved, is outdated wherever its
                // template is.
                current: m.value.spec_hash == template_hash && !duplicate(&m.value) && !state.is_draining(&m.value.node) && !is_moving(&m.value),
                bound: !m.value.node.is_empty(),
                ready: state.is_ready(&m.value),
                crowd: crowd(&m.value.node),
                id: m.value.id.clone(),
                ordinal: if slots_own_data { m.value.slot } else { None },
            })
            .collect();
        // A slot's local volumes belong to one replica at a time: no surge, one by one.
        let (surge, unavailable) = if slots_own_data { (0, 1) } else { resolve_update(&spec.update.unwrap_or_default(), spec.replicas) };
        // Only moves to make: the replacement is ready before the replica stops, whatever
        // the bounds say.
        let only_moves = members.iter().zip(&facts).all(|(m, f)| f.current || is_moving(&m.value)) && facts.iter().any(|f| !f.current);
        let (surge, unavailable) = if only_moves && !slots_own_data { (surge.max(1), 0) } else { (surge, unavailable) };
        // Its replacement goes where the move said (only while moves are all there is to
        // do: a rollout or scale-up under way places its replicas as usual).
        if let Some(node) = members.iter().filter(|m| is_moving(&m.value)).find_map(|m| m.value.moving.as_ref()).map(|m| m.to_node.clone()) {
            if only_moves && !node.is_empty() {
                move_targets.insert(name.clone(), node);
            }
        }
        let decision = if paused {
            let moving = |i: usize| duplicate(&members[i].value) || state.is_draining(&members[i].value.node);
            let (moved, staying): (Vec<usize>, Vec<usize>) = (0..facts.len()).partition(|&i| moving(i));
            let mixed = staying.windows(2).any(|w| members[w[0]].value.spec_hash != members[w[1]].value.spec_hash);
            let staying_facts: Vec<rollout::Member> = staying.iter().map(|&i| facts[i].clone()).collect();
            let kept = rollout::decide_paused(spec.replicas, if mixed { surge } else { 0 }, &staying_facts);
            let mut delete: Vec<usize> = kept.delete.iter().map(|&j| staying[j]).collect();
            // A drained node's (or a duplicate slot's) replica goes once the replicas that
            // stay are ready enough, within maxUnavailable, as in a rollout.
            let ready_staying = staying.iter().filter(|&&i| facts[i].ready).count();
            let min_ready = (spec.replicas as usize).saturating_sub(unavailable as usize);
            delete.extend(moved.into_iter().filter(|&i| !facts[i].ready || ready_staying >= min_ready));
            rollout::Decision { create: kept.create, delete }
        } else {
            rollout::decide(spec.replicas, surge, unavailable, &facts)
        };
        for &index in &decision.delete {
            let member = members[index];
            let why = match member.value.slot {
                Some(slot) if duplicate(&member.value) => format!("a second replica of slot {slot}"),
                _ if facts[index].current => "scaled down".to_owned(),
                _ if state.is_draining(&member.value.node) => format!("node {} is being drained", member.value.node),
                _ if is_moving(&member.value) && member.value.spec_hash == template_hash => {
                    let moving = member.value.moving.clone().unwrap_or_default();
                    format!("moved to node {} to rebalance ({})", moving.to_node, moving.reason)
                }
                _ => "replaced by the new template".to_owned(),
            };
            plan.actions.push(Action::Delete { key: member.key.clone(), revision: member.mod_revision });
            plan.event(EventKind::Killing, format!("replica/{}", member.value.id), format!("{why} (service {name})"));
            deleted.insert(member.key.as_str());
        }
        let mut taken: BTreeSet<u32> = members.iter().enumerate().filter(|(i, _)| !decision.delete.contains(i)).filter_map(|(_, m)| m.value.slot).collect();
        for _ in 0..decision.create {
            let id = new_id(name);
            let slot = (0..).find(|slot| !taken.contains(slot)).unwrap_or_default();
            taken.insert(slot);
            new_replicas.push(pb::Replica {
                id,
                service: name.clone(),
                node: String::new(),
                spec_hash: template_hash.to_owned(),
                status: Some(pending_status("")),
                spec: Some(pb::ServiceSpec { replicas: spec.replicas, update: spec.update, ..template.clone() }),
                slot: Some(slot),
                moving: None,
            });
        }
    }

    // 3. Binding.
    let surviving: Vec<&Versioned<pb::Replica>> = state.replicas.values().filter(|r| !deleted.contains(r.key.as_str())).collect();
    let view = cluster_view(state, lost_nodes, &surviving);
    let unbound: Vec<&Versioned<pb::Replica>> = surviving.iter().copied().filter(|r| r.value.node.is_empty()).collect();
    // A draining node gives up its slots' data too: the replicas move, the data stays.
    let usable_node = |node: &str| state.nodes.contains_key(node) && !lost_nodes.contains(node) && !state.is_draining(node);
    // The claim of a replica with local volumes, if it has a slot.
    let claim_of = |r: &pb::Replica| -> Option<Option<&Versioned<pb::VolumeClaim>>> {
        let slot = r.slot.filter(|_| r.spec.as_ref().is_some_and(orch_api::manifest::has_local_volumes))?;
        Some(state.claims.get(&(r.service.clone(), slot)))
    };
    let pending: Vec<PendingReplica> = unbound
        .iter()
        .map(|r| &*r.value)
        .chain(new_replicas.iter())
        .map(|r| PendingReplica {
            id: r.id.clone(),
            service: r.service.clone(),
            requests: requests_of(r.spec.as_ref()),
            node_selector: r.spec.as_ref().map(|s| s.node_selector.clone().into_iter().collect()).unwrap_or_default(),
            // Node ports are served by every node's balancer (kube-proxy style), not bound
            // by the replica, so they never keep two replicas off one node.
            node_ports: Vec::new(),
            // Unbound, of a service with a move under way: the move's replacement.
            pinned_node: claim_of(r).flatten().map(|c| c.value.node.clone()).or_else(|| move_targets.get(&r.service).cloned()).filter(|node| usable_node(node)),
            moving: move_targets.contains_key(&r.service),
        })
        .collect();
    let placement = scheduler::schedule(&view, &pending);
    let bindings: BTreeMap<&str, (&str, &scheduler::Choice)> = placement.bindings.iter().map(|b| (b.replica.as_str(), (b.node.as_str(), &b.why))).collect();
    let reasons: BTreeMap<&str, &str> = placement.unschedulable.iter().map(|(r, why)| (r.as_str(), why.as_str())).collect();
    // A replica with local volumes bound to a node that holds no claim for its slot: the
    // node holds it from now on (the data of a lost node stays behind).
    let claim_binding = |plan: &mut Plan, r: &pb::Replica, node: &str| {
        let Some(claim) = claim_of(r) else { return };
        let slot = r.slot.unwrap_or_default();
        if claim.is_some_and(|c| c.value.node == node) {
            return;
        }
        if let Some(old) = claim {
            plan.event(
                EventKind::DataLeftBehind,
                format!("replica/{}", r.id),
                format!(
                    "the local volumes of slot {slot} stayed on node {}, which is {}; this replica starts with empty ones on node {node}",
                    old.value.node,
                    if state.is_draining(&old.value.node) { "being drained" } else { "lost" }
                ),
            );
        }
        plan.actions.push(Action::PutClaim {
            key: keys::volume_claim(&r.service, slot),
            expect: claim.map_or(Expect::Absent, |c| Expect::Revision(c.mod_revision)),
            claim: pb::VolumeClaim { service: r.service.clone(), slot, node: node.to_owned() },
        });
    };
    for existing in &unbound {
        let r: &pb::Replica = &existing.value;
        let mut replica = r.clone();
        if let Some((node, why)) = bindings.get(r.id.as_str()) {
            replica.node = (*node).to_owned();
            replica.status = Some(pending_status(""));
            claim_binding(&mut plan, r, node);
            plan.event(EventKind::Scheduled, format!("replica/{}", r.id), why.describe(node, &r.service));
        } else if let Some(reason) = reasons.get(r.id.as_str()) {
            if r.status.as_ref().is_some_and(|s| s.reason == *reason) {
                continue;
            }
            replica.status = Some(pending_status(reason));
            plan.event(EventKind::FailedScheduling, format!("replica/{}", r.id), (*reason).to_owned());
        } else {
            continue;
        }
        plan.actions.push(Action::UpdateReplica { key: existing.key.clone(), revision: existing.mod_revision, replica });
    }
    for mut replica in new_replicas {
        if let Some((node, why)) = bindings.get(replica.id.as_str()) {
            claim_binding(&mut plan, &replica, node);
            replica.node = (*node).to_owned();
            plan.event(EventKind::Scheduled, format!("replica/{}", replica.id), why.describe(node, &replica.service));
        } else if let Some(reason) = reasons.get(replica.id.as_str()) {
            replica.status = Some(pending_status(reason));
            plan.event(EventKind::FailedScheduling, format!("replica/{}", replica.id), (*reason).to_owned());
        }
        plan.actions.push(Action::CreateReplica { key: keys::replica(&replica.service, &replica.id), replica });
    }
    // A bound replica whose claim was never written, or still names a lost node (the
    // claim's write failed while the binding landed): its node holds the slot.
    let mut claimed: BTreeSet<String> =
        plan.actions.iter().filter_map(|a| if let Action::PutClaim { key, .. } = a { Some(key.clone()) } else { None }).collect();
    for existing in &surviving {
        let r = &existing.value;
        let expect = match claim_of(r) {
            _ if r.node.is_empty() => continue,
            Some(None) => Expect::Absent,
            Some(Some(claim)) if claim.value.node != r.node && !usable_node(&claim.value.node) => Expect::Revision(claim.mod_revision),
            _ => continue,
        };
        let slot = r.slot.unwrap_or_default();
        let key = keys::volume_claim(&r.service, slot);
        if claimed.insert(key.clone()) {
            plan.actions.push(Action::PutClaim { key, expect, claim: pb::VolumeClaim { service: r.service.clone(), slot, node: r.node.clone() } });
        }
    }

    // 4. Endpoints.
    for (name, service) in &state.services {
        let mut ready_ips: Vec<String> = surviving
            .iter()
            .filter(|r| r.value.service == *name && state.is_ready(&r.value))
            .filter_map(|r| state.status_of(&r.value))
            .filter(|s| s.phase() == pb::ReplicaPhase::Running && !s.ip.is_empty())
            .map(|s| s.ip.clone())
            .collect();
        ready_ips.sort();
        ready_ips.dedup();
        let wanted = pb::ServiceEndpoints {
            service: name.clone(),
            vip: service.value.vip.clone(),
            ports: service.value.spec.as_ref().map(|s| s.ports.clone()).unwrap_or_default(),
            ready_ips,
            ..Default::default()
        };
        let existing = state.endpoints.get(name);
        if existing.map(|e| &*e.value) != Some(&wanted) {
            let expect = existing.map_or(Expect::Absent, |e| Expect::Revision(e.mod_revision));
            plan.actions.push(Action::PutEndpoints { key: keys::endpoints(name), expect, endpoints: wanted });
        }
    }
    for (name, endpoints) in &state.endpoints {
        if !state.services.contains_key(name) {
            plan.actions.push(Action::Delete { key: endpoints.key.clone(), revision: endpoints.mod_revision });
        }
    }

    // 5. History.
    for (name, service) in &state.services {
        let revisions: Vec<&Versioned<pb::ServiceRevision>> = state.revisions_of(name).collect();
        let values: Vec<&pb::ServiceRevision> = revisions.iter().map(|r| &*r.value).collect();
        let change = history::plan(&service.value, &values);
        for number in change.delete {
            if let Some(old) = revisions.iter().find(|r| r.value.revision == number) {
                plan.actions.push(Action::Delete { key: old.key.clone(), revision: old.mod_revision });
            }
        }
        if let Some(revision) = change.record {
            plan.actions.push(Action::CreateRevision { key: keys::revision(name, revision.revision), revision });
        }
    }

    // 6. Status records nobody should read any more, revisions of services that are gone.
    for revision in state.revisions.values().filter(|r| !state.services.contains_key(&r.value.service)) {
        plan.actions.push(Action::Delete { key: revision.key.clone(), revision: revision.mod_revision });
    }
    let bound_to: BTreeMap<&str, &str> = state.replicas.values().map(|r| (r.value.id.as_str(), r.value.node.as_str())).collect();
    for ((node, id), status) in &state.statuses {
        if bound_to.get(id.as_str()) != Some(&node.as_str()) {
            plan.actions.push(Action::Delete { key: status.key.clone(), revision: status.mod_revision });
        }
    }
    plan
}

/// The template a paused service's replicas keep: the one most of them run (ties go
/// to the service's own, then to the lowest hash), or the service's own when it has
/// none. Returns its hash and spec.
fn paused_template<'a>(service: &'a pb::Service, spec: &'a pb::ServiceSpec, members: &[&'a Versioned<pb::Replica>]) -> (&'a str, &'a pb::ServiceSpec) {
    let mut counts: BTreeMap<&str, (usize, &pb::ServiceSpec)> = BTreeMap::new();
    for m in members {
        if let Some(template) = m.value.spec.as_ref() {
            counts.entry(m.value.spec_hash.as_str()).or_insert((0, template)).0 += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(hash, (count, _))| (*count, *hash == service.spec_hash, std::cmp::Reverse(*hash)))
        .map_or((service.spec_hash.as_str(), spec), |(hash, (_, template))| (hash, template))
}

/// The scheduler's input: ready nodes that are not lost, with what the surviving
/// replicas already take.
pub fn cluster_view(state: &ClusterState, lost_nodes: &BTreeSet<String>, replicas: &[&Versioned<pb::Replica>]) -> ClusterView {
    let mut nodes: BTreeMap<&str, NodeView> = BTreeMap::new();
    for (name, node) in &state.nodes {
        let info = node.value.info.clone().unwrap_or_default();
        let capacity = info.capacity.unwrap_or_default();
        nodes.insert(
            name,
            NodeView {
                name: name.clone(),
                ready: state.alive.contains(name) && !lost_nodes.contains(name),
                unschedulable: state.is_unschedulable(name),
                labels: info.labels.into_iter().collect(),
                allocatable: Resources { cpu_millis: capacity.cpu_millis, memory_bytes: capacity.memory_bytes },
                ..NodeView::default()
            },
        );
    }
    for replica in replicas {
        let r = &replica.value;
        let Some(node) = nodes.get_mut(r.node.as_str()) else { continue };
        let requests = requests_of(r.spec.as_ref());
        node.allocated.cpu_millis += requests.cpu_millis;
        node.allocated.memory_bytes += requests.memory_bytes;
        *node.replicas_by_service.entry(r.service.clone()).or_default() += 1;
    }
    ClusterView { nodes: nodes.into_values().collect() }
}

#[cfg(test)]
mod tests;
