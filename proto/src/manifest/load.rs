//! From YAML text (possibly several documents) to validated services, with each
//! problem located by source, document and field path.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::configs::{validate_config, ConfigContent};
use super::model::{ConfigManifest, ServiceManifest};
use super::validate::{key_path, validate_service};
use crate::pb;

/// A problem in a manifest: where it is and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file name the user gave, or `-` for standard input.
    pub source_name: String,
    /// 1-based index of the YAML document in the source.
    pub document: usize,
    /// Dotted field path (`spec.ports[0].containerPort`); empty when the document as a
    /// whole is at fault (YAML syntax).
    pub path: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}: ", self.source_name, self.document)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ManifestError {}

/// One validated service and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDocument {
    pub source_name: String,
    pub document: usize,
    /// The manifest as written (kept to show and to re-serialise).
    pub manifest: ServiceManifest,
    /// The checked service, defaults applied and quantities parsed.
    pub service: pb::Service,
}

/// One validated Config or Secret and where it came from.
#[derive(Clone, PartialEq)]
pub struct ConfigDocument {
    pub source_name: String,
    pub document: usize,
    pub content: ConfigContent,
}

impl std::fmt::Debug for ConfigDocument {
    // A Secret's values never reach a debug line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&String> = self.content.data.keys().collect();
        write!(
            f,
            "ConfigDocument({} document {}: {}/{} keys {keys:?})",
            self.source_name,
            self.document,
            super::configs::kind_name(self.content.kind),
            self.content.name
        )
    }
}

/// Every document of some sources, by kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    pub services: Vec<ServiceDocument>,
    pub configs: Vec<ConfigDocument>,
}

/// The services of one source ([`load_manifests`], Configs and Secrets left out).
pub fn load_services(source_name: &str, text: &str) -> Result<Vec<ServiceDocument>, Vec<ManifestError>> {
    load_manifests(source_name, text).map(|manifests| manifests.services)
}

/// Parses and validates every document of one source: Services, Configs and Secrets.
/// Empty documents (only comments, or a trailing `---`) are skipped. Returns every
/// problem found, not just the first.
pub fn load_manifests(source_name: &str, text: &str) -> Result<Manifests, Vec<ManifestError>> {
    let mut services = Vec::new();
    let mut configs = Vec::new();
    let mut errors = Vec::new();
    let error = |document: usize, path: String, message: String| ManifestError { source_name: source_name.to_owned(), document, path, message };
    if let Err((document, message)) = super::bounded::check(text) {
        return Err(vec![error(document, String::new(), message)]);
    }
    for (index, deserializer) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = index + 1;
        // A document is read once as a generic value, so that a syntax error is told
        // apart from a schema error and empty documents can be skipped.
        let value = match serde_yaml::Value::deserialize(deserializer) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                errors.push(error(document, String::new(), format!("invalid YAML: {e}")));
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        let kind = match document_kind(&value) {
            Ok(kind) => kind,
            Err(message) => {
                errors.push(error(document, message.0.to_owned(), message.1));
                continue;
            }
        };
        let problems = if kind == "Service" {
            schema::<ServiceManifest>(value).and_then(|manifest| match validate_service(&manifest) {
                Ok(service) => {
                    services.push(ServiceDocument { source_name: source_name.to_owned(), document, manifest, service });
                    Ok(())
                }
                Err(field_errors) => Err(field_errors.into_iter().map(|fe| (fe.path, fe.message)).collect()),
            })
        } else {
            let secret = kind == "Secret";
            schema::<ConfigManifest>(value)
                .map_err(|problems| if secret { problems.into_iter().map(|(path, message)| hide_secret_value(path, message)).collect() } else { problems })
                .and_then(|manifest| match validate_config(&manifest) {
                    Ok(content) => {
                        configs.push(ConfigDocument { source_name: source_name.to_owned(), document, content });
                        Ok(())
                    }
                    Err(field_errors) => Err(field_errors.into_iter().map(|fe| (fe.path, fe.message)).collect()),
                })
        };
        if let Err(problems) = problems {
            errors.extend(problems.into_iter().map(|(path, message)| error(document, path, message)));
        }
    }
    if errors.is_empty() {
        Ok(Manifests { services, configs })
    } else {
        Err(errors)
    }
}

/// Parses and validates the sources of one apply together: their sizes and alias
/// expansions share one budget, each is read by [`load_manifests`], and a service,
/// Config, Secret or node port defined twice across them is refused. Every problem
/// found, not just the first.
pub fn load_sources<'a>(sources: impl IntoIterator<Item = (&'a str, &'a str)> + Clone) -> Result<Manifests, Vec<ManifestError>> {
    if let Err((source_name, document, message)) = super::bounded::check_all(sources.clone()) {
        return Err(vec![ManifestError { source_name, document, path: String::new(), message }]);
    }
    let mut all = Manifests::default();
    let mut errors = Vec::new();
    for (name, text) in sources {
        match load_manifests(name, text) {
            Ok(manifests) => {
                all.services.extend(manifests.services);
                all.configs.extend(manifests.configs);
            }
            Err(problems) => errors.extend(problems),
        }
    }
    errors.extend(check_unique_names(&all.services));
    errors.extend(check_unique_node_ports(&all.services));
    errors.extend(check_unique_configs(&all.configs));
    if errors.is_empty() {
        Ok(all)
    } else {
        Err(errors)
    }
}

/// A document read into its kind's model; a schema error as (field path, message).
/// A Secret's schema error under `data` or `binaryData` without serde's words, which
/// quote the value (`invalid type: integer `1234``).
fn hide_secret_value(path: String, message: String) -> (String, String) {
    if path == "data" || path == "binaryData" {
        (path, "must be a mapping of keys to strings; the value is not shown".to_owned())
    } else if matches!(path.split(['.', '[']).next(), Some("data" | "binaryData")) {
        (path, "must be a string (quote a number or a boolean); the value is not shown".to_owned())
    } else {
        (path, message)
    }
}

