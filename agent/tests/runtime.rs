//! The container runtime for real, as root: `orch-agent run` in namespaces and cgroups.
//! Each test has its own rootfs, state directory and cgroup parent, so they run in
//! parallel, and each checks that nothing is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
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
    // Its PID 1 is orch's init (the small binary beside the agent's), by name only: no
    // host path.
    let out = sandbox.run("pid1", &[], &["sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline"]);
    let cmdline = stdout(&out);
    assert!(cmdline.starts_with("orch-init __init --build ") && cmdline.trim().ends_with("--fallback orch-agent"), "{cmdline} {}", stderr(&out));
    assert!(!cmdline.contains('/'), "{cmdline}");
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
    // On cgroup v1 the container is in the freezer hierarchy too: its removal freezes
    // every process before the kill, so none forks past it (v2 has cgroup.kill).
    if pids_dir.to_string_lossy().contains("/pids/") && Path::new("/sys/fs/cgroup/freezer").exists() {
        let freezer = sandbox.cgroup_paths("bomb").into_iter().find(|p| p.to_string_lossy().contains("/freezer/")).expect("a freezer cgroup (v1)");
        assert_eq!(std::fs::read_to_string(freezer.join("freezer.state")).expect("freezer.state").trim(), "THAWED");
        let members = std::fs::read_to_string(freezer.join("cgroup.procs")).expect("cgroup.procs");
        assert!(members.lines().count() >= 2, "the bomb's processes are in the freezer cgroup: {members}");
    }
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
    // A private sandbox (like /var/lib/orch, 0700): the mapped root reaches its
    // container's directory through the init's working directory, never by walking.
    std::fs::set_permissions(sandbox.root.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
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
    let dir = std::fs::metadata(sandbox.state_dir().join("containers/userns")).expect("container directory");
    assert_eq!((dir.uid(), dir.gid(), dir.permissions().mode() & 0o777), (200_000, 0, 0o770), "the mapped root's directory, no other user's");

    // From the host, the container's processes hold the unprivileged id.
    // The agent writes the state file once the init runs: the command may print first.
    let state_file = sandbox.state_dir().join("containers/userns/state.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !state_file.exists() {
        assert!(std::time::Instant::now() < deadline, "no state file at {}", state_file.display());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file).expect("state file")).expect("json");
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
fn devices_outside_the_allowlist_can_be_neither_made_nor_opened() {
    let sandbox = Sandbox::new("devices");
    // Nodes an image ships: a disk and a copy of /dev/null. Neither opens (the root is
    // nodev), and a new node of a device outside the list cannot even be made.
    let rootfs = sandbox.rootfs();
    let node = |name: &str, kind: nix::sys::stat::SFlag, major: u64, minor: u64| {
        nix::sys::stat::mknod(&rootfs.join(name), kind, nix::sys::stat::Mode::from_bits_truncate(0o666), nix::sys::stat::makedev(major, minor))
            .expect("mknod in the rootfs");
    };
    node("image-disk", nix::sys::stat::SFlag::S_IFBLK, 7, 0);
    node("image-null", nix::sys::stat::SFlag::S_IFCHR, 1, 3);
    let script = "grep CapEff /proc/self/status; \
        mknod /tmp/loop b 7 0 && echo made-loop; mknod /dev/mem2 c 1 1 && echo made-mem; \
        head -c 1 /image-disk >/dev/null && echo read-disk; echo x > /image-null && echo wrote-image-null; \
        echo x > /dev/null && echo null-ok; head -c 8 /dev/urandom | wc -c; head -c 4 /dev/zero | wc -c; \
        echo x > /dev/full || echo full-is-full; test -c /dev/pts/ptmx && echo ptmx-ok";
    let out = sandbox.run("devices", &[], &["sh", "-c", script]);
    let (text, errors) = (stdout(&out), stderr(&out));
    let effective = text.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff");
    const CAP_MKNOD: u64 = 27;
    assert_ne!(
        u64::from_str_radix(effective.trim(), 16).expect("hex") & (1 << CAP_MKNOD),
        0,
        "the container keeps CAP_MKNOD (Docker's default): the allowlist is what refuses"
    );
    assert!(!text.contains("made-loop") && !text.contains("made-mem"), "{text}");
    assert_eq!(errors.matches("Operation not permitted").count(), 2, "both mknods fail with EPERM: {errors}");
    assert!(!text.contains("read-disk") && !text.contains("wrote-image-null"), "an image's device node opened: {text}");
    assert!(text.contains("null-ok") && text.contains("8\n4\n") && text.contains("full-is-full") && text.contains("ptmx-ok"), "{text}\n{errors}");
    sandbox.assert_clean("devices");
}

