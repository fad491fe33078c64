use std::path::PathBuf;

use crate::cgroups::CgroupError;

/// Why a container could not be started or managed. [`RuntimeError::exit_code`] maps
/// each to the code container tools use: 125 for the runtime's own failures, 126 when
/// the command cannot be invoked, 127 when it is not found.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid container name {0:?}: expected 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit")]
    InvalidName(String),
    #[error("rootfs {path} is not a directory: {reason}")]
    Rootfs { path: PathBuf, reason: String },
    #[error("a container named {0:?} already exists on this node")]
    NameInUse(String),
    #[error("the command is empty")]
    EmptyCommand,
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("{syscall} failed: {errno}")]
    Syscall { syscall: &'static str, errno: nix::errno::Errno },
    #[error("cannot start the container's init ({exe}): {source}")]
    Spawn { exe: PathBuf, source: std::io::Error },
    #[error("container init: {0}")]
    Protocol(String),
    /// The container's own start failed inside its namespaces (mounts, exec, …).
    #[error("{message}")]
    Start { message: String, code: i32 },
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("container {0} is not running")]
    NotRunning(String),
}

impl RuntimeError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RuntimeError::Start { code, .. } => *code,
            _ => 125,
        }
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let path = path.into();
        move |source| RuntimeError::Io { what, path, source }
    }

    pub(crate) fn sys(syscall: &'static str) -> impl FnOnce(nix::errno::Errno) -> RuntimeError {
        move |errno| RuntimeError::Syscall { syscall, errno }
    }
}
