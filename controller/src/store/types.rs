//! The store contract, shared by both backends.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::StoreError;

/// A store-wide, monotonically increasing version. Every change gets its own.
pub type Revision = i64;

/// A lease: keys attached to it are deleted when it is revoked or expires.
pub type LeaseId = i64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key: what [`Expect::Revision`] compares.
    pub mod_revision: Revision,
    /// The key's lease, 0 for none.
    pub lease: LeaseId,
}

/// Condition for a write: the compare half of a compare-and-swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Unconditional.
    Any,
    /// The key must not exist (create).
    Absent,
    /// The key's `mod_revision` must be this (update what was read).
    Revision(Revision),
}

impl Expect {
    /// Whether the condition holds for a key last written at `found` (`None`: absent).
    pub fn holds(self, found: Option<Revision>) -> bool {
        match self {
            Expect::Any => true,
            Expect::Absent => found.is_none(),
            Expect::Revision(r) => found == Some(r),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Any => f.write_str("any"),
            Expect::Absent => f.write_str("absent"),
            Expect::Revision(r) => write!(f, "revision {r}"),
        }
    }
}

/// A consistent snapshot of a prefix: the keys, in key order, as of `revision`.
/// A watch from `revision + 1` continues exactly where the listing ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub items: Vec<KeyValue>,
    pub revision: Revision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, revision: Revision },
}

impl WatchEvent {
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } => *revision,
        }
    }

    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
}

/// The events of one watch, in revision order. Ends with an error (e.g.
/// [`StoreError::Compacted`]) or when the store goes away; dropping it cancels the watch.
#[derive(Debug)]
pub struct WatchStream {
    receiver: mpsc::Receiver<Result<WatchEvent, StoreError>>,
}

impl WatchStream {
    pub(crate) fn channel() -> (mpsc::Sender<Result<WatchEvent, StoreError>>, WatchStream) {
        let (sender, receiver) = mpsc::channel(256);
        (sender, WatchStream { receiver })
    }

    /// The next event; `None` when the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        self.receiver.recv().await
    }

    /// The next event if one is already queued.
    pub fn try_next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        self.receiver.try_recv().ok()
    }
}

/// One write of a [`Store::txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: String, value: Vec<u8>, expect: Expect, lease: Option<LeaseId> },
    Delete { key: String, expect: Expect },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: Vec<u8>, expect: Expect) -> TxnOp {
        TxnOp::Put { key: key.into(), value, expect, lease: None }
    }

    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key, .. } => key,
        }
    }

    /// The bytes it sends: key and value.
    pub fn size(&self) -> usize {
        match self {
            TxnOp::Put { key, value, .. } => key.len() + value.len(),
            TxnOp::Delete { key, .. } => key.len(),
        }
    }
}

/// A leader's fence: a write carrying it lands only while `key` is still the key created
/// at `create_revision` — the leadership this controller won. A deposed leader's write
/// (paused past its lease, or queued behind a slow network) finds another leader's key,
/// or none, and is refused as a whole ([`StoreError::Fenced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub create_revision: Revision,
}

impl Fence {
    /// Whether the fence holds for the key as it is now (`None`: absent).
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        current.is_some_and(|kv| kv.create_revision == self.create_revision)
    }
}

/// The most operations one [`Store::txn`] takes: etcd's default `--max-txn-ops` (128)
/// bounds the compares too, and a fence adds one to every compare-and-swap of a full
/// batch (a 1,000-node apply found it: 128 fenced writes were refused whole).
pub const MAX_TXN_OPS: usize = 127;

/// How many bytes of keys and values writers put in one [`Store::txn`]: etcd refuses a
/// request over 1.5 MiB by default (`--max-request-bytes`).
pub const TXN_BYTES: usize = 1 << 20;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix`, in key order, as one consistent snapshot.
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;

    /// Writes `value` at `key` if `expect` holds, attached to `lease` if given.
    /// Returns the revision of the write.
    async fn put_with_lease(&self, key: &str, value: Vec<u8>, expect: Expect, lease: Option<LeaseId>) -> Result<Revision, StoreError>;

    /// Writes `value` at `key` if `expect` holds. Returns the revision of the write.
    async fn put(&self, key: &str, value: Vec<u8>, expect: Expect) -> Result<Revision, StoreError> {
        self.put_with_lease(key, value, expect, None).await
    }

    /// Deletes `key` if `expect` holds. Returns the revision of the delete, or `None`
    /// when the key did not exist and `expect` was [`Expect::Any`].
    async fn delete(&self, key: &str, expect: Expect) -> Result<Option<Revision>, StoreError>;

    /// Applies every op or none (etcd's `Txn`): if any op's `expect` fails, nothing is
    /// written and the error is that op's [`StoreError::Conflict`]; a put to a lease that
    /// is gone fails the whole as [`StoreError::LeaseNotFound`]. Keys must be distinct, at
    /// most [`MAX_TXN_OPS`]. Returns each op's revision (a delete's `None` when the key did
    /// not exist and its `expect` was [`Expect::Any`]): on etcd one revision for all, on
    /// the embedded store consecutive ones, committed together.
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<Vec<Option<Revision>>, StoreError> {
        self.txn_fenced(None, ops).await
    }

    /// [`Store::txn`], which with a `fence` also lands only while the fence holds (checked
    /// in the same transaction: etcd compares the key's `create_revision`, the embedded
    /// store checks it under its write lock); otherwise nothing is written and the error
    /// is [`StoreError::Fenced`]. Every write a reconciler makes as leader carries one.
    async fn txn_fenced(&self, fence: Option<&Fence>, ops: Vec<TxnOp>) -> Result<Vec<Option<Revision>>, StoreError>;

    /// Changes under `prefix` from `from_revision` on (inclusive); 0 means "from now".
    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream, StoreError>;

    /// A lease that expires `ttl` after its last keep-alive (rounded up to whole seconds
    /// on etcd, which also enforces its own minimum).
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Restarts the lease's countdown. [`StoreError::LeaseNotFound`] once it expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Ends the lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;
}
