//! `orch apply -f FILE|DIR|- [--dry-run] [--wait [--timeout 120s]]`: the write side,
//! and waiting for it to take effect (`wait_ready`, which `orch rollout status` uses too).
//! `--dry-run` asks the controller what each document would do: its own validation and
//! unchanged-detection, nothing written.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;
use crate::sources::{read_sources, Source};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A manifest file, a directory of *.yaml / *.yml files, or - for standard input.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
    /// Show progress until every replica of the applied services is ready.
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// Validate and print what would be created, configured or unchanged; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value = "120", value_name = "SECONDS")]
    pub timeout: u64,
}

/// Validates locally (the controller runs the same checks), applies — or with
/// `dry_run` only asks what would change —, prints outcomes.
pub async fn apply_sources(api: &mut ApiClient<Channel>, files: &[PathBuf], dry_run: bool) -> anyhow::Result<Vec<String>> {
    let results = send(api, files, dry_run).await?;
    let suffix = if dry_run { " (dry run)" } else { "" };
    Ok(report(results, suffix))
}

/// Reads and checks the sources, and sends them to the controller's Apply.
pub async fn send(api: &mut ApiClient<Channel>, files: &[PathBuf], dry_run: bool) -> anyhow::Result<Vec<pb::ApplyResult>> {
    let sources = read_sources(files)?;
    check(&sources)?;
    send_sources(api, &sources, dry_run).await
}

