//! The default seccomp filter: Docker's default profile, compiled with Firecracker's
//! `seccompiler` and installed by the container's command (and by `orch exec`'s) just
//! before it execs, after no_new_privs is set. An allowlist: any system call it does
//! not name fails with EPERM (`kexec_*`, `bpf`, `keyctl`, `add_key`, `mount`,
//! `swapon`, `reboot`, `init_module`, …). As in Docker, a capability the container
//! holds brings back the calls it governs (CAP_SYS_ADMIN: `mount`, `unshare`, `setns`…;
//! CAP_SYS_PTRACE: `kcmp`, `pidfd_getfd`…), and without CAP_SYS_ADMIN `clone` may not
//! create namespaces and `clone3` answers ENOSYS (its flags cannot be inspected), so C
//! libraries fall back to `clone`.
//!
//! Only the native architecture's system calls are allowed: an i386 system call kills the
//! process (seccompiler's architecture check); an x32 one (same architecture, numbers
//! from 0x40000000) matches no rule and fails with EPERM.
//!
//! seccompiler compares the system call number against each allowed call in turn. The
//! kernel runs a new filter once per system call number when it is installed (to cache
//! the calls it always allows), so a 350-call chain costs about a millisecond at every
//! container start. [`default_filters`] therefore compiles the allowlist in groups of
//! [`GROUP_SIZE`] consecutive calls, each a complete seccompiler program, and puts a
//! binary search over the call number in front that jumps to the one group whose range
//! holds it: the same answers (a unit test runs both for every call), a tenth of the
//! work per call.

use std::collections::BTreeMap;

use nix::libc::*;
use seccompiler::{sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};
use serde::{Deserialize, Serialize};

/// Which filter a container's processes run under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    /// Docker's default profile (see the module documentation).
    #[default]
    RuntimeDefault,
    /// No filter at all.
    Unconfined,
}

