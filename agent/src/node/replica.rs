//! One replica on this node, supervised by one task: start it (image → rootfs → cgroup →
//! network → process), learn of its end at once (the runtime's pidfd wait), run its
//! probes, restart it per policy with back-off, and clean every trace of it when it is
//! no longer wanted. Every restart keeps the replica's id, address and log file.
//!
//! What the supervisor knows is mirrored on the [`StatusBoard`] (reported upward) and in
//! `<state>/replicas/<id>.pb` (the replica with its template and status), so that a new
//! agent resumes where the old one stopped: it re-adopts the running container (same
//! host PID, no restart counted) and carries the restart count on.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use orch_api::pb;
use prost::Message;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use super::backoff::{should_restart, Backoff};
use super::probe::{check, ProbeTarget, ProbeTracker};
use crate::cgroups::Limits;
use crate::images::{resolve_process, ImageStore};
use crate::net::NodeNetwork;
use crate::runtime::exec::ExecRequest;
use crate::runtime::{
    capability_set, container_env, now_unix_ms, BindMount, Container, ContainerExit, ContainerSpec, IdRange, Runtime, SeccompProfile, Security, Stdio,
    DEFAULT_ID_RANGE,
};

/// Lines of the previous run's output kept as crash evidence.
const EVIDENCE_LINES: usize = 50;
/// A log file is rotated (to `.1`) when a run starts and it is larger than this.
const LOG_ROTATE_BYTES: u64 = 10 << 20;

/// Everything the supervisors share.
pub struct NodeContext {
    pub node: String,
    pub runtime: Runtime,
    pub images: ImageStore,
    pub network: NodeNetwork,
    pub state_dir: PathBuf,
    /// The agent binary: the `__exec` helper of exec probes.
    pub helper: PathBuf,
    pub board: StatusBoard,
    /// Replicas whose container runs now (for exec and stats).
    pub running: super::api::RunningTable,
}

impl NodeContext {
    pub fn records_dir(&self) -> PathBuf {
        self.state_dir.join("replicas")
    }

    pub fn record_path(&self, id: &str) -> PathBuf {
        self.records_dir().join(format!("{id}.pb"))
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{id}.log"))
    }

    pub fn files_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("network/files").join(id)
    }
}

/// What the node reports: every replica's latest status and the events since the last
/// report.
#[derive(Default)]
pub struct StatusBoard {
    replicas: Mutex<BTreeMap<String, pb::Replica>>,
    events: Mutex<Vec<pb::Event>>,
    changed: Notify,
}

impl StatusBoard {
    fn set(&self, replica: &pb::Replica) {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).insert(replica.id.clone(), replica.clone());
        self.changed.notify_one();
    }

    fn remove(&self, id: &str) {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        self.changed.notify_one();
    }

    pub fn event(&self, kind: &str, object: String, message: String) {
        tracing::info!(kind, %object, %message, "event");
        let event = pb::Event { timestamp_unix_ms: now_unix_ms(), kind: kind.to_owned(), object, message };
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push(event);
        self.changed.notify_one();
    }

    pub fn snapshot(&self) -> Vec<pb::Replica> {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    pub fn take_events(&self) -> Vec<pb::Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Resolves when something changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// A running supervisor. `stop` asks it to stop the replica and clean up; the task ends
/// when everything is gone.
pub struct ReplicaHandle {
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
pub fn spawn(ctx: Arc<NodeContext>, record: pb::Replica, adopted: Option<Container>) -> ReplicaHandle {
    let (stop, stopping) = watch::channel(false);
    let supervisor = Supervisor { ctx, record, stopping, prepared: None, log_offset: 0 };
    let task = tokio::spawn(supervisor.run(adopted));
    ReplicaHandle { stop, task }
}

/// Reads the records a previous agent left.
pub fn load_records(dir: &Path) -> Vec<pb::Replica> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut records = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "pb") {
            continue;
        }
        match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|bytes| pb::Replica::decode(bytes.as_slice()).map_err(|e| e.to_string())) {
            Ok(record) => records.push(record),
            Err(error) => tracing::warn!(path = %path.display(), %error, "ignoring an unreadable replica record"),
        }
    }
    records
}

/// The container spec of a replica, once resolved (image pulled, address reserved).
struct Prepared {
    spec: ContainerSpec,
    ip: Ipv4Addr,
}

enum Ended {
    /// The process ended (or was stopped for a failed liveness/startup probe: `why`).
    Exited { exit: ContainerExit, why: Option<String> },
    /// The replica is no longer wanted; the container is stopped.
    Stopped,
}

