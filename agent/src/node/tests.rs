//! The node layer on fakes ([`crate::testing`]): convergence, adoption by a new agent,
//! crash-loop back-off, probe verdicts — the daemon and the supervisors as they run, on
//! paused tokio time, without root. The same paths on real containers are the root tests
//! of `tests/daemon.rs`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use orch_api::events::EventKind;
use orch_api::pb;

use super::context::NodeContext;
use super::lifecycle::ENDPOINT_PROPAGATION;
use super::{Agent, AgentConfig, Shutdown};
use crate::testing::{fake_node, Behaviour, Fakes};

fn config(dir: &Path) -> AgentConfig {
    AgentConfig {
        name: "fake".into(),
        address: Ipv4Addr::LOCALHOST,
        controllers: super::controllers::Controllers::new(&["127.0.0.1:9".to_owned()]),
        state_dir: dir.to_owned(),
        volumes_dir: dir.join("volumes"),
        reserved_paths: Vec::new(),
        cgroup_parent: "orch-fake".into(),
        bridge: "fake0".into(),
        capacity: pb::ResourceList::default(),
        labels: Default::default(),
        registries: crate::images::RegistrySettings::default(),
        upstream_dns: Vec::new(),
        heartbeat: Duration::from_secs(1),
        helper: "/nonexistent/orch-agent".into(),
        api_listen: None,
        tls_dir: None,
        connection_limits: crate::net::ConnectionLimits::default(),
        data_path: crate::net::DataPath::default(),
        layer_limits: crate::images::LayerLimits::default(),
        allow_chaos: false,
    }
}

fn desired(id: &str, image: &str, policy: pb::RestartPolicy, probes: Option<pb::Probes>) -> pb::DesiredReplica {
    pb::DesiredReplica {
        replica: Some(pb::Replica { id: id.into(), service: "web".into(), node: "fake".into(), ..Default::default() }),
        spec: Some(pb::ServiceSpec {
            image: image.into(),
            restart_policy: policy.into(),
            restart_backoff: Some(pb::RestartBackoff { initial_millis: 100, max_seconds: 1, reset_after_seconds: 10 }),
            termination_grace_seconds: 5,
            probes,
            ..Default::default()
        }),
    }
}

fn set(generation: u64, replicas: Vec<pb::DesiredReplica>) -> pb::DesiredSet {
    pb::DesiredSet { generation, replicas, ..Default::default() }
}

fn replica(ctx: &NodeContext, id: &str) -> Option<pb::ReplicaReport> {
    ctx.board.snapshot().into_iter().find(|r| r.id == id)
}

fn status(ctx: &NodeContext, id: &str) -> pb::ReplicaStatus {
    replica(ctx, id).and_then(|r| r.status).unwrap_or_default()
}

fn running(ctx: &NodeContext, id: &str) -> bool {
    status(ctx, id).phase() == pb::ReplicaPhase::Running
}

/// Waits (in paused time: as long as the node needs, in no real time) until `holds`.
async fn eventually(what: &str, mut holds: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if holds() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never happened within 50 s of node time: {what}");
}

