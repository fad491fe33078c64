//! Backup and restore on both backends: every key comes back with its value and its
//! revisions (a Service names its Configs' revisions), keys on a lease stay out, a
//! non-empty store or one whose revision is past the backup's is refused untouched, and
//! a restored store goes on numbering after the backup. etcd restores go into an etcd
//! this test starts on its own data directory (a new cluster is at revision 1).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is the point

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::unique_prefix;
use orch_controller::store::{restore_store, take_snapshot, EmbeddedStore, EtcdStore, Expect, KeyValue, Snapshot, Store, StoreConfig, StoreError};

/// Writes a history with gaps (updates, deletes, a key on a lease, keys of another
/// prefix in between) under `prefix`; returns what a restore must bring back.
async fn write_history(store: &dyn Store, prefix: &str) -> Vec<String> {
    let key = |name: &str| format!("{prefix}{name}");
    store.put(&key("services/web"), b"v1".to_vec(), Expect::Absent).await.expect("put");
    store.put(&key("configs/site"), b"hello".to_vec(), Expect::Absent).await.expect("put");
    for n in 0..5 {
        store.put(&format!("/elsewhere{prefix}{n}"), vec![n], Expect::Any).await.expect("put outside the prefix");
    }
    let web = store.get(&key("services/web")).await.expect("get").expect("web");
    store.put(&key("services/web"), b"v2".to_vec(), Expect::Revision(web.mod_revision)).await.expect("update");
    store.put(&key("replicas/web/a"), b"a".to_vec(), Expect::Absent).await.expect("put");
    store.put(&key("replicas/web/b"), b"b".to_vec(), Expect::Absent).await.expect("put");
    store.delete(&key("replicas/web/a"), Expect::Any).await.expect("delete");
    let lease = store.grant_lease(Duration::from_secs(60)).await.expect("lease");
    store.put_with_lease(&key("alive/nodes/n1"), Vec::new(), Expect::Any, Some(lease)).await.expect("put on a lease");
    store.put(&key("secrets/db"), b"sealed".to_vec(), Expect::Absent).await.expect("put");
    vec![key("configs/site"), key("replicas/web/b"), key("secrets/db"), key("services/web")]
}

async fn records(store: &dyn Store, prefix: &str) -> BTreeMap<String, KeyValue> {
    store.list(prefix).await.expect("list").items.into_iter().map(|kv| (kv.key.clone(), kv)).collect()
}

/// The restored store holds exactly the backup's keys off a lease, each with its value
/// and mod revision (and its create revision where `keeps_create` — etcd writes each
/// key once, so there it is the mod revision); it is at least at the backup's revision
/// of the restored keys and goes on after it; a second restore is refused untouched.
async fn check_restored(restored: &dyn Store, snapshot: &Snapshot, expected_keys: &[String], keeps_create: bool) {
    let after = records(restored, &snapshot.prefix).await;
    assert_eq!(after.keys().cloned().collect::<Vec<_>>(), expected_keys, "exactly the keys off a lease come back");
    for original in snapshot.records.iter().filter(|kv| kv.lease == 0) {
        let back = &after[&original.key];
        assert_eq!((&back.value, back.mod_revision, back.lease), (&original.value, original.mod_revision, 0), "{}", original.key);
        let create = if keeps_create { original.create_revision } else { original.mod_revision };
        assert_eq!(back.create_revision, create, "{}", original.key);
    }
    let highest = snapshot.records.iter().filter(|kv| kv.lease == 0).map(|kv| kv.mod_revision).max().expect("records");
    let next = restored.put(&format!("{}after", snapshot.prefix), b"x".to_vec(), Expect::Absent).await.expect("write after the restore");
    assert!(next > highest, "the store numbers on after the restored keys: {next} after {highest}");
    restored.delete(&format!("{}after", snapshot.prefix), Expect::Any).await.expect("delete");
}

#[tokio::test]
async fn embedded_backup_restores_every_key_with_its_revisions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = EmbeddedStore::open(&dir.path().join("source.redb")).await.expect("open");
    let expected = write_history(&source, "/orch/").await;
    let snapshot = take_snapshot(&source, "/orch/", "embedded:source").await.expect("snapshot");
    assert_eq!(snapshot.records.len(), 5, "four keys and the one on a lease: {snapshot:#?}");
    let file = dir.path().join("backup.orch");
    snapshot.write_file(&file).expect("write the backup");
    let from_file = Snapshot::read_file(&file).expect("read the backup");
    assert_eq!(from_file, snapshot);

    // Into a new file, through the same entry point as `orch-controller restore`.
    let target = StoreConfig::Embedded { path: dir.path().join("restored.redb") };
    let summary = restore_store(&target, &from_file).await.expect("restore");
    assert_eq!((summary.restored, summary.left_out, summary.revision, summary.filler_writes), (4, 1, snapshot.revision, 0));
    let restored = EmbeddedStore::open(&dir.path().join("restored.redb")).await.expect("reopen");
    check_restored(&restored, &snapshot, &expected, true).await;
    // The restored store's revision is the backup's: a watch resumes after it, and one
    // from before it is refused (its history is not in the backup).
    let mut watch = restored.watch("/orch/", snapshot.revision + 1).await.expect("watch after the backup");
    let first = watch.next().await.expect("an event").expect("not an error");
    assert_eq!(first.key(), "/orch/after", "the first change after the restore");
    let compacted = match restored.watch("/orch/", snapshot.revision - 1).await {
        Err(error) => error,
        Ok(mut stream) => stream.next().await.expect("an answer").expect_err("a watch from before the backup"),
    };
    assert!(matches!(compacted, StoreError::Compacted { .. }), "{compacted}");
    drop(watch);

    // A store that holds keys is refused, and keeps what it had.
    let before = records(&restored, "/orch/").await;
    drop(restored);
    // The file is free once the store's background tasks (the ended watch's) let go.
    common::wait_until("the restored store's file to be free", Duration::from_secs(10), || async {
        EmbeddedStore::open(&dir.path().join("restored.redb")).await.is_ok()
    })
    .await;
    let error = restore_store(&target, &snapshot).await.expect_err("a second restore into the same store").to_string();
    assert!(error.contains("already holds 4 keys under /orch/") && error.contains("restored.redb"), "{error}");
    let reopened = EmbeddedStore::open(&dir.path().join("restored.redb")).await.expect("reopen");
    assert_eq!(records(&reopened, "/orch/").await, before, "a refused restore changes nothing");

    // A file a controller is using is named as such.
    let in_use = restore_store(&target, &snapshot).await.expect_err("in use").to_string();
    assert!(in_use.contains("in use by another process"), "{in_use}");
}

