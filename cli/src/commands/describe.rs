//! `orch describe service|replica|node|config|secret NAME`: spec, status, endpoints, events and the
//! last crash (exit code or signal, OOMKilled, when, its last output lines).

use clap::{Args, ValueEnum};
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;
use crate::output::{self, age, mebibytes};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(alias = "services", alias = "svc")]
    Service,
    #[value(alias = "replicas")]
    Replica,
    #[value(alias = "nodes", alias = "no")]
    Node,
    #[value(alias = "configs", alias = "cm")]
    Config,
    #[value(alias = "secrets")]
    Secret,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    pub kind: Kind,
    pub name: String,
}

fn events_for(events: &[pb::Event], objects: &[String]) -> String {
    let mut mine: Vec<&pb::Event> = events.iter().filter(|e| objects.contains(&e.object)).collect();
    mine.sort_by_key(|e| e.timestamp_unix_ms);
    if mine.is_empty() {
        return "Events: <none>\n".into();
    }
    let mut out = String::from("Events:\n");
    for e in mine.iter().rev().take(20).rev() {
        out.push_str(&format!("  {:>5}  {:<16} {:<22} {}\n", age(e.timestamp_unix_ms), e.kind, e.object, e.message));
    }
    out
}

/// A duration in ms as people read it: `312 ms`, `41.2 s`.
fn millis_text(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// The service's recovery targets and its last 10 incidents (from the events that carry
/// them): target and actual, the missed ones marked.
fn recovery_text(name: &str, spec: &pb::ServiceSpec, events: &[pb::Event]) -> String {
    let targets = spec.recovery.unwrap_or_default();
    let mut said = Vec::new();
    if targets.restart_within_millis > 0 {
        said.push(format!("restart within {} ms", targets.restart_within_millis));
    }
    if targets.reschedule_within_seconds > 0 {
        said.push(format!("reschedule within {} s", targets.reschedule_within_seconds));
    }
    let mut text = format!("Recovery:    {}\n", if said.is_empty() { "<no targets>".to_owned() } else { said.join(", ") });
    let mut incidents: Vec<(&pb::Event, &pb::Incident)> =
        events.iter().filter_map(|e| e.incident.as_ref().filter(|i| i.service == name).map(|i| (e, i))).collect();
    incidents.sort_by_key(|(e, _)| e.timestamp_unix_ms);
    if incidents.is_empty() {
        return text + "Incidents:   <none>\n";
    }
    text.push_str(&format!("Incidents (last 10):\n  {:>5}  {:<10} {:<14} {:>9} {:>9}  {}\n", "AGE", "KIND", "WHERE", "TARGET", "ACTUAL", "FAULT"));
    for (event, incident) in incidents.iter().rev().take(10).rev() {
        let place = if incident.replica.is_empty() { incident.node.clone() } else { incident.replica.clone() };
        let target = if incident.target_ms == 0 { "-".to_owned() } else { millis_text(incident.target_ms) };
        let missed = if incident.target_ms > 0 && incident.recovered_ms > incident.target_ms { "  MISSED" } else { "" };
        text.push_str(&format!(
            "  {:>5}  {:<10} {:<14} {:>9} {:>9}  {}{missed}\n",
            age(event.timestamp_unix_ms),
            incident.kind,
            place,
            target,
            millis_text(incident.recovered_ms),
            incident.fault
        ));
    }
    text
}

fn last_crash(status: &pb::ReplicaStatus) -> String {
    let Some(code) = status.exit_code else { return "Last exit: <none>\n".into() };
    let mut out = format!(
        "Last exit:   code {code}{}{} ({} ago)\n",
        if code > 128 { format!(" (signal {})", code - 128) } else { String::new() },
        if status.oom_killed { ", OOMKilled" } else { "" },
        age(status.finished_unix_ms)
    );
    if !status.last_output.is_empty() {
        out.push_str("Last output:\n");
        for line in status.last_output.lines() {
            out.push_str(&format!("  | {line}\n"));
        }
    }
    out
}

/// A service's volumes and where its containers mount them.
fn volumes_text(spec: &pb::ServiceSpec) -> String {
    use pb::volume::Source;
    if spec.volumes.is_empty() {
        return String::new();
    }
    let mut text = String::from("Volumes:\n");
    for volume in &spec.volumes {
        let what = match &volume.source {
            Some(Source::EmptyDir(empty)) => {
                let size = if empty.size_limit_bytes > 0 { format!(", at most {}", mebibytes(empty.size_limit_bytes)) } else { String::new() };
                format!("emptyDir ({}{size})", if empty.memory { "tmpfs" } else { "node disk" })
            }
            Some(Source::HostPath(host)) => format!("hostPath {} ({:?})", host.path, host.r#type()),
            Some(Source::Local(_)) => "local (one per slot, kept on its node)".to_owned(),
            Some(Source::Config(source)) => format!("config {} (files, read-only)", source.name),
            Some(Source::Secret(source)) => format!("secret {} (files on a tmpfs, read-only)", source.name),
            None => "<unknown>".to_owned(),
        };
        text.push_str(&format!("  {:<12} {what}\n", volume.name));
    }
    text.push_str("Mounts:\n");
    for mount in &spec.volume_mounts {
        let sub = if mount.sub_path.is_empty() { String::new() } else { format!(" (subPath {})", mount.sub_path) };
        text.push_str(&format!("  {:<20} ← {}{sub}{}\n", mount.mount_path, mount.name, if mount.read_only { ", read-only" } else { "" }));
    }
    text
}

pub async fn run(mut api: ApiClient<Channel>, args: &DescribeArgs) -> anyhow::Result<()> {
    let events = api.list_events(pb::ListEventsRequest { object: String::new() }).await.map_err(explain)?.into_inner().events;
    let replicas = api.list_replicas(pb::ListReplicasRequest { service: String::new() }).await.map_err(explain)?.into_inner().replicas;
    let name = &args.name;
    let text = match args.kind {
        Kind::Service => {
            let service = api.get_service(pb::GetServiceRequest { name: name.clone() }).await.map_err(explain)?.into_inner();
            let out = output::service(&service, &replicas);
            let spec = service.spec.clone().unwrap_or_default();
            let mine: Vec<&pb::Replica> = replicas.iter().filter(|r| r.service == *name).collect();
            let mut text = format!(
                "Name:        {}\nGeneration:  {}\nSpec hash:   {}\nImage:       {}\nReplicas:    {} desired, {} ready\nVIP:         {}\n",
                service.name, service.generation, service.spec_hash, spec.image, out.replicas, out.ready_replicas, service.vip
            );
            if !service.labels.is_empty() {
                let labels: Vec<String> = service.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                text.push_str(&format!("Labels:      {}\n", labels.join(", ")));
            }
            text.push_str("Ports:\n");
            for p in &out.ports {
                text.push_str(&format!(
                    "  {:<10} {} → container {}{}\n",
                    p.name,
                    p.service_port,
                    p.container_port,
                    if p.node_port > 0 { format!(", node port {}", p.node_port) } else { String::new() }
                ));
            }
            text.push_str(&volumes_text(&spec));
            let (max_bytes, max_files) = orch_api::manifest::log_policy(spec.logs.as_ref());
            text.push_str(&format!("Logs:        {} x {max_files} files\n", orch_api::manifest::quantity::format_memory_bytes(max_bytes)));
            if !service.config_revisions.is_empty() {
                let mut used: Vec<String> = service
                    .config_revisions
                    .iter()
                    .map(|(object, revision)| if *revision == 0 { format!("{object} (missing)") } else { format!("{object} (revision {revision})") })
                    .collect();
                used.sort();
                text.push_str(&format!("Configs:     {}\n", used.join(", ")));
            }
            let ready: Vec<String> =
                mine.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.ready)).map(|r| r.status.clone().unwrap_or_default().ip).collect();
            text.push_str(&format!("Endpoints:   {}\n", if ready.is_empty() { "<none>".into() } else { ready.join(", ") }));
            text.push_str("Replicas:\n");
            for r in &mine {
                let o = output::replica(r);
                let slot = r.slot.map_or(String::new(), |n| format!(" slot={n}"));
                text.push_str(&format!("  {:<22} {:<11} ready={:<5} restarts={:<3} node={} ip={}{slot}\n", o.name, o.phase, o.ready, o.restarts, o.node, o.ip));
            }
            text.push_str(&recovery_text(name, &spec, &events));
            let mut objects = vec![format!("service/{name}")];
            objects.extend(mine.iter().map(|r| format!("replica/{}", r.id)));
            text + &events_for(&events, &objects)
        }
        Kind::Replica => {
            let replica = replicas.iter().find(|r| r.id == *name).ok_or_else(|| anyhow::anyhow!("replica {name:?} not found"))?;
            let status = replica.status.clone().unwrap_or_default();
            let o = output::replica(replica);
            let mut text = format!(
                "Name:        {}\nService:     {}\nNode:        {}\nPhase:       {}\nReady:       {}\nRestarts:    {}\nIP:          {}\nHost PID:    {}\nStarted:     {} ago\nSpec hash:   {}\n",
                o.name,
                o.service,
                if o.node.is_empty() { "<none>" } else { &o.node },
                o.phase,
                o.ready,
                o.restarts,
                o.ip,
                o.host_pid,
                age(status.started_unix_ms),
                replica.spec_hash
            );
            if let Some(slot) = replica.slot {
                text.push_str(&format!("Slot:        {slot}\n"));
            }
            if !o.reason.is_empty() {
                text.push_str(&format!("Reason:      {}\n", o.reason));
            }
            text.push_str(&last_crash(&status));
            text + &events_for(&events, &[format!("replica/{name}")])
        }
        Kind::Config | Kind::Secret => {
            let kind = if args.kind == Kind::Config { pb::ConfigKind::Config } else { pb::ConfigKind::Secret };
            let configs = api.list_configs(pb::ListConfigsRequest { kind: kind.into() }).await.map_err(explain)?.into_inner().configs;
            let what = orch_api::manifest::kind_name(kind);
            let info = configs.iter().find(|c| c.name == *name).ok_or_else(|| anyhow::anyhow!("{what} {name:?} not found"))?;
            let out = output::config(info);
            let mut text = format!(
                "Name:        {}\nKind:        {what}\nGeneration:  {} (revision {})\nUsed by:     {}\nData:\n",
                out.name,
                out.generation,
                out.revision,
                if out.used_by.is_empty() { "<none>".to_owned() } else { out.used_by.join(", ") }
            );
            for (key, size) in &out.keys {
                match out.data.as_ref().and_then(|d| d.get(key)) {
                    Some(value) if value.len() <= 200 && !value.contains('\n') => text.push_str(&format!("  {key} ({size} bytes): {value}\n")),
                    _ => text.push_str(&format!("  {key} ({size} bytes)\n")),
                }
            }
            text
        }
        Kind::Node => {
            let nodes = api.list_nodes(pb::ListNodesRequest {}).await.map_err(explain)?.into_inner().nodes;
            let node = nodes.iter().find(|n| n.info.as_ref().is_some_and(|i| i.name == *name)).ok_or_else(|| anyhow::anyhow!("node {name:?} not found"))?;
            let o = output::node(node);
            let mut text = format!(
                "Name:        {}\nAddress:     {}\nStatus:      {}\nPod CIDR:    {}\nCPU:         {}m of {}m allocated\nMemory:      {} of {} allocated\n",
                o.name,
                o.address,
                o.status(),
                o.pod_cidr,
                o.allocated.cpu_millis,
                o.capacity.cpu_millis,
                mebibytes(o.allocated.memory_bytes),
                mebibytes(o.capacity.memory_bytes)
            );
            let labels = node.info.as_ref().map(|i| i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>()).unwrap_or_default();
            if !labels.is_empty() {
                text.push_str(&format!("Labels:      {}\n", labels.join(", ")));
            }
            if !o.conditions.is_empty() {
                text.push_str("Conditions:\n");
                for condition in &o.conditions {
                    text.push_str(&format!("  {:<18} {} (since {} ago)\n", condition.kind, condition.message, age(condition.since_unix_ms)));
                }
            }
            text.push_str("Replicas:\n");
            for r in replicas.iter().filter(|r| r.node == *name) {
                let o = output::replica(r);
                text.push_str(&format!("  {:<22} {:<11} ready={:<5} restarts={} ip={}\n", o.name, o.phase, o.ready, o.restarts, o.ip));
            }
            text + &events_for(&events, &[format!("node/{name}")])
        }
    };
    print!("{text}");
    Ok(())
}