/// System calls every container may make (Docker's default allowlist, for the
/// architectures both name).
const ALLOWED: &[c_long] = &[
    SYS_accept,
    SYS_accept4,
    SYS_adjtimex,
    SYS_bind,
    SYS_brk,
    SYS_capget,
    SYS_capset,
    SYS_chdir,
    SYS_clock_adjtime,
    SYS_clock_getres,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_close,
    SYS_close_range,
    SYS_connect,
    SYS_copy_file_range,
    SYS_dup,
    SYS_dup3,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_eventfd2,
    SYS_execve,
    SYS_execveat,
    SYS_exit,
    SYS_exit_group,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_fadvise64,
    SYS_fallocate,
    SYS_fanotify_mark,
    SYS_fchdir,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchown,
    SYS_fchownat,
    SYS_fcntl,
    SYS_fdatasync,
    SYS_fgetxattr,
    SYS_flistxattr,
    SYS_flock,
    SYS_fremovexattr,
    SYS_fsetxattr,
    SYS_fstat,
    SYS_fstatfs,
    SYS_fsync,
    SYS_ftruncate,
    SYS_futex,
    SYS_futex_waitv,
    SYS_get_robust_list,
    SYS_getcpu,
    SYS_getcwd,
    SYS_getdents64,
    SYS_getegid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getgroups,
    SYS_getitimer,
    SYS_getpeername,
    SYS_getpgid,
    SYS_getpid,
    SYS_getppid,
    SYS_getpriority,
    SYS_getrandom,
    SYS_getresgid,
    SYS_getresuid,
    SYS_getrlimit,
    SYS_getrusage,
    SYS_getsid,
    SYS_getsockname,
    SYS_getsockopt,
    SYS_gettid,
    SYS_gettimeofday,
    SYS_getuid,
    SYS_getxattr,
    SYS_inotify_add_watch,
    SYS_inotify_init1,
    SYS_inotify_rm_watch,
    SYS_io_cancel,
    SYS_io_destroy,
    SYS_io_getevents,
    SYS_io_setup,
    SYS_io_submit,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_io_uring_setup,
    SYS_ioctl,
    SYS_ioprio_get,
    SYS_ioprio_set,
    SYS_kill,
    SYS_landlock_add_rule,
    SYS_landlock_create_ruleset,
    SYS_landlock_restrict_self,
    SYS_lgetxattr,
    SYS_linkat,
    SYS_listen,
    SYS_listxattr,
    SYS_llistxattr,
    SYS_lremovexattr,
    SYS_lseek,
    SYS_lsetxattr,
    SYS_madvise,
    SYS_membarrier,
    SYS_memfd_create,
    SYS_memfd_secret,
    SYS_mincore,
    SYS_mkdirat,
    SYS_mknodat,
    SYS_mlock,
    SYS_mlock2,
    SYS_mlockall,
    SYS_mmap,
    SYS_mprotect,
    SYS_mq_getsetattr,
    SYS_mq_notify,
    SYS_mq_open,
    SYS_mq_timedreceive,
    SYS_mq_timedsend,
    SYS_mq_unlink,
    SYS_mremap,
    SYS_msgctl,
    SYS_msgget,
    SYS_msgrcv,
    SYS_msgsnd,
    SYS_msync,
    SYS_munlock,
    SYS_munlockall,
    SYS_munmap,
    SYS_name_to_handle_at,
    SYS_nanosleep,
    SYS_newfstatat,
    SYS_openat,
    SYS_openat2,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_pipe2,
    SYS_pkey_alloc,
    SYS_pkey_free,
    SYS_pkey_mprotect,
    SYS_ppoll,
    SYS_prctl,
    SYS_pread64,
    SYS_preadv,
    SYS_preadv2,
    SYS_prlimit64,
    SYS_process_mrelease,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_pselect6,
    SYS_ptrace,
    SYS_pwrite64,
    SYS_pwritev,
    SYS_pwritev2,
    SYS_read,
    SYS_readahead,
    SYS_readlinkat,
    SYS_readv,
    SYS_recvfrom,
    SYS_recvmmsg,
    SYS_recvmsg,
    SYS_remap_file_pages,
    SYS_removexattr,
    SYS_renameat,
    SYS_renameat2,
    SYS_restart_syscall,
    SYS_rseq,
    SYS_rt_sigaction,
    SYS_rt_sigpending,
    SYS_rt_sigprocmask,
    SYS_rt_sigqueueinfo,
    SYS_rt_sigreturn,
    SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait,
    SYS_rt_tgsigqueueinfo,
    SYS_sched_get_priority_max,
    SYS_sched_get_priority_min,
    SYS_sched_getaffinity,
    SYS_sched_getattr,
    SYS_sched_getparam,
    SYS_sched_getscheduler,
    SYS_sched_rr_get_interval,
    SYS_sched_setaffinity,
    SYS_sched_setattr,
    SYS_sched_setparam,
    SYS_sched_setscheduler,
    SYS_sched_yield,
    SYS_seccomp,
    SYS_semctl,
    SYS_semget,
    SYS_semop,
    SYS_semtimedop,
    SYS_sendfile,
    SYS_sendmmsg,
    SYS_sendmsg,
    SYS_sendto,
    SYS_set_robust_list,
    SYS_set_tid_address,
    SYS_setfsgid,
    SYS_setfsuid,
    SYS_setgid,
    SYS_setgroups,
    SYS_setitimer,
    SYS_setpgid,
    SYS_setpriority,
    SYS_setregid,
    SYS_setresgid,
    SYS_setresuid,
    SYS_setreuid,
    SYS_setrlimit,
    SYS_setsid,
    SYS_setsockopt,
    SYS_setuid,
    SYS_setxattr,
    SYS_shmat,
    SYS_shmctl,
    SYS_shmdt,
    SYS_shmget,
    SYS_shutdown,
    SYS_sigaltstack,
    SYS_signalfd4,
    SYS_socketpair,
    SYS_splice,
    SYS_statfs,
    SYS_statx,
    SYS_symlinkat,
    SYS_sync,
    SYS_sync_file_range,
    SYS_syncfs,
    SYS_sysinfo,
    SYS_tee,
    SYS_tgkill,
    SYS_timer_create,
    SYS_timer_delete,
    SYS_timer_getoverrun,
    SYS_timer_gettime,
    SYS_timer_settime,
    SYS_timerfd_create,
    SYS_timerfd_gettime,
    SYS_timerfd_settime,
    SYS_times,
    SYS_tkill,
    SYS_truncate,
    SYS_umask,
    SYS_uname,
    SYS_unlinkat,
    SYS_utimensat,
    SYS_vmsplice,
    SYS_wait4,
    SYS_waitid,
    SYS_write,
    SYS_writev,
];