enum ProbeEvent {
    Started,
    Ready(bool, String),
    Unhealthy(String),
}

struct Supervisor {
    ctx: Arc<NodeContext>,
    record: pb::Replica,
    stopping: watch::Receiver<bool>,
    prepared: Option<Prepared>,
    /// Where the current run's output starts in the log file.
    log_offset: u64,
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

    /// Publishes the status (board + record file).
    fn publish(&self) {
        self.ctx.board.set(&self.public_view());
        let path = self.ctx.record_path(&self.record.id);
        let write = std::fs::create_dir_all(self.ctx.records_dir()).and_then(|()| {
            let temporary = path.with_extension("pb.tmp");
            std::fs::write(&temporary, self.record.encode_to_vec())?;
            std::fs::rename(&temporary, &path)
        });
        if let Err(error) = write {
            tracing::warn!(path = %path.display(), %error, "writing the replica record");
        }
    }

    /// The replica as reported upward: without its template.
    fn public_view(&self) -> pb::Replica {
        pb::Replica { spec: None, ..self.record.clone() }
    }

    fn set_phase(&mut self, phase: pb::ReplicaPhase, ready: bool, reason: &str) {
        let status = self.status_mut();
        status.phase = phase.into();
        status.ready = ready;
        status.reason = reason.to_owned();
        self.publish();
    }

