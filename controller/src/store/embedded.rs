//! The embedded backend: a redb file, one revision per change, a change log for watches
//! that resume from a revision, and an in-process broadcast for live events.
//!
//! Invariants:
//! - every change (put or delete) gets exactly one revision, `previous + 1`, and one
//!   entry in the `log` table, committed in the same transaction;
//! - writers are serialised by `write_lock`, which also covers the broadcast, so live
//!   events leave in revision order; a watcher that lags re-reads the log;
//! - writes are group-committed: each transaction (a put or a delete is one of one op)
//!   joins `queue`, and whichever writer holds `write_lock` next applies everything
//!   queued (up to `GROUP_COMMIT_MAX`) in one redb transaction — one fsync for the lot —
//!   each with its own outcome (all of its ops or none: every compare is checked before
//!   anything is written) and its ops each with its own revision, in queue order;
//! - the log keeps the last `retention` revisions; older ones are compacted away and a
//!   watch from before them fails with [`StoreError::Compacted`];
//! - leases live in memory with their deadline and in the `leases` table with their TTL;
//!   a reopened store restarts every lease's countdown (as etcd does on leader change).

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::broadcast;

use super::{Expect, Fence, KeyValue, LeaseId, Listing, RestoreSummary, Revision, Snapshot, Store, StoreError, TxnOp, WatchEvent, WatchStream};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// Lease id → TTL in milliseconds.
const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");

const META_REVISION: &str = "revision";
const META_OLDEST: &str = "oldest";
const META_NEXT_LEASE: &str = "next_lease";

/// Revisions the change log keeps for watches that resume.
pub const DEFAULT_LOG_RETENTION: i64 = 100_000;

/// How often expired leases are looked for.
const LEASE_SWEEP_INTERVAL: Duration = Duration::from_millis(100);

pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: Database,
    /// Held across a write transaction's commit and its broadcast.
    write_lock: Mutex<()>,
    /// Puts and deletes waiting for the next group commit.
    queue: Mutex<Vec<QueuedWrite>>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    leases: Mutex<HashMap<LeaseId, LeaseDeadline>>,
    retention: i64,
}

/// Most writes one group commit takes; the rest wait for the next.
const GROUP_COMMIT_MAX: usize = 1024;

/// A transaction waiting in the queue for a group commit (a put or a delete alone is a
/// transaction of one), with the leader's fence if it carries one.
#[derive(Debug)]
struct WriteOp {
    fence: Option<Fence>,
    ops: Vec<TxnOp>,
}

/// Each op's revision: a put's; a delete's, or `None` when there was nothing to delete.
type WriteOutcome = Result<Vec<Option<Revision>>, StoreError>;

#[derive(Debug)]
struct QueuedWrite {
    op: WriteOp,
    reply: tokio::sync::oneshot::Sender<WriteOutcome>,
}

#[derive(Debug, Clone, Copy)]
struct LeaseDeadline {
    ttl: Duration,
    expires: Instant,
}

impl EmbeddedStore {
    /// Opens (or creates) the store file. Must run inside a tokio runtime: it starts
    /// the lease sweeper, which ends when the store is dropped.
    pub async fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with_retention(path, DEFAULT_LOG_RETENTION).await
    }

    pub async fn open_with_retention(path: &Path, retention: i64) -> Result<EmbeddedStore, StoreError> {
        let path = path.to_path_buf();
        let inner = tokio::task::spawn_blocking(move || Inner::open(path, retention.max(1)))
            .await
            .map_err(|e| StoreError::Embedded { path: String::new(), message: format!("open task failed: {e}") })??;
        let inner = Arc::new(inner);
        tokio::spawn(sweep_leases(Arc::downgrade(&inner)));
        Ok(EmbeddedStore { inner })
    }

    /// Puts a backup into this store, which must hold no key and be at a revision below
    /// every restored key's: each key keeps its revisions, the store's revision becomes the
    /// backup's, and the change log starts after it (a watch from before is `Compacted`).
    /// One transaction: all or nothing.
    pub async fn restore(&self, snapshot: &Snapshot) -> Result<RestoreSummary, StoreError> {
        let snapshot = snapshot.clone();
        self.blocking(move |inner| inner.restore(&snapshot)).await
    }

    /// Queues a write for the next group commit and waits for its outcome.
    async fn submit(&self, op: WriteOp) -> WriteOutcome {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        lock(&self.inner.queue).push(QueuedWrite { op, reply });
        // Every write brings a committer; the first to hold the write lock takes what is
        // queued by then, so writes that arrive during a commit share the next one.
        self.blocking(|inner| {
            inner.commit_queued();
            Ok(())
        })
        .await?;
        outcome
            .await
            .map_err(|_| StoreError::Embedded { path: self.inner.path.display().to_string(), message: "a group commit ended without an answer".into() })?
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        let path = inner.path.display().to_string();
        tokio::task::spawn_blocking(move || work(&inner)).await.map_err(|e| StoreError::Embedded { path, message: format!("store task failed: {e}") })?
    }
}

