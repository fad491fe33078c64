//! What every supervisor on the node shares.

use std::path::PathBuf;
use std::sync::Arc;

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
}

/// The Configs and Secrets the controller sent for this node's replicas.
#[derive(Default)]
pub struct ConfigCache {
    configs: std::sync::Mutex<std::collections::HashMap<(i32, String), orch_api::pb::ConfigData>>,
}

impl ConfigCache {
    /// Replaces the cache with a desired set's.
    pub fn replace(&self, configs: &[orch_api::pb::NodeConfig]) {
        let fresh = configs.iter().map(|c| ((c.kind, c.name.clone()), c.data.clone().unwrap_or_default())).collect();
        *self.configs.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
    }

    pub fn get(&self, kind: orch_api::pb::ConfigKind, name: &str) -> Option<orch_api::pb::ConfigData> {
        self.configs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&(kind.into(), name.to_owned())).cloned()
    }
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

    pub fn with_volumes(self, volumes: VolumeDirs) -> NodeContext {
        NodeContext { volumes, ..self }
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
