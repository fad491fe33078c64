//! Each `orch-runc` subcommand but `create` ([`super::create`]): what runc does, on
//! orch's records.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use super::state::{self, Record, Status, EXEC_FIFO};
use super::OciError;
use crate::cgroups::CgroupLayout;

/// How long `start` waits for a created container's process to take the FIFO.
const START_PATIENCE: Duration = Duration::from_secs(10);

/// Lets a created container run its program: opens the exec FIFO for reading, which
/// its process is blocked opening for writing, and reads the byte it writes then.
pub fn start(root: &Path, id: &str) -> Result<(), OciError> {
    use std::os::unix::fs::OpenOptionsExt;
    let record = state::load(root, id)?;
    let status = state::status(root, &record);
    if status != Status::Created {
        return Err(OciError::Status { id: id.to_owned(), status: status.as_str(), what: "only a created container can be started".into() });
    }
    let path = state::dir(root, id)?.join(EXEC_FIFO);
    // Non-blocking: a process that died meanwhile must not leave `start` waiting.
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(&path)
        .map_err(OciError::io("cannot open", &path))?;
    let began = Instant::now();
    let mut byte = [0u8; 1];
    loop {
        match fifo.read(&mut byte) {
            Ok(1) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(OciError::Io { what: "cannot read", path, source: e }),
        }
        if state::status(root, &record) == Status::Stopped {
            return Err(OciError::Failed(format!("container {id:?}: its process ended before it could start")));
        }
        if began.elapsed() > START_PATIENCE {
            return Err(OciError::Failed(format!("container {id:?}: its process did not take the start within {START_PATIENCE:?}")));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::remove_file(&path).map_err(OciError::io("cannot remove", &path))?;
    let state = state::hook_state(id, record.pid, &record.bundle, &record.annotations, "running");
    if let Err(error) = super::hooks::run(&record.poststart, "poststart", &state) {
        // As runc: a failed poststart hook stops the container it started.
        let _ = super::create::signal_process(record.pid, nix::libc::SIGKILL);
        return Err(OciError::Failed(error));
    }
    Ok(())
}

/// `create`, `start`, wait for the program and `delete`, as `runc run`: orch-runc is
/// the container process's subreaper (it is created as a grandchild). The program's
/// exit status (128+N for signal N).
pub fn run(options: &super::create::CreateOptions) -> Result<i32, OciError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|e| OciError::Failed(format!("prctl(PR_SET_CHILD_SUBREAPER): {e}")))?;
    super::create::create(options)?;
    let record = state::load(&options.root, &options.id)?;
    if let Err(error) = start(&options.root, &options.id) {
        let _ = delete(&options.root, &options.id, true);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(record.pid), None);
        return Err(error);
    }
    let status = crate::runtime::init::wait_exit_status(record.pid).map_err(|e| OciError::Failed(format!("waitpid {}: {e}", record.pid)));
    // Deleted whatever the wait gave (it kills what is left of the container).
    delete(&options.root, &options.id, true)?;
    status
}

/// The state as the specification defines it, as JSON.
pub fn state_json(root: &Path, id: &str) -> Result<String, OciError> {
    let record = state::load(root, id)?;
    let status = state::status(root, &record);
    serde_json::to_string_pretty(&state::oci_state(&record, status)).map_err(|e| OciError::Failed(e.to_string()))
}

/// Sends `signal` (a name or number) to the container's process, or with `all` to
/// every process of its cgroup.
pub fn kill(root: &Path, id: &str, signal: &str, all: bool) -> Result<(), OciError> {
    let number = orch_api::signal::parse(signal).map_err(OciError::Failed)?;
    let record = state::load(root, id)?;
    let status = state::status(root, &record);
    if status == Status::Stopped && !all {
        return Err(OciError::Status { id: id.to_owned(), status: status.as_str(), what: "container not running".into() });
    }
    if all {
        let cgroup = CgroupLayout::detect()?.container(&record.cgroup)?;
        for pid in cgroup.processes().unwrap_or_default() {
            let _ = super::create::signal_process(pid, number);
        }
        return Ok(());
    }
    super::create::signal_process(record.pid, number).map_err(|e| OciError::Failed(format!("kill {} {}: {e}", record.pid, orch_api::signal::name(number))))
}

