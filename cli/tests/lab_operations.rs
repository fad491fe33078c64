//! Operating the 3-node lab (`deploy/lab.sh`), as root, through the CLI: cordon (the
//! node keeps its replicas and takes no new one; `get nodes` says
//! SchedulingDisabled), drain (every replica moves, replacements ready first, no
//! request lost through the VIP), a drain with nowhere to go (times out, nothing
//! stopped), uncordon, and `delete node` (refused while Ready; a dead node's replicas
//! run elsewhere and it leaves the listing).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::lab::{all_running, http_get, Lab};
use common::{text, LIMIT, ROOT};

/// `get nodes`' STATUS of `node`.
fn node_status(lab: &Lab, node: &str) -> String {
    let listing = lab.ok(&["get", "nodes"]);
    let line = listing.lines().find(|l| l.split_whitespace().next() == Some(node)).unwrap_or_else(|| panic!("{node} not listed:\n{listing}"));
    line.split_whitespace().nth(1).unwrap_or_default().to_owned()
}

fn on_node<'a>(replicas: &'a [serde_json::Value], node: &str) -> Vec<&'a str> {
    replicas.iter().filter(|r| r["node"] == node).filter_map(|r| r["name"].as_str()).collect()
}

/// Requests to the VIP, from a thread inside node `k`'s network namespace, until
/// stopped: (answered, failures).
fn vip_load(lab: &Lab, k: u32, vip: std::net::Ipv4Addr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    let netns = format!("/run/netns/{}-n{k}", lab.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).expect("the node's namespace");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter the node's network namespace (this thread only)");
        let (mut answered, mut failures) = (0, Vec::new());
        // Bounded: at most 20,000 requests (the drain takes seconds).
        for i in 0..20_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match http_get(SocketAddr::from((vip, 80))) {
                Ok(_) => answered += 1,
                Err(error) => failures.push(format!("request {i}: {error}")),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (answered, failures)
    })
}

