//! Apply → every replica bound, and → every replica reported Running, through the real
//! gRPC API with fake agents over real gRPC, on a real etcd (`ORCH_TEST_ETCD`) and on the
//! embedded store; beside it, the pure scheduler placing the same replicas on the same
//! nodes, as the peer the end-to-end rate is a ratio of. Prints bindings per second of
//! the median of `ORCH_BENCH_RUNS` (5) runs per store, and their range.
//!
//!   sudo bash deploy/bench/controller.sh [REPLICAS] [NODES]     (starts etcd itself)
//!   ORCH_TEST_ETCD=http://127.0.0.1:2379 cargo bench -p orch-controller --bench apply_to_bound
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use orch_controller::keys;
use orch_controller::server::{Controller, ControllerConfig};
use orch_controller::store::{EmbeddedStore, EtcdStore, PrefixedStore, Store, WatchEvent};
use orch_controller::testing::{env_number, process_usage, services_manifest, CountingStore, FakeAgent, FakeAgentConfig};
use tonic::transport::Channel;

const SERVICES: usize = 10;
/// How long one run may take: 60 s, or 10 ms per replica when that is longer.
fn limit(replicas: usize) -> Duration {
    Duration::from_secs(60).max(Duration::from_millis(10 * replicas as u64))
}

struct Run {
    bound: Duration,
    running: Duration,
    /// Desired sets the agents received in all (the sessions' fan-out).
    desired_sets: u64,
    /// The controller's store requests from the apply until all ran.
    store_requests: u64,
    /// CPU seconds of the whole process (controller and fake agents) over that time.
    cpu: f64,
    /// Times the controller lost the lead during the run (an overloaded leader must not).
    leadership_lost: u64,
}

async fn count(api: &mut ApiClient<Channel>) -> Result<(usize, usize), tonic::Status> {
    let replicas = api.list_replicas(pb::ListReplicasRequest { service: String::new() }).await?.into_inner().replicas;
    let bound = replicas.iter().filter(|r| !r.node.is_empty()).count();
    let running = replicas.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.phase() == pb::ReplicaPhase::Running)).count();
    Ok((bound, running))
}

