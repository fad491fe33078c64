//! A bundle's `config.json` (read with `oci-spec`) as what `orch-runc create` does: the
//! root, the mounts with their flags, the namespaces, the process and its credentials,
//! the cgroup and its limits. Pure: the fields it knows it cannot honour are refused
//! here, by their path in the config, before anything is made (apparmor and selinux
//! labels, swap, block I/O and a few other resources are still ignored).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Spec};

use crate::cgroups::{DeviceKind, DeviceRule, Limits, DEFAULT_DEVICES};

/// Why a bundle cannot be run: the field of `config.json` and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config.json: {field}: {reason}")]
pub struct PlanError {
    pub field: String,
    pub reason: String,
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> PlanError {
    PlanError { field: field.into(), reason: reason.into() }
}

/// What the container is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The root filesystem: absolute, or the bundle's `root.path` below the bundle.
    pub root: PathBuf,
    pub root_readonly: bool,
    pub hostname: Option<String>,
    pub process: ProcessPlan,
    /// Namespaces to make (`path: None`) or join, in the kernel's order of need.
    pub namespaces: Vec<NamespacePlan>,
    /// `(container id, host id, size)`.
    pub uid_mappings: Vec<(u32, u32, u32)>,
    pub gid_mappings: Vec<(u32, u32, u32)>,
    pub mounts: Vec<MountPlan>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub devices: Vec<DevicePlan>,
    /// The cgroup, relative to each hierarchy's root (`docker/<id>`); unset: `orch-runc/<id>`.
    pub cgroup: String,
    pub limits: Limits,
    pub sysctl: BTreeMap<String, String>,
    /// `linux.rootfsPropagation` as mount flags (`rslave` unless told, as runc).
    pub root_propagation: u64,
    /// `linux.seccomp` compiled ([`super::seccomp::programs`]), installed last before
    /// exec with no_new_privs, else before the capabilities go (it needs CAP_SYS_ADMIN).
    pub seccomp: Option<Vec<seccompiler::BpfProgram>>,
    pub hooks: super::hooks::StageHooks,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    /// The bounding set; the effective, permitted and inheritable sets below are subsets.
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
    pub no_new_privileges: bool,
    /// `(resource, soft, hard)`.
    pub rlimits: Vec<(i32, u64, u64)>,
    pub terminal: bool,
    pub oom_score_adj: Option<i32>,
}

/// A namespace: its `CLONE_NEW*` flag, and the path of one to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePlan {
    pub flag: i32,
    pub kind: &'static str,
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Absolute, inside the container.
    pub destination: String,
    pub fstype: String,
    /// A host path for a bind mount (relative ones are the bundle's), else the
    /// filesystem's source name.
    pub source: String,
    /// `MS_*` flags, propagation apart.
    pub flags: u64,
    /// `MS_PRIVATE`, `MS_SHARED`… (with `MS_REC`) applied after the mount.
    pub propagation: u64,
    /// The filesystem's own options (`mode=755,size=65536k`).
    pub data: String,
}

impl MountPlan {
    pub fn is_bind(&self) -> bool {
        self.flags & nix::libc::MS_BIND != 0
    }
}

/// A device node to make in the container's `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    pub path: String,
    pub kind: NodeKind,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// What a device node is: a character or block device (allowed in the device cgroup
/// too), or a FIFO (`p`: a node, no device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Device(DeviceKind),
    Fifo,
}

/// The namespaces orch-runc knows, in the order they are entered: the user namespace
/// first (it owns the others), the PID namespace last (it applies to children).
const NAMESPACE_ORDER: [(LinuxNamespaceType, &str); 7] = [
    (LinuxNamespaceType::User, "user"),
    (LinuxNamespaceType::Ipc, "ipc"),
    (LinuxNamespaceType::Uts, "uts"),
    (LinuxNamespaceType::Network, "network"),
    (LinuxNamespaceType::Mount, "mount"),
    (LinuxNamespaceType::Cgroup, "cgroup"),
    (LinuxNamespaceType::Pid, "pid"),
];

