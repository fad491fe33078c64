//! `orch rollout status service NAME [--timeout S]`.

use std::time::Duration;

use clap::{Args, Subcommand};
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use super::apply::wait_ready;

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait until the service's replicas all run its current template and are ready.
    Status {
        /// `service`
        kind: String,
        name: String,
        #[arg(long, default_value = "300", value_name = "SECONDS")]
        timeout: u64,
    },
}

pub async fn rollout(mut api: ApiClient<Channel>, args: &RolloutArgs) -> anyhow::Result<()> {
    let RolloutCommand::Status { kind, name, timeout } = &args.command;
    if !matches!(kind.as_str(), "service" | "services" | "svc") {
        anyhow::bail!("unknown resource {kind:?}: `orch rollout status service NAME`");
    }
    wait_ready(&mut api, std::slice::from_ref(name), Duration::from_secs(*timeout)).await?;
    println!("service/{name} successfully rolled out");
    Ok(())
}
