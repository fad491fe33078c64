//! What `orch-runc` keeps of each container: `<root>/<id>/` (root's alone, 0700) with
//! `state.json` and, from `create` until `start`, the exec FIFO the container's process
//! waits on. The status is read from the kernel each time: `stopped` once the recorded
//! process (PID and start time) is gone, `created` while the FIFO is there, else
//! `running`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::OciError;
use crate::runtime::procfs;

/// Where containers are kept unless `--root` says.
pub const DEFAULT_ROOT: &str = "/run/orch-runc";
const STATE_FILE: &str = "state.json";
/// The FIFO a created container's process opens for writing, blocking until `start`
/// opens it for reading.
pub const EXEC_FIFO: &str = "exec.fifo";

/// One container, as `create` recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    /// The container's process (its PID 1), as the host sees it.
    pub pid: i32,
    pub pid_start_ticks: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created_unix_ms: i64,
    /// Relative to each hierarchy's root.
    pub cgroup: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The config's `poststart` and `poststop` hooks, run by `start` and `delete`.
    #[serde(default)]
    pub poststart: Vec<oci_spec::runtime::Hook>,
    #[serde(default)]
    pub poststop: Vec<oci_spec::runtime::Hook>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Stopped => "stopped",
        }
    }
}

/// runc's rule for ids: letters, digits, `_ + - .`, not `.` or `..` (a directory name).
pub fn check_id(id: &str) -> Result<(), OciError> {
    let fine = !id.is_empty() && id.len() <= 1024 && id != "." && id != ".." && id.chars().all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if fine {
        Ok(())
    } else {
        Err(OciError::BadId(id.to_owned()))
    }
}

/// The container's directory under `root`.
pub fn dir(root: &Path, id: &str) -> Result<PathBuf, OciError> {
    check_id(id)?;
    Ok(root.join(id))
}

pub fn load(root: &Path, id: &str) -> Result<Record, OciError> {
    let path = dir(root, id)?.join(STATE_FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(OciError::NotFound(id.to_owned())),
        Err(e) => return Err(OciError::Io { what: "cannot read", path, source: e }),
    };
    serde_json::from_slice(&text).map_err(|e| OciError::Failed(format!("{}: {e}", path.display())))
}

/// Writes the record whole (a reader never sees half of it).
pub fn save(root: &Path, record: &Record) -> Result<(), OciError> {
    let path = dir(root, &record.id)?.join(STATE_FILE);
    let text = serde_json::to_vec_pretty(record).map_err(|e| OciError::Failed(format!("{}: {e}", path.display())))?;
    crate::state_dir::write_atomically(&path, &text).map_err(OciError::io("cannot write", &path))
}

/// Every container under `root`, by id.
pub fn list(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(root)
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).filter(|id| check_id(id).is_ok()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The container's status now.
pub fn status(root: &Path, record: &Record) -> Status {
    if !procfs::is_same_process(record.pid, record.pid_start_ticks) {
        Status::Stopped
    } else if root.join(&record.id).join(EXEC_FIFO).exists() {
        Status::Created
    } else {
        Status::Running
    }
}

/// The state a hook reads: the specification's fields, with `status` as given
/// (`creating` before the container exists for its caller).
pub fn hook_state(id: &str, pid: i32, bundle: &Path, annotations: &BTreeMap<String, String>, status: &str) -> serde_json::Value {
    serde_json::json!({"ociVersion": super::OCI_VERSION, "id": id, "status": status, "pid": pid, "bundle": bundle, "annotations": annotations})
}

/// The state the OCI specification defines (`orch-runc state`), with runc's extra
/// fields containerd reads (`rootfs`, `created`, `owner`).
pub fn oci_state(record: &Record, status: Status) -> serde_json::Value {
    let created = crate::runtime::output::format_rfc3339(u64::try_from(record.created_unix_ms).unwrap_or(0).saturating_mul(1_000_000));
    let pid = if status == Status::Stopped { 0 } else { record.pid };
    let mut state = hook_state(&record.id, pid, &record.bundle, &record.annotations, status.as_str());
    state["rootfs"] = serde_json::json!(record.rootfs);
    state["created"] = serde_json::json!(created);
    state["owner"] = serde_json::json!("");
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_directory_names_and_the_state_reads_back() {
        for good in ["abc", "a.b_c+d-1", "0"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ä"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        let root = tempfile::tempdir().expect("temporary directory");
        let record = Record {
            id: "c1".into(),
            pid: i32::MAX,
            pid_start_ticks: 1,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created_unix_ms: 1_700_000_000_000,
            cgroup: "orch-runc/c1".into(),
            annotations: BTreeMap::new(),
            poststart: Vec::new(),
            poststop: Vec::new(),
        };
        assert!(matches!(load(root.path(), "c1"), Err(OciError::NotFound(_))));
        std::fs::create_dir(root.path().join("c1")).expect("dir");
        save(root.path(), &record).expect("save");
        assert_eq!(load(root.path(), "c1").expect("load"), record);
        assert_eq!(list(root.path()), ["c1"]);
        assert_eq!(status(root.path(), &record), Status::Stopped, "no such process");
        let state = oci_state(&record, Status::Stopped);
        assert_eq!(
            (state["status"].as_str(), state["pid"].as_i64(), state["created"].as_str()),
            (Some("stopped"), Some(0), Some("2023-11-14T22:13:20.000000000Z"))
        );
    }
}
