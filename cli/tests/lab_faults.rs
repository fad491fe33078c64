//! Faults on the 3-node lab (`deploy/lab.sh`), as root, one after the other on one
//! cluster: the store (etcd) stopped for 30 s → the node ports keep answering, no
//! container restarts, controller and agents reconnect and a later apply converges;
//! the controller killed (`kill -9`) mid-rollout and restarted on its address → the
//! rollout finishes with no duplicate; an agent killed during an image pull over a slow
//! link → the pull completes once it is back and no download is left in its `tmp/`;
//! 100 `kill -9` of replicas → 100 healed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::lab::{all_running, identities, load, Lab};
use common::{text, LIMIT, ROOT};

/// The service the faults are made around: the demo image, quick restarts; with
/// `slow_ready`, a replica is ready 3 s after it starts (a rollout of 4 then takes at
/// least 12 s: time to kill the controller in the middle of it).
fn service(replicas: u32, greeting: &str, slow_ready: bool) -> String {
    let probe = if slow_ready { "  probes: {readiness: {httpGet: {path: /, port: 80}, initialDelaySeconds: 3, periodSeconds: 1}}\n" } else { "" };
    format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: faults}}\nspec:\n  replicas: {replicas}\n  image: 127.0.0.1:5000/orch/demo-web:1.0\n  \
         env: [{{name: GREETING, value: {greeting}}}]\n  restartBackoff: {{initialMillis: 50, maxSeconds: 1}}\n  \
         ports: [{{name: http, containerPort: 80, servicePort: 80, nodePort: 30080}}]\n  update: {{maxSurge: 1, maxUnavailable: 0}}\n{probe}"
    )
}

fn apply(lab: &Lab, file: &str, manifest: &str, wait: bool) {
    let path = lab.dir.path().join(file);
    std::fs::write(&path, manifest).expect("write manifest");
    let path = path.to_str().expect("path");
    if wait {
        lab.ok(&["apply", "-f", path, "--wait", "--timeout", "120"]);
    } else {
        lab.ok(&["apply", "-f", path]);
    }
}

/// The names of the replicas of `service`.
fn names(replicas: &[serde_json::Value], service: &str) -> BTreeSet<String> {
    replicas.iter().filter(|r| r["service"] == service).filter_map(|r| r["name"].as_str().map(str::to_owned)).collect()
}

/// The replicas the agents of nodes 1..=`nodes` hold records of (their names).
fn node_replicas(lab: &Lab, nodes: u32) -> BTreeSet<String> {
    (1..=nodes)
        .flat_map(|k| std::fs::read_dir(lab.dir.path().join(format!("lab/node{k}/replicas"))).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default())
        .filter_map(|entry| entry.file_name().to_str().and_then(|name| name.strip_suffix(".pb")).map(str::to_owned))
        .collect()
}

fn of_service(service: &'static str, count: usize) -> impl Fn(&[serde_json::Value]) -> bool {
    move |replicas| {
        let mine: Vec<serde_json::Value> = replicas.iter().filter(|r| r["service"] == service).cloned().collect();
        all_running(count)(&mine)
    }
}

/// `count` replicas of `service`, all in phase Running (ready or not yet).
fn started(service: &'static str, count: usize) -> impl Fn(&[serde_json::Value]) -> bool {
    move |replicas| {
        let mine: Vec<&serde_json::Value> = replicas.iter().filter(|r| r["service"] == service).collect();
        mine.len() == count && mine.iter().all(|r| r["phase"] == "Running" && r["hostPid"].as_i64().is_some_and(|p| p > 1))
    }
}

/// Regular files under `dir` (any depth) and their sizes.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => stack.push(entry.path()),
                Ok(_) => found.push((entry.path(), entry.metadata().map_or(0, |m| m.len()))),
                Err(_) => {}
            }
        }
    }
    found
}

fn image_scratch(lab: &Lab, k: u32) -> PathBuf {
    lab.dir.path().join(format!("lab/node{k}/images/tmp"))
}

