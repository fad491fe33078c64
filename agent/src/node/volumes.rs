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
//! - `config` / `secret`: each key (or each item) a file of the given mode (0444 for a
//!   Config, 0400 for a Secret by default, owned by the container's user) under
//!   `<run dir>/<replica>/<volume>` — the run dir a tmpfs the agent mounts (0700), so a
//!   Secret's values are only ever in memory on the node — mounted read-only.
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
    /// A tmpfs for Config and Secret files: `<run_root>/<replica>/<volume>/…`.
    pub run_root: PathBuf,
}

/// A file a Config or Secret volume holds: its path in the volume, content, mode.
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for VolumeFile {
    // A Secret's value never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeFile({}, {} bytes, {:o})", self.path, self.content.len(), self.mode)
    }
}

/// What one volume is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provision {
    EmptyDir {
        dir: PathBuf,
        memory: bool,
        size_bytes: Option<u64>,
    },
    HostPath {
        path: PathBuf,
        kind: pb::HostPathType,
    },
    Local {
        dir: PathBuf,
    },
    /// A Config's or Secret's files, owned by `owner` (uid, gid on the node).
    Files {
        dir: PathBuf,
        files: Vec<VolumeFile>,
        owner: (u32, u32),
    },
}

impl Provision {
    fn host_path(&self) -> &Path {
        match self {
            Provision::EmptyDir { dir, .. } | Provision::Local { dir } | Provision::Files { dir, .. } => dir,
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

/// Every path a hostPath may not overlap: the agent's own directories and orch's defaults.
fn forbidden(dirs: &VolumeDirs) -> Vec<PathBuf> {
    let defaults = orch_api::manifest::RESERVED_HOST_PATHS.iter().chain(orch_api::manifest::KERNEL_HOST_PATHS.iter()).map(PathBuf::from);
    dirs.reserved.iter().cloned().chain(defaults).collect()
}

/// Whether `path` overlaps one of orch's own directories; which one.
fn reserved_overlap(path: &Path, dirs: &VolumeDirs) -> Option<String> {
    let defaults = orch_api::manifest::RESERVED_HOST_PATHS.iter().map(PathBuf::from);
    dirs.reserved.iter().cloned().chain(defaults).find(|r| orch_api::manifest::paths_overlap(path, r)).map(|r| r.display().to_string())
}

/// What a replica's volumes depend on besides its spec: the container's memory limit (a
/// Memory emptyDir without a size limit gets it), who owns Config and Secret files on
/// the node, and the Configs and Secrets the node was sent.
pub struct PlanInputs<'a> {
    pub memory_limit: Option<u64>,
    pub owner: (u32, u32),
    pub configs: &'a dyn Fn(pb::ConfigKind, &str) -> Option<pb::ConfigData>,
}

/// The files of a Config or Secret volume: every key, or the items named.
fn config_files(kind: pb::ConfigKind, source: &pb::ConfigVolume, inputs: &PlanInputs<'_>) -> Result<Vec<VolumeFile>, String> {
    let what = orch_api::manifest::object_name(kind, &source.name);
    let data = (inputs.configs)(kind, &source.name)
        .ok_or_else(|| format!("{what} not found (apply it, or create it with `orch create {}`)", orch_api::manifest::kind_name(kind)))?;
    let default_mode = source.default_mode.unwrap_or(if kind == pb::ConfigKind::Secret { 0o400 } else { 0o444 });
    if source.items.is_empty() {
        let mut files: Vec<VolumeFile> = data.data.into_iter().map(|(key, content)| VolumeFile { path: key, content, mode: default_mode }).collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        return Ok(files);
    }
    source
        .items
        .iter()
        .map(|item| {
            let content = data.data.get(&item.key).ok_or_else(|| format!("{what} has no key {:?}", item.key))?;
            Ok(VolumeFile { path: item.path.clone(), content: content.clone(), mode: item.mode.unwrap_or(default_mode) })
        })
        .collect()
}

/// The replica's volumes on this node. `empty_dirs` is the replica's emptyDir directory.
pub fn plan(record: &pb::Replica, spec: &pb::ServiceSpec, empty_dirs: &Path, inputs: &PlanInputs<'_>, dirs: &VolumeDirs) -> Result<VolumePlan, String> {
    let memory_limit = inputs.memory_limit;
    let mut plan = VolumePlan::default();
    let mut by_name: HashMap<&str, PathBuf> = HashMap::new();
    let mut read_only: Vec<&str> = Vec::new();
    let mut host_paths: Vec<&str> = Vec::new();
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
                host_paths.push(&volume.name);
                Provision::HostPath { path, kind: host.r#type() }
            }
            Some(pb::volume::Source::Local(_)) => {
                let slot = record.slot.ok_or_else(|| format!("volume {}: a local volume needs the replica's slot, and this replica has none", volume.name))?;
                let dir = local_dir(dirs, &record.service, &volume.name, slot);
                plan.exclusive.push(dir.clone());
                Provision::Local { dir }
            }
            Some(pb::volume::Source::Config(source)) | Some(pb::volume::Source::Secret(source)) => {
                let kind = if matches!(volume.source, Some(pb::volume::Source::Secret(_))) { pb::ConfigKind::Secret } else { pb::ConfigKind::Config };
                read_only.push(&volume.name);
                let files = config_files(kind, source, inputs).map_err(|e| format!("volume {}: {e}", volume.name))?;
                Provision::Files { dir: dirs.run_root.join(&record.id).join(&volume.name), files, owner: inputs.owner }
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
            // A Config's or Secret's files are the controller's: always read-only.
            read_only: mount.read_only || read_only.contains(&mount.name.as_str()),
            sub_path: Some(mount.sub_path.clone()).filter(|p| !p.is_empty()),
            forbidden: if host_paths.contains(&mount.name.as_str()) { forbidden(dirs) } else { Vec::new() },
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

/// Makes `dir` exist, 0700 (what orch keeps for containers is for no one else on the node).
fn make_private(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| format!("chmod {}: {e}", dir.display()))
}

/// Makes one volume exist on the node; idempotent (a tmpfs already mounted, as after an
/// agent restart, is kept with its contents). Blocking.
pub fn provision(provision: &Provision, dirs: &VolumeDirs) -> Result<(), String> {
    match provision {
        Provision::EmptyDir { dir, memory, size_bytes } => {
            // `<state>/empty-dirs`: no local user reaches a replica's 0777 directory.
            if let Some(root) = dir.parent().and_then(Path::parent) {
                make_private(root)?;
            }
            make_dir(dir, 0o777)?;
            if *memory && !is_mount_point(dir) {
                let size = size_bytes.map_or(String::new(), |s| format!(",size={s}"));
                let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
                nix::mount::mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some(format!("mode=0777{size}").as_str()))
                    .map_err(|e| format!("mount tmpfs on {}: {e}", dir.display()))?;
            }
            Ok(())
        }
        Provision::Local { dir } => {
            // The volumes directory: no local user reaches a slot's 0777 directory.
            make_private(&dirs.local_root)?;
            make_dir(dir, 0o777)
        }
        Provision::Files { dir, files, owner } => write_files(dir, files, *owner),
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

/// Writes a Config's or Secret's files (again after an agent restart: a running
/// container has the directory bound, so it is kept and each file replaced by rename),
/// owned by the container's user, under a directory it may only read; removes what the
/// volume no longer holds.
fn write_files(dir: &Path, files: &[VolumeFile], (uid, gid): (u32, u32)) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    make_dir(dir, 0o755)?;
    for file in files {
        let path = dir.join(&file.path);
        let parent = path.parent().unwrap_or(dir);
        make_dir(parent, 0o755)?;
        // '~' is in no key or item path, so the temporary file is no one's file.
        let temporary = parent.join(format!("~{}.tmp", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
        let _ = std::fs::remove_file(&temporary);
        let mut handle = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|e| format!("create {}: {e}", temporary.display()))?;
        handle.write_all(&file.content).map_err(|e| format!("write {}: {e}", temporary.display()))?;
        std::os::unix::fs::fchown(&handle, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", temporary.display()))?;
        handle.set_permissions(std::fs::Permissions::from_mode(file.mode)).map_err(|e| format!("chmod {}: {e}", temporary.display()))?;
        std::fs::rename(&temporary, &path).map_err(|e| format!("rename {} to {}: {e}", temporary.display(), path.display()))?;
    }
    // What is neither a listed file nor a directory on the way to one goes (a key removed
    // from the Config, or an item path changed), at any depth.
    let listed: std::collections::HashSet<PathBuf> = files.iter().map(|f| dir.join(&f.path)).collect();
    let on_the_way: std::collections::HashSet<PathBuf> = listed.iter().flat_map(|p| p.ancestors().skip(1).map(Path::to_path_buf)).collect();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| format!("read {}: {e}", current.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && on_the_way.contains(&path) {
                pending.push(path);
            } else if is_dir || !listed.contains(&path) {
                let removed = if is_dir { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                removed.map_err(|e| format!("remove {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Mounts the tmpfs that holds Config and Secret files (0700, `nosuid,nodev`), unless it
/// is mounted already (a restarted agent keeps its replicas' files); true when it
/// mounted it now.
pub fn mount_run_root(run_root: &Path) -> Result<bool, String> {
    std::fs::create_dir_all(run_root).map_err(|e| format!("mkdir {}: {e}", run_root.display()))?;
    if is_mount_point(run_root) {
        return Ok(false);
    }
    let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
    nix::mount::mount(Some("tmpfs"), run_root, Some("tmpfs"), flags, Some("mode=0700,size=64m"))
        .map_err(|e| format!("mount tmpfs on {}: {e}", run_root.display()))?;
    Ok(true)
}

/// Unmounts and removes the run tmpfs (teardown).
pub fn unmount_run_root(run_root: &Path) -> Result<(), String> {
    if is_mount_point(run_root) {
        nix::mount::umount2(run_root, nix::mount::MntFlags::MNT_DETACH).map_err(|e| format!("umount {}: {e}", run_root.display()))?;
    }
    match std::fs::remove_dir_all(run_root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("remove {}: {e}", run_root.display())),
        _ => Ok(()),
    }
}

/// The run tmpfs of the agent on `bridge` (one per agent on a machine).
pub fn run_root_for(bridge: &str) -> PathBuf {
    Path::new("/run/orch").join(bridge)
}

/// The on-disk emptyDirs with a size limit: `(volume, directory, limit)`.
pub fn size_limited(plan: &VolumePlan, names: &[pb::Volume]) -> Vec<(String, PathBuf, u64)> {
    plan.provisions
        .iter()
        .zip(names)
        .filter_map(|(provision, volume)| match provision {
            Provision::EmptyDir { dir, memory: false, size_bytes: Some(limit) } => Some((volume.name.clone(), dir.clone(), *limit)),
            _ => None,
        })
        .collect()
}

/// The disk space a directory tree takes, as du counts it (allocated blocks, symlinks
/// not followed) but with every entry at least one 4 KiB block (the inode and entry it
/// costs: a million empty files are not free). Walked without recursion (a container
/// may nest directories as deep as it likes) and given up once over `stop_above`, so a
/// check costs at most `stop_above / 4 KiB` entries. A directory that cannot be read (a
/// tree nested past PATH_MAX, say) is an error: what cannot be measured is not under
/// the limit. Blocking.
pub fn disk_usage(dir: &Path, stop_above: u64) -> Result<u64, String> {
    use std::os::unix::fs::MetadataExt;
    const MIN_ENTRY: u64 = 4096;
    let mut used = 0u64;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Removed meanwhile by the container: nothing to count.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("read a directory {} levels down: {e}", dir.components().count())),
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            used = used.saturating_add((meta.blocks() * 512).max(MIN_ENTRY));
            if used > stop_above {
                return Ok(used);
            }
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(used)
}

/// Empties an emptyDir for the container's next start (after an eviction). Blocking.
pub fn empty(dir: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    make_dir(dir, 0o777)
}

/// Unmounts and removes a replica's emptyDir volumes (`<state>/empty-dirs/<replica>`).
/// Blocking.
pub fn release(empty_dirs: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(empty_dirs) else { return Ok(()) };
    // Every tmpfs is tried; the directories go only once none is mounted any more.
    let failed: Vec<String> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|dir| is_mount_point(dir))
        .filter_map(|dir| nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH).err().map(|e| format!("umount {}: {e}", dir.display())))
        .collect();
    if !failed.is_empty() {
        return Err(failed.join("; "));
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

/// The slot directories of `service`'s local volumes on this node
/// (`<local_root>/<service>/<volume>/<slot>`, real directories only). Blocking.
pub fn slot_dirs(local_root: &Path, service: &str) -> Vec<PathBuf> {
    let subdirs = |dir: &Path| -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect()
    };
    subdirs(&local_root.join(service)).iter().flat_map(|volume| subdirs(volume)).collect()
}

/// Where slot `slot`'s `volume` of `service` lives on this node.
pub fn local_dir(dirs: &VolumeDirs, service: &str, volume: &str, slot: u32) -> PathBuf {
    dirs.local_root.join(service).join(volume).join(slot.to_string())
}

/// The local volume directories of `record`'s slot (its plan's `exclusive`), known
/// before anything is resolved: a supervisor holds them from its first moment.
pub fn local_dirs(record: &pb::Replica, dirs: &VolumeDirs) -> Vec<PathBuf> {
    let (Some(slot), Some(spec)) = (record.slot, record.spec.as_ref()) else { return Vec::new() };
    spec.volumes.iter().filter(|v| matches!(v.source, Some(pb::volume::Source::Local(_)))).map(|v| local_dir(dirs, &record.service, &v.name, slot)).collect()
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

    #[test]
    fn files_are_rewritten_in_place_and_what_is_no_longer_listed_goes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let volume = dir.path().join("v");
        let file = |path: &str, content: &str| VolumeFile { path: path.into(), content: content.as_bytes().to_vec(), mode: 0o444 };
        let me = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        write_files(&volume, &[file("a/x", "1"), file("a/y", "2"), file("top", "3")], me).expect("write");
        let held = std::fs::File::open(&volume).expect("a running container's bind");
        write_files(&volume, &[file("a/x", "one")], me).expect("rewrite");
        assert_eq!(std::fs::read_to_string(volume.join("a/x")).expect("kept"), "one");
        assert!(!volume.join("a/y").exists() && !volume.join("top").exists(), "a removed key stays");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(held.metadata().expect("stat").ino(), std::fs::metadata(&volume).expect("stat").ino(), "the directory itself was kept");
    }

    #[test]
    fn disk_usage_counts_every_entry_stops_early_and_refuses_what_it_cannot_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("big"), vec![1u8; 64 << 10]).expect("write");
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("empty-{i}")), b"").expect("write");
        }
        let used = disk_usage(dir.path(), u64::MAX).expect("measured");
        assert!(used >= (64 << 10) + 10 * 4096, "{used}");
        assert!(disk_usage(dir.path(), 8192).expect("measured") <= (64 << 10) + 8192, "given up once over");
        // Deeper than a path may be: no stack overflow, and an error rather than zero.
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::{mkdirat, Mode};
        let mut current = std::fs::File::open(dir.path()).expect("open");
        for _ in 0..2100 {
            mkdirat(&current, "d", Mode::from_bits_truncate(0o755)).expect("mkdirat");
            current = std::fs::File::from(openat(&current, "d", OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).expect("openat"));
        }
        assert!(disk_usage(dir.path(), u64::MAX).is_err(), "a tree past PATH_MAX is not measured as small");
    }

    fn dirs() -> VolumeDirs {
        VolumeDirs { local_root: "/v".into(), reserved: vec!["/s".into()], run_root: "/r".into() }
    }

    fn no_configs(_: pb::ConfigKind, _: &str) -> Option<pb::ConfigData> {
        None
    }

    fn inputs(memory_limit: Option<u64>) -> PlanInputs<'static> {
        PlanInputs { memory_limit, owner: (0, 0), configs: &no_configs }
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
        let record = pb::Replica { id: "db-1".into(), service: "db".into(), slot: Some(2), spec: Some(spec.clone()), ..Default::default() };
        let plan = plan(&record, &spec, Path::new("/s/empty-dirs/db-1"), &inputs(Some(64 << 20)), &dirs()).expect("valid");
        assert_eq!(local_dirs(&record, &dirs()), plan.exclusive, "held from the supervisor's start");
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
                BindMount { source: "/v/db/data/2".into(), target: "/data".into(), read_only: false, sub_path: Some("redis".into()), forbidden: vec![] },
                BindMount {
                    source: "/srv/x".into(),
                    target: "/x".into(),
                    read_only: true,
                    sub_path: None,
                    forbidden: ["/s", "/var/lib/orch", "/etc/orch", "/run/orch", "/proc", "/sys", "/dev"].map(PathBuf::from).to_vec(),
                },
            ]
        );
    }

    #[test]
    fn refused_volumes() {
        let with = |volumes: Vec<pb::Volume>, slot: Option<u32>| {
            let spec = pb::ServiceSpec { volumes, ..Default::default() };
            plan(&pb::Replica { service: "db".into(), slot, ..Default::default() }, &spec, Path::new("/e"), &inputs(None), &dirs())
        };
        let host = |path: &str| volume("h", pb::volume::Source::HostPath(pb::HostPathVolume { path: path.into(), r#type: 0 }));
        assert!(with(vec![host("/s/replicas")], None).is_err_and(|e| e.contains("overlaps orch's own state (/s)")));
        assert!(with(vec![host("/")], None).is_err_and(|e| e.contains("overlaps")), "the root holds orch's state too");
        assert!(with(vec![host("/etc/orch/pki")], None).is_err_and(|e| e.contains("/etc/orch")));
        assert!(with(vec![volume("d", pb::volume::Source::Local(pb::LocalVolume {}))], None).is_err_and(|e| e.contains("slot")));
        let missing = pb::ServiceSpec { volume_mounts: vec![mount("nope", "/x", false, "")], ..Default::default() };
        assert!(plan(&pb::Replica::default(), &missing, Path::new("/e"), &inputs(None), &dirs()).is_err_and(|e| e.contains("no volume named nope")));
    }

    #[test]
    fn configs_and_secrets_as_read_only_files() {
        let data = |pairs: &[(&str, &str)]| pb::ConfigData { data: pairs.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect() };
        let configs = |kind: pb::ConfigKind, name: &str| match (kind, name) {
            (pb::ConfigKind::Config, "web") => Some(data(&[("nginx.conf", "server {}"), ("mime.types", "x")])),
            (pb::ConfigKind::Secret, "db") => Some(data(&[("password", "hunter2")])),
            _ => None,
        };
        let inputs = PlanInputs { memory_limit: None, owner: (33, 34), configs: &configs };
        let source = |name: &str, items: Vec<pb::KeyToPath>| pb::ConfigVolume { name: name.into(), items, default_mode: None };
        let spec = pb::ServiceSpec {
            volumes: vec![
                volume("conf", pb::volume::Source::Config(source("web", vec![]))),
                volume(
                    "pw",
                    pb::volume::Source::Secret(source("db", vec![pb::KeyToPath { key: "password".into(), path: "db/pass".into(), mode: Some(0o440) }])),
                ),
            ],
            volume_mounts: vec![mount("conf", "/etc/nginx", false, ""), mount("pw", "/run/pw", false, "")],
            ..Default::default()
        };
        let record = pb::Replica { id: "web-1".into(), service: "web".into(), ..Default::default() };
        let plan = plan(&record, &spec, Path::new("/e"), &inputs, &dirs()).expect("valid");
        let files = |content: &[(&str, &str, u32)]| {
            content.iter().map(|(p, c, m)| VolumeFile { path: (*p).into(), content: c.as_bytes().to_vec(), mode: *m }).collect::<Vec<_>>()
        };
        assert_eq!(
            plan.provisions,
            [
                Provision::Files {
                    dir: "/r/web-1/conf".into(),
                    files: files(&[("mime.types", "x", 0o444), ("nginx.conf", "server {}", 0o444)]),
                    owner: (33, 34)
                },
                Provision::Files { dir: "/r/web-1/pw".into(), files: files(&[("db/pass", "hunter2", 0o440)]), owner: (33, 34) },
            ]
        );
        assert!(plan.mounts.iter().all(|m| m.read_only), "config and secret files are read-only: {:?}", plan.mounts);
        assert!(!format!("{:?}", plan.provisions).contains("hunter2"), "a secret never reaches a debug line");
        let missing = pb::ServiceSpec { volumes: vec![volume("x", pb::volume::Source::Secret(source("nope", vec![])))], ..Default::default() };
        assert!(super::plan(&record, &missing, Path::new("/e"), &inputs, &dirs()).is_err_and(|e| e.contains("secret/nope not found")));
        let no_key = pb::ServiceSpec {
            volumes: vec![volume("x", pb::volume::Source::Config(source("web", vec![pb::KeyToPath { key: "k".into(), path: "k".into(), mode: None }])))],
            ..Default::default()
        };
        assert!(super::plan(&record, &no_key, Path::new("/e"), &inputs, &dirs()).is_err_and(|e| e.contains("config/web has no key \"k\"")));
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
