//! A control plane that survives its own failures, on one 3-node lab (`deploy/lab.sh up 3
//! --etcd 3`, two controllers, every agent and the CLI given both), as root, one fault
//! after the other:
//! - one etcd member killed (the one requests go to first) → apply still works and
//!   nothing restarts;
//! - a second one killed (no quorum) → the controllers change nothing, every container
//!   runs on and answers; once both are back, everything converges;
//! - the leading controller killed (`kill -9`) → the other leads, the CLI and every agent
//!   move to it, a scale converges with no duplicate replica and no restart;
//! - the new leader paused (SIGSTOP) past its lease while the other takes over, then
//!   resumed → no duplicate replica: its writes are fenced;
//! - a third controller started later (agents were never given it) → agents learn of it
//!   and move to it when the first two are gone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

use common::lab::{identities, load, Lab};
use common::{text, LIMIT};

fn service(replicas: u32) -> String {
    format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: ha}}\nspec:\n  replicas: {replicas}\n  image: 127.0.0.1:5000/orch/demo-web:1.0\n  \
         restartBackoff: {{initialMillis: 50, maxSeconds: 1}}\n  \
         ports: [{{name: http, containerPort: 80, servicePort: 80, nodePort: 30080}}]\n"
    )
}

/// `count` replicas, no more (no duplicate), all Running and ready.
fn ready(count: usize) -> impl Fn(&[serde_json::Value]) -> bool {
    move |replicas| replicas.len() == count && replicas.iter().all(|r| r["phase"] == "Running" && r["ready"] == true)
}

/// The controllers as `orch get controllers` lists them (through `server`, or the lab's
/// config), and the leader's identity; `None` while no controller answers.
fn controllers(lab: &Lab, server: Option<&str>) -> Option<(BTreeSet<String>, Option<String>)> {
    let mut args = vec!["get", "controllers", "-o", "json"];
    if let Some(server) = server {
        args.extend(["--server", server]);
    }
    let out = lab.orch(&args);
    if !out.status.success() {
        return None;
    }
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    let identities = listed.iter().filter_map(|c| c["identity"].as_str().map(str::to_owned)).collect();
    let leader = listed.iter().find(|c| c["leader"] == true).and_then(|c| c["identity"].as_str().map(str::to_owned));
    Some((identities, leader))
}

