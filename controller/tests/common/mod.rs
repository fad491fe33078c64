//! Shared test harness: stores on real backends, unique key prefixes, waiting on
//! conditions.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orch_controller::store::{EmbeddedStore, EtcdStore, PrefixedStore, Store};

/// The etcd server the test command (`deploy/test.sh`) started on loopback.
pub const ETCD_ENV: &str = "ORCH_TEST_ETCD";

/// A prefix no other test (nor an earlier run against the same etcd) uses.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("/test/{test}-{}-{nanos}-{}/", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A store under test and whatever must live as long as it.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub dir: Option<tempfile::TempDir>,
}

pub async fn embedded() -> TestStore {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).await.expect("open the embedded store");
    TestStore { store: Arc::new(store), dir: Some(dir) }
}

pub async fn etcd() -> TestStore {
    TestStore { store: Arc::new(connect_etcd().await), dir: None }
}

async fn connect_etcd() -> EtcdStore {
    let endpoint = std::env::var(ETCD_ENV).unwrap_or_else(|_| {
        panic!(
            "{ETCD_ENV} is not set: these tests run against a real etcd server. Run `bash deploy/test.sh`, \
             which installs etcd-server and starts it on loopback, or start `etcd` yourself and set \
             {ETCD_ENV}=http://127.0.0.1:PORT"
        )
    });
    EtcdStore::connect(std::slice::from_ref(&endpoint)).await.unwrap_or_else(|e| panic!("cannot reach the test etcd at {endpoint} ({ETCD_ENV}): {e}"))
}

/// An etcd store whose keys live under a prefix of their own (for tests that use the
/// fixed `/orch/...` keys).
pub async fn etcd_namespaced(test: &str) -> TestStore {
    let store = connect_etcd().await;
    TestStore { store: Arc::new(PrefixedStore::new(store, &unique_prefix(test))), dir: None }
}

/// Polls `condition` until it holds or `limit` passes; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh connection to the test etcd, under the given key prefix (several stores on
/// one prefix act as several controllers on one cluster).
pub async fn etcd_at(prefix: &str) -> TestStore {
    TestStore { store: Arc::new(PrefixedStore::new(connect_etcd().await, prefix)), dir: None }
}

/// One test function per store backend: `embedded::NAME` and `etcd::NAME` each call
/// `NAME(store)` with a fresh store (etcd under a prefix of its own).
#[macro_export]
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::common::embedded().await).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::common::etcd_namespaced(stringify!($test)).await).await;
                }
            )*
        }
    };
}
