//! `orch-runc` on its own, as root, driven through its command line as containerd's
//! runc shim drives runc: a bundle of busybox and runc's default `config.json`
//! (oci-spec's default spec); `create` leaves the process waiting, `start` runs it,
//! `state`, `ps`, `kill` and `delete` work on it, and its exit reaches the subreaper it
//! was left to (this test process, as containerd's shim). A config it cannot honour is
//! refused by its field, leaving nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Sandbox};

const RUNC: &str = env!("CARGO_BIN_EXE_orch-runc");

/// A bundle in the sandbox: runc's default config running `script` in busybox, its
/// root writable, its cgroup below the sandbox's parent, changed by `change`.
fn bundle(sandbox: &Sandbox, id: &str, script: &str, change: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = sandbox.root.path().join(format!("bundle-{id}"));
    std::fs::create_dir_all(&dir).expect("bundle dir");
    let mut config = serde_json::to_value(oci_spec::runtime::Spec::default()).expect("the default spec");
    config["root"] = serde_json::json!({"path": sandbox.rootfs(), "readonly": false});
    config["process"]["args"] = serde_json::json!(["sh", "-c", script]);
    config["process"]["terminal"] = serde_json::json!(false);
    config["hostname"] = serde_json::json!(id);
    config["linux"]["cgroupsPath"] = serde_json::json!(format!("/{}/{id}", sandbox.cgroup_parent));
    change(&mut config);
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).expect("json")).expect("config.json");
    dir
}

fn state_root(sandbox: &Sandbox) -> PathBuf {
    sandbox.root.path().join("runc-state")
}

fn runc(sandbox: &Sandbox, args: &[&str]) -> Output {
    Command::new(RUNC).arg("--root").arg(state_root(sandbox)).args(args).output().expect("run orch-runc")
}

fn state(sandbox: &Sandbox, id: &str) -> serde_json::Value {
    let out = runc(sandbox, &["state", id]);
    assert!(out.status.success(), "state {id}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("state JSON")
}

/// `create` with the container's output going to `output` (what containerd's pipes are).
fn create(sandbox: &Sandbox, id: &str, bundle: &Path, output: &Path) -> Output {
    let log = std::fs::File::create(output).expect("output file");
    let pid_file = sandbox.root.path().join(format!("{id}.pid"));
    Command::new(RUNC)
        .arg("--root")
        .arg(state_root(sandbox))
        .args(["create", "--bundle"])
        .arg(bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .output()
        .expect("run orch-runc create")
}

fn wait_for_text(path: &Path, text: &str) {
    let began = Instant::now();
    while !std::fs::read_to_string(path).unwrap_or_default().contains(text) {
        assert!(began.elapsed() < Duration::from_secs(20), "{text:?} never appeared in {}: {:?}", path.display(), std::fs::read_to_string(path));
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps `pid`, left to this process (a subreaper, as containerd's shim is): its exit code.
fn reap(pid: i32) -> i32 {
    match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("waitpid the container process") {
        nix::sys::wait::WaitStatus::Exited(_, code) => code,
        nix::sys::wait::WaitStatus::Signaled(_, signal, _) => 128 + signal as i32,
        other => panic!("unexpected wait status {other:?}"),
    }
}

/// Forces the removal of the containers it names when the test ends, passed or not.
struct Cleanup<'a>(&'a Sandbox, &'static [&'static str]);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in self.1 {
            let _ = runc(self.0, &["delete", "--force", id]);
        }
    }
}

fn assert_gone(sandbox: &Sandbox, id: &str) {
    assert!(!state_root(sandbox).join(id).exists(), "the state of {id} is left");
    for path in sandbox.cgroup_paths(id) {
        assert!(!path.exists(), "cgroup {} left behind", path.display());
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").expect("cgroupfs").flatten() {
        let left = hierarchy.path().join(&sandbox.cgroup_parent).join(id);
        assert!(!left.exists(), "cgroup {} left behind", left.display());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&sandbox.root.path().display().to_string()), "a mount of the bundle is visible on the host");
}

