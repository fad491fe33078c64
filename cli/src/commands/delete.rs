//! `orch delete -f FILE|DIR|- | service NAME`.

use std::path::PathBuf;

use clap::Args;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;
use crate::sources::read_sources;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Delete the services these manifests describe.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", conflicts_with_all = ["kind", "name"])]
    pub files: Vec<PathBuf>,
    /// `service`
    #[arg(required_unless_present = "files")]
    pub kind: Option<String>,
    #[arg(required_unless_present = "files")]
    pub name: Option<String>,
}

pub async fn delete(mut api: ApiClient<Channel>, args: &DeleteArgs) -> anyhow::Result<()> {
    let names = if args.files.is_empty() {
        match args.kind.as_deref() {
            Some("service" | "services" | "svc") => vec![args.name.clone().unwrap_or_default()],
            Some(other) => anyhow::bail!("unknown resource {other:?}: orch deletes services (`orch delete service NAME`)"),
            None => Vec::new(),
        }
    } else {
        let mut names = Vec::new();
        for source in read_sources(&args.files)? {
            let documents = orch_api::manifest::load_services(&source.name, &source.text)
                .map_err(|errors| anyhow::anyhow!("invalid manifest:\n{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
            names.extend(documents.into_iter().map(|d| d.service.name));
        }
        names
    };
    for name in names {
        api.delete_service(pb::DeleteServiceRequest { name: name.clone() }).await.map_err(explain)?;
        println!("service/{name} deleted");
    }
    Ok(())
}
