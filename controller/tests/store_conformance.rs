//! One conformance suite, run against both store backends: the embedded redb store and
//! a real etcd server (started on loopback by `deploy/test.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::unique_prefix;
use orch_controller::store::{Expect, Fence, Store, StoreError, TxnOp, WatchEvent, WatchStream, MAX_TXN_OPS};

/// Generous bound for anything that waits on the store; never a measure of speed.
const PATIENCE: Duration = Duration::from_secs(30);

async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(PATIENCE, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {PATIENCE:?}"),
    }
}

/// Nothing more arrives on the watch once a marker written after everything else does.
async fn expect_marker_next(store: &dyn Store, watch: &mut WatchStream, marker_key: &str) {
    let revision = store.put(marker_key, b"marker".to_vec(), Expect::Any).await.expect("put marker");
    let event = next_event(watch).await;
    assert_eq!((event.key(), event.revision()), (marker_key, revision), "an unexpected event came before the marker");
}

async fn put_get_and_revisions(store: Arc<dyn Store>, prefix: &str) {
    let key = format!("{prefix}a");
    assert_eq!(store.get(&key).await.expect("get"), None);
    let r1 = store.put(&key, b"one".to_vec(), Expect::Any).await.expect("put");
    let r2 = store.put(&key, b"two".to_vec(), Expect::Any).await.expect("put");
    assert!(r2 > r1, "revisions increase: {r1} then {r2}");
    let kv = store.get(&key).await.expect("get").expect("present");
    assert_eq!(kv.value, b"two");
    assert_eq!(kv.create_revision, r1, "an update keeps the create revision");
    assert_eq!(kv.mod_revision, r2);
    assert_eq!(kv.lease, 0);
    let deleted = store.delete(&key, Expect::Any).await.expect("delete");
    assert!(deleted.is_some_and(|r| r > r2));
    assert_eq!(store.get(&key).await.expect("get"), None);
    assert_eq!(store.delete(&key, Expect::Any).await.expect("delete of a missing key"), None);
}

async fn compare_and_swap_conflicts(store: Arc<dyn Store>, prefix: &str) {
    let key = format!("{prefix}cas");
    let created = store.put(&key, b"v1".to_vec(), Expect::Absent).await.expect("create");
    match store.put(&key, b"again".to_vec(), Expect::Absent).await {
        Err(StoreError::Conflict { found: Some(found), .. }) => assert_eq!(found, created),
        other => panic!("second create must conflict, got {other:?}"),
    }
    let updated = store.put(&key, b"v2".to_vec(), Expect::Revision(created)).await.expect("update at the read revision");
    match store.put(&key, b"stale".to_vec(), Expect::Revision(created)).await {
        Err(StoreError::Conflict { found: Some(found), expected, .. }) => {
            assert_eq!(found, updated);
            assert_eq!(expected, Expect::Revision(created));
        }
        other => panic!("a stale update must conflict, got {other:?}"),
    }
    assert!(matches!(store.delete(&key, Expect::Revision(created)).await, Err(StoreError::Conflict { .. })));
    assert_eq!(store.get(&key).await.expect("get").map(|kv| kv.value), Some(b"v2".to_vec()), "failed writes change nothing");
    assert!(store.delete(&key, Expect::Revision(updated)).await.expect("delete at the read revision").is_some());
    match store.put(&key, b"x".to_vec(), Expect::Revision(updated)).await {
        Err(StoreError::Conflict { found: None, .. }) => {}
        other => panic!("an update of a deleted key must conflict, got {other:?}"),
    }
}

