//! Where the controller is and how the CLI proves who it is — the front door's client
//! side — and the one clear line a user sees when that fails.
//!
//! Servers: `--server A[,B…]` (or `ORCH_SERVER`), else the config file's current
//! context, else 127.0.0.1:7100. Credentials (mutual TLS, the `admin` certificate):
//! `--tls-dir DIR` (its `ca.pem`, `admin.pem`, `admin.key`), else the context's `ca`,
//! `cert` and `key`, else `/etc/orch/pki`, the PKI `orch up` makes on its first start
//! (readable by root and the `orch` group only). A server written `http://HOST:PORT` is
//! called in plain text, for controllers started with `--insecure-listen`.
//!
//! The config file is `$ORCH_CONFIG`, else `~/.config/orch/config.toml`:
//!
//! ```toml
//! current-context = "lab"
//! [contexts.lab]
//! servers = ["10.0.0.1:7100", "10.0.0.2:7100"]
//! ca = "/root/orch-pki/ca.pem"
//! cert = "/root/orch-pki/admin.pem"
//! key = "/root/orch-pki/admin.key"
//! ```
//!
//! The older `~/.config/orch/config` of `key = value` lines (`server`, `ca`, `cert`,
//! `key`) still works.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use serde::Deserialize;
use tonic::transport::Channel;

pub const DEFAULT_SERVER: &str = "127.0.0.1:7100";
/// Where `orch up` keeps its PKI, and where root's CLI finds its credential by itself.
pub const DEFAULT_PKI_DIR: &str = "/etc/orch/pki";

/// Where to call and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Tried in order until one answers.
    pub servers: Vec<String>,
    pub credentials: Credentials,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// The CLI's certificate and key, and the CA that signed the controller's.
    Files { ca: PathBuf, cert: PathBuf, key: PathBuf },
    /// Nothing configured: the default PKI directory's `admin` credential.
    DefaultPki(PathBuf),
}

impl Credentials {
    pub fn from_dir(dir: &Path) -> Credentials {
        let (ca, cert, key) = admin_files(dir);
        Credentials::Files { ca, cert, key }
    }
}

/// A PKI directory's CA certificate and the CLI's certificate and key in it.
fn admin_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (cert, key) = orch_api::tls::identity_paths(dir, orch_api::tls::ADMIN);
    (dir.join("ca.pem"), cert, key)
}

/// `config.toml`: named contexts and the current one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ContextsFile {
    current_context: Option<String>,
    #[serde(default)]
    contexts: BTreeMap<String, ContextEntry>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextEntry {
    #[serde(default)]
    servers: Vec<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// The config file to read: `$ORCH_CONFIG`, else `config.toml`, else the older `config`.
pub fn config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORCH_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    let dir = base.join("orch");
    let toml = dir.join("config.toml");
    Some(if toml.exists() { toml } else { dir.join("config") })
}

/// A `key = value` line from an older config file's text (comments with `#`).
fn config_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

fn split_servers(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// The context a config file's text describes (`context`: a name from `--context`).
fn context_from(path: &Path, text: &str, context: Option<&str>) -> anyhow::Result<ContextEntry> {
    let looks_like_contexts = toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("contexts") || t.contains_key("current-context"));
    if !looks_like_contexts {
        anyhow::ensure!(context.is_none(), "--context: {} has no contexts (the older `key = value` format)", path.display());
        return Ok(ContextEntry {
            servers: config_value(text, "server").map(|s| split_servers(&s)).unwrap_or_default(),
            ca: config_value(text, "ca").map(PathBuf::from),
            cert: config_value(text, "cert").map(PathBuf::from),
            key: config_value(text, "key").map(PathBuf::from),
        });
    }
    let file: ContextsFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
    let name = match context.map(str::to_owned).or(file.current_context) {
        Some(name) => name,
        None if file.contexts.len() == 1 => file.contexts.keys().next().cloned().unwrap_or_default(),
        None => anyhow::bail!("{}: no current-context, and {} contexts to choose from (--context NAME)", path.display(), file.contexts.len()),
    };
    file.contexts.get(&name).cloned().ok_or_else(|| anyhow::anyhow!("{}: context {name:?} is not defined under [contexts]", path.display()))
}

