//! The node agent daemon: registers with the controller, sets the node network up,
//! re-adopts what a previous agent left running, then keeps one session open —
//! converging the node to every desired set it receives (start what is missing, stop
//! what is no longer wanted, balancer table, routes to other nodes) and reporting
//! replica status upward. Static stability: when the controller is unreachable the
//! replicas keep running and restarting; the agent reconnects with back-off.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use orch_api::events::EventKind;
use orch_api::pb;

use super::backends::RealProbeChecks;
use super::config::{AgentConfig, AgentError, LinkError};
use super::context::{Backends, NodeContext};
use super::convergence;
use super::convert::usable;
use super::registration::first_registration;
use super::replica::{load_records, spawn, ReplicaHandle, UnreadableRecord};
use super::session::Session;
use crate::images::ImageStore;
use crate::net::{NodeNetwork, NodeNetworkConfig, PeerRoute, ServiceEndpoints, Strategy, Subnet};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::StateDir;

/// The open files limit the agent asks for (as containerd's unit does with
/// `LimitNOFILE`), bounded by the kernel's `fs.nr_open`.
pub const DESCRIPTOR_LIMIT: u64 = 1 << 20;

/// Raises the agent's limit on open files to [`DESCRIPTOR_LIMIT`] (or the most the
/// kernel allows; the hard limit when it may not be raised): every connection the
/// balancer relays costs two descriptors, and a node port flooded with idle connections
/// must not leave the agent unable to open a log file or a pidfd.
pub fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE).inspect_err(|error| tracing::warn!(%error, "getrlimit(RLIMIT_NOFILE)")) else { return };
    let kernel = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|text| text.trim().parse::<u64>().ok()).unwrap_or(hard);
    let wanted = DESCRIPTOR_LIMIT.min(kernel).max(hard);
    if soft >= wanted {
        return;
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE; without it, the soft one goes up to it.
    let raised = setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).or_else(|_| setrlimit(Resource::RLIMIT_NOFILE, hard, hard));
    match raised.and_then(|()| getrlimit(Resource::RLIMIT_NOFILE)) {
        Ok((now, _)) => tracing::info!(from = soft, to = now, "raised the open files limit"),
        Err(error) => tracing::warn!(%error, soft, hard, "setrlimit(RLIMIT_NOFILE)"),
    }
}

/// The node condition while replica records are set aside.
const RECORD_UNREADABLE: &str = "RecordUnreadable";

/// How the agent ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Leave every container running (an agent upgrade or restart): the next agent adopts.
    Leave,
    /// Stop every replica and remove the node network (`orch up` ending).
    Drain,
}

/// How a session with a controller ended.
enum SessionEnd {
    /// It was open and carried a desired set (the controller went, or the stream
    /// failed): reconnect at once.
    WasOpen(LinkError),
    /// No controller answered, or a session ended before its first desired set: retry
    /// with back-off (a controller that accepts and drops sessions is not hammered).
    NeverOpened(LinkError),
}

pub struct Agent {
    config: AgentConfig,
    ctx: Arc<NodeContext>,
    replicas: BTreeMap<String, ReplicaHandle>,
    terminating: Vec<ReplicaHandle>,
    /// Purges of deleted services' local volumes under way (or done) on this node.
    purges: BTreeMap<String, Purge>,
    /// The addresses of replicas stopping (kept out of the balancer's table until gone).
    leaving: BTreeMap<String, std::net::Ipv4Addr>,
    /// Replicas whose records could not be read: their containers are kept until a
    /// desired set says whether each is wanted (then adopted with the set's template)
    /// or not (then removed).
    set_aside: BTreeMap<String, UnreadableRecord>,
    generation: u64,
    api: Option<tokio::task::JoinHandle<()>>,
    /// Applies the service table again while a listener fails.
    retry_listeners: AbortOnDrop,
}

