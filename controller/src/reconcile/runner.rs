//! Runs the reconcilers while this controller leads: plan on the latest state, carry the
//! plan out with compare-and-swap writes, wait until the state shows those writes, plan
//! again. A conflict or error only means the next pass sees newer state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use orch_api::events::EventKind;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use super::rebalance::{self, RebalanceSettings, Rebalancer};
use super::{plan, Action, EventDraft};
use crate::events::EventLog;
use crate::incidents::{LostNode, Outages};
use crate::keys;
use crate::state::ClusterState;
use crate::store::{Expect, Fence, Revision, Store, StoreError, TxnOp, MAX_TXN_OPS, TXN_BYTES};

/// Transactions (each of up to [`MAX_TXN_OPS`] writes) in flight at once while carrying
/// out a plan.
const CONCURRENT_BATCHES: usize = 8;

#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// How long a node may be NotReady before its replicas are replaced elsewhere.
    pub node_grace: Duration,
    /// How long a new leader waits before it moves any replica (node lease + grace).
    pub warmup: Duration,
    /// How often to plan even when nothing changed (node grace timers).
    pub resync: Duration,
    pub rebalance: RebalanceSettings,
}

/// When each node was first seen NotReady: the node lifecycle's only memory, rebuilt
/// from scratch by a new leader. Two guards keep a controller problem from looking like
/// node failures (Kubernetes' node lifecycle controller has both):
/// - warm-up: a new leader moves nothing before it has led for a whole node lease plus
///   the grace — agents whose sessions ended with the old leader need that long to
///   reconnect and heartbeat;
/// - full disruption: when every node is NotReady at once, nothing moves (there is
///   nowhere to go, and a network or controller fault is likelier than all nodes dying).
#[derive(Debug)]
pub struct NodeTracker {
    not_ready_since: BTreeMap<String, Instant>,
    /// When each Ready node was first seen Ready (a new leader sees them all now): the
    /// rebalancer's cool-down.
    ready_since: BTreeMap<String, Instant>,
    leading_since: Instant,
    disrupted: bool,
}

impl NodeTracker {
    pub fn new(leading_since: Instant) -> NodeTracker {
        NodeTracker { not_ready_since: BTreeMap::new(), ready_since: BTreeMap::new(), leading_since, disrupted: false }
    }

    /// The nodes lost at `now`, and the NotReady / Ready transitions seen.
    pub fn observe(&mut self, state: &ClusterState, now: Instant, grace: Duration, warmup: Duration) -> (BTreeSet<String>, Vec<EventDraft>) {
        let mut events = Vec::new();
        let mut lost = BTreeSet::new();
        self.not_ready_since.retain(|name, _| state.nodes.contains_key(name));
        self.ready_since.retain(|name, _| state.alive.contains(name) && state.nodes.contains_key(name));
        for name in state.nodes.keys() {
            if state.alive.contains(name) {
                self.ready_since.entry(name.clone()).or_insert(now);
                if self.not_ready_since.remove(name).is_some() {
                    events.push(EventDraft { kind: EventKind::NodeReady, object: format!("node/{name}"), message: "heartbeats are back".into() });
                }
                continue;
            }
            // Judged silent by the controller holding its session: lost now. Otherwise
            // its lease ran out (its agent may be restarting): lost after the grace.
            let silent = state.silence_of(name);
            let since = *self.not_ready_since.entry(name.clone()).or_insert_with(|| {
                let message = match silent {
                    Some(reason) => format!("{reason}; its replicas move now"),
                    None => format!("no heartbeat within its lease; its replicas move after {grace:?}"),
                };
                events.push(EventDraft { kind: EventKind::NodeNotReady, object: format!("node/{name}"), message });
                now
            });
            if silent.is_some() || now.duration_since(since) >= grace {
                lost.insert(name.clone());
            }
        }
        if now.duration_since(self.leading_since) < warmup {
            // A new leader's picture of leases may be stale (agents are reconnecting);
            // a silence verdict is not: a session saw the beats stop.
            lost.retain(|name| state.silence_of(name).is_some());
        }
        let everything_down = !state.nodes.is_empty() && self.not_ready_since.len() == state.nodes.len();
        if everything_down && !lost.is_empty() {
            if !self.disrupted {
                events.push(EventDraft {
                    kind: EventKind::FullDisruption,
                    object: "cluster".into(),
                    message: "no node is Ready: replicas stay where they are until one is".into(),
                });
            }
            self.disrupted = true;
            lost.clear();
        } else if !everything_down {
            self.disrupted = false;
        }
        (lost, events)
    }

