//! `orch-runc exec`: another process in a created or running container, as containerd's
//! shim runs `docker exec` (`exec --process process.json --detach --pid-file F`).
//!
//! As runc, in two forks. The **joiner** (a child of single-threaded orch-runc, still in
//! the host's PID namespace, so no process of the container sees it) joins the
//! container's cgroups, its namespaces — its user namespace first, the PID namespace for
//! its children — and its root (the agent's `enter_container`), then forks the
//! **process**, which lands in the container's PID namespace with nothing of the host's
//! in sight, names it to orch-runc and exits. The process leads a session of its own,
//! takes its console, limits, the config's seccomp filter (runc applies it to every
//! process of the container), credentials and capabilities and execs — the same steps
//! as the container's own process ([`super::create::finalize`]). A close-on-exec socket
//! tells orch-runc whether the exec happened: an error before it fails `exec` (no PID
//! file). With `--detach` orch-runc exits once the program runs and the caller's
//! subreaper inherits it; without, orch-runc is the subreaper, waits and exits with the
//! program's status (128+N for signal N).
#![allow(unsafe_code)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

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
    /// Added to the container's.
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
    for gid in &overrides.additional_gids {
        if !process.additional_gids.contains(gid) {
            process.additional_gids.push(*gid);
        }
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

/// What `process.json` leaves out comes from the container's own process, as runc
/// does: its capabilities, no_new_privs and rlimits.
pub fn with_container_defaults(mut given: ProcessPlan, process: &oci_spec::runtime::Process, container: &ProcessPlan) -> ProcessPlan {
    if process.capabilities().is_none() {
        given.bounding = container.bounding.clone();
        given.effective = container.effective.clone();
        given.permitted = container.permitted.clone();
        given.inheritable = container.inheritable.clone();
        given.ambient = container.ambient.clone();
    }
    if process.no_new_privileges().is_none() {
        given.no_new_privileges = container.no_new_privileges;
    }
    if process.rlimits().as_ref().is_none_or(Vec::is_empty) {
        given.rlimits = container.rlimits.clone();
    }
    given
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
    let spec = super::create::load_config(&config_path)?;
    let mut plan = super::plan::plan(&spec, &record.bundle, &options.id)?;
    plan.process = match &options.process {
        ProcessSource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(OciError::io("cannot read", path))?;
            let process: oci_spec::runtime::Process =
                serde_json::from_str(&text).map_err(|e| OciError::Failed(format!("--process {}: {e}", path.display())))?;
            let given = super::plan::process_plan_of(&process, "process")
                .map_err(|e| OciError::Failed(format!("--process {}: {}: {}", path.display(), e.field, e.reason)))?;
            with_container_defaults(given, &process, &plan.process)
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
    if !options.detach {
        // The process is orch-runc's grandchild: it comes back here when its parent exits.
        nix::sys::prctl::set_child_subreaper(true).map_err(|e| OciError::Failed(format!("prctl(PR_SET_CHILD_SUBREAPER): {e}")))?;
    }
    let (parent_end, child_end) = UnixStream::pair().map_err(OciError::io("cannot create a socket pair", ""))?;
    // SAFETY: orch-runc is single-threaded (no async runtime, no thread started), so the
    // child may run any code after fork.
    let joiner = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(parent_end);
            let mut child_end = child_end;
            let code = match join_and_fork(&plan, (record.pid, record.pid_start_ticks), &cgroups, console.as_ref(), &mut child_end) {
                Ok(()) => 0,
                Err((message, code)) => {
                    super::create::tell(&mut child_end, &format!("error {message}"));
                    code
                }
            };
            std::process::exit(code)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err(OciError::Failed(format!("fork: {e}"))),
    };
    drop(child_end);
    drop(console);
    // "pid N" from the joiner, then EOF once the socket closed on exec (the program
    // runs), or an error from either of them.
    let mut report = String::new();
    let _ = (&parent_end).read_to_string(&mut report);
    let _ = nix::sys::wait::waitpid(joiner, None);
    let mut pid = None;
    for line in report.lines() {
        if let Some(number) = line.strip_prefix("pid ") {
            pid = number.parse::<i32>().ok();
        } else if let Some(message) = line.strip_prefix("error ") {
            if let (Some(pid), false) = (pid, options.detach) {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            }
            return Err(OciError::Failed(format!("exec in {}: {message}", options.id)));
        }
    }
    let pid = pid.ok_or_else(|| OciError::Failed(format!("exec in {}: the process ended before it was named", options.id)))?;
    if let Some(path) = &options.pid_file {
        if let Err(e) = std::fs::write(path, pid.to_string()) {
            let _ = super::create::signal_process(pid, nix::libc::SIGKILL);
            return Err(OciError::Io { what: "cannot write the pid file", path: path.clone(), source: e });
        }
    }
    if options.detach {
        return Ok(0);
    }
    crate::runtime::init::wait_exit_status(pid).map_err(|e| OciError::Failed(format!("waitpid {pid}: {e}")))
}

/// The joiner (still in the host's PID namespace, so invisible from the container):
/// the container's cgroups, namespaces and root, then the fork of the process, which
/// lands in the container's PID namespace with nothing of the host's in sight. It names
/// the process to the parent before the process may go on.
fn join_and_fork(
    plan: &Plan,
    (pid, start_ticks): (i32, u64),
    cgroups: &[PathBuf],
    console: Option<&UnixStream>,
    socket: &mut UnixStream,
) -> Result<(), (String, i32)> {
    let failed = |message: String| (message, CODE_RUNTIME);
    // It holds host descriptors: no process may read its memory.
    nix::sys::prctl::set_dumpable(false).map_err(|e| failed(format!("prctl(PR_SET_DUMPABLE): {e}")))?;
    for dir in cgroups {
        crate::runtime::exec::join_cgroup(dir, pid).map_err(failed)?;
    }
    crate::runtime::exec::enter_container(pid, Some(start_ticks)).map_err(failed)?;
    super::create::fork_named(socket, "the process", |mut socket| {
        let (message, code) = start_program(plan, console);
        super::create::tell(&mut socket, &format!("error {message}"));
        code
    })
    .map_err(failed)
}

/// The process, in the container: its own session, the console, then
/// [`super::create::finalize`] and the exec. Returns only on an error: its message and
/// exit code.
fn start_program(plan: &Plan, console: Option<&UnixStream>) -> (String, i32) {
    if let Err(e) = nix::unistd::setsid() {
        return (format!("setsid: {e}"), CODE_RUNTIME);
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
    // Opened as it is: a container without a devpts has no terminal to give.
    if std::fs::symlink_metadata("/dev/pts/ptmx").is_err() {
        return Err(SetupError("the container has no /dev/pts/ptmx (a devpts on /dev/pts) for a terminal".into()));
    }
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
        assert_eq!((changed.uid, changed.gid, changed.additional_gids.clone()), (1000, 0, vec![5]), "groups are added to");
        assert_eq!(changed.cwd, "/tmp");
        assert!(changed.terminal && changed.no_new_privileges);
        assert_eq!(changed.effective, vec!["CAP_CHOWN", "CAP_NET_ADMIN"]);
        assert_eq!(changed.bounding, vec!["CAP_CHOWN", "CAP_NET_ADMIN"]);
        assert!(changed.inheritable.is_empty());
        assert!(changed.ambient.is_empty());
        let mut container = base();
        container.no_new_privileges = true;
        container.rlimits = vec![(7, 1024, 1024)];
        let bare: oci_spec::runtime::Process = serde_json::from_value(serde_json::json!({"args": ["id"], "cwd": "/", "user": {"uid": 0, "gid": 0}})).unwrap();
        let given = crate::oci::plan::process_plan_of(&bare, "process").unwrap();
        let filled = with_container_defaults(given.clone(), &bare, &container);
        assert_eq!((filled.effective.clone(), filled.no_new_privileges, filled.rlimits.clone()), (vec!["CAP_CHOWN".to_owned()], true, vec![(7, 1024, 1024)]));
        let explicit: oci_spec::runtime::Process = serde_json::from_value(serde_json::json!({
            "args": ["id"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "noNewPrivileges": false, "capabilities": {"effective": []}
        }))
        .unwrap();
        let kept = with_container_defaults(crate::oci::plan::process_plan_of(&explicit, "process").unwrap(), &explicit, &container);
        assert!(kept.effective.is_empty() && !kept.no_new_privileges, "what process.json says stays: {kept:?}");
        let with_group = overridden(&base(), &Overrides { args: vec!["id".into()], user: Some((7, Some(8))), ..Overrides::default() });
        assert_eq!((with_group.uid, with_group.gid), (7, 8));
    }
}
