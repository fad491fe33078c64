//! The per-container state file: what a restarted agent needs to re-adopt a live
//! container, and the shim's record of how it ended.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RuntimeError;

pub const STATE_FILE: &str = "state.json";
pub const EXIT_FILE: &str = "exit.json";
/// The overlay's directories, inside the container's directory.
pub const UPPER: &str = "upper";
pub const WORK: &str = "work";
pub const MERGED: &str = "merged";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    /// The shim: the agent's child, parent of the container's init.
    pub shim_pid: i32,
    pub shim_start_ticks: u64,
    /// The container's PID 1, as the host sees it.
    pub init_pid: i32,
    pub init_start_ticks: u64,
    /// The cgroup, relative to each hierarchy's root.
    pub cgroup: String,
    pub created_unix_ms: i64,
    /// The image's manifest digest, when started from an image.
    #[serde(default)]
    pub image: Option<String>,
    /// What asks it to stop ([`ContainerSpec::stop_signal`](super::ContainerSpec)); none
    /// for a container an older agent started (its supervisor knows from the spec).
    #[serde(default)]
    pub stop_signal: Option<i32>,
}

/// How a container ended, as the shim saw its init end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, or 128 + the signal that killed it.
    pub code: i32,
    pub signal: Option<i32>,
    pub finished_unix_ms: i64,
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| RuntimeError::State { path: path.to_owned(), reason: e.to_string() })?;
    // A reader (the next agent too) never sees half a file. Not flushed: both records
    // describe processes that do not outlive the machine (see `write_replacing`).
    crate::state_dir::write_replacing(path, &text).map_err(RuntimeError::io("cannot write", path))
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, RuntimeError> {
    let text = std::fs::read(path).map_err(RuntimeError::io("cannot read", path))?;
    serde_json::from_slice(&text).map_err(|e| RuntimeError::State { path: path.to_owned(), reason: e.to_string() })
}

/// The directory layout of one container under the runtime's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDirs {
    pub root: PathBuf,
}

impl ContainerDirs {
    pub fn new(state_dir: &Path, id: &str) -> ContainerDirs {
        ContainerDirs { root: crate::StateDir::new(state_dir).containers().join(id) }
    }
    pub fn upper(&self) -> PathBuf {
        self.root.join(UPPER)
    }
    pub fn work(&self) -> PathBuf {
        self.root.join(WORK)
    }
    pub fn merged(&self) -> PathBuf {
        self.root.join(MERGED)
    }
    pub fn state(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }
    pub fn exit(&self) -> PathBuf {
        self.root.join(EXIT_FILE)
    }
    /// Where layer `i` is mounted idmapped for a user-namespaced container.
    pub fn idmapped_layer(&self, i: usize) -> PathBuf {
        self.root.join("layers").join(i.to_string())
    }
    /// The idmapped layer views that exist on disk.
    pub fn idmapped_layers(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.root.join("layers")) else { return Vec::new() };
        entries.flatten().map(|e| e.path()).collect()
    }
}

pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