/// The plan for `spec`, whose bundle is `bundle` and container `id`.
pub fn plan(spec: &Spec, bundle: &Path, id: &str) -> Result<Plan, PlanError> {
    let root = spec.root().as_ref().ok_or_else(|| refuse("root", "missing (a root filesystem is required)"))?;
    let root_path = if root.path().is_absolute() { root.path().clone() } else { bundle.join(root.path()) };
    let process = process_plan(spec)?;
    let linux = spec.linux().clone().unwrap_or_default();

    let mut namespaces = Vec::new();
    let given = linux.namespaces().clone().unwrap_or_default();
    for (i, namespace) in given.iter().enumerate() {
        if !NAMESPACE_ORDER.iter().any(|(kind, _)| *kind == namespace.typ()) {
            return Err(refuse(format!("linux.namespaces[{i}].type"), format!("{} namespaces are not supported", namespace.typ())));
        }
        if given[..i].iter().any(|other| other.typ() == namespace.typ()) {
            return Err(refuse(format!("linux.namespaces[{i}].type"), format!("{} given twice", namespace.typ())));
        }
    }
    for (kind, name) in NAMESPACE_ORDER {
        if let Some(namespace) = given.iter().find(|n| n.typ() == kind) {
            namespaces.push(NamespacePlan { flag: kind as i32, kind: name, path: namespace.path().clone() });
        }
    }
    let new_user = namespaces.iter().any(|n| n.kind == "user" && n.path.is_none());
    let mapping = |list: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<(u32, u32, u32)> {
        list.clone().unwrap_or_default().iter().map(|m| (m.container_id(), m.host_id(), m.size())).collect()
    };
    let (uid_mappings, gid_mappings) = (mapping(linux.uid_mappings()), mapping(linux.gid_mappings()));
    if new_user && (uid_mappings.is_empty() || gid_mappings.is_empty()) {
        return Err(refuse("linux.uidMappings", "a new user namespace needs uidMappings and gidMappings"));
    }
    if !new_user && (!uid_mappings.is_empty() || !gid_mappings.is_empty()) {
        return Err(refuse("linux.uidMappings", "id mappings need a new user namespace in linux.namespaces"));
    }
    if !namespaces.iter().any(|n| n.kind == "mount" && n.path.is_none()) {
        return Err(refuse("linux.namespaces", "a new mount namespace is required (orch-runc builds the root in one)"));
    }

    let mounts = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, mount)| mount_plan(mount, bundle).map_err(|reason| refuse(format!("mounts[{i}]"), reason)))
        .collect::<Result<Vec<_>, _>>()?;

    let mut devices = Vec::new();
    for (i, device) in linux.devices().clone().unwrap_or_default().iter().enumerate() {
        let field = format!("linux.devices[{i}]");
        let kind = match device.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => NodeKind::Device(DeviceKind::Char),
            LinuxDeviceType::B => NodeKind::Device(DeviceKind::Block),
            LinuxDeviceType::P => NodeKind::Fifo,
            other => return Err(refuse(format!("{field}.type"), format!("{other:?} devices cannot be made (c, u, b or p)"))),
        };
        let path = device.path().display().to_string();
        if !path.starts_with("/dev/") || path.split('/').any(|p| p == "..") {
            return Err(refuse(format!("{field}.path"), format!("{path:?} is not below /dev")));
        }
        let number = |value: i64, what: &str| u32::try_from(value).map_err(|_| refuse(format!("{field}.{what}"), format!("{value} is out of range")));
        devices.push(DevicePlan {
            path,
            kind,
            major: number(device.major(), "major")?,
            minor: number(device.minor(), "minor")?,
            mode: device.file_mode().unwrap_or(0o666),
            uid: device.uid().unwrap_or(0),
            gid: device.gid().unwrap_or(0),
        });
    }

    let limits = limits_of(&linux, &devices)?;
    let cgroup = match linux.cgroups_path() {
        None => format!("orch-runc/{id}"),
        Some(path) => {
            let text = path.display().to_string();
            if text.contains(':') {
                return Err(refuse("linux.cgroupsPath", format!("{text:?} is a systemd slice:prefix:name path; orch-runc manages cgroupfs paths only")));
            }
            let relative = text.trim_start_matches('/').to_owned();
            if relative.is_empty() || relative.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
                return Err(refuse("linux.cgroupsPath", format!("{text:?} is not a cgroup path below the hierarchy root")));
            }
            relative
        }
    };
    let seccomp = match linux.seccomp() {
        None => None,
        Some(profile) => Some(super::seccomp::programs(profile).map_err(|reason| refuse("linux.seccomp", reason))?),
    };
    let hooks = super::hooks::StageHooks::of(&spec.hooks().clone().unwrap_or_default());
    for (stage, list) in hooks.stages() {
        for (i, hook) in list.iter().enumerate() {
            if !hook.path().is_absolute() {
                return Err(refuse(format!("hooks.{stage}[{i}].path"), format!("{} is not absolute", hook.path().display())));
            }
        }
    }
    let root_propagation = match linux.rootfs_propagation() {
        None => nix::libc::MS_SLAVE | nix::libc::MS_REC,
        Some(text) => match propagation_of(text) {
            Some(flags) => flags,
            None => return Err(refuse("linux.rootfsPropagation", format!("{text:?} is not a propagation (private, rslave, shared…)"))),
        },
    };
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    let has_new = |kind: &str| namespaces.iter().any(|n| n.kind == kind);
    if hostname.is_some() && !has_new("uts") {
        return Err(refuse("hostname", "a hostname needs a UTS namespace of the container's own (linux.namespaces)"));
    }
    let sysctl: BTreeMap<String, String> = linux.sysctl().clone().unwrap_or_default().into_iter().collect();
    for key in sysctl.keys() {
        if key.is_empty() || key.contains("..") || key.contains('/') {
            return Err(refuse(format!("linux.sysctl.{key}"), "not a sysctl name"));
        }
        // runc's rule: only what the container's own namespaces hold.
        let ipc_keys =
            ["kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"];
        let ipc = key.starts_with("fs.mqueue.") || ipc_keys.contains(&key.as_str());
        let uts = matches!(key.as_str(), "kernel.hostname" | "kernel.domainname");
        if !((key.starts_with("net.") && has_new("network")) || (ipc && has_new("ipc")) || (uts && has_new("uts"))) {
            return Err(refuse(format!("linux.sysctl.{key}"), "not a sysctl of a namespace the container has of its own (the host's would change)"));
        }
    }
    Ok(Plan {
        root: root_path,
        root_readonly: root.readonly().unwrap_or(false),
        hostname,
        process,
        namespaces,
        uid_mappings,
        gid_mappings,
        mounts,
        masked_paths: linux.masked_paths().clone().unwrap_or_default(),
        readonly_paths: linux.readonly_paths().clone().unwrap_or_default(),
        devices,
        cgroup,
        limits,
        sysctl,
        root_propagation,
        seccomp,
        hooks,
    })
}

