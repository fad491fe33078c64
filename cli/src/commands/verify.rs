//! `orch verify SERVICE… [--duration S] [--rate N] [-o json]`: what a service's clients
//! see while faults happen (`orch chaos` beside it, a drain, a rollout). Steady HTTP
//! requests go through each service's VIP, from a short-lived helper service
//! (`orch-verify-XXXXX`, one replica of `--helper-image`, removed at the end), and
//! through its node port on every ready node, from here. Each service's report: `sent`,
//! `answered` (an HTTP status below 500), `cut`, `lost`, and the incidents of the run
//! (`Recovered` events: fault, when, how long until serving again).
//!
//! A request that fails while the process serving it dies is `cut`, not `lost`: it was
//! in flight on that process, and no L4 balancer can take its bytes back. It is a failed
//! request that began before a replica of its service ended in a restart incident (the
//! node saw the end then) and ended at most [`CUT_BEFORE`] before it; each such end cuts
//! at most one request per path (a path sends one request at a time). Every other
//! failure is `lost`; the command exits non-zero when any request was lost. The times
//! come from the nodes' clocks and this machine's: they are assumed in step (NTP).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use orch_agent::runtime::now_unix_ms;
use orch_api::events::EventKind;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use super::chaos::HELPER_PREFIX;
use crate::client::explain;

/// A request that ended this long before a replica's end was seen may have been on it
/// (the kill, the process's death and the node noticing take a moment).
pub const CUT_BEFORE: Duration = Duration::from_millis(250);
/// One request's limit (connect and answer), on both paths.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The services to send requests to (each needs a TCP port; HTTP is spoken).
    #[arg(required = true, value_name = "SERVICE")]
    pub services: Vec<String>,
    /// How long requests flow.
    #[arg(long, default_value = "30", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Requests a second on each path (the VIP; the node ports, all nodes together).
    #[arg(long, default_value = "10", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rate: u32,
    /// The helper's image: any with busybox's sh, wget, grep, timeout and sleep.
    #[arg(long, default_value = "127.0.0.1:5000/orch/demo-web:1.0")]
    pub helper_image: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: VerifyFormat,
}

/// The two ways a request reaches a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    Vip,
    NodePort,
}

impl Path {
    fn as_str(self) -> &'static str {
        match self {
            Path::Vip => "vip",
            Path::NodePort => "nodePort",
        }
    }
}

