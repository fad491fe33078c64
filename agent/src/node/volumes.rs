//! A replica's volumes on its node: what each one is on the host ([`plan`], pure), making
//! them exist ([`provision`]: directories, a tmpfs, a checked host path), and removing
//! what belongs to the replica alone ([`release`]) or to a purged service ([`purge`]).
//!
//! - `emptyDir`: `<state>/empty-dirs/<replica>/<volume>`, mode 0777, a tmpfs of the size
//!   limit (or the container's memory limit) for `medium: Memory`; made once, so it
//!   survives the replica's restarts and the agent's, and removed with the replica.
//! - `hostPath`: the node's path, checked by type; refused when it overlaps orch's
//!   own state (the agent's state, volumes and PKI directories, orch's defaults).
//! - `local`: `<volumes dir>/<service>/<volume>/<slot>`, kept after the replica and the
//!   service; two replicas of one slot on this node never hold it at once
//!   ([`VolumeLocks`]).
//!
//! The container's init binds each mount `nosuid,nodev` (`ro` when asked), walking a
//! `subPath` without following symlinks (see `runtime::rootfs`).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use orch_api::pb;

use crate::runtime::BindMount;

/// Where the node keeps volumes, and what no `hostPath` may overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDirs {
    /// Local volumes: `<local_root>/<service>/<volume>/<slot>`.
    pub local_root: PathBuf,
    /// The agent's own directories (state, local volumes, PKI), besides orch's defaults.
    pub reserved: Vec<PathBuf>,
}

/// What one volume is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provision {
    EmptyDir { dir: PathBuf, memory: bool, size_bytes: Option<u64> },
    HostPath { path: PathBuf, kind: pb::HostPathType },
    Local { dir: PathBuf },
}

impl Provision {
    fn host_path(&self) -> &Path {
        match self {
            Provision::EmptyDir { dir, .. } | Provision::Local { dir } => dir,
            Provision::HostPath { path, .. } => path,
        }
    }
}

/// A replica's volumes: what to provision, what its container binds, which local
/// volume directories it must hold alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumePlan {
    pub provisions: Vec<Provision>,
    pub mounts: Vec<BindMount>,
    pub exclusive: Vec<PathBuf>,
}

/// Whether `path` overlaps one of orch's own directories; which one.
fn reserved_overlap(path: &Path, dirs: &VolumeDirs) -> Option<String> {
    let defaults = orch_api::manifest::RESERVED_HOST_PATHS.iter().map(PathBuf::from);
    dirs.reserved.iter().cloned().chain(defaults).find(|r| orch_api::manifest::paths_overlap(path, r)).map(|r| r.display().to_string())
}

/// The replica's volumes on this node. `empty_dirs` is the replica's emptyDir directory,
/// `memory_limit` the container's (a Memory emptyDir without a size limit gets it).
pub fn plan(record: &pb::Replica, spec: &pb::ServiceSpec, empty_dirs: &Path, memory_limit: Option<u64>, dirs: &VolumeDirs) -> Result<VolumePlan, String> {
    let mut plan = VolumePlan::default();
    let mut by_name: HashMap<&str, PathBuf> = HashMap::new();
    for volume in &spec.volumes {
        let provision = match &volume.source {
            Some(pb::volume::Source::EmptyDir(empty)) => Provision::EmptyDir {
                dir: empty_dirs.join(&volume.name),
                memory: empty.memory,
                size_bytes: Some(empty.size_limit_bytes).filter(|&s| s > 0).or(if empty.memory { memory_limit } else { None }),
            },
            Some(pb::volume::Source::HostPath(host)) => {
                let path = PathBuf::from(&host.path);
                if let Some(reserved) = reserved_overlap(&path, dirs) {
                    return Err(format!("volume {}: hostPath {} overlaps orch's own state ({reserved})", volume.name, host.path));
                }
                Provision::HostPath { path, kind: host.r#type() }
            }
            Some(pb::volume::Source::Local(_)) => {
                let slot = record.slot.ok_or_else(|| format!("volume {}: a local volume needs the replica's slot, and this replica has none", volume.name))?;
                let dir = dirs.local_root.join(&record.service).join(&volume.name).join(slot.to_string());
                plan.exclusive.push(dir.clone());
                Provision::Local { dir }
            }
            None => return Err(format!("volume {}: no source (a record from a newer controller?)", volume.name)),
        };
        by_name.insert(&volume.name, provision.host_path().to_owned());
        plan.provisions.push(provision);
    }
    for mount in &spec.volume_mounts {
        let source = by_name.get(mount.name.as_str()).ok_or_else(|| format!("volumeMount {}: no volume named {}", mount.mount_path, mount.name))?;
        plan.mounts.push(BindMount {
            source: source.clone(),
            target: mount.mount_path.clone(),
            read_only: mount.read_only,
            sub_path: Some(mount.sub_path.clone()).filter(|p| !p.is_empty()),
        });
    }
    Ok(plan)
}

/// Whether `dir` is a mount point (its device differs from its parent's).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(own), Some(Ok(parent))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata)) else { return false };
    own.dev() != parent.dev()
}