#[test]
fn the_lab_survives_a_store_outage_a_killed_controller_a_killed_agent_and_a_hundred_kills() {
    let lab = Lab::up(3);
    apply(&lab, "faults.yaml", &service(3, "one", false), true);
    let steady = lab.wait("3 running replicas", of_service("faults", 3));

    // --- etcd stopped for 30 s.
    let before = identities(&steady, Some("faults"));
    lab.script_ok(&["stop-etcd"]);
    let outage = Instant::now();
    let mut served = 0;
    while outage.elapsed() < Duration::from_secs(30) {
        // The data plane does not need the store: every node port answers throughout.
        served += load(&lab, &[1, 2, 3], 3, "while etcd is down").values().sum::<usize>();
        std::thread::sleep(Duration::from_millis(500));
    }
    lab.script_ok(&["start-etcd"]);
    assert!(served >= 90, "{served} requests answered during the outage");
    let start = Instant::now();
    loop {
        let nodes = lab.orch(&["get", "nodes", "-o", "json"]);
        let ready = serde_json::from_slice::<Vec<serde_json::Value>>(&nodes.stdout).unwrap_or_default().iter().filter(|n| n["ready"] == true).count();
        if nodes.status.success() && ready == 3 {
            break;
        }
        assert!(start.elapsed() < LIMIT, "the nodes did not come back after the store did: {}\n{}", text(&nodes.stderr), lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    // "No restart" is an absence: watch past the window in which a controller back on
    // the store could act on stale liveness (the lab's lease, 2 s, plus grace, 1 s).
    std::thread::sleep(Duration::from_secs(4));
    let after = identities(&lab.wait("3 running replicas after the outage", of_service("faults", 3)), Some("faults"));
    assert_eq!(after, before, "the same containers, none restarted, after the store came back\n{}", lab.logs());
    eprintln!("etcd down 30 s: {served} requests answered through the node ports meanwhile, no container restarted");
    apply(&lab, "faults.yaml", &service(4, "one", false), true);
    let scaled = lab.wait("4 running replicas after the outage", of_service("faults", 4));

    // --- the controller killed mid-rollout, restarted on the same address.
    let old = names(&scaled, "faults");
    apply(&lab, "faults.yaml", &service(4, "two", true), false);
    lab.wait("the rollout under way: new replicas and old ones", |r| {
        let now = names(r, "faults");
        now.iter().any(|name| !old.contains(name)) && now.iter().any(|name| old.contains(name))
    });
    lab.script_ok(&["stop-controller", "1", "--kill"]);
    // Read off the nodes while the controller is down: what they run is what it left.
    let left = node_replicas(&lab, 3);
    assert!(left.iter().any(|name| old.contains(name)), "the rollout had finished when the controller was killed: not mid-rollout {left:?}");
    lab.script_ok(&["start-controller", "1"]);
    let restarted = Instant::now();
    lab.ok(&["rollout", "status", "service", "faults", "--timeout", "120"]);
    eprintln!("controller killed mid-rollout: the rollout finished {:?} after it was back", restarted.elapsed());
    let rolled = lab.wait("4 new replicas and no old one", |r| of_service("faults", 4)(r) && names(r, "faults").iter().all(|name| !old.contains(name)));
    for name in &names(&rolled, "faults") {
        let greeting = lab.ok(&["exec", name, "--", "sh", "-c", "echo $GREETING"]);
        assert_eq!(greeting.trim(), "two", "{name} runs the new template");
    }
    // No duplicate on any node: the nodes hold exactly the four records.
    let start = Instant::now();
    loop {
        let records = lab.replica_records(3);
        if records == 4 {
            break;
        }
        assert!(start.elapsed() < LIMIT, "{records} replica records on the nodes, 4 expected\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    }

    // --- an agent killed while it pulls an image (16 MiB at 8 Mbit/s: about 16 s).
    let built = std::process::Command::new("bash")
        .arg(format!("{ROOT}/deploy/images/build-demo.sh"))
        .args(["--out", lab.dir.path().join("ballast-image").to_str().expect("path"), "--tag", "ballast", "--ballast", "16"])
        .args(["--push", &format!("10.250.{}.1:5000", lab.net)])
        .output()
        .expect("run build-demo.sh");
    assert!(built.status.success(), "build-demo.sh: {}", text(&built.stderr));
    for k in 1..=3 {
        lab.script_ok(&["slow-link", &k.to_string(), "8mbit"]);
    }
    apply(
        &lab,
        "ballast.yaml",
        "apiVersion: orch/v1\nkind: Service\nmetadata: {name: ballast}\nspec:\n  replicas: 1\n  image: 127.0.0.1:5000/orch/demo-web:ballast\n",
        false,
    );
    let start = Instant::now();
    let (node, partial) = loop {
        let pulling = (1..=3).find_map(|k| files_under(&image_scratch(&lab, k)).into_iter().find(|(_, size)| *size >= 1 << 20).map(|f| (k, f)));
        if let Some(found) = pulling {
            break found;
        }
        assert!(start.elapsed() < LIMIT, "no node started pulling the ballast image\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    lab.script_ok(&["kill-agent", &node.to_string()]);
    assert!(partial.0.exists(), "the pull had finished before the kill: {} is gone", partial.0.display());
    lab.script_ok(&["start-agent", &node.to_string()]);
    let restarted = Instant::now();
    lab.ok(&["rollout", "status", "service", "ballast", "--timeout", "180"]);
    eprintln!(
        "agent of node{node} killed mid-pull ({:.1} MiB of a blob on disk): the replica ready {:?} after the agent was back",
        partial.1 as f64 / f64::from(1 << 20),
        restarted.elapsed()
    );
    for k in 1..=3 {
        lab.script_ok(&["fast-link", &k.to_string()]);
    }
    // The restarted agent pulled it (the node stayed within its lease: nothing moved).
    let ballast: Vec<serde_json::Value> = lab.replicas().into_iter().filter(|r| r["service"] == "ballast").collect();
    assert_eq!(ballast.len(), 1, "{ballast:#?}");
    assert_eq!(ballast[0]["node"], format!("node{node}"), "the replica stayed on the node whose agent was killed: {ballast:#?}");
    let blobs = files_under(&lab.dir.path().join(format!("lab/node{node}/images/blobs")));
    assert!(blobs.iter().any(|(_, size)| *size >= 16 << 20), "the 16 MiB layer is in node{node}'s image store: {blobs:?}");
    let start = Instant::now();
    loop {
        let left: Vec<(PathBuf, u64)> = (1..=3).flat_map(|k| files_under(&image_scratch(&lab, k))).collect();
        if left.is_empty() {
            break;
        }
        assert!(start.elapsed() < LIMIT, "downloads left in the image stores' tmp/: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.ok(&["delete", "service", "ballast"]);

    // --- 100 kill -9, a replica at a time, each healed.
    let kills = Instant::now();
    for i in 0..100 {
        let replicas = lab.wait("4 started replicas", started("faults", 4));
        let victims = identities(&replicas, Some("faults"));
        let (name, (pid, restarts)) = victims.iter().nth(i % victims.len()).map(|(n, v)| (n.clone(), *v)).expect("a replica");
        // Still the container's process (a PID is not reused that fast, but a kill -9
        // must never reach anything else): it lives in the lab's cgroup tree.
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        assert!(cgroup.contains(&format!("{}-node", lab.name)), "host PID {pid} of {name} is not in the lab's cgroups: {cgroup}");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
        lab.wait(&format!("{name} healed after kill {}", i + 1), |r| {
            started("faults", 4)(r) && identities(r, Some("faults")).get(&name).is_some_and(|(new_pid, count)| *new_pid != pid && *count > restarts)
        });
    }
    eprintln!("100 kill -9 healed in {:?} (each seen running again, restart count up, new host PID)", kills.elapsed());
    lab.wait("4 ready replicas after the kills", of_service("faults", 4));
    // Ready is what the node reported; answering through every node's balancer is what
    // `rollout status` waits for (the last replica healed may be ready a moment before
    // the balancers have it).
    lab.ok(&["rollout", "status", "service", "faults", "--timeout", "120"]);
    let answered = load(&lab, &[1, 2, 3], 30, "after 100 kills");
    assert_eq!(answered.len(), 4, "every replica answers: {answered:?}");
}
