//! A store seen through a key prefix: every key the caller uses lives under `prefix` in
//! the backend. Several clusters (or parallel tests) can share one etcd this way, as with
//! etcd's own namespaces.

use std::time::Duration;

use async_trait::async_trait;

use super::{Expect, Fence, KeyValue, LeaseId, Listing, Revision, Store, StoreError, TxnOp, WatchEvent, WatchStream};

pub struct PrefixedStore<S> {
    inner: S,
    prefix: String,
}

impl<S: Store> PrefixedStore<S> {
    pub fn new(inner: S, prefix: &str) -> PrefixedStore<S> {
        PrefixedStore { inner, prefix: prefix.trim_end_matches('/').to_owned() }
    }

    fn outer(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn strip(&self, mut kv: KeyValue) -> KeyValue {
        kv.key = kv.key[self.prefix.len()..].to_owned();
        kv
    }
}

#[async_trait]
impl<S: Store> Store for PrefixedStore<S> {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.inner.get(&self.outer(key)).await?.map(|kv| self.strip(kv)))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let listing = self.inner.list(&self.outer(prefix)).await?;
        Ok(Listing { items: listing.items.into_iter().map(|kv| self.strip(kv)).collect(), revision: listing.revision })
    }

    async fn put_with_lease(&self, key: &str, value: Vec<u8>, expect: Expect, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        self.inner.put_with_lease(&self.outer(key), value, expect, lease).await
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<Option<Revision>, StoreError> {
        self.inner.delete(&self.outer(key), expect).await
    }

    async fn txn_fenced(&self, fence: Option<&Fence>, ops: Vec<TxnOp>) -> Result<Vec<Option<Revision>>, StoreError> {
        let fence = fence.map(|f| Fence { key: self.outer(&f.key), create_revision: f.create_revision });
        let ops = ops
            .into_iter()
            .map(|op| match op {
                TxnOp::Put { key, value, expect, lease } => TxnOp::Put { key: self.outer(&key), value, expect, lease },
                TxnOp::Delete { key, expect } => TxnOp::Delete { key: self.outer(&key), expect },
            })
            .collect();
        let inner = |key: String| key.strip_prefix(&self.prefix).map(str::to_owned).unwrap_or(key);
        self.inner.txn_fenced(fence.as_ref(), ops).await.map_err(|error| match error {
            StoreError::Conflict { key, expected, found } => StoreError::Conflict { key: inner(key), expected, found },
            StoreError::Fenced { key, create_revision } => StoreError::Fenced { key: inner(key), create_revision },
            other => other,
        })
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream, StoreError> {
        let mut inner = self.inner.watch(&self.outer(prefix), from_revision).await?;
        let (sender, stream) = WatchStream::channel();
        let strip = self.prefix.len();
        tokio::spawn(async move {
            while let Some(event) = inner.next().await {
                let event = event.map(|e| match e {
                    WatchEvent::Put(mut kv) => {
                        kv.key = kv.key[strip..].to_owned();
                        WatchEvent::Put(kv)
                    }
                    WatchEvent::Delete { key, revision } => WatchEvent::Delete { key: key[strip..].to_owned(), revision },
                });
                if sender.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(stream)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }
}
