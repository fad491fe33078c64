//! The agent side of a container: start it through the shim, then wait, signal, stop,
//! read stats, re-adopt after an agent restart, and remove every trace of it.

use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use super::config::{container_env, ContainerSpec, IdRange, InitConfig, Stdio};
use super::idmap;
use super::pidfd::PidFd;
use super::seccomp::{self, PackedProgram};
use super::state::{now_unix_ms, read_json, write_json, ContainerDirs, ContainerState, ExitRecord, MERGED, UPPER, WORK};
use super::sync::{receive, send, SyncMessage};
use super::{procfs, RuntimeError, BUILD_ID, CODE_RUNTIME, INIT_BINARY, INIT_NAME, INIT_SUBCOMMAND};
use crate::cgroups::{CgroupLayout, CgroupStats, ContainerCgroup, Limits, DEFAULT_DEVICES};

/// How long the start handshake may take before the start is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Per-container directories and state files live under `<state_dir>/containers/`.
    pub state_dir: PathBuf,
    /// Cgroups are created as `<cgroup_parent>/<id>` in each hierarchy.
    pub cgroup_parent: String,
    /// The binary that runs the shim when no `orch-init` lies beside it (and the one an
    /// `orch-init` of another build hands over to): normally the agent itself.
    pub init_exe: PathBuf,
}

pub struct Runtime {
    config: RuntimeConfig,
    cgroups: CgroupLayout,
    shim: ShimCommand,
}

/// How the runtime starts a container's shim: `orch-init` when it lies beside the
/// helper binary (told this build's identity, and the helper's name to hand over to
/// when it is from another build), else the helper itself.
#[derive(Debug, Clone)]
struct ShimCommand {
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
}

impl ShimCommand {
    fn for_helper(helper: &Path) -> ShimCommand {
        let small = helper.with_file_name(INIT_BINARY);
        if let Some(name) = helper.file_name().filter(|_| small != helper && is_root_only_executable(&small)) {
            let args = [INIT_SUBCOMMAND.as_ref(), "--build".as_ref(), BUILD_ID.as_ref(), "--fallback".as_ref(), name];
            return ShimCommand { exe: small, args: args.iter().map(|a| a.to_os_string()).collect() };
        }
        ShimCommand { exe: helper.to_owned(), args: vec![INIT_SUBCOMMAND.into()] }
    }
}

/// An executable regular file that only root may change, as the agent's own binary must be.
fn is_root_only_executable(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.uid() == 0 && meta.mode() & 0o022 == 0 && meta.mode() & 0o100 != 0)
}