/// Removes a stopped container (with `force`, kills it first): its cgroup and records.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), OciError> {
    let record = match state::load(root, id) {
        Ok(record) => record,
        // runc's rule: what is gone is removed (a create that failed half-way leaves a
        // directory without a state), and forcing that succeeds.
        Err(OciError::NotFound(_)) => {
            let _ = std::fs::remove_dir_all(state::dir(root, id)?);
            return if force { Ok(()) } else { Err(OciError::NotFound(id.to_owned())) };
        }
        Err(error) => return Err(error),
    };
    let status = state::status(root, &record);
    // A created container is deleted as it is (its program never ran), as runc does:
    // containerd's shim deletes one that way.
    if status == Status::Running && !force {
        return Err(OciError::Status {
            id: id.to_owned(),
            status: status.as_str(),
            what: "cannot delete a container that is not stopped (--force kills it)".into(),
        });
    }
    let removed = remove(root, &record);
    // poststop hooks are reported, never a reason to keep the container.
    let state = state::hook_state(id, 0, &record.bundle, &record.annotations, "stopped");
    if let Err(error) = super::hooks::run(&record.poststop, "poststop", &state) {
        eprintln!("orch-runc: {error}");
    }
    removed
}

/// Kills what is left in the container's cgroup, removes it and the records.
fn remove(root: &Path, record: &Record) -> Result<(), OciError> {
    let cgroup = CgroupLayout::detect()?.container(&record.cgroup)?;
    if state::status(root, record) != Status::Stopped {
        let _ = super::create::signal_process(record.pid, nix::libc::SIGKILL);
    }
    // destroy kills every member first when the cgroup is not empty.
    cgroup.destroy()?;
    let dir = state::dir(root, &record.id)?;
    std::fs::remove_dir_all(&dir).map_err(OciError::io("cannot remove", &dir))
}

/// The PIDs of the container's processes (its cgroup's).
pub fn pids(root: &Path, id: &str) -> Result<Vec<i32>, OciError> {
    let record = state::load(root, id)?;
    let cgroup = CgroupLayout::detect()?.container(&record.cgroup)?;
    Ok(cgroup.processes().unwrap_or_default())
}

/// `orch-runc list`: every container with its status, PID and bundle.
pub fn list(root: &Path) -> Vec<serde_json::Value> {
    state::list(root)
        .iter()
        .filter_map(|id| state::load(root, id).ok())
        .map(|record| {
            let status = state::status(root, &record);
            state::oci_state(&record, status)
        })
        .collect()
}

/// What orch-runc supports, as `runc features` reports it (the specification's
/// `features.json`).
pub fn features() -> serde_json::Value {
    let mount_options = [
        "async",
        "atime",
        "bind",
        "defaults",
        "dev",
        "diratime",
        "dirsync",
        "exec",
        "iversion",
        "lazytime",
        "loud",
        "mand",
        "noatime",
        "nodev",
        "nodiratime",
        "noexec",
        "noiversion",
        "nolazytime",
        "nomand",
        "norelatime",
        "nostrictatime",
        "nosuid",
        "private",
        "rbind",
        "relatime",
        "remount",
        "ro",
        "rprivate",
        "rshared",
        "rslave",
        "runbindable",
        "rw",
        "shared",
        "silent",
        "slave",
        "strictatime",
        "suid",
        "sync",
        "unbindable",
    ];
    let capabilities: Vec<String> = caps::all().iter().map(ToString::to_string).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": super::OCI_VERSION,
        "hooks": [],
        "mountOptions": mount_options.to_vec(),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": capabilities,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {"org.opencontainers.runc.version": env!("CARGO_PKG_VERSION"), "dev.orch.runtime": "orch-runc"},
    })
}
