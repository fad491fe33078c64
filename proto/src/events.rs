//! The kinds of event orch reports (`orch get events`, `describe`), one enum for the
//! controller and the agents. On the wire an event's kind is its name (`pb::Event.kind`).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    // The controller's.
    /// A replica was bound to a node.
    Scheduled,
    /// No node fits a replica (the reason says why).
    FailedScheduling,
    /// A replica is being stopped (scale down, rolling update).
    Killing,
    /// A replica's service was deleted.
    Deleted,
    /// A replica's node is lost; a new replica replaces it.
    Rescheduled,
    /// A node registered.
    Registered,
    NodeReady,
    NodeNotReady,
    /// No node is Ready: nothing is moved until one is.
    FullDisruption,
    /// A slot's local volume data stayed on a lost node; its new replica starts empty
    /// elsewhere.
    DataLeftBehind,
    /// A Config or Secret a service uses changed (or appeared, or went): its template
    /// changes and the service rolls.
    ConfigChanged,
    // The agents'.
    /// A replica's container started.
    Started,
    /// A new agent took over a running container.
    Adopted,
    /// A replica's command ended.
    Exited,
    OOMKilled,
    /// A replica was restarted (after an exit or a failed probe).
    Restarted,
    /// A probe failed.
    Unhealthy,
    /// A replica's readiness probe passes again after it failed (the first ready of a
    /// run is no event: a large apply would make one per replica).
    Ready,
    /// A replica could not be prepared or started; it is retried.
    Failed,
    /// A replica was removed from its node.
    Stopped,
    /// A deleted service's local volumes were removed from a node (delete with purge).
    VolumesPurged,
    /// An on-disk emptyDir outgrew its sizeLimit: the container restarts with it empty.
    Evicted,
    /// The node dropped its oldest unreported events while the controller was away.
    EventsDropped,
    /// A replica record could not be read: set aside, its container kept until the
    /// controller says whether the replica is still wanted.
    RecordUnreadable,
    /// A service's listener (a node port) could not be opened on a node; retried.
    ListenerFailed,
    /// A listener that had failed is open.
    ListenerOpened,
    /// The leader moves a replica to rebalance its service (or gives a move up, or finds
    /// a service `orch rebalance` asked for balanced).
    Rebalancing,
    // Either's: a replica restarted on its node (the agent's) or a lost node's replicas
    // replaced (the leader's) serve again; the event carries the `Incident`.
    /// Serving again within the service's recovery target (or it has none).
    Recovered,
    /// Serving again, later than the service's recovery target: a warning.
    RecoveryTargetMissed,
    /// A fault `orch chaos` injected (the controller's, when the agent has done it).
    Chaos,
}

impl EventKind {
    pub const ALL: [EventKind; 30] = [
        EventKind::Scheduled,
        EventKind::FailedScheduling,
        EventKind::Killing,
        EventKind::Deleted,
        EventKind::Rescheduled,
        EventKind::Registered,
        EventKind::NodeReady,
        EventKind::NodeNotReady,
        EventKind::FullDisruption,
        EventKind::DataLeftBehind,
        EventKind::ConfigChanged,
        EventKind::Started,
        EventKind::Adopted,
        EventKind::Exited,
        EventKind::OOMKilled,
        EventKind::Restarted,
        EventKind::Unhealthy,
        EventKind::Ready,
        EventKind::Failed,
        EventKind::Stopped,
        EventKind::VolumesPurged,
        EventKind::Evicted,
        EventKind::EventsDropped,
        EventKind::RecordUnreadable,
        EventKind::ListenerFailed,
        EventKind::ListenerOpened,
        EventKind::Rebalancing,
        EventKind::Recovered,
        EventKind::RecoveryTargetMissed,
        EventKind::Chaos,
    ];

    /// The name on the wire and on screen.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Scheduled => "Scheduled",
            EventKind::FailedScheduling => "FailedScheduling",
            EventKind::Killing => "Killing",
            EventKind::Deleted => "Deleted",
            EventKind::Rescheduled => "Rescheduled",
            EventKind::Registered => "Registered",
            EventKind::NodeReady => "NodeReady",
            EventKind::NodeNotReady => "NodeNotReady",
            EventKind::FullDisruption => "FullDisruption",
            EventKind::DataLeftBehind => "DataLeftBehind",
            EventKind::ConfigChanged => "ConfigChanged",
            EventKind::Started => "Started",
            EventKind::Adopted => "Adopted",
            EventKind::Exited => "Exited",
            EventKind::OOMKilled => "OOMKilled",
            EventKind::Restarted => "Restarted",
            EventKind::Unhealthy => "Unhealthy",
            EventKind::Ready => "Ready",
            EventKind::Failed => "Failed",
            EventKind::Stopped => "Stopped",
            EventKind::VolumesPurged => "VolumesPurged",
            EventKind::Evicted => "Evicted",
            EventKind::EventsDropped => "EventsDropped",
            EventKind::RecordUnreadable => "RecordUnreadable",
            EventKind::ListenerFailed => "ListenerFailed",
            EventKind::ListenerOpened => "ListenerOpened",
            EventKind::Rebalancing => "Rebalancing",
            EventKind::Recovered => "Recovered",
            EventKind::RecoveryTargetMissed => "RecoveryTargetMissed",
            EventKind::Chaos => "Chaos",
        }
    }

    /// The kind a wire name stands for.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<EventKind> for String {
    fn eq(&self, other: &EventKind) -> bool {
        self == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let names: std::collections::BTreeSet<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(format!("{kind:?}"), kind.as_str(), "the name is the variant's");
        }
        assert_eq!(EventKind::parse("Bogus"), None);
        assert!(String::from("Restarted") == EventKind::Restarted);
    }
}
