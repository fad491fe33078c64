//! One agent's session with the controller: who it is, its heartbeats (the node's alive
//! key, on the controller's liveness lease), its status reports (written to `/orch/status/<node>/…` off the
//! receive loop) and its desired set (sent whenever it changes).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use orch_api::pb;
use orch_api::tls::Peer;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::desired::{cut_into_parts, node_desired, open_secret, stamp, whole_endpoints, whole_routes, Deltas, NodeDesired, RouteChanges, SentShared};
use super::detector::{Detector, DetectorConfig};
use super::liveness::{LivenessLease, RuntimeLag};
use super::registry::{NodeError, NodeRegistry};
use super::rpc::{check_node_identity, status};
use super::status::{status_writes, StatusWrite};
use crate::events::EventLog;
use crate::keys;
use crate::state::ClusterState;
use crate::store::{Expect, Revision, Store, StoreError, TxnOp};
use orch_api::secrets::SecretsKey;

/// Status writes of one report in flight at once.
const STATUS_WRITES: usize = 16;

/// How often a session judges its node's heartbeats.
const JUDGE_EVERY: Duration = Duration::from_millis(100);

/// Desired sets whose only change is the shared part (endpoints, nodes, Configs and
/// Secrets) go at most one per [`SHARED_ONLY_EVERY`] per session (a token bucket of
/// [`SHARED_ONLY_BURST`]): the first at once, what changes within the window after it
/// goes together at its end: fewer sets in a readiness storm (`controller.sh`, median of
/// 5 runs: a burst of 4 and one per 50 ms, 5.7–6.1k replicas Running/s; one per 200 ms
/// after 4, 7.5–10k/s but routing a small apply up to 200 ms late once consecutive
/// applies spent the burst — `ready.sh`; measured while every set still carried every
/// service's endpoints). With deltas, one per 20 ms costs no throughput (etcd 3.4–6.1k/s,
/// embedded 5.1–7.1k/s) and routes a small apply ~30 ms sooner than one per 50 ms.
/// A change of the node's own replicas always goes at once, with the shared part as it
/// is then.
pub const SHARED_ONLY_BURST: f64 = 1.0;

/// See [`SHARED_ONLY_BURST`]: the window on a cluster of up to 100 nodes.
pub const SHARED_ONLY_EVERY: Duration = Duration::from_millis(20);

/// The window of a session's shared-only sets on a cluster of `nodes`: 20 ms up to 100
/// nodes, then growing with them (200 ms at 1,000), so that all sessions together send
/// at most ~5,000 such sets a second. Every session of a 1,000-node cluster sending one
/// per 20 ms during a readiness storm (each with the changed endpoints of services of
/// 1,000 replicas) held the controller's runtime long enough that heartbeats queued
/// past the silence detector (`deploy/bench/controller.sh 10000 1000`).
pub fn shared_only_every(nodes: usize) -> Duration {
    SHARED_ONLY_EVERY.max(Duration::from_micros(200) * u32::try_from(nodes).unwrap_or(u32::MAX))
}

/// A session's budget of shared-only desired sets (pure; see [`SHARED_ONLY_BURST`]).
#[derive(Debug, Clone, Copy)]
pub struct SharedBudget {
    tokens: f64,
    at: std::time::Instant,
    /// The window ([`shared_only_every`]).
    every: Duration,
}

impl SharedBudget {
    pub fn new(now: std::time::Instant) -> SharedBudget {
        SharedBudget { tokens: SHARED_ONLY_BURST, at: now, every: SHARED_ONLY_EVERY }
    }

    /// The cluster now has `nodes`: the window follows.
    pub fn resize(&mut self, nodes: usize) {
        self.every = shared_only_every(nodes);
    }

    fn tokens_at(&self, now: std::time::Instant) -> f64 {
        (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() / self.every.as_secs_f64()).min(SHARED_ONLY_BURST)
    }

    /// When a set of `version` (`ClusterState::desired_version`) may go, the last one
    /// sent having been of `sent`: now for the first set or a change of the node's own
    /// replicas; a shared-only change when a token is there.
    pub fn send_at(&self, sent: Option<(u64, u64)>, version: (u64, u64), now: std::time::Instant) -> std::time::Instant {
        match sent {
            Some(sent) if sent.0 == version.0 => {
                let tokens = self.tokens_at(now);
                if tokens >= 1.0 {
                    now
                } else {
                    now + self.every.mul_f64(1.0 - tokens)
                }
            }
            _ => now,
        }
    }