async fn run(store: Arc<dyn Store>, replicas: usize, nodes: usize) -> Result<Run, String> {
    let limit = limit(replicas);
    let counted = Arc::new(CountingStore::new(Arc::clone(&store)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    // Each node takes a /24 of the cluster network: a /16 holds 254, a /14 1,022, a /12 4,094.
    let prefix = match nodes {
        0..=254 => 16,
        255..=1022 => 14,
        _ => 12,
    };
    let cluster_network = orch_api::cidr::parse_cluster_network(&format!("10.64.0.0/{prefix}")).map_err(|e| e.to_string())?;
    let controller = Controller::start(counted.clone(), ControllerConfig { cluster_network, ..ControllerConfig::default() }, listener);
    let lost = Arc::new(AtomicU64::new(0));
    let watching = {
        let (mut leadership, lost) = (controller.leadership(), Arc::clone(&lost));
        tokio::spawn(async move {
            let mut was = leadership.borrow_and_update().is_some();
            while leadership.changed().await.is_ok() {
                let now = leadership.borrow_and_update().is_some();
                if was && !now {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
                was = now;
            }
        })
    };
    let agents: Vec<FakeAgent> = (0..nodes)
        .map(|i| {
            let mut config = FakeAgentConfig::new(&format!("node-{i:03}"), &format!("192.0.2.{}", 1 + i % 250));
            config.heartbeat = Duration::from_secs(1);
            FakeAgent::start(address, config)
        })
        .collect();
    let mut api = ApiClient::new(Channel::from_shared(format!("http://{address}")).map_err(|e| e.to_string())?.connect_lazy());
    let start = Instant::now();
    loop {
        let listed = api.list_nodes(pb::ListNodesRequest {}).await.map_err(|e| e.to_string())?.into_inner().nodes;
        if listed.len() == nodes && listed.iter().all(|n| n.ready) && controller.is_leader() {
            break;
        }
        if start.elapsed() > limit {
            return Err(format!("only {} of {nodes} nodes registered", listed.len()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Counted from a watch of the store, as `orch get -w` would see it: polling the API
    // for 2,000 replicas every few milliseconds would load the store more than the run.
    let mut changes = store.watch(keys::ROOT, 0).await.map_err(|e| e.to_string())?;
    let request = pb::ApplyRequest { sources: vec![pb::ManifestSource { name: "bench.yaml".into(), content: services_manifest("svc", SERVICES, replicas) }] };
    let (requests_before, cpu_before) = (counted.requests(), process_usage("self").0);
    lost.store(0, Ordering::Relaxed);
    let start = Instant::now();
    api.apply(request).await.map_err(|e| e.to_string())?;
    let (mut bound, mut running) = (BTreeSet::new(), BTreeSet::new());
    let mut bound_at = None;
    loop {
        let left = limit.saturating_sub(start.elapsed());
        let event = match tokio::time::timeout(left, changes.next()).await {
            Ok(Some(event)) => event.map_err(|e| e.to_string())?,
            Ok(None) => return Err("the store's watch ended".into()),
            Err(_) => {
                let on_agents: usize = agents.iter().map(|a| a.running().len()).sum();
                let sets: u64 = agents.iter().map(FakeAgent::desired_sets).sum();
                let (bound, running) = count(&mut api).await.map_err(|e| e.to_string())?;
                return Err(format!("after {limit:?}: {bound} bound, {running} running of {replicas}; the agents run {on_agents} after {sets} desired sets"));
            }
        };
        if let WatchEvent::Put(kv) = &event {
            if kv.key.starts_with(keys::REPLICAS) {
                let replica: pb::Replica = keys::decode(&kv.key, &kv.value).map_err(|e| e.to_string())?;
                if !replica.node.is_empty() {
                    bound.insert(kv.key.clone());
                }
            } else if kv.key.starts_with(keys::STATUS) {
                let report: pb::ReplicaReport = keys::decode(&kv.key, &kv.value).map_err(|e| e.to_string())?;
                if report.status.as_ref().is_some_and(|s| s.phase() == pb::ReplicaPhase::Running) {
                    running.insert(kv.key.clone());
                }
            }
        }
        if bound.len() == replicas && bound_at.is_none() {
            bound_at = Some(start.elapsed());
        }
        if running.len() == replicas {
            let running_at = start.elapsed();
            let (store_requests, cpu) = (counted.requests() - requests_before, process_usage("self").0 - cpu_before);
            // The API agrees (its picture of the store may be a moment behind this watch).
            let agreed_by = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let (listed_bound, listed_running) = count(&mut api).await.map_err(|e| e.to_string())?;
                if (listed_bound, listed_running) == (replicas, replicas) {
                    break;
                }
                if tokio::time::Instant::now() > agreed_by {
                    return Err(format!("the watch saw all {replicas} running; 5 s later the API lists {listed_bound} bound and {listed_running} running"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let desired_sets = agents.iter().map(FakeAgent::desired_sets).sum();
            controller.stop().await;
            watching.abort();
            drop(agents);
            let leadership_lost = lost.load(Ordering::Relaxed);
            return Ok(Run { bound: bound_at.unwrap_or(running_at), running: running_at, desired_sets, store_requests, cpu, leadership_lost });
        }
    }
}

/// The median run of `runs` (by the time to all Running), and the range of that time.
fn median(mut runs: Vec<Run>) -> (Run, Duration, Duration) {
    runs.sort_by_key(|run| run.running);
    let (fastest, slowest) = (runs[0].running, runs[runs.len() - 1].running);
    let middle = runs.swap_remove(runs.len() / 2);
    (middle, fastest, slowest)
}

fn report(name: &str, runs: Vec<Run>, replicas: usize, pure: Duration) {
    let count = runs.len();
    let (run, fastest, slowest) = median(runs);
    let rate = |d: Duration| replicas as f64 / d.as_secs_f64();
    println!(
        "{name:>8}: apply → {replicas} bound in {:.0} ms = {:.0} bindings/s; → all Running in {:.0} ms = {:.0} replicas/s \
         (median of {count}; {:.0}–{:.0} replicas/s); ratio to the pure scheduler: {:.4}; {} desired sets sent; \
         {:.1} store requests per replica; {:.1} CPU s (controller and fake agents, one process); leadership lost {} times; \
         peak RSS of the process so far {:.0} MiB",
        run.bound.as_secs_f64() * 1000.0,
        rate(run.bound),
        run.running.as_secs_f64() * 1000.0,
        rate(run.running),
        rate(slowest),
        rate(fastest),
        rate(run.bound) / rate(pure),
        run.desired_sets,
        run.store_requests as f64 / replicas as f64,
        run.cpu,
        run.leadership_lost,
        process_usage("self").1,
    );
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let replicas = env_number("ORCH_BENCH_REPLICAS", 2000).max(SERVICES) / SERVICES * SERVICES;
    let nodes = env_number("ORCH_BENCH_NODES", 100).max(1);
    // One run is noisy on a small machine (±50 %): the median of several is printed.
    let runs = env_number("ORCH_BENCH_RUNS", 5).max(1);
    let pure = orch_controller::testing::time_pure_scheduler(replicas, nodes, SERVICES);
    println!(
        "pure scheduler: {replicas} replicas over {nodes} nodes in {:.1} ms = {:.0} bindings/s",
        pure.as_secs_f64() * 1000.0,
        replicas as f64 / pure.as_secs_f64()
    );
    let Ok(endpoint) = std::env::var("ORCH_TEST_ETCD") else {
        eprintln!("ORCH_TEST_ETCD is not set: run `sudo bash deploy/bench/controller.sh`, which starts etcd on loopback");
        return std::process::ExitCode::FAILURE;
    };
    let etcd = match EtcdStore::connect(std::slice::from_ref(&endpoint)).await {
        Ok(store) => store,
        Err(error) => {
            eprintln!("cannot reach etcd at {endpoint}: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut results = Vec::new();
    for _ in 0..runs {
        let prefix = format!("/bench/{}-{}/", std::process::id(), orch_controller::events::now_unix_ms());
        match run(Arc::new(PrefixedStore::new(etcd.clone(), &prefix)), replicas, nodes).await {
            Ok(result) => results.push(result),
            Err(error) => {
                eprintln!("etcd run failed: {error}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    report("etcd", results, replicas, pure);
    let mut results = Vec::new();
    for _ in 0..runs {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(error) => {
                eprintln!("temporary directory: {error}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let embedded = match EmbeddedStore::open(&dir.path().join("bench.redb")).await {
            Ok(store) => store,
            Err(error) => {
                eprintln!("embedded store: {error}");
                return std::process::ExitCode::FAILURE;
            }
        };
        match run(Arc::new(embedded), replicas, nodes).await {
            Ok(result) => results.push(result),
            Err(error) => {
                eprintln!("embedded run failed: {error}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    report("embedded", results, replicas, pure);
    std::process::ExitCode::SUCCESS
}