#[test]
fn create_waits_start_runs_kill_stops_delete_removes() {
    let sandbox = Sandbox::new("oci-life");
    let _cleanup = Cleanup(&sandbox, &["life"]);
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    let script = "echo started as $(hostname) pid $$; trap 'echo stopping; exit 3' TERM; while true; do sleep 0.05; done";
    let dir = bundle(&sandbox, "life", script, |_| {});
    let output = sandbox.root.path().join("life.out");
    let created = create(&sandbox, "life", &dir, &output);
    assert!(created.status.success(), "create: {}", std::fs::read_to_string(&output).unwrap_or_default());

    let pid: i32 = std::fs::read_to_string(sandbox.root.path().join("life.pid")).expect("pid file").trim().parse().expect("a PID");
    let created = state(&sandbox, "life");
    assert_eq!((created["status"].as_str(), created["pid"].as_i64()), (Some("created"), Some(i64::from(pid))), "{created}");
    assert_eq!(created["bundle"].as_str(), Some(dir.to_str().expect("utf-8")));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!std::fs::read_to_string(&output).unwrap_or_default().contains("started"), "the program waits for start");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    assert!(status.lines().any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")), "PID 1 of its own PID namespace:\n{status}");
    // Until its exec the container's process is orch-runc, run from a read-only mount of
    // itself: no process of the container can write the host's binary through
    // /proc/PID/exe (CVE-2019-5736).
    let exe = nix::sys::statvfs::statvfs(format!("/proc/{pid}/exe").as_str()).expect("statvfs its binary");
    assert!(exe.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY), "the waiting process's binary is on a read-only mount (EROFS once it exits)");

    let started = runc(&sandbox, &["start", "life"]);
    assert!(started.status.success(), "start: {}", stderr(&started));
    wait_for_text(&output, "started as life pid 1");
    assert_eq!(state(&sandbox, "life")["status"].as_str(), Some("running"));
    let again = runc(&sandbox, &["start", "life"]);
    assert!(!again.status.success() && stderr(&again).contains("is running"), "a second start is refused: {}", stderr(&again));
    let ps = runc(&sandbox, &["ps", "--format", "json", "life"]);
    let pids: Vec<i32> = serde_json::from_str(&stdout(&ps)).expect("ps JSON");
    assert!(pids.contains(&pid) && pids.len() >= 2, "the shell and its sleep: {pids:?}");
    let refused = runc(&sandbox, &["delete", "life"]);
    assert!(!refused.status.success() && stderr(&refused).contains("not stopped"), "{}", stderr(&refused));

    let killed = runc(&sandbox, &["kill", "life", "TERM"]);
    assert!(killed.status.success(), "kill: {}", stderr(&killed));
    assert_eq!(reap(pid), 3, "its own exit code reaches the subreaper");
    wait_for_text(&output, "stopping");
    let stopped = state(&sandbox, "life");
    assert_eq!((stopped["status"].as_str(), stopped["pid"].as_i64()), (Some("stopped"), Some(0)));
    let deleted = runc(&sandbox, &["delete", "life"]);
    assert!(deleted.status.success(), "delete: {}", stderr(&deleted));
    assert_gone(&sandbox, "life");
    let missing = runc(&sandbox, &["delete", "life"]);
    assert!(!missing.status.success() && stderr(&missing).contains("does not exist"), "{}", stderr(&missing));
    assert!(runc(&sandbox, &["delete", "--force", "life"]).status.success(), "forcing the removal of what is gone succeeds (runc's rule)");
}