fn make_dir(dir: &Path, mode: u32) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("chmod {}: {e}", dir.display()))
}

/// Makes one volume exist on the node; idempotent (a tmpfs already mounted, as after an
/// agent restart, is kept with its contents). Blocking.
pub fn provision(provision: &Provision, dirs: &VolumeDirs) -> Result<(), String> {
    match provision {
        Provision::EmptyDir { dir, memory, size_bytes } => {
            make_dir(dir, 0o777)?;
            if *memory && !is_mount_point(dir) {
                let size = size_bytes.map_or(String::new(), |s| format!(",size={s}"));
                let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
                nix::mount::mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some(format!("mode=0777{size}").as_str()))
                    .map_err(|e| format!("mount tmpfs on {}: {e}", dir.display()))?;
            }
            Ok(())
        }
        Provision::Local { dir } => make_dir(dir, 0o777),
        Provision::HostPath { path, kind } => {
            match kind {
                pb::HostPathType::DirectoryOrCreate => make_dir(path, 0o755)?,
                pb::HostPathType::FileOrCreate if !path.exists() => {
                    std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("create {}: {e}", path.display()))?;
                }
                _ => {}
            }
            // Through symlinks, as the bind will go: the real path must not be orch's either.
            let real = std::fs::canonicalize(path).map_err(|e| format!("hostPath {}: {e}", path.display()))?;
            if let Some(reserved) = reserved_overlap(&real, dirs) {
                return Err(format!("hostPath {} is {}, which overlaps orch's own state ({reserved})", path.display(), real.display()));
            }
            let meta = std::fs::metadata(&real).map_err(|e| format!("hostPath {}: {e}", path.display()))?;
            match kind {
                pb::HostPathType::Directory | pb::HostPathType::DirectoryOrCreate if !meta.is_dir() => {
                    Err(format!("hostPath {} is not a directory (type Directory)", path.display()))
                }
                pb::HostPathType::File | pb::HostPathType::FileOrCreate if !meta.is_file() => {
                    Err(format!("hostPath {} is not a file (type File)", path.display()))
                }
                _ => Ok(()),
            }
        }
    }
}

/// Unmounts and removes a replica's emptyDir volumes (`<state>/empty-dirs/<replica>`).
/// Blocking.
pub fn release(empty_dirs: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(empty_dirs) else { return Ok(()) };
    for entry in entries.flatten() {
        let dir = entry.path();
        if is_mount_point(&dir) {
            nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).map_err(|e| format!("umount {}: {e}", dir.display()))?;
        }
    }
    std::fs::remove_dir_all(empty_dirs).map_err(|e| format!("remove {}: {e}", empty_dirs.display()))
}

/// [`release`] for every replica's emptyDir volumes under `root` (teardown).
pub fn release_all(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    entries.flatten().filter_map(|entry| release(&entry.path()).err()).collect()
}

/// Removes a deleted service's local volumes from this node. Blocking.
pub fn purge(local_root: &Path, service: &str) -> Result<bool, String> {
    let dir = local_root.join(service);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    }
}

/// Local volume directories held by the replica using them: a slot's replacement on the
/// same node waits until the replica it replaces is gone.
#[derive(Default)]
pub struct VolumeLocks {
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// Directories held until dropped.
pub type HeldVolumes = Vec<tokio::sync::OwnedMutexGuard<()>>;

impl VolumeLocks {
    fn lock_of(&self, dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(dir.to_owned()).or_default())
    }

    /// Takes every directory at once if none is held.
    pub fn try_hold(&self, dirs: &[PathBuf]) -> Option<HeldVolumes> {
        let mut sorted = dirs.to_vec();
        sorted.sort();
        sorted.iter().map(|dir| self.lock_of(dir).try_lock_owned().ok()).collect()
    }

