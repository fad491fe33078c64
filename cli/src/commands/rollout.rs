//! `orch rollout status|history|undo|restart|pause|resume service NAME`.

use std::time::Duration;

use clap::{Args, Subcommand};
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use serde::Serialize;
use tonic::transport::Channel;

use super::apply::wait_ready;
use crate::client::explain;
use crate::output::{self, Format};

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

/// `service NAME`, as every rollout command names its target.
#[derive(Debug, Args)]
pub struct Target {
    /// `service`
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait until the service's replicas all run its current template and are ready.
    Status {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value = "300", value_name = "SECONDS")]
        timeout: u64,
    },
    /// The templates the service ran (the last 10), with the change that made each.
    History {
        #[command(flatten)]
        target: Target,
        /// Show this revision's template.
        #[arg(long, value_name = "N")]
        revision: Option<u64>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Go back to the revision before the current one (or --to-revision N): the service
    /// rolls to that template, keeping its replica count and update strategy.
    Undo {
        #[command(flatten)]
        target: Target,
        #[arg(long, value_name = "N")]
        to_revision: Option<u64>,
    },
    /// Replace every replica, within maxSurge and maxUnavailable, on the same template.
    Restart {
        #[command(flatten)]
        target: Target,
    },
    /// Stop rolling: a new template is recorded but replaces no replica until resumed.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Roll again, to the service's current template.
    Resume {
        #[command(flatten)]
        target: Target,
    },
}

impl Target {
    fn service(&self) -> anyhow::Result<&str> {
        if !matches!(self.kind.as_str(), "service" | "services" | "svc") {
            anyhow::bail!("unknown resource {:?}: `orch rollout COMMAND service NAME`", self.kind);
        }
        Ok(&self.name)
    }
}

/// One revision as `history -o json|yaml` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RevisionOut {
    revision: u64,
    current: bool,
    change: String,
    created_unix_ms: i64,
    spec_hash: String,
    image: String,
    command: Vec<String>,
    args: Vec<String>,
    env: Vec<String>,
}

/// An environment variable as shown: its value, or the key of a Config or a Secret it
/// comes from (never a Secret's value).
fn env_line(var: &pb::EnvVar) -> String {
    match &var.value_from {
        Some(key) => format!("{}=<{} {} key {}>", var.name, orch_api::manifest::kind_name(key.kind()), key.name, key.key),
        None => format!("{}={}", var.name, var.value),
    }
}

fn revision_out(revision: &pb::ServiceRevision, current: u64) -> RevisionOut {
    let spec = revision.spec.clone().unwrap_or_default();
    RevisionOut {
        revision: revision.revision,
        current: revision.revision == current,
        change: revision.change.clone(),
        created_unix_ms: revision.created_unix_ms,
        spec_hash: revision.spec_hash.clone(),
        image: spec.image.clone(),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.env.iter().map(env_line).collect(),
    }
}

async fn history(api: &mut ApiClient<Channel>, name: &str, revision: Option<u64>, format: Format) -> anyhow::Result<()> {
    let listing = api.list_revisions(pb::ListRevisionsRequest { service: name.to_owned() }).await.map_err(explain)?.into_inner();
    let mut shown: Vec<RevisionOut> = listing.revisions.iter().map(|r| revision_out(r, listing.current)).collect();
    if let Some(number) = revision {
        shown.retain(|r| r.revision == number);
        if shown.is_empty() {
            let numbers: Vec<String> = listing.revisions.iter().map(|r| r.revision.to_string()).collect();
            anyhow::bail!("service {name:?} has no revision {number} (revisions: {})", numbers.join(", "));
        }
    }
    match (format, revision) {
        (Format::Json | Format::Yaml, _) => print!("{}", output::render(format, &shown)?),
        (_, Some(_)) => {
            for r in &shown {
                println!("service/{name} revision {}{}", r.revision, if r.current { " (current)" } else { "" });
                println!("  change:  {}", r.change);
                println!("  created: {} ago", output::age(r.created_unix_ms));
                println!("  image:   {}", r.image);
                if !r.command.is_empty() {
                    println!("  command: {}", r.command.join(" "));
                }
                if !r.args.is_empty() {
                    println!("  args:    {}", r.args.join(" "));
                }
                for var in &r.env {
                    println!("  env:     {var}");
                }
            }
        }
        (_, None) => {
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|r| vec![r.revision.to_string(), if r.current { "*".into() } else { String::new() }, output::age(r.created_unix_ms), r.change.clone()])
                .collect();
            print!("{}", output::table(&["REVISION", "CURRENT", "AGE", "CHANGE"], &rows));
        }
    }
    Ok(())
}

pub async fn rollout(mut api: ApiClient<Channel>, args: &RolloutArgs) -> anyhow::Result<()> {
    match &args.command {
        RolloutCommand::Status { target, timeout } => {
            let name = target.service()?;
            wait_ready(&mut api, &[name.to_owned()], Duration::from_secs(*timeout)).await?;
            println!("service/{name} successfully rolled out");
        }
        RolloutCommand::History { target, revision, output } => history(&mut api, target.service()?, *revision, *output).await?,
        RolloutCommand::Undo { target, to_revision } => {
            let name = target.service()?;
            let request = pb::UndoRolloutRequest { service: name.to_owned(), to_revision: to_revision.unwrap_or(0) };
            api.undo_rollout(request).await.map_err(explain)?;
            let listing = api.list_revisions(pb::ListRevisionsRequest { service: name.to_owned() }).await.map_err(explain)?.into_inner();
            match to_revision {
                Some(n) => println!("service/{name} rolled back to revision {n}"),
                None => println!("service/{name} rolled back to the revision before"),
            }
            if listing.current == 0 {
                println!("(its history records it as the newest revision in a moment: `orch rollout history service {name}`)");
            }
        }
        RolloutCommand::Restart { target } => {
            let name = target.service()?;
            api.restart_rollout(pb::RestartRolloutRequest { service: name.to_owned() }).await.map_err(explain)?;
            println!("service/{name} restarting (`orch rollout status service {name}` follows it)");
        }
        RolloutCommand::Pause { target } | RolloutCommand::Resume { target } => {
            let name = target.service()?;
            let paused = matches!(args.command, RolloutCommand::Pause { .. });
            api.set_rollout_paused(pb::SetRolloutPausedRequest { service: name.to_owned(), paused }).await.map_err(explain)?;
            println!("service/{name} {}", if paused { "paused" } else { "resumed" });
        }
    }
    Ok(())
}
