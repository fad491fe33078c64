//! `orch-runc create`: the container's processes, as runc makes them.
//!
//! `orch-runc create` (single-threaded: no async runtime) makes the cgroup, the state
//! directory and the exec FIFO, then forks **stage 1**, which joins the cgroup, enters
//! or makes the namespaces (the user namespace first, mapped by the parent) and forks
//! the **container process** — PID 1 of a new PID namespace — before it exits. That
//! process builds the root (the bundle's root bound on itself, the config's mounts in
//! order on targets opened inside it, devices, the console), pivots into it, masks and
//! write-protects what the config says, tells `create` it is ready and blocks opening
//! the exec FIFO for writing. `create` writes the PID file and the state and exits: the
//! container process is left to the caller's subreaper (containerd's shim), as runc's
//! is. `start` opens the FIFO for reading; the process then takes its credentials,
//! limits and capabilities, and execs the program.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{fork, ForkResult, Pid};

use super::plan::{MountPlan, Plan};
use super::state::{self, Record, EXEC_FIFO};
use super::OciError;
use crate::cgroups::{CgroupLayout, ContainerCgroup};
use crate::runtime::rootfs::{self, step, SetupError};
use crate::runtime::{now_unix_ms, procfs, User};

/// What `create` was asked.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// chroot instead of pivot_root (a root on a ramfs cannot be pivoted from).
    pub no_pivot: bool,
}

/// Exit codes of a container process that could not exec its program (as the agent's).
const CODE_RUNTIME: i32 = crate::runtime::CODE_RUNTIME;

pub fn create(options: &CreateOptions) -> Result<(), OciError> {
    let dir = state::dir(&options.root, &options.id)?;
    let bundle = std::path::absolute(&options.bundle).map_err(OciError::io("cannot resolve", &options.bundle))?;
    let config_path = bundle.join("config.json");
    let spec = load_config(&config_path)?;
    let mut plan = super::plan::plan(&spec, &bundle, &options.id)?;
    // The root as the kernel resolves it (a link in its path would otherwise be matched
    // against the wrong mount, and pivot into what the link names at that moment).
    plan.root = std::fs::canonicalize(&plan.root).map_err(OciError::io("config.json: root.path: cannot resolve", &plan.root))?;
    if plan.process.terminal && options.console_socket.is_none() {
        return Err(OciError::Failed("config.json: process.terminal is true: --console-socket is required".into()));
    }
    if !plan.process.terminal && options.console_socket.is_some() {
        return Err(OciError::Failed("--console-socket given, but config.json's process.terminal is false".into()));
    }
    if !plan.root.is_dir() {
        return Err(OciError::Failed(format!("config.json: root.path: {} is not a directory", plan.root.display())));
    }
    let layout = CgroupLayout::detect()?;
    let cgroup = layout.container(&plan.cgroup)?;
    if cgroup.processes().is_ok_and(|p| !p.is_empty()) {
        return Err(OciError::Failed(format!("config.json: linux.cgroupsPath: cgroup {} has processes in it already", plan.cgroup)));
    }
    make_private_dir(&options.root)?;
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(OciError::Exists(options.id.clone())),
        Err(e) => return Err(OciError::Io { what: "cannot create", path: dir, source: e }),
    }
    let made = make(options, &plan, &dir, &bundle, cgroup.as_ref(), &spec);
    if made.is_err() {
        let _ = cgroup.destroy();
        let _ = std::fs::remove_dir_all(&dir);
    }
    made
}

/// A bundle's `config.json`, parse errors with their line and column (oci-spec's own
/// loader says only "serde failed").
pub(super) fn load_config(path: &Path) -> Result<oci_spec::runtime::Spec, OciError> {
    let text = std::fs::read_to_string(path).map_err(OciError::io("cannot read", path))?;
    serde_json::from_str(&text).map_err(|e| OciError::Failed(format!("{}: {e}", path.display())))
}

/// `--root`, made root's alone when it does not exist (an existing one keeps its mode:
/// `--root /tmp/x` must not change `/tmp`).
fn make_private_dir(path: &Path) -> Result<(), OciError> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(OciError::io("cannot create", path))
}