/// Turns any redb error into a [`StoreError`] naming the file and the step.
fn fail<'p, E: Display>(path: &'p Path, step: &'static str) -> impl FnOnce(E) -> StoreError + 'p {
    move |e| StoreError::Embedded { path: path.display().to_string(), message: format!("{step}: {e}") }
}

/// The most memory the store's page cache takes.
const STORE_CACHE_BYTES: usize = 1 << 20;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves no broken invariant behind (the data
    // they guard is rewritten whole), so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn open(path: PathBuf, retention: i64) -> Result<Inner, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(fail(&path, "create the parent directory"))?;
        }
        // redb caches up to 1 GiB of pages by default, and a store that churns (events,
        // replicas come and go) touches new pages all the time: the process would grow
        // towards that. A small cluster's whole state fits in a few MiB.
        let db = redb::Builder::new().set_cache_size(STORE_CACHE_BYTES).create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Embedded {
                path: path.display().to_string(),
                message: "open: in use by another process (a running controller or `orch up`?)".into(),
            },
            other => fail(&path, "open")(other),
        })?;
        // The store holds the cluster's whole state: root's alone, whatever the umask.
        std::fs::set_permissions(&path, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600)).map_err(fail(&path, "chmod 0600"))?;
        let txn = db.begin_write().map_err(fail(&path, "begin"))?;
        let mut ttls = Vec::new();
        {
            txn.open_table(KV).map_err(fail(&path, "open table kv"))?;
            txn.open_table(LOG).map_err(fail(&path, "open table log"))?;
            let mut meta = txn.open_table(META).map_err(fail(&path, "open table meta"))?;
            if meta.get(META_OLDEST).map_err(fail(&path, "read"))?.is_none() {
                meta.insert(META_OLDEST, 1).map_err(fail(&path, "write"))?;
            }
            let leases = txn.open_table(LEASES).map_err(fail(&path, "open table leases"))?;
            for entry in leases.iter().map_err(fail(&path, "read leases"))? {
                let (id, ttl) = entry.map_err(fail(&path, "read leases"))?;
                ttls.push((id.value(), Duration::from_millis(ttl.value())));
            }
        }
        txn.commit().map_err(fail(&path, "commit"))?;
        let now = Instant::now();
        let leases = ttls.into_iter().map(|(id, ttl)| (id, LeaseDeadline { ttl, expires: now + ttl })).collect();
        let (events, _) = broadcast::channel(1024);
        Ok(Inner { path, db, write_lock: Mutex::new(()), queue: Mutex::new(Vec::new()), events, leases: Mutex::new(leases), retention })
    }

    /// Runs `work` in one write transaction; its changes get consecutive revisions, are
    /// logged, committed, then broadcast in order.
    fn write<T>(&self, work: impl FnOnce(&mut Changes<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _serial = lock(&self.write_lock);
        self.write_locked(true, work)
    }

    /// [`Inner::write`] for a caller that holds `write_lock` already. A transaction that
    /// made no change (every write of a group commit lost its compare-and-swap) is
    /// committed only if `commit_unchanged` (a lease's removal is a change without an
    /// event): otherwise dropped, with no fsync.
    fn write_locked<T>(&self, commit_unchanged: bool, work: impl FnOnce(&mut Changes<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(fail(&self.path, "begin"))?;
        let revision = read_meta(&txn, &self.path, META_REVISION)?.unwrap_or(0);
        let mut changes = Changes { txn: &txn, path: &self.path, revision, events: Vec::new() };
        let result = work(&mut changes)?;
        let Changes { revision, events, .. } = changes;
        if !events.is_empty() {
            let mut meta = txn.open_table(META).map_err(fail(&self.path, "open table meta"))?;
            meta.insert(META_REVISION, revision).map_err(fail(&self.path, "write revision"))?;
            let oldest_kept = revision - self.retention + 1;
            let oldest = meta.get(META_OLDEST).map_err(fail(&self.path, "read"))?.map_or(1, |v| v.value());
            if oldest_kept > oldest {
                let mut log = txn.open_table(LOG).map_err(fail(&self.path, "open table log"))?;
                log.retain_in(..oldest_kept, |_, _| false).map_err(fail(&self.path, "compact the log"))?;
                meta.insert(META_OLDEST, oldest_kept).map_err(fail(&self.path, "write"))?;
            }
        } else if !commit_unchanged {
            txn.abort().map_err(fail(&self.path, "abort"))?;
            return Ok(result);
        }
        txn.commit().map_err(fail(&self.path, "commit"))?;
        for event in events {
            // No receiver is fine: nobody is watching.
            let _ = self.events.send(Arc::new(event));
        }
        Ok(result)
    }

    /// Applies every queued write (up to [`GROUP_COMMIT_MAX`]) in one transaction and
    /// answers each. Nothing queued (another writer took it): nothing to do.
    fn commit_queued(&self) {
        let _serial = lock(&self.write_lock);
        let batch: Vec<QueuedWrite> = {
            let mut queue = lock(&self.queue);
            let take = queue.len().min(GROUP_COMMIT_MAX);
            queue.drain(..take).collect()
        };
        if batch.is_empty() {
            return;
        }
        let (ops, replies): (Vec<WriteOp>, Vec<_>) = batch.into_iter().map(|q| (q.op, q.reply)).unzip();
        let outcomes = self.write_locked(false, |changes| ops.into_iter().map(|op| changes.apply(op, self)).collect::<Result<Vec<WriteOutcome>, StoreError>>());
        match outcomes {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // The writer may have gone (its caller was cancelled): fine.
                    let _ = reply.send(outcome);
                }
            }
            Err(error) => {
                // The transaction failed as a whole: nothing of it was written.
                let message = error.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Embedded { path: self.path.display().to_string(), message: format!("group commit: {message}") }));
                }
            }
        }
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<RestoreSummary, StoreError> {
        use redb::ReadableTableMetadata;
        let _serial = lock(&self.write_lock);
        let txn = self.db.begin_write().map_err(fail(&self.path, "begin"))?;
        let current = read_meta(&txn, &self.path, META_REVISION)?.unwrap_or(0);
        let summary = {
            let mut kv = txn.open_table(KV).map_err(fail(&self.path, "open table kv"))?;
            let present = usize::try_from(kv.len().map_err(fail(&self.path, "count keys"))?).unwrap_or(usize::MAX);
            let plan = snapshot.restore_plan(&format!("embedded:{}", self.path.display()), current, present)?;
            let mut restored = 0;
            for (_, group) in &plan {
                for record in group {
                    kv.insert(record.key.as_str(), encode_record(record).as_slice()).map_err(fail(&self.path, "write"))?;
                    restored += 1;
                }
            }
            let revision = snapshot.revision.max(plan.last().map_or(0, |(r, _)| *r)).max(current);
            let mut meta = txn.open_table(META).map_err(fail(&self.path, "open table meta"))?;
            meta.insert(META_REVISION, revision).map_err(fail(&self.path, "write revision"))?;
            meta.insert(META_OLDEST, revision + 1).map_err(fail(&self.path, "write"))?;
            // Lease ids are never reused: an agent may still hold one from before.
            let highest_lease = snapshot.records.iter().map(|kv| kv.lease).max().unwrap_or(0);
            let next_lease = meta.get(META_NEXT_LEASE).map_err(fail(&self.path, "read"))?.map_or(1, |v| v.value()).max(highest_lease + 1);
            meta.insert(META_NEXT_LEASE, next_lease).map_err(fail(&self.path, "write"))?;
            txn.open_table(LOG).map_err(fail(&self.path, "open table log"))?.retain(|_, _| false).map_err(fail(&self.path, "clear the log"))?;
            RestoreSummary { restored, left_out: snapshot.records.len() - restored, revision, filler_writes: 0 }
        };
        txn.commit().map_err(fail(&self.path, "commit"))?;
        Ok(summary)
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let txn = self.db.begin_read().map_err(fail(&self.path, "begin"))?;
        let kv = txn.open_table(KV).map_err(fail(&self.path, "open table kv"))?;
        let record = kv.get(key).map_err(fail(&self.path, "read"))?;
        record.map(|r| decode_record(key, r.value(), &self.path)).transpose()
    }

    fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let txn = self.db.begin_read().map_err(fail(&self.path, "begin"))?;
        let kv = txn.open_table(KV).map_err(fail(&self.path, "open table kv"))?;
        let meta = txn.open_table(META).map_err(fail(&self.path, "open table meta"))?;
        let revision = meta.get(META_REVISION).map_err(fail(&self.path, "read"))?.map_or(0, |v| v.value());
        let mut items = Vec::new();
        for entry in kv.range::<&str>(prefix..).map_err(fail(&self.path, "list"))? {
            let (key, record) = entry.map_err(fail(&self.path, "list"))?;
            if !key.value().starts_with(prefix) {
                break;
            }
            items.push(decode_record(key.value(), record.value(), &self.path)?);
        }
        Ok(Listing { items, revision })
    }

    /// Every logged change from `from` on, and the current revision.
    fn read_log(&self, prefix: &str, from: Revision) -> Result<(Vec<WatchEvent>, Revision), StoreError> {
        let txn = self.db.begin_read().map_err(fail(&self.path, "begin"))?;
        let meta = txn.open_table(META).map_err(fail(&self.path, "open table meta"))?;
        let revision = meta.get(META_REVISION).map_err(fail(&self.path, "read"))?.map_or(0, |v| v.value());
        let oldest = meta.get(META_OLDEST).map_err(fail(&self.path, "read"))?.map_or(1, |v| v.value());
        if from < oldest && from <= revision {
            return Err(StoreError::Compacted { prefix: prefix.to_owned(), requested: from, oldest });
        }
        let log = txn.open_table(LOG).map_err(fail(&self.path, "open table log"))?;
        let mut events = Vec::new();
        for entry in log.range(from..).map_err(fail(&self.path, "read the log"))? {
            let (_, bytes) = entry.map_err(fail(&self.path, "read the log"))?;
            events.push(decode_event(bytes.value(), &self.path)?);
        }
        Ok((events, revision))
    }

    fn current_revision(&self) -> Result<Revision, StoreError> {
        let txn = self.db.begin_read().map_err(fail(&self.path, "begin"))?;
        let meta = txn.open_table(META).map_err(fail(&self.path, "open table meta"))?;
        Ok(meta.get(META_REVISION).map_err(fail(&self.path, "read"))?.map_or(0, |v| v.value()))
    }

    fn lease_exists(&self, lease: LeaseId) -> bool {
        lock(&self.leases).contains_key(&lease)
    }

    fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let _serial = lock(&self.write_lock);
        let txn = self.db.begin_write().map_err(fail(&self.path, "begin"))?;
        let id = {
            let mut meta = txn.open_table(META).map_err(fail(&self.path, "open table meta"))?;
            let id = meta.get(META_NEXT_LEASE).map_err(fail(&self.path, "read"))?.map_or(1, |v| v.value());
            meta.insert(META_NEXT_LEASE, id + 1).map_err(fail(&self.path, "write"))?;
            let mut leases = txn.open_table(LEASES).map_err(fail(&self.path, "open table leases"))?;
            let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            leases.insert(id, millis).map_err(fail(&self.path, "write lease"))?;
            id
        };
        txn.commit().map_err(fail(&self.path, "commit"))?;
        lock(&self.leases).insert(id, LeaseDeadline { ttl, expires: Instant::now() + ttl });
        Ok(id)
    }

    /// Removes the lease and deletes its keys, in one transaction.
    fn end_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.write(|changes| {
            let mut leases = changes.txn.open_table(LEASES).map_err(fail(changes.path, "open table leases"))?;
            leases.remove(lease).map_err(fail(changes.path, "remove lease"))?;
            drop(leases);
            let attached: Vec<String> = {
                let kv = changes.txn.open_table(KV).map_err(fail(changes.path, "open table kv"))?;
                let mut keys = Vec::new();
                for entry in kv.iter().map_err(fail(changes.path, "scan"))? {
                    let (key, record) = entry.map_err(fail(changes.path, "scan"))?;
                    if decode_record(key.value(), record.value(), changes.path)?.lease == lease {
                        keys.push(key.value().to_owned());
                    }
                }
                keys
            };
            for key in attached {
                changes.delete(&key)?;
            }
            Ok(())
        })
    }

    fn take_expired(&self) -> Vec<LeaseId> {
        let now = Instant::now();
        let mut leases = lock(&self.leases);
        let expired: Vec<LeaseId> = leases.iter().filter(|(_, d)| d.expires <= now).map(|(id, _)| *id).collect();
        for id in &expired {
            leases.remove(id);
        }
        expired
    }
}

