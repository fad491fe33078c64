//! End to end on a 3-node lab (`deploy/lab.sh`: each node a network namespace with its
//! own agent process, a real etcd, a controller), as root, through the `orch` CLI the
//! way a user drives it: apply → spread and ready; 300 requests over the node ports are
//! answered by every replica; `kill -9` of a replica loses no request; a killed node's
//! replicas run elsewhere; a partitioned node that heals leaves no duplicates and gets a
//! replica back by rebalancing, with no request lost; a controller restart restarts
//! nothing; recovery targets, incidents and `orch why`; `orch chaos` kills while `orch
//! verify` loses nothing, and node outages that end by themselves; delete leaves nothing
//! on any node.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::lab::{all_running, http_get, identities, load, wait_until_dead, Lab};
use common::{text, LIMIT, ROOT};

/// During a kill: a request is lost when it gets no answer at all. A response whose
/// status line already came from the replica being killed and whose body the kill cut
/// off was in flight on that process — no balancer can take those bytes back — so it
/// counts as answered (the status line proves the balancer routed it to a live process).
fn answered_during_kill(address: SocketAddr) -> Result<(), String> {
    match http_get(address) {
        Ok(_) => Ok(()),
        Err(error) if error.to_string().contains("HTTP/1.1 200 OK") => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// One request of a load stream: when it ran and how it went.
struct TimedRequest {
    what: String,
    began: Instant,
    ended: Instant,
    outcome: Result<(), String>,
}

impl TimedRequest {
    fn describe(&self) -> String {
        format!("{}: {}", self.what, self.outcome.as_ref().err().map_or("answered", String::as_str))
    }
}

/// 400 requests, 5 ms apart, to `address(i)`, each timed.
fn timed_requests(stream: &str, address: impl Fn(usize) -> SocketAddr) -> Vec<TimedRequest> {
    (0..400)
        .map(|i| {
            let began = Instant::now();
            let outcome = answered_during_kill(address(i));
            let request = TimedRequest { what: format!("{stream} request {i}"), began, ended: Instant::now(), outcome };
            std::thread::sleep(Duration::from_millis(5));
            request
        })
        .collect()
}

/// Runs `orch ARGS` until its output satisfies `done`; returns that output.
fn wait_for_output(lab: &Lab, args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let out = lab.ok(args);
        if done(&out) {
            return out;
        }
        assert!(start.elapsed() < LIMIT, "`orch {}` never showed what was awaited:\n{out}\n{}", args.join(" "), lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_nodes_end_to_end() {
    let lab = Lab::up(3);
    // The repository's manifest as it is: it names 127.0.0.1:5000, which each node's
    // registry config maps to the lab's registry (lab.sh pushed the demo image there).
    let manifest = std::path::PathBuf::from(format!("{ROOT}/manifests/webapp.yaml"));

    // Apply → spread over the three nodes, ready.
    lab.ok(&["apply", "-f", manifest.to_str().expect("path"), "--wait", "--timeout", "120"]);
    let replicas = lab.wait("3 ready replicas", all_running(3));
    let nodes: BTreeSet<&str> = replicas.iter().filter_map(|r| r["node"].as_str()).collect();
    assert_eq!(nodes.len(), 3, "one replica per node: {replicas:#?}");

    // 300 requests over every node's node port: every replica answers.
    let answered = load(&lab, &[1, 2, 3], 300, "steady state");
    assert_eq!(answered.len(), 3, "every replica answers: {answered:?}");

    // A target no restart can meet (1 ms), so the kill below is a warning. Targets are
    // not the template: applying them restarts nothing.
    let strict = lab.dir.path().join("webapp-strict.yaml");
    let text_of = std::fs::read_to_string(&manifest).expect("read the manifest");
    assert!(text_of.contains("restartWithinMillis: 3000"), "the manifest sets a restart target");
    std::fs::write(&strict, text_of.replace("restartWithinMillis: 3000", "restartWithinMillis: 1")).expect("write");
    let before_targets = identities(&lab.replicas(), None);
    lab.ok(&["apply", "-f", strict.to_str().expect("path")]);
    assert_eq!(identities(&lab.replicas(), None), before_targets, "a new target restarts nothing");

    // kill -9 a replica while requests flow through the node ports and, from inside
    // node1 (a thread that entered its network namespace), through the VIP: replaced,
    // and no request lost. A request a stream has on the killed process while it dies
    // (from the kill until the container's init is a zombie: its namespace's processes,
    // and so their sockets, are gone) dies with it — no L4 balancer can answer it —;
    // every request that began after that is answered.
    let victim = replicas[0].clone();
    let pid = victim["hostPid"].as_i64().expect("pid");
    let services: serde_json::Value = serde_json::from_str(&lab.ok(&["get", "services", "-o", "json"])).expect("json");
    let vip: std::net::Ipv4Addr = services[0]["vip"].as_str().expect("vip").parse().expect("vip address");
    let flow = {
        let lab_addresses: Vec<SocketAddr> = (1..=3).map(|k| lab.node_address(k)).collect();
        std::thread::spawn(move || timed_requests("node port", |i| lab_addresses[i % 3]))
    };
    let through_vip = {
        let netns = format!("/run/netns/{}-n1", lab.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&netns).expect("node1's namespace");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter node1's network namespace (this thread only)");
            timed_requests("VIP", |_| SocketAddr::from((vip, 80)))
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let killing = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let dead = wait_until_dead(i32::try_from(pid).expect("pid"));
    let name = victim["name"].as_str().expect("name").to_owned();
    lab.wait("the killed replica back", |r| all_running(3)(r) && r.iter().any(|x| x["name"] == name.as_str() && x["restarts"] == 1));
    let mut requests = flow.join().expect("load thread");
    requests.extend(through_vip.join().expect("VIP load thread"));
    let in_flight_at_the_kill = |r: &TimedRequest| r.began <= dead && r.ended >= killing;
    let lost: Vec<String> = requests.iter().filter(|r| r.outcome.is_err() && !in_flight_at_the_kill(r)).map(TimedRequest::describe).collect();
    assert!(lost.is_empty(), "requests lost while a replica was replaced: {lost:?}\n{}", lab.logs());
    let answered = requests.iter().filter(|r| r.outcome.is_ok()).count();
    assert!(answered >= requests.len() - 2, "at most one request per stream dies with the killed process: {answered} of {}", requests.len());
    // The restart is an incident: measured by the node, judged against the target by
    // the controller, a warning event, and a row of `describe service`.
    let described = wait_for_output(&lab, &["describe", "service", "webapp"], |text| {
        text.lines().any(|l| l.contains("restart") && l.contains(&name) && l.contains("1 ms") && l.ends_with("MISSED"))
    });
    assert!(described.contains("Recovery:    restart within 1 ms, reschedule within 30 s"), "{described}");
    let events = lab.ok(&["get", "events"]);
    assert!(events.lines().any(|l| l.contains("RecoveryTargetMissed") && l.contains(&format!("replica/{name}"))), "{events}");
    // `orch why` tells the replica's story: where the scheduler put it and why, the kill
    // and the restart, and the black box of that exit.
    let story = lab.ok(&["why", &name]);
    let node = victim["node"].as_str().expect("node");
    assert!(story.lines().any(|l| l.contains("scheduled") && l.contains(&format!("assigned to node {node}: ")) && l.contains("replicas of webapp")), "{story}");
    assert!(story.lines().any(|l| l.contains("restarted") && l.contains("killed by SIGKILL (exit code 137)")), "{story}");
    assert!(story.lines().any(|l| l.contains("recovered late")), "{story}");
    assert!(story.contains(&format!("last exit of {name}: code 137 (signal 9)")), "{story}");

    // A controller restart restarts nothing.
    let before = identities(&lab.replicas(), None);
    lab.script_ok(&["restart-controller"]);
    // "Nothing restarts" is an absence: watch for the whole window in which the new
    // leader could act on stale liveness — its warm-up, the lab's node lease (2 s) plus
    // grace (1 s) — and check at the end.
    std::thread::sleep(Duration::from_secs(4));
    let after = identities(&lab.wait("3 ready after the controller restart", all_running(3)), None);
    assert_eq!(after, before, "same replicas, same host PIDs, no restarts");

    // A service with a local volume, one replica per node: when node3 dies, its slot's
    // replica starts empty elsewhere and an event says where the data stayed.
    let keeper = lab.dir.path().join("keeper.yaml");
    std::fs::write(
        &keeper,
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: keeper}\nspec:\n  replicas: 3\n  image: 127.0.0.1:5000/orch/demo-web:1.0\n  \
         volumes: [{name: data, local: {}}]\n  volumeMounts: [{name: data, mountPath: /data}]\n",
    )
    .expect("write");
    lab.ok(&["apply", "-f", keeper.to_str().expect("path"), "--wait", "--timeout", "120"]);
    let keepers = |lab: &Lab| -> Vec<serde_json::Value> {
        let out = lab.orch(&["get", "replicas", "keeper", "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    let spread: BTreeSet<String> = keepers(&lab).iter().filter_map(|r| r["node"].as_str().map(str::to_owned)).collect();
    assert_eq!(spread.len(), 3, "one keeper per node: {spread:?}");

    // kill-node: its replica runs elsewhere, the service keeps answering.
    let on_three: Vec<String> = lab.replicas().iter().filter(|r| r["node"] == "node3").filter_map(|r| r["name"].as_str().map(str::to_owned)).collect();
    lab.script_ok(&["kill-node", "3"]);
    let start = Instant::now();
    loop {
        let now = keepers(&lab);
        let moved = now.len() == 3 && now.iter().all(|r| r["node"] != "node3" && r["phase"] == "Running");
        let events = lab.ok(&["get", "events"]);
        if moved && events.lines().any(|l| l.contains("DataLeftBehind") && l.contains("stayed on node node3")) {
            break;
        }
        assert!(start.elapsed() < LIMIT, "node3's keeper slot did not move with a DataLeftBehind event: {now:#?}\n{events}");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.ok(&["delete", "service", "keeper", "--purge-volumes"]);
    let moved = lab.wait("node3's replica to run elsewhere", |r| all_running(3)(r) && r.iter().all(|x| x["node"] != "node3"));
    assert!(moved.iter().all(|r| !on_three.contains(&r["name"].as_str().unwrap_or("").to_owned())), "replaced by new replicas");
    // A replica gone with its node: `orch why` still tells where it was and why it moved.
    let gone = on_three.iter().find(|n| n.starts_with("webapp-")).expect("a webapp replica was on node3");
    let story = lab.ok(&["why", gone]);
    assert!(story.starts_with(&format!("replica {gone}: gone")), "{story}");
    assert!(story.lines().any(|l| l.contains("moved") && l.contains("node node3 is lost")), "{story}");
    assert!(story.lines().any(|l| l.contains("node not ready") && l.contains("node node3: ")), "{story}");
    let service_story = lab.ok(&["why", "webapp"]);
    assert!(service_story.lines().any(|l| l.contains("rollout") && l.contains("revision 1: apply")), "{service_story}");
    assert!(service_story.lines().any(|l| l.contains(gone.as_str()) && l.contains("moved")), "{service_story}");
    // The leader measured the loss, from node3 NotReady to 3 replicas ready again.
    wait_for_output(&lab, &["describe", "service", "webapp"], |text| {
        text.lines().any(|l| l.contains("reschedule") && l.contains("node3") && l.contains("30.0 s") && l.contains("node node3 lost"))
    });
    let answered = load(&lab, &[1, 2], 60, "after node3 died");
    assert_eq!(answered.len(), 3, "{answered:?}");

    // Partition node2, then heal: its replica moves, comes back stale, and is stopped.
    lab.script_ok(&["partition", "2"]);
    lab.wait("node2's replica to move to node1", |r| all_running(3)(r) && r.iter().all(|x| x["node"] == "node1"));
    lab.script_ok(&["heal", "2"]);
    let start = Instant::now();
    loop {
        let nodes = lab.ok(&["get", "nodes"]);
        if nodes.lines().any(|l| l.starts_with("node2 ") && l.contains(" Ready ")) {
            break;
        }
        assert!(start.elapsed() < LIMIT, "node2 did not come back: {nodes}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let node2_records = lab.dir.path().join("lab/node2/replicas");
    let start = Instant::now();
    while std::fs::read_dir(&node2_records).map(|d| d.count()).unwrap_or(0) > 0 {
        assert!(start.elapsed() < LIMIT, "node2 kept its stale replica\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let healed = lab.wait("3 replicas, no duplicates", all_running(3));
    assert_eq!(healed.len(), 3);

    // Rebalance after the heal: node1 runs all three; node2, Ready again for the lab's
    // cool-down (3 s), gets one back — its replacement ready before the replica on node1
    // stops — while requests flow through both nodes' ports: none is lost.
    let before_move: Vec<(String, i64)> = healed.iter().map(|r| (r["name"].as_str().unwrap_or("").to_owned(), r["hostPid"].as_i64().unwrap_or(0))).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flow = {
        let addresses: Vec<SocketAddr> = (1..=2).map(|k| lab.node_address(k)).collect();
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut results = Vec::new();
            for i in 0..6000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                results.push(http_get(addresses[i % 2]).map(|_| ()).map_err(|e| format!("request {i}: {e}")));
                std::thread::sleep(Duration::from_millis(5));
            }
            results
        })
    };
    let rebalanced = lab.wait("a replica moved back to node2", |r| all_running(3)(r) && r.iter().filter(|x| x["node"] == "node2").count() == 1);
    let (moved, pid) = before_move.iter().find(|(name, _)| !rebalanced.iter().any(|r| r["name"] == name.as_str())).cloned().expect("one replica was replaced");
    wait_until_dead(i32::try_from(pid).expect("pid"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = flow.join().expect("load thread");
    let lost: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(lost.is_empty(), "requests lost while {moved} moved to node2 ({} sent): {lost:?}\n{}", results.len(), lab.logs());
    let story = lab.ok(&["why", &moved]);
    assert!(story.lines().any(|l| l.contains("rebalancing") && l.contains("moving to node node2")), "{story}");
    assert!(story.lines().any(|l| l.contains("stopping") && l.contains("to rebalance")), "{story}");
    drop(rebalanced);

    // Chaos with proof: `orch verify` sends requests through webapp's VIP (from its helper
    // replica) and node ports while `orch chaos` kills replicas, each only while another
    // is ready: nothing is lost; the kills are incidents with their recovery times.
    let verifying = {
        let config = lab.config();
        std::thread::spawn(move || {
            Command::new(common::ORCH)
                .args(["verify", "webapp", "--duration", "8", "--rate", "10", "-o", "json"])
                .env("ORCH_CONFIG", config)
                .env_remove("ORCH_SERVER")
                .output()
                .expect("run orch verify")
        })
    };
    lab.wait("orch verify's helper running", |r| {
        r.iter().any(|x| x["service"].as_str().is_some_and(|s| s.starts_with("orch-verify-")) && x["phase"] == "Running")
    });
    let chaos = lab.ok(&["chaos", "--kill-replicas", "20/min", "--duration", "6", "--seed", "7", "--service", "webapp"]);
    assert!(chaos.contains("orch chaos: 2 faults injected, 0 skipped"), "{chaos}");
    let verified = verifying.join().expect("verify thread");
    let report: serde_json::Value =
        serde_json::from_slice(&verified.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&verified.stdout), text(&verified.stderr)));
    assert!(verified.status.success(), "{report:#}\n{}\n{}", text(&verified.stderr), lab.logs());
    let webapp = &report["services"][0];
    assert_eq!(webapp["lost"], 0, "{report:#}");
    for path in ["vip", "nodePort"] {
        assert!(webapp["paths"][path]["sent"].as_u64().unwrap_or(0) >= 30, "{path}: {report:#}");
    }
    assert!(webapp["cut"].as_u64().unwrap_or(9) <= 4, "at most one request per path dies with each killed process: {report:#}");
    let incidents = webapp["incidents"].as_array().expect("incidents");
    let injected: Vec<&serde_json::Value> = incidents.iter().filter(|i| i["kind"] == "restart" && i["injected"] == true).collect();
    assert_eq!(injected.len(), 2, "both kills are incidents: {report:#}");
    assert!(injected.iter().all(|i| i["recoveredMs"].as_u64().unwrap_or(0) > 0 && i["fault"].as_str().unwrap_or("").contains("SIGKILL")), "{report:#}");
    lab.wait("no helper left, webapp whole", |r| all_running(3)(r) && r.iter().all(|x| x["service"] == "webapp"));

    // Node outages through the agents (the lab starts them with --allow-chaos): each
    // node taken is found lost by the controller and comes back by itself.
    let outages = lab.ok(&["chaos", "--kill-node", "--partition", "--duration", "12", "--outage", "5", "--seed", "3"]);
    assert!(outages.contains("orch chaos: 2 faults injected, 0 skipped"), "{outages}");
    assert!(outages.lines().any(|l| l.contains("down for 5 s") && l.contains("killed with SIGKILL")), "{outages}");
    assert!(outages.lines().any(|l| l.contains("partitioned for 5 s")), "{outages}");
    let events: Vec<serde_json::Value> = serde_json::from_str(&lab.ok(&["get", "events", "-o", "json"])).expect("events json");
    let taken: Vec<(String, i64)> = events
        .iter()
        .filter(|e| e["kind"] == "Chaos" && e["object"].as_str().is_some_and(|o| o.starts_with("node/")))
        .map(|e| (e["object"].as_str().unwrap_or("").to_owned(), e["timeUnixMs"].as_i64().unwrap_or(0)))
        .collect();
    assert_eq!(taken.len(), 2, "{events:#?}");
    for (node, at) in &taken {
        assert!(
            events.iter().any(|e| e["kind"] == "NodeNotReady" && e["object"] == node.as_str() && e["timeUnixMs"].as_i64().unwrap_or(0) >= *at),
            "{node} was never found lost after {at}: {events:#?}"
        );
    }
    let start = Instant::now();
    loop {
        let nodes = lab.ok(&["get", "nodes"]);
        if ["node1 ", "node2 "].iter().all(|n| nodes.lines().any(|l| l.starts_with(n) && l.contains(" Ready "))) {
            break;
        }
        assert!(start.elapsed() < LIMIT, "nodes not back after their outages: {nodes}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let healed = lab.wait("webapp whole after the outages", all_running(3));

    // The controller reaches the agents' node API over mutual TLS (only its certificate
    // is admitted there): logs, exec, top, topology.
    let one = healed[0]["name"].as_str().expect("name").to_owned();
    assert!(lab.ok(&["logs", &one, "--tail", "1"]).lines().count() <= 1);
    assert_eq!(lab.ok(&["exec", &one, "--", "hostname"]).trim(), one);
    assert!(lab.ok(&["top", "replicas"]).contains(&one));
    assert!(lab.ok(&["topology"]).contains(&one));

    // Delete: nothing left on any live node.
    lab.ok(&["delete", "service", "webapp"]);
    lab.wait("no replicas", |r| r.is_empty());
    for k in [1u32, 2] {
        let start = Instant::now();
        let state = lab.dir.path().join(format!("lab/node{k}"));
        loop {
            let containers = std::fs::read_dir(state.join("containers")).map(|d| d.count()).unwrap_or(0);
            let records = std::fs::read_dir(state.join("replicas")).map(|d| d.count()).unwrap_or(0);
            if containers == 0 && records == 0 {
                break;
            }
            assert!(start.elapsed() < LIMIT, "node{k} keeps {containers} containers, {records} records");
            std::thread::sleep(Duration::from_millis(100));
        }
        let ns = format!("{}-n{k}", lab.name);
        let links = text(&Command::new("ip").args(["-n", &ns, "-o", "link", "show"]).output().expect("ip").stdout);
        let veths: Vec<&str> = links.lines().filter(|l| l.split(": ").nth(1).is_some_and(|n| n.starts_with('v'))).collect();
        assert!(veths.is_empty(), "container veths left on node{k}: {veths:?}");
        let ipam = std::fs::read_to_string(state.join(format!("network/{}b{k}.json", lab.name))).unwrap_or_default();
        assert!(!ipam.contains("webapp"), "addresses left on node{k}: {ipam}");
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").expect("cgroupfs").flatten() {
            let parent = hierarchy.path().join(format!("{}-node{k}", lab.name));
            let children = std::fs::read_dir(&parent).map(|d| d.flatten().filter(|e| e.path().is_dir()).count()).unwrap_or(0);
            assert_eq!(children, 0, "cgroups left under {}", parent.display());
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&lab.dir.path().display().to_string()), "mounts left");

    // And the lab itself goes without a trace.
    let down = lab.script(&["down"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    let links = text(&Command::new("ip").args(["-o", "link", "show"]).output().expect("ip").stdout);
    assert!(!links.contains(&format!("{}br", lab.name)) && !links.contains(&format!("{}v1", lab.name)), "{links}");
    let namespaces = text(&Command::new("ip").args(["netns", "list"]).output().expect("ip").stdout);
    assert!(!namespaces.contains(&lab.name), "{namespaces}");
    assert!(!lab.config().exists(), "the CLI config the lab wrote is removed");
}
