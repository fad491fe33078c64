//! Network namespaces: opening one (by path or PID), creating and deleting named ones
//! (bind-mounted under /run/netns like `ip netns add`), and running code inside one on a
//! dedicated thread — `setns` changes only the calling thread, and a socket stays in the
//! namespace it was created in.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::NetError;

/// Where named namespaces live, as with iproute2.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Netns, NetError> {
        let file = File::open(path).map_err(NetError::io("cannot open network namespace", path))?;
        Ok(Netns { file, path: path.to_owned() })
    }

    /// The namespace of process `pid`.
    pub fn of_pid(pid: i32) -> Result<Netns, NetError> {
        Netns::open(Path::new(&format!("/proc/{pid}/ns/net")))
    }

    /// The namespace this process runs in (the node's).
    pub fn current() -> Result<Netns, NetError> {
        Netns::open(Path::new("/proc/self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    pub fn named_path(name: &str) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(name)
    }

    /// Opens `/run/netns/NAME`, creating the namespace first if it does not exist.
    pub fn create_named(name: &str) -> Result<Netns, NetError> {
        let path = Netns::named_path(name);
        if is_netns_mount(&path) {
            return Netns::open(&path);
        }
        std::fs::create_dir_all(NETNS_RUN_DIR).map_err(NetError::io("cannot create", NETNS_RUN_DIR))?;
        File::create(&path).map_err(NetError::io("cannot create", &path))?;
        let target = path.clone();
        let made = std::thread::spawn(move || -> Result<(), NetError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|errno| NetError::Syscall { syscall: "unshare(CLONE_NEWNET)", errno })?;
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|errno| NetError::Syscall { syscall: "mount --bind of the new network namespace", errno })
        })
        .join()
        .map_err(|_| NetError::Thread("namespace creation panicked".into()))?;
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Netns::open(&path)
    }

    /// Deletes `/run/netns/NAME`; a missing one is fine. The namespace itself goes once
    /// nothing else holds it.
    pub fn delete_named(name: &str) -> Result<(), NetError> {
        let path = Netns::named_path(name);
        if !path.exists() {
            return Ok(());
        }
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
            Err(errno) => return Err(NetError::Syscall { syscall: "umount of the network namespace", errno }),
        }
        std::fs::remove_file(&path).map_err(NetError::io("cannot remove", &path))
    }

    /// Runs `work` on a fresh thread inside this namespace and returns its result.
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, NetError> {
        let fd = self.file.as_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(fd, CloneFlags::CLONE_NEWNET).map_err(|errno| NetError::Syscall { syscall: "setns(CLONE_NEWNET)", errno })?;
                    Ok(work())
                })
                .join()
                .map_err(|_| NetError::Thread("a thread in a network namespace panicked".into()))?
        })
    }

    /// A netlink handle whose socket lives in this namespace (its connection task runs
    /// on the current tokio runtime).
    pub fn netlink(&self) -> Result<rtnetlink::Handle, NetError> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = self
            .run(|| {
                let _entered = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(NetError::io("cannot open a netlink socket in", &self.path))?;
        tokio::spawn(connection);
        Ok(handle)
    }

    /// Writes a sysctl of this namespace (`net.ipv4.ip_forward` → /proc/sys/net/ipv4/ip_forward).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetError> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let written = self.run(|| std::fs::write(&path, value))?;
        written.map_err(NetError::io("cannot write sysctl", path))
    }
}

/// Whether `path` is a bind mount of a network namespace (an nsfs file).
fn is_netns_mount(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}