fn process_plan(spec: &Spec) -> Result<ProcessPlan, PlanError> {
    let process = spec.process().as_ref().ok_or_else(|| refuse("process", "missing (the container's process is required)"))?;
    process_plan_of(process, "process")
}

/// The process `process` describes: the config's, or one `orch-runc exec` runs
/// (`field` names where it came from in errors: `process`, `process.json`).
pub fn process_plan_of(process: &oci_spec::runtime::Process, field: &str) -> Result<ProcessPlan, PlanError> {
    let args = process.args().clone().unwrap_or_default();
    if args.first().is_none_or(String::is_empty) {
        return Err(refuse(format!("{field}.args"), "empty (the program to run is required)"));
    }
    let cwd = process.cwd().display().to_string();
    if !cwd.starts_with('/') {
        return Err(refuse(format!("{field}.cwd"), format!("{cwd:?} is not absolute")));
    }
    let names = |set: Option<&oci_spec::runtime::Capabilities>| -> Vec<String> {
        let mut names: Vec<String> = set.into_iter().flatten().map(|c| format!("CAP_{c}")).collect();
        names.sort();
        names
    };
    let capabilities = process.capabilities().clone().unwrap_or_default();
    let mut rlimits = Vec::new();
    for (i, limit) in process.rlimits().clone().unwrap_or_default().iter().enumerate() {
        let resource =
            rlimit_resource(&limit.typ().to_string()).ok_or_else(|| refuse(format!("{field}.rlimits[{i}].type"), format!("{} is unknown", limit.typ())))?;
        rlimits.push((resource, limit.soft(), limit.hard()));
    }
    let user = process.user();
    Ok(ProcessPlan {
        args,
        env: process.env().clone().unwrap_or_default(),
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        bounding: names(capabilities.bounding().as_ref()),
        effective: names(capabilities.effective().as_ref()),
        permitted: names(capabilities.permitted().as_ref()),
        inheritable: names(capabilities.inheritable().as_ref()),
        ambient: names(capabilities.ambient().as_ref()),
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        rlimits,
        terminal: process.terminal().unwrap_or(false),
        oom_score_adj: process.oom_score_adj(),
    })
}

/// `RLIMIT_NOFILE` and friends by their spec names.
fn rlimit_resource(name: &str) -> Option<i32> {
    use nix::libc;
    let resource = match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => return None,
    };
    i32::try_from(resource).ok()
}

