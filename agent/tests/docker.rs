//! `orch-runc` driven by a real Docker: Debian's `docker.io` (installed by
//! `deploy/test.sh` with its services kept from starting), a `dockerd` of the test's own
//! — its data, exec root, socket, key and cgroup parent in a temporary directory, no
//! bridge, no iptables — with `--add-runtime orch=…/orch-runc`. Through containerd's
//! runc shim, as any runc: a one-shot `docker run` and its exit code, a detached
//! container with `docker exec` (its status, namespaces, `-it`), `docker top`,
//! `docker kill -s`, `docker stop` (the container's trap, then the grace period's
//! SIGKILL), `docker start` again, `docker kill`, `-t`/`-it` consoles, `docker rm` — and
//! nothing left of it afterwards (cgroups, orch-runc's records).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, stdout};

const RUNC: &str = env!("CARGO_BIN_EXE_orch-runc");
const IMAGE: &str = "orch-busybox:test";

/// Directories dockerd and containerd make outside their roots (plugin discovery, the
/// shims' sockets): removed afterwards when the test made them and they are empty.
const SHARED_DIRS: [&str; 5] = ["/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd/runc", "/run/containerd"];

/// A dockerd of this test's own.
struct Dockerd {
    dir: tempfile::TempDir,
    daemon: Child,
    cgroup_parent: String,
    made: Vec<&'static str>,
}

