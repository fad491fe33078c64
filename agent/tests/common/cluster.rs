//! A one-node cluster for the daemon tests and the heal benchmark: a controller
//! in-process (embedded store, real gRPC on loopback) and `orch-agent serve` as a process
//! on a bridge, subnets and cgroup parent of its own.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_api::cidr::Ipv4Cidr;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use orch_controller::server::{Controller, ControllerConfig};
use orch_controller::store::{EmbeddedStore, Store};
use tonic::transport::Channel;

use super::{oci, require_root, AGENT};

pub const LIMIT: Duration = Duration::from_secs(90);

/// One node's worth of everything a test makes, removed on drop (after a panic too).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    controller: Option<Controller>,
    address: SocketAddr,
    pub api: ApiClient<Channel>,
    agent: Option<Child>,
    pub bridge: String,
    pub cgroup_parent: String,
    pub image: String,
    service_cidr: String,
    /// More flags for `orch-agent serve`.
    agent_args: Vec<String>,
}

impl Cluster {
    pub async fn start(test: &str) -> Cluster {
        Cluster::start_with(test, &[]).await
    }

    /// A cluster whose agent runs with more flags.
    pub async fn start_with(test: &str, agent_args: &[&str]) -> Cluster {
        require_root();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Every cluster of this process gets its own service range and pod network
        // (daemon.rs starts three at once); other processes differ by PID.
        let k = u8::try_from((pid % 8) * 4 + n % 4).expect("small");
        let dir = tempfile::Builder::new().prefix(&format!("orch-daemon-{test}-")).tempdir().expect("tempdir");
        let layout = dir.path().join("image");
        oci::write_layout(&layout, "1.0", &[oci::busybox_layer()], &["sh"]);
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).await.expect("embedded store"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let config = ControllerConfig {
            service_range: Ipv4Cidr::new(Ipv4Addr::new(10, 231, 10 + k, 0), 24).expect("the test's service range"),
            cluster_network: Ipv4Cidr::new(Ipv4Addr::new(10, 220 + k, 0, 0), 16).expect("the test's cluster network"),
            node_lease: Duration::from_secs(3),
            node_grace: Duration::from_secs(3),
            leader_lease: Duration::from_secs(2),
            secrets: Some(Arc::new(orch_api::secrets::SecretsKey::generate().expect("a secrets key"))),
            ..ControllerConfig::default()
        };
        let service_cidr = config.service_range.to_string();
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
            agent_args: agent_args.iter().map(|arg| (*arg).to_owned()).collect(),
        };
        cluster.start_agent();
        cluster.wait_node_ready().await;
        cluster
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    /// Where the agent keeps local volumes.
    pub fn volumes_dir(&self) -> PathBuf {
        self.dir.path().join("volumes")
    }

    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("agent.log")).expect("agent log");
        let child = Command::new(AGENT)
            .args(["serve", "--controller", &self.address.to_string(), "--name", "node-1", "--address", "127.0.0.1"])
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--volumes-dir")
            .arg(self.volumes_dir())
            .args(["--cgroup-parent", &self.cgroup_parent, "--bridge", &self.bridge, "--heartbeat-ms", "300", "--insecure-api-listen", "127.0.0.1:0"])
            .args(["--upstream-dns", "none"]) // tests never ask the machine's own resolver
            .args(["--metrics-listen", "127.0.0.1:0"]) // agents of parallel tests share the host's loopback
            .args(&self.agent_args)
            .env("RUST_LOG", std::env::var("ORCH_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn orch-agent serve");
        self.agent = Some(child);
    }

    /// The agent's process id, while it runs.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }

    /// `kill -9` of the agent: no goodbye.
    pub fn kill_agent(&mut self) {
        if let Some(mut child) = self.agent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub async fn wait_node_ready(&mut self) {
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

    pub async fn apply(&mut self, text: &str) {
        let request = pb::ApplyRequest { sources: vec![pb::ManifestSource { name: "test.yaml".into(), content: text.into() }] };
        self.api.apply(request).await.expect("apply");
    }

    pub async fn replicas(&mut self, service: &str) -> Vec<pb::Replica> {
        self.api.list_replicas(pb::ListReplicasRequest { service: service.into() }).await.expect("list replicas").into_inner().replicas
    }

    pub async fn events_of(&mut self, object: &str) -> Vec<pb::Event> {
        self.api.list_events(pb::ListEventsRequest { object: object.into() }).await.expect("events").into_inner().events
    }

    /// Waits until `condition` holds for the service's replicas; returns them.
    pub async fn wait_replicas(&mut self, service: &str, what: &str, condition: impl Fn(&[pb::Replica]) -> bool) -> Vec<pb::Replica> {
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

    pub async fn endpoints(&self, service: &str) -> Vec<String> {
        match self.store.get(&format!("/orch/endpoints/{service}")).await.expect("store") {
            Some(kv) => {
                let endpoints: pb::ServiceEndpoints = orch_controller::keys::decode(&kv.key, &kv.value).expect("decode");
                endpoints.ready_ips
            }
            None => Vec::new(),
        }
    }

    /// Where the node's balancer sends `vip:port` now ("IP:PORT" each), as its `Inspect`
    /// reports through the controller's Topology; empty while the node cannot be asked.
    pub async fn balancer_backends(&mut self, vip: &str, port: u32) -> Vec<String> {
        let Ok(topology) = self.api.topology(pb::TopologyRequest {}).await else { return Vec::new() };
        let nodes = topology.into_inner().nodes;
        nodes
            .iter()
            .flat_map(|n| n.listeners.iter())
            .filter(|l| l.vip == vip && l.port == port && l.protocol == "tcp")
            .flat_map(|l| l.backends.clone())
            .collect()
    }

    /// Runs a command inside a replica's container, the way exec probes do.
    pub fn exec(&self, host_pid: u32, command: &[&str]) {
        let output = self.exec_output(host_pid, command);
        assert!(output.status.success(), "{command:?} in PID {host_pid}: {}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }

    /// [`Cluster::exec`], its output whatever its exit.
    pub fn exec_output(&self, host_pid: u32, command: &[&str]) -> std::process::Output {
        self.exec_as(host_pid, None, command)
    }

    /// A command in the container as `user` (`UID:GID`), root (without capabilities)
    /// when none; its output whatever its exit.
    pub fn exec_as(&self, host_pid: u32, user: Option<&str>, command: &[&str]) -> std::process::Output {
        Command::new(AGENT)
            .args(["__exec", "--pid", &host_pid.to_string()])
            .args(user.map(|u| ["--user", u]).into_iter().flatten())
            .arg("--")
            .args(command)
            .env_clear()
            .env("PATH", "/bin")
            .stdin(Stdio::null())
            .output()
            .expect("run orch-agent __exec")
    }

    /// Waits until the agent removed every replica record, then checks the node is empty.
    pub async fn wait_node_empty(&self) {
        let start = Instant::now();
        while std::fs::read_dir(self.state_dir().join("replicas")).map(|d| d.count()).unwrap_or(0) > 0 {
            assert!(start.elapsed() < LIMIT, "the agent did not remove its replicas\n{}", self.agent_log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.assert_node_empty();
    }

    /// Nothing of the node's replicas is left: containers, records, logs, addresses,
    /// cgroups, veths.
    pub fn assert_node_empty(&self) {
        let state = self.state_dir();
        let containers: Vec<_> = std::fs::read_dir(state.join("containers")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(containers.is_empty(), "containers left: {containers:?}");
        let records: Vec<_> = std::fs::read_dir(state.join("replicas")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(records.is_empty(), "replica records left: {records:?}");
        let empty_dirs: Vec<_> = std::fs::read_dir(state.join("empty-dirs")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(empty_dirs.is_empty(), "emptyDir volumes left: {empty_dirs:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = self.dir.path().display().to_string();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&root)).collect();
        assert!(left.is_empty(), "mounts left under {root}: {left:#?}");
        let ipam = std::fs::read_to_string(state.join("network").join(format!("{}.json", self.bridge))).unwrap_or_default();
        assert!(!ipam.contains("web") && !ipam.contains("crash"), "addresses still allocated: {ipam}");
        let layout = orch_agent::cgroups::CgroupLayout::detect().expect("cgroups");
        let probe = layout.container(&format!("{}/probe", self.cgroup_parent)).expect("cgroup paths");
        for path in probe.paths() {
            let parent = path.parent().expect("parent");
            let children: Vec<_> =
                std::fs::read_dir(parent).map(|d| d.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name()).collect()).unwrap_or_default();
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
        super::kill_balancers(&self.bridge);
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

pub fn running_ready(replica: &pb::Replica) -> bool {
    replica.status.as_ref().is_some_and(|s| s.phase() == pb::ReplicaPhase::Running && s.ready && s.host_pid > 0)
}

pub fn status(replica: &pb::Replica) -> pb::ReplicaStatus {
    replica.status.clone().unwrap_or_default()
}

/// One HTTP/1.0 GET; the body.
pub fn http_get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_owned()).ok_or_else(|| std::io::Error::other(format!("not HTTP: {response:?}")))
}
