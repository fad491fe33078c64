//! The exec'd side of a container start: `orch-init __init`.
//!
//! The agent spawns `orch-init` (a small binary beside its own; else its own binary,
//! `orch-agent __init`) with the sync socket as its standard input (so the spawn needs
//! no pre-exec hook and std can use posix_spawn). An `orch-init` from another build
//! than the agent's hands over to the agent's binary before reading anything. That fresh,
//! single-threaded process is the **shim**: it reads the config, starts a session,
//! unshares a PID namespace and forks the container's **init** (PID 1 inside), then
//! waits for it and records how it ended, so the container outlives an agent restart.
//! With `--userns` the shim first unshares a user namespace, which the agent maps.
//! The init unshares UTS, IPC and network namespaces, waits for the agent to put it in
//! its cgroup, unshares mount and cgroup namespaces, builds the root filesystem, and
//! forks the **command**, which drops capabilities, sets no_new_privs, installs the
//! seccomp filter and execs. The init stays as PID 1 with CAP_KILL only: it reaps
//! zombies and forwards the signals sent to it (SIGTERM, its stop signal) to the command, and exits with its
//! status. With a log, the shim also copies the command's stdout and stderr (pipes)
//! into it, rotating it by size ([`super::output`]).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::PollTimeout;
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::{fork, ForkResult, Pid};

use super::config::{InitConfig, User};
use super::output::{Copier, LogSettings, LogWriter};
use super::seccomp::{self, SeccompProfile};
use super::state::{now_unix_ms, write_json, ExitRecord};
use super::sync::{receive, send, SyncMessage};
use super::{rootfs, CODE_CANNOT_INVOKE, CODE_NOT_FOUND, CODE_RUNTIME};

/// What the container's init does not pass on to the command: SIGCHLD (its own),
/// SIGKILL and SIGSTOP (never caught), and the signals the kernel raises for a faulting
/// instruction ([`orch_api::signal::FAULTS`]). glibc's own 32 and 33 are no signals to send.
const NOT_FORWARDED: [i32; 7] = [
    nix::libc::SIGCHLD,
    nix::libc::SIGKILL,
    nix::libc::SIGSTOP,
    orch_api::signal::FAULTS[0],
    orch_api::signal::FAULTS[1],
    orch_api::signal::FAULTS[2],
    orch_api::signal::FAULTS[3],
];

/// The signals the init passes on to the command: any a process may be sent to ask it
/// something — whatever its stop signal is (SIGTERM, nginx's SIGQUIT, SIGPWR,
/// systemd's SIGRTMIN+3) — as numbers, since nix's `Signal` has no real-time ones.
fn forwarded() -> impl Iterator<Item = i32> {
    (1..=31).filter(|s| !NOT_FORWARDED.contains(s)).chain(orch_api::signal::SIGRTMIN..=orch_api::signal::SIGRTMAX)
}

