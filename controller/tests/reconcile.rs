//! The controller end to end with fake agents over real gRPC on loopback, on both store
//! backends: apply → replicas bound and reported; scale; rolling update; delete; a node
//! whose lease expires has its replicas replaced, and when it returns its stale replicas
//! are stopped; a restarted controller converges with no duplicates.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::wait_until;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use orch_controller::server::{Controller, ControllerConfig};
use orch_controller::store::Store;
use orch_controller::testing::{FakeAgent, FakeAgentConfig};
use tonic::transport::Channel;

const LIMIT: Duration = Duration::from_secs(60);

fn manifest(name: &str, replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  image: {image}\n  \
         resources: {{requests: {{cpu: 100m, memory: 32Mi}}}}\n  ports: [{{name: http, containerPort: 80, servicePort: 80}}]\n"
    )
}

fn fast_config() -> ControllerConfig {
    ControllerConfig {
        node_lease: Duration::from_secs(2),
        node_grace: Duration::from_secs(1),
        leader_lease: Duration::from_secs(2),
        ..ControllerConfig::default()
    }
}

struct Cluster {
    store: Arc<dyn Store>,
    address: SocketAddr,
    controller: Option<Controller>,
    api: ApiClient<Channel>,
}

impl Cluster {
    async fn start(store: Arc<dyn Store>) -> Cluster {
        Cluster::start_with(store, fast_config()).await
    }

    async fn start_with(store: Arc<dyn Store>, config: ControllerConfig) -> Cluster {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let controller = Controller::start(Arc::clone(&store), config, listener);
        let api = ApiClient::new(Channel::from_shared(format!("http://{address}")).expect("uri").connect_lazy());
        Cluster { store, address, controller: Some(controller), api }
    }

    fn controller(&self) -> &Controller {
        self.controller.as_ref().expect("a running controller")
    }

    /// Stops the controller and starts a new one on the same store and address.
    async fn restart_controller(&mut self) {
        if let Some(controller) = self.controller.take() {
            controller.stop().await;
        }
        let listener = tokio::net::TcpListener::bind(self.address).await.expect("bind the same address again");
        self.controller = Some(Controller::start(Arc::clone(&self.store), fast_config(), listener));
    }

    fn agent(&self, name: &str, index: u8) -> FakeAgent {
        FakeAgent::start(self.address, FakeAgentConfig::new(name, &format!("192.0.2.{index}")))
    }

