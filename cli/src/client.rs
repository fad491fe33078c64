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

/// A `key = value` line from a config file's text (comments with `#`).
pub fn config_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// `server = HOST:PORT` from a config file's text.
pub fn server_from_config(text: &str) -> Option<String> {
    config_value(text, "server")
}

fn config_text() -> Option<String> {
    config_path().and_then(|path| std::fs::read_to_string(path).ok())
}

/// Mutual TLS towards the controller: `--tls-dir DIR` (its `ca.pem`, `admin.pem`,
/// `admin.key`), else the config file's `ca`, `cert` and `key` lines; none: plain text.
pub fn resolve_tls(tls_dir: Option<&std::path::Path>) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    if let Some(dir) = tls_dir {
        return Ok(Some(orch_api::tls::client_config(dir, "admin")?));
    }
    let Some(text) = config_text() else { return Ok(None) };
    match (config_value(&text, "ca"), config_value(&text, "cert"), config_value(&text, "key")) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some(orch_api::tls::client_config_from(ca.as_ref(), cert.as_ref(), key.as_ref())?)),
        (None, None, None) => Ok(None),
        _ => anyhow::bail!("{}: give all of ca, cert and key (or none)", config_path().map(|p| p.display().to_string()).unwrap_or_default()),
    }
}

/// The server to talk to: the flag (which clap fills from `ORCH_SERVER` too), the config
/// file, the default.
pub fn resolve_server(flag: Option<&str>) -> String {
    if let Some(server) = flag {
        return server.to_owned();
    }
    config_text().and_then(|text| server_from_config(&text)).unwrap_or_else(|| DEFAULT_SERVER.to_owned())
}

pub fn endpoint(server: &str, tls: bool) -> String {
    let address = server.split_once("://").map_or(server, |(_, rest)| rest);
    format!("{}://{address}", if tls { "https" } else { "http" })
}

pub async fn connect(server: &str, tls: Option<tonic::transport::ClientTlsConfig>) -> anyhow::Result<ApiClient<Channel>> {
    let mut endpoint = Channel::from_shared(endpoint(server, tls.is_some())).map_err(|e| anyhow::anyhow!("--server {server:?}: not an address: {e}"))?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| anyhow::anyhow!("TLS for {server}: {e}"))?;
    }
    let channel = endpoint.connect_timeout(std::time::Duration::from_secs(3)).connect().await.map_err(|_| {
        anyhow::anyhow!("cannot reach the orch controller at {server} (is it running? `orch up` starts one; --server or ORCH_SERVER point elsewhere)")
    })?;
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
        assert_eq!(endpoint("h:1", false), "http://h:1");
        assert_eq!(endpoint("http://h:1", true), "https://h:1");
        assert_eq!(config_value("ca = /p/ca.pem\ncert=/p/a.pem", "cert"), Some("/p/a.pem".into()));
    }
}