/// Wires a starting container to a network. Called once the container's network
/// namespace exists (its init is `pid`) and before its command runs.
#[async_trait::async_trait]
pub trait ContainerNetwork: Send + Sync {
    async fn attach(&self, container: &str, pid: i32) -> Result<(), String>;
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerExit {
    /// The exit code, or 128 + N when killed by signal N.
    pub code: i32,
    pub signal: Option<i32>,
    /// The kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
    pub finished_unix_ms: i64,
}

pub struct Container {
    id: String,
    dirs: ContainerDirs,
    cgroup: Box<dyn ContainerCgroup>,
    /// `None` when the shim was already gone at re-adoption.
    shim: Option<PidFd>,
    /// The agent's own child (true) or a re-adopted one (false): only a child can be
    /// reaped; an adopted container's end is read from the shim's exit record.
    is_child: bool,
    init: Option<PidFd>,
    state: ContainerState,
    exit: Mutex<Option<ContainerExit>>,
}

impl Runtime {
    /// Detects this machine's cgroup layout and makes the state directory root's alone
    /// (0700: container directories, layers and logs below it are out of every other
    /// host user's reach).
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        let cgroups = CgroupLayout::detect()?;
        private_dir_all(&config.state_dir)?;
        std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700)).map_err(RuntimeError::io("cannot chmod", &config.state_dir))?;
        let shim = ShimCommand::for_helper(&config.init_exe);
        Ok(Runtime { config, cgroups, shim })
    }

    /// The binary each container's shim runs: `orch-init`, or the helper binary.
    pub fn shim_exe(&self) -> &Path {
        &self.shim.exe
    }

    pub fn cgroup_layout(&self) -> &CgroupLayout {
        &self.cgroups
    }

    /// The cgroup of container `id`, below the configured parent.
    pub(crate) fn cgroup_name(&self, id: &str) -> String {
        format!("{}/{id}", self.config.cgroup_parent)
    }

    /// Starts a container: returns once its command has been exec'd, or with the
    /// reason it could not be, having removed everything it made.
    pub async fn start(&self, spec: &ContainerSpec) -> Result<Container, RuntimeError> {
        self.start_with_network(spec, None).await
    }

    /// [`Runtime::start`], wiring the container with `network` before its command runs.
    pub async fn start_with_network(&self, spec: &ContainerSpec, network: Option<&dyn ContainerNetwork>) -> Result<Container, RuntimeError> {
        check_spec(spec)?;
        let dirs = ContainerDirs::new(&self.config.state_dir, &spec.id);
        let containers = dirs.root.parent().map(Path::to_owned).unwrap_or_default();
        private_dir_all(&containers)?;
        match std::fs::DirBuilder::new().mode(0o700).create(&dirs.root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(RuntimeError::NameInUse(spec.id.clone())),
            Err(e) => return Err(RuntimeError::Io { what: "cannot create", path: dirs.root.clone(), source: e }),
        }
        let cgroup_name = self.cgroup_name(&spec.id);
        let cgroup = match self.cgroups.container(&cgroup_name) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dirs.root);
                return Err(e.into());
            }
        };
        match self.start_in(spec, &dirs, cgroup.as_ref(), &cgroup_name, network).await {
            Ok((shim, init, state)) => {
                Ok(Container { id: spec.id.clone(), dirs, cgroup, shim: Some(shim), is_child: true, init: Some(init), state, exit: Mutex::new(None) })
            }
            Err(e) => {
                let _ = cgroup.destroy();
                let _ = remove_container_dir(&dirs);
                Err(e)
            }
        }
    }

    async fn start_in(
        &self,
        spec: &ContainerSpec,
        dirs: &ContainerDirs,
        cgroup: &dyn ContainerCgroup,
        cgroup_name: &str,
        network: Option<&dyn ContainerNetwork>,
    ) -> Result<(PidFd, PidFd, ContainerState), RuntimeError> {
        let began = std::time::Instant::now();
        for dir in [dirs.upper(), dirs.work(), dirs.merged()] {
            std::fs::create_dir(&dir).map_err(RuntimeError::io("cannot create", &dir))?;
        }
        // A system container's upper layer is its root volume's, kept across runs: the
        // mode of its top becomes the container's `/`.
        let (upper, work) = match &spec.system {
            None => (PathBuf::from(UPPER), PathBuf::from(WORK)),
            Some(system) => {
                let (upper, work) = (system.dir.join(UPPER), system.dir.join(WORK));
                for (dir, mode) in [(&upper, 0o755), (&work, 0o700)] {
                    if !dir.is_dir() {
                        std::fs::DirBuilder::new().mode(mode).create(dir).map_err(RuntimeError::io("cannot create", dir))?;
                    }
                }
                (upper, work)
            }
        };
        // With a user namespace the container reads its layers through idmapped mounts
        // (root-owned files stay root's inside) and writes an upper layer owned by its
        // mapped root: the per-container chown the runtime needs.
        let layers = match spec.user_namespace {
            None => spec.layers.clone(),
            Some(range) => {
                // The container's directory belongs to its mapped root (group root, for
                // the shim, which keeps the host's uid 0 but no capability over it):
                // the init reaches everything below it through its working directory,
                // and no other host user reaches anything.
                let owner = Some(nix::unistd::Uid::from_raw(range.host_id));
                nix::unistd::chown(&dirs.root, owner, Some(nix::unistd::Gid::from_raw(0))).map_err(RuntimeError::sys("chown of the container directory"))?;
                std::fs::set_permissions(&dirs.root, std::fs::Permissions::from_mode(0o770)).map_err(RuntimeError::io("cannot chmod", &dirs.root))?;
                let group = Some(nix::unistd::Gid::from_raw(range.host_id));
                for dir in [dirs.upper(), dirs.work()] {
                    nix::unistd::chown(&dir, owner, group).map_err(RuntimeError::sys("chown of the upper layer"))?;
                }
                let mut views = Vec::with_capacity(spec.layers.len());
                for i in 0..spec.layers.len() {
                    let view = dirs.idmapped_layer(i);
                    std::fs::create_dir_all(&view).map_err(RuntimeError::io("cannot create", &view))?;
                    views.push(view.strip_prefix(&dirs.root).map(Path::to_owned).unwrap_or(view));
                }
                views
            }
        };
        // Every container gets the device allowlist, whatever its caller asked for.
        // A system container's init (systemd) manages a cgroup of its own.
        let limits = Limits { devices: Some(DEFAULT_DEVICES.to_vec()), nested_cgroups: spec.system.is_some(), ..spec.limits.clone() };
        cgroup.create(&limits)?;
        let cgroup_mounts = match &spec.system {
            None => Vec::new(),
            Some(_) => {
                let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(RuntimeError::io("cannot read", "/proc/self/mountinfo"))?;
                crate::cgroups::namespaced_mounts(&mountinfo, &cgroup.paths())
            }
        };
        let hostname = spec.hostname.clone().unwrap_or_else(|| spec.id.clone());
        let init_config = InitConfig {
            id: spec.id.clone(),
            hostname: hostname.clone(),
            dir: dirs.root.clone(),
            layers,
            upper,
            work,
            merged: PathBuf::from(MERGED),
            args: spec.args.clone(),
            env: container_env(&spec.env, &hostname),
            cwd: spec.cwd.clone().unwrap_or_else(|| "/".to_owned()),
            security: spec.security.clone(),
            // Compiled below, while the shim starts.
            seccomp_filters: Vec::new(),
            exit_status_path: dirs.exit(),
            user_namespace: spec.user_namespace.is_some(),
            user: spec.user.clone(),
            mounts: spec.mounts.clone(),
            log: match &spec.stdio {
                Stdio::Log(settings) => Some(settings.clone()),
                Stdio::Inherit => None,
            },
            system: spec.system.is_some(),
            cgroup_mounts,
        };

        let (mut sync, child_end) = UnixStream::pair().map_err(RuntimeError::io("cannot create a socket pair", ""))?;
        let mut command = std::process::Command::new(&self.shim.exe);
        // The sync socket is the shim's standard input: no pre-exec hook, so std spawns
        // with posix_spawn instead of forking this multi-threaded process.
        command.args(&self.shim.args).env_clear().stdin(OwnedFd::from(child_end));
        // The container's PID 1 (forked from the shim) shows this name in /proc/1/cmdline,
        // not the agent's path on the host.
        std::os::unix::process::CommandExt::arg0(&mut command, INIT_NAME);
        match &spec.stdio {
            Stdio::Inherit => {}
            Stdio::Log(settings) => {
                // The shim's own: what it says before it reads its config lands there too.
                let path = &settings.path;
                let log =
                    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(RuntimeError::io("cannot open the log file", path))?;
                let log_err = log.try_clone().map_err(RuntimeError::io("cannot open the log file", path))?;
                command.stdout(log).stderr(log_err);
            }
        }
        let cgroup_made = began.elapsed();
        let child = command.spawn().map_err(|source| RuntimeError::Spawn { exe: self.shim.exe.clone(), source })?;
        // The command's copy of the socket went to the shim; ours closed with it.
        drop(command);
        let shim_pid = i32::try_from(child.id()).map_err(|_| RuntimeError::Protocol("shim PID out of range".into()))?;
        // The shim is our unreaped child: its PID cannot be reused before we reap it.
        let shim = PidFd::open(shim_pid).map_err(RuntimeError::sys("pidfd_open"))?;

        let user_namespace = spec.user_namespace.map(|range| (range, spec.layers.clone(), dirs.clone()));
        let mut init_config = init_config;
        // Until the shim names the init: it joins its cgroup while it makes its namespaces.
        let handshake = tokio::task::spawn_blocking(move || -> Result<(UnixStream, i32, bool), RuntimeError> {
            init_config.seccomp_filters = compile_filters(&init_config.security)?;
            sync.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(RuntimeError::io("sync socket", ""))?;
            send(&mut sync, &SyncMessage::Config(init_config)).map_err(RuntimeError::io("cannot send the config to the shim", ""))?;
            let mut unshared = false;
            loop {
                match receive(&mut sync) {
                    Ok(Some(SyncMessage::UsernsCreated)) => {
                        let Some((range, layers, dirs)) = &user_namespace else {
                            return Err(RuntimeError::Protocol("the shim made a user namespace nobody asked for".into()));
                        };
                        map_user_namespace(shim_pid, *range, layers, dirs)?;
                        send(&mut sync, &SyncMessage::IdsMapped).map_err(RuntimeError::io("cannot answer the shim", ""))?;
                    }
                    Ok(Some(SyncMessage::InitPid { pid })) => return Ok((sync, pid, unshared)),
                    Ok(Some(SyncMessage::Unshared)) => unshared = true,
                    other => return Err(unexpected(other, "during start")),
                }
            }
        });
        let (mut sync, init_pid, unshared) = match join(handshake).await {
            Ok(handshake) => handshake,
            Err(e) => {
                unmount_idmapped_layers(dirs);
                return Err(abandon(&shim, e).await);
            }
        };
        // The shim names its child as soon as it forks, so the init may already have
        // failed (and said why on the socket): that reason, rather than ours, is the
        // start's error. A PID that is no longer the shim's child is not moved anywhere.
        let init = match PidFd::open(init_pid) {
            Ok(init) if procfs::parent_pid(init_pid) == Some(shim_pid) => init,
            Ok(_) => {
                unmount_idmapped_layers(dirs);
                let gone =
                    RuntimeError::Start { message: format!("the container init (PID {init_pid}) ended before it joined its cgroup"), code: CODE_RUNTIME };
                return Err(abandon(&shim, reason_of(sync, gone).await).await);
            }
            Err(errno) => {
                unmount_idmapped_layers(dirs);
                return Err(abandon(&shim, reason_of(sync, RuntimeError::sys("pidfd_open of the container init")(errno)).await).await);
            }
        };
        if let Err(e) = cgroup.add_process(init_pid) {
            unmount_idmapped_layers(dirs);
            return Err(abandon(&shim, reason_of(sync, e.into()).await).await);
        }
        // The network, and the go, need the init's namespaces made.
        if !unshared {
            let made = tokio::task::spawn_blocking(move || await_unshared(&mut sync).map(|()| sync));
            sync = match join(made).await {
                Ok(sync) => sync,
                Err(e) => {
                    unmount_idmapped_layers(dirs);
                    return Err(abandon(&shim, e).await);
                }
            };
        }
        let namespaced = began.elapsed();
        if let Some(network) = network {
            if let Err(message) = network.attach(&spec.id, init_pid).await {
                unmount_idmapped_layers(dirs);
                return Err(abandon(&shim, RuntimeError::Start { message: format!("network: {message}"), code: CODE_RUNTIME }).await);
            }
        }
        let wired = began.elapsed();
        let started = tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
            send(&mut sync, &SyncMessage::Go).map_err(RuntimeError::io("cannot signal the container init", ""))?;
            match receive(&mut sync) {
                Ok(None) => Ok(()),
                other => Err(unexpected(other, "after go")),
            }
        });
        let started = join(started).await;
        // The init copied the idmapped layers into its own mount namespace (or failed):
        // the agent's copies go, so nothing stays mounted on the host.
        if spec.user_namespace.is_some() {
            unmount_idmapped_layers(dirs);
        }
        if let Err(e) = started {
            return Err(abandon(&shim, e).await);
        }
        let state = ContainerState {
            id: spec.id.clone(),
            shim_pid,
            shim_start_ticks: procfs::start_ticks(shim_pid).unwrap_or_default(),
            init_pid,
            init_start_ticks: procfs::start_ticks(init_pid).unwrap_or_default(),
            cgroup: cgroup_name.to_owned(),
            created_unix_ms: now_unix_ms(),
            image: spec.image.clone(),
            stop_signal: Some(spec.stop_signal),
        };
        if let Err(e) = write_json(&dirs.state(), &state) {
            return Err(abandon(&shim, e).await);
        }
        // Where a start's time goes, in milliseconds since it began (`RUST_LOG=orch_agent=debug`).
        let ms = |at: std::time::Duration| at.as_secs_f64() * 1000.0;
        tracing::debug!(
            cgroup = ms(cgroup_made),
            namespaces = ms(namespaced),
            network = ms(wired),
            exec = ms(began.elapsed()),
            "container start: milliseconds until each step was done"
        );
        Ok((shim, init, state))
    }

    /// Re-adopts a container a previous agent started, from its state file. A live one
    /// keeps running untouched (same host PIDs); one whose shim is gone resolves
    /// [`Container::wait`] at once with the recorded exit.
    pub fn adopt(&self, id: &str) -> Result<Container, RuntimeError> {
        let dirs = ContainerDirs::new(&self.config.state_dir, id);
        let state: ContainerState = read_json(&dirs.state())?;
        let cgroup = self.cgroups.container(&state.cgroup)?;
        let shim = if procfs::is_same_process(state.shim_pid, state.shim_start_ticks) { PidFd::open(state.shim_pid).ok() } else { None };
        let init = if shim.is_some() && procfs::is_same_process(state.init_pid, state.init_start_ticks) { PidFd::open(state.init_pid).ok() } else { None };
        Ok(Container { id: id.to_owned(), dirs, cgroup, shim, is_child: false, init, state, exit: Mutex::new(None) })
    }

    /// Removes whatever a start that never finished left for `id` (no state file, so
    /// nothing to adopt): kills what is in its cgroup, removes the cgroup and the
    /// container directory. Blocking; call off the async workers.
    pub fn discard(&self, id: &str) -> Result<(), RuntimeError> {
        let dirs = ContainerDirs::new(&self.config.state_dir, id);
        let destroyed = self.cgroups.container(&self.cgroup_name(id)).map_err(RuntimeError::from).and_then(|c| c.destroy().map_err(RuntimeError::from));
        let removed = remove_container_dir(&dirs);
        destroyed?;
        removed
    }

    /// Manifest digests of the images the containers on this node were started from.
    pub fn images_in_use(&self) -> std::collections::BTreeSet<String> {
        self.container_ids()
            .iter()
            .filter_map(|id| read_json::<ContainerState>(&ContainerDirs::new(&self.config.state_dir, id).state()).ok())
            .filter_map(|state| state.image)
            .collect()
    }

    /// Names of the containers with a state directory on this node.
    pub fn container_ids(&self) -> Vec<String> {
        let dir = crate::StateDir::new(&self.config.state_dir).containers();
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut ids: Vec<String> = entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
        ids.sort();
        ids
    }
}