/// One context as `orch config get-contexts` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextRow {
    pub name: String,
    pub current: bool,
    pub servers: Vec<String>,
}

/// The contexts of a `config.toml` text, by name, the current one marked: the one
/// `current-context` names, or the only one when it names none (as the CLI resolves it).
pub fn list_contexts(path: &Path, text: &str) -> anyhow::Result<Vec<ContextRow>> {
    let file: ContextsFile = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
    let only = (file.contexts.len() == 1).then(|| file.contexts.keys().next().cloned()).flatten();
    let current = file.current_context.clone().or(only);
    let current = current.as_deref();
    Ok(file.contexts.into_iter().map(|(name, entry)| ContextRow { current: current == Some(name.as_str()), name, servers: entry.servers }).collect())
}

/// `text` with its `current-context` set to `name`, everything else as it was (comments,
/// order, layout): the top-level line is rewritten, or one is put first. Refused when
/// `name` is not one of its contexts, naming the file and those it has.
pub fn with_current_context(path: &Path, text: &str, name: &str) -> anyhow::Result<String> {
    let known: Vec<String> = list_contexts(path, text)?.into_iter().map(|c| c.name).collect();
    if !known.iter().any(|k| k == name) {
        let listed = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        anyhow::bail!("{}: no context {name:?} (its contexts: {listed})", path.display());
    }
    let line = format!("current-context = {}", toml::Value::String(name.to_owned()));
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // Top-level keys come before the first table header.
    let top = lines.iter().position(|l| l.trim_start().starts_with('[')).unwrap_or(lines.len());
    let is_current = |l: &str| l.split_once('=').is_some_and(|(key, _)| matches!(key.trim().trim_matches(|c| c == '"' || c == '\''), "current-context"));
    match lines[..top].iter().position(|l| is_current(l)) {
        Some(at) => lines[at] = line,
        None => lines.insert(0, line),
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') || text.is_empty() {
        out.push('\n');
    }
    // What was written must say what was meant (a value over several lines, say).
    let check: ContextsFile =
        toml::from_str(&out).map_err(|e| anyhow::anyhow!("{}: cannot rewrite current-context in place: {}", path.display(), e.message()))?;
    anyhow::ensure!(check.current_context.as_deref() == Some(name), "{}: cannot rewrite current-context in place", path.display());
    Ok(out)
}

/// Pure: the target from the flags and the config file (its path and text, if any).
pub fn resolve(server: Option<&str>, tls_dir: Option<&Path>, context: Option<&str>, config: Option<(&Path, &str)>) -> anyhow::Result<Target> {
    let entry = match config {
        Some((path, text)) => context_from(path, text, context)?,
        None => {
            anyhow::ensure!(context.is_none(), "--context: there is no config file (~/.config/orch/config.toml)");
            ContextEntry::default()
        }
    };
    let mut servers = server.map(split_servers).unwrap_or_default();
    if servers.is_empty() {
        servers = entry.servers.clone();
    }
    if servers.is_empty() {
        servers = vec![DEFAULT_SERVER.to_owned()];
    }
    let credentials = match (tls_dir, entry.ca, entry.cert, entry.key) {
        (Some(dir), ..) => Credentials::from_dir(dir),
        (None, Some(ca), Some(cert), Some(key)) => Credentials::Files { ca, cert, key },
        (None, None, None, None) => Credentials::DefaultPki(PathBuf::from(DEFAULT_PKI_DIR)),
        _ => anyhow::bail!("{}: give all of ca, cert and key (or none)", config.map(|(p, _)| p.display().to_string()).unwrap_or_default()),
    };
    Ok(Target { servers, credentials })
}