/// Waits until `identity` leads, as `server` (or the config's servers) sees it.
fn wait_for_leader(lab: &Lab, identity: &str, server: Option<&str>) -> Duration {
    let start = Instant::now();
    loop {
        if controllers(lab, server).is_some_and(|(_, leader)| leader.as_deref() == Some(identity)) {
            return start.elapsed();
        }
        assert!(start.elapsed() < LIMIT, "{identity} did not take the lead\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn controller_identity(lab: &Lab, c: u32) -> String {
    format!("{}-controller{c}", lab.name)
}

fn controller_address(lab: &Lab, c: u32) -> String {
    format!("10.250.{}.1:{}", lab.net, 7100 + 10 * (c - 1))
}

/// Which controller (1-3) leads now.
fn leading(lab: &Lab) -> u32 {
    let start = Instant::now();
    loop {
        if let Some((_, Some(leader))) = controllers(lab, None) {
            return (1..=3).find(|c| controller_identity(lab, *c) == leader).unwrap_or_else(|| panic!("an unknown leader {leader}"));
        }
        assert!(start.elapsed() < LIMIT, "no controller leads\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn apply(lab: &Lab, replicas: u32, server: Option<&str>) -> Output {
    let path = lab.dir.path().join("ha.yaml");
    std::fs::write(&path, service(replicas)).expect("write manifest");
    let path = path.to_str().expect("path").to_owned();
    let mut args = vec!["apply", "-f", path.as_str()];
    if let Some(server) = server {
        args.extend(["--server", server]);
    }
    lab.orch(&args)
}

fn apply_ok(lab: &Lab, replicas: u32, server: Option<&str>) {
    let out = apply(lab, replicas, server);
    assert!(out.status.success(), "apply {replicas} replicas: {}\n{}", text(&out.stderr), lab.logs());
}

/// Replicas as listed through `server`.
fn replicas_via(lab: &Lab, server: &str) -> Vec<serde_json::Value> {
    let out = lab.orch(&["get", "replicas", "-o", "json", "--server", server]);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The containers that ran before still run: same host PID, no restart.
fn assert_unchanged(lab: &Lab, before: &std::collections::BTreeMap<String, (i32, i64)>, now: &[serde_json::Value], what: &str) {
    let now = identities(now, Some("ha"));
    for (name, identity) in before {
        assert_eq!(now.get(name), Some(identity), "{what}: replica {name} was replaced or restarted\nnow: {now:?}\n{}", lab.logs());
    }
}

#[test]
fn the_control_plane_survives_losing_an_etcd_member_its_quorum_and_its_leader() {
    let lab = Lab::up_ha(3, 2, 3);
    apply_ok(&lab, 3, None);
    let steady = lab.wait("3 ready replicas", ready(3));
    let before = identities(&steady, Some("ha"));

    // --- One etcd member killed — the first, the one every controller's requests go to
    // at first: nobody notices.
    lab.script_ok(&["stop-etcd", "1", "--kill"]);
    apply_ok(&lab, 4, None);
    let four = lab.wait("4 ready replicas with one etcd member down", ready(4));
    assert_unchanged(&lab, &before, &four, "one etcd member down");
    eprintln!("one etcd member down: apply converged, no container restarted");

    // --- A second one killed: no quorum. The controllers change nothing; every container
    // runs on and the node ports answer.
    let before = identities(&four, Some("ha"));
    lab.script_ok(&["stop-etcd", "2", "--kill"]);
    let refused = apply(&lab, 5, None);
    assert!(!refused.status.success(), "an apply without a store quorum cannot have been stored: {}", text(&refused.stdout));
    let served: usize = load(&lab, &[1, 2, 3], 30, "without an etcd quorum").values().sum();
    assert_eq!(lab.replica_records(3), 4, "the agents still hold the 4 replicas\n{}", lab.logs());
    lab.script_ok(&["start-etcd", "1"]);
    lab.script_ok(&["start-etcd", "2"]);
    // The members elect a leader again: an apply goes through once they have.
    let start = Instant::now();
    while !apply(&lab, 5, None).status.success() {
        assert!(start.elapsed() < LIMIT, "no apply went through after the quorum came back\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let five = lab.wait("5 ready replicas once the quorum is back", ready(5));
    assert_unchanged(&lab, &before, &five, "the quorum lost and back");
    eprintln!("no etcd quorum: {served} requests answered through the node ports, nothing changed; converged once it was back");

    // --- The leading controller killed: the other leads, the CLI and the agents move.
    let before = identities(&five, Some("ha"));
    let dead = leading(&lab);
    let other = 3 - dead;
    lab.script_ok(&["stop-controller", &dead.to_string(), "--kill"]);
    let killed = Instant::now();
    // The CLI's config lists both: the first call already goes to the live one.
    apply_ok(&lab, 6, None);
    let cli_moved = killed.elapsed();
    let takeover = wait_for_leader(&lab, &controller_identity(&lab, other), None);
    let six = lab.wait("6 ready replicas after the leader died", ready(6));
    assert_unchanged(&lab, &before, &six, "the leader killed");
    let nodes = lab.ok(&["get", "nodes", "-o", "json"]);
    assert_eq!(nodes.matches("\"ready\": true").count(), 3, "every agent holds a session with the live controller: {nodes}");
    eprintln!("leader killed: the CLI's apply went through in {cli_moved:?}, controller{other} led after {takeover:?}, converged with no duplicate");

    // --- The new leader paused past its lease; the restarted one takes over; the paused
    // one resumes: its writes are fenced, nothing is duplicated.
    lab.script_ok(&["start-controller", &dead.to_string()]);
    lab.script_ok(&["pause-controller", &other.to_string()]);
    wait_for_leader(&lab, &controller_identity(&lab, dead), Some(&controller_address(&lab, dead)));
    apply_ok(&lab, 7, Some(&controller_address(&lab, dead)));
    let seven = lab.wait("7 ready replicas while the old leader is paused", ready(7));
    lab.script_ok(&["resume-controller", &other.to_string()]);
    // The resumed controller answers again, as a follower.
    let start = Instant::now();
    while controllers(&lab, Some(&controller_address(&lab, other))).is_none_or(|(_, leader)| leader != Some(controller_identity(&lab, dead))) {
        assert!(start.elapsed() < LIMIT, "the resumed controller does not answer as a follower\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = lab.wait("still 7 ready replicas after the paused leader resumed", ready(7));
    assert_unchanged(&lab, &identities(&seven, Some("ha")), &after, "the paused leader resumed");
    eprintln!("a leader paused past its lease and resumed: no duplicate, no restart");

    // --- A third controller, started later: the agents were never given it, yet they
    // move to it when the first two are gone.
    lab.script_ok(&["start-controller", "3"]);
    let third = controller_address(&lab, 3);
    let start = Instant::now();
    while controllers(&lab, Some(&third)).is_none_or(|(listed, _)| !listed.contains(&controller_identity(&lab, 3))) {
        assert!(start.elapsed() < LIMIT, "controller3 did not publish itself\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its record reaches the agents in their next desired set; give them one to carry it.
    apply_ok(&lab, 6, Some(&third));
    lab.wait("6 ready replicas", ready(6));
    let before = identities(&replicas_via(&lab, &third), Some("ha"));
    lab.script_ok(&["stop-controller", "1", "--kill"]);
    lab.script_ok(&["stop-controller", "2", "--kill"]);
    wait_for_leader(&lab, &controller_identity(&lab, 3), Some(&third));
    let start = Instant::now();
    loop {
        let nodes = lab.orch(&["get", "nodes", "-o", "json", "--server", &third]);
        if nodes.status.success() && text(&nodes.stdout).matches("\"ready\": true").count() == 3 {
            break;
        }
        assert!(start.elapsed() < LIMIT, "the agents did not move to the controller they learned of: {}\n{}", text(&nodes.stdout), lab.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    apply_ok(&lab, 7, Some(&third));
    let start = Instant::now();
    let mut now = replicas_via(&lab, &third);
    while !ready(7)(&now) {
        assert!(start.elapsed() < LIMIT, "7 replicas through controller3: {now:#?}\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(100));
        now = replicas_via(&lab, &third);
    }
    assert_unchanged(&lab, &before, &now, "the agents moved to a controller they learned of");
    eprintln!("a controller added later: the agents learned of it and moved to it");
}
