//! The container's filesystem, set up by its init inside the new mount namespace:
//! overlayfs root, /proc, a minimal /dev, read-only /sys, pivot_root, masked paths.
//! Device nodes work only where they are bind-mounted from the host's allowlisted ones
//! and in /dev/pts: the root, /dev, /dev/shm, /proc and /sys are all `nodev`, so a node
//! an image ships or a process makes opens nothing.
//! Bind mounts (generated files, volumes) are `nosuid,nodev`, read-only when asked.
//! Every mount lives only in the container's mount namespace, so the kernel removes
//! them all when the container's last process exits; none appears on the host.

use std::fs;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::config::InitConfig;

/// Paths hidden from the container (as Docker): files get /dev/null, directories an
/// empty read-only tmpfs.
const MASKED: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths the container may read but not write.
const READ_ONLY: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Device nodes bind-mounted from the host into the container's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// A failed setup step: what was being done and the error, for the agent to report.
pub struct SetupError(pub String);

pub(crate) fn step<T, E: std::fmt::Display>(result: Result<T, E>, what: impl FnOnce() -> String) -> Result<T, SetupError> {
    result.map_err(|e| SetupError(format!("{}: {e}", what())))
}

pub(crate) fn mount_at(source: &str, target: &Path, fstype: Option<&str>, flags: MsFlags, data: Option<&str>) -> Result<(), SetupError> {
    step(mount(Some(source), target, fstype, flags, data), || format!("mount {} on {} ({})", fstype.unwrap_or("bind"), target.display(), data.unwrap_or("")))
}

pub(crate) fn mkdir(path: &Path) -> Result<(), SetupError> {
    step(fs::create_dir_all(path), || format!("mkdir {}", path.display()))
}

/// Opens the bind mounts' sources (`O_PATH`), in the init's own mount namespace and
/// before it changes credentials: a user-namespaced init then mounts them through
/// `/proc/self/fd/N` without walking the private directories above them. A mount with a
/// `sub_path` gets the path inside its source, walked by [`open_beneath`].
pub fn open_sources(config: &InitConfig) -> Result<Vec<fs::File>, SetupError> {
    use std::os::unix::fs::OpenOptionsExt;
    config
        .mounts
        .iter()
        .map(|bind| {
            let root =
                step(fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_PATH).open(&bind.source), || format!("open {}", bind.source.display()))?;
            let opened = match bind.sub_path.as_deref().filter(|p| !p.is_empty()) {
                None => root,
                Some(sub_path) => {
                    // A writable volume gets missing subPath directories with its root's
                    // mode (an emptyDir's or a local volume's 0777); a read-only one
                    // (a Config, a Secret, a `readOnly` mount) never: what is missing is an error.
                    let mode = if bind.read_only {
                        None
                    } else {
                        Some(step(nix::sys::stat::fstat(&root), || format!("stat {}", bind.source.display()))?.st_mode & 0o7777)
                    };
                    step(open_beneath(root, sub_path, mode), || format!("subPath {sub_path:?} in {}", bind.source.display()))?
                }
            };
            if !bind.forbidden.is_empty() {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&opened);
                let real = step(fs::read_link(format!("/proc/self/fd/{fd}")), || format!("resolve {}", bind.source.display()))?;
                if let Some(reserved) = bind.forbidden.iter().find(|r| real.starts_with(r) || r.starts_with(&real)) {
                    return Err(SetupError(format!("{} is {}, which overlaps {}: refused", bind.source.display(), real.display(), reserved.display())));
                }
            }
            Ok(opened)
        })
        .collect()
}

/// Walks `sub_path` from `root` one component at a time: a missing component is made a
/// directory of `create_mode` (or is an error when `None`), a symlink or `..` anywhere
/// is refused, so the result is always inside `root` whatever a container left there.
fn open_beneath(root: fs::File, sub_path: &str, create_mode: Option<u32>) -> Result<fs::File, String> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
    let mut current = root;
    for part in sub_path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err("a .. component".to_owned());
        }
        if let Some(mode) = create_mode {
            // The umask would narrow the mode: the init is single-threaded, so set and restore.
            let mask = nix::sys::stat::umask(Mode::empty());
            let made = mkdirat(&current, part, Mode::from_bits_truncate(mode));
            nix::sys::stat::umask(mask);
            match made {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(format!("mkdir {part}: {e}")),
            }
        }
        let fd = openat(&current, part, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| format!("open {part}: {e}"))?;
        let next = fs::File::from(fd);
        let kind = SFlag::from_bits_truncate(fstat(&next).map_err(|e| format!("stat {part}: {e}"))?.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFLNK {
            return Err(format!("{part} is a symbolic link"));
        }
        current = next;
    }
    Ok(current)
}