/// Everything after the directory exists; on an error the caller removes it and the cgroup.
fn make(options: &CreateOptions, plan: &Plan, dir: &Path, bundle: &Path, cgroup: &dyn ContainerCgroup, spec: &oci_spec::runtime::Spec) -> Result<(), OciError> {
    let fifo = dir.join(EXEC_FIFO);
    // Writable by the container's user, whoever it is (runc's 0622): only root reaches
    // the directory.
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622)).map_err(|e| OciError::Failed(format!("mkfifo {}: {e}", fifo.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o622)).map_err(OciError::io("cannot chmod", &fifo))?;
    }
    cgroup.create(&plan.limits)?;
    let fifo_path = open_path(&fifo)?;
    let console = match &options.console_socket {
        Some(path) => Some(UnixStream::connect(path).map_err(OciError::io("cannot connect to the console socket", path))?),
        None => None,
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(OciError::io("cannot read", "/proc/self/mountinfo"))?;
    let cgroup_mounts = crate::cgroups::namespaced_mounts(&mountinfo, &cgroup.paths());
    let (parent_end, child_end) = UnixStream::pair().map_err(OciError::io("cannot create a socket pair", ""))?;
    let setup = Setup { plan, cgroup, fifo: fifo_path, console, no_pivot: options.no_pivot, cgroup_mounts };
    // SAFETY: orch-runc is single-threaded (no async runtime, no thread started), so the
    // child may run any code after fork.
    let stage1 = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(parent_end);
            let code = stage1_main(&setup, child_end);
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(OciError::Failed(format!("fork: {e}"))),
    };
    drop(child_end);
    drop(setup);
    let annotations: std::collections::BTreeMap<String, String> = spec.annotations().clone().unwrap_or_default().into_iter().collect();
    let run_runtime_hooks = |pid: i32| -> Result<serde_json::Value, String> {
        let state = state::hook_state(&options.id, pid, bundle, &annotations, "creating");
        super::hooks::run(&plan.hooks.prestart, "prestart", &state)?;
        super::hooks::run(&plan.hooks.create_runtime, "createRuntime", &state)?;
        Ok(state)
    };
    let outcome = follow(plan, stage1, &parent_end, &run_runtime_hooks);
    if outcome.is_err() {
        // Stage 1 may still wait on us (the id maps): it goes, and the socket with it.
        let _ = parent_end.shutdown(std::net::Shutdown::Both);
        let _ = signal_process(stage1.as_raw(), nix::libc::SIGKILL);
    }
    // Stage 1 exits once it has named the container process (or failed).
    let _ = nix::sys::wait::waitpid(stage1, None);
    let pid = outcome?;
    let record = Record {
        id: options.id.clone(),
        pid,
        pid_start_ticks: procfs::start_ticks(pid).unwrap_or_default(),
        bundle: bundle.to_owned(),
        rootfs: plan.root.clone(),
        created_unix_ms: now_unix_ms(),
        cgroup: plan.cgroup.clone(),
        annotations,
        poststart: plan.hooks.poststart.clone(),
        poststop: plan.hooks.poststop.clone(),
    };
    let written = state::save(&options.root, &record).and_then(|()| match &options.pid_file {
        Some(path) => std::fs::write(path, pid.to_string()).map_err(OciError::io("cannot write the pid file", path)),
        None => Ok(()),
    });
    if let Err(error) = written {
        let _ = signal_process(pid, nix::libc::SIGKILL);
        return Err(error);
    }
    Ok(())
}

/// An `O_PATH` descriptor of `path`: the container process reopens the FIFO through it
/// once the host's paths are out of its sight.
fn open_path(path: &Path) -> Result<OwnedFd, OciError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_PATH | nix::libc::O_CLOEXEC).open(path).map_err(OciError::io("cannot open", path))?;
    Ok(OwnedFd::from(file))
}

/// What the forked processes need.
struct Setup<'a> {
    plan: &'a Plan,
    cgroup: &'a dyn ContainerCgroup,
    fifo: OwnedFd,
    console: Option<UnixStream>,
    no_pivot: bool,
    cgroup_mounts: Vec<crate::cgroups::CgroupMount>,
}

/// The parent's side of the exchange: maps a new user namespace when asked, learns the
/// container process's PID, and waits for it to be ready (or for the error that ended it).
fn follow(plan: &Plan, stage1: Pid, socket: &UnixStream, runtime_hooks: &dyn Fn(i32) -> Result<serde_json::Value, String>) -> Result<i32, OciError> {
    let mut reader = BufReader::new(socket);
    let mut writer = socket;
    let mut pid = None;
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(OciError::io("cannot read from the container process", ""))?;
        let message = line.trim_end();
        if read == 0 {
            if let Some(pid) = pid {
                let _ = signal_process(pid, nix::libc::SIGKILL);
            }
            return Err(OciError::Failed("the container process ended before it was ready (no error reported)".into()));
        }
        if message == "userns" {
            write_id_maps(stage1.as_raw(), plan)?;
            writer.write_all(b"mapped\n").map_err(OciError::io("cannot write to the container process", ""))?;
        } else if let Some(number) = message.strip_prefix("pid ") {
            pid = Some(number.parse::<i32>().map_err(|_| OciError::Failed(format!("stage 1 named no PID: {message:?}")))?);
        } else if message == "hooks" {
            // The container's namespaces exist, its root is not pivoted yet: the
            // runtime's hooks run now, and the container process gets the state for its own.
            let pid = pid.ok_or_else(|| OciError::Failed("hooks before its PID was known".into()))?;
            match runtime_hooks(pid) {
                Ok(state) => writer.write_all(format!("state {state}\n").as_bytes()).map_err(OciError::io("cannot write to the container process", ""))?,
                Err(error) => {
                    let _ = signal_process(pid, nix::libc::SIGKILL);
                    return Err(OciError::Failed(error));
                }
            }
        } else if message == "ready" {
            return pid.ok_or_else(|| OciError::Failed("ready before its PID was known".into()));
        } else if let Some(error) = message.strip_prefix("error ") {
            if let Some(pid) = pid {
                let _ = signal_process(pid, nix::libc::SIGKILL);
            }
            return Err(OciError::Failed(error.to_owned()));
        } else {
            return Err(OciError::Failed(format!("unexpected message from the container process: {message:?}")));
        }
    }
}

