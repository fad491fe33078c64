//! A churn soak on `orch up`: scale up and down, `kill -9` of replicas, rolling updates,
//! round after round for `ORCH_SOAK_SECONDS` (60 by default, as the test command runs
//! it; `deploy/bench/soak.sh MINUTES` for longer). Prints the process's resident
//! memory (with its trend) and open descriptors before and after (controller and agent
//! share the process), and fails if descriptors grew by more than 16 or memory by more
//! than 16 MiB: a descriptor leak per replica, restart or rollout fails at once, a
//! memory leak once it is large enough — the trend is what a longer run judges.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::time::{Duration, Instant};

use common::Up;

/// Resident memory (KiB) and open descriptors of `pid`.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fds").count();
    (rss, fds)
}

/// web's replicas (none while orch up is still starting).
fn replicas(up: &Up) -> Vec<serde_json::Value> {
    let out = up.orch(&["get", "replicas", "-o", "json"]);
    let all: serde_json::Value = if out.status.success() { serde_json::from_slice(&out.stdout).unwrap_or_default() } else { serde_json::Value::Null };
    all.as_array().cloned().unwrap_or_default().into_iter().filter(|r| r["service"] == "web").collect()
}

/// Every replica of web ready, `count` of them, on the current template.
fn settled(up: &Up, count: usize) -> bool {
    let all = replicas(up);
    all.len() == count && all.iter().all(|r| r["ready"] == true) && up.ready_replicas() == count as u64
}

/// One round of churn: up to 3, a replica killed and healed, a rolling update, down to 1.
fn round(up: &Up, n: u32) {
    up.ok(&["scale", "service", "web", "--replicas", "3"]);
    up.wait("3 ready replicas", |u| settled(u, 3));
    let victim = replicas(up).into_iter().next().expect("a replica");
    let (name, restarts) = (victim["name"].as_str().expect("name").to_owned(), victim["restarts"].as_u64().unwrap_or(0));
    let pid = i32::try_from(victim["hostPid"].as_i64().expect("hostPid")).expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    up.wait("the killed replica to heal", |u| {
        replicas(u).iter().any(|r| r["name"] == name.as_str() && r["restarts"].as_u64().unwrap_or(0) > restarts && r["ready"] == true)
    });
    let manifest = up.manifest(3, &format!("round{n}"));
    up.ok(&["apply", "-f", manifest.to_str().expect("path")]);
    assert!(up.ok(&["rollout", "status", "service", "web", "--timeout", "120"]).contains("successfully rolled out"));
    up.ok(&["scale", "service", "web", "--replicas", "1"]);
    up.wait("1 ready replica", |u| settled(u, 1));
}

#[test]
fn churn_leaves_memory_and_descriptors_flat() {
    let seconds: u64 = std::env::var("ORCH_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let mut up = Up::new();
    let manifest = up.manifest(1, "start");
    up.start(&[&manifest]);
    up.wait("1 ready replica", |u| settled(u, 1));
    let pid = up.child.as_ref().expect("orch up").id();
    // A first round warms every path up (allocator arenas, connection pools).
    round(&up, 0);
    let (rss_before, fds_before) = usage(pid);
    let start = Instant::now();
    let mut rounds = 0;
    let mut samples = vec![rss_before];
    while start.elapsed() < Duration::from_secs(seconds) {
        rounds += 1;
        round(&up, rounds);
        samples.push(usage(pid).0);
    }
    let (rss_after, fds_after) = usage(pid);
    // The trend, for a human to judge whether it levels off: RSS at each quarter.
    let quarters: Vec<String> = (0..=4).map(|q| samples[(samples.len() - 1) * q / 4].to_string()).collect();
    println!(
        "soak: {rounds} rounds in {:.0} s (each: scale 1 -> 3, a kill -9 healed, a rolling update of 3, scale 3 -> 1): \
         orch up RSS {rss_before} -> {rss_after} KiB (quarters: {}), open fds {fds_before} -> {fds_after}",
        start.elapsed().as_secs_f64(),
        quarters.join(" ")
    );
    assert!(rounds > 0, "no round finished in {seconds} s");
    assert!(fds_after <= fds_before + 16, "descriptors grew: {fds_before} -> {fds_after}");
    // Growth of more than 16 MiB in a run fails it; less is printed, not judged (the
    // allocator and the store's cache grow for a while before they level off).
    assert!(rss_after <= rss_before + (16 << 10), "memory grew: {rss_before} -> {rss_after} KiB");
    up.interrupt();
    up.assert_nothing_left();
}
