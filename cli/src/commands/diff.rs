//! `orch diff -f FILE|DIR|-`: what `orch apply` would change, object by object and field
//! by field. The controller judges the manifests as an apply would (a dry run: its
//! validation, node ports, created/configured/unchanged); the fields come from the live
//! objects and the manifests, both as validated services (`orch_api::manifest::fields`),
//! so defaults never show as differences. A Secret shows its keys and sizes, never a
//! value. Exit status as kubectl's: 0 no differences, 1 differences, 2 an error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use orch_api::manifest::fields::{config_fields, diff as field_diff, secret_fields, service_fields, unified, Fields};
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use super::apply::{check, outcome_name, send_sources};
use crate::client::explain;
use crate::sources::read_sources;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// A manifest file, a directory of *.yaml / *.yml files, or - for standard input.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
}

/// One object's block: `KIND/NAME OUTCOME`, then `-path: old` / `+path: new` lines;
/// `None` when nothing would change. When the controller says it would be configured
/// while no field shown differs (a Secret's value of the same size; a service behind
/// its Configs' revisions), `unseen` says why.
pub fn object_block(object: &str, outcome: pb::ApplyOutcome, before: &Fields, after: &Fields, unseen: &str) -> Option<String> {
    let changes = field_diff(before, after);
    if changes.is_empty() && outcome == pb::ApplyOutcome::Unchanged {
        return None;
    }
    let mut block = format!("{object} {}\n", outcome_name(outcome));
    block.push_str(&unified(&changes));
    if changes.is_empty() {
        block.push_str(&format!("~{unseen}\n"));
    }
    Some(block)
}

/// Prints what would change; `Ok(true)` when anything would.
pub async fn diff(mut api: ApiClient<Channel>, args: &DiffArgs) -> anyhow::Result<bool> {
    let sources = read_sources(&args.files)?;
    let manifests = check(&sources)?;
    let results = send_sources(&mut api, &sources, true).await?;
    let services: BTreeMap<&str, &pb::Service> = manifests.services.iter().map(|d| (d.service.name.as_str(), &d.service)).collect();
    let configs: BTreeMap<(i32, &str), &orch_api::manifest::ConfigContent> =
        manifests.configs.iter().map(|d| ((i32::from(d.content.kind), d.content.name.as_str()), &d.content)).collect();
    let mut live_configs: BTreeMap<i32, Vec<pb::ConfigInfo>> = BTreeMap::new();
    let mut differs = false;
    for result in &results {
        let kind = if result.kind.is_empty() { "service" } else { result.kind.as_str() };
        let (before, after) = match kind {
            "service" => {
                let wanted = services
                    .get(result.service.as_str())
                    .ok_or_else(|| anyhow::anyhow!("the controller answered for service/{} that the manifests do not have", result.service))?;
                let live = match api.get_service(pb::GetServiceRequest { name: result.service.clone() }).await {
                    Ok(live) => Some(live.into_inner()),
                    Err(status) if status.code() == tonic::Code::NotFound => None,
                    Err(status) => return Err(explain(status)),
                };
                (live.as_ref().map(service_fields).unwrap_or_default(), service_fields(wanted))
            }
            "config" | "secret" => {
                let config_kind = if kind == "secret" { pb::ConfigKind::Secret } else { pb::ConfigKind::Config };
                let wanted = configs
                    .get(&(i32::from(config_kind), result.service.as_str()))
                    .ok_or_else(|| anyhow::anyhow!("the controller answered for {kind}/{} that the manifests do not have", result.service))?;
                let live = match live_configs.entry(config_kind.into()) {
                    std::collections::btree_map::Entry::Occupied(listed) => listed.into_mut(),
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        slot.insert(api.list_configs(pb::ListConfigsRequest { kind: config_kind.into() }).await.map_err(explain)?.into_inner().configs)
                    }
                };
                let live = live.iter().find(|c| c.name == result.service);
                match config_kind {
                    pb::ConfigKind::Config => {
                        let data = |c: &pb::ConfigInfo| c.data.as_ref().map(|d| d.data.clone().into_iter().collect::<BTreeMap<_, _>>()).unwrap_or_default();
                        (live.map(|c| config_fields(&data(c))).unwrap_or_default(), config_fields(&wanted.data))
                    }
                    pb::ConfigKind::Secret => {
                        let sizes: BTreeMap<String, u64> = wanted.data.iter().map(|(k, v)| (k.clone(), v.len() as u64)).collect();
                        (live.map(|c| secret_fields(&c.sizes.clone().into_iter().collect())).unwrap_or_default(), secret_fields(&sizes))
                    }
                }
            }
            other => anyhow::bail!("the controller answered for an object of kind {other:?} this client does not know"),
        };
        let unseen = if kind == "service" { "its Configs or Secrets changed: a new template" } else { "data: values changed (not shown)" };
        if let Some(block) = object_block(&format!("{kind}/{}", result.service), result.outcome(), &before, &after, unseen) {
            print!("{block}");
            differs = true;
        }
    }
    Ok(differs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn blocks_name_the_object_and_the_fields() {
        let live = fields(&[("spec.image", "demo:1.0"), ("spec.replicas", "2")]);
        let wanted = fields(&[("spec.image", "demo:1.1"), ("spec.replicas", "2"), ("metadata.labels.app", "web")]);
        assert_eq!(
            object_block("service/web", pb::ApplyOutcome::Configured, &live, &wanted, "").as_deref(),
            Some("service/web configured\n+metadata.labels.app: web\n-spec.image: demo:1.0\n+spec.image: demo:1.1\n")
        );
        assert_eq!(object_block("service/web", pb::ApplyOutcome::Unchanged, &live, &live, ""), None, "nothing to show");
        assert_eq!(
            object_block("service/api", pb::ApplyOutcome::Created, &Fields::new(), &fields(&[("spec.image", "busybox")]), "").as_deref(),
            Some("service/api created\n+spec.image: busybox\n")
        );
        let secret = fields(&[("data.password", "(11 bytes)")]);
        assert_eq!(
            object_block("secret/db", pb::ApplyOutcome::Configured, &secret, &secret, "data: values changed (not shown)").as_deref(),
            Some("secret/db configured\n~data: values changed (not shown)\n"),
            "a secret's value of the same size"
        );
    }
}
