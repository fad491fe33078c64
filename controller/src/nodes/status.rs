//! Turning an agent's status report into store writes — pure, so that what is written
//! (and what is not) is table-tested.

use std::collections::BTreeSet;

use orch_api::pb;

use crate::keys;
use crate::state::ClusterState;
use crate::store::Revision;

#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived, one per changed replica
pub enum StatusWrite {
    Put { key: String, replica: pb::ReplicaReport },
    Delete { key: String, revision: Revision },
}

/// The writes that make `/orch/status/<node>/` equal to the report: a status is kept
/// only for replicas bound to this node (a returning node's stale replicas are not
/// recorded), rewritten only when it changed, and deleted when the node no longer has it.
pub fn status_writes(state: &ClusterState, node: &str, report: &pb::StatusReport) -> Vec<StatusWrite> {
    let mut writes = Vec::new();
    let mut reported = BTreeSet::new();
    for replica in &report.replicas {
        let bound_here = state.replicas.get(&keys::replica(&replica.service, &replica.id)).is_some_and(|r| r.value.node == node);
        if !bound_here {
            continue;
        }
        reported.insert(replica.id.clone());
        let stored = pb::ReplicaReport { node: node.to_owned(), ..replica.clone() };
        let current = state.statuses.get(&(node.to_owned(), replica.id.clone())).map(|s| &*s.value);
        if current != Some(&stored) {
            writes.push(StatusWrite::Put { key: keys::status(node, &replica.id), replica: stored });
        }
    }
    let prefix = (node.to_owned(), String::new());
    for ((owner, id), status) in state.statuses.range(prefix..) {
        if owner != node {
            break;
        }
        if !reported.contains(id) {
            writes.push(StatusWrite::Delete { key: status.key.clone(), revision: status.mod_revision });
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Versioned;

    fn replica(id: &str, node: &str) -> pb::Replica {
        pb::Replica { id: id.into(), service: "web".into(), node: node.into(), ..Default::default() }
    }

    fn running(id: &str, node: &str, ready: bool) -> pb::ReplicaReport {
        let status = pb::ReplicaStatus { phase: pb::ReplicaPhase::Running.into(), ready, ..Default::default() };
        pb::ReplicaReport { status: Some(status), ..pb::ReplicaReport::from(&replica(id, node)) }
    }

    #[test]
    fn only_changes_of_replicas_bound_here_are_written() {
        let mut state = ClusterState { revision: 10, ..ClusterState::default() };
        for (id, node) in [("web-a", "n1"), ("web-b", "n1"), ("web-c", "n2")] {
            let key = keys::replica("web", id);
            state.replicas.insert(key.clone(), Versioned { key, value: std::sync::Arc::new(replica(id, node)), mod_revision: 2 });
        }
        let unchanged = running("web-a", "n1", true);
        state.statuses.insert(
            ("n1".into(), "web-a".into()),
            Versioned { key: keys::status("n1", "web-a"), value: std::sync::Arc::new(unchanged.clone()), mod_revision: 3 },
        );
        state.statuses.insert(
            ("n1".into(), "web-x".into()),
            Versioned { key: keys::status("n1", "web-x"), value: std::sync::Arc::new(running("web-x", "n1", true)), mod_revision: 4 },
        );
        let report = pb::StatusReport {
            observed_generation: 7,
            replicas: vec![unchanged, running("web-b", "n1", false), running("web-c", "n1", true)],
            events: vec![],
            conditions: vec![],
        };
        let writes = status_writes(&state, "n1", &report);
        assert_eq!(
            writes,
            [
                StatusWrite::Put { key: keys::status("n1", "web-b"), replica: running("web-b", "n1", false) },
                StatusWrite::Delete { key: keys::status("n1", "web-x"), revision: 4 },
            ],
            "web-a unchanged, web-c is bound to n2, web-x is gone from the node"
        );
    }
}