/// `/proc/PID/{uid,gid}_map` of stage 1's new user namespace (setgroups denied first
/// only when the maps could not be written otherwise: as root, they can).
fn write_id_maps(pid: i32, plan: &Plan) -> Result<(), OciError> {
    let text = |maps: &[(u32, u32, u32)]| maps.iter().map(|(inside, outside, size)| format!("{inside} {outside} {size}\n")).collect::<String>();
    for (file, maps) in [("uid_map", &plan.uid_mappings), ("gid_map", &plan.gid_mappings)] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, text(maps)).map_err(OciError::io("cannot write", &path))?;
    }
    Ok(())
}

/// Sends `signal` (a number) to `pid`.
pub(crate) fn signal_process(pid: i32, signal: i32) -> Result<(), Errno> {
    // SAFETY: kill(2) with a PID and a signal number; it touches no memory of ours.
    if unsafe { nix::libc::kill(pid, signal) } < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Writes one line to the parent.
pub(super) fn tell(socket: &mut UnixStream, message: &str) -> bool {
    socket.write_all(format!("{}\n", message.replace('\n', " ")).as_bytes()).is_ok()
}

/// Stage 1: namespaces, then the container process. Returns its exit code.
fn stage1_main(setup: &Setup, mut socket: UnixStream) -> i32 {
    match stage1(setup, &mut socket) {
        Ok(()) => 0,
        Err(message) => {
            tell(&mut socket, &format!("error {message}"));
            CODE_RUNTIME
        }
    }
}

fn stage1(setup: &Setup, socket: &mut UnixStream) -> Result<(), String> {
    let plan = setup.plan;
    setup.cgroup.add_process(std::process::id().try_into().unwrap_or(0)).map_err(|e| format!("join the cgroup: {e}"))?;
    // Namespaces to join first (a pod's), then the new ones: once in a new user
    // namespace, the host's could no longer be joined.
    let (joined, made): (Vec<_>, Vec<_>) = plan.namespaces.iter().partition(|n| n.path.is_some());
    for namespace in joined.into_iter().chain(made) {
        let flag = CloneFlags::from_bits_truncate(namespace.flag);
        match &namespace.path {
            Some(path) => {
                let file = std::fs::File::open(path).map_err(|e| format!("open the {} namespace {}: {e}", namespace.kind, path.display()))?;
                setns(&file, flag).map_err(|e| format!("setns to the {} namespace {}: {e}", namespace.kind, path.display()))?;
                if namespace.kind == "user" {
                    crate::runtime::init::switch_user(&User::ids(0, 0))?;
                }
            }
            None if namespace.kind == "user" => {
                unshare(flag).map_err(|e| format!("unshare(CLONE_NEWUSER): {e}"))?;
                if !tell(socket, "userns") {
                    return Err("the parent went away".into());
                }
                let mut reader = BufReader::new(&*socket);
                let mut line = String::new();
                reader.read_line(&mut line).map_err(|e| format!("waiting for the id maps: {e}"))?;
                if line.trim_end() != "mapped" {
                    return Err(format!("expected the id maps, got {line:?}"));
                }
                crate::runtime::init::switch_user(&User::ids(0, 0))?;
            }
            None => unshare(flag).map_err(|e| format!("unshare({} namespace): {e}", namespace.kind))?,
        }
    }
    fork_named(socket, "the container process", |socket| container_main(setup, socket))
}

/// Forks a child that runs `body` (its exit code) only once its PID reached the parent
/// of this process as `pid N` on `socket`: whatever the child says there afterwards
/// comes after its name. Shared with `exec`'s joiner.
pub(super) fn fork_named(socket: &mut UnixStream, what: &str, body: impl FnOnce(UnixStream) -> i32) -> Result<(), String> {
    let (named_read, named_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: a fork of single-threaded orch-runc, still single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(named_write);
            let mut byte = [0u8; 1];
            if std::io::Read::read(&mut std::fs::File::from(named_read), &mut byte).unwrap_or(0) != 1 {
                tell(socket, &format!("error {what} was never named to the runtime"));
                std::process::exit(CODE_RUNTIME);
            }
            let code = match socket.try_clone() {
                Ok(own) => body(own),
                Err(e) => {
                    tell(socket, &format!("error {what}: {e}"));
                    CODE_RUNTIME
                }
            };
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(named_read);
            if !tell(socket, &format!("pid {child}")) {
                return Err("the parent went away".into());
            }
            std::io::Write::write_all(&mut std::fs::File::from(named_write), b"1").map_err(|e| format!("let {what} go on: {e}"))
        }
        Err(e) => Err(format!("fork {what}: {e}")),
    }
}

