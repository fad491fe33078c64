//! `orch-agent`: the node agent. It runs containers itself with Linux namespaces and
//! cgroups (no runc underneath).
//!
//! - [`cgroups`]: v1 and v2 cgroups, detected at start.
//! - [`runtime`]: the container start path (re-exec'd shim and init), supervision
//!   primitives and re-adoption.
//! - [`oci`]: `orch-runc`, the runtime behind the OCI runtime command line (runc's).

pub mod cgroups;
pub mod images;
pub mod net;
pub mod node;
pub mod oci;
pub mod runtime;
pub mod state_dir;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use state_dir::StateDir;
