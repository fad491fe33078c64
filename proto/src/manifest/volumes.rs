//! `spec.volumes` and `spec.volumeMounts`: Kubernetes' shape, checked field by field.
//! Pure; the node checks again what only it can know (its own state directories).

use std::collections::BTreeMap;
use std::path::{Component, Path};

use super::model;
use super::names::check_dns_label;
use crate::pb;

/// Where orch keeps its own state by default (the agent's and `orch up`'s state, the
/// PKI, runtime files): a `hostPath` inside one, or containing one, is refused — it would
/// hand a container the node's keys or other replicas' data.
pub const RESERVED_HOST_PATHS: [&str; 3] = ["/var/lib/orch", "/etc/orch", "/run/orch"];

/// The host's kernel filesystems: a hostPath inside them reaches the host's processes
/// (`/proc/1/root`), devices and kernel settings.
pub const KERNEL_HOST_PATHS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Container paths a volume may not be mounted on: the kernel filesystems the runtime
/// sets up itself.
const RESERVED_MOUNT_PATHS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Whether `path` and `other` (absolute, normalized) are the same or one is inside the
/// other.
pub fn paths_overlap(path: &Path, other: &Path) -> bool {
    path.starts_with(other) || other.starts_with(path)
}

/// Why an absolute path as written is not usable, if it is not: relative, `.` or `..`
/// components, NUL.
fn absolute_path_problem(path: &str) -> Option<&'static str> {
    if path.contains('\0') {
        return Some("must not contain a NUL character");
    }
    if !path.starts_with('/') {
        return Some("must be an absolute path");
    }
    if Path::new(path).components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) || path.split('/').any(|part| part == "." || part == "..") {
        return Some("must not contain . or .. components");
    }
    None
}

fn host_path_type(kind: Option<&str>) -> Result<pb::HostPathType, String> {
    Ok(match kind.unwrap_or("") {
        "" => pb::HostPathType::Unset,
        "Directory" => pb::HostPathType::Directory,
        "DirectoryOrCreate" => pb::HostPathType::DirectoryOrCreate,
        "File" => pb::HostPathType::File,
        "FileOrCreate" => pb::HostPathType::FileOrCreate,
        other => return Err(format!("must be one of Directory, DirectoryOrCreate, File, FileOrCreate, got {other:?}")),
    })
}