/// The manifests of `sources`, checked here first (the controller runs the same checks)
/// for errors without a round trip.
pub fn check(sources: &[Source]) -> anyhow::Result<orch_api::manifest::Manifests> {
    orch_api::manifest::load_sources(sources.iter().map(|s| (s.name.as_str(), s.text.as_str()))).map_err(|problems| {
        anyhow::anyhow!("invalid manifest, nothing was applied:\n{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    })
}

/// Sends sources read and checked to the controller's Apply.
pub async fn send_sources(api: &mut ApiClient<Channel>, sources: &[Source], dry_run: bool) -> anyhow::Result<Vec<pb::ApplyResult>> {
    let sources = sources.iter().map(|s| pb::ManifestSource { name: s.name.clone(), content: s.text.clone() }).collect();
    let request = pb::ApplyRequest { sources };
    let response = if dry_run {
        match api.apply_dry_run(request).await {
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                anyhow::bail!("the controller is of an earlier build, without dry runs (ApplyDryRun): nothing was applied")
            }
            answer => answer.map_err(explain)?,
        }
    } else {
        api.apply(request).await.map_err(explain)?
    };
    Ok(response.into_inner().results)
}

/// The word an outcome prints as.
pub fn outcome_name(outcome: pb::ApplyOutcome) -> &'static str {
    match outcome {
        pb::ApplyOutcome::Created => "created",
        pb::ApplyOutcome::Configured => "configured",
        pb::ApplyOutcome::Unchanged => "unchanged",
    }
}

/// Prints `KIND/NAME created|configured|unchanged[suffix]` for each result; returns the
/// services' names.
pub fn report(results: Vec<pb::ApplyResult>, suffix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for result in results {
        let outcome = outcome_name(result.outcome());
        let kind = if result.kind.is_empty() { "service" } else { result.kind.as_str() };
        println!("{kind}/{} {outcome}{suffix}", result.service);
        if kind == "service" {
            names.push(result.service);
        }
    }
    names
}

/// How often `wait_ready` looks again in its first [`WAIT_EAGER_FOR`]: a small apply is
/// ready and routed within a few hundred milliseconds, and every poll's sleep is time
/// added to it. Each look is two calls answered from the controller's in-memory picture,
/// and once the counts are complete a `Topology` call that asks every Ready node.
const WAIT_POLL_EAGER: Duration = Duration::from_millis(10);
/// See [`WAIT_POLL_EAGER`].
const WAIT_EAGER_FOR: Duration = Duration::from_secs(2);
/// How often `wait_ready` looks again after that (a rollout that takes minutes).
const WAIT_POLL: Duration = Duration::from_millis(50);

/// The pause before `wait_ready`'s next look, `waited` into the wait. Pure.
fn wait_poll(waited: Duration) -> Duration {
    if waited < WAIT_EAGER_FOR {
        WAIT_POLL_EAGER
    } else {
        WAIT_POLL
    }
}

/// What the nodes' balancers do not route yet: for each node, each of the service's VIP
/// ports and node ports that leaves out a ready replica (`node1: 10.96.0.10:80 ->
/// 10.88.1.3:80`, `node1: node port 30080 -> …`) or still sends to another (`… still ->
/// …`). Empty when every node sends each of them to the ready replicas and no other. Pure.
pub fn unrouted(service: &pb::Service, ready: &[&pb::Replica], nodes: &[pb::NodeInspect]) -> Vec<String> {
    let ports = service.spec.as_ref().map(|s| s.ports.as_slice()).unwrap_or_default();
    if service.vip.is_empty() || ports.is_empty() {
        return Vec::new();
    }
    let mut missing = Vec::new();
    // An agent of an earlier build does not say what its balancer routes: its replicas'
    // word is all there is.
    for node in nodes.iter().filter(|n| n.reports_listeners) {
        for port in ports {
            let protocol = if port.protocol() == pb::Protocol::Udp { "udp" } else { "tcp" };
            let mut listeners = vec![(service.vip.as_str(), port.service_port, format!("{}:{}", service.vip, port.service_port))];
            if port.node_port > 0 {
                listeners.push(("", port.node_port, format!("node port {}", port.node_port)));
            }
            for (vip, number, named) in listeners {
                let listener = node.listeners.iter().find(|l| l.vip == vip && l.port == number && l.protocol == protocol);
                let wanted: Vec<String> =
                    ready.iter().map(|r| format!("{}:{}", r.status.as_ref().map(|s| s.ip.as_str()).unwrap_or_default(), port.container_port)).collect();
                for backend in &wanted {
                    if !listener.is_some_and(|l| l.backends.contains(backend)) {
                        missing.push(format!("{}: {named} -> {backend}", node.node));
                    }
                }
                // And no longer to a replica that is going (an old template's, a scaled-down one).
                for backend in listener.map(|l| l.backends.as_slice()).unwrap_or_default() {
                    if !wanted.contains(backend) {
                        missing.push(format!("{}: {named} still -> {backend}", node.node));
                    }
                }
            }
        }
    }
    missing
}

/// Waits until each service has its desired count of ready replicas, all on its current
/// template, and every node's balancer routes its VIP to each of them ("ready" means it
/// answers through the VIP); prints progress lines as counts change. A cluster whose
/// nodes cannot be asked (an agent with no node API) is taken at the replicas' word, and
/// said so.
pub async fn wait_ready(api: &mut ApiClient<Channel>, services: &[String], timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    let mut ask_nodes = true;
    loop {
        let mut lines = Vec::new();
        let mut done = true;
        let mut counted: Vec<(pb::Service, Vec<pb::Replica>)> = Vec::new();
        for name in services {
            let service = api.get_service(pb::GetServiceRequest { name: name.clone() }).await.map_err(explain)?.into_inner();
            let desired = service.spec.as_ref().map_or(0, |s| s.replicas);
            let replicas = api.list_replicas(pb::ListReplicasRequest { service: name.clone() }).await.map_err(explain)?.into_inner().replicas;
            let current: Vec<&pb::Replica> = replicas.iter().filter(|r| r.spec_hash == service.spec_hash).collect();
            let ready = current.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.ready)).count();
            let old = replicas.len() - current.len();
            if service.paused && old > 0 {
                anyhow::bail!("service/{name}'s rollout is paused with {old} replica(s) on an older template: `orch rollout resume service {name}` rolls it");
            }
            let pending: Vec<String> =
                replicas.iter().filter_map(|r| r.status.as_ref().filter(|s| !s.reason.is_empty()).map(|s| format!("{}: {}", r.id, s.reason))).collect();
            let mut line = format!("service/{name}: {ready}/{desired} ready");
            if old > 0 {
                line.push_str(&format!(", {old} old replica(s) still running"));
            }
            if let Some(reason) = pending.first() {
                line.push_str(&format!(" ({reason})"));
            }
            lines.push(line);
            let complete = ready == desired as usize && old == 0 && replicas.len() == desired as usize;
            done &= complete;
            if complete {
                counted.push((service, replicas));
            }
        }
        if done && ask_nodes && counted.iter().any(|(s, _)| !s.vip.is_empty()) {
            match api.topology(pb::TopologyRequest {}).await {
                Ok(topology) => {
                    let nodes = topology.into_inner().nodes;
                    for ((service, replicas), line) in counted.iter().zip(lines.iter_mut()) {
                        let ready: Vec<&pb::Replica> = replicas.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.ready)).collect();
                        let missing = unrouted(service, &ready, &nodes);
                        if let Some(first) = missing.first() {
                            line.push_str(&format!(" (not routed yet: {first})"));
                            done = false;
                        }
                    }
                }
                Err(status) => {
                    eprintln!("note: cannot ask the nodes' balancers ({}): ready as the replicas report", status.message());
                    ask_nodes = false;
                }
            }
        }
        let text = lines.join("\n");
        if text != last {
            println!("{text}");
            last = text;
        }
        if done {
            return Ok(());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {}s waiting for {} to be ready", timeout.as_secs(), services.join(", "));
        }
        tokio::time::sleep(wait_poll(start.elapsed())).await;
    }
}