#[cfg(target_arch = "x86_64")]
const ALLOWED_ARCH: &[c_long] = &[
    SYS_access,
    SYS_alarm,
    SYS_arch_prctl,
    SYS_chmod,
    SYS_chown,
    SYS_creat,
    SYS_dup2,
    SYS_epoll_create,
    SYS_epoll_ctl_old,
    SYS_epoll_wait,
    SYS_epoll_wait_old,
    SYS_eventfd,
    SYS_fork,
    SYS_futimesat,
    SYS_get_thread_area,
    SYS_getdents,
    SYS_getpgrp,
    SYS_inotify_init,
    SYS_lchown,
    SYS_link,
    SYS_lstat,
    SYS_mkdir,
    SYS_mknod,
    SYS_modify_ldt,
    SYS_open,
    SYS_pause,
    SYS_pipe,
    SYS_poll,
    SYS_readlink,
    SYS_rename,
    SYS_rmdir,
    SYS_select,
    SYS_set_thread_area,
    SYS_signalfd,
    SYS_stat,
    SYS_symlink,
    SYS_time,
    SYS_unlink,
    SYS_utime,
    SYS_utimes,
    SYS_vfork,
    IO_PGETEVENTS,
];
#[cfg(target_arch = "x86_64")]
const IO_PGETEVENTS: c_long = 333;
#[cfg(target_arch = "aarch64")]
const ALLOWED_ARCH: &[c_long] = &[IO_PGETEVENTS];
#[cfg(target_arch = "aarch64")]
const IO_PGETEVENTS: c_long = 292;

/// System calls a capability brings back, as in Docker's profile.
fn allowed_by(capability: &str) -> &'static [c_long] {
    match capability {
        "CAP_DAC_READ_SEARCH" => &[SYS_open_by_handle_at],
        "CAP_SYS_ADMIN" => &[
            SYS_bpf,
            SYS_clone,
            SYS_clone3,
            SYS_fanotify_init,
            SYS_fsconfig,
            SYS_fsmount,
            SYS_fsopen,
            SYS_fspick,
            SYS_lookup_dcookie,
            SYS_mount,
            SYS_mount_setattr,
            SYS_move_mount,
            SYS_open_tree,
            SYS_perf_event_open,
            SYS_quotactl,
            SYS_quotactl_fd,
            SYS_setdomainname,
            SYS_sethostname,
            SYS_setns,
            SYS_syslog,
            SYS_umount2,
            SYS_unshare,
        ],
        "CAP_SYS_BOOT" => &[SYS_reboot],
        "CAP_SYS_CHROOT" => &[SYS_chroot],
        "CAP_SYS_MODULE" => &[SYS_delete_module, SYS_init_module, SYS_finit_module],
        "CAP_SYS_PACCT" => &[SYS_acct],
        "CAP_SYS_PTRACE" => &[SYS_kcmp, SYS_pidfd_getfd, SYS_process_madvise],
        #[cfg(target_arch = "x86_64")]
        "CAP_SYS_RAWIO" => &[SYS_iopl, SYS_ioperm],
        "CAP_SYS_TIME" => &[SYS_settimeofday, SYS_clock_settime],
        "CAP_SYS_TTY_CONFIG" => &[SYS_vhangup],
        "CAP_SYS_NICE" => &[SYS_get_mempolicy, SYS_mbind, SYS_set_mempolicy, SYS_set_mempolicy_home_node],
        "CAP_SYSLOG" => &[SYS_syslog],
        "CAP_BPF" => &[SYS_bpf],
        "CAP_PERFMON" => &[SYS_perf_event_open],
        _ => &[],
    }
}

/// `personality(2)` personas Docker allows: Linux, UNAME26, PER_LINUX32, and the query.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];
/// clone(2) flags that create namespaces (CLONE_NEWNS … CLONE_NEWUSER, CLONE_NEWCGROUP…).
const NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// socket(2)'s AF_VSOCK, which reaches the hypervisor.
const AF_VSOCK_FAMILY: u64 = 40;

#[derive(Debug, thiserror::Error)]
#[error("seccomp: {0}")]
pub struct SeccompError(String);

fn condition(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, SeccompError> {
    let condition = SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(|e| SeccompError(e.to_string()))?;
    SeccompRule::new(vec![condition]).map_err(|e| SeccompError(e.to_string()))
}

pub(crate) fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SeccompError(format!("{}: {e}", std::env::consts::ARCH)))
}