fn events(ctx: &NodeContext, kind: EventKind) -> Vec<pb::Event> {
    ctx.board.take_events("n1").into_iter().filter(|e| e.kind == kind.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn convergence_starts_what_is_missing_stops_what_is_unwanted_and_replaces_the_tables() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    let ctx = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&ctx)).await;

    let always = pb::RestartPolicy::Always;
    let mut first = set(1, vec![desired("web-a", "web:1", always, None), desired("web-b", "web:1", always, None)]);
    first.endpoints = vec![pb::ServiceEndpoints {
        service: "web".into(),
        vip: "10.96.0.10".into(),
        ports: vec![pb::ServicePort { service_port: 80, container_port: 8080, ..Default::default() }],
        ready_ips: vec!["10.0.0.2".into()],
        ..Default::default()
    }];
    first.routes = vec![pb::NodeRoute { node: "other".into(), pod_cidr: "10.0.1.0/24".into(), via: "192.0.2.7".into(), pod_subnet: None }];
    agent.converge(first.clone()).await;
    eventually("both replicas run", || running(&ctx, "web-a") && running(&ctx, "web-b")).await;
    let (a, b) = (status(&ctx, "web-a"), status(&ctx, "web-b"));
    assert!(a.ready && b.ready, "no probe: ready as soon as it runs");
    assert_ne!(a.ip, b.ip, "each replica its own address");
    assert_eq!(Some(a.host_pid as i32), fakes.runtime.host_pid("web-a"));
    assert_eq!(fakes.images.pulls(), 1, "the image is pulled once for both");
    assert!(dir.path().join("replicas/web-a.pb").exists(), "the record a next agent resumes from");
    let services = fakes.network.services();
    assert_eq!((services.len(), services[0].vip, services[0].ready.clone()), (1, Ipv4Addr::new(10, 96, 0, 10), vec![Ipv4Addr::new(10, 0, 0, 2)]));
    assert_eq!(fakes.network.routes().len(), 1);

    agent.converge(first.clone()).await;
    assert_eq!((fakes.runtime.starts("web-a").len(), fakes.runtime.starts("web-b").len()), (1, 1), "the same set again starts nothing");

    agent.converge(set(2, vec![desired("web-b", "web:1", always, None)])).await;
    eventually("web-a is gone from the node", || replica(&ctx, "web-a").is_none()).await;
    assert!(!fakes.runtime.containers().contains("web-a"), "its container removed");
    assert!(!fakes.network.addresses().contains_key("web-a"), "its address freed");
    assert!(!dir.path().join("replicas/web-a.pb").exists(), "its record removed");
    assert!(running(&ctx, "web-b"), "the other replica untouched");
    assert!(fakes.network.services().is_empty() && fakes.network.routes().is_empty(), "the tables are replaced whole");

    drop(ctx); // the node network goes only once nothing else holds the context
    agent.shut_down(Shutdown::Drain).await;
    assert!(fakes.runtime.containers().is_empty(), "a drain stops every replica");
    assert!(fakes.network.torn_down(), "a drain removes the node network");
}

