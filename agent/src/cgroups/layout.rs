//! Which cgroup hierarchy this machine has, read from /proc/self/mountinfo.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{fs, CgroupError, ContainerCgroup, V1Cgroup, V2Cgroup};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// The v1 controllers a container's cgroup spans; `cpuset` is used when mounted, and
/// `freezer` (when mounted) stops every process at once before they are killed.
pub const V1_CONTROLLERS: [&str; 7] = ["memory", "cpu", "cpuacct", "pids", "cpuset", "devices", "freezer"];
/// `devices` is required: without it a container could open any device node.
/// systemd's own v1 hierarchy (no controller), kept among the mounts: only a system
/// container gets a cgroup there ([`Limits::nested_cgroups`](super::Limits)).
pub const SYSTEMD_HIERARCHY: &str = "name=systemd";
const V1_REQUIRED: [&str; 5] = ["memory", "cpu", "cpuacct", "pids", "devices"];
const V2_REQUIRED: [&str; 2] = ["memory", "pids"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// One mount point per controller (co-mounted controllers share a path).
    V1 { mounts: BTreeMap<String, PathBuf> },
    /// The unified hierarchy's mount point.
    V2 { root: PathBuf },
}

impl CgroupLayout {
    /// Detects the layout of this machine.
    pub fn detect() -> Result<CgroupLayout, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let mountinfo = fs::read(path)?;
        Self::from_mountinfo(&mountinfo, |root| std::fs::read_to_string(root.join("cgroup.controllers")).ok())
    }

    /// Chooses v2 when a cgroup2 mount offers the memory and pids controllers (a
    /// unified system), else v1 when its controllers are mounted (a legacy or hybrid
    /// system, whose cgroup2 mount carries no controllers).
    pub fn from_mountinfo(mountinfo: &str, controllers_of: impl Fn(&Path) -> Option<String>) -> Result<CgroupLayout, CgroupError> {
        let mut v1 = BTreeMap::new();
        let mut v2_roots = Vec::new();
        for (mount_point, fstype, options) in mounts(mountinfo) {
            match fstype {
                "cgroup2" => v2_roots.push(mount_point),
                "cgroup" => {
                    for option in options.split(',') {
                        if V1_CONTROLLERS.contains(&option) || option == SYSTEMD_HIERARCHY {
                            v1.entry(option.to_owned()).or_insert_with(|| mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        for root in v2_roots {
            let controllers = controllers_of(&root).unwrap_or_default();
            let offered: Vec<&str> = controllers.split_whitespace().collect();
            if V2_REQUIRED.iter().all(|c| offered.contains(c)) {
                return Ok(CgroupLayout::V2 { root });
            }
        }
        let missing: Vec<&str> = V1_REQUIRED.iter().copied().filter(|c| !v1.contains_key(*c)).collect();
        if missing.is_empty() {
            return Ok(CgroupLayout::V1 { mounts: v1 });
        }
        Err(CgroupError::NoHierarchy(format!("no cgroup2 mount offers memory and pids, and the v1 controllers {missing:?} are not mounted")))
    }

    pub fn version(&self) -> CgroupVersion {
        match self {
            CgroupLayout::V1 { .. } => CgroupVersion::V1,
            CgroupLayout::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// The cgroup `name` (relative to each hierarchy's root, e.g. `orch/web-1`).
    pub fn container(&self, name: &str) -> Result<Box<dyn ContainerCgroup>, CgroupError> {
        let relative = fs::check_name(name)?;
        Ok(match self {
            CgroupLayout::V1 { mounts } => Box::new(V1Cgroup::new(mounts.clone(), relative)),
            CgroupLayout::V2 { root } => Box::new(V2Cgroup::new(root.clone(), relative)),
        })
    }
}

/// Each mount of `mountinfo` (`/proc/self/mountinfo`): its mount point, filesystem type
/// and superblock options.
pub(super) fn mounts(mountinfo: &str) -> impl Iterator<Item = (PathBuf, &str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = before.split(' ').nth(4)?;
        let mut after = after.split(' ');
        let (fstype, _source, options) = (after.next()?, after.next()?, after.next()?);
        Some((PathBuf::from(unescape(mount_point)), fstype, options))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
38 35 0:33 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
39 35 0:34 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
40 35 0:35 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
41 35 0:36 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
42 35 0:37 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
43 35 0:38 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
44 35 0:39 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
";

    const UNIFIED: &str = "\
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    const COMOUNTED: &str = "\
38 35 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
41 35 0:36 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
42 35 0:37 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
43 35 0:38 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
";

    #[test]
    fn hybrid_uses_v1_even_with_a_cgroup2_mount() {
        let layout = CgroupLayout::from_mountinfo(HYBRID, |_| Some(String::new())).expect("layout");
        let CgroupLayout::V1 { mounts } = layout else { panic!("expected v1") };
        assert_eq!(mounts["memory"], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(mounts["cpuset"], PathBuf::from("/sys/fs/cgroup/cpuset"));
        assert_eq!(mounts["devices"], PathBuf::from("/sys/fs/cgroup/devices"));
        assert_eq!(mounts[SYSTEMD_HIERARCHY], PathBuf::from("/sys/fs/cgroup/systemd"), "for system containers");
        assert_eq!(mounts.len(), 7);
    }

    #[test]
    fn unified_uses_v2() {
        let layout = CgroupLayout::from_mountinfo(UNIFIED, |_| Some("cpuset cpu io memory hugetlb pids rdma misc\n".into()));
        assert_eq!(layout.ok(), Some(CgroupLayout::V2 { root: "/sys/fs/cgroup".into() }));
    }

    #[test]
    fn comounted_controllers_share_a_path() {
        let layout = CgroupLayout::from_mountinfo(COMOUNTED, |_| None).expect("layout");
        let CgroupLayout::V1 { mounts } = layout else { panic!("expected v1") };
        assert_eq!(mounts["cpu"], mounts["cpuacct"]);
        assert!(!mounts.contains_key("cpuset"));
    }

    #[test]
    fn nothing_usable_is_an_error_naming_what_is_missing() {
        let err = CgroupLayout::from_mountinfo("", |_| None).expect_err("no cgroups");
        assert!(err.to_string().contains("memory"), "{err}");
        let v2_without_controllers = CgroupLayout::from_mountinfo(UNIFIED, |_| Some("io\n".into()));
        assert!(v2_without_controllers.is_err());
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
    }
}
