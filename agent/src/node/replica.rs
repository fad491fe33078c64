//! One replica on this node, supervised by one task: it acts on what the replica's
//! [`Lifecycle`] decides — prepare (image → rootfs layers, address), start, watch the
//! container (the runtime's pidfd wait) and its probes, stop, record the crash evidence,
//! wait out a back-off, clean every trace — and feeds the outcomes back. Every restart
//! keeps the replica's id, address and log file.
//!
//! What the supervisor knows is mirrored on the [`StatusBoard`](super::board::StatusBoard)
//! (reported upward) and in `<state>/replicas/<id>.pb` (the replica with its template and
//! status), so that a new agent resumes where the old one stopped: it re-adopts the
//! running container (same host PID, no restart counted) and carries the restart count on.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use orch_api::events::EventKind;
use orch_api::pb;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::backends::RunningContainer;
use super::board::RunningReplica;
use super::context::NodeContext;
use super::convert::{confinement_of, env_of, limits_of, pull_policy};
use super::lifecycle::{describe_exit, Effect, Input, Lifecycle, State, ENDPOINT_PROPAGATION};
use super::logs;
use super::probe::{run_probes, ProbeEvent, ProbeRecord, ProbeTarget};
use super::volumes::{self, HeldVolumes};
use crate::images::{resolve_process, ImageAccounts};
use crate::runtime::exec::ExecRequest;
use crate::runtime::output::LogSettings;
use crate::runtime::{container_env, now_unix_ms, BindMount, ContainerExit, ContainerSpec, Stdio};

/// Lines of the previous run's output kept as crash evidence.
const EVIDENCE_LINES: usize = 50;
/// How often an on-disk emptyDir with a sizeLimit is measured while its replica runs.
const EMPTY_DIR_CHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// What an eviction's reason starts with.
const EVICTED: &str = "Evicted:";

/// A running supervisor. `stop` asks it to stop the replica and clean up; the task ends
/// when everything is gone.
pub struct ReplicaHandle {
    /// The replica.
    pub id: String,
    /// The service the replica belongs to.
    pub service: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplicaHandle {
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Abandons the supervisor, leaving the container running (agent shutdown).
    pub fn abandon(self) {
        self.task.abort();
    }

    pub async fn finished(self) {
        let _ = self.task.await;
    }
}

/// Starts supervising `record` (a replica with its template); `adopted` is its container
/// from a previous agent, if it still has one.
pub fn spawn(ctx: Arc<NodeContext>, record: pb::Replica, adopted: Option<Box<dyn RunningContainer>>) -> ReplicaHandle {
    let (stop, stopping) = watch::channel(false);
    let (id, service) = (record.id.clone(), record.service.clone());
    // The slot's local volumes are taken now, in the order replicas are spawned: an
    // adopted replica holds them before a replacement arriving with the first desired set
    // (one still held waits in `provision_volumes`).
    let held = ctx.volume_locks.try_hold(&volumes::local_dirs(&record, &ctx.volumes)).unwrap_or_default();
    let supervisor =
        Supervisor { ctx, record, stopping, prepared: None, adopted, container: None, probes: None, held, size_limited: Vec::new(), evicted: false };
    // Every line the supervisor logs carries the replica and its service.
    let span = tracing::info_span!("replica", replica = %id, service = %service);
    let task = tokio::spawn(tracing::Instrument::instrument(supervisor.run(), span));
    ReplicaHandle { id, service, stop, task }
}

/// Measures the size-limited emptyDirs of a running replica; the first one over its
/// limit evicts it (an `Evicted` event, then a restart with the emptyDirs empty, as the
/// kubelet's eviction brings a new pod).
async fn watch_usage(ctx: Arc<NodeContext>, object: String, limited: Vec<(String, std::path::PathBuf, u64)>, events: mpsc::Sender<ProbeEvent>) {
    loop {
        tokio::time::sleep(EMPTY_DIR_CHECK).await;
        let dirs = limited.clone();
        let Ok(usages) = tokio::task::spawn_blocking(move || dirs.iter().map(|(_, dir, limit)| volumes::disk_usage(dir, *limit)).collect::<Vec<_>>()).await
        else {
            return;
        };
        let over = limited.iter().zip(usages).find_map(|((name, _, limit), used)| match used {
            Ok(used) if used > *limit => Some(format!("{EVICTED} emptyDir {name} uses {used} bytes, over its sizeLimit of {limit}")),
            Ok(_) => None,
            Err(error) => Some(format!("{EVICTED} emptyDir {name} cannot be measured against its sizeLimit of {limit} ({error})")),
        });
        if let Some(why) = over {
            ctx.board.event(EventKind::Evicted, object, why.clone());
            let _ = events.send(ProbeEvent::Unhealthy(why)).await;
            return;
        }
    }
}

/// The records a previous agent left, and those it could not read.
#[derive(Debug, Default)]
pub struct Records {
    pub readable: Vec<pb::Replica>,
    pub unreadable: Vec<UnreadableRecord>,
}

/// A replica record that could not be read, set aside as `<id>.pb.corrupt` (or found so
/// set aside by an earlier agent). Its replica's container is kept until the controller
/// says whether the replica is still wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableRecord {
    pub id: String,
    pub path: std::path::PathBuf,
    pub error: String,
}