#[tokio::test(start_paused = true)]
async fn a_new_agent_adopts_the_running_counts_the_dead_and_removes_the_unowned() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    let always = pb::RestartPolicy::Always;
    let old = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&old)).await;
    agent.converge(set(1, vec![desired("web-a", "web:1", always, None), desired("web-b", "web:1", always, None)])).await;
    eventually("both replicas run", || running(&old, "web-a") && running(&old, "web-b")).await;
    fakes.runtime.kill("web-a", 1);
    eventually("web-a restarted once", || running(&old, "web-a") && status(&old, "web-a").restarts == 1).await;
    let pid_a = status(&old, "web-a").host_pid;
    agent.shut_down(Shutdown::Leave).await;
    assert_eq!(fakes.runtime.containers().len(), 2, "leaving keeps the containers running");

    // While no agent runs: web-b dies, and a container nobody owns is found.
    fakes.runtime.kill("web-b", 3);
    fakes.runtime.leave_running("stray");

    let new = fake_node("fake", &fakes, dir.path());
    let agent = Agent::resume(config(dir.path()), Arc::clone(&new)).await;
    eventually("web-a is taken over", || running(&new, "web-a")).await;
    let a = status(&new, "web-a");
    assert_eq!((a.host_pid, a.restarts, a.ready), (pid_a, 1, true), "same process, restart count carried, readiness kept");
    assert_eq!(fakes.runtime.starts("web-a").len(), 2, "adoption starts nothing");
    let adopted = events(&new, EventKind::Adopted);
    assert!(adopted.iter().any(|e| e.object == "replica/web-a"), "{adopted:?}");

    eventually("web-b restarted by the new agent", || running(&new, "web-b") && status(&new, "web-b").restarts == 1).await;
    assert_eq!(fakes.runtime.starts("web-b").len(), 2);
    assert_eq!(status(&new, "web-b").exit_code, Some(3), "the exit it had while no agent ran is its last exit");
    assert!(!fakes.runtime.containers().contains("stray"), "a container without a record is removed");
    agent.shut_down(Shutdown::Drain).await;
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_record_is_set_aside_its_container_kept_then_adopted_or_removed_by_the_desired_set() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    let always = pb::RestartPolicy::Always;
    let old = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&old)).await;
    agent.converge(set(1, vec![desired("web-a", "web:1", always, None), desired("web-b", "web:1", always, None)])).await;
    eventually("both replicas run", || running(&old, "web-a") && running(&old, "web-b")).await;
    let pid_a = status(&old, "web-a").host_pid;
    agent.shut_down(Shutdown::Leave).await;

    // Both records damaged while no agent runs (a torn write of an earlier build, a bad disk).
    std::fs::write(dir.path().join("replicas/web-a.pb"), b"\xff\xff not a record").expect("damage web-a's record");
    std::fs::write(dir.path().join("replicas/web-b.pb"), b"").expect("empty web-b's record");
    let new = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&new)).await;
    assert!(fakes.runtime.containers().contains("web-a") && fakes.runtime.containers().contains("web-b"), "containers kept, not removed as unowned");
    assert!(dir.path().join("replicas/web-a.pb.corrupt").exists(), "the record is set aside, not deleted");
    let conditions = new.board.conditions();
    assert_eq!(conditions.len(), 1, "{conditions:?}");
    assert_eq!(conditions[0].r#type, "RecordUnreadable");
    assert!(conditions[0].message.contains("web-a.pb.corrupt") && conditions[0].message.contains("web-b.pb.corrupt"), "{conditions:?}");
    let unreadable = events(&new, EventKind::RecordUnreadable);
    assert_eq!(unreadable.len(), 2, "{unreadable:?}");
    assert!(unreadable.iter().all(|e| e.object == "node/fake" && e.message.contains("cannot be read")), "{unreadable:?}");

    // The controller still wants web-a only: it is adopted with the set's template; web-b goes.
    agent.converge(set(2, vec![desired("web-a", "web:1", always, None)])).await;
    eventually("web-a is taken over", || running(&new, "web-a")).await;
    assert_eq!(status(&new, "web-a").host_pid, pid_a, "the same process, adopted");
    assert_eq!(fakes.runtime.starts("web-a").len(), 1, "adoption starts nothing");
    assert!(!fakes.runtime.containers().contains("web-b"), "a replica no longer wanted is removed");
    assert!(new.board.conditions().is_empty(), "the condition is over once every set-aside replica is settled");
    assert!(!dir.path().join("replicas/web-b.pb.corrupt").exists(), "the removed replica's file goes");
    assert!(dir.path().join("replicas/web-a.pb").exists(), "web-a has a readable record again");
    assert!(dir.path().join("replicas/web-a.pb.corrupt").exists(), "kept beside it while the replica lives");

    // A next agent reads the new record and ignores the file set aside.
    agent.shut_down(Shutdown::Leave).await;
    let third = fake_node("fake", &fakes, dir.path());
    let agent = Agent::resume(config(dir.path()), Arc::clone(&third)).await;
    eventually("web-a is taken over again", || running(&third, "web-a")).await;
    assert!(third.board.conditions().is_empty(), "nothing unreadable this time");
    agent.shut_down(Shutdown::Drain).await;
    assert!(!dir.path().join("replicas/web-a.pb.corrupt").exists(), "gone with its replica");
}