#[test]
fn a_device_program_guards_a_cgroup_v2_directory() {
    // On these hybrid machines containers use the v1 devices controller; the v2 path
    // (a BPF_CGROUP_DEVICE program) is tried on the unified mount, for real.
    use orch_agent::cgroups::{ContainerCgroup, Limits, V2Cgroup, DEFAULT_DEVICES};
    common::require_root();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let unified = mountinfo
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split(' ').nth(4))
        .map(std::path::PathBuf::from)
        .expect("no cgroup2 mount on this machine: the v2 device program needs one (Debian mounts it at /sys/fs/cgroup/unified or /sys/fs/cgroup)");
    let scratch = tempfile::Builder::new().prefix("orch-rt-devv2-").tempdir().expect("tempdir");
    let name = format!("orch-test-{}-devv2/c", std::process::id());
    let cgroup = V2Cgroup::new(unified, name.into());
    cgroup.create(&Limits { devices: Some(DEFAULT_DEVICES.to_vec()), ..Limits::default() }).expect("create the cgroup and attach the program");
    let script = "read go; mknod \"$1/loop\" b 7 0 && echo made-loop; head -c 1 /dev/loop0 > /dev/null && echo read-loop0; \
        echo x > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c";
    let mut child = std::process::Command::new(common::BUSYBOX)
        .args(["sh", "-c", script, "sh"])
        .arg(scratch.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let joined = cgroup.add_process(i32::try_from(child.id()).expect("pid"));
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), b"go\n").expect("go");
    let out = child.wait_with_output().expect("wait");
    let destroyed = cgroup.destroy();
    joined.expect("join the cgroup");
    destroyed.expect("remove the cgroup");
    let (text, errors) = (stdout(&out), stderr(&out));
    assert!(!text.contains("made-loop") && !text.contains("read-loop0"), "a device outside the list was made or opened: {text}");
    assert_eq!(errors.matches("Operation not permitted").count(), 2, "both refusals are EPERM: {errors}");
    assert!(text.contains("null-ok") && text.contains('4'), "{text}\n{errors}");
    // The same steps outside the cgroup succeed: the program is what refused them.
    let control = std::process::Command::new(common::BUSYBOX).args(["mknod"]).arg(scratch.path().join("loop")).args(["b", "7", "0"]).output().expect("mknod");
    assert!(control.status.success(), "{}", stderr(&control));
    assert!(!cgroup.paths()[0].exists(), "the test cgroup is gone");
}

#[test]
fn the_default_seccomp_filter_refuses_what_docker_refuses() {
    let sandbox = Sandbox::new("seccomp");
    // unshare(CLONE_NEWUSER) needs no capability, so only the filter refuses it.
    let script = "grep -E '^Seccomp:' /proc/self/status; unshare -U true && echo made-userns; swapon /dev/null; echo swapon=$?";
    let out = sandbox.run("filtered", &["--cap-add", "SYS_ADMIN"], &["sh", "-c", script]);
    let (text, errors) = (stdout(&out), stderr(&out));
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(text.contains("made-userns"), "CAP_SYS_ADMIN brings unshare back, as in Docker: {text}\n{errors}");
    assert!(errors.contains("swapon: /dev/null: Operation not permitted"), "swapon stays out even with CAP_SYS_ADMIN: {errors}");
    let out = sandbox.run("default", &[], &["sh", "-c", script]);
    assert!(!stdout(&out).contains("made-userns") && stderr(&out).contains("unshare(0x10000000): Operation not permitted"), "{}", stderr(&out));
    // Unconfined: the same calls reach the kernel, which answers for itself.
    let out = sandbox.run("unconfined", &["--seccomp", "unconfined", "--cap-add", "SYS_ADMIN"], &["sh", "-c", script]);
    assert!(stdout(&out).contains("Seccomp:\t0") && stdout(&out).contains("made-userns"), "{}", stdout(&out));
    assert!(stderr(&out).contains("swapon: /dev/null: Invalid argument"), "the kernel, not the filter, refuses: {}", stderr(&out));
    for name in ["filtered", "default", "unconfined"] {
        sandbox.assert_clean(name);
    }
}