/// What a record set aside is named.
pub const SET_ASIDE: &str = "corrupt";

/// Reads the records a previous agent left. One that cannot be read is renamed
/// `<id>.pb.corrupt` — never skipped silently, never taken as "no replica".
pub fn load_records(dir: &Path) -> Records {
    let mut records = Records::default();
    let Ok(entries) = std::fs::read_dir(dir) else { return records };
    let mut paths: Vec<std::path::PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
    paths.sort();
    for path in paths {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        if let Some(id) = name.strip_suffix(&format!(".pb.{SET_ASIDE}")) {
            // Set aside by an earlier agent, its replica not settled since (one set aside
            // just now, from `<id>.pb` sorted before it, is listed already).
            if !dir.join(format!("{id}.pb")).exists() && !records.unreadable.iter().any(|r| r.id == id) {
                records.unreadable.push(UnreadableRecord { id: id.to_owned(), path, error: "set aside by an earlier agent".into() });
            }
            continue;
        }
        let Some(id) = name.strip_suffix(".pb") else { continue };
        let decoded = std::fs::read(&path).map_err(|e| e.to_string()).and_then(|bytes| pb::Replica::decode(bytes.as_slice()).map_err(|e| e.to_string()));
        let error = match decoded {
            Ok(record) if record.id == id => {
                records.readable.push(record);
                continue;
            }
            Ok(record) => format!("the record names replica {:?}", record.id),
            Err(error) => error,
        };
        let aside = dir.join(format!("{name}.{SET_ASIDE}"));
        let path = match std::fs::rename(&path, &aside) {
            Ok(()) => aside,
            Err(rename) => {
                tracing::warn!(path = %path.display(), error = %rename, "cannot set an unreadable replica record aside");
                path
            }
        };
        tracing::warn!(path = %path.display(), %error, "an unreadable replica record: set aside, its container kept");
        records.unreadable.push(UnreadableRecord { id: id.to_owned(), path, error });
    }
    records
}

/// The container spec of a replica, once resolved (image pulled, address reserved).
struct Prepared {
    spec: ContainerSpec,
    ip: Ipv4Addr,
}

/// The probes of the current run and what they report.
struct Probing {
    task: tokio::task::JoinHandle<()>,
    /// Measures the size-limited emptyDirs, when there are any.
    usage: Option<tokio::task::JoinHandle<()>>,
    events: mpsc::Receiver<ProbeEvent>,
}

struct Supervisor {
    ctx: Arc<NodeContext>,
    record: pb::Replica,
    stopping: watch::Receiver<bool>,
    prepared: Option<Prepared>,
    /// The previous agent's container, until it is taken over (or removed).
    adopted: Option<Box<dyn RunningContainer>>,
    /// The container of the current run.
    container: Option<Box<dyn RunningContainer>>,
    probes: Option<Probing>,
    /// The local volume directories this replica holds, until it is cleaned up.
    held: HeldVolumes,
    /// On-disk emptyDirs with a sizeLimit: `(volume, directory, limit)`.
    size_limited: Vec<(String, std::path::PathBuf, u64)>,
    /// Evicted for an emptyDir over its limit: they start empty on the next start.
    evicted: bool,
}

impl Supervisor {
    fn object(&self) -> String {
        format!("replica/{}", self.record.id)
    }

