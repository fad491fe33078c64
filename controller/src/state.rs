//! The controller's picture of the cluster: every record under `/orch/` (but events and
//! the VIP and node-port IPAM), decoded, as of one store revision. One task keeps it current with a list
//! followed by a watch from the listing's revision (re-listing when the watch ends), and
//! publishes each new picture on a `tokio::sync::watch` channel — so reconcilers and
//! agent sessions always see a whole, consistent state and skip the intermediate ones
//! they were too slow to see (level-triggered: they never need every event).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use orch_api::pb;
use tokio::sync::watch;

use crate::keys;
use crate::store::{KeyValue, Revision, Store, WatchEvent};

/// The shortest time between two published pictures while writes keep coming.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(20);
/// After this long without a change, check whether the store's revision moved on
/// elsewhere (see `confirm_revision`).
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// A record and the revision a compare-and-swap on it must name. The value is shared:
/// each published picture is a copy of the maps, not of every record (a deep copy of
/// 10,000 replicas every 20 ms, and the older pictures slow consumers still held, were
/// ~140 MB of a 1,000-node controller's heap).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub key: String,
    pub value: Arc<T>,
    pub mod_revision: Revision,
}

/// A session's judgement that its node is silent (`/orch/silent/nodes/<n>`: the
/// session's nonce, a newline, the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub session: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    /// The store revision this picture is complete up to; 0 before the first listing.
    pub revision: Revision,
    /// Service name → service.
    pub services: BTreeMap<String, Versioned<pb::Service>>,
    /// Store key (`/orch/replicas/<service>/<id>`) → replica record.
    pub replicas: BTreeMap<String, Versioned<pb::Replica>>,
    /// (node, replica id) → the replica as that node reported it.
    pub statuses: BTreeMap<(String, String), Versioned<pb::ReplicaReport>>,
    /// Node name → node record.
    pub nodes: BTreeMap<String, Versioned<pb::Node>>,
    /// Nodes whose liveness lease is alive.
    pub alive: BTreeSet<String>,
    /// Node name → the silence verdict a session of it recorded.
    pub silent: BTreeMap<String, Verdict>,
    /// Node name → the session (nonce) that holds it now.
    pub sessions: BTreeMap<String, String>,
    /// Node name → how it may be scheduled, for the nodes cordoned or draining.
    pub scheduling: BTreeMap<String, Versioned<pb::NodeScheduling>>,
    /// Service name → its endpoints record.
    pub endpoints: BTreeMap<String, Versioned<pb::ServiceEndpoints>>,
    /// (service, slot) → the node holding that slot's local volumes.
    pub claims: BTreeMap<(String, u32), Versioned<pb::VolumeClaim>>,
    /// (kind, name) → a Config or a Secret (sealed), as stored.
    pub configs: BTreeMap<(i32, String), Versioned<pb::StoredConfig>>,
    /// Services deleted with their volumes.
    pub purges: BTreeMap<String, Versioned<pb::PurgedVolumes>>,
    /// Store key (`/orch/revisions/<service>/<number>`) → a template a service ran; in
    /// order within each service.
    pub revisions: BTreeMap<String, Versioned<pb::ServiceRevision>>,
    /// Pod subnet index → the node that claimed it (`/orch/ipam/nodes/<index>`).
    pub subnets: BTreeMap<u32, String>,
    /// Identity → a running controller (agents learn every one's address).
    pub controllers: BTreeMap<String, Versioned<pb::ControllerInfo>>,
    /// Node name → keys of the replicas bound to it (an index over `replicas`).
    pub by_node: BTreeMap<String, BTreeSet<String>>,
    /// Bumped on every change to the records above (not on changes to keys the picture
    /// ignores, such as events): consumers skip recomputing when it did not move.
    pub content_version: u64,
    /// Node name → the content version at which the replicas bound to it last changed:
    /// its own part of its desired set.
    pub node_versions: BTreeMap<String, u64>,
    /// The content version at which what every node's desired set shares last changed:
    /// endpoints, nodes (routes), Configs and Secrets, purged volumes.
    pub shared_version: u64,
    /// Node name → the content version at which its record (its route) last changed or
    /// went; a node deleted keeps its entry, so sessions learn that its route went.
    pub route_versions: BTreeMap<String, u64>,
    /// `route_versions` by version: whose route changed after a session's last set.
    pub route_log: BTreeSet<(u64, String)>,
    /// The version of the listing the log starts at (a re-list starts it again): a
    /// session whose last routes are older gets them whole.
    pub routes_since: u64,
    /// That shared part, computed once per picture by the first session that needs it.
    pub shared_desired: Memo<crate::nodes::SharedDesired>,
    /// (service, the endpoints revision a session last sent, the revision now) → what
    /// changed in its ready addresses, computed once for every session that needs it.
    pub ready_changes: MemoMap<(String, Revision, Revision), pb::ServiceEndpoints>,
    /// What the changes applied since the last picture touched (the publisher's only).
    pub(crate) touched: Touched,
}

