//! Fakes of the node layer's [backends](crate::node::backends), for tests that need no
//! root and run in milliseconds on paused tokio time: a [`FakeRuntime`] whose containers
//! behave as their image says, [`FakeImages`], a [`FakePodNetwork`] and [`FakeProbes`]
//! whose verdicts a test sets. [`fake_node`] builds a whole node context on them.
//!
//! Compiled for the crate's own tests and behind the `testing` feature, never into the
//! agent binary.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use orch_api::pb;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cgroups::CgroupStats;
use crate::images::{ImageDefaults, ImageRecord};
use crate::net::table::ListenKey;
use crate::net::{BalancerView, ListenerFailure, NetworkView, PeerRoute, ServiceEndpoints};
use crate::node::backends::{BackendError, Containers, Images, PodNetwork, ProbeChecks, RunningContainer};
use crate::node::context::{Backends, NodeContext};
use crate::node::probe::ProbeTarget;
use crate::runtime::{now_unix_ms, ContainerExit, ContainerNetwork, ContainerSpec};
use crate::StateDir;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a fake container behaves, chosen by its image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Runs until stopped or [killed](FakeRuntime::kill).
    Serve,
    /// Exits with this code after this long.
    Exit { after: Duration, code: i32 },
    /// Cannot start.
    Refuse(String),
}

struct FakeProcess {
    id: String,
    pid: i32,
    /// What its spec asked to stop it with: a stop ends it with 128 + this (none: one
    /// left running by a previous agent, which records none).
    stop_signal: Option<i32>,
    exit: watch::Sender<Option<ContainerExit>>,
}

impl FakeProcess {
    fn end(&self, code: i32, signal: Option<i32>) {
        self.exit.send_if_modified(|exit| {
            if exit.is_some() {
                return false;
            }
            *exit = Some(ContainerExit { code, signal, oom_killed: false, finished_unix_ms: now_unix_ms() });
            true
        });
    }
}

#[derive(Default)]
struct RuntimeState {
    behaviours: BTreeMap<String, Behaviour>,
    containers: BTreeMap<String, Arc<FakeProcess>>,
    starts: BTreeMap<String, Vec<Instant>>,
    /// The image (manifest digest) of each start, by container.
    images: BTreeMap<String, Vec<String>>,
    next_pid: i32,
}

/// Containers as tokio timers. Images without a [`Behaviour`] serve.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<RuntimeState>>,
}

impl FakeRuntime {
    /// Containers of `image` behave so from now on.
    pub fn behave(&self, image: &str, behaviour: Behaviour) {
        lock(&self.state).behaviours.insert(image.to_owned(), behaviour);
    }

    /// A container a previous agent left running, to be adopted.
    pub fn leave_running(&self, id: &str) -> i32 {
        let mut state = lock(&self.state);
        let process = new_process(&mut state, id, None);
        let pid = process.pid;
        state.containers.insert(id.to_owned(), process);
        pid
    }

    /// Ends container `id` as if its command exited with `code`.
    pub fn kill(&self, id: &str, code: i32) {
        if let Some(process) = lock(&self.state).containers.get(id) {
            process.end(code, None);
        }
    }

    /// When each start of `id` happened.
    pub fn starts(&self, id: &str) -> Vec<Instant> {
        lock(&self.state).starts.get(id).cloned().unwrap_or_default()
    }

    /// The image (manifest digest) each start of `id` ran, in order.
    pub fn images_started(&self, id: &str) -> Vec<String> {
        lock(&self.state).images.get(id).cloned().unwrap_or_default()
    }

    /// Containers that exist (running or ended, not removed).
    pub fn containers(&self) -> BTreeSet<String> {
        lock(&self.state).containers.keys().cloned().collect()
    }

    pub fn host_pid(&self, id: &str) -> Option<i32> {
        lock(&self.state).containers.get(id).map(|p| p.pid)
    }

    fn handle(&self, process: Arc<FakeProcess>) -> Box<dyn RunningContainer> {
        Box::new(FakeContainer { process, runtime: self.clone() })
    }
}

fn new_process(state: &mut RuntimeState, id: &str, stop_signal: Option<i32>) -> Arc<FakeProcess> {
    state.next_pid += 1;
    Arc::new(FakeProcess { id: id.to_owned(), pid: 1000 + state.next_pid, stop_signal, exit: watch::channel(None).0 })
}