    /// Records a set sent now: a shared-only one spends a token.
    pub fn spend(&mut self, shared_only: bool, now: std::time::Instant) {
        self.tokens = self.tokens_at(now) - if shared_only { 1.0 } else { 0.0 };
        self.at = now;
    }
}

/// A judge that woke this much later than it meant to was paused itself (its machine is
/// overloaded): the silence it would see is its own, and is not held against the node.
const JUDGE_PAUSED: Duration = Duration::from_millis(500);

/// What a session knows of its node's heartbeats.
struct Liveness {
    detector: Detector,
    /// The revision of this session's last put of the node's alive key (none yet).
    alive_written: Option<Revision>,
    /// The last beat (at first, when the session began): a silence of a whole node lease
    /// is counted from it, whatever the judge forgave of its own pauses.
    last_beat: std::time::Instant,
    /// This session judged the node silent (the verdict is in the store).
    silent: bool,
    /// A verdict may be in the store that this session has not deleted yet (always so
    /// while `silent`).
    verdict_maybe_left: bool,
}

/// A value no other session has: which session holds a node.
fn session_nonce() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{}-{}-{}", std::process::id(), crate::events::now_unix_ms(), COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

type Outgoing = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

/// One agent's session, once it has said who it is.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) node: String,
    pub(super) registry: NodeRegistry,
    pub(super) store: Arc<dyn Store>,
    pub(super) state: watch::Receiver<Arc<ClusterState>>,
    pub(super) events: EventLog,
    pub(super) liveness: Arc<LivenessLease>,
    pub(super) lag: Arc<RuntimeLag>,
    /// Opens Secrets for the nodes that use them; none: Secrets are not sent.
    pub(super) secrets: Option<Arc<SecretsKey>>,
    pub(super) metrics: Arc<crate::metrics::ControllerMetrics>,
    pub(super) part_bytes: usize,
}

