//! User-namespace plumbing done by the agent (root in the initial user namespace):
//! the uid/gid maps of a container's user namespace, and idmapped views of its image
//! layers so files owned by root on disk are owned by root inside the container
//! (Linux 5.12+ mount API: open_tree, mount_setattr, move_mount).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

use super::config::IdRange;
use super::RuntimeError;

// From linux/mount.h; not in the libc crate for glibc targets.
const OPEN_TREE_CLONE: u32 = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;

/// `struct mount_attr` (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Writes `0 HOST SIZE` to the uid and gid maps of `pid`'s user namespace.
pub fn write_id_maps(pid: i32, range: IdRange) -> Result<(), RuntimeError> {
    let line = format!("0 {} {}\n", range.host_id, range.size);
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, &line).map_err(RuntimeError::io("cannot write the user namespace map", path))?;
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString, RuntimeError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| RuntimeError::Rootfs { path: path.to_owned(), reason: "path contains a NUL byte".into() })
}

/// Mounts an idmapped view of `source` at `target` (an existing directory), mapped
/// through the user namespace of `pid`. The mount is in the agent's mount namespace;
/// the caller unmounts it once the container's init has its own copy.
pub fn mount_idmapped(source: &Path, target: &Path, pid: i32) -> Result<(), RuntimeError> {
    let source_c = c_path(source)?;
    let target_c = c_path(target)?;
    let userns_path = format!("/proc/{pid}/ns/user");
    let userns = std::fs::File::open(&userns_path).map_err(RuntimeError::io("cannot open", userns_path))?;
    // SAFETY: open_tree reads the NUL-terminated path and returns a new descriptor or -1.
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_open_tree, nix::libc::AT_FDCWD, source_c.as_ptr(), OPEN_TREE_CLONE | nix::libc::O_CLOEXEC as u32) };
    if raw < 0 {
        return Err(RuntimeError::Syscall { syscall: "open_tree", errno: Errno::last() });
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(i32::try_from(raw).map_err(|_| RuntimeError::sys("open_tree")(Errno::EBADF))?) };
    let attr = MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: u64::try_from(userns.as_raw_fd()).unwrap_or_default() };
    let empty = c"";
    // SAFETY: mount_setattr reads `attr` (a valid, live mount_attr of the size passed)
    // and the empty path; it writes nothing of ours.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            nix::libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(RuntimeError::Syscall { syscall: "mount_setattr(MOUNT_ATTR_IDMAP)", errno: Errno::last() });
    }
    // SAFETY: move_mount reads two NUL-terminated paths and two descriptors we hold.
    let rc = unsafe {
        nix::libc::syscall(nix::libc::SYS_move_mount, tree.as_raw_fd(), empty.as_ptr(), nix::libc::AT_FDCWD, target_c.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
    };
    if rc < 0 {
        return Err(RuntimeError::Syscall { syscall: "move_mount", errno: Errno::last() });
    }
    Ok(())
}

/// Detaches the agent's copy of an idmapped layer; a missing mount is fine.
pub fn unmount(target: &Path) {
    let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
}