fn schema<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<T, Vec<(String, String)>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = field_path(e.path());
        let message = e.into_inner().to_string();
        // At the top of the document there is no parent to name: a missing field is
        // named by itself (`metadata`, not an empty path).
        let path = if path.is_empty() { missing_field(&message).unwrap_or_default().to_owned() } else { path };
        vec![(path, message)]
    })
}

/// `spec.ports[0].containerPort`, keys written as [`key_path`] does.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        out = match segment {
            Segment::Seq { index } => format!("{out}[{index}]"),
            Segment::Map { key } | Segment::Enum { variant: key } => key_path(&out, key),
            // (Brackets no key path has: quoted keys are.)
            Segment::Unknown => format!("{out}[?]"),
        };
    }
    out
}

/// The field serde's "missing field `NAME`" message names.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// The kinds a document may be.
const KINDS: [&str; 3] = ["Service", "Config", "Secret"];

/// Checks `apiVersion` and `kind` before the schema, so a manifest of another kind is
/// told so instead of getting a list of unknown fields; returns the kind.
fn document_kind(value: &serde_yaml::Value) -> Result<&'static str, (&'static str, String)> {
    let serde_yaml::Value::Mapping(map) = value else {
        return Err(("", format!("expected a mapping with apiVersion, kind, metadata and spec, got {}", describe(value))));
    };
    let get = |key: &str| map.get(serde_yaml::Value::String(key.to_owned()));
    let expected = "expected \"Service\", \"Config\" or \"Secret\"";
    let kind = match get("kind") {
        None => return Err(("kind", format!("is required: {expected}"))),
        Some(serde_yaml::Value::String(kind)) => match KINDS.iter().find(|k| *k == kind) {
            Some(kind) => *kind,
            None => return Err(("kind", format!("unknown kind {kind:?}: {expected}"))),
        },
        Some(other) => return Err(("kind", format!("unknown kind {}: {expected}", describe(other)))),
    };
    match get("apiVersion") {
        None => Err(("apiVersion", format!("is required: expected {:?}", super::model::API_VERSION))),
        Some(serde_yaml::Value::String(v)) if v == super::model::API_VERSION => Ok(kind),
        Some(other) => Err(("apiVersion", format!("must be {:?}, got {}", super::model::API_VERSION, describe(other)))),
    }
}

fn describe(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::Null => "null".to_owned(),
        serde_yaml::Value::Bool(b) => format!("boolean {b}"),
        serde_yaml::Value::Number(n) => format!("number {n}"),
        serde_yaml::Value::String(s) => format!("{s:?}"),
        serde_yaml::Value::Sequence(_) => "a list".to_owned(),
        serde_yaml::Value::Mapping(_) => "a mapping".to_owned(),
        serde_yaml::Value::Tagged(t) => format!("tagged value {}", t.tag),
    }
}

/// Reports Configs or Secrets defined more than once across the given documents.
pub fn check_unique_configs(documents: &[ConfigDocument]) -> Vec<ManifestError> {
    let mut first_seen: BTreeMap<(i32, &str), &ConfigDocument> = BTreeMap::new();
    let mut errors = Vec::new();
    for doc in documents {
        let kind = super::configs::kind_name(doc.content.kind);
        if let Some(first) = first_seen.insert((doc.content.kind.into(), &doc.content.name), doc) {
            errors.push(ManifestError {
                source_name: doc.source_name.clone(),
                document: doc.document,
                path: "metadata.name".to_owned(),
                message: format!("{kind} {:?} is already defined in {} document {}", doc.content.name, first.source_name, first.document),
            });
        }
    }
    errors
}

/// Reports services defined more than once across the given documents (an apply of
/// several files must name each service once).
pub fn check_unique_names(documents: &[ServiceDocument]) -> Vec<ManifestError> {
    let mut first_seen: BTreeMap<&str, &ServiceDocument> = BTreeMap::new();
    let mut errors = Vec::new();
    for doc in documents {
        if let Some(first) = first_seen.insert(&doc.service.name, doc) {
            errors.push(ManifestError {
                source_name: doc.source_name.clone(),
                document: doc.document,
                path: "metadata.name".to_owned(),
                message: format!("service {:?} is already defined in {} document {}", doc.service.name, first.source_name, first.document),
            });
        }
    }
    errors
}

/// Reports node ports two services declare across the given documents (a node port is
/// the cluster's, one service each).
pub fn check_unique_node_ports(documents: &[ServiceDocument]) -> Vec<ManifestError> {
    let mut first_seen: BTreeMap<(i32, u32), &ServiceDocument> = BTreeMap::new();
    let mut errors = Vec::new();
    for doc in documents {
        let ports = doc.service.spec.as_ref().map(|spec| spec.ports.as_slice()).unwrap_or_default();
        for (index, port) in ports.iter().enumerate().filter(|(_, port)| port.node_port != 0) {
            match first_seen.get(&(port.protocol, port.node_port)) {
                Some(first) if first.service.name != doc.service.name => errors.push(ManifestError {
                    source_name: doc.source_name.clone(),
                    document: doc.document,
                    path: format!("spec.ports[{index}].nodePort"),
                    message: format!(
                        "{} is already used by service {:?} ({} document {})",
                        port.node_port, first.service.name, first.source_name, first.document
                    ),
                }),
                Some(_) => {}
                None => {
                    first_seen.insert((port.protocol, port.node_port), doc);
                }
            }
        }
    }
    errors
}
