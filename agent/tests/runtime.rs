//! The container runtime for real, as root: `orch-agent run` in namespaces and cgroups.
//! Each test has its own rootfs, state directory and cgroup parent, so they run in
//! parallel, and each checks that nothing is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{stderr, stdout, Sandbox};

#[test]
fn the_command_is_pid_2_under_our_init_and_sees_only_its_own_processes() {
    let sandbox = Sandbox::new("pids");
    let out = sandbox.run("pids", &[], &["sh", "-c", "echo self=$$; ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("self=2"), "the command runs as PID 2 under PID 1: {text}");
    let pids: Vec<u32> = text.lines().nth(1).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect();
    assert_eq!(pids.first(), Some(&1), "PID 1 exists: {pids:?}");
    assert!(pids.len() <= 8 && pids.iter().all(|p| *p < 50), "only the container's own processes (the shell and its pipeline) are visible: {pids:?}");
    assert!(!pids.contains(&std::process::id()), "the test process must not be visible");
    sandbox.assert_clean("pids");
}

#[test]
fn the_container_has_its_own_hostname() {
    let sandbox = Sandbox::new("hostname");
    let host_before = nix::unistd::gethostname().expect("gethostname");
    let out = sandbox.run("hostname", &["--hostname", "boxy"], &["hostname"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "boxy");
    let out = sandbox.run("default-name", &[], &["hostname"]);
    assert_eq!(stdout(&out).trim(), "default-name", "the hostname defaults to the container name");
    // Its PID 1 is orch's init, by name only: no host path of the agent binary.
    let out = sandbox.run("pid1", &[], &["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline"]);
    assert_eq!(stdout(&out).trim(), "orch-init __init", "{}", stderr(&out));
    assert_eq!(nix::unistd::gethostname().expect("gethostname"), host_before, "the host's hostname is untouched");
    sandbox.assert_clean("hostname");
    sandbox.assert_clean("default-name");
}

#[test]
fn host_files_are_unreachable_and_the_rootfs_is_unchanged() {
    let sandbox = Sandbox::new("files");
    let marker = sandbox.root.path().join("host-secret");
    std::fs::write(&marker, "secret").expect("write marker");
    let script = format!(
        "test -e {m} && echo host-visible; cat /proc/1/root{m} 2>/dev/null && echo via-proc; echo written > /bin/new-file; ls /; echo done",
        m = marker.display()
    );
    let out = sandbox.run("files", &[], &["sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("host-visible") && !text.contains("via-proc"), "host file reachable: {text}");
    assert!(text.contains("done"));
    assert!(!sandbox.rootfs().join("bin/new-file").exists(), "writes go to the overlay's upper layer, not the rootfs");
    sandbox.assert_clean("files");
}

#[test]
fn mounts_stay_inside_and_ctrl_c_stops_and_cleans_up() {
    let sandbox = Sandbox::new("mounts");
    let mut child = sandbox
        .run_command("mounts", &["--stop-timeout", "5"], &["sh", "-c", "grep -c . /proc/mounts; echo ready; exec sleep 1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mount_count: usize = lines.next().expect("a line").expect("read").trim().parse().expect("a count");
    assert_eq!(lines.next().expect("a line").expect("read"), "ready");
    assert!(mount_count >= 8, "the container has its own proc, dev, sys... mounts: {mount_count}");

    // While it runs: its mounts are in its namespace only.
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let root = sandbox.root.path().display().to_string();
    assert!(!host_mounts.contains(&root), "a container mount is visible on the host");
    // The agent records the container's PIDs once it said go, which can be just after
    // the command's first output: wait for the record.
    let state_file = sandbox.state_dir().join("containers/mounts/state.json");
    let started = std::time::Instant::now();
    while !state_file.exists() {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "no {} after 30 s", state_file.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file).expect("state file")).expect("json");
    let init_pid = state["init_pid"].as_i64().expect("init_pid");
    let inside = std::fs::read_to_string(format!("/proc/{init_pid}/mountinfo")).expect("container mountinfo");
    assert!(inside.lines().any(|l| l.contains(" / / ") && l.contains("overlay")), "/ is an overlay inside:\n{inside}");
    assert!(sandbox.cgroup_paths("mounts").iter().all(|p| p.exists()), "cgroups exist while it runs");

    // Ctrl-C: SIGINT goes to the command (sleep dies of it: 128 + 2).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")), nix::sys::signal::Signal::SIGINT).expect("signal");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    sandbox.assert_clean("mounts");
}

#[test]
fn a_memory_hog_is_oom_killed_and_reported() {
    let sandbox = Sandbox::new("oom");
    let out = sandbox.run("oom", &["--memory", "16Mi"], &["sh", "-c", "x=aaaaaaaa; while true; do x=$x$x; done"]);
    assert_eq!(out.status.code(), Some(137), "killed by SIGKILL: {}", stderr(&out));
    assert!(stderr(&out).contains("OOMKilled"), "{}", stderr(&out));
    sandbox.assert_clean("oom");
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit() {
    // The bomb goes off in a subshell: the command itself forks once, before the limit
    // is reached, and then is `sleep` (a shell whose own fork failed would exit 2).
    let sandbox = Sandbox::new("forkbomb");
    let mut child = sandbox
        .run_command("bomb", &["--pids", "24", "--stop-timeout", "1"], &["sh", "-c", "echo ready; (bomb() { bomb | bomb & }; bomb) & exec sleep 1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("a line").expect("read"), "ready");
    let pids_dir = sandbox.cgroup_paths("bomb").into_iter().find(|p| p.to_string_lossy().contains("/pids/")).or_else(|| {
        // cgroup v2: one directory holds every controller.
        sandbox.cgroup_paths("bomb").into_iter().next()
    });
    let pids_dir = pids_dir.expect("pids cgroup");
    // Wait until the kernel has refused forks (pids.events counts them).
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let events = std::fs::read_to_string(pids_dir.join("pids.events")).unwrap_or_default();
        let refused: u64 = events.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
        let current: u64 = std::fs::read_to_string(pids_dir.join("pids.current")).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
        assert!(current <= 24, "pids.current {current} is over the limit");
        if refused > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the fork bomb never hit the limit");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The host still forks and runs processes.
    assert!(std::process::Command::new("true").status().expect("host fork").success());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")), nix::sys::signal::Signal::SIGTERM).expect("signal");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(143), "the command ends by the forwarded SIGTERM");
    sandbox.assert_clean("bomb");
}

#[test]
fn cap_sys_admin_operations_fail() {
    let sandbox = Sandbox::new("caps");
    let out = sandbox.run(
        "caps",
        &[],
        &["sh", "-c", "mount -t tmpfs none /mnt && echo mounted; hostname other && echo renamed; grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status"],
    );
    let text = stdout(&out);
    assert!(!text.contains("mounted"), "mount needs CAP_SYS_ADMIN: {text}");
    assert!(!text.contains("renamed"), "sethostname needs CAP_SYS_ADMIN: {text}");
    let bounding = text.lines().find_map(|l| l.strip_prefix("CapBnd:")).expect("CapBnd");
    let mask = u64::from_str_radix(bounding.trim(), 16).expect("hex");
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_NET_ADMIN: u64 = 12;
    assert_eq!(mask & (1 << CAP_SYS_ADMIN), 0, "CAP_SYS_ADMIN in the bounding set");
    assert_eq!(mask & (1 << CAP_NET_ADMIN), 0, "CAP_NET_ADMIN in the bounding set");
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    sandbox.assert_clean("caps");
}

#[test]
#[allow(clippy::type_complexity)] // a table
fn exit_codes_follow_container_conventions_and_leave_nothing() {
    let sandbox = Sandbox::new("codes");
    let cases: [(&str, &[&str], &[&str], i32, &str); 6] = [
        ("code3", &[], &["sh", "-c", "exit 3"], 3, ""),
        ("killed", &[], &["sh", "-c", "kill -9 $$"], 137, ""),
        ("notfound", &[], &["no-such-program"], 127, "executable file not found"),
        ("notexec", &[], &["/etc/passwd"], 126, "exec /etc/passwd"),
        ("badmem", &["--memory", "12Q"], &["true"], 125, "--memory"),
        ("badenv", &["--env", "NOEQUALS"], &["true"], 125, "--env"),
    ];
    for (name, flags, command, code, message) in cases {
        let out = sandbox.run(name, flags, command);
        assert_eq!(out.status.code(), Some(code), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{name}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), usize::from(!message.is_empty()), "{name}: one line: {}", stderr(&out));
        sandbox.assert_clean(name);
    }
    let out = std::process::Command::new(common::AGENT)
        .args(["run", "--rootfs", "/nonexistent/rootfs", "--state-dir"])
        .arg(sandbox.state_dir())
        .args(["--cgroup-parent", &sandbox.cgroup_parent, "--name", "norootfs", "--", "true"])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("/nonexistent/rootfs"), "{}", stderr(&out));
    sandbox.assert_clean("norootfs");

    // A cgroup that cannot be made: a parent that escapes the hierarchy, and CPUs the
    // machine does not have.
    let out = std::process::Command::new(common::AGENT)
        .args(["run", "--rootfs"])
        .arg(sandbox.rootfs())
        .arg("--state-dir")
        .arg(sandbox.state_dir())
        .args(["--cgroup-parent", "../escape", "--name", "badcgroup", "--", "true"])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("invalid cgroup name \"../escape/badcgroup\""), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(!sandbox.state_dir().join("containers/badcgroup").exists());
    let out = sandbox.run("nocpus", &["--cpuset", "4000-4001"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("cpuset.cpus"), "the error names the cgroup file: {}", stderr(&out));
    sandbox.assert_clean("nocpus");
}

#[test]
fn environment_and_working_directory_are_applied() {
    let sandbox = Sandbox::new("env");
    let out = sandbox.run("env", &["--env", "GREETING=hi there", "-w", "/tmp"], &["sh", "-c", "echo \"$GREETING|$(pwd)|$PATH|$HOME\""]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "hi there|/tmp|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|/root");
    sandbox.assert_clean("env");
}

#[test]
fn two_containers_with_one_name_are_refused() {
    let sandbox = Sandbox::new("dupname");
    let mut first = sandbox.run_command("same", &[], &["sh", "-c", "echo ready; exec sleep 1000"]).stdout(Stdio::piped()).spawn().expect("spawn");
    let mut lines = BufReader::new(first.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("line").expect("read"), "ready");
    let out = sandbox.run("same", &[], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    // The refused start must not have disturbed the first container.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(first.id()).expect("pid")), nix::sys::signal::Signal::SIGTERM).expect("signal");
    assert_eq!(first.wait().expect("wait").code(), Some(143));
    sandbox.assert_clean("same");
}

#[test]
fn a_user_namespace_maps_root_to_an_unprivileged_host_id() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sandbox = Sandbox::new("userns");
    // The mapped root must be able to reach the container's directories.
    std::fs::set_permissions(sandbox.root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let passwd_before = std::fs::read_to_string(sandbox.rootfs().join("etc/passwd")).expect("passwd");
    let mut child = sandbox
        .run_command(
            "userns",
            &["--userns", "200000:65536"],
            &["sh", "-c", "id -u; cat /proc/self/uid_map; echo extra >> /etc/passwd && echo wrote-existing; touch /created; echo ready; exec sleep 1000"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().expect("a line").expect("read");
    assert_eq!(next(), "0", "root inside");
    assert_eq!(next().split_whitespace().collect::<Vec<_>>(), ["0", "200000", "65536"]);
    assert_eq!(next(), "wrote-existing", "root-owned image files are root's inside (idmapped layers)");
    assert_eq!(next(), "ready");

    // From the host, the container's processes hold the unprivileged id.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sandbox.state_dir().join("containers/userns/state.json")).expect("state file")).expect("json");
    let init_pid = state["init_pid"].as_i64().expect("init_pid");
    let children = std::fs::read_to_string(format!("/proc/{init_pid}/task/{init_pid}/children")).expect("children");
    let command_pid: i64 = children.split_whitespace().next().expect("the command").parse().expect("pid");
    for pid in [init_pid, command_pid] {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).expect("Uid line");
        assert!(uids.split_whitespace().all(|u| u == "200000"), "pid {pid} has host uids {uids}");
    }
    let created = sandbox.state_dir().join("containers/userns/upper/created");
    assert_eq!(std::fs::metadata(&created).expect("created file").uid(), 200_000, "files it creates belong to the mapped id");
    // The layer views were mounted for the start only; none is left on the host.
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!host_mounts.contains(&sandbox.root.path().display().to_string()), "an idmapped layer stayed mounted on the host");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")), nix::sys::signal::Signal::SIGTERM).expect("signal");
    assert_eq!(child.wait().expect("wait").code(), Some(143));
    assert_eq!(std::fs::read_to_string(sandbox.rootfs().join("etc/passwd")).expect("passwd"), passwd_before, "the image is unchanged");
    sandbox.assert_clean("userns");
}

#[test]
fn a_user_namespace_refuses_an_unreachable_state_directory() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new("userns-private");
    // A private (0700) ancestor keeps the mapped root out: said clearly, nothing left.
    std::fs::set_permissions(sandbox.root.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = sandbox.run("private", &["--userns"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("searchable by others"), "{}", stderr(&out));
    sandbox.assert_clean("private");
}