/// The target for this invocation: flags, then the config file, then the defaults.
pub fn target(server: Option<&str>, tls_dir: Option<&Path>, context: Option<&str>) -> anyhow::Result<Target> {
    let path = config_path();
    let text = match &path {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        },
        None => None,
    };
    let config = path.as_deref().zip(text.as_deref());
    resolve(server, tls_dir, context, config)
}

/// `http://` (plain text, asked for) or `https://`, and the address without a scheme.
fn endpoint(server: &str) -> (bool, String) {
    match server.split_once("://") {
        Some(("http", rest)) => (true, format!("http://{rest}")),
        Some((_, rest)) => (false, format!("https://{rest}")),
        None => (false, format!("https://{server}")),
    }
}

fn tls_config(credentials: &Credentials) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let (ca, cert, key) = credential_files(credentials)?;
    orch_api::tls::client_config_from(&ca, &cert, &key).map_err(|e| match e {
        orch_api::tls::TlsError::PermissionDenied { .. } => anyhow::anyhow!("permission denied: {e}"),
        other => other.into(),
    })
}

fn credential_files(credentials: &Credentials) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    Ok(match credentials {
        Credentials::Files { ca, cert, key } => (ca.clone(), cert.clone(), key.clone()),
        Credentials::DefaultPki(dir) => {
            anyhow::ensure!(
                dir.exists(),
                "no orch credentials: {} does not exist (`orch up` makes it on its first start); for a cluster give --tls-dir DIR or ca, cert and key in ~/.config/orch/config.toml",
                dir.display()
            );
            admin_files(dir)
        }
    })
}

fn refused_plain_text(server: &str) -> anyhow::Error {
    anyhow::anyhow!("permission denied: the orch controller at {server} refused a plain-text call (it serves mutual TLS only)")
}

fn refused_certificate(server: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "permission denied: the orch controller at {server} refused this client's certificate (only the cluster's admin credential, readable by root and the `{}` group, is accepted)",
        orch_api::tls::ADMIN_GROUP
    )
}

/// Every message in an error's source chain, lowercased.
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(error) = next {
        text.push_str(&error.to_string().to_lowercase());
        text.push('\n');
        next = error.source();
    }
    text
}

/// What a failed connection or call means to the user, when it is the front door
/// saying no: the server refused our certificate (a TLS alert), or a plain-text call
/// reached a server that speaks TLS.
fn refusal(server: &str, error: &(dyn std::error::Error + 'static)) -> Option<anyhow::Error> {
    let text = chain_text(error);
    let plain = server.starts_with("http://");
    if text.contains("received fatal alert") {
        return Some(refused_certificate(server));
    }
    if text.contains("invalid peer certificate") {
        return Some(anyhow::anyhow!("{server} is not a controller this CA signed (its certificate did not verify against the configured ca)"));
    }
    if plain && text.contains("frame with invalid size") {
        return Some(refused_plain_text(server));
    }
    None
}

/// A TLS handshake of our own with `server` (rustls, blocking, a few seconds at most),
/// then one read: what the server said, as lowercase text, or `None` when it said
/// nothing wrong. Run only to explain a call that failed vaguely: in TLS 1.3 a client's
/// handshake completes before the server has judged its certificate, and a refusal
/// arrives as an alert just after — which a gRPC call that raced it reports only as
/// "operation was canceled".
fn handshake_error(
    server: &str,
    roots: rustls::RootCertStore,
    identity: Option<(Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>)>,
) -> Option<String> {
    use std::io::{Read, Write};
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).ok()?,
        None => builder.with_no_client_auth(),
    };
    let address = server.split_once("://").map_or(server, |(_, rest)| rest);
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host).trim_matches(|c| c == '[' || c == ']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?;
    let socket = std::net::ToSocketAddrs::to_socket_addrs(address).ok()?.next()?;
    let mut tcp = std::net::TcpStream::connect_timeout(&socket, std::time::Duration::from_secs(2)).ok()?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).ok()?;
    let mut stream = rustls::Stream::new(&mut connection, &mut tcp);
    let mut byte = [0u8; 1];
    stream.flush().and_then(|()| stream.read_exact(&mut byte)).err().map(|e| e.to_string().to_lowercase())
}