/// The cgroup limits of `linux.resources`, with orch's device allowlist plus the
/// devices the config makes and the specific ones its rules allow.
fn limits_of(linux: &oci_spec::runtime::Linux, devices: &[DevicePlan]) -> Result<Limits, PlanError> {
    let resources = linux.resources().clone().unwrap_or_default();
    let mut rules: Vec<DeviceRule> = DEFAULT_DEVICES.to_vec();
    rules.extend(devices.iter().filter_map(|d| match d.kind {
        NodeKind::Device(kind) => Some(DeviceRule { kind, major: d.major, minor: Some(d.minor) }),
        NodeKind::Fifo => None,
    }));
    for rule in resources.devices().clone().unwrap_or_default() {
        // Wildcards (Docker's `c *:* m`) are left out: orch allows named devices only.
        let kind = match rule.typ() {
            Some(LinuxDeviceType::C) => DeviceKind::Char,
            Some(LinuxDeviceType::B) => DeviceKind::Block,
            _ => continue,
        };
        let (Some(major), true) = (rule.major().and_then(|m| u32::try_from(m).ok()), rule.allow()) else { continue };
        let candidate = DeviceRule { kind, major, minor: rule.minor().and_then(|m| u32::try_from(m).ok()) };
        if !rules.contains(&candidate) {
            rules.push(candidate);
        }
    }
    let memory = (*resources.memory()).unwrap_or_default();
    let cpu = resources.cpu().clone().unwrap_or_default();
    let memory_bytes = match memory.limit() {
        Some(bytes) if bytes > 0 => Some(bytes.unsigned_abs()),
        _ => None,
    };
    // A quota over a period, in millicores (orch's unit); shares as a request.
    let cpu_limit_millis = match (cpu.quota(), cpu.period()) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => quota.unsigned_abs().checked_mul(1000).map(|q| q / period),
        (Some(quota), None) if quota > 0 => quota.unsigned_abs().checked_mul(1000).map(|q| q / crate::cgroups::CPU_PERIOD_MICROS),
        _ => None,
    };
    let cpu_request_millis = cpu.shares().filter(|s| *s > 0).and_then(|shares| shares.checked_mul(1000)).map(|m| m / 1024);
    let pids = match resources.pids().as_ref().map(|p| p.limit()) {
        Some(limit) if limit > 0 => Some(limit.unsigned_abs()),
        _ => None,
    };
    Ok(Limits {
        memory_bytes,
        cpu_limit_millis,
        cpu_request_millis,
        pids,
        cpuset: cpu.cpus().clone().filter(|c| !c.is_empty()),
        devices: Some(rules),
        nested_cgroups: false,
    })
}

fn propagation_of(option: &str) -> Option<u64> {
    use nix::libc::{MS_PRIVATE, MS_REC, MS_SHARED, MS_SLAVE, MS_UNBINDABLE};
    Some(match option {
        "private" => MS_PRIVATE,
        "rprivate" => MS_PRIVATE | MS_REC,
        "shared" => MS_SHARED,
        "rshared" => MS_SHARED | MS_REC,
        "slave" => MS_SLAVE,
        "rslave" => MS_SLAVE | MS_REC,
        "unbindable" => MS_UNBINDABLE,
        "runbindable" => MS_UNBINDABLE | MS_REC,
        _ => return None,
    })
}

/// runc's table of mount options: each sets or clears flags; anything else is the
/// filesystem's own data.
fn flag_of(option: &str) -> Option<(bool, u64)> {
    use nix::libc::*;
    Some(match option {
        "defaults" => (true, 0),
        "ro" => (true, MS_RDONLY),
        "rw" => (false, MS_RDONLY),
        "nosuid" => (true, MS_NOSUID),
        "suid" => (false, MS_NOSUID),
        "nodev" => (true, MS_NODEV),
        "dev" => (false, MS_NODEV),
        "noexec" => (true, MS_NOEXEC),
        "exec" => (false, MS_NOEXEC),
        "sync" => (true, MS_SYNCHRONOUS),
        "async" => (false, MS_SYNCHRONOUS),
        "dirsync" => (true, MS_DIRSYNC),
        "remount" => (true, MS_REMOUNT),
        "mand" => (true, MS_MANDLOCK),
        "nomand" => (false, MS_MANDLOCK),
        "noatime" => (true, MS_NOATIME),
        "atime" => (false, MS_NOATIME),
        "nodiratime" => (true, MS_NODIRATIME),
        "diratime" => (false, MS_NODIRATIME),
        "bind" => (true, MS_BIND),
        "rbind" => (true, MS_BIND | MS_REC),
        "relatime" => (true, MS_RELATIME),
        "norelatime" => (false, MS_RELATIME),
        "strictatime" => (true, MS_STRICTATIME),
        "nostrictatime" => (false, MS_STRICTATIME),
        "silent" => (true, MS_SILENT),
        "loud" => (false, MS_SILENT),
        "iversion" => (true, MS_I_VERSION),
        "noiversion" => (false, MS_I_VERSION),
        "lazytime" => (true, MS_LAZYTIME),
        "nolazytime" => (false, MS_LAZYTIME),
        _ => return None,
    })
}

