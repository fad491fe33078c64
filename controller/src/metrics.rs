//! The controller's metrics (served by `orch_api::telemetry` on `--metrics-listen`):
//! what the reconciler and the store do, measured where it happens (pass duration,
//! scheduling latency, store operation latency and errors, heartbeats received), and
//! what the cluster holds, computed from the current [`ClusterState`] at each scrape
//! (replicas by phase and readiness, restarts, node readiness and heartbeat age,
//! leadership) — so a gauge never outlives the object it describes. (Counters keep the
//! series of a deleted service or node until the process restarts, as Prometheus
//! counters do.)

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orch_api::pb;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::state::ClusterState;
use crate::store::{Expect, LeaseId, Listing, Revision, Store, StoreError, WatchStream};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationError {
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaState {
    service: String,
    phase: String,
    ready: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaName {
    service: String,
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeName {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IncidentLabels {
    service: String,
    kind: String,
}

/// Recoveries from 10 ms to about 5.5 min.
fn recovery() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceName {
    service: String,
}

type SecondsGauge = Gauge<f64, AtomicU64>;

/// Latencies from 0.5 ms to about 33 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

pub struct ControllerMetrics {
    reconcile_duration: Histogram,
    scheduling_latency: Histogram,
    store_latency: Family<Operation, Histogram, fn() -> Histogram>,
    store_errors: Family<OperationError, Counter>,
    heartbeats: Family<NodeName, Counter>,
    last_heartbeat: Mutex<HashMap<String, Instant>>,
    leader: Gauge,
    replicas: Family<ReplicaState, Gauge>,
    desired: Family<ServiceName, Gauge>,
    restarts: Family<ReplicaName, Gauge>,
    node_ready: Family<NodeName, Gauge>,
    heartbeat_age: Family<NodeName, SecondsGauge>,
    recovery: Family<IncidentLabels, Histogram, fn() -> Histogram>,
    recovery_missed: Family<IncidentLabels, Counter>,
}

impl Default for ControllerMetrics {
    fn default() -> ControllerMetrics {
        ControllerMetrics {
            reconcile_duration: latency(),
            scheduling_latency: latency(),
            store_latency: Family::new_with_constructor(latency),
            store_errors: Family::default(),
            heartbeats: Family::default(),
            last_heartbeat: Mutex::default(),
            leader: Gauge::default(),
            replicas: Family::default(),
            desired: Family::default(),
            restarts: Family::default(),
            node_ready: Family::default(),
            heartbeat_age: Family::default(),
            recovery: Family::new_with_constructor(recovery),
            recovery_missed: Family::default(),
        }
    }
}

impl ControllerMetrics {
    /// Registers every metric, under `orch_`.
    pub fn register(&self, registry: &mut Registry) {
        let orch = registry.sub_registry_with_prefix("orch");
        orch.register("reconcile_duration_seconds", "One reconciler pass: planning and carrying the plan out", self.reconcile_duration.clone());
        orch.register(
            "scheduling_latency_seconds",
            "From a replica needing a node (created, or unbound since a pass) to its binding",
            self.scheduling_latency.clone(),
        );
        orch.register("store_operation_duration_seconds", "Store operations by kind", self.store_latency.clone());
        orch.register(
            "store_errors",
            "Store operations that failed, by kind and error (conflict: a compare-and-swap lost; fenced: a write of a deposed leader refused)",
            self.store_errors.clone(),
        );
        orch.register("node_heartbeats", "Heartbeats this controller received, by node", self.heartbeats.clone());
        orch.register("leader", "1 while this controller leads (runs the reconcilers)", self.leader.clone());
        orch.register("replicas", "Replicas by service, phase (as their node reports it) and readiness", self.replicas.clone());
        orch.register("service_desired_replicas", "The replica count each service asks for", self.desired.clone());
        orch.register("replica_restarts", "Restarts of each replica's container, as its node reports them", self.restarts.clone());
        orch.register("node_ready", "1 while the node's liveness lease is alive", self.node_ready.clone());
        orch.register("node_heartbeat_age_seconds", "Since the last heartbeat this controller received from the node", self.heartbeat_age.clone());
        orch.register(
            "recovery_seconds",
            "From a fault to its service serving again, by service and kind (restart: reported by the node's agent through this controller; reschedule: measured by the leader)",
            self.recovery.clone(),
        );
        orch.register("recovery_target_missed", "Incidents that took longer than the service's spec.recovery target", self.recovery_missed.clone());
    }

    pub fn reconciled(&self, took: Duration) {
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn scheduled(&self, waited: Duration) {
        self.scheduling_latency.observe(waited.as_secs_f64());
    }

    /// A fault recovered from (a `Recovered` or `RecoveryTargetMissed` event's incident).
    pub fn recovered(&self, incident: &pb::Incident) {
        let labels = IncidentLabels { service: incident.service.clone(), kind: incident.kind.clone() };
        self.recovery.get_or_create(&labels).observe(Duration::from_millis(incident.recovered_ms).as_secs_f64());
        if crate::incidents::missed(incident) {
            self.recovery_missed.get_or_create(&labels).inc();
        }
    }

    pub fn heartbeat(&self, node: &str) {
        self.heartbeats.get_or_create(&NodeName { node: node.to_owned() }).inc();
        self.last_heartbeat.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(node.to_owned(), Instant::now());
    }

    /// The node's session with this controller ended: its heartbeat age is another
    /// controller's to report now (or nobody's, and `orch_node_ready` says so).
    pub fn session_ended(&self, node: &str) {
        self.last_heartbeat.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(node);
    }

    fn store_operation(&self, operation: &'static str, took: Duration, error: Option<&StoreError>) {
        self.store_latency.get_or_create(&Operation { operation }).observe(took.as_secs_f64());
        if let Some(error) = error {
            let kind = match error {
                StoreError::Conflict { .. } => "conflict",
                StoreError::Fenced { .. } => "fenced",
                _ => "failed",
            };
            self.store_errors.get_or_create(&OperationError { operation, kind }).inc();
        }
    }

    /// Sets the gauges from the cluster as it is now.
    pub fn refresh(&self, state: &ClusterState, leading: bool) {
        self.leader.set(i64::from(leading));
        self.replicas.clear();
        self.restarts.clear();
        for replica in state.replicas.values().map(|r| &r.value) {
            let reported = state.status_of(replica);
            let phase = reported.map_or(pb::ReplicaPhase::Pending, pb::ReplicaStatus::phase);
            let ready = state.is_ready(replica);
            let labels = ReplicaState { service: replica.service.clone(), phase: orch_api::phase_name(phase).to_owned(), ready: ready.to_string() };
            self.replicas.get_or_create(&labels).inc();
            let restarts = reported.map_or(0, |s| s.restarts);
            self.restarts.get_or_create(&ReplicaName { service: replica.service.clone(), replica: replica.id.clone() }).set(i64::from(restarts));
        }
        self.desired.clear();
        for (name, service) in &state.services {
            let wanted = service.value.spec.as_ref().map_or(0, |s| s.replicas);
            self.desired.get_or_create(&ServiceName { service: name.clone() }).set(i64::from(wanted));
        }
        self.node_ready.clear();
        for name in state.nodes.keys() {
            self.node_ready.get_or_create(&NodeName { node: name.clone() }).set(i64::from(state.alive.contains(name)));
        }
        self.heartbeat_age.clear();
        let mut last = self.last_heartbeat.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A node deleted since is forgotten.
        last.retain(|node, _| state.nodes.contains_key(node));
        for (node, at) in last.iter() {
            self.heartbeat_age.get_or_create(&NodeName { node: node.clone() }).set(at.elapsed().as_secs_f64());
        }
    }
}

/// A store whose every operation is timed and whose errors are counted.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<ControllerMetrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<ControllerMetrics>) -> MeteredStore {
        MeteredStore { inner, metrics }
    }

    async fn timed<T>(&self, operation: &'static str, work: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let start = Instant::now();
        let result = work.await;
        self.metrics.store_operation(operation, start.elapsed(), result.as_ref().err());
        result
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> Result<Option<crate::store::KeyValue>, StoreError> {
        self.timed("get", self.inner.get(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.timed("list", self.inner.list(prefix)).await
    }

    async fn put_with_lease(&self, key: &str, value: Vec<u8>, expect: Expect, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        self.timed("put", self.inner.put_with_lease(key, value, expect, lease)).await
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<Option<Revision>, StoreError> {
        self.timed("delete", self.inner.delete(key, expect)).await
    }

    async fn txn_fenced(&self, fence: Option<&crate::store::Fence>, ops: Vec<crate::store::TxnOp>) -> Result<Vec<Option<Revision>>, StoreError> {
        self.timed("txn", self.inner.txn_fenced(fence, ops)).await
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream, StoreError> {
        self.timed("watch", self.inner.watch(prefix, from_revision)).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.timed("grant_lease", self.inner.grant_lease(ttl)).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.timed("keep_alive", self.inner.keep_alive(lease)).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.timed("revoke_lease", self.inner.revoke_lease(lease)).await
    }
}
