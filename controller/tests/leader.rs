//! Several controllers on one etcd: exactly one leads at a time, including when the
//! leader is cut off from etcd (it steps down before its lease can expire), and a dead
//! leader is replaced within a few seconds. Events expire with their TTL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::wait_until;
use orch_api::pb;
use orch_controller::events::EventLog;
use orch_controller::server::{Controller, ControllerConfig};
use orch_controller::store::{Expect, KeyValue, LeaseId, Listing, Revision, Store, StoreError, TxnOp, WatchStream};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(30);

/// The real store, with a switch that makes every new call hang as if the network to
/// etcd were cut (calls already waiting are not affected).
struct Cuttable {
    inner: Arc<dyn Store>,
    cut: AtomicBool,
}

impl Cuttable {
    async fn gate(&self) {
        if self.cut.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl Store for Cuttable {
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
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<Option<Revision>>, StoreError> {
        self.gate().await;
        self.inner.txn(ops).await
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
        self.gate().await;
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.gate().await;
        self.inner.revoke_lease(lease).await
    }
}

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
                let leading = *leadership.borrow_and_update();
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

    let cut_a = Arc::new(Cuttable { inner: common::etcd_at(&prefix).await.store, cut: AtomicBool::new(false) });
    let a = start(cut_a.clone(), "a", &timeline).await;
    wait_until("a to lead", LIMIT, || async { a.is_leader() }).await;
    let b = start(common::etcd_at(&prefix).await.store, "b", &timeline).await;

    // a is cut off from etcd but keeps running: it must step down before b takes over.
    cut_a.cut.store(true, Ordering::SeqCst);
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

async fn events_are_listed_then_expire(store: common::TestStore) {
    let log = EventLog::new(store.store.clone(), Duration::from_secs(2));
    let event = pb::Event { timestamp_unix_ms: 0, kind: "Started".into(), object: "replica/web-12345".into(), message: "container started".into() };
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
