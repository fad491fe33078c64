//! Harness for the runtime tests: root check, a busybox rootfs, a private state
//! directory and cgroup parent per test, and leak checks. Everything a test made is
//! removed when its `Sandbox` drops, including after a panic.

#![allow(dead_code)]

pub mod cluster;
pub mod oci;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use orch_agent::cgroups::CgroupLayout;

pub const AGENT: &str = env!("CARGO_BIN_EXE_orch-agent");
/// The small binary the runtime starts as each container's shim, beside [`AGENT`].
pub const INIT: &str = env!("CARGO_BIN_EXE_orch-init");

/// These tests create namespaces, mounts and cgroups: they need root, and say so.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates namespaces, overlay mounts and cgroups and must run as root (CI does): run `sudo bash deploy/test.sh`"
    );
}

/// Debian's busybox-static, which `deploy/test.sh` installs.
pub const BUSYBOX: &str = "/bin/busybox";

/// A read-only busybox root: /bin/busybox and a symlink per applet.
pub fn busybox_rootfs(dir: &Path) {
    assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} is missing: install busybox-static (deploy/test.sh does)");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("create bin");
    std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
    let list = Command::new(BUSYBOX).arg("--list").output().expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("symlink applet");
        }
    }
    for dir_name in ["etc", "tmp", "root", "mnt"] {
        std::fs::create_dir_all(dir.join(dir_name)).expect("create dir");
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
}

/// One test's private corner: a rootfs, a state directory and a cgroup parent.
pub struct Sandbox {
    pub name: String,
    pub root: tempfile::TempDir,
    pub cgroup_parent: String,
}