/// Opens `path` (absolute in the container) under `root` with the kernel resolving it
/// as if `root` were `/` (openat2 `RESOLVE_IN_ROOT`: no symlink, absolute or `..`, leads
/// out — not even one a process sharing a volume swaps in meanwhile), making each
/// missing directory (0755) in the directory resolved so far, and the final component
/// as a directory or, for a file source, an empty file. A dangling symlink on the way
/// (an image's `/etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf`) is made
/// where it points, inside the root.
pub(crate) fn open_target(root: &fs::File, path: &str, is_dir: bool) -> Result<fs::File, String> {
    open_target_following(root, path, is_dir, 0)
}

fn open_target_following(root: &fs::File, path: &str, is_dir: bool, links: u32) -> Result<fs::File, String> {
    use nix::errno::Errno;
    use nix::fcntl::{openat, readlinkat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    let mut so_far = String::from(".");
    for (index, part) in parts.iter().enumerate() {
        let next = format!("{so_far}/{part}");
        match open_in_root(root, &next) {
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                let parent = open_in_root(root, &so_far).map_err(|e| format!("open {so_far}: {e}"))?;
                if let Ok(link) = readlinkat(&parent, *part) {
                    if links >= 40 {
                        return Err(format!("{path}: too many levels of symbolic links"));
                    }
                    let link = link.to_string_lossy().into_owned();
                    let base = if link.starts_with('/') { "" } else { so_far.as_str() };
                    let redirected = format!("{base}/{link}/{}", parts[index + 1..].join("/"));
                    return open_target_following(root, &redirected, is_dir, links + 1);
                }
                let made = if index + 1 < parts.len() || is_dir {
                    mkdirat(&parent, *part, Mode::from_bits_truncate(0o755))
                } else {
                    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
                    openat(&parent, *part, flags, Mode::from_bits_truncate(0o644)).map(drop)
                };
                match made {
                    // Made meanwhile: the open below finds it.
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(format!("create {next}: {e}")),
                }
            }
            Err(e) => return Err(format!("open {next}: {e}")),
        }
        so_far = next;
    }
    open_in_root(root, &so_far).map_err(|e| format!("open {path}: {e}"))
}

/// `openat2(root, relative, O_PATH, RESOLVE_IN_ROOT)`, again when the kernel saw a
/// rename race (EAGAIN) during the walk.
fn open_in_root(root: &fs::File, relative: &str) -> nix::Result<fs::File> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let mut attempts = 0;
    loop {
        let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(ResolveFlag::RESOLVE_IN_ROOT);
        match openat2(root, relative, how) {
            Err(nix::errno::Errno::EAGAIN) if attempts < 16 => attempts += 1,
            opened => return opened.map(fs::File::from),
        }
    }
}

/// The mount an open file is on (`mnt_id` of `/proc/self/fdinfo/N`).
fn mount_id(file: &fs::File) -> Result<u64, String> {
    let fd = std::os::fd::AsRawFd::as_raw_fd(file);
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).map_err(|e| format!("read /proc/self/fdinfo/{fd}: {e}"))?;
    info.lines().find_map(|l| l.strip_prefix("mnt_id:")).and_then(|v| v.trim().parse().ok()).ok_or_else(|| format!("no mnt_id in /proc/self/fdinfo/{fd}"))
}