/// A transaction writes all of its operations or none, and says which compare failed.
async fn a_transaction_is_all_or_nothing(store: Arc<dyn Store>, prefix: &str) {
    let key = |name: &str| format!("{prefix}txn/{name}");
    let kept = store.put(&key("kept"), b"v1".to_vec(), Expect::Absent).await.expect("create");
    let gone = store.put(&key("gone"), b"x".to_vec(), Expect::Absent).await.expect("create");
    let before = store.list(&key("")).await.expect("list");
    let ops = vec![
        TxnOp::put(key("new"), b"n".to_vec(), Expect::Absent),
        TxnOp::put(key("kept"), b"v2".to_vec(), Expect::Revision(kept)),
        TxnOp::Delete { key: key("gone"), expect: Expect::Revision(gone) },
        TxnOp::Delete { key: key("never"), expect: Expect::Any },
    ];
    // One stale compare: nothing is written, and the error names it.
    let mut stale = ops.clone();
    stale[1] = TxnOp::put(key("kept"), b"v2".to_vec(), Expect::Revision(kept - 1));
    match store.txn(stale).await {
        Err(StoreError::Conflict { key: conflicted, found: Some(found), .. }) => {
            assert_eq!((conflicted, found), (key("kept"), kept));
        }
        other => panic!("a stale compare must fail the transaction, got {other:?}"),
    }
    let after = store.list(&key("")).await.expect("list");
    assert_eq!(after.items, before.items, "a failed transaction writes nothing");
    // All compares hold: every op lands, with its revision.
    let revisions = store.txn(ops).await.expect("txn");
    assert_eq!(revisions.len(), 4);
    assert!(revisions[..3].iter().all(|r| r.is_some_and(|r| r > gone)), "{revisions:?}");
    assert_eq!(revisions[3], None, "deleting a key that is not there");
    let listed: Vec<(String, Vec<u8>)> = store.list(&key("")).await.expect("list").items.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(listed, vec![(key("kept"), b"v2".to_vec()), (key("new"), b"n".to_vec())]);
    let kv = store.get(&key("kept")).await.expect("get").expect("kept");
    assert_eq!(Some(kv.mod_revision), revisions[1]);
    // A put to a lease that is gone fails the whole.
    let lease = store.grant_lease(Duration::from_secs(5)).await.expect("lease");
    store.revoke_lease(lease).await.expect("revoke");
    let leased =
        vec![TxnOp::put(key("a"), b"a".to_vec(), Expect::Any), TxnOp::Put { key: key("b"), value: b"b".to_vec(), expect: Expect::Any, lease: Some(lease) }];
    assert!(matches!(store.txn(leased).await, Err(StoreError::LeaseNotFound(_))));
    assert_eq!(store.get(&key("a")).await.expect("get"), None, "nothing of a failed transaction lands");
    // Shapes the store refuses, by name.
    let twice = vec![TxnOp::put(key("a"), b"1".to_vec(), Expect::Any), TxnOp::put(key("a"), b"2".to_vec(), Expect::Any)];
    assert!(matches!(store.txn(twice).await, Err(StoreError::InvalidTxn(message)) if message.contains("twice")));
    let many: Vec<TxnOp> = (0..=MAX_TXN_OPS).map(|i| TxnOp::put(key(&format!("m{i}")), vec![], Expect::Any)).collect();
    assert!(matches!(store.txn(many).await, Err(StoreError::InvalidTxn(_))));
    assert_eq!(store.txn(Vec::new()).await.expect("empty"), Vec::<Option<i64>>::new());
}

