//! orch-runc runs from a read-only copy of itself before it makes or enters a container
//! (CVE-2019-5736's lesson). Until its exec, the container's process *is* orch-runc; a
//! program in the image whose first line is `#!/proc/self/exe` makes it run orch-runc
//! again, inside the container, and a process there may then open `/proc/PID/exe` —
//! the host's binary — and write it once it exits. Without a user namespace (Docker's
//! default) the container's root is the host's and the write would succeed.
//!
//! So `create` and `exec` first re-execute orch-runc through a detached, read-only bind
//! mount of its own binary (open_tree(OPEN_TREE_CLONE) + mount_setattr(RDONLY), then
//! execveat): `/proc/PID/exe` then leads to a mount no one can write through (EROFS),
//! without a copy of the binary. On a kernel without those calls (before 5.12) the
//! binary is copied into a sealed memfd instead, as runc did. A binary already on a
//! read-only mount (or a sealed memfd) runs as it is.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::OciError;

const SELF: &str = "/proc/self/exe";
/// Set across the re-exec: a binary that still is not sealed then is an error, not
/// another re-exec.
const MARKER: &str = "_ORCH_RUNC_SEALED";
const SEALS: i32 = nix::libc::F_SEAL_SEAL | nix::libc::F_SEAL_SHRINK | nix::libc::F_SEAL_GROW | nix::libc::F_SEAL_WRITE;

/// Whether this process runs from a binary no one can write through `/proc/PID/exe`.
pub fn is_sealed() -> bool {
    if nix::sys::statvfs::statvfs(SELF).is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)) {
        return true;
    }
    match std::fs::File::open(SELF) {
        Ok(file) => {
            // SAFETY: F_GET_SEALS on a descriptor we hold; it reads and writes no memory
            // (-1 with EINVAL for a file that is no memfd).
            let seals = unsafe { nix::libc::fcntl(file.as_raw_fd(), nix::libc::F_GET_SEALS) };
            seals >= 0 && seals & SEALS == SEALS
        }
        Err(_) => false,
    }
}

/// Re-executes orch-runc from a read-only mount of itself (or a sealed memfd), with the
/// same arguments and environment, unless it already runs from one. Returns only on an
/// error. Call before anything is made: the process starts over.
pub fn reexec_sealed() -> Result<(), OciError> {
    if is_sealed() {
        std::env::remove_var(MARKER);
        return Ok(());
    }
    if std::env::var_os(MARKER).is_some() {
        return Err(OciError::Failed(format!("orch-runc re-executed itself and still runs from a writable binary ({SELF})")));
    }
    // Any refusal of the mount calls (ENOSYS before 5.12, EPERM under a seccomp
    // filter, EINVAL for a binary on no mount of this namespace): the memfd copy.
    let binary = match read_only_mount() {
        Ok(fd) => fd,
        Err(_) => sealed_copy()?,
    };
    std::env::set_var(MARKER, "1");
    let to_c = |s: std::ffi::OsString| CString::new(s.into_encoded_bytes()).map_err(|_| OciError::Failed("an argument or variable with a NUL byte".into()));
    let args = std::env::args_os().map(to_c).collect::<Result<Vec<_>, _>>()?;
    let env = std::env::vars_os()
        .map(|(key, value)| {
            let mut pair = key;
            pair.push("=");
            pair.push(value);
            to_c(pair)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let error = match nix::unistd::execveat(&binary, c"", &args, &env, nix::fcntl::AtFlags::AT_EMPTY_PATH) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    Err(OciError::Failed(format!("execveat of orch-runc's read-only copy: {error}")))
}

/// A detached bind mount of the binary, read-only, nosuid, nodev.
fn read_only_mount() -> Result<OwnedFd, Errno> {
    let path = CString::new(SELF).map_err(|_| Errno::EINVAL)?;
    let flags = nix::libc::OPEN_TREE_CLONE | nix::libc::OPEN_TREE_CLOEXEC;
    // SAFETY: open_tree(2) reads the NUL-terminated path, which outlives the call, and
    // returns a new descriptor or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_open_tree, nix::libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let raw = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: `raw` was just returned by open_tree and is owned by nothing else.
    let tree = unsafe { OwnedFd::from_raw_fd(raw) };
    let attributes = nix::libc::mount_attr {
        attr_set: nix::libc::MOUNT_ATTR_RDONLY | nix::libc::MOUNT_ATTR_NOSUID | nix::libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(2) reads `attributes` (its size given) and the empty path,
    // both alive for the call, and changes only the detached mount `tree` names.
    let set = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_EMPTY_PATH,
            &attributes,
            std::mem::size_of::<nix::libc::mount_attr>(),
        )
    };
    if set < 0 {
        return Err(Errno::last());
    }
    Ok(tree)
}

/// The binary copied into a memfd sealed against any change.
fn sealed_copy() -> Result<OwnedFd, OciError> {
    let memfd = nix::sys::memfd::memfd_create(c"orch-runc", nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING)
        .map_err(|e| OciError::Failed(format!("memfd_create: {e}")))?;
    let mut copy = std::fs::File::from(memfd);
    let mut source = std::fs::File::open(SELF).map_err(OciError::io("cannot open", SELF))?;
    std::io::copy(&mut source, &mut copy).map_err(OciError::io("cannot copy", SELF))?;
    // SAFETY: F_ADD_SEALS on the memfd we hold; it reads and writes no memory.
    if unsafe { nix::libc::fcntl(copy.as_raw_fd(), nix::libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(OciError::Failed(format!("seal the copy of orch-runc: {}", Errno::last())));
    }
    Ok(OwnedFd::from(copy))
}