    /// Whether some node is NotReady and still within its grace (a timer is running).
    pub fn pending(&self) -> bool {
        !self.not_ready_since.is_empty()
    }

    /// When each Ready node became Ready, as this tracker saw it.
    pub fn ready_since(&self) -> &BTreeMap<String, Instant> {
        &self.ready_since
    }

    /// Whether some Ready node is still within `cool_down` of becoming Ready (the
    /// rebalancer waits on a timer).
    pub fn cooling(&self, now: Instant, cool_down: Duration) -> bool {
        self.ready_since.values().any(|since| now.saturating_duration_since(*since) < cool_down)
    }

    /// The nodes in `lost`, with when each was first seen NotReady and why.
    pub fn described(&self, state: &ClusterState, lost: &BTreeSet<String>, now: Instant) -> BTreeMap<String, LostNode> {
        lost.iter()
            .map(|name| {
                let since = self.not_ready_since.get(name).copied().unwrap_or(now);
                let why = state.silence_of(name).map_or_else(|| "no heartbeat within its lease".to_owned(), str::to_owned);
                (name.clone(), LostNode { since, why })
            })
            .collect()
    }
}

/// A replica name: the service's name and five hex digits no other replica has.
fn new_replica_id(service: &str, taken: &BTreeSet<String>) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let seed = format!("{service}/{}/{}/{}", std::process::id(), crate::events::now_unix_ms(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let digest = Sha256::digest(seed.as_bytes());
        let id = format!("{service}-{}", &hex::encode(&digest[..3])[..5]);
        if !taken.contains(&id) {
            return id;
        }
    }
}

/// An action as the store write that carries it out.
fn write_of(action: Action) -> TxnOp {
    match action {
        Action::CreateReplica { key, replica } => TxnOp::put(key, keys::encode(&replica), Expect::Absent),
        Action::UpdateReplica { key, revision, replica } => TxnOp::put(key, keys::encode(&replica), Expect::Revision(revision)),
        Action::PutEndpoints { key, expect, endpoints } => TxnOp::put(key, keys::encode(&endpoints), expect),
        Action::UpdateService { key, revision, service } => TxnOp::put(key, keys::encode(&service), Expect::Revision(revision)),
        Action::PutClaim { key, expect, claim } => TxnOp::put(key, keys::encode(&claim), expect),
        Action::CreateRevision { key, mut revision } => {
            revision.created_unix_ms = crate::events::now_unix_ms();
            TxnOp::put(key, keys::encode(&revision), Expect::Absent)
        }
        Action::Delete { key, revision } => TxnOp::Delete { key, expect: Expect::Revision(revision) },
    }
}

/// Splits writes into transactions of at most [`MAX_TXN_OPS`] distinct keys and about
/// [`TXN_BYTES`] (a larger write goes alone), in order.
pub(crate) fn batches(writes: Vec<TxnOp>) -> Vec<Vec<TxnOp>> {
    let mut batches: Vec<Vec<TxnOp>> = Vec::new();
    let mut keys: BTreeSet<String> = BTreeSet::new();
    let mut bytes = 0;
    for write in writes {
        let full = batches.last().is_none_or(|batch| batch.len() >= MAX_TXN_OPS || keys.contains(write.key()) || bytes + write.size() > TXN_BYTES);
        if full {
            batches.push(Vec::new());
            keys.clear();
            bytes = 0;
        }
        bytes += write.size();
        keys.insert(write.key().to_owned());
        if let Some(batch) = batches.last_mut() {
            batch.push(write);
        }
    }
    batches
}