/// A fenced transaction lands only while the fence's key is the one created at its
/// revision: not once it was deleted, nor once another created it again; a fence that
/// fails outranks a stale compare, and nothing of the transaction is written.
async fn a_fenced_transaction_lands_only_while_the_fence_holds(store: Arc<dyn Store>, prefix: &str) {
    let key = |name: &str| format!("{prefix}fenced/{name}");
    let leader = key("leader");
    let created = store.put(&leader, b"a".to_vec(), Expect::Absent).await.expect("create the fence key");
    let fence = Fence { key: leader.clone(), create_revision: created };
    // An update of the fence key keeps its create revision: still the same leadership.
    store.put(&leader, b"a, renewed".to_vec(), Expect::Any).await.expect("update the fence key");
    let revisions = store.txn_fenced(Some(&fence), vec![TxnOp::put(key("x"), b"1".to_vec(), Expect::Absent)]).await.expect("fenced write while it holds");
    let x = revisions[0].expect("a revision");
    // The largest transaction, every write a compare-and-swap, fits with the fence's compare.
    let full: Vec<TxnOp> = (0..MAX_TXN_OPS).map(|i| TxnOp::put(format!("{prefix}full/{i}"), vec![], Expect::Absent)).collect();
    assert_eq!(store.txn_fenced(Some(&fence), full).await.expect("a full fenced batch of compare-and-swaps").len(), MAX_TXN_OPS);
    store.delete(&leader, Expect::Any).await.expect("delete the fence key");
    let fenced = |result: Result<Vec<Option<i64>>, StoreError>| matches!(result, Err(StoreError::Fenced { key, create_revision }) if key == leader && create_revision == created);
    let stale = vec![TxnOp::put(key("x"), b"2".to_vec(), Expect::Revision(x - 1)), TxnOp::put(key("y"), b"2".to_vec(), Expect::Any)];
    assert!(fenced(store.txn_fenced(Some(&fence), stale.clone()).await), "the fence key is gone: refused as fenced, before the stale compare");
    store.put(&leader, b"b".to_vec(), Expect::Absent).await.expect("another leadership");
    assert!(fenced(store.txn_fenced(Some(&fence), vec![TxnOp::Delete { key: key("x"), expect: Expect::Any }]).await), "another's fence key");
    let listed: Vec<(String, Vec<u8>)> = store.list(&key("")).await.expect("list").items.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(listed, vec![(leader.clone(), b"b".to_vec()), (key("x"), b"1".to_vec())], "nothing fenced was written");
    // Unfenced, the same stale write is the usual conflict.
    assert!(matches!(store.txn_fenced(None, stale).await, Err(StoreError::Conflict { .. })));
}

/// Read-modify-write from several tasks at once: with CAS and retry, no increment is lost.
async fn concurrent_increments_lose_nothing(store: Arc<dyn Store>, prefix: &str) {
    const TASKS: u64 = 4;
    const EACH: u64 = 15;
    let key = format!("{prefix}counter");
    store.put(&key, b"0".to_vec(), Expect::Absent).await.expect("create counter");
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = Arc::clone(&store);
        let key = key.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let kv = store.get(&key).await.expect("get").expect("counter exists");
                    let n: u64 = String::from_utf8_lossy(&kv.value).parse().expect("a number");
                    match store.put(&key, (n + 1).to_string().into_bytes(), Expect::Revision(kv.mod_revision)).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("put: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for handle in handles {
        handle.await.expect("task");
    }
    let kv = store.get(&key).await.expect("get").expect("counter exists");
    assert_eq!(String::from_utf8_lossy(&kv.value), (TASKS * EACH).to_string());
}

/// Many writes at once (the embedded store commits them as a group): each gets its own
/// outcome — one of the racers for a key wins, every other write its own revision — and a
/// watch sees each change once, in revision order.
async fn concurrent_writes_each_get_their_own_outcome(store: Arc<dyn Store>, prefix: &str) {
    let start = store.put(&format!("{prefix}start"), Vec::new(), Expect::Any).await.expect("put");
    let mut watch = store.watch(prefix, start + 1).await.expect("watch");
    let contested = format!("{prefix}contested");
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..40u32 {
        let store = Arc::clone(&store);
        let key = if i % 2 == 0 { contested.clone() } else { format!("{prefix}own/{i}") };
        writes.spawn(async move { (key.clone(), store.put(&key, i.to_le_bytes().to_vec(), Expect::Absent).await) });
    }
    let (mut won, mut revisions) = (0, std::collections::BTreeSet::new());
    while let Some(joined) = writes.join_next().await {
        let (key, outcome) = joined.expect("task");
        match outcome {
            Ok(revision) => {
                assert!(revisions.insert(revision), "revision {revision} given twice");
                won += usize::from(key == contested);
            }
            Err(StoreError::Conflict { .. }) => assert_eq!(key, contested, "only racers conflict"),
            Err(error) => panic!("put {key}: {error}"),
        }
    }
    assert_eq!((won, revisions.len()), (1, 21), "one racer and the 20 writes of their own keys");
    for revision in revisions {
        assert_eq!(next_event(&mut watch).await.revision(), revision);
    }
    // And nothing else: no write was recorded twice, no refused one at all.
    expect_marker_next(store.as_ref(), &mut watch, &format!("{prefix}marker")).await;
}

