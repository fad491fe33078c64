//! A fake agent, for the controller's tests and benchmarks: it speaks `orch.v1.Nodes` over
//! real gRPC exactly as an agent does (register, session, heartbeats, status reports) but
//! "runs" its desired set by declaring every replica Running and ready at once.
//! Not for production use: the real agent lives in `orch-agent`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use orch_api::pb;
use orch_api::pb::nodes_client::NodesClient;
use tokio::sync::mpsc;

use crate::store::{Expect, Fence, KeyValue, LeaseId, Listing, Revision, Store, StoreError, TxnOp, WatchStream};

#[derive(Debug, Default)]
struct Seen {
    /// Replica id → replica, as the agent "runs" it.
    running: BTreeMap<String, pb::Replica>,
    generation: u64,
    desired_sets: u64,
    /// Desired sets that came as a delta.
    delta_sets: u64,
    /// The endpoints and routes the sets gave.
    shared: orch_api::deltas::KnownShared,
    /// Routes the sets carried, in all (whole or changed).
    routes_received: u64,
    /// Parts of sets that came in parts, but the last of each.
    parts: u64,
    /// When the last heartbeat went, and the longest time between two so far (a fake
    /// agent's process too busy to beat on time is not the controller's doing).
    last_beat: Option<std::time::Instant>,
    longest_beat_gap: Duration,
    sessions: u64,
    /// Heartbeats sent.
    beats: u64,
    /// Heartbeats and reports stop, the connection stays open (a machine that hangs or
    /// whose link goes); desired sets are not taken in.
    frozen: bool,
    /// Replica id → last octet of its address, kept while it runs.
    addresses: BTreeMap<String, u32>,
}

pub struct FakeAgent {
    pub name: String,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone)]
pub struct FakeAgentConfig {
    pub name: String,
    pub address: String,
    pub capacity: pb::ResourceList,
    pub labels: BTreeMap<String, String>,
    pub heartbeat: Duration,
    /// Mutual TLS towards the controller (`https`), plain text when unset.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Takes deltas, as agents do; false: an agent of an earlier build, which gets
    /// every set whole.
    pub takes_deltas: bool,
}

impl FakeAgentConfig {
    pub fn new(name: &str, address: &str) -> FakeAgentConfig {
        FakeAgentConfig {
            name: name.to_owned(),
            address: address.to_owned(),
            capacity: pb::ResourceList { cpu_millis: 64_000, memory_bytes: 256 << 30, pids: 0 },
            labels: BTreeMap::new(),
            heartbeat: Duration::from_millis(200),
            tls: None,
            takes_deltas: true,
        }
    }
}

impl FakeAgent {
    /// Connects to the controller at `controller` (reconnecting whenever the session ends).
    pub fn start(controller: SocketAddr, config: FakeAgentConfig) -> FakeAgent {
        FakeAgent::start_running(controller, config, Vec::new())
    }

    /// As [`FakeAgent::start`], for a node that still runs `replicas` from before (a
    /// node coming back after a partition).
    pub fn start_running(controller: SocketAddr, config: FakeAgentConfig, replicas: Vec<pb::Replica>) -> FakeAgent {
        let seen = Arc::new(Mutex::new(Seen { running: replicas.into_iter().map(|r| (r.id.clone(), r)).collect(), ..Seen::default() }));
        let name = config.name.clone();
        let task = tokio::spawn(run(controller, config, Arc::clone(&seen)));
        FakeAgent { name, seen, task }
    }

    /// Its heartbeats stop while its connection stays open: what the controller sees of
    /// a machine that died or lost its link.
    pub fn freeze(&self) {
        lock(&self.seen).frozen = true;
    }

    /// Heartbeats (and desired sets) flow again on the same connection: the link is back.
    pub fn thaw(&self) {
        lock(&self.seen).frozen = false;
    }

    /// Stops its process: no goodbye, but its connection closes (as with an agent
    /// killed on a machine that runs on).
    pub fn kill(self) -> Vec<pb::Replica> {
        self.task.abort();
        lock(&self.seen).running.values().cloned().collect()
    }

    pub fn running(&self) -> Vec<String> {
        lock(&self.seen).running.keys().cloned().collect()
    }

    pub fn generation(&self) -> u64 {
        lock(&self.seen).generation
    }

    pub fn desired_sets(&self) -> u64 {
        lock(&self.seen).desired_sets
    }

    /// How many of them came as a delta.
    pub fn delta_sets(&self) -> u64 {
        lock(&self.seen).delta_sets
    }

    /// Heartbeats sent so far.
    pub fn beats(&self) -> u64 {
        lock(&self.seen).beats
    }

    /// The longest time between two of this agent's heartbeats since the last call (its
    /// own lateness: it runs in a test's or benchmark's process), starting the count again.
    pub fn take_longest_beat_gap(&self) -> Duration {
        std::mem::take(&mut lock(&self.seen).longest_beat_gap)
    }