#[tokio::test(start_paused = true)]
async fn a_node_port_that_cannot_be_bound_is_an_event_and_a_condition_retried_until_it_opens() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    let ctx = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&ctx)).await;
    fakes.network.hold_port(30080, true);
    let service = |name: &str, vip: &str, node_port: u32| pb::ServiceEndpoints {
        service: name.into(),
        vip: vip.into(),
        ports: vec![pb::ServicePort { service_port: 80, container_port: 8080, node_port, ..Default::default() }],
        ready_ips: vec!["10.0.0.2".into()],
        ..Default::default()
    };
    let mut table = set(1, Vec::new());
    table.endpoints = vec![service("api", "10.96.0.11", 30081), service("web", "10.96.0.10", 30080)];
    agent.converge(table).await;
    assert_eq!(fakes.network.services().len(), 2, "every service's endpoints are applied all the same");
    let failed = events(&ctx, EventKind::ListenerFailed);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].object, "service/web");
    assert!(failed[0].message.contains("node port 30080/tcp") && failed[0].message.contains("in use"), "{}", failed[0].message);
    let conditions = ctx.board.conditions();
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0].r#type, "ListenerFailed");
    assert!(conditions[0].message.contains("of service web"), "{}", conditions[0].message);

    tokio::time::sleep(super::service_table::LISTENER_RETRY * 2).await;
    assert!(events(&ctx, EventKind::ListenerFailed).is_empty(), "a failure that lasts is said once");
    fakes.network.hold_port(30080, false);
    eventually("the retry opens the port", || !ctx.board.conditions().iter().any(|c| c.r#type == "ListenerFailed")).await;
    let opened = events(&ctx, EventKind::ListenerOpened);
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!((opened[0].object.as_str(), opened[0].message.as_str()), ("service/web", "node port 30080/tcp is open"));
    drop(ctx);
    agent.shut_down(Shutdown::Drain).await;
    assert!(fakes.network.torn_down(), "the retry task let go of the node");
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_backs_off_doubling_to_the_cap_and_a_finished_job_stays_finished() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    fakes.runtime.behave("crash:1", Behaviour::Exit { after: Duration::from_millis(10), code: 1 });
    fakes.runtime.behave("job:1", Behaviour::Exit { after: Duration::from_millis(10), code: 0 });
    let ctx = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&ctx)).await;
    agent
        .converge(set(1, vec![desired("crash-a", "crash:1", pb::RestartPolicy::Always, None), desired("job-a", "job:1", pb::RestartPolicy::OnFailure, None)]))
        .await;
    eventually("eight starts", || fakes.runtime.starts("crash-a").len() >= 8).await;
    let starts = fakes.runtime.starts("crash-a");
    let gaps: Vec<u128> = starts.windows(2).map(|w| (w[1] - w[0]).as_millis()).take(7).collect();
    // Each run lasts 10 ms; the first restart is immediate, then 100 ms doubling to 1 s.
    assert_eq!(gaps, [10, 110, 210, 410, 810, 1010, 1010], "starts at {starts:?}");
    eventually("the restarts are counted", || status(&ctx, "crash-a").restarts >= 7).await;
    let restarted = events(&ctx, EventKind::Restarted);
    assert!(restarted.iter().any(|e| e.message.contains("exited with code 1")), "{restarted:?}");

    eventually("the job succeeded", || status(&ctx, "job-a").phase() == pb::ReplicaPhase::Succeeded).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fakes.runtime.starts("job-a").len(), 1, "OnFailure: exit 0 is not restarted");
    assert_eq!(status(&ctx, "job-a").restarts, 0);
    agent.shut_down(Shutdown::Drain).await;
    assert!(fakes.runtime.containers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_start_that_fails_backs_off_and_an_image_that_cannot_be_pulled_says_so() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    fakes.runtime.behave("broken:1", Behaviour::Refuse("exec /bin/serve: no such file".into()));
    fakes.images.unpullable("missing:1");
    let ctx = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&ctx)).await;
    let always = pb::RestartPolicy::Always;
    agent.converge(set(1, vec![desired("broken-a", "broken:1", always, None), desired("missing-a", "missing:1", always, None)])).await;
    eventually("three failed starts", || fakes.runtime.starts("broken-a").len() >= 3).await;
    let broken = status(&ctx, "broken-a");
    assert_eq!(broken.phase(), pb::ReplicaPhase::Starting);
    assert!(broken.reason.contains("no such file"), "{broken:?}");
    eventually("the pull failure is the reason", || status(&ctx, "missing-a").reason.starts_with("ImagePullBackOff: missing:1")).await;
    assert!(fakes.runtime.starts("missing-a").is_empty(), "nothing starts without its image");
    agent.shut_down(Shutdown::Drain).await;
    assert!(fakes.network.addresses().is_empty(), "every address freed");
}