async fn list_is_a_consistent_snapshot(store: Arc<dyn Store>, prefix: &str) {
    let other = format!("{prefix}other/");
    let mine = format!("{prefix}mine/");
    for name in ["c", "a", "b"] {
        store.put(&format!("{mine}{name}"), name.as_bytes().to_vec(), Expect::Absent).await.expect("put");
    }
    store.put(&format!("{other}x"), b"x".to_vec(), Expect::Absent).await.expect("put");
    // A key sharing the text prefix without the slash is not under the prefix either.
    store.put(&format!("{prefix}mine-not"), b"n".to_vec(), Expect::Absent).await.expect("put");
    let listing = store.list(&mine).await.expect("list");
    let keys: Vec<String> = listing.items.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, [format!("{mine}a"), format!("{mine}b"), format!("{mine}c")], "only the prefix, in key order");
    assert!(listing.items.iter().all(|kv| kv.mod_revision <= listing.revision));

    // list + watch from revision + 1: exactly the changes after the snapshot.
    let mut watch = store.watch(&mine, listing.revision + 1).await.expect("watch");
    let r = store.put(&format!("{mine}d"), b"d".to_vec(), Expect::Absent).await.expect("put");
    let event = next_event(&mut watch).await;
    assert_eq!((event.key().to_owned(), event.revision()), (format!("{mine}d"), r));
    expect_marker_next(store.as_ref(), &mut watch, &format!("{mine}zz-marker")).await;
}

async fn watch_from_a_revision_misses_and_repeats_nothing(store: Arc<dyn Store>, prefix: &str) {
    let watched = format!("{prefix}w/");
    let noise = format!("{prefix}noise/");
    let mut revisions = Vec::new();
    for i in 0..10 {
        revisions.push(store.put(&format!("{watched}k{i:02}"), vec![i], Expect::Any).await.expect("put"));
        store.put(&format!("{noise}n{i}"), vec![i], Expect::Any).await.expect("put noise");
    }
    // From the 5th write: the past from the history, then live writes, in order.
    let mut watch = store.watch(&watched, revisions[4]).await.expect("watch");
    let writer = {
        let store = Arc::clone(&store);
        let watched = watched.clone();
        let noise = noise.clone();
        tokio::spawn(async move {
            let mut live = Vec::new();
            for i in 10..40u8 {
                live.push(store.put(&format!("{watched}k{i:02}"), vec![i], Expect::Any).await.expect("put"));
                store.put(&format!("{noise}n{i}"), vec![i], Expect::Any).await.expect("put noise");
            }
            let deleted = store.delete(&format!("{watched}k00"), Expect::Any).await.expect("delete").expect("existed");
            live.push(deleted);
            live
        })
    };
    let live = writer.await.expect("writer");
    let expected: Vec<i64> = revisions[4..].iter().copied().chain(live.iter().copied()).collect();
    let mut seen = Vec::new();
    for _ in 0..expected.len() {
        let event = next_event(&mut watch).await;
        assert!(event.key().starts_with(&watched), "event from outside the prefix: {event:?}");
        seen.push(event.revision());
        if let WatchEvent::Put(kv) = &event {
            let index: u8 = kv.key[watched.len() + 1..].parse().expect("index");
            assert_eq!(kv.value, vec![index]);
        }
    }
    assert_eq!(seen, expected, "every change once, in revision order");
    let last = next_event_after_marker(store.as_ref(), &mut watch, &watched).await;
    assert!(matches!(last, WatchEvent::Put(_)));
}

