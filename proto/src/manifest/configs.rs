//! `kind: Config` and `kind: Secret` documents, and what a service's template uses of
//! them. Pure: a document's text to its checked content, every problem at its field.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;

use super::model::{self, ConfigManifest, IntOrString, API_VERSION};
use super::names::check_dns_label;
use super::validate::{key_path, Errors, FieldError};
use crate::pb;

/// The most a Config or a Secret may hold, keys and values together (Kubernetes' limit).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// A checked Config or Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigContent {
    pub kind: pb::ConfigKind,
    pub name: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for ConfigContent {
    // A Secret's values never reach a log line: keys and sizes only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: BTreeMap<&str, usize> = self.data.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
        f.debug_struct("ConfigContent").field("kind", &self.kind).field("name", &self.name).field("sizes", &sizes).finish()
    }
}

impl ConfigContent {
    pub fn to_wire(&self) -> pb::ConfigData {
        pb::ConfigData { data: self.data.clone().into_iter().collect() }
    }
}

/// `config` or `secret`, as objects are named (`config/NAME`) and the CLI spells kinds.
pub fn kind_name(kind: pb::ConfigKind) -> &'static str {
    match kind {
        pb::ConfigKind::Config => "config",
        pb::ConfigKind::Secret => "secret",
    }
}

/// `config/NAME` or `secret/NAME`.
pub fn object_name(kind: pb::ConfigKind, name: &str) -> String {
    format!("{}/{name}", kind_name(kind))
}

/// A key as Kubernetes allows it in a ConfigMap or Secret: letters, digits, `-`, `_`,
/// `.`, at most 253 characters, not `.` or `..` (it names a file).
pub fn check_config_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 253 {
        return Err(format!("a key must be 1 to 253 characters, got {key:?}"));
    }
    if key == "." || key == ".." {
        return Err(format!("{key:?} is not a key"));
    }
    if !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("{key:?} must consist of letters, digits, '-', '_' or '.'"));
    }
    Ok(())
}

/// Validates a Config or Secret document.
pub fn validate_config(manifest: &ConfigManifest) -> Result<ConfigContent, Vec<FieldError>> {
    let mut errors = Errors::new();
    if manifest.api_version != API_VERSION {
        errors.push("apiVersion", format!("must be {API_VERSION:?}, got {:?}", manifest.api_version));
    }
    let kind = match manifest.kind.as_str() {
        "Config" => pb::ConfigKind::Config,
        "Secret" => pb::ConfigKind::Secret,
        other => {
            errors.push("kind", format!("must be \"Config\" or \"Secret\", got {other:?}"));
            pb::ConfigKind::Config
        }
    };
    if let Err(expected) = check_dns_label(&manifest.metadata.name) {
        errors.push("metadata.name", format!("must be {expected}"));
    }
    if !manifest.metadata.labels.is_empty() {
        errors.push("metadata.labels", "a Config or Secret has no labels in orch/v1");
    }
    let mut data = BTreeMap::new();
    for (key, value) in &manifest.data {
        if let Err(message) = check_config_key(key) {
            errors.push(key_path("data", key), message);
        }
        data.insert(key.clone(), value.clone().into_bytes());
    }
    for (key, value) in &manifest.binary_data {
        if let Err(message) = check_config_key(key) {
            errors.push(key_path("binaryData", key), message);
        }
        if manifest.data.contains_key(key) {
            errors.push(key_path("binaryData", key), "is also in data: a key is in one of them");
        }
        match base64::engine::general_purpose::STANDARD.decode(value.trim()) {
            Ok(bytes) => {
                data.insert(key.clone(), bytes);
            }
            // (The decoder's words name the offending byte: none of a Secret's is shown.)
            Err(_) => errors.push(key_path("binaryData", key), "must be base64 (standard alphabet, with padding)"),
        }
    }
    let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_CONFIG_BYTES {
        errors.push("data", format!("holds {size} bytes; at most {MAX_CONFIG_BYTES} (1 MiB) are allowed"));
    }
    errors.finish(ConfigContent { kind, name: manifest.metadata.name.clone(), data })
}

