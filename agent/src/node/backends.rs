//! What the node layer runs on, as four small traits: [`Containers`] (start, adopt,
//! discard, usage) and the [`RunningContainer`]s they hand out, [`Images`] (local
//! record, pull, layers), the [`PodNetwork`] (a replica's address and wiring, the
//! balancer table, routes to other nodes) and the [`ProbeChecks`] (one probe attempt).
//!
//! The real ones are the runtime, the image store, the node network and the probe
//! checks of [`probe`](super::probe), implemented here; the fakes of
//! [`crate::testing`] stand in for them in the node layer's tests without root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use orch_api::pb;

use super::probe::ProbeTarget;
use crate::cgroups::CgroupStats;
use crate::images::{ImageError, ImageRecord, ImageStore};
use crate::net::{ListenerFailure, NetError, NetworkView, NodeNetwork, PeerRoute, ServiceEndpoints};
use crate::runtime::{Container, ContainerExit, ContainerNetwork, ContainerSpec, Runtime, RuntimeError};

/// Why a backend refused.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Network(#[from] NetError),
    /// A failure a test scripted into a fake.
    #[cfg(any(test, feature = "testing"))]
    #[error("{0}")]
    Scripted(String),
}

/// Runs containers.
#[async_trait]
pub trait Containers: Send + Sync {
    /// Starts `spec`, wired by `network` before its command runs.
    async fn start(&self, spec: &ContainerSpec, network: &dyn ContainerNetwork) -> Result<Box<dyn RunningContainer>, BackendError>;
    /// Takes over a container a previous agent started.
    fn adopt(&self, id: &str) -> Result<Box<dyn RunningContainer>, BackendError>;
    /// Removes what is left of a container that cannot be adopted.
    fn discard(&self, id: &str) -> Result<(), BackendError>;
    /// Every container this node has, running or not.
    fn container_ids(&self) -> Vec<String>;
    /// A container's cgroup usage, by replica id.
    fn usage(&self, id: &str) -> Option<CgroupStats>;
}

/// One container, from start (or adoption) to removal.
#[async_trait]
pub trait RunningContainer: Send + Sync {
    /// Its PID 1 as the host sees it.
    fn host_pid(&self) -> i32;
    fn cgroup_paths(&self) -> Vec<PathBuf>;
    /// Resolves when it ends (at once if it has).
    async fn wait(&self) -> ContainerExit;
    /// Its stop signal (as its spec said; `unrecorded` when a container an older agent
    /// started has none on record), then SIGKILL after `grace`.
    async fn stop(&self, grace: Duration, unrecorded: i32) -> ContainerExit;
    /// SIGKILL.
    async fn kill(&self) -> ContainerExit;
    /// Removes everything of an ended container.
    async fn remove(self: Box<Self>) -> Result<(), BackendError>;
}

/// The node's images.
#[async_trait]
pub trait Images: Send + Sync {
    /// The image when it is on the node already.
    fn local(&self, reference: &str) -> Option<ImageRecord>;
    async fn pull(&self, reference: &str) -> Result<ImageRecord, BackendError>;
    /// Its unpacked layers, lowest first.
    fn layers(&self, image: &ImageRecord) -> Result<Vec<PathBuf>, BackendError>;
}

/// The node's pod network. As a [`ContainerNetwork`] it wires a starting container.
#[async_trait]
pub trait PodNetwork: ContainerNetwork {
    /// Reserves the replica's address and writes its `/etc` files into `dir`; returns the
    /// address and the files to bind (host path, path in the container).
    fn prepare(&self, replica: &str, hostname: &str, dir: &Path) -> Result<(Ipv4Addr, Vec<(PathBuf, String)>), BackendError>;
    /// Unwires the replica and frees its address.
    async fn detach(&self, replica: &str) -> Result<(), BackendError>;
    /// Replaces the balancer's table; returns the listeners it could not open (the
    /// others are served).
    async fn apply_services(&self, table: &[ServiceEndpoints]) -> Result<Vec<ListenerFailure>, BackendError>;
    /// The connections the balancer relays to `ip` now.
    async fn active_connections(&self, ip: Ipv4Addr) -> usize;
    /// Replaces the routes to other nodes' pods.
    async fn set_peer_routes(&self, routes: &[PeerRoute]) -> Result<(), BackendError>;
    async fn view(&self) -> Result<NetworkView, BackendError>;
    /// Removes the node network and forgets its addresses (a drained node).
    async fn teardown(self: Box<Self>) -> Result<(), BackendError>;
    /// Registers the network's metrics (the balancer's) in the agent's registry.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
    /// Brings the registered metrics up to date before a scrape (blocking: scrapes run
    /// on a blocking thread).
    fn refresh_metrics(&self) {}
    /// Whether the balancer answers (a dead one is started again by the next apply).
    async fn balancer_answers(&self) -> bool {
        true
    }
}

