//! One module per `orch` subcommand (apply also holds delete, scale and rollout).

pub mod apply;
pub mod describe;
pub mod get;
pub mod node;
pub mod up;
pub mod validate;
