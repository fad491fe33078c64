//! A thousand agents on one controller: the real `orch-controller` binary in a process of
//! its own (so its memory and CPU are its own), on an etcd this benchmark starts on
//! loopback and on the embedded store, with `FakeAgent`s over real gRPC in this process
//! (heartbeats every 250 ms, as the agent's default). For each store:
//!
//! 1. register every node (each claims its pod subnet: `--cluster-cidr` sized for them);
//! 2. apply `REPLICAS` replicas in 10 services → every one Running;
//! 3. a node-loss storm: `LOST` agents killed at once → every replica Running again, the
//!    lost nodes' replicas replaced elsewhere and no other replica moved or restarted.
//!
//! Prints, per phase, the time to converge, the controller's CPU seconds and store
//! requests per replica, its peak RSS, and leadership losses (none allowed: the
//! benchmark fails); beside it the pure scheduler on the same input, as the peer the
//! end-to-end rate is a ratio of.
//!
//!   sudo bash deploy/bench/controller.sh 10000 1000      (REPLICAS NODES; LOST = NODES/10)
//!   ORCH_BENCH_REPLICAS=10000 ORCH_BENCH_NODES=1000 ORCH_BENCH_LOST=100 cargo bench -p orch-controller --bench fleet
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use orch_controller::testing::{env_number, process_usage, services_manifest, FakeAgent, FakeAgentConfig};
use tonic::transport::Channel;

const SERVICES: usize = 10;
const HEARTBEAT: Duration = Duration::from_millis(250);

/// A loopback port nobody listens on now.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// A child process, in a process group of its own, killed with its group (a wrapper's
/// child too) and reaped when dropped.
struct Process {
    child: Child,
    name: &'static str,
}