/// One request and how it went, with its times (unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub service: String,
    pub path: Path,
    pub began_ms: i64,
    pub ended_ms: i64,
    pub answered: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub sent: u64,
    pub answered: u64,
    pub cut: u64,
    pub lost: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentOut {
    pub kind: String,
    /// The replica or node and what happened to it.
    pub fault: String,
    /// When (UTC, `HH:MM:SS.mmm`) and as unix ms.
    pub at: String,
    pub at_unix_ms: i64,
    pub recovered_ms: u64,
    /// The service's target (0: none).
    pub target_ms: u64,
    /// `orch chaos` injected it (a Chaos event on that replica or node just before).
    pub injected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReport {
    pub service: String,
    #[serde(flatten)]
    pub counts: Counts,
    pub paths: BTreeMap<String, Counts>,
    pub incidents: Vec<IncidentOut>,
}

fn incident_of(event: &pb::Event) -> Option<&pb::Incident> {
    (event.kind == EventKind::Recovered || event.kind == EventKind::RecoveryTargetMissed).then_some(event.incident.as_ref()).flatten()
}

/// The restart incidents (indexes into `incidents`) whose end `request` may have been
/// in flight on: it began before the end was seen and ended at most [`CUT_BEFORE`] before.
pub fn cut_by(request: &Sent, incidents: &[&pb::Incident]) -> Vec<usize> {
    let before = CUT_BEFORE.as_millis() as i64;
    (0..incidents.len())
        .filter(|&k| {
            let i = incidents[k];
            i.kind == "restart" && i.service == request.service && request.began_ms <= i.fault_unix_ms && request.ended_ms >= i.fault_unix_ms - before
        })
        .collect()
}

/// Each service's report, from the requests sent and the events of the run (incidents
/// whose fault is within `[from_ms, to_ms]`).
pub fn tally(services: &[String], requests: &[Sent], events: &[pb::Event], from_ms: i64, to_ms: i64) -> Vec<ServiceReport> {
    let incidents: Vec<&pb::Incident> =
        events.iter().filter_map(incident_of).filter(|i| (from_ms..=to_ms).contains(&i.fault_unix_ms) && services.contains(&i.service)).collect();
    let chaos: Vec<&pb::Event> = events.iter().filter(|e| e.kind == EventKind::Chaos).collect();
    services
        .iter()
        .map(|service| {
            let mut counts = Counts::default();
            let mut paths: BTreeMap<String, Counts> = BTreeMap::new();
            // Each end cuts at most one request of each path.
            let mut used: std::collections::BTreeSet<(usize, Path)> = std::collections::BTreeSet::new();
            for request in requests.iter().filter(|r| r.service == *service) {
                let was_cut = !request.answered && cut_by(request, &incidents).into_iter().any(|k| used.insert((k, request.path)));
                let path = paths.entry(request.path.as_str().to_owned()).or_default();
                for c in [&mut counts, path] {
                    c.sent += 1;
                    if request.answered {
                        c.answered += 1;
                    } else if was_cut {
                        c.cut += 1;
                    } else {
                        c.lost += 1;
                    }
                }
            }
            let mut mine: Vec<&&pb::Incident> = incidents.iter().filter(|i| i.service == *service).collect();
            mine.sort_by_key(|i| i.fault_unix_ms);
            let incidents = mine
                .into_iter()
                .map(|i| {
                    let object = if i.kind == "restart" { format!("replica/{}", i.replica) } else { format!("node/{}", i.node) };
                    let injected = chaos.iter().any(|e| e.object == object && (i.fault_unix_ms - 2000..=i.fault_unix_ms + 100).contains(&e.timestamp_unix_ms));
                    let who = if i.kind == "restart" { format!("replica {}: ", i.replica) } else { String::new() };
                    IncidentOut {
                        kind: i.kind.clone(),
                        fault: format!("{who}{}", i.fault),
                        at: super::why::clock(i.fault_unix_ms),
                        at_unix_ms: i.fault_unix_ms,
                        recovered_ms: i.recovered_ms,
                        target_ms: i.target_ms,
                        injected,
                    }
                })
                .collect();
            ServiceReport { service: service.clone(), counts, paths, incidents }
        })
        .collect()
}

/// The reports as people read them.
pub fn render(reports: &[ServiceReport]) -> String {
    let mut text = format!("{:<20} {:<9} {:>6} {:>9} {:>5} {:>5}\n", "SERVICE", "PATH", "SENT", "ANSWERED", "CUT", "LOST");
    for report in reports {
        for (path, c) in &report.paths {
            text.push_str(&format!("{:<20} {:<9} {:>6} {:>9} {:>5} {:>5}\n", report.service, path, c.sent, c.answered, c.cut, c.lost));
        }
    }
    for report in reports.iter().filter(|r| !r.incidents.is_empty()) {
        text.push_str(&format!("\nincidents of {}:\n", report.service));
        for i in &report.incidents {
            let target = if i.target_ms > 0 { format!(" (target {} ms)", i.target_ms) } else { String::new() };
            let injected = if i.injected { " [orch chaos]" } else { "" };
            text.push_str(&format!("  {}  {:<10} {}{injected}: serving again after {} ms{target}\n", i.at, i.kind, i.fault, i.recovered_ms));
        }
    }
    text
}

/// The helper's shell loop (busybox's `timeout`, not `wget -T`, which crashes Debian
/// 12's busybox-static): `rounds` rounds, each one request to every target (`NAME=HOST:PORT`)
/// then a pause; a line per request (`orch-verify NAME ok|lost`), `orch-verify done` at the end.
pub fn helper_script(targets: &[(String, String)], rounds: u64, rate: u32) -> String {
    let list: Vec<String> = targets.iter().map(|(name, address)| format!("{name}={address}")).collect();
    let pause = 1.0 / f64::from(rate.max(1));
    format!(
        "n=0; while [ $n -lt {rounds} ]; do for t in {}; do \
         if timeout {} wget -S -q -O /dev/null \"http://${{t#*=}}/\" 2>&1 | grep -q 'HTTP/1\\.[01] [1-4]'; \
         then echo \"orch-verify ${{t%%=*}} ok\"; else echo \"orch-verify ${{t%%=*}} lost\"; fi; done; \
         n=$((n+1)); sleep {pause:.3}; done; echo orch-verify done",
        list.join(" "),
        REQUEST_TIMEOUT.as_secs()
    )
}

/// The helper's lines, timed by the log (`<RFC 3339> orch-verify NAME ok|lost`): each
/// request began after the line before it; whether `done` was seen.
pub fn helper_requests(text: &str) -> (Vec<Sent>, bool) {
    let mut requests = Vec::new();
    let mut previous: Option<i64> = None;
    let mut done = false;
    for line in text.lines() {
        let Some((stamp, rest)) = line.split_once(' ') else { continue };
        let Some(nanos) = orch_agent::runtime::output::parse_rfc3339(stamp) else { continue };
        let ended_ms = i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX);
        let mut words = rest.split_whitespace();
        if words.next() != Some("orch-verify") {
            continue;
        }
        match (words.next(), words.next()) {
            (Some("done"), None) => done = true,
            (Some(service), Some(outcome @ ("ok" | "lost"))) => {
                let began_ms = previous.unwrap_or(ended_ms - REQUEST_TIMEOUT.as_millis() as i64);
                requests.push(Sent { service: service.to_owned(), path: Path::Vip, began_ms, ended_ms, answered: outcome == "ok" });
            }
            _ => continue,
        }
        previous = Some(ended_ms);
    }
    (requests, done)
}