/// A file mode as written: a number up to 0777 (511) or an octal string (`"0400"`).
pub(super) fn file_mode(errors: &mut Errors, path: &str, raw: Option<&IntOrString>) -> Option<u32> {
    let mode = match raw? {
        IntOrString::Int(n) if (0..=0o777).contains(n) => u32::try_from(*n).ok(),
        IntOrString::Int(n) => {
            errors.push(path, format!("must be at most 0777 (511), got {n}; write an octal mode as a string, e.g. \"0400\""));
            None
        }
        IntOrString::Str(text) => {
            let digits = text.strip_prefix("0o").unwrap_or(text);
            match u32::from_str_radix(digits, 8) {
                Ok(mode) if mode <= 0o777 => Some(mode),
                _ => {
                    errors.push(path, format!("must be an octal mode such as \"0400\" or \"0644\", got {text:?}"));
                    None
                }
            }
        }
    };
    mode
}

/// Checks a `config:` or `secret:` volume source.
pub(super) fn validate_config_volume(errors: &mut Errors, base: &str, source: &model::ConfigVolumeSource) -> pb::ConfigVolume {
    if let Err(expected) = check_dns_label(&source.name) {
        errors.push(format!("{base}.name"), format!("must be {expected}"));
    }
    let mut paths: BTreeMap<&str, usize> = BTreeMap::new();
    let mut items = Vec::new();
    for (i, item) in source.items.iter().enumerate() {
        let at = format!("{base}.items[{i}]");
        if let Err(message) = check_config_key(&item.key) {
            errors.push(format!("{at}.key"), message);
        }
        if item.path.is_empty() || item.path.starts_with('/') || item.path.split('/').any(|p| p == ".." || p.is_empty()) || item.path.contains('\0') {
            errors.push(format!("{at}.path"), format!("must be a relative path without .. or empty components, got {:?}", item.path));
        }
        if let Some(first) = paths.insert(&item.path, i) {
            errors.push(format!("{at}.path"), format!("{:?} is already the path of {base}.items[{first}]", item.path));
        }
        let mode = file_mode(errors, &format!("{at}.mode"), item.mode.as_ref());
        items.push(pb::KeyToPath { key: item.key.clone(), path: item.path.clone(), mode });
    }
    pb::ConfigVolume { name: source.name.clone(), items, default_mode: file_mode(errors, &format!("{base}.defaultMode"), source.default_mode.as_ref()) }
}

/// The Configs and Secrets a template uses: its env's `valueFrom` and its volumes.
pub fn config_refs(spec: &pb::ServiceSpec) -> BTreeSet<(pb::ConfigKind, String)> {
    let mut refs = BTreeSet::new();
    for var in &spec.env {
        if let Some(from) = &var.value_from {
            refs.insert((from.kind(), from.name.clone()));
        }
    }
    for volume in &spec.volumes {
        match &volume.source {
            Some(pb::volume::Source::Config(config)) => {
                refs.insert((pb::ConfigKind::Config, config.name.clone()));
            }
            Some(pb::volume::Source::Secret(secret)) => {
                refs.insert((pb::ConfigKind::Secret, secret.name.clone()));
            }
            _ => {}
        }
    }
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_kubernetes_allows_them() {
        for key in ["nginx.conf", "a-b_c", "KEY", ".hidden"] {
            assert_eq!(check_config_key(key), Ok(()), "{key}");
        }
        for key in ["", ".", "..", "a/b", "a b", &"x".repeat(254)] {
            assert!(check_config_key(key).is_err(), "{key}");
        }
    }

    #[test]
    fn modes_as_numbers_or_octal_strings() {
        let mut errors = Errors::new();
        assert_eq!(file_mode(&mut errors, "m", Some(&IntOrString::Int(256))), Some(0o400));
        assert_eq!(file_mode(&mut errors, "m", Some(&IntOrString::Str("0644".into()))), Some(0o644));
        assert_eq!(file_mode(&mut errors, "m", Some(&IntOrString::Str("0o755".into()))), Some(0o755));
        assert_eq!(file_mode(&mut errors, "m", None), None);
        assert!(errors.is_empty());
        assert_eq!(file_mode(&mut errors, "m", Some(&IntOrString::Int(644))), None);
        assert_eq!(file_mode(&mut errors, "m", Some(&IntOrString::Str("rw".into()))), None);
        assert_eq!(errors.len(), 2);
    }
}