    fn stop_requested(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Sleeps `delay` unless a stop comes first; true when stopped.
    async fn sleep_or_stop(&mut self, delay: Duration) -> bool {
        if self.stop_requested() {
            return true;
        }
        let mut stopping = self.stopping.clone();
        tokio::select! {
            () = tokio::time::sleep(delay) => self.stop_requested(),
            () = async { let _ = stopping.wait_for(|stop| *stop).await; } => true,
        }
    }

    async fn run(mut self, mut adopted: Option<Container>) {
        let spec = self.spec();
        let backoff = Backoff::from_spec(spec.restart_backoff.as_ref());
        let policy = spec.restart_policy();
        // Exits in a row (the crash back-off) and failed starts in a row (image pulls,
        // start errors) are counted apart: a replica that finally starts after its image
        // arrived gets its first restart at once, like any other.
        let mut in_a_row: u32 = 0;
        let mut failed_starts: u32 = 0;
        let finished = self.record.status.as_ref().is_some_and(|s| matches!(s.phase(), pb::ReplicaPhase::Succeeded | pb::ReplicaPhase::Failed));
        if finished && adopted.is_none() {
            // It ended for good before an agent restart: its policy said no restart.
            self.publish();
            let _ = self.stopping.wait_for(|stop| *stop).await;
        } else if adopted.is_none() {
            self.set_phase(pb::ReplicaPhase::Starting, false, "");
        }
        loop {
            if self.stop_requested() {
                break;
            }
            let mut stopping = self.stopping.clone();
            let prepared = tokio::select! {
                prepared = self.prepare() => prepared,
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => break,
            };
            if let Err(reason) = prepared {
                self.start_failed(&reason, &backoff, &mut failed_starts).await;
                continue;
            }
            let was_adopted = adopted.is_some();
            let container = match adopted.take() {
                Some(container) => container,
                None => match self.start().await {
                    Ok(container) => container,
                    Err(reason) => {
                        self.start_failed(&reason, &backoff, &mut failed_starts).await;
                        continue;
                    }
                },
            };
            failed_starts = 0;
            let started = Instant::now();
            let ended = self.supervise(&container, was_adopted).await;
            match ended {
                Ended::Stopped => {
                    if let Err(error) = container.remove().await {
                        tracing::warn!(replica = %self.record.id, %error, "removing the container");
                    }
                    break;
                }
                Ended::Exited { exit, why } => {
                    self.record_exit(&exit, why.as_deref());
                    if let Err(error) = container.remove().await {
                        tracing::warn!(replica = %self.record.id, %error, "removing the container");
                    }
                    if self.stop_requested() {
                        break;
                    }
                    if !should_restart(policy, exit.code, why.is_some()) {
                        let phase = if exit.code == 0 { pb::ReplicaPhase::Succeeded } else { pb::ReplicaPhase::Failed };
                        self.set_phase(phase, false, &format!("exited with code {} (restart policy {})", exit.code, policy.as_str_name()));
                        let _ = self.stopping.wait_for(|stop| *stop).await;
                        break;
                    }
                    in_a_row = backoff.after_run(in_a_row, started.elapsed());
                    let delay = backoff.delay(in_a_row);
                    in_a_row = in_a_row.saturating_add(1);
                    self.status_mut().restarts += 1;
                    let restarts = self.status_mut().restarts;
                    let cause = why.unwrap_or_else(|| describe_exit(&exit));
                    self.ctx.board.event("Restarted", self.object(), format!("{cause}; restart {restarts} after a back-off of {} ms", delay.as_millis()));
                    let reason = if delay.is_zero() { String::new() } else { format!("CrashLoopBackOff: restarting in {} ms", delay.as_millis()) };
                    self.set_phase(pb::ReplicaPhase::Starting, false, &reason);
                    if self.sleep_or_stop(delay).await {
                        break;
                    }
                }
            }
        }
        if let Some(container) = adopted.take() {
            // Stopped before the adopted container could be supervised.
            let grace = Duration::from_secs(u64::from(spec.termination_grace_seconds));
            container.stop(Signal::SIGTERM, grace).await;
            if let Err(error) = container.remove().await {
                tracing::warn!(replica = %self.record.id, %error, "removing the container");
            }
        }
        self.clean_up().await;
    }

    async fn start_failed(&mut self, reason: &str, backoff: &Backoff, in_a_row: &mut u32) {
        let delay = backoff.delay((*in_a_row).max(1));
        *in_a_row = in_a_row.saturating_add(1);
        self.ctx.board.event("Failed", self.object(), format!("{reason}; retrying in {} ms", delay.as_millis()));
        self.set_phase(pb::ReplicaPhase::Starting, false, reason);
        self.sleep_or_stop(delay).await;
    }

    /// Resolves the image and reserves the address, once.
    async fn prepare(&mut self) -> Result<(), String> {
        if self.prepared.is_some() {
            return Ok(());
        }
        let spec = self.spec();
        let id = self.record.id.clone();
        let images = &self.ctx.images;
        let image = match images.get(&spec.image) {
            Ok(image) => image,
            Err(_) => images.pull(&spec.image).await.map(|(image, _)| image).map_err(|e| format!("ImagePullBackOff: {e}"))?,
        };
        let layers = images.lower_dirs(&image).map_err(|e| format!("image {}: {e}", spec.image))?;
        let env: Vec<String> = spec.env.iter().map(|e| format!("{}={}", e.name, e.value)).collect();
        let process = resolve_process(&image.defaults, &spec.command, &spec.args, &env).map_err(|e| format!("image {}: {e}", spec.image))?;
        let (ip, files) = self.ctx.network.prepare(&id, &id, &self.ctx.files_dir(&id)).map_err(|e| format!("network: {e}"))?;
        let limits = spec.resources.as_ref().map(limits_of).unwrap_or_default();
        let confinement = confinement_of(spec.security_context.as_ref(), process.user).map_err(|e| format!("securityContext: {e}"))?;
        let log = self.ctx.log_path(&id);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        self.prepared = Some(Prepared {
            spec: ContainerSpec {
                id: id.clone(),
                layers,
                hostname: Some(id),
                args: process.args,
                env: process.env,
                cwd: process.cwd,
                limits,
                stdio: Stdio::LogFile(log),
                user_namespace: confinement.user_namespace,
                user: confinement.user,
                image: Some(image.manifest_digest),
                mounts: files.into_iter().map(|(source, target)| BindMount { source, target }).collect(),
                security: confinement.security,
            },
            ip,
        });
        Ok(())
    }

    async fn start(&mut self) -> Result<Container, String> {
        let Some(prepared) = &self.prepared else { return Err("not prepared".into()) };
        let log = self.ctx.log_path(&self.record.id);
        if std::fs::metadata(&log).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
            let _ = std::fs::rename(&log, log.with_extension("log.1"));
        }
        self.log_offset = std::fs::metadata(&log).map_or(0, |m| m.len());
        let network: &dyn crate::runtime::ContainerNetwork = &self.ctx.network;
        self.ctx.runtime.start_with_network(&prepared.spec, Some(network)).await.map_err(|e| format!("start: {e}"))
    }