/// Whether the server refuses this client's certificate (it answers with an alert).
fn server_refuses(server: &str, credentials: &Credentials) -> bool {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let identity = || -> Option<(rustls::RootCertStore, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let (ca, cert, key) = credential_files(credentials).ok()?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(&ca).ok()? {
            roots.add(certificate.ok()?).ok()?;
        }
        let chain = CertificateDer::pem_file_iter(&cert).ok()?.collect::<Result<Vec<_>, _>>().ok()?;
        Some((roots, chain, PrivateKeyDer::from_pem_file(&key).ok()?))
    };
    let Some((roots, chain, key)) = identity() else { return false };
    handshake_error(server, roots, Some((chain, key))).is_some_and(|e| e.contains("received fatal alert"))
}

/// Whether the server speaks TLS (a handshake that trusts nothing fails on its
/// certificate): what a plain-text call that failed vaguely ran into.
fn speaks_tls(server: &str) -> bool {
    handshake_error(server, rustls::RootCertStore::empty(), None).is_some_and(|e| e.contains("invalid peer certificate"))
}

/// Connects to the first server that answers and checks that it admits this client
/// (one small call), so that every command starts from an admitted connection. Any
/// controller serves every call: with several servers, one that does not accept a
/// connection (TLS included) within a second, or answer the first call within five, is
/// passed over for the next (a dead machine, a frozen process).
pub async fn connect(target: &Target) -> anyhow::Result<ApiClient<Channel>> {
    let patience = if target.servers.len() > 1 { std::time::Duration::from_secs(1) } else { std::time::Duration::from_secs(3) };
    let mut last_failure: Option<String> = None;
    for server in &target.servers {
        let (plain, url) = endpoint(server);
        let mut endpoint = Channel::from_shared(url).map_err(|e| anyhow::anyhow!("--server {server:?}: not an address: {e}"))?;
        if !plain {
            endpoint = endpoint.tls_config(tls_config(&target.credentials)?).map_err(|e| anyhow::anyhow!("TLS for {server}: {e}"))?;
        }
        let channel = match tokio::time::timeout(patience, endpoint.connect_timeout(patience).connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => match refusal(server, &error) {
                Some(refused) => return Err(refused),
                None => continue,
            },
            Err(_) => continue,
        };
        let mut api = ApiClient::new(channel);
        // No service has the empty name: NotFound or InvalidArgument is the answer of a
        // server that admitted us.
        let probe = api.get_service(pb::GetServiceRequest { name: String::new() });
        let Err(status) = (match tokio::time::timeout(patience * 5, probe).await {
            Ok(answer) => answer,
            Err(_) if target.servers.len() > 1 => continue,
            Err(_) => Err(tonic::Status::unavailable(format!("no answer within {:?}", patience * 5))),
        }) else {
            return Ok(api);
        };
        match status.code() {
            tonic::Code::NotFound | tonic::Code::InvalidArgument => return Ok(api),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => return Err(explain(status)),
            // That controller cannot serve now (its store, say): another may.
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Internal if target.servers.len() > 1 => {
                last_failure = Some(format!("{server}: {}", status.message()));
                continue;
            }
            _ => {}
        }
        if let Some(refused) = refusal(server, &status) {
            return Err(refused);
        }
        let credentials = target.credentials.clone();
        let probed = server.clone();
        let diagnosis = tokio::task::spawn_blocking(move || {
            if plain {
                speaks_tls(&probed).then(|| refused_plain_text(&probed))
            } else {
                server_refuses(&probed, &credentials).then(|| refused_certificate(&probed))
            }
        });
        if let Ok(Some(refused)) = diagnosis.await {
            return Err(refused);
        }
        return Err(anyhow::anyhow!("the orch controller at {server} failed: {}", status.message()));
    }
    if let Some(failure) = last_failure {
        anyhow::bail!("no orch controller of {} could serve (the last: {failure})", target.servers.join(", "));
    }
    anyhow::bail!(
        "cannot reach the orch controller at {} (is it running? `orch up` starts one; --server or ORCH_SERVER point elsewhere)",
        target.servers.join(", ")
    )
}