/// `imagePullPolicy`: under Always every start resolves the tag again (a moved tag is
/// pulled and run), under IfNotPresent the node keeps what it has, under Never a missing
/// image is a clear reason and nothing is pulled.
#[tokio::test(start_paused = true)]
async fn a_moved_tag_is_pulled_again_under_always_only() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    let ctx = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&ctx)).await;
    let with_policy = |id: &str, image: &str, policy: pb::ImagePullPolicy| {
        let mut replica = desired(id, image, pb::RestartPolicy::Always, None);
        if let Some(spec) = replica.spec.as_mut() {
            spec.image_pull_policy = policy.into();
        }
        replica
    };
    agent
        .converge(set(
            1,
            vec![
                with_policy("floating-a", "app:latest", pb::ImagePullPolicy::Unspecified),
                with_policy("always-a", "app:2", pb::ImagePullPolicy::Always),
                with_policy("pinned-a", "app:1", pb::ImagePullPolicy::IfNotPresent),
                with_policy("never-a", "absent:1", pb::ImagePullPolicy::Never),
            ],
        ))
        .await;
    eventually("three replicas run", || ["floating-a", "always-a", "pinned-a"].iter().all(|id| running(&ctx, id))).await;
    eventually("never-a says why it cannot start", || status(&ctx, "never-a").reason.starts_with("ErrImageNeverPull: image absent:1 is not on this node"))
        .await;
    assert_eq!(fakes.images.pulls(), 3, "one pull each, none for Never");

    for reference in ["app:latest", "app:2", "app:1"] {
        fakes.images.move_tag(reference);
    }
    for id in ["floating-a", "always-a", "pinned-a"] {
        fakes.runtime.kill(id, 1);
    }
    eventually("each restarted", || ["floating-a", "always-a", "pinned-a"].iter().all(|id| fakes.runtime.starts(id).len() == 2 && running(&ctx, id))).await;
    assert_eq!(fakes.runtime.images_started("floating-a"), ["app:latest", "app:latest@v1"], ":latest defaults to Always");
    assert_eq!(fakes.runtime.images_started("always-a"), ["app:2", "app:2@v1"]);
    assert_eq!(fakes.runtime.images_started("pinned-a"), ["app:1", "app:1"], "IfNotPresent keeps the node's image");
    assert_eq!(fakes.images.pulls(), 5, "the two Always replicas pulled again");
    assert!(fakes.runtime.starts("never-a").is_empty());
    agent.shut_down(Shutdown::Drain).await;
    assert!(fakes.network.addresses().is_empty(), "every address freed");
}

#[tokio::test(start_paused = true)]
async fn readiness_follows_the_probe_and_a_failed_liveness_probe_restarts() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    let ctx = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&ctx)).await;
    let probe = |failures: u32| pb::Probe {
        handler: Some(pb::probe::Handler::TcpSocket(pb::TcpSocketAction { port: 8080 })),
        period_seconds: 1,
        timeout_seconds: 1,
        success_threshold: 1,
        failure_threshold: failures,
        initial_delay_seconds: 0,
    };
    let ready_only = pb::Probes { readiness: Some(probe(1)), ..Default::default() };
    let live = pb::Probes { liveness: Some(probe(3)), ..Default::default() };
    let always = pb::RestartPolicy::Always;
    agent.converge(set(1, vec![desired("web-a", "web:1", always, Some(ready_only)), desired("live-a", "web:1", always, Some(live))])).await;

    eventually("web-a runs", || running(&ctx, "web-a")).await;
    eventually("web-a turns ready", || status(&ctx, "web-a").ready).await;
    let ip: Ipv4Addr = status(&ctx, "web-a").ip.parse().expect("an address");
    fakes.probes.set_healthy(ip, false);
    eventually("web-a turns unready", || !status(&ctx, "web-a").ready).await;
    assert_eq!(status(&ctx, "web-a").reason, "readiness probe failing");
    let unhealthy = events(&ctx, EventKind::Unhealthy);
    assert!(unhealthy.iter().any(|e| e.object == "replica/web-a" && e.message.contains("scripted failure")), "{unhealthy:?}");
    fakes.probes.set_healthy(ip, true);
    eventually("web-a is ready again", || status(&ctx, "web-a").ready).await;
    assert_eq!((fakes.runtime.starts("web-a").len(), status(&ctx, "web-a").restarts), (1, 0), "readiness never restarts");

    eventually("live-a runs", || running(&ctx, "live-a")).await;
    let live_ip: Ipv4Addr = status(&ctx, "live-a").ip.parse().expect("an address");
    fakes.probes.set_healthy(live_ip, false);
    eventually("live-a restarted by its liveness probe", || fakes.runtime.starts("live-a").len() == 2).await;
    fakes.probes.set_healthy(live_ip, true);
    eventually("live-a runs again", || running(&ctx, "live-a") && status(&ctx, "live-a").restarts == 1).await;
    let exit = status(&ctx, "live-a");
    assert_eq!(exit.exit_code, Some(143), "stopped with SIGTERM: {exit:?}");
    agent.shut_down(Shutdown::Drain).await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_stops_the_container_with_the_manifests_stop_signal_else_the_images() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    let ctx = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&ctx)).await;
    let probe = pb::Probe {
        handler: Some(pb::probe::Handler::TcpSocket(pb::TcpSocketAction { port: 8080 })),
        period_seconds: 1,
        timeout_seconds: 1,
        success_threshold: 1,
        failure_threshold: 1,
        initial_delay_seconds: 0,
    };
    let live = pb::Probes { liveness: Some(probe), ..Default::default() };
    let mut quit = desired("quit-a", "web:1", pb::RestartPolicy::Always, Some(live.clone()));
    if let Some(spec) = quit.spec.as_mut() {
        spec.stop_signal = "SIGQUIT".into();
    }
    fakes.images.set_stop_signal("int:1", "SIGINT");
    agent.converge(set(1, vec![quit, desired("int-a", "int:1", pb::RestartPolicy::Always, Some(live))])).await;
    for (id, code) in [("quit-a", 128 + 3), ("int-a", 128 + 2)] {
        eventually("it runs", || running(&ctx, id)).await;
        let ip: Ipv4Addr = status(&ctx, id).ip.parse().expect("an address");
        fakes.probes.set_healthy(ip, false);
        eventually("restarted by its liveness probe", || fakes.runtime.starts(id).len() == 2).await;
        fakes.probes.set_healthy(ip, true);
        eventually("it runs again", || running(&ctx, id)).await;
        assert_eq!(status(&ctx, id).exit_code, Some(code), "{id}: the manifest's signal, else the image's: {:?}", status(&ctx, id));
    }
    agent.shut_down(Shutdown::Drain).await;
}