pub async fn apply(mut api: ApiClient<Channel>, args: &ApplyArgs) -> anyhow::Result<()> {
    let names = apply_sources(&mut api, &args.files, args.dry_run).await?;
    if args.wait {
        wait_ready(&mut api, &names, Duration::from_secs(args.timeout)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_looks_often_at_first_then_less() {
        let table = [
            (Duration::ZERO, WAIT_POLL_EAGER),
            (Duration::from_millis(1999), WAIT_POLL_EAGER),
            (WAIT_EAGER_FOR, WAIT_POLL),
            (Duration::from_secs(600), WAIT_POLL),
        ];
        for (waited, want) in table {
            assert_eq!(wait_poll(waited), want, "{waited:?} into the wait");
        }
    }

    fn service(vip: &str) -> pb::Service {
        let port = pb::ServicePort { name: "http".into(), container_port: 8080, service_port: 80, node_port: 0, protocol: pb::Protocol::Tcp.into() };
        pb::Service { vip: vip.into(), spec: Some(pb::ServiceSpec { ports: vec![port], ..Default::default() }), ..Default::default() }
    }

    fn replica(ip: &str) -> pb::Replica {
        pb::Replica { status: Some(pb::ReplicaStatus { ready: true, ip: ip.into(), ..Default::default() }), ..Default::default() }
    }

    fn node(name: &str, vip: &str, port: u32, backends: &[&str]) -> pb::NodeInspect {
        let listener = pb::BalancerListener { vip: vip.into(), port, protocol: "tcp".into(), backends: backends.iter().map(|b| (*b).to_owned()).collect() };
        pb::NodeInspect { node: name.into(), listeners: vec![listener], reports_listeners: true, ..Default::default() }
    }

    #[test]
    fn a_service_is_routed_when_every_node_sends_its_vip_to_every_ready_replica() {
        let (a, b) = (replica("10.88.0.2"), replica("10.88.1.2"));
        let both = ["10.88.0.2:8080", "10.88.1.2:8080"];
        let table: [(&str, Vec<pb::NodeInspect>, Vec<&str>); 6] = [
            ("10.96.0.10", vec![node("n1", "10.96.0.10", 80, &both), node("n2", "10.96.0.10", 80, &both)], vec![]),
            (
                "10.96.0.10",
                vec![node("n1", "10.96.0.10", 80, &both), node("n2", "10.96.0.10", 80, &["10.88.0.2:8080"])],
                vec!["n2: 10.96.0.10:80 -> 10.88.1.2:8080"],
            ),
            // Still routed to a replica that is going.
            (
                "10.96.0.10",
                vec![node("n1", "10.96.0.10", 80, &["10.88.0.2:8080", "10.88.0.9:8080", "10.88.1.2:8080"])],
                vec!["n1: 10.96.0.10:80 still -> 10.88.0.9:8080"],
            ),
            // A node port's listener, or another port's, does not count for the VIP.
            ("10.96.0.10", vec![node("n1", "", 80, &both)], vec!["n1: 10.96.0.10:80 -> 10.88.0.2:8080", "n1: 10.96.0.10:80 -> 10.88.1.2:8080"]),
            ("10.96.0.10", vec![node("n1", "10.96.0.10", 8080, &both)], vec!["n1: 10.96.0.10:80 -> 10.88.0.2:8080", "n1: 10.96.0.10:80 -> 10.88.1.2:8080"]),
            // No VIP: nothing to route.
            ("", vec![node("n1", "10.96.0.10", 80, &[])], vec![]),
        ];
        for (vip, nodes, want) in table {
            assert_eq!(unrouted(&service(vip), &[&a, &b], &nodes), want, "{nodes:?}");
        }
        // A node port is routed on every node too.
        let mut with_node_port = service("10.96.0.10");
        if let Some(spec) = with_node_port.spec.as_mut() {
            spec.ports[0].node_port = 30080;
        }
        let mut n1 = node("n1", "10.96.0.10", 80, &both);
        assert_eq!(
            unrouted(&with_node_port, &[&a, &b], std::slice::from_ref(&n1)),
            ["n1: node port 30080 -> 10.88.0.2:8080", "n1: node port 30080 -> 10.88.1.2:8080"]
        );
        n1.listeners.push(pb::BalancerListener {
            vip: String::new(),
            port: 30080,
            protocol: "tcp".into(),
            backends: both.iter().map(|b| (*b).to_owned()).collect(),
        });
        assert!(unrouted(&with_node_port, &[&a, &b], std::slice::from_ref(&n1)).is_empty());
        // An earlier agent, which does not report its listeners, is taken at its word.
        let earlier = pb::NodeInspect { node: "n0".into(), vips: vec!["10.96.0.10".into()], ..Default::default() };
        assert!(unrouted(&with_node_port, &[&a, &b], &[n1, earlier]).is_empty());
    }
}
