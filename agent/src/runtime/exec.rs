//! `orch-agent __exec`: runs a command inside a running container — exec probes and
//! `orch exec`. Like `nsenter`, in a fresh single-threaded process (re-executed agent
//! binary, dispatched before any thread starts): join the container's cgroups, enter
//! its namespaces (user first when it has its own, mount last, then its root), fork so
//! the child is inside the PID namespace, drop to the container's capabilities and
//! user, exec. The helper waits and exits with the command's status (128+N for signal
//! N); the command dies with the helper (PDEATHSIG), so a timed-out probe leaves
//! nothing behind.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::MetadataExt;

use nix::sched::{setns, CloneFlags};
use nix::unistd::{fork, ForkResult};

use super::config::User;
use super::seccomp::SeccompProfile;
use super::{CODE_CANNOT_INVOKE, CODE_NOT_FOUND, CODE_RUNTIME, DEFAULT_PATH};

/// The hidden subcommand that runs [`exec_main`].
pub const EXEC_SUBCOMMAND: &str = "__exec";

/// What to run where, as passed on the helper's command line —
/// `__exec --pid P [--cgroup DIR]… [--user UID:GID[:GROUP,…]] --caps CAP,… --seccomp PROFILE
/// [--cwd DIR] [--tty true] -- CMD…` —
/// and, for `env`, as the helper's own environment: never on argv, which every host user
/// reads in `/proc/PID/cmdline`, while `/proc/PID/environ` is the process owner's only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub pid: i32,
    /// The container's cgroup directories (one per hierarchy).
    pub cgroups: Vec<String>,
    pub user: Option<User>,
    /// The container's capabilities and seccomp profile: the command gets the same.
    pub capabilities: Vec<String>,
    pub seccomp: SeccompProfile,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// Give the command a pseudo-terminal (an interactive shell), relayed over the
    /// helper's stdin and stdout.
    pub tty: bool,
    pub command: Vec<String>,
}

impl ExecRequest {
    /// The helper's arguments after the subcommand.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--pid".to_owned(), self.pid.to_string()];
        for cgroup in &self.cgroups {
            args.extend(["--cgroup".to_owned(), cgroup.clone()]);
        }
        if let Some(user) = &self.user {
            let groups: Vec<String> = user.groups.iter().map(u32::to_string).collect();
            let ids = if groups.is_empty() { format!("{}:{}", user.uid, user.gid) } else { format!("{}:{}:{}", user.uid, user.gid, groups.join(",")) };
            args.extend(["--user".to_owned(), ids]);
        }
        args.extend(["--caps".to_owned(), self.capabilities.join(",")]);
        let seccomp = match self.seccomp {
            SeccompProfile::RuntimeDefault => "runtime-default",
            SeccompProfile::Unconfined => "unconfined",
        };
        args.extend(["--seccomp".to_owned(), seccomp.to_owned()]);
        if let Some(cwd) = &self.cwd {
            args.extend(["--cwd".to_owned(), cwd.clone()]);
        }
        if self.tty {
            args.extend(["--tty".to_owned(), "true".to_owned()]);
        }
        args.push("--".to_owned());
        args.extend(self.command.iter().cloned());
        args
    }

    /// The helper process for this request: its arguments, and the container's
    /// environment (`K=V` entries) as the helper's whole environment.
    pub fn helper_command(&self, helper: &std::path::Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(helper);
        command.arg(EXEC_SUBCOMMAND).args(self.to_args()).env_clear();
        command.envs(self.env.iter().filter_map(|entry| entry.split_once('=')));
        command
    }

    /// The request from the helper's arguments (everything but `env`, which
    /// [`exec_main`] takes from its own environment).
    pub fn parse(args: &[String]) -> Result<ExecRequest, String> {
        let mut request = ExecRequest::default();
        let mut iter = args.iter();
        while let Some(flag) = iter.next() {
            if flag == "--" {
                request.command = iter.cloned().collect();
                break;
            }
            let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--pid" => request.pid = value.parse().map_err(|_| format!("--pid {value:?}: not a process id"))?,
                "--cgroup" => request.cgroups.push(value.clone()),
                "--user" => request.user = Some(parse_user(value)?),
                "--caps" => request.capabilities = value.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect(),
                "--seccomp" => {
                    request.seccomp = match value.as_str() {
                        "runtime-default" => SeccompProfile::RuntimeDefault,
                        "unconfined" => SeccompProfile::Unconfined,
                        other => return Err(format!("--seccomp {other:?}: expected runtime-default or unconfined")),
                    }
                }
                "--cwd" => request.cwd = Some(value.clone()),
                "--tty" => request.tty = value == "true",
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if request.pid <= 0 {
            return Err("--pid is required".into());
        }
        if request.command.first().is_none_or(String::is_empty) {
            return Err("a command is needed after --".into());
        }
        Ok(request)
    }
}