/// SIGCHLD and every [`forwarded`] signal, for the init to block and wait on.
fn supervised_signals() -> nix::libc::sigset_t {
    // SAFETY: a zeroed sigset_t is plain data, which sigemptyset initialises; sigaddset
    // gets valid signal numbers (1–31 but 32 and 33, and SIGRTMIN–SIGRTMAX).
    unsafe {
        let mut set: nix::libc::sigset_t = std::mem::zeroed();
        nix::libc::sigemptyset(&mut set);
        nix::libc::sigaddset(&mut set, nix::libc::SIGCHLD);
        for signal in forwarded() {
            nix::libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Entry point of `orch-init __init` (and `orch-agent __init`). Never returns. Must run
/// before any thread starts.
pub fn shim_main() -> ! {
    hand_over_if_other_build();
    let mut sync = match take_sync_socket() {
        Ok(sync) => sync,
        Err(e) => {
            eprintln!("orch-agent __init: {e} (this command is started by the agent, not by hand)");
            std::process::exit(CODE_RUNTIME)
        }
    };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);

    let config = match receive(&mut sync) {
        Ok(Some(SyncMessage::Config(config))) => config,
        other => fail(&mut sync, &format!("expected the container config, got {other:?}"), CODE_RUNTIME),
    };
    // A session of its own: the terminal's Ctrl-C reaches the agent, which decides.
    let _ = nix::unistd::setsid();
    if config.user_namespace {
        // The user namespace comes first so that it owns every other namespace.
        if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER) {
            fail(&mut sync, &format!("unshare(CLONE_NEWUSER): {e}"), CODE_RUNTIME);
        }
        if send(&mut sync, &SyncMessage::UsernsCreated).is_err() {
            std::process::exit(CODE_RUNTIME);
        }
        match receive(&mut sync) {
            Ok(Some(SyncMessage::IdsMapped)) => {}
            other => fail(&mut sync, &format!("expected the id maps from the agent, got {other:?}"), CODE_RUNTIME),
        }
    }
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        fail(&mut sync, &format!("unshare(CLONE_NEWPID): {e}"), CODE_RUNTIME);
    }
    let output = match config.log.clone().map(open_output).transpose() {
        Ok(output) => output,
        Err(message) => fail(&mut sync, &message, CODE_RUNTIME),
    };
    // A system container's console, copied into its log with its output: the init
    // makes it in the container's own devpts and hands its ends over on this socket.
    let console = match (config.system && output.is_some()).then(UnixStream::pair).transpose() {
        Ok(console) => console,
        Err(e) => fail(&mut sync, &format!("socketpair for the console: {e}"), CODE_RUNTIME),
    };
    // SAFETY: this process is single-threaded (fresh exec, no threads started), so the
    // child may run arbitrary code after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            if let Some(output) = output {
                if let Err(message) = output.into_stdio() {
                    fail(&mut sync, &message, CODE_RUNTIME);
                }
            }
            init_main(&config, sync, console.map(|(_, init_end)| init_end))
        }
        Ok(ForkResult::Parent { child }) => {
            let sent = send(&mut sync, &SyncMessage::InitPid { pid: child.as_raw() });
            drop(sync);
            if sent.is_err() {
                let _ = kill(child, Signal::SIGKILL);
            }
            if let Some(output) = output {
                // Before any copying: the init sends the console once its root is built
                // (or closes the socket, failing).
                // Its own copy of the init's end goes first: an init that dies before
                // sending leaves the socket at its end, and the shim does not wait forever.
                let console = console.and_then(|(shim_end, init_end)| {
                    drop(init_end);
                    receive_console(&shim_end)
                });
                output.copy_until_exit(child, console, &config.dir.join(CONSOLE_SOCKET));
            }
            let record = wait_for(child);
            let _ = write_json(&config.exit_status_path, &record);
            std::process::exit(record.code)
        }
        Err(e) => fail(&mut sync, &format!("fork the container init: {e}"), CODE_RUNTIME),
    }
}

/// `orch-init __init --build ID --fallback NAME`: an `orch-init` from another build
/// than the agent's cannot be trusted to read its config the same way, so before it
/// reads anything it executes the agent's own binary (`NAME`, beside it) in its place,
/// with the same standard descriptors (the sync socket is standard input). A name, not
/// a path: the container's PID 1 shows these arguments, and no host path.
fn hand_over_if_other_build() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let [_, _, build_flag, build, fallback_flag, name] = args.as_slice() else { return };
    if build_flag != "--build" || fallback_flag != "--fallback" || build == super::BUILD_ID {
        return;
    }
    let helper = std::env::current_exe().map(|exe| exe.with_file_name(name));
    let error = match &helper {
        Ok(helper) if Path::new(name).file_name() == Some(name.as_os_str()) => exec_shim(helper),
        Ok(_) => format!("--fallback {name:?} is not a file name"),
        Err(e) => format!("cannot find its own binary: {e}"),
    };
    eprintln!("orch-init: from another build than the agent's, and cannot hand over to the agent's binary: {error}");
    std::process::exit(CODE_RUNTIME)
}

/// Executes `helper __init` as the shim, named as the shim is; returns only the error.
fn exec_shim(helper: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(path), Ok(name), Ok(subcommand)) =
        (CString::new(helper.as_os_str().as_bytes()), CString::new(super::INIT_NAME), CString::new(super::INIT_SUBCOMMAND))
    else {
        return format!("{} is not a C string", helper.display());
    };
    match nix::unistd::execve::<_, CString>(&path, &[name, subcommand], &[]) {
        Err(error) => format!("exec {}: {error}", helper.display()),
        Ok(never) => match never {},
    }
}

