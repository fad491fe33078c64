//! `orch top nodes|replicas`: CPU and memory from the cgroups, through the controller.

use clap::ValueEnum;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;
use crate::output::{mebibytes, table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopKind {
    #[value(alias = "node")]
    Nodes,
    #[value(alias = "replica")]
    Replicas,
}

pub async fn top(mut api: ApiClient<Channel>, kind: TopKind) -> anyhow::Result<()> {
    let top = api.top(pb::TopRequest {}).await.map_err(explain)?.into_inner();
    let text = match kind {
        TopKind::Replicas => {
            let rows: Vec<Vec<String>> = top
                .replicas
                .iter()
                .map(|r| {
                    vec![r.replica.clone(), r.service.clone(), r.node.clone(), format!("{}m", r.cpu_millis), mebibytes(r.memory_bytes), r.pids.to_string()]
                })
                .collect();
            table(&["NAME", "SERVICE", "NODE", "CPU", "MEMORY", "PIDS"], &rows)
        }
        TopKind::Nodes => {
            let rows: Vec<Vec<String>> = top
                .nodes
                .iter()
                .map(|n| {
                    let info = n.info.clone().unwrap_or_default();
                    let used: Vec<&pb::ReplicaUsage> = top.replicas.iter().filter(|r| r.node == info.name).collect();
                    let cpu: u64 = used.iter().map(|r| r.cpu_millis).sum();
                    let memory: u64 = used.iter().map(|r| r.memory_bytes).sum();
                    let capacity = info.capacity.unwrap_or_default();
                    let percent = |used: u64, total: u64| (used * 100).checked_div(total).map_or_else(|| "-".to_owned(), |p| format!("{p}%"));
                    vec![
                        info.name.clone(),
                        format!("{cpu}m"),
                        percent(cpu, capacity.cpu_millis),
                        mebibytes(memory),
                        percent(memory, capacity.memory_bytes),
                        used.len().to_string(),
                    ]
                })
                .collect();
            table(&["NAME", "CPU", "CPU%", "MEMORY", "MEMORY%", "REPLICAS"], &rows)
        }
    };
    print!("{text}");
    Ok(())
}