async fn next_event_after_marker(store: &dyn Store, watch: &mut WatchStream, prefix: &str) -> WatchEvent {
    let marker = format!("{prefix}zz-marker");
    let revision = store.put(&marker, b"m".to_vec(), Expect::Any).await.expect("put marker");
    let event = next_event(watch).await;
    assert_eq!((event.key(), event.revision()), (marker.as_str(), revision), "the delete was the last change before the marker");
    event
}

async fn watch_reports_deletes(store: Arc<dyn Store>, prefix: &str) {
    let key = format!("{prefix}gone");
    store.put(&key, b"x".to_vec(), Expect::Any).await.expect("put");
    let mut watch = store.watch(prefix, 0).await.expect("watch from now");
    let deleted = store.delete(&key, Expect::Any).await.expect("delete").expect("existed");
    assert_eq!(next_event(&mut watch).await, WatchEvent::Delete { key, revision: deleted });
}

async fn lease_expiry_deletes_its_keys(store: Arc<dyn Store>, prefix: &str) {
    let lease = store.grant_lease(Duration::from_secs(2)).await.expect("grant");
    let key = format!("{prefix}leased");
    let plain = format!("{prefix}plain");
    store.put_with_lease(&key, b"alive".to_vec(), Expect::Absent, Some(lease)).await.expect("put with lease");
    store.put(&plain, b"stays".to_vec(), Expect::Absent).await.expect("put");
    assert_eq!(store.get(&key).await.expect("get").map(|kv| kv.lease), Some(lease));
    let mut watch = store.watch(&key, 0).await.expect("watch");
    // No keep-alive: the lease expires and takes the key with it, as a delete event.
    let event = next_event(&mut watch).await;
    assert!(matches!(&event, WatchEvent::Delete { key: k, .. } if *k == key), "{event:?}");
    assert_eq!(store.get(&key).await.expect("get"), None);
    assert!(store.get(&plain).await.expect("get").is_some(), "keys without the lease stay");
    let kept = store.keep_alive(lease).await;
    assert!(matches!(kept, Err(StoreError::LeaseNotFound(id)) if id == lease), "{kept:?}");
    assert!(matches!(store.put_with_lease(&key, b"late".to_vec(), Expect::Any, Some(lease)).await, Err(StoreError::LeaseNotFound(_))));
}

async fn keep_alive_holds_a_lease(store: Arc<dyn Store>, prefix: &str) {
    let lease = store.grant_lease(Duration::from_secs(2)).await.expect("grant");
    let key = format!("{prefix}kept");
    store.put_with_lease(&key, b"v".to_vec(), Expect::Absent, Some(lease)).await.expect("put");
    // Keep it alive for well past its TTL; the key must stay throughout.
    for _ in 0..12 {
        store.keep_alive(lease).await.expect("keep alive");
        assert!(store.get(&key).await.expect("get").is_some(), "a kept-alive lease must not expire");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    store.revoke_lease(lease).await.expect("revoke");
    assert_eq!(store.get(&key).await.expect("get"), None, "revoking deletes the lease's keys at once");
    assert!(matches!(store.revoke_lease(lease).await, Err(StoreError::LeaseNotFound(_))));
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let store = super::common::embedded().await;
                    super::$test(store.store.clone(), &super::unique_prefix(stringify!($test))).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let store = super::common::etcd().await;
                    super::$test(store.store.clone(), &super::unique_prefix(stringify!($test))).await;
                }
            )*
        }
        /// The key-prefix wrapper keeps every promise of the store it wraps.
        mod prefixed_embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let inner = orch_controller::store::EmbeddedStore::open(&dir.path().join("s.redb")).await.expect("open");
                    let store: std::sync::Arc<dyn orch_controller::store::Store> =
                        std::sync::Arc::new(orch_controller::store::PrefixedStore::new(inner, "/cluster-a"));
                    super::$test(store, &super::unique_prefix(stringify!($test))).await;
                }
            )*
        }
    };
}