/// A gRPC error as one line.
pub fn explain(status: tonic::Status) -> anyhow::Error {
    if let Some(refused) = refusal("the server", &status) {
        return refused;
    }
    let message = status.message().trim();
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => anyhow::anyhow!("permission denied: {message}"),
        tonic::Code::Unavailable if message.contains("transport") || message.is_empty() => {
            anyhow::anyhow!("the orch controller went away: {message}")
        }
        _ => anyhow::anyhow!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &str) -> Credentials {
        Credentials::from_dir(Path::new(dir))
    }

    #[test]
    fn defaults_are_the_local_controller_and_the_default_pki() {
        let target = resolve(None, None, None, None).expect("resolve");
        assert_eq!(target, Target { servers: vec![DEFAULT_SERVER.into()], credentials: Credentials::DefaultPki(DEFAULT_PKI_DIR.into()) });
    }

    #[test]
    fn flags_win_over_the_config_file() {
        let path = Path::new("/c/config.toml");
        let text = "current-context = \"a\"\n[contexts.a]\nservers = [\"h:1\"]\nca = \"/p/ca.pem\"\ncert = \"/p/x.pem\"\nkey = \"/p/x.key\"\n";
        let target = resolve(Some("s:1, s:2"), Some(Path::new("/d")), None, Some((path, text))).expect("resolve");
        assert_eq!(target, Target { servers: vec!["s:1".into(), "s:2".into()], credentials: files("/d") });
        let target = resolve(None, None, None, Some((path, text))).expect("resolve");
        assert_eq!(target.servers, vec!["h:1".to_owned()]);
        assert_eq!(target.credentials, Credentials::Files { ca: "/p/ca.pem".into(), cert: "/p/x.pem".into(), key: "/p/x.key".into() });
    }

    #[test]
    fn contexts_are_chosen_by_name() {
        let path = Path::new("/c/config.toml");
        let text = "current-context = \"a\"\n[contexts.a]\nservers = [\"a:1\"]\n[contexts.b]\nservers = [\"b:1\", \"b:2\"]\n";
        assert_eq!(resolve(None, None, None, Some((path, text))).expect("a").servers, vec!["a:1".to_owned()]);
        assert_eq!(resolve(None, None, Some("b"), Some((path, text))).expect("b").servers, vec!["b:1".to_owned(), "b:2".to_owned()]);
        let missing = resolve(None, None, Some("c"), Some((path, text))).expect_err("no such context");
        assert!(missing.to_string().contains("context \"c\" is not defined"), "{missing}");
        let unknown = resolve(None, None, None, Some((path, "[contexts.a]\nsocket = \"/run/x\"\nservrs = []\n"))).expect_err("unknown field");
        assert!(unknown.to_string().starts_with("/c/config.toml: unknown field"), "{unknown}");
        let ambiguous = resolve(None, None, None, Some((path, "[contexts.a]\n[contexts.b]\n"))).expect_err("two contexts, none current");
        assert!(ambiguous.to_string().contains("no current-context"), "{ambiguous}");
        let partial = resolve(None, None, None, Some((path, "[contexts.a]\nca = \"/ca\"\n"))).expect_err("ca alone");
        assert!(partial.to_string().contains("give all of ca, cert and key"), "{partial}");
    }

    #[test]
    fn contexts_are_listed_and_the_current_one_rewritten_in_place() {
        let path = Path::new("/c/config.toml");
        let text = "# my clusters\ncurrent-context = \"local\"  # the default\n\n[contexts.local]\nservers = [\"127.0.0.1:7100\"]\n\n[contexts.lab]\n# three controllers\nservers = [\"10.0.0.1:7100\", \"10.0.0.2:7100\"]\nca = \"/p/ca.pem\"\ncert = \"/p/a.pem\"\nkey = \"/p/a.key\"\n";
        let rows = list_contexts(path, text).expect("list");
        assert_eq!(
            rows,
            vec![
                ContextRow { name: "lab".into(), current: false, servers: vec!["10.0.0.1:7100".into(), "10.0.0.2:7100".into()] },
                ContextRow { name: "local".into(), current: true, servers: vec!["127.0.0.1:7100".into()] },
            ]
        );
        // One context and no current-context: that one is current, as `resolve` uses it.
        let single = list_contexts(path, "[contexts.only]\nservers = [\"h:1\"]\n").expect("list");
        assert_eq!(single, vec![ContextRow { name: "only".into(), current: true, servers: vec!["h:1".into()] }]);
        let unnamed = list_contexts(path, "[contexts.a]\n[contexts.b]\n").expect("list");
        assert!(unnamed.iter().all(|c| !c.current), "two contexts, none named: none is current");
        let rewritten = with_current_context(path, text, "lab").expect("use lab");
        assert_eq!(rewritten, text.replace("current-context = \"local\"  # the default", "current-context = \"lab\""), "only that line changes");
        assert_eq!(resolve(None, None, None, Some((path, &rewritten))).expect("resolve").servers.len(), 2);
        // No current-context yet: one is put first.
        let bare = "[contexts.a]\nservers = [\"a:1\"]\n";
        assert_eq!(with_current_context(path, bare, "a").expect("use a"), format!("current-context = \"a\"\n{bare}"));
        // A key of the same name inside a table is not the top-level one.
        let nested = "[contexts.a]\nservers = []\n[contexts.b]\nservers = []\n";
        assert!(with_current_context(path, nested, "b").expect("use b").starts_with("current-context = \"b\"\n"));
        let unknown = with_current_context(path, text, "prod").expect_err("no such context").to_string();
        assert_eq!(unknown, "/c/config.toml: no context \"prod\" (its contexts: lab, local)");
        let broken = with_current_context(path, "current-context = \"a\"\n[contexts.a]\nservrs = []\n", "a").expect_err("unknown field").to_string();
        assert!(broken.starts_with("/c/config.toml: unknown field"), "{broken}");
    }

    #[test]
    fn the_older_line_format_still_works() {
        let path = Path::new("/c/config");
        let text = "# lab\nserver = 10.0.0.1:7100\nca = /p/ca.pem\ncert=/p/a.pem\nkey = \"/p/a.key\"\n";
        let target = resolve(None, None, None, Some((path, text))).expect("resolve");
        assert_eq!(target.servers, vec!["10.0.0.1:7100".to_owned()]);
        assert_eq!(target.credentials, Credentials::Files { ca: "/p/ca.pem".into(), cert: "/p/a.pem".into(), key: "/p/a.key".into() });
        assert_eq!(resolve(None, None, None, Some((path, "server=\"h:1\""))).expect("quoted").servers, vec!["h:1".to_owned()]);
    }

    #[test]
    fn plain_text_only_when_asked_for() {
        assert_eq!(endpoint("h:1"), (false, "https://h:1".to_owned()));
        assert_eq!(endpoint("https://h:1"), (false, "https://h:1".to_owned()));
        assert_eq!(endpoint("http://h:1"), (true, "http://h:1".to_owned()));
    }
}