/// What the shim or the init said went wrong, when it said so within a moment; else
/// `ours`, the error the agent met.
async fn reason_of(mut sync: UnixStream, ours: RuntimeError) -> RuntimeError {
    let said = tokio::task::spawn_blocking(move || {
        let _ = sync.set_read_timeout(Some(Duration::from_millis(500)));
        loop {
            match receive(&mut sync) {
                Ok(Some(SyncMessage::Error { message, code })) => return Some(RuntimeError::Start { message, code }),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    });
    said.await.ok().flatten().unwrap_or(ours)
}

/// Waits for the container's init to say its namespaces exist.
fn await_unshared(sync: &mut UnixStream) -> Result<(), RuntimeError> {
    match receive(sync) {
        Ok(Some(SyncMessage::Unshared)) => Ok(()),
        other => Err(unexpected(other, "before the namespaces")),
    }
}

/// The error for what the shim or the container's init said (or failed to) at `when`.
fn unexpected(received: std::io::Result<Option<SyncMessage>>, when: &str) -> RuntimeError {
    match received {
        Ok(Some(SyncMessage::Error { message, code })) => RuntimeError::Start { message, code },
        Ok(other) => RuntimeError::Protocol(format!("unexpected {other:?} {when}")),
        Err(e) => RuntimeError::Protocol(format!("reading from the container init {when}: {e}")),
    }
}

/// The seccomp filters a container's command installs: none when unconfined.
fn compile_filters(security: &super::Security) -> Result<Vec<PackedProgram>, RuntimeError> {
    let programs =
        seccomp::filters_for(security.seccomp, &security.capabilities).map_err(|e| RuntimeError::Start { message: e.to_string(), code: CODE_RUNTIME })?;
    Ok(programs.iter().map(|program| PackedProgram::pack(program)).collect())
}

/// Maps the shim's new user namespace and mounts the idmapped views of the layers.
fn map_user_namespace(shim_pid: i32, range: IdRange, layers: &[PathBuf], dirs: &ContainerDirs) -> Result<(), RuntimeError> {
    idmap::write_id_maps(shim_pid, range)?;
    for (i, layer) in layers.iter().enumerate() {
        idmap::mount_idmapped(layer, &dirs.idmapped_layer(i), shim_pid)?;
    }
    Ok(())
}

/// Creates `dir` and its missing parents readable by root only.
fn private_dir_all(dir: &Path) -> Result<(), RuntimeError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(RuntimeError::io("cannot create", dir))
}

fn unmount_idmapped_layers(dirs: &ContainerDirs) {
    for view in dirs.idmapped_layers() {
        idmap::unmount(&view);
    }
}

/// Removes a container's directory. Idmapped layer views are unmounted and removed
/// one by one first (never recursively: if one were still mounted, a recursive delete
/// would reach into the image), then the rest goes.
fn remove_container_dir(dirs: &ContainerDirs) -> Result<(), RuntimeError> {
    for view in dirs.idmapped_layers() {
        idmap::unmount(&view);
        match std::fs::remove_dir(&view) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RuntimeError::Io { what: "cannot remove the layer view", path: view, source }),
        }
    }
    match std::fs::remove_dir_all(&dirs.root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::Io { what: "cannot remove", path: dirs.root.clone(), source: e }),
        _ => Ok(()),
    }
}