conformance!(
    put_get_and_revisions,
    compare_and_swap_conflicts,
    a_transaction_is_all_or_nothing,
    a_fenced_transaction_lands_only_while_the_fence_holds,
    concurrent_increments_lose_nothing,
    concurrent_writes_each_get_their_own_outcome,
    list_is_a_consistent_snapshot,
    watch_from_a_revision_misses_and_repeats_nothing,
    watch_reports_deletes,
    lease_expiry_deletes_its_keys,
    keep_alive_holds_a_lease,
);

// ---------------------------------------------------------------------------------------
// Embedded-only: durability across restarts and compaction of the change log.
// ---------------------------------------------------------------------------------------

mod embedded_only {
    use super::*;
    use orch_controller::store::EmbeddedStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_keeps_data_revisions_and_leases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/dir/store.redb");
        let (revision, lease) = {
            let store = EmbeddedStore::open(&path).await.expect("open");
            store.put("/orch/services/web", b"spec".to_vec(), Expect::Absent).await.expect("put");
            let lease = store.grant_lease(Duration::from_secs(60)).await.expect("grant");
            store.put_with_lease("/orch/nodes/n1", b"n1".to_vec(), Expect::Absent, Some(lease)).await.expect("put");
            (store.put("/orch/services/api", b"spec2".to_vec(), Expect::Absent).await.expect("put"), lease)
        };
        // The file lock is released once the store and its tasks are gone.
        let store = {
            let mut attempt = 0;
            loop {
                match EmbeddedStore::open(&path).await {
                    Ok(store) => break store,
                    Err(e) if attempt < 100 => {
                        attempt += 1;
                        tracing_sleep(&e).await;
                    }
                    Err(e) => panic!("reopen: {e}"),
                }
            }
        };
        let listing = store.list("/orch/services/").await.expect("list");
        assert_eq!(listing.items.len(), 2);
        assert_eq!(listing.revision, revision, "the revision survives a restart");
        assert_eq!(store.get("/orch/services/web").await.expect("get").map(|kv| kv.value), Some(b"spec".to_vec()));
        let next = store.put("/orch/x", vec![], Expect::Any).await.expect("put");
        assert_eq!(next, revision + 1, "revisions continue, never restart");
        store.keep_alive(lease).await.expect("a lease survives a restart");
        assert_eq!(store.get("/orch/nodes/n1").await.expect("get").map(|kv| kv.lease), Some(lease));
        // The history survives too: a watch from the first revision replays it.
        let mut watch = store.watch("/orch/services/", 1).await.expect("watch");
        assert_eq!(next_event(&mut watch).await.key(), "/orch/services/web");
    }

    async fn tracing_sleep(_error: &StoreError) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_open_of_the_same_file_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        let _first = EmbeddedStore::open(&path).await.expect("open");
        let err = EmbeddedStore::open(&path).await.err().expect("a second open must fail");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_from_a_compacted_revision_fails_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open_with_retention(&dir.path().join("s.redb"), 5).await.expect("open");
        for i in 0..20u8 {
            store.put("/k", vec![i], Expect::Any).await.expect("put");
        }
        let mut watch = store.watch("/", 2).await.expect("watch");
        match tokio::time::timeout(PATIENCE, watch.next()).await {
            Ok(Some(Err(StoreError::Compacted { requested: 2, oldest: 16, .. }))) => {}
            other => panic!("expected a compaction error, got {other:?}"),
        }
        // Within the retained window the history is there.
        let mut watch = store.watch("/", 16).await.expect("watch");
        assert_eq!(next_event(&mut watch).await.revision(), 16);
    }

    /// A watcher that falls behind the live broadcast catches up from the log, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_watcher_still_sees_every_event_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).await.expect("open"));
        let mut watch = store.watch("/slow/", 0).await.expect("watch");
        let mut written = Vec::new();
        // More than the broadcast buffer (1024) plus the watch channel (256) hold.
        for i in 0..1600u32 {
            written.push(store.put(&format!("/slow/{i}"), vec![], Expect::Any).await.expect("put"));
        }
        for want in written {
            assert_eq!(next_event(&mut watch).await.revision(), want);
        }
    }
}