/// Where a system container's shim takes `orch console`'s connection, in the container's
/// directory.
pub const CONSOLE_SOCKET: &str = "console.sock";

/// A system container's console, as the shim holds it: a pty's master (read into the
/// log) and a slave (held so that the master never hangs up while no process in the
/// container has the console open).
pub(crate) struct Console {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Unlocks the pty whose master is `master` (opened from a devpts' `ptmx`); its number.
pub(crate) fn unlock_pty(master: &std::fs::File) -> Result<u32, String> {
    let unlock: nix::libc::c_int = 0;
    let mut number: nix::libc::c_uint = 0;
    // SAFETY: TIOCSPTLCK reads one int and TIOCGPTN writes one unsigned int, both ours
    // and alive for the calls, on a descriptor `master` holds open.
    let (unlocked, numbered) = unsafe {
        (nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSPTLCK, &unlock), nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCGPTN, &mut number))
    };
    if unlocked < 0 || numbered < 0 {
        return Err(format!("unlock the console's pty: {}", Errno::last()));
    }
    Ok(number)
}

/// The console's two ends, sent by the init (none when it failed first).
fn receive_console(socket: &UnixStream) -> Option<Console> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let message = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).ok()?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for control in message.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(received) = control {
            // SAFETY: SCM_RIGHTS installed these descriptors in this process for us alone.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let mut fds = fds.into_iter();
    Some(Console { master: fds.next()?, slave: fds.next()? })
}

/// The command's stdout and stderr pipes and the log they are copied to.
struct Output {
    stdout: (OwnedFd, OwnedFd),
    stderr: (OwnedFd, OwnedFd),
    writer: LogWriter,
}

fn open_output(settings: LogSettings) -> Result<Output, String> {
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe2 for the container's output: {e}"));
    // Default-sized pipes (64 KiB): larger ones would count against root's pipe quota,
    // which every container shares.
    let (stdout, stderr) = (pipe()?, pipe()?);
    let writer = LogWriter::open(settings.clone()).map_err(|e| format!("cannot open the log {}: {e}", settings.path.display()))?;
    Ok(Output { stdout, stderr, writer })
}

impl Output {
    /// In the init: the pipes' write ends become its stdout and stderr (inherited by
    /// the command); the read ends and the log are the shim's alone.
    fn into_stdio(self) -> Result<(), String> {
        for (write, target) in [(&self.stdout.1, 1), (&self.stderr.1, 2)] {
            // SAFETY: dup2 between a descriptor we own and a standard one; the copy is
            // not close-on-exec, so the command inherits it.
            if unsafe { nix::libc::dup2(write.as_raw_fd(), target) } < 0 {
                return Err(format!("dup2 of the output pipe onto {target}: {}", Errno::last()));
            }
        }
        Ok(())
    }

