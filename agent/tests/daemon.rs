//! The agent daemon for real, as root: a controller in-process (embedded store, real
//! gRPC on loopback) and `orch-agent serve` as a process running real containers on a
//! bridge of the test's own. Replicas heal from `kill -9` and failing liveness probes,
//! leave the endpoints while not ready, back off when crash-looping, survive `kill -9`
//! of the agent — the VIP answering all along, from the balancer process that outlives
//! it — and leave nothing behind when deleted.
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
      # Failing, it writes 200 KB to stderr: the reason keeps a bounded part of it.
      exec: {{command: [sh, -c, "test ! -f /tmp/sick || {{ yes sick | head -c 200000 >&2; exit 1; }}"]}}
      periodSeconds: 1
      timeoutSeconds: 5
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
    let unhealthy = events.iter().find(|e| e.kind == "Unhealthy" && e.message.contains("liveness")).unwrap_or_else(|| panic!("{events:#?}"));
    assert!(unhealthy.message.contains("sick\nsick") && unhealthy.message.len() <= 2048, "the probe's output, capped: {:?}", unhealthy.message);

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
    // Wait until the node's balancer has the new table (the agent applies it when its
    // next desired set arrives): the controller's endpoints alone are not the data path.
    let start = Instant::now();
    loop {
        let backends = cluster.balancer_backends(&vip.to_string(), 80).await;
        if backends.len() == 2 && !backends.iter().any(|b| b.starts_with(&format!("{unready_ip}:"))) {
            break;
        }
        assert!(start.elapsed() < LIMIT, "the node's balancer still sends the VIP to the not-ready replica: {backends:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    // A node port of this test's own (the ports test uses 30000-30799).
    let node_port = u16::try_from(30800 + std::process::id() % 400).expect("a port");
    cluster.apply(&web_manifest(&image, 2).replace("servicePort: 80}", &format!("servicePort: 80, nodePort: {node_port}}}"))).await;
    let replicas = cluster.wait_replicas("web", "2 running, ready replicas", |r| r.len() == 2 && r.iter().all(running_ready)).await;
    let (kept, killed) = (replicas[0].clone(), replicas[1].clone());
    let vip: Ipv4Addr = cluster.api.get_service(pb::GetServiceRequest { name: "web".into() }).await.expect("get").into_inner().vip.parse().expect("vip");
    let balancer = common::balancer_pids(&cluster.bridge);
    assert_eq!(balancer.len(), 1, "one balancer process for the node network");
    assert_ne!(Some(u32::try_from(balancer[0]).expect("pid")), cluster.agent_pid(), "the balancer is a process of its own");
    // Ready replicas are routed once the node's balancer has the table with them.
    let start = Instant::now();
    while cluster.balancer_backends(&vip.to_string(), 80).await.len() != 2 {
        assert!(start.elapsed() < LIMIT, "the node's balancer never routed the VIP to both replicas");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Requests through the VIP and the node port in turn, 10 ms apart, from before the
    // kill -9 of the agent until after the next agent has adopted the node: every one is
    // answered (the kernel's rules and the balancer process outlive the agent). A VIP
    // request that meets the replica killed below while no agent runs waits in SYN
    // retries until the next agent forgets that endpoint, so the load is counted in
    // requests begun, not in time.
    let flowing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let begun = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = {
        let (flowing, begun) = (std::sync::Arc::clone(&flowing), std::sync::Arc::clone(&begun));
        let targets = [SocketAddr::from((vip, 80)), SocketAddr::from((Ipv4Addr::LOCALHOST, node_port))];
        std::thread::spawn(move || {
            let (mut sent, mut failures) = (0, Vec::new());
            while flowing.load(std::sync::atomic::Ordering::Relaxed) && sent < 6000 {
                let target = targets[sent % 2];
                sent += 1;
                begun.store(sent, std::sync::atomic::Ordering::Relaxed);
                let began = Instant::now();
                if let Err(error) = http_get(target) {
                    failures.push((began, Instant::now(), format!("{target}: {error}")));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (sent, failures)
        })
    };
    wait_for_requests(&begun, 0, "before the agent's kill").await;
    cluster.kill_agent();
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(alive(status(&kept).host_pid) && alive(status(&killed).host_pid), "containers outlive the agent");
    // One replica dies while the agent is away. A request it was serving dies with it
    // (no balancer can answer those bytes); every other request is answered.
    let killing = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(status(&killed).host_pid).expect("pid")), nix::sys::signal::Signal::SIGKILL)
        .expect("kill -9");
    while alive(status(&killed).host_pid) && killing.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dead = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.start_agent();
    let after = cluster
        .wait_replicas("web", "the new agent to adopt one replica and restart the other", |r| {
            r.iter().any(|x| x.id == killed.id && running_ready(x) && status(x).restarts == 1) && r.iter().any(|x| x.id == kept.id && running_ready(x))
        })
        .await;
    // A few requests more, through the adopted node.
    wait_for_requests(&begun, begun.load(std::sync::atomic::Ordering::Relaxed), "after the new agent adopted the node").await;
    flowing.store(false, std::sync::atomic::Ordering::Relaxed);
    let (sent, failures) = load.join().expect("load thread");
    let (on_the_killed, lost): (Vec<_>, Vec<_>) = failures.into_iter().partition(|(began, ended, _)| *began <= dead && *ended >= killing);
    // The kill can catch one request being served and one just queued in httpd's backlog.
    assert!(on_the_killed.len() <= 2, "only requests in flight on the killed replica die with it: {on_the_killed:?}");
    let at = |t: Instant| t.saturating_duration_since(killing).as_millis();
    let lost: Vec<String> =
        lost.into_iter().map(|(began, ended, error)| format!("{error} (from {} ms to {} ms after the kill)", at(began), at(ended))).collect();
    let balancer_log = common::log_text(&cluster.state_dir().join(format!("network/{}.balancer.log", cluster.bridge)));
    assert!(
        lost.is_empty(),
        "the VIP and node port answered {} of {sent} requests through the agent's kill -9 and restart (the replica died {} ms after its kill): {lost:?}\nthe balancer's log:\n{balancer_log}\nthe agent's log:\n{}",
        sent - lost.len(),
        at(dead),
        cluster.agent_log()
    );
    assert_eq!(common::balancer_pids(&cluster.bridge), balancer, "the new agent kept the running balancer");

    // The balancer itself killed: the agent notices (it asks every 5 s), starts another
    // and gives it the table; the VIP answers again.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(balancer[0]), nix::sys::signal::Signal::SIGKILL).expect("kill -9 the balancer");
    let start = Instant::now();
    loop {
        let now = common::balancer_pids(&cluster.bridge);
        if now.len() == 1 && now != balancer && http_get(SocketAddr::from((vip, 80))).is_ok() {
            break;
        }
        assert!(start.elapsed() < LIMIT, "no new balancer answering the VIP after the old one was killed: {now:?}\n{}", cluster.agent_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let adopted = after.iter().find(|r| r.id == kept.id).map(status).expect("kept replica");
    assert_eq!(adopted.host_pid, status(&kept).host_pid, "adopted, not restarted: same host PID");
    assert_eq!(adopted.restarts, 0, "no restart counted for the adopted replica");
    assert_eq!(after.len(), 2);

    cluster.api.delete_service(pb::DeleteServiceRequest { name: "web".into(), purge_volumes: false }).await.expect("delete");
    cluster.wait_replicas("", "every replica gone", |r| r.is_empty()).await;
    cluster.wait_node_empty().await;
}

/// Waits until a load thread has begun four requests more than `after`.
async fn wait_for_requests(begun: &std::sync::atomic::AtomicUsize, after: usize, what: &str) {
    let start = Instant::now();
    while begun.load(std::sync::atomic::Ordering::Relaxed) < after + 4 {
        assert!(start.elapsed() < LIMIT, "the load stopped {what}: {} requests begun", begun.load(std::sync::atomic::Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_after_a_killed_agent_leaves_nothing() {
    let mut cluster = Cluster::start_with("teardown", &["--log-format", "json"]).await;
    let image = cluster.image.clone();
    cluster.apply(&web_manifest(&image, 2)).await;
    let replicas = cluster.wait_replicas("web", "2 running, ready replicas", |r| r.len() == 2 && r.iter().all(running_ready)).await;
    // --log-format json: every line one JSON object; a replica's carry its name and service.
    let log = cluster.agent_log();
    let lines: Vec<serde_json::Value> =
        log.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    for replica in &replicas {
        assert!(
            lines.iter().any(|l| l["fields"]["kind"] == "Started" && l["span"]["replica"] == replica.id.as_str() && l["span"]["service"] == "web"),
            "no Started line in {}'s span:\n{log}",
            replica.id
        );
    }
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
    assert_eq!(common::balancer_pids(&cluster.bridge), Vec::<i32>::new(), "the balancer process outlived the teardown");
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

/// The agent's open files soft limit, from /proc.
fn open_files_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("the agent's limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    line.split_whitespace().nth(3).and_then(|soft| soft.parse().ok()).expect("a number")
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}

/// A node port held by a host process stops no other service, is a node condition while
/// it lasts and opens once freed; a flood of idle connections to another node port is
/// capped per listener and timed out, and the agent still restarts a killed replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_node_port_and_a_flood_of_idle_connections_stop_nothing_else() {
    let mut cluster = Cluster::start_with("ports", &["--max-connections-per-port", "200", "--idle-timeout", "3"]).await;
    let agent = cluster.agent_pid().expect("the agent runs");
    let kernel: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open").expect("fs.nr_open").trim().parse().expect("a number");
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("getrlimit");
    // CAP_SYS_RESOURCE (bit 24) lets it raise the hard limit too; without, it goes up to it.
    let own = std::fs::read_to_string("/proc/self/status").expect("status");
    let effective = own.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok()).expect("CapEff");
    let expected = if effective & (1 << 24) != 0 { kernel.min(1 << 20).max(hard) } else { hard };
    assert_eq!(open_files_limit(agent), expected, "the agent raised its open files limit at start");

    // Node ports of this test's own (other tests use 31000 and up).
    let held_port = u16::try_from(30000 + (std::process::id() % 400) * 2).expect("a port");
    let web_port = held_port + 1;
    let holder = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, held_port)).expect("a host process holds a node port");
    let image = cluster.image.clone();
    let service = |name: &str, port: u16| {
        format!(
            "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  image: {image}\n  \
             command: [sh, -c, \"mkdir -p /www; echo {name} > /www/index.html; exec httpd -f -p 80 -h /www\"]\n  \
             ports: [{{name: http, containerPort: 80, servicePort: 80, nodePort: {port}}}]\n"
        )
    };
    cluster.apply(&format!("{}---\n{}", service("held", held_port), service("web", web_port))).await;
    cluster.wait_replicas("web", "web ready", |r| r.len() == 1 && r.iter().all(running_ready)).await;
    cluster.wait_replicas("held", "held ready", |r| r.len() == 1 && r.iter().all(running_ready)).await;
    // The command (the child of the container's init) starts with the usual limit.
    let init = status(&cluster.replicas("web").await.remove(0)).host_pid;
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).expect("the init's children");
    let command: u32 = children.split_whitespace().next().and_then(|pid| pid.parse().ok()).expect("the command's pid");
    assert_eq!(open_files_limit(command), 1024, "a container starts with the usual limit, not the agent's");
    let web_address = SocketAddr::from((Ipv4Addr::LOCALHOST, web_port));
    let get = |address: SocketAddr| async move { tokio::task::spawn_blocking(move || http_get(address)).await.expect("join") };
    let start = Instant::now();
    while get(web_address).await.ok().as_deref() != Some("web") {
        assert!(start.elapsed() < LIMIT, "the other service's node port never answered; the agent's log:\n{}", cluster.agent_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let node_condition = |nodes: &[pb::Node]| nodes.iter().flat_map(|n| n.conditions.clone()).find(|c| c.r#type == "ListenerFailed");
    let start = Instant::now();
    let condition = loop {
        let nodes = cluster.api.list_nodes(pb::ListNodesRequest {}).await.expect("list nodes").into_inner().nodes;
        if let Some(condition) = node_condition(&nodes) {
            break condition;
        }
        assert!(start.elapsed() < LIMIT, "no ListenerFailed node condition: {nodes:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(condition.message.contains(&format!("node port {held_port}/tcp of service held")), "{condition:?}");
    let events = cluster.events_of("service/held").await;
    assert!(events.iter().any(|e| e.kind == "ListenerFailed" && e.message.contains("in use")), "{events:#?}");

    // The host process lets go: the port opens on the agent's next try, the condition ends.
    drop(holder);
    let held_address = SocketAddr::from((Ipv4Addr::LOCALHOST, held_port));
    let start = Instant::now();
    while get(held_address).await.ok().as_deref() != Some("held") {
        assert!(start.elapsed() < LIMIT, "the freed node port never opened; the agent's log:\n{}", cluster.agent_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = Instant::now();
    loop {
        let nodes = cluster.api.list_nodes(pb::ListNodesRequest {}).await.expect("list nodes").into_inner().nodes;
        if node_condition(&nodes).is_none() {
            break;
        }
        assert!(start.elapsed() < LIMIT, "the ListenerFailed condition stayed: {nodes:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 2,000 idle connections to web's node port: 200 relayed, the rest closed at once.
    let balancer = common::balancer_pids(&cluster.bridge).first().map(|pid| u32::try_from(*pid).expect("pid")).expect("the node's balancer process");
    assert_eq!(open_files_limit(balancer), expected, "the balancer inherits the raised limit");
    let before = open_descriptors(balancer);
    let mut flood = Vec::new();
    for _ in 0..2000 {
        flood.push(tokio::net::TcpStream::connect(web_address).await.expect("the kernel accepts"));
    }
    let during = open_descriptors(balancer);
    assert!(during < before + 200 * 2 + 100, "the balancer holds {during} descriptors (from {before}): the cap did not hold");
    // kill -9 of web's replica: the agent restarts it all the same.
    let victim = cluster.replicas("web").await.remove(0);
    let pid = i32::try_from(status(&victim).host_pid).expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    cluster
        .wait_replicas("web", "the killed replica back during the flood", |r| {
            r.iter().any(|x| x.id == victim.id && running_ready(x) && status(x).restarts == 1)
        })
        .await;
    // The idle ones are closed after 3 s: the port serves new clients again.
    let start = Instant::now();
    while get(web_address).await.ok().as_deref() != Some("web") {
        assert!(start.elapsed() < LIMIT, "idle connections were never timed out; the agent's log:\n{}", cluster.agent_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut closed = 0;
    for stream in &mut flood {
        let mut byte = [0u8; 1];
        use tokio::io::AsyncReadExt;
        // Closed already, or (relayed later, from the kernel's backlog) once idle for 3 s.
        if matches!(tokio::time::timeout(Duration::from_secs(15), stream.read(&mut byte)).await, Ok(Ok(0) | Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(closed, 2000, "every flood connection was closed by the proxy: over the cap at once, the others once idle");
    drop(flood);
    for name in ["web", "held"] {
        cluster.api.delete_service(pb::DeleteServiceRequest { name: name.into(), purge_volumes: false }).await.expect("delete");
    }
    cluster.wait_replicas("", "every replica gone", |r| r.is_empty()).await;
    cluster.wait_node_empty().await;
}