#[async_trait]
impl Containers for FakeRuntime {
    async fn start(&self, spec: &ContainerSpec, network: &dyn ContainerNetwork) -> Result<Box<dyn RunningContainer>, BackendError> {
        let image = spec.image.clone().unwrap_or_default();
        let process = {
            let mut state = lock(&self.state);
            state.starts.entry(spec.id.clone()).or_default().push(Instant::now());
            state.images.entry(spec.id.clone()).or_default().push(image.clone());
            let behaviour = state.behaviours.get(&image).cloned().unwrap_or(Behaviour::Serve);
            if let Behaviour::Refuse(why) = behaviour {
                return Err(BackendError::Scripted(why));
            }
            if state.containers.contains_key(&spec.id) {
                return Err(BackendError::Scripted(format!("a container named {:?} already exists", spec.id)));
            }
            let process = new_process(&mut state, &spec.id, Some(spec.stop_signal));
            state.containers.insert(spec.id.clone(), Arc::clone(&process));
            if let Behaviour::Exit { after, code } = behaviour {
                let process = Arc::clone(&process);
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    process.end(code, None);
                });
            }
            process
        };
        network.attach(&spec.id, process.pid).await.map_err(BackendError::Scripted)?;
        Ok(self.handle(process))
    }

    fn adopt(&self, id: &str) -> Result<Box<dyn RunningContainer>, BackendError> {
        // As the real runtime: an ended container is adopted too, and its wait resolves
        // at once with its exit.
        let process = lock(&self.state).containers.get(id).cloned();
        match process {
            Some(process) => Ok(self.handle(process)),
            None => Err(BackendError::Scripted(format!("container {id} has no state"))),
        }
    }

    fn discard(&self, id: &str) -> Result<(), BackendError> {
        lock(&self.state).containers.remove(id);
        Ok(())
    }

    fn container_ids(&self) -> Vec<String> {
        lock(&self.state).containers.keys().cloned().collect()
    }

    fn usage(&self, id: &str) -> Option<CgroupStats> {
        lock(&self.state).containers.get(id).map(|_| CgroupStats::default())
    }
}

struct FakeContainer {
    process: Arc<FakeProcess>,
    runtime: FakeRuntime,
}

#[async_trait]
impl RunningContainer for FakeContainer {
    fn host_pid(&self) -> i32 {
        self.process.pid
    }

    fn cgroup_paths(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    async fn wait(&self) -> ContainerExit {
        let mut exit = self.process.exit.subscribe();
        let ended = exit.wait_for(Option::is_some).await.ok().and_then(|exit| *exit);
        ended.unwrap_or(ContainerExit { code: 137, signal: Some(9), oom_killed: false, finished_unix_ms: 0 })
    }

    async fn stop(&self, _grace: Duration, unrecorded: i32) -> ContainerExit {
        let signal = self.process.stop_signal.unwrap_or(unrecorded);
        self.process.end(128 + signal, Some(signal));
        self.wait().await
    }

    async fn kill(&self) -> ContainerExit {
        self.process.end(137, Some(9));
        self.wait().await
    }

    async fn remove(self: Box<Self>) -> Result<(), BackendError> {
        let mut state = lock(&self.runtime.state);
        if state.containers.get(&self.process.id).is_some_and(|p| Arc::ptr_eq(p, &self.process)) {
            state.containers.remove(&self.process.id);
        }
        Ok(())
    }
}

/// Images that are on the node or pulled at once, unless a test made them unpullable.
#[derive(Clone, Default)]
pub struct FakeImages {
    state: Arc<Mutex<ImagesState>>,
}

#[derive(Default)]
struct ImagesState {
    local: BTreeMap<String, ImageRecord>,
    unpullable: BTreeSet<String>,
    /// The `StopSignal` a reference's image names.
    stop_signals: BTreeMap<String, String>,
    /// How often each reference's tag moved in the registry.
    moves: BTreeMap<String, u32>,
    pulls: usize,
}

impl FakeImages {
    pub fn unpullable(&self, reference: &str) {
        lock(&self.state).unpullable.insert(reference.to_owned());
    }

