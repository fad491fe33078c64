//! The liveness lease: one store lease per controller, which the alive keys of every
//! node whose session it holds are put on (etcd's own session idea: one lease per
//! client, many keys).
//!
//! Each node used to have a lease of its own, renewed by its session a few times per
//! node lease: with a thousand nodes that was ~800 renewals a second — two thirds of
//! the store's requests while 10,000 replicas started, enough to slow etcd down past the
//! leader's renew deadline. Now heartbeats cost the store nothing: one renewal per
//! controller every quarter of the node lease keeps every alive key it put.
//!
//! A node is alive while its alive key exists: put when a session starts, and again
//! by a heartbeat that finds it gone (the node was judged silent, or this controller's
//! lease lapsed); deleted when the session judges the node silent, and one node lease
//! after its session ended unless a newer one holds the node. A controller that dies
//! takes its lease with it: its nodes are NotReady one node lease later unless their
//! agents open sessions elsewhere (which put their alive keys on that controller's
//! lease).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::store::{LeaseId, Store, StoreError};

/// How often the lag probe wakes, how late a wake-up counts as lag, and how long lag
/// is remembered.
const LAG_PROBE_EVERY: Duration = Duration::from_millis(50);
const LAG_LIMIT: Duration = Duration::from_millis(100);
const LAG_MEMORY: Duration = Duration::from_secs(2);

/// Whether this controller's runtime is too busy for a silence it sees to be the node's:
/// a task wakes every 50 ms and notes when it woke more than 100 ms late. A session's
/// fast (φ) verdict waits while the runtime lagged in the last 2 s — heartbeats that
/// arrived may simply not have been read yet; a node silent for a whole node lease is
/// judged whatever the load. (1,000 sessions each sending a desired set at once queued
/// heartbeats behind them for over a second: 20 live nodes judged silent.)
pub struct RuntimeLag {
    base: Instant,
    /// When (ms after `base`) the probe last woke late; 0: never.
    lagged_at_ms: AtomicU64,
}

impl RuntimeLag {
    /// Starts the probe on the current runtime; it ends with the last handle.
    pub fn spawn() -> Arc<RuntimeLag> {
        let lag = Arc::new(RuntimeLag { base: Instant::now(), lagged_at_ms: AtomicU64::new(0) });
        let probe = Arc::downgrade(&lag);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LAG_PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let due = tick.tick().await;
                let Some(lag) = probe.upgrade() else { return };
                lag.woke(due.into_std(), Instant::now());
            }
        });
        lag
    }

    /// The probe was due at `due` and woke at `now`.
    fn woke(&self, due: Instant, now: Instant) {
        if now.saturating_duration_since(due) > LAG_LIMIT {
            let at = u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX).max(1);
            self.lagged_at_ms.store(at, Ordering::Relaxed);
        }
    }

    /// The runtime lagged within the last [`LAG_MEMORY`] before `now`.
    pub fn lagged(&self, now: Instant) -> bool {
        let at = self.lagged_at_ms.load(Ordering::Relaxed);
        at > 0 && self.base + Duration::from_millis(at) + LAG_MEMORY > now
    }
}

pub struct LivenessLease {
    store: Arc<dyn Store>,
    ttl: Duration,
    /// The lease now, once one was needed.
    current: Mutex<Option<LeaseId>>,
}

impl LivenessLease {
    /// Keeps the lease (granted on first use) alive while the returned handle lives.
    pub fn spawn(store: Arc<dyn Store>, ttl: Duration) -> Arc<LivenessLease> {
        let lease = Arc::new(LivenessLease { store, ttl, current: Mutex::new(None) });
        let kept = Arc::downgrade(&lease);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((ttl / 4).max(Duration::from_millis(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(lease) = kept.upgrade() else { return };
                lease.renew().await;
            }
        });
        lease
    }

    /// How long an alive key outlives the last renewal of its lease.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The lease to put alive keys on: the current one, or a new one.
    pub async fn lease(&self) -> Result<LeaseId, StoreError> {
        let mut current = self.current.lock().await;
        if let Some(lease) = *current {
            return Ok(lease);
        }
        let lease = self.store.grant_lease(self.ttl).await?;
        *current = Some(lease);
        Ok(lease)
    }

    /// The lease now, without granting one.
    pub async fn current(&self) -> Option<LeaseId> {
        *self.current.lock().await
    }

    /// The store said `lease` is gone: the next [`LivenessLease::lease`] takes a new one.
    pub async fn lapsed(&self, lease: LeaseId) {
        let mut current = self.current.lock().await;
        if *current == Some(lease) {
            *current = None;
        }
    }

    async fn renew(&self) {
        let Some(lease) = self.current().await else { return };
        match self.store.keep_alive(lease).await {
            Ok(()) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                // Lapsed (the store was out of reach too long): its alive keys went with it;
                // each session puts its node's again on the next lease at its next beat.
                tracing::warn!(lease, "the nodes' liveness lease lapsed: taking a new one");
                self.lapsed(lease).await;
            }
            Err(error) => tracing::warn!(%error, "renewing the nodes' liveness lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_wake_up_marks_the_runtime_lagged_for_a_while() {
        let lag = RuntimeLag { base: Instant::now(), lagged_at_ms: AtomicU64::new(0) };
        let start = lag.base + Duration::from_secs(1);
        assert!(!lag.lagged(start), "never lagged");
        lag.woke(start, start + Duration::from_millis(60));
        assert!(!lag.lagged(start + Duration::from_millis(60)), "60 ms late is within the limit");
        let late = start + Duration::from_millis(400);
        lag.woke(start, late);
        assert!(lag.lagged(late) && lag.lagged(late + Duration::from_millis(1900)), "lagged, and remembered");
        assert!(!lag.lagged(late + Duration::from_millis(2100)), "forgotten after 2 s");
    }
}