#[test]
fn cordon_drain_uncordon_and_delete_nodes() {
    let lab = Lab::up(3);
    lab.ok(&["apply", "-f", &format!("{ROOT}/manifests/webapp.yaml"), "--wait", "--timeout", "120"]);
    let before = lab.wait("3 ready replicas", all_running(3));
    assert_eq!(node_status(&lab, "node1"), "Ready");

    // A real Prometheus scrapes the controller and every agent over TLS, on their lab
    // addresses, with a certificate the cluster's CA signed: every target is up.
    prometheus_sees_every_target(&lab, 3);

    // Cordon: node1 keeps its replica and takes no new one.
    let kept = on_node(&before, "node1").iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(kept.len(), 1, "{before:#?}");
    lab.ok(&["cordon", "node1"]);
    assert_eq!(node_status(&lab, "node1"), "Ready,SchedulingDisabled");
    lab.ok(&["scale", "service", "webapp", "--replicas", "5"]);
    let scaled = lab.wait("5 ready replicas", all_running(5));
    assert_eq!(on_node(&scaled, "node1"), kept.iter().map(String::as_str).collect::<Vec<_>>(), "the new replicas went elsewhere: {scaled:#?}");

    // Drain node1 while requests flow through the VIP from node2: none is lost.
    let services: serde_json::Value = serde_json::from_str(&lab.ok(&["get", "services", "-o", "json"])).expect("json");
    let vip: std::net::Ipv4Addr = services[0]["vip"].as_str().expect("vip").parse().expect("vip address");
    let stop = Arc::new(AtomicBool::new(false));
    let load = vip_load(&lab, 2, vip, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(300));
    let drained = lab.ok(&["drain", "node1", "--timeout", "120"]);
    assert!(drained.contains("node/node1 drained"), "{drained}");
    let after = lab.wait("5 ready replicas, none on node1", |r| all_running(5)(r) && on_node(r, "node1").is_empty());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (answered, failures) = load.join().expect("load thread");
    assert!(failures.is_empty(), "requests lost through the VIP during the drain ({answered} answered): {failures:?}\n{}", lab.logs());
    assert!(answered > 50, "{answered} requests answered");
    assert!(after.iter().all(|r| r["name"] != kept[0].as_str()), "the drained replica was replaced");
    assert_eq!(node_status(&lab, "node1"), "Ready,SchedulingDisabled", "a drained node stays cordoned");
    let events = lab.ok(&["get", "events"]);
    assert!(events.lines().any(|l| l.contains("Killing") && l.contains("node node1 is being drained")), "{events}");

    // Nowhere to go (node3 cordoned too): the drain times out, stops nothing, says so.
    lab.ok(&["cordon", "node3"]);
    let on_two = on_node(&after, "node2").len();
    let started = Instant::now();
    let out = lab.orch(&["drain", "node2", "--timeout", "2"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a drain with nowhere to go must fail: {}", text(&out.stdout));
    assert!(stderr.contains("timed out after 2s draining node node2") && stderr.contains("orch uncordon node2"), "{stderr}");
    assert!(started.elapsed() < LIMIT);
    assert_eq!(node_status(&lab, "node2"), "Ready,SchedulingDisabled,Draining");
    let stuck = lab.replicas();
    assert_eq!(on_node(&stuck, "node2").len(), on_two, "maxUnavailable 0: no replica stopped before its replacement is ready: {stuck:#?}");
    for node in ["node1", "node2", "node3"] {
        lab.ok(&["uncordon", node]);
        assert_eq!(node_status(&lab, node), "Ready");
    }
    lab.wait("5 ready replicas after the uncordon", all_running(5));

    // Delete a node: refused while Ready; once it is dead, its replicas run elsewhere
    // and it leaves the listing.
    let out = lab.orch(&["delete", "node", "node3"]);
    assert!(!out.status.success() && text(&out.stderr).contains("is Ready"), "{}", text(&out.stderr));
    let out = lab.orch(&["delete", "node", "node9"]);
    assert!(!out.status.success() && text(&out.stderr).contains("\"node9\" is not registered"), "{}", text(&out.stderr));
    assert!(lab.script(&["kill-node", "3"]).status.success());
    let start = Instant::now();
    while node_status(&lab, "node3") != "NotReady" {
        assert!(start.elapsed() < LIMIT, "node3 did not turn NotReady");
        std::thread::sleep(Duration::from_millis(200));
    }
    let deleted = lab.ok(&["delete", "node", "node3"]);
    assert!(deleted.contains("node/node3 deleted"), "{deleted}");
    let nodes = lab.ok(&["get", "nodes"]);
    assert!(!nodes.lines().any(|l| l.starts_with("node3 ")), "{nodes}");
    lab.wait("5 ready replicas on node1 and node2", |r| all_running(5)(r) && r.iter().all(|x| x["node"] == "node1" || x["node"] == "node2"));
}

/// A Prometheus process (Debian's), killed with the value.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Prometheus on loopback with the lab's controller and `nodes` agents as its
/// targets (https, the CLI's certificate as the client's), and waits until its targets
/// API says every one is up and a query sums every agent's session.
fn prometheus_sees_every_target(lab: &Lab, nodes: u32) {
    let pki = lab.dir.path().join("lab/pki");
    let net = lab.net;
    let agents: Vec<String> = (1..=nodes).map(|k| format!("\"10.250.{net}.{}:7103\"", 10 + k)).collect();
    let tls =
        format!("{{ca_file: {}, cert_file: {}, key_file: {}}}", pki.join("ca.pem").display(), pki.join("admin.pem").display(), pki.join("admin.key").display());
    let config = format!(
        "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n\
         - {{job_name: orch-controller, scheme: https, tls_config: {tls}, static_configs: [{{targets: [\"10.250.{net}.1:7102\"]}}]}}\n\
         - {{job_name: orch-agent, scheme: https, tls_config: {tls}, static_configs: [{{targets: [{}]}}]}}\n",
        agents.join(", ")
    );
    let dir = lab.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus config");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("address").port();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("prometheus (Debian's prometheus package; deploy/test.sh installs it)");
    let _prometheus = Prometheus(child);
    let api = format!("127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        let targets: serde_json::Value =
            common::http_get_status(&api, "/api/v1/targets").ok().and_then(|(_, body)| serde_json::from_str(&body).ok()).unwrap_or_default();
        let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        let up = active.iter().filter(|t| t["health"] == "up").count();
        let sessions: serde_json::Value = common::http_get_status(&api, "/api/v1/query?query=sum(orch_agent_session_up)")
            .ok()
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or_default();
        let sum = sessions["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
        if active.len() == 1 + nodes as usize && up == active.len() && sum == Some(f64::from(nodes)) {
            return;
        }
        assert!(
            start.elapsed() < LIMIT,
            "Prometheus did not see every target up: {up} of {} up, sum(orch_agent_session_up) = {sum:?}: {active:#?}\n{}",
            active.len(),
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
