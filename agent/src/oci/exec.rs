//! `orch-runc exec`: another process in a created or running container, as containerd's
//! shim runs `docker exec` (`exec --process process.json --detach --pid-file F`).
//!
//! orch-runc (single-threaded) joins the container's PID namespace for its children
//! and forks once: the child joins the container's cgroups, its other namespaces and
//! its root (the agent's `enter_container`), then takes the process's console, limits,
//! seccomp filter (the container's config's, as runc applies it to every process),
//! credentials and capabilities and execs — the same steps `create` takes
//! ([`super::create::finalize`]). A close-on-exec socket tells the parent whether the
//! exec happened: an error before it fails `exec`. With `--detach` orch-runc exits once
//! the program runs and the caller's subreaper inherits it; without, it waits and exits
//! with the program's status (128+N for signal N).
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::unistd::{fork, ForkResult};

use super::plan::{Plan, ProcessPlan};
use super::state::{self, Status};
use super::OciError;
use crate::cgroups::CgroupLayout;
use crate::runtime::rootfs::SetupError;
use crate::runtime::CODE_RUNTIME;

/// The process to run: `--process FILE` (the specification's `process` object), or the
/// container's own process with runc's command-line overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessSource {
    File(PathBuf),
    Overrides(Overrides),
}

/// `orch-runc exec ID COMMAND…` without `--process`: what changes from the container's
/// own process (runc's flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub tty: bool,
    /// `UID[:GID]`.
    pub user: Option<(u32, Option<u32>)>,
    pub additional_gids: Vec<u32>,
    /// Added to the bounding, effective and permitted sets (`CAP_NET_ADMIN`).
    pub capabilities: Vec<String>,
    pub no_new_privileges: bool,
}

/// What `exec` was asked.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub root: PathBuf,
    pub id: String,
    pub process: ProcessSource,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

/// The container's own process changed as `overrides` says (runc's `exec` flags):
/// the environment is added to (a variable given again is replaced), capabilities are
/// added to the bounding, effective and permitted sets.
pub fn overridden(base: &ProcessPlan, overrides: &Overrides) -> ProcessPlan {
    let mut process = base.clone();
    process.args = overrides.args.clone();
    for variable in &overrides.env {
        let key = variable.split_once('=').map_or(variable.as_str(), |(key, _)| key);
        process.env.retain(|existing| existing.split_once('=').map_or(existing.as_str(), |(k, _)| k) != key);
        process.env.push(variable.clone());
    }
    if let Some(cwd) = &overrides.cwd {
        process.cwd = cwd.clone();
    }
    process.terminal = overrides.tty;
    if let Some((uid, gid)) = overrides.user {
        process.uid = uid;
        process.gid = gid.unwrap_or(process.gid);
    }
    if !overrides.additional_gids.is_empty() {
        process.additional_gids = overrides.additional_gids.clone();
    }
    for capability in &overrides.capabilities {
        // Not the inheritable set: runc 1.2 stopped that (CVE-2022-24769's lesson).
        for set in [&mut process.bounding, &mut process.effective, &mut process.permitted] {
            if !set.contains(capability) {
                set.push(capability.clone());
                set.sort();
            }
        }
    }
    process.no_new_privileges |= overrides.no_new_privileges;
    process
}

/// Runs the process in the container. Returns the program's exit status when it waited
/// (without `--detach`), else 0.
pub fn exec(options: &ExecOptions) -> Result<i32, OciError> {
    let record = state::load(&options.root, &options.id)?;
    let status = state::status(&options.root, &record);
    if status == Status::Stopped {
        return Err(OciError::Status { id: options.id.clone(), status: status.as_str(), what: "cannot exec in a stopped container".into() });
    }
    let config_path = record.bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&config_path).map_err(|e| OciError::Failed(format!("{}: {e}", config_path.display())))?;
    let mut plan = super::plan::plan(&spec, &record.bundle, &options.id)?;
    plan.process = match &options.process {
        ProcessSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(OciError::io("cannot read", path))?;
            let process: oci_spec::runtime::Process =
                serde_json::from_str(&text).map_err(|e| OciError::Failed(format!("--process {}: {e}", path.display())))?;
            super::plan::process_plan_of(&process, "process")
                .map_err(|e| OciError::Failed(format!("--process {}: {}: {}", path.display(), e.field, e.reason)))?
        }
        ProcessSource::Overrides(overrides) => {
            if overrides.args.first().is_none_or(String::is_empty) {
                return Err(OciError::Failed("exec: a command to run is required (or --process FILE)".into()));
            }
            overridden(&plan.process, overrides)
        }
    };
    if plan.process.terminal && options.console_socket.is_none() {
        return Err(OciError::Failed("exec: the process has a terminal (process.terminal, --tty): --console-socket is required".into()));
    }
    if !plan.process.terminal && options.console_socket.is_some() {
        return Err(OciError::Failed("exec: --console-socket given, but the process has no terminal (process.terminal, --tty)".into()));
    }
    let console = match &options.console_socket {
        Some(path) => Some(UnixStream::connect(path).map_err(OciError::io("cannot connect to the console socket", path))?),
        None => None,
    };
    let cgroups = CgroupLayout::detect()?.container(&record.cgroup)?.paths();
    let pid_namespace =
        std::fs::File::open(format!("/proc/{}/ns/pid", record.pid)).map_err(OciError::io("cannot open", format!("/proc/{}/ns/pid", record.pid)))?;
    // Still the same process (its PID not reused since the status was read).
    if state::status(&options.root, &record) == Status::Stopped {
        return Err(OciError::Status { id: options.id.clone(), status: "stopped", what: "cannot exec in a stopped container".into() });
    }
    // Only this process's children enter it: orch-runc itself stays where it is.
    setns(&pid_namespace, CloneFlags::CLONE_NEWPID).map_err(|e| OciError::Failed(format!("setns to the PID namespace of {}: {e}", record.pid)))?;
    let (mut parent_end, child_end) = UnixStream::pair().map_err(OciError::io("cannot create a socket pair", ""))?;
    // SAFETY: orch-runc is single-threaded (no async runtime, no thread started), so the
    // child may run any code after fork.
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(parent_end);
            let (message, code) = enter_and_exec(&plan, record.pid, &cgroups, console.as_ref());
            let mut child_end = child_end;
            let _ = child_end.write_all(format!("error {}", message.replace('\n', " ")).as_bytes());
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(OciError::Failed(format!("fork: {e}"))),
    };
    drop(child_end);
    drop(console);
    // EOF without a word: the socket closed on exec, the program runs.
    let mut report = String::new();
    let _ = parent_end.read_to_string(&mut report);
    if let Some(message) = report.strip_prefix("error ") {
        let _ = nix::sys::wait::waitpid(child, None);
        return Err(OciError::Failed(format!("exec in {}: {message}", options.id)));
    }
    if let Some(path) = &options.pid_file {
        if let Err(e) = std::fs::write(path, child.as_raw().to_string()) {
            let _ = super::create::signal_process(child.as_raw(), nix::libc::SIGKILL);
            return Err(OciError::Io { what: "cannot write the pid file", path: path.clone(), source: e });
        }
    }
    if options.detach {
        return Ok(0);
    }
    loop {
        match crate::runtime::init::wait_raw(child.as_raw(), false) {
            Ok(Some((_, crate::runtime::init::Ended::Code(code)))) => return Ok(code),
            Ok(Some((_, crate::runtime::init::Ended::Signal(signal)))) => return Ok(128 + signal),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(OciError::Failed(format!("waitpid {child}: {e}"))),
        }
    }
}

