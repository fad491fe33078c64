//! Node registration and liveness on both store backends, and over gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::time::Duration;

use common::wait_until;
use orch_api::pb;
use orch_controller::nodes::{NodeError, NodeRegistry};

fn info(name: &str, address: &str) -> pb::NodeInfo {
    pb::NodeInfo { name: name.into(), address: address.into(), capacity: None, labels: Default::default(), api_port: 0, allows_chaos: false }
}

fn registry(store: &common::TestStore, ttl: Duration) -> NodeRegistry {
    NodeRegistry::new(store.store.clone(), orch_api::cidr::DEFAULT_CLUSTER_NETWORK, ttl)
}

async fn subnets_are_distinct_and_kept_across_registrations(store: common::TestStore) {
    let nodes = registry(&store, Duration::from_secs(30));
    let (a, _) = nodes.register(info("node-a", "192.0.2.10")).await.expect("register a");
    let (b, _) = nodes.register(info("node-b", "192.0.2.11")).await.expect("register b");
    assert_eq!((a.pod_cidr.as_str(), b.pod_cidr.as_str()), ("10.88.1.0/24", "10.88.2.0/24"));
    let (again, _) = nodes.register(info("node-a", "192.0.2.12")).await.expect("re-register");
    assert_eq!(again.pod_cidr, a.pod_cidr, "a node keeps its subnet");
    assert_eq!(again.info.map(|i| i.address), Some("192.0.2.12".to_owned()), "its address is updated");
    for (bad, why) in [(info("Node_A", "192.0.2.1"), "name"), (info("node-c", "not-an-ip"), "address")] {
        match nodes.register(bad).await {
            Err(NodeError::Invalid(message)) => assert!(message.starts_with(why), "{message}"),
            other => panic!("expected {why} to be rejected, got {other:?}"),
        }
    }
    let listed: Vec<(String, bool)> = nodes.list().await.expect("list").into_iter().map(|n| (n.info.map(|i| i.name).unwrap_or_default(), n.ready)).collect();
    assert_eq!(listed, [("node-a".to_owned(), true), ("node-b".to_owned(), true)]);
}

async fn a_node_without_heartbeats_turns_not_ready_and_back(store: common::TestStore) {
    let nodes = registry(&store, Duration::from_secs(2));
    let (_, lease) = nodes.register(info("quiet", "192.0.2.20")).await.expect("register");
    let ready = || async { nodes.list().await.expect("list").first().is_some_and(|n| n.ready) };
    assert!(ready().await);
    wait_until("the node's lease to expire", Duration::from_secs(30), || async { !ready().await }).await;
    let renewed = nodes.heartbeat("quiet", lease).await.expect("heartbeat after expiry");
    assert_ne!(renewed, lease, "a new lease replaces the expired one");
    assert!(ready().await, "a heartbeat makes it Ready again");
    assert!(matches!(nodes.heartbeat("stranger", renewed).await, Err(NodeError::Unknown(_))));
}

async fn cordon_uncordon_and_delete_a_node(store: common::TestStore) {
    use orch_controller::nodes::{delete_node, set_scheduling};
    let nodes = registry(&store, Duration::from_secs(2));
    let (_, _) = nodes.register(info("keep", "192.0.2.40")).await.expect("register keep");
    let (gone, _) = nodes.register(info("gone", "192.0.2.41")).await.expect("register gone");
    let store_ref = store.store.as_ref();
    assert!(matches!(set_scheduling(store_ref, "stranger", true, false).await, Err(NodeError::Unknown(_))));
    let cordoned = set_scheduling(store_ref, "gone", true, false).await.expect("cordon");
    assert_eq!(cordoned.scheduling.map(|s| (s.unschedulable, s.draining)), Some((true, false)));
    let draining = set_scheduling(store_ref, "gone", false, true).await.expect("drain");
    assert_eq!(draining.scheduling.map(|s| (s.unschedulable, s.draining)), Some((true, true)), "a drain cordons too");
    let listed = nodes.list().await.expect("list");
    let keep = listed.iter().find(|n| n.info.as_ref().is_some_and(|i| i.name == "keep")).expect("keep listed");
    assert_eq!(keep.scheduling, None, "the other node is untouched");

    // Ready: refused unless forced; not registered: an error naming it.
    assert!(matches!(delete_node(store_ref, "gone", false).await, Err(NodeError::StillReady(_))));
    assert!(matches!(delete_node(store_ref, "stranger", true).await, Err(NodeError::Unknown(_))));
    wait_until("the node's lease to expire", Duration::from_secs(30), || async {
        nodes.list().await.expect("list").iter().any(|n| n.info.as_ref().is_some_and(|i| i.name == "gone") && !n.ready)
    })
    .await;
    assert_eq!(delete_node(store_ref, "gone", false).await.expect("delete a NotReady node"), Vec::<String>::new());
    let names: Vec<String> = nodes.list().await.expect("list").into_iter().filter_map(|n| n.info.map(|i| i.name)).collect();
    assert_eq!(names, ["keep"]);
    assert!(store.store.get("/orch/scheduling/nodes/gone").await.expect("get").is_none(), "its scheduling record went with it");
    // Its subnet is free: the next node gets it.
    let (next, _) = nodes.register(info("next", "192.0.2.42")).await.expect("register next");
    assert_eq!(next.pod_cidr, gone.pod_cidr, "the deleted node's pod subnet is handed out again");
}

on_both_stores!(subnets_are_distinct_and_kept_across_registrations, a_node_without_heartbeats_turns_not_ready_and_back, cordon_uncordon_and_delete_a_node);

/// An agent over gRPC: registers, then heartbeats on its session keep it Ready past
/// its lease's TTL; a session from an unregistered node is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_over_the_session_keep_a_node_ready() {
    use orch_api::pb::nodes_client::NodesClient;
    use orch_controller::server::{Controller, ControllerConfig};

    let store = common::embedded().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let nodes = registry(&store, Duration::from_secs(2));
    let config = ControllerConfig { node_lease: Duration::from_secs(2), ..ControllerConfig::default() };
    let controller = Controller::start(store.store.clone(), config, listener);
    let mut client = NodesClient::connect(format!("http://{address}")).await.expect("connect");
    let registered = client.register(pb::RegisterRequest { node: Some(info("worker-1", "192.0.2.30")) }).await.expect("register").into_inner();
    assert_eq!((registered.pod_cidr.as_str(), registered.service_cidr.as_str()), ("10.88.1.0/24", "10.96.0.0/16"));

    let (beats, outgoing) = tokio::sync::mpsc::channel(4);
    let _session = client.session(tokio_stream::wrappers::ReceiverStream::new(outgoing)).await.expect("session");
    let heartbeat =
        |node: &str| pb::AgentMessage { node: node.into(), body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat { unix_ms: 0 })), ..Default::default() };
    // Six seconds of heartbeats every 500 ms: three times the lease's TTL.
    for _ in 0..12 {
        beats.send(heartbeat("worker-1")).await.expect("send");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(nodes.list().await.expect("list")[0].ready, "heartbeats keep the node Ready");
    }

    let (stranger_beats, stranger_out) = tokio::sync::mpsc::channel(4);
    let mut refused = client.session(tokio_stream::wrappers::ReceiverStream::new(stranger_out)).await.expect("session").into_inner();
    stranger_beats.send(heartbeat("stranger")).await.expect("send");
    let answer = tokio::time::timeout(Duration::from_secs(10), refused.message()).await.expect("an answer");
    assert_eq!(answer.expect_err("refused").code(), tonic::Code::FailedPrecondition);
    controller.stop().await;
}
