//! Several controllers on one etcd: exactly one leads at a time, including when the
//! leader is cut off from etcd (it steps down before its lease can expire), and a dead
//! leader is replaced within a few seconds; a paused leader's queued writes are fenced.
//! Events expire with their TTL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::wait_until;
use orch_api::pb;
use orch_controller::events::EventLog;
use orch_controller::server::{Controller, ControllerConfig};
use orch_controller::store::{Expect, Fence, KeyValue, LeaseId, Listing, Revision, Store, StoreError, TxnOp, WatchStream};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(30);

/// Every leadership change of every controller, in order.
#[derive(Default)]
struct Timeline {
    changes: Mutex<Vec<(Instant, String, bool)>>,
}

impl Timeline {
    fn follow(self: &Arc<Self>, name: &str, controller: &Controller) {
        let mut leadership = controller.leadership();
        let timeline = Arc::clone(self);
        let name = name.to_owned();
        tokio::spawn(async move {
            loop {
                let leading = leadership.borrow_and_update().is_some();
                timeline.changes.lock().expect("timeline").push((Instant::now(), name.clone(), leading));
                if leadership.changed().await.is_err() {
                    // The controller is gone: it leads no more.
                    timeline.changes.lock().expect("timeline").push((Instant::now(), name, false));
                    return;
                }
            }
        });
    }

    /// Asserts that at no instant two controllers led, and returns who led, in order.
    fn leaders(&self) -> Vec<String> {
        let changes = self.changes.lock().expect("timeline").clone();
        let mut leading: Vec<String> = Vec::new();
        let mut order = Vec::new();
        for (_, name, is_leader) in changes {
            leading.retain(|n| n != &name);
            if is_leader {
                leading.push(name.clone());
                order.push(name);
            }
            assert!(leading.len() <= 1, "two leaders at once: {leading:?}");
        }
        order
    }
}

fn config(identity: &str) -> ControllerConfig {
    ControllerConfig { leader_lease: Duration::from_secs(2), identity: identity.into(), ..ControllerConfig::default() }
}

async fn start(store: Arc<dyn Store>, identity: &str, timeline: &Arc<Timeline>) -> Controller {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let controller = Controller::start(store, config(identity), listener);
    timeline.follow(identity, &controller);
    controller
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_on_one_etcd_never_both_lead() {
    let prefix = common::unique_prefix("leader");
    let timeline = Arc::new(Timeline::default());

    // Cut off: every new call of a's hangs (a pause that never ends).
    let cut_a = Arc::new(Pausable::new(common::etcd_at(&prefix).await.store));
    let a = start(cut_a.clone(), "a", &timeline).await;
    wait_until("a to lead", LIMIT, || async { a.is_leader() }).await;
    let b = start(common::etcd_at(&prefix).await.store, "b", &timeline).await;

    // a is cut off from etcd but keeps running: it must step down before b takes over.
    cut_a.running.send_replace(false);
    let cut_at = Instant::now();
    wait_until("b to take over from the cut-off a", LIMIT, || async { b.is_leader() }).await;
    assert!(!a.is_leader(), "a stepped down");
    let takeover = cut_at.elapsed();
    a.crash();

    // A leader that dies is replaced too.
    let c = start(common::etcd_at(&prefix).await.store, "c", &timeline).await;
    b.crash();
    wait_until("c to take over from the dead b", LIMIT, || async { c.is_leader() }).await;

    // A leader that stops cleanly hands over at once.
    let d = start(common::etcd_at(&prefix).await.store, "d", &timeline).await;
    c.stop().await;
    wait_until("d to take over from c, who resigned", LIMIT, || async { d.is_leader() }).await;

    assert_eq!(timeline.leaders(), ["a", "b", "c", "d"]);
    assert!(takeover < Duration::from_secs(10), "a cut-off leader is replaced within a few seconds, took {takeover:?}");
    d.stop().await;
}

/// The real store, which can be paused like a process under SIGSTOP (or cut off from
/// etcd, when it is never resumed): while paused every new call waits; on resume they
/// all go on. With `slow_renewals`, every other lease renewal takes a second (a store
/// busy applying a storm of writes); `renewals_landed` counts the renewals answered.
struct Pausable {
    inner: Arc<dyn Store>,
    running: tokio::sync::watch::Sender<bool>,
    slow_renewals: std::sync::atomic::AtomicBool,
    renewals: std::sync::atomic::AtomicUsize,
    renewals_landed: std::sync::atomic::AtomicUsize,
}

impl Pausable {
    fn new(inner: Arc<dyn Store>) -> Pausable {
        Pausable {
            inner,
            running: tokio::sync::watch::channel(true).0,
            slow_renewals: Default::default(),
            renewals: Default::default(),
            renewals_landed: Default::default(),
        }
    }

    async fn gate(&self) {
        let mut running = self.running.subscribe();
        let _ = running.wait_for(|running| *running).await;
    }
}

#[async_trait]
impl Store for Pausable {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.gate().await;
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        self.gate().await;
        self.inner.list(prefix).await
    }
    async fn put_with_lease(&self, key: &str, value: Vec<u8>, expect: Expect, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        self.gate().await;
        self.inner.put_with_lease(key, value, expect, lease).await
    }
    async fn delete(&self, key: &str, expect: Expect) -> Result<Option<Revision>, StoreError> {
        self.gate().await;
        self.inner.delete(key, expect).await
    }
    async fn txn_fenced(&self, fence: Option<&Fence>, ops: Vec<TxnOp>) -> Result<Vec<Option<Revision>>, StoreError> {
        self.gate().await;
        self.inner.txn_fenced(fence, ops).await
    }
    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream, StoreError> {
        self.gate().await;
        self.inner.watch(prefix, from_revision).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.gate().await;
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.gate().await;
        if self.slow_renewals.load(SeqCst) && self.renewals.fetch_add(1, SeqCst) % 2 == 1 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let renewed = self.inner.keep_alive(lease).await;
        self.renewals_landed.fetch_add(1, SeqCst);
        renewed
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.gate().await;
        self.inner.revoke_lease(lease).await
    }
}

