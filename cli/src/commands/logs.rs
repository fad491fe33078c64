//! `orch logs REPLICA|SERVICE [-f] [--previous] [--tail N]`, through the controller from the node's agent.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Args;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A replica, or a service (every replica of it, each line prefixed with its name).
    pub name: String,
    /// Keep printing new output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The output before the log was last rotated.
    #[arg(long)]
    pub previous: bool,
    /// Only the last N lines (then follow, with -f).
    #[arg(long, value_name = "N", default_value = "0")]
    pub tail: u32,
}

pub async fn logs(mut api: ApiClient<Channel>, args: &LogsArgs) -> anyhow::Result<()> {
    let request = pb::LogsRequest { replica: args.name.clone(), follow: args.follow, previous: args.previous, tail_lines: args.tail };
    let mut stream = api.logs(request).await.map_err(explain)?.into_inner();
    // Partial lines per replica, so that prefixes land at line starts.
    let mut pending: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let prefix_lines = |replica: &str, data: &[u8], many: bool| -> Vec<u8> {
        if !many {
            return data.to_vec();
        }
        let mut out = Vec::new();
        for line in data.split_inclusive(|b| *b == b'\n') {
            out.extend_from_slice(format!("[{replica}] ").as_bytes());
            out.extend_from_slice(line);
        }
        out
    };
    // A service's logs (chunks naming replicas other than the name asked for) get prefixes.
    let many = |replica: &str| replica != args.name;
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.message().await.map_err(explain)? {
        let buffer = pending.entry(chunk.replica.clone()).or_default();
        buffer.extend_from_slice(&chunk.data);
        let complete = buffer.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let lines: Vec<u8> = buffer.drain(..complete).collect();
        stdout.write_all(&prefix_lines(&chunk.replica, &lines, many(&chunk.replica)))?;
        stdout.flush()?;
    }
    for (replica, rest) in pending {
        if !rest.is_empty() {
            stdout.write_all(&prefix_lines(&replica, &rest, many(&replica)))?;
            stdout.write_all(b"\n")?;
        }
    }
    Ok(())
}
