//! The node agent proper: the daemon that talks to the controller ([`agent`]), one
//! supervisor per replica ([`replica`]: start, pidfd wait, probes, restart policy,
//! crash evidence, cleanup), probes ([`probe`]) and restart back-off ([`backoff`]).

pub mod agent;
pub mod api;
pub mod backoff;
pub mod board;
pub mod context;
pub mod convert;
pub mod lifecycle;
pub mod logs;
pub mod probe;
pub mod replica;
pub mod teardown;

pub use agent::{machine_capacity, Agent, AgentConfig, AgentError, Registration, Shutdown};