impl Dockerd {
    fn start() -> Dockerd {
        common::require_root();
        common::require_programs(&["dockerd", "docker", "script"], "install docker.io (deploy/test.sh does, its services kept from starting)");
        let dir = tempfile::Builder::new().prefix("orch-dk-").tempdir().expect("tempdir");
        let cgroup_parent = format!("orch-test-{}-docker", std::process::id());
        let made = SHARED_DIRS.iter().copied().filter(|d| !Path::new(d).exists()).collect();
        let path = |name: &str| dir.path().join(name);
        // Its identity key beside the rest (dockerd 20.10 writes /etc/docker/key.json otherwise).
        let config = serde_json::json!({"deprecated-key-path": path("key.json")});
        std::fs::write(path("daemon.json"), config.to_string()).expect("daemon.json");
        let log = std::fs::File::create(path("dockerd.log")).expect("dockerd.log");
        let daemon = Command::new("dockerd")
            .arg("--config-file")
            .arg(path("daemon.json"))
            .arg("--data-root")
            .arg(path("data"))
            .arg("--exec-root")
            .arg(path("exec"))
            .arg("--pidfile")
            .arg(path("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", path("docker.sock").display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-forward=false", "--ip-masq=false"])
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs", "--cgroup-parent", &cgroup_parent])
            .arg("--add-runtime")
            .arg(format!("orch={RUNC}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut dockerd = Dockerd { dir, daemon, cgroup_parent, made };
        let began = Instant::now();
        while !dockerd.docker(&["version"]).status.success() {
            if let Ok(Some(status)) = dockerd.daemon.try_wait() {
                panic!("dockerd exited ({status}) during start-up:\n{}", dockerd.log());
            }
            assert!(began.elapsed() < Duration::from_secs(60), "dockerd did not answer within 60 s:\n{}", dockerd.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        dockerd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    /// `docker`, bounded: a client that hangs fails the test instead.
    fn command(&self) -> Command {
        let mut command = Command::new("timeout");
        command.args(["120", "docker"]);
        command.env("DOCKER_HOST", self.host()).env("DOCKER_CONFIG", self.dir.path().join("client")).stdin(Stdio::null());
        command
    }

    fn docker(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run docker")
    }

    /// `docker ARGS` that must succeed: its standard output, trimmed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(out.status.success(), "docker {args:?}: {}\n{}", stderr(&out), stdout(&out));
        stdout(&out).trim().to_owned()
    }

    /// `docker ARGS` given a terminal (util-linux's `script`) with `input` typed into it.
    fn with_terminal(&self, args: &str, input: &str) -> Output {
        let command = format!("DOCKER_HOST={} DOCKER_CONFIG={} timeout --foreground 120 docker {args}", self.host(), self.dir.path().join("client").display());
        common::with_terminal(&command, input)
    }

    fn wait_for_log(&self, container: &str, text: &str) {
        let began = Instant::now();
        loop {
            let logs = self.docker(&["logs", container]);
            if stdout(&logs).contains(text) {
                return;
            }
            assert!(began.elapsed() < Duration::from_secs(30), "{text:?} never appeared in the logs of {container}: {}", stdout(&logs));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exit_code(&self, container: &str) -> i64 {
        self.ok(&["inspect", "-f", "{{.State.ExitCode}}", container]).parse().expect("an exit code")
    }

    /// The cgroup directories of this daemon's containers, in every hierarchy.
    fn cgroups_left(&self) -> Vec<PathBuf> {
        common::cgroups_below(&self.cgroup_parent, &[])
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // After a failure: the containers first, then the daemon (which stops its containerd).
        let all = self.docker(&["ps", "-aq"]);
        for id in stdout(&all).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.daemon.id().try_into().unwrap_or(0)), nix::sys::signal::Signal::SIGTERM);
        let began = Instant::now();
        while matches!(self.daemon.try_wait(), Ok(None)) && began.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // What dockerd left mounted below its roots goes before the directory does.
        common::unmount_below(self.dir.path());
        common::remove_cgroup_parent(&self.cgroup_parent, &[]);
        // containerd's shims remove their sockets a moment after the daemon is gone.
        let began = Instant::now();
        while self.made.iter().any(|dir| Path::new(dir).exists()) && began.elapsed() < Duration::from_secs(5) {
            for dir in &self.made {
                let _ = std::fs::remove_dir(dir);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn docker_runs_execs_stops_kills_and_removes_containers_through_orch_runc() {
    let dockerd = Dockerd::start();
    let mut import = dockerd.command();
    import.args(["import", "-", IMAGE]);
    common::import_busybox(&dockerd.dir.path().join("rootfs"), import);
    let run = ["run", "--runtime", "orch", "--network", "none"];

    // A one-shot command: its output and exit code, under Docker's seccomp profile and
    // default capabilities.
    let once = dockerd.docker(
        &[&run[..], &["--rm", IMAGE, "sh", "-c", "echo hello from orch-runc; grep -E '^(Seccomp|CapEff|NoNewPrivs):' /proc/self/status; exit 3"]].concat(),
    );
    assert_eq!(once.status.code(), Some(3), "docker run's status is the program's: {}", stderr(&once));
    let said = stdout(&once);
    assert!(
        said.contains("hello from orch-runc") && said.contains("Seccomp:\t2") && said.contains("CapEff:\t00000000a80425fb") && said.contains("NoNewPrivs:\t0"),
        "Docker's profile and capabilities, no_new_privs unset as Docker leaves it: {said}"
    );

    // A detached container, run by orch-runc (its record, under the shim's root).
    let script = "trap 'echo got usr1' USR1; trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done";
    let id = dockerd.ok(&[&run[..], &["-d", "--name", "svc", IMAGE, "sh", "-c", script]].concat());
    dockerd.wait_for_log("svc", "ready");
    assert_eq!(dockerd.ok(&["inspect", "-f", "{{.HostConfig.Runtime}}", "svc"]), "orch");
    let pid = dockerd.ok(&["inspect", "-f", "{{.State.Pid}}", "svc"]);
    let record = find_record(&[dockerd.dir.path(), Path::new("/run/containerd")], &id).expect("orch-runc's record of the container");
    let state_out = Command::new(RUNC).arg("--root").arg(record.parent().expect("the root")).args(["state", &id]).output().expect("orch-runc state");
    let state: serde_json::Value = serde_json::from_str(&stdout(&state_out)).expect("state JSON");
    assert_eq!((state["status"].as_str(), state["pid"].to_string()), (Some("running"), pid.clone()), "{state}");

    // docker exec: the exit status, the container's PID namespace and hostname, and `-it`.
    let script = "hostname; for n in pid mnt net uts ipc; do [ $(readlink /proc/self/ns/$n) = $(readlink /proc/1/ns/$n) ] && echo same $n; done; exit 5";
    let exec = dockerd.docker(&["exec", "svc", "sh", "-c", script]);
    assert_eq!(exec.status.code(), Some(5), "docker exec's status is the program's: {}", stderr(&exec));
    let said = stdout(&exec);
    assert!(said.starts_with(&id[..12]), "the container's hostname: {said}");
    for kind in ["pid", "mnt", "net", "uts", "ipc"] {
        assert!(said.contains(&format!("same {kind}\n")), "docker exec runs in the container's {kind} namespace: {said}");
    }
    let interactive = dockerd.with_terminal("exec -it svc sh", "tty; echo $((6*7))\nexit 6\n");
    let typed = stdout(&interactive);
    assert_eq!(
        interactive.status.code(),
        Some(6),
        "docker exec -it: {typed}{}\ndockerd's log ends:\n{}",
        stderr(&interactive),
        dockerd.log().lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(typed.contains("/dev/pts/") && typed.contains("42"), "{typed}");
    let top = dockerd.ok(&["top", "svc"]);
    assert!(top.contains("sleep") && top.contains(&pid), "docker top lists the container's processes (orch-runc ps): {top}");

    // docker kill -s and docker stop: the container's traps.
    dockerd.ok(&["kill", "-s", "USR1", "svc"]);
    dockerd.wait_for_log("svc", "got usr1");
    dockerd.ok(&["stop", "-t", "10", "svc"]);
    assert!(stdout(&dockerd.docker(&["logs", "svc"])).contains("bye"), "SIGTERM reached the trap");
    assert_eq!(dockerd.exit_code("svc"), 0);
    dockerd.ok(&["rm", "svc"]);

    // A container that ignores SIGTERM: stop's grace period ends with SIGKILL; started
    // again, docker kill ends it.
    dockerd.ok(&[&run[..], &["-d", "--name", "stubborn", IMAGE, "sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"]].concat());
    dockerd.wait_for_log("stubborn", "ready");
    dockerd.ok(&["stop", "-t", "1", "stubborn"]);
    assert_eq!(dockerd.exit_code("stubborn"), 137, "SIGKILL after the grace period");
    dockerd.ok(&["start", "stubborn"]);
    assert_eq!(dockerd.ok(&["inspect", "-f", "{{.State.Status}}", "stubborn"]), "running");
    dockerd.ok(&["kill", "stubborn"]);
    assert_eq!(dockerd.exit_code("stubborn"), 137);
    dockerd.ok(&["rm", "stubborn"]);

    // Consoles: -t gives the program a pty; -it carries what is typed.
    let tty = dockerd.ok(&[&run[..], &["--rm", "-t", IMAGE, "tty"]].concat());
    assert!(tty.starts_with("/dev/pts/"), "{tty:?}");
    let interactive = dockerd.with_terminal(&format!("run --rm -it --runtime orch --network none {IMAGE} sh"), "echo $((6*7))\nexit 4\n");
    assert_eq!(interactive.status.code(), Some(4), "docker run -it: {}{}", stdout(&interactive), stderr(&interactive));
    assert!(stdout(&interactive).contains("42"), "{}", stdout(&interactive));

    // Nothing of them is left: no container, no cgroup, no orch-runc record.
    assert_eq!(dockerd.ok(&["ps", "-aq"]), "");
    assert_eq!(dockerd.cgroups_left(), Vec::<PathBuf>::new(), "cgroups left by docker rm");
    assert!(!record.exists(), "orch-runc's record {} left by docker rm", record.display());
}

/// `<root>/<id>/state.json` below any of `dirs` (the shim's `--root` for orch-runc).
fn find_record(dirs: &[&Path], id: &str) -> Option<PathBuf> {
    for dir in dirs {
        let found = Command::new("find").arg(dir).args(["-maxdepth", "6", "-path", &format!("*/{id}/state.json")]).output().ok()?;
        if let Some(line) = stdout(&found).lines().next() {
            return Some(PathBuf::from(line).parent()?.to_owned());
        }
    }
    None
}
