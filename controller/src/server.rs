//! One controller: the cluster-state watcher, the leader election, the reconcilers
//! (while leading) and the gRPC server for `orch.v1.Api` and `orch.v1.Nodes` — the
//! whole of `orch-controller`, startable in-process (tests, benchmarks, `orch up`).

use std::sync::Arc;
use std::time::Duration;

use orch_api::cidr::{Ipv4Cidr, DEFAULT_SERVICE_RANGE};
use orch_api::pb;
use orch_api::telemetry::{Endpoints, ReadyCheck};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::api::{rpc::ApiRpc, ServiceApi};
use crate::election::{Candidate, ElectionConfig, ElectionStore};
use crate::events::EventLog;
use crate::keys;
use crate::metrics::{ControllerMetrics, MeteredStore};
use crate::nodes::{rpc::NodesRpc, NodeRegistry};
use crate::presence::Presence;
use crate::reconcile::rebalance::RebalanceSettings;
use crate::reconcile::runner::{self, ReconcilerConfig};
use crate::state::StateWatcher;
use crate::store::{Fence, Revision, Store};

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The service VIP range.
    pub service_range: Ipv4Cidr,
    /// The cluster pod network, /8 to /16: node n gets its n-th /24.
    pub cluster_network: Ipv4Cidr,
    /// A node whose heartbeats stop for this long is NotReady.
    pub node_lease: Duration,
    /// A NotReady node's replicas move elsewhere after this.
    pub node_grace: Duration,
    /// The leadership lease's TTL: a dead leader is replaced within about this.
    pub leader_lease: Duration,
    /// How long events are kept.
    pub event_ttl: Duration,
    /// This controller's name in the leader key.
    pub identity: String,
    /// Where agents and the CLI reach this controller (HOST:PORT), published under
    /// `/orch/controllers/<identity>` so agents learn of it; unpublished when unset.
    pub advertise: Option<String>,
    /// Mutual TLS for the gRPC server and for calls to agents; plain text when unset
    /// (loopback development only).
    pub tls: Option<ControllerTls>,
    /// Seals Secrets in the store and opens them for the nodes; without it Secrets are
    /// refused.
    pub secrets: Option<Arc<orch_api::secrets::SecretsKey>>,
    /// The store the leader election opens a connection of its own to (etcd), so that
    /// renewals never queue behind the controller's other requests; unset: it uses the
    /// controller's store.
    pub election_store: Option<crate::store::StoreConfig>,
    /// About the most a part of a desired set carries of routes and endpoints, for agents
    /// that take sets in parts (`crate::nodes::desired::PART_BYTES`; tests make it small
    /// to cut every set).
    pub desired_part_bytes: usize,
    /// How long a node must have been Ready before the leader moves replicas onto it to
    /// rebalance a service.
    pub rebalance_cooldown: Duration,
}

/// The controller's TLS: how it serves, and how it calls the agents' node API.
#[derive(Debug, Clone)]
pub struct ControllerTls {
    pub server: tonic::transport::ServerTlsConfig,
    pub nodes: tonic::transport::ClientTlsConfig,
}

impl ControllerTls {
    /// From a PKI directory made by `orch-controller init`.
    pub fn load(dir: &std::path::Path) -> Result<ControllerTls, orch_api::tls::TlsError> {
        Ok(ControllerTls { server: orch_api::tls::server_config(dir, "controller")?, nodes: orch_api::tls::client_config(dir, "controller")? })
    }
}

impl Default for ControllerConfig {
    fn default() -> ControllerConfig {
        ControllerConfig {
            service_range: DEFAULT_SERVICE_RANGE,
            cluster_network: orch_api::cidr::DEFAULT_CLUSTER_NETWORK,
            node_lease: Duration::from_secs(5),
            node_grace: Duration::from_secs(5),
            leader_lease: Duration::from_secs(2),
            event_ttl: Duration::from_secs(3600),
            identity: format!("controller-{}", std::process::id()),
            advertise: None,
            tls: None,
            secrets: None,
            election_store: None,
            desired_part_bytes: crate::nodes::desired::PART_BYTES,
            rebalance_cooldown: RebalanceSettings::default().cool_down,
        }
    }
}

/// A running controller. [`Controller::stop`] shuts it down cleanly (handing leadership
/// over at once); dropping it or [`Controller::crash`] stops it the way a killed process
/// stops — its leadership lease simply expires.
pub struct Controller {
    candidate: Option<Candidate>,
    presence: Option<Presence>,
    store: Arc<dyn Store>,
    metrics: Arc<ControllerMetrics>,
    watcher: StateWatcher,
    reconciler: JoinHandle<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    shutdown: Option<oneshot::Sender<()>>,
    /// Dropped to end every agent session.
    stopping: Option<watch::Sender<()>>,
    settled: watch::Receiver<Revision>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.reconciler.abort();
        self.stopping.take();
        self.server.abort();
    }
}

