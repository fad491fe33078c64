//! `orch delete -f FILE|DIR|- | service NAME|-l SELECTOR [--purge-volumes] | config|secret NAME |
//! node NAME [--force]`.

use std::path::PathBuf;

use clap::Args;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;
use crate::sources::read_sources;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Delete the services these manifests describe.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", conflicts_with_all = ["kind", "name"])]
    pub files: Vec<PathBuf>,
    /// `service`, `config`, `secret` or `node`
    #[arg(required_unless_present = "files")]
    pub kind: Option<String>,
    #[arg(required_unless_present_any = ["files", "selector"])]
    pub name: Option<String>,
    /// Delete the services whose labels match (`k=v`, `k!=v`, `k`, `!k`, comma-separated)
    /// instead of one by name; none matching is not an error.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", conflicts_with_all = ["name", "files"])]
    pub selector: Option<String>,
    /// Also remove the services' local volumes from every node (their data is lost);
    /// without it they stay, and a service applied again under the name finds them.
    #[arg(long)]
    pub purge_volumes: bool,
    /// `delete node`: also a node that is Ready (its agent will register it again).
    #[arg(long)]
    pub force: bool,
}

pub async fn delete(mut api: ApiClient<Channel>, args: &DeleteArgs) -> anyhow::Result<()> {
    let mut configs: Vec<(pb::ConfigKind, String)> = Vec::new();
    let names = if let Some(selector) = &args.selector {
        let selector = orch_api::selector::Selector::parse(selector)?;
        match args.kind.as_deref() {
            Some("service" | "services" | "svc") => {}
            Some(other) => anyhow::bail!("--selector: orch deletes services by their labels, not {other:?} (`orch delete service -l app=web`)"),
            None => anyhow::bail!("--selector: name the kind (`orch delete service -l {selector}`)"),
        }
        let services = api.list_services(pb::ListServicesRequest {}).await.map_err(explain)?.into_inner().services;
        let names: Vec<String> = services.into_iter().filter(|s| selector.matches(s.labels.iter())).map(|s| s.name).collect();
        if names.is_empty() {
            eprintln!("No resources found");
        }
        names
    } else if args.files.is_empty() {
        match args.kind.as_deref() {
            Some("service" | "services" | "svc") => vec![args.name.clone().unwrap_or_default()],
            Some("config" | "configs" | "cm") => {
                configs.push((pb::ConfigKind::Config, args.name.clone().unwrap_or_default()));
                Vec::new()
            }
            Some("secret" | "secrets") => {
                configs.push((pb::ConfigKind::Secret, args.name.clone().unwrap_or_default()));
                Vec::new()
            }
            Some("node" | "nodes" | "no") => {
                let node = args.name.clone().unwrap_or_default();
                let response = api.delete_node(pb::DeleteNodeRequest { node: node.clone(), force: args.force }).await.map_err(explain)?.into_inner();
                println!("node/{node} deleted: its pod subnet is free");
                if !response.replicas.is_empty() {
                    println!("its replicas are replaced elsewhere: {}", response.replicas.join(", "));
                }
                return Ok(());
            }
            Some(other) => anyhow::bail!("unknown resource {other:?}: orch deletes services, configs, secrets and nodes (`orch delete service NAME`)"),
            None => Vec::new(),
        }
    } else {
        let mut names = Vec::new();
        for source in read_sources(&args.files)? {
            let manifests = orch_api::manifest::load_manifests(&source.name, &source.text)
                .map_err(|errors| anyhow::anyhow!("invalid manifest:\n{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
            names.extend(manifests.services.into_iter().map(|d| d.service.name));
            configs.extend(manifests.configs.into_iter().map(|d| (d.content.kind, d.content.name)));
        }
        names
    };
    for (kind, name) in configs {
        api.delete_config(pb::DeleteConfigRequest { kind: kind.into(), name: name.clone() }).await.map_err(explain)?;
        println!("{} deleted", orch_api::manifest::object_name(kind, &name));
    }
    for name in names {
        let response = api.delete_service(pb::DeleteServiceRequest { name: name.clone(), purge_volumes: args.purge_volumes }).await.map_err(explain)?;
        let kept = response.into_inner().kept_volumes;
        if args.purge_volumes {
            println!("service/{name} deleted; its local volumes are being removed from every node");
        } else if kept.is_empty() {
            println!("service/{name} deleted");
        } else {
            let mut places: Vec<String> = kept.iter().map(|c| format!("slot {} on node {}", c.slot, c.node)).collect();
            places.sort();
            println!(
                "service/{name} deleted; its local volumes stay ({}): applying it again reuses them, `orch delete service {name} --purge-volumes` removes them",
                places.join(", ")
            );
        }
    }
    Ok(())
}
