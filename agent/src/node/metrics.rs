//! The agent's metrics (served by `orch_api::telemetry` on `--metrics-listen`): image
//! pulls, container starts, probe results and the controller session, measured where
//! they happen; the replicas on this node by phase, from the status board at each
//! scrape. The balancer's are the node network's (`net::stats`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::board::StatusBoard;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeOutcome {
    service: String,
    probe: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaState {
    service: String,
    phase: String,
    ready: String,
}

/// From 1 ms to about 65 s.
fn durations() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct AgentMetrics {
    image_pulls: Family<Outcome, Histogram, fn() -> Histogram>,
    container_starts: Family<Outcome, Histogram, fn() -> Histogram>,
    probes: Family<ProbeOutcome, Counter>,
    session_up: Gauge,
    session_opens: Counter,
    replicas: Family<ReplicaState, Gauge>,
    restarts: Gauge,
}

impl Default for AgentMetrics {
    fn default() -> AgentMetrics {
        AgentMetrics {
            image_pulls: Family::new_with_constructor(durations),
            container_starts: Family::new_with_constructor(durations),
            probes: Family::default(),
            session_up: Gauge::default(),
            session_opens: Counter::default(),
            replicas: Family::default(),
            restarts: Gauge::default(),
        }
    }
}

fn result(ok: bool) -> &'static str {
    if ok {
        "success"
    } else {
        "failure"
    }
}

impl AgentMetrics {
    /// Registers every metric, under `orch_`.
    pub fn register(&self, registry: &mut Registry) {
        let orch = registry.sub_registry_with_prefix("orch");
        orch.register("image_pull_duration_seconds", "Image pulls by this node, by result", self.image_pulls.clone());
        orch.register(
            "container_start_duration_seconds",
            "From asking the runtime for a container to its command running (namespaces, cgroups, mounts, network), by result",
            self.container_starts.clone(),
        );
        orch.register("probe_results", "Probe attempts by service, probe (startup, liveness, readiness) and result", self.probes.clone());
        orch.register("agent_session_up", "1 while this agent holds a session with a controller", self.session_up.clone());
        orch.register("agent_session_opens", "Sessions this agent opened with a controller", self.session_opens.clone());
        orch.register("node_replicas", "Replicas supervised on this node, by service, phase and readiness", self.replicas.clone());
        orch.register("node_replica_restarts", "Restarts of the containers of the replicas on this node, summed", self.restarts.clone());
    }

    pub fn image_pulled(&self, took: Duration, ok: bool) {
        self.image_pulls.get_or_create(&Outcome { result: result(ok) }).observe(took.as_secs_f64());
    }

    pub fn container_started(&self, took: Duration, ok: bool) {
        self.container_starts.get_or_create(&Outcome { result: result(ok) }).observe(took.as_secs_f64());
    }

    pub fn probed(&self, service: &str, probe: &'static str, ok: bool) {
        self.probes.get_or_create(&ProbeOutcome { service: service.to_owned(), probe, result: result(ok) }).inc();
    }

    /// Marks the session up until the returned guard is dropped.
    pub fn session_opened(&self) -> SessionUp<'_> {
        self.session_opens.inc();
        self.session_up.set(1);
        SessionUp(self)
    }

    pub fn session_is_up(&self) -> bool {
        self.session_up.get() == 1
    }

    /// Sets the gauges from the replicas on the node now.
    pub fn refresh(&self, board: &StatusBoard) {
        self.replicas.clear();
        let mut restarts: i64 = 0;
        for report in board.snapshot() {
            let status = report.status.clone().unwrap_or_default();
            let phase = orch_api::phase_name(status.phase());
            let labels = ReplicaState { service: report.service.clone(), phase: phase.to_owned(), ready: status.ready.to_string() };
            self.replicas.get_or_create(&labels).inc();
            restarts += i64::from(status.restarts);
        }
        self.restarts.set(restarts);
    }
}

/// The session is up while this lives.
pub struct SessionUp<'a>(&'a AgentMetrics);

impl Drop for SessionUp<'_> {
    fn drop(&mut self) {
        self.0.session_up.set(0);
    }
}