/// Binds `source` (an `O_PATH` file) on `target` (absolute in the container, opened
/// under `root` by [`open_target`]; the mount goes onto that very file, through its
/// descriptor), then remounts it `nosuid,nodev` (read-only when asked), keeping the
/// flags the source's own mount has — a user namespace may not clear those. The remount
/// goes to the target opened again, once checked to be the new mount of `source`.
fn bind_confined(source: &fs::File, root: &fs::File, target: &str, read_only: bool, what: &str) -> Result<(), SetupError> {
    let is_dir = step(source.metadata(), || format!("stat {what}"))?.is_dir();
    let under = step(open_target(root, target, is_dir), || format!("mount target {target}"))?;
    let via_fd = |file: &fs::File| format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
    step(mount(Some(via_fd(source).as_str()), via_fd(&under).as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>), || format!("bind {what} on {target}"))?;
    let mounted = step(open_target(root, target, is_dir), || format!("mount target {target}"))?;
    let identity = |file: &fs::File| nix::sys::stat::fstat(file).map(|s| (s.st_dev, s.st_ino));
    let same_file = step(identity(&mounted), || format!("stat {target}"))? == step(identity(source), || format!("stat {what}"))?;
    let new_mount = step(mount_id(&mounted), || format!("mount of {target}"))? != step(mount_id(&under), || format!("mount of {target}"))?;
    if !same_file || !new_mount {
        return Err(SetupError(format!("{target} changed while {what} was mounted on it: refused")));
    }
    let target_path = via_fd(&mounted);
    let target = target_path.as_str();
    let existing = step(nix::sys::statvfs::fstatvfs(source), || format!("statfs {what}"))?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    use nix::sys::statvfs::FsFlags;
    for (has, flag) in [
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if existing.contains(has) {
            flags |= flag;
        }
    }
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    step(mount(None::<&str>, target, None::<&str>, flags, None::<&str>), || {
        format!("remount {what} on {target} nosuid,nodev{}", if read_only { ",ro" } else { "" })
    })
}

/// Builds the root under `merged` and pivots into it. Runs as the container's PID 1,
/// single-threaded, inside fresh mount and PID namespaces, with the container's
/// directory as its working directory; `sources` are [`open_sources`]'s.
pub fn setup(config: &InitConfig, sources: &[fs::File], console: Option<&std::os::unix::net::UnixStream>) -> Result<(), SetupError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Nothing we mount may propagate back to the host.
    step(mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>), || "make / private".to_owned())?;
    let merged = &config.merged;
    let lower: Vec<String> = config.layers.iter().map(|l| l.display().to_string()).collect();
    let options = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), config.upper.display(), config.work.display());
    mount_at("overlay", merged, Some("overlay"), MsFlags::MS_NODEV, Some(&options))?;

    // The image's own symlinks (and any a volume holds) resolve inside the root, never on the host.
    let root =
        step(fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_PATH | nix::libc::O_DIRECTORY).open(merged), || format!("open {}", merged.display()))?;
    for (bind, source) in config.mounts.iter().zip(sources) {
        bind_confined(source, &root, &bind.target, bind.read_only, &bind.source.display().to_string())?;
    }

    let proc_dir = merged.join("proc");
    mkdir(&proc_dir)?;
    mount_at("proc", &proc_dir, Some("proc"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV, None)?;

    setup_dev(&merged.join("dev"))?;
    if let Some(socket) = console {
        make_console(&merged.join("dev"), socket)?;
    }

    let sys_dir = merged.join("sys");
    mkdir(&sys_dir)?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_at("sysfs", &sys_dir, Some("sysfs"), ro, None)?;

    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it
    // leaves only the container's tree (the runc way, no put_old directory needed).
    step(std::env::set_current_dir(merged), || format!("chdir {}", merged.display()))?;
    step(nix::unistd::pivot_root(".", "."), || format!("pivot_root into {}", merged.display()))?;
    step(umount2(".", MntFlags::MNT_DETACH), || "detach the old root".to_owned())?;
    step(std::env::set_current_dir("/"), || "chdir /".to_owned())?;

    for path in MASKED {
        mask(Path::new(path))?;
    }
    for path in READ_ONLY {
        read_only(Path::new(path))?;
    }
    if config.system {
        system_mounts(&config.cgroup_mounts)?;
    }
    if config.security.read_only_root {
        // The root mount only: /dev, /dev/shm, /proc and the bind mounts keep their flags.
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
        step(mount(None::<&str>, "/", None::<&str>, flags, None::<&str>), || "remount / read-only".to_owned())?;
    }
    Ok(())
}

