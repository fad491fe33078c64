//! Supervision primitives through the library, as the agent will use them: start, wait,
//! signal, stop with a grace period, stats, and re-adoption by a new runtime.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Sandbox, AGENT, INIT};
use nix::sys::signal::Signal;
use orch_agent::cgroups::Limits;
use orch_agent::runtime::{ContainerSpec, Runtime, RuntimeConfig, Security, Stdio};

fn runtime(sandbox: &Sandbox) -> Runtime {
    Runtime::new(RuntimeConfig { state_dir: sandbox.state_dir(), cgroup_parent: sandbox.cgroup_parent.clone(), init_exe: PathBuf::from(AGENT) })
        .expect("runtime")
}

fn spec(sandbox: &Sandbox, id: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        id: id.to_owned(),
        layers: vec![sandbox.rootfs()],
        hostname: None,
        args: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![],
        cwd: None,
        limits: Limits { memory_bytes: Some(64 << 20), pids: Some(32), ..Limits::default() },
        stdio: Stdio::log_file(sandbox.root.path().join(format!("{id}.log"))),
        user_namespace: None,
        user: None,
        image: None,
        mounts: vec![],
        security: Security::default(),
        system: None,
        stop_signal: orch_api::signal::SIGTERM,
    }
}

/// Waits (bounded) until the container's log holds `text`.
async fn wait_for_log(sandbox: &Sandbox, id: &str, text: &str) {
    let path = sandbox.root.path().join(format!("{id}.log"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if common::log_text(&path).contains(text) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text:?} never appeared in {}", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn stats_signal_and_wait() {
    let sandbox = Sandbox::new("stats");
    let runtime = runtime(&sandbox);
    let container = runtime.start(&spec(&sandbox, "stats", "trap 'echo got-usr1' USR1; echo ready; while true; do sleep 0.05; done")).await.expect("start");
    wait_for_log(&sandbox, "stats", "ready").await;
    let stats = container.stats().expect("stats");
    assert!(stats.pids >= 2, "init and the shell: {stats:?}");
    assert!(stats.memory_bytes > 0, "{stats:?}");
    container.signal(Signal::SIGUSR1 as i32).expect("signal");
    wait_for_log(&sandbox, "stats", "got-usr1").await;
    let exit = container.stop(Duration::from_secs(10), orch_api::signal::SIGTERM).await;
    assert_eq!(exit.code, 143);
    assert!(!exit.oom_killed);
    assert!(container.signal(Signal::SIGTERM as i32).is_err(), "a stopped container cannot be signalled");
    container.remove().await.expect("remove");
    sandbox.assert_clean("stats");
}

#[tokio::test]
async fn a_real_time_stop_signal_reaches_the_command_through_the_init() {
    // systemd stops on SIGRTMIN+3: the init passes real-time signals on as it does SIGTERM.
    let sandbox = Sandbox::new("rtstop");
    let runtime = runtime(&sandbox);
    let rtmin_3 = orch_api::signal::SIGRTMIN_3;
    let script = format!("trap 'echo got-{rtmin_3}; exit 7' {rtmin_3}; echo ready; while true; do sleep 0.05; done");
    let container = runtime.start(&ContainerSpec { stop_signal: rtmin_3, ..spec(&sandbox, "rtstop", &script) }).await.expect("start");
    wait_for_log(&sandbox, "rtstop", "ready").await;
    let exit = container.stop(Duration::from_secs(30), orch_api::signal::SIGTERM).await;
    assert_eq!((exit.code, exit.signal), (7, None), "the command's trap ran (not SIGKILL after the grace period)");
    wait_for_log(&sandbox, "rtstop", &format!("got-{rtmin_3}")).await;
    container.remove().await.expect("remove");
    sandbox.assert_clean("rtstop");
}

#[tokio::test]
async fn a_command_killed_by_a_real_time_signal_ends_the_container_with_128_plus_it() {
    // No handler: SIGRTMIN+3's default action ends the command, and the init reports it
    // (nix's wait status cannot hold a real-time signal; the init must not lose the end).
    let sandbox = Sandbox::new("rtkill");
    let runtime = runtime(&sandbox);
    let rtmin_3 = orch_api::signal::SIGRTMIN_3;
    let container = runtime.start(&ContainerSpec { stop_signal: rtmin_3, ..spec(&sandbox, "rtkill", "echo ready; exec sleep 1000") }).await.expect("start");
    wait_for_log(&sandbox, "rtkill", "ready").await;
    let exit = container.stop(Duration::from_secs(60), orch_api::signal::SIGTERM).await;
    assert_eq!(exit.code, 128 + rtmin_3, "ended by its stop signal, not SIGKILL after the grace period: {exit:?}");
    container.remove().await.expect("remove");
    sandbox.assert_clean("rtkill");
}

/// The binary each shim runs, from its PID.
fn exe_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe")
}

