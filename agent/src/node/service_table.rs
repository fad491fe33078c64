//! The balancer's table as the node last received it, applied again while any of its
//! listeners cannot be opened. A listener that fails (a node port a host process holds)
//! is an event on its service when it first fails, a `ListenerFailed` node condition
//! while it lasts, and a `ListenerOpened` event once it is open; the other listeners are
//! served all along.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use orch_api::events::EventKind;

use super::board::StatusBoard;
use super::context::NodeContext;
use crate::net::table::ListenKey;
use crate::net::{ListenerFailure, ServiceEndpoints};

/// How often a table with failed listeners is applied again.
pub const LISTENER_RETRY: Duration = Duration::from_secs(5);

/// The node condition while some listener cannot be opened.
pub const LISTENER_FAILED: &str = "ListenerFailed";

#[derive(Default)]
pub struct ServiceTable {
    /// Held across an apply: applies are one at a time, the latest table last.
    state: tokio::sync::Mutex<TableState>,
    /// Every ready address of the endpoints the controller last sent, before this node
    /// took its leaving replicas out of its own table: where every node's balancer
    /// routes new connections.
    announced: std::sync::Mutex<BTreeSet<Ipv4Addr>>,
}

/// Failed listeners by listener and service (a port two services declare fails for
/// the second, and may fail to bind for the first too).
type Failures = BTreeMap<(ListenKey, String), ListenerFailure>;

#[derive(Default)]
struct TableState {
    table: Vec<ServiceEndpoints>,
    failed: Failures,
    /// The last apply failed as a whole (the balancer did not answer, say).
    unapplied: bool,
    /// A table came (from the controller): before that, nothing is applied, so a new
    /// agent leaves the kernel path's rules and the balancer's table as the last one left
    /// them until the controller is reached.
    received: bool,
}

/// What changed between two sets of failed listeners, as events and the node condition;
/// `owners` is who each listener of the current table is for (a failure that is over
/// because its service went, or no longer declares the port, opened nothing).
fn report(board: &StatusBoard, before: &Failures, now: &Failures, owners: &BTreeMap<ListenKey, String>) {
    for (key, failure) in now {
        if before.get(key).is_none_or(|earlier| earlier.error != failure.error) {
            board.event(
                EventKind::ListenerFailed,
                format!("service/{}", failure.service),
                format!("cannot open {}: {}; retried", failure.listener, failure.error),
            );
        }
    }
    for ((listener, service), failure) in before {
        if !now.contains_key(&(*listener, service.clone())) && owners.get(listener) == Some(service) {
            board.event(EventKind::ListenerOpened, format!("service/{service}"), format!("{} is open", failure.listener));
        }
    }
    if now.is_empty() {
        board.clear_condition(LISTENER_FAILED);
    } else {
        let listed: Vec<String> = now.values().map(ToString::to_string).collect();
        board.set_condition(LISTENER_FAILED, listed.join("; "));
    }
}

impl ServiceTable {
    /// Records the endpoints as the controller sent them (see [`ServiceTable::announces`]).
    pub fn announce(&self, endpoints: &[ServiceEndpoints]) {
        let ready = endpoints.iter().flat_map(|service| service.ready.iter().copied()).collect();
        *self.announced.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = ready;
    }

    /// Whether the controller's latest endpoints list `ip`: the other nodes' balancers
    /// may route new connections to it.
    pub fn announces(&self, ip: Ipv4Addr) -> bool {
        self.announced.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&ip)
    }

    /// Applies `table` to the node's balancer and reports what could not be opened.
    pub async fn apply(&self, ctx: &NodeContext, table: Vec<ServiceEndpoints>) {
        let mut state = self.state.lock().await;
        state.table = table;
        state.received = true;
        Self::apply_held(&mut state, ctx).await;
    }

    /// Applies the last table again when a listener of it failed, the last apply failed,
    /// or the balancer process does not answer (killed, crashed: the apply starts it
    /// again) — once a table came.
    pub async fn retry(&self, ctx: &NodeContext) {
        let mut state = self.state.lock().await;
        if state.received && (!state.failed.is_empty() || state.unapplied || !ctx.network.balancer_answers().await) {
            Self::apply_held(&mut state, ctx).await;
        }
    }

    async fn apply_held(state: &mut TableState, ctx: &NodeContext) {
        match ctx.network.apply_services(&state.table).await {
            Ok(failures) => {
                let now: Failures = failures.into_iter().map(|failure| ((failure.listener, failure.service.clone()), failure)).collect();
                let owners = crate::net::table::desired(&state.table).owners;
                report(&ctx.board, &state.failed, &now, &owners);
                state.failed = now;
                state.unapplied = false;
            }
            Err(error) => {
                tracing::warn!(%error, "applying the service table; tried again");
                state.unapplied = true;
            }
        }
    }
}

/// Every [`LISTENER_RETRY`], applies the table again while a listener is failing, the
/// last apply failed or the balancer is gone, until aborted.
pub async fn keep_retrying(ctx: std::sync::Arc<NodeContext>) {
    loop {
        tokio::time::sleep(LISTENER_RETRY).await;
        ctx.services.retry(&ctx).await;
    }
}