/// Checks the volumes and their mounts; `memory` parses a size with its path.
pub(super) fn validate_volumes(
    errors: &mut super::validate::Errors,
    volumes: &[model::Volume],
    mounts: &[model::VolumeMount],
    memory: &mut dyn FnMut(&mut super::validate::Errors, &str, Option<&model::RawQuantity>) -> u64,
) -> (Vec<pb::Volume>, Vec<pb::VolumeMount>) {
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut checked = Vec::new();
    for (i, volume) in volumes.iter().enumerate() {
        let base = format!("spec.volumes[{i}]");
        if let Err(expected) = check_dns_label(&volume.name) {
            errors.push(format!("{base}.name"), format!("must be {expected}"));
        }
        if let Some(first) = names.insert(&volume.name, i) {
            errors.push(format!("{base}.name"), format!("duplicate volume {:?}, already declared by spec.volumes[{first}]", volume.name));
        }
        let given = [volume.empty_dir.is_some(), volume.host_path.is_some(), volume.local.is_some(), volume.config.is_some(), volume.secret.is_some()]
            .iter()
            .filter(|&&set| set)
            .count();
        if given != 1 {
            errors.push(base.clone(), format!("must have exactly one of emptyDir, hostPath, local, config, secret; got {given}"));
        }
        let source = if let Some(empty) = &volume.empty_dir {
            let memory_medium = match empty.medium.as_deref().unwrap_or("") {
                "" => false,
                "Memory" => true,
                other => {
                    errors.push(format!("{base}.emptyDir.medium"), format!("must be \"Memory\" or empty (the node's disk), got {other:?}"));
                    false
                }
            };
            let size_limit_bytes = memory(errors, &format!("{base}.emptyDir.sizeLimit"), empty.size_limit.as_ref());
            Some(pb::volume::Source::EmptyDir(pb::EmptyDirVolume { memory: memory_medium, size_limit_bytes }))
        } else if let Some(host) = &volume.host_path {
            let path = format!("{base}.hostPath.path");
            if let Some(problem) = absolute_path_problem(&host.path) {
                errors.push(&path, problem);
            } else if let Some(reserved) = RESERVED_HOST_PATHS.iter().find(|r| paths_overlap(Path::new(&host.path), Path::new(r))) {
                errors.push(&path, format!("{:?} overlaps orch's own state ({reserved}): a container may not see it", host.path));
            } else if let Some(kernel) = KERNEL_HOST_PATHS.iter().find(|k| Path::new(&host.path).starts_with(k)) {
                errors.push(&path, format!("{:?} is inside {kernel}: a container may not reach the host's kernel filesystems", host.path));
            }
            let kind = host_path_type(host.kind.as_deref()).unwrap_or_else(|message| {
                errors.push(format!("{base}.hostPath.type"), message);
                pb::HostPathType::Unset
            });
            Some(pb::volume::Source::HostPath(pb::HostPathVolume { path: host.path.clone(), r#type: kind.into() }))
        } else if let Some(config) = &volume.config {
            Some(pb::volume::Source::Config(super::configs::validate_config_volume(errors, &format!("{base}.config"), config)))
        } else if let Some(secret) = &volume.secret {
            Some(pb::volume::Source::Secret(super::configs::validate_config_volume(errors, &format!("{base}.secret"), secret)))
        } else {
            volume.local.as_ref().map(|_| pb::volume::Source::Local(pb::LocalVolume {}))
        };
        checked.push(pb::Volume { name: volume.name.clone(), source });
    }

    let mut targets: BTreeMap<&str, usize> = BTreeMap::new();
    let mut checked_mounts = Vec::new();
    for (i, mount) in mounts.iter().enumerate() {
        let base = format!("spec.volumeMounts[{i}]");
        if !names.contains_key(mount.name.as_str()) {
            errors.push(format!("{base}.name"), format!("no volume named {:?} in spec.volumes", mount.name));
        }
        let path = format!("{base}.mountPath");
        if let Some(problem) = absolute_path_problem(&mount.mount_path) {
            errors.push(&path, problem);
        } else if mount.mount_path.trim_end_matches('/').is_empty() {
            errors.push(&path, "must not be / (the image's root)");
        } else if let Some(reserved) = RESERVED_MOUNT_PATHS.iter().find(|r| Path::new(&mount.mount_path).starts_with(r)) {
            errors.push(&path, format!("must not be under {reserved}, which the runtime sets up"));
        }
        let normalized = mount.mount_path.trim_end_matches('/');
        if let Some(first) = targets.insert(normalized, i) {
            errors.push(&path, format!("{:?} is already mounted by spec.volumeMounts[{first}]", mount.mount_path));
        }
        let sub_path = mount.sub_path.clone().unwrap_or_default();
        if sub_path.contains('\0') {
            errors.push(format!("{base}.subPath"), "must not contain a NUL character");
        } else if sub_path.starts_with('/') {
            errors.push(format!("{base}.subPath"), "must be a relative path inside the volume");
        } else if sub_path.split('/').any(|part| part == "..") {
            errors.push(format!("{base}.subPath"), "must not contain .. components");
        }
        checked_mounts.push(pb::VolumeMount {
            name: mount.name.clone(),
            mount_path: mount.mount_path.clone(),
            read_only: mount.read_only.unwrap_or(false),
            sub_path: sub_path.trim_matches('/').to_owned(),
        });
    }
    (checked, checked_mounts)
}

/// Whether a (validated) spec has a `local` volume: its replicas keep slot data on
/// their node, so they are pinned there and roll one at a time without surge.
pub fn has_local_volumes(spec: &pb::ServiceSpec) -> bool {
    spec.volumes.iter().any(|v| matches!(v.source, Some(pb::volume::Source::Local(_))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_paths() {
        for (a, b, overlap) in [
            ("/var/lib/orch", "/var/lib/orch/agent", true),
            ("/var", "/var/lib/orch", true),
            ("/", "/etc/orch", true),
            ("/var/lib/orchestra", "/var/lib/orch", false),
            ("/srv/data", "/var/lib/orch", false),
        ] {
            assert_eq!(paths_overlap(Path::new(a), Path::new(b)), overlap, "{a} {b}");
        }
    }

    #[test]
    fn absolute_paths() {
        assert_eq!(absolute_path_problem("/data"), None);
        assert_eq!(absolute_path_problem("data"), Some("must be an absolute path"));
        assert_eq!(absolute_path_problem("/a/../etc"), Some("must not contain . or .. components"));
        assert_eq!(absolute_path_problem("/a/./b"), Some("must not contain . or .. components"));
    }
}