#[test]
fn a_created_container_is_force_deleted_and_an_unsupported_config_is_refused_by_its_field() {
    let sandbox = Sandbox::new("oci-edge");
    let _cleanup = Cleanup(&sandbox, &["edge", "sec", "missing", "user"]);
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    let dir = bundle(&sandbox, "edge", "echo never", |_| {});
    let output = sandbox.root.path().join("edge.out");
    assert!(create(&sandbox, "edge", &dir, &output).status.success(), "create: {:?}", std::fs::read_to_string(&output));
    let pid = state(&sandbox, "edge")["pid"].as_i64().and_then(|p| i32::try_from(p).ok()).expect("pid");
    let twice = create(&sandbox, "edge", &dir, &sandbox.root.path().join("edge-twice.out"));
    assert!(!twice.status.success(), "an id is taken once");
    let deleted = runc(&sandbox, &["delete", "edge"]);
    assert!(deleted.status.success(), "a created container is deleted without --force (runc's rule): {}", stderr(&deleted));
    assert_eq!(reap(pid), 128 + 9, "killed, never started");
    assert!(!std::fs::read_to_string(&output).unwrap_or_default().contains("never"), "its program never ran");
    assert_gone(&sandbox, "edge");

    let notify = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]});
    let seccomp = bundle(&sandbox, "sec", "true", |config| config["linux"]["seccomp"] = notify);
    let refused = create(&sandbox, "sec", &seccomp, &sandbox.root.path().join("sec.out"));
    let said = std::fs::read_to_string(sandbox.root.path().join("sec.out")).unwrap_or_default();
    assert!(!refused.status.success() && said.contains("config.json: linux.seccomp: linux.seccomp.syscalls[0].action: SCMP_ACT_NOTIFY"), "{said}");
    assert_gone(&sandbox, "sec");
    // A program that is not there fails create (runc's order), leaving nothing.
    let missing = bundle(&sandbox, "missing", "true", |config| config["process"]["args"] = serde_json::json!(["no-such-program"]));
    let failed = create(&sandbox, "missing", &missing, &sandbox.root.path().join("missing.out"));
    let said = std::fs::read_to_string(sandbox.root.path().join("missing.out")).unwrap_or_default();
    assert!(!failed.status.success() && said.contains("no-such-program: executable file not found"), "{said}");
    assert_gone(&sandbox, "missing");
    // A user of the config's: the credentials are taken before the wait, and the FIFO
    // still lets it through.
    let user = bundle(&sandbox, "user", "echo uid $(id -u) gid $(id -g)", |config| config["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000}));
    let user_out = sandbox.root.path().join("user.out");
    assert!(create(&sandbox, "user", &user, &user_out).status.success(), "create: {:?}", std::fs::read_to_string(&user_out));
    let user_pid = state(&sandbox, "user")["pid"].as_i64().and_then(|p| i32::try_from(p).ok()).expect("pid");
    assert!(runc(&sandbox, &["start", "user"]).status.success(), "start as uid 1000");
    assert_eq!(reap(user_pid), 0);
    wait_for_text(&user_out, "uid 1000 gid 1000");
    assert!(runc(&sandbox, &["delete", "user"]).status.success());
    assert_gone(&sandbox, "user");
    let bad_id = runc(&sandbox, &["state", "../etc"]);
    assert!(!bad_id.status.success() && stderr(&bad_id).contains("is not a container id"), "{}", stderr(&bad_id));
    let log = sandbox.root.path().join("runc.log");
    let logged = Command::new(RUNC)
        .arg("--root")
        .arg(state_root(&sandbox))
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "start", "nothing"])
        .output()
        .expect("run");
    assert!(!logged.status.success());
    let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&log).expect("the log").trim()).expect("a JSON line");
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().is_some_and(|m| m.contains("\"nothing\" does not exist")), "{line}");
}

