//! The node's registry settings: credentials in Docker's `auth.json` shape, the
//! registries reached over plain HTTP, and mirrors (k3s' `registries.yaml` shape: where
//! a registry that references name is really reached), from one root-only file
//! (`--registry-config`, `/etc/orch/registries.json` by default):
//!
//! ```json
//! {
//!   "auths": {
//!     "registry.example:5000": { "auth": "base64(user:password)" },
//!     "10.0.0.5:5000": { "username": "ci", "password": "…" }
//!   },
//!   "insecure": ["10.0.0.5:5000"],
//!   "mirrors": { "127.0.0.1:5000": { "endpoint": ["10.0.0.5:5000"] } }
//! }
//! ```
//!
//! A mirror's endpoints are tried in order, then the registry itself; credentials and
//! the insecure list apply to the endpoint actually reached.
//!
//! The file holds secrets, so it is read only when root owns it and no one else may
//! read it (mode 0600 or tighter), as ssh treats its keys. It is read again for every
//! pull: credentials added to it need no agent restart. Parsing is pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

/// Where the agent looks when no `--registry-config` is given; a missing file there
/// means anonymous pulls over HTTPS (loopback registries over HTTP).
pub const DEFAULT_REGISTRY_CONFIG: &str = "/etc/orch/registries.json";

/// Why the registry settings cannot be used: the file and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryConfigError {
    #[error("registry config {path}: {message}")]
    File { path: PathBuf, message: String },
}

/// A user name and password for one registry (never printed: `Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// The parsed settings: credentials by registry (HOST[:PORT]), the registries reached
/// over plain HTTP besides loopback ones, and mirror endpoints by registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    pub auths: BTreeMap<String, Credentials>,
    pub insecure: Vec<String>,
    pub mirrors: BTreeMap<String, Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    insecure: Vec<String>,
    #[serde(default)]
    mirrors: BTreeMap<String, MirrorEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorEntry {
    endpoint: Vec<String>,
}

/// One `auths` entry as Docker, podman and skopeo write it.
#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// A registry as a reference names it: `https://index.docker.io/v1/` (Docker's key for
/// Docker Hub) is `docker.io`, a scheme and a path are dropped.
fn registry_key(key: &str) -> String {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        other => other.to_owned(),
    }
}

impl RegistryConfig {
    /// The settings in `text` (the contents of `path`, named in errors).
    pub fn parse(text: &str, path: &Path) -> Result<RegistryConfig, RegistryConfigError> {
        let error = |message: String| RegistryConfigError::File { path: path.to_owned(), message };
        let shape: FileShape = serde_json::from_str(text).map_err(|e| error(format!("not valid JSON of {{\"auths\": …, \"insecure\": […]}}: {e}")))?;
        let mut auths = BTreeMap::new();
        for (key, entry) in shape.auths {
            let credentials = match (entry.auth, entry.username, entry.password) {
                (Some(encoded), _, _) => {
                    let decoded =
                        base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|e| error(format!("auths.{key:?}.auth: not base64: {e}")))?;
                    let text = String::from_utf8(decoded).map_err(|_| error(format!("auths.{key:?}.auth: not UTF-8 once decoded")))?;
                    let (username, password) = text.split_once(':').ok_or_else(|| error(format!("auths.{key:?}.auth: expected base64 of USER:PASSWORD")))?;
                    Credentials { username: username.to_owned(), password: password.to_owned() }
                }
                (None, Some(username), Some(password)) => Credentials { username, password },
                _ => return Err(error(format!("auths.{key:?}: needs \"auth\" (base64 of USER:PASSWORD) or \"username\" and \"password\""))),
            };
            if credentials.username.is_empty() {
                return Err(error(format!("auths.{key:?}: the user name is empty")));
            }
            auths.insert(registry_key(&key), credentials);
        }
        let host_port = |text: &str| !text.is_empty() && !text.contains('/') && !text.contains(char::is_whitespace);
        for registry in &shape.insecure {
            if !host_port(registry) {
                return Err(error(format!("insecure: {registry:?} is not HOST[:PORT]")));
            }
        }
        let mut insecure = shape.insecure;
        let mut mirrors = BTreeMap::new();
        for (registry, entry) in shape.mirrors {
            let mut endpoints = Vec::new();
            for endpoint in entry.endpoint {
                // k3s writes endpoints as URLs: http:// means plain HTTP to that one.
                let (bare, plain) = match (endpoint.strip_prefix("http://"), endpoint.strip_prefix("https://")) {
                    (Some(bare), _) => (bare.trim_end_matches('/'), true),
                    (None, Some(bare)) => (bare.trim_end_matches('/'), false),
                    (None, None) => (endpoint.as_str(), false),
                };
                if !host_port(bare) {
                    return Err(error(format!("mirrors.{registry:?}.endpoint: {endpoint:?} is not HOST[:PORT] or http(s)://HOST[:PORT]")));
                }
                if plain && !insecure.iter().any(|i| i == bare) {
                    insecure.push(bare.to_owned());
                }
                endpoints.push(bare.to_owned());
            }
            if endpoints.is_empty() {
                return Err(error(format!("mirrors.{registry:?}.endpoint: no endpoints")));
            }
            mirrors.insert(registry_key(&registry), endpoints);
        }
        Ok(RegistryConfig { auths, insecure, mirrors })
    }

    /// Reads `path` when it is root's and private. A missing file is an empty config
    /// unless `required` (the path was given on the command line).
    pub fn load(path: &Path, required: bool) -> Result<RegistryConfig, RegistryConfigError> {
        use std::os::unix::fs::MetadataExt;
        let error = |message: String| RegistryConfigError::File { path: path.to_owned(), message };
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(RegistryConfig::default()),
            Err(e) => return Err(error(format!("cannot open: {e}"))),
        };
        let meta = file.metadata().map_err(|e| error(format!("cannot stat: {e}")))?;
        let mode = meta.mode() & 0o777;
        if meta.uid() != nix::unistd::geteuid().as_raw() || mode & 0o077 != 0 {
            return Err(error(format!(
                "holds registry passwords, so it must belong to root and be readable by root alone (chown root {0}; chmod 600 {0}); it is uid {1}, mode {mode:o}",
                path.display(),
                meta.uid()
            )));
        }
        let text = std::io::read_to_string(file).map_err(|e| error(format!("cannot read: {e}")))?;
        RegistryConfig::parse(&text, path)
    }

    pub fn credentials(&self, registry: &str) -> Option<&Credentials> {
        self.auths.get(&registry_key(registry))
    }

    /// Where a pull from `registry` goes, in order: its mirror endpoints, then itself.
    pub fn endpoints(&self, registry: &str) -> Vec<String> {
        let mut endpoints = self.mirrors.get(&registry_key(registry)).cloned().unwrap_or_default();
        if !endpoints.iter().any(|e| e == registry) {
            endpoints.push(registry.to_owned());
        }
        endpoints
    }
}