    /// Waits until `count` nodes are registered and Ready.
    async fn wait_nodes(&mut self, count: usize) {
        let start = std::time::Instant::now();
        loop {
            let nodes = self.api.list_nodes(pb::ListNodesRequest {}).await.expect("list nodes").into_inner().nodes;
            if nodes.len() == count && nodes.iter().all(|n| n.ready) {
                return;
            }
            assert!(start.elapsed() < LIMIT, "timed out waiting for {count} ready nodes: {nodes:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn apply(&mut self, text: &str) -> Vec<pb::ApplyResult> {
        let request = pb::ApplyRequest { sources: vec![pb::ManifestSource { name: "test.yaml".into(), content: text.into() }] };
        self.api.apply(request).await.expect("apply").into_inner().results
    }

    async fn replicas(&mut self, service: &str) -> Vec<pb::Replica> {
        self.api.list_replicas(pb::ListReplicasRequest { service: service.into() }).await.expect("list replicas").into_inner().replicas
    }

    async fn events(&mut self) -> Vec<pb::Event> {
        self.api.list_events(pb::ListEventsRequest { object: String::new() }).await.expect("list events").into_inner().events
    }

    /// Waits until the service has exactly `count` replicas, all bound, Running and ready,
    /// and returns them.
    async fn wait_running(&mut self, service: &str, count: usize, hash: Option<&str>) -> Vec<pb::Replica> {
        self.wait_running_where(service, count, &|r| hash.is_none_or(|h| r.spec_hash == h)).await
    }

    /// As `wait_running`, for replicas that also satisfy `also`.
    async fn wait_running_where(&mut self, service: &str, count: usize, also: &dyn Fn(&pb::Replica) -> bool) -> Vec<pb::Replica> {
        let start = std::time::Instant::now();
        loop {
            let replicas = self.replicas(service).await;
            let running = |r: &pb::Replica| {
                !r.node.is_empty() && r.status.as_ref().is_some_and(|s| s.phase() == pb::ReplicaPhase::Running && s.ready && !s.ip.is_empty()) && also(r)
            };
            if replicas.len() == count && replicas.iter().all(running) {
                return replicas;
            }
            assert!(start.elapsed() < LIMIT, "timed out waiting for {count} running replicas of {service}: {replicas:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a whole reconciler pass over the current store found nothing to do.
    async fn wait_settled(&self) {
        let revision = self.store.list("/orch/leader").await.expect("store revision").revision;
        let mut settled = self.controller().settled();
        tokio::time::timeout(LIMIT, settled.wait_for(|r| *r >= revision)).await.expect("the reconcilers settle").expect("controller alive");
    }
}

fn running_everywhere(agents: &[&FakeAgent]) -> BTreeMap<String, String> {
    agents.iter().flat_map(|a| a.running().into_iter().map(|id| (id, a.name.clone()))).collect()
}

async fn apply_scale_roll_and_delete(store: common::TestStore) {
    let mut cluster = Cluster::start(store.store.clone()).await;
    // node-3 is an agent of an earlier build: it gets every desired set whole, the others
    // get what changed.
    let earlier_build = FakeAgentConfig { takes_deltas: false, ..FakeAgentConfig::new("node-3", "192.0.2.3") };
    let agents = [cluster.agent("node-1", 1), cluster.agent("node-2", 2), FakeAgent::start(cluster.address, earlier_build)];
    cluster.wait_nodes(3).await;
    let results = cluster.apply(&manifest("web", 3, "busybox")).await;
    assert_eq!(results[0].outcome(), pb::ApplyOutcome::Created);

    let replicas = cluster.wait_running("web", 3, None).await;
    let nodes: BTreeSet<&str> = replicas.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "spread over the three nodes: {replicas:?}");
    let agent_refs: Vec<&FakeAgent> = agents.iter().collect();
    let placed: BTreeMap<String, String> = replicas.iter().map(|r| (r.id.clone(), r.node.clone())).collect();
    wait_until("the agents to run exactly the bound replicas", LIMIT, || async { running_everywhere(&agent_refs) == placed }).await;
    wait_until("every agent to know the service's three ready endpoints", LIMIT, || async {
        agents.iter().all(|a| a.endpoints().iter().any(|e| e.service == "web" && e.ready_ips.len() == 3 && e.vip.starts_with("10.96.")))
    })
    .await;
    wait_until("the agents that take deltas to hold what the whole sets hold", LIMIT, || async {
        let whole = agents[2].endpoints();
        agents[..2].iter().all(|a| a.endpoints() == whole)
    })
    .await;
    assert!(agents.iter().all(|a| a.routes().len() == 2), "each node gets routes to the two others");
    let nodes = cluster.api.list_nodes(pb::ListNodesRequest {}).await.expect("nodes").into_inner().nodes;
    assert!(nodes.iter().all(|n| n.ready && n.allocated.is_some_and(|a| a.cpu_millis == 100)), "{nodes:?}");

    // Scale up and down: existing replicas stay.
    cluster.api.scale_service(pb::ScaleServiceRequest { name: "web".into(), replicas: 5 }).await.expect("scale");
    let scaled = cluster.wait_running("web", 5, None).await;
    assert!(placed.keys().all(|id| scaled.iter().any(|r| &r.id == id)), "scaling up keeps the running replicas");
    cluster.api.scale_service(pb::ScaleServiceRequest { name: "web".into(), replicas: 2 }).await.expect("scale");
    let two = cluster.wait_running("web", 2, None).await;
    let two_ids: BTreeSet<String> = two.iter().map(|r| r.id.clone()).collect();
    wait_until("the agents to stop what was scaled away", LIMIT, || async {
        running_everywhere(&agent_refs).keys().cloned().collect::<BTreeSet<_>>() == two_ids
    })
    .await;

    // A new template rolls every replica over.
    let results = cluster.apply(&manifest("web", 2, "busybox:2")).await;
    assert_eq!(results[0].outcome(), pb::ApplyOutcome::Configured);
    let service = cluster.api.get_service(pb::GetServiceRequest { name: "web".into() }).await.expect("get").into_inner();
    let rolled = cluster.wait_running("web", 2, Some(&service.spec_hash)).await;
    assert!(rolled.iter().all(|r| !two_ids.contains(&r.id)), "new replicas replace the old");

    // Delete: nothing left anywhere.
    cluster.api.delete_service(pb::DeleteServiceRequest { name: "web".into(), purge_volumes: false }).await.expect("delete");
    wait_until("the replicas to be gone from the store and the agents", LIMIT, || async {
        running_everywhere(&agent_refs).is_empty() && agents.iter().all(|a| a.endpoints().is_empty())
    })
    .await;
    assert!(agents[..2].iter().all(|a| a.delta_sets() > 0), "agents that take deltas got deltas");
    assert_eq!(agents[2].delta_sets(), 0, "the earlier build got every set whole");
    assert!(cluster.replicas("").await.is_empty());
    cluster.wait_settled().await;
    assert!(store.store.list("/orch/status/").await.expect("list").items.is_empty(), "no status records left");

    let events = cluster.events().await;
    for kind in ["Scheduled", "Killing", "Deleted", "Registered"] {
        assert!(events.iter().any(|e| e.kind == kind), "a {kind} event among {events:#?}");
    }
}

async fn a_lost_node_is_replaced_and_its_stale_replicas_stopped_when_it_returns(store: common::TestStore) {
    let mut cluster = Cluster::start(store.store.clone()).await;
    let steady = cluster.agent("steady", 1);
    let flaky = cluster.agent("flaky", 2);
    cluster.wait_nodes(2).await;
    cluster.apply(&manifest("web", 2, "busybox")).await;
    let before = cluster.wait_running("web", 2, None).await;
    let on_flaky: Vec<String> = before.iter().filter(|r| r.node == "flaky").map(|r| r.id.clone()).collect();
    assert_eq!(on_flaky.len(), 1, "one replica per node: {before:?}");
    wait_until("flaky to run its replica", LIMIT, || async { flaky.running() == on_flaky }).await;

    // The node dies: no goodbye, its lease expires, after the grace its replica moves.
    let still_running = flaky.kill();
    let after = cluster.wait_running_where("web", 2, &|r| r.node == "steady").await;
    assert!(!after.iter().any(|r| on_flaky.contains(&r.id)), "the lost replica was replaced by a new one");
    let events = cluster.events().await;
    for kind in ["NodeNotReady", "Rescheduled"] {
        assert!(events.iter().any(|e| e.kind == kind), "a {kind} event among {events:#?}");
    }

    // It comes back still running the old replica: the new desired set stops it.
    let returned = FakeAgent::start_running(cluster.address, FakeAgentConfig::new("flaky", "192.0.2.2"), still_running);
    wait_until("the returning node to drop its stale replica", LIMIT, || async { returned.sessions() > 0 && returned.running().is_empty() }).await;
    cluster.wait_settled().await;
    let now = cluster.wait_running("web", 2, None).await;
    assert_eq!(now.iter().map(|r| &r.id).collect::<BTreeSet<_>>(), after.iter().map(|r| &r.id).collect::<BTreeSet<_>>(), "no duplicates once the node is back");
    assert_eq!(steady.running().len(), 2);
    let statuses = store.store.list("/orch/status/flaky/").await.expect("list").items;
    assert!(statuses.is_empty(), "no status kept for the stale replica: {statuses:?}");
}

/// With the default leases (5 s + 5 s grace), a node whose heartbeats stop while its
/// connection stays open — a dead machine, a cut link — is judged silent by the
/// controller holding its session and its replica moves at once; when the link returns,
/// the node is Ready again and drops the replica that moved.
async fn a_silent_node_is_lost_at_once_and_fenced_when_its_link_returns(store: common::TestStore) {
    let config = ControllerConfig { leader_lease: Duration::from_secs(2), ..ControllerConfig::default() };
    assert_eq!((config.node_lease, config.node_grace), (Duration::from_secs(5), Duration::from_secs(5)), "the defaults");
    let mut cluster = Cluster::start_with(store.store.clone(), config).await;
    let mut beats = FakeAgentConfig::new("steady", "192.0.2.1");
    beats.heartbeat = Duration::from_millis(250);
    let steady = FakeAgent::start(cluster.address, beats.clone());
    let silent = FakeAgent::start(cluster.address, FakeAgentConfig { name: "silent".into(), address: "192.0.2.2".into(), ..beats });
    cluster.wait_nodes(2).await;
    cluster.apply(&manifest("web", 2, "busybox")).await;
    let before = cluster.wait_running("web", 2, None).await;
    let on_silent: Vec<String> = before.iter().filter(|r| r.node == "silent").map(|r| r.id.clone()).collect();
    assert_eq!(on_silent.len(), 1, "one replica per node: {before:?}");
    wait_until("the node to run its replica", LIMIT, || async { silent.running() == on_silent }).await;
    // The detector judges once it has learned the node's rhythm (a few beats).
    let learned = silent.beats() + 8;
    wait_until("two more seconds of heartbeats", LIMIT, || async { silent.beats() >= learned }).await;

    silent.freeze();
    let after = cluster.wait_running_where("web", 2, &|r| r.node == "steady").await;
    assert!(!after.iter().any(|r| on_silent.contains(&r.id)), "the replica was replaced");
    let events = cluster.events().await;
    let not_ready = events.iter().rfind(|e| e.kind == "NodeNotReady" && e.object == "node/silent").expect("a NodeNotReady event");
    assert!(
        not_ready.message.starts_with("no heartbeat for")
            && not_ready.message.contains("with its connection open")
            && not_ready.message.ends_with("its replicas move now"),
        "judged silent by its session, not by its lease: {}",
        not_ready.message
    );
    assert!(store.store.get("/orch/silent/nodes/silent").await.expect("get").is_some(), "the verdict is recorded");

    // The link is back: heartbeats on the same connection, the node Ready again, the
    // verdict gone, and the replica that moved stopped there.
    silent.thaw();
    cluster.wait_nodes(2).await;
    wait_until("the returning node to drop its moved replica", LIMIT, || async { silent.running().is_empty() }).await;
    wait_until("the verdict to go", LIMIT, || async { store.store.get("/orch/silent/nodes/silent").await.expect("get").is_none() }).await;
    cluster.wait_settled().await;
    let now = cluster.wait_running("web", 2, None).await;
    assert_eq!(now.iter().map(|r| &r.id).collect::<BTreeSet<_>>(), after.iter().map(|r| &r.id).collect::<BTreeSet<_>>(), "no duplicates");
    assert_eq!(steady.running().len(), 2);
}

async fn a_restarted_controller_converges_without_duplicates(store: common::TestStore) {
    let mut cluster = Cluster::start(store.store.clone()).await;
    let agents = [cluster.agent("node-1", 1), cluster.agent("node-2", 2)];
    cluster.wait_nodes(2).await;
    cluster.apply(&manifest("web", 3, "busybox")).await;
    let before: BTreeSet<String> = cluster.wait_running("web", 3, None).await.into_iter().map(|r| r.id).collect();
    let sessions: Vec<u64> = agents.iter().map(FakeAgent::sessions).collect();

    cluster.restart_controller().await;
    wait_until("the agents to reconnect", LIMIT, || async { agents.iter().zip(&sessions).all(|(a, s)| a.sessions() > *s) }).await;
    wait_until("the new controller to lead", LIMIT, || async { cluster.controller().is_leader() }).await;
    cluster.wait_settled().await;
    let after: BTreeSet<String> = cluster.wait_running("web", 3, None).await.into_iter().map(|r| r.id).collect();
    assert_eq!(after, before, "the same replicas, none added or replaced");
    let agent_refs: Vec<&FakeAgent> = agents.iter().collect();
    assert_eq!(running_everywhere(&agent_refs).keys().cloned().collect::<BTreeSet<_>>(), before);
}

async fn an_unschedulable_replica_stays_pending_with_a_reason(store: common::TestStore) {
    let mut cluster = Cluster::start(store.store.clone()).await;
    let mut small = FakeAgentConfig::new("small", "192.0.2.9");
    small.capacity = pb::ResourceList { cpu_millis: 50, memory_bytes: 1 << 30, pids: 0 };
    let _agent = FakeAgent::start(cluster.address, small);
    cluster.wait_nodes(1).await;
    cluster.apply(&manifest("web", 1, "busybox")).await;
    let start = std::time::Instant::now();
    let reason = loop {
        let listed = cluster.replicas("web").await;
        let reason = listed.first().and_then(|r| r.status.as_ref()).map(|s| s.reason.clone()).unwrap_or_default();
        if !reason.is_empty() {
            break reason;
        }
        assert!(start.elapsed() < LIMIT, "timed out waiting for a Pending reason: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reason, "0/1 nodes: 1 insufficient cpu");
    let events = cluster.events().await;
    assert!(events.iter().any(|e| e.kind == "FailedScheduling" && e.message == reason), "{events:#?}");
}

on_both_stores!(
    apply_scale_roll_and_delete,
    a_lost_node_is_replaced_and_its_stale_replicas_stopped_when_it_returns,
    a_silent_node_is_lost_at_once_and_fenced_when_its_link_returns,
    a_restarted_controller_converges_without_duplicates,
    an_unschedulable_replica_stays_pending_with_a_reason,
);
