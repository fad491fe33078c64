//! The L4 balancer: accept on a listener, pick an endpoint (round robin, or least
//! connections), connect — moving on to the next endpoint when a connect fails, so a
//! dying replica costs no client request — then copy bytes both ways. Endpoint sets are
//! swapped in place; connections already established keep their endpoint.
//!
//! An endpoint whose connect fails is set aside for [`EJECTION`] (passive health
//! checking, as Envoy's outlier detection): later connections try it last, so a dead
//! replica costs one slow connect, not one per connection, until readiness removes it.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::sockets::NsSockets;

/// How long one endpoint gets to accept a connection before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an endpoint that refused a connection is tried last.
pub const EJECTION: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    RoundRobin,
    LeastConnections,
}

/// The endpoints of one listener, shared with its connections.
#[derive(Debug, Default)]
pub struct Backends {
    endpoints: RwLock<Vec<SocketAddrV4>>,
    next: AtomicUsize,
    active: Mutex<HashMap<SocketAddrV4, usize>>,
    ejected: Mutex<HashMap<SocketAddrV4, std::time::Instant>>,
    strategy: Strategy,
}

impl Backends {
    pub fn new(strategy: Strategy, endpoints: Vec<SocketAddrV4>) -> Backends {
        Backends { endpoints: RwLock::new(endpoints), strategy, ..Backends::default() }
    }

    pub fn set(&self, endpoints: Vec<SocketAddrV4>) {
        *self.endpoints.write().unwrap_or_else(std::sync::PoisonError::into_inner) = endpoints;
    }

    pub fn endpoints(&self) -> Vec<SocketAddrV4> {
        self.endpoints.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The order to try endpoints in for the next connection: by strategy, with
    /// recently failed endpoints moved to the end.
    pub fn order(&self) -> Vec<SocketAddrV4> {
        let mut order = self.strategy_order();
        let now = std::time::Instant::now();
        let mut ejected = self.ejected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ejected.retain(|_, until| *until > now);
        if !ejected.is_empty() {
            // Stable: healthy first, in strategy order.
            order.sort_by_key(|e| ejected.contains_key(e));
        }
        order
    }

    fn failed(&self, endpoint: SocketAddrV4) {
        let until = std::time::Instant::now() + EJECTION;
        self.ejected.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(endpoint, until);
    }

    fn strategy_order(&self) -> Vec<SocketAddrV4> {
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            return endpoints;
        }
        match self.strategy {
            Strategy::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
                endpoints[start..].iter().chain(&endpoints[..start]).copied().collect()
            }
            Strategy::LeastConnections => {
                let active = self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let start = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
                let mut rotated: Vec<SocketAddrV4> = endpoints[start..].iter().chain(&endpoints[..start]).copied().collect();
                // Stable: ties keep the rotation, so equal load still spreads.
                rotated.sort_by_key(|e| active.get(e).copied().unwrap_or(0));
                rotated
            }
        }
    }

    /// The connections relayed to `ip` now (any port).
    pub fn active_to(&self, ip: std::net::Ipv4Addr) -> usize {
        self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().filter(|(e, _)| *e.ip() == ip).map(|(_, n)| n).sum()
    }

    pub(super) fn connected(&self, endpoint: SocketAddrV4) {
        *self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(endpoint).or_default() += 1;
    }

    pub(super) fn disconnected(&self, endpoint: SocketAddrV4) {
        let mut active = self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = active.get_mut(&endpoint) {
            *count = count.saturating_sub(1);
        }
    }
}

/// Connects to `endpoint` with a socket made where `sockets` says (the balancer
/// namespace), or in this thread's namespace when `None`.
async fn connect(sockets: Option<&NsSockets>, endpoint: SocketAddrV4) -> std::io::Result<TcpStream> {
    let socket = match sockets {
        Some(sockets) => sockets.tcp_socket().await?,
        None => tokio::net::TcpSocket::new_v4()?,
    };
    tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(endpoint.into()))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connect to {endpoint} timed out")))?
}

async fn relay(mut client: TcpStream, backends: Arc<Backends>, sockets: Option<Arc<NsSockets>>) {
    for endpoint in backends.order() {
        match connect(sockets.as_deref(), endpoint).await {
            Ok(mut upstream) => {
                backends.connected(endpoint);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                backends.disconnected(endpoint);
                return;
            }
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "endpoint refused a connection; trying the next");
                backends.failed(endpoint);
            }
        }
    }
    tracing::debug!("no endpoint reachable; closing the client connection");
}

/// Serves `listener` until the task is aborted. Connections already relayed are their
/// own tasks and outlive it.
pub async fn serve(listener: TcpListener, backends: Arc<Backends>, sockets: Option<Arc<NsSockets>>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                let _ = client.set_nodelay(true);
                tokio::spawn(relay(client, Arc::clone(&backends), sockets.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port)
    }

    #[test]
    fn round_robin_rotates_over_every_endpoint() {
        let backends = Backends::new(Strategy::RoundRobin, vec![ep(1), ep(2), ep(3)]);
        let firsts: Vec<u16> = (0..6).map(|_| backends.order()[0].port()).collect();
        assert_eq!(firsts, [1, 2, 3, 1, 2, 3]);
        assert_eq!(backends.order().len(), 3, "the rest follow, for retries");
        backends.set(vec![]);
        assert!(backends.order().is_empty());
    }

    #[test]
    fn a_failed_endpoint_is_tried_last_for_a_while() {
        let backends = Backends::new(Strategy::RoundRobin, vec![ep(1), ep(2), ep(3)]);
        backends.failed(ep(2));
        for _ in 0..6 {
            let order = backends.order();
            assert_eq!(order.len(), 3, "still tried, as a last resort");
            assert_eq!(order[2], ep(2), "{order:?}");
        }
        backends.ejected.lock().expect("lock").insert(ep(2), std::time::Instant::now());
        assert!((0..3).any(|_| backends.order()[0] == ep(2)), "back in rotation once the ejection ends");
    }

    #[test]
    fn least_connections_prefers_the_idle() {
        let backends = Backends::new(Strategy::LeastConnections, vec![ep(1), ep(2), ep(3)]);
        backends.connected(ep(1));
        backends.connected(ep(1));
        backends.connected(ep(2));
        assert_eq!(backends.order()[0], ep(3));
        assert_eq!(backends.active_to(std::net::Ipv4Addr::LOCALHOST), 3, "what a stopping replica drains");
        backends.disconnected(ep(1));
        backends.disconnected(ep(1));
        backends.connected(ep(3));
        assert_eq!(backends.order()[0], ep(1));
    }
}
