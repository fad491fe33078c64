//! Node networking for real, as root: a bridge per test (own name and subnet), real
//! containers on it, the balancer namespace with VIPs, DNS, node ports, IPAM across an
//! agent restart, and teardown that leaves nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{Sandbox, AGENT};
use nix::sys::signal::Signal;
use orch_agent::cgroups::Limits;
use orch_agent::net::egress;
use orch_agent::net::{DataPath, NodeNetwork, NodeNetworkConfig, PeerRoute, PortMapping, Protocol, ServiceEndpoints, Strategy, Subnet};
use orch_agent::runtime::{BindMount, Container, ContainerSpec, Runtime, RuntimeConfig, Security, Stdio};

/// One test's network corner: bridge name, pod subnet, service range, node port.
struct NetLab {
    sandbox: Sandbox,
    bridge: String,
    subnet: Subnet,
    services: Subnet,
    node_port: u16,
    runtime: Runtime,
}

impl NetLab {
    fn new(test: &str) -> NetLab {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let k = (pid.wrapping_mul(7) + n * 31) % 200 + 20;
        let sandbox = Sandbox::new(test);
        let runtime =
            Runtime::new(RuntimeConfig { state_dir: sandbox.state_dir(), cgroup_parent: sandbox.cgroup_parent.clone(), init_exe: PathBuf::from(AGENT) })
                .expect("runtime");
        NetLab {
            bridge: format!("ot{:x}{n}", pid % 0xfffff),
            subnet: Subnet::parse(&format!("10.210.{k}.0/24")).expect("subnet"),
            services: Subnet::parse(&format!("10.211.{k}.0/24")).expect("subnet"),
            node_port: u16::try_from(31000 + k * 4 + n % 4).expect("port"),
            sandbox,
            runtime,
        }
    }

    async fn network(&self) -> NodeNetwork {
        NodeNetwork::setup(self.config(DataPath::Proxy)).await.expect("node network setup")
    }

    /// This lab's node network in the agent's own namespace, node ports on the gateway.
    fn config(&self, data_path: DataPath) -> NodeNetworkConfig {
        NodeNetworkConfig {
            bridge: self.bridge.clone(),
            subnet: self.subnet,
            service_cidr: self.services,
            cluster_cidr: self.subnet.supernet(16),
            upstream_dns: Vec::new(),
            state_dir: self.sandbox.state_dir(),
            node_address: Some(self.subnet.gateway()),
            strategy: Strategy::RoundRobin,
            limits: orch_agent::net::ConnectionLimits::default(),
            node_netns: None,
            helper: Some(common::AGENT.into()),
            data_path,
        }
    }

    /// This lab's node network in `outside`'s node namespace, node ports on its uplink.
    async fn network_behind(&self, outside: &Outside, upstream_dns: Vec<std::net::SocketAddr>, data_path: DataPath) -> NodeNetwork {
        let config = NodeNetworkConfig {
            upstream_dns,
            node_address: Some(Outside::NODE_UPLINK),
            node_netns: Some(orch_agent::net::Netns::named_path(&outside.node)),
            ..self.config(data_path)
        };
        NodeNetwork::setup(config).await.expect("node network setup")
    }

    fn vip(&self) -> Ipv4Addr {
        self.services.nth(10)
    }

    /// A container on the bridge running `script`, with resolv.conf and hosts mounted.
    async fn container(&self, network: &NodeNetwork, id: &str, script: &str) -> Container {
        let files = self.sandbox.root.path().join("files").join(id);
        let (_, mounts) = network.prepare(id, id, &files).expect("prepare");
        let spec = ContainerSpec {
            id: id.to_owned(),
            layers: vec![self.sandbox.rootfs()],
            hostname: None,
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![],
            cwd: None,
            limits: Limits::default(),
            stdio: Stdio::log_file(self.sandbox.root.path().join(format!("{id}.log"))),
            user_namespace: None,
            user: None,
            image: None,
            mounts: mounts.into_iter().map(|(source, target)| BindMount::new(source, target)).collect(),
            security: Security::default(),
            system: None,
            stop_signal: orch_api::signal::SIGTERM,
        };
        self.runtime.start_with_network(&spec, Some(network)).await.expect("start with network")
    }

    fn log(&self, id: &str) -> String {
        common::log_text(&self.sandbox.root.path().join(format!("{id}.log")))
    }

    /// Nothing of this lab is left on the machine.
    fn assert_no_network_left(&self) {
        let links = std::process::Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link");
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(!links.contains(&format!(" {}:", self.bridge)) && !links.contains(&format!(" {}l@", self.bridge)), "links left:\n{links}");
        let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output().expect("ip netns");
        assert!(!String::from_utf8_lossy(&namespaces.stdout).contains(&format!("{}-lb", self.bridge)), "balancer namespace left");
        let routes = std::process::Command::new("ip").args(["route", "show"]).output().expect("ip route");
        let routes = String::from_utf8_lossy(&routes.stdout);
        assert!(!routes.contains(&self.services.to_string()) && !routes.contains(&self.subnet.to_string()), "routes left:\n{routes}");
        assert_eq!(common::balancer_pids(&self.bridge), Vec::<i32>::new(), "balancer processes left");
    }
}

impl Drop for NetLab {
    /// After a failed test: remove what `teardown` would have.
    fn drop(&mut self) {
        let ip = |args: &[&str]| {
            let _ = std::process::Command::new("ip").args(args).stderr(std::process::Stdio::null()).status();
        };
        // The two-node test's networks are `<bridge>A` and `<bridge>B` (their bridges and
        // tables live in node namespaces `TwoNodes` removes; their balancer namespaces are
        // named, as every network's).
        for bridge in [self.bridge.clone(), format!("{}A", self.bridge), format!("{}B", self.bridge)] {
            common::kill_balancers(&bridge);
            let _ = std::fs::remove_file(orch_agent::net::balancer_process::socket_path(&bridge));
            ip(&["netns", "del", &format!("{bridge}-lb")]);
            for table in [egress::table_name(&bridge), orch_agent::net::dnat::table_name(&bridge)] {
                let _ = std::process::Command::new("nft").args(["delete", "table", "ip", &table]).stderr(std::process::Stdio::null()).status();
            }
        }
        ip(&["link", "del", &self.bridge]);
        ip(&["link", "del", &format!("{}l", self.bridge)]);
        ip(&["route", "del", &self.services.to_string()]);
    }
}

