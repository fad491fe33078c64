//! `orch-agent teardown` as a library function: stops and removes every container an
//! agent's state directory knows, removes the node network it left and the replicas'
//! records, logs, generated files and emptyDir volumes (local volumes stay). Nothing is set up in order to be torn down.

use std::path::PathBuf;

use super::registration::Registration;
use crate::net::{NodeNetwork, Subnet};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::StateDir;

/// Which agent's leftovers to remove.
#[derive(Debug, Clone)]
pub struct Leftovers {
    pub state_dir: PathBuf,
    pub bridge: String,
    pub cgroup_parent: String,
    /// The agent binary (the runtime needs it to be built; nothing is started).
    pub helper: PathBuf,
}

/// Removes everything; returns what could not be removed (one line each). The
/// registration is kept after a failure, so that teardown can be run again.
pub async fn teardown(leftovers: &Leftovers) -> Result<(), Vec<String>> {
    let state = StateDir::new(&leftovers.state_dir);
    let config = RuntimeConfig { state_dir: leftovers.state_dir.clone(), cgroup_parent: leftovers.cgroup_parent.clone(), init_exe: leftovers.helper.clone() };
    let runtime = Runtime::new(config).map_err(|e| vec![e.to_string()])?;
    let mut failures = Vec::new();
    for id in runtime.container_ids() {
        let removed = match runtime.adopt(&id) {
            Ok(container) => {
                container.kill().await;
                container.remove().await
            }
            // Never finished starting: its cgroup and directory are all there is.
            Err(_) => runtime.discard(&id),
        };
        if let Err(e) = removed {
            failures.push(format!("container {id}: {e}"));
        }
    }
    match Registration::load(&leftovers.state_dir) {
        Ok(Some(registration)) => {
            let service_cidr = Subnet::parse(&registration.service_cidr).ok();
            if service_cidr.is_none() {
                failures.push(format!("{}: unreadable service range {:?}", state.registration().display(), registration.service_cidr));
            }
            if let Err(e) = NodeNetwork::remove_leftovers(&leftovers.bridge, service_cidr, &leftovers.state_dir).await {
                failures.push(format!("node network: {e}"));
            }
        }
        Ok(None) => {}
        Err(error) => {
            // The bridge and the balancer go all the same; the service range's route is
            // the one thing its record was needed for.
            failures.push(format!("node network: the saved registration cannot be read ({error}): the route to the service range, if any, is left"));
            if let Err(e) = NodeNetwork::remove_leftovers(&leftovers.bridge, None, &leftovers.state_dir).await {
                failures.push(format!("node network: {e}"));
            }
        }
    }
    failures.extend(super::volumes::release_all(&state.empty_dirs_root()).into_iter().map(|e| format!("emptyDir volumes: {e}")));
    if let Err(e) = super::volumes::unmount_run_root(&super::volumes::run_root_for(&leftovers.bridge)) {
        failures.push(format!("config and secret files: {e}"));
    }
    for dir in state.replica_state() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if failures.is_empty() {
        Registration::forget(&leftovers.state_dir);
        Ok(())
    } else {
        Err(failures)
    }
}