fn check_spec(spec: &ContainerSpec) -> Result<(), RuntimeError> {
    for bind in &spec.mounts {
        let target = Path::new(&bind.target);
        let normal = target.is_absolute() && target.components().all(|c| !matches!(c, std::path::Component::ParentDir));
        if !normal || bind.target.contains([':', ',']) {
            return Err(RuntimeError::Start { message: format!("mount target {:?} must be an absolute path without ..", bind.target), code: CODE_RUNTIME });
        }
        if !bind.source.exists() {
            return Err(RuntimeError::Io { what: "mount source", path: bind.source.clone(), source: std::io::Error::from(std::io::ErrorKind::NotFound) });
        }
    }
    if let Some(system) = &spec.system {
        // Overlay options are comma-separated; a system container's root is written as
        // the host sees it.
        if !system.dir.is_absolute() || system.dir.display().to_string().contains([':', ',']) || spec.user_namespace.is_some() {
            return Err(RuntimeError::Start {
                message: format!("system root {}: an absolute path without ':' or ',', and no user namespace", system.dir.display()),
                code: CODE_RUNTIME,
            });
        }
    }
    if let Some(range) = spec.user_namespace {
        if range.host_id == 0 || range.size == 0 || range.host_id.checked_add(range.size).is_none() {
            return Err(RuntimeError::Start {
                message: format!("user namespace range {}:{} must map to non-root host ids", range.host_id, range.size),
                code: super::CODE_RUNTIME,
            });
        }
    }
    orch_api::manifest::names::check_dns_label(&spec.id).map_err(|_| RuntimeError::InvalidName(spec.id.clone()))?;
    if spec.args.is_empty() || spec.args[0].is_empty() {
        return Err(RuntimeError::EmptyCommand);
    }
    if spec.layers.is_empty() {
        return Err(RuntimeError::Rootfs { path: PathBuf::new(), reason: "no rootfs or image layers given".into() });
    }
    for layer in &spec.layers {
        let text = layer.display().to_string();
        if text.contains([':', ',']) {
            return Err(RuntimeError::Rootfs { path: layer.clone(), reason: "overlayfs cannot take paths with ':' or ','".into() });
        }
        match std::fs::metadata(layer) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(RuntimeError::Rootfs { path: layer.clone(), reason: "not a directory".into() }),
            Err(e) => return Err(RuntimeError::Rootfs { path: layer.clone(), reason: e.to_string() }),
        }
    }
    Ok(())
}

