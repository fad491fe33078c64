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
    events: Mutex<Events>,
    conditions: Mutex<BTreeMap<String, pb::NodeCondition>>,
    changed: Notify,
}

/// The events not yet reported, at most [`EVENT_BACKLOG`]: while the controller is away
/// the oldest go first, and the next report says how many were dropped.
#[derive(Default)]
struct Events {
    pending: std::collections::VecDeque<pb::Event>,
    dropped: u64,
}

/// How many unreported events a node keeps while its controller is away.
pub const EVENT_BACKLOG: usize = 1000;

/// The longest event message, status reason or condition message a node reports (a
/// probe's output or an error can be any length).
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// `text` cut to [`MAX_MESSAGE_BYTES`] at a character boundary, marked when cut.
pub fn capped(mut text: String) -> String {
    if text.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl StatusBoard {
    pub fn set(&self, replica: &pb::ReplicaReport) {
        let mut replica = replica.clone();
        if let Some(status) = replica.status.as_mut() {
            status.reason = capped(std::mem::take(&mut status.reason));
        }
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).insert(replica.id.clone(), replica);
        self.changed.notify_one();
    }

    pub fn remove(&self, id: &str) {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        self.changed.notify_one();
    }

    pub fn event(&self, kind: EventKind, object: String, message: String) {
        self.push_event(pb::Event { timestamp_unix_ms: now_unix_ms(), kind: kind.as_str().to_owned(), object, message, incident: None });
    }

    /// A `Recovered` event about `object`, carrying `incident`.
    pub fn incident(&self, object: String, message: String, incident: pb::Incident) {
        let event = pb::Event { timestamp_unix_ms: now_unix_ms(), kind: EventKind::Recovered.as_str().to_owned(), object, message, incident: Some(incident) };
        self.push_event(event);
    }

    fn push_event(&self, mut event: pb::Event) {
        event.message = capped(std::mem::take(&mut event.message));
        tracing::info!(kind = event.kind, object = event.object, message = event.message, "event");
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.pending.len() >= EVENT_BACKLOG {
            events.pending.pop_front();
            events.dropped += 1;
        }
        events.pending.push_back(event);
        drop(events);
        self.changed.notify_one();
    }

    /// Holds condition `kind` with `message` (since when it first held); `true` when it
    /// is new or says something new, for the caller's event.
    pub fn set_condition(&self, kind: &str, message: String) -> bool {
        let message = capped(message);
        let mut conditions = self.conditions.lock().unwrap_or_else(PoisonError::into_inner);
        let since = conditions.get(kind).map_or_else(now_unix_ms, |held| held.since_unix_ms);
        let condition = pb::NodeCondition { r#type: kind.to_owned(), message, since_unix_ms: since };
        let changed = conditions.get(kind).is_none_or(|held| held.message != condition.message);
        conditions.insert(kind.to_owned(), condition);
        drop(conditions);
        if changed {
            self.changed.notify_one();
        }
        changed
    }

    /// Condition `kind` is over; `true` when it held.
    pub fn clear_condition(&self, kind: &str) -> bool {
        let held = self.conditions.lock().unwrap_or_else(PoisonError::into_inner).remove(kind).is_some();
        if held {
            self.changed.notify_one();
        }
        held
    }

    pub fn conditions(&self) -> Vec<pb::NodeCondition> {
        self.conditions.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    pub fn snapshot(&self) -> Vec<pb::ReplicaReport> {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// The events since the last call, oldest first; an `EventsDropped` event of `node`
    /// first when the backlog overflowed meanwhile.
    pub fn take_events(&self, node: &str) -> Vec<pb::Event> {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        let dropped = std::mem::take(&mut events.dropped);
        let pending = std::mem::take(&mut events.pending);
        drop(events);
        let overflow = (dropped > 0).then(|| pb::Event {
            timestamp_unix_ms: now_unix_ms(),
            kind: EventKind::EventsDropped.as_str().to_owned(),
            object: format!("node/{node}"),
            message: format!("{dropped} older events were dropped while the controller was away (the node keeps the last {EVENT_BACKLOG})"),
            incident: None,
        });
        overflow.into_iter().chain(pending).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_keeps_the_newest_events_and_says_how_many_went() {
        let board = StatusBoard::default();
        for n in 0..EVENT_BACKLOG + 5 {
            board.event(EventKind::Restarted, "replica/web-a".into(), format!("restart {n}"));
        }
        let events = board.take_events("n1");
        assert_eq!(events.len(), EVENT_BACKLOG + 1, "the backlog and one event saying what was dropped");
        assert_eq!((events[0].kind.as_str(), events[0].object.as_str()), ("EventsDropped", "node/n1"));
        assert!(events[0].message.starts_with("5 older events were dropped"), "{}", events[0].message);
        assert_eq!(events[1].message, "restart 5", "the oldest go first");
        assert_eq!(events[EVENT_BACKLOG].message, format!("restart {}", EVENT_BACKLOG + 4));
        assert!(board.take_events("n1").is_empty(), "taken once");
    }

    #[test]
    fn messages_and_reasons_are_capped_at_a_character_boundary() {
        let board = StatusBoard::default();
        board.event(EventKind::Unhealthy, "replica/web-a".into(), "é".repeat(5000));
        let event = board.take_events("n1").remove(0);
        assert!(event.message.len() <= MAX_MESSAGE_BYTES && event.message.ends_with('…'), "{}", event.message.len());
        let status = pb::ReplicaStatus { reason: "x".repeat(10_000), ..Default::default() };
        board.set(&pb::ReplicaReport { id: "web-a".into(), status: Some(status), ..Default::default() });
        assert!(board.snapshot()[0].status.as_ref().is_some_and(|s| s.reason.len() <= MAX_MESSAGE_BYTES));
        assert_eq!(capped("short".into()), "short");
    }

    #[test]
    fn a_condition_keeps_when_it_began_and_is_reported_until_cleared() {
        let board = StatusBoard::default();
        assert!(board.set_condition("ListenerFailed", "node port 30080: in use".into()), "new");
        let since = board.conditions()[0].since_unix_ms;
        assert!(!board.set_condition("ListenerFailed", "node port 30080: in use".into()), "the same: nothing new to say");
        assert!(board.set_condition("ListenerFailed", "node ports 30080, 30081: in use".into()), "a new message");
        assert_eq!(board.conditions()[0].since_unix_ms, since, "it holds since it first held");
        assert!(board.clear_condition("ListenerFailed"));
        assert!(!board.clear_condition("ListenerFailed"), "cleared once");
        assert!(board.conditions().is_empty());
    }
}