#[test]
fn the_configs_seccomp_profile_confines_the_program() {
    let sandbox = Sandbox::new("oci-seccomp");
    let _cleanup = Cleanup(&sandbox, &["sec-deny", "sec-allow"]);
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    let script = "mkdir /tmp/made; echo mkdir said $?; exec sleep 1000";
    // Allowed by default, mkdir refused with EACCES (13) by a rule; and a default-deny
    // allowlist (Docker's shape) that lets the shell, mkdir and sleep run.
    let deny =
        serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]});
    let allow_names: Vec<&str> = vec![
        "read",
        "write",
        "open",
        "openat",
        "close",
        "stat",
        "fstat",
        "lstat",
        "newfstatat",
        "statx",
        "mmap",
        "mprotect",
        "munmap",
        "brk",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "ioctl",
        "access",
        "faccessat",
        "faccessat2",
        "execve",
        "exit",
        "exit_group",
        "wait4",
        "clone",
        "fork",
        "vfork",
        "getpid",
        "getppid",
        "getuid",
        "geteuid",
        "getgid",
        "getegid",
        "setuid",
        "setgid",
        "setgroups",
        "setresuid",
        "setresgid",
        "capget",
        "capset",
        "prctl",
        "arch_prctl",
        "set_tid_address",
        "nanosleep",
        "clock_nanosleep",
        "fcntl",
        "dup",
        "dup2",
        "dup3",
        "chdir",
        "getcwd",
        "mkdir",
        "mkdirat",
        "uname",
        "getdents64",
        "readlink",
        "readlinkat",
        "pipe",
        "pipe2",
        "sigaltstack",
        "getrandom",
        "set_robust_list",
        "rseq",
        "prlimit64",
        "setrlimit",
        "getrlimit",
        "umask",
        "futex",
        "sched_getaffinity",
        "lseek",
        "pread64",
        "getpgrp",
        "setpgid",
        "getpgid",
        "kill",
        "poll",
        "ppoll",
        "select",
        "pselect6",
        "sendto",
        "sendmsg",
        "recvfrom",
        "recvmsg",
    ];
    let allowlist = serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": allow_names, "action": "SCMP_ACT_ALLOW"}]});
    for (id, profile, said) in [("sec-deny", deny, "mkdir said 1"), ("sec-allow", allowlist, "mkdir said 0")] {
        let dir = bundle(&sandbox, id, script, |config| {
            config["linux"]["seccomp"] = profile;
            config["process"]["noNewPrivileges"] = serde_json::json!(false);
        });
        let output = sandbox.root.path().join(format!("{id}.out"));
        let created = create(&sandbox, id, &dir, &output);
        assert!(created.status.success(), "create {id}: {:?}", std::fs::read_to_string(&output));
        let pid = state(&sandbox, id)["pid"].as_i64().and_then(|p| i32::try_from(p).ok()).expect("pid");
        assert!(runc(&sandbox, &["start", id]).status.success(), "start {id}");
        wait_for_text(&output, said);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
        assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{id}: in filter mode:\n{status}");
        assert!(status.lines().any(|l| l == "NoNewPrivs:\t0"), "{id}: no_new_privs stays unset when the config leaves it so:\n{status}");
        assert!(runc(&sandbox, &["kill", id, "KILL"]).status.success());
        assert_eq!(reap(pid), 128 + 9);
        assert!(runc(&sandbox, &["delete", id]).status.success(), "delete {id}");
        assert_gone(&sandbox, id);
    }
}

#[test]
fn hooks_run_at_their_points_with_the_state_on_stdin() {
    let sandbox = Sandbox::new("oci-hooks");
    let _cleanup = Cleanup(&sandbox, &["hooked"]);
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    let out = sandbox.root.path().join("hooks");
    std::fs::create_dir_all(&out).expect("hooks dir");
    // A hook in the runtime's namespaces writes its stdin where the test reads it; the
    // startContainer hook runs inside the container (its /tmp is the bundle root's).
    let host_hook = |name: &str| serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}/{name}.json", out.display())]});
    let dir = bundle(&sandbox, "hooked", "echo ran; exec sleep 1000", |config| {
        config["hooks"] = serde_json::json!({
            "prestart": [host_hook("prestart")],
            "createRuntime": [host_hook("createRuntime")],
            "createContainer": [host_hook("createContainer")],
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/startContainer.json"]}],
            "poststart": [host_hook("poststart")],
            "poststop": [host_hook("poststop")],
        });
    });
    let output = sandbox.root.path().join("hooked.out");
    assert!(create(&sandbox, "hooked", &dir, &output).status.success(), "create: {:?}", std::fs::read_to_string(&output));
    let pid = state(&sandbox, "hooked")["pid"].as_i64().expect("pid");
    let read = |path: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).expect("state JSON")
    };
    for stage in ["prestart", "createRuntime", "createContainer"] {
        let seen = read(out.join(format!("{stage}.json")));
        assert_eq!((seen["id"].as_str(), seen["pid"].as_i64(), seen["status"].as_str()), (Some("hooked"), Some(pid), Some("creating")), "{stage}: {seen}");
    }
    assert!(!out.join("poststart.json").exists() && !sandbox.rootfs().join("tmp/startContainer.json").exists(), "not before start");
    assert!(runc(&sandbox, &["start", "hooked"]).status.success(), "start");
    wait_for_text(&output, "ran");
    assert_eq!(read(sandbox.rootfs().join("tmp/startContainer.json"))["status"].as_str(), Some("created"), "inside the container, before its program");
    assert_eq!(read(out.join("poststart.json"))["status"].as_str(), Some("running"));
    assert!(runc(&sandbox, &["kill", "hooked", "KILL"]).status.success());
    assert_eq!(reap(i32::try_from(pid).expect("pid")), 128 + 9);
    assert!(runc(&sandbox, &["delete", "hooked"]).status.success());
    assert_eq!(read(out.join("poststop.json"))["status"].as_str(), Some("stopped"));
    assert_gone(&sandbox, "hooked");
}