    /// In the shim: copies the pipes into the log until the init exits, then what is
    /// left (every process of the container is gone with its init, so the pipes end;
    /// at most 5 s more), so the last output is in the log before the exit is recorded.
    fn copy_until_exit(self, child: Pid, console: Option<Console>, socket: &Path) {
        let Output { stdout: (stdout, stdout_write), stderr: (stderr, stderr_write), writer } = self;
        drop((stdout_write, stderr_write));
        let mut copier = Copier::new(stdout, stderr, writer);
        // The shim holds the console's slave until the end: its master never hangs up.
        let slave = console.map(|console| {
            copier.add_console(console.master);
            console.slave
        });
        // The shim's own messages follow the log to its new file.
        let follow = |file: &std::fs::File| {
            for target in [1, 2] {
                // SAFETY: dup2 onto a standard descriptor of this process from a file
                // that stays open for the call.
                unsafe { nix::libc::dup2(file.as_raw_fd(), target) };
            }
        };
        let Ok(exited) = super::pidfd::open_raw(child.as_raw()) else {
            // Without a pidfd, until the pipes end: the container's end closes them.
            while copier.is_open() {
                copier.step(None, PollTimeout::NONE, &follow);
            }
            return;
        };
        // `orch console` connects here (the agent, root, through the container's 0700
        // directory): one client at a time.
        let listener = slave.as_ref().and_then(|_| {
            let _ = std::fs::remove_file(socket);
            let listener = std::os::unix::net::UnixListener::bind(socket).ok()?;
            listener.set_nonblocking(true).ok()?;
            Some(listener)
        });
        while copier.is_open() || copier.has_console() {
            let mut extra = vec![exited.as_fd()];
            extra.extend(listener.as_ref().map(AsFd::as_fd));
            let ready = copier.step_with(&extra, PollTimeout::NONE, &follow);
            if ready.first().copied().unwrap_or(true) {
                break;
            }
            if ready.get(1).copied().unwrap_or(false) {
                if let Some(Ok((client, _))) = listener.as_ref().map(std::os::unix::net::UnixListener::accept) {
                    copier.attach_console(client);
                }
            }
        }
        drop(listener);
        if slave.is_some() {
            let _ = std::fs::remove_file(socket);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while copier.is_open() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            copier.step(None, PollTimeout::try_from(left).unwrap_or(PollTimeout::ZERO), &follow);
        }
        // What the console still holds.
        if copier.has_console() {
            copier.step(None, PollTimeout::ZERO, &follow);
        }
        copier.finish();
    }
}

/// Moves the sync socket off standard input to a close-on-exec descriptor (the
/// command's exec closing it tells the agent the exec succeeded) and puts /dev/null on
/// standard input instead.
fn take_sync_socket() -> Result<UnixStream, String> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on fd 0 only creates a new descriptor; it reads
    // and writes no memory of ours.
    let raw = unsafe { nix::libc::fcntl(0, nix::libc::F_DUPFD_CLOEXEC, 3) };
    if raw < 0 {
        return Err(format!("cannot take the sync socket from standard input: {}", Errno::last()));
    }
    // SAFETY: `raw` was just returned by fcntl and nothing else owns it.
    let sync = unsafe { UnixStream::from_raw_fd(raw) };
    sync.peer_addr().map_err(|_| "standard input is not the agent's sync socket".to_owned())?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("cannot open /dev/null: {e}"))?;
    // SAFETY: dup2 between two descriptors we hold; `null` stays open across the call.
    if unsafe { nix::libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(format!("cannot put /dev/null on standard input: {}", Errno::last()));
    }
    Ok(sync)
}

/// Reports an error to the agent and exits with `code`.
fn fail(sync: &mut UnixStream, message: &str, code: i32) -> ! {
    let _ = send(sync, &SyncMessage::Error { message: message.to_owned(), code });
    std::process::exit(code)
}

/// How a child ended, from waitpid's own status word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Code(i32),
    /// Killed by this signal (a real-time one too).
    Signal(i32),
    /// Stopped or continued (not asked for; waited past).
    Other,
}

/// waitpid(2) without nix's `WaitStatus`, which cannot hold a real-time signal: its
/// conversion fails after the child was already reaped (a command killed by
/// SIGRTMIN+3 would be lost). `Ok(None)`: nothing ended yet (with `nohang`).
pub(crate) fn wait_raw(pid: i32, nohang: bool) -> Result<Option<(i32, Ended)>, Errno> {
    let mut status: nix::libc::c_int = 0;
    let flags = if nohang { nix::libc::WNOHANG } else { 0 };
    // SAFETY: waitpid writes the status word into our local `status` and nothing else.
    let reaped = unsafe { nix::libc::waitpid(pid, &mut status, flags) };
    if reaped < 0 {
        return Err(Errno::last());
    }
    if reaped == 0 {
        return Ok(None);
    }
    let ended = if nix::libc::WIFEXITED(status) {
        Ended::Code(nix::libc::WEXITSTATUS(status))
    } else if nix::libc::WIFSIGNALED(status) {
        Ended::Signal(nix::libc::WTERMSIG(status))
    } else {
        Ended::Other
    };
    Ok(Some((reaped, ended)))
}