#[tokio::test(start_paused = true)]
async fn a_purge_waits_for_the_slot_locks_and_a_new_apply_calls_it_off() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    let ctx = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&ctx)).await;
    let slot_dir = ctx.volumes.local_root.join("db/data/0");
    std::fs::create_dir_all(&slot_dir).expect("a slot's data");
    std::fs::write(slot_dir.join("dump.rdb"), "kept").expect("data");
    let purged = |generation, services: &[&str]| pb::DesiredSet {
        generation,
        purged_services: services.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };

    // A replica of the slot still stops (it holds the slot's lock): the purge waits, however
    // many sets list it meanwhile.
    let still_stopping = ctx.volume_locks.hold(std::slice::from_ref(&slot_dir)).await;
    agent.converge(purged(1, &["db"])).await;
    agent.converge(purged(2, &["db"])).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(slot_dir.join("dump.rdb").exists(), "purged under a replica still using it");
    drop(still_stopping);
    eventually("the purge is done", || !ctx.volumes.local_root.join("db").exists()).await;
    assert_eq!(events(&ctx, EventKind::VolumesPurged).len(), 1, "one purge, one event");

    // Purged again, then applied again before the purge could run: the data stays.
    std::fs::create_dir_all(&slot_dir).expect("a slot's data");
    std::fs::write(slot_dir.join("dump.rdb"), "new").expect("data");
    let held = ctx.volume_locks.hold(std::slice::from_ref(&slot_dir)).await;
    agent.converge(purged(3, &[])).await; // (the first purge's entry goes)
    agent.converge(purged(4, &["db"])).await;
    agent.converge(purged(5, &[])).await;
    drop(held);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(slot_dir.join("dump.rdb").exists(), "a purge called off by a new apply removed the new service's data");
    drop(ctx);
    agent.shut_down(Shutdown::Drain).await;
}