/// The programs to install, in order, for a process holding `capabilities` (names such
/// as `CAP_SYS_ADMIN`): the allowlist, and, without CAP_SYS_ADMIN, a second filter
/// that makes `clone3` fail with ENOSYS (the kernel returns the most recently installed
/// filter's answer among equally strict ones).
pub fn default_filters(capabilities: &[String]) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = arch()?;
    let mut programs = vec![searched(allowlist(capabilities)?, arch)?];
    if !capabilities.iter().any(|c| c == "CAP_SYS_ADMIN") {
        let clone3 = BTreeMap::from([(SYS_clone3, Vec::new())]);
        programs.push(compile(SeccompFilter::new(clone3, SeccompAction::Allow, SeccompAction::Errno(ENOSYS as u32), arch))?);
    }
    Ok(programs)
}

/// The allowlist's rules for a process holding `capabilities`: the calls allowed
/// outright (no rule) and those allowed on a condition of their arguments.
fn allowlist(capabilities: &[String]) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let always = |rules: &mut BTreeMap<i64, Vec<SeccompRule>>, calls: &[c_long]| {
        for call in calls {
            // An empty rule list matches unconditionally.
            rules.insert(*call, Vec::new());
        }
    };
    always(&mut rules, ALLOWED);
    always(&mut rules, ALLOWED_ARCH);
    for capability in capabilities {
        always(&mut rules, allowed_by(capability));
    }
    let conditional = |rules: &mut BTreeMap<i64, Vec<SeccompRule>>, call: c_long, extra: Vec<SeccompRule>| {
        // Only when the call is not already allowed outright.
        if !rules.get(&call).is_some_and(Vec::is_empty) {
            rules.entry(call).or_default().extend(extra);
        }
    };
    let personas = PERSONALITIES.iter().map(|p| condition(0, SeccompCmpOp::Eq, *p)).collect::<Result<Vec<_>, _>>()?;
    conditional(&mut rules, SYS_personality, personas);
    conditional(&mut rules, SYS_socket, vec![condition(0, SeccompCmpOp::Ne, AF_VSOCK_FAMILY)?]);
    conditional(&mut rules, SYS_clone, vec![condition(0, SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS), 0)?]);
    Ok(rules)
}

/// How many system calls each group of the allowlist compares in turn.
const GROUP_SIZE: usize = 24;
/// The kernel's limit on a filter's length (BPF_MAXINSNS).
const MAX_INSTRUCTIONS: usize = 4096;

