//! `orch rebalance [SERVICE] [--timeout S]`: asks the leader to move replicas back
//! towards the spread the scheduler would choose today — now, without the cool-down,
//! even for a service with `spec.rebalance: false` — and follows the moves until every
//! service asked for is balanced.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use clap::Args;
use orch_api::events::EventKind;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;

#[derive(Debug, Args)]
pub struct RebalanceArgs {
    /// One service (every service when left out).
    pub service: Option<String>,
    /// Give up waiting after this long (the request stays: the leader goes on).
    #[arg(long, default_value = "300", value_name = "SECONDS")]
    pub timeout: u64,
}

pub async fn rebalance(mut api: ApiClient<Channel>, args: &RebalanceArgs) -> anyhow::Result<()> {
    let asked = api.rebalance(pb::RebalanceRequest { service: args.service.clone().unwrap_or_default() }).await.map_err(explain)?.into_inner().services;
    if asked.is_empty() {
        println!("no services");
        return Ok(());
    }
    let since = orch_agent::runtime::now_unix_ms() - 1000;
    let start = Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    let mut said: BTreeSet<(i64, String, String)> = BTreeSet::new();
    loop {
        let events = api.list_events(pb::ListEventsRequest { object: String::new() }).await.map_err(explain)?.into_inner().events;
        let mut moves: Vec<&pb::Event> = events.iter().filter(|e| e.kind == EventKind::Rebalancing && e.timestamp_unix_ms >= since).collect();
        moves.sort_by_key(|e| e.timestamp_unix_ms);
        for event in moves {
            if said.insert((event.timestamp_unix_ms, event.object.clone(), event.message.clone())) {
                println!("{}: {}", event.object, event.message);
            }
        }
        let mut waiting = Vec::new();
        for name in &asked {
            match api.get_service(pb::GetServiceRequest { name: name.clone() }).await {
                Ok(service) if service.get_ref().rebalance_requested_unix_ms > 0 => waiting.push(name.clone()),
                Ok(_) => {}
                // Deleted meanwhile: nothing to wait for.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(explain(status)),
            }
        }
        if waiting.is_empty() {
            println!("balanced: {}", asked.join(", "));
            return Ok(());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {}s: not yet balanced: {} (the request stays; `orch get events` shows the moves)", args.timeout, waiting.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