impl Controller {
    pub fn start(store: Arc<dyn Store>, config: ControllerConfig, listener: TcpListener) -> Controller {
        let metrics = Arc::new(ControllerMetrics::default());
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(store, Arc::clone(&metrics)));
        let watcher = StateWatcher::spawn(Arc::clone(&store));
        let events = EventLog::new(Arc::clone(&store), config.event_ttl);
        let election_store = config.election_store.clone().map_or_else(|| ElectionStore::Shared(Arc::clone(&store)), ElectionStore::Own);
        let candidate = Candidate::spawn_on(election_store, ElectionConfig { identity: config.identity.clone(), ttl: config.leader_lease });
        let presence = config.advertise.clone().map(|address| {
            let info = pb::ControllerInfo { identity: config.identity.clone(), address, started_unix_ms: crate::events::now_unix_ms() };
            Presence::spawn(Arc::clone(&store), info)
        });
        let (settled_sender, settled) = watch::channel(0);
        let reconciler = tokio::spawn(runner::run(
            Arc::clone(&store),
            watcher.subscribe(),
            candidate.fence(),
            events.clone(),
            ReconcilerConfig {
                node_grace: config.node_grace,
                warmup: config.node_lease + config.node_grace,
                resync: Duration::from_millis(250),
                rebalance: RebalanceSettings { cool_down: config.rebalance_cooldown, ..RebalanceSettings::default() },
            },
            settled_sender,
            Arc::clone(&metrics),
        ));
        let (stopping, sessions_stop) = watch::channel(());
        let mut api = ServiceApi::new(Arc::clone(&store), config.service_range).with_secrets(config.secrets.clone()).with_events(events.clone());
        if let Some(tls) = &config.tls {
            api = api.with_node_tls(tls.nodes.clone());
        }
        let nodes = NodesRpc::new(
            NodeRegistry::new(Arc::clone(&store), config.cluster_network, config.node_lease).with_state(watcher.subscribe()),
            Arc::clone(&store),
            config.service_range,
            watcher.subscribe(),
            events,
            sessions_stop,
        )
        .with_secrets(config.secrets.clone())
        .with_metrics(Arc::clone(&metrics))
        .with_part_bytes(config.desired_part_bytes);
        let (shutdown, stopped) = oneshot::channel::<()>();
        let tls = config.tls.clone();
        let server = tokio::spawn(async move {
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                builder = builder.tls_config(tls.server)?;
            }
            builder
                .add_service(ApiRpc::new(api).into_server())
                .add_service(nodes.into_server())
                .serve_with_incoming_shutdown(orch_api::incoming::nodelay(listener), async {
                    let _ = stopped.await;
                })
                .await
        });
        Controller {
            candidate: Some(candidate),
            presence,
            store,
            metrics,
            watcher,
            reconciler,
            server,
            shutdown: Some(shutdown),
            stopping: Some(stopping),
            settled,
        }
    }

    /// What `--metrics-listen` serves: the metrics (gauges from the state at each
    /// scrape) and readiness — leading, or following with a store that answers.
    pub fn telemetry(&self) -> Arc<Endpoints> {
        let mut registry = Registry::default();
        self.metrics.register(&mut registry);
        let (metrics, state, leadership) = (Arc::clone(&self.metrics), self.watcher.subscribe(), self.leadership());
        let refresh = move || {
            let current = state.borrow().clone();
            metrics.refresh(&current, leadership.borrow().is_some());
        };
        let (store, leadership, synced) = (Arc::clone(&self.store), self.leadership(), self.watcher.subscribe());
        let ready: ReadyCheck = Arc::new(move || {
            let (store, leading, synced) = (Arc::clone(&store), leadership.borrow().is_some(), synced.borrow().synced());
            Box::pin(async move {
                match tokio::time::timeout(Duration::from_secs(2), store.get(keys::LEADER)).await {
                    Ok(Ok(_)) if !synced => Err("the store answers, but the cluster state is not loaded yet".into()),
                    Ok(Ok(_)) => Ok(if leading { "leading".into() } else { "following; the store answers".into() }),
                    Ok(Err(error)) => Err(format!("the store: {error}")),
                    Err(_) => Err("the store did not answer within 2 s".into()),
                }
            })
        });
        Arc::new(Endpoints { registry, refresh: Some(Box::new(refresh)), ready })
    }

    pub fn is_leader(&self) -> bool {
        self.candidate.as_ref().is_some_and(Candidate::is_leader)
    }

    /// The fence of this controller's leadership, `None` while it does not lead.
    pub fn leadership(&self) -> watch::Receiver<Option<Fence>> {
        self.candidate.as_ref().map_or_else(|| watch::channel(None).1, Candidate::fence)
    }

    /// The revision of the latest state on which the reconcilers (while leading) found
    /// nothing left to do.
    pub fn settled(&self) -> watch::Receiver<Revision> {
        self.settled.clone()
    }

    pub fn state(&self) -> &StateWatcher {
        &self.watcher
    }

    /// Serves until the gRPC server fails or `stop` is called elsewhere.
    pub async fn serve(&mut self) -> Result<(), tonic::transport::Error> {
        match (&mut self.server).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    /// Stops serving, pauses the reconcilers and resigns leadership.
    pub async fn stop(mut self) {
        self.reconciler.abort();
        self.stopping.take();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.server).await;
        if let Some(presence) = self.presence.take() {
            presence.withdraw().await;
        }
        if let Some(candidate) = self.candidate.take() {
            candidate.resign().await;
        }
    }

    /// Stops everything at once, resigning nothing (a killed controller).
    pub fn crash(self) {
        drop(self);
    }
}