    /// Runs probes and waits for the container's end or a stop.
    async fn supervise(&mut self, container: &Container, adopted: bool) -> Ended {
        let spec = self.spec();
        let probes = spec.probes.clone().unwrap_or_default();
        let Some(prepared) = &self.prepared else { return Ended::Stopped };
        let target = ProbeTarget {
            ip: Some(prepared.ip),
            helper: self.ctx.helper.clone(),
            exec: ExecRequest {
                pid: container.host_pid(),
                cgroups: container.cgroup_paths().iter().map(|p| p.display().to_string()).collect(),
                user: prepared.spec.user,
                capabilities: prepared.spec.security.capabilities.clone(),
                seccomp: prepared.spec.security.seccomp,
                env: container_env(&prepared.spec.env, &self.record.id),
                cwd: prepared.spec.cwd.clone(),
                tty: false,
                command: Vec::new(),
            },
        };
        let ip = prepared.ip.to_string();
        // Ready at once when nothing has to say so first.
        // An adopted container keeps the readiness it had until a probe says otherwise.
        let mut ready = if adopted { self.record.status.as_ref().is_some_and(|s| s.ready) } else { probes.readiness.is_none() && probes.startup.is_none() };
        {
            let status = self.status_mut();
            status.host_pid = u32::try_from(container.host_pid()).unwrap_or(0);
            status.ip = ip;
            if status.started_unix_ms == 0 || status.finished_unix_ms != 0 {
                status.started_unix_ms = now_unix_ms();
            }
            status.finished_unix_ms = 0;
        }
        self.set_phase(pb::ReplicaPhase::Running, ready, "");
        if adopted {
            self.ctx.board.event("Adopted", self.object(), format!("still running as host PID {}", container.host_pid()));
        } else {
            self.ctx.board.event("Started", self.object(), format!("host PID {}", container.host_pid()));
        }
        self.ctx.running.set(&self.record.id, super::api::RunningReplica { service: self.record.service.clone(), exec: target.exec.clone() });
        let (events, mut probe_events) = mpsc::channel(8);
        let probing = tokio::spawn(run_probes(probes, target, events));
        let mut stopping = self.stopping.clone();
        let ended = loop {
            tokio::select! {
                exit = container.wait() => break Ended::Exited { exit, why: None },
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    self.set_phase(pb::ReplicaPhase::Terminating, false, "");
                    let grace = Duration::from_secs(u64::from(spec.termination_grace_seconds));
                    container.stop(Signal::SIGTERM, grace).await;
                    break Ended::Stopped;
                }
                Some(event) = probe_events.recv() => match event {
                    ProbeEvent::Started => {
                        ready = spec.probes.as_ref().is_none_or(|p| p.readiness.is_none());
                        self.set_phase(pb::ReplicaPhase::Running, ready, "");
                    }
                    ProbeEvent::Ready(now_ready, why) => {
                        if now_ready != ready {
                            ready = now_ready;
                            if !ready {
                                self.ctx.board.event("Unhealthy", self.object(), format!("readiness probe failed: {why}"));
                            }
                            self.set_phase(pb::ReplicaPhase::Running, ready, if ready { "" } else { "readiness probe failing" });
                        }
                    }
                    ProbeEvent::Unhealthy(why) => {
                        self.ctx.board.event("Unhealthy", self.object(), format!("{why}; restarting the container"));
                        self.set_phase(pb::ReplicaPhase::Running, false, &why);
                        let grace = Duration::from_secs(u64::from(spec.termination_grace_seconds));
                        let exit = container.stop(Signal::SIGTERM, grace).await;
                        break Ended::Exited { exit, why: Some(why) };
                    }
                },
            }
        };
        probing.abort();
        self.ctx.running.remove(&self.record.id);
        ended
    }

    /// Keeps the crash evidence: code or signal, OOMKilled, when, the last lines.
    fn record_exit(&mut self, exit: &ContainerExit, why: Option<&str>) {
        let output = read_tail(&self.ctx.log_path(&self.record.id), self.log_offset, EVIDENCE_LINES);
        let status = self.status_mut();
        status.exit_code = Some(exit.code);
        status.oom_killed = exit.oom_killed;
        status.finished_unix_ms = exit.finished_unix_ms;
        status.last_output = output;
        status.ready = false;
        status.host_pid = 0;
        if exit.oom_killed {
            self.ctx.board.event("OOMKilled", self.object(), "the memory limit was reached".into());
        }
        let message = match why {
            Some(why) => format!("{}; stopped because {why}", describe_exit(exit)),
            None => describe_exit(exit),
        };
        self.ctx.board.event("Exited", self.object(), message);
        self.publish();
    }

    /// Frees the address and removes the generated files, the log and the record.
    async fn clean_up(&mut self) {
        let id = self.record.id.clone();
        if let Err(error) = self.ctx.network.detach(&id).await {
            tracing::warn!(replica = %id, %error, "releasing the replica's network");
        }
        let _ = std::fs::remove_dir_all(self.ctx.files_dir(&id));
        let log = self.ctx.log_path(&id);
        let _ = std::fs::remove_file(log.with_extension("log.1"));
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(self.ctx.record_path(&id));
        self.ctx.board.event("Stopped", self.object(), "removed from the node".into());
        self.ctx.board.remove(&id);
    }
}

