//! `orch-runc`: orch's runtime behind the OCI runtime command line that containerd's
//! runc shim, Docker and Podman drive (`create`, `start`, `state`, `kill`, `delete`,
//! `exec`, `ps`, `features`). A bundle's `config.json` is read with `oci-spec` and mapped by the
//! pure [`plan`] onto the same kernel code the agent uses: its cgroups, the confined
//! mount targets, `/proc` masking, capabilities and the start path's conventions.
//!
//! - [`plan`]: `config.json` → [`plan::Plan`], what it knows it cannot honour refused
//!   by its path (pure, table-tested).
//! - [`state`]: `<root>/<id>/state.json`, the status a container is in, the spec's
//!   state JSON.
//! - [`sealed`]: `create` and `exec` re-execute orch-runc from a read-only mount of
//!   itself first (a container cannot overwrite the host's binary: CVE-2019-5736).
//! - [`seccomp`]: `linux.seccomp` as stacked BPF programs.
//! - [`hooks`]: the config's hooks, run with the state on standard input.
//! - [`create`]: the container's processes (fork, namespaces, root, the exec FIFO that
//!   holds it until `start`).
//! - [`exec`]: another process in a container (its namespaces, cgroups and root
//!   joined; the same limits, seccomp and credentials steps as `create`).
//! - [`commands`]: each other subcommand.

pub mod commands;
pub mod create;
pub mod exec;
pub mod hooks;
pub mod plan;
pub mod sealed;
pub mod seccomp;
pub mod state;

use std::path::PathBuf;

/// Why an `orch-runc` command failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} exists already")]
    Exists(String),
    #[error("{0:?} is not a container id (letters, digits, `_`, `+`, `-` and `.`, not `.` or `..`)")]
    BadId(String),
    #[error("container {id:?} is {status}: {what}")]
    Status { id: String, status: &'static str, what: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("{0}")]
    Failed(String),
}

impl OciError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> OciError {
        let path = path.into();
        move |source| OciError::Io { what, path, source }
    }
}

/// The OCI runtime specification version orch-runc speaks.
pub const OCI_VERSION: &str = "1.2.0";
