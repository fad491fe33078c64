//! The agent daemon for real, as root: a controller in-process (embedded store, real
//! gRPC on loopback) and `orch-agent serve` as a process running real containers on a
//! bridge of the test's own. Replicas heal from `kill -9` and failing liveness probes,
//! leave the endpoints while not ready, back off when crash-looping, survive `kill -9`
//! of the agent, and leave nothing behind when deleted.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{oci, require_root, AGENT};
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use orch_controller::server::{Controller, ControllerConfig};
use orch_controller::store::{EmbeddedStore, Store};
use tonic::transport::Channel;

const LIMIT: Duration = Duration::from_secs(90);

/// One node's worth of everything a test makes, removed on drop (after a panic too).
struct Cluster {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    controller: Option<Controller>,
    address: SocketAddr,
    api: ApiClient<Channel>,
    agent: Option<Child>,
    bridge: String,
    cgroup_parent: String,
    image: String,
    service_cidr: String,
}

impl Cluster {
    async fn start(test: &str) -> Cluster {
        require_root();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let k = u8::try_from((pid % 8) * 2 + n % 2).expect("small");
        let dir = tempfile::Builder::new().prefix(&format!("orch-daemon-{test}-")).tempdir().expect("tempdir");
        let layout = dir.path().join("image");
        oci::write_layout(&layout, "1.0", &[oci::busybox_layer()], &["sh"]);
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).await.expect("embedded store"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let config = ControllerConfig {
            service_network: Ipv4Addr::new(10, 231, 10 + k, 0),
            service_prefix: 24,
            cluster_network: Ipv4Addr::new(10, 220 + k, 0, 0),
            node_lease: Duration::from_secs(3),
            node_grace: Duration::from_secs(3),
            leader_lease: Duration::from_secs(2),
            ..ControllerConfig::default()
        };
        let service_cidr = config.service_cidr();
        let controller = Controller::start(Arc::clone(&store), config, listener);
        let api = ApiClient::new(Channel::from_shared(format!("http://{address}")).expect("uri").connect_lazy());
        let mut cluster = Cluster {
            image: format!("oci:{}:1.0", layout.display()),
            dir,
            store,
            controller: Some(controller),
            address,
            api,
            agent: None,
            bridge: format!("od{:x}{n}", pid % 0xffff),
            cgroup_parent: format!("orch-test-{pid}-{n}-{test}"),
            service_cidr,
        };
        cluster.start_agent();
        cluster.wait_node_ready().await;
        cluster
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("agent.log")).expect("agent log");
        let child = Command::new(AGENT)
            .args(["serve", "--controller", &self.address.to_string(), "--name", "node-1", "--address", "127.0.0.1"])
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--cgroup-parent", &self.cgroup_parent, "--bridge", &self.bridge, "--heartbeat-ms", "300"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn orch-agent serve");
        self.agent = Some(child);
    }

    /// `kill -9` of the agent: no goodbye.
    fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    async fn wait_node_ready(&mut self) {
        let start = Instant::now();
        loop {
            let nodes = self.api.list_nodes(pb::ListNodesRequest {}).await.expect("list nodes").into_inner().nodes;
            if nodes.iter().any(|n| n.ready) {
                return;
            }
            assert!(start.elapsed() < LIMIT, "the agent never registered; its log:\n{}", self.agent_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn apply(&mut self, text: &str) {
        let request = pb::ApplyRequest { sources: vec![pb::ManifestSource { name: "test.yaml".into(), content: text.into() }] };
        self.api.apply(request).await.expect("apply");
    }

    async fn replicas(&mut self, service: &str) -> Vec<pb::Replica> {
        self.api.list_replicas(pb::ListReplicasRequest { service: service.into() }).await.expect("list replicas").into_inner().replicas
    }

    async fn events_of(&mut self, object: &str) -> Vec<pb::Event> {
        self.api.list_events(pb::ListEventsRequest { object: object.into() }).await.expect("events").into_inner().events
    }

    /// Waits until `condition` holds for the service's replicas; returns them.
    async fn wait_replicas(&mut self, service: &str, what: &str, condition: impl Fn(&[pb::Replica]) -> bool) -> Vec<pb::Replica> {
        let start = Instant::now();
        loop {
            let replicas = self.replicas(service).await;
            if condition(&replicas) {
                return replicas;
            }
            assert!(start.elapsed() < LIMIT, "timed out waiting for {what}: {replicas:#?}\nagent log:\n{}", self.agent_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn endpoints(&self, service: &str) -> Vec<String> {
        match self.store.get(&format!("/orch/endpoints/{service}")).await.expect("store") {
            Some(kv) => {
                let endpoints: pb::ServiceEndpoints = orch_controller::keys::decode(&kv.key, &kv.value).expect("decode");
                endpoints.ready_ips
            }
            None => Vec::new(),
        }
    }

    /// Runs a command inside a replica's container, the way exec probes do.
    fn exec(&self, host_pid: u32, command: &[&str]) {
        let status = Command::new(AGENT)
            .args(["__exec", "--pid", &host_pid.to_string(), "--env", "PATH=/bin", "--"])
            .args(command)
            .status()
            .expect("run orch-agent __exec");
        assert!(status.success(), "{command:?} in PID {host_pid}: {status}");
    }

    /// Nothing of the node's replicas is left: containers, records, logs, addresses,
    /// cgroups, veths.
    fn assert_node_empty(&self) {
        let state = self.state_dir();
        let containers: Vec<_> = std::fs::read_dir(state.join("containers")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(containers.is_empty(), "containers left: {containers:?}");
        let records: Vec<_> = std::fs::read_dir(state.join("replicas")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(records.is_empty(), "replica records left: {records:?}");
        let ipam = std::fs::read_to_string(state.join("network").join(format!("{}.json", self.bridge))).unwrap_or_default();
        assert!(!ipam.contains("web") && !ipam.contains("crash"), "addresses still allocated: {ipam}");
        let layout = orch_agent::cgroups::CgroupLayout::detect().expect("cgroups");
        let probe = layout.container(&format!("{}/probe", self.cgroup_parent)).expect("cgroup paths");
        for path in probe.paths() {
            let parent = path.parent().expect("parent");
            let children: Vec<_> = std::fs::read_dir(parent).map(|d| d.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name()).collect()).unwrap_or_default();
            assert!(children.is_empty(), "cgroups left under {}: {children:?}", parent.display());
        }
        let links = Command::new("ip").args(["-o", "link", "show", "master", &self.bridge]).output().expect("ip link");
        let links = String::from_utf8_lossy(&links.stdout);
        let veths: Vec<&str> = links.lines().filter(|l| !l.contains(&format!("{}l@", self.bridge))).collect();
        assert!(veths.is_empty(), "veths left on the bridge: {veths:?}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_agent();
        let _ = Command::new(AGENT)
            .arg("teardown")
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--cgroup-parent", &self.cgroup_parent, "--bridge", &self.bridge])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let ip = |args: &[&str]| {
            let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
        };
        ip(&["link", "del", &self.bridge]);
        ip(&["netns", "del", &format!("{}-lb", self.bridge)]);
        ip(&["route", "del", &self.service_cidr]);
        let layout = orch_agent::cgroups::CgroupLayout::detect();
        if let Ok(layout) = layout {
            if let Ok(cgroup) = layout.container(&format!("{}/x", self.cgroup_parent)) {
                for path in cgroup.paths() {
                    if let Some(parent) = path.parent() {
                        let _ = std::fs::remove_dir(parent);
                    }
                }
            }
        }
        if let Some(controller) = self.controller.take() {
            controller.crash();
        }
    }
}

fn web_manifest(image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: orch/v1
kind: Service
metadata: {{name: web}}
spec:
  replicas: {replicas}
  image: {image}
  command: [sh, -c, "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 80 -h /www"]
  ports: [{{name: http, containerPort: 80, servicePort: 80}}]
  probes:
    liveness:
      exec: {{command: [sh, -c, "test ! -f /tmp/sick"]}}
      periodSeconds: 1
      failureThreshold: 1
    readiness:
      exec: {{command: [sh, -c, "test ! -f /tmp/unready"]}}
      periodSeconds: 1
      failureThreshold: 1
  restartBackoff: {{initialMillis: 100}}
  terminationGracePeriodSeconds: 2
"#
    )
}

fn running_ready(replica: &pb::Replica) -> bool {
    replica.status.as_ref().is_some_and(|s| s.phase() == pb::ReplicaPhase::Running && s.ready && s.host_pid > 0)
}

fn status(replica: &pb::Replica) -> pb::ReplicaStatus {
    replica.status.clone().unwrap_or_default()
}

/// One HTTP/1.0 GET; the body.
fn http_get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_owned()).ok_or_else(|| std::io::Error::other(format!("not HTTP: {response:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_heal_from_kills_and_failing_probes() {
    let mut cluster = Cluster::start("heal").await;
    let image = cluster.image.clone();
    cluster.apply(&web_manifest(&image, 3)).await;
    let replicas = cluster.wait_replicas("web", "3 running, ready replicas", |r| r.len() == 3 && r.iter().all(running_ready)).await;

    // kill -9 of a replica's process: replaced on the spot, same address, restarts = 1.
    let victim = replicas[0].clone();
    let before = status(&victim);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(before.host_pid).expect("pid")), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let healed = cluster
        .wait_replicas("web", "the killed replica to come back", |r| {
            r.iter().any(|x| x.id == victim.id && running_ready(x) && status(x).restarts == 1 && status(x).host_pid != before.host_pid)
        })
        .await;
    let after = healed.iter().find(|r| r.id == victim.id).map(status).expect("the same replica");
    assert_eq!(after.ip, before.ip, "a restart keeps the address");
    assert_eq!(after.exit_code, Some(137), "killed by SIGKILL: {after:?}");
    assert_eq!(healed.len(), 3);

    // A liveness probe made to fail: restarted.
    let sick = replicas[1].clone();
    cluster.exec(status(&sick).host_pid, &["touch", "/tmp/sick"]);
    cluster
        .wait_replicas("web", "the replica failing liveness to restart", |r| {
            r.iter().any(|x| x.id == sick.id && running_ready(x) && status(x).restarts == 1)
        })
        .await;
    let events = cluster.events_of(&format!("replica/{}", sick.id)).await;
    assert!(events.iter().any(|e| e.kind == "Unhealthy" && e.message.contains("liveness")), "{events:#?}");

    // A readiness probe made to fail: out of the endpoints, no request reaches it.
    let unready = cluster.replicas("web").await.into_iter().find(|r| r.id == replicas[2].id).expect("replica");
    let unready_ip = status(&unready).ip;
    cluster.exec(status(&unready).host_pid, &["touch", "/tmp/unready"]);
    cluster.wait_replicas("web", "the replica to turn not ready", |r| r.iter().any(|x| x.id == unready.id && !status(x).ready)).await;
    let start = Instant::now();
    while cluster.endpoints("web").await.contains(&unready_ip) {
        assert!(start.elapsed() < LIMIT, "the not-ready replica stays in the endpoints");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.endpoints("web").await.len(), 2);
    let vip: Ipv4Addr = cluster.api.get_service(pb::GetServiceRequest { name: "web".into() }).await.expect("get").into_inner().vip.parse().expect("vip");
    // Wait until the balancer has the new table (the agent applies it on its next set).
    let address = SocketAddr::from((vip, 80));
    let mut answered = BTreeSet::new();
    let start = Instant::now();
    let mut count = 0;
    while count < 30 {
        assert!(start.elapsed() < LIMIT, "the VIP did not answer 30 requests");
        match tokio::task::spawn_blocking(move || http_get(address)).await.expect("join") {
            Ok(body) => {
                answered.insert(body);
                count += 1;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(!answered.contains(&unready.id), "a not-ready replica got a request through the VIP: {answered:?}");
    assert_eq!(answered.len(), 2, "the two ready replicas answer: {answered:?}");
    cluster.exec(status(&unready).host_pid, &["rm", "/tmp/unready"]);
    cluster.wait_replicas("web", "the replica to be ready again", |r| r.iter().filter(|x| running_ready(x)).count() == 3).await;

    // A crash-looping container backs off: delays grow and are capped.
    cluster
        .apply(&format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: crash}}\nspec:\n  image: {image}\n  \
             command: [sh, -c, 'echo boom; exit 3']\n  restartBackoff: {{initialMillis: 100, maxSeconds: 1}}\n"
        ))
        .await;
    let looping = cluster.wait_replicas("crash", "six restarts", |r| r.len() == 1 && status(&r[0]).restarts >= 6).await;
    let evidence = status(&looping[0]);
    assert_eq!(evidence.exit_code, Some(3));
    assert!(evidence.last_output.contains("boom"), "the last output is kept: {evidence:?}");
    // Events travel agent → controller → store in the background: wait for them.
    let start = Instant::now();
    let delays: Vec<u64> = loop {
        let events = cluster.events_of(&format!("replica/{}", looping[0].id)).await;
        let mut restarted: Vec<&pb::Event> = events.iter().filter(|e| e.kind == "Restarted").collect();
        restarted.sort_by_key(|e| e.timestamp_unix_ms);
        let delays: Vec<u64> =
            restarted.iter().filter_map(|e| e.message.split("back-off of ").nth(1)?.split(' ').next()?.parse().ok()).collect();
        if delays.len() >= 6 {
            break delays;
        }
        assert!(start.elapsed() < LIMIT, "six Restarted events: {events:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(&delays[..6], &[0, 100, 200, 400, 800, 1000], "first restart at once, then doubling up to the cap");

    // Delete: nothing left on the node.
    for service in ["web", "crash"] {
        cluster.api.delete_service(pb::DeleteServiceRequest { name: service.into() }).await.expect("delete");
    }
    cluster.wait_replicas("", "every replica gone", |r| r.is_empty()).await;
    let start = Instant::now();
    while std::fs::read_dir(cluster.state_dir().join("replicas")).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(start.elapsed() < LIMIT, "the agent did not remove its replicas\n{}", cluster.agent_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.assert_node_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_disturbs_nothing() {
    let mut cluster = Cluster::start("restart").await;
    let image = cluster.image.clone();
    cluster.apply(&web_manifest(&image, 2)).await;
    let replicas = cluster.wait_replicas("web", "2 running, ready replicas", |r| r.len() == 2 && r.iter().all(running_ready)).await;
    let (kept, killed) = (replicas[0].clone(), replicas[1].clone());

    cluster.kill_agent();
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(alive(status(&kept).host_pid) && alive(status(&killed).host_pid), "containers outlive the agent");
    // One replica dies while the agent is away.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(status(&killed).host_pid).expect("pid")), nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9");

    cluster.start_agent();
    let after = cluster
        .wait_replicas("web", "the new agent to adopt one replica and restart the other", |r| {
            r.iter().any(|x| x.id == killed.id && running_ready(x) && status(x).restarts == 1)
                && r.iter().any(|x| x.id == kept.id && running_ready(x))
        })
        .await;
    let adopted = after.iter().find(|r| r.id == kept.id).map(status).expect("kept replica");
    assert_eq!(adopted.host_pid, status(&kept).host_pid, "adopted, not restarted: same host PID");
    assert_eq!(adopted.restarts, 0, "no restart counted for the adopted replica");
    assert_eq!(after.len(), 2);

    cluster.api.delete_service(pb::DeleteServiceRequest { name: "web".into() }).await.expect("delete");
    cluster.wait_replicas("", "every replica gone", |r| r.is_empty()).await;
    let start = Instant::now();
    while std::fs::read_dir(cluster.state_dir().join("replicas")).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(start.elapsed() < LIMIT, "the agent did not remove its replicas\n{}", cluster.agent_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.assert_node_empty();
}
