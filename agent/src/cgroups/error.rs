use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot create cgroup {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write { path: PathBuf, value: String, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("unexpected content in {path}: {content:?}")]
    Parse { path: PathBuf, content: String },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("cgroup {path} still has processes {pids:?} after they were killed")]
    Busy { path: PathBuf, pids: Vec<i32> },
    #[error("cannot restrict the devices of cgroup {path}: {reason}")]
    Devices { path: PathBuf, reason: String },
    #[error("no usable cgroup hierarchy: {0}")]
    NoHierarchy(String),
    #[error("invalid cgroup name {0:?}: expected letters, digits, '-', '_' or '.' separated by '/'")]
    InvalidName(String),
}
