//! A cluster on one machine for tests: `deploy/lab.sh` (each node a network namespace
//! with its own agent process, a real etcd, a controller, a registry) driven through
//! the `orch` CLI the way a user drives it, and removed when the test ends, also after
//! a panic.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{text, LIMIT, ORCH, ROOT};

/// The node port of `manifests/webapp.yaml`.
pub const NODE_PORT: u16 = 30080;

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub net: u32,
    pub up: bool,
    /// `ORCH_LAB_STORE`: etcd or embedded.
    pub store: &'static str,
    /// `ORCH_LAB_CONTROLLERS`: how many controllers the lab starts with (and gives agents).
    pub controllers: u32,
}

impl Lab {
    pub fn up(nodes: u32) -> Lab {
        Lab::up_with_store(nodes, "etcd")
    }

    /// A lab whose controller keeps its state in `store` (etcd, or embedded: its own
    /// redb file). One lab at a time per test process: its names come from the PID.
    pub fn up_with_store(nodes: u32, store: &'static str) -> Lab {
        Lab::start(nodes, store, 1, 1)
    }

    /// A lab with `controllers` controllers (every agent given every one) on an etcd of
    /// `etcd_members` members (3: a cluster over mutual TLS).
    pub fn up_ha(nodes: u32, controllers: u32, etcd_members: u32) -> Lab {
        Lab::start(nodes, "etcd", controllers, etcd_members)
    }

    fn start(nodes: u32, store: &'static str, controllers: u32, etcd_members: u32) -> Lab {
        assert!(nix::unistd::geteuid().is_root(), "the lab creates namespaces, bridges and cgroups: run the tests as root (`sudo bash deploy/test.sh`)");
        let pid = std::process::id();
        let dir = tempfile::Builder::new().prefix("orch-e2e-").tempdir().expect("tempdir");
        let mut lab = Lab { dir, name: format!("e{}", pid % 10_000), net: 100 + pid % 100, up: false, store, controllers };
        let out = lab.script(&["up", &nodes.to_string(), "--etcd", &etcd_members.to_string()]);
        lab.up = true;
        assert!(out.status.success(), "lab.sh up: {}\n{}", text(&out.stderr), lab.logs());
        lab
    }

    pub fn script(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(format!("{ROOT}/deploy/lab.sh"))
            .args(args)
            .env("ORCH_LAB_NAME", &self.name)
            .env("ORCH_LAB_NET", self.net.to_string())
            .env("ORCH_LAB_STORE", self.store)
            .env("ORCH_LAB_CONTROLLERS", self.controllers.to_string())
            .env("ORCH_LAB_DIR", self.dir.path().join("lab"))
            .env("ORCH_CONFIG", self.config())
            .env("ORCH_BIN", PathBuf::from(ORCH).parent().expect("target dir"))
            .output()
            .expect("run deploy/lab.sh")
    }

    /// `lab.sh ARGS`, which must succeed.
    pub fn script_ok(&self, args: &[&str]) {
        let out = self.script(args);
        assert!(out.status.success(), "lab.sh {args:?}: {}\n{}", text(&out.stderr), self.logs());
    }

    /// How many replica records the nodes' agents hold, over every node.
    pub fn replica_records(&self, nodes: u32) -> usize {
        (1..=nodes).map(|k| std::fs::read_dir(self.dir.path().join(format!("lab/node{k}/replicas"))).map_or(0, |d| d.count())).sum()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("orch-config")
    }

    pub fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path().join("lab")).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let content = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = content.lines().rev().take(15).collect();
                all.push_str(&format!("--- {}\n{}\n", path.display(), tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
            }
        }
        all
    }

    /// `orch` with the lab's config file only (no --server): the script wrote it.
    pub fn orch(&self, args: &[&str]) -> Output {
        Command::new(ORCH).args(args).env("ORCH_CONFIG", self.config()).env_remove("ORCH_SERVER").stdin(Stdio::null()).output().expect("run orch")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.orch(args);
        assert!(out.status.success(), "orch {args:?}: {}\n{}", text(&out.stderr), self.logs());
        text(&out.stdout)
    }

    pub fn replicas(&self) -> Vec<serde_json::Value> {
        let out = self.orch(&["get", "replicas", "-o", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_default()
    }

    pub fn wait(&self, what: &str, condition: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let replicas = self.replicas();
            if condition(&replicas) {
                return replicas;
            }
            assert!(start.elapsed() < LIMIT, "timed out waiting for {what}: {replicas:#?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn node_address(&self, k: u32) -> SocketAddr {
        SocketAddr::from(([10, 250, u8::try_from(self.net).expect("octet"), u8::try_from(10 + k).expect("octet")], NODE_PORT))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.up {
            let _ = self.script(&["down"]);
        }
    }
}

pub fn http_get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: e2e\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let start = response.find("Hello from ").ok_or_else(|| std::io::Error::other(format!("unexpected answer: {response:?}")))?;
    Ok(response[start + "Hello from ".len()..].split('<').next().unwrap_or("").to_owned())
}

/// When a killed container's init (host PID `pid`) is a zombie or gone: the kernel has
/// then ended every process of its PID namespace, so none holds a socket any more.
pub fn wait_until_dead(pid: i32) -> Instant {
    for _ in 0..5000 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()));
        if matches!(state, None | Some('Z' | 'X')) {
            return Instant::now();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("host PID {pid} still runs 5 s after kill -9");
}

pub fn all_running(count: usize) -> impl Fn(&[serde_json::Value]) -> bool {
    move |replicas| replicas.len() == count && replicas.iter().all(|r| r["phase"] == "Running" && r["ready"] == true)
}

/// Requests spread over `nodes`' node ports, counted by the replica that answered; a
/// failed request panics with `what`.
pub fn load(lab: &Lab, nodes: &[u32], requests: usize, what: &str) -> BTreeMap<String, usize> {
    let mut answered = BTreeMap::new();
    for i in 0..requests {
        let address = lab.node_address(nodes[i % nodes.len()]);
        match http_get(address) {
            Ok(replica) => *answered.entry(replica).or_default() += 1,
            Err(error) => panic!("{what}: request {i} to {address} failed: {error}\n{}", lab.logs()),
        }
    }
    answered
}

/// Each replica (of `service`, or every one) by name: its host PID and restart count.
/// A replica without a host PID (not started yet) panics: a kill aimed at PID 0 would
/// hit the test's own process group.
pub fn identities(replicas: &[serde_json::Value], service: Option<&str>) -> BTreeMap<String, (i32, i64)> {
    replicas
        .iter()
        .filter(|r| service.is_none_or(|s| r["service"] == s))
        .map(|r| {
            let name = r["name"].as_str().expect("a replica's name").to_owned();
            let pid = r["hostPid"].as_i64().and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1);
            let pid = pid.unwrap_or_else(|| panic!("replica {name} has no host PID: {r}"));
            (name, (pid, r["restarts"].as_i64().expect("restarts")))
        })
        .collect()
}