/// An etcd of the test's own, on a new data directory and two free loopback ports;
/// killed and removed when dropped (also after a panic).
struct PrivateEtcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl PrivateEtcd {
    async fn start() -> PrivateEtcd {
        let free_port = || TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("address").port();
        let (client, peer) = (free_port(), free_port());
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("etcd")
            .args(["--name", "orch-backup-test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}"), "--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}"), "--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &format!("orch-backup-test=http://127.0.0.1:{peer}"), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (Debian etcd-server; deploy/test.sh installs it)");
        let etcd = PrivateEtcd { child, endpoint: format!("127.0.0.1:{client}"), _dir: dir };
        let start = Instant::now();
        while EtcdStore::connect(&[format!("http://{}", etcd.endpoint)]).await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "the test's etcd did not answer on {}", etcd.endpoint);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        etcd
    }
}

impl Drop for PrivateEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn etcd_backup_restores_every_key_at_its_revision_into_a_new_etcd() {
    // The source: the shared test etcd, well past revision 1 (other tests write to it),
    // under a prefix of this test's own; the backup's revisions are far apart.
    let source = common::etcd().await;
    let prefix = unique_prefix("backup");
    let expected = write_history(source.store.as_ref(), &prefix).await;
    let snapshot = take_snapshot(source.store.as_ref(), &prefix, "etcd:shared").await.expect("snapshot");
    assert_eq!(snapshot.records.len(), 5);

    let etcd = PrivateEtcd::start().await;
    let target = StoreConfig::parse(&format!("etcd://{}", etcd.endpoint)).expect("address");
    let summary = restore_store(&target, &snapshot).await.expect("restore");
    let highest = snapshot.records.iter().filter(|kv| kv.lease == 0).map(|kv| kv.mod_revision).max().expect("records");
    assert_eq!((summary.restored, summary.left_out), (4, 1));
    // Revision 1 was the new etcd's; every other revision up to the last key is a key or
    // a filler, and deleting the filler key is one more.
    assert_eq!(summary.filler_writes, u64::try_from(highest - 1 - 4).expect("gap"), "{summary:?}");
    assert_eq!(summary.revision, highest + 1);
    let restored: Arc<dyn Store> = Arc::new(EtcdStore::connect(&[format!("http://{}", etcd.endpoint)]).await.expect("connect"));
    check_restored(restored.as_ref(), &snapshot, &expected, false).await;
    assert_eq!(restored.get(&format!("{prefix}restore-filler")).await.expect("get"), None, "the filler key is gone");

    // Not empty any more: refused, and nothing written.
    let revision = restored.put("/probe", Vec::new(), Expect::Any).await.expect("probe");
    let error = restore_store(&target, &snapshot).await.expect_err("a second restore").to_string();
    assert!(error.contains("already holds 4 keys") && error.contains(&etcd.endpoint), "{error}");
    assert_eq!(restored.put("/probe", Vec::new(), Expect::Any).await.expect("probe"), revision + 1, "a refused restore writes nothing");

    // An empty prefix on an etcd already past the backup's first revision: refused too.
    let mut moved = snapshot.clone();
    let fresh_prefix = unique_prefix("backup-moved");
    for kv in &mut moved.records {
        kv.key = kv.key.replacen(&prefix, &fresh_prefix, 1);
    }
    moved.prefix = fresh_prefix;
    let error = restore_store(&target, &moved).await.expect_err("revisions taken").to_string();
    assert!(error.contains("revisions only grow") && error.contains("etcdctl snapshot restore"), "{error}");
    for key in expected {
        source.store.delete(&key, Expect::Any).await.expect("clean up");
    }

    // A restore that stopped half-way leaves its marker: a controller refuses that store.
    restored.put("/orch/restore-in-progress", Vec::new(), Expect::Absent).await.expect("marker");
    let out = Command::new(env!("CARGO_BIN_EXE_orch-controller"))
        .args(["--store", &format!("etcd://{}", etcd.endpoint), "--insecure-listen", "127.0.0.1:0", "--metrics-listen", "none"])
        .output()
        .expect("run orch-controller");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("a restore into it did not finish"), "{stderr}");
}
