//! What a system container's init mounts at `/sys/fs/cgroup`, inside its cgroup
//! namespace (where its own cgroup is the root of each hierarchy it sees), as systemd
//! and nspawn expect: the unified hierarchy read-write when the host mounted it with
//! `nsdelegate` (then the kernel refuses writes to the namespace root's own limits), else
//! read-only; on v1, a tmpfs holding each hierarchy the container has a cgroup of its
//! own in — read-only, but `name=systemd`'s (a v1 container's limits are files of its
//! own cgroup, which no namespace protects). Pure: table-tested.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One mount below `/sys/fs/cgroup` in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMount {
    /// Its directory below `/sys/fs/cgroup`; empty: `/sys/fs/cgroup` itself (the
    /// unified hierarchy, mounted alone).
    pub dir: String,
    /// `cgroup2`, or `cgroup` (a v1 hierarchy).
    pub fstype: String,
    /// A v1 hierarchy's controllers, as the kernel wants them all named
    /// (`cpu,cpuacct`, `name=systemd`).
    pub options: String,
    pub read_only: bool,
    /// Other names of a hierarchy of several controllers (`cpu` and `cpuacct` for
    /// `cpu,cpuacct`), links to `dir`.
    pub links: Vec<String>,
}

/// The v1 controllers the kernel knows, to tell them from other mount options.
const V1_KNOWN: [&str; 14] =
    ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "net_prio", "blkio", "perf_event", "hugetlb", "pids", "rdma", "misc"];

/// The mounts for a container whose cgroups are `own` (its directories on the host),
/// from the host's `/proc/self/mountinfo`. Hierarchies it has no cgroup of its own in
/// are left out: their namespace root would be the agent's cgroup.
pub fn namespaced_mounts(mountinfo: &str, own: &[PathBuf]) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for (mount_point, fstype, options) in super::layout::mounts(mountinfo) {
        if !own.iter().any(|dir| dir.starts_with(&mount_point)) {
            continue;
        }
        match fstype {
            "cgroup2" => {
                let delegates = options.split(',').any(|o| o == "nsdelegate");
                // The unified hierarchy alone: nothing else can be at /sys/fs/cgroup.
                return vec![CgroupMount { dir: String::new(), fstype: "cgroup2".into(), options: String::new(), read_only: !delegates, links: Vec::new() }];
            }
            "cgroup" => {
                let controllers: Vec<&str> = options.split(',').filter(|o| V1_KNOWN.contains(o) || o.starts_with("name=")).collect();
                let Some(dir) = mount_point.file_name().and_then(|d| d.to_str()) else { continue };
                if controllers.is_empty() {
                    continue;
                }
                let links = if dir.contains(',') { dir.split(',').map(str::to_owned).collect() } else { Vec::new() };
                mounts.push(CgroupMount {
                    dir: dir.to_owned(),
                    fstype: "cgroup".into(),
                    options: controllers.join(","),
                    // Writable only when it holds no controller: co-mounted with one, its
                    // limits would be the container's to raise.
                    read_only: controllers != ["name=systemd"],
                    links,
                });
            }
            _ => {}
        }
    }
    mounts.sort_by(|a, b| a.dir.cmp(&b.dir));
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
40 35 0:35 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
41 35 0:36 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,memory
42 35 0:37 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,net_cls,net_prio
43 35 0:38 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,pids
";

    #[test]
    fn v1_hierarchies_of_its_own_are_mounted_read_only_but_systemds() {
        let own: Vec<PathBuf> = ["/sys/fs/cgroup/cpu,cpuacct/orch/web-0", "/sys/fs/cgroup/memory/orch/web-0", "/sys/fs/cgroup/systemd/orch/web-0"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let mounts = namespaced_mounts(HYBRID, &own);
        let summary: Vec<(&str, &str, bool, Vec<String>)> = mounts.iter().map(|m| (m.dir.as_str(), m.options.as_str(), m.read_only, m.links.clone())).collect();
        assert_eq!(
            summary,
            vec![
                ("cpu,cpuacct", "cpu,cpuacct", true, vec!["cpu".to_owned(), "cpuacct".to_owned()]),
                ("memory", "memory", true, vec![]),
                ("systemd", "name=systemd", false, vec![]),
            ],
            "pids and net_cls are not its own here; the unified mount of a hybrid host holds no cgroup of its"
        );
        assert!(mounts.iter().all(|m| m.fstype == "cgroup"));
        assert_eq!(namespaced_mounts(HYBRID, &[]), vec![], "no cgroup of its own, nothing to see");
        let co_mounted = "37 35 0:32 / /sys/fs/cgroup/cpu,systemd rw,relatime shared:11 - cgroup cgroup rw,cpu,name=systemd\n";
        let mounts = namespaced_mounts(co_mounted, &[PathBuf::from("/sys/fs/cgroup/cpu,systemd/orch/web-0")]);
        assert!(mounts[0].read_only, "systemd's hierarchy with a controller in it stays read-only: {mounts:?}");
    }

    #[test]
    fn the_unified_hierarchy_is_writable_only_where_namespaces_delegate() {
        let own = [PathBuf::from("/sys/fs/cgroup/orch/web-0")];
        let unified = |options: &str| format!("30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 {options}\n");
        let delegated = namespaced_mounts(&unified("rw,nsdelegate,memory_recursiveprot"), &own);
        assert_eq!(delegated, vec![CgroupMount { dir: String::new(), fstype: "cgroup2".into(), options: String::new(), read_only: false, links: vec![] }]);
        assert!(namespaced_mounts(&unified("rw"), &own)[0].read_only, "without nsdelegate it could raise its own memory.max");
    }
}