pub(crate) fn compile(filter: Result<SeccompFilter, seccompiler::BackendError>) -> Result<BpfProgram, SeccompError> {
    let filter = filter.map_err(|e| SeccompError(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError(e.to_string()))
}

/// The allowlist `rules` (allow on a match, EPERM otherwise) as a binary search over
/// the system call number leading to [`GROUP_SIZE`]-call seccompiler programs.
///
/// Layout: `ld nr`, the search (one `jge` per inner node, one `ja` per leaf), then the
/// groups' programs one after the other. Group `i` holds the calls numbered from its
/// first up to the next group's first, so every number reaches the one group that could
/// allow it, and any call the group does not name meets its mismatch action, as in the
/// single program.
fn searched(rules: BTreeMap<i64, Vec<SeccompRule>>, arch: TargetArch) -> Result<BpfProgram, SeccompError> {
    searched_with(rules, SeccompAction::Errno(EPERM as u32), arch)
}

/// [`searched`] with `mismatch` for the calls `rules` do not allow (an OCI profile's
/// default action).
pub(crate) fn searched_with(rules: BTreeMap<i64, Vec<SeccompRule>>, mismatch: SeccompAction, arch: TargetArch) -> Result<BpfProgram, SeccompError> {
    let mut groups: Vec<(u32, BpfProgram)> = Vec::new();
    let mut rules = rules.into_iter().peekable();
    while rules.peek().is_some() {
        let group: BTreeMap<i64, Vec<SeccompRule>> = rules.by_ref().take(GROUP_SIZE).collect();
        let first = group.keys().next().copied().unwrap_or_default();
        let first = u32::try_from(first).map_err(|_| SeccompError(format!("system call number {first} out of range")))?;
        groups.push((first, compile(SeccompFilter::new(group, mismatch.clone(), SeccompAction::Allow, arch))?));
    }
    if groups.len() < 2 {
        return Ok(groups.pop().map(|(_, program)| program).unwrap_or_default());
    }
    let firsts: Vec<u32> = groups.iter().map(|(first, _)| *first).collect();
    // The search, with each leaf's jump target left as the group's index for now.
    let mut program = vec![statement(LOAD_WORD, 0)];
    let search_start = program.len();
    search(&firsts, 0, &mut program)?;
    // Each group's program starts where the previous one ended.
    let mut starts = Vec::with_capacity(groups.len());
    let mut at = program.len();
    for (_, group) in &groups {
        starts.push(at);
        at += group.len();
    }
    if at >= MAX_INSTRUCTIONS {
        return Err(SeccompError(format!("the allowlist compiles to {at} instructions, more than the kernel's {MAX_INSTRUCTIONS}")));
    }
    for (position, instruction) in program.iter_mut().enumerate().skip(search_start) {
        if instruction.code == JUMP {
            // A jump counts from the instruction after it; the groups all lie ahead.
            let target = starts.get(instruction.k as usize).and_then(|start| start.checked_sub(position + 1));
            instruction.k = target.and_then(|k| u32::try_from(k).ok()).ok_or_else(|| SeccompError("a search jump out of range".into()))?;
        }
    }
    for (_, group) in groups {
        program.extend(group);
    }
    Ok(program)
}

/// Appends the search over the groups whose first call numbers are `firsts` (the first
/// of them being group `base`): a leaf jumps to its group (`ja`, target patched by
/// the caller), an inner node sends numbers at or above the right half's first number
/// past the left half's code.
fn search(firsts: &[u32], base: usize, program: &mut Vec<sock_filter>) -> Result<(), SeccompError> {
    let out_of_range = || SeccompError("the allowlist's search is too large".into());
    if firsts.len() <= 1 {
        program.push(statement(JUMP, u32::try_from(base).map_err(|_| out_of_range())?));
        return Ok(());
    }
    let middle = firsts.len() / 2;
    let node = program.len();
    program.push(sock_filter { code: JUMP_IF_AT_LEAST, jt: 0, jf: 0, k: firsts[middle] });
    search(&firsts[..middle], base, program)?;
    // A conditional jump reaches 255 instructions: the left half takes 2 per group.
    program[node].jt = u8::try_from(program.len() - node - 1).map_err(|_| out_of_range())?;
    search(&firsts[middle..], base + middle, program)
}

/// The three instructions the search uses (classic BPF opcodes, from libc).
const LOAD_WORD: u16 = (BPF_LD | BPF_W | BPF_ABS) as u16;
const JUMP: u16 = (BPF_JMP | BPF_JA) as u16;
const JUMP_IF_AT_LEAST: u16 = (BPF_JMP | BPF_JGE | BPF_K) as u16;

fn statement(code: u16, k: u32) -> sock_filter {
    sock_filter { code, jt: 0, jf: 0, k }
}

/// A compiled filter as it crosses the sync socket to the shim: one number per
/// instruction (code, jump if true, jump if false, constant, from the high bits down).
/// The agent compiles while the shim starts; the command only installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedProgram(Vec<u64>);

impl PackedProgram {
    pub fn pack(program: &[sock_filter]) -> PackedProgram {
        PackedProgram(program.iter().map(|i| u64::from(i.code) << 48 | u64::from(i.jt) << 40 | u64::from(i.jf) << 32 | u64::from(i.k)).collect())
    }

    pub fn unpack(&self) -> BpfProgram {
        self.0.iter().map(|i| sock_filter { code: (i >> 48) as u16, jt: (i >> 40) as u8, jf: (i >> 32) as u8, k: *i as u32 }).collect()
    }
}

/// The filters a process under `profile` holding `capabilities` installs: none when
/// unconfined.
pub fn filters_for(profile: SeccompProfile, capabilities: &[String]) -> Result<Vec<BpfProgram>, SeccompError> {
    match profile {
        SeccompProfile::Unconfined => Ok(Vec::new()),
        SeccompProfile::RuntimeDefault => default_filters(capabilities),
    }
}

/// Installs `programs` on the calling thread (no_new_privs must be set, or
/// CAP_SYS_ADMIN held). Nothing after this may make a call the filter refuses.
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for program in programs {
        seccompiler::apply_filter(program).map_err(|e| SeccompError(format!("installing the filter: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        super::super::DEFAULT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn the_default_profile_compiles_within_the_kernel_limit() {
        let programs = default_filters(&defaults()).expect("compiles");
        assert_eq!(programs.len(), 2, "the allowlist and the clone3 filter");
        assert!(programs.iter().all(|p| p.len() < 4096), "BPF_MAXINSNS: {:?}", programs.iter().map(Vec::len).collect::<Vec<_>>());
        let admin = default_filters(&[defaults(), vec!["CAP_SYS_ADMIN".into()]].concat()).expect("compiles");
        assert_eq!(admin.len(), 1, "with CAP_SYS_ADMIN clone3 is allowed outright");
        assert!(admin[0].len() > programs[0].len(), "CAP_SYS_ADMIN brings back mount, unshare, setns…");
    }

    /// The classic BPF a seccomp filter may use, run on one system call: the action and
    /// how many instructions ran.
    fn run(program: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> (u32, usize) {
        let word = |offset: u32| -> u32 {
            match offset {
                0 => nr,
                4 => arch,
                16.. => {
                    let arg = args[((offset - 16) / 8) as usize];
                    if offset.is_multiple_of(8) {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                _ => panic!("load from offset {offset}"),
            }
        };
        let (mut pc, mut a, mut steps) = (0usize, 0u32, 0usize);
        loop {
            let i = &program[pc];
            pc += 1;
            steps += 1;
            match (i.code & 0x07, i.code & 0xf0) {
                (0x00, 0x20) => a = word(i.k),
                (0x04, 0x50) => a &= i.k,
                (0x06, _) => return (i.k, steps),
                (0x05, op) => {
                    let taken = match op {
                        0x00 => {
                            pc += i.k as usize;
                            continue;
                        }
                        0x10 => a == i.k,
                        0x20 => a > i.k,
                        0x30 => a >= i.k,
                        0x40 => a & i.k != 0,
                        _ => panic!("jump {:#x}", i.code),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                _ => panic!("instruction {:#x}", i.code),
            }
        }
    }

    #[test]
    fn the_searched_allowlist_answers_as_the_single_chain_in_a_tenth_of_the_steps() {
        let arch = arch().expect("arch");
        let audit = |program: &[sock_filter]| program[1].k;
        for capabilities in [defaults(), [defaults(), vec!["CAP_SYS_ADMIN".into(), "CAP_SYS_PTRACE".into()]].concat(), vec![]] {
            let rules = allowlist(&capabilities).expect("rules");
            let chain = compile(SeccompFilter::new(rules.clone(), SeccompAction::Errno(EPERM as u32), SeccompAction::Allow, arch)).expect("chain");
            let searched = searched(rules, arch).expect("searched");
            assert!(searched.len() < MAX_INSTRUCTIONS);
            let native = audit(&chain);
            let arguments = [
                [0; 6],
                [0x10_0000 | 0x11, 0, 0, 0, 0, 0],
                [AF_VSOCK_FAMILY, 1, 0, 0, 0, 0],
                [0x8, 0, 0, 0, 0, 0],
                [0xffff_ffff, 0, 0, 0, 0, 0],
                [1 << 32 | 2, 0, 0, 0, 0, 0],
            ];
            for nr in (0..600).chain([0x4000_0000, 0x4000_0001, u32::MAX]) {
                for args in arguments {
                    for arch_value in [native, 0x4000_0003] {
                        assert_eq!(run(&searched, nr, arch_value, args).0, run(&chain, nr, arch_value, args).0, "nr {nr} args {args:?} arch {arch_value:#x}");
                    }
                }
            }
            // Installing a filter runs it once per system call number: count those steps.
            let steps = |program: &[sock_filter]| -> usize { (0..600).map(|nr| run(program, nr, native, [0; 6]).1).sum() };
            let (chain_steps, searched_steps) = (steps(&chain), steps(&searched));
            assert!(searched_steps * 8 < chain_steps, "{searched_steps} steps searched against {chain_steps} chained");
        }
    }

    #[test]
    fn a_packed_program_unpacks_to_itself() {
        for program in default_filters(&defaults()).expect("compiles") {
            assert_eq!(PackedProgram::pack(&program).unpack(), program);
        }
    }

    #[test]
    fn the_allowlist_leaves_out_what_docker_leaves_out() {
        for call in [
            SYS_kexec_load,
            SYS_bpf,
            SYS_keyctl,
            SYS_add_key,
            SYS_request_key,
            SYS_mount,
            SYS_umount2,
            SYS_pivot_root,
            SYS_swapon,
            SYS_swapoff,
            SYS_reboot,
            SYS_init_module,
            SYS_unshare,
            SYS_setns,
            SYS_open_by_handle_at,
        ] {
            assert!(!ALLOWED.contains(&call) && !ALLOWED_ARCH.contains(&call), "system call {call} is allowed by default");
        }
        for call in [SYS_read, SYS_write, SYS_execve, SYS_openat, SYS_futex, SYS_mknodat, SYS_rseq, SYS_io_uring_setup] {
            assert!(ALLOWED.contains(&call), "system call {call} is missing");
        }
    }
}
