//! `orch validate -f FILE|DIR|-`: the same checks the controller's apply runs, offline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use orch_api::manifest::load_sources;

use crate::sources::read_sources;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// A manifest file, a directory of *.yaml / *.yml files, or - for standard input.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
}

pub fn run(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let sources = read_sources(&args.files)?;
    let (documents, errors) = match load_sources(sources.iter().map(|s| (s.name.as_str(), s.text.as_str()))) {
        Ok(manifests) => (manifests.services, Vec::new()),
        Err(errors) => (Vec::new(), errors),
    };
    if !errors.is_empty() {
        for error in &errors {
            eprintln!("{error}");
        }
        eprintln!("{} problem(s) found; nothing was applied", errors.len());
        return Ok(ExitCode::FAILURE);
    }
    if documents.is_empty() {
        anyhow::bail!("no services found in {}", sources.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "));
    }
    for doc in &documents {
        println!("service/{} valid ({} document {})", doc.service.name, doc.source_name, doc.document);
    }
    Ok(ExitCode::SUCCESS)
}
