//! `orch-controller`: the cluster's brain — the API over the store, agent sessions, the
//! scheduler, the reconcilers and leader election. [`server::Controller`] runs them all.

pub mod api;
pub mod election;
pub mod events;
pub mod incidents;
pub mod keys;
pub mod metrics;
pub mod nodes;
pub mod presence;
pub mod reconcile;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