/// Waits for `pid` to end: its exit code, or 128 + N when signal N killed it (stops,
/// continues and EINTR waited past).
pub(crate) fn wait_exit_status(pid: i32) -> Result<i32, Errno> {
    loop {
        match wait_raw(pid, false) {
            Ok(Some((_, Ended::Code(code)))) => return Ok(code),
            Ok(Some((_, Ended::Signal(signal)))) => return Ok(128 + signal),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Waits for `child` and turns its end into an exit record (128 + N for signal N).
fn wait_for(child: Pid) -> ExitRecord {
    loop {
        match wait_raw(child.as_raw(), false) {
            Ok(Some((_, Ended::Code(code)))) => {
                return ExitRecord { code, signal: None, finished_unix_ms: now_unix_ms() };
            }
            Ok(Some((_, Ended::Signal(signal)))) => {
                return ExitRecord { code: 128 + signal, signal: Some(signal), finished_unix_ms: now_unix_ms() };
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return ExitRecord { code: CODE_RUNTIME, signal: None, finished_unix_ms: now_unix_ms() },
        }
    }
}

/// The container's PID 1.
fn init_main(config: &InitConfig, mut sync: UnixStream, console: Option<UnixStream>) -> ! {
    // If the shim dies, so does the container: nobody would be left to report it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let namespaces = CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET;
    if let Err(e) = unshare(namespaces) {
        fail(&mut sync, &format!("unshare(uts, ipc, net): {e}"), CODE_RUNTIME);
    }
    if send(&mut sync, &SyncMessage::Unshared).is_err() {
        std::process::exit(CODE_RUNTIME);
    }
    // The agent moves us into the cgroup (as soon as the shim names us) and wires the
    // network (now that it exists), then says go.
    match receive(&mut sync) {
        Ok(Some(SyncMessage::Go)) => {}
        other => fail(&mut sync, &format!("expected go from the agent, got {other:?}"), CODE_RUNTIME),
    }
    // Now inside its cgroup: a cgroup namespace makes that the container's cgroup root.
    // The mount namespace is taken only now, so it copies the idmapped layers the agent
    // mounted for a user namespace.
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP) {
        fail(&mut sync, &format!("unshare(mount, cgroup): {e}"), CODE_RUNTIME);
    }
    // Still with the host's uid: the container's directory becomes the working
    // directory (the overlay's paths are relative to it) and the bind sources are
    // opened, so a user-namespaced init never walks the private state tree.
    if let Err(e) = std::env::set_current_dir(&config.dir) {
        fail(&mut sync, &format!("chdir {}: {e}", config.dir.display()), CODE_RUNTIME);
    }
    let sources = match rootfs::open_sources(config) {
        Ok(sources) => sources,
        Err(rootfs::SetupError(message)) => fail(&mut sync, &message, CODE_RUNTIME),
    };
    // In a user namespace, mount as its root: overlayfs and the new proc and sysfs are
    // then owned by it, and the command inherits the ids.
    if config.user_namespace {
        if let Err(e) = switch_user(&User::ids(0, 0)) {
            fail(&mut sync, &e, CODE_RUNTIME);
        }
    }
    if let Err(rootfs::SetupError(message)) = rootfs::setup(config, &sources, console.as_ref()) {
        fail(&mut sync, &message, CODE_RUNTIME);
    }
    drop(sources);
    drop(console);
    if let Err(e) = nix::unistd::sethostname(&config.hostname) {
        fail(&mut sync, &format!("sethostname({:?}): {e}", config.hostname), CODE_RUNTIME);
    }
    if let Err(e) = loopback_up() {
        fail(&mut sync, &format!("bring up lo: {e}"), CODE_RUNTIME);
    }
    // The init must survive the OOM killer; the command gets the default back.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");

    let blocked = supervised_signals();
    // SAFETY: `blocked` is an initialised set; the old mask is not asked for.
    if unsafe { nix::libc::sigprocmask(nix::libc::SIG_BLOCK, &blocked, std::ptr::null_mut()) } != 0 {
        fail(&mut sync, &format!("sigprocmask: {}", Errno::last()), CODE_RUNTIME);
    }
    if config.system {
        // A system container: its command (the image's init) is PID 1, and reaps.
        command_main(config, sync);
    }
    // SAFETY: the init is single-threaded (it is a fork of the single-threaded shim).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => command_main(config, sync),
        Ok(ForkResult::Parent { child }) => {
            drop(sync);
            // PID 1 only forwards signals and reaps from here on: it keeps CAP_KILL (the
            // command may run as another user) and nothing else.
            let _ = drop_privileges(&["CAP_KILL".to_owned()], None);
            supervise(child, &blocked)
        }
        Err(e) => fail(&mut sync, &format!("fork the command: {e}"), CODE_RUNTIME),
    }
}

/// PID 1's loop: forward signals to the command, reap every zombie, and exit with the
/// command's status when it ends (the kernel then kills whatever is left).
fn supervise(command: Pid, signals: &nix::libc::sigset_t) -> ! {
    loop {
        let mut signal = 0;
        // SAFETY: `signals` is an initialised set (blocked in this thread); `signal` is
        // where sigwait writes the number.
        if unsafe { nix::libc::sigwait(signals, &mut signal) } != 0 {
            continue;
        }
        if signal != nix::libc::SIGCHLD {
            // SAFETY: kill(2) with the command's PID and a signal number; nothing else.
            let _ = unsafe { nix::libc::kill(command.as_raw(), signal) };
            continue;
        }
        loop {
            match wait_raw(-1, true) {
                Ok(Some((pid, Ended::Code(code)))) if pid == command.as_raw() => std::process::exit(code),
                Ok(Some((pid, Ended::Signal(signal)))) if pid == command.as_raw() => std::process::exit(128 + signal),
                Ok(None) | Err(_) => break,
                Ok(Some(_)) => {}
            }
        }
    }
}

/// The command: last preparations, then exec. Errors go to the agent over the socket.
fn command_main(config: &InitConfig, mut sync: UnixStream) -> ! {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let _ = std::fs::write("/proc/self/oom_score_adj", "0");
    if let Err(e) = std::env::set_current_dir(&config.cwd) {
        fail(&mut sync, &format!("chdir to the working directory {:?}: {e}", config.cwd), CODE_RUNTIME);
    }
    let program = match find_program(config.args.first().map(String::as_str).unwrap_or_default(), &config.env) {
        Ok(path) => path,
        Err((message, code)) => fail(&mut sync, &message, code),
    };
    if let Err(message) = super::limit_container_descriptors() {
        fail(&mut sync, &message, CODE_RUNTIME);
    }
    if let Err(message) = drop_privileges(&config.security.capabilities, config.user.as_ref()) {
        fail(&mut sync, &message, CODE_RUNTIME);
    }
    let to_c = |s: &str| CString::new(s).unwrap_or_default();
    let argv: Vec<CString> = config.args.iter().map(|a| to_c(a)).collect();
    let envp: Vec<CString> = config.env.iter().map(|e| to_c(e)).collect();
    let path = to_c(&program);
    // Last, so that a failure reported on the socket above never dies of SIGPIPE.
    default_signal_actions();
    if let Err(message) = install_compiled(config.security.seccomp, &config.seccomp_filters) {
        fail(&mut sync, &message, CODE_RUNTIME);
    }
    let error = match nix::unistd::execve(&path, &argv, &envp) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    let code = if error == Errno::ENOENT { CODE_NOT_FOUND } else { CODE_CANNOT_INVOKE };
    fail(&mut sync, &format!("exec {program}: {error}"), code)
}

/// Finds `program`: a path as given, or the first match in the PATH of `env` (the
/// container's environment); an error with its exit code (127 not found, 126 not a file).
pub(crate) fn find_program(program: &str, env: &[String]) -> Result<String, (String, i32)> {
    if program.contains('/') {
        return match std::fs::metadata(program) {
            Ok(meta) if meta.is_file() => Ok(program.to_owned()),
            Ok(_) => Err((format!("exec {program}: not a regular file"), CODE_CANNOT_INVOKE)),
            Err(e) => Err((format!("exec {program}: {e}"), CODE_NOT_FOUND)),
        };
    }
    let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(super::config::DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file()) {
            return Ok(candidate.display().to_string());
        }
    }
    Err((format!("exec {program}: executable file not found in $PATH ({path})"), CODE_NOT_FOUND))
}

/// Takes `user`'s uid, gid and group list (its primary group and supplementary ones).
/// The command runs as its image's user this way; in a user namespace the init, which starts with the host's unmapped
/// ids, takes the namespace's root (0:0, mapped to an unprivileged host id). Leaving
/// uid 0 clears the effective and permitted capabilities, as for any non-root process.
pub(crate) fn switch_user(user: &User) -> Result<(), String> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let groups: Vec<Gid> = user.group_list().into_iter().map(Gid::from_raw).collect();
    let gid = Gid::from_raw(user.gid);
    let uid = Uid::from_raw(user.uid);
    setgroups(&groups).map_err(|e| format!("setgroups({:?}): {e}", user.group_list()))?;
    setresgid(gid, gid, gid).map_err(|e| format!("setresgid({gid}): {e}"))?;
    setresuid(uid, uid, uid).map_err(|e| format!("setresuid({uid}): {e}"))
}

