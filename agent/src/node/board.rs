//! What the supervisors publish and the rest of the node reads: the [`StatusBoard`]
//! (every replica's latest status and the events since the last report, read by the
//! session) and the [`RunningTable`] (how to exec into each running replica, read by
//! the node API).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use orch_api::events::EventKind;
use orch_api::pb;
use tokio::sync::Notify;

use crate::runtime::exec::ExecRequest;
use crate::runtime::now_unix_ms;

/// What the node reports: every replica's latest status and the events since the last
/// report.
#[derive(Default)]
pub struct StatusBoard {
    replicas: Mutex<BTreeMap<String, pb::ReplicaReport>>,
    events: Mutex<Vec<pb::Event>>,
    changed: Notify,
}

impl StatusBoard {
    pub fn set(&self, replica: &pb::ReplicaReport) {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).insert(replica.id.clone(), replica.clone());
        self.changed.notify_one();
    }

    pub fn remove(&self, id: &str) {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        self.changed.notify_one();
    }

    pub fn event(&self, kind: EventKind, object: String, message: String) {
        tracing::info!(kind = kind.as_str(), %object, %message, "event");
        let event = pb::Event { timestamp_unix_ms: now_unix_ms(), kind: kind.as_str().to_owned(), object, message };
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push(event);
        self.changed.notify_one();
    }

    pub fn snapshot(&self) -> Vec<pb::ReplicaReport> {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    pub fn take_events(&self) -> Vec<pb::Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Resolves when something changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// What the API needs of a running replica, kept current by its supervisor.
#[derive(Debug, Clone, Default)]
pub struct RunningReplica {
    pub service: String,
    pub exec: ExecRequest,
}

/// Replica id → its running container, for exec and stats.
#[derive(Debug, Default)]
pub struct RunningTable {
    replicas: Mutex<BTreeMap<String, RunningReplica>>,
}

impl RunningTable {
    pub fn set(&self, id: &str, running: RunningReplica) {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).insert(id.to_owned(), running);
    }

    pub fn remove(&self, id: &str) {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }

    pub fn get(&self, id: &str) -> Option<RunningReplica> {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
    }

    pub fn all(&self) -> BTreeMap<String, RunningReplica> {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
