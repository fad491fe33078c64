//! What every supervisor on the node shares.

use std::path::PathBuf;

use super::board::{RunningTable, StatusBoard};
use crate::images::ImageStore;
use crate::net::NodeNetwork;
use crate::runtime::Runtime;
use crate::StateDir;

pub struct NodeContext {
    pub node: String,
    pub runtime: Runtime,
    pub images: ImageStore,
    pub network: NodeNetwork,
    pub state: StateDir,
    /// The agent binary: the `__exec` helper of exec probes and `orch exec`.
    pub helper: PathBuf,
    pub board: StatusBoard,
    /// Replicas whose container runs now (for exec and stats).
    pub running: RunningTable,
}
