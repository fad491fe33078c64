//! `orch apply -f FILE|DIR|- [--dry-run] [--wait [--timeout 120s]]`: the write side,
//! and waiting for it to take effect (`wait_ready`, which `orch rollout status` uses too).
//! `--dry-run` asks the controller what each document would do: its own validation and
//! unchanged-detection, nothing written.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;
use crate::sources::{read_sources, Source};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A manifest file, a directory of *.yaml / *.yml files, or - for standard input.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
    /// Show progress until every replica of the applied services is ready.
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
    /// Validate and print what would be created, configured or unchanged; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, default_value = "120", value_name = "SECONDS")]
    pub timeout: u64,
}

/// Validates locally (the controller runs the same checks), applies — or with
/// `dry_run` only asks what would change —, prints outcomes.
pub async fn apply_sources(api: &mut ApiClient<Channel>, files: &[PathBuf], dry_run: bool) -> anyhow::Result<Vec<String>> {
    let results = send(api, files, dry_run).await?;
    let suffix = if dry_run { " (dry run)" } else { "" };
    Ok(report(results, suffix))
}

/// Reads and checks the sources, and sends them to the controller's Apply.
pub async fn send(api: &mut ApiClient<Channel>, files: &[PathBuf], dry_run: bool) -> anyhow::Result<Vec<pb::ApplyResult>> {
    let sources = read_sources(files)?;
    check(&sources)?;
    send_sources(api, &sources, dry_run).await
}

/// The manifests of `sources`, checked here first (the controller runs the same checks)
/// for errors without a round trip.
pub fn check(sources: &[Source]) -> anyhow::Result<orch_api::manifest::Manifests> {
    orch_api::manifest::load_sources(sources.iter().map(|s| (s.name.as_str(), s.text.as_str()))).map_err(|problems| {
        anyhow::anyhow!("invalid manifest, nothing was applied:\n{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    })
}

/// Sends sources read and checked to the controller's Apply.
pub async fn send_sources(api: &mut ApiClient<Channel>, sources: &[Source], dry_run: bool) -> anyhow::Result<Vec<pb::ApplyResult>> {
    let sources = sources.iter().map(|s| pb::ManifestSource { name: s.name.clone(), content: s.text.clone() }).collect();
    let request = pb::ApplyRequest { sources, dry_run };
    let response = api.apply(request).await.map_err(explain)?.into_inner();
    if dry_run && !response.dry_run {
        // A controller of an earlier build does not know dry runs: it applied.
        report(response.results, "");
        anyhow::bail!("the controller does not support dry runs (an earlier build): the manifests above WERE applied");
    }
    Ok(response.results)
}

/// The word an outcome prints as.
pub fn outcome_name(outcome: pb::ApplyOutcome) -> &'static str {
    match outcome {
        pb::ApplyOutcome::Created => "created",
        pb::ApplyOutcome::Configured => "configured",
        pb::ApplyOutcome::Unchanged => "unchanged",
    }
}

/// Prints `KIND/NAME created|configured|unchanged[suffix]` for each result; returns the
/// services' names.
pub fn report(results: Vec<pb::ApplyResult>, suffix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for result in results {
        let outcome = outcome_name(result.outcome());
        let kind = if result.kind.is_empty() { "service" } else { result.kind.as_str() };
        println!("{kind}/{} {outcome}{suffix}", result.service);
        if kind == "service" {
            names.push(result.service);
        }
    }
    names
}

/// Waits until each service has its desired count of ready replicas, all on its current
/// template; prints progress lines as counts change.
pub async fn wait_ready(api: &mut ApiClient<Channel>, services: &[String], timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let mut lines = Vec::new();
        let mut done = true;
        for name in services {
            let service = api.get_service(pb::GetServiceRequest { name: name.clone() }).await.map_err(explain)?.into_inner();
            let desired = service.spec.as_ref().map_or(0, |s| s.replicas);
            let replicas = api.list_replicas(pb::ListReplicasRequest { service: name.clone() }).await.map_err(explain)?.into_inner().replicas;
            let current: Vec<&pb::Replica> = replicas.iter().filter(|r| r.spec_hash == service.spec_hash).collect();
            let ready = current.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.ready)).count();
            let old = replicas.len() - current.len();
            if service.paused && old > 0 {
                anyhow::bail!("service/{name}'s rollout is paused with {old} replica(s) on an older template: `orch rollout resume service {name}` rolls it");
            }
            let pending: Vec<String> =
                replicas.iter().filter_map(|r| r.status.as_ref().filter(|s| !s.reason.is_empty()).map(|s| format!("{}: {}", r.id, s.reason))).collect();
            let mut line = format!("service/{name}: {ready}/{desired} ready");
            if old > 0 {
                line.push_str(&format!(", {old} old replica(s) still running"));
            }
            if let Some(reason) = pending.first() {
                line.push_str(&format!(" ({reason})"));
            }
            lines.push(line);
            done &= ready == desired as usize && old == 0 && replicas.len() == desired as usize;
        }
        let text = lines.join("\n");
        if text != last {
            println!("{text}");
            last = text;
        }
        if done {
            return Ok(());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {}s waiting for {} to be ready", timeout.as_secs(), services.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn apply(mut api: ApiClient<Channel>, args: &ApplyArgs) -> anyhow::Result<()> {
    let names = apply_sources(&mut api, &args.files, args.dry_run).await?;
    if args.wait {
        wait_ready(&mut api, &names, Duration::from_secs(args.timeout)).await?;
    }
    Ok(())
}
