//! `orch cordon NODE`, `orch uncordon NODE`, `orch drain NODE [--timeout S]
//! [--delete-local-data]`.

use std::time::{Duration, Instant};

use clap::Args;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;
use crate::output;

#[derive(Debug, Args)]
pub struct NodeArgs {
    pub node: String,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    pub node: String,
    /// Give up after this long (the node stays cordoned and draining; `orch uncordon`
    /// stops the drain).
    #[arg(long, default_value = "300", value_name = "SECONDS")]
    pub timeout: u64,
    /// Also move replicas whose local volumes are on the node: they start elsewhere with
    /// empty volumes, and the data stays on the node.
    #[arg(long)]
    pub delete_local_data: bool,
}

async fn set(api: &mut ApiClient<Channel>, node: &str, unschedulable: bool, drain: bool) -> anyhow::Result<output::NodeOut> {
    let request = pb::SetNodeSchedulingRequest { node: node.to_owned(), unschedulable, drain };
    let updated = api.set_node_scheduling(request).await.map_err(explain)?.into_inner();
    Ok(output::node(&updated))
}

pub async fn cordon(mut api: ApiClient<Channel>, args: &NodeArgs) -> anyhow::Result<()> {
    let node = set(&mut api, &args.node, true, false).await?;
    println!("node/{} cordoned ({})", node.name, node.status());
    Ok(())
}

pub async fn uncordon(mut api: ApiClient<Channel>, args: &NodeArgs) -> anyhow::Result<()> {
    let node = set(&mut api, &args.node, false, false).await?;
    println!("node/{} uncordoned ({})", node.name, node.status());
    Ok(())
}

/// The replicas bound to `node`.
async fn replicas_on(api: &mut ApiClient<Channel>, node: &str) -> anyhow::Result<Vec<pb::Replica>> {
    let replicas = api.list_replicas(pb::ListReplicasRequest::default()).await.map_err(explain)?.into_inner().replicas;
    Ok(replicas.into_iter().filter(|r| r.node == node).collect())
}

/// Cordons the node, then has the controller replace its replicas elsewhere (each
/// service's maxSurge and maxUnavailable hold: a replacement is ready before the
/// replica it replaces stops) and waits until none is left on it.
pub async fn drain(mut api: ApiClient<Channel>, args: &DrainArgs) -> anyhow::Result<()> {
    let node = &args.node;
    if !args.delete_local_data {
        let with_data: Vec<String> = replicas_on(&mut api, node)
            .await?
            .into_iter()
            .filter(|r| r.spec.as_ref().is_some_and(orch_api::manifest::has_local_volumes))
            .map(|r| format!("{} (service {})", r.id, r.service))
            .collect();
        if !with_data.is_empty() {
            anyhow::bail!(
                "node {node} holds the local volumes of {}: a drain would start them elsewhere with empty volumes (their data stays on the node); \
                 --delete-local-data to drain anyway",
                with_data.join(", ")
            );
        }
    }
    set(&mut api, node, true, true).await?;
    println!("node/{node} cordoned; draining");
    let start = Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    let mut last = String::new();
    loop {
        let left: Vec<String> = replicas_on(&mut api, node).await?.into_iter().map(|r| r.id).collect();
        if left.is_empty() {
            // Drained: it stays cordoned (as Kubernetes leaves it) until uncordoned.
            set(&mut api, node, true, false).await?;
            println!("node/{node} drained");
            return Ok(());
        }
        let text = format!("{} replica(s) left on node/{node}: {}", left.len(), left.join(", "));
        if text != last {
            println!("{text}");
            last = text;
        }
        if start.elapsed() > timeout {
            anyhow::bail!(
                "timed out after {}s draining node {node}: {} replica(s) still on it ({}); it stays cordoned and draining (`orch uncordon {node}` stops the drain)",
                args.timeout,
                left.len(),
                left.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
