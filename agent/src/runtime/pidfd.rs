//! Process file descriptors: learn of a process's death at once, without polling and
//! without racing PID reuse.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// `pidfd_open(2)`, the bare descriptor (readable once the process has exited).
pub fn open_raw(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new file descriptor or -1;
    // it touches no memory of ours.
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(Errno::last());
    }
    let raw = i32::try_from(raw).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

pub struct PidFd {
    fd: AsyncFd<OwnedFd>,
}

impl PidFd {
    /// `pidfd_open(2)`. Must run inside a tokio runtime.
    pub fn open(pid: i32) -> Result<PidFd, Errno> {
        let owned = open_raw(pid)?;
        // SAFETY: `owned` is an open descriptor that the AsyncFd takes ownership of; it
        // stays open and unchanged until the AsyncFd drops it.
        let registered = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) };
        let fd = registered.map_err(|e| Errno::from_raw(e.into_parts().1.raw_os_error().unwrap_or(0)))?;
        Ok(PidFd { fd })
    }

    /// Resolves when the process has exited (the pidfd turns readable).
    pub async fn exited(&self) {
        // Readiness on a pidfd means "exited"; an error means the same for our purposes.
        if let Ok(mut guard) = self.fd.readable().await {
            guard.retain_ready();
        }
    }

    /// Reaps a child that has exited, returning its wait status; `None` while it runs.
    /// Only for the agent's own children.
    pub fn try_reap(&self) -> Result<Option<WaitStatus>, Errno> {
        match waitid(Id::PIDFd(self.fd.get_ref().as_fd()), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
            Ok(WaitStatus::StillAlive) => Ok(None),
            Ok(status) => Ok(Some(status)),
            Err(e) => Err(e),
        }
    }

    /// `pidfd_send_signal(2)`: signals exactly this process, even if its PID was reused.
    /// A number rather than nix's `Signal`: real-time signals (systemd's SIGRTMIN+3) too.
    pub fn signal(&self, signal: i32) -> Result<(), Errno> {
        // SAFETY: the arguments are a descriptor we own, a signal number, a null siginfo
        // (allowed: the kernel fills it in) and zero flags.
        let rc =
            unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_send_signal, self.fd.get_ref().as_raw_fd(), signal, std::ptr::null::<nix::libc::siginfo_t>(), 0) };
        if rc < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }
}
