//! One module per `orch-agent` subcommand.

pub mod images;
pub mod run;
