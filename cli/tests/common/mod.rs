//! `orch up` for tests: a controller and a real agent in one process, on a bridge,
//! subnets, ports and a cgroup parent of the test's own, with helpers to drive it with
//! the CLI and a check that nothing is left behind (also run, as far as it can be, when
//! a test panics).
#![allow(dead_code)]

pub mod lab;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const ORCH: &str = env!("CARGO_BIN_EXE_orch");
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
pub const LIMIT: Duration = Duration::from_secs(120);

/// `GET path` over plain HTTP/1.0 (metrics listeners, Prometheus' API): the status
/// code and the body.
pub fn http_get_status(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let not_http = || std::io::Error::other(format!("not HTTP: {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(not_http)?;
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).ok_or_else(not_http)?;
    Ok((status, body.to_owned()))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub struct Up {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub server: String,
    pub bridge: String,
    pub cgroup_parent: String,
    pub service_cidr: String,
    pub cluster_cidr: String,
    pub node_port: u16,
    /// Where the controller's and the node's /metrics answer (plain HTTP, loopback).
    pub metrics: String,
    pub node_metrics: String,
}

impl Up {
    pub fn new() -> Up {
        assert!(nix::unistd::geteuid().is_root(), "orch up creates namespaces, cgroups and a bridge: run the tests as root (`sudo bash deploy/test.sh`)");
        // Several instances per test process: names, subnets and ports of their own.
        static INSTANCES: AtomicU32 = AtomicU32::new(0);
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        assert!(n < 3, "Up::new: at most three instances per test process (subnets are laid out for three)");
        let pid = std::process::id();
        let k = (pid % 70) * 3 + n + 20;
        let dir = tempfile::Builder::new().prefix("orch-cli-").tempdir().expect("tempdir");
        let built = Command::new("bash")
            .arg(format!("{ROOT}/deploy/images/build-demo.sh"))
            .arg("--out")
            .arg(dir.path().join("image"))
            .output()
            .expect("run build-demo.sh");
        assert!(built.status.success(), "build-demo.sh: {}", text(&built.stderr));
        let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("address").to_string();
        Up {
            server: free(),
            metrics: free(),
            node_metrics: free(),
            bridge: format!("oc{:x}n{n}", pid % 0xfffff),
            cgroup_parent: format!("orch-test-{pid}-cli{n}"),
            // Apart from every cluster network below (10.200-10.231): the controller refuses an overlap.
            service_cidr: format!("10.241.{k}.0/24"),
            cluster_cidr: format!("10.{}.0.0/16", 200 + (pid % 10) * 3 + n),
            node_port: u16::try_from(31000 + k).expect("port"),
            dir,
            child: None,
        }
    }

    /// The PKI `orch up` makes on its first start (the CLI's credential is in it).
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// `orch` as root runs it against this instance: its server and its credential.
    pub fn command(&self) -> Command {
        let mut command = Command::new(ORCH);
        command.arg("--server").arg(&self.server).arg("--tls-dir").arg(self.pki());
        command
    }

    pub fn manifest(&self, replicas: u32, greeting: &str) -> PathBuf {
        let path = self.dir.path().join("web.yaml");
        let text = format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  image: oci:{}:1.0\n  \
             env: [{{name: GREETING, value: {greeting}}}]\n  \
             ports: [{{name: http, containerPort: 80, servicePort: 80, nodePort: {}}}]\n  \
             probes: {{readiness: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}}}\n  update: {{maxSurge: 1, maxUnavailable: 0}}\n",
            self.dir.path().join("image").display(),
            self.node_port
        );
        std::fs::write(&path, text).expect("write manifest");
        path
    }

    pub fn start(&mut self, files: &[&Path]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("up.log")).expect("log");
        let mut command = self.command();
        command
            .arg("up")
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(["--listen", &self.server, "--bridge", &self.bridge, "--cgroup-parent", &self.cgroup_parent, "--name", "cli-node"])
            .args(["--service-cidr", &self.service_cidr, "--cluster-cidr", &self.cluster_cidr])
            .args(["--metrics-listen", &self.metrics, "--node-metrics-listen", &self.node_metrics])
            // Machine-readable lines, at info: the tests follow a replica through them.
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            // Tests never ask the machine's own resolver.
            .args(["--upstream-dns", "none"]);
        for file in files {
            command.arg("-f").arg(file);
        }
        let child = command.stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log).spawn().expect("spawn orch up");
        self.child = Some(child);
    }

    /// Ctrl-C, and wait for it to finish cleaning up.
    pub fn interrupt(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "orch up exited with {status}:\n{}", self.log());
                return;
            }
            assert!(start.elapsed() < LIMIT, "orch up did not stop:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    pub fn orch(&self, args: &[&str]) -> Output {
        self.command().args(args).stdin(Stdio::null()).output().expect("run orch")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.orch(args);
        assert!(out.status.success(), "orch {args:?} failed: {}\n{}", text(&out.stderr), self.log());
        text(&out.stdout)
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("valid JSON")
    }

    pub fn wait(&self, what: &str, condition: impl Fn(&Up) -> bool) {
        let start = Instant::now();
        while !condition(self) {
            assert!(start.elapsed() < LIMIT, "timed out waiting for {what}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn ready_replicas(&self) -> u64 {
        let out = self.orch(&["get", "services", "web", "-o", "json"]);
        if !out.status.success() {
            return 0;
        }
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().and_then(|v| v[0]["readyReplicas"].as_u64()).unwrap_or(0)
    }

    pub fn assert_nothing_left(&self) {
        let links = text(&Command::new("ip").args(["-o", "link", "show"]).output().expect("ip").stdout);
        assert!(!links.contains(&self.bridge), "links left:\n{links}");
        let namespaces = text(&Command::new("ip").args(["netns", "list"]).output().expect("ip").stdout);
        assert!(!namespaces.contains(&self.bridge), "namespaces left:\n{namespaces}");
        assert_eq!(balancer_pids(&self.bridge), Vec::<i32>::new(), "balancer processes left");
        let routes = text(&Command::new("ip").args(["route", "show"]).output().expect("ip").stdout);
        assert!(!routes.contains(&self.service_cidr), "routes left:\n{routes}");
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").expect("cgroupfs").flatten() {
            let parent = hierarchy.path().join(&self.cgroup_parent);
            assert!(!parent.exists(), "cgroup {} left", parent.display());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(&self.dir.path().display().to_string()), "mounts left:\n{mounts}");
        let run_root = format!("/run/orch/{}", self.bridge);
        assert!(!std::path::Path::new(&run_root).exists(), "the config and secret tmpfs {run_root} is left:\n{mounts}");
        let tables = text(&Command::new("nft").args(["list", "tables"]).output().expect("nft (deploy/test.sh installs nftables)").stdout);
        assert!(!tables.contains(&format!("orch_{}", self.bridge)), "the egress table is left:\n{tables}");
        assert!(!tables.contains(&format!("orchnp_{}", self.bridge)), "the node-port table is left:\n{tables}");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let agent = Path::new(ORCH).with_file_name("orch-agent");
            let _ = Command::new(agent)
                .arg("teardown")
                .arg("--state-dir")
                .arg(self.dir.path().join("state/agent"))
                .args(["--bridge", &self.bridge, "--cgroup-parent", &self.cgroup_parent])
                .status();
        }
        kill_balancers(&self.bridge);
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "del", &format!("{}-lb", self.bridge)]).stderr(Stdio::null()).status();
        for table in [format!("orch_{}", self.bridge), format!("orchnp_{}", self.bridge)] {
            let _ = Command::new("nft").args(["delete", "table", "ip", &table]).stderr(Stdio::null()).status();
        }
        let run_root = format!("/run/orch/{}", self.bridge);
        let _ = Command::new("umount").args(["-l", &run_root]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir(&run_root);
    }
}

/// The PIDs of the balancer processes (outliving the agent that started them) of the
/// node network on `bridge`.
pub fn balancer_pids(bridge: &str) -> Vec<i32> {
    orch_agent::net::balancer_process::pids(bridge)
}

/// Kills what [`balancer_pids`] finds (after a failed test).
pub fn kill_balancers(bridge: &str) {
    for pid in balancer_pids(bridge) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}
