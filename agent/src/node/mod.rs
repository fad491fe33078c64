//! The node agent proper.
//!
//! - The daemon ([`agent`]): [`registration`], then [`session`]s with the controller,
//!   each desired set turned into a [`convergence`] plan (a pure diff); [`teardown`]
//!   removes what a dead agent left without setting anything up.
//! - One supervisor per replica: [`lifecycle`] decides (a pure state machine: phase,
//!   readiness, restart policy and back-off, events), [`replica`] acts (image, start,
//!   pidfd wait, [`probe`]s, stop, crash evidence, cleanup). The supervisor decides, the
//!   task acts.
//! - Shared: the [`board`] (status, events and node conditions going up, the running
//!   table for exec and stats), the [`context`], the [`logs`], the node [`api`] the
//!   controller calls, the [`service_table`] (the balancer's table, applied again while
//!   a listener fails).
//! - The [`backends`] the node layer runs on (containers, images, pod network, probe
//!   checks) are small traits: the real ones here, fakes in [`crate::testing`].
//! - [`convert`] turns the controller's records into what the node runs (limits,
//!   confinement, the balancer table, routes).

pub mod agent;
pub mod api;
pub mod backends;
pub mod backoff;
pub mod board;
pub mod capacity;
pub mod chaos;
pub mod config;
pub mod context;
pub mod controllers;
pub mod convergence;
pub mod convert;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod probe;
pub mod registration;
pub mod replica;
pub mod service_table;
pub mod session;
pub mod teardown;
pub mod volumes;

#[cfg(test)]
mod tests;

pub use agent::{Agent, Shutdown};
pub use capacity::machine_capacity;
pub use config::{AgentConfig, AgentError, LinkError};
pub use registration::Registration;
