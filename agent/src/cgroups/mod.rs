//! cgroups for containers: v1 (hybrid layouts, as on these machines) and v2 (unified),
//! chosen by [`CgroupLayout::detect`] at start. File writes are small and central, so
//! they are written here rather than taken from a crate.

mod devices;
mod error;
mod fs;
mod layout;
mod namespaced;
mod v1;
mod v2;

pub use devices::{DeviceKind, DeviceRule, DEFAULT_DEVICES};
pub use error::CgroupError;
pub use layout::{CgroupLayout, CgroupVersion};
pub use namespaced::{namespaced_mounts, CgroupMount};
pub use v1::V1Cgroup;
pub use v2::V2Cgroup;

use std::fmt::Debug;
use std::path::PathBuf;

/// What a container's cgroup enforces. `None` leaves the kernel default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// Hard cap: CFS quota in millicores (1000 = one core).
    pub cpu_limit_millis: Option<u64>,
    /// Relative share under contention, from the cpu request in millicores.
    pub cpu_request_millis: Option<u64>,
    pub pids: Option<u64>,
    /// CPUs the container may run on, in the kernel's list format (`0-1,3`).
    pub cpuset: Option<String>,
    /// The only devices the container may create, read or write; `None` leaves every
    /// device usable (the runtime always sets [`DEFAULT_DEVICES`]).
    pub devices: Option<Vec<DeviceRule>>,
    /// Its init manages cgroups below its own (a system container's systemd): on v1 it
    /// gets a cgroup of its own in the `name=systemd` hierarchy too, when the host has one
    /// (others are not moved there, which costs a migration at start); on v2 its subtree
    /// is bounded by `cgroup.max.depth` and `cgroup.max.descendants`.
    pub nested_cgroups: bool,
}

/// Usage counters read from the cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub memory_bytes: u64,
    pub cpu_usage_nanos: u64,
    pub pids: u64,
}

/// CFS period used for cpu limits: 100 ms, as Kubernetes and Docker.
pub const CPU_PERIOD_MICROS: u64 = 100_000;

/// One container's cgroup (in every hierarchy it spans, for v1).
pub trait ContainerCgroup: Debug + Send + Sync {
    /// Creates the cgroup (and its parent) and applies `limits`.
    fn create(&self, limits: &Limits) -> Result<(), CgroupError>;
    /// Moves a process (host PID) into the cgroup.
    fn add_process(&self, pid: i32) -> Result<(), CgroupError>;
    fn stats(&self) -> Result<CgroupStats, CgroupError>;
    /// How many processes the kernel's OOM killer killed in this cgroup.
    fn oom_kill_count(&self) -> Result<u64, CgroupError>;
    /// Host PIDs of the processes in the cgroup.
    fn processes(&self) -> Result<Vec<i32>, CgroupError>;
    /// Kills whatever is left, waits for the cgroup to empty and removes it, and its
    /// parent when that is empty. Idempotent: a missing cgroup is fine.
    fn destroy(&self) -> Result<(), CgroupError>;
    /// The directories that make up this cgroup (for inspect and leak checks).
    fn paths(&self) -> Vec<PathBuf>;
}

/// cpu.shares (v1) for a cpu request, as Kubernetes: 1024 per core, at least 2.
pub fn cpu_shares(request_millis: u64) -> u64 {
    (request_millis * 1024 / 1000).clamp(2, 262_144)
}

/// cpu.weight (v2) from cpu.shares, with the conversion runc and Kubernetes use.
pub fn cpu_weight(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// The CFS quota for a cpu limit, at least the kernel minimum of 1 ms.
pub fn cpu_quota_micros(limit_millis: u64) -> u64 {
    (limit_millis * CPU_PERIOD_MICROS / 1000).max(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_conversions() {
        assert_eq!(cpu_shares(1000), 1024);
        assert_eq!(cpu_shares(100), 102);
        assert_eq!(cpu_shares(0), 2);
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(cpu_quota_micros(250), 25_000);
        assert_eq!(cpu_quota_micros(2000), 200_000);
        assert_eq!(cpu_quota_micros(1), 1000);
    }
}