/// Which parts of the desired sets a batch of changes touched.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Touched {
    nodes: BTreeSet<String>,
    shared: bool,
    /// Nodes whose record (route) was written or deleted.
    routes: BTreeSet<String>,
}

/// Deleted nodes whose route removal the route log keeps (see `ClusterState::stamp`).
const ROUTE_TOMBSTONES: usize = 1024;

/// A value computed at most once per picture, on first use; pictures compare equal
/// whatever their memos hold. A copy keeps the value (unlike [`MemoMap`]'s): only
/// published pictures compute it, never the publisher's working state they are copied from.
#[derive(Clone, Default)]
pub struct Memo<T>(std::sync::OnceLock<Arc<T>>);

impl<T> Memo<T> {
    pub fn get_or_init(&self, init: impl FnOnce() -> T) -> Arc<T> {
        Arc::clone(self.0.get_or_init(|| Arc::new(init())))
    }
}

impl<T> PartialEq for Memo<T> {
    fn eq(&self, _: &Memo<T>) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Memo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "Memo(computed)" } else { "Memo(empty)" })
    }
}

/// Values computed at most once per picture each, on first use, by key; a copy of a
/// picture starts with none (each picture computes its own), and pictures compare equal
/// whatever their memos hold.
pub struct MemoMap<K, V>(std::sync::Mutex<std::collections::HashMap<K, Arc<V>>>);

impl<K: std::hash::Hash + Eq, V> MemoMap<K, V> {
    /// The value for `key`, computed by `init` unless there is one (outside the lock: the
    /// others' look-ups never wait for a computation; two at once keep the first).
    pub fn get_or_init(&self, key: K, init: impl FnOnce() -> V) -> Arc<V> {
        let lock = || self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(value) = lock().get(&key) {
            return Arc::clone(value);
        }
        let value = Arc::new(init());
        Arc::clone(lock().entry(key).or_insert(value))
    }

    /// How many values were computed.
    pub fn computed(&self) -> usize {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

impl<K, V> Default for MemoMap<K, V> {
    fn default() -> Self {
        MemoMap(std::sync::Mutex::new(std::collections::HashMap::new()))
    }
}

impl<K, V> Clone for MemoMap<K, V> {
    fn clone(&self) -> Self {
        MemoMap::default()
    }
}

impl<K, V> PartialEq for MemoMap<K, V> {
    fn eq(&self, _: &MemoMap<K, V>) -> bool {
        true
    }
}

impl<K, V> std::fmt::Debug for MemoMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoMap")
    }
}

impl ClusterState {
    /// Whether the first listing has been loaded.
    pub fn synced(&self) -> bool {
        self.revision > 0
    }

    /// What a node's desired set depends on, as two versions: its own replicas', and the
    /// shared part's. A session recomputes the set only when this moved.
    pub fn desired_version(&self, node: &str) -> (u64, u64) {
        (self.node_versions.get(node).copied().unwrap_or(0), self.shared_version)
    }

