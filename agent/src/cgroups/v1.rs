//! cgroup v1 (legacy and hybrid layouts): one directory per controller hierarchy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::layout::SYSTEMD_HIERARCHY;
use super::{cpu_quota_micros, cpu_shares, fs, CgroupError, CgroupStats, ContainerCgroup, Limits, CPU_PERIOD_MICROS};

#[derive(Debug, Clone)]
pub struct V1Cgroup {
    /// Controller → its hierarchy's mount point.
    mounts: BTreeMap<String, PathBuf>,
    relative: PathBuf,
}

impl V1Cgroup {
    pub fn new(mounts: BTreeMap<String, PathBuf>, relative: PathBuf) -> V1Cgroup {
        V1Cgroup { mounts, relative }
    }

    fn dir(&self, controller: &str) -> Option<PathBuf> {
        self.mounts.get(controller).map(|mount| mount.join(&self.relative))
    }

    fn required(&self, controller: &str) -> Result<PathBuf, CgroupError> {
        self.dir(controller).ok_or_else(|| CgroupError::NoHierarchy(format!("the v1 {controller} controller is not mounted")))
    }

    /// Removes the parent cgroup in each hierarchy if nothing else lives in it (also the
    /// cpuset parent, which a pinned container may have created).
    fn remove_parents(&self) {
        if let Some(parent) = self.relative.parent().filter(|p| !p.as_os_str().is_empty()) {
            for mount in self.mounts.values() {
                fs::remove_parent_if_empty(&mount.join(parent));
            }
        }
    }

    /// Distinct directories (co-mounted controllers share one). Four count only once
    /// created: cpuset, joined only by containers pinned to CPUs (each hierarchy joined
    /// costs a migration at start), `name=systemd`, only by system containers, and
    /// devices and freezer, which a container started by an older agent does not have
    /// (it is adopted as it is, and gets them at its next start).
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self
            .mounts
            .iter()
            .filter(|(controller, mount)| {
                !matches!(controller.as_str(), "cpuset" | "devices" | "freezer" | SYSTEMD_HIERARCHY) || mount.join(&self.relative).exists()
            })
            .map(|(_, mount)| mount.join(&self.relative))
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// A new cpuset cgroup starts with no CPUs and no memory nodes; each level from the
    /// hierarchy root down inherits its parent's.
    fn prepare_cpuset(&self, mount: &Path) -> Result<(), CgroupError> {
        let mut parent = mount.to_owned();
        for component in self.relative.components() {
            let child = parent.join(component);
            fs::mkdir_all(&child)?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                if fs::read(&child.join(file))?.trim().is_empty() {
                    let inherited = fs::read(&parent.join(file))?;
                    fs::write(&child.join(file), inherited.trim())?;
                }
            }
            parent = child;
        }
        Ok(())
    }
}

