//! Events: what happened to which object, kept for a while (`/orch/events/`, on a lease
//! so they expire by themselves) and listable through the API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orch_api::events::EventKind;
use orch_api::pb;
use prost::Message as _;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::keys;
use crate::store::{Expect, LeaseId, Store, StoreError, TxnOp, MAX_TXN_OPS, TXN_BYTES};

/// How long one lease is shared by new events: events live between `ttl - SHARE` and
/// `ttl`, and the store holds one lease per window instead of one per event.
const SHARE: Duration = Duration::from_secs(60);

/// Events waiting to be written in the background; beyond this they are dropped (and
/// counted in the log) rather than slowing the reconcilers down.
const BACKLOG: usize = 4096;
/// Background writes (each up to `MAX_TXN_OPS` events in one transaction) in flight at once.
const WRITERS: usize = 4;

#[derive(Clone)]
pub struct EventLog {
    store: Arc<dyn Store>,
    ttl: Duration,
    lease: Arc<Mutex<Option<(LeaseId, Instant)>>>,
    sequence: Arc<AtomicU64>,
    backlog: tokio::sync::mpsc::Sender<pb::Event>,
    /// Events dropped with the backlog full, so far.
    dropped: Arc<AtomicU64>,
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl EventLog {
    /// Needs a tokio runtime: it starts the background writer, which ends with the last
    /// clone.
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> EventLog {
        let (backlog, mut queued) = tokio::sync::mpsc::channel::<pb::Event>(BACKLOG);
        let log = EventLog { store, ttl, lease: Arc::default(), sequence: Arc::default(), backlog, dropped: Arc::default() };
        let writer = EventLog { backlog: tokio::sync::mpsc::channel(1).0, ..log.clone() };
        tokio::spawn(async move {
            use futures::StreamExt;
            // One event and whatever else is queued by then: one write for a burst.
            let batches = futures::stream::poll_fn(move |cx| {
                queued.poll_recv(cx).map(|first| {
                    first.map(|first| {
                        let mut bytes = first.encoded_len();
                        let mut batch = vec![first];
                        // Events are small: a count bound, and a byte bound for odd ones.
                        while batch.len() < MAX_TXN_OPS && bytes < TXN_BYTES / 2 {
                            match queued.try_recv() {
                                Ok(event) => {
                                    bytes += event.encoded_len();
                                    batch.push(event);
                                }
                                Err(_) => break,
                            }
                        }
                        batch
                    })
                })
            });
            batches
                .for_each_concurrent(WRITERS, |batch| {
                    let writer = writer.clone();
                    async move {
                        if let Err(error) = writer.record_all(batch).await {
                            tracing::warn!(%error, "recording events");
                        }
                    }
                })
                .await;
        });
        log
    }

    async fn lease(&self) -> Result<LeaseId, StoreError> {
        let mut current = self.lease.lock().await;
        if let Some((lease, granted)) = *current {
            if granted.elapsed() < SHARE.min(self.ttl / 2) {
                return Ok(lease);
            }
        }
        let lease = self.store.grant_lease(self.ttl).await?;
        *current = Some((lease, Instant::now()));
        Ok(lease)
    }

    pub async fn record(&self, event: pb::Event) -> Result<(), StoreError> {
        self.record_all(vec![event]).await
    }

    /// Records up to [`MAX_TXN_OPS`] events in one transaction.
    async fn record_all(&self, events: Vec<pb::Event>) -> Result<(), StoreError> {
        let records: Vec<(String, Vec<u8>)> = events
            .into_iter()
            .map(|mut event| {
                if event.timestamp_unix_ms == 0 {
                    event.timestamp_unix_ms = now_unix_ms();
                }
                let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
                let key = format!("{}{:013}-{:08}-{}", keys::EVENTS, event.timestamp_unix_ms, sequence, std::process::id());
                (key, keys::encode(&event))
            })
            .collect();
        let ops = |lease: LeaseId| -> Vec<TxnOp> {
            records.iter().map(|(key, value)| TxnOp::Put { key: key.clone(), value: value.clone(), expect: Expect::Any, lease: Some(lease) }).collect()
        };
        let lease = self.lease().await?;
        match self.store.txn(ops(lease)).await {
            Err(StoreError::LeaseNotFound(_)) => {
                // The shared lease ended early (a store restart): take a new one.
                *self.lease.lock().await = None;
                let lease = self.lease().await?;
                self.store.txn(ops(lease)).await.map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    /// Records in the background, never holding the caller up; failures are logged.
    pub fn emit(&self, kind: EventKind, object: String, message: String) {
        self.push(pb::Event { timestamp_unix_ms: now_unix_ms(), kind: kind.as_str().to_owned(), object, message, incident: None });
    }

    /// Records a whole event — one an agent reported, under the kind it named, or an
    /// incident — stamped now, as the controller's own.
    pub fn emit_reported(&self, event: pb::Event) {
        self.push(pb::Event { timestamp_unix_ms: now_unix_ms(), ..event });
    }

    fn push(&self, event: pb::Event) {
        let kind = event.kind.clone();
        if self.backlog.try_send(event).is_err() {
            // Said at the first and every thousandth: a storm's drops would flood the log.
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped == 1 || dropped.is_multiple_of(1000) {
                tracing::warn!(kind, dropped, "event backlog full (or closed): dropping events");
            }
        }
    }
}
