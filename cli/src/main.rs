//! `orch`: the command line. One file per subcommand under `commands/`.

mod commands;
mod sources;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "orch", version, about = "orch: a small, fast container orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check manifests without applying them: exit 0 when valid, 1 with every problem.
    Validate(commands::validate::ValidateArgs),
    /// Print the version of this client.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Validate(args) => commands::validate::run(&args),
        Command::Version => {
            println!("orch {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