/// Where a store finds its registry settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// The settings file, read for every pull; `None`: anonymous, HTTPS (loopback over HTTP).
    pub path: Option<PathBuf>,
    /// The path was named on the command line: a missing file is an error.
    pub required: bool,
}

impl RegistrySettings {
    /// `--registry-config PATH` when given, else the default path if it exists.
    pub fn from_flag(flag: Option<PathBuf>) -> RegistrySettings {
        match flag {
            Some(path) => RegistrySettings { path: Some(path), required: true },
            None => RegistrySettings { path: Some(PathBuf::from(DEFAULT_REGISTRY_CONFIG)), required: false },
        }
    }

    /// The settings now (the file as it is at this moment).
    pub fn load(&self) -> Result<RegistryConfig, RegistryConfigError> {
        match &self.path {
            Some(path) => RegistryConfig::load(path, self.required),
            None => Ok(RegistryConfig::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RegistryConfig, RegistryConfigError> {
        RegistryConfig::parse(text, Path::new("/etc/orch/registries.json"))
    }

    #[test]
    fn docker_auth_entries_and_the_insecure_list() {
        let config = parse(
            r#"{"auths": {
                "registry.example:5000": {"auth": "dXNlcjpwYTpzcw=="},
                "https://index.docker.io/v1/": {"username": "hub", "password": "secret"}
              },
              "insecure": ["10.0.0.5:5000"]}"#,
        )
        .expect("valid");
        assert_eq!(config.credentials("registry.example:5000"), Some(&Credentials { username: "user".into(), password: "pa:ss".into() }));
        assert_eq!(config.credentials("docker.io").map(|c| c.username.as_str()), Some("hub"));
        assert_eq!(config.credentials("other:5000"), None);
        assert_eq!(config.insecure, ["10.0.0.5:5000"]);
        assert!(!format!("{config:?}").contains("secret") && !format!("{config:?}").contains("pa:ss"), "Debug hides passwords");
        assert_eq!(parse("{}"), Ok(RegistryConfig::default()));
    }

    #[test]
    fn mirrors_come_first_and_an_http_endpoint_is_plain() {
        let config = parse(r#"{"mirrors": {"127.0.0.1:5000": {"endpoint": ["http://10.250.0.1:5000/", "mirror.example"]}}}"#).expect("valid");
        assert_eq!(config.endpoints("127.0.0.1:5000"), ["10.250.0.1:5000", "mirror.example", "127.0.0.1:5000"]);
        assert_eq!(config.endpoints("docker.io"), ["docker.io"]);
        assert_eq!(config.insecure, ["10.250.0.1:5000"], "http:// is plain HTTP to that endpoint only");
        for (text, says) in [
            (r#"{"mirrors": {"r": {"endpoint": []}}}"#, "no endpoints"),
            (r#"{"mirrors": {"r": {"endpoint": ["ftp://x/y"]}}}"#, "is not HOST[:PORT]"),
            (r#"{"mirrors": {"r": {"endpoints": ["x"]}}}"#, "unknown field"),
        ] {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn bad_files_name_the_file_and_the_field() {
        for (text, says) in [
            ("not json", "not valid JSON"),
            (r#"{"auths": {"r:1": {"auth": "%%%"}}}"#, "auths.\"r:1\".auth: not base64"),
            (r#"{"auths": {"r:1": {"auth": "bm9jb2xvbg=="}}}"#, "expected base64 of USER:PASSWORD"),
            (r#"{"auths": {"r:1": {"username": "u"}}}"#, "needs \"auth\""),
            (r#"{"auths": {"r:1": {"username": "", "password": "p"}}}"#, "the user name is empty"),
            (r#"{"insecure": ["http://x/y"]}"#, "is not HOST[:PORT]"),
            (r#"{"credHelpers": {}}"#, "unknown field"),
        ] {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.starts_with("registry config /etc/orch/registries.json: ") && error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn only_a_private_file_of_roots_is_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("registries.json");
        assert_eq!(RegistryConfig::load(&path, false), Ok(RegistryConfig::default()), "no file: anonymous");
        assert!(RegistryConfig::load(&path, true).expect_err("named but missing").to_string().contains("cannot open"));
        std::fs::write(&path, r#"{"insecure": ["10.0.0.5:5000"]}"#).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let refused = RegistryConfig::load(&path, false).expect_err("readable by others").to_string();
        assert!(refused.contains("chmod 600") && refused.contains("mode 644"), "{refused}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(RegistryConfig::load(&path, true).map(|c| c.insecure), Ok(vec!["10.0.0.5:5000".to_owned()]));
    }
}
