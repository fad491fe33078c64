//! `orch logs REPLICA|SERVICE [-f] [--previous] [--tail N] [--since 5m] [--limit-bytes N]
//! [--timestamps]`, streamed through the controller from the node's agent.

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
    /// The output of the replica's previous run (its last log file).
    #[arg(short = 'p', long)]
    pub previous: bool,
    /// Only the last N lines (then follow, with -f).
    #[arg(long, value_name = "N", default_value = "0")]
    pub tail: u32,
    /// Only lines written in this last while: 30s, 5m, 2h, 1h30m.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Stop after this many bytes of output (per replica).
    #[arg(long, value_name = "BYTES")]
    pub limit_bytes: Option<u64>,
    /// Prefix each line with when it was written (RFC 3339, UTC).
    #[arg(long)]
    pub timestamps: bool,
}

/// `90s`, `5m`, `2h`, `1h30m`, `1d`: a positive duration.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("{text:?}: unknown unit {c:?} (use s, m, h or d, e.g. 5m or 1h30m)")),
        };
        let value: u64 = std::mem::take(&mut number).parse().map_err(|_| format!("{text:?}: a number must come before {c:?}"))?;
        total = value.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(|| format!("{text:?} is too long"))?;
    }
    if !number.is_empty() || total == 0 {
        return Err(format!("{text:?} is not a duration (e.g. 30s, 5m, 1h30m)"));
    }
    Ok(std::time::Duration::from_secs(total))
}

pub async fn logs(mut api: ApiClient<Channel>, args: &LogsArgs) -> anyhow::Result<()> {
    let since_unix_ms = match args.since {
        Some(since) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            i64::try_from(now.saturating_sub(since).as_millis()).unwrap_or(i64::MAX).max(1)
        }
        None => 0,
    };
    let request = pb::LogsRequest {
        replica: args.name.clone(),
        follow: args.follow,
        previous: args.previous,
        tail_lines: args.tail,
        since_unix_ms,
        limit_bytes: args.limit_bytes.unwrap_or(0),
        timestamps: args.timestamps,
    };
    let mut stream = api.logs(request).await.map_err(explain)?.into_inner();
    // Partial lines per replica of a service.
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
        // One replica's output goes straight through; a service's waits for whole lines
        // (at most 64 KiB of one, then it is cut) so that prefixes land at line starts.
        if !many(&chunk.replica) {
            stdout.write_all(&chunk.data)?;
            stdout.flush()?;
            continue;
        }
        let buffer = pending.entry(chunk.replica.clone()).or_default();
        buffer.extend_from_slice(&chunk.data);
        let complete = buffer.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let complete = if complete == 0 && buffer.len() > 64 << 10 { buffer.len() } else { complete };
        let mut lines: Vec<u8> = buffer.drain(..complete).collect();
        if lines.last().is_some_and(|b| *b != b'\n') {
            lines.push(b'\n');
        }
        stdout.write_all(&prefix_lines(&chunk.replica, &lines, many(&chunk.replica)))?;
        stdout.flush()?;
    }
    for (replica, rest) in pending {
        if !rest.is_empty() {
            stdout.write_all(&prefix_lines(&replica, &rest, true))?;
            stdout.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "5", "m", "0s", "5x", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
