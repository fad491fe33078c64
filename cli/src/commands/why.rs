//! `orch why REPLICA|SERVICE`: everything that happened to it, in order and in plain
//! words — where the scheduler put each replica and why (its scores against the
//! runner-up, the nodes filtered out), each exit with its evidence, each probe flip, each
//! move and its cause (node lost, drain, rollout, scale), each rollout of the service and
//! each incident against its recovery targets, with the crash black box of the replicas
//! that still exist. Built from the events (kept `--event-ttl`, an hour by default), the
//! replicas' status and the service's revisions; [`timeline`] is pure.

use std::collections::BTreeSet;

use clap::Args;
use orch_api::events::EventKind;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;
use crate::output;

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// A replica (one that is gone too, while its events last) or a service.
    pub name: String,
}

/// One line of a timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub at_unix_ms: i64,
    /// The replica it is about (empty: the service or a node).
    pub replica: String,
    /// What happened, in a word or two.
    pub what: String,
    pub text: String,
}

/// What `orch why` was asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    Replica(&'a str),
    Service(&'a str),
}

/// The words for an event kind.
fn what_of(kind: &str) -> String {
    let Some(kind) = EventKind::parse(kind) else { return kind.to_owned() };
    match kind {
        EventKind::Scheduled => "scheduled",
        EventKind::FailedScheduling => "unschedulable",
        EventKind::Killing => "stopping",
        EventKind::Deleted => "deleted",
        EventKind::Rescheduled => "moved",
        EventKind::Registered => "node registered",
        EventKind::NodeReady => "node ready",
        EventKind::NodeNotReady => "node not ready",
        EventKind::FullDisruption => "no node ready",
        EventKind::DataLeftBehind => "data left behind",
        EventKind::ConfigChanged => "config changed",
        EventKind::Started => "started",
        EventKind::Adopted => "adopted",
        EventKind::Exited => "exited",
        EventKind::OOMKilled => "OOM-killed",
        EventKind::Restarted => "restarted",
        EventKind::Unhealthy => "probe failed",
        EventKind::Ready => "probe passed",
        EventKind::Failed => "failed to start",
        EventKind::Stopped => "stopped",
        EventKind::VolumesPurged => "volumes purged",
        EventKind::Evicted => "evicted",
        EventKind::EventsDropped => "events dropped",
        EventKind::RecordUnreadable => "record unreadable",
        EventKind::ListenerFailed => "listener failed",
        EventKind::ListenerOpened => "listener opened",
        EventKind::Rebalancing => "rebalancing",
        EventKind::Recovered => "recovered",
        EventKind::RecoveryTargetMissed => "recovered late",
        EventKind::Chaos => "fault injected",
    }
    .to_owned()
}