/// The container process: the root, then the wait for `start`, then the program.
fn container_main(setup: &Setup, mut socket: UnixStream) -> i32 {
    let plan = setup.plan;
    let state = match prepare(setup, &mut socket) {
        Ok(state) => state,
        Err(message) => {
            tell(&mut socket, &format!("error {message}"));
            return CODE_RUNTIME;
        }
    };
    // Limits, credentials and the program are settled before the wait, as runc does: a
    // missing program or a bad user fails `create`, not the container after `start`.
    let program = match finalize(plan) {
        Ok(program) => program,
        Err((message, _)) => {
            if !tell(&mut socket, &format!("error {message}")) {
                eprintln!("orch-runc: {message}");
            }
            return CODE_RUNTIME;
        }
    };
    if !tell(&mut socket, "ready") {
        return CODE_RUNTIME;
    }
    drop(socket);
    // Blocks until `orch-runc start` opens the FIFO for reading.
    let reopened = format!("/proc/self/fd/{}", setup.fifo.as_raw_fd());
    match std::fs::OpenOptions::new().write(true).open(&reopened) {
        Ok(mut fifo) => {
            if fifo.write_all(b"0").is_err() {
                return CODE_RUNTIME;
            }
        }
        Err(e) => {
            eprintln!("orch-runc: open the exec FIFO: {e}");
            return CODE_RUNTIME;
        }
    }
    if let Some(mut state) = state {
        state["status"] = serde_json::json!("created");
        if let Err(message) = super::hooks::run(&plan.hooks.start_container, "startContainer", &state) {
            eprintln!("orch-runc: {message}");
            return CODE_RUNTIME;
        }
    }
    let (message, code) = exec_program(plan, &program);
    eprintln!("orch-runc: {message}");
    code
}

/// Everything before the wait: session, hostname, root, console, the hooks before the
/// pivot. The state the hooks read, when the config has hooks.
fn prepare(setup: &Setup, socket: &mut UnixStream) -> Result<Option<serde_json::Value>, String> {
    let plan = setup.plan;
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // Until its exec this process is orch-runc, holding the host's binary open: no
    // other process (a shared PID namespace's) may read its memory or /proc/PID/exe.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("prctl(PR_SET_DUMPABLE): {e}"))?;
    if let Some(hostname) = &plan.hostname {
        nix::unistd::sethostname(hostname).map_err(|e| format!("sethostname({hostname}): {e}"))?;
    }
    if plan.namespaces.iter().any(|n| n.kind == "network" && n.path.is_none()) {
        crate::runtime::init::loopback_up().map_err(|e| format!("bring up the loopback interface: {e}"))?;
    }
    build_root(setup, socket).map_err(|SetupError(message)| message)
}

fn build_root(setup: &Setup, socket: &mut UnixStream) -> Result<Option<serde_json::Value>, SetupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let plan = setup.plan;
    let propagation = MsFlags::from_bits_truncate(plan.root_propagation);
    step(mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>), || "set the propagation of /".to_owned())?;
    let root = &plan.root;
    // pivot_root refuses a root whose parent mount is shared (`rshared`): that mount
    // becomes private in this namespace (runc's rootfsParentMountPrivate).
    if let Some(parent) = shared_parent_mount(&step(std::fs::read_to_string("/proc/self/mountinfo"), || "read mountinfo".to_owned())?, root) {
        step(mount(None::<&str>, parent.as_str(), None::<&str>, MsFlags::MS_PRIVATE, None::<&str>), || format!("make {parent} private"))?;
    }
    // A mount of its own, so that pivot_root can leave the old root behind.
    step(mount(Some(root), root, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>), || format!("bind {} on itself", root.display()))?;
    let root_dir = step(std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_PATH | nix::libc::O_DIRECTORY).open(root), || {
        format!("open {}", root.display())
    })?;
    for mount_plan in &plan.mounts {
        mount_one(&root_dir, mount_plan, &setup.cgroup_mounts)
            .map_err(|SetupError(message)| SetupError(format!("mount {}: {message}", mount_plan.destination)))?;
    }
    make_devices(&root_dir, plan)?;
    if let Some(socket) = &setup.console {
        make_console(&root_dir, socket)?;
    }
    let state = if plan.hooks.is_empty() { None } else { Some(runtime_hooks(plan, socket)?) };
    if setup.no_pivot {
        step(std::env::set_current_dir(root), || format!("chdir {}", root.display()))?;
        step(mount(Some(root), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>), || "move the root onto /".to_owned())?;
        step(nix::unistd::chroot("."), || "chroot".to_owned())?;
    } else {
        step(std::env::set_current_dir(root), || format!("chdir {}", root.display()))?;
        step(nix::unistd::pivot_root(".", "."), || format!("pivot_root into {}", root.display()))?;
        // The old root's unmount must not reach the host's mounts (runc's step).
        step(mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>), || "make the old root a slave".to_owned())?;
        step(nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH), || "detach the old root".to_owned())?;
    }
    step(std::env::set_current_dir("/"), || "chdir /".to_owned())?;
    // The propagation the config asked for, on the new root too (runc's last step).
    step(mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>), || "set the propagation of the new /".to_owned())?;
    // Before /proc/sys turns read-only below.
    for (key, value) in &plan.sysctl {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        step(std::fs::write(&path, value), || format!("sysctl {key}={value}"))?;
    }
    for path in &plan.masked_paths {
        rootfs::mask(Path::new(path))?;
    }
    for path in &plan.readonly_paths {
        rootfs::read_only(Path::new(path))?;
    }
    if plan.root_readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        step(mount(None::<&str>, "/", None::<&str>, flags, None::<&str>), || "remount / read-only".to_owned())?;
    }
    Ok(state)
}

/// The mount point of the mount `path` lies on, when that mount is shared.
fn shared_parent_mount(mountinfo: &str, path: &Path) -> Option<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            // Mountinfo escapes space, tab, newline and backslash as octal.
            let point = fields.get(4)?.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\");
            let optional = fields.iter().skip(6).take_while(|f| **f != "-").any(|f| f.starts_with("shared:"));
            path.starts_with(&point).then_some((point, optional))
        })
        .max_by_key(|(point, _)| point.len())
        .and_then(|(point, shared)| shared.then_some(point))
}