    fn spec(&self) -> pb::ServiceSpec {
        self.record.spec.clone().unwrap_or_default()
    }

    fn status_mut(&mut self) -> &mut pb::ReplicaStatus {
        self.record.status.get_or_insert_with(Default::default)
    }

    fn stop_requested(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves when a stop is asked for (at once if it already was).
    fn stopped(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut stopping = self.stopping.clone();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }

    async fn run(mut self) {
        let (mut lifecycle, mut effects) = Lifecycle::new(&self.record, self.adopted.is_some());
        let mut inputs: VecDeque<Input> = VecDeque::new();
        let mut stop_fed = false;
        loop {
            for effect in std::mem::take(&mut effects) {
                if let Some(outcome) = self.act(effect).await {
                    inputs.push_back(outcome);
                }
            }
            if lifecycle.state() == State::Gone {
                break;
            }
            if inputs.is_empty() {
                inputs.push_back(self.next_input(lifecycle.state()).await);
            }
            // A stop wins, once: after the outcome of a prepare or a start (so that a
            // started container is known, then stopped), before a container's end (the
            // replica is going: no restart, no evidence).
            if self.stop_requested() && !stop_fed {
                stop_fed = true;
                if matches!(inputs.front(), Some(Input::Exited(_))) && matches!(lifecycle.state(), State::Running { .. } | State::Restarting) {
                    inputs.push_front(Input::Stop);
                } else if !matches!(inputs.front(), Some(Input::Stop)) {
                    inputs.push_back(Input::Stop);
                }
            }
            let Some(input) = inputs.pop_front() else { continue };
            if matches!(input, Input::Stop) {
                stop_fed = true;
            }
            effects = lifecycle.on(input, Instant::now());
        }
    }

    /// What happens next when no effect produced an outcome: the container's end, a
    /// probe's verdict or a stop while it runs; a stop otherwise.
    async fn next_input(&mut self, state: State) -> Input {
        if !matches!(state, State::Running { .. }) {
            self.stopped().await;
            return Input::Stop;
        }
        let stopped = self.stopped();
        let Some(container) = self.container.as_ref() else { return Input::Stop };
        let probes = &mut self.probes;
        let probe = async move {
            match probes.as_mut() {
                Some(probing) => probing.events.recv().await,
                None => std::future::pending().await,
            }
        };
        let input = tokio::select! {
            exit = container.wait() => Input::Exited(exit),
            () = stopped => Input::Stop,
            Some(event) = probe => match event {
                ProbeEvent::Started => Input::ProbeStarted,
                ProbeEvent::Ready(ready, why) => Input::Ready(ready, why),
                ProbeEvent::Unhealthy(why) => {
                    self.evicted |= why.starts_with(EVICTED);
                    Input::Unhealthy(why)
                }
            },
        };
        if matches!(input, Input::Exited(_)) {
            self.end_run();
        }
        input
    }

    /// Carries out one effect; returns its outcome when it has one.
    async fn act(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Phase { phase, ready, reason } => {
                let status = self.status_mut();
                status.phase = phase.into();
                status.ready = ready;
                status.reason = reason;
                self.publish();
            }
            Effect::Publish => self.publish(),
            Effect::Event { kind, message } => self.ctx.board.event(kind, self.object(), message),
            Effect::Recovered { fault, took } => {
                let recovered_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
                let message = format!("ready again {recovered_ms} ms after: {fault}");
                // The node is the session's to fill in, the target the controller's.
                let incident = pb::Incident {
                    service: self.record.service.clone(),
                    kind: "restart".into(),
                    fault,
                    fault_unix_ms: now_unix_ms().saturating_sub(i64::try_from(recovered_ms).unwrap_or(i64::MAX)),
                    recovered_ms,
                    replica: self.record.id.clone(),
                    ..Default::default()
                };
                self.ctx.board.incident(self.object(), message, incident);
            }
            Effect::Prepare => {
                let stopped = self.stopped();
                let began = std::time::Instant::now();
                let ctx = Arc::clone(&self.ctx);
                let prepare = async {
                    // While the node is down (`orch chaos`), nothing starts.
                    ctx.outage.starts_allowed().await;
                    self.prepare().await
                };
                return Some(tokio::select! {
                    prepared = prepare => {
                        tracing::debug!(took_ms = began.elapsed().as_millis(), ok = prepared.is_ok(), "prepared (image, rootfs layers, address, volumes)");
                        Input::Prepared(prepared)
                    }
                    () = stopped => Input::Stop,
                });
            }
            Effect::Start => {
                let started = match self.adopted.take() {
                    Some(container) => Ok(container),
                    None => self.start().await,
                };
                return Some(match started {
                    Ok(container) => {
                        self.container = Some(container);
                        Input::Started(Ok(()))
                    }
                    Err(reason) => Input::Started(Err(reason)),
                });
            }
            Effect::Running { ready, adopted } => {
                self.running(ready, adopted);
                // Started while `orch chaos` took the node down (its start was under way
                // when the outage began): killed as the others were.
                if self.ctx.outage.current() == Some(super::chaos::OutageKind::NodeDown) {
                    if let Some(container) = self.container.as_ref() {
                        let _ = container.kill().await;
                    }
                }
            }
            Effect::Drain { limit, listed } => self.drain(limit, listed).await,
            Effect::Kill { grace } => {
                let exit = match self.container.as_ref() {
                    Some(container) => container.stop(grace, self.stop_signal()).await,
                    None => ContainerExit { code: crate::runtime::CODE_RUNTIME, signal: None, oom_killed: false, finished_unix_ms: now_unix_ms() },
                };
                self.end_run();
                return Some(Input::Exited(exit));
            }
            Effect::RecordExit { exit, why } => self.record_exit(&exit, why.as_deref()),
            Effect::Restarts(count) => self.status_mut().restarts = count,
            Effect::RemoveContainer => {
                if let Some(container) = self.container.take() {
                    if let Err(error) = container.remove().await {
                        tracing::warn!(replica = %self.record.id, %error, "removing the container");
                    }
                }
            }
            Effect::Wait(delay) => {
                return Some(tokio::select! {
                    () = tokio::time::sleep(delay) => Input::Woke,
                    () = self.stopped() => Input::Stop,
                });
            }
            Effect::CleanUp => self.clean_up().await,
        }
        None
    }