impl Drop for Process {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited: {status}", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

/// `GET path` on a loopback HTTP server, the body.
fn http_get(address: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).map_err(|e| format!("{address}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    Ok(answer.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

/// The controller's store requests so far (every operation's count in its latency
/// histogram), from its /metrics.
fn store_requests(metrics: SocketAddr) -> Result<u64, String> {
    let text = http_get(metrics, "/metrics")?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("orch_store_operation_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>() as u64)
}

fn start_etcd(dir: &Path) -> Result<(Process, String), String> {
    let (client, peer) = (free_port()?, free_port()?);
    let endpoint = format!("127.0.0.1:{client}");
    let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
    let child = Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &format!("http://{endpoint}"), "--advertise-client-urls", &format!("http://{endpoint}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}"), "--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("bench=http://127.0.0.1:{peer}"), "--quota-backend-bytes", "4294967296"])
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("starting etcd (Debian's etcd-server; deploy/bench/controller.sh installs it): {e}"))?;
    Ok((Process { child, name: "etcd" }, endpoint))
}

struct ControllerProcess {
    process: Process,
    api: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

fn start_controller(store: &str, nodes: usize, dir: &Path) -> Result<ControllerProcess, String> {
    let (api, metrics): (SocketAddr, SocketAddr) =
        (format!("127.0.0.1:{}", free_port()?).parse().unwrap(), format!("127.0.0.1:{}", free_port()?).parse().unwrap());
    // Each node takes a /24 of the cluster network: a /16 holds 254, a /14 1,022, a /12 4,094.
    let prefix = match nodes {
        0..=254 => 16,
        255..=1022 => 14,
        _ => 12,
    };
    let log = dir.join("controller.log");
    // ORCH_BENCH_WRAPPER runs the controller under a tool (e.g. `heaptrack`); the figures
    // from /proc are then the tool's.
    let wrapper = std::env::var("ORCH_BENCH_WRAPPER").unwrap_or_default();
    let mut command = match wrapper.split_whitespace().collect::<Vec<_>>().split_first() {
        Some((tool, args)) => {
            let mut command = Command::new(tool);
            command.args(args).arg(env!("CARGO_BIN_EXE_orch-controller"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_orch-controller")),
    };
    let child = command
        .process_group(0)
        .args(["--insecure-listen", &api.to_string(), "--metrics-listen", &metrics.to_string(), "--store", store])
        .args(["--cluster-cidr", &format!("10.64.0.0/{prefix}"), "--identity", "bench"])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("starting orch-controller: {e}"))?;
    Ok(ControllerProcess { process: Process { child, name: "orch-controller" }, api, metrics, log })
}

/// Replica id → (node, Running), as the API lists them.
async fn placements(api: &mut ApiClient<Channel>) -> Result<BTreeMap<String, (String, bool)>, String> {
    let listed = api.list_replicas(pb::ListReplicasRequest { service: String::new() }).await.map_err(|e| e.to_string())?.into_inner().replicas;
    Ok(listed
        .into_iter()
        .map(|r| {
            let running = r.status.as_ref().is_some_and(|s| s.phase() == pb::ReplicaPhase::Running);
            (r.id, (r.node, running))
        })
        .collect())
}

/// What one phase cost the controller.
struct Phase {
    took: Duration,
    cpu: f64,
    store_requests: u64,
    /// The fake agents' own longest time between two heartbeats in the phase: over a
    /// second, the bench's process (sharing the cores) was late, and the controller may
    /// rightly judge a node silent.
    agents_late: Duration,
}

/// The longest heartbeat gap of any of `agents` since the last look.
fn agents_late(agents: &[FakeAgent]) -> Duration {
    agents.iter().map(FakeAgent::take_longest_beat_gap).max().unwrap_or_default()
}

struct Measure {
    pid: u32,
    metrics: SocketAddr,
    start: Instant,
    cpu: f64,
    requests: u64,
}

impl Measure {
    fn start(controller: &ControllerProcess) -> Result<Measure, String> {
        let pid = controller.process.pid();
        Ok(Measure {
            pid,
            metrics: controller.metrics,
            start: Instant::now(),
            cpu: process_usage(&pid.to_string()).0,
            requests: store_requests(controller.metrics)?,
        })
    }

    fn end(self, agents: &[FakeAgent]) -> Result<Phase, String> {
        let took = self.start.elapsed();
        Ok(Phase {
            took,
            cpu: process_usage(&self.pid.to_string()).0 - self.cpu,
            store_requests: store_requests(self.metrics)? - self.requests,
            agents_late: agents_late(agents),
        })
    }
}

/// Polls `done` every 250 ms until it holds, for at most `limit`.
async fn wait<F, Fut>(what: &str, limit: Duration, controller: &mut ControllerProcess, mut done: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>, String>>,
{
    let start = Instant::now();
    loop {
        controller.process.check_alive()?;
        match done().await? {
            None => return Ok(()),
            Some(progress) if start.elapsed() > limit => return Err(format!("{what}: not within {limit:?} ({progress})")),
            Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

struct Run {
    register: Phase,
    apply: Phase,
    heal: Phase,
    moved: usize,
    lost_replicas: usize,
    peak_rss_mib: f64,
    leadership_lost: usize,
    /// The controller's warnings, each message with how often it came.
    warnings: Vec<(usize, String)>,
}

/// Each distinct warning of a log (its message, fields aside) and how often it came, the
/// most frequent first.
fn warnings(log: &str) -> Vec<(usize, String)> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("WARN")) {
        // "<time>  WARN <target>: <message> <fields…>" without colours (not a terminal).
        let message = line.split_once(": ").map_or(line, |(_, rest)| rest);
        let message = message.split(" error=").next().unwrap_or(message);
        *counts.entry(message.to_owned()).or_default() += 1;
    }
    let mut counts: Vec<(usize, String)> = counts.into_iter().map(|(message, n)| (n, message)).collect();
    counts.sort_by_key(|count| std::cmp::Reverse(count.0));
    counts
}

async fn run(store: &str, nodes: usize, replicas: usize, lost: usize, dir: &Path) -> Result<Run, String> {
    let limit = Duration::from_secs(60).max(Duration::from_millis(20 * replicas as u64));
    let mut controller = start_controller(store, nodes, dir)?;
    let mut api = ApiClient::new(Channel::from_shared(format!("http://{}", controller.api)).map_err(|e| e.to_string())?.connect_lazy());
    let metrics = controller.metrics;
    wait("the controller to lead", Duration::from_secs(30), &mut controller, || async move {
        Ok(match http_get(metrics, "/readyz") {
            Ok(body) if body.contains("leading") => None,
            other => Some(format!("{other:?}")),
        })
    })
    .await?;

    let measure = Measure::start(&controller)?;
    let mut agents: Vec<FakeAgent> = (0..nodes)
        .map(|i| {
            let mut config = FakeAgentConfig::new(&format!("node-{i:04}"), &format!("192.0.2.{}", 1 + i % 250));
            config.heartbeat = HEARTBEAT;
            FakeAgent::start(controller.api, config)
        })
        .collect();
    wait("every node to register", limit, &mut controller, || {
        let mut api = api.clone();
        async move {
            let listed = api.list_nodes(pb::ListNodesRequest {}).await.map_err(|e| e.to_string())?.into_inner().nodes;
            let ready = listed.iter().filter(|n| n.ready).count();
            Ok((ready < nodes).then(|| format!("{ready} of {nodes} Ready")))
        }
    })
    .await?;
    let register = measure.end(&agents)?;

    let measure = Measure::start(&controller)?;
    let request = pb::ApplyRequest { sources: vec![pb::ManifestSource { name: "fleet.yaml".into(), content: services_manifest("svc", SERVICES, replicas) }] };
    api.apply(request).await.map_err(|e| e.to_string())?;
    let all_running = |wanted: usize| {
        let agents = &agents;
        let api = api.clone();
        move || {
            let mut api = api.clone();
            async move {
                // The agents' own count first: listing 10,000 replicas is work for the
                // controller, done only once the agents run them all.
                let on_agents: usize = agents.iter().map(|a| a.running().len()).sum();
                if on_agents < wanted {
                    return Ok(Some(format!("the agents run {on_agents}")));
                }
                let listed = placements(&mut api).await?;
                let running = listed.values().filter(|(_, running)| *running).count();
                Ok((running < wanted || listed.len() != wanted).then(|| format!("{running} of {} Running", listed.len())))
            }
        }
    };
    wait("every replica to run", limit, &mut controller, all_running(replicas)).await?;
    let apply = measure.end(&agents)?;

    // The storm: the first LOST agents killed at once (their connections close, their
    // heartbeats stop).
    let before = placements(&mut api).await?;
    let killed: BTreeSet<String> = agents.drain(..lost).map(|agent| agent.name.clone()).collect();
    let lost_replicas = before.values().filter(|(node, _)| killed.contains(node)).count();
    let measure = Measure::start(&controller)?;
    let survivors = &agents;
    wait("the lost nodes' replicas to run elsewhere", limit, &mut controller, || {
        let (mut api, killed) = (api.clone(), &killed);
        async move {
            let on_agents: usize = survivors.iter().map(|a| a.running().len()).sum();
            if on_agents < replicas {
                return Ok(Some(format!("the surviving agents run {on_agents}")));
            }
            let listed = placements(&mut api).await?;
            let running = listed.values().filter(|(node, running)| *running && !killed.contains(node)).count();
            Ok((running < replicas || listed.len() != replicas).then(|| format!("{running} of {} Running on the survivors", listed.len())))
        }
    })
    .await?;
    let heal = measure.end(&agents)?;
    let after = placements(&mut api).await?;
    // Kept: the same replica on the same node. Everything else was moved or replaced.
    let kept = before.iter().filter(|(id, (node, _))| after.get(*id).is_some_and(|(now, _)| now == node)).count();
    let moved = replicas - kept;
    let untouched = before.iter().filter(|(_, (node, _))| !killed.contains(node)).all(|(id, (node, _))| after.get(id).is_some_and(|(now, _)| now == node));
    if !untouched {
        return Err(format!(
            "a replica on a surviving node moved or restarted ({moved} moved, {lost_replicas} were on the lost nodes; the agents' longest heartbeat gap {:.1} s)",
            heal.agents_late.as_secs_f64()
        ));
    }

    let (_, peak_rss_mib) = process_usage(&controller.process.pid().to_string());
    let log = std::fs::read_to_string(&controller.log).unwrap_or_default();
    let leadership_lost = log.matches("lost leadership").count();
    drop(agents);
    drop(controller);
    Ok(Run { register, apply, heal, moved, lost_replicas, peak_rss_mib, leadership_lost, warnings: warnings(&log) })
}

fn report(name: &str, run: &Run, nodes: usize, replicas: usize, lost: usize, pure: Duration) {
    let per_replica = |phase: &Phase| phase.store_requests as f64 / replicas as f64;
    println!(
        "{name:>8}: {nodes} nodes registered in {:.1} s ({:.1} CPU s, {:.1} store requests per node)",
        run.register.took.as_secs_f64(),
        run.register.cpu,
        run.register.store_requests as f64 / nodes as f64
    );
    println!(
        "{name:>8}: apply → {replicas} Running in {:.1} s = {:.0} replicas/s, ratio to the pure scheduler {:.4} ({:.1} CPU s, {:.1} store requests per replica)",
        run.apply.took.as_secs_f64(),
        replicas as f64 / run.apply.took.as_secs_f64(),
        (replicas as f64 / run.apply.took.as_secs_f64()) / (replicas as f64 / pure.as_secs_f64()),
        run.apply.cpu,
        per_replica(&run.apply)
    );
    println!(
        "{name:>8}: {lost} nodes lost at once → their {} replicas Running elsewhere in {:.1} s (node lease + grace: 10 s); {} moved, none other ({:.1} CPU s, {:.1} store requests per moved replica)",
        run.lost_replicas,
        run.heal.took.as_secs_f64(),
        run.moved,
        run.heal.cpu,
        run.heal.store_requests as f64 / run.moved.max(1) as f64
    );
    println!("{name:>8}: controller peak RSS {:.0} MiB; leadership lost {} times", run.peak_rss_mib, run.leadership_lost);
    println!(
        "{name:>8}: the fake agents' own longest heartbeat gap (250 ms wanted): registration {:.1} s, apply {:.1} s, loss {:.1} s",
        run.register.agents_late.as_secs_f64(),
        run.apply.agents_late.as_secs_f64(),
        run.heal.agents_late.as_secs_f64()
    );
    for (count, message) in run.warnings.iter().take(8) {
        println!("{name:>8}: the controller warned {count}× {message}");
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    let nodes = env_number("ORCH_BENCH_NODES", 1000).max(2);
    let replicas = env_number("ORCH_BENCH_REPLICAS", 10_000).max(SERVICES) / SERVICES * SERVICES;
    let lost = env_number("ORCH_BENCH_LOST", nodes / 10).clamp(1, nodes - 1);
    let stores = std::env::var("ORCH_BENCH_STORES").unwrap_or_else(|_| "etcd,embedded".into());
    let pure = orch_controller::testing::time_pure_scheduler(replicas, nodes, SERVICES);
    println!(
        "pure scheduler: {replicas} replicas over {nodes} nodes in {:.1} ms = {:.0} bindings/s; agents heartbeat every {} ms",
        pure.as_secs_f64() * 1000.0,
        replicas as f64 / pure.as_secs_f64(),
        HEARTBEAT.as_millis()
    );
    let mut failed = false;
    for name in stores.split(',') {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(error) => {
                eprintln!("temporary directory: {error}");
                return std::process::ExitCode::FAILURE;
            }
        };
        let (etcd, store) = match name {
            "etcd" => match start_etcd(dir.path()) {
                Ok((etcd, endpoint)) => (Some(etcd), format!("etcd://{endpoint}")),
                Err(error) => {
                    eprintln!("{error}");
                    return std::process::ExitCode::FAILURE;
                }
            },
            "embedded" => (None, format!("embedded:{}", dir.path().join("controller.redb").display())),
            other => {
                eprintln!("ORCH_BENCH_STORES: unknown store {other:?} (etcd, embedded)");
                return std::process::ExitCode::FAILURE;
            }
        };
        if std::env::var_os("ORCH_BENCH_KEEP").is_some() {
            eprintln!("{name}: the controller's and etcd's logs are kept in {}", dir.path().display());
        }
        match run(&store, nodes, replicas, lost, dir.path()).await {
            Ok(run) => {
                report(name, &run, nodes, replicas, lost, pure);
                if run.leadership_lost > 0 {
                    eprintln!("{name}: the controller lost its leadership under load");
                    failed = true;
                }
            }
            Err(error) => {
                let log = std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("{name} run failed: {error}\nthe controller's log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                failed = true;
            }
        }
        drop(etcd);
        if std::env::var_os("ORCH_BENCH_KEEP").is_some() {
            let _ = dir.keep();
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