/// Asks the parent to run the runtime's hooks (the container's namespaces exist), then
/// runs `createContainer` here, in them, before the pivot. The state the hooks read.
fn runtime_hooks(plan: &Plan, socket: &mut UnixStream) -> Result<serde_json::Value, SetupError> {
    if !tell(socket, "hooks") {
        return Err(SetupError("the parent went away".into()));
    }
    let mut line = String::new();
    BufReader::new(&*socket).read_line(&mut line).map_err(|e| SetupError(format!("waiting for the runtime's hooks: {e}")))?;
    let state: serde_json::Value = match line.trim_end().strip_prefix("state ") {
        Some(json) => serde_json::from_str(json).map_err(|e| SetupError(format!("the state from the parent: {e}")))?,
        None => return Err(SetupError(format!("expected the state after the runtime's hooks, got {line:?}"))),
    };
    super::hooks::run(&plan.hooks.create_container, "createContainer", &state).map_err(SetupError)?;
    Ok(state)
}

/// One of the config's mounts, onto its destination opened inside the root (no link
/// leads out of it).
fn mount_one(root: &std::fs::File, plan: &MountPlan, cgroup_mounts: &[crate::cgroups::CgroupMount]) -> Result<(), SetupError> {
    use std::os::unix::fs::OpenOptionsExt;
    let via_fd = |file: &std::fs::File| format!("/proc/self/fd/{}", file.as_raw_fd());
    let flags = MsFlags::from_bits_truncate(plan.flags);
    let target = if plan.is_bind() {
        let source =
            step(std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_PATH).open(&plan.source), || format!("open the source {}", plan.source))?;
        let is_dir = step(source.metadata(), || format!("stat {}", plan.source))?.is_dir();
        let target = step(rootfs::open_target(root, &plan.destination, is_dir), || "open the target".to_owned())?;
        let bind = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
        step(mount(Some(via_fd(&source).as_str()), via_fd(&target).as_str(), None::<&str>, bind, None::<&str>), || format!("bind {}", plan.source))?;
        let rest = flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        let target = step(rootfs::open_target(root, &plan.destination, is_dir), || "open the target".to_owned())?;
        if !rest.is_empty() {
            let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rest;
            step(mount(None::<&str>, via_fd(&target).as_str(), None::<&str>, remount, None::<&str>), || format!("remount with {rest:?}"))?;
        }
        target
    } else if plan.fstype == "cgroup" || plan.fstype == "cgroup2" {
        // The container's own cgroups, in its cgroup namespace (read-only when asked).
        let target = step(rootfs::open_target(root, &plan.destination, true), || "open the target".to_owned())?;
        let read_only = flags.contains(MsFlags::MS_RDONLY);
        let mounts: Vec<crate::cgroups::CgroupMount> =
            cgroup_mounts.iter().cloned().map(|m| crate::cgroups::CgroupMount { read_only: m.read_only || read_only, ..m }).collect();
        if rootfs::cgroup_base(Path::new(&via_fd(&target)), &mounts)? {
            // The tmpfs is on top of what the descriptor names: open it again.
            let tmpfs = step(rootfs::open_target(root, &plan.destination, true), || "open the target".to_owned())?;
            rootfs::cgroup_hierarchies(Path::new(&via_fd(&tmpfs)), &mounts)?;
        }
        step(rootfs::open_target(root, &plan.destination, true), || "open the target".to_owned())?
    } else {
        let target = step(rootfs::open_target(root, &plan.destination, true), || "open the target".to_owned())?;
        let data = (!plan.data.is_empty()).then_some(plan.data.as_str());
        step(mount(Some(plan.source.as_str()), via_fd(&target).as_str(), Some(plan.fstype.as_str()), flags, data), || {
            format!("{} ({})", plan.fstype, plan.data)
        })?;
        step(rootfs::open_target(root, &plan.destination, true), || "open the target".to_owned())?
    };
    if plan.propagation != 0 {
        let propagation = MsFlags::from_bits_truncate(plan.propagation);
        step(mount(None::<&str>, via_fd(&target).as_str(), None::<&str>, propagation, None::<&str>), || format!("propagation {propagation:?}"))?;
    }
    Ok(())
}

