//! `orch get services|replicas|nodes|events|configs|secrets [NAME] [-o wide|json|yaml] [-w]`.

use std::time::Duration;

use clap::{Args, ValueEnum};
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;
use crate::output::{self, age, mebibytes, table, Format};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(alias = "service", alias = "svc")]
    Services,
    #[value(alias = "replica", alias = "rs")]
    Replicas,
    #[value(alias = "node", alias = "no")]
    Nodes,
    #[value(alias = "event", alias = "ev")]
    Events,
    #[value(alias = "config", alias = "cm")]
    Configs,
    #[value(alias = "secret")]
    Secrets,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub kind: Kind,
    /// One object (a service, replica or node name); for replicas also a service's name.
    pub name: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Format,
    /// Keep watching and print what changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// One listing, rendered.
async fn render(api: &mut ApiClient<Channel>, args: &GetArgs) -> anyhow::Result<(String, Vec<String>)> {
    let name = args.name.clone().unwrap_or_default();
    let (header, rows, machine): (Vec<&str>, Vec<Vec<String>>, Option<String>) = match args.kind {
        Kind::Services => {
            let mut services = api.list_services(pb::ListServicesRequest {}).await.map_err(explain)?.into_inner().services;
            if !name.is_empty() {
                services.retain(|s| s.name == name);
                if services.is_empty() {
                    anyhow::bail!("service {name:?} not found");
                }
            }
            let replicas = api.list_replicas(pb::ListReplicasRequest { service: String::new() }).await.map_err(explain)?.into_inner().replicas;
            let out: Vec<output::ServiceOut> = services.iter().map(|s| output::service(s, &replicas)).collect();
            let rows = out
                .iter()
                .map(|s| {
                    let ports = s
                        .ports
                        .iter()
                        .map(|p| if p.node_port > 0 { format!("{}:{}", p.service_port, p.node_port) } else { p.service_port.to_string() })
                        .collect::<Vec<_>>()
                        .join(",");
                    let mut row = vec![s.name.clone(), format!("{}/{}", s.ready_replicas, s.replicas), s.vip.clone(), ports];
                    if args.output == Format::Wide {
                        row.extend([s.image.clone(), s.generation.to_string()]);
                    }
                    row
                })
                .collect();
            let header =
                if args.output == Format::Wide { vec!["NAME", "READY", "VIP", "PORTS", "IMAGE", "GENERATION"] } else { vec!["NAME", "READY", "VIP", "PORTS"] };
            (header, rows, machine(args.output, &out)?)
        }
        Kind::Replicas => {
            let all = api.list_replicas(pb::ListReplicasRequest { service: String::new() }).await.map_err(explain)?.into_inner().replicas;
            let replicas: Vec<&pb::Replica> = all.iter().filter(|r| name.is_empty() || r.id == name || r.service == name).collect();
            if !name.is_empty() && replicas.is_empty() {
                anyhow::bail!("no replica or service named {name:?}");
            }
            let out: Vec<output::ReplicaOut> = replicas.iter().map(|r| output::replica(r)).collect();
            let rows = out
                .iter()
                .zip(&replicas)
                .map(|(r, raw)| {
                    let mut row = vec![
                        r.name.clone(),
                        if r.ready { "1/1".into() } else { "0/1".into() },
                        r.phase.clone(),
                        r.restarts.to_string(),
                        if r.node.is_empty() { "<none>".into() } else { r.node.clone() },
                        if r.ip.is_empty() { "<none>".into() } else { r.ip.clone() },
                    ];
                    if args.output == Format::Wide {
                        let started = raw.status.as_ref().map_or(0, |s| s.started_unix_ms);
                        row.extend([r.host_pid.to_string(), age(started), r.reason.clone()]);
                    }
                    row
                })
                .collect();
            let header = if args.output == Format::Wide {
                vec!["NAME", "READY", "PHASE", "RESTARTS", "NODE", "IP", "HOST PID", "AGE", "REASON"]
            } else {
                vec!["NAME", "READY", "PHASE", "RESTARTS", "NODE", "IP"]
            };
            (header, rows, machine(args.output, &out)?)
        }
        Kind::Nodes => {
            let mut nodes = api.list_nodes(pb::ListNodesRequest {}).await.map_err(explain)?.into_inner().nodes;
            if !name.is_empty() {
                nodes.retain(|n| n.info.as_ref().is_some_and(|i| i.name == name));
                if nodes.is_empty() {
                    anyhow::bail!("node {name:?} not found");
                }
            }
            let out: Vec<output::NodeOut> = nodes.iter().map(output::node).collect();
            let rows = out
                .iter()
                .map(|n| {
                    let mut row = vec![n.name.clone(), n.status(), n.address.clone(), n.pod_cidr.clone()];
                    if args.output == Format::Wide {
                        row.extend([
                            format!("{}m/{}m", n.allocated.cpu_millis, n.capacity.cpu_millis),
                            format!("{}/{}", mebibytes(n.allocated.memory_bytes), mebibytes(n.capacity.memory_bytes)),
                        ]);
                    }
                    row
                })
                .collect();
            let header = if args.output == Format::Wide {
                vec!["NAME", "STATUS", "ADDRESS", "POD CIDR", "CPU", "MEMORY"]
            } else {
                vec!["NAME", "STATUS", "ADDRESS", "POD CIDR"]
            };
            (header, rows, machine(args.output, &out)?)
        }
        Kind::Events => {
            let mut events = api.list_events(pb::ListEventsRequest { object: String::new() }).await.map_err(explain)?.into_inner().events;
            if !name.is_empty() {
                events.retain(|e| e.object == name || e.object.ends_with(&format!("/{name}")) || e.object.starts_with(&format!("replica/{name}-")));
            }
            events.sort_by_key(|e| e.timestamp_unix_ms);
            let out: Vec<output::EventOut> = events.iter().map(output::event).collect();
            let rows = out.iter().map(|e| vec![age(e.time_unix_ms), e.kind.clone(), e.object.clone(), e.message.clone()]).collect();
            (vec!["AGE", "KIND", "OBJECT", "MESSAGE"], rows, machine(args.output, &out)?)
        }
        Kind::Configs | Kind::Secrets => {
            let kind = if args.kind == Kind::Configs { pb::ConfigKind::Config } else { pb::ConfigKind::Secret };
            let mut configs = api.list_configs(pb::ListConfigsRequest { kind: kind.into() }).await.map_err(explain)?.into_inner().configs;
            if !name.is_empty() {
                configs.retain(|c| c.name == name);
                if configs.is_empty() {
                    anyhow::bail!("{} {name:?} not found", orch_api::manifest::kind_name(kind));
                }
            }
            let out: Vec<output::ConfigOut> = configs.iter().map(output::config).collect();
            let rows = out.iter().map(|c| vec![c.name.clone(), c.keys.len().to_string(), c.generation.to_string(), c.used_by.join(",")]).collect();
            (vec!["NAME", "KEYS", "GENERATION", "USED BY"], rows, machine(args.output, &out)?)
        }
    };
    match machine {
        Some(text) => Ok((text, Vec::new())),
        None => {
            let rendered = table(&header, &rows);
            let lines: Vec<String> = rendered.lines().map(str::to_owned).collect();
            Ok((rendered, lines))
        }
    }
}

fn machine<T: serde::Serialize>(format: Format, items: &[T]) -> anyhow::Result<Option<String>> {
    match format {
        Format::Json | Format::Yaml => output::render(format, items).map(Some),
        Format::Table | Format::Wide => Ok(None),
    }
}

pub async fn run(mut api: ApiClient<Channel>, args: &GetArgs) -> anyhow::Result<()> {
    let (text, mut lines) = render(&mut api, args).await?;
    print!("{text}");
    if !args.watch {
        return Ok(());
    }
    let mut last = text;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (text, now) = render(&mut api, args).await?;
        if text == last {
            continue;
        }
        if now.is_empty() {
            // Machine output: the whole document again.
            print!("{text}");
        } else {
            // A table: the rows that changed (kubectl's way), without the header again.
            for row in now.iter().skip(1).filter(|row| !lines.contains(row)) {
                println!("{row}");
            }
        }
        lines = now;
        last = text;
    }
}