/// The changes of one write transaction.
struct Changes<'a> {
    txn: &'a WriteTransaction,
    path: &'a Path,
    revision: Revision,
    events: Vec<WatchEvent>,
}

impl Changes<'_> {
    fn current(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let kv = self.txn.open_table(KV).map_err(fail(self.path, "open table kv"))?;
        let record = kv.get(key).map_err(fail(self.path, "read"))?;
        record.map(|r| decode_record(key, r.value(), self.path)).transpose()
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<Revision, StoreError> {
        let create_revision = self.current(key)?.map(|kv| kv.create_revision);
        self.revision += 1;
        let kv = KeyValue { key: key.to_owned(), value, create_revision: create_revision.unwrap_or(self.revision), mod_revision: self.revision, lease };
        let record = encode_record(&kv);
        self.txn.open_table(KV).map_err(fail(self.path, "open table kv"))?.insert(key, record.as_slice()).map_err(fail(self.path, "write"))?;
        let event = WatchEvent::Put(kv);
        self.log(&event)?;
        self.events.push(event);
        Ok(self.revision)
    }

    fn delete(&mut self, key: &str) -> Result<Revision, StoreError> {
        self.revision += 1;
        self.txn.open_table(KV).map_err(fail(self.path, "open table kv"))?.remove(key).map_err(fail(self.path, "delete"))?;
        let event = WatchEvent::Delete { key: key.to_owned(), revision: self.revision };
        self.log(&event)?;
        self.events.push(event);
        Ok(self.revision)
    }

    fn log(&self, event: &WatchEvent) -> Result<(), StoreError> {
        let bytes = encode_event(event);
        self.txn
            .open_table(LOG)
            .map_err(fail(self.path, "open table log"))?
            .insert(event.revision(), bytes.as_slice())
            .map_err(fail(self.path, "write the log"))?;
        Ok(())
    }

    /// One queued transaction within a group commit: every compare is checked before
    /// anything is written, so a failed compare-and-swap or a lease that is gone leaves it
    /// unwritten and is its outcome alone (`Ok(Err)`); a storage error fails the whole
    /// group (`Err`).
    fn apply(&mut self, WriteOp { fence, ops }: WriteOp, inner: &Inner) -> Result<WriteOutcome, StoreError> {
        // This file has one writer (the lock on it): the fence is checked under the same
        // write lock that commits, so no other leader can come between.
        if let Some(fence) = fence {
            if !fence.holds(self.current(&fence.key)?.as_ref()) {
                return Ok(Err(StoreError::Fenced { key: fence.key, create_revision: fence.create_revision }));
            }
        }
        let mut exists = Vec::with_capacity(ops.len());
        for op in &ops {
            let (key, expect) = match op {
                TxnOp::Put { key, expect, lease, .. } => {
                    if let Some(lease) = lease.filter(|l| !inner.lease_exists(*l)) {
                        return Ok(Err(StoreError::LeaseNotFound(lease)));
                    }
                    (key, *expect)
                }
                TxnOp::Delete { key, expect } => (key, *expect),
            };
            match self.check(key, expect) {
                Ok(current) => exists.push(current.is_some()),
                Err(conflict) => return Ok(Err(conflict)),
            }
        }
        let mut revisions = Vec::with_capacity(ops.len());
        for (op, exists) in ops.into_iter().zip(exists) {
            revisions.push(match op {
                TxnOp::Put { key, value, lease, .. } => Some(self.put(&key, value, lease.unwrap_or(0))?),
                TxnOp::Delete { key, .. } if exists => Some(self.delete(&key)?),
                TxnOp::Delete { .. } => None,
            });
        }
        Ok(Ok(revisions))
    }

    fn check(&self, key: &str, expect: Expect) -> Result<Option<KeyValue>, StoreError> {
        let current = self.current(key)?;
        if expect.holds(current.as_ref().map(|kv| kv.mod_revision)) {
            Ok(current)
        } else {
            Err(StoreError::Conflict { key: key.to_owned(), expected: expect, found: current.map(|kv| kv.mod_revision) })
        }
    }
}