/// The devices every container has (the OCI specification's list) and the config's,
/// in the root's `/dev` (a tmpfs the config mounted); `/dev/fd` and friends as links.
/// Every node and link is made relative to a directory opened inside the root (an
/// image's `dev -> /etc` never leads onto the host).
fn make_devices(root: &std::fs::File, plan: &Plan) -> Result<(), SetupError> {
    use nix::sys::stat::{makedev, mknodat, Mode, SFlag};
    let in_user_namespace = plan.namespaces.iter().any(|n| n.kind == "user");
    let defaults = [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];
    let mut nodes: Vec<(String, SFlag, u32, u32, u32, u32, u32)> =
        defaults.iter().map(|(name, major, minor)| (format!("/dev/{name}"), SFlag::S_IFCHR, *major, *minor, 0o666, 0, 0)).collect();
    for device in &plan.devices {
        let kind = match device.kind {
            super::plan::NodeKind::Device(crate::cgroups::DeviceKind::Char) => SFlag::S_IFCHR,
            super::plan::NodeKind::Device(crate::cgroups::DeviceKind::Block) => SFlag::S_IFBLK,
            super::plan::NodeKind::Fifo => SFlag::S_IFIFO,
        };
        nodes.push((device.path.clone(), kind, device.major, device.minor, device.mode, device.uid, device.gid));
    }
    for (path, kind, major, minor, mode, uid, gid) in nodes {
        let (parent, name) = path.rsplit_once('/').unwrap_or(("/dev", path.as_str()));
        let dir = step(rootfs::open_target(root, parent, true), || format!("open {parent}"))?;
        if nix::sys::stat::fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
            continue;
        }
        if in_user_namespace && kind != SFlag::S_IFIFO {
            // A user namespace may not make device nodes: the host's are bound instead.
            let target = step(rootfs::open_target(root, &path, false), || format!("create {path}"))?;
            let via_fd = format!("/proc/self/fd/{}", target.as_raw_fd());
            step(mount(Some(path.as_str()), via_fd.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>), || format!("bind the host's {path}"))?;
            continue;
        }
        let mode = Mode::from_bits_truncate(mode & 0o7777);
        step(mknodat(&dir, name, kind, mode, makedev(u64::from(major), u64::from(minor))), || format!("mknod {path}"))?;
        // mknod's mode is narrowed by the umask; the node was just made here (no link).
        step(nix::sys::stat::fchmodat(&dir, name, mode, nix::sys::stat::FchmodatFlags::FollowSymlink), || format!("chmod {path}"))?;
        let owner = (Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)));
        step(nix::unistd::fchownat(&dir, name, owner.0, owner.1, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW), || format!("chown {path}"))?;
    }
    let dev = step(rootfs::open_target(root, "/dev", true), || "open /dev".to_owned())?;
    let mut links = vec![("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")];
    if nix::sys::stat::fstatat(&dev, "pts/ptmx", nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok() {
        links.push(("ptmx", "pts/ptmx"));
    }
    for (link, target) in links {
        if nix::sys::stat::fstatat(&dev, link, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_err() {
            step(nix::unistd::symlinkat(target, &dev, link), || format!("symlink /dev/{link}"))?;
        }
    }
    Ok(())
}

/// The console: a pty of the container's devpts, its master sent to `--console-socket`,
/// its slave on `/dev/console` and as the process's standard streams and terminal.
/// Opened inside the root, as the devices are.
fn make_console(root: &std::fs::File, socket: &UnixStream) -> Result<(), SetupError> {
    let (master, slave, pts) = open_console(root)?;
    let console = step(rootfs::open_target(root, "/dev/console", false), || "create /dev/console".to_owned())?;
    let (from, to) = (format!("/proc/self/fd/{}", slave.as_raw_fd()), format!("/proc/self/fd/{}", console.as_raw_fd()));
    step(mount(Some(from.as_str()), to.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>), || format!("bind {pts} on /dev/console"))?;
    attach_console(&master, &slave, socket)
}

/// A new pty of the devpts on `root`'s `/dev/pts`: its master, its slave and the
/// slave's path.
pub(super) fn open_console(root: &std::fs::File) -> Result<(std::fs::File, std::fs::File, String), SetupError> {
    let reopen = |path: &str, is_dir: bool| -> Result<std::fs::File, SetupError> {
        let found = step(rootfs::open_target(root, path, is_dir), || format!("open {path}"))?;
        let via_fd = format!("/proc/self/fd/{}", found.as_raw_fd());
        use std::os::unix::fs::OpenOptionsExt;
        step(std::fs::OpenOptions::new().read(true).write(true).custom_flags(nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC).open(&via_fd), || {
            format!("open {path} (mount a devpts on /dev/pts for a terminal)")
        })
    };
    let master = reopen("/dev/pts/ptmx", false)?;
    let number = crate::runtime::init::unlock_pty(&master).map_err(SetupError)?;
    let pts = format!("/dev/pts/{number}");
    let slave = reopen(&pts, false)?;
    Ok((master, slave, pts))
}

/// Sends the pty's master to `--console-socket` and makes its slave this process's
/// standard streams and controlling terminal (the process leads its own session).
pub(super) fn attach_console(master: &std::fs::File, slave: &std::fs::File, socket: &UnixStream) -> Result<(), SetupError> {
    let fds = [master.as_raw_fd()];
    let sent = nix::sys::socket::sendmsg::<()>(
        socket.as_raw_fd(),
        &[std::io::IoSlice::new(b"/dev/ptmx")],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    );
    step(sent, || "send the console to --console-socket".to_owned())?;
    for stream in 0..3 {
        // SAFETY: dup2 between the slave we hold open and a standard descriptor number.
        if unsafe { nix::libc::dup2(slave.as_raw_fd(), stream) } < 0 {
            return Err(SetupError(format!("dup2 the console on {stream}: {}", Errno::last())));
        }
    }
    // SAFETY: TIOCSCTTY with argument 0 on a descriptor we hold; this process leads a
    // new session (setsid above) and has no controlling terminal yet.
    if unsafe { nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) } < 0 {
        return Err(SetupError(format!("make the console the controlling terminal: {}", Errno::last())));
    }
    Ok(())
}