/// A system container's console: a pty of the container's own devpts (as runc makes
/// one), its slave bound on `dev/console`; both ends go to the shim over `socket`.
fn make_console(dev: &Path, socket: &std::os::unix::net::UnixStream) -> Result<(), SetupError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let open = |path: &Path| fs::OpenOptions::new().read(true).write(true).custom_flags(nix::libc::O_NOCTTY | nix::libc::O_CLOEXEC).open(path);
    let ptmx = dev.join("pts/ptmx");
    let master = step(open(&ptmx), || format!("open {}", ptmx.display()))?;
    let number = super::init::unlock_pty(&master).map_err(SetupError)?;
    let pts = dev.join(format!("pts/{number}"));
    let slave = step(open(&pts), || format!("open {}", pts.display()))?;
    let console = dev.join("console");
    step(fs::File::create(&console), || format!("create {}", console.display()))?;
    mount_at(&pts.display().to_string(), &console, None, MsFlags::MS_BIND, None)?;
    let fds = [master.as_raw_fd(), slave.as_raw_fd()];
    let sent = nix::sys::socket::sendmsg::<()>(
        socket.as_raw_fd(),
        &[std::io::IoSlice::new(b"c")],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    );
    step(sent, || "hand the console to the shim".to_owned()).map(|_| ())
}