#[tokio::test]
async fn shims_run_the_small_init_beside_the_agent_and_one_of_another_build_hands_over() {
    let sandbox = Sandbox::new("shim-exe");
    // `orch-init` lies beside the agent binary, as cargo builds and install.sh installs them.
    let runtime = runtime(&sandbox);
    assert_eq!(runtime.shim_exe(), Path::new(INIT));
    let container = runtime.start(&spec(&sandbox, "small", "echo ready; tr '\\0' ' ' < /proc/1/cmdline; echo; sleep 30")).await.expect("start");
    wait_for_log(&sandbox, "small", "ready").await;
    assert_eq!(exe_of(container.state().shim_pid), Path::new(INIT));
    wait_for_log(&sandbox, "small", "orch-init __init --build").await;
    let log = common::log_text(&sandbox.root.path().join("small.log"));
    assert!(!log.contains('/'), "the container's PID 1 shows no host path: {log}");
    container.kill().await;
    container.remove().await.expect("remove");
    sandbox.assert_clean("small");

    // An `orch-init` of another build than the agent's (here: one that says so) hands the
    // start over to the agent's binary, unread, and the container starts all the same.
    let bin = sandbox.root.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir bin");
    std::os::unix::fs::symlink(AGENT, bin.join("orch-agent")).expect("symlink the agent");
    let script = format!("#!/bin/sh\nexec {INIT} \"$1\" --build another-build --fallback orch-agent\n");
    std::fs::write(bin.join("orch-init"), script).expect("write orch-init");
    std::fs::set_permissions(bin.join("orch-init"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let runtime =
        Runtime::new(RuntimeConfig { state_dir: sandbox.state_dir(), cgroup_parent: sandbox.cgroup_parent.clone(), init_exe: bin.join("orch-agent") })
            .expect("runtime");
    assert_eq!(runtime.shim_exe(), bin.join("orch-init"));
    let container = runtime.start(&spec(&sandbox, "handed", "echo ready; sleep 30")).await.expect("start");
    wait_for_log(&sandbox, "handed", "ready").await;
    assert_eq!(exe_of(container.state().shim_pid), Path::new(AGENT), "the shim is the agent's binary (beside the real orch-init)");
    let exit = container.stop(Duration::from_secs(5), orch_api::signal::SIGTERM).await;
    assert_eq!(exit.code, 143, "{exit:?}");
    container.remove().await.expect("remove");
    sandbox.assert_clean("handed");
}

#[tokio::test]
async fn stop_escalates_to_sigkill_after_the_grace_period() {
    let sandbox = Sandbox::new("grace");
    let runtime = runtime(&sandbox);
    let container = runtime.start(&spec(&sandbox, "grace", "trap '' TERM; echo ready; while true; do sleep 0.05; done")).await.expect("start");
    wait_for_log(&sandbox, "grace", "ready").await;
    let exit = container.stop(Duration::from_millis(300), orch_api::signal::SIGTERM).await;
    assert_eq!((exit.code, exit.signal), (137, Some(9)), "SIGTERM ignored, so SIGKILL: {exit:?}");
    container.remove().await.expect("remove");
    sandbox.assert_clean("grace");
}

#[tokio::test]
async fn a_new_runtime_adopts_a_live_container_with_the_same_pid() {
    let sandbox = Sandbox::new("adopt");
    let first = runtime(&sandbox);
    let container = first.start(&spec(&sandbox, "adopted", "echo ready; exec sleep 1000")).await.expect("start");
    wait_for_log(&sandbox, "adopted", "ready").await;
    let host_pid = container.host_pid();
    // The old agent goes away without stopping anything.
    drop(container);
    drop(first);

    let second = runtime(&sandbox);
    assert_eq!(second.container_ids(), ["adopted"]);
    let adopted = second.adopt("adopted").expect("adopt");
    assert_eq!(adopted.host_pid(), host_pid, "the same process, not a restart");
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(host_pid), None).is_ok(), "still running");
    let exit = adopted.stop(Duration::from_secs(10), orch_api::signal::SIGTERM).await;
    assert_eq!(exit.code, 143, "the exit comes from the shim's record: {exit:?}");
    adopted.remove().await.expect("remove");
    sandbox.assert_clean("adopted");
}