/// One attempt of a probe: `Err(why)` when it fails.
#[async_trait]
pub trait ProbeChecks: Send + Sync {
    async fn check(&self, probe: &pb::Probe, target: &ProbeTarget) -> Result<(), String>;
}

#[async_trait]
impl Containers for Runtime {
    async fn start(&self, spec: &ContainerSpec, network: &dyn ContainerNetwork) -> Result<Box<dyn RunningContainer>, BackendError> {
        Ok(Box::new(self.start_with_network(spec, Some(network)).await?))
    }

    fn adopt(&self, id: &str) -> Result<Box<dyn RunningContainer>, BackendError> {
        Ok(Box::new(Runtime::adopt(self, id)?))
    }

    fn discard(&self, id: &str) -> Result<(), BackendError> {
        Ok(Runtime::discard(self, id)?)
    }

    fn container_ids(&self) -> Vec<String> {
        Runtime::container_ids(self)
    }

    fn usage(&self, id: &str) -> Option<CgroupStats> {
        self.cgroup_layout().container(&self.cgroup_name(id)).ok()?.stats().ok()
    }
}

#[async_trait]
impl RunningContainer for Container {
    fn host_pid(&self) -> i32 {
        Container::host_pid(self)
    }

    fn cgroup_paths(&self) -> Vec<PathBuf> {
        Container::cgroup_paths(self)
    }

    async fn wait(&self) -> ContainerExit {
        Container::wait(self).await
    }

    async fn stop(&self, grace: Duration, unrecorded: i32) -> ContainerExit {
        Container::stop(self, grace, unrecorded).await
    }

    async fn kill(&self) -> ContainerExit {
        Container::kill(self).await
    }

    async fn remove(self: Box<Self>) -> Result<(), BackendError> {
        Ok(Container::remove(*self).await?)
    }
}

#[async_trait]
impl Images for ImageStore {
    fn local(&self, reference: &str) -> Option<ImageRecord> {
        self.get(reference).ok()
    }

    async fn pull(&self, reference: &str) -> Result<ImageRecord, BackendError> {
        Ok(ImageStore::pull(self, reference).await.map(|(image, _)| image)?)
    }

    fn layers(&self, image: &ImageRecord) -> Result<Vec<PathBuf>, BackendError> {
        Ok(self.lower_dirs(image)?)
    }
}

#[async_trait]
impl PodNetwork for NodeNetwork {
    fn prepare(&self, replica: &str, hostname: &str, dir: &Path) -> Result<(Ipv4Addr, Vec<(PathBuf, String)>), BackendError> {
        Ok(NodeNetwork::prepare(self, replica, hostname, dir)?)
    }

    async fn detach(&self, replica: &str) -> Result<(), BackendError> {
        Ok(NodeNetwork::detach(self, replica).await?)
    }

    async fn apply_services(&self, table: &[ServiceEndpoints]) -> Result<Vec<ListenerFailure>, BackendError> {
        Ok(NodeNetwork::apply_services(self, table).await?)
    }

    async fn set_peer_routes(&self, routes: &[PeerRoute]) -> Result<(), BackendError> {
        Ok(NodeNetwork::set_peer_routes(self, routes).await?)
    }

    async fn active_connections(&self, ip: Ipv4Addr) -> usize {
        NodeNetwork::active_connections(self, ip).await
    }

    async fn view(&self) -> Result<NetworkView, BackendError> {
        Ok(NodeNetwork::view(self).await?)
    }

    async fn teardown(self: Box<Self>) -> Result<(), BackendError> {
        Ok(NodeNetwork::teardown(*self, true).await?)
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(balancer) = self.balancer() {
            balancer.metrics().register(registry);
        }
        if let Some(kernel) = self.kernel_path() {
            kernel.metrics().register(registry);
        }
    }

    fn refresh_metrics(&self) {
        if let Some(balancer) = self.balancer() {
            balancer.refresh_metrics_blocking();
        }
        if let Some(kernel) = self.kernel_path() {
            kernel.refresh_metrics();
        }
    }

    async fn balancer_answers(&self) -> bool {
        match self.balancer() {
            Some(balancer) => balancer.answers().await,
            None => true,
        }
    }
}

/// The real checks: exec through the `__exec` helper, HTTP GET, TCP connect.
pub struct RealProbeChecks;

#[async_trait]
impl ProbeChecks for RealProbeChecks {
    async fn check(&self, probe: &pb::Probe, target: &ProbeTarget) -> Result<(), String> {
        super::probe::check(probe, target).await
    }
}
