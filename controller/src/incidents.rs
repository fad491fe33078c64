//! Recovery incidents: a fault, and how long its service took to serve again, judged
//! against the service's `spec.recovery` targets. Pure: the session and the reconciler
//! runner give the state and the time, and emit what comes out.
//!
//! Two kinds:
//! - `restart`, measured by the agent (`Effect::Recovered`: from an exit or a failed
//!   liveness probe to the replica ready again) and judged here by the session that
//!   receives it ([`judged`]);
//! - `reschedule`, measured by the leader ([`Outages`]): from when it saw a node
//!   NotReady to the node's services serving with as many ready replicas as before the
//!   loss (at most their count), on the nodes left.

use std::collections::BTreeMap;

use orch_api::events::EventKind;
use orch_api::pb;
use tokio::time::Instant;

use crate::state::ClusterState;

pub const RESTART: &str = "restart";
pub const RESCHEDULE: &str = "reschedule";

/// The service's target for an incident of `kind`, in ms (0: none).
pub fn target_ms(spec: Option<&pb::ServiceSpec>, kind: &str) -> u64 {
    let Some(recovery) = spec.and_then(|s| s.recovery.as_ref()) else { return 0 };
    match kind {
        RESTART => u64::from(recovery.restart_within_millis),
        RESCHEDULE => u64::from(recovery.reschedule_within_seconds) * 1000,
        _ => 0,
    }
}

/// Whether the incident took longer than its target.
pub fn missed(incident: &pb::Incident) -> bool {
    incident.target_ms > 0 && incident.recovered_ms > incident.target_ms
}

/// An agent's `Recovered` event, judged against its service's target as the state holds
/// it now and told which node it happened on: `RecoveryTargetMissed` when late. Any
/// other event is returned as it came.
pub fn judged(mut event: pb::Event, state: &ClusterState, node: &str) -> pb::Event {
    let Some(incident) = event.incident.as_mut() else { return event };
    let spec = state.services.get(&incident.service).and_then(|s| s.value.spec.as_ref());
    incident.target_ms = target_ms(spec, &incident.kind);
    incident.node = node.to_owned();
    let (kind, message) = verdict(incident, &event.message);
    event.kind = kind.as_str().to_owned();
    event.message = message;
    event
}

/// The event kind and message of a measured incident.
fn verdict(incident: &pb::Incident, said: &str) -> (EventKind, String) {
    match incident.target_ms {
        0 => (EventKind::Recovered, said.to_owned()),
        target if missed(incident) => {
            (EventKind::RecoveryTargetMissed, format!("{said} (target {target} ms: missed by {} ms)", incident.recovered_ms - target))
        }
        target => (EventKind::Recovered, format!("{said} (target {target} ms)")),
    }
}

/// A lost node's service, not yet serving as before.
#[derive(Debug, Clone, PartialEq)]
struct Outage {
    since: Instant,
    since_unix_ms: i64,
    fault: String,
    /// Ready replicas that mean serving again.
    want_ready: usize,
}

/// The reschedule incidents under way, by service and lost node: the leader's memory,
/// rebuilt empty by a new leader (an outage open at a handover goes unreported).
#[derive(Debug, Default)]
pub struct Outages {
    open: BTreeMap<(String, String), Outage>,
}

/// A lost node, as the node tracker saw it.
#[derive(Debug, Clone)]
pub struct LostNode {
    /// When it was first seen NotReady.
    pub since: Instant,
    /// Why it was lost, in words.
    pub why: String,
}

impl Outages {
    /// Opens an outage for every service with a replica on a node lost now (once per
    /// service and node) and closes those whose services serve again: their incidents, as
    /// events about the service, judged against its target.
    pub fn observe(&mut self, state: &ClusterState, lost: &BTreeMap<String, LostNode>, now: Instant, now_unix_ms: i64) -> Vec<pb::Event> {
        for (node, seen) in lost {
            let mut services: BTreeMap<&str, usize> = BTreeMap::new();
            for replica in state.replicas_on(node).map(|r| &r.value) {
                *services.entry(replica.service.as_str()).or_default() += usize::from(state.status_of(replica).is_some_and(|s| s.ready));
            }
            for (service, ready_there) in services {
                let key = (service.to_owned(), node.clone());
                if ready_there == 0 || self.open.contains_key(&key) {
                    // No ready replica there: the loss cost the service nothing.
                    continue;
                }
                let desired = state.services.get(service).and_then(|s| s.value.spec.as_ref()).map_or(0, |s| s.replicas as usize);
                let want_ready = desired.min(ready_elsewhere(state, service, lost) + ready_there);
                let ago = now.saturating_duration_since(seen.since);
                let since_unix_ms = now_unix_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX));
                self.open.insert(key, Outage { since: seen.since, since_unix_ms, fault: format!("node {node} lost: {}", seen.why), want_ready });
            }
        }
        let mut events = Vec::new();
        self.open.retain(|(service, node), outage| {
            let Some(record) = state.services.get(service) else { return false };
            // Scaled down meanwhile: serving again is the new count.
            let desired = record.value.spec.as_ref().map_or(0, |s| s.replicas as usize);
            if ready_elsewhere(state, service, lost) < outage.want_ready.min(desired) {
                return true;
            }
            let recovered_ms = u64::try_from(now.saturating_duration_since(outage.since).as_millis()).unwrap_or(u64::MAX);
            let incident = pb::Incident {
                service: service.clone(),
                kind: RESCHEDULE.into(),
                fault: outage.fault.clone(),
                fault_unix_ms: outage.since_unix_ms,
                recovered_ms,
                target_ms: target_ms(record.value.spec.as_ref(), RESCHEDULE),
                replica: String::new(),
                node: node.clone(),
            };
            let said = format!("{} ready replicas again {recovered_ms} ms after: {}", outage.want_ready.min(desired), outage.fault);
            let (kind, message) = verdict(&incident, &said);
            events.push(pb::Event {
                timestamp_unix_ms: now_unix_ms,
                kind: kind.as_str().to_owned(),
                object: format!("service/{service}"),
                message,
                incident: Some(incident),
            });
            false
        });
        events
    }

    /// Whether no outage is under way.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// Ready replicas of `service` on nodes not lost.
fn ready_elsewhere(state: &ClusterState, service: &str, lost: &BTreeMap<String, LostNode>) -> usize {
    state.replicas_of(service).filter(|r| !lost.contains_key(&r.value.node) && state.is_ready(&r.value)).count()
}
