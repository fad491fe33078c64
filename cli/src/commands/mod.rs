//! One module per `orch` subcommand.

pub mod apply;
pub mod backup;
pub mod chaos;
pub mod config;
pub mod create;
pub mod delete;
pub mod describe;
pub mod diff;
pub mod exec;
pub mod get;
pub mod logs;
pub mod node;
pub mod rebalance;
pub mod rollout;
pub mod scale;
pub mod top;
pub mod topology;
pub mod up;
pub mod validate;
pub mod verify;
pub mod why;
