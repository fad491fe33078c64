//! Converging the node to a desired set, decided as a pure diff: which replicas to start
//! (each with its template, Pending until its supervisor says more) and which to stop.
//! The balancer table and the routes to other nodes are replaced whole by the daemon.

use std::collections::{BTreeMap, BTreeSet};

use orch_api::pb;

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// New replicas, in id order, with their templates.
    pub start: Vec<pb::Replica>,
    /// Supervised replicas the set no longer holds.
    pub stop: Vec<String>,
}

/// What `set` asks of a node that supervises `supervised` now. A replica is started
/// once: one already supervised is left alone whatever the set says of it (a replica's
/// template never changes; a new template is a new replica).
pub fn plan(set: &pb::DesiredSet, supervised: &BTreeSet<String>) -> Plan {
    let mut wanted: BTreeMap<String, pb::Replica> = BTreeMap::new();
    for desired in &set.replicas {
        let Some(replica) = &desired.replica else { continue };
        wanted.insert(replica.id.clone(), pb::Replica { spec: desired.spec.clone(), ..replica.clone() });
    }
    let stop = supervised.iter().filter(|id| !wanted.contains_key(*id)).cloned().collect();
    let start = wanted
        .into_values()
        .filter(|replica| !supervised.contains(&replica.id))
        .map(|replica| pb::Replica { status: Some(pb::ReplicaStatus { phase: pb::ReplicaPhase::Pending.into(), ..Default::default() }), ..replica })
        .collect();
    Plan { start, stop }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(id: &str, image: &str) -> pb::DesiredReplica {
        pb::DesiredReplica {
            replica: Some(pb::Replica { id: id.into(), service: "web".into(), ..Default::default() }),
            spec: Some(pb::ServiceSpec { image: image.into(), ..Default::default() }),
        }
    }

    #[test]
    fn start_what_is_missing_stop_what_is_unwanted_leave_the_rest() {
        let set = pb::DesiredSet { generation: 3, replicas: vec![desired("web-b", "v2"), desired("web-a", "v1")], ..Default::default() };
        let supervised: BTreeSet<String> = ["web-a".to_owned(), "web-old".to_owned()].into();
        let plan = plan(&set, &supervised);
        assert_eq!(plan.stop, ["web-old"]);
        assert_eq!(plan.start.len(), 1);
        let started = &plan.start[0];
        assert_eq!(started.id, "web-b");
        assert_eq!(started.spec.as_ref().map(|s| s.image.as_str()), Some("v2"), "the template travels with the replica");
        assert_eq!(started.status.as_ref().map(pb::ReplicaStatus::phase), Some(pb::ReplicaPhase::Pending));
    }

    #[test]
    fn an_empty_set_stops_everything_and_a_repeat_changes_nothing() {
        let supervised: BTreeSet<String> = ["web-a".to_owned()].into();
        assert_eq!(plan(&pb::DesiredSet::default(), &supervised), Plan { start: vec![], stop: vec!["web-a".into()] });
        let set = pb::DesiredSet { replicas: vec![desired("web-a", "v1")], ..Default::default() };
        assert_eq!(plan(&set, &supervised), Plan::default(), "level-triggered: the same set again plans nothing");
        let broken = pb::DesiredSet { replicas: vec![pb::DesiredReplica { replica: None, spec: None }], ..Default::default() };
        assert_eq!(plan(&broken, &BTreeSet::new()), Plan::default(), "an entry without a replica is skipped");
    }
}