/// One HTTP request from here: answered when a status line below 500 comes back in time.
async fn http_get(address: String) -> bool {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(&address).await.ok()?;
        stream.write_all(format!("GET / HTTP/1.0\r\nHost: {address}\r\nUser-Agent: orch-verify\r\n\r\n").as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        // "HTTP/1.1 200"
        let status: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
        (head.starts_with(b"HTTP/1.") && status < 500).then_some(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.ok().flatten().is_some()
}

/// Requests through the node ports of `targets` (service → port), `rate` a second each,
/// spread over the ready nodes (looked up again every second, as a front balancer's
/// health checks would), until `until`.
async fn node_port_traffic(mut api: ApiClient<Channel>, targets: Vec<(String, u32)>, rate: u32, until: Instant) -> Vec<Sent> {
    let mut sent = Vec::new();
    let mut addresses: Vec<String> = Vec::new();
    let mut looked_up: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    // A request that waited out its timeout delays the next ones; no burst after it.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turn = 0usize;
    while Instant::now() < until {
        tick.tick().await;
        if looked_up.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            if let Ok(nodes) = api.list_nodes(pb::ListNodesRequest {}).await {
                addresses = nodes.into_inner().nodes.iter().filter(|n| n.ready).filter_map(|n| n.info.as_ref().map(|i| i.address.clone())).collect();
            }
            looked_up = Some(Instant::now());
        }
        if addresses.is_empty() {
            continue;
        }
        let node = &addresses[turn % addresses.len()];
        turn += 1;
        for (service, port) in &targets {
            let began_ms = now_unix_ms();
            let answered = http_get(format!("{node}:{port}")).await;
            sent.push(Sent { service: service.clone(), path: Path::NodePort, began_ms, ended_ms: now_unix_ms(), answered });
        }
    }
    sent
}

/// A name for the helper service: `orch-verify-` and 5 hex digits.
fn helper_name() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{HELPER_PREFIX}{:05x}", (nanos ^ std::process::id()) & 0xfffff)
}