fn describe_exit(exit: &ContainerExit) -> String {
    match (exit.signal, exit.oom_killed) {
        (_, true) => format!("OOMKilled (exit code {})", exit.code),
        (Some(signal), _) => {
            let name = Signal::try_from(signal).map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_owned());
            format!("killed by {name} (exit code {})", exit.code)
        }
        (None, _) => format!("exited with code {}", exit.code),
    }
}

/// What a securityContext asks of the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Confinement {
    user: Option<(u32, u32)>,
    user_namespace: Option<IdRange>,
    security: Security,
}

/// The runtime's view of a (validated) securityContext over the image's user:
/// `runAsUser` and `runAsGroup` replace the image's uid and gid one by one (an unset gid
/// is the image's, else root's), capabilities are added to and dropped from Docker's
/// default set, and `userNamespace` maps the container's ids to the node's range.
fn confinement_of(context: Option<&pb::SecurityContext>, image_user: Option<(u32, u32)>) -> Result<Confinement, String> {
    let Some(context) = context else { return Ok(Confinement { user: image_user, user_namespace: None, security: Security::default() }) };
    let user = match (context.run_as_user, context.run_as_group) {
        (None, None) => image_user,
        (uid, gid) => Some((uid.or(image_user.map(|u| u.0)).unwrap_or(0), gid.or(image_user.map(|u| u.1)).unwrap_or(0))),
    };
    let seccomp = match context.seccomp_profile() {
        pb::SeccompProfileType::RuntimeDefault => SeccompProfile::RuntimeDefault,
        pb::SeccompProfileType::Unconfined => SeccompProfile::Unconfined,
    };
    Ok(Confinement {
        user,
        user_namespace: context.user_namespace.then_some(DEFAULT_ID_RANGE),
        security: Security {
            capabilities: capability_set(&context.capabilities_add, &context.capabilities_drop)?,
            seccomp,
            read_only_root: context.read_only_root_filesystem,
        },
    })
}

fn limits_of(resources: &pb::Resources) -> Limits {
    let limits = resources.limits.unwrap_or_default();
    let requests = resources.requests.unwrap_or_default();
    let some = |v: u64| (v > 0).then_some(v);
    Limits {
        memory_bytes: some(limits.memory_bytes),
        cpu_limit_millis: some(limits.cpu_millis),
        cpu_request_millis: some(requests.cpu_millis).or(some(limits.cpu_millis)),
        pids: some(limits.pids),
        ..Limits::default()
    }
}