    /// Waits, at most `limit`, until no balancer routes new connections to the replica
    /// (when it was `listed`: see [`Effect::Drain`]) and no connection relayed by this
    /// node's balancer to its address is open.
    async fn drain(&self, limit: std::time::Duration, listed: bool) {
        let Some(ip) = self.prepared.as_ref().map(|p| p.ip) else { return };
        let poll = std::time::Duration::from_millis(20);
        let deadline = tokio::time::Instant::now() + limit;
        if listed {
            while self.ctx.services.announces(ip) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(poll).await;
            }
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + ENDPOINT_PROPAGATION)).await;
        }
        while self.ctx.network.active_connections(ip).await > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(poll).await;
        }
    }

    /// Publishes the status (board + record file).
    fn publish(&self) {
        self.ctx.board.set(&self.report());
        let path = self.ctx.state.record(&self.record.id);
        let write = std::fs::create_dir_all(self.ctx.state.records()).and_then(|()| crate::state_dir::write_atomically(&path, &self.record.encode_to_vec()));
        if let Err(error) = write {
            tracing::warn!(path = %path.display(), %error, "writing the replica record");
        }
    }

    /// The replica as reported upward: who it is and its status.
    fn report(&self) -> pb::ReplicaReport {
        pb::ReplicaReport::from(&self.record)
    }

    /// Resolves the image (before every start under `imagePullPolicy: Always`, so a
    /// moved tag is pulled; once otherwise) and reserves the address (once).
    async fn prepare(&mut self) -> Result<(), String> {
        let spec = self.spec();
        // An adopted container runs already: its image is here, and an agent restart
        // with the registry out of reach must not disturb it.
        let policy = if self.adopted.is_some() { pb::ImagePullPolicy::IfNotPresent } else { pull_policy(&spec) };
        if self.prepared.is_some() && policy != pb::ImagePullPolicy::Always {
            return Ok(());
        }
        let id = self.record.id.clone();
        let images = &self.ctx.images;
        let image = match (policy, images.local(&spec.image)) {
            (pb::ImagePullPolicy::Never, Some(image)) => image,
            (pb::ImagePullPolicy::Never, None) => {
                return Err(format!("ErrImageNeverPull: image {} is not on this node, and imagePullPolicy is Never", spec.image));
            }
            (pb::ImagePullPolicy::Always, _) | (_, None) => {
                let began = std::time::Instant::now();
                let pulled = images.pull(&spec.image).await;
                self.ctx.metrics.image_pulled(began.elapsed(), pulled.is_ok());
                pulled.map_err(|e| format!("ImagePullBackOff: {e}"))?
            }
            (_, Some(image)) => image,
        };
        if self.prepared.as_ref().is_some_and(|p| p.spec.image.as_deref() == Some(image.manifest_digest.as_str())) {
            return Ok(());
        }
        let layers = images.layers(&image).map_err(|e| format!("image {}: {e}", spec.image))?;
        let mut env = env_of(&spec.env, &|kind, name| self.ctx.configs.get(kind, name))?;
        let system = self.system_root(&spec)?;
        let command = match &system {
            Some(_) => super::convert::system_init(&spec.command, &mut env),
            None => spec.command.clone(),
        };
        let accounts = ImageAccounts::read(&layers);
        let process = resolve_process(&image.defaults, &command, &spec.args, &env, &accounts).map_err(|e| format!("image {}: {e}", spec.image))?;
        // Which init a system container runs (systemd stops on its own signal).
        let init = process.args.first().filter(|program| system.is_some() && program.starts_with('/'));
        // Its kept root's upper layer first: an init installed inside the container counts.
        let searched: Vec<std::path::PathBuf> = system.iter().map(|root| root.dir.join("upper")).chain(layers.iter().cloned()).collect();
        let init = init.and_then(|program| crate::images::resolve_in_layers(&searched, program));
        let stop_signal = super::convert::stop_signal(&spec, image.defaults.stop_signal.as_deref(), init.as_deref())?;
        let limits = limits_of(spec.resources.as_ref());
        let mut confinement = confinement_of(spec.security_context.as_ref(), process.user).map_err(|e| format!("securityContext: {e}"))?;
        if system.is_some() {
            let dropped = spec.security_context.as_ref().map(|c| c.capabilities_drop.clone()).unwrap_or_default();
            super::convert::system_confinement(&mut confinement.security, &dropped);
        }
        // Config and Secret files belong to the container's user, as the node sees it.
        let user = confinement.user.clone().unwrap_or(crate::runtime::User::ids(0, 0));
        let shift = confinement.user_namespace.map_or(0, |range| range.host_id);
        let owner = (user.uid.saturating_add(shift), user.gid.saturating_add(shift));
        let (ip, mounts) = match &self.prepared {
            Some(prepared) => (prepared.ip, prepared.spec.mounts.clone()),
            None => {
                let volume_mounts = self.provision_volumes(&spec, limits.memory_bytes, owner).await?;
                let (ip, files) = self.ctx.network.prepare(&id, &id, &self.ctx.state.files(&id)).map_err(|e| format!("network: {e}"))?;
                (ip, files.into_iter().map(|(source, target)| BindMount::new(source, target)).chain(volume_mounts).collect())
            }
        };
        let logs = self.ctx.state.logs();
        std::fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
        self.prepared = Some(Prepared {
            spec: ContainerSpec {
                id: id.clone(),
                layers,
                hostname: Some(id.clone()),
                args: process.args,
                env: process.env,
                cwd: process.cwd,
                limits,
                stdio: {
                    let (max_bytes, max_files) = orch_api::manifest::log_policy(spec.logs.as_ref());
                    Stdio::Log(LogSettings { path: self.ctx.state.log(&id), max_bytes, max_files })
                },
                user_namespace: confinement.user_namespace,
                user: confinement.user,
                image: Some(image.manifest_digest),
                mounts,
                security: confinement.security,
                system,
                stop_signal,
            },
            ip,
        });
        Ok(())
    }

    /// The stop signal for a container whose state records none (an older agent started
    /// it): the prepared spec's, else what the service's spec and mode say.
    fn stop_signal(&self) -> i32 {
        match &self.prepared {
            Some(prepared) => prepared.spec.stop_signal,
            None => super::convert::stop_signal(&self.spec(), None, None).unwrap_or(orch_api::signal::SIGTERM),
        }
    }

    /// A system container's root: its root volume's slot directory on this node.
    fn system_root(&self, spec: &pb::ServiceSpec) -> Result<Option<crate::runtime::SystemRoot>, String> {
        if spec.mode() != pb::ServiceMode::System {
            return Ok(None);
        }
        let slot = self.record.slot.ok_or("a system container keeps its root in its slot's local volume, and this replica has no slot")?;
        Ok(Some(crate::runtime::SystemRoot { dir: volumes::local_dir(&self.ctx.volumes, &self.record.service, &spec.root_volume, slot) }))
    }

    /// Makes the replica's volumes exist (once: emptyDirs and a tmpfs keep their
    /// contents across restarts), holding its local volume directories first — a
    /// replica of the same slot still stopping on this node keeps them until it is gone.
    async fn provision_volumes(&mut self, spec: &pb::ServiceSpec, memory_limit: Option<u64>, owner: (u32, u32)) -> Result<Vec<BindMount>, String> {
        let id = self.record.id.clone();
        let plan = {
            let configs = |kind: pb::ConfigKind, name: &str| self.ctx.configs.get(kind, name);
            let inputs = volumes::PlanInputs { memory_limit, owner, configs: &configs };
            volumes::plan(&self.record, spec, &self.ctx.state.empty_dirs(&id), &inputs, &self.ctx.volumes)?
        };
        self.size_limited = volumes::size_limited(&plan, &spec.volumes);
        if self.held.is_empty() && !plan.exclusive.is_empty() {
            self.held = match self.ctx.volume_locks.try_hold(&plan.exclusive) {
                Some(held) => held,
                None => {
                    let slot = self.record.slot.unwrap_or_default();
                    self.status_mut().reason = format!("waiting for the replica before it in slot {slot} to release its local volumes on this node");
                    self.publish();
                    self.ctx.volume_locks.hold(&plan.exclusive).await
                }
            };
        }
        let dirs = self.ctx.volumes.clone();
        let provisions = plan.provisions.clone();
        tokio::task::spawn_blocking(move || provisions.iter().try_for_each(|p| volumes::provision(p, &dirs)))
            .await
            .map_err(|e| format!("volumes: {e}"))?
            .map_err(|e| format!("volumes: {e}"))?;
        Ok(plan.mounts)
    }

    async fn start(&mut self) -> Result<Box<dyn RunningContainer>, String> {
        if std::mem::take(&mut self.evicted) {
            // As the kubelet's replacement pod would, the next run starts with them empty.
            let dirs: Vec<std::path::PathBuf> = self.size_limited.iter().map(|(_, dir, _)| dir.clone()).collect();
            let emptied = tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|dir| volumes::empty(dir))).await;
            emptied.map_err(|e| format!("volumes: {e}"))?.map_err(|e| format!("volumes: {e}"))?;
        }
        let Some(prepared) = &self.prepared else { return Err("not prepared".into()) };
        logs::start_run(&self.ctx.state, &self.record.id);
        let network: &dyn crate::runtime::ContainerNetwork = self.ctx.network.as_ref();
        let began = std::time::Instant::now();
        let started = self.ctx.runtime.start(&prepared.spec, network).await;
        self.ctx.metrics.container_started(began.elapsed(), started.is_ok());
        started.map_err(|e| format!("start: {e}"))
    }

    /// The container runs: its PID and address in the status, the Started (or Adopted)
    /// event, its entry in the running table, and its probes.
    fn running(&mut self, ready: bool, adopted: bool) {
        let spec = self.spec();
        let (Some(container), Some(prepared)) = (self.container.as_ref(), self.prepared.as_ref()) else { return };
        let host_pid = container.host_pid();
        let exec = ExecRequest {
            pid: host_pid,
            cgroups: container.cgroup_paths().iter().map(|p| p.display().to_string()).collect(),
            user: prepared.spec.user.clone(),
            capabilities: prepared.spec.security.capabilities.clone(),
            seccomp: prepared.spec.security.seccomp,
            env: container_env(&prepared.spec.env, &self.record.id),
            cwd: prepared.spec.cwd.clone(),
            tty: false,
            command: Vec::new(),
        };
        let target = ProbeTarget { ip: Some(prepared.ip), helper: self.ctx.helper.clone(), exec: exec.clone() };
        let ip = prepared.ip.to_string();
        let status = self.status_mut();
        status.host_pid = u32::try_from(host_pid).unwrap_or(0);
        status.ip = ip;
        if status.started_unix_ms == 0 || status.finished_unix_ms != 0 {
            status.started_unix_ms = now_unix_ms();
        }
        status.finished_unix_ms = 0;
        status.phase = pb::ReplicaPhase::Running.into();
        status.ready = ready;
        status.reason = String::new();
        self.publish();
        if adopted {
            self.ctx.board.event(EventKind::Adopted, self.object(), format!("still running as host PID {host_pid}"));
        } else {
            self.ctx.board.event(EventKind::Started, self.object(), format!("host PID {host_pid}"));
        }
        self.ctx.running.set(&self.record.id, RunningReplica { service: self.record.service.clone(), exec });
        let (sender, events) = mpsc::channel(8);
        let usage =
            (!self.size_limited.is_empty()).then(|| tokio::spawn(watch_usage(Arc::clone(&self.ctx), self.object(), self.size_limited.clone(), sender.clone())));
        let (metrics, service) = (Arc::clone(&self.ctx.metrics), self.record.service.clone());
        let record: ProbeRecord = Arc::new(move |probe, ok| metrics.probed(&service, probe, ok));
        let task = tokio::spawn(run_probes(spec.probes.clone().unwrap_or_default(), target, Arc::clone(&self.ctx.probes), sender, record));
        self.probes = Some(Probing { task, usage, events });
    }

    /// The run ended: its probes stop and it leaves the running table.
    fn end_run(&mut self) {
        if let Some(probing) = self.probes.take() {
            probing.task.abort();
            if let Some(usage) = probing.usage {
                usage.abort();
            }
        }
        self.ctx.running.remove(&self.record.id);
    }

    /// Keeps the crash evidence: code or signal, OOMKilled, when, the last lines.
    fn record_exit(&mut self, exit: &ContainerExit, why: Option<&str>) {
        let output = logs::evidence(&self.ctx.state.log(&self.record.id), EVIDENCE_LINES);
        let status = self.status_mut();
        status.exit_code = Some(exit.code);
        status.oom_killed = exit.oom_killed;
        status.finished_unix_ms = exit.finished_unix_ms;
        status.last_output = output;
        status.ready = false;
        status.host_pid = 0;
        if exit.oom_killed {
            self.ctx.board.event(EventKind::OOMKilled, self.object(), "the memory limit was reached".into());
        }
        let message = match why {
            Some(why) => format!("{}; stopped because {why}", describe_exit(exit)),
            None => describe_exit(exit),
        };
        self.ctx.board.event(EventKind::Exited, self.object(), message);
        self.publish();
    }

    /// Removes a container not taken over yet, frees the address, and removes the
    /// generated files, the log and the record.
    async fn clean_up(&mut self) {
        self.end_run();
        if let Some(container) = self.adopted.take().or_else(|| self.container.take()) {
            // Stopped before the container could be supervised (or removed).
            let spec = self.spec();
            let grace = std::time::Duration::from_secs(u64::from(spec.termination_grace_seconds));
            container.stop(grace, self.stop_signal()).await;
            if let Err(error) = container.remove().await {
                tracing::warn!(replica = %self.record.id, %error, "removing the container");
            }
        }
        let id = self.record.id.clone();
        if let Err(error) = self.ctx.network.detach(&id).await {
            tracing::warn!(replica = %id, %error, "releasing the replica's network");
        }
        let _ = std::fs::remove_dir_all(self.ctx.state.files(&id));
        let empty_dirs = self.ctx.state.empty_dirs(&id);
        let _ = std::fs::remove_dir_all(self.ctx.volumes.run_root.join(&id));
        match tokio::task::spawn_blocking(move || volumes::release(&empty_dirs)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(replica = %id, %error, "removing the replica's emptyDir volumes"),
            Err(error) => tracing::warn!(replica = %id, %error, "removing the replica's emptyDir volumes"),
        }
        self.held.clear();
        logs::remove(&self.ctx.state, &id);
        let record = self.ctx.state.record(&id);
        let _ = std::fs::remove_file(record.with_extension(format!("pb.{SET_ASIDE}")));
        let _ = std::fs::remove_file(record);
        self.ctx.board.event(EventKind::Stopped, self.object(), "removed from the node".into());
        self.ctx.board.remove(&id);
    }
}
