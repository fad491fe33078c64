//! One module per `orch-agent` subcommand.

pub mod run;