#[tokio::test(start_paused = true)]
async fn a_stopping_replica_waits_until_no_balancer_routes_to_it_then_drains_its_connections_before_the_signal() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    let ctx = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&ctx)).await;
    let always = pb::RestartPolicy::Always;
    agent.converge(set(1, vec![desired("web-a", "web:1", always, None)])).await;
    eventually("web-a runs", || running(&ctx, "web-a")).await;
    let ip: Ipv4Addr = status(&ctx, "web-a").ip.parse().expect("an address");
    let endpoints = |ready: &[&str]| {
        vec![pb::ServiceEndpoints {
            service: "web".into(),
            vip: "10.96.0.10".into(),
            ports: vec![pb::ServicePort { service_port: 80, container_port: 8080, ..Default::default() }],
            ready_ips: ready.iter().map(|ip| (*ip).to_owned()).collect(),
            ..Default::default()
        }]
    };
    let (mine, other) = (ip.to_string(), "10.0.0.99");

    // The set that drops web-a still lists it among the endpoints (the controller writes
    // the two apart): this node takes it out of its own table before it stops it, and
    // waits while the other nodes' balancers, which got the same endpoints, route to it.
    let mut without = set(2, vec![]);
    without.endpoints = endpoints(&[&mine, other]);
    agent.converge(without).await;
    assert_eq!(fakes.network.services()[0].ready, [Ipv4Addr::new(10, 0, 0, 99)], "out of this node's table first");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(fakes.runtime.containers().contains("web-a"), "signalled while the other nodes' balancers still route to it");

    // The endpoints leave it out: the other nodes get them now and have a moment to apply
    // them; then the connection this node relays to it ends.
    fakes.network.set_connections(ip, 1);
    let mut left = set(3, vec![]);
    left.endpoints = endpoints(&[other]);
    agent.converge(left).await;
    tokio::time::sleep(ENDPOINT_PROPAGATION / 2).await;
    assert!(fakes.runtime.containers().contains("web-a"), "signalled before the other nodes could apply the endpoints");
    tokio::time::sleep(ENDPOINT_PROPAGATION).await;
    assert!(fakes.runtime.containers().contains("web-a"), "signalled while a connection was still relayed to it");
    fakes.network.set_connections(ip, 0);
    eventually("web-a is gone once drained", || !fakes.runtime.containers().contains("web-a")).await;
    drop(ctx);
    agent.shut_down(Shutdown::Drain).await;
}

#[tokio::test(start_paused = true)]
async fn while_the_node_is_down_nothing_restarts_and_outages_need_allow_chaos() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fakes = Fakes::default();
    let ctx = fake_node("fake", &fakes, dir.path());
    let mut agent = Agent::resume(config(dir.path()), Arc::clone(&ctx)).await;
    agent.converge(set(1, vec![desired("web-a", "web:1", pb::RestartPolicy::Always, None)])).await;
    eventually("web-a runs", || running(&ctx, "web-a")).await;

    // An agent without --allow-chaos takes no outage (and kills nothing).
    let outage = |kind: pb::OutageKind| pb::ChaosRequest {
        fault: Some(pb::chaos_request::Fault::Outage(pb::NodeOutage { kind: kind.into(), seconds: 5 })),
        node: "fake".into(),
    };
    let refused = super::chaos::carry_out(&ctx, false, &outage(pb::OutageKind::NodeDown));
    assert!(matches!(refused, Err(super::chaos::ChaosError::NotAllowed { .. })), "{refused:?}");
    assert_eq!(ctx.outage.current(), None);
    let too_long = pb::ChaosRequest {
        fault: Some(pb::chaos_request::Fault::Outage(pb::NodeOutage { kind: pb::OutageKind::Partition.into(), seconds: 301 })),
        node: "fake".into(),
    };
    assert!(matches!(super::chaos::carry_out(&ctx, true, &too_long), Err(super::chaos::ChaosError::Length { seconds: 301 })));

    // Node down (the kills themselves are real signals, left to the root tests): a
    // container that ends meanwhile is not started again until the outage is over.
    ctx.outage.begin("fake", super::chaos::OutageKind::NodeDown, Duration::from_secs(5)).expect("outage");
    let began = tokio::time::Instant::now();
    fakes.runtime.kill("web-a", 137);
    eventually("web-a is down", || !running(&ctx, "web-a")).await;
    eventually("web-a runs again", || running(&ctx, "web-a")).await;
    assert!(began.elapsed() >= Duration::from_secs(5), "restarted only after the outage: {:?}", began.elapsed());
    assert_eq!(fakes.runtime.starts("web-a").len(), 2);

    drop(ctx);
    agent.shut_down(Shutdown::Drain).await;
}