async fn join<T>(task: tokio::task::JoinHandle<Result<T, RuntimeError>>) -> Result<T, RuntimeError> {
    task.await.map_err(|e| RuntimeError::Protocol(format!("start task failed: {e}")))?
}

/// A start that failed part-way: make sure the shim (and with it the container init)
/// is gone and reaped, then hand back the error.
async fn abandon(shim: &PidFd, error: RuntimeError) -> RuntimeError {
    let _ = shim.signal(Signal::SIGKILL as i32);
    shim.exited().await;
    let _ = shim.try_reap();
    error
}

impl Container {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container's PID 1 as the host sees it.
    pub fn host_pid(&self) -> i32 {
        self.state.init_pid
    }

    pub fn state(&self) -> &ContainerState {
        &self.state
    }

    pub fn cgroup_paths(&self) -> Vec<PathBuf> {
        self.cgroup.paths()
    }

    pub fn dir(&self) -> &Path {
        &self.dirs.root
    }

    /// Waits for the container to end (learned from the shim's pidfd, no polling).
    pub async fn wait(&self) -> ContainerExit {
        if let Some(exit) = *self.lock_exit() {
            return exit;
        }
        let record = match &self.shim {
            Some(shim) => {
                shim.exited().await;
                let reaped = if self.is_child { shim.try_reap().ok().flatten() } else { None };
                match reaped {
                    Some(WaitStatus::Exited(_, code)) => Some(ExitRecord { code, signal: None, finished_unix_ms: now_unix_ms() }),
                    Some(WaitStatus::Signaled(_, signal, _)) => {
                        Some(ExitRecord { code: 128 + signal as i32, signal: Some(signal as i32), finished_unix_ms: now_unix_ms() })
                    }
                    _ => None,
                }
            }
            None => None,
        };
        // The shim's own record knows the signal that ended the init; prefer it.
        let recorded: Option<ExitRecord> = read_json(&self.dirs.exit()).ok();
        let record = recorded.or(record).unwrap_or(ExitRecord { code: CODE_RUNTIME, signal: None, finished_unix_ms: now_unix_ms() });
        let exit = ContainerExit {
            code: record.code,
            signal: record.signal,
            oom_killed: self.cgroup.oom_kill_count().unwrap_or(0) > 0,
            finished_unix_ms: record.finished_unix_ms,
        };
        *self.lock_exit() = Some(exit);
        exit
    }