impl Session {
    /// Serves one agent's stream until it ends, the agent misbehaves or the controller
    /// stops: the first message names the node (checked against its certificate), then
    /// heartbeats renew its lease and status reports are written (the latest one wins);
    /// the desired set goes down whenever it changes.
    pub(super) async fn serve(mut self, peer: Option<Peer>, mut incoming: Streaming<pb::AgentMessage>, outgoing: Outgoing, mut stopping: watch::Receiver<()>) {
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let (reports, latest_report) = watch::channel::<Option<pb::StatusReport>>(None);
        let mut nonce = None;
        let liveness = Arc::new(tokio::sync::Mutex::new(Liveness {
            detector: Detector::new(DetectorConfig::default()),
            alive_written: None,
            last_beat: std::time::Instant::now(),
            silent: false,
            verdict_maybe_left: true,
        }));
        loop {
            let message = tokio::select! {
                message = incoming.message() => match message {
                    Ok(Some(message)) => message,
                    Ok(None) | Err(_) => break,
                },
                _ = stopping.changed() => {
                    let _ = outgoing.send(Err(Status::unavailable("the controller is stopping; reconnect"))).await;
                    break;
                }
            };
            if self.node.is_empty() {
                if let Err(status) = check_node_identity(peer.as_ref(), &message.node) {
                    let _ = outgoing.send(Err(status)).await;
                    break;
                }
                self.node = message.node.clone();
                match self.store.get(&keys::node(&self.node)).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        let _ = outgoing.send(Err(Status::failed_precondition(format!("node {:?} must register first", message.node)))).await;
                        break;
                    }
                    Err(e) => {
                        let _ = outgoing.send(Err(status(NodeError::Store(e)))).await;
                        break;
                    }
                }
                let deltas = Deltas::said_in(&message);
                tasks.push(tokio::spawn(Session::send_desired(
                    self.state.clone(),
                    self.node.clone(),
                    outgoing.clone(),
                    self.secrets.clone(),
                    deltas,
                    self.part_bytes,
                )));
                tasks.push(tokio::spawn(self.clone().write_statuses(latest_report.clone())));
                // This session holds the node now: only it judges the node's silence, and
                // only it may take the node's alive key away when it ends.
                let held = session_nonce();
                if let Err(error) = self.store.put(&keys::node_session(&self.node), held.clone().into_bytes(), Expect::Any).await {
                    let _ = outgoing.send(Err(status(NodeError::Store(error)))).await;
                    break;
                }
                tasks.push(tokio::spawn(self.clone().judge(Arc::clone(&liveness), held.clone())));
                nonce = Some(held);
            } else if message.node != self.node {
                let _ = outgoing.send(Err(Status::invalid_argument(format!("this session is node {:?}'s, not {:?}'s", self.node, message.node)))).await;
                break;
            }
            match message.body {
                Some(pb::agent_message::Body::Heartbeat(_)) => {
                    if let Err(error) = self.beat(&liveness).await {
                        let _ = outgoing.send(Err(error)).await;
                        break;
                    }
                }
                Some(pb::agent_message::Body::Status(mut report)) => {
                    if report.events.iter().any(|e| e.incident.is_some()) {
                        let state = self.state.borrow().clone();
                        for event in &mut report.events {
                            if event.incident.is_some() {
                                *event = crate::incidents::judged(std::mem::take(event), &state, &self.node);
                                if let Some(incident) = &event.incident {
                                    self.metrics.recovered(incident);
                                }
                            }
                        }
                    }
                    for event in std::mem::take(&mut report.events) {
                        self.events.emit_reported(event);
                    }
                    // Each report is the node's full set: only the latest matters.
                    reports.send_replace(Some(report));
                }
                None => {}
            }
        }
        for task in tasks {
            task.abort();
        }
        if let Some(nonce) = nonce {
            self.metrics.session_ended(&self.node);
            tokio::spawn(self.goodbye(nonce));
        }
    }

    /// A node lease after its session ended, the node is NotReady — its alive key goes —
    /// unless a newer session (here or at another controller) holds it by then.
    /// Tried again (every second, then up to every 5 s) until done: the alive key is on
    /// a lease this controller keeps renewing, so giving up would leave the node Ready.
    async fn goodbye(self, nonce: String) {
        tokio::time::sleep(self.liveness.ttl()).await;
        let session_key = keys::node_session(&self.node);
        let mut pause = Duration::from_secs(1);
        loop {
            let holder = match self.store.get(&session_key).await {
                Ok(Some(kv)) if kv.value == nonce.as_bytes() => Some(kv),
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(node = %self.node, %error, "cannot tell whether a newer session holds the node; trying again");
                    None
                }
            };
            if let Some(holder) = holder {
                let ops = vec![
                    TxnOp::Delete { key: session_key.clone(), expect: Expect::Revision(holder.mod_revision) },
                    TxnOp::Delete { key: keys::node_alive(&self.node), expect: Expect::Any },
                ];
                match self.store.txn(ops).await {
                    Ok(_) => {
                        tracing::info!(node = %self.node, "its session ended a node lease ago and none took its place: NotReady");
                        return;
                    }
                    Err(StoreError::Conflict { .. }) => return,
                    Err(error) => tracing::warn!(node = %self.node, %error, "taking the alive key of a node whose session ended; trying again"),
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// One heartbeat: the detector learns it; the node's alive key is put at the
    /// session's first beat, and again when the picture shows it gone (judged silent, or
    /// the controller's liveness lease lapsed) — otherwise a beat costs the store nothing.
    /// The verdict goes at the first beat and after a silence (the node is back).
    async fn beat(&self, liveness: &tokio::sync::Mutex<Liveness>) -> Result<(), Status> {
        let now = std::time::Instant::now();
        self.metrics.heartbeat(&self.node);
        let mut liveness = liveness.lock().await;
        if liveness.silent {
            // The outage is not a rhythm to learn: the detector starts again.
            liveness.detector = Detector::new(DetectorConfig::default());
        }
        liveness.detector.beat(now);
        liveness.last_beat = now;
        let gone = liveness.alive_written.is_none_or(|written| {
            let current = self.state.borrow();
            // Only a picture that includes this session's own put can say it went.
            current.revision >= written && !current.alive.contains(&self.node)
        });
        if liveness.silent || gone {
            liveness.alive_written = Some(self.put_alive().await?);
        }
        if liveness.verdict_maybe_left {
            match self.store.delete(&keys::node_silent(&self.node), Expect::Any).await {
                Ok(_) => {
                    if liveness.silent {
                        tracing::info!(node = %self.node, "heartbeats are back");
                    }
                    liveness.silent = false;
                    liveness.verdict_maybe_left = false;
                }
                // Tried again at the next beat (the verdict also expires with its lease).
                Err(error) => tracing::warn!(node = %self.node, %error, "cannot clear the node's silence verdict"),
            }
        }
        Ok(())
    }

    /// Judges the node's heartbeats every [`JUDGE_EVERY`] until the session ends: when the
    /// detector finds it silent (its beats stopped while the connection stayed open), the
    /// node is NotReady at once — its alive key goes and the verdict is recorded, so the
    /// leader moves its replicas without waiting for the lease and the grace. A session
    /// that no longer holds the node (a newer one does) stands down.
    async fn judge(self, liveness: Arc<tokio::sync::Mutex<Liveness>>, nonce: String) {
        let mut tick = tokio::time::interval(JUDGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = std::time::Instant::now();
        loop {
            tick.tick().await;
            let now = std::time::Instant::now();
            let mut state = liveness.lock().await;
            if now.duration_since(last) > JUDGE_PAUSED {
                state.detector.judge_resumed(now);
            }
            last = now;
            let silence = now.duration_since(state.last_beat);
            // Fast when the detector says so and this controller is not too busy to tell;
            // after a whole node lease, whatever the load (as the node's own lease expired
            // when each node had one).
            let whole_lease = silence >= self.liveness.ttl();
            if state.silent || !(whole_lease || (state.detector.silent(now) && !self.lag.lagged(now))) {
                continue;
            }
            match self.store.get(&keys::node_session(&self.node)).await {
                Ok(Some(kv)) if kv.value == nonce.as_bytes() => {}
                Ok(_) => {
                    tracing::debug!(node = %self.node, "a newer session holds the node: this one no longer judges it");
                    return;
                }
                Err(error) => {
                    tracing::warn!(node = %self.node, %error, "cannot tell which session holds the node; judged later");
                    continue;
                }
            }
            let reason = format!(
                "no heartbeat for {:.1} s (phi {:.1}) with its connection open: its machine or its link is down",
                silence.as_secs_f64(),
                state.detector.phi(now).unwrap_or(0.0)
            );
            tracing::warn!(node = %self.node, %reason, "node judged silent: NotReady now");
            // The verdict names this session (a newer one makes it stale) and lives on a
            // lease of its own, so one left behind by a failure goes by itself.
            let verdict = async {
                let lease = self.store.grant_lease(self.registry.lease_ttl() * 2).await?;
                self.store.put_with_lease(&keys::node_silent(&self.node), format!("{nonce}\n{reason}").into_bytes(), Expect::Any, Some(lease)).await
            };
            state.verdict_maybe_left = true;
            if let Err(error) = verdict.await {
                tracing::warn!(node = %self.node, %error, "cannot record the node's silence; judged again");
                continue;
            }
            match self.store.delete(&keys::node_alive(&self.node), Expect::Any).await {
                Ok(_) => state.silent = true,
                Err(error) => {
                    tracing::warn!(node = %self.node, %error, "cannot mark the node NotReady; judged again");
                    let _ = self.store.delete(&keys::node_silent(&self.node), Expect::Any).await;
                }
            }
        }
    }

    /// Puts the node's alive key on this controller's liveness lease (a new lease when
    /// that one lapsed); the revision written. A node deleted meanwhile ends the session.
    async fn put_alive(&self) -> Result<Revision, Status> {
        let store_error = |e| status(NodeError::Store(e));
        if self.store.get(&keys::node(&self.node)).await.map_err(store_error)?.is_none() {
            return Err(status(NodeError::Unknown(self.node.clone())));
        }
        let key = keys::node_alive(&self.node);
        let lease = self.liveness.lease().await.map_err(store_error)?;
        match self.store.put_with_lease(&key, Vec::new(), Expect::Any, Some(lease)).await {
            Err(StoreError::LeaseNotFound(_)) => {
                self.liveness.lapsed(lease).await;
                let lease = self.liveness.lease().await.map_err(store_error)?;
                self.store.put_with_lease(&key, Vec::new(), Expect::Any, Some(lease)).await.map_err(store_error)
            }
            written => written.map_err(store_error),
        }
    }

    /// Writes the latest report of the node, one at a time, off the receive loop (so
    /// heartbeats never queue behind slow writes). Before comparing with the cached
    /// state it waits for that state to include this session's own last writes, so a
    /// change is never skipped because the cache still showed it.
    async fn write_statuses(self, mut reports: watch::Receiver<Option<pb::StatusReport>>) {
        let mut state = self.state.clone();
        let mut written: crate::store::Revision = 0;
        let mut conditions_written: Option<Vec<pb::NodeCondition>> = None;
        while reports.changed().await.is_ok() {
            let Some(report) = reports.borrow_and_update().clone() else { continue };
            if conditions_written.as_ref() != Some(&report.conditions) {
                match self.write_conditions(&report.conditions).await {
                    Ok(()) => conditions_written = Some(report.conditions.clone()),
                    Err(error) => tracing::warn!(node = %self.node, %error, "recording the node's conditions"),
                }
            }
            let caught_up = tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| s.revision >= written))
                .await
                .map(|result| result.map(|current| current.clone()));
            let current = match caught_up {
                Ok(Ok(current)) => current,
                Ok(Err(_)) => return,
                Err(_) => self.state.borrow().clone(),
            };
            let writes: Vec<TxnOp> = status_writes(&current, &self.node, &report)
                .into_iter()
                .map(|write| match write {
                    StatusWrite::Put { key, replica } => TxnOp::put(key, keys::encode(&replica), Expect::Any),
                    StatusWrite::Delete { key, revision } => TxnOp::Delete { key, expect: Expect::Revision(revision) },
                })
                .collect();
            // Not held through the writes: a thousand sessions writing under load each
            // held the picture they compared with, and those were hundreds of MiB.
            drop(current);
            let batches = crate::reconcile::runner::batches(writes);
            let results: Vec<Result<Option<crate::store::Revision>, StoreError>> = futures::stream::iter(batches)
                .map(|batch| {
                    let store = Arc::clone(&self.store);
                    async move { crate::reconcile::runner::write_batch(store.as_ref(), None, batch).await.unwrap_or_else(|error| vec![Err(error)]) }
                })
                .buffer_unordered(STATUS_WRITES)
                .flat_map(futures::stream::iter)
                .collect()
                .await;
            for result in results {
                match result {
                    Ok(revision) => written = written.max(revision.unwrap_or(0)),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(error) => tracing::warn!(node = %self.node, %error, "recording a status report"),
                }
            }
        }
    }

    /// Records the node's conditions as reported (none: the key goes).
    async fn write_conditions(&self, conditions: &[pb::NodeCondition]) -> Result<(), StoreError> {
        let key = keys::node_conditions(&self.node);
        if conditions.is_empty() {
            self.store.delete(&key, Expect::Any).await.map(|_| ())
        } else {
            let record = pb::NodeConditions { conditions: conditions.to_vec() };
            self.store.put(&key, keys::encode(&record), Expect::Any).await.map(|_| ())
        }
    }

    /// Sends the node's desired set now and whenever it changes, until the agent goes:
    /// the first whole, the next ones with the endpoints and routes that changed since the
    /// previous one when the agent takes deltas (`deltas`), whole otherwise.
    async fn send_desired(
        mut state: watch::Receiver<Arc<ClusterState>>,
        node: String,
        outgoing: Outgoing,
        secrets: Option<Arc<SecretsKey>>,
        deltas: Deltas,
        part_bytes: usize,
    ) {
        let open = |key: &str, stored: &pb::StoredConfig| open_secret(secrets.as_deref(), key, stored);
        // The last set sent, endpoints and routes aside.
        let mut last: Option<NodeDesired> = None;
        let mut shared = SentShared::default();
        let mut seen_version = None;
        let mut sent: Option<(u64, u64)> = None;
        let mut budget = SharedBudget::new(std::time::Instant::now());
        loop {
            // A picture is let go before every wait: a thousand sessions each holding the
            // one it last looked at kept tens of pictures alive through a readiness storm.
            let current = state.borrow_and_update().clone();
            // Recomputed only when this node's replicas or the shared part changed.
            let version = current.desired_version(&node);
            let mut to_send = None;
            if current.synced() && seen_version != Some(version) {
                budget.resize(current.nodes.len());
                let at = budget.send_at(sent, version, std::time::Instant::now());
                if at > std::time::Instant::now() {
                    drop(current);
                    // Only the shared part moved, and the budget is spent: wait, then take
                    // whatever the state is by then.
                    // A change meanwhile is looked at again: one of the node's own
                    // replicas goes at once.
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => continue,
                        changed = state.changed() => if changed.is_err() { return } else { continue },
                        () = outgoing.closed() => return,
                    }
                }
                seen_version = Some(version);
                let wanted = node_desired(&current, &node, &open);
                let changes = shared.changes(&current, &node, deltas);
                if last.as_ref() != Some(&wanted) || !changes.is_empty() {
                    let generation = u64::try_from(current.revision).unwrap_or(0);
                    let mut set = stamp(wanted.to_set(), generation);
                    if deltas.sets && last.is_some() {
                        set.delta = true;
                        if let Some(endpoints) = changes.endpoints {
                            set.endpoints = endpoints.changed;
                            set.endpoints_removed = endpoints.removed;
                        }
                        match changes.routes {
                            Some(RouteChanges::Whole(routes)) => {
                                set.routes = routes;
                                set.routes_changed = true;
                            }
                            Some(RouteChanges::Partial { changed, removed }) => {
                                set.routes = changed;
                                set.routes_removed = removed;
                                set.routes_partial = true;
                            }
                            None => {}
                        }
                    } else {
                        set.endpoints = whole_endpoints(&current);
                        set.routes = whole_routes(&current, &node);
                    }
                    to_send = Some((set, wanted));
                }
            }
            drop(current);
            if let Some((set, wanted)) = to_send {
                let parts = if deltas.parts { cut_into_parts(set, part_bytes) } else { vec![set] };
                for part in parts {
                    let message = pb::ControllerMessage { body: Some(pb::controller_message::Body::Desired(part)) };
                    if outgoing.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                last = Some(wanted);
                budget.spend(sent.is_some_and(|sent| sent.0 == version.0), std::time::Instant::now());
                sent = Some(version);
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return },
                () = outgoing.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn shared_only_sets_go_at_once_then_one_per_window() {
        let start = Instant::now();
        let mut budget = SharedBudget::new(start);
        assert_eq!(budget.send_at(None, (1, 1), start), start, "the first set goes at once");
        budget.spend(false, start);
        assert_eq!(budget.send_at(Some((1, 1)), (1, 2), start), start, "the first shared-only change: at once");
        budget.spend(true, start);
        let next = budget.send_at(Some((1, 2)), (1, 3), start);
        assert_eq!(next, start + SHARED_ONLY_EVERY, "the next one waits for the window's end");
        let halfway = start + SHARED_ONLY_EVERY / 2;
        assert_eq!(budget.send_at(Some((1, 2)), (1, 4), halfway), next, "more changes meanwhile go with it, no later");
        assert_eq!(budget.send_at(Some((1, 2)), (2, 4), start), start, "the node's own replicas changed: at once, budget or not");
        let later = start + SHARED_ONLY_EVERY * 3;
        assert_eq!(budget.send_at(Some((1, 4)), (1, 5), later), later, "a quiet window brings a token back");
        budget.spend(true, later);
        assert!(budget.send_at(Some((1, 5)), (1, 6), later) > later, "three quiet windows gave one token, no more");
        budget.resize(1000);
        assert_eq!(budget.send_at(Some((1, 5)), (1, 6), later), later + Duration::from_millis(200), "a 1,000-node cluster: one per 200 ms");
    }

    #[test]
    fn the_window_grows_with_the_cluster_past_100_nodes() {
        let table = [(0, 20), (3, 20), (100, 20), (250, 50), (1000, 200), (5000, 1000)];
        for (nodes, millis) in table {
            assert_eq!(shared_only_every(nodes), Duration::from_millis(millis), "{nodes} nodes");
        }
    }
}
