//! The agent's state directory (`/var/lib/orch/agent` by default): every path below it
//! is spelled here and nowhere else.
//!
//! ```text
//! node.json                 what registration said (pod and service ranges)
//! containers/<id>/          the runtime's: state.json, exit.json, upper/, work/, merged/
//! images/                   the image store: blobs, unpacked layers, records
//! replicas/<id>.pb          each replica with its template and status
//! logs/<id>.log[.N|.previous] each replica's output: CRI records, rotated by size, and the previous run's last file
//! network/<bridge>.json     the node's address allocations (`.lock`: who may change them)
//! network/files/<id>/       resolv.conf, hosts and hostname bound into a replica
//! empty-dirs/<id>/<volume>/  each replica's emptyDir volumes (a tmpfs for Memory)
//! ```
//!
//! Local volumes outlive replicas and the state directory: they live in the agent's
//! `--volumes-dir` (`/var/lib/orch/volumes/<service>/<volume>/<slot>`).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` (mode 0600) so that a crash or a full disk at any moment
/// leaves the old file or the new one, never a part: written to a temporary file beside
/// it, flushed to disk, renamed over it, and the directory flushed. Every state file the
/// agent keeps across reboots is written this way.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

/// Replaces `path` with `bytes` (mode 0600) for readers on a running machine: written
/// beside it and renamed over it, so no reader sees a part, but not flushed. For records
/// of live processes (a container's PIDs, how its shim saw it end), which mean nothing
/// once the machine restarts: its processes are gone with it, and a record a crash
/// left empty reads as one to discard. A flush costs more than the rest of the write.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Unique per call: two writers of one file (pulls of one image) never share it.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        Ok(())
    });
    if let Err(error) = written.and_then(|()| std::fs::rename(&temporary, path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    if durable {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Renames `from` (a file or directory already written) to `to` once its own contents
/// are on disk, then flushes the directory `to` is in: after a crash `to` is whole or
/// absent.
pub fn sync_then_rename(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::File::open(from)?.sync_all()?;
    std::fs::rename(from, to)?;
    let dir = to.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Flushes the whole filesystem `path` is on (`syncfs`): a tree of many files, such as
/// an unpacked layer, at once.
pub fn sync_filesystem(path: &Path) -> std::io::Result<()> {
    let dir = std::fs::File::open(path)?;
    nix::unistd::syncfs(&dir).map_err(std::io::Error::from)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn registration(&self) -> PathBuf {
        self.root.join("node.json")
    }

    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn records(&self) -> PathBuf {
        self.root.join("replicas")
    }

    pub fn record(&self, replica: &str) -> PathBuf {
        self.records().join(format!("{replica}.pb"))
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn log(&self, replica: &str) -> PathBuf {
        self.logs().join(format!("{replica}.log"))
    }

    /// The last log file of the replica's previous run.
    pub fn previous_log(&self, replica: &str) -> PathBuf {
        self.logs().join(format!("{replica}.log.previous"))
    }

    pub fn network(&self) -> PathBuf {
        self.root.join("network")
    }

    /// The address allocations of the node network on `bridge`.
    pub fn addresses(&self, bridge: &str) -> PathBuf {
        self.network().join(format!("{bridge}.json"))
    }

    /// The lock taken to change [`StateDir::addresses`] (the file itself is replaced by rename).
    pub fn addresses_lock(&self, bridge: &str) -> PathBuf {
        self.network().join(format!("{bridge}.lock"))
    }

    /// The log of the node network's balancer process.
    pub fn balancer_log(&self, bridge: &str) -> PathBuf {
        self.network().join(format!("{bridge}.balancer.log"))
    }

    pub fn files_root(&self) -> PathBuf {
        self.network().join("files")
    }

    /// The generated files a replica's container gets bound in.
    pub fn files(&self, replica: &str) -> PathBuf {
        self.files_root().join(replica)
    }

    pub fn empty_dirs_root(&self) -> PathBuf {
        self.root.join("empty-dirs")
    }

    /// A replica's emptyDir volumes, one directory each.
    pub fn empty_dirs(&self, replica: &str) -> PathBuf {
        self.empty_dirs_root().join(replica)
    }

    /// What `orch-agent teardown` removes besides containers and the network: records,
    /// logs, generated files and emptyDir volumes, once unmounted (the image store stays).
    pub fn replica_state(&self) -> [PathBuf; 4] {
        [self.records(), self.logs(), self.files_root(), self.empty_dirs_root()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomically(&path, b"first, longer content").expect("write");
        write_atomically(&path, b"second").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path()).expect("list").flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["state.json"], "no temporary file left");
        assert!(write_atomically(&dir.path().join("missing/dir/x"), b"x").is_err(), "an error, not a silent loss");
    }

    #[test]
    fn the_layout() {
        let dir = StateDir::new("/s");
        assert_eq!(dir.record("web-1"), Path::new("/s/replicas/web-1.pb"));
        assert_eq!(dir.log("web-1"), Path::new("/s/logs/web-1.log"));
        assert_eq!(dir.previous_log("web-1"), Path::new("/s/logs/web-1.log.previous"));
        assert_eq!(dir.addresses("orch0"), Path::new("/s/network/orch0.json"));
        assert_eq!(dir.files("web-1"), Path::new("/s/network/files/web-1"));
        assert_eq!(dir.registration(), Path::new("/s/node.json"));
        assert_eq!(dir.empty_dirs("web-1"), Path::new("/s/empty-dirs/web-1"));
    }
}