/// Joins the container's cgroup `dir`. When the kernel refuses (`EBUSY`: a system
/// container's systemd enabled controllers for its own subtree on a unified host, and
/// no process may then live at its top), joins the cgroup of the container's PID 1
/// `target` instead, as runc does.
pub(crate) fn join_cgroup(dir: &std::path::Path, target: i32) -> Result<(), String> {
    let procs = dir.join("cgroup.procs");
    let own_pid = std::process::id().to_string();
    match std::fs::write(&procs, &own_pid) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() != Some(nix::libc::EBUSY) => return Err(format!("join cgroup {}: {e}", procs.display())),
        Err(_) => {}
    }
    let theirs = std::fs::read_to_string(format!("/proc/{target}/cgroup")).map_err(|e| format!("read /proc/{target}/cgroup: {e}"))?;
    let path = theirs
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::trim)
        .ok_or_else(|| format!("join cgroup {}: busy, and PID {target} has no unified cgroup", procs.display()))?;
    let path = std::path::Path::new(path);
    // Where `dir` (the container's cgroup) is in that path, and what lies below it.
    let below = path.ancestors().find_map(|ancestor| {
        let relative = ancestor.strip_prefix("/").ok().filter(|r| !r.as_os_str().is_empty())?;
        dir.ends_with(relative).then(|| path.strip_prefix(ancestor).ok()).flatten()
    });
    let below = below.ok_or_else(|| format!("join cgroup {}: busy, and PID {target}'s cgroup {} is not below it", procs.display(), path.display()))?;
    let inner = dir.join(below).join("cgroup.procs");
    std::fs::write(&inner, &own_pid).map_err(|e| format!("join cgroup {}: {e}", inner.display()))
}

/// Enters the namespaces and the root of the container whose PID 1 is `pid` (host
/// PID): its user namespace first when it has one of its own, the mount namespace last,
/// then the directory its PID 1 pivoted into. The PID namespace applies to children.
/// With `start_ticks`, the process must still be the one that started then: everything
/// is opened through one descriptor of its `/proc` directory, which never leads to a
/// later process given the same PID.
pub(crate) fn enter_container(pid: i32, start_ticks: Option<u64>) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let directory = File::open(format!("/proc/{pid}")).map_err(|e| format!("open /proc/{pid}: {e}"))?;
    let below = |what: &str| format!("/proc/self/fd/{}/{what}", directory.as_raw_fd());
    if let Some(expected) = start_ticks {
        let stat = std::fs::read_to_string(below("stat")).map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
        if super::procfs::parse_start_ticks(&stat) != Some(expected) {
            return Err(format!("process {pid} is not the container's any more (it ended and its PID was reused)"));
        }
    }
    // Everything is opened before the first setns: /proc changes meaning afterwards.
    let open = |what: &str| File::open(below(what)).map_err(|e| format!("open /proc/{pid}/{what}: {e}"));
    // Only the namespaces it does not share with this process: once in its user
    // namespace, one still the host's could not be joined again (EPERM).
    let identity = |path: String| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let theirs = |kind: &str| -> Result<Option<File>, String> {
        let shared = identity(format!("/proc/self/ns/{kind}")).is_some_and(|own| Some(own) == identity(below(&format!("ns/{kind}"))));
        if shared {
            Ok(None)
        } else {
            open(&format!("ns/{kind}")).map(Some)
        }
    };
    let user = theirs("user")?;
    let mut namespaces = Vec::new();
    for (kind, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        if let Some(file) = theirs(kind)? {
            namespaces.push((file, flag));
        }
    }
    let root = open("root")?;
    if let Some(user) = &user {
        setns(user, CloneFlags::CLONE_NEWUSER).map_err(|e| format!("setns(user) of {pid}: {e}"))?;
    }
    for (fd, kind) in &namespaces {
        setns(fd, *kind).map_err(|e| format!("setns({kind:?}) of {pid}: {e}"))?;
    }
    // The container's root is where its init pivoted to, not the namespace's first mount.
    nix::unistd::fchdir(&root).and_then(|()| nix::unistd::chroot(".")).map_err(|e| format!("enter the root of {pid}: {e}"))
}