/// Before the wait: limits, the seccomp filter without no_new_privs, credentials and
/// capabilities, no_new_privs when asked, the working directory, and the program's path.
pub(super) fn finalize(plan: &Plan) -> Result<String, (String, i32)> {
    let process = &plan.process;
    // Nothing but the standard streams reaches the program (runc's CloseExecFrom(3)):
    // marked before a seccomp filter could refuse the call; std opens what follows
    // close-on-exec.
    close_on_exec_from(3).map_err(|message| (message, CODE_RUNTIME))?;
    for (resource, soft, hard) in &process.rlimits {
        let limit = nix::libc::rlimit { rlim_cur: *soft, rlim_max: *hard };
        // SAFETY: setrlimit reads the rlimit we pass, which outlives the call.
        #[allow(clippy::useless_conversion)]
        if unsafe { nix::libc::setrlimit((*resource).try_into().unwrap_or_default(), &limit) } < 0 {
            return Err((format!("setrlimit({resource}, {soft}, {hard}): {}", Errno::last()), CODE_RUNTIME));
        }
    }
    if let Some(adjust) = process.oom_score_adj {
        if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adjust.to_string()) {
            return Err((format!("oom_score_adj {adjust}: {e}"), CODE_RUNTIME));
        }
    }
    // runc's default when the config names none.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(process.umask.unwrap_or(0o022)));
    // Without no_new_privs the filter needs CAP_SYS_ADMIN: it goes before the
    // capabilities (the profile must allow what follows, as Docker's does); with it,
    // last before exec.
    if !process.no_new_privileges {
        install_seccomp(plan).map_err(|message| (message, CODE_RUNTIME))?;
    }
    credentials(process).map_err(|message| (message, CODE_RUNTIME))?;
    if process.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(|e| (format!("prctl(PR_SET_NO_NEW_PRIVS): {e}"), CODE_RUNTIME))?;
    }
    std::env::set_current_dir(&process.cwd).map_err(|e| (format!("chdir to process.cwd {}: {e}", process.cwd), CODE_RUNTIME))?;
    crate::runtime::init::find_program(&process.args[0], &process.env)
}

/// After `start`: the signals back to their defaults, the seccomp filter under
/// no_new_privs, then exec. Returns only on an error: its message and exit code.
pub(super) fn exec_program(plan: &Plan, program: &str) -> (String, i32) {
    use std::ffi::CString;
    let process = &plan.process;
    let to_c = |s: &str| CString::new(s).unwrap_or_default();
    let argv: Vec<CString> = process.args.iter().map(|a| to_c(a)).collect();
    let envp: Vec<CString> = process.env.iter().map(|e| to_c(e)).collect();
    crate::runtime::init::default_signal_actions();
    if process.no_new_privileges {
        if let Err(message) = install_seccomp(plan) {
            return (message, CODE_RUNTIME);
        }
    }
    let error = match nix::unistd::execve(&to_c(program), &argv, &envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let code = if error == Errno::ENOENT { crate::runtime::CODE_NOT_FOUND } else { crate::runtime::CODE_CANNOT_INVOKE };
    (format!("exec {program}: {error}"), code)
}

/// Marks every descriptor from `first` close-on-exec: close_range(2), else (a kernel
/// before 5.11) each one `/proc/self/fd` lists.
fn close_on_exec_from(first: i32) -> Result<(), String> {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only marks descriptors; it reads
    // and writes no memory.
    let marked = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, first as u32, u32::MAX, nix::libc::CLOSE_RANGE_CLOEXEC) };
    if marked == 0 {
        return Ok(());
    }
    let listed = std::fs::read_dir("/proc/self/fd").map_err(|e| format!("close_range: {}; listing /proc/self/fd: {e}", Errno::last()))?;
    let fds: Vec<i32> = listed.flatten().filter_map(|entry| entry.file_name().to_str()?.parse().ok()).filter(|fd| *fd >= first).collect();
    for fd in fds {
        // SAFETY: fcntl(F_SETFD) on a descriptor number only changes its flags; one that
        // closed meanwhile (the directory's own) answers EBADF.
        if unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC) } < 0 && Errno::last() != Errno::EBADF {
            return Err(format!("mark descriptor {fd} close-on-exec: {}", Errno::last()));
        }
    }
    Ok(())
}

/// The standard streams the caller gave (containerd's FIFOs, the console's pty) become
/// the process's user's, as runc's fixStdioPermissions: a program that reopens
/// `/dev/stdout` or its terminal as that user can. A `/dev/null` (character device 1:3,
/// told by the descriptor itself, never by a path the container controls) is left
/// alone, the group too; a stream that cannot change owner (EPERM, EINVAL, EROFS) stays
/// as it is.
fn give_standard_streams(uid: u32) -> Result<(), String> {
    let null = nix::sys::stat::makedev(1, 3);
    for fd in 0..3 {
        // SAFETY: an all-zero `stat` is a valid value of the plain C struct, which
        // fstat fills for a descriptor number; nothing else is read or written.
        let mut stat: nix::libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into `stat`, which we own for the call.
        if unsafe { nix::libc::fstat(fd, &mut stat) } < 0 {
            continue;
        }
        let is_char = stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFCHR;
        if stat.st_uid == uid || (is_char && stat.st_rdev == null) {
            continue;
        }
        // SAFETY: fchown on a standard descriptor number; it reads and writes no memory.
        if unsafe { nix::libc::fchown(fd, uid, u32::MAX) } < 0 {
            let error = Errno::last();
            if !matches!(error, Errno::EPERM | Errno::EINVAL | Errno::EROFS | Errno::EBADF) {
                return Err(format!("give standard stream {fd} to uid {uid}: {error}"));
            }
        }
    }
    Ok(())
}