fn read_meta(txn: &WriteTransaction, path: &Path, name: &str) -> Result<Option<i64>, StoreError> {
    let meta = txn.open_table(META).map_err(fail(path, "open table meta"))?;
    let value = meta.get(name).map_err(fail(path, "read"))?.map(|v| v.value());
    Ok(value)
}

// Record: create_revision, mod_revision, lease (i64 little-endian each), then the value.
fn encode_record(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.lease.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode_record(key: &str, bytes: &[u8], path: &Path) -> Result<KeyValue, StoreError> {
    let field = |i: usize| -> Result<i64, StoreError> {
        bytes
            .get(i * 8..i * 8 + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_le_bytes)
            .ok_or_else(|| StoreError::Embedded { path: path.display().to_string(), message: format!("corrupt record for {key}") })
    };
    Ok(KeyValue { key: key.to_owned(), create_revision: field(0)?, mod_revision: field(1)?, lease: field(2)?, value: bytes[24..].to_vec() })
}

// Log entry: a tag (0 put, 1 delete), the key length (u32 LE), the key, then for a put
// the record and for a delete the revision.
fn encode_event(event: &WatchEvent) -> Vec<u8> {
    let key = event.key().as_bytes();
    let mut out = Vec::with_capacity(5 + key.len() + 32);
    out.push(u8::from(matches!(event, WatchEvent::Delete { .. })));
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(key);
    match event {
        WatchEvent::Put(kv) => out.extend_from_slice(&encode_record(kv)),
        WatchEvent::Delete { revision, .. } => out.extend_from_slice(&revision.to_le_bytes()),
    }
    out
}

fn decode_event(bytes: &[u8], path: &Path) -> Result<WatchEvent, StoreError> {
    let corrupt = || StoreError::Embedded { path: path.display().to_string(), message: "corrupt log entry".to_owned() };
    let (&tag, rest) = bytes.split_first().ok_or_else(corrupt)?;
    let len_bytes = rest.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).ok_or_else(corrupt)?;
    let len = usize::try_from(u32::from_le_bytes(len_bytes)).map_err(|_| corrupt())?;
    let key = rest.get(4..4 + len).ok_or_else(corrupt)?;
    let key = std::str::from_utf8(key).map_err(|_| corrupt())?;
    let tail = rest.get(4 + len..).ok_or_else(corrupt)?;
    match tag {
        0 => Ok(WatchEvent::Put(decode_record(key, tail, path)?)),
        1 => {
            let revision = <[u8; 8]>::try_from(tail).map_err(|_| corrupt())?;
            Ok(WatchEvent::Delete { key: key.to_owned(), revision: i64::from_le_bytes(revision) })
        }
        _ => Err(corrupt()),
    }
}