    /// Stamps the changes applied since the last picture with `version`.
    pub(crate) fn stamp(&mut self, version: u64) {
        self.content_version = version;
        let touched = std::mem::take(&mut self.touched);
        for node in touched.nodes {
            self.node_versions.insert(node, version);
        }
        if touched.shared {
            self.shared_version = version;
        }
        for node in touched.routes {
            if let Some(before) = self.route_versions.insert(node.clone(), version) {
                self.route_log.remove(&(before, node.clone()));
            }
            self.route_log.insert((version, node));
        }
        // The deleted nodes' entries are kept for the sessions that have not sent their
        // removal yet, up to a bound: the oldest go, and a session older than them gets
        // the routes whole.
        let mut deleted = self.route_versions.len().saturating_sub(self.nodes.len());
        while deleted > ROUTE_TOMBSTONES {
            let Some((at, node)) = self.route_log.iter().find(|(_, node)| !self.nodes.contains_key(node)).cloned() else { break };
            self.route_log.remove(&(at, node.clone()));
            self.route_versions.remove(&node);
            self.routes_since = self.routes_since.max(at);
            deleted -= 1;
        }
    }

    /// The nodes whose route changed or went after content version `since`, in version
    /// order; `None` when this picture cannot say (it was listed afresh after `since`, or
    /// let go of a deleted node's entry newer than `since`).
    pub fn routes_changed_since(&self, since: u64) -> Option<impl Iterator<Item = &str> + '_> {
        (since >= self.routes_since).then(|| self.route_log.range((since + 1, String::new())..).map(|(_, node)| node.as_str()))
    }

    /// What the node the replica is bound to last reported about it.
    pub fn status_of(&self, replica: &pb::Replica) -> Option<&pb::ReplicaStatus> {
        if replica.node.is_empty() {
            return None;
        }
        self.statuses.get(&(replica.node.clone(), replica.id.clone())).and_then(|s| s.value.status.as_ref())
    }

    /// Why the node was judged silent, when the session that judged it still holds it (a
    /// verdict of a session a newer one replaced is stale).
    pub fn silence_of(&self, node: &str) -> Option<&str> {
        self.silent.get(node).filter(|v| self.sessions.get(node) == Some(&v.session)).map(|v| v.reason.as_str())
    }

    /// Ready: its node is alive and reports it ready.
    pub fn is_ready(&self, replica: &pb::Replica) -> bool {
        self.alive.contains(&replica.node) && self.status_of(replica).is_some_and(|s| s.ready)
    }

    /// Takes no new replicas: cordoned or draining.
    pub fn is_unschedulable(&self, node: &str) -> bool {
        self.scheduling.get(node).is_some_and(|s| s.value.unschedulable || s.value.draining)
    }

    /// Its replicas are to be replaced elsewhere.
    pub fn is_draining(&self, node: &str) -> bool {
        self.scheduling.get(node).is_some_and(|s| s.value.draining)
    }

    pub fn replicas_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Versioned<pb::Replica>> + 'a {
        let prefix = keys::replicas_of(service);
        self.replicas.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix)).map(|(_, v)| v)
    }

    /// The recorded templates of `service`, oldest first.
    pub fn revisions_of<'a>(&'a self, service: &'a str) -> impl Iterator<Item = &'a Versioned<pb::ServiceRevision>> + 'a {
        let prefix = keys::revisions_of(service);
        self.revisions.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix)).map(|(_, v)| v)
    }

    pub fn replicas_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Versioned<pb::Replica>> + 'a {
        self.by_node.get(node).into_iter().flatten().filter_map(|key| self.replicas.get(key))
    }

    fn unindex(&mut self, key: &str) {
        if let Some(old) = self.replicas.get(key) {
            if !old.value.node.is_empty() {
                self.touched.nodes.insert(old.value.node.clone());
            }
            if let Some(keys) = self.by_node.get_mut(&old.value.node) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_node.remove(&old.value.node);
                }
            }
        }
    }

    /// Applies one change; returns whether it concerned this picture.
    pub(crate) fn apply(&mut self, event: &WatchEvent) -> bool {
        match event {
            WatchEvent::Put(kv) => self.put(kv),
            WatchEvent::Delete { key, .. } => self.remove(key),
        }
    }

    fn put(&mut self, kv: &KeyValue) -> bool {
        fn decoded<T: prost::Message + Default>(kv: &KeyValue) -> Option<Versioned<T>> {
            match keys::decode::<T>(&kv.key, &kv.value) {
                Ok(value) => Some(Versioned { key: kv.key.clone(), value: Arc::new(value), mod_revision: kv.mod_revision }),
                Err(error) => {
                    tracing::warn!(%error, "ignoring a corrupt record");
                    None
                }
            }
        }
        let key = kv.key.as_str();
        if let Some(name) = key.strip_prefix(keys::SERVICES) {
            decoded(kv).map(|v| self.services.insert(name.to_owned(), v)).is_some()
        } else if key.starts_with(keys::REPLICAS) {
            let Some(replica) = decoded::<pb::Replica>(kv) else { return false };
            self.unindex(key);
            if !replica.value.node.is_empty() {
                self.touched.nodes.insert(replica.value.node.clone());
                self.by_node.entry(replica.value.node.clone()).or_default().insert(key.to_owned());
            }
            self.replicas.insert(key.to_owned(), replica);
            true
        } else if let Some(rest) = key.strip_prefix(keys::STATUS) {
            let Some((node, id)) = rest.split_once('/') else { return false };
            decoded(kv).map(|v| self.statuses.insert((node.to_owned(), id.to_owned()), v)).is_some()
        } else if let Some(name) = key.strip_prefix(keys::NODES) {
            self.touched.shared = true;
            self.touched.routes.insert(name.to_owned());
            decoded(kv).map(|v| self.nodes.insert(name.to_owned(), v)).is_some()
        } else if let Some(name) = key.strip_prefix(keys::NODES_ALIVE) {
            self.alive.insert(name.to_owned());
            true
        } else if let Some(name) = key.strip_prefix(keys::NODES_SILENT) {
            let text = String::from_utf8_lossy(&kv.value);
            let (session, reason) = text.split_once('\n').unwrap_or(("", &text));
            self.silent.insert(name.to_owned(), Verdict { session: session.to_owned(), reason: reason.to_owned() });
            true
        } else if let Some(name) = key.strip_prefix(keys::NODE_SESSIONS) {
            // Kept, but no content change: a session starting changes no desired set nor
            // plan (a verdict it makes stale is followed by its alive key at once).
            self.sessions.insert(name.to_owned(), String::from_utf8_lossy(&kv.value).into_owned());
            false
        } else if let Some(name) = key.strip_prefix(keys::NODE_SCHEDULING) {
            decoded(kv).map(|v| self.scheduling.insert(name.to_owned(), v)).is_some()
        } else if let Some(name) = key.strip_prefix(keys::ENDPOINTS) {
            self.touched.shared = true;
            decoded(kv).map(|v| self.endpoints.insert(name.to_owned(), v)).is_some()
        } else if key.starts_with(keys::CONFIGS) || key.starts_with(keys::SECRETS) {
            self.touched.shared = true;
            decoded::<pb::StoredConfig>(kv).map(|v| self.configs.insert((v.value.kind, v.value.name.clone()), v)).is_some()
        } else if key.starts_with(keys::VOLUME_CLAIMS) {
            decoded::<pb::VolumeClaim>(kv).map(|v| self.claims.insert((v.value.service.clone(), v.value.slot), v)).is_some()
        } else if let Some(name) = key.strip_prefix(keys::VOLUME_PURGES) {
            self.touched.shared = true;
            decoded(kv).map(|v| self.purges.insert(name.to_owned(), v)).is_some()
        } else if key.starts_with(keys::REVISIONS) {
            decoded(kv).map(|v| self.revisions.insert(key.to_owned(), v)).is_some()
        } else if let Some(identity) = key.strip_prefix(keys::CONTROLLERS) {
            self.touched.shared = true;
            decoded(kv).map(|v| self.controllers.insert(identity.to_owned(), v)).is_some()
        } else if let Some(index) = key.strip_prefix(keys::NODE_SUBNETS) {
            // Kept for registrations; in no desired set nor plan.
            if let Ok(index) = index.parse() {
                self.subnets.insert(index, String::from_utf8_lossy(&kv.value).into_owned());
            }
            false
        } else {
            false
        }
    }

    fn remove(&mut self, key: &str) -> bool {
        if let Some(name) = key.strip_prefix(keys::SERVICES) {
            self.services.remove(name).is_some()
        } else if key.starts_with(keys::REPLICAS) {
            self.unindex(key);
            self.replicas.remove(key).is_some()
        } else if let Some(rest) = key.strip_prefix(keys::STATUS) {
            let Some((node, id)) = rest.split_once('/') else { return false };
            self.statuses.remove(&(node.to_owned(), id.to_owned())).is_some()
        } else if let Some(name) = key.strip_prefix(keys::NODES) {
            self.touched.shared = true;
            self.touched.routes.insert(name.to_owned());
            self.nodes.remove(name).is_some()
        } else if let Some(name) = key.strip_prefix(keys::NODES_ALIVE) {
            self.alive.remove(name)
        } else if let Some(name) = key.strip_prefix(keys::NODES_SILENT) {
            self.silent.remove(name).is_some()
        } else if let Some(name) = key.strip_prefix(keys::NODE_SESSIONS) {
            self.sessions.remove(name);
            false
        } else if let Some(name) = key.strip_prefix(keys::NODE_SCHEDULING) {
            self.scheduling.remove(name).is_some()
        } else if let Some(name) = key.strip_prefix(keys::ENDPOINTS) {
            self.touched.shared = true;
            self.endpoints.remove(name).is_some()
        } else if let Some(name) = key.strip_prefix(keys::CONFIGS) {
            self.touched.shared = true;
            self.configs.remove(&(pb::ConfigKind::Config.into(), name.to_owned())).is_some()
        } else if let Some(name) = key.strip_prefix(keys::SECRETS) {
            self.touched.shared = true;
            self.configs.remove(&(pb::ConfigKind::Secret.into(), name.to_owned())).is_some()
        } else if let Some(rest) = key.strip_prefix(keys::VOLUME_CLAIMS) {
            let Some((service, slot)) = rest.split_once('/') else { return false };
            let Ok(slot) = slot.parse::<u32>() else { return false };
            self.claims.remove(&(service.to_owned(), slot)).is_some()
        } else if let Some(name) = key.strip_prefix(keys::VOLUME_PURGES) {
            self.touched.shared = true;
            self.purges.remove(name).is_some()
        } else if key.starts_with(keys::REVISIONS) {
            self.revisions.remove(key).is_some()
        } else if let Some(identity) = key.strip_prefix(keys::CONTROLLERS) {
            self.touched.shared = true;
            self.controllers.remove(identity).is_some()
        } else if let Some(index) = key.strip_prefix(keys::NODE_SUBNETS) {
            if let Ok(index) = index.parse::<u32>() {
                self.subnets.remove(&index);
            }
            false
        } else {
            false
        }
    }
}