/// Each write's outcome (its revision, if it wrote one), or the error that failed its
/// whole batch.
pub type BatchOutcome = Result<Vec<Result<Option<Revision>, StoreError>>, StoreError>;

/// Carries out a batch of independent writes as one transaction (one round trip, one
/// commit); when one of them conflicts, the others one by one, so that a single stale
/// write does not hold back the rest until the next pass. Each write's outcome, or the
/// error that failed the batch as a whole. With a `fence` (a leader's writes), every
/// transaction carries it: a deposed leader's batch fails as a whole with
/// [`StoreError::Fenced`].
pub async fn write_batch(store: &dyn Store, fence: Option<&Fence>, batch: Vec<TxnOp>) -> BatchOutcome {
    let one = |write: TxnOp| async move { store.txn_fenced(fence, vec![write]).await.map(|revisions| revisions.into_iter().next().flatten()) };
    if let [write] = batch.as_slice() {
        return match one(write.clone()).await {
            Err(error @ StoreError::Fenced { .. }) => Err(error),
            outcome => Ok(vec![outcome]),
        };
    }
    match store.txn_fenced(fence, batch.clone()).await {
        Ok(revisions) => Ok(revisions.into_iter().map(Ok).collect()),
        Err(StoreError::Conflict { .. } | StoreError::LeaseNotFound(_)) => Ok(futures::stream::iter(batch).then(one).collect().await),
        Err(error) => Err(error),
    }
}

