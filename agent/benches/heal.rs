//! Self-healing speed: kills a replica's process 20 times (`kill -9` of its host PID) and
//! reports, for each death, the time until the replacement runs — from the agent's own
//! timestamps (the exit the shim recorded → the new start) and from an outside observer
//! polling the API —, until it serves TCP on its address again (observer), and until it
//! is Ready again (observer; bounded below by the readiness probe's 1 s period). Median
//! and max, beside what the peers do by default: kubelet restarts after a back-off that
//! starts at 10 s, Swarm after its 5 s restart delay. Aim: under 100 ms to running.
//!
//!   sudo bash deploy/bench/heal.sh [KILLS]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a failure is the point

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::cluster::{running_ready, status, Cluster};
use orch_api::pb;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn report(what: &str, values: &mut [f64]) {
    let max = values.iter().copied().fold(f64::NAN, f64::max);
    println!("{what:<46} median {:>7.1} ms   max {:>7.1} ms", median(values), max);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let kills: usize = std::env::var("ORCH_BENCH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let mut cluster = Cluster::start("heal-bench").await;
    let manifest = format!(
        "apiVersion: orch/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  image: {}\n  \
         command: [sh, -c, 'mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 80 -h /www']\n  \
         ports: [{{name: http, containerPort: 80}}]\n  \
         probes: {{readiness: {{tcpSocket: {{port: 80}}, periodSeconds: 1}}}}\n  \
         restartBackoff: {{resetAfterSeconds: 1}}\n  terminationGracePeriodSeconds: 1\n",
        cluster.image
    );
    cluster.apply(&manifest).await;
    let (mut agent_running, mut observed_running, mut serving, mut ready) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..kills {
        let replicas = cluster.wait_replicas("web", "a ready replica", |r| r.len() == 1 && running_ready(&r[0])).await;
        let before = status(&replicas[0]);
        // Let each run last past resetAfterSeconds, so that every death is a first restart.
        let ran = u64::try_from(now_ms() - before.started_unix_ms).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(1100u64.saturating_sub(ran))).await;
        let address: SocketAddr = format!("{}:80", before.ip).parse().expect("replica address");
        let killed_at = Instant::now();
        let killed_ms = now_ms();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(before.host_pid).expect("pid")), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
        // The observer: a TCP connect every 2 ms until the replacement serves.
        let observer = tokio::task::spawn_blocking(move || loop {
            std::thread::sleep(Duration::from_millis(2));
            if TcpStream::connect_timeout(&address, Duration::from_millis(50)).is_ok() {
                return killed_at.elapsed();
            }
        });
        let mut running_seen = None;
        let after = loop {
            let now = cluster.replicas("web").await.first().map(status).unwrap_or_default();
            if now.restarts > before.restarts && now.phase() == pb::ReplicaPhase::Running && running_seen.is_none() {
                running_seen = Some(killed_at.elapsed());
            }
            if now.restarts > before.restarts && now.ready {
                break now;
            }
            assert!(killed_at.elapsed() < Duration::from_secs(60), "round {round}: no replacement");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        ready.push(killed_at.elapsed().as_secs_f64() * 1000.0);
        observed_running.push(running_seen.unwrap_or_default().as_secs_f64() * 1000.0);
        serving.push(observer.await.expect("observer").as_secs_f64() * 1000.0);
        // The agent's clock: its new start against the moment of the kill (the shim's
        // exit record is cleared from the status once the replacement runs).
        agent_running.push((after.started_unix_ms - killed_ms).max(0) as f64);
    }
    println!("{kills} kills of a replica's process (kill -9), one node:");
    report("death → replacement running (agent's clock)", &mut agent_running);
    report("death → running in the API (observer)", &mut observed_running);
    report("death → serving TCP again (observer)", &mut serving);
    report("death → Ready again (observer, 1 s probe)", &mut ready);
    let running = median(&mut agent_running);
    println!(
        "peers' defaults: kubelet restarts after a 10 s back-off (ratio {:.4}), Swarm after its 5 s delay (ratio {:.4}); aim < 100 ms to running: {}",
        running / 10_000.0,
        running / 5_000.0,
        if running < 100.0 { "met" } else { "not met" }
    );
    cluster.api.delete_service(pb::DeleteServiceRequest { name: "web".into(), purge_volumes: false }).await.expect("delete");
    cluster.wait_replicas("", "every replica gone", |r| r.is_empty()).await;
}
