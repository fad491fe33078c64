//! The container runtime: namespaces, overlay rootfs, cgroups, and the supervision
//! primitives the agent builds on (start, wait, signal, stop, stats, re-adopt, remove).
//!
//! The start path executes a fresh single-threaded process (`orch-init __init`, or the
//! agent binary itself, see [`init`]); nothing forks inside the multi-threaded agent.

mod config;
mod container;
mod error;
pub mod exec;
mod idmap;
pub mod init;
pub mod output;
pub(crate) mod pidfd;
pub(crate) mod procfs;
pub(crate) mod rootfs;
pub mod seccomp;
mod state;
mod sync;

pub use config::{
    capability_set, container_env, BindMount, ContainerSpec, IdRange, Security, Stdio, SystemRoot, User, DEFAULT_CAPABILITIES, DEFAULT_ID_RANGE, DEFAULT_PATH,
};
pub use container::{Container, ContainerExit, ContainerNetwork, Runtime, RuntimeConfig};
pub use error::RuntimeError;
pub use seccomp::SeccompProfile;
pub use state::{now_unix_ms, ContainerState, ExitRecord};

/// The hidden subcommand that runs [`init::shim_main`].
pub const INIT_SUBCOMMAND: &str = "__init";
/// The small binary that runs [`init::shim_main`] alone, looked for beside the agent's.
pub const INIT_BINARY: &str = "orch-init";
/// This build of the library (see `build.rs`): `orch-init` runs a start only for the
/// build it came from.
pub const BUILD_ID: &str = env!("ORCH_BUILD_ID");
/// The name the shim and the container's init carry as argv[0]: what a container sees
/// of its PID 1 (`orch-init __init`), instead of the agent binary's host path.
pub const INIT_NAME: &str = "orch-init";

/// Exit code for a failure of the runtime itself (as Docker and runc).
pub const CODE_RUNTIME: i32 = 125;
/// Exit code when the command exists but cannot be invoked.
pub const CODE_CANNOT_INVOKE: i32 = 126;
/// Exit code when the command is not found.
pub const CODE_NOT_FOUND: i32 = 127;

/// The open files limit a container's processes start with, whatever the agent's own
/// (which it raises for the balancer's connections): systemd's and containerd's
/// default, 1024 soft and 524288 hard (or the hard limit the agent has, when lower), so
/// programs that size tables by the limit or close every descriptor up to it behave as
/// under Docker.
pub const CONTAINER_DESCRIPTORS: (u64, u64) = (1024, 524_288);

/// Sets [`CONTAINER_DESCRIPTORS`] on the calling process: the last steps of a
/// container's command and of `__exec`, before exec. Lowering a limit needs no
/// privilege.
pub fn limit_container_descriptors() -> Result<(), String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(RLIMIT_NOFILE): {e}"))?;
    let hard = hard.min(CONTAINER_DESCRIPTORS.1);
    setrlimit(Resource::RLIMIT_NOFILE, CONTAINER_DESCRIPTORS.0.min(hard), hard).map_err(|e| format!("setrlimit(RLIMIT_NOFILE): {e}"))
}