/// Becomes `user` (when given) keeping only `keep` of the capabilities, and sets
/// no_new_privs. The bounding set is cut first (while CAP_SETPCAP is still effective),
/// then the ids change (while CAP_SETUID and CAP_SETGID are), then the other sets are
/// cut to `keep`: a non-root user ends with none effective, as for any non-root process.
pub(crate) fn drop_privileges(keep: &[String], user: Option<&User>) -> Result<(), String> {
    use caps::{CapSet, Capability, CapsHashSet};
    let keep: CapsHashSet = keep.iter().filter_map(|name| name.parse::<Capability>().ok()).collect();
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
        }
    }
    if let Some(user) = user {
        switch_user(user)?;
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear ambient capabilities: {e}"))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| format!("read the permitted capabilities: {e}"))?;
    let kept: CapsHashSet = keep.intersection(&permitted).copied().collect();
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &kept).map_err(|e| format!("set {set:?} capabilities: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("prctl(PR_SET_NO_NEW_PRIVS): {e}"))
}

/// Every signal back to its default action, none blocked. A signal the agent ignores
/// stays ignored across exec — Rust's runtime ignores SIGPIPE — and a container's
/// processes must start as under any other runtime (`yes | head` ends when `head` does).
pub(crate) fn default_signal_actions() {
    use nix::sys::signal::{signal, SigHandler};
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    for sig in Signal::iterator().filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP)) {
        // SAFETY: SIG_DFL installs no handler code; nothing here runs concurrently (the
        // process is single-threaded, right before exec).
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}

