//! What the agent asks for ([`ContainerSpec`]) and what it hands the re-exec'd init
//! ([`InitConfig`], JSON over the sync socket).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroups::Limits;

/// Where a container's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stdio {
    /// The agent's own stdout and stderr (the `orch-agent run` debug command).
    Inherit,
    /// One file for both streams, appended to (the agent rotates it).
    LogFile(PathBuf),
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
    /// Numeric uid and gid the command runs as; root when unset.
    pub user: Option<(u32, u32)>,
    /// The image's manifest digest, recorded so image pruning keeps it.
    pub image: Option<String>,
    /// Host files bind-mounted into the container (resolv.conf, hosts, …).
    pub mounts: Vec<BindMount>,
}

/// A host file or directory bind-mounted at an absolute path inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
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
    /// Overlay lower directories, top first.
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub capabilities: Vec<String>,
    /// Where the shim records the container's exit, for an agent that restarts.
    pub exit_status_path: PathBuf,
    /// Create a user namespace (the agent writes its maps and idmaps `layers`).
    pub user_namespace: bool,
    /// uid and gid of the command; root when unset.
    pub user: Option<(u32, u32)>,
    pub mounts: Vec<BindMount>,
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
    fn spec_env_overrides_defaults() {
        let env = container_env(&["PATH=/bin".into(), "A=1".into()], "web");
        assert_eq!(env, ["HOSTNAME=web", "HOME=/root", "PATH=/bin", "A=1"]);
    }
}