fn helper_manifest(name: &str, image: &str, script: &str) -> anyhow::Result<String> {
    let quoted = serde_json::to_string(script)?;
    let image = serde_json::to_string(image)?;
    Ok(format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  image: {image}\n  \
         command: [\"sh\", \"-c\", {quoted}]\n  restartPolicy: Never\n  rebalance: false\n  \
         resources:\n    requests: {{cpu: 10m, memory: 8Mi}}\n    limits: {{memory: 32Mi, pids: 32}}\n"
    ))
}

/// The helper's replica once it runs (or why it will not).
async fn helper_running(api: &mut ApiClient<Channel>, name: &str) -> anyhow::Result<pb::Replica> {
    let start = Instant::now();
    loop {
        let replicas = api.list_replicas(pb::ListReplicasRequest { service: name.to_owned() }).await.map_err(explain)?.into_inner().replicas;
        if let Some(replica) = replicas.first() {
            let status = replica.status.clone().unwrap_or_default();
            match status.phase() {
                pb::ReplicaPhase::Running | pb::ReplicaPhase::Succeeded => return Ok(replica.clone()),
                pb::ReplicaPhase::Failed => anyhow::bail!("the helper {} failed: {}", replica.id, status.reason),
                _ => {}
            }
        }
        if start.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the helper {name} is not running after 120 s (`orch describe service {name}`)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The helper's output until its `done` line (or `limit`).
async fn helper_output(api: &mut ApiClient<Channel>, name: &str, limit: Duration) -> anyhow::Result<String> {
    let request = pb::LogsRequest { replica: name.to_owned(), follow: true, timestamps: true, ..Default::default() };
    let mut stream = api.logs(request).await.map_err(explain)?.into_inner();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(chunk))) => {
                // Only the new part (and the line it may finish) is looked at.
                let from = text.rfind('\n').map_or(0, |n| n + 1);
                text.push_str(&String::from_utf8_lossy(&chunk.data));
                if text[from..].lines().any(|l| l.ends_with(" orch-verify done")) {
                    return Ok(text);
                }
            }
            Ok(Ok(None)) | Err(_) => return Ok(text),
            Ok(Err(status)) => return Err(explain(status)),
        }
    }
}

/// Waits (at most 30 s) until every replica of `services` is ready again, so that the
/// run's last incidents are recorded.
async fn settled(api: &mut ApiClient<Channel>, services: &[String]) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let mut all = true;
        for name in services {
            let wanted = api.get_service(pb::GetServiceRequest { name: name.clone() }).await.map_err(explain)?.into_inner();
            let count = wanted.spec.as_ref().map_or(0, |s| s.replicas);
            let replicas = api.list_replicas(pb::ListReplicasRequest { service: name.clone() }).await.map_err(explain)?.into_inner().replicas;
            let ready = replicas.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.ready)).count();
            all &= u32::try_from(ready).unwrap_or(0) >= count;
        }
        if all {
            // The last Recovered events ride the nodes' next reports.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// The run itself, helper started; the caller removes the helper whatever happens.
async fn run(
    api: &mut ApiClient<Channel>,
    args: &VerifyArgs,
    helper: &str,
    vip_targets: &[(String, String)],
    node_ports: Vec<(String, u32)>,
) -> anyhow::Result<()> {
    let replica = helper_running(api, helper).await?;
    let from_ms = now_unix_ms();
    let duration = Duration::from_secs(args.duration);
    let until = Instant::now() + duration;
    let ports = tokio::spawn(node_port_traffic(api.clone(), node_ports, args.rate, until));
    let output = if vip_targets.is_empty() { String::new() } else { helper_output(api, helper, duration + Duration::from_secs(30)).await? };
    let mut requests = ports.await.map_err(|e| anyhow::anyhow!("the node port requests: {e}"))?;
    let (through_vip, done) = helper_requests(&output);
    if !vip_targets.is_empty() && !done {
        eprintln!("warning: the helper {} on node {} stopped before the end: its VIP results cover the time until then", replica.id, replica.node);
    }
    requests.extend(through_vip);
    let to_ms = now_unix_ms();
    settled(api, &args.services).await?;
    let events = api.list_events(pb::ListEventsRequest { object: String::new() }).await.map_err(explain)?.into_inner().events;
    let reports = tally(&args.services, &requests, &events, from_ms, to_ms);
    match args.output {
        VerifyFormat::Table => print!("{}", render(&reports)),
        VerifyFormat::Json => println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "durationSeconds": args.duration, "services": reports }))?),
    }
    let lost: u64 = reports.iter().map(|r| r.counts.lost).sum();
    let sent: u64 = reports.iter().map(|r| r.counts.sent).sum();
    let silent: Vec<&str> = reports.iter().filter(|r| r.counts.sent == 0).map(|r| r.service.as_str()).collect();
    anyhow::ensure!(silent.is_empty(), "no request was sent to {} (it has neither a VIP nor a node port)", silent.join(", "));
    anyhow::ensure!(lost == 0, "{lost} of {sent} requests lost");
    Ok(())
}

