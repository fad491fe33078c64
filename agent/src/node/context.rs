//! What every supervisor on the node shares.

use std::path::PathBuf;
use std::sync::Arc;

use prost::Message;

use super::backends::{Containers, Images, PodNetwork, ProbeChecks};
use super::board::{RunningTable, StatusBoard};
use super::volumes::{VolumeDirs, VolumeLocks};
use crate::StateDir;

pub struct NodeContext {
    pub node: String,
    pub runtime: Box<dyn Containers>,
    pub images: Box<dyn Images>,
    pub network: Box<dyn PodNetwork>,
    pub probes: Arc<dyn ProbeChecks>,
    pub state: StateDir,
    /// The agent binary: the `__exec` helper of exec probes and `orch exec`.
    pub helper: PathBuf,
    pub board: StatusBoard,
    /// Replicas whose container runs now (for exec and stats).
    pub running: RunningTable,
    /// Where local volumes live and what no hostPath may overlap.
    pub volumes: VolumeDirs,
    /// Local volume directories held by the replica using them.
    pub volume_locks: VolumeLocks,
    /// The Configs and Secrets of the latest desired set (in memory only).
    pub configs: ConfigCache,
    /// The balancer's table, applied again while a listener fails.
    pub services: super::service_table::ServiceTable,
    pub metrics: Arc<super::metrics::AgentMetrics>,
    /// The outage `orch chaos` started on this node, if one is under way.
    pub outage: super::chaos::Outage,
}

/// The Configs and Secrets the controller sent for this node's replicas: in memory, and
/// in a file on the agent's run tmpfs when it has one, so that a restarted agent can
/// restart the replicas it adopts before the controller answers (a Secret's values are
/// never written anywhere but a tmpfs).
#[derive(Default)]
pub struct ConfigCache {
    configs: std::sync::Mutex<std::collections::HashMap<(i32, String), orch_api::pb::ConfigData>>,
    kept_in: Option<PathBuf>,
}

impl ConfigCache {
    /// A cache kept in `<run_root>/configs.pb`, starting with what a previous agent kept there.
    pub fn kept_on(run_root: &std::path::Path) -> ConfigCache {
        let file = run_root.join("configs.pb");
        let cache = ConfigCache { kept_in: Some(file.clone()), ..ConfigCache::default() };
        match std::fs::read(&file) {
            Ok(bytes) => match orch_api::pb::NodeConfigs::decode(bytes.as_slice()) {
                Ok(kept) => *cache.lock() = Self::map(&kept.configs),
                Err(error) => tracing::warn!(file = %file.display(), %error, "the kept Configs and Secrets are unreadable; waiting for the controller's"),
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(file = %file.display(), %error, "reading the kept Configs and Secrets"),
        }
        cache
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(i32, String), orch_api::pb::ConfigData>> {
        self.configs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn map(configs: &[orch_api::pb::NodeConfig]) -> std::collections::HashMap<(i32, String), orch_api::pb::ConfigData> {
        configs.iter().map(|c| ((c.kind, c.name.clone()), c.data.clone().unwrap_or_default())).collect()
    }

    /// Replaces the cache with a desired set's.
    pub fn replace(&self, configs: &[orch_api::pb::NodeConfig]) {
        let fresh = Self::map(configs);
        let mut current = self.lock();
        if *current == fresh {
            return;
        }
        *current = fresh;
        drop(current);
        if let Some(file) = &self.kept_in {
            let kept = if configs.is_empty() {
                std::fs::remove_file(file).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
            } else {
                keep_on_tmpfs(file, &orch_api::pb::NodeConfigs { configs: configs.to_vec() }.encode_to_vec())
            };
            if let Err(error) = kept {
                // Better none than stale values for the next agent (it waits for the controller's).
                let _ = std::fs::remove_file(file);
                tracing::warn!(file = %file.display(), %error, "keeping the Configs and Secrets for the next agent");
            }
        }
    }

    pub fn get(&self, kind: orch_api::pb::ConfigKind, name: &str) -> Option<orch_api::pb::ConfigData> {
        self.lock().get(&(kind.into(), name.to_owned())).cloned()
    }
}

/// Writes `bytes` to `file` (0600, atomically) — only when its directory is a tmpfs.
fn keep_on_tmpfs(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = file.parent().unwrap_or(std::path::Path::new("/"));
    let on_tmpfs = nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    if !on_tmpfs {
        return Err(std::io::Error::other(format!("{} is not a tmpfs: a Secret is never written to disk", dir.display())));
    }
    crate::state_dir::write_atomically(file, bytes)
}

impl NodeContext {
    /// A context on `backends`, with an empty board and running table.
    /// Local volumes go under `<state>/local-volumes` until [`NodeContext::with_volumes`]
    /// says otherwise.
    pub fn new(node: String, backends: Backends, state: StateDir, helper: PathBuf) -> NodeContext {
        let volumes =
            VolumeDirs { local_root: state.root().join("local-volumes"), reserved: vec![state.root().to_owned()], run_root: state.root().join("run") };
        NodeContext {
            volumes,
            volume_locks: VolumeLocks::default(),
            configs: ConfigCache::default(),
            services: super::service_table::ServiceTable::default(),
            metrics: Arc::default(),
            outage: super::chaos::Outage::default(),
            node,
            runtime: backends.containers,
            images: backends.images,
            network: backends.network,
            probes: backends.probes,
            state,
            helper,
            board: StatusBoard::default(),
            running: RunningTable::default(),
        }
    }

    /// The context with its volume directories, and its Config cache kept on the run
    /// tmpfs there.
    pub fn with_volumes(self, volumes: VolumeDirs) -> NodeContext {
        let configs = ConfigCache::kept_on(&volumes.run_root);
        NodeContext { volumes, configs, ..self }
    }
}

/// What a node runs on: the real runtime, image store, node network and probe checks, or
/// the fakes of [`crate::testing`].
pub struct Backends {
    pub containers: Box<dyn Containers>,
    pub images: Box<dyn Images>,
    pub network: Box<dyn PodNetwork>,
    pub probes: Arc<dyn ProbeChecks>,
}
