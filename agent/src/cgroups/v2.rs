//! cgroup v2 (unified hierarchy): one directory per container.

use std::path::PathBuf;

use super::{cpu_quota_micros, cpu_shares, cpu_weight, fs, CgroupError, CgroupStats, ContainerCgroup, Limits, CPU_PERIOD_MICROS};

/// How deep and how many cgroups a system container's init may make below its own.
pub const NESTED_DEPTH: u32 = 16;
pub const NESTED_DESCENDANTS: u32 = 1024;

/// Controllers enabled for the container's subtree (those the kernel offers).
const WANTED: [&str; 4] = ["cpu", "cpuset", "memory", "pids"];

#[derive(Debug, Clone)]
pub struct V2Cgroup {
    root: PathBuf,
    relative: PathBuf,
}

impl V2Cgroup {
    pub fn new(root: PathBuf, relative: PathBuf) -> V2Cgroup {
        V2Cgroup { root, relative }
    }

    fn dir(&self) -> PathBuf {
        self.root.join(&self.relative)
    }

    /// Enables the wanted controllers on every ancestor from the root down to the
    /// container's parent, so the container's directory gets their files.
    fn enable_controllers(&self) -> Result<(), CgroupError> {
        let offered = fs::read(&self.root.join("cgroup.controllers"))?;
        let enable: Vec<String> = WANTED.iter().filter(|c| offered.split_whitespace().any(|o| o == **c)).map(|c| format!("+{c}")).collect();
        let mut ancestor = self.root.clone();
        let parents: Vec<_> = self.relative.parent().map(|p| p.components().collect()).unwrap_or_default();
        for depth in 0..=parents.len() {
            if depth > 0 {
                ancestor.push(parents[depth - 1]);
                fs::mkdir_all(&ancestor)?;
            }
            let control = ancestor.join("cgroup.subtree_control");
            let current = std::fs::read_to_string(&control).unwrap_or_default();
            for controller in &enable {
                if !current.split_whitespace().any(|c| c == &controller[1..]) {
                    fs::write(&control, controller)?;
                }
            }
        }
        Ok(())
    }
}

impl ContainerCgroup for V2Cgroup {
    fn create(&self, limits: &Limits) -> Result<(), CgroupError> {
        self.enable_controllers()?;
        let dir = self.dir();
        fs::mkdir_all(&dir)?;
        if limits.nested_cgroups {
            // Its init makes cgroups below its own (with nsdelegate it cannot raise these).
            fs::write(&dir.join("cgroup.max.depth"), &NESTED_DEPTH.to_string())?;
            fs::write(&dir.join("cgroup.max.descendants"), &NESTED_DESCENDANTS.to_string())?;
        }
        if let Some(bytes) = limits.memory_bytes {
            fs::write(&dir.join("memory.max"), &bytes.to_string())?;
            // No swap: a memory limit is a limit, and an OOM kill is reported as such.
            if dir.join("memory.swap.max").exists() {
                fs::write(&dir.join("memory.swap.max"), "0")?;
            }
        }
        if let Some(millis) = limits.cpu_limit_millis {
            fs::write(&dir.join("cpu.max"), &format!("{} {CPU_PERIOD_MICROS}", cpu_quota_micros(millis)))?;
        }
        if let Some(millis) = limits.cpu_request_millis {
            fs::write(&dir.join("cpu.weight"), &cpu_weight(cpu_shares(millis)).to_string())?;
        }
        if let Some(pids) = limits.pids {
            fs::write(&dir.join("pids.max"), &pids.to_string())?;
        }
        if let Some(cpus) = &limits.cpuset {
            fs::write(&dir.join("cpuset.cpus"), cpus)?;
        }
        if let Some(devices) = &limits.devices {
            super::devices::attach_program(&dir, devices)?;
        }
        Ok(())
    }

    fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        fs::write(&self.dir().join("cgroup.procs"), &pid.to_string())
    }

    fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let dir = self.dir();
        Ok(CgroupStats {
            memory_bytes: fs::read_u64(&dir.join("memory.current"))?,
            cpu_usage_nanos: fs::read_keyed(&dir.join("cpu.stat"), "usage_usec")?.saturating_mul(1000),
            pids: fs::read_u64(&dir.join("pids.current"))?,
        })
    }

    fn oom_kill_count(&self) -> Result<u64, CgroupError> {
        fs::read_keyed(&self.dir().join("memory.events"), "oom_kill")
    }

    fn processes(&self) -> Result<Vec<i32>, CgroupError> {
        fs::pids(&self.dir().join("cgroup.procs"))
    }

    fn destroy(&self) -> Result<(), CgroupError> {
        let dir = self.dir();
        if !dir.exists() {
            return Ok(());
        }
        // An ended container's cgroup is empty already: removing it is all. The kernel
        // refuses one a process is in, and then its processes are killed first.
        // A system container's init makes cgroups below its own: removed first.
        fs::remove_children_now(&dir);
        if std::fs::remove_dir(&dir).is_err() {
            // cgroup.kill ends the whole subtree; without it (before Linux 5.14) each
            // cgroup of it is emptied.
            let kill = dir.join("cgroup.kill");
            if kill.exists() {
                fs::write(&kill, "1")?;
            } else {
                fs::kill_below(&dir);
            }
            fs::kill_all(&dir.join("cgroup.procs"))?;
            fs::remove_tree(&dir)?;
        }
        if let Some(parent) = self.relative.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::remove_parent_if_empty(&self.root.join(parent));
        }
        Ok(())
    }

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.dir()]
    }
}

#[cfg(test)]
mod tests {
    //! The v2 code path against a temporary directory shaped like cgroupfs.

    use super::*;

    fn fake_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma\n").expect("write");
        std::fs::write(root.path().join("cgroup.subtree_control"), "").expect("write");
        root
    }

    fn read(path: PathBuf) -> String {
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn create_enables_controllers_and_writes_limits() {
        let root = fake_root();
        let cgroup = V2Cgroup::new(root.path().to_owned(), "orch/web-1".into());
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpu_limit_millis: Some(500),
            cpu_request_millis: Some(250),
            pids: Some(64),
            cpuset: Some("0-1".into()),
            devices: None,
            nested_cgroups: false,
        };
        cgroup.create(&limits).expect("create");
        let dir = root.path().join("orch/web-1");
        assert_eq!(read(dir.join("memory.max")), (64u64 << 20).to_string());
        assert_eq!(read(dir.join("cpu.max")), "50000 100000");
        assert_eq!(read(dir.join("cpu.weight")), cpu_weight(cpu_shares(250)).to_string());
        assert_eq!(read(dir.join("pids.max")), "64");
        assert_eq!(read(dir.join("cpuset.cpus")), "0-1");
        // The real file takes one "+controller" per write; the fake keeps the last.
        assert_eq!(read(root.path().join("cgroup.subtree_control")), "+pids");
        assert_eq!(read(root.path().join("orch/cgroup.subtree_control")), "+pids");
        assert_eq!(cgroup.paths(), vec![dir]);
    }

    #[test]
    fn unset_limits_write_nothing() {
        let root = fake_root();
        let cgroup = V2Cgroup::new(root.path().to_owned(), "orch/idle".into());
        cgroup.create(&Limits::default()).expect("create");
        let dir = root.path().join("orch/idle");
        for file in ["memory.max", "cpu.max", "cpu.weight", "pids.max", "cpuset.cpus"] {
            assert!(!dir.join(file).exists(), "{file} written without a limit");
        }
    }

    #[test]
    fn stats_and_oom_are_read_from_their_files() {
        let root = fake_root();
        let cgroup = V2Cgroup::new(root.path().to_owned(), "orch/c".into());
        cgroup.create(&Limits::default()).expect("create");
        let dir = root.path().join("orch/c");
        std::fs::write(dir.join("memory.current"), "1048576\n").expect("write");
        std::fs::write(dir.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n").expect("write");
        std::fs::write(dir.join("pids.current"), "3\n").expect("write");
        std::fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n").expect("write");
        std::fs::write(dir.join("cgroup.procs"), "101\n102\n").expect("write");
        assert_eq!(cgroup.stats().expect("stats"), CgroupStats { memory_bytes: 1 << 20, cpu_usage_nanos: 2_500_000, pids: 3 });
        assert_eq!(cgroup.oom_kill_count().expect("oom"), 1);
        assert_eq!(cgroup.processes().expect("procs"), vec![101, 102]);
    }

    #[test]
    fn destroy_of_a_missing_cgroup_is_fine() {
        let root = fake_root();
        let cgroup = V2Cgroup::new(root.path().to_owned(), "orch/never-created".into());
        cgroup.destroy().expect("destroy");
    }

    #[test]
    fn a_missing_controller_file_is_named() {
        let root = tempfile::tempdir().expect("tempdir");
        let cgroup = V2Cgroup::new(root.path().to_owned(), "orch/x".into());
        let err = cgroup.create(&Limits::default()).expect_err("no cgroup.controllers");
        assert!(err.to_string().contains("cgroup.controllers"), "{err}");
    }
}