/// Receives the pty master `orch-runc` sends to a console socket: its descriptor number
/// in this process (closed by the caller with `nix::unistd::close`).
fn receive_console(listener: &std::os::unix::net::UnixListener) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    listener.set_nonblocking(true).expect("non-blocking listener");
    let began = Instant::now();
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(began.elapsed() < Duration::from_secs(20), "orch-runc never connected to the console socket");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept on the console socket: {e}"),
        }
    };
    let mut name = [0u8; 64];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let message = nix::sys::socket::recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), nix::sys::socket::MsgFlags::empty()).expect("recvmsg");
    for control in message.cmsgs().expect("control messages") {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = control {
            return fds[0];
        }
    }
    panic!("no descriptor on the console socket");
}

#[test]
fn exec_runs_in_the_containers_namespaces_cgroup_root_and_seccomp_profile() {
    use std::io::Read;
    let sandbox = Sandbox::new("oci-exec");
    let _cleanup = Cleanup(&sandbox, &["ex"]);
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    let deny_mkdir =
        serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]});
    std::fs::write(sandbox.rootfs().join("container-root-marker"), "").expect("a marker in the container's root");
    let dir = bundle(&sandbox, "ex", "echo up; while true; do sleep 0.05; done", |config| config["linux"]["seccomp"] = deny_mkdir);
    let output = sandbox.root.path().join("ex.out");
    let created = create(&sandbox, "ex", &dir, &output);
    assert!(created.status.success(), "create: {}", std::fs::read_to_string(&output).unwrap_or_default());
    let pid: i32 = std::fs::read_to_string(sandbox.root.path().join("ex.pid")).expect("pid file").trim().parse().expect("a PID");
    assert!(runc(&sandbox, &["start", "ex"]).status.success());
    wait_for_text(&output, "up");

    // Without --detach: its output, its exit status, the container's namespaces and root.
    let script = "hostname; echo pid $$; for n in ipc uts net pid mnt cgroup; do readlink /proc/self/ns/$n; done; ls /; mkdir /made || echo denied; exit 7";
    let ran = runc(&sandbox, &["exec", "--env", "GREETING=hi", "ex", "sh", "-c", script]);
    assert_eq!(ran.status.code(), Some(7), "exec's status is the program's: {}", stderr(&ran));
    let said = stdout(&ran);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[0], "ex", "the container's hostname: {said}");
    let exec_pid: i32 = lines[1].strip_prefix("pid ").expect("its pid").parse().expect("a number");
    assert!(exec_pid > 1, "a process of the container's PID namespace: {said}");
    for (i, kind) in ["ipc", "uts", "net", "pid", "mnt", "cgroup"].iter().enumerate() {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("the container's namespace");
        assert_eq!(lines[2 + i], theirs.display().to_string(), "the container's {kind} namespace");
    }
    assert!(said.contains("container-root-marker"), "the container's root: {said}");
    assert!(said.contains("denied"), "the config's seccomp profile applies to exec'd processes too: {said}");

    // --detach with a process.json: the PID file names it, it is in the container's
    // cgroup, as the config's user, and left to the caller (a subreaper).
    let process = serde_json::json!({
        "args": ["sh", "-c", "id -u; grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status; sleep 30"],
        "env": ["PATH=/bin:/usr/bin"], "cwd": "/tmp", "user": {"uid": 1000, "gid": 1000}, "noNewPrivileges": true,
        "capabilities": {"bounding": ["CAP_KILL"], "effective": [], "permitted": []}
    });
    let process_file = sandbox.root.path().join("process.json");
    std::fs::write(&process_file, process.to_string()).expect("process.json");
    let exec_pid_file = sandbox.root.path().join("exec.pid");
    // Its streams are files, as containerd's FIFOs: a pipe would stay open in the program.
    let exec_log = sandbox.root.path().join("exec.out");
    let log = std::fs::File::create(&exec_log).expect("exec output file");
    let detached = Command::new(RUNC)
        .arg("--root")
        .arg(state_root(&sandbox))
        .args(["exec", "--process", process_file.to_str().unwrap(), "--detach", "--pid-file", exec_pid_file.to_str().unwrap(), "ex"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .status()
        .expect("exec --detach");
    assert!(detached.success(), "exec --detach: {}", std::fs::read_to_string(&exec_log).unwrap_or_default());
    let detached_pid: i32 = std::fs::read_to_string(&exec_pid_file).expect("the exec's pid file").trim().parse().expect("a PID");
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(detached_pid), None).is_ok(), "exec --detach returned while its program runs");
    let ps: Vec<i32> = serde_json::from_str(&stdout(&runc(&sandbox, &["ps", "--format", "json", "ex"]))).expect("ps JSON");
    assert!(ps.contains(&detached_pid), "the exec'd process is in the container's cgroup: {ps:?} vs {detached_pid}");
    wait_for_text(&exec_log, "NoNewPrivs");
    let user = std::fs::read_to_string(&exec_log).expect("its report");
    assert!(user.starts_with("1000\n") && user.contains("CapBnd:\t0000000000000020") && user.contains("NoNewPrivs:\t1"), "{user}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(detached_pid), nix::sys::signal::Signal::SIGKILL).expect("kill the exec'd process");
    assert_eq!(reap(detached_pid), 128 + 9, "the detached process was left to this subreaper");

    // A terminal: the pty master goes to the console socket, the program's streams are its slave.
    let socket_path = sandbox.root.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket_path).expect("console socket");
    let tty_pid_file = sandbox.root.path().join("tty.pid");
    let mut tty_exec = Command::new(RUNC)
        .arg("--root")
        .arg(state_root(&sandbox))
        .args(["exec", "--tty", "--detach", "--console-socket", socket_path.to_str().unwrap(), "--pid-file", tty_pid_file.to_str().unwrap()])
        .args(["ex", "sh", "-c", "tty > /tmp/exec-tty"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec --tty");
    let master = receive_console(&listener);
    let finished = tty_exec.wait().expect("exec --tty ends");
    let mut errors = String::new();
    let _ = tty_exec.stderr.take().expect("stderr").read_to_string(&mut errors);
    assert!(finished.success(), "exec --tty --detach: {errors}");
    {
        use std::os::unix::fs::MetadataExt;
        let master_device = std::fs::metadata(format!("/proc/self/fd/{master}")).expect("the received descriptor").dev();
        let containers = std::fs::metadata(format!("/proc/{pid}/root/dev/pts/ptmx")).expect("the container's ptmx").dev();
        let hosts = std::fs::metadata("/dev/pts/ptmx").expect("the host's ptmx").dev();
        assert!(master_device == containers && master_device != hosts, "a pty master of the container's devpts");
    }
    let tty_file = sandbox.rootfs().join("tmp/exec-tty");
    let began = Instant::now();
    while !std::fs::read_to_string(&tty_file).unwrap_or_default().ends_with('\n') {
        assert!(began.elapsed() < Duration::from_secs(20), "the terminal's program never wrote {}", tty_file.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    let tty = std::fs::read_to_string(&tty_file).expect("its terminal");
    assert!(tty.starts_with("/dev/pts/"), "the program's standard streams are the pty's slave: {tty:?}");
    nix::unistd::close(master).expect("close the master");
    // Left to this subreaper: reaped here, or the container's PID 1 could not finish dying.
    let tty_pid: i32 = std::fs::read_to_string(&tty_pid_file).expect("the tty exec's pid file").trim().parse().expect("a PID");
    assert_eq!(reap(tty_pid), 0);

    // Refusals: a missing program fails exec itself, a terminal needs a console socket.
    let missing = runc(&sandbox, &["exec", "--pid-file", exec_pid_file.with_extension("missing").to_str().unwrap(), "ex", "/no/such/program"]);
    assert!(!missing.status.success() && stderr(&missing).contains("/no/such/program"), "{}", stderr(&missing));
    assert!(!exec_pid_file.with_extension("missing").exists(), "no PID file for a process that never ran");
    let no_console = runc(&sandbox, &["exec", "--tty", "ex", "sh"]);
    assert!(!no_console.status.success() && stderr(&no_console).contains("--console-socket"), "{}", stderr(&no_console));

    assert!(runc(&sandbox, &["kill", "ex", "KILL"]).status.success());
    assert_eq!(reap(pid), 128 + 9);
    let stopped = runc(&sandbox, &["exec", "ex", "true"]);
    assert!(!stopped.status.success() && stderr(&stopped).contains("stopped"), "{}", stderr(&stopped));
    assert!(runc(&sandbox, &["delete", "ex"]).status.success());
    assert_gone(&sandbox, "ex");
}

#[test]
fn exec_joins_a_container_with_its_own_user_namespace_that_shares_the_hosts_network() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new("oci-exec-userns");
    let _cleanup = Cleanup(&sandbox, &["exus"]);
    // The container's root (uid 100000 on the host) reaches its root filesystem and
    // finds the mount points there: it could not make them in a directory of the host's root.
    std::fs::set_permissions(sandbox.root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod the sandbox");
    for dir in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(sandbox.rootfs().join(dir)).expect("a mount point");
    }
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    let dir = bundle(&sandbox, "exus", "echo up; while true; do sleep 0.05; done", |config| {
        let namespaces = config["linux"]["namespaces"].as_array_mut().expect("namespaces");
        namespaces.retain(|n| n["type"] != "network");
        namespaces.push(serde_json::json!({"type": "user"}));
        config["linux"]["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        config["linux"]["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        // sysfs belongs to the network namespace's owner: the host's is bound instead.
        for mount in config["mounts"].as_array_mut().expect("mounts") {
            if mount["destination"] == "/sys" {
                *mount = serde_json::json!({"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
            }
        }
    });
    let output = sandbox.root.path().join("exus.out");
    let created = create(&sandbox, "exus", &dir, &output);
    assert!(created.status.success(), "create: {}", std::fs::read_to_string(&output).unwrap_or_default());
    let pid: i32 = std::fs::read_to_string(sandbox.root.path().join("exus.pid")).expect("pid file").trim().parse().expect("a PID");
    assert!(runc(&sandbox, &["start", "exus"]).status.success());
    wait_for_text(&output, "up");
    let ran = runc(&sandbox, &["exec", "exus", "sh", "-c", "cat /proc/self/uid_map; readlink /proc/self/ns/user; readlink /proc/self/ns/net"]);
    assert!(ran.status.success(), "exec into a user namespace container: {}", stderr(&ran));
    let said = stdout(&ran);
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/user")).expect("its user namespace").display().to_string();
    let host_net = std::fs::read_link("/proc/self/ns/net").expect("the host's network namespace").display().to_string();
    assert!(said.contains("100000") && said.contains(&theirs) && said.contains(&host_net), "its user namespace, the host's network: {said}");
    assert!(runc(&sandbox, &["kill", "exus", "KILL"]).status.success());
    assert_eq!(reap(pid), 128 + 9);
    assert!(runc(&sandbox, &["delete", "exus"]).status.success());
    assert_gone(&sandbox, "exus");
}

#[test]
fn run_creates_starts_waits_for_and_deletes_the_container() {
    let sandbox = Sandbox::new("oci-run");
    let _cleanup = Cleanup(&sandbox, &["once"]);
    let dir = bundle(&sandbox, "once", "echo ran as $(hostname); exit 4", |_| {});
    let ran = runc(&sandbox, &["run", "--bundle", dir.to_str().unwrap(), "once"]);
    assert_eq!(ran.status.code(), Some(4), "run exits with the program's status: {}", stderr(&ran));
    assert!(stdout(&ran).contains("ran as once"), "{}", stdout(&ran));
    assert_gone(&sandbox, "once");
}