    /// Waits for every directory, in one order (no two waiters deadlock).
    pub async fn hold(&self, dirs: &[PathBuf]) -> HeldVolumes {
        let mut sorted = dirs.to_vec();
        sorted.sort();
        let mut held = Vec::new();
        for dir in sorted {
            held.push(self.lock_of(&dir).lock_owned().await);
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> VolumeDirs {
        VolumeDirs { local_root: "/v".into(), reserved: vec!["/s".into()] }
    }

    fn volume(name: &str, source: pb::volume::Source) -> pb::Volume {
        pb::Volume { name: name.into(), source: Some(source) }
    }

    fn mount(name: &str, path: &str, read_only: bool, sub_path: &str) -> pb::VolumeMount {
        pb::VolumeMount { name: name.into(), mount_path: path.into(), read_only, sub_path: sub_path.into() }
    }

    #[test]
    fn each_volume_on_the_host() {
        let spec = pb::ServiceSpec {
            volumes: vec![
                volume("scratch", pb::volume::Source::EmptyDir(pb::EmptyDirVolume { memory: false, size_limit_bytes: 0 })),
                volume("fast", pb::volume::Source::EmptyDir(pb::EmptyDirVolume { memory: true, size_limit_bytes: 0 })),
                volume("data", pb::volume::Source::Local(pb::LocalVolume {})),
                volume("host", pb::volume::Source::HostPath(pb::HostPathVolume { path: "/srv/x".into(), r#type: pb::HostPathType::Directory.into() })),
            ],
            volume_mounts: vec![mount("data", "/data", false, "redis"), mount("host", "/x", true, "")],
            ..Default::default()
        };
        let record = pb::Replica { id: "db-1".into(), service: "db".into(), slot: Some(2), ..Default::default() };
        let plan = plan(&record, &spec, Path::new("/s/empty-dirs/db-1"), Some(64 << 20), &dirs()).expect("valid");
        assert_eq!(
            plan.provisions,
            [
                Provision::EmptyDir { dir: "/s/empty-dirs/db-1/scratch".into(), memory: false, size_bytes: None },
                Provision::EmptyDir { dir: "/s/empty-dirs/db-1/fast".into(), memory: true, size_bytes: Some(64 << 20) },
                Provision::Local { dir: "/v/db/data/2".into() },
                Provision::HostPath { path: "/srv/x".into(), kind: pb::HostPathType::Directory },
            ]
        );
        assert_eq!(plan.exclusive, [PathBuf::from("/v/db/data/2")]);
        assert_eq!(
            plan.mounts,
            [
                BindMount { source: "/v/db/data/2".into(), target: "/data".into(), read_only: false, sub_path: Some("redis".into()) },
                BindMount { source: "/srv/x".into(), target: "/x".into(), read_only: true, sub_path: None },
            ]
        );
    }

    #[test]
    fn refused_volumes() {
        let with = |volumes: Vec<pb::Volume>, slot: Option<u32>| {
            let spec = pb::ServiceSpec { volumes, ..Default::default() };
            plan(&pb::Replica { service: "db".into(), slot, ..Default::default() }, &spec, Path::new("/e"), None, &dirs())
        };
        let host = |path: &str| volume("h", pb::volume::Source::HostPath(pb::HostPathVolume { path: path.into(), r#type: 0 }));
        assert!(with(vec![host("/s/replicas")], None).is_err_and(|e| e.contains("overlaps orch's own state (/s)")));
        assert!(with(vec![host("/")], None).is_err_and(|e| e.contains("overlaps")), "the root holds orch's state too");
        assert!(with(vec![host("/etc/orch/pki")], None).is_err_and(|e| e.contains("/etc/orch")));
        assert!(with(vec![volume("d", pb::volume::Source::Local(pb::LocalVolume {}))], None).is_err_and(|e| e.contains("slot")));
        let missing = pb::ServiceSpec { volume_mounts: vec![mount("nope", "/x", false, "")], ..Default::default() };
        assert!(plan(&pb::Replica::default(), &missing, Path::new("/e"), None, &dirs()).is_err_and(|e| e.contains("no volume named nope")));
    }

    #[tokio::test]
    async fn one_holder_per_directory() {
        let locks = VolumeLocks::default();
        let dirs = [PathBuf::from("/v/db/data/0")];
        let held = locks.try_hold(&dirs).expect("free");
        assert!(locks.try_hold(&dirs).is_none(), "held by the first replica");
        assert!(locks.try_hold(&[PathBuf::from("/v/db/data/1")]).is_some(), "another slot is free");
        drop(held);
        assert!(locks.try_hold(&dirs).is_some(), "free again once released");
    }
}