    pub fn sessions(&self) -> u64 {
        lock(&self.seen).sessions
    }

    pub fn endpoints(&self) -> Vec<pb::ServiceEndpoints> {
        lock(&self.seen).shared.endpoints().cloned().collect()
    }

    /// Routes its sets carried, in all: with route deltas, about one per other node.
    /// How many parts of sets cut into parts came (the last of each aside).
    pub fn parts_received(&self) -> u64 {
        lock(&self.seen).parts
    }

    pub fn routes_received(&self) -> u64 {
        lock(&self.seen).routes_received
    }

    pub fn routes(&self) -> Vec<pb::NodeRoute> {
        lock(&self.seen).shared.routes().to_vec()
    }
}

async fn run(controller: SocketAddr, config: FakeAgentConfig, seen: Arc<Mutex<Seen>>) {
    loop {
        if let Err(error) = session(controller, &config, &seen).await {
            tracing::debug!(node = %config.name, %error, "fake agent session ended");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn report(config: &FakeAgentConfig, seen: &mut Seen, pod_prefix: &str) -> pb::AgentMessage {
    let running: Vec<String> = seen.running.keys().cloned().collect();
    seen.addresses.retain(|id, _| running.contains(id));
    for id in &running {
        if !seen.addresses.contains_key(id) {
            let free = (10..250).find(|octet| !seen.addresses.values().any(|used| used == octet)).unwrap_or(250);
            seen.addresses.insert(id.clone(), free);
        }
    }
    let replicas = seen
        .running
        .values()
        .map(|replica| {
            let octet = seen.addresses.get(&replica.id).copied().unwrap_or(250);
            let mut report = pb::ReplicaReport::from(replica);
            report.status = Some(pb::ReplicaStatus {
                phase: pb::ReplicaPhase::Running.into(),
                ready: true,
                ip: format!("{pod_prefix}{octet}"),
                host_pid: 1000 + octet,
                ..Default::default()
            });
            report
        })
        .collect();
    pb::AgentMessage {
        node: config.name.clone(),
        body: Some(pb::agent_message::Body::Status(pb::StatusReport { observed_generation: seen.generation, replicas, events: vec![], conditions: vec![] })),
        ..Default::default()
    }
}

async fn session(controller: SocketAddr, config: &FakeAgentConfig, seen: &Mutex<Seen>) -> Result<(), String> {
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{controller}")).map_err(|e| e.to_string())?;
    if let Some(tls) = &config.tls {
        endpoint = endpoint.tls_config(tls.clone()).map_err(|e| e.to_string())?;
    }
    let mut client = NodesClient::new(endpoint.connect().await.map_err(|e| e.to_string())?);
    let info = pb::NodeInfo {
        name: config.name.clone(),
        address: config.address.clone(),
        capacity: Some(config.capacity),
        labels: config.labels.clone().into_iter().collect(),
        api_port: 0,
        allows_chaos: false,
    };
    let registered = client.register(pb::RegisterRequest { node: Some(info) }).await.map_err(|e| e.to_string())?.into_inner();
    // "10.88.3.0/24" → "10.88.3."
    let pod_prefix = registered.pod_cidr.rsplit_once('.').map(|(p, _)| format!("{p}.")).unwrap_or_default();
    let (upward, outgoing) = mpsc::channel(16);
    let heartbeat =
        || pb::AgentMessage { node: config.name.clone(), body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat { unix_ms: 0 })), ..Default::default() };
    // As a real agent: deltas, made whole here.
    upward
        .send(pb::AgentMessage {
            takes_deltas: config.takes_deltas,
            takes_route_deltas: config.takes_deltas,
            takes_endpoint_deltas: config.takes_deltas,
            takes_parts: config.takes_deltas,
            ..heartbeat()
        })
        .await
        .map_err(|e| e.to_string())?;
    let first_report = report(config, &mut lock(seen), &pod_prefix);
    upward.send(first_report).await.map_err(|e| e.to_string())?;
    let mut downward = client.session(tokio_stream::wrappers::ReceiverStream::new(outgoing)).await.map_err(|e| e.to_string())?.into_inner();
    lock(seen).sessions += 1;
    let mut ticker = tokio::time::interval(config.heartbeat);
    // A set coming in parts, as a real agent takes it: learnt aside, seen whole once the
    // last part is in (with whether its first part was a delta).
    let mut parts: Option<(bool, orch_api::deltas::KnownShared)> = None;
    loop {
        // Read before the select: a guard held across it would deadlock the branches.
        let frozen = lock(seen).frozen;
        tokio::select! {
            _ = ticker.tick() => {
                let beat = !lock(seen).frozen;
                if beat {
                    upward.send(heartbeat()).await.map_err(|e| e.to_string())?;
                    let (mut seen, now) = (lock(seen), std::time::Instant::now());
                    seen.beats += 1;
                    if let Some(last) = seen.last_beat.replace(now) {
                        seen.longest_beat_gap = seen.longest_beat_gap.max(now.duration_since(last));
                    }
                }
            }
            // Frozen, what comes down waits in the connection, as in a cut link.
            message = downward.message(), if !frozen => {
                let message = message.map_err(|e| e.to_string())?.ok_or("the controller ended the session")?;
                let Some(pb::controller_message::Body::Desired(mut desired)) = message.body else { continue };
                lock(seen).routes_received += desired.routes.len() as u64;
                // (delta, what the set says of the shared part once learnt; None: not yet)
                let (delta, learnt) = if desired.continued || parts.is_some() {
                    let (first_delta, mut shared) = parts.take().unwrap_or_else(|| (desired.delta, lock(seen).shared.clone()));
                    shared.learn(&mut desired).map_err(|e| e.to_string())?;
                    if desired.continued {
                        parts = Some((first_delta, shared));
                        lock(seen).parts += 1;
                        continue;
                    }
                    (first_delta, Some(shared))
                } else {
                    (desired.delta, None)
                };
                let report = {
                    let mut seen = lock(seen);
                    seen.generation = desired.generation;
                    seen.desired_sets += 1;
                    seen.delta_sets += u64::from(delta);
                    match learnt {
                        Some(shared) => seen.shared = shared,
                        None => seen.shared.learn(&mut desired).map_err(|e| e.to_string())?,
                    }
                    seen.running = desired.replicas.into_iter().filter_map(|d| d.replica).map(|r| (r.id.clone(), r)).collect();
                    report(config, &mut seen, &pod_prefix)
                };
                upward.send(report).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

/// A store whose every request is counted (what a controller asks of its store per
/// replica or node, in tests and benchmarks).
pub struct CountingStore {
    inner: Arc<dyn Store>,
    requests: AtomicU64,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn Store>) -> CountingStore {
        CountingStore { inner, requests: AtomicU64::new(0) }
    }

    /// Requests so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl Store for CountingStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.count();
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.count();
        self.inner.list(prefix).await
    }
    async fn put_with_lease(&self, key: &str, value: Vec<u8>, expect: Expect, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        self.count();
        self.inner.put_with_lease(key, value, expect, lease).await
    }
    async fn delete(&self, key: &str, expect: Expect) -> Result<Option<Revision>, StoreError> {
        self.count();
        self.inner.delete(key, expect).await
    }
    async fn txn_fenced(&self, fence: Option<&Fence>, ops: Vec<TxnOp>) -> Result<Vec<Option<Revision>>, StoreError> {
        self.count();
        self.inner.txn_fenced(fence, ops).await
    }
    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream, StoreError> {
        self.count();
        self.inner.watch(prefix, from_revision).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.count();
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.count();
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.count();
        self.inner.revoke_lease(lease).await
    }
}

/// The benchmarks' peer: how long the pure scheduler takes to place `replicas` (in
/// `services` services, 100m CPU and 64 MiB each) over `nodes` empty nodes.
pub fn time_pure_scheduler(replicas: usize, nodes: usize, services: usize) -> Duration {
    use crate::scheduler::{schedule, ClusterView, NodeView, PendingReplica, Resources};
    let view = ClusterView {
        nodes: (0..nodes)
            .map(|i| NodeView {
                name: format!("node-{i:04}"),
                ready: true,
                allocatable: Resources { cpu_millis: 64_000, memory_bytes: 256 << 30 },
                ..NodeView::default()
            })
            .collect(),
    };
    let services = services.max(1);
    let pending: Vec<PendingReplica> = (0..replicas)
        .map(|r| PendingReplica {
            id: format!("svc-{}-{r}", r % services),
            service: format!("svc-{}", r % services),
            requests: Resources { cpu_millis: 100, memory_bytes: 64 << 20 },
            ..PendingReplica::default()
        })
        .collect();
    let start = std::time::Instant::now();
    let plan = schedule(&view, &pending);
    let took = start.elapsed();
    assert_eq!(plan.bindings.len(), replicas, "the pure scheduler placed every replica");
    took
}

/// The benchmarks' and fleet test's manifest: `services` services named `PREFIX-<n>`,
/// `replicas` replicas in all, each requesting 100m CPU and 64 MiB (as
/// [`time_pure_scheduler`] places them).
pub fn services_manifest(prefix: &str, services: usize, replicas: usize) -> String {
    let per_service = replicas / services.max(1);
    (0..services)
        .map(|s| {
            format!(
                "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {prefix}-{s}}}\nspec:\n  replicas: {per_service}\n  image: busybox\n  \
                 resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A benchmark's numeric setting from the environment, or `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A process's CPU seconds (user + system, at Linux's 100 ticks a second) and peak
/// resident set (VmHWM) in MiB, from `/proc/<process>/` (`"self"` or a PID).
pub fn process_usage(process: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{process}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    // After the command: state is field 0, utime 11, stime 12.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).unwrap_or(0.0);
    ((ticks(11) + ticks(12)) as f64 / 100.0, kib / 1024.0)
}