/// The child: cgroups, namespaces, root, console, then [`super::create::finalize`] and
/// the exec. Returns only on an error: its message and exit code.
fn enter_and_exec(plan: &Plan, pid: i32, cgroups: &[PathBuf], console: Option<&UnixStream>) -> (String, i32) {
    // It holds host descriptors until its exec: no process of the container may read it.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        return (format!("prctl(PR_SET_DUMPABLE): {e}"), CODE_RUNTIME);
    }
    for dir in cgroups {
        if let Err(message) = crate::runtime::exec::join_cgroup(dir, pid) {
            return (message, CODE_RUNTIME);
        }
    }
    if let Err(message) = crate::runtime::exec::enter_container(pid) {
        return (message, CODE_RUNTIME);
    }
    if let Some(socket) = console {
        if let Err(SetupError(message)) = take_console(socket) {
            return (message, CODE_RUNTIME);
        }
    }
    let program = match super::create::finalize(plan) {
        Ok(program) => program,
        Err(failure) => return failure,
    };
    super::create::exec_program(plan, &program)
}

/// A pty of the container's devpts as this process's terminal, its master sent to the
/// console socket.
fn take_console(socket: &UnixStream) -> Result<(), SetupError> {
    use std::os::unix::fs::OpenOptionsExt;
    nix::unistd::setsid().map_err(|e| SetupError(format!("setsid: {e}")))?;
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_DIRECTORY | nix::libc::O_CLOEXEC)
        .open(Path::new("/"))
        .map_err(|e| SetupError(format!("open the container's root: {e}")))?;
    let (master, slave, _) = super::create::open_console(&root)?;
    super::create::attach_console(&master, &slave, socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ProcessPlan {
        ProcessPlan {
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "HOME=/root".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            umask: None,
            bounding: vec!["CAP_CHOWN".into()],
            effective: vec!["CAP_CHOWN".into()],
            permitted: vec!["CAP_CHOWN".into()],
            inheritable: vec![],
            ambient: vec![],
            no_new_privileges: false,
            rlimits: vec![],
            terminal: false,
            oom_score_adj: None,
        }
    }

    #[test]
    fn overrides_change_only_what_they_name() {
        let same = overridden(&base(), &Overrides { args: vec!["ls".into()], ..Overrides::default() });
        assert_eq!(same, ProcessPlan { args: vec!["ls".into()], ..base() });

        let changed = overridden(
            &base(),
            &Overrides {
                args: vec!["id".into()],
                env: vec!["HOME=/tmp".into(), "LANG=C".into()],
                cwd: Some("/tmp".into()),
                tty: true,
                user: Some((1000, None)),
                additional_gids: vec![5],
                capabilities: vec!["CAP_NET_ADMIN".into(), "CAP_CHOWN".into()],
                no_new_privileges: true,
            },
        );
        assert_eq!(changed.env, vec!["PATH=/bin", "HOME=/tmp", "LANG=C"]);
        assert_eq!((changed.uid, changed.gid, changed.additional_gids.clone()), (1000, 0, vec![5]));
        assert_eq!(changed.cwd, "/tmp");
        assert!(changed.terminal && changed.no_new_privileges);
        assert_eq!(changed.effective, vec!["CAP_CHOWN", "CAP_NET_ADMIN"]);
        assert_eq!(changed.bounding, vec!["CAP_CHOWN", "CAP_NET_ADMIN"]);
        assert!(changed.inheritable.is_empty());
        assert!(changed.ambient.is_empty());
        let with_group = overridden(&base(), &Overrides { args: vec!["id".into()], user: Some((7, Some(8))), ..Overrides::default() });
        assert_eq!((with_group.uid, with_group.gid), (7, 8));
    }
}