/// The last `lines` lines written to `path` from `offset` on (at most 16 KiB read).
fn read_tail(path: &Path, offset: u64, lines: usize) -> String {
    const MAX: u64 = 16 << 10;
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let length = file.metadata().map_or(0, |m| m.len());
    let start = offset.max(length.saturating_sub(MAX)).min(length);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.take(MAX).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The startup probe first (when there is one), then liveness and readiness side by side.
async fn run_probes(probes: pb::Probes, target: ProbeTarget, events: mpsc::Sender<ProbeEvent>) {
    if let Some(startup) = &probes.startup {
        match probe_until_verdict(startup, &target, true).await {
            Ok(()) => {
                let _ = events.send(ProbeEvent::Started).await;
            }
            Err(why) => {
                let _ = events.send(ProbeEvent::Unhealthy(format!("startup probe failed: {why}"))).await;
                return;
            }
        }
    }
    let liveness = async {
        if let Some(liveness) = &probes.liveness {
            if let Err(why) = probe_until_verdict(liveness, &target, false).await {
                let _ = events.send(ProbeEvent::Unhealthy(format!("liveness probe failed: {why}"))).await;
            }
        }
    };
    let readiness = async {
        let Some(readiness) = &probes.readiness else { return };
        tokio::time::sleep(Duration::from_secs(u64::from(readiness.initial_delay_seconds))).await;
        let mut tracker = ProbeTracker::default();
        let mut ticks = tokio::time::interval(Duration::from_secs(u64::from(readiness.period_seconds.max(1))));
        loop {
            ticks.tick().await;
            let result = check(readiness, &target).await;
            let why = result.as_ref().err().cloned().unwrap_or_default();
            if let Some(verdict) = tracker.observe(result.is_ok(), readiness.success_threshold, readiness.failure_threshold) {
                if events.send(ProbeEvent::Ready(verdict, why)).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::join!(liveness, readiness);
}

/// Probes every period. A startup probe (`until_success`) returns at its first success;
/// a liveness probe runs until it fails `failure_threshold` times in a row. `Err` carries
/// the last failure.
async fn probe_until_verdict(probe: &pb::Probe, target: &ProbeTarget, until_success: bool) -> Result<(), String> {
    tokio::time::sleep(Duration::from_secs(u64::from(probe.initial_delay_seconds))).await;
    let mut tracker = ProbeTracker::default();
    let mut ticks = tokio::time::interval(Duration::from_secs(u64::from(probe.period_seconds.max(1))));
    loop {
        ticks.tick().await;
        let result = check(probe, target).await;
        let success_threshold = if until_success { 1 } else { probe.success_threshold };
        match (tracker.observe(result.is_ok(), success_threshold, probe.failure_threshold), &result) {
            (Some(true), _) if until_success => return Ok(()),
            (Some(false), Err(why)) => return Err(why.clone()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_security_context_over_the_image_user() {
        assert_eq!(confinement_of(None, Some((5, 6))), Ok(Confinement { user: Some((5, 6)), user_namespace: None, security: Security::default() }));
        let context = |uid: Option<u32>, gid: Option<u32>| pb::SecurityContext { run_as_user: uid, run_as_group: gid, ..Default::default() };
        let cases = [
            (context(None, None), Some((5, 6)), Some((5, 6))),
            (context(Some(1000), None), Some((5, 6)), Some((1000, 6))),
            (context(Some(1000), None), None, Some((1000, 0))),
            (context(None, Some(2000)), None, Some((0, 2000))),
            (context(Some(1), Some(2)), Some((5, 6)), Some((1, 2))),
        ];
        for (context, image, user) in cases {
            assert_eq!(confinement_of(Some(&context), image).map(|c| c.user), Ok(user), "{context:?} over {image:?}");
        }
        let strict = pb::SecurityContext {
            read_only_root_filesystem: true,
            capabilities_drop: vec!["ALL".into()],
            capabilities_add: vec!["NET_BIND_SERVICE".into()],
            seccomp_profile: pb::SeccompProfileType::Unconfined.into(),
            user_namespace: true,
            ..Default::default()
        };
        let confinement = confinement_of(Some(&strict), None).expect("valid");
        assert_eq!(confinement.security.capabilities, ["CAP_NET_BIND_SERVICE"]);
        assert_eq!(confinement.security.seccomp, SeccompProfile::Unconfined);
        assert!(confinement.security.read_only_root);
        assert_eq!(confinement.user_namespace, Some(DEFAULT_ID_RANGE));
    }

    #[test]
    fn the_tail_starts_at_the_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("r.log");
        std::fs::write(&log, "old run\n").expect("write");
        let offset = std::fs::metadata(&log).expect("meta").len();
        let lines: String = (1..=60).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, format!("old run\n{lines}")).expect("write");
        let tail = read_tail(&log, offset, 50);
        assert_eq!(tail.lines().count(), 50);
        assert!(tail.starts_with("line 11\n") && tail.ends_with("line 60"), "{tail}");
        assert_eq!(read_tail(&log, std::fs::metadata(&log).expect("meta").len(), 50), "");
        assert_eq!(read_tail(&dir.path().join("missing"), 0, 50), "");
    }

    #[test]
    fn limits_come_from_the_spec() {
        let resources = pb::Resources {
            requests: Some(pb::ResourceList { cpu_millis: 50, memory_bytes: 0, pids: 0 }),
            limits: Some(pb::ResourceList { cpu_millis: 250, memory_bytes: 64 << 20, pids: 64 }),
        };
        let limits = limits_of(&resources);
        assert_eq!((limits.memory_bytes, limits.cpu_limit_millis, limits.cpu_request_millis, limits.pids), (Some(64 << 20), Some(250), Some(50), Some(64)));
        assert_eq!(limits_of(&pb::Resources::default()).memory_bytes, None);
    }
}
