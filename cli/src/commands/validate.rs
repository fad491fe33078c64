//! `orch validate -f FILE|DIR|-`: the same checks the controller's apply runs, offline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use orch_api::manifest::{check_unique_names, load_services};

use crate::sources::read_sources;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// A manifest file, a directory of *.yaml / *.yml files, or - for standard input.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
}

pub fn run(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let sources = read_sources(&args.files)?;
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for source in &sources {
        match load_services(&source.name, &source.text) {
            Ok(docs) => documents.extend(docs),
            Err(errs) => errors.extend(errs),
        }
    }
    errors.extend(check_unique_names(&documents));
    errors.extend(orch_api::manifest::check_unique_node_ports(&documents));
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