impl Sandbox {
    pub fn new(test: &str) -> Sandbox {
        require_root();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = tempfile::Builder::new().prefix(&format!("orch-rt-{test}-")).tempdir().expect("tempdir");
        busybox_rootfs(&root.path().join("rootfs"));
        Sandbox { name: test.to_owned(), root, cgroup_parent: format!("orch-test-{}-{n}-{test}", std::process::id()) }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.root.path().join("rootfs")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// `orch-agent run` with this sandbox's rootfs, state and cgroup parent.
    pub fn run_command(&self, container: &str, flags: &[&str], command: &[&str]) -> Command {
        let mut cmd = Command::new(AGENT);
        cmd.arg("run")
            .arg("--rootfs")
            .arg(self.rootfs())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .arg("--name")
            .arg(container)
            .args(flags)
            .arg("--")
            .args(command)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a container to completion.
    pub fn run(&self, container: &str, flags: &[&str], command: &[&str]) -> Output {
        self.run_command(container, flags, command).output().expect("spawn orch-agent run")
    }

    pub fn cgroup_paths(&self, container: &str) -> Vec<PathBuf> {
        let layout = CgroupLayout::detect().expect("cgroup layout");
        layout.container(&format!("{}/{container}", self.cgroup_parent)).expect("cgroup").paths()
    }

    /// Nothing of `container` is left: state, overlay dirs, cgroups, mounts.
    pub fn assert_clean(&self, container: &str) {
        let dir = self.state_dir().join("containers").join(container);
        assert!(!dir.exists(), "container directory {} left behind", dir.display());
        for path in self.cgroup_paths(container) {
            assert!(!path.exists(), "cgroup {} left behind", path.display());
            let parent = path.parent().expect("parent");
            assert!(!parent.exists(), "cgroup parent {} left behind", parent.display());
        }
        // Every hierarchy, those a container joins only when it needs them included.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").expect("cgroupfs").flatten() {
            let left = hierarchy.path().join(&self.cgroup_parent).join(container);
            assert!(!left.exists(), "cgroup {} left behind", left.display());
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = self.root.path().display().to_string();
        assert!(!mounts.contains(&root), "a mount under {root} is visible on the host:\n{mounts}");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // After a failed test: kill and remove whatever is left in our cgroups.
        let Ok(layout) = CgroupLayout::detect() else { return };
        let containers = self.state_dir().join("containers");
        if let Ok(entries) = std::fs::read_dir(&containers) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                if let Ok(cgroup) = layout.container(&format!("{}/{id}", self.cgroup_parent)) {
                    let _ = cgroup.destroy();
                }
            }
        }
        if let Ok(cgroup) = layout.container(&format!("{}/x", self.cgroup_parent)) {
            for path in cgroup.paths() {
                if let Some(parent) = path.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
        }
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The output a container's log holds: its records' content, as `orch logs` prints it.
pub fn log_text(path: &std::path::Path) -> String {
    let raw = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let record = orch_agent::runtime::output::parse_record(line);
        out.extend_from_slice(record.content);
        if !record.partial {
            out.push(b'\n');
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The PIDs of the balancer processes (outliving the agent that started them) of the
/// node network on `bridge`.
pub fn balancer_pids(bridge: &str) -> Vec<i32> {
    orch_agent::net::balancer_process::pids(bridge)
}

/// Kills what [`balancer_pids`] finds (after a failed test).
pub fn kill_balancers(bridge: &str) {
    for pid in balancer_pids(bridge) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Waits (at most 5 s) until host PID `pid`, killed, is a zombie or gone: the kernel has
/// then ended every process of its PID namespace, so none holds a socket any more.
pub fn wait_until_dead(pid: i32) {
    for _ in 0..5000 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()));
        if matches!(state, None | Some('Z' | 'X')) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("host PID {pid} still runs 5 s after kill -9");
}

/// Fails clearly when a program a test drives is not installed (`hint` says how).
pub fn require_programs(programs: &[&str], hint: &str) {
    for program in programs {
        let found = Command::new("sh").args(["-c", &format!("command -v {program}")]).output().expect("sh");
        assert!(found.status.success(), "{program} is missing: {hint}");
    }
}

/// Lazily unmounts every mount at or below `dir`, deepest first (what a daemon a test
/// started left behind), so that the directory can go.
pub fn unmount_below(dir: &Path) {
    let root = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut left: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&root)).collect();
    left.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in left {
        let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes the cgroup `parent` from every hierarchy, its `inner` directories first;
/// what is not empty stays.
pub fn remove_cgroup_parent(parent: &str, inner: &[&str]) {
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten().map(|h| h.path());
    for dir in hierarchies.chain(std::iter::once(PathBuf::from("/sys/fs/cgroup"))).map(|h| h.join(parent)) {
        for name in inner {
            let _ = std::fs::remove_dir(dir.join(name));
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

/// The cgroups below `parent` in every hierarchy but those named in `foreign`.
pub fn cgroups_below(parent: &str, foreign: &[&str]) -> Vec<PathBuf> {
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup").expect("cgroupfs").flatten().map(|h| h.path());
    hierarchies
        .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup")))
        .map(|h| h.join(parent))
        .flat_map(|p| std::fs::read_dir(&p).map(|entries| entries.flatten().collect::<Vec<_>>()).unwrap_or_default())
        .filter(|e| e.path().is_dir() && !foreign.iter().any(|f| e.file_name() == *f))
        .map(|e| e.path())
        .collect()
}

/// Runs the shell command line `command` with a terminal (util-linux's `script`), and
/// `input` typed into it. A `timeout` in `command` needs `--foreground`: otherwise the
/// program runs in a background process group of that terminal and stops at its first
/// read (SIGTTIN).
pub fn with_terminal(command: &str, input: &str) -> Output {
    let mut child = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), input.as_bytes()).expect("type into the terminal");
    child.wait_with_output().expect("script ends")
}

/// A busybox root (as [`busybox_rootfs`]) imported as `image` by `import` (`docker
/// import - IMAGE`, `podman import - IMAGE`), which reads the tar on its stdin.
pub fn import_busybox(dir: &Path, mut import: Command) {
    busybox_rootfs(dir);
    let mut tar = Command::new("tar").arg("-C").arg(dir).args(["-c", "."]).stdout(Stdio::piped()).spawn().expect("tar");
    let imported = import.stdin(tar.stdout.take().expect("tar's output")).output().expect("import");
    assert!(tar.wait().expect("tar ends").success() && imported.status.success(), "import: {}", stderr(&imported));
}