#[tokio::test]
async fn a_recycled_pid_is_never_mistaken_for_the_container() {
    let sandbox = Sandbox::new("recycled");
    let runtime = runtime(&sandbox);
    let container = runtime.start(&spec(&sandbox, "recycled", "echo ready; exec sleep 1000")).await.expect("start");
    wait_for_log(&sandbox, "recycled", "ready").await;
    let state_path = sandbox.state_dir().join("containers/recycled/state.json");
    let original = std::fs::read_to_string(&state_path).expect("state");
    // Same PIDs, other start times: as if both PIDs now belonged to other processes.
    let mut state: serde_json::Value = serde_json::from_str(&original).expect("json");
    state["shim_start_ticks"] = serde_json::json!(1);
    state["init_start_ticks"] = serde_json::json!(1);
    std::fs::write(&state_path, state.to_string()).expect("write");
    let impostor = runtime.adopt("recycled").expect("adopt");
    assert!(impostor.signal(Signal::SIGKILL as i32).is_err(), "must not signal a process it cannot prove is the container");
    std::fs::write(&state_path, original).expect("restore");
    drop(impostor);
    let exit = container.stop(Duration::from_secs(10), orch_api::signal::SIGTERM).await;
    assert_eq!(exit.code, 143);
    container.remove().await.expect("remove");
    sandbox.assert_clean("recycled");
}

#[tokio::test]
async fn a_failed_start_leaves_nothing() {
    let sandbox = Sandbox::new("failstart");
    let runtime = runtime(&sandbox);
    let mut bad = spec(&sandbox, "failed", "true");
    bad.args = vec!["/no/such/binary".into()];
    let err = runtime.start(&bad).await.err().expect("start must fail");
    assert_eq!(err.exit_code(), 127, "{err}");
    sandbox.assert_clean("failed");
    let mut bad_cwd = spec(&sandbox, "badcwd", "true");
    bad_cwd.cwd = Some("/does/not/exist".into());
    let err = runtime.start(&bad_cwd).await.err().expect("start must fail");
    assert!(err.to_string().contains("/does/not/exist"), "{err}");
    sandbox.assert_clean("badcwd");
    let mut bad_name = spec(&sandbox, "Bad_Name", "true");
    bad_name.id = "Bad_Name".into();
    assert!(runtime.start(&bad_name).await.is_err());
}

/// A container's command starts with every signal at its default action and the usual
/// open files limit, whatever the agent's own (Rust ignores SIGPIPE; the agent raises
/// its limit): `yes | head` ends, as under any runtime.
#[tokio::test]
async fn a_command_starts_with_default_signals_and_limits() {
    let sandbox = Sandbox::new("defaults");
    let runtime = runtime(&sandbox);
    let script = "yes | head -c 5 >/dev/null; grep -E '^(SigIgn|SigBlk)' /proc/self/status; ulimit -n; echo done";
    let container = runtime.start(&spec(&sandbox, "defaults", script)).await.expect("start");
    let exit = tokio::time::timeout(Duration::from_secs(60), container.wait()).await.expect("`yes | head` ended: SIGPIPE is not ignored");
    assert_eq!(exit.code, 0);
    let log = common::log_text(&sandbox.root.path().join("defaults.log"));
    let mask = |name: &str| {
        let line = log.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("no {name} in {log}"));
        u64::from_str_radix(line.trim(), 16).expect("a hex mask")
    };
    // Signals 1-31 (bits 0-30); 32 and 33 are glibc's own, which it sets up itself.
    assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "no standard signal ignored: {log}");
    assert_eq!(mask("SigBlk:"), 0, "none blocked: {log}");
    assert!(log.contains("\n1024\n"), "the open files limit: {log}");
    container.remove().await.expect("remove");
    sandbox.assert_clean("defaults");
}