/// Whether `id` names a replica of `service`: the service's name, a dash and five hex
/// digits (how the controller names them), so `web-a-1f2e3` is not `web`'s.
pub fn is_replica_of(id: &str, service: &str) -> bool {
    id.strip_prefix(service).and_then(|rest| rest.strip_prefix('-')).is_some_and(|suffix| suffix.len() == 5 && suffix.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The node a `Scheduled` event names (`assigned to node NAME: …`).
fn scheduled_node(event: &pb::Event) -> Option<&str> {
    let rest = event.message.strip_prefix("assigned to node ")?;
    Some(rest.split([':', ' ']).next().unwrap_or(rest))
}

/// Everything known about `subject`, oldest first: its events and its replicas' (gone
/// ones too), the events of the nodes they ran on from the first of them, and — for a
/// service — its rollouts.
pub fn timeline(subject: Subject<'_>, events: &[pb::Event], replicas: &[pb::Replica], revisions: &[pb::ServiceRevision]) -> Vec<Line> {
    let mine = |object: &str| -> Option<String> {
        match (subject, object.split_once('/')) {
            (Subject::Replica(id), Some(("replica", named))) if named == id => Some(named.to_owned()),
            (Subject::Service(name), Some(("replica", named))) if is_replica_of(named, name) => Some(named.to_owned()),
            (Subject::Service(name), Some(("service", named))) if named == name => Some(String::new()),
            _ => None,
        }
    };
    let mut lines = Vec::new();
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    let mut first_ms = i64::MAX;
    for event in events {
        let Some(replica) = mine(&event.object) else { continue };
        if let Some(node) = scheduled_node(event).filter(|_| event.kind == EventKind::Scheduled) {
            nodes.insert(node.to_owned());
        }
        if let Some(node) = event.incident.as_ref().map(|i| i.node.clone()).filter(|n| !n.is_empty()) {
            nodes.insert(node);
        }
        first_ms = first_ms.min(event.timestamp_unix_ms);
        lines.push(Line { at_unix_ms: event.timestamp_unix_ms, replica, what: what_of(&event.kind), text: event.message.clone() });
    }
    for replica in replicas {
        let belongs = match subject {
            Subject::Replica(id) => replica.id == id,
            Subject::Service(name) => replica.service == name,
        };
        if belongs && !replica.node.is_empty() {
            nodes.insert(replica.node.clone());
        }
    }
    for event in events {
        let Some(("node", node)) = event.object.split_once('/') else { continue };
        if nodes.contains(node) && event.timestamp_unix_ms >= first_ms {
            lines.push(Line {
                at_unix_ms: event.timestamp_unix_ms,
                replica: String::new(),
                what: what_of(&event.kind),
                text: format!("node {node}: {}", event.message),
            });
        }
    }
    if let Subject::Service(_) = subject {
        for revision in revisions {
            let change = if revision.change.is_empty() { "no cause recorded".to_owned() } else { revision.change.clone() };
            lines.push(Line {
                at_unix_ms: revision.created_unix_ms,
                replica: String::new(),
                what: "rollout".into(),
                text: format!("revision {}: {change}", revision.revision),
            });
        }
    }
    lines.sort_by_key(|line| line.at_unix_ms);
    lines
}

/// A replica's state now, in one line.
fn now_of(replica: &pb::Replica) -> String {
    let o = output::replica(replica);
    let place = if o.node.is_empty() { "on no node yet".to_owned() } else { format!("on node {}", o.node) };
    let ready = if o.ready { "ready" } else { "not ready" };
    let reason = if o.reason.is_empty() { String::new() } else { format!(" ({})", o.reason) };
    format!("{} and {ready} {place}, {} restart{}{reason}", o.phase, o.restarts, if o.restarts == 1 { "" } else { "s" })
}

/// The crash black box of a replica: its last exit and last output lines.
fn black_box(replica: &pb::Replica) -> String {
    let status = replica.status.clone().unwrap_or_default();
    let Some(code) = status.exit_code else { return String::new() };
    let mut text = format!(
        "  last exit of {}: code {code}{}{}, {} ago\n",
        replica.id,
        if code > 128 { format!(" (signal {})", code - 128) } else { String::new() },
        if status.oom_killed { ", OOMKilled" } else { "" },
        output::age(status.finished_unix_ms)
    );
    for line in status.last_output.lines() {
        text.push_str(&format!("    | {line}\n"));
    }
    text
}

/// A time of day in UTC with milliseconds: `14:02:11.204`.
pub fn clock(unix_ms: i64) -> String {
    let in_day = unix_ms.rem_euclid(86_400_000);
    format!("{:02}:{:02}:{:02}.{:03}", in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000)
}

/// The whole answer, as printed.
pub fn render(header: &str, lines: &[Line], footer: &str, with_replicas: bool) -> String {
    let mut text = format!("{header}\n");
    if lines.is_empty() {
        text.push_str("  no events (they are kept for the controller's --event-ttl, an hour by default)\n");
    }
    for line in lines {
        if with_replicas {
            text.push_str(&format!("  {}  {:<12} {:<16} {}\n", clock(line.at_unix_ms), line.replica, line.what, line.text));
        } else {
            text.push_str(&format!("  {}  {:<16} {}\n", clock(line.at_unix_ms), line.what, line.text));
        }
    }
    if !footer.is_empty() {
        text.push_str("Crash black box:\n");
        text.push_str(footer);
    }
    text
}

pub async fn why(mut api: ApiClient<Channel>, args: &WhyArgs) -> anyhow::Result<()> {
    let name = args.name.as_str();
    let events = api.list_events(pb::ListEventsRequest { object: String::new() }).await.map_err(explain)?.into_inner().events;
    let replicas = api.list_replicas(pb::ListReplicasRequest { service: String::new() }).await.map_err(explain)?.into_inner().replicas;
    let text = if let Some(replica) = replicas.iter().find(|r| r.id == name) {
        let lines = timeline(Subject::Replica(name), &events, &replicas, &[]);
        let header = format!("replica {name} of service {}: {} (times UTC)", replica.service, now_of(replica));
        render(&header, &lines, &black_box(replica), false)
    } else {
        match api.get_service(pb::GetServiceRequest { name: name.to_owned() }).await {
            Ok(service) => {
                let service = service.into_inner();
                let revisions = api.list_revisions(pb::ListRevisionsRequest { service: name.to_owned() }).await.map_err(explain)?.into_inner();
                let mine: Vec<&pb::Replica> = replicas.iter().filter(|r| r.service == name).collect();
                let ready = mine.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.ready)).count();
                let wanted = service.spec.as_ref().map_or(0, |s| s.replicas);
                let mut header = format!("service {name}: {ready}/{wanted} ready, template revision {} (times UTC)", revisions.current);
                for replica in &mine {
                    header.push_str(&format!("\n  {}: {}", replica.id, now_of(replica)));
                }
                let lines = timeline(Subject::Service(name), &events, &replicas, &revisions.revisions);
                let footer: String = mine.iter().map(|r| black_box(r)).collect();
                render(&header, &lines, &footer, true)
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                let lines = timeline(Subject::Replica(name), &events, &replicas, &[]);
                if lines.is_empty() {
                    anyhow::bail!("no service or replica {name:?} (a gone replica's events are kept for the controller's --event-ttl, an hour by default)");
                }
                render(&format!("replica {name}: gone (times UTC)"), &lines, "", false)
            }
            Err(status) => return Err(explain(status)),
        }
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: i64, kind: &str, object: &str, message: &str) -> pb::Event {
        pb::Event { timestamp_unix_ms: at, kind: kind.into(), object: object.into(), message: message.into(), incident: None }
    }

    fn story() -> Vec<pb::Event> {
        vec![
            event(1_000, "Scheduled", "replica/web-1a2b3", "assigned to node n2: fewest replicas of web (0 there, 1 on n1, the next best); 3% allocated after"),
            event(1_010, "Scheduled", "replica/web-a-00001", "assigned to node n1: the only node that fits"),
            event(1_500, "Started", "replica/web-1a2b3", "container started"),
            event(2_000, "NodeNotReady", "node/n2", "no heartbeat within its lease; its replicas move after 1s"),
            event(2_000, "NodeNotReady", "node/n9", "unrelated"),
            event(3_000, "Rescheduled", "replica/web-1a2b3", "node n2 is lost; a new replica replaces this one"),
            event(3_100, "Scheduled", "replica/web-4c5d6", "assigned to node n1: fewest replicas of web (1 there, 2 on n3, the next best)"),
            event(4_000, "Recovered", "service/web", "3 ready replicas again 2000 ms after: node n2 lost"),
            event(500, "NodeReady", "node/n1", "before anything of web: left out"),
        ]
    }

    #[test]
    fn a_replica_gone_with_its_node_tells_where_it_was_put_why_and_why_it_moved() {
        let lines = timeline(Subject::Replica("web-1a2b3"), &story(), &[], &[]);
        let said: Vec<(&str, &str)> = lines.iter().map(|l| (l.what.as_str(), l.text.as_str())).collect();
        assert_eq!(
            said,
            [
                ("scheduled", "assigned to node n2: fewest replicas of web (0 there, 1 on n1, the next best); 3% allocated after"),
                ("started", "container started"),
                ("node not ready", "node n2: no heartbeat within its lease; its replicas move after 1s"),
                ("moved", "node n2 is lost; a new replica replaces this one"),
            ]
        );
    }

    #[test]
    fn a_service_gathers_its_replicas_its_own_events_its_nodes_and_its_rollouts() {
        let revisions = [pb::ServiceRevision { revision: 1, change: "apply web.yaml".into(), created_unix_ms: 900, ..Default::default() }];
        let replicas = [pb::Replica { id: "web-4c5d6".into(), service: "web".into(), node: "n1".into(), ..Default::default() }];
        let lines = timeline(Subject::Service("web"), &story(), &replicas, &revisions);
        let said: Vec<(&str, &str)> = lines.iter().map(|l| (l.replica.as_str(), l.what.as_str())).collect();
        assert_eq!(
            said,
            [
                ("", "rollout"),
                ("web-1a2b3", "scheduled"),
                ("web-1a2b3", "started"),
                ("", "node not ready"),
                ("web-1a2b3", "moved"),
                ("web-4c5d6", "scheduled"),
                ("", "recovered"),
            ],
            "web-a's replica is not web's, n9 ran none of them, n1's events before the first are left out"
        );
        assert_eq!(lines[0].text, "revision 1: apply web.yaml");
    }

    #[test]
    fn replica_names_belong_to_their_service_only() {
        assert!(is_replica_of("web-1a2b3", "web"));
        assert!(!is_replica_of("web-a-1a2b3", "web"));
        assert!(is_replica_of("web-a-1a2b3", "web-a"));
        assert!(!is_replica_of("web-1a2b", "web") && !is_replica_of("web-1a2bz", "web") && !is_replica_of("web", "web"));
    }

    #[test]
    fn times_are_utc_clock_times_with_milliseconds() {
        assert_eq!(clock(0), "00:00:00.000");
        assert_eq!(clock(1_765_115_331_204), "13:48:51.204");
    }
}