fn mount_plan(mount: &oci_spec::runtime::Mount, bundle: &Path) -> Result<MountPlan, String> {
    let destination = mount.destination().display().to_string();
    if !destination.starts_with('/') {
        return Err(format!("destination {destination:?} is not absolute"));
    }
    if mount.uid_mappings().is_some() || mount.gid_mappings().is_some() {
        return Err("idmapped mounts are not supported yet".into());
    }
    let mut flags = 0;
    let mut propagation = 0;
    let mut data = Vec::new();
    for option in mount.options().clone().unwrap_or_default() {
        if let Some((set, flag)) = flag_of(&option) {
            if set {
                flags |= flag;
            } else {
                flags &= !flag;
            }
        } else if let Some(flag) = propagation_of(&option) {
            propagation = flag;
        } else if matches!(option.as_str(), "idmap" | "ridmap" | "tmpcopyup" | "rro" | "rrw" | "nosymfollow" | "symfollow") {
            return Err(format!("option {option:?} is not supported yet"));
        } else {
            data.push(option);
        }
    }
    let fstype = mount.typ().clone().unwrap_or_default();
    if fstype == "bind" {
        flags |= nix::libc::MS_BIND;
    }
    let source = mount.source().as_ref().map(|s| s.display().to_string()).unwrap_or_default();
    let is_bind = flags & nix::libc::MS_BIND != 0;
    let source = if is_bind && !source.starts_with('/') { bundle.join(&source).display().to_string() } else { source };
    if is_bind && source.is_empty() {
        return Err("a bind mount needs a source".into());
    }
    if !is_bind && fstype.is_empty() {
        return Err("type is required (or options bind/rbind)".into());
    }
    Ok(MountPlan { destination, fstype, source, flags, propagation, data: data.join(",") })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// runc's `runc spec` configuration, as oci-spec's default is, run as `sh`.
    fn spec_with(change: impl FnOnce(&mut serde_json::Value)) -> Result<Plan, PlanError> {
        let mut json = serde_json::to_value(Spec::default()).expect("the default spec");
        json["process"]["args"] = serde_json::json!(["sh"]);
        change(&mut json);
        let spec: Spec = serde_json::from_value(json).expect("a spec");
        plan(&spec, Path::new("/bundles/b1"), "b1")
    }

    #[test]
    fn runc_specs_default_maps_onto_the_runtime() {
        let plan = spec_with(|_| {}).expect("plan");
        assert_eq!(plan.root, PathBuf::from("/bundles/b1/rootfs"));
        assert!(plan.root_readonly, "runc spec's root is read-only");
        let kinds: Vec<&str> = plan.namespaces.iter().map(|n| n.kind).collect();
        assert_eq!(kinds, ["ipc", "uts", "network", "mount", "cgroup", "pid"], "entered in this order, pid last");
        assert_eq!(plan.cgroup, "orch-runc/b1");
        let proc_mount = &plan.mounts[0];
        assert_eq!((proc_mount.destination.as_str(), proc_mount.fstype.as_str(), proc_mount.flags), ("/proc", "proc", 0));
        let dev = plan.mounts.iter().find(|m| m.destination == "/dev").expect("/dev");
        assert_eq!((dev.fstype.as_str(), dev.flags, dev.data.as_str()), ("tmpfs", nix::libc::MS_NOSUID | nix::libc::MS_STRICTATIME, "mode=755,size=65536k"));
        let sys = plan.mounts.iter().find(|m| m.destination == "/sys").expect("/sys");
        assert_eq!(sys.flags, nix::libc::MS_NOSUID | nix::libc::MS_NOEXEC | nix::libc::MS_NODEV | nix::libc::MS_RDONLY);
        assert!(plan.process.bounding.contains(&"CAP_KILL".to_owned()), "{:?}", plan.process.bounding);
        assert_eq!(plan.process.rlimits, vec![(i32::try_from(nix::libc::RLIMIT_NOFILE).unwrap_or(7), 1024, 1024)]);
        assert!(plan.process.no_new_privileges);
        assert!(plan.masked_paths.contains(&"/proc/kcore".to_owned()));
        assert_eq!(plan.root_propagation, nix::libc::MS_SLAVE | nix::libc::MS_REC, "runc's default");
        assert_eq!(plan.limits.devices.as_ref().map(Vec::len), Some(DEFAULT_DEVICES.len()), "runc spec's deny-all adds nothing");
    }

    #[test]
    fn bind_mounts_resolve_in_the_bundle_and_options_split_into_flags_and_data() {
        let plan = spec_with(|json| {
            json["mounts"] = serde_json::json!([
                {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro", "rslave"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "rw", "mode=1777", "size=1m"]},
            ]);
        })
        .expect("plan");
        let data = &plan.mounts[0];
        assert_eq!(data.source, "/bundles/b1/data");
        assert_eq!(data.flags, nix::libc::MS_BIND | nix::libc::MS_REC | nix::libc::MS_RDONLY);
        assert_eq!(data.propagation, nix::libc::MS_SLAVE | nix::libc::MS_REC);
        assert!(data.is_bind());
        assert_eq!((plan.mounts[1].flags, plan.mounts[1].data.as_str()), (nix::libc::MS_NOSUID, "mode=1777,size=1m"));
    }

    #[test]
    fn resources_become_limits_and_named_devices_are_allowed() {
        let plan = spec_with(|json| {
            json["linux"]["cgroupsPath"] = serde_json::json!("/docker/abc");
            json["linux"]["resources"] = serde_json::json!({
                "memory": {"limit": 67108864},
                "cpu": {"quota": 50000, "period": 100000, "shares": 512},
                "pids": {"limit": 64},
                "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}, {"allow": true, "type": "c", "access": "m"}],
            });
            json["linux"]["devices"] = serde_json::json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]);
        })
        .expect("plan");
        assert_eq!(plan.cgroup, "docker/abc");
        assert_eq!(
            (plan.limits.memory_bytes, plan.limits.cpu_limit_millis, plan.limits.cpu_request_millis, plan.limits.pids),
            (Some(64 << 20), Some(500), Some(500), Some(64))
        );
        let devices = plan.limits.devices.clone().unwrap_or_default();
        assert!(devices.contains(&DeviceRule { kind: DeviceKind::Char, major: 10, minor: Some(200) }), "an allowed device");
        assert!(devices.contains(&DeviceRule { kind: DeviceKind::Char, major: 10, minor: Some(229) }), "a device it makes");
        assert_eq!(devices.len(), DEFAULT_DEVICES.len() + 2, "no wildcard: {devices:?}");
        assert_eq!(plan.devices[0].mode, 0o666);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_its_field() {
        type Change = fn(&mut serde_json::Value);
        let table: [(&str, Change); 9] = [
            ("process.args", |j| j["process"]["args"] = serde_json::json!([])),
            ("process.cwd", |j| j["process"]["cwd"] = serde_json::json!("relative")),
            ("root", |j| j.as_object_mut().map_or((), |o| drop(o.remove("root")))),
            ("linux.cgroupsPath", |j| j["linux"]["cgroupsPath"] = serde_json::json!("system.slice:docker:abc")),
            ("linux.cgroupsPath", |j| j["linux"]["cgroupsPath"] = serde_json::json!("/a/../b")),
            ("linux.namespaces", |j| j["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}])),
            ("linux.uidMappings", |j| j["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "user"}])),
            ("linux.devices[0].path", |j| j["linux"]["devices"] = serde_json::json!([{"path": "/etc/x", "type": "c", "major": 1, "minor": 3}])),
            ("mounts[0]", |j| j["mounts"] = serde_json::json!([{"destination": "relative", "type": "tmpfs"}])),
        ];
        for (field, change) in table {
            let error = spec_with(change).expect_err(field);
            assert_eq!(error.field, field, "{error}");
        }
        let twice = spec_with(|j| j["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "mount"}])).expect_err("twice");
        assert_eq!(twice.to_string(), "config.json: linux.namespaces[1].type: mnt given twice");
    }
}
