//! Leader election over the store: whoever creates `/orch/leader` on its own lease leads,
//! and keeps leading while it renews the lease. Every controller serves the API; only the
//! leader runs the reconcilers.
//!
//! Never two leaders: a leader steps down on its own when it has not renewed within
//! `renew_deadline` (two thirds of the TTL, counted from when the last successful renewal
//! was *sent*), which is before the store can expire its lease and let another in — the
//! client-go `RenewDeadline < LeaseDuration` rule. A leader that dies is replaced within
//! one TTL: followers watch the leader key and campaign the moment it goes (and every
//! retry period besides, in case a watch missed it).
//!
//! Stepping down in time is the leader's own clock's promise; the store keeps it too: a
//! leader's [`Fence`] (the leader key and the revision that created it) goes with every
//! reconciler write, which lands only while that key is still the one this leader created
//! — a leader paused past its lease, or whose writes were queued behind a slow network,
//! writes nothing once another leads.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::keys;
use crate::store::{Expect, Fence, LeaseId, Store, StoreError};

#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// Who this controller is (written in the leader key).
    pub identity: String,
    /// The leadership lease's TTL.
    pub ttl: Duration,
}

impl ElectionConfig {
    fn renew_deadline(&self) -> Duration {
        self.ttl * 2 / 3
    }

    fn retry_period(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(100))
    }
}

/// A running candidate; `is_leader` tells whether it leads right now (it holds a fence). Dropping it stops
/// campaigning without giving leadership up (as a crash would); [`Candidate::resign`]
/// hands it over at once.
pub struct Candidate {
    fence: watch::Receiver<Option<Fence>>,
    lease: Arc<std::sync::Mutex<Option<LeaseId>>>,
    store: Arc<dyn Store>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Candidate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Candidate {
    pub fn spawn(store: Arc<dyn Store>, config: ElectionConfig) -> Candidate {
        let (sender, fence) = watch::channel(None);
        let lease = Arc::new(std::sync::Mutex::new(None));
        let task = tokio::spawn(campaign(Arc::clone(&store), config, sender, Arc::clone(&lease)));
        Candidate { fence, lease, store, task }
    }

    pub fn is_leader(&self) -> bool {
        self.fence.borrow().is_some()
    }

    /// The fence of the current leadership (`None` while not leading): whether it leads,
    /// and what the reconcilers' writes carry.
    pub fn fence(&self) -> watch::Receiver<Option<Fence>> {
        self.fence.clone()
    }

    /// Stops campaigning and, if leading, revokes the lease so another takes over now.
    pub async fn resign(self) {
        self.task.abort();
        let lease = self.lease.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(lease) = lease {
            if let Err(error) = self.store.revoke_lease(lease).await {
                tracing::debug!(%error, "revoking the leadership lease");
            }
        }
    }
}

async fn campaign(store: Arc<dyn Store>, config: ElectionConfig, leader: watch::Sender<Option<Fence>>, held: Arc<std::sync::Mutex<Option<LeaseId>>>) {
    // A watch on the leader key: a follower campaigns the moment the key goes (its
    // leader resigned, or its lease expired) instead of at its next retry.
    let mut leader_key: Option<crate::store::WatchStream> = None;
    loop {
        match try_lead(store.as_ref(), &config, &leader, &held).await {
            Ok(()) => {}
            Err(error) => tracing::warn!(%error, "leader election"),
        }
        leader.send_replace(None);
        if leader_key.is_none() {
            leader_key = store.watch(keys::LEADER, 0).await.ok();
        }
        let retry = tokio::time::sleep(config.retry_period());
        tokio::pin!(retry);
        match leader_key.as_mut() {
            Some(changes) => tokio::select! {
                () = &mut retry => {}
                change = changes.next() => match change {
                    // Gone, or someone else's: look again now.
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        leader_key = None;
                        tokio::time::sleep(config.retry_period()).await;
                    }
                },
            },
            None => retry.await,
        }
    }
}

/// One attempt: returns when this candidate is not (or no longer) the leader.
async fn try_lead(
    store: &dyn Store,
    config: &ElectionConfig,
    leader: &watch::Sender<Option<Fence>>,
    held: &std::sync::Mutex<Option<LeaseId>>,
) -> Result<(), StoreError> {
    // Someone leads (possibly this controller before a restart: its key expires like
    // anyone else's).
    if store.get(keys::LEADER).await?.is_some() {
        return Ok(());
    }
    let sent = Instant::now();
    let lease = store.grant_lease(config.ttl).await?;
    let fence = match store.put_with_lease(keys::LEADER, config.identity.as_bytes().to_vec(), Expect::Absent, Some(lease)).await {
        // A create: its revision is the key's create_revision.
        Ok(created) => Fence { key: keys::LEADER.to_owned(), create_revision: created },
        Err(StoreError::Conflict { .. }) => {
            let _ = store.revoke_lease(lease).await;
            return Ok(());
        }
        Err(e) => {
            let _ = store.revoke_lease(lease).await;
            return Err(e);
        }
    };
    *held.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(lease);
    let mut valid_until = sent + config.renew_deadline();
    if Instant::now() < valid_until {
        tracing::info!(identity = %config.identity, "leading: running the reconcilers");
        leader.send_replace(Some(fence.clone()));
        loop {
            // Sleep until the next renewal, but never past the deadline.
            tokio::time::sleep_until((Instant::now() + config.retry_period()).min(valid_until)).await;
            if Instant::now() >= valid_until {
                tracing::warn!("lost leadership: no renewal within the renew deadline");
                break;
            }
            let sent = Instant::now();
            match tokio::time::timeout_at(valid_until, renew(store, lease, &fence)).await {
                Ok(Ok(true)) => valid_until = sent + config.renew_deadline(),
                Ok(Ok(false)) => {
                    tracing::warn!("lost leadership: the leader key is no longer the one this controller created");
                    break;
                }
                Ok(Err(StoreError::LeaseNotFound(_))) => {
                    tracing::warn!("lost leadership: the lease is gone");
                    break;
                }
                // A transient error: try again until the deadline.
                Ok(Err(error)) => tracing::warn!(%error, "renewing the leadership lease"),
                Err(_) => {
                    tracing::warn!("lost leadership: no renewal within the renew deadline");
                    break;
                }
            }
        }
    }
    leader.send_replace(None);
    held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let _ = store.revoke_lease(lease).await;
    Ok(())
}

/// Renews the lease and checks that the leader key is still the one this leadership
/// created (someone may have deleted it by hand): `Ok(false)` when it is not.
async fn renew(store: &dyn Store, lease: LeaseId, fence: &Fence) -> Result<bool, StoreError> {
    store.keep_alive(lease).await?;
    Ok(fence.holds(store.get(&fence.key).await?.as_ref()))
}