#[test]
fn user_group_capabilities_and_a_read_only_root_are_applied() {
    let sandbox = Sandbox::new("secctx");
    let script =
        "id; touch /new-file && echo root-writable; echo x > /tmp/t && echo tmp-writable; echo x > /dev/shm/s && echo shm-ok; grep CapBnd /proc/self/status";
    let out = sandbox.run("strict", &["--user", "1000:2000", "--read-only", "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE"], &["sh", "-c", script]);
    let (text, errors) = (stdout(&out), stderr(&out));
    assert!(text.contains("uid=1000 gid=2000"), "{text}");
    assert!(!text.contains("root-writable") && !text.contains("tmp-writable") && errors.contains("Read-only file system"), "{text}\n{errors}");
    assert!(text.contains("shm-ok"), "/dev/shm stays writable: {text}\n{errors}");
    let bounding = text.lines().find_map(|l| l.strip_prefix("CapBnd:")).expect("CapBnd");
    const CAP_NET_BIND_SERVICE: u64 = 10;
    assert_eq!(u64::from_str_radix(bounding.trim(), 16).expect("hex"), 1 << CAP_NET_BIND_SERVICE, "only the added capability: {text}");
    // Root with NET_ADMIN added may change its interfaces; by default it may not.
    let up = "ip link set lo mtu 1400 && echo changed";
    assert!(stdout(&sandbox.run("netadmin", &["--cap-add", "NET_ADMIN"], &["sh", "-c", up])).contains("changed"));
    assert!(!stdout(&sandbox.run("plain", &[], &["sh", "-c", up])).contains("changed"));
    let out = sandbox.run("badcap", &["--cap-add", "FLY"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("\"FLY\" is not a Linux capability"), "{}", stderr(&out));
    for name in ["strict", "netadmin", "plain", "badcap"] {
        sandbox.assert_clean(name);
    }
}

#[test]
fn the_state_tree_is_out_of_other_users_reach() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new("private");
    // The sandbox is opened to others so that only the state directory's own modes count.
    std::fs::set_permissions(sandbox.root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut child = sandbox.run_command("private", &[], &["sh", "-c", "echo ready; exec sleep 1000"]).stdout(Stdio::piped()).spawn().expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    assert_eq!(lines.next().expect("line").expect("read"), "ready");
    let state = sandbox.state_dir();
    assert_eq!(std::fs::metadata(&state).expect("state").permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(state.join("containers/private")).expect("container").permissions().mode() & 0o777, 0o700);
    let as_nobody = |script: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", "sh", "-c", script])
            .output()
            .expect("setpriv (util-linux)")
    };
    let probe = format!(
        "cat {rootfs}/etc/passwd >/dev/null && echo rootfs-readable; ls {state} && echo listed; cat {state}/containers/private/state.json && echo read-state; ls {state}/containers/private/upper && echo read-upper",
        rootfs = sandbox.rootfs().display(),
        state = state.display()
    );
    let out = as_nobody(&probe);
    let text = stdout(&out);
    assert!(text.contains("rootfs-readable"), "the probe reaches the sandbox (else it proves nothing): {text}\n{}", stderr(&out));
    assert!(!text.contains("listed") && !text.contains("read-state") && !text.contains("read-upper"), "another user reads the state tree: {text}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")), nix::sys::signal::Signal::SIGTERM).expect("signal");
    assert_eq!(child.wait().expect("wait").code(), Some(143));
    sandbox.assert_clean("private");
}