impl ContainerCgroup for V1Cgroup {
    fn create(&self, limits: &Limits) -> Result<(), CgroupError> {
        for (controller, mount) in &self.mounts {
            if controller != "cpuset" && (controller != SYSTEMD_HIERARCHY || limits.nested_cgroups) {
                fs::mkdir_all(&mount.join(&self.relative))?;
            }
        }
        if limits.cpuset.is_some() {
            let mount = self.mounts.get("cpuset").ok_or_else(|| CgroupError::NoHierarchy("the v1 cpuset controller is not mounted".into()))?;
            self.prepare_cpuset(mount)?;
        }
        if let Some(bytes) = limits.memory_bytes {
            let dir = self.required("memory")?;
            fs::write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
            // Memory plus swap capped at the same value: no swapping past the limit.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                fs::write(&memsw, &bytes.to_string())?;
            }
        }
        if let Some(millis) = limits.cpu_limit_millis {
            let dir = self.required("cpu")?;
            fs::write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_MICROS.to_string())?;
            fs::write(&dir.join("cpu.cfs_quota_us"), &cpu_quota_micros(millis).to_string())?;
        }
        if let Some(millis) = limits.cpu_request_millis {
            fs::write(&self.required("cpu")?.join("cpu.shares"), &cpu_shares(millis).to_string())?;
        }
        if let Some(pids) = limits.pids {
            fs::write(&self.required("pids")?.join("pids.max"), &pids.to_string())?;
        }
        if let Some(cpus) = &limits.cpuset {
            fs::write(&self.required("cpuset")?.join("cpuset.cpus"), cpus)?;
        }
        if let Some(devices) = &limits.devices {
            // Deny everything, then allow the list: a new cgroup starts from its parent's.
            let dir = self.required("devices")?;
            fs::write(&dir.join("devices.deny"), "a")?;
            for rule in devices {
                fs::write(&dir.join("devices.allow"), &rule.v1_entry())?;
            }
        }
        Ok(())
    }

    fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            fs::write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        Ok(CgroupStats {
            memory_bytes: fs::read_u64(&self.required("memory")?.join("memory.usage_in_bytes"))?,
            cpu_usage_nanos: fs::read_u64(&self.required("cpuacct")?.join("cpuacct.usage"))?,
            pids: fs::read_u64(&self.required("pids")?.join("pids.current"))?,
        })
    }

    fn oom_kill_count(&self) -> Result<u64, CgroupError> {
        fs::read_keyed(&self.required("memory")?.join("memory.oom_control"), "oom_kill")
    }

    fn processes(&self) -> Result<Vec<i32>, CgroupError> {
        let mut all = Vec::new();
        for dir in self.dirs() {
            all.extend(fs::pids(&dir.join("cgroup.procs"))?);
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        // An ended container's cgroups are empty already (its processes ended with its
        // PID namespace's init): removing them is all. The kernel refuses to remove one
        // a process is in (EBUSY), and then the kill below runs.
        let removed = self.dirs().iter().all(|dir| {
            fs::remove_children_now(dir);
            match std::fs::remove_dir(dir) {
                Ok(()) => true,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            }
        });
        if removed {
            self.remove_parents();
            return Ok(());
        }
        // v1 has no cgroup.kill: a process that forks between the listing and the
        // signal would escape a kill loop. Frozen, none can fork; each gets SIGKILL
        // (pending while frozen), then the thaw lets them die.
        // A freeze that does not finish (a task in uninterruptible sleep) only weakens
        // that guarantee: the kill loop and the removal run all the same, and the
        // cgroup is always thawed.
        let mut first_error = None;
        if let Some(freezer) = self.dir("freezer").filter(|dir| dir.exists()) {
            if let Err(e) = fs::freeze(&freezer) {
                first_error.get_or_insert(e);
            }
            for dir in self.dirs() {
                for pid in fs::pids(&dir.join("cgroup.procs")).unwrap_or_default() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
            if let Err(e) = fs::write(&freezer.join("freezer.state"), "THAWED") {
                first_error.get_or_insert(e);
            }
        }
        for dir in self.dirs() {
            if dir.exists() {
                if let Err(e) = fs::kill_all(&dir.join("cgroup.procs")) {
                    first_error.get_or_insert(e);
                }
            }
        }
        for dir in self.dirs() {
            if let Err(e) = fs::remove_tree(&dir) {
                first_error.get_or_insert(e);
            }
        }
        self.remove_parents();
        first_error.map_or(Ok(()), Err)
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.dirs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_cpuset_count_only_once_created() {
        let root = tempfile::tempdir().expect("tempdir");
        let mounts: BTreeMap<String, PathBuf> = ["memory", "cpu", "devices", "cpuset"].iter().map(|c| ((*c).to_owned(), root.path().join(c))).collect();
        let cgroup = V1Cgroup::new(mounts, "orch/old".into());
        // A container from before the device allowlist: memory and cpu only.
        for controller in ["memory", "cpu"] {
            std::fs::create_dir_all(root.path().join(controller).join("orch/old")).expect("mkdir");
        }
        assert_eq!(cgroup.paths(), vec![root.path().join("cpu/orch/old"), root.path().join("memory/orch/old")]);
        std::fs::create_dir_all(root.path().join("devices/orch/old")).expect("mkdir");
        assert!(cgroup.paths().contains(&root.path().join("devices/orch/old")), "a devices cgroup, once there, is joined");
    }
}
