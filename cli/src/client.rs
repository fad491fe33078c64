//! Where the controller is — `--server`, then `ORCH_SERVER`, then the config file
//! (`$ORCH_CONFIG`, else `~/.config/orch/config`: a `server = HOST:PORT` line), then
//! 127.0.0.1:7100 — and the one clear line a user sees when it cannot be reached.

use std::path::PathBuf;

use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

pub const DEFAULT_SERVER: &str = "127.0.0.1:7100";

pub fn config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORCH_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("orch").join("config"))
}

/// `server = HOST:PORT` from a config file's text (comments with `#`).
pub fn server_from_config(text: &str) -> Option<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "server")
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// The server to talk to: the flag (which clap fills from `ORCH_SERVER` too), the config
/// file, the default.
pub fn resolve_server(flag: Option<&str>) -> String {
    if let Some(server) = flag {
        return server.to_owned();
    }
    config_path()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| server_from_config(&text))
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
}

pub fn endpoint(server: &str) -> String {
    if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    }
}

pub async fn connect(server: &str) -> anyhow::Result<ApiClient<Channel>> {
    let channel = Channel::from_shared(endpoint(server))
        .map_err(|e| anyhow::anyhow!("--server {server:?}: not an address: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|_| anyhow::anyhow!("cannot reach the orch controller at {server} (is it running? `orch up` starts one; --server or ORCH_SERVER point elsewhere)"))?;
    Ok(ApiClient::new(channel))
}

/// A gRPC error as one line.
pub fn explain(status: tonic::Status) -> anyhow::Error {
    let message = status.message().trim();
    match status.code() {
        tonic::Code::Unavailable if message.contains("transport") || message.is_empty() => {
            anyhow::anyhow!("the orch controller went away: {message}")
        }
        _ => anyhow::anyhow!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines() {
        assert_eq!(server_from_config("# lab\nserver = 10.0.0.1:7100\n"), Some("10.0.0.1:7100".into()));
        assert_eq!(server_from_config("server=\"h:1\""), Some("h:1".into()));
        assert_eq!(server_from_config("other = x\n"), None);
        assert_eq!(endpoint("h:1"), "http://h:1");
        assert_eq!(endpoint("https://h:1"), "https://h:1");
    }
}