fn setup_dev(dev: &Path) -> Result<(), SetupError> {
    mkdir(dev)?;
    // nodev: the allowlisted nodes below are bind mounts of the host's, which keep their
    // own mount's flags; a node created here opens nothing.
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME;
    mount_at("tmpfs", dev, Some("tmpfs"), flags, Some("mode=755,size=65536k"))?;
    for name in DEVICES {
        let target = dev.join(name);
        step(fs::File::create(&target), || format!("create {}", target.display()))?;
        let host = format!("/dev/{name}");
        mount_at(&host, &target, None, MsFlags::MS_BIND, None)?;
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    mount_at("devpts", &pts, Some("devpts"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("newinstance,ptmxmode=0666,mode=0620"))?;
    let shm = dev.join("shm");
    mkdir(&shm)?;
    mount_at("shm", &shm, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some("mode=1777,size=65536k"))?;
    for (link, target) in
        [("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]
    {
        let path = dev.join(link);
        step(std::os::unix::fs::symlink(target, &path), || format!("symlink {}", path.display()))?;
    }
    Ok(())
}

/// What an init expects of a system container, inside its root (after the pivot: an
/// image's symlinks resolve within it): `/run` and `/run/lock` as tmpfs (its scripts
/// cannot mount them), its cgroups at `/sys/fs/cgroup`, and a `/dev/console` to open
/// (`/dev/null`).
fn system_mounts(cgroups: &[crate::cgroups::CgroupMount]) -> Result<(), SetupError> {
    cgroup_mounts(Path::new("/sys/fs/cgroup"), cgroups)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mkdir(Path::new("/run"))?;
    mount_at("tmpfs", Path::new("/run"), Some("tmpfs"), flags, Some("mode=755,size=65536k"))?;
    mkdir(Path::new("/run/lock"))?;
    mount_at("tmpfs", Path::new("/run/lock"), Some("tmpfs"), flags | MsFlags::MS_NOEXEC, Some("mode=1777,size=5120k"))?;
    let console = Path::new("/dev/console");
    if console.exists() {
        return Ok(());
    }
    // No console (output not logged): one that opens and discards.
    step(fs::File::create(console), || "create /dev/console".to_owned())?;
    mount_at("/dev/null", console, None, MsFlags::MS_BIND, None)
}

/// Mounts `cgroups` ([`crate::cgroups::namespaced_mounts`]) at `base` (`/sys/fs/cgroup`):
/// inside the container's cgroup namespace, so each shows its own cgroup as the root. v1
/// hierarchies go on a tmpfs, made read-only once they are in place.
pub(crate) fn cgroup_mounts(base: &Path, cgroups: &[crate::cgroups::CgroupMount]) -> Result<(), SetupError> {
    if cgroup_base(base, cgroups)? {
        cgroup_hierarchies(base, cgroups)?;
    }
    Ok(())
}

const CGROUP_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

fn read_only_if(ro: bool) -> MsFlags {
    if ro {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    }
}

/// The mount at `base`: the unified hierarchy alone (`false`: done), or the tmpfs the v1
/// hierarchies go on (`true`: [`cgroup_hierarchies`] next, on `base` as it now is — a
/// caller that named `base` through a descriptor opens it again first).
pub(crate) fn cgroup_base(base: &Path, cgroups: &[crate::cgroups::CgroupMount]) -> Result<bool, SetupError> {
    match cgroups {
        [] => Ok(false),
        [unified] if unified.dir.is_empty() => {
            mount_at("cgroup2", base, Some("cgroup2"), CGROUP_FLAGS | read_only_if(unified.read_only), None)?;
            Ok(false)
        }
        _ => {
            mount_at("tmpfs", base, Some("tmpfs"), CGROUP_FLAGS, Some("mode=755,size=64k"))?;
            Ok(true)
        }
    }
}

/// Each v1 hierarchy below `base` (its tmpfs), with links for co-mounted ones, then the
/// tmpfs read-only.
pub(crate) fn cgroup_hierarchies(base: &Path, cgroups: &[crate::cgroups::CgroupMount]) -> Result<(), SetupError> {
    let flags = CGROUP_FLAGS;
    let read_only = read_only_if;
    for cgroup in cgroups.iter().filter(|c| !c.dir.is_empty() && !c.dir.contains('/')) {
        let target = base.join(&cgroup.dir);
        mkdir(&target)?;
        mount_at("cgroup", &target, Some(&cgroup.fstype), flags | read_only(cgroup.read_only), Some(&cgroup.options))?;
        for link in cgroup.links.iter().filter(|l| **l != cgroup.dir && !l.contains('/')) {
            let path = base.join(link);
            step(std::os::unix::fs::symlink(&cgroup.dir, &path), || format!("symlink {}", path.display()))?;
        }
    }
    step(mount(None::<&str>, base, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags, None::<&str>), || {
        "remount /sys/fs/cgroup read-only".to_owned()
    })
}

pub(crate) fn mask(path: &Path) -> Result<(), SetupError> {
    match fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => mount_at("tmpfs", path, Some("tmpfs"), MsFlags::MS_RDONLY, Some("size=0")),
        Ok(_) => mount_at("/dev/null", path, None, MsFlags::MS_BIND, None),
    }
}

pub(crate) fn read_only(path: &Path) -> Result<(), SetupError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    mount_at(&path.display().to_string(), path, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    mount_at(&path.display().to_string(), path, None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_inside_the_root_and_are_made_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root_path = dir.path().join("root");
        fs::create_dir_all(root_path.join("etc")).expect("etc");
        std::os::unix::fs::symlink("/etc", root_path.join("data")).expect("absolute link");
        std::os::unix::fs::symlink("../../../../etc/x", root_path.join("up")).expect("escaping link");
        std::os::unix::fs::symlink("loop", root_path.join("loop")).expect("loop");
        let root = fs::File::open(&root_path).expect("root");
        let real = |file: fs::File| fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file))).expect("readlink");
        assert_eq!(real(open_target(&root, "/data/conf", true).expect("made")), root_path.join("etc/conf"));
        assert_eq!(real(open_target(&root, "/up", false).expect("made")), root_path.join("etc/x"), "a dangling link made where it points, inside the root");
        assert!(root_path.join("etc/x").is_file());
        std::os::unix::fs::symlink("../run/stub/resolv.conf", root_path.join("etc/resolv.conf")).expect("an image's link");
        assert_eq!(real(open_target(&root, "/etc/resolv.conf", false).expect("made")), root_path.join("run/stub/resolv.conf"));
        assert_eq!(real(open_target(&root, "/etc/made", false).expect("made")), root_path.join("etc/made"));
        assert!(root_path.join("etc/made").is_file(), "a file target for a file source");
        assert_eq!(real(open_target(&root, "/../../var/x", true).expect("made")), root_path.join("var/x"));
        assert_eq!(real(open_target(&root, "/plain/new", true).expect("made")), root_path.join("plain/new"));
        assert!(open_target(&root, "/loop", true).is_err());
        assert!(!dir.path().join("var").exists() && !Path::new("/etc/conf").exists(), "nothing made outside the root");
    }

    #[test]
    fn a_missing_sub_path_is_made_only_in_a_writable_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_PATH).open(dir.path()).expect("open");
        use std::os::unix::fs::OpenOptionsExt;
        assert!(open_beneath(open(), "a/b", None).is_err(), "read-only: missing is an error");
        assert!(!dir.path().join("a").exists());
        open_beneath(open(), "a/b", Some(0o750)).expect("made");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(dir.path().join("a/b")).expect("made").permissions().mode() & 0o7777, 0o750, "the volume root's mode");
        std::os::unix::fs::symlink("/etc", dir.path().join("a/link")).expect("link");
        assert!(open_beneath(open(), "a/link/x", Some(0o750)).is_err(), "a symlink is refused");
    }
}
