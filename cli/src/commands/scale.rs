//! `orch scale service NAME --replicas N`.

use clap::Args;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// `service`
    pub kind: String,
    pub name: String,
    #[arg(long)]
    pub replicas: u32,
}

pub async fn scale(mut api: ApiClient<Channel>, args: &ScaleArgs) -> anyhow::Result<()> {
    if !matches!(args.kind.as_str(), "service" | "services" | "svc") {
        anyhow::bail!("unknown resource {:?}: orch scales services (`orch scale service NAME --replicas N`)", args.kind);
    }
    api.scale_service(pb::ScaleServiceRequest { name: args.name.clone(), replicas: args.replicas }).await.map_err(explain)?;
    println!("service/{} scaled to {}", args.name, args.replicas);
    Ok(())
}
