//! `orch-runc` driven by Podman (Debian's podman 4.3, installed by `deploy/test.sh`):
//! `podman --runtime …/orch-runc` through conmon, with the test's own storage, run root,
//! tmpdir and cgroup parent in a temporary directory (cgroupfs, no events, no network).
//! A one-shot run and its exit code, a detached container with `podman exec`, `podman
//! stop` reaching its trap, `podman logs`, `-it` (under `script`), `podman rm` — and
//! nothing of it left.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::process::{Command, Output, Stdio};

use common::{stderr, stdout};

const RUNC: &str = env!("CARGO_BIN_EXE_orch-runc");
const IMAGE: &str = "localhost/orch-busybox:test";

struct Podman {
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Podman {
    fn new() -> Podman {
        common::require_root();
        common::require_programs(&["podman", "conmon", "script"], "install podman (deploy/test.sh does)");
        let dir = tempfile::Builder::new().prefix("orch-pm-").tempdir().expect("tempdir");
        Podman { dir, cgroup_parent: format!("orch-test-{}-podman", std::process::id()) }
    }

    /// podman's global flags: everything it keeps below the test's directory.
    fn global_args(&self) -> Vec<String> {
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        vec![
            "--root".into(),
            path("storage"),
            "--runroot".into(),
            path("run"),
            "--tmpdir".into(),
            path("tmp"),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "none".into(),
            "--runtime".into(),
            RUNC.into(),
        ]
    }

    /// `podman run`'s flags: no network, the test's cgroup parent, and open-file and
    /// process limits within the caller's own (podman asks for 1048576 otherwise, which
    /// a host without CAP_SYS_RESOURCE refuses to runc too).
    fn run_args(&self) -> Vec<String> {
        ["--network", "none", "--cgroup-parent", &self.cgroup_parent, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    fn podman(&self, args: &[&str]) -> Output {
        Command::new("timeout").args(["120", "podman"]).args(self.global_args()).args(args).stdin(Stdio::null()).output().expect("run podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(out.status.success(), "podman {args:?}: {}\n{}", stderr(&out), stdout(&out));
        stdout(&out).trim().to_owned()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        let _ = self.podman(&["system", "reset", "-f"]);
        common::unmount_below(self.dir.path());
        // podman keeps conmon in a cgroup of its own below the parent.
        common::remove_cgroup_parent(&self.cgroup_parent, &["conmon"]);
    }
}

#[test]
fn podman_runs_execs_stops_and_removes_containers_through_orch_runc() {
    let podman = Podman::new();
    let mut import = Command::new("podman");
    import.args(podman.global_args()).args(["import", "-", IMAGE]);
    common::import_busybox(&podman.dir.path().join("rootfs"), import);
    let run_args = podman.run_args();
    let run: Vec<&str> = std::iter::once("run").chain(run_args.iter().map(String::as_str)).collect();

    let once = podman.podman(&[&run[..], &["--rm", IMAGE, "sh", "-c", "echo hello from orch-runc; exit 3"]].concat());
    assert_eq!(once.status.code(), Some(3), "podman run's status is the program's: {}", stderr(&once));
    assert!(stdout(&once).contains("hello from orch-runc"), "{}", stdout(&once));

    let script = "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done";
    podman.ok(&[&run[..], &["-d", "--name", "svc", IMAGE, "sh", "-c", script]].concat());
    let began = std::time::Instant::now();
    while !stdout(&podman.podman(&["logs", "svc"])).contains("ready") {
        assert!(began.elapsed() < std::time::Duration::from_secs(30), "the container never said ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let exec = podman.podman(&["exec", "svc", "sh", "-c", "[ $(readlink /proc/self/ns/pid) = $(readlink /proc/1/ns/pid) ] && echo same pid; exit 5"]);
    assert_eq!(exec.status.code(), Some(5), "podman exec's status is the program's: {}", stderr(&exec));
    assert!(stdout(&exec).contains("same pid"), "podman exec runs in the container's PID namespace: {}", stdout(&exec));
    podman.ok(&["stop", "-t", "10", "svc"]);
    assert!(stdout(&podman.podman(&["logs", "svc"])).contains("bye"), "SIGTERM reached the trap");
    assert_eq!(podman.ok(&["inspect", "-f", "{{.State.ExitCode}}", "svc"]), "0");
    podman.ok(&["rm", "svc"]);

    let command = format!("timeout --foreground 120 podman {} {} --rm -it {IMAGE} sh", podman.global_args().join(" "), run.join(" "));
    let interactive = common::with_terminal(&command, "tty; echo $((6*7))\nexit 4\n");
    assert_eq!(interactive.status.code(), Some(4), "podman run -it: {}{}", stdout(&interactive), stderr(&interactive));
    assert!(stdout(&interactive).contains("/dev/pts/") && stdout(&interactive).contains("42"), "{}", stdout(&interactive));

    assert_eq!(podman.ok(&["ps", "-aq"]), "");
    // What orch-runc made; conmon's own cgroup is podman's.
    let left = common::cgroups_below(&podman.cgroup_parent, &["conmon"]);
    assert!(left.is_empty(), "cgroups left by podman rm: {left:?}");
}
