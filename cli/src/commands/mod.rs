//! One module per `orch` subcommand.

pub mod validate;