fn die(message: &str, code: i32) -> ! {
    eprintln!("orch-agent exec: {message}");
    std::process::exit(code)
}

/// Entry point of `orch-agent __exec`. Never returns. Must run before any thread starts.
pub fn exec_main() -> ! {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let mut request = ExecRequest::parse(&args).unwrap_or_else(|e| die(&e, CODE_RUNTIME));
    // The container's environment is this process's own (see `helper_command`).
    request.env = std::env::vars_os().map(|(key, value)| format!("{}={}", key.to_string_lossy(), value.to_string_lossy())).collect();
    let pid = request.pid;
    for cgroup in &request.cgroups {
        if let Err(message) = join_cgroup(std::path::Path::new(cgroup), pid) {
            die(&message, CODE_RUNTIME);
        }
    }
    if let Err(message) = enter_container(pid, None) {
        die(&message, CODE_RUNTIME);
    }
    let pty = if request.tty { Some(nix::pty::openpty(None, None).unwrap_or_else(|e| die(&format!("openpty: {e}"), CODE_RUNTIME))) } else { None };
    // SAFETY: this process is single-threaded (dispatched before any thread starts), so
    // the child may run arbitrary code after fork.
    match unsafe { fork() } {
        Err(e) => die(&format!("fork: {e}"), CODE_RUNTIME),
        Ok(ForkResult::Child) => {
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            // The helper is outside this PID namespace, so it reads as parent 0; anything
            // else means it died (and the child was re-parented) before the signal was armed.
            if nix::unistd::getppid().as_raw() != 0 {
                std::process::exit(CODE_RUNTIME);
            }
            if let Some(pty) = pty {
                drop(pty.master);
                attach_terminal(pty.slave);
            }
            command_main(&request)
        }
        Ok(ForkResult::Parent { child }) if pty.is_some() => {
            let Some(pty) = pty else { die("no pty", CODE_RUNTIME) };
            drop(pty.slave);
            relay_terminal(&pty.master);
            wait_and_exit(child)
        }
        Ok(ForkResult::Parent { child }) => wait_and_exit(child),
    }
}

/// Makes the pty's slave the controlling terminal and standard streams of this process.
fn attach_terminal(slave: std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    if let Err(e) = nix::unistd::setsid() {
        die(&format!("setsid: {e}"), CODE_RUNTIME);
    }
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal); `slave` is an open
    // terminal descriptor for the whole call.
    let result = unsafe { nix::libc::ioctl(slave.as_raw_fd(), nix::libc::TIOCSCTTY, 0) };
    if result != 0 {
        die(&format!("ioctl(TIOCSCTTY): {}", std::io::Error::last_os_error()), CODE_RUNTIME);
    }
    for target in 0..=2 {
        // SAFETY: duplicating an open descriptor onto a standard stream number.
        if unsafe { nix::libc::dup2(slave.as_raw_fd(), target) } < 0 {
            die(&format!("dup2: {}", std::io::Error::last_os_error()), CODE_RUNTIME);
        }
    }
}

/// Copies this process's stdin to the pty and the pty to its stdout until the command
/// side closes.
fn relay_terminal(master: &std::os::fd::OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::{AsFd, BorrowedFd};
    // SAFETY: descriptor 0 stays open for the life of this process.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    let mut stdin_open = true;
    let mut buffer = [0u8; 8192];
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let master_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let stdin_ready = stdin_open && fds.get(1).and_then(PollFd::revents).is_some_and(|r| !r.is_empty());
        if master_ready {
            match nix::unistd::read(master, &mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), &buffer[..n]);
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                }
            }
        }
        if stdin_ready {
            match nix::unistd::read(stdin, &mut buffer) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let _ = nix::unistd::write(master, &buffer[..n]);
                }
            }
        }
    }
}

fn wait_and_exit(child: nix::unistd::Pid) -> ! {
    match super::init::wait_exit_status(child.as_raw()) {
        Ok(code) => std::process::exit(code),
        Err(e) => die(&format!("waitpid: {e}"), CODE_RUNTIME),
    }
}

