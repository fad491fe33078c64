//! `orch-controller`: the cluster's brain — the API over the store, the scheduler, and
//! (to come) agent sessions and reconcilers.

pub mod api;
pub mod keys;
pub mod nodes;
pub mod scheduler;
pub mod store;
