//! What the agent asks for ([`ContainerSpec`]) and what it hands the re-exec'd init
//! ([`InitConfig`], JSON over the sync socket).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::output::LogSettings;
use super::seccomp::{PackedProgram, SeccompProfile};
use crate::cgroups::Limits;

/// Where a container's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stdio {
    /// The agent's own stdout and stderr (the `orch-agent run` debug command).
    Inherit,
    /// Both streams as records of one log file, written and rotated by the shim.
    Log(LogSettings),
}

impl Stdio {
    /// The log at `path`, rotated at 10 MiB, 3 files.
    pub fn log_file(path: PathBuf) -> Stdio {
        Stdio::Log(LogSettings { path, max_bytes: 10 << 20, max_files: 3 })
    }
}

/// A container as the agent wants it.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Unique on the node; also the hostname unless one is given. A DNS label.
    pub id: String,
    /// Read-only layers, top first: the overlay's lower directories.
    pub layers: Vec<PathBuf>,
    pub hostname: Option<String>,
    /// argv: the program and its arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs, added to the defaults (PATH, HOME, HOSTNAME).
    pub env: Vec<String>,
    /// Working directory inside the container; `/` when unset.
    pub cwd: Option<String>,
    pub limits: Limits,
    pub stdio: Stdio,
    /// Run in a user namespace: root inside is `host_id` outside.
    pub user_namespace: Option<IdRange>,
    /// Who the command runs as; root (with no supplementary groups) when unset.
    pub user: Option<User>,
    /// The image's manifest digest, recorded so image pruning keeps it.
    pub image: Option<String>,
    /// Host files bind-mounted into the container (resolv.conf, hosts, …).
    pub mounts: Vec<BindMount>,
    /// What its processes may do: capabilities, seccomp filter, read-only root.
    pub security: Security,
    /// A system container: its command is PID 1 itself, its writable root is kept.
    pub system: Option<SystemRoot>,
    /// The signal that asks it to stop (a number: real-time signals too); SIGKILL
    /// follows after the grace period.
    pub stop_signal: i32,
}

/// A system container's writable root, kept across its runs: `<dir>/upper` is the
/// overlay's upper layer (`<dir>/work` its work directory), in a local volume's slot
/// directory. Its command (the image's init) runs as PID 1 and reaps; `/run` and
/// `/run/lock` are tmpfs, `/dev/console` a pty whose output the shim logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemRoot {
    pub dir: PathBuf,
}

/// Who a container's command runs as: numeric ids, resolved from the image's names
/// before the container starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    /// The primary group (the real, effective and saved gid).
    pub gid: u32,
    /// Supplementary groups besides `gid`: those the image's /etc/group lists the user
    /// in (as runc and Docker set them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
}

impl User {
    /// A user with no supplementary groups.
    pub fn ids(uid: u32, gid: u32) -> User {
        User { uid, gid, groups: Vec::new() }
    }

    /// The process's group list for setgroups(2): the primary group first, then the
    /// supplementary ones, each once.
    pub fn group_list(&self) -> Vec<u32> {
        let mut list = vec![self.gid];
        for gid in &self.groups {
            if !list.contains(gid) {
                list.push(*gid);
            }
        }
        list
    }
}

/// What a container's processes may do. The default is Docker's: its default
/// capabilities, its default seccomp profile, a writable root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// Capabilities its processes keep (`CAP_CHOWN`, …); every other one is dropped
    /// from every set, the bounding set included.
    pub capabilities: Vec<String>,
    pub seccomp: SeccompProfile,
    /// The root filesystem is mounted read-only (volumes and /dev, /dev/shm stay writable).
    pub read_only_root: bool,
}

impl Default for Security {
    fn default() -> Security {
        Security { capabilities: DEFAULT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(), seccomp: SeccompProfile::default(), read_only_root: false }
    }
}

/// Kubernetes' `capabilities: {add, drop}` applied to [`DEFAULT_CAPABILITIES`]: names
/// with or without `CAP_`, any case; `ALL` in `drop` starts from nothing, `ALL` in
/// `add` adds every capability; a drop wins over an add. The result is sorted.
pub fn capability_set(add: &[String], drop: &[String]) -> Result<Vec<String>, String> {
    use caps::Capability;
    let is_all = |name: &String| name.eq_ignore_ascii_case("ALL");
    let parse = |name: &String| -> Result<Capability, String> {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
        full.parse::<Capability>().map_err(|_| format!("{name:?} is not a Linux capability"))
    };
    let mut set: std::collections::BTreeSet<String> =
        if drop.iter().any(is_all) { std::collections::BTreeSet::new() } else { DEFAULT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect() };
    for name in add {
        if is_all(name) {
            set.extend(caps::all().into_iter().map(|c| c.to_string()));
        } else {
            set.insert(parse(name)?.to_string());
        }
    }
    for name in drop.iter().filter(|n| !is_all(n)) {
        set.remove(&parse(name)?.to_string());
    }
    Ok(set.into_iter().collect())
}

