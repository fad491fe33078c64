//! The 1,000-agent benchmark (`controller/benches/fleet.rs`) made small enough for every
//! test run: 200 fake agents over real gRPC on one controller, on the test etcd, with
//! heartbeats every 250 ms (the agent's default). Every node registers with a pod subnet
//! of its own, 2,000 replicas run, 20 nodes are lost at once and only their replicas
//! move; the leader never loses its lease, routes reach each agent about once per other
//! node (deltas), and the store is asked a small constant number of times per replica.
//! Sets are cut into parts of 2 KiB (16 KiB in a real controller), and every agent ends
//! knowing every service's ready addresses as the store has them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::wait_until;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use orch_controller::server::{Controller, ControllerConfig};
use orch_controller::testing::{services_manifest, CountingStore, FakeAgent, FakeAgentConfig};

const NODES: usize = 200;
const REPLICAS: usize = 2000;
const LOST: usize = 20;

/// Replica id → (node, Running).
async fn placements(api: &mut ApiClient<tonic::transport::Channel>) -> BTreeMap<String, (String, bool)> {
    let listed = api.list_replicas(pb::ListReplicasRequest { service: String::new() }).await.expect("list replicas").into_inner().replicas;
    listed
        .into_iter()
        .map(|r| {
            let running = r.status.as_ref().is_some_and(|s| s.phase() == pb::ReplicaPhase::Running);
            (r.id, (r.node, running))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_register_run_two_thousand_replicas_and_survive_losing_twenty() {
    let store = common::etcd_namespaced("fleet").await;
    let counted = Arc::new(CountingStore::new(store.store.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let config = ControllerConfig {
        cluster_network: orch_api::cidr::parse_cluster_network("10.64.0.0/16").expect("a /16"),
        node_lease: Duration::from_secs(2),
        node_grace: Duration::from_secs(2),
        desired_part_bytes: 2048,
        ..ControllerConfig::default()
    };
    let controller = Controller::start(counted.clone(), config, listener);
    let lost_lead = Arc::new(AtomicU64::new(0));
    let watching = {
        let (mut leadership, lost_lead) = (controller.leadership(), Arc::clone(&lost_lead));
        tokio::spawn(async move {
            let mut was = false;
            while leadership.changed().await.is_ok() {
                let now = leadership.borrow_and_update().is_some();
                if was && !now {
                    lost_lead.fetch_add(1, Ordering::Relaxed);
                }
                was = now;
            }
        })
    };
    wait_until("the controller to lead", Duration::from_secs(30), || async { controller.is_leader() }).await;
    let mut agents: Vec<FakeAgent> = (0..NODES)
        .map(|i| {
            let mut config = FakeAgentConfig::new(&format!("fleet-{i:03}"), &format!("192.0.2.{}", 1 + i % 250));
            config.heartbeat = Duration::from_millis(250);
            FakeAgent::start(address, config)
        })
        .collect();
    let mut api = ApiClient::connect(format!("http://{address}")).await.expect("connect");

    // Registered, each with a pod subnet of its own.
    let nodes = Duration::from_secs(60);
    wait_until("every node to register and be Ready", nodes, || {
        let mut api = api.clone();
        async move { api.list_nodes(pb::ListNodesRequest {}).await.is_ok_and(|n| n.get_ref().nodes.iter().filter(|n| n.ready).count() == NODES) }
    })
    .await;
    let listed = api.list_nodes(pb::ListNodesRequest {}).await.expect("list nodes").into_inner().nodes;
    let subnets: BTreeSet<String> = listed.iter().map(|n| n.pod_cidr.clone()).collect();
    assert_eq!(subnets.len(), NODES, "every node has a pod subnet of its own");
    // Every agent knows a route to every other node, and got about that many: a node
    // joining cost each session one route, not all of them again.
    wait_until("every agent to know every other node's route", nodes, || async { agents.iter().all(|a| a.routes().len() == NODES - 1) }).await;
    let most = agents.iter().map(FakeAgent::routes_received).max().unwrap_or(0);
    // (A session that ends and starts again gets them whole once more: three times is the
    // bound; sets with every route each time gave an agent thousands.)
    assert!(most <= 3 * (NODES as u64 - 1), "routes reach an agent as deltas: one got {most} for {} other nodes", NODES - 1);

    // 2,000 replicas, every one Running, for a small constant number of store requests each.
    let before = counted.requests();
    let request = pb::ApplyRequest { sources: vec![pb::ManifestSource { name: "fleet.yaml".into(), content: services_manifest("fleet", 10, REPLICAS) }] };
    api.apply(request).await.expect("apply");
    wait_until("every replica to run", Duration::from_secs(120), || {
        let mut api = api.clone();
        async move {
            let placed = placements(&mut api).await;
            placed.len() == REPLICAS && placed.values().all(|(_, running)| *running)
        }
    })
    .await;
    let per_replica = (counted.requests() - before) as f64 / REPLICAS as f64;
    assert!(per_replica < 5.0, "{per_replica:.1} store requests per replica (heartbeats must not cost the store)");
    // Ready addresses went to the agents as changes, in sets cut into parts: what each
    // agent made of them is what the store holds.
    wait_until("every agent to know every service's ready addresses as stored", nodes, || async {
        let listed = store.store.list(orch_controller::keys::ENDPOINTS).await.expect("list endpoints").items;
        let stored: Vec<pb::ServiceEndpoints> = orch_controller::keys::decode_all(&listed).expect("decode endpoints");
        stored.iter().map(|e| e.ready_ips.len()).sum::<usize>() == REPLICAS && agents.iter().all(|a| a.endpoints() == stored)
    })
    .await;
    assert!(agents.iter().map(FakeAgent::parts_received).sum::<u64>() > 0, "sets went in parts");

    // 20 nodes lost at once: their replicas, and only theirs, run elsewhere.
    let placed = placements(&mut api).await;
    let lost: BTreeSet<String> = agents.drain(..LOST).map(|agent| agent.name.clone()).collect();
    let on_lost = placed.values().filter(|(node, _)| lost.contains(node)).count();
    assert!(on_lost > 0, "the lost nodes ran replicas");
    wait_until("the lost nodes' replicas to run elsewhere", Duration::from_secs(120), || {
        let (mut api, lost) = (api.clone(), &lost);
        async move {
            let now = placements(&mut api).await;
            now.len() == REPLICAS && now.values().all(|(node, running)| *running && !lost.contains(node))
        }
    })
    .await;
    let after = placements(&mut api).await;
    for (id, (node, _)) in placed.iter().filter(|(_, (node, _))| !lost.contains(node)) {
        assert_eq!(after.get(id).map(|(now, _)| now), Some(node), "replica {id} on a surviving node stayed where it was");
    }
    assert_eq!(lost_lead.load(Ordering::Relaxed), 0, "the controller kept its leadership throughout");
    watching.abort();
    drop(agents);
    controller.stop().await;
}