fn command_main(request: &ExecRequest) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let cwd = request.cwd.as_deref().unwrap_or("/");
    if let Err(e) = std::env::set_current_dir(cwd) {
        die(&format!("chdir {cwd}: {e}"), CODE_RUNTIME);
    }
    if let Err(message) = super::init::drop_privileges(&request.capabilities, request.user.as_ref()) {
        die(&message, CODE_RUNTIME);
    }
    let program = request.command[0].clone();
    let path = request.env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH).to_owned();
    let resolved = if program.contains('/') {
        program.clone()
    } else {
        path.split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{d}/{program}"))
            .find(|candidate| std::fs::metadata(candidate).is_ok_and(|m| m.is_file()))
            .unwrap_or_else(|| die(&format!("exec {program}: executable file not found in $PATH ({path})"), CODE_NOT_FOUND))
    };
    let to_c = |s: &str| CString::new(s).unwrap_or_default();
    let argv: Vec<CString> = request.command.iter().map(|a| to_c(a)).collect();
    let envp: Vec<CString> = request.env.iter().map(|e| to_c(e)).collect();
    let path = to_c(&resolved);
    if let Err(message) = super::limit_container_descriptors() {
        die(&message, CODE_RUNTIME);
    }
    super::init::default_signal_actions();
    if let Err(message) = super::init::confine(request.seccomp, &request.capabilities) {
        die(&message, CODE_RUNTIME);
    }
    let error = match nix::unistd::execve(&path, &argv, &envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let code = if error == nix::errno::Errno::ENOENT { CODE_NOT_FOUND } else { CODE_CANNOT_INVOKE };
    die(&format!("exec {resolved}: {error}"), code)
}

/// `UID:GID[:GROUP,…]`, as [`ExecRequest::to_args`] writes it.
fn parse_user(value: &str) -> Result<User, String> {
    let mut parts = value.splitn(3, ':');
    let mut id = |what: &str| -> Result<u32, String> {
        parts.next().and_then(|part| part.parse().ok()).ok_or_else(|| format!("--user {value:?}: bad {what} (expected UID:GID[:GROUP,…])"))
    };
    let (uid, gid) = (id("uid")?, id("gid")?);
    let groups = match parts.next() {
        None => Vec::new(),
        Some(list) => list.split(',').map(|g| g.parse().map_err(|_| format!("--user {value:?}: bad group {g:?}"))).collect::<Result<_, _>>()?,
    };
    Ok(User { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let request = ExecRequest {
            pid: 42,
            cgroups: vec!["/sys/fs/cgroup/memory/orch/web-1".into()],
            user: Some(User { uid: 1000, gid: 1000, groups: vec![27, 100] }),
            capabilities: vec!["CAP_CHOWN".into(), "CAP_KILL".into()],
            seccomp: SeccompProfile::Unconfined,
            env: vec!["PATH=/bin".into(), "SECRET=b c".into()],
            cwd: Some("/srv".into()),
            tty: true,
            command: vec!["sh".into(), "-c".into(), "echo --pid".into()],
        };
        let args = request.to_args();
        assert!(!args.iter().any(|a| a.contains("SECRET")), "the environment is never on argv: {args:?}");
        assert_eq!(ExecRequest::parse(&args), Ok(ExecRequest { env: Vec::new(), ..request.clone() }));
        let command = request.helper_command(std::path::Path::new("/helper"));
        let envs: Vec<_> = command.as_std().get_envs().map(|(k, v)| (k.to_owned(), v.map(std::ffi::OsStr::to_owned))).collect();
        assert_eq!(envs, vec![("PATH".into(), Some("/bin".into())), ("SECRET".into(), Some("b c".into()))], "it is the helper's environment");
        let without_groups = ExecRequest { user: Some(User::ids(5, 6)), ..request.clone() };
        assert_eq!(ExecRequest::parse(&without_groups.to_args()).map(|r| r.user), Ok(without_groups.user));
        for bad in ["5", "5:x", "5:6:", "5:6:1,y"] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
        assert!(ExecRequest::parse(&["--pid".into(), "1".into()]).is_err(), "no command");
        assert!(ExecRequest::parse(&["--pid".into(), "x".into(), "--".into(), "sh".into()]).is_err());
    }
}