/// A host file or directory bind-mounted at an absolute path inside the container,
/// always `nosuid,nodev`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// A relative path inside `source` to mount instead (a volume's `subPath`): walked
    /// by the init one component at a time, missing directories created, a symlink on
    /// the way refused — so a container cannot point it outside the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// Host paths the source, as the init opened it (symlinks resolved), must neither be
    /// inside nor contain: a hostPath is checked again at every start, on the opened file,
    /// so a container that swapped a path component for a symlink gains nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forbidden: Vec<PathBuf>,
}

impl BindMount {
    /// A writable bind of a whole file or directory.
    pub fn new(source: PathBuf, target: String) -> BindMount {
        BindMount { source, target, read_only: false, sub_path: None, forbidden: Vec::new() }
    }
}

/// A user namespace's mapping: container ids `0..size` are host ids
/// `host_id..host_id + size`, for users and groups alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub host_id: u32,
    pub size: u32,
}

/// The range `--userns` uses unless told otherwise: above the ids Debian hands to
/// users, 65536 wide (as /etc/subuid ranges are).
pub const DEFAULT_ID_RANGE: IdRange = IdRange { host_id: 100_000, size: 65_536 };

/// PATH inside a container unless the spec sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Capabilities a container keeps: Docker's default set. Everything else, notably
/// CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_SYS_MODULE, is dropped from every set.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Handed to the container's init over the sync socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitConfig {
    pub id: String,
    pub hostname: String,
    /// The container's own directory: the init's working directory while it builds
    /// the root, so the paths below may be relative to it (a user-namespaced init
    /// cannot walk the private state tree above it).
    pub dir: PathBuf,
    /// Overlay lower directories, top first.
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub security: Security,
    /// The seccomp filters of `security` (none when unconfined), compiled by the agent:
    /// the command installs them last before exec.
    #[serde(default)]
    pub seccomp_filters: Vec<PackedProgram>,
    /// Where the shim records the container's exit, for an agent that restarts.
    pub exit_status_path: PathBuf,
    /// Create a user namespace (the agent writes its maps and idmaps `layers`).
    pub user_namespace: bool,
    /// Who the command runs as; root when unset.
    pub user: Option<User>,
    pub mounts: Vec<BindMount>,
    /// Where the shim writes the command's output; unset: the shim's own stdout and
    /// stderr are inherited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogSettings>,
    /// A system container ([`SystemRoot`]): the command is exec'd as PID 1, and `upper`
    /// and `work` are absolute paths in its root volume.
    #[serde(default)]
    pub system: bool,
    /// A system container's `/sys/fs/cgroup`, mounted inside its cgroup namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cgroup_mounts: Vec<crate::cgroups::CgroupMount>,
}

/// The environment a container starts with: defaults, then the spec's (which win).
pub fn container_env(spec_env: &[String], hostname: &str) -> Vec<String> {
    let mut env: Vec<String> = vec![format!("PATH={DEFAULT_PATH}"), format!("HOSTNAME={hostname}"), "HOME=/root".to_owned()];
    for entry in spec_env {
        let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
        env.retain(|existing| existing.split_once('=').map_or(existing.as_str(), |(n, _)| n) != name);
        env.push(entry.clone());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_add_and_drop_as_kubernetes_does() {
        let set = |add: &[&str], drop: &[&str]| {
            let own = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
            capability_set(&own(add), &own(drop))
        };
        let defaults = set(&[], &[]).expect("defaults");
        assert_eq!(defaults.len(), DEFAULT_CAPABILITIES.len());
        let with_admin = set(&["NET_ADMIN", "cap_sys_time"], &["MKNOD"]).expect("valid");
        assert!(with_admin.contains(&"CAP_NET_ADMIN".to_owned()) && with_admin.contains(&"CAP_SYS_TIME".to_owned()));
        assert!(!with_admin.contains(&"CAP_MKNOD".to_owned()));
        assert_eq!(set(&["NET_BIND_SERVICE"], &["ALL"]), Ok(vec!["CAP_NET_BIND_SERVICE".to_owned()]));
        assert_eq!(set(&["CHOWN"], &["CHOWN"]).map(|s| s.contains(&"CAP_CHOWN".to_owned())), Ok(false), "a drop wins");
        assert!(set(&["ALL"], &[]).expect("all").contains(&"CAP_SYS_ADMIN".to_owned()));
        assert!(set(&["FLY"], &[]).expect_err("unknown").contains("\"FLY\""));
    }

    #[test]
    fn spec_env_overrides_defaults() {
        let env = container_env(&["PATH=/bin".into(), "A=1".into()], "web");
        assert_eq!(env, ["HOSTNAME=web", "HOME=/root", "PATH=/bin", "A=1"]);
    }
}
