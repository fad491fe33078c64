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
}

impl NodeContext {
    /// A context on `backends`, with an empty board and running table.
    /// Local volumes go under `<state>/local-volumes` until [`NodeContext::with_volumes`]
    /// says otherwise.
    pub fn new(node: String, backends: Backends, state: StateDir, helper: PathBuf) -> NodeContext {
        let volumes = VolumeDirs { local_root: state.root().join("local-volumes"), reserved: vec![state.root().to_owned()] };
        NodeContext {
            volumes,
            volume_locks: VolumeLocks::default(),
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