    fn lock_exit(&self) -> std::sync::MutexGuard<'_, Option<ContainerExit>> {
        self.exit.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `signal` (a number: real-time signals too) to the container's init, which
    /// forwards it to the command (or is the command, in a system container).
    pub fn signal(&self, signal: i32) -> Result<(), RuntimeError> {
        let init = self.init.as_ref().ok_or_else(|| RuntimeError::NotRunning(self.id.clone()))?;
        match init.signal(signal) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::ESRCH) => Err(RuntimeError::NotRunning(self.id.clone())),
            Err(errno) => Err(RuntimeError::Syscall { syscall: "pidfd_send_signal", errno }),
        }
    }

    /// Its stop signal (the spec's, recorded in its state; `unrecorded` for a container
    /// an older agent started), then SIGKILL if it is still running after `grace`.
    pub async fn stop(&self, grace: Duration, unrecorded: i32) -> ContainerExit {
        self.stop_with(self.state.stop_signal.unwrap_or(unrecorded), grace).await
    }

    /// `signal`, then SIGKILL if it is still running after `grace`.
    pub async fn stop_with(&self, signal: i32, grace: Duration) -> ContainerExit {
        if self.signal(signal).is_ok() && tokio::time::timeout(grace, self.wait()).await.is_ok() {
            return self.wait().await;
        }
        self.kill().await
    }

    /// SIGKILL, and its end.
    pub async fn kill(&self) -> ContainerExit {
        let _ = self.signal(Signal::SIGKILL as i32);
        self.wait().await
    }

    pub fn stats(&self) -> Result<CgroupStats, RuntimeError> {
        Ok(self.cgroup.stats()?)
    }

    /// Removes the cgroup and every directory of an ended container. Call after
    /// [`Container::wait`]; processes still in the cgroup are killed. The work blocks
    /// (cgroup removal waits for exiting processes), so it runs off the async workers.
    pub async fn remove(self) -> Result<(), RuntimeError> {
        let Container { cgroup, dirs, .. } = self;
        tokio::task::spawn_blocking(move || {
            let destroyed = cgroup.destroy();
            let removed = remove_container_dir(&dirs);
            destroyed?;
            removed
        })
        .await
        .map_err(|e| RuntimeError::Protocol(format!("remove task failed: {e}")))?
    }
}