/// Installs the seccomp filter of `profile` for a process keeping `capabilities`: the
/// last step before exec (no_new_privs is already set).
pub(crate) fn confine(profile: SeccompProfile, capabilities: &[String]) -> Result<(), String> {
    let programs = seccomp::filters_for(profile, capabilities).map_err(|e| e.to_string())?;
    seccomp::install(&programs).map_err(|e| e.to_string())
}

/// Installs the filters the agent compiled for `profile`: the last step before exec.
/// A confined profile without its filters fails rather than run unconfined.
fn install_compiled(profile: SeccompProfile, filters: &[seccomp::PackedProgram]) -> Result<(), String> {
    match profile {
        SeccompProfile::Unconfined => Ok(()),
        SeccompProfile::RuntimeDefault if filters.is_empty() => Err("no seccomp filter came with the runtime-default profile".to_owned()),
        SeccompProfile::RuntimeDefault => {
            let programs: Vec<_> = filters.iter().map(seccomp::PackedProgram::unpack).collect();
            seccomp::install(&programs).map_err(|e| e.to_string())
        }
    }
}

/// `ip link set lo up` in the container's fresh network namespace.
pub(crate) fn loopback_up() -> Result<(), Errno> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value for it.
    let mut request: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as nix::libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name from and writes the flags into `request`, a
    // valid ifreq that outlives the call.
    if unsafe { nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the union's flags member is what SIOCGIFFLAGS just filled in.
    unsafe {
        request.ifr_ifru.ifru_flags |= nix::libc::IFF_UP as nix::libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `request`.
    if unsafe { nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}
