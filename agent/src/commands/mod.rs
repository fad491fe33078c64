//! One module per `orch-agent` subcommand.

pub mod images;
pub mod net;
pub mod run;
pub mod serve;