/// The config's filters. With no_new_privs, seccompiler's `apply_filter` (which sets
/// it); without, seccomp(2) itself, which a process holding CAP_SYS_ADMIN may call that
/// way (runc's path): a setuid program in the container still gains its privileges.
fn install_seccomp(plan: &Plan) -> Result<(), String> {
    let Some(programs) = &plan.seccomp else { return Ok(()) };
    if plan.process.no_new_privileges {
        return crate::runtime::seccomp::install(programs).map_err(|e| e.to_string());
    }
    for program in programs {
        let len = u16::try_from(program.len()).map_err(|_| format!("a seccomp filter of {} instructions is too long", program.len()))?;
        let fprog = nix::libc::sock_fprog { len, filter: program.as_ptr().cast::<nix::libc::sock_filter>().cast_mut() };
        // SAFETY: the kernel copies the `len` instructions `fprog` points at (`program`,
        // alive for the call) and writes nothing; seccompiler's `sock_filter` is
        // repr(C) with libc's fields (u16, u8, u8, u32), so the cast keeps the layout.
        if unsafe { nix::libc::syscall(nix::libc::SYS_seccomp, nix::libc::SECCOMP_SET_MODE_FILTER, 0, &fprog) } < 0 {
            return Err(format!("seccomp(SECCOMP_SET_MODE_FILTER) without no_new_privs: {}", Errno::last()));
        }
    }
    Ok(())
}

/// The process's ids and capabilities: the bounding set is cut first (while
/// CAP_SETPCAP is effective), the ids change (keepcaps holds the permitted set across a
/// change to a non-root uid, as runc does), then the effective, permitted and
/// inheritable sets become the config's effective set, and the ambient set is raised.
fn credentials(process: &super::plan::ProcessPlan) -> Result<(), String> {
    use caps::{CapSet, Capability, CapsHashSet};
    let set_of = |names: &[String]| -> CapsHashSet { names.iter().filter_map(|name| name.parse::<Capability>().ok()).collect() };
    let bounding = set_of(&process.bounding);
    for cap in caps::all() {
        if !bounding.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
        }
    }
    give_standard_streams(process.uid)?;
    nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("prctl(PR_SET_KEEPCAPS): {e}"))?;
    let user = User { uid: process.uid, gid: process.gid, groups: process.additional_gids.clone() };
    crate::runtime::init::switch_user(&user)?;
    let _ = nix::sys::prctl::set_keepcaps(false);
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear the ambient capabilities: {e}"))?;
    // Each set exactly as the config gives it (an empty inheritable set stays empty:
    // CVE-2022-24769), none beyond the bounding set. Effective first: the permitted
    // set may only shrink to what stays a superset of it.
    for (set, names) in [(CapSet::Effective, &process.effective), (CapSet::Permitted, &process.permitted), (CapSet::Inheritable, &process.inheritable)] {
        let wanted: CapsHashSet = set_of(names).intersection(&bounding).copied().collect();
        caps::set(None, set, &wanted).map_err(|e| format!("set the {set:?} capabilities: {e}"))?;
    }
    // The kernel raises an ambient capability only when it is permitted and inheritable;
    // runc's own `runc spec` lists ambient ones without an inheritable set, and runc
    // goes on without them: so do we, for exactly those.
    let (permitted, inheritable) = (set_of(&process.permitted), set_of(&process.inheritable));
    for cap in set_of(&process.ambient).into_iter().filter(|cap| permitted.contains(cap) && inheritable.contains(cap)) {
        caps::raise(None, CapSet::Ambient, cap).map_err(|e| format!("raise {cap} in the ambient set: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_a_root_lies_on_is_found_and_told_shared() {
        let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /tmp rw shared:5 - tmpfs tmpfs rw
31 22 0:27 / /var/lib rw - tmpfs tmpfs rw
32 30 0:28 / /tmp/with\\040space rw master:3 - tmpfs tmpfs rw
33 22 0:29 / /tmpfoo rw shared:9 - tmpfs tmpfs rw
";
        assert_eq!(shared_parent_mount(mountinfo, Path::new("/tmp/bundle/rootfs")), Some("/tmp".to_owned()));
        assert_eq!(shared_parent_mount(mountinfo, Path::new("/var/lib/x")), None, "a private mount stays as it is");
        assert_eq!(shared_parent_mount(mountinfo, Path::new("/tmp/with space/rootfs")), None, "an escaped mount point, a slave");
        assert_eq!(shared_parent_mount(mountinfo, Path::new("/srv/rootfs")), Some("/".to_owned()));
        assert_eq!(shared_parent_mount(mountinfo, Path::new("/tmpfoo/r")), Some("/tmpfoo".to_owned()), "components, not characters");
    }
}