/// A task that ends with its owner (an `Agent` dropped without `shut_down`, say when
/// its start is cancelled): the retry task holds the context, which must go for the
/// node network to.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Purge {
    task: tokio::task::JoinHandle<()>,
    /// It ended in an error: the next set starts it again.
    failed: Arc<std::sync::atomic::AtomicBool>,
}

/// Removes `service`'s local volumes from this node once no replica holds any of them.
async fn purge_service(ctx: Arc<NodeContext>, service: String, failed: Arc<std::sync::atomic::AtomicBool>) {
    let root = ctx.volumes.local_root.clone();
    let listed = tokio::task::spawn_blocking({
        let (root, service) = (root.clone(), service.clone());
        move || super::volumes::slot_dirs(&root, &service)
    })
    .await;
    let Ok(dirs) = listed else { return failed.store(true, std::sync::atomic::Ordering::Relaxed) };
    let held = ctx.volume_locks.hold(&dirs).await;
    // The locks go with the removal: a task aborted meanwhile (the service applied
    // again) cannot hand them to a new replica while the directories are still going.
    let purged = tokio::task::spawn_blocking({
        let service = service.clone();
        move || {
            let purged = super::volumes::purge(&root, &service);
            drop(held);
            purged
        }
    })
    .await;
    match purged.map_err(|e| e.to_string()).and_then(|removed| removed) {
        Ok(true) => ctx.board.event(EventKind::VolumesPurged, format!("service/{service}"), "its local volumes were removed from this node".into()),
        Ok(false) => {}
        Err(error) => {
            tracing::warn!(%service, %error, "purging local volumes");
            failed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Agent {
    /// Registers (or falls back on the saved registration), sets the node network up and
    /// re-adopts the replicas a previous agent left.
    pub async fn start(mut config: AgentConfig) -> Result<Agent, AgentError> {
        raise_descriptor_limit();
        // Bound first, so that a port 0 becomes the real one the controller is told.
        let api_listener = match config.api_listen {
            Some(address) => {
                let listener = tokio::net::TcpListener::bind(address).await.map_err(|source| AgentError::Listen { address, source })?;
                config.api_listen = listener.local_addr().ok();
                Some(listener)
            }
            None => None,
        };
        // A registry config that cannot be used stops the agent here, naming the file,
        // rather than failing every pull later.
        config.registries.load().map_err(crate::images::ImageError::from)?;
        let registration = first_registration(&config).await;
        let subnet = Subnet::parse(&registration.pod_cidr).map_err(|e| AgentError::Registration { what: "pod subnet", reason: e.to_string() })?;
        let service_cidr = Subnet::parse(&registration.service_cidr).map_err(|e| AgentError::Registration { what: "service range", reason: e.to_string() })?;
        let cluster_cidr = match &registration.cluster_cidr {
            Some(text) => Subnet::parse(text).map_err(|e| AgentError::Registration { what: "cluster network", reason: e.to_string() })?,
            None => subnet.supernet(16),
        };
        let runtime =
            Runtime::new(RuntimeConfig { state_dir: config.state_dir.clone(), cgroup_parent: config.cgroup_parent.clone(), init_exe: config.helper.clone() })?;
        let state = StateDir::new(&config.state_dir);
        let images = ImageStore::open(&state.images(), config.registries.clone())?.with_layer_limits(config.layer_limits);
        let network = NodeNetwork::setup(NodeNetworkConfig {
            bridge: config.bridge.clone(),
            subnet,
            service_cidr,
            cluster_cidr,
            upstream_dns: config.upstream_dns.clone(),
            state_dir: config.state_dir.clone(),
            node_address: Some(config.address),
            strategy: Strategy::RoundRobin,
            limits: config.connection_limits,
            node_netns: None,
            helper: Some(config.helper.clone()),
            data_path: config.data_path,
        })
        .await?;
        let backends = Backends { containers: Box::new(runtime), images: Box::new(images), network: Box::new(network), probes: Arc::new(RealProbeChecks) };
        let mut reserved = vec![config.state_dir.clone(), config.volumes_dir.clone()];
        reserved.extend(config.tls_dir.clone());
        reserved.extend(config.reserved_paths.iter().cloned());
        // As the kernel will see them: a symlinked or relative state directory too.
        let real: Vec<std::path::PathBuf> = reserved.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
        reserved.extend(real);
        let run_root = super::volumes::run_root_for(&config.bridge);
        let mounted_now = super::volumes::mount_run_root(&run_root).map_err(AgentError::Volumes)?;
        reserved.push(run_root.clone());
        let volumes = super::volumes::VolumeDirs { local_root: config.volumes_dir.clone(), reserved, run_root };
        let ctx = Arc::new(NodeContext::new(config.name.clone(), backends, state, config.helper.clone()).with_volumes(volumes));
        let api = match api_listener {
            Some(listener) => {
                let server = super::api::NodeApi::new(&ctx, config.address.to_string()).allowing_outages(config.allow_chaos).into_server();
                let mut builder = tonic::transport::Server::builder();
                if let Some(dir) = &config.tls_dir {
                    let tls = orch_api::tls::server_config(dir, &format!("node-{}", config.name))
                        .map_err(|e| e.to_string())
                        .and_then(|tls| builder.tls_config(tls).map_err(|e| e.to_string()));
                    builder = match tls {
                        Ok(builder) => builder,
                        Err(error) => {
                            // A tmpfs this start made goes with it (one a running agent left stays).
                            if mounted_now {
                                let _ = super::volumes::unmount_run_root(&ctx.volumes.run_root);
                            }
                            return Err(AgentError::NodeApi(error));
                        }
                    };
                }
                Some(tokio::spawn(async move {
                    let incoming = orch_api::incoming::nodelay(listener);
                    if let Err(error) = builder.add_service(server).serve_with_incoming(incoming).await {
                        tracing::warn!(%error, "the node API stopped");
                    }
                }))
            }
            None => None,
        };
        let mut agent = Agent::resume(config, ctx).await;
        agent.api = api;
        Ok(agent)
    }

    /// An agent on a context already built (the real one, or fakes in tests): re-adopts
    /// what a previous agent left in the context's state directory and runtime.
    pub async fn resume(config: AgentConfig, ctx: Arc<NodeContext>) -> Agent {
        let mut agent = Agent {
            config,
            replicas: BTreeMap::new(),
            terminating: Vec::new(),
            purges: BTreeMap::new(),
            leaving: BTreeMap::new(),
            set_aside: BTreeMap::new(),
            generation: 0,
            api: None,
            retry_listeners: AbortOnDrop(tokio::spawn(super::service_table::keep_retrying(Arc::clone(&ctx)))),
            ctx,
        };
        agent.adopt().await;
        agent
    }

    pub fn context(&self) -> &Arc<NodeContext> {
        &self.ctx
    }

    /// Resumes supervising every replica with a record; removes containers without one
    /// (a start interrupted by the previous agent's death) — except those whose record
    /// could not be read, which wait for the first desired set.
    async fn adopt(&mut self) {
        let records = load_records(&self.ctx.state.records());
        for record in records.readable {
            let container = match self.ctx.runtime.adopt(&record.id) {
                Ok(container) => Some(container),
                Err(error) => {
                    // A start the previous agent did not finish: clear it so it can start again.
                    if self.ctx.runtime.container_ids().contains(&record.id) {
                        tracing::warn!(replica = %record.id, %error, "discarding a half-started container");
                        if let Err(error) = self.ctx.runtime.discard(&record.id) {
                            tracing::warn!(replica = %record.id, %error, "discarding a half-started container");
                        }
                    }
                    None
                }
            };
            tracing::info!(replica = %record.id, running = container.is_some(), "re-adopting");
            let id = record.id.clone();
            self.replicas.insert(id, spawn(Arc::clone(&self.ctx), record, container));
        }
        for unreadable in records.unreadable {
            self.ctx.board.event(
                EventKind::RecordUnreadable,
                self.node_object(),
                format!(
                    "the record of replica {} cannot be read ({}): set aside as {}; its container is kept until the controller says whether it is wanted",
                    unreadable.id,
                    unreadable.error,
                    unreadable.path.display()
                ),
            );
            self.set_aside.insert(unreadable.id.clone(), unreadable);
        }
        self.report_set_aside();
        for id in self.ctx.runtime.container_ids() {
            if self.replicas.contains_key(&id) || self.set_aside.contains_key(&id) {
                continue;
            }
            tracing::warn!(container = %id, "removing a container no replica owns");
            self.remove_container(&id).await;
        }
    }

    fn node_object(&self) -> String {
        format!("node/{}", self.config.name)
    }

    /// The RecordUnreadable condition, while any replica waits with its record set aside.
    fn report_set_aside(&self) {
        if self.set_aside.is_empty() {
            self.ctx.board.clear_condition(RECORD_UNREADABLE);
        } else {
            let files: Vec<String> = self.set_aside.values().map(|r| r.path.display().to_string()).collect();
            self.ctx.board.set_condition(RECORD_UNREADABLE, format!("replica records set aside, their containers kept: {}", files.join(", ")));
        }
    }

    /// Stops and removes a container no supervisor owns, and its network attachment.
    async fn remove_container(&self, id: &str) {
        match self.ctx.runtime.adopt(id) {
            Ok(container) => {
                container.kill().await;
                let _ = container.remove().await;
            }
            Err(_) => {
                let _ = self.ctx.runtime.discard(id);
            }
        }
        let _ = self.ctx.network.detach(id).await;
    }

    /// Settles the replicas whose records were set aside, by the replicas a desired set
    /// starts: one among them is adopted with the set's template (its container keeps
    /// running); any other is removed, as a container without a replica.
    async fn settle_set_aside(&mut self, start: &mut Vec<pb::Replica>) {
        if self.set_aside.is_empty() {
            return;
        }
        for (id, unreadable) in std::mem::take(&mut self.set_aside) {
            if let Some(index) = start.iter().position(|replica| replica.id == id) {
                let replica = start.remove(index);
                let container = match self.ctx.runtime.adopt(&id) {
                    Ok(container) => Some(container),
                    Err(error) => {
                        tracing::warn!(replica = %id, %error, "a replica whose record was set aside has no running container");
                        if self.ctx.runtime.container_ids().contains(&id) {
                            let _ = self.ctx.runtime.discard(&id);
                        }
                        None
                    }
                };
                let message = if container.is_some() { "adopted with the controller's template" } else { "started again from the controller's template" };
                self.ctx.board.event(EventKind::Adopted, format!("replica/{id}"), format!("its record was set aside: {message}"));
                // Its `.corrupt` file goes with the replica (a crash before its supervisor
                // writes a new record must not leave the container unowned).
                self.replicas.insert(id.clone(), spawn(Arc::clone(&self.ctx), replica, container));
            } else {
                tracing::warn!(replica = %id, "a replica whose record was set aside is not wanted: removing its container");
                self.remove_container(&id).await;
                let _ = std::fs::remove_file(&unreadable.path);
            }
        }
        self.report_set_aside();
    }

    /// Converges the node to a desired set.
    pub async fn converge(&mut self, set: pb::DesiredSet) {
        self.generation = set.generation;
        self.ctx.configs.replace(&set.configs);
        let supervised: BTreeSet<String> = self.replicas.keys().cloned().collect();
        let plan = convergence::plan(&set, &supervised);
        // The balancer first: a replica leaving is out of its table before it is told to
        // stop, so no new connection reaches a process that is shutting down — even when
        // this set still lists it among the endpoints (the controller writes the replica's
        // removal and the endpoints' apart).
        // (Replicas stopping since an earlier set stay out too, until they are gone.)
        self.terminating.retain(|handle| !handle.is_finished());
        self.leaving.retain(|id, _| self.terminating.iter().any(|handle| handle.id == *id));
        for report in self.ctx.board.snapshot() {
            if let Some(ip) = report.status.as_ref().and_then(|s| s.ip.parse().ok()).filter(|_| plan.stop.contains(&report.id)) {
                self.leaving.insert(report.id.clone(), ip);
            }
        }
        let mut table: Vec<ServiceEndpoints> = usable(&set.endpoints);
        self.ctx.services.announce(&table);
        for service in &mut table {
            service.ready.retain(|ip| !self.leaving.values().any(|leaving| leaving == ip));
        }
        self.ctx.services.apply(&self.ctx, table).await;
        let routes: Vec<PeerRoute> = usable(&set.routes);
        if let Err(error) = self.ctx.network.set_peer_routes(&routes).await {
            tracing::warn!(%error, "setting routes to the other nodes");
        }
        for id in plan.stop {
            if let Some(handle) = self.replicas.remove(&id) {
                tracing::info!(replica = %id, "no longer wanted: stopping");
                handle.stop();
                self.terminating.push(handle);
            }
        }
        // After the stops (a purge waits for no supervised replica of its service) and the
        // set-aside replicas settled, before the starts: a purge this set calls off is
        // aborted before its service's new replicas are spawned.
        let mut start = plan.start;
        self.settle_set_aside(&mut start).await;
        self.purge_volumes(&set.purged_services);
        for replica in start {
            self.replicas.insert(replica.id.clone(), spawn(Arc::clone(&self.ctx), replica, None));
        }
        self.terminating.retain(|handle| !handle.is_finished());
    }

    /// Removes the local volumes of services deleted with `--purge-volumes`: one task per
    /// service, which takes the locks of every slot directory (so it waits for the
    /// replicas still stopping, which hold theirs) and removes them under those locks.
    /// Every set lists the purged services again, so a purge interrupted by a restart
    /// (or that failed) is done again; a service applied again calls its purge off.
    fn purge_volumes(&mut self, services: &[String]) {
        self.purges.retain(|service, purge| {
            let wanted = services.contains(service) && !purge.failed.load(std::sync::atomic::Ordering::Relaxed);
            if !wanted {
                purge.task.abort();
            }
            wanted
        });
        for service in services {
            if self.purges.contains_key(service) || self.replicas.values().any(|handle| handle.service == *service) {
                continue;
            }
            let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let task = tokio::spawn(purge_service(Arc::clone(&self.ctx), service.clone(), Arc::clone(&failed)));
            self.purges.insert(service.clone(), Purge { task, failed });
        }
    }

    /// What `--metrics-listen` serves: the agent's and the balancer's metrics, and
    /// readiness — a session with a controller is up. Holds the context weakly (it must
    /// go before the node network can).
    pub fn telemetry(&self) -> Arc<orch_api::telemetry::Endpoints> {
        let mut registry = prometheus_client::registry::Registry::default();
        self.ctx.metrics.register(&mut registry);
        self.ctx.network.register_metrics(&mut registry);
        let context = Arc::downgrade(&self.ctx);
        let refresh = move || {
            if let Some(ctx) = context.upgrade() {
                ctx.metrics.refresh(&ctx.board);
                ctx.network.refresh_metrics();
            }
        };
        let context = Arc::downgrade(&self.ctx);
        let controllers = self.config.controllers.clone();
        let ready: orch_api::telemetry::ReadyCheck = Arc::new(move || {
            let up = context.upgrade().is_some_and(|ctx| ctx.metrics.session_is_up());
            let (current, known) = controllers.with(|set| (set.current().map(str::to_owned), set.known().join(", ")));
            Box::pin(async move {
                match current {
                    Some(controller) if up => Ok(format!("session with {controller} up")),
                    _ => Err(format!("no session with a controller (known: {known})")),
                }
            })
        });
        Arc::new(orch_api::telemetry::Endpoints { registry, refresh: Some(Box::new(refresh)), ready })
    }

    /// Serves until `shutdown` resolves: sessions with a controller, reconnecting
    /// whenever one ends — at once (to another controller first) after a session that
    /// was open, with back-off while none answers.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = Shutdown>) {
        tokio::pin!(shutdown);
        let first_delay = Duration::from_millis(100);
        let mut delay = first_delay;
        let how = loop {
            tokio::select! {
                how = &mut shutdown => break how,
                ended = self.session() => {
                    match ended {
                        SessionEnd::WasOpen(error) => {
                            tracing::warn!(%error, "controller session ended; reconnecting");
                            delay = first_delay;
                            continue;
                        }
                        SessionEnd::NeverOpened(error) => tracing::warn!(%error, "no controller session"),
                    }
                }
            }
            tokio::select! {
                how = &mut shutdown => break how,
                () = tokio::time::sleep(delay) => {}
            }
            // Capped well under a node lease: a controller that restarts finds its agents
            // back before their nodes turn NotReady.
            delay = (delay * 2).min(Duration::from_secs(1));
        };
        self.shut_down(how).await;
    }

    async fn session(&mut self) -> SessionEnd {
        // No link while an outage (`orch chaos`) lasts.
        self.ctx.outage.over().await;
        let mut session = match Session::open(&self.config, &self.ctx.board, self.generation, &self.ctx.outage).await {
            Ok(session) => session,
            Err(error) => return SessionEnd::NeverOpened(error),
        };
        let ctx = Arc::clone(&self.ctx);
        let _up = ctx.metrics.session_opened();
        let mut carried = false;
        loop {
            match session.next_desired(&self.ctx.board, self.generation).await {
                Ok(set) => {
                    carried = true;
                    self.converge(set).await;
                }
                Err(error) => {
                    // Tried last next time: a dead controller's agents go to another first
                    // (a link an outage silenced says nothing of the controller).
                    if !matches!(error, LinkError::Silenced) {
                        self.config.controllers.with(|set| set.failed(session.controller()));
                    }
                    return if carried { SessionEnd::WasOpen(error) } else { SessionEnd::NeverOpened(error) };
                }
            }
        }
    }

    /// Ends the agent: leaves the containers to the next agent, or drains the node.
    pub async fn shut_down(mut self, how: Shutdown) {
        if let Some(api) = self.api.take() {
            api.abort();
            let _ = api.await;
        }
        // It holds the context, which must go before the node network can.
        self.retry_listeners.0.abort();
        let _ = (&mut self.retry_listeners.0).await;
        match how {
            Shutdown::Leave => {
                tracing::info!("stopping; the containers keep running for the next agent");
                for (_, handle) in std::mem::take(&mut self.replicas) {
                    handle.abandon();
                }
            }
            Shutdown::Drain => {
                tracing::info!("draining: stopping every replica");
                for (_, handle) in std::mem::take(&mut self.replicas) {
                    handle.stop();
                    self.terminating.push(handle);
                }
                for handle in std::mem::take(&mut self.terminating) {
                    handle.finished().await;
                }
                // Purges under way finish (no replica holds their volumes now): each
                // holds the context, which must go before the node network can.
                for (_, purge) in std::mem::take(&mut self.purges) {
                    let _ = purge.task.await;
                }
                // Containers whose records were set aside and no desired set settled.
                for (id, unreadable) in std::mem::take(&mut self.set_aside) {
                    self.remove_container(&id).await;
                    let _ = std::fs::remove_file(&unreadable.path);
                }
                let ctx = self.ctx;
                // Every replica is gone: so are the files of their Configs and Secrets.
                if let Err(error) = super::volumes::unmount_run_root(&ctx.volumes.run_root) {
                    tracing::warn!(%error, "removing the config and secret files' tmpfs");
                }
                match Arc::try_unwrap(ctx) {
                    Ok(ctx) => {
                        if let Err(error) = ctx.network.teardown().await {
                            tracing::warn!(%error, "removing the node network");
                        }
                    }
                    Err(_) => tracing::warn!("the node network is still in use; not removed"),
                }
            }
        }
    }
}
