//! `orch create config|secret NAME [--from-file [KEY=]PATH]… [--from-literal KEY=VALUE]…`:
//! a Config or Secret document made from files and literals, applied like any manifest
//! (the controller validates it; a Secret is sealed before it is stored).

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;
use clap::{Args, ValueEnum};
use orch_api::manifest::model::{ConfigManifest, Metadata};
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigKindArg {
    #[value(alias = "configs", alias = "cm")]
    Config,
    #[value(alias = "secrets")]
    Secret,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub kind: ConfigKindArg,
    pub name: String,
    /// A file's content under KEY (default: the file's name); repeatable.
    #[arg(long = "from-file", value_name = "[KEY=]PATH")]
    pub files: Vec<String>,
    /// A value under KEY; repeatable.
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    pub literals: Vec<String>,
}

/// The document `create` applies: every value as base64 in `binaryData`, so any bytes
/// travel as they are.
pub fn document(args: &CreateArgs) -> anyhow::Result<String> {
    let mut values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut add = |key: String, value: Vec<u8>, flag: &str| -> anyhow::Result<()> {
        orch_api::manifest::check_config_key(&key).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
        anyhow::ensure!(!values.contains_key(&key), "{flag}: key {key:?} is given twice");
        values.insert(key, value);
        Ok(())
    };
    for spec in &args.files {
        let (key, path) = match spec.split_once('=') {
            Some((key, path)) => (key.to_owned(), PathBuf::from(path)),
            None => {
                let path = PathBuf::from(spec);
                let key = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow::anyhow!("--from-file {spec:?}: no file name to use as the key"))?;
                (key, path)
            }
        };
        let content = std::fs::read(&path).map_err(|e| anyhow::anyhow!("--from-file {}: {e}", path.display()))?;
        add(key, content, &format!("--from-file {spec:?}"))?;
    }
    for literal in &args.literals {
        let (key, value) = literal.split_once('=').ok_or_else(|| anyhow::anyhow!("--from-literal: expected KEY=VALUE"))?;
        add(key.to_owned(), value.as_bytes().to_vec(), "--from-literal")?;
    }
    anyhow::ensure!(!values.is_empty(), "give at least one --from-file or --from-literal");
    let manifest = ConfigManifest {
        api_version: orch_api::manifest::API_VERSION.to_owned(),
        kind: match args.kind {
            ConfigKindArg::Config => "Config".to_owned(),
            ConfigKindArg::Secret => "Secret".to_owned(),
        },
        metadata: Metadata { name: args.name.clone(), labels: BTreeMap::new() },
        data: BTreeMap::new(),
        binary_data: values.into_iter().map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v))).collect(),
    };
    Ok(serde_yaml::to_string(&manifest)?)
}

pub async fn create(mut api: ApiClient<Channel>, args: &CreateArgs) -> anyhow::Result<()> {
    let text = document(args)?;
    // Checked here first, as `apply` does; the controller checks again.
    orch_api::manifest::load_manifests("orch create", &text)
        .map_err(|errors| anyhow::anyhow!("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
    let request = pb::ApplyRequest { sources: vec![pb::ManifestSource { name: "orch create".into(), content: text }] };
    super::apply::report(api.apply(request).await.map_err(explain)?.into_inner().results, "");
    Ok(())
}