async fn sweep_leases(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(LEASE_SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let expired = inner.take_expired();
        if expired.is_empty() {
            continue;
        }
        let result = tokio::task::spawn_blocking(move || {
            for lease in expired {
                if let Err(e) = inner.end_lease(lease) {
                    tracing::error!(lease, error = %e, "cannot delete the keys of an expired lease");
                }
            }
        })
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "lease sweep task failed");
        }
    }
}

/// Feeds one watch: catch up from the log, then follow the broadcast; on lag, catch up
/// again. `next` is the next revision to deliver (or skip, if another prefix).
async fn run_watch(
    inner: Arc<Inner>,
    prefix: String,
    mut next: Revision,
    mut live: broadcast::Receiver<Arc<WatchEvent>>,
    out: tokio::sync::mpsc::Sender<Result<WatchEvent, StoreError>>,
) {
    loop {
        let catch_up = {
            let inner = Arc::clone(&inner);
            let prefix = prefix.clone();
            tokio::task::spawn_blocking(move || inner.read_log(&prefix, next)).await
        };
        let events = match catch_up {
            Ok(Ok((events, current))) => {
                next = next.max(current + 1);
                events
            }
            Ok(Err(e)) => {
                let _ = out.send(Err(e)).await;
                return;
            }
            Err(e) => {
                let _ = out.send(Err(StoreError::Embedded { path: inner.path.display().to_string(), message: format!("watch task failed: {e}") })).await;
                return;
            }
        };
        for event in events {
            if event.key().starts_with(&prefix) && out.send(Ok(event)).await.is_err() {
                return;
            }
        }
        loop {
            let received = tokio::select! {
                () = out.closed() => return,
                received = live.recv() => received,
            };
            match received {
                Ok(event) if event.revision() < next => {}
                Ok(event) if event.revision() == next => {
                    next += 1;
                    if event.key().starts_with(&prefix) && out.send(Ok((*event).clone())).await.is_err() {
                        return;
                    }
                }
                // A gap (only after a lag) or a lag: the log has what was missed.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |inner| inner.get(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |inner| inner.list(&prefix)).await
    }

    async fn put_with_lease(&self, key: &str, value: Vec<u8>, expect: Expect, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        if let Some(lease) = lease {
            if !self.inner.lease_exists(lease) {
                return Err(StoreError::LeaseNotFound(lease));
            }
        }
        let revisions = self.submit(WriteOp { fence: None, ops: vec![TxnOp::Put { key: key.to_owned(), value, expect, lease }] }).await?;
        revisions
            .first()
            .copied()
            .flatten()
            .ok_or_else(|| StoreError::Embedded { path: self.inner.path.display().to_string(), message: format!("put {key}: no revision") })
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<Option<Revision>, StoreError> {
        Ok(self.submit(WriteOp { fence: None, ops: vec![TxnOp::Delete { key: key.to_owned(), expect }] }).await?.first().copied().flatten())
    }

    async fn txn_fenced(&self, fence: Option<&Fence>, ops: Vec<TxnOp>) -> Result<Vec<Option<Revision>>, StoreError> {
        super::error::check_txn(&ops)?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        self.submit(WriteOp { fence: fence.cloned(), ops }).await
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the log, so nothing falls between the two.
        let live = self.inner.events.subscribe();
        let next = if from_revision > 0 { from_revision } else { self.blocking(Inner::current_revision).await? + 1 };
        let (sender, stream) = WatchStream::channel();
        tokio::spawn(run_watch(Arc::clone(&self.inner), prefix.to_owned(), next, live, sender));
        Ok(stream)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.blocking(move |inner| inner.grant_lease(ttl)).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut leases = lock(&self.inner.leases);
        let deadline = leases.get_mut(&lease).ok_or(StoreError::LeaseNotFound(lease))?;
        deadline.expires = Instant::now() + deadline.ttl;
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        if lock(&self.inner.leases).remove(&lease).is_none() {
            return Err(StoreError::LeaseNotFound(lease));
        }
        self.blocking(move |inner| inner.end_lease(lease)).await
    }
}
