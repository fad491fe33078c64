//! The agent daemon for real, as root: a controller in-process (embedded store, real
//! gRPC on loopback) and `orch-agent serve` as a process running real containers on a
//! bridge of the test's own. Replicas heal from `kill -9` and failing liveness probes,
//! leave the endpoints while not ready, back off when crash-looping, survive `kill -9`
//! of the agent, and leave nothing behind when deleted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::cluster::{http_get, running_ready, status, Cluster, LIMIT};
use orch_api::pb;

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
        .wait_replicas("web", "the replica failing liveness to restart", |r| r.iter().any(|x| x.id == sick.id && running_ready(x) && status(x).restarts == 1))
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
        let delays: Vec<u64> = restarted.iter().filter_map(|e| e.message.split("back-off of ").nth(1)?.split(' ').next()?.parse().ok()).collect();
        if delays.len() >= 6 {
            break delays;
        }
        assert!(start.elapsed() < LIMIT, "six Restarted events: {events:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(&delays[..6], &[0, 100, 200, 400, 800, 1000], "first restart at once, then doubling up to the cap");

    // Delete: nothing left on the node.
    for service in ["web", "crash"] {
        cluster.api.delete_service(pb::DeleteServiceRequest { name: service.into(), purge_volumes: false }).await.expect("delete");
    }
    cluster.wait_replicas("", "every replica gone", |r| r.is_empty()).await;
    cluster.wait_node_empty().await;
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
            r.iter().any(|x| x.id == killed.id && running_ready(x) && status(x).restarts == 1) && r.iter().any(|x| x.id == kept.id && running_ready(x))
        })
        .await;
    let adopted = after.iter().find(|r| r.id == kept.id).map(status).expect("kept replica");
    assert_eq!(adopted.host_pid, status(&kept).host_pid, "adopted, not restarted: same host PID");
    assert_eq!(adopted.restarts, 0, "no restart counted for the adopted replica");
    assert_eq!(after.len(), 2);

    cluster.api.delete_service(pb::DeleteServiceRequest { name: "web".into(), purge_volumes: false }).await.expect("delete");
    cluster.wait_replicas("", "every replica gone", |r| r.is_empty()).await;
    cluster.wait_node_empty().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_after_a_killed_agent_leaves_nothing() {
    let mut cluster = Cluster::start("teardown").await;
    let image = cluster.image.clone();
    cluster.apply(&web_manifest(&image, 2)).await;
    let replicas = cluster.wait_replicas("web", "2 running, ready replicas", |r| r.len() == 2 && r.iter().all(running_ready)).await;
    cluster.kill_agent();
    let out = std::process::Command::new(common::AGENT)
        .arg("teardown")
        .arg("--state-dir")
        .arg(cluster.state_dir())
        .args(["--cgroup-parent", &cluster.cgroup_parent, "--bridge", &cluster.bridge])
        .output()
        .expect("orch-agent teardown");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for replica in &replicas {
        assert!(!std::path::Path::new(&format!("/proc/{}", status(replica).host_pid)).exists(), "{} still runs", replica.id);
    }
    cluster.assert_node_empty();
    let link = std::process::Command::new("ip").args(["link", "show", &cluster.bridge]).output().expect("ip link");
    assert!(!link.status.success(), "the bridge {} is still there", cluster.bridge);
    assert!(!std::path::Path::new(&format!("/run/netns/{}-lb", cluster.bridge)).exists(), "the balancer namespace is still there");
    assert!(!cluster.state_dir().join("node.json").exists() && !cluster.state_dir().join("logs").exists(), "records left");
}

/// A 500 MB image pulled from the registry while the node heartbeats every 300 ms
/// against a 3 s lease: the download, the verification and the unpack run off the
/// agent's async workers, so the node is Ready at every look and no NodeNotReady is
/// recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_flowing_during_a_500_mb_pull() {
    let mut cluster = Cluster::start("bigpull").await;
    let (registry, _) = common::oci::registry();
    let layout = cluster.dir.path().join("large");
    common::oci::write_layout_with_large_layer(&layout, "v1", &[common::oci::busybox_layer()], 500 << 20, &["sleep", "1000"]);
    let repository = format!("orch-test/large-{}", std::process::id());
    common::oci::push(&layout, "v1", &registry, &repository);
    std::fs::remove_dir_all(&layout).expect("the layout is in the registry now");
    cluster.apply(&format!("apiVersion: orch/v1\nkind: Service\nmetadata: {{name: large}}\nspec:\n  image: {registry}/{repository}:v1\n")).await;
    let start = Instant::now();
    let mut looks = 0;
    loop {
        let nodes = cluster.api.list_nodes(pb::ListNodesRequest {}).await.expect("list nodes").into_inner().nodes;
        assert!(nodes.len() == 1 && nodes[0].ready, "the node turned NotReady during the pull (look {looks}); agent log:\n{}", cluster.agent_log());
        looks += 1;
        if cluster.replicas("large").await.iter().any(running_ready) {
            break;
        }
        assert!(start.elapsed() < LIMIT * 3, "the 500 MB image never ran; agent log:\n{}", cluster.agent_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let not_ready: Vec<_> = cluster.events_of("node/node-1").await.into_iter().filter(|e| e.kind == "NodeNotReady").collect();
    assert!(not_ready.is_empty(), "{not_ready:?}");
    eprintln!("the node was Ready at all {looks} looks during the pull");
    let large = cluster.state_dir().join("images/layers/sha256");
    let unpacked = std::fs::read_dir(&large).expect("layers").flatten().any(|e| e.path().join("large.bin").metadata().is_ok_and(|m| m.len() == 500 << 20));
    assert!(unpacked, "the 500 MB file is in an unpacked layer");
    cluster.api.delete_service(pb::DeleteServiceRequest { name: "large".into(), purge_volumes: false }).await.expect("delete");
    cluster.wait_replicas("large", "the replica gone", |r| r.is_empty()).await;
    cluster.wait_node_empty().await;
}