/// The bridge has the address it was given, its gateway's (`02:42` and the IPv4
/// octets), whatever ports joined or left: a bridge without one follows its lowest
/// port's, under every neighbour's ARP cache (a response through the VIP then waits
/// seconds in retransmissions).
fn assert_bridge_keeps_its_address(lab: &NetLab, when: &str) {
    let [a, b, c, d] = lab.subnet.gateway().octets();
    let address = std::fs::read_to_string(format!("/sys/class/net/{}/address", lab.bridge)).expect("the bridge's address");
    assert_eq!(address.trim(), format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}"), "{when}");
}

/// The script of a backend: serve its hostname over HTTP on port 80.
const SERVE_HOSTNAME: &str = "mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 80 -h /www";

/// One HTTP/1.0 GET; the body.
fn http_get(address: SocketAddrV4) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address.into(), Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_owned());
    body.ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))
}

/// Waits (bounded) until `address` answers HTTP.
fn wait_for_http(address: SocketAddrV4) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(address).is_err() {
        assert!(Instant::now() < deadline, "{address} never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn web(lab: &NetLab, ready: Vec<Ipv4Addr>) -> Vec<ServiceEndpoints> {
    vec![ServiceEndpoints {
        name: "web".into(),
        vip: lab.vip(),
        ports: vec![PortMapping { name: "http".into(), protocol: Protocol::Tcp, service_port: 80, target_port: 80, node_port: Some(lab.node_port) }],
        ready,
    }]
}

async fn stop(container: Container) {
    container.kill().await;
    container.remove().await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_reach_each_other_and_services_by_name() {
    let lab = NetLab::new("net-reach");
    let network = lab.network().await;
    let server = lab.container(&network, "server", SERVE_HOSTNAME).await;
    let server_ip = network.view().await.expect("view").containers.iter().find(|c| c.0 == "server").expect("server attached").1;
    network.apply_services(&web(&lab, vec![server_ip])).await.expect("apply");
    // (busybox wget crashes on a refused connection, so the server is up first.)
    wait_for_http(SocketAddrV4::new(server_ip, 80));
    let script = format!(
        "wget -qO- http://{server_ip}/; \
         echo via-vip; wget -qO- http://{vip}/; echo via-dns; wget -qO- http://web/; wget -qO- http://web.orch/; \
         (nslookup nope.orch {dns} >/dev/null 2>&1) 2>/dev/null || echo nxdomain",
        vip = lab.vip(),
        dns = lab.subnet.lb_address()
    );
    let client = lab.container(&network, "client", &script).await;
    let exit = client.wait().await;
    client.remove().await.expect("remove");
    let output = lab.log("client");
    assert_eq!(exit.code, 0, "{output}");
    assert_eq!(output.lines().collect::<Vec<_>>(), ["server", "via-vip", "server", "via-dns", "server", "server", "nxdomain"], "{output}");
    stop(server).await;
    network.detach("server").await.expect("detach");
    network.detach("client").await.expect("detach");
    network.teardown(true).await.expect("teardown");
    lab.assert_no_network_left();
    lab.sandbox.assert_clean("server");
    lab.sandbox.assert_clean("client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_spreads_load_evenly_and_loses_no_request_when_backends_go() {
    let lab = NetLab::new("net-balance");
    let network = lab.network().await;
    let mut backends = Vec::new();
    let mut ips = Vec::new();
    for i in 0..3 {
        let id = format!("backend-{i}");
        backends.push(lab.container(&network, &id, SERVE_HOSTNAME).await);
        let view = network.view().await.expect("view");
        let ip = view.containers.iter().find(|c| c.0 == id).expect("attached").1;
        wait_for_http(SocketAddrV4::new(ip, 80));
        ips.push(ip);
    }
    network.apply_services(&web(&lab, ips.clone())).await.expect("apply");
    let vip = SocketAddrV4::new(lab.vip(), 80);

    // A container sends 300 requests to the VIP: each backend within ±20% of 100.
    let client = lab.container(&network, "client", &format!("for i in $(seq 300); do wget -qO- http://{}/; done", lab.vip())).await;
    let exit = client.wait().await;
    client.remove().await.expect("remove");
    assert_eq!(exit.code, 0, "{}", lab.log("client"));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in lab.log("client").lines() {
        *counts.entry(line.to_owned()).or_default() += 1;
    }
    assert_eq!(counts.values().sum::<usize>(), 300, "{counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (backend, count) in &counts {
        assert!((80..=120).contains(count), "{backend} got {count} of 300: {counts:?}");
    }
    network.detach("client").await.expect("detach");
    assert_bridge_keeps_its_address(&lab, "after four containers joined the bridge and one left");

    // The node port forwards into the same balancer.
    let node_port = SocketAddrV4::new(lab.subnet.gateway(), lab.node_port);
    assert!(http_get(node_port).expect("node port").starts_with("backend-"));

    // Mid-load (between two requests, so none is in flight): backend-2 leaves the
    // table, and backend-1 dies without leaving it — connects to it fail and the
    // balancer moves on. No request may fail.
    let table_without_2 = web(&lab, ips[..2].to_vec());
    let (paused_tx, paused_rx) = std::sync::mpsc::channel::<()>();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    let load = tokio::task::spawn_blocking(move || {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut failures = Vec::new();
        for i in 0..200 {
            if i == 50 {
                let _ = paused_tx.send(());
                let _ = resume_rx.recv();
            }
            let started = Instant::now();
            match http_get(vip) {
                // Only the answers after the change tell which backends are still used.
                Ok(body) if i >= 50 => *seen.entry(body).or_default() += 1,
                Ok(_) => {}
                Err(e) => failures.push(format!("request {i}: {e} after {:?}", started.elapsed())),
            }
        }
        (seen, failures)
    });
    tokio::task::spawn_blocking(move || paused_rx.recv()).await.expect("join").expect("paused");
    network.apply_services(&table_without_2).await.expect("apply without backend-2");
    let dead = backends.remove(1);
    stop(dead).await;
    resume_tx.send(()).expect("resume");
    let (seen, failures) = load.await.expect("load");
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["backend-0"], "only the live, listed backend answers");

    for backend in backends {
        stop(backend).await;
    }
    for i in 0..3 {
        network.detach(&format!("backend-{i}")).await.expect("detach");
    }
    let view = network.view().await.expect("view");
    assert!(view.containers.is_empty(), "addresses released: {:?}", view.containers);
    assert_bridge_keeps_its_address(&lab, "after every container left");
    network.teardown(true).await.expect("teardown");
    lab.assert_no_network_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipam_survives_an_agent_restart_without_reusing_an_address() {
    let lab = NetLab::new("net-ipam");
    let first = lab.network().await;
    let running = lab.container(&first, "long-lived", SERVE_HOSTNAME).await;
    let held = first.view().await.expect("view").containers[0].1;
    wait_for_http(SocketAddrV4::new(held, 80));
    // The agent goes away without tearing anything down, and comes back.
    drop(first);
    let second = lab.network().await;
    assert!(!second.created_bridge(), "the second setup repairs, it does not recreate");
    let (fresh, _) = second.prepare("newcomer", "newcomer", &lab.sandbox.root.path().join("files/newcomer")).expect("prepare");
    assert_ne!(fresh, held, "an address in use is never handed out again");
    assert_eq!(http_get(SocketAddrV4::new(held, 80)).expect("still reachable"), "long-lived", "the running container kept its network");
    stop(running).await;
    second.detach("long-lived").await.expect("detach");
    second.detach("newcomer").await.expect("detach");
    second.teardown(true).await.expect("teardown");
    lab.assert_no_network_left();
}

/// Two "VMs" for the two-node test: network namespaces on a test bridge with their own
/// addresses in a subnet this test made. Removed on drop, after a panic too.
struct TwoNodes {
    prefix: String,
    k: u32,
}

impl TwoNodes {
    fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip").args(args).output().expect("ip");
        assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }

    fn new(prefix: &str, k: u32) -> TwoNodes {
        let nodes = TwoNodes { prefix: prefix.to_owned(), k };
        let switch = format!("{prefix}t");
        Self::ip(&["link", "add", &switch, "type", "bridge"]);
        Self::ip(&["link", "set", &switch, "up"]);
        Self::ip(&["addr", "add", &format!("10.212.{k}.1/24"), "dev", &switch]);
        for (x, n) in [("a", 2), ("b", 3)] {
            let ns = nodes.netns(x);
            let (outside, inside) = (format!("{prefix}u{x}"), format!("{prefix}v{x}"));
            Self::ip(&["netns", "add", &ns]);
            Self::ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
            Self::ip(&["link", "set", &inside, "netns", &ns]);
            Self::ip(&["link", "set", &outside, "master", &switch, "up"]);
            Self::ip(&["-n", &ns, "addr", "add", &format!("10.212.{k}.{n}/24"), "dev", &inside]);
            Self::ip(&["-n", &ns, "link", "set", &inside, "up"]);
            Self::ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        nodes
    }

    fn netns(&self, x: &str) -> String {
        format!("{}n{x}", self.prefix)
    }

    fn address(&self, x: &str) -> Ipv4Addr {
        Ipv4Addr::new(10, 212, u8::try_from(self.k).expect("k"), if x == "a" { 2 } else { 3 })
    }
}

impl Drop for TwoNodes {
    fn drop(&mut self) {
        for x in ["a", "b"] {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.netns(x)]).stderr(std::process::Stdio::null()).status();
        }
        let _ = std::process::Command::new("ip").args(["link", "del", &format!("{}t", self.prefix)]).stderr(std::process::Stdio::null()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_route_pod_and_vip_traffic_across_through_the_balancer_process() {
    two_nodes_route_pod_and_vip_traffic_across(NetLab::new("net-2node"), DataPath::Proxy).await;
}

/// On the kernel path, node B DNATs its pod's VIP connection to the server on node A (no
/// masquerade: A routes the reply back and B un-NATs it) and its node port from outside
/// towards A (masqueraded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_route_pod_and_vip_traffic_across_on_the_kernel_path() {
    two_nodes_route_pod_and_vip_traffic_across(NetLab::new("net-2nodek"), DataPath::Kernel).await;
}

async fn two_nodes_route_pod_and_vip_traffic_across(lab: NetLab, data_path: DataPath) {
    let k = u32::from(lab.subnet.network.octets()[2]);
    let nodes = TwoNodes::new(&lab.bridge, k);
    let pods_b = Subnet::parse(&format!("10.213.{k}.0/24")).expect("subnet");
    let node_network = |x: &'static str, subnet: Subnet| NodeNetworkConfig {
        bridge: format!("{}{}", lab.bridge, x.to_uppercase()),
        subnet,
        service_cidr: lab.services,
        // Both nodes' pods (10.210.k.0/24 and 10.213.k.0/24): pod to pod is not masqueraded.
        cluster_cidr: Subnet::parse("10.208.0.0/12").expect("cluster"),
        upstream_dns: Vec::new(),
        state_dir: lab.sandbox.state_dir(),
        node_address: Some(nodes.address(x)),
        strategy: Strategy::RoundRobin,
        limits: orch_agent::net::ConnectionLimits::default(),
        node_netns: Some(orch_agent::net::Netns::named_path(&nodes.netns(x))),
        helper: Some(common::AGENT.into()),
        data_path,
    };
    let a = NodeNetwork::setup(node_network("a", lab.subnet)).await.expect("node a");
    let b = NodeNetwork::setup(node_network("b", pods_b)).await.expect("node b");
    a.set_peer_routes(&[PeerRoute { subnet_network: pods_b.network, prefix: 24, via: nodes.address("b") }]).await.expect("routes a");
    b.set_peer_routes(&[PeerRoute { subnet_network: lab.subnet.network, prefix: 24, via: nodes.address("a") }]).await.expect("routes b");

    let server = lab.container(&a, "server", SERVE_HOSTNAME).await;
    let server_ip = a.view().await.expect("view").containers[0].1;
    for node in [&a, &b] {
        node.apply_services(&web(&lab, vec![server_ip])).await.expect("apply");
    }
    let script = format!(
        "(for i in $(seq 100); do wget -qO- http://{server_ip}/ 2>/dev/null && break; sleep 0.1; done) 2>/dev/null; \
         wget -qO- http://{vip}/; wget -qO- http://web/; wget -qO- http://{b}:{port}/",
        vip = lab.vip(),
        b = nodes.address("b"),
        port = lab.node_port
    );
    let client = lab.container(&b, "client", &script).await;
    let exit = client.wait().await;
    client.remove().await.expect("remove");
    let output = lab.log("client");
    assert_eq!(exit.code, 0, "{output}");
    assert_eq!(
        output.lines().collect::<Vec<_>>(),
        ["server", "server", "server", "server"],
        "pod IP, VIP, DNS name and node port from the other node: {output}"
    );
    // From outside both nodes: node A's node port reaches the pod on A, node B's too.
    for x in ["a", "b"] {
        let body = tokio::task::spawn_blocking({
            let address = SocketAddrV4::new(nodes.address(x), lab.node_port);
            move || http_get(address)
        })
        .await
        .expect("join")
        .expect("node port");
        assert_eq!(body, "server", "node port of node {x}");
    }
    if let Some(kernel) = b.kernel_path() {
        kernel.refresh_metrics();
        assert_eq!(
            kernel.metrics().connections("web"),
            3,
            "node B DNAT'd the pod's two VIP connections (by address, by name) and the node port's from outside"
        );
    }

    stop(server).await;
    a.detach("server").await.expect("detach");
    b.detach("client").await.expect("detach");
    a.teardown(true).await.expect("teardown a");
    b.teardown(true).await.expect("teardown b");
    drop(nodes);
    lab.assert_no_network_left();
    for x in ["A", "B"] {
        let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output().expect("ip netns");
        assert!(!String::from_utf8_lossy(&namespaces.stdout).contains(&format!("{}{x}-lb", lab.bridge)), "balancer namespace of node {x} left");
        assert_eq!(common::balancer_pids(&format!("{}{x}", lab.bridge)), Vec::<i32>::new(), "balancer process of node {x} left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_established_connection_survives_an_endpoint_change() {
    let lab = NetLab::new("net-keep");
    let network = lab.network().await;
    let echo = lab.container(&network, "echo", "exec nc -ll -p 7000 -e cat").await;
    let echo_ip = network.view().await.expect("view").containers[0].1;
    let table = |ready: Vec<Ipv4Addr>| {
        vec![ServiceEndpoints {
            name: "echo".into(),
            vip: lab.vip(),
            ports: vec![PortMapping { name: "echo".into(), protocol: Protocol::Tcp, service_port: 7000, target_port: 7000, node_port: None }],
            ready,
        }]
    };
    network.apply_services(&table(vec![echo_ip])).await.expect("apply");
    let vip = SocketAddrV4::new(lab.vip(), 7000);
    let roundtrip = |stream: &mut TcpStream, line: &str| -> String {
        stream.write_all(format!("{line}\n").as_bytes()).expect("write");
        let mut buffer = vec![0u8; line.len() + 1];
        stream.read_exact(&mut buffer).expect("read the echo");
        String::from_utf8_lossy(&buffer).trim().to_owned()
    };
    let mut stream = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut stream) = TcpStream::connect_timeout(&vip.into(), Duration::from_secs(5)) {
                stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
                stream.write_all(b"hello\n").expect("write");
                let mut buffer = [0u8; 6];
                if stream.read_exact(&mut buffer).is_ok() {
                    return stream;
                }
            }
            assert!(Instant::now() < deadline, "the echo service never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("connect");
    // The endpoint leaves the service: new connections have nowhere to go, but this one
    // was established and keeps working.
    network.apply_services(&table(vec![])).await.expect("apply without endpoints");
    assert_eq!(roundtrip(&mut stream, "still-here"), "still-here");
    let refused = tokio::task::spawn_blocking(move || {
        let mut fresh = TcpStream::connect_timeout(&vip.into(), Duration::from_secs(5)).expect("the listener stays");
        fresh.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let _ = fresh.write_all(b"x\n");
        let mut buffer = [0u8; 1];
        matches!(fresh.read(&mut buffer), Ok(0) | Err(_))
    })
    .await
    .expect("join");
    assert!(refused, "a new connection with no endpoint is closed");
    network.apply_services(&table(vec![echo_ip])).await.expect("apply again");
    assert_eq!(roundtrip(&mut stream, "and-after"), "and-after");
    drop(stream);
    stop(echo).await;
    network.detach("echo").await.expect("detach");
    network.teardown(true).await.expect("teardown");
    lab.assert_no_network_left();
}

/// A node an earlier build ran DNAT'd VIPs in the balancer namespace (table `orch_lb`,
/// forwarding on) and attached containers without hairpin mode. This build's setup on
/// the same bridge keeps that table drained — a connection it carried goes on, it DNATs
/// nothing new — and puts the container's port in hairpin mode; new connections are
/// DNAT'd in the node's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_the_connections_the_balancer_namespace_carried() {
    let lab = NetLab::new("net-upgrade");
    let earlier = lab.network().await;
    let echo = lab.container(&earlier, "echo", "exec nc -ll -p 7000 -e cat").await;
    let echo_ip = earlier.view().await.expect("view").containers[0].1;
    let table = vec![ServiceEndpoints {
        name: "echo".into(),
        vip: lab.vip(),
        ports: vec![PortMapping { name: "echo".into(), protocol: Protocol::Tcp, service_port: 7000, target_port: 7000, node_port: None }],
        ready: vec![echo_ip],
    }];
    earlier.apply_services(&table).await.expect("apply");
    // What the earlier build left: its rules and forwarding in the balancer namespace, no
    // hairpin mode; its balancer process is gone too (the connection is the kernel's).
    let lb = format!("{}-lb", lab.bridge);
    let vip = SocketAddrV4::new(lab.vip(), 7000);
    let legacy = format!(
        "table ip orch_lb {{\n\tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\t\
         ip daddr {} tcp dport 7000 dnat to {echo_ip}:7000\n\t}}\n\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\t\
         ct status dnat masquerade\n\t}}\n}}\n",
        vip.ip()
    );
    let run = |args: &[&str], input: Option<&str>| {
        let mut child = std::process::Command::new(args[0])
            .args(&args[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        if let Some(input) = input {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        let output = child.wait_with_output().expect("wait");
        assert!(output.status.success(), "{args:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(&["ip", "netns", "exec", &lb, "nft", "-f", "-"], Some(&legacy));
    run(&["ip", "netns", "exec", &lb, "sysctl", "-qw", "net.ipv4.ip_forward=1"], None);
    let veth = orch_agent::net::names::container_veth(&lab.bridge, "echo");
    run(&["ip", "link", "set", &veth, "type", "bridge_slave", "hairpin", "off"], None);
    common::kill_balancers(&lab.bridge);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !common::balancer_pids(&lab.bridge).is_empty() {
        assert!(Instant::now() < deadline, "the balancer process outlived its kill -9");
        std::thread::sleep(Duration::from_millis(10));
    }
    let roundtrip = |stream: &mut TcpStream, line: &str| -> String {
        stream.write_all(format!("{line}\n").as_bytes()).expect("write");
        let mut buffer = vec![0u8; line.len() + 1];
        stream.read_exact(&mut buffer).expect("read the echo");
        String::from_utf8_lossy(&buffer).trim().to_owned()
    };
    let connect = |what: &'static str| {
        tokio::task::spawn_blocking(move || {
            let stream = TcpStream::connect_timeout(&vip.into(), Duration::from_secs(5)).expect(what);
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            stream
        })
    };
    let mut stream = connect("the earlier build's DNAT answers").await.expect("connect");
    assert_eq!(roundtrip(&mut stream, "before"), "before");

    // This build starts on the same bridge.
    let upgraded = NodeNetwork::setup(lab.config(DataPath::Kernel)).await.expect("setup after the upgrade");
    assert_eq!(roundtrip(&mut stream, "after-setup"), "after-setup");
    let kept = run(&["ip", "netns", "exec", &lb, "nft", "list", "table", "ip", "orch_lb"], None);
    assert!(!kept.contains("dnat to"), "the earlier build's table DNATs nothing new: {kept}");
    let port = run(&["ip", "-d", "link", "show", &veth], None);
    assert!(port.contains("hairpin on"), "the container's port is in hairpin mode: {port}");
    upgraded.apply_services(&table).await.expect("apply after the upgrade");
    assert_eq!(roundtrip(&mut stream, "after-apply"), "after-apply");
    let mut fresh = connect("a new connection").await.expect("connect");
    assert_eq!(roundtrip(&mut fresh, "new"), "new");
    let kernel = upgraded.kernel_path().expect("a kernel path");
    kernel.refresh_metrics();
    assert_eq!(kernel.metrics().connections("echo"), 1, "the new connection was DNAT'd in the node's namespace");

    drop((stream, fresh));
    stop(echo).await;
    upgraded.detach("echo").await.expect("detach");
    upgraded.teardown(true).await.expect("teardown");
    drop(earlier);
    lab.assert_no_network_left();
}

/// A node namespace whose "uplink" is a veth into an "outside" namespace that has an
/// address of the documentation ranges (203.0.113.10, a TCP server telling each client
/// its source address) and no route back to the pod network: only the node's
/// masquerade brings answers home. Removed on drop, after a panic too.
struct Outside {
    prefix: String,
    node: String,
    outside: String,
    server: Option<std::process::Child>,
    dns: Option<std::process::Child>,
}

impl Outside {
    fn dns_pid_file(prefix: &str) -> PathBuf {
        PathBuf::from(format!("/run/orch-test-dnsmasq-{prefix}.pid"))
    }

    const NODE_UPLINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    /// The outside's DNS server (Debian's dnsmasq-base, started here): `outside.test`
    /// is [`Self::SERVER`].
    const DNS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);

    fn new(prefix: &str) -> Outside {
        let mut this = Outside { prefix: prefix.to_owned(), node: format!("{prefix}n"), outside: format!("{prefix}o"), server: None, dns: None };
        let (up, peer) = (format!("{prefix}up"), format!("{prefix}op"));
        for args in [
            vec!["netns", "add", &this.node],
            vec!["netns", "add", &this.outside],
            vec!["link", "add", &up, "netns", &this.node, "type", "veth", "peer", "name", &peer, "netns", &this.outside],
            vec!["-n", &this.node, "addr", "add", "198.51.100.1/24", "dev", &up],
            vec!["-n", &this.node, "link", "set", &up, "up"],
            vec!["-n", &this.node, "link", "set", "lo", "up"],
            vec!["-n", &this.node, "route", "add", "default", "via", "198.51.100.254"],
            vec!["-n", &this.outside, "addr", "add", "198.51.100.254/24", "dev", &peer],
            vec!["-n", &this.outside, "link", "set", &peer, "up"],
            vec!["-n", &this.outside, "addr", "add", "203.0.113.10/32", "dev", "lo"],
            vec!["-n", &this.outside, "addr", "add", "203.0.113.53/32", "dev", "lo"],
            vec!["-n", &this.outside, "link", "set", "lo", "up"],
        ] {
            TwoNodes::ip(&args);
        }
        let script = "import socket\n\
                      s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                      s.bind(('203.0.113.10', 8080)); s.listen(16); print('ready', flush=True)\n\
                      while True:\n    c, a = s.accept(); c.sendall((a[0] + '\\n').encode()); c.close()\n";
        let mut server = std::process::Command::new("ip")
            .args(["netns", "exec", &this.outside, "python3", "-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (deploy/test.sh installs it)");
        let mut ready = String::new();
        let mut stdout = std::io::BufReader::new(server.stdout.take().expect("stdout"));
        std::io::BufRead::read_line(&mut stdout, &mut ready).expect("the server's first line");
        this.server = Some(server);
        assert_eq!(ready.trim(), "ready", "the outside server did not start");
        let dns = std::process::Command::new("ip")
            .args(["netns", "exec", &this.outside, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts"])
            .args(["--bind-interfaces", "--listen-address=203.0.113.53", "--address=/outside.test/203.0.113.10", "--user=root", "--group=root"])
            .arg(format!("--pid-file={}", Self::dns_pid_file(prefix).display()))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq (deploy/test.sh installs dnsmasq-base)");
        this.dns = Some(dns);
        this
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for mut child in [self.server.take(), self.dns.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.node, &self.outside] {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).stderr(std::process::Stdio::null()).status();
        }
        let _ = std::fs::remove_file(Self::dns_pid_file(&self.prefix));
    }
}

/// Egress and outside names: a container resolves a name only the outside's DNS server
/// knows (through the node's DNS server, over UDP; and over TCP) and reaches it by name
/// and by address; the outside sees the node's uplink address (masquerade). With orch's
/// nftables table gone, the same connection gets no answer (the outside has no route to
/// pods). Teardown removes the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_reach_the_outside_through_masquerade() {
    let lab = NetLab::new("net-egress");
    let outside = Outside::new(&lab.bridge);
    let node_netns = orch_agent::net::Netns::named_path(&outside.node);
    let network = lab.network_behind(&outside, vec![std::net::SocketAddr::from((Outside::DNS, 53))], DataPath::Proxy).await;
    assert!(egress::present(&lab.bridge, Some(&node_netns)).expect("nft list"), "the egress table is there");

    let ask = format!(
        "for i in $(seq 50); do nslookup outside.test >/tmp/answer 2>&1 && break; sleep 0.1; done; grep -c 'Address.*{server}' /tmp/answer; \
         {{ echo | nc -w 2 outside.test 8080 && echo | nc -w 2 {server} 8080; }} 2>/dev/null; \
         printf '\\000\\036\\022\\064\\001\\000\\000\\001\\000\\000\\000\\000\\000\\000\\007outside\\004test\\000\\000\\001\\000\\001' 2>/dev/null \
           | nc -w 3 {dns} 53 | od -An -tx1 | tr -d ' \\n' | grep -o 'cb00710a'",
        server = Outside::SERVER,
        dns = lab.subnet.lb_address()
    );
    let client = lab.container(&network, "egress-yes", &ask).await;
    let exit = client.wait().await;
    client.remove().await.expect("remove");
    network.detach("egress-yes").await.expect("detach");
    assert_eq!(
        (exit.code, lab.log("egress-yes").lines().collect::<Vec<_>>()),
        (0, vec!["1", "198.51.100.1", "198.51.100.1", "cb00710a"]),
        "outside.test resolved to {} over UDP and TCP (its bytes in the TCP answer); reached by name and by address, seeing the node's address, not the pod's",
        Outside::SERVER
    );

    // DNS over TCP, from the node to the node's DNS server (the balancer's address),
    // relayed over TCP to the outside's.
    let over_tcp = "import socket, struct, sys\n\
                    q = b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07outside\\x04test\\x00\\x00\\x01\\x00\\x01'\n\
                    s = socket.create_connection((sys.argv[1], 53), timeout=5); s.sendall(struct.pack('!H', len(q)) + q)\n\
                    n = struct.unpack('!H', s.recv(2))[0]; r = b''\n\
                    while len(r) < n: r += s.recv(n - len(r))\n\
                    print(r.hex())\n";
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &outside.node, "python3", "-c", over_tcp, &lab.subnet.lb_address().to_string()])
        .output()
        .expect("python3");
    let reply = hex::decode(String::from_utf8_lossy(&out.stdout).trim()).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let reply = hickory_proto::op::Message::from_vec(&reply).expect("a DNS message");
    let addresses: Vec<String> = reply.answers.iter().map(|a| a.data.to_string()).collect();
    assert_eq!((reply.metadata.id, addresses), (0x1234, vec![Outside::SERVER.to_string()]), "over TCP");

    egress::remove(&lab.bridge, Some(&node_netns)).expect("remove the table");
    let once = format!("echo | nc -w 2 {} 8080; echo \"exit $?\"", Outside::SERVER);
    let client = lab.container(&network, "egress-no", &once).await;
    client.wait().await;
    client.remove().await.expect("remove");
    network.detach("egress-no").await.expect("detach");
    let output = lab.log("egress-no");
    assert!(!output.contains("198.51.100") && !output.contains("exit 0"), "without masquerade no answer comes home: {output}");

    network.apply_services(&[]).await.expect("apply");
    network.teardown(true).await.expect("teardown");
    assert!(!egress::present(&lab.bridge, Some(&node_netns)).expect("nft list"), "teardown removed the egress table");
}

/// A UDP backend on the node's bridge: a network namespace of the test's own with an
/// address from the node's IPAM, running a UDP echo (python3) on :7001 and a DNS server
/// (dnsmasq-base) on :5353 that knows `backend.test`. Removed on drop, after a panic too.
struct UdpBackend {
    netns: String,
    veth: String,
    children: Vec<std::process::Child>,
}

impl UdpBackend {
    fn new(lab: &NetLab, ip: Ipv4Addr) -> UdpBackend {
        let mut this = UdpBackend { netns: format!("{}u", lab.bridge), veth: format!("{}e", lab.bridge), children: Vec::new() };
        let (netns, veth, peer) = (this.netns.clone(), this.veth.clone(), format!("{}f", lab.bridge));
        let address = format!("{ip}/{}", lab.subnet.prefix);
        let gateway = lab.subnet.gateway().to_string();
        for args in [
            vec!["netns", "add", &netns],
            vec!["link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", &netns],
            vec!["link", "set", &veth, "master", &lab.bridge, "up"],
            vec!["-n", &netns, "addr", "add", &address, "dev", &peer],
            vec!["-n", &netns, "link", "set", &peer, "up"],
            vec!["-n", &netns, "link", "set", "lo", "up"],
            vec!["-n", &netns, "route", "add", "default", "via", &gateway],
        ] {
            TwoNodes::ip(&args);
        }
        let echo = "import socket\n\
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 7001))\n\
                    while True:\n    d, a = s.recvfrom(2048); s.sendto(b'echo:' + d, a)\n";
        this.children.push(std::process::Command::new("ip").args(["netns", "exec", &netns, "python3", "-c", echo]).spawn().expect("python3"));
        this.children.push(
            std::process::Command::new("ip")
                .args(["netns", "exec", &netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--port=5353"])
                .args(["--bind-interfaces", &format!("--listen-address={ip}"), "--address=/backend.test/192.0.2.7", "--user=root", "--group=root"])
                .arg(format!("--pid-file=/run/orch-test-dnsmasq-{netns}.pid"))
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("dnsmasq (deploy/test.sh installs dnsmasq-base)"),
        );
        this
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::process::Command::new("ip").args(["link", "del", &self.veth]).stderr(std::process::Stdio::null()).status();
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.netns]).stderr(std::process::Stdio::null()).status();
        let _ = std::fs::remove_file(format!("/run/orch-test-dnsmasq-{}.pid", self.netns));
    }
}

/// Sends `datagram` to `to` until a reply comes (the backend may still be starting);
/// bounded: 100 tries of 100 ms.
async fn udp_ask(to: SocketAddrV4, datagram: Vec<u8>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let mut buffer = vec![0u8; 2048];
        for _ in 0..100 {
            socket.send_to(&datagram, to).expect("send");
            if let Ok((length, _)) = socket.recv_from(&mut buffer) {
                return buffer[..length].to_vec();
            }
        }
        panic!("no UDP reply from {to} in 10 s");
    })
    .await
    .expect("join")
}

/// UDP services: an echo and a DNS server behind one VIP (ports 7001 and 53), the echo
/// on a node port as well; answers come back from the address the client asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_services_balance_through_the_vip_and_a_node_port() {
    let lab = NetLab::new("net-udp");
    let network = lab.network().await;
    let (backend_ip, _) = network.prepare("udp-backend", "udp-backend", &lab.sandbox.root.path().join("files/udp-backend")).expect("an address");
    let backend = UdpBackend::new(&lab, backend_ip);
    let udp = |name: &str, service_port: u16, target_port: u16, node_port: Option<u16>| PortMapping {
        name: name.into(),
        protocol: Protocol::Udp,
        service_port,
        target_port,
        node_port,
    };
    let table = vec![ServiceEndpoints {
        name: "udp".into(),
        vip: lab.vip(),
        ports: vec![udp("echo", 7001, 7001, Some(lab.node_port)), udp("dns", 53, 5353, None)],
        ready: vec![backend_ip],
    }];
    network.apply_services(&table).await.expect("apply");

    assert_eq!(udp_ask(SocketAddrV4::new(lab.vip(), 7001), b"through the VIP".to_vec()).await, b"echo:through the VIP");
    assert_eq!(udp_ask(SocketAddrV4::new(lab.subnet.gateway(), lab.node_port), b"through a node port".to_vec()).await, b"echo:through a node port");
    let mut query = hickory_proto::op::Message::query();
    query.metadata.id = 99;
    query.metadata.recursion_desired = true;
    query.add_query(hickory_proto::op::Query::query(hickory_proto::rr::Name::from_ascii("backend.test.").expect("name"), hickory_proto::rr::RecordType::A));
    let reply = udp_ask(SocketAddrV4::new(lab.vip(), 53), query.to_vec().expect("encode")).await;
    let reply = hickory_proto::op::Message::from_vec(&reply).expect("a DNS reply");
    assert_eq!(
        (reply.metadata.id, reply.answers.iter().map(|a| a.data.to_string()).collect::<Vec<_>>()),
        (99, vec!["192.0.2.7".to_owned()]),
        "the DNS server behind the VIP answered"
    );

    drop(backend);
    network.apply_services(&[]).await.expect("apply");
    network.detach("udp-backend").await.expect("release");
    network.teardown(true).await.expect("teardown");
    lab.assert_no_network_left();
}

/// Runs `work` on a thread that entered the network namespace at `path` (this thread
/// only), and returns what it returned.
fn in_netns<T: Send + 'static>(path: &std::path::Path, work: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let file = std::fs::File::open(path).expect("the namespace");
    std::thread::spawn(move || {
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the namespace (this thread only)");
        work()
    })
}

/// One timed request: when it began and ended, and what came back (a backend's name).
type Timed = (Instant, Instant, std::io::Result<String>);

/// A request after a backend's death: when it began and ended (from the death), what
/// came back, and whether it began after the table without the backend was applied.
type AfterDeath = (Duration, Duration, std::io::Result<String>, bool);

/// 150 requests to `vip` from the namespace at `netns`, 10 ms apart; after the 30th (so
/// none is in flight), `pid` is killed, and once it is dead — and `gone`, a veth of its
/// namespace, is gone too: no RST can come from it — the requests go on while, 200 ms
/// later, `table` (without the dead backend) is applied. Each request timed from the
/// death.
async fn through_a_death(
    network: &NodeNetwork,
    netns: &std::path::Path,
    vip: SocketAddrV4,
    (pid, gone): (i32, Option<String>),
    table: Vec<ServiceEndpoints>,
) -> Vec<AfterDeath> {
    let (paused_tx, paused_rx) = std::sync::mpsc::channel::<()>();
    let (resume_tx, resume_rx) = std::sync::mpsc::channel::<()>();
    let load = in_netns(netns, move || {
        (0..150)
            .map(|i| {
                if i == 30 {
                    let _ = paused_tx.send(());
                    let _ = resume_rx.recv();
                }
                let began = Instant::now();
                let outcome = http_get(vip);
                std::thread::sleep(Duration::from_millis(10));
                (began, Instant::now(), outcome)
            })
            .collect::<Vec<Timed>>()
    });
    tokio::task::spawn_blocking(move || paused_rx.recv()).await.expect("join").expect("paused");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
    common::wait_until_dead(pid);
    if let Some(veth) = gone {
        let netns = netns.to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        let exists = move || {
            std::process::Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .args(["ip", "link", "show", &veth])
                .output()
                .expect("ip link")
                .status
                .success()
        };
        while exists() {
            assert!(Instant::now() < deadline, "the dead backend's veth outlived it by 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let dead = Instant::now();
    resume_tx.send(()).expect("resume");
    tokio::time::sleep(Duration::from_millis(200)).await;
    network.apply_services(&table).await.expect("apply without the dead backend");
    let applied = Instant::now();
    let requests = load.join().expect("load");
    requests
        .into_iter()
        .filter(|(began, _, _)| *began >= dead)
        .map(|(began, ended, outcome)| (began.duration_since(dead), ended.duration_since(dead), outcome, began > applied))
        .collect()
}

/// None of `requests` (from [`through_a_death`]) failed; one met the dead backend and
/// was answered after its SYN's retransmission (1 s); none after the apply reached it.
fn assert_no_request_lost(requests: &[AfterDeath], dead: &str) {
    let lost: Vec<String> = requests
        .iter()
        .filter(|r| r.2.is_err())
        .map(|(began, ended, outcome, _)| format!("{outcome:?} (from {began:?} to {ended:?} after the death)"))
        .collect();
    assert!(lost.is_empty(), "requests lost when {dead} died while listed: {lost:?}");
    assert!(
        requests.iter().any(|(began, ended, _, _)| *ended - *began >= Duration::from_millis(900)),
        "a request met {dead} and was answered after its SYN's retransmission"
    );
    let reached: Vec<&String> = requests.iter().filter(|r| r.3).filter_map(|r| r.2.as_ref().ok()).filter(|answer| answer.as_str() == dead).collect();
    assert!(reached.is_empty(), "{dead} answered after the table left it out");
}

/// The kernel path (`--data-path kernel`): with the balancer process killed, the VIP
/// still spreads connections evenly and a node port called from outside the node
/// answers — through nftables DNAT —, the backends seeing the outside client's own
/// address; a backend that dies while listed loses no request once the table no longer
/// lists it (its RSTs are dropped and the unanswered connections to it forgotten, so
/// the clients' retransmitted SYNs go to the others). Teardown leaves no table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_path_balances_without_the_balancer_process_and_backends_see_the_client() {
    let lab = NetLab::new("net-kernel");
    let outside = Outside::new(&lab.bridge);
    let node_netns = orch_agent::net::Netns::named_path(&outside.node);
    let outside_netns = orch_agent::net::Netns::named_path(&outside.outside);
    let network = lab.network_behind(&outside, Vec::new(), DataPath::Kernel).await;
    let mut backends = Vec::new();
    let mut ips = Vec::new();
    for i in 0..3 {
        let id = format!("backend-{i}");
        // httpd -v logs each client's address and port. backend-1's namespace outlives
        // its server (a shell waits after it), so SYNs reach it and get RSTs.
        let serve = "httpd -f -v -p 80 -h /www";
        let script = if i == 1 { format!("{serve}; exec sleep 600") } else { format!("exec {serve}") };
        let script = format!("mkdir -p /www; hostname > /www/index.html; {script}");
        backends.push(lab.container(&network, &id, &script).await);
        let ip = network.view().await.expect("view").containers.iter().find(|c| c.0 == id).expect("attached").1;
        in_netns(&node_netns, move || wait_for_http(SocketAddrV4::new(ip, 80))).join().expect("backend answers");
        ips.push(ip);
    }
    network.apply_services(&web(&lab, ips.clone())).await.expect("apply");
    // An address of the service range that no VIP holds goes to the balancer namespace
    // (the node routes the whole range there), which forwards nothing: no answer.
    let nowhere = SocketAddrV4::new(lab.services.nth(99), 80);
    let outcome = in_netns(&node_netns, move || TcpStream::connect_timeout(&nowhere.into(), Duration::from_millis(500)).map(drop)).join().expect("connect");
    assert!(outcome.is_err(), "nothing answers {nowhere}");
    let lb_forwarding = std::process::Command::new("ip")
        .args(["netns", "exec", &format!("{}-lb", lab.bridge), "sysctl", "-n", "net.ipv4.ip_forward"])
        .output()
        .expect("sysctl");
    assert_eq!(String::from_utf8_lossy(&lb_forwarding.stdout).trim(), "0", "the balancer namespace forwards nothing");
    let balancers = common::balancer_pids(&lab.bridge);
    assert_eq!(balancers.len(), 1, "one balancer process: {balancers:?}");
    common::kill_balancers(&lab.bridge);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !common::balancer_pids(&lab.bridge).is_empty() {
        assert!(Instant::now() < deadline, "the balancer process outlived its kill -9");
        std::thread::sleep(Duration::from_millis(10));
    }

    // 300 requests to the VIP from the node: each backend within ±20 % of 100.
    let vip = SocketAddrV4::new(lab.vip(), 80);
    let answers = in_netns(&node_netns, move || (0..300).map(|_| http_get(vip)).collect::<Vec<_>>()).join().expect("VIP load");
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.expect("the VIP answers with no balancer process")).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|count| (80..=120).contains(count)), "even spread: {counts:?}");
    let kernel = network.kernel_path().expect("a kernel path");
    kernel.refresh_metrics();
    assert_eq!(kernel.metrics().connections("web"), 300, "the VIP's DNAT rule counted each connection once");

    // 30 requests to the VIP from a pod on the same bridge (backend-0's namespace): each
    // backend answers, itself included — the connections are masqueraded to the bridge's
    // address, so the replies come back through the node and are un-NAT'd.
    let pod_netns = std::path::PathBuf::from(format!("/proc/{}/ns/net", backends[0].host_pid()));
    let answers = in_netns(&pod_netns, move || (0..30).map(|_| http_get(vip)).collect::<Vec<_>>()).join().expect("VIP load from a pod");
    let answered: std::collections::BTreeSet<String> = answers.into_iter().map(|a| a.expect("the VIP answers a pod on the bridge")).collect();
    assert_eq!(answered.len(), 3, "{answered:?}");

    // A node port, called from outside the node: answered by every backend, each of
    // which saw the outside's own address.
    let node_port = SocketAddrV4::new(Outside::NODE_UPLINK, lab.node_port);
    let answers = in_netns(&outside_netns, move || (0..30).map(|_| http_get(node_port)).collect::<Vec<_>>()).join().expect("node port load");
    let answered: std::collections::BTreeSet<String> = answers.into_iter().map(|a| a.expect("the node port answers from outside")).collect();
    assert_eq!(answered.len(), 3, "{answered:?}");
    for i in 0..3 {
        // (The log reaches its file a moment after the answer.)
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut log = lab.log(&format!("backend-{i}"));
        while !log.contains("ffff:198.51.100.254]") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            log = lab.log(&format!("backend-{i}"));
        }
        assert!(log.contains("ffff:198.51.100.254]"), "backend-{i} saw the client's own address (198.51.100.254):\n{log}");
    }

    // Between two requests (so none is in flight), backend-1's server is killed while
    // listed; 200 ms later (the controller's endpoints, in an agent) the table leaves it
    // out. The requests meanwhile reach its namespace, which answers RST: none is lost.
    let victim = backends.remove(1);
    let server = victim.host_pid();
    let children = std::fs::read_to_string(format!("/proc/{server}/task/{server}/children")).expect("backend-1's children");
    let httpd: i32 = children.trim().parse().expect("one child: httpd");
    let requests = through_a_death(&network, &node_netns, vip, (httpd, None), web(&lab, vec![ips[0], ips[2]])).await;
    assert_no_request_lost(&requests, "backend-1");
    stop(victim).await;

    // Then backend-2 dies whole (its namespace with it): the requests meanwhile get no
    // answer at all; once the table leaves it out, their retransmitted SYNs go to
    // backend-0 (the unanswered conntrack entries to backend-2 were deleted).
    let victim = backends.remove(1);
    let veth = orch_agent::net::names::container_veth(&lab.bridge, "backend-2");
    let requests = through_a_death(&network, &node_netns, vip, (victim.host_pid(), Some(veth)), web(&lab, vec![ips[0]])).await;
    assert_no_request_lost(&requests, "backend-2");
    stop(victim).await;
    kernel.refresh_metrics();
    assert!(kernel.metrics().connections("web") >= 660, "300 + 30 + 30 + 2 × 150 connections counted, across table changes");

    for backend in backends {
        stop(backend).await;
    }
    for i in 0..3 {
        network.detach(&format!("backend-{i}")).await.expect("detach");
    }
    network.teardown(true).await.expect("teardown");
    let tables = std::process::Command::new("ip").args(["netns", "exec", &outside.node, "nft", "list", "tables"]).output().expect("nft list tables");
    assert_eq!(String::from_utf8_lossy(&tables.stdout).trim(), "", "no table left in the node's namespace");
    lab.assert_no_network_left();
}
