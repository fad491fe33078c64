//! The handful of file operations cgroups need, each error naming its path.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::CgroupError;

pub fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write { path: path.to_owned(), value: value.to_owned(), source })
}

pub fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_owned(), source })
}

pub fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read(path)?;
    text.trim().parse().map_err(|_| CgroupError::Parse { path: path.to_owned(), content: text })
}

/// `key value` lines (memory.events, memory.oom_control, cpu.stat): the value of `key`.
pub fn read_keyed(path: &Path, key: &str) -> Result<u64, CgroupError> {
    let text = read(path)?;
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| CgroupError::Parse { path: path.to_owned(), content: text.clone() })
}

pub fn mkdir_all(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(path).map_err(|source| CgroupError::Create { path: path.to_owned(), source })
}

pub fn pids(procs_file: &Path) -> Result<Vec<i32>, CgroupError> {
    match std::fs::read_to_string(procs_file) {
        Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Read { path: procs_file.to_owned(), source }),
    }
}

/// How long [`remove_dir`] waits for exiting processes to leave the cgroup.
const EMPTY_PATIENCE: Duration = Duration::from_secs(5);

/// Removes a cgroup and the cgroups below it, deepest first; a missing one is fine.
/// Exiting processes can keep it busy for a moment, so `EBUSY` is retried until it
/// empties (bounded).
pub fn remove_tree(path: &Path) -> Result<(), CgroupError> {
    let start = Instant::now();
    loop {
        remove_children_now(path);
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && start.elapsed() < EMPTY_PATIENCE => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                let pids = pids(&path.join("cgroup.procs")).unwrap_or_default();
                return Err(CgroupError::Busy { path: path.to_owned(), pids });
            }
            Err(source) => return Err(CgroupError::Remove { path: path.to_owned(), source }),
        }
    }
}

/// How deep [`remove_children_now`] and [`kill_below`] go (one descriptor per level).
const MAX_NESTING: usize = 512;

/// Removes the cgroups below `path` that are empty, deepest first, without waiting:
/// the quick path of a removal (one still busy stays for [`remove_tree`]). Each is
/// reached by name from its parent's descriptor: however deep a container nested
/// them, no path grows past PATH_MAX.
pub fn remove_children_now(path: &Path) {
    walk_below(path, &mut |parent, name| {
        let _ = nix::unistd::unlinkat(parent, name, nix::unistd::UnlinkatFlags::RemoveDir);
    });
}

/// SIGKILLs the processes of every cgroup below `path` (v2 without `cgroup.kill`).
pub fn kill_below(path: &Path) {
    use std::io::Read;
    walk_below(path, &mut |parent, name| {
        let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC;
        let Ok(dir) = nix::fcntl::openat(parent, name, flags, nix::sys::stat::Mode::empty()) else { return };
        let Ok(procs) = nix::fcntl::openat(&dir, "cgroup.procs", nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        else {
            return;
        };
        let mut text = String::new();
        if std::fs::File::from(procs).read_to_string(&mut text).is_ok() {
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    });
}

/// Calls `visit(parent, name)` for every directory below `path`, deepest first.
fn walk_below(path: &Path, visit: &mut dyn FnMut(&nix::dir::Dir, &std::ffi::CStr)) {
    let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC;
    if let Ok(mut dir) = nix::dir::Dir::open(path, flags, nix::sys::stat::Mode::empty()) {
        walk_dir(&mut dir, visit, 0);
    }
}

fn walk_dir(dir: &mut nix::dir::Dir, visit: &mut dyn FnMut(&nix::dir::Dir, &std::ffi::CStr), depth: usize) {
    if depth >= MAX_NESTING {
        return;
    }
    let names: Vec<std::ffi::CString> = dir
        .iter()
        .flatten()
        .filter(|e| e.file_type() == Some(nix::dir::Type::Directory))
        .map(|e| e.file_name().to_owned())
        .filter(|name| name.as_bytes() != b"." && name.as_bytes() != b"..")
        .collect();
    let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC;
    for name in names {
        if let Ok(mut child) = nix::dir::Dir::openat(&*dir, name.as_c_str(), flags, nix::sys::stat::Mode::empty()) {
            walk_dir(&mut child, visit, depth + 1);
        }
        visit(dir, name.as_c_str());
    }
}

/// Removes the parent cgroup if nothing else lives in it.
pub fn remove_parent_if_empty(path: &Path) {
    let _ = std::fs::remove_dir(path);
}

/// Freezes a v1 freezer cgroup and waits (bounded) until the kernel says it is frozen.
pub fn freeze(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    write(&state, "FROZEN")?;
    let start = Instant::now();
    loop {
        let now = read(&state)?;
        if now.trim() == "FROZEN" {
            return Ok(());
        }
        if start.elapsed() > EMPTY_PATIENCE {
            return Err(CgroupError::Parse { path: state, content: format!("still {} after {} s", now.trim(), EMPTY_PATIENCE.as_secs()) });
        }
        // FREEZING: the kernel retries as processes reach a freezable point.
        write(&state, "FROZEN")?;
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Kills every process in `procs_file`, repeatedly until none is left (bounded).
pub fn kill_all(procs_file: &Path) -> Result<(), CgroupError> {
    let start = Instant::now();
    loop {
        let pids = pids(procs_file)?;
        if pids.is_empty() {
            return Ok(());
        }
        if start.elapsed() > EMPTY_PATIENCE {
            return Err(CgroupError::Busy { path: procs_file.parent().map(Path::to_owned).unwrap_or_default(), pids });
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Checks a cgroup name relative to a hierarchy: `orch/web-1`, never `..` or absolute.
pub fn check_name(name: &str) -> Result<PathBuf, CgroupError> {
    let ok = !name.is_empty()
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')));
    if ok {
        Ok(PathBuf::from(name))
    } else {
        Err(CgroupError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("orch/web-1").is_ok());
        assert!(check_name("orch-test.x_1").is_ok());
        for bad in ["", "/abs", "a//b", "../x", "a/..", "sp ace", "a/"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keyed_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("memory.events");
        std::fs::write(&path, "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\n").expect("write");
        assert_eq!(read_keyed(&path, "oom_kill").ok(), Some(2));
        assert!(matches!(read_keyed(&path, "absent"), Err(CgroupError::Parse { .. })));
    }
}
