//! A running controller's record, `/orch/controllers/<identity>`: where agents and the
//! CLI reach it. Kept on a lease of its own while the controller runs, so a controller
//! that dies drops out of the list by itself; sessions hand the list to every agent
//! (registration and every desired set), so an agent learns of a controller added later
//! without a restart and fails over to any of them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use orch_api::pb;

use crate::keys;
use crate::store::{Expect, LeaseId, Store, StoreError};

/// How long a dead controller's record outlives it.
pub const PRESENCE_TTL: Duration = Duration::from_secs(10);

/// The record's keeper; dropping it stops renewing (the record expires, as a crash
/// would leave it), [`Presence::withdraw`] removes it now.
pub struct Presence {
    task: tokio::task::JoinHandle<()>,
    lease: Arc<Mutex<Option<LeaseId>>>,
    store: Arc<dyn Store>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Presence {
    pub fn spawn(store: Arc<dyn Store>, info: pb::ControllerInfo) -> Presence {
        let lease = Arc::new(Mutex::new(None));
        let task = tokio::spawn(keep(Arc::clone(&store), info, Arc::clone(&lease)));
        Presence { task, lease, store }
    }

    /// Stops renewing and removes the record (its lease) now.
    pub async fn withdraw(self) {
        self.task.abort();
        let lease = self.lease.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(lease) = lease {
            let _ = self.store.revoke_lease(lease).await;
        }
    }
}

async fn keep(store: Arc<dyn Store>, info: pb::ControllerInfo, held: Arc<Mutex<Option<LeaseId>>>) {
    loop {
        if let Err(error) = publish(store.as_ref(), &info, &held).await {
            tracing::warn!(%error, "publishing this controller's address");
        }
        tokio::time::sleep(PRESENCE_TTL / 5).await;
    }
}

/// Writes the record on a new lease and renews it until the lease is gone or a renewal
/// fails.
async fn publish(store: &dyn Store, info: &pb::ControllerInfo, held: &Mutex<Option<LeaseId>>) -> Result<(), StoreError> {
    let lease = store.grant_lease(PRESENCE_TTL).await?;
    *held.lock().unwrap_or_else(PoisonError::into_inner) = Some(lease);
    store.put_with_lease(&keys::controller(&info.identity), keys::encode(info), Expect::Any, Some(lease)).await?;
    loop {
        tokio::time::sleep(PRESENCE_TTL / 5).await;
        store.keep_alive(lease).await?;
    }
}

/// Every controller's record and the leader's identity, as the store has them now.
pub async fn list(store: &dyn Store) -> Result<pb::ListControllersResponse, StoreError> {
    let listing = store.list(keys::CONTROLLERS).await?;
    let controllers = listing
        .items
        .iter()
        .filter_map(|kv| match keys::decode::<pb::ControllerInfo>(&kv.key, &kv.value) {
            Ok(info) => Some(info),
            Err(error) => {
                tracing::warn!(%error, "ignoring a corrupt controller record");
                None
            }
        })
        .collect();
    let leader = store.get(keys::LEADER).await?.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()).unwrap_or_default();
    Ok(pb::ListControllersResponse { controllers, leader })
}