/// Keeps a [`ClusterState`] current; dropping it stops the task.
pub struct StateWatcher {
    receiver: watch::Receiver<Arc<ClusterState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StateWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StateWatcher {
    pub fn spawn(store: Arc<dyn Store>) -> StateWatcher {
        let (sender, receiver) = watch::channel(Arc::new(ClusterState::default()));
        let task = tokio::spawn(follow(store, sender));
        StateWatcher { receiver, task }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.receiver.clone()
    }

    pub fn current(&self) -> Arc<ClusterState> {
        self.receiver.borrow().clone()
    }
}

/// Waits until the picture has caught up with `revision`.
pub async fn wait_for_revision(receiver: &mut watch::Receiver<Arc<ClusterState>>, revision: Revision) -> Option<Arc<ClusterState>> {
    receiver.wait_for(|state| state.revision >= revision).await.ok().map(|state| state.clone())
}

async fn follow(store: Arc<dyn Store>, sender: watch::Sender<Arc<ClusterState>>) {
    // Carried across re-lists, so that a consumer never sees a version again.
    let mut version = 0;
    loop {
        match follow_once(store.as_ref(), &sender, &mut version).await {
            Ok(()) => return, // nobody listens any more
            Err(error) => {
                tracing::warn!(%error, "cluster state watch ended; listing again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The store's current revision if this picture is complete up to it: a fresh listing
/// holds exactly the records the picture holds, at the same revisions (so every change
/// between the picture's revision and the listing's was to keys the picture ignores).
async fn confirm_revision(store: &dyn Store, state: &ClusterState) -> Option<Revision> {
    // A one-key listing says the store's revision cheaply: only when it moved is the
    // whole prefix worth listing.
    if store.list(keys::LEADER).await.ok()?.revision <= state.revision {
        return None;
    }
    let listing = store.list(keys::ROOT).await.ok()?;
    if listing.revision <= state.revision {
        return None;
    }
    let mut fresh = ClusterState::default();
    for kv in &listing.items {
        fresh.put(kv);
    }
    let same = fresh.services == state.services
        && fresh.replicas == state.replicas
        && fresh.statuses == state.statuses
        && fresh.nodes == state.nodes
        && fresh.alive == state.alive
        && fresh.silent == state.silent
        && fresh.sessions == state.sessions
        && fresh.scheduling == state.scheduling
        && fresh.endpoints == state.endpoints
        && fresh.claims == state.claims
        && fresh.configs == state.configs
        && fresh.purges == state.purges
        && fresh.revisions == state.revisions
        && fresh.subnets == state.subnets;
    same.then_some(listing.revision)
}

async fn follow_once(store: &dyn Store, sender: &watch::Sender<Arc<ClusterState>>, version: &mut u64) -> Result<(), String> {
    let listing = store.list(keys::ROOT).await.map_err(|e| e.to_string())?;
    *version += 1;
    let mut state = ClusterState { revision: listing.revision, ..ClusterState::default() };
    for kv in &listing.items {
        state.put(kv);
    }
    // A new listing: every part of every desired set is new.
    state.touched.shared = true;
    state.stamp(*version);
    state.routes_since = *version;
    if sender.send(Arc::new(state.clone())).is_err() {
        return Ok(());
    }
    let mut stream = store.watch(keys::ROOT, listing.revision + 1).await.map_err(|e| e.to_string())?;
    let mut last_publish = tokio::time::Instant::now();
    loop {
        let first = match tokio::time::timeout(IDLE_CHECK, stream.next()).await {
            Ok(Some(first)) => first,
            Ok(None) => return Err("the watch ended".into()),
            Err(_) => {
                // Quiet for a while: the store's revision may have moved on through keys
                // outside this prefix (a shared etcd). Whoever waits for it is told.
                if let Some(revision) = confirm_revision(store, &state).await {
                    if revision > state.revision {
                        state.revision = revision;
                        sender.send_replace(Arc::new(state.clone()));
                    }
                }
                continue;
            }
        };
        let first = first.map_err(|e| e.to_string())?;
        state.revision = state.revision.max(first.revision());
        let mut changed = state.apply(&first);
        // Take whatever else is already queued — and, when the last picture went out less
        // than PUBLISH_INTERVAL ago, whatever arrives until then — and publish once: under
        // a burst of writes consumers see at most one picture per interval instead of one
        // per write. Changes to keys the picture ignores (events, IPAM) advance the
        // revision only, so that whoever waits for a revision sees it reached.
        let publish_at = last_publish + PUBLISH_INTERVAL;
        loop {
            let next = match stream.try_next() {
                Some(next) => next,
                None if tokio::time::Instant::now() < publish_at => match tokio::time::timeout_at(publish_at, stream.next()).await {
                    Ok(Some(next)) => next,
                    Ok(None) => return Err("the watch ended".into()),
                    Err(_) => break,
                },
                None => break,
            };
            let event = next.map_err(|e| e.to_string())?;
            state.revision = state.revision.max(event.revision());
            changed |= state.apply(&event);
        }
        if sender.is_closed() {
            return Ok(());
        }
        if changed {
            *version += 1;
            state.stamp(*version);
        }
        sender.send_replace(Arc::new(state.clone()));
        last_publish = tokio::time::Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(state: &mut ClusterState, key: &str, value: Vec<u8>, revision: Revision) {
        state.apply(&WatchEvent::Put(KeyValue { key: key.into(), value, create_revision: revision, mod_revision: revision, lease: 0 }));
    }

    #[test]
    fn the_route_log_keeps_a_bounded_number_of_deleted_nodes() {
        let mut state = ClusterState::default();
        let node = |n: usize| keys::node(&format!("n{n}"));
        let record = keys::encode(&pb::Node::default());
        let count = ROUTE_TOMBSTONES + 10;
        for n in 0..=count {
            put(&mut state, &node(n), record.clone(), 1);
        }
        state.stamp(1);
        state.routes_since = 1;
        // Deleted one per version: the first ten deletions go from the log.
        for n in 0..count {
            state.apply(&WatchEvent::Delete { key: node(n), revision: 2 });
            state.stamp(2 + n as u64);
        }
        assert_eq!(state.route_versions.len() - state.nodes.len(), ROUTE_TOMBSTONES, "at most {ROUTE_TOMBSTONES} deleted nodes kept");
        assert_eq!(state.routes_since, 11, "the newest deletion let go of");
        assert!(state.routes_changed_since(5).is_none(), "a session from before it: whole routes");
        let since_11: Vec<&str> = state.routes_changed_since(11).expect("kept").collect();
        assert_eq!(since_11.len(), ROUTE_TOMBSTONES, "a later session learns every removal kept");
        assert!(since_11.iter().all(|n| !state.nodes.contains_key(*n)));
    }

    #[test]
    fn a_nodes_desired_version_moves_with_its_own_replicas_and_the_shared_part_only() {
        let mut state = ClusterState::default();
        let replica = |node: &str| keys::encode(&pb::Replica { id: "web-1".into(), service: "web".into(), node: node.into(), ..pb::Replica::default() });
        put(&mut state, &keys::replica("web", "web-1"), replica("n1"), 1);
        state.stamp(1);
        assert_eq!((state.desired_version("n1"), state.desired_version("n2")), ((1, 0), (0, 0)));
        // Moved: both nodes' sets change.
        put(&mut state, &keys::replica("web", "web-1"), replica("n2"), 2);
        state.stamp(2);
        assert_eq!((state.desired_version("n1"), state.desired_version("n2")), ((2, 0), (2, 0)));
        // Endpoints are in every node's set.
        put(&mut state, &keys::endpoints("web"), keys::encode(&pb::ServiceEndpoints::default()), 3);
        state.stamp(3);
        assert_eq!((state.desired_version("n1"), state.desired_version("n3")), ((2, 3), (0, 3)));
        // A status report, a service record: in no desired set.
        put(&mut state, &keys::status("n2", "web-1"), keys::encode(&pb::ReplicaReport::default()), 4);
        put(&mut state, &keys::service("web"), keys::encode(&pb::Service::default()), 5);
        state.stamp(4);
        assert_eq!((state.desired_version("n2"), state.content_version), ((2, 3), 4));
        // The shared part is computed once per picture, whoever asks.
        let computed = std::sync::atomic::AtomicUsize::new(0);
        for _ in 0..3 {
            state.shared_desired.get_or_init(|| {
                computed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                crate::nodes::SharedDesired::of(&state)
            });
        }
        assert_eq!(computed.into_inner(), 1);
    }
}
