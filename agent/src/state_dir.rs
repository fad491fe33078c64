//! The agent's state directory (`/var/lib/orch/agent` by default): every path below it
//! is spelled here and nowhere else.
//!
//! ```text
//! node.json                 what registration said (pod and service ranges)
//! containers/<id>/          the runtime's: state.json, exit.json, upper/, work/, merged/
//! images/                   the image store: blobs, unpacked layers, records
//! replicas/<id>.pb          each replica with its template and status
//! logs/<id>.log[.1]         each replica's output (and the rotated previous one)
//! network/<bridge>.json     the node's address allocations
//! network/files/<id>/       resolv.conf, hosts and hostname bound into a replica
//! empty-dirs/<id>/<volume>/  each replica's emptyDir volumes (a tmpfs for Memory)
//! ```
//!
//! Local volumes outlive replicas and the state directory: they live in the agent's
//! `--volumes-dir` (`/var/lib/orch/volumes/<service>/<volume>/<slot>`).

use std::path::{Path, PathBuf};

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

    /// The log of the run before the last rotation.
    pub fn rotated_log(&self, replica: &str) -> PathBuf {
        self.logs().join(format!("{replica}.log.1"))
    }

    pub fn network(&self) -> PathBuf {
        self.root.join("network")
    }

    /// The address allocations of the node network on `bridge`.
    pub fn addresses(&self, bridge: &str) -> PathBuf {
        self.network().join(format!("{bridge}.json"))
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
    fn the_layout() {
        let dir = StateDir::new("/s");
        assert_eq!(dir.record("web-1"), Path::new("/s/replicas/web-1.pb"));
        assert_eq!(dir.log("web-1"), Path::new("/s/logs/web-1.log"));
        assert_eq!(dir.rotated_log("web-1"), Path::new("/s/logs/web-1.log.1"));
        assert_eq!(dir.addresses("orch0"), Path::new("/s/network/orch0.json"));
        assert_eq!(dir.files("web-1"), Path::new("/s/network/files/web-1"));
        assert_eq!(dir.registration(), Path::new("/s/node.json"));
        assert_eq!(dir.empty_dirs("web-1"), Path::new("/s/empty-dirs/web-1"));
    }
}