    /// The registry's tag now names another image: the next pull gets a new digest
    /// (`REFERENCE@vN`); what the node holds stays as it is.
    pub fn move_tag(&self, reference: &str) {
        *lock(&self.state).moves.entry(reference.to_owned()).or_default() += 1;
    }

    /// The image `reference` names `signal` as its StopSignal (from its next pull on).
    pub fn set_stop_signal(&self, reference: &str, signal: &str) {
        lock(&self.state).stop_signals.insert(reference.to_owned(), signal.to_owned());
    }

    /// How many pulls reached the registry.
    pub fn pulls(&self) -> usize {
        lock(&self.state).pulls
    }
}

fn record(reference: &str) -> ImageRecord {
    ImageRecord {
        reference: reference.to_owned(),
        manifest_digest: reference.to_owned(),
        config_digest: String::new(),
        layers: Vec::new(),
        defaults: ImageDefaults { entrypoint: vec!["/bin/serve".into()], ..ImageDefaults::default() },
        pulled_unix_ms: 0,
    }
}

#[async_trait]
impl Images for FakeImages {
    fn local(&self, reference: &str) -> Option<ImageRecord> {
        lock(&self.state).local.get(reference).cloned()
    }

    async fn pull(&self, reference: &str) -> Result<ImageRecord, BackendError> {
        let mut state = lock(&self.state);
        state.pulls += 1;
        if state.unpullable.contains(reference) {
            return Err(BackendError::Scripted(format!("{reference}: manifest unknown")));
        }
        let mut image = record(reference);
        image.defaults.stop_signal = state.stop_signals.get(reference).cloned();
        if let Some(moves) = state.moves.get(reference) {
            image.manifest_digest = format!("{reference}@v{moves}");
        }
        state.local.insert(reference.to_owned(), image.clone());
        Ok(image)
    }

    fn layers(&self, _: &ImageRecord) -> Result<Vec<PathBuf>, BackendError> {
        Ok(Vec::new())
    }
}

/// Addresses from 10.0.0.2 up, one per replica; the balancer table and routes kept as
/// given.
#[derive(Clone, Default)]
pub struct FakePodNetwork {
    state: Arc<Mutex<NetworkState>>,
}

#[derive(Default)]
struct NetworkState {
    addresses: BTreeMap<String, Ipv4Addr>,
    services: Vec<ServiceEndpoints>,
    routes: Vec<PeerRoute>,
    torn_down: bool,
    /// Node ports another process holds: their listeners fail.
    held_ports: BTreeSet<u16>,
    /// Connections the balancer relays, by backend address.
    connections: BTreeMap<Ipv4Addr, usize>,
}

impl FakePodNetwork {
    /// Says the balancer relays `count` connections to `ip`.
    pub fn set_connections(&self, ip: Ipv4Addr, count: usize) {
        lock(&self.state).connections.insert(ip, count);
    }

    /// Says another process holds node port `port` (or no longer does).
    pub fn hold_port(&self, port: u16, held: bool) {
        let mut state = lock(&self.state);
        if held {
            state.held_ports.insert(port);
        } else {
            state.held_ports.remove(&port);
        }
    }

    /// The replicas holding an address.
    pub fn addresses(&self) -> BTreeMap<String, Ipv4Addr> {
        lock(&self.state).addresses.clone()
    }

    pub fn services(&self) -> Vec<ServiceEndpoints> {
        lock(&self.state).services.clone()
    }

    pub fn routes(&self) -> Vec<PeerRoute> {
        lock(&self.state).routes.clone()
    }

    pub fn torn_down(&self) -> bool {
        lock(&self.state).torn_down
    }
}

#[async_trait]
impl ContainerNetwork for FakePodNetwork {
    async fn attach(&self, container: &str, _pid: i32) -> Result<(), String> {
        // As the real network: a container is wired only with the address it was prepared with.
        if lock(&self.state).addresses.contains_key(container) {
            Ok(())
        } else {
            Err(format!("{container} has no address"))
        }
    }
}

#[async_trait]
impl PodNetwork for FakePodNetwork {
    fn prepare(&self, replica: &str, _hostname: &str, _dir: &Path) -> Result<(Ipv4Addr, Vec<(PathBuf, String)>), BackendError> {
        let mut state = lock(&self.state);
        if let Some(ip) = state.addresses.get(replica) {
            return Ok((*ip, Vec::new()));
        }
        let taken: BTreeSet<Ipv4Addr> = state.addresses.values().copied().collect();
        let ip =
            (2..=254u8).map(|n| Ipv4Addr::new(10, 0, 0, n)).find(|ip| !taken.contains(ip)).ok_or_else(|| BackendError::Scripted("no address left".into()))?;
        state.addresses.insert(replica.to_owned(), ip);
        Ok((ip, Vec::new()))
    }

