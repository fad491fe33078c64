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
//!
//! The campaign runs on a thread of its own with its own single-threaded runtime, and
//! with a store connection of its own when the store is etcd ([`ElectionStore::Own`]):
//! however busy the controller's runtime and its store connection are (a thousand agents
//! registering at once), renewals never wait behind that work, nor behind a slow renewal
//! (they go every period, several in flight). An overloaded leader sheds load; it does
//! not lose its lease.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use futures::StreamExt;
use tokio::sync::oneshot;

use crate::keys;
use crate::store::{open_store, Expect, Fence, LeaseId, Store, StoreConfig, StoreError};

/// The most leadership renewals waiting for an answer at once.
const RENEWALS_IN_FLIGHT: usize = 3;

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

/// Where the election's requests go.
#[derive(Clone)]
pub enum ElectionStore {
    /// The controller's own store (an embedded file, which only one handle may open; a
    /// test's wrapper).
    Shared(Arc<dyn Store>),
    /// A connection of its own to this store (etcd), opened on the election's thread.
    Own(StoreConfig),
}

/// How a candidate stops.
enum Stop {
    /// Resign: revoke the lease, then say so.
    Resign(oneshot::Sender<()>),
}

/// A running candidate; `is_leader` tells whether it leads right now (it holds a fence).
/// Dropping it stops campaigning without giving leadership up (as a crash would);
/// [`Candidate::resign`] hands it over at once.
pub struct Candidate {
    fence: watch::Receiver<Option<Fence>>,
    /// Dropped: the campaign stops as a crash would.
    stop: Option<oneshot::Sender<Stop>>,
}

impl Candidate {
    /// Campaigns with the controller's own store (see [`Candidate::spawn_on`]).
    pub fn spawn(store: Arc<dyn Store>, config: ElectionConfig) -> Candidate {
        Candidate::spawn_on(ElectionStore::Shared(store), config)
    }

    /// Campaigns on a thread of its own (its own runtime, and for [`ElectionStore::Own`]
    /// its own store connection). Should the thread not start, on the caller's runtime.
    pub fn spawn_on(store: ElectionStore, config: ElectionConfig) -> Candidate {
        let (sender, fence) = watch::channel(None);
        let (stop, stopped) = oneshot::channel();
        // Taken by the thread; taken back to run here if the thread cannot start.
        let parts = Arc::new(std::sync::Mutex::new(Some((store, config, sender, stopped))));
        let take = |parts: &std::sync::Mutex<Option<_>>| parts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let on_thread = Arc::clone(&parts);
        let started = std::thread::Builder::new().name("orch-election".into()).spawn(move || {
            // Built here: a runtime may not be dropped on the caller's (async) thread.
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => {
                    if let Some((store, config, sender, stopped)) = take(&on_thread) {
                        runtime.block_on(elect(store, config, sender, stopped));
                    }
                }
                Err(error) => tracing::error!(%error, "cannot build the election's runtime: this controller will not lead"),
            }
        });
        if let Err(error) = started {
            tracing::error!(%error, "cannot start the election's own thread: campaigning on the controller's runtime");
            if let Some((store, config, sender, stopped)) = take(&parts) {
                tokio::spawn(elect(store, config, sender, stopped));
            }
        }
        Candidate { fence, stop: Some(stop) }
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
    pub async fn resign(mut self) {
        let (done, resigned) = oneshot::channel();
        if let Some(stop) = self.stop.take() {
            if stop.send(Stop::Resign(done)).is_ok() {
                let _ = resigned.await;
            }
        }
    }
}

/// The election's life on its thread: opens its store, campaigns until its candidate
/// resigns or is dropped, and then no longer leads (on resigning, the lease goes too).
async fn elect(store: ElectionStore, config: ElectionConfig, leader: watch::Sender<Option<Fence>>, mut stopped: oneshot::Receiver<Stop>) {
    let store = match store {
        ElectionStore::Shared(store) => store,
        ElectionStore::Own(source) => loop {
            match open_store(&source).await {
                Ok(store) => break store,
                Err(error) => tracing::warn!(%error, "the election's own store connection; trying again"),
            }
            tokio::select! {
                () = tokio::time::sleep(config.retry_period()) => {}
                _ = &mut stopped => return,
            }
        },
    };
    let held = std::sync::Mutex::new(None);
    let stop = tokio::select! {
        () = campaign(Arc::clone(&store), &config, &leader, &held) => None,
        stop = &mut stopped => stop.ok(),
    };
    leader.send_replace(None);
    let lease = held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    if let Some(Stop::Resign(done)) = stop {
        if let Some(lease) = lease {
            if let Err(error) = store.revoke_lease(lease).await {
                tracing::debug!(%error, "revoking the leadership lease");
            }
        }
        let _ = done.send(());
    }
}

async fn campaign(store: Arc<dyn Store>, config: &ElectionConfig, leader: &watch::Sender<Option<Fence>>, held: &std::sync::Mutex<Option<LeaseId>>) {
    // A watch on the leader key: a follower campaigns the moment the key goes (its
    // leader resigned, or its lease expired) instead of at its next retry.
    let mut leader_key: Option<crate::store::WatchStream> = None;
    loop {
        match try_lead(store.as_ref(), config, leader, held).await {
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
        // A renewal goes every retry period whether or not the previous ones answered
        // (at most RENEWALS_IN_FLIGHT at once), and each that lands extends the
        // leadership to its own send time plus the deadline: one slow answer does not
        // hold up the next renewal (a renewal of 841 ms, etcd busy applying a
        // 10,000-replica apply, cost a leader its lease while the next one would have
        // landed in time). Only renewals count against the deadline; whether the key is
        // still this leadership's is looked at every other period besides, beside them
        // (the fence refuses the writes of a leadership whose key went, whatever this
        // look says).
        let mut next = sent + config.retry_period();
        let mut renewals = futures::stream::FuturesUnordered::new();
        let mut look = None;
        let mut looked = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(valid_until) => {
                    tracing::warn!("lost leadership: no renewal within the renew deadline");
                    break;
                }
                () = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    next = now + config.retry_period();
                    if renewals.len() < RENEWALS_IN_FLIGHT {
                        renewals.push(async move { (now, store.keep_alive(lease).await) });
                    }
                    if look.is_none() && now.duration_since(looked) >= config.retry_period() * 2 {
                        looked = now;
                        look = Some(Box::pin(store.get(&fence.key)));
                    }
                }
                Some((sent, renewed)) = renewals.next(), if !renewals.is_empty() => {
                    if sent.elapsed() > config.retry_period() {
                        tracing::warn!(took_ms = sent.elapsed().as_millis(), "a leadership renewal was slow (the store, or this machine, is overloaded)");
                    }
                    match renewed {
                        Ok(()) => valid_until = valid_until.max(sent + config.renew_deadline()),
                        Err(StoreError::LeaseNotFound(_)) => {
                            tracing::warn!("lost leadership: the lease is gone");
                            break;
                        }
                        // A transient error: the next renewals may land before the deadline.
                        Err(error) => tracing::warn!(%error, "renewing the leadership lease"),
                    }
                }
                Some(key) = futures::future::OptionFuture::from(look.as_mut()), if look.is_some() => {
                    look = None;
                    if let Ok(key) = key {
                        if !fence.holds(key.as_ref()) {
                            tracing::warn!("lost leadership: the leader key is no longer the one this controller created");
                            break;
                        }
                    }
                }
            }
        }
    }
    leader.send_replace(None);
    held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let _ = store.revoke_lease(lease).await;
    Ok(())
}