pub async fn verify(mut api: ApiClient<Channel>, args: &VerifyArgs) -> anyhow::Result<()> {
    let mut vip_targets = Vec::new();
    let mut node_ports = Vec::new();
    for name in &args.services {
        let service = api.get_service(pb::GetServiceRequest { name: name.clone() }).await.map_err(explain)?.into_inner();
        let spec = service.spec.unwrap_or_default();
        let port = spec
            .ports
            .iter()
            .find(|p| p.protocol() == pb::Protocol::Tcp)
            .ok_or_else(|| anyhow::anyhow!("service {name} has no TCP port to send requests to"))?;
        if !service.vip.is_empty() {
            vip_targets.push((name.clone(), format!("{}:{}", service.vip, port.service_port)));
        }
        if port.node_port > 0 {
            node_ports.push((name.clone(), port.node_port));
        }
    }
    let helper = helper_name();
    let rounds = args.duration * u64::from(args.rate);
    let manifest = helper_manifest(&helper, &args.helper_image, &helper_script(&vip_targets, rounds, args.rate))?;
    if !vip_targets.is_empty() {
        let source = pb::ManifestSource { name: format!("orch verify ({helper})"), content: manifest };
        api.apply(pb::ApplyRequest { sources: vec![source] }).await.map_err(explain)?;
    }
    let mut running = api.clone();
    let outcome = tokio::select! {
        outcome = run(&mut running, args, &helper, &vip_targets, node_ports) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if !vip_targets.is_empty() {
        if let Err(status) = api.delete_service(pb::DeleteServiceRequest { name: helper.clone(), ..Default::default() }).await {
            eprintln!("warning: removing the helper service {helper}: {} (`orch delete service {helper}`)", status.message());
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(service: &str, path: Path, began_ms: i64, ended_ms: i64, answered: bool) -> Sent {
        Sent { service: service.into(), path, began_ms, ended_ms, answered }
    }

    fn recovered(service: &str, kind: &str, replica: &str, fault_unix_ms: i64) -> pb::Event {
        pb::Event {
            timestamp_unix_ms: fault_unix_ms + 900,
            kind: EventKind::Recovered.as_str().into(),
            object: format!("replica/{replica}"),
            message: String::new(),
            incident: Some(pb::Incident {
                service: service.into(),
                kind: kind.into(),
                fault: "killed by SIGKILL (exit code 137)".into(),
                fault_unix_ms,
                recovered_ms: 900,
                target_ms: 3000,
                replica: replica.into(),
                node: "n1".into(),
            }),
        }
    }

    #[test]
    fn a_failure_at_a_replica_s_end_is_cut_any_other_is_lost() {
        let events = vec![
            recovered("web", "restart", "web-1", 10_000),
            recovered("api", "restart", "api-1", 20_000),
            pb::Event { timestamp_unix_ms: 9_990, kind: "Chaos".into(), object: "replica/web-1".into(), ..Default::default() },
        ];
        let requests = vec![
            sent("web", Path::Vip, 9_000, 9_010, true),
            sent("web", Path::Vip, 9_990, 10_001, false),       // on the dying process: cut
            sent("web", Path::Vip, 9_995, 10_002, false),       // a second one on the same path: lost
            sent("web", Path::NodePort, 9_700, 9_800, false),   // ended 200 ms before the end was seen: cut
            sent("web", Path::NodePort, 10_010, 10_020, false), // began after the end: lost
            sent("web", Path::NodePort, 11_000, 11_002, false), // a second later: lost
            sent("web", Path::Vip, 19_990, 20_001, false),      // another service's incident: lost
        ];
        let reports = tally(&["web".into()], &requests, &events, 0, 30_000);
        assert_eq!(reports.len(), 1);
        let web = &reports[0];
        assert_eq!(web.counts, Counts { sent: 7, answered: 1, cut: 2, lost: 4 });
        assert_eq!(web.paths["vip"], Counts { sent: 4, answered: 1, cut: 1, lost: 2 });
        assert_eq!(web.paths["nodePort"], Counts { sent: 3, answered: 0, cut: 1, lost: 2 });
        assert_eq!(web.incidents.len(), 1, "only web's incidents");
        let incident = &web.incidents[0];
        assert_eq!((incident.kind.as_str(), incident.recovered_ms, incident.injected), ("restart", 900, true));
        assert_eq!(incident.fault, "replica web-1: killed by SIGKILL (exit code 137)");
        let text = render(&reports);
        assert!(text.contains("web                  vip            4         1     1     2"), "{text}");
        assert!(
            text.contains("restart    replica web-1: killed by SIGKILL (exit code 137) [orch chaos]: serving again after 900 ms (target 3000 ms)"),
            "{text}"
        );
    }

    #[test]
    fn incidents_outside_the_run_are_not_its_own() {
        let events = vec![recovered("web", "restart", "web-1", 500), recovered("web", "reschedule", "", 5_000)];
        let reports = tally(&["web".into()], &[sent("web", Path::Vip, 400, 510, false)], &events, 1_000, 9_000);
        assert_eq!(reports[0].counts.lost, 1, "a fault before the run cuts nothing of it");
        assert_eq!(reports[0].incidents.iter().map(|i| i.kind.as_str()).collect::<Vec<_>>(), ["reschedule"]);
    }

    #[test]
    fn the_helper_s_lines_become_timed_requests() {
        let text = "2026-12-07T10:00:00.100000000Z orch-verify web ok\n\
                    2026-12-07T10:00:00.250000000Z orch-verify api lost\n\
                    2026-12-07T10:00:00.300000000Z something else\n\
                    2026-12-07T10:00:00.400000000Z orch-verify done\n";
        let (requests, done) = helper_requests(text);
        assert!(done);
        let base = i64::try_from(orch_agent::runtime::output::parse_rfc3339("2026-12-07T10:00:00.000000000Z").expect("time") / 1_000_000).expect("ms");
        assert_eq!(requests, vec![sent("web", Path::Vip, base + 100 - 2000, base + 100, true), sent("api", Path::Vip, base + 100, base + 250, false)]);
        assert!(!helper_requests("2026-12-07T10:00:00.100000000Z orch-verify web ok\n").1, "no done line: stopped early");
    }

    #[test]
    fn the_helper_script_names_every_target() {
        let script = helper_script(&[("web".into(), "10.96.0.10:80".into()), ("api".into(), "10.96.0.11:8080".into())], 300, 10);
        assert!(script.starts_with("n=0; while [ $n -lt 300 ]; do for t in web=10.96.0.10:80 api=10.96.0.11:8080; do"), "{script}");
        assert!(script.contains("timeout 2 wget -S -q -O /dev/null \"http://${t#*=}/\""), "{script}");
        assert!(script.contains("sleep 0.100; done; echo orch-verify done"), "{script}");
    }
}