    async fn detach(&self, replica: &str) -> Result<(), BackendError> {
        lock(&self.state).addresses.remove(replica);
        Ok(())
    }

    async fn apply_services(&self, table: &[ServiceEndpoints]) -> Result<Vec<ListenerFailure>, BackendError> {
        let mut state = lock(&self.state);
        state.services = table.to_vec();
        let wanted = crate::net::table::desired(table);
        let mut failures = wanted.conflicts;
        for (key, owner) in &wanted.owners {
            if let ListenKey::NodePort(port) | ListenKey::UdpNodePort(port) = key {
                if state.held_ports.contains(port) {
                    failures.push(ListenerFailure { listener: *key, service: owner.clone(), error: "Address already in use (os error 98)".into() });
                }
            }
        }
        Ok(failures)
    }

    async fn set_peer_routes(&self, routes: &[PeerRoute]) -> Result<(), BackendError> {
        lock(&self.state).routes = routes.to_vec();
        Ok(())
    }

    async fn active_connections(&self, ip: Ipv4Addr) -> usize {
        lock(&self.state).connections.get(&ip).copied().unwrap_or(0)
    }

    async fn view(&self) -> Result<NetworkView, BackendError> {
        let state = lock(&self.state);
        Ok(NetworkView {
            bridge: "fake0".into(),
            subnet: "10.0.0.0/24".into(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            balancer_address: Ipv4Addr::new(10, 0, 0, 254),
            service_cidr: "10.96.0.0/24".into(),
            containers: state.addresses.iter().map(|(id, ip)| (id.clone(), *ip, format!("veth-{id}"))).collect(),
            routes: state.routes.clone(),
            balancer: BalancerView { netns: "fake-lb".into(), vips: Vec::new(), listeners: Vec::new(), names: BTreeMap::new() },
        })
    }

    async fn teardown(self: Box<Self>) -> Result<(), BackendError> {
        lock(&self.state).torn_down = true;
        Ok(())
    }
}

/// Probe verdicts by container address: every probe of a healthy address succeeds
/// (the default), every probe of a failing one fails.
#[derive(Clone, Default)]
pub struct FakeProbes {
    failing: Arc<Mutex<BTreeSet<Ipv4Addr>>>,
}

impl FakeProbes {
    pub fn set_healthy(&self, ip: Ipv4Addr, healthy: bool) {
        let mut failing = lock(&self.failing);
        if healthy {
            failing.remove(&ip);
        } else {
            failing.insert(ip);
        }
    }
}

#[async_trait]
impl ProbeChecks for FakeProbes {
    async fn check(&self, _probe: &pb::Probe, target: &ProbeTarget) -> Result<(), String> {
        match target.ip {
            Some(ip) if lock(&self.failing).contains(&ip) => Err(format!("{ip}: scripted failure")),
            Some(_) => Ok(()),
            None => Err("no address".into()),
        }
    }
}

/// The fakes of one node, kept by the test to script and observe them.
#[derive(Clone, Default)]
pub struct Fakes {
    pub runtime: FakeRuntime,
    pub images: FakeImages,
    pub network: FakePodNetwork,
    pub probes: FakeProbes,
}

impl Fakes {
    pub fn backends(&self) -> Backends {
        Backends {
            containers: Box::new(self.runtime.clone()),
            images: Box::new(self.images.clone()),
            network: Box::new(self.network.clone()),
            probes: Arc::new(self.probes.clone()),
        }
    }
}

/// A node context named `node` on `fakes`, keeping its state (records, logs) in `dir`.
pub fn fake_node(node: &str, fakes: &Fakes, dir: &Path) -> Arc<NodeContext> {
    Arc::new(NodeContext::new(node.to_owned(), fakes.backends(), StateDir::new(dir), PathBuf::from("/nonexistent/orch-agent")))
}
