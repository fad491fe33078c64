//! The L4 balancer: accept on a listener, pick an endpoint (round robin, or least
//! connections), connect — moving on to the next endpoint when a connect fails, so a
//! dying replica costs no client request — then copy bytes both ways. Endpoint sets are
//! swapped in place; connections already established keep their endpoint.
//!
//! An endpoint whose connect fails is set aside for [`EJECTION`] (passive health
//! checking, as Envoy's outlier detection): later connections try it last, so a dead
//! replica costs one slow connect, not one per connection, until readiness removes it.
//!
//! What clients can hold is bounded ([`ConnectionLimits`]): each listener relays at most
//! so many connections at once (one more is accepted and closed at once, so the kernel's
//! backlog never fills), and a connection quiet both ways for the idle timeout is closed.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::sockets::NsSockets;
use super::stats::ListenerStats;

/// How long one endpoint gets to accept a connection before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an endpoint that refused a connection is tried last.
pub const EJECTION: Duration = Duration::from_secs(10);

/// What one listener's clients can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections relayed at once per listener.
    pub max_connections: usize,
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// As HAProxy's and Envoy's defaults go: a few thousand connections per listener,
    /// minutes of silence.
    fn default() -> ConnectionLimits {
        ConnectionLimits { max_connections: 4096, idle_timeout: Duration::from_secs(300) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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

/// When a relayed connection last moved a byte, in milliseconds since it began.
struct Activity {
    began: std::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        self.began.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A stream that marks its connection active whenever it reads, and counts what it read.
struct Tracked<'a> {
    stream: &'a mut TcpStream,
    activity: &'a Activity,
    read: &'a prometheus_client::metrics::counter::Counter,
}

impl AsyncRead for Tracked<'_> {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut *self.stream).poll_read(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
            self.read.inc_by(u64::try_from(buf.filled().len() - before).unwrap_or(0));
        }
        polled
    }
}

impl AsyncWrite for Tracked<'_> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_shutdown(cx)
    }
}

/// Copies both ways until either side closes or the connection is quiet for `idle`;
/// the bytes go to `stats` as they are read.
async fn copy_until_idle(client: &mut TcpStream, upstream: &mut TcpStream, idle: Duration, stats: &ListenerStats) {
    let activity = Activity { began: std::time::Instant::now(), last_ms: std::sync::atomic::AtomicU64::new(0) };
    let mut client = Tracked { stream: client, activity: &activity, read: &stats.to_backend };
    let mut upstream = Tracked { stream: upstream, activity: &activity, read: &stats.to_client };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let quiet = activity.quiet_for();
        if quiet >= idle {
            tracing::debug!(?idle, "closing a connection idle both ways");
            return;
        }
        tokio::select! {
            _ = &mut copy => return,
            () = tokio::time::sleep(idle - quiet) => {}
        }
    }
}

async fn relay(mut client: TcpStream, backends: Arc<Backends>, sockets: Option<Arc<NsSockets>>, idle: Duration, stats: ListenerStats) {
    for endpoint in backends.order() {
        backends.connected(endpoint);
        match connect(sockets.as_deref(), endpoint).await {
            // Counted from the connect on: a replica stopping waits for a connection
            // still being made to it too.
            Ok(mut upstream) => {
                stats.active.inc();
                copy_until_idle(&mut client, &mut upstream, idle, &stats).await;
                stats.active.dec();
                backends.disconnected(endpoint);
                return;
            }
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "endpoint refused a connection; trying the next");
                stats.connect_errors.inc();
                backends.disconnected(endpoint);
                backends.failed(endpoint);
            }
        }
    }
    stats.no_endpoint.inc();
    tracing::debug!("no endpoint reachable; closing the client connection");
}

/// Serves `listener` until the task is aborted. Connections already relayed are their
/// own tasks and outlive it; beyond `limits.max_connections` at once, a new one is
/// closed as soon as it is accepted.
pub async fn serve(listener: TcpListener, backends: Arc<Backends>, sockets: Option<Arc<NsSockets>>, limits: ConnectionLimits, stats: ListenerStats) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused: u64 = 0;
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                stats.connections.inc();
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    stats.over_limit.inc();
                    refused += 1;
                    // Once, then every thousandth: a flood must not flood the log too.
                    if refused % 1000 == 1 {
                        tracing::warn!(%peer, max = limits.max_connections, refused, "connection limit reached: closing new connections");
                    }
                    drop(client);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let (backends, sockets, stats) = (Arc::clone(&backends), sockets.clone(), stats.clone());
                tokio::spawn(async move {
                    relay(client, backends, sockets, limits.idle_timeout, stats).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of descriptors, most often: wait for some to be freed.
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

    /// An echo server on loopback; returns its address.
    async fn echo() -> SocketAddrV4 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the echo server");
        let std::net::SocketAddr::V4(address) = listener.local_addr().expect("its address") else { panic!("not IPv4") };
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        address
    }

    /// A proxy on loopback in front of `backend` with `limits`; returns its address.
    async fn proxy(backend: SocketAddrV4, limits: ConnectionLimits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let address = listener.local_addr().expect("its address");
        tokio::spawn(serve(listener, Arc::new(Backends::new(Strategy::RoundRobin, vec![backend])), None, limits, ListenerStats::default()));
        address
    }

    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(text).await?;
        let mut answer = vec![0; text.len()];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    /// Whether the proxy closed `stream` (EOF or reset) within a bound far above any limit tested.
    async fn closed(stream: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(Duration::from_secs(20), stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn beyond_the_cap_a_connection_is_closed_and_the_others_are_served() {
        let address = proxy(echo().await, ConnectionLimits { max_connections: 2, idle_timeout: Duration::from_secs(600) }).await;
        let mut first = TcpStream::connect(address).await.expect("connect");
        let mut second = TcpStream::connect(address).await.expect("connect");
        assert_eq!(round_trip(&mut first, b"one").await.expect("relayed"), b"one");
        assert_eq!(round_trip(&mut second, b"two").await.expect("relayed"), b"two");
        let mut third = TcpStream::connect(address).await.expect("accepted by the kernel");
        assert!(closed(&mut third).await, "a connection over the cap is closed at once");
        assert_eq!(round_trip(&mut first, b"still").await.expect("relayed"), b"still", "the others are untouched");
        drop(first);
        // Its slot is free once the relay notices the close.
        let mut again = None;
        for _ in 0..200 {
            let mut fourth = TcpStream::connect(address).await.expect("connect");
            if round_trip(&mut fourth, b"four").await.is_ok_and(|answer| answer == b"four") {
                again = Some(fourth);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(again.is_some(), "a slot freed by a closed connection is used again");
    }

    #[tokio::test]
    async fn a_connection_quiet_both_ways_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
        let idle = Duration::from_secs(1);
        let address = proxy(echo().await, ConnectionLimits { max_connections: 10, idle_timeout: idle }).await;
        let mut quiet = TcpStream::connect(address).await.expect("connect");
        assert_eq!(round_trip(&mut quiet, b"hello").await.expect("relayed"), b"hello");
        let mut busy = TcpStream::connect(address).await.expect("connect");
        let began = std::time::Instant::now();
        // Busy for three idle timeouts, a message every tenth of one.
        while began.elapsed() < idle * 3 {
            assert_eq!(round_trip(&mut busy, b"ping").await.expect("a busy connection stays open"), b"ping");
            tokio::time::sleep(idle / 10).await;
        }
        assert!(closed(&mut quiet).await, "the quiet connection is closed");
        assert_eq!(round_trip(&mut busy, b"last").await.expect("still open"), b"last");
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