/// Runs until the state or leadership channel closes. `settled` receives the revision
/// of each state on which a whole pass found nothing to do. `leader` holds this
/// controller's fence while it leads (`None` otherwise); every write carries it.
pub async fn run(
    store: Arc<dyn Store>,
    mut state: watch::Receiver<Arc<ClusterState>>,
    mut leader: watch::Receiver<Option<Fence>>,
    events: EventLog,
    config: ReconcilerConfig,
    settled: watch::Sender<Revision>,
    metrics: Arc<crate::metrics::ControllerMetrics>,
) {
    let mut tracker = NodeTracker::new(Instant::now());
    let mut outages = Outages::default();
    let mut rebalancer = Rebalancer::default();
    // Replicas seen without a node, and since when (the scheduling latency's start).
    let mut unbound_since: std::collections::HashMap<String, Instant> = std::collections::HashMap::new();
    let mut min_revision: Revision = 0;
    // The leadership the passes run under: a new fence (even straight after another,
    // the leadership lost and won again between two looks) is a new leadership.
    let mut leading: Option<Fence> = None;
    // The content version of the last state a pass found nothing to do on: until the
    // content moves (or a grace timer runs), planning again would find nothing either.
    let mut idle_at: Option<u64> = None;
    loop {
        let Some(fence) = leader.borrow_and_update().clone() else {
            if leading.take().is_some() {
                tracing::info!("no longer leading: reconcilers paused");
            }
            if leader.changed().await.is_err() {
                return;
            }
            continue;
        };
        if leading.as_ref() != Some(&fence) {
            // A new leader first catches up with everything the previous one wrote.
            tracker = NodeTracker::new(Instant::now());
            outages = Outages::default();
            rebalancer = Rebalancer::default();
            idle_at = None;
            match store.list(keys::LEADER).await {
                Ok(listing) => {
                    min_revision = listing.revision;
                    leading = Some(fence.clone());
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the store's revision");
                    leading = None;
                    tokio::time::sleep(config.resync).await;
                    continue;
                }
            }
        }
        let current = tokio::select! {
            caught_up = state.wait_for(|s| s.synced() && s.revision >= min_revision) => match caught_up {
                Ok(current) => current.clone(),
                Err(_) => return,
            },
            changed = leader.changed() => {
                if changed.is_err() { return; }
                continue;
            }
        };
        // A cool-down ends without any change to the state: plan on until a pass after it.
        let cool_down_ends = config.rebalance.cool_down + config.resync * 2;
        let timers = tracker.pending() || tracker.cooling(Instant::now(), cool_down_ends) || rebalance::moving(&current);
        if idle_at == Some(current.content_version) && !timers {
            settled.send_replace(current.revision);
            tokio::select! {
                _ = state.changed() => {}
                _ = leader.changed() => {}
            }
            continue;
        }
        let pass_began = Instant::now();
        let unbound: BTreeSet<&str> = current.replicas.values().filter(|r| r.value.node.is_empty()).map(|r| r.value.id.as_str()).collect();
        unbound_since.retain(|id, _| unbound.contains(id.as_str()));
        for id in unbound {
            unbound_since.entry(id.to_owned()).or_insert(pass_began);
        }
        let (lost, node_events) = tracker.observe(&current, Instant::now(), config.node_grace, config.warmup);
        let mut taken: BTreeSet<String> = current.replicas.values().map(|r| r.value.id.clone()).collect();
        let mut plan = plan(&current, &lost, &mut |service| {
            let id = new_replica_id(service, &taken);
            taken.insert(id.clone());
            id
        });
        if plan.actions.is_empty() {
            // Nothing else to do: a replica may move to rebalance its service.
            let moves = rebalancer.plan(&current, tracker.ready_since(), Instant::now(), crate::events::now_unix_ms(), &config.rebalance);
            plan.actions = moves.actions;
            plan.events.extend(moves.events);
        }
        for event in node_events.into_iter().chain(plan.events) {
            events.emit(event.kind, event.object, event.message);
        }
        let lost = tracker.described(&current, &lost, Instant::now());
        for incident in outages.observe(&current, &lost, Instant::now(), crate::events::now_unix_ms()) {
            if let Some(measured) = &incident.incident {
                metrics.recovered(measured);
            }
            events.emit_reported(incident);
        }
        if plan.actions.is_empty() {
            idle_at = Some(current.content_version);
            settled.send_replace(current.revision);
            tokio::select! {
                _ = state.changed() => {}
                _ = leader.changed() => {}
                () = tokio::time::sleep(config.resync) => {}
            }
            continue;
        }
        let count = plan.actions.len();
        // Bindings: a replica created bound waited for this pass's planning; one bound
        // now waited since it was first seen unbound.
        // Each logged in the replica's span: its lines from apply to running carry it.
        for action in &plan.actions {
            match action {
                Action::CreateReplica { replica, .. } => {
                    let _span = tracing::info_span!("replica", replica = %replica.id, service = %replica.service).entered();
                    if replica.node.is_empty() {
                        tracing::info!("replica created; no node for it yet");
                    } else {
                        metrics.scheduled(pass_began.elapsed());
                        tracing::info!(node = %replica.node, "replica created and bound");
                    }
                }
                Action::UpdateReplica { replica, .. } if !replica.node.is_empty() => {
                    if let Some(since) = unbound_since.remove(&replica.id) {
                        metrics.scheduled(since.elapsed());
                        let _span = tracing::info_span!("replica", replica = %replica.id, service = %replica.service).entered();
                        tracing::info!(node = %replica.node, waited = ?since.elapsed(), "replica bound");
                    }
                }
                _ => {}
            }
        }
        let leader_now = leader.clone();
        let written: Vec<BatchOutcome> = futures::stream::iter(batches(plan.actions.into_iter().map(write_of).collect()))
            .map(|batch| {
                let store = Arc::clone(&store);
                let (leader_now, fence) = (leader_now.clone(), fence.clone());
                async move {
                    // Every batch carries the fence the pass was planned under (the store
                    // refuses it once another leads); one that changed meanwhile is not
                    // even tried.
                    if leader_now.borrow().as_ref() != Some(&fence) {
                        return Ok(Vec::new());
                    }
                    write_batch(store.as_ref(), Some(&fence), batch).await
                }
            })
            .buffer_unordered(CONCURRENT_BATCHES)
            .collect()
            .await;
        idle_at = None;
        let mut conflicts = 0;
        let mut failed = false;
        let (mut landed, mut attempted) = (0, 0);
        for batch in &written {
            // A batch that failed as a whole counts once.
            let outcomes: Vec<Result<Option<Revision>, &StoreError>> = match batch {
                Ok(outcomes) => outcomes.iter().map(|outcome| outcome.as_ref().copied()).collect(),
                Err(error) => vec![Err(error)],
            };
            for outcome in outcomes {
                attempted += 1;
                match outcome {
                    Ok(Some(revision)) => {
                        landed += 1;
                        min_revision = min_revision.max(revision);
                    }
                    Ok(None) => landed += 1,
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    // The election hears of it at its next renewal; until then nothing lands.
                    Err(error @ StoreError::Fenced { .. }) => tracing::info!(%error, "a write of this pass was refused: leadership has moved on"),
                    Err(error) => {
                        failed = true;
                        tracing::warn!(%error, "reconciler write failed");
                    }
                }
            }
        }
        if failed {
            // A write that failed on our side may still have committed: plan next on a
            // state that includes everything the store has now, so it is not made twice.
            if let Ok(listing) = store.list(keys::LEADER).await {
                min_revision = min_revision.max(listing.revision);
            }
        }
        metrics.reconciled(pass_began.elapsed());
        tracing::debug!(count, conflicts, revision = min_revision, "plan carried out");
        if attempted > 0 && landed == 0 {
            // Nothing went through: do not spin on a failing store.
            tokio::time::sleep(config.resync).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use orch_api::pb;

    use super::*;
    use crate::state::Versioned;

    fn node(state: &mut ClusterState, name: &str, alive: bool) {
        state.nodes.insert(name.into(), Versioned { key: keys::node(name), value: std::sync::Arc::new(pb::Node::default()), mod_revision: 1 });
        if alive {
            state.alive.insert(name.into());
        }
    }

    #[test]
    fn a_node_is_lost_only_after_the_grace() {
        let mut state = ClusterState { revision: 1, ..ClusterState::default() };
        node(&mut state, "n1", false);
        node(&mut state, "n2", true);
        let grace = Duration::from_secs(5);
        let start = Instant::now();
        let mut tracker = NodeTracker::new(start);
        let (lost, events) = tracker.observe(&state, start, grace, Duration::ZERO);
        assert!(lost.is_empty());
        assert_eq!(events.iter().map(|e| e.kind).collect::<Vec<_>>(), [EventKind::NodeNotReady]);
        let (lost, events) = tracker.observe(&state, start + Duration::from_secs(4), grace, Duration::ZERO);
        assert!(lost.is_empty() && events.is_empty(), "within the grace, nothing more");
        let (lost, _) = tracker.observe(&state, start + grace, grace, Duration::ZERO);
        assert_eq!(lost, BTreeSet::from(["n1".to_owned()]));
        state.alive.insert("n1".into());
        let (lost, events) = tracker.observe(&state, start + grace * 2, grace, Duration::ZERO);
        assert!(lost.is_empty());
        assert_eq!(events.iter().map(|e| e.kind).collect::<Vec<_>>(), [EventKind::NodeReady]);
        state.alive.remove("n1");
        let (lost, _) = tracker.observe(&state, start + grace * 2 + Duration::from_secs(1), grace, Duration::ZERO);
        assert!(lost.is_empty(), "the grace starts again from the new NotReady");
    }

    #[test]
    fn a_node_judged_silent_is_lost_at_once_and_one_whose_lease_ran_out_after_the_grace() {
        let mut state = ClusterState { revision: 1, ..ClusterState::default() };
        node(&mut state, "silent", false);
        node(&mut state, "restarting", false);
        node(&mut state, "fine", true);
        let verdict =
            |session: &str| crate::state::Verdict { session: session.into(), reason: "no heartbeat for 1.0 s (phi 8.3) with its connection open".into() };
        state.silent.insert("silent".into(), verdict("s2"));
        state.sessions.insert("silent".into(), "s2".into());
        // A verdict of a session a newer one replaced (s1, now s3) is stale.
        state.silent.insert("restarting".into(), verdict("s1"));
        state.sessions.insert("restarting".into(), "s3".into());
        let grace = Duration::from_secs(5);
        let start = Instant::now();
        let mut tracker = NodeTracker::new(start);
        let (lost, events) = tracker.observe(&state, start, grace, Duration::ZERO);
        assert_eq!(lost, BTreeSet::from(["silent".to_owned()]), "only the node its current session judged silent, at once");
        let silent = events.iter().find(|e| e.object == "node/silent").expect("its NotReady event");
        assert!(silent.message.starts_with("no heartbeat for 1.0 s") && silent.message.ends_with("its replicas move now"), "{}", silent.message);
        let (lost, _) = tracker.observe(&state, start + grace, grace, Duration::ZERO);
        assert_eq!(lost, BTreeSet::from(["silent".to_owned(), "restarting".to_owned()]), "the other after its grace");
        // Even while a new leader warms up.
        let mut warming = NodeTracker::new(start);
        let (lost, _) = warming.observe(&state, start, grace, Duration::from_secs(10));
        assert_eq!(lost, BTreeSet::from(["silent".to_owned()]), "a verdict is not stale liveness");
        // A silence verdict on a node that is alive again means nothing.
        state.alive.insert("silent".into());
        let (lost, _) = tracker.observe(&state, start + grace, grace, Duration::ZERO);
        assert!(!lost.contains("silent"));
    }

    #[test]
    fn a_new_leader_warms_up_and_full_disruption_moves_nothing() {
        let mut state = ClusterState { revision: 1, ..ClusterState::default() };
        node(&mut state, "n1", false);
        node(&mut state, "n2", true);
        let grace = Duration::from_secs(1);
        let warmup = Duration::from_secs(6);
        let start = Instant::now();
        let mut tracker = NodeTracker::new(start);
        tracker.observe(&state, start, grace, warmup);
        let (lost, _) = tracker.observe(&state, start + Duration::from_secs(3), grace, warmup);
        assert!(lost.is_empty(), "still warming up");
        let (lost, _) = tracker.observe(&state, start + warmup, grace, warmup);
        assert_eq!(lost, BTreeSet::from(["n1".to_owned()]));
        state.alive.remove("n2");
        let (lost, events) = tracker.observe(&state, start + warmup, grace, warmup);
        assert!(lost.is_empty(), "every node down: nothing moves");
        assert_eq!(events.iter().map(|e| e.kind).collect::<Vec<_>>(), [EventKind::NodeNotReady, EventKind::FullDisruption]);
        let (lost, events) = tracker.observe(&state, start + warmup + grace, grace, warmup);
        assert!(lost.is_empty() && events.is_empty(), "still nothing, said once");
    }

    #[test]
    fn writes_go_in_transactions_of_distinct_keys_and_bounded_size() {
        let put = |key: &str| TxnOp::put(key, vec![], Expect::Any);
        let mut writes: Vec<TxnOp> = (0..MAX_TXN_OPS + 5).map(|i| put(&format!("k{i}"))).collect();
        writes.insert(3, put("k1"));
        let sizes: Vec<usize> = batches(writes.clone()).iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, MAX_TXN_OPS, 3], "a key seen again starts a new batch; none exceeds the limit");
        let flat: Vec<TxnOp> = batches(writes.clone()).into_iter().flatten().collect();
        assert_eq!(flat, writes, "in order, nothing lost");
        assert!(batches(Vec::new()).is_empty());
        // Large records: about TXN_BYTES a batch, and one larger still goes, alone.
        let big = |key: &str, size: usize| TxnOp::put(key, vec![0; size], Expect::Any);
        let sizes: Vec<usize> =
            batches(vec![big("a", TXN_BYTES / 2), big("b", TXN_BYTES / 2), big("c", 10), big("d", 2 * TXN_BYTES), big("e", 1)]).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 2, 1, 1]);
    }

    #[test]
    fn replica_ids_are_the_service_name_and_five_hex_digits() {
        let taken = BTreeSet::new();
        let id = new_replica_id("web", &taken);
        assert!(id.starts_with("web-") && id.len() == 9 && id[4..].chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
}