/// A leader whose every other renewal takes a second keeps its lease (2 s, so a renewal
/// must land within 1.33 s of the last one that did): renewals go every period whatever
/// the earlier ones are doing. Sent one after the other, the first slow one cost the lead.
async fn a_leader_whose_renewals_are_slow_keeps_its_lease(shared: Arc<dyn Store>) {
    use orch_controller::election::{Candidate, ElectionConfig};
    use std::sync::atomic::Ordering::SeqCst;
    let store = Arc::new(Pausable::new(shared));
    store.slow_renewals.store(true, SeqCst);
    let a = Candidate::spawn(store.clone(), ElectionConfig { identity: "slow".into(), ttl: Duration::from_secs(2) });
    wait_until("a to lead", LIMIT, || async { a.is_leader() }).await;
    let mut leadership = a.fence();
    let fence = leadership.borrow_and_update().clone().expect("a leader has a fence");
    let landed = store.renewals_landed.load(SeqCst);
    wait_until("ten renewals, half of them slow, to be answered", LIMIT, || async { store.renewals_landed.load(SeqCst) >= landed + 10 }).await;
    assert!(!leadership.has_changed().unwrap_or(true), "the leadership never changed: {:?}", leadership.borrow().clone());
    assert_eq!(a.fence().borrow().clone(), Some(fence), "still the same leadership");
    a.resign().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewals_are_slow_keeps_its_lease_on_etcd() {
    let store = common::etcd_namespaced("slowrenew").await;
    a_leader_whose_renewals_are_slow_keeps_its_lease(Arc::clone(&store.store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewals_are_slow_keeps_its_lease_on_the_embedded_store() {
    let store = common::embedded().await;
    a_leader_whose_renewals_are_slow_keeps_its_lease(Arc::clone(&store.store)).await;
}

/// Leader a is paused (its every store call held, as under SIGSTOP) with writes queued,
/// past its lease; b takes over and writes; a resumes: none of a's queued writes lands —
/// whether they were one write or a batch — and a steps down.
async fn a_paused_leaders_queued_writes_never_land(shared: Arc<dyn Store>) {
    use orch_controller::election::{Candidate, ElectionConfig};
    use orch_controller::reconcile::runner::write_batch;
    let election = |identity: &str| ElectionConfig { identity: identity.into(), ttl: Duration::from_secs(2) };
    let paused = Arc::new(Pausable::new(Arc::clone(&shared)));
    let a = Candidate::spawn(paused.clone(), election("a"));
    wait_until("a to lead", LIMIT, || async { a.is_leader() }).await;
    let fence_a = a.fence().borrow().clone().expect("a leader has a fence");
    let b = Candidate::spawn(Arc::clone(&shared), election("b"));

    paused.running.send_replace(false);
    let put = |key: &str, value: &str| TxnOp::put(key, value.as_bytes().to_vec(), Expect::Any);
    let queued_one = tokio::spawn({
        let (store, fence) = (paused.clone(), fence_a.clone());
        let write = put("/orch/services/fenced-one", "from a");
        async move { write_batch(store.as_ref(), Some(&fence), vec![write]).await }
    });
    let queued_batch = tokio::spawn({
        let (store, fence) = (paused.clone(), fence_a.clone());
        let writes = vec![put("/orch/services/fenced-one", "from a"), put("/orch/services/fenced-two", "from a")];
        async move { write_batch(store.as_ref(), Some(&fence), writes).await }
    });
    wait_until("b to take over from the paused a", LIMIT, || async { b.is_leader() }).await;
    let fence_b = b.fence().borrow().clone().expect("b leads with a fence");
    assert_ne!(fence_b, fence_a, "a new leadership, a new fence");
    let outcome = write_batch(shared.as_ref(), Some(&fence_b), vec![put("/orch/services/fenced-one", "from b")]).await.expect("b writes");
    assert!(outcome.iter().all(Result::is_ok), "{outcome:?}");

    paused.running.send_replace(true);
    for (what, queued) in [("the single write", queued_one), ("the batch", queued_batch)] {
        match queued.await.expect("the queued write's task") {
            Err(StoreError::Fenced { key, create_revision }) => {
                assert_eq!((key.as_str(), create_revision), (fence_a.key.as_str(), fence_a.create_revision));
            }
            other => panic!("{what} of the deposed a was not fenced: {other:?}"),
        }
    }
    let one = shared.get("/orch/services/fenced-one").await.expect("get").expect("b's write is there");
    assert_eq!(one.value, b"from b", "a's queued write did not land over b's");
    assert!(shared.get("/orch/services/fenced-two").await.expect("get").is_none(), "nothing of a's batch landed");
    wait_until("a to step down once resumed", LIMIT, || async { !a.is_leader() }).await;
    assert!(a.fence().borrow().is_none(), "no fence without leadership");
    assert!(b.is_leader(), "b still leads");
    b.resign().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leaders_writes_are_fenced_on_etcd() {
    let store = common::etcd_namespaced("fence").await;
    a_paused_leaders_queued_writes_never_land(Arc::clone(&store.store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leaders_writes_are_fenced_on_the_embedded_store() {
    let store = common::embedded().await;
    a_paused_leaders_queued_writes_never_land(Arc::clone(&store.store)).await;
}

async fn events_are_listed_then_expire(store: common::TestStore) {
    let log = EventLog::new(store.store.clone(), Duration::from_secs(2));
    let event =
        pb::Event { timestamp_unix_ms: 0, kind: "Started".into(), object: "replica/web-12345".into(), message: "container started".into(), incident: None };
    log.record(event.clone()).await.expect("record an event");
    let listed: Vec<pb::Event> =
        orch_controller::keys::decode_all(&store.store.list(orch_controller::keys::EVENTS).await.expect("list").items).expect("decode");
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].kind.as_str(), listed[0].object.as_str()), ("Started", "replica/web-12345"));
    assert!(listed[0].timestamp_unix_ms > 0, "stamped when recorded");
    wait_until("the event to expire with its TTL", LIMIT, || async { store.store.list(orch_controller::keys::EVENTS).await.expect("list").items.is_empty() })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_expire_on_the_embedded_store() {
    events_are_listed_then_expire(common::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_expire_on_etcd() {
    events_are_listed_then_expire(common::etcd_namespaced("events").await).await;
}
