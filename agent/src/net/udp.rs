//! The UDP side of the balancer: datagrams to a VIP or node port are relayed per flow —
//! a client address keeps its endpoint (affinity) while it stays active, and its flow
//! ends after [`FLOW_IDLE`] without a datagram either way (as conntrack forgets UDP
//! flows). Each flow has its own socket towards the endpoint, made in the balancer (or
//! node) namespace; replies go back to the client from the listener's address. A flow
//! whose endpoint left the service is dropped and the next datagram picks again. At most
//! [`MAX_FLOWS`] flows per listener; datagrams of further new clients are dropped.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::proxy::Backends;
use super::sockets::NsSockets;

/// A flow with no datagram in either direction for this long is forgotten.
pub const FLOW_IDLE: Duration = Duration::from_secs(30);
/// Flows one listener keeps at once.
pub const MAX_FLOWS: usize = 4096;

struct Flow {
    endpoint: SocketAddrV4,
    upstream: Arc<UdpSocket>,
    last_active: Arc<Mutex<Instant>>,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Flow>>>;

fn touch(last_active: &Mutex<Instant>) {
    *last_active.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
}

/// A socket towards `endpoint`, made where `sockets` says (this thread's namespace when
/// `None`).
async fn upstream_socket(sockets: Option<&NsSockets>, endpoint: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    let socket = match sockets {
        Some(sockets) => sockets.udp_socket(any).await?,
        None => UdpSocket::bind(any).await?,
    };
    socket.connect(endpoint).await?;
    Ok(socket)
}

/// Relays datagrams on `listener` until the task is aborted (flows end with it).
pub async fn serve(listener: UdpSocket, backends: Arc<Backends>, sockets: Option<Arc<NsSockets>>) {
    let listener = Arc::new(listener);
    let flows: Flows = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut buffer = vec![0u8; 65_535];
    loop {
        let Ok((length, client)) = listener.recv_from(&mut buffer).await else { continue };
        let datagram = &buffer[..length];
        let live = backends.endpoints();
        let existing = {
            let mut flows = flows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if flows.get(&client).is_some_and(|flow| !live.contains(&flow.endpoint)) {
                flows.remove(&client);
            }
            flows.get(&client).map(|flow| (Arc::clone(&flow.upstream), Arc::clone(&flow.last_active)))
        };
        let (upstream, last_active) = match existing {
            Some(found) => found,
            None => {
                if flows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() >= MAX_FLOWS {
                    continue;
                }
                let Some(endpoint) = backends.order().into_iter().next() else { continue };
                let Ok(socket) = upstream_socket(sockets.as_deref(), endpoint).await else {
                    tracing::debug!(%endpoint, "cannot open a UDP flow to the endpoint");
                    continue;
                };
                let upstream = Arc::new(socket);
                let last_active = Arc::new(Mutex::new(Instant::now()));
                flows
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(client, Flow { endpoint, upstream: Arc::clone(&upstream), last_active: Arc::clone(&last_active) });
                backends.connected(endpoint);
                tasks.spawn(replies(
                    Arc::clone(&listener),
                    client,
                    endpoint,
                    Arc::clone(&upstream),
                    Arc::clone(&last_active),
                    Arc::clone(&flows),
                    Arc::clone(&backends),
                ));
                (upstream, last_active)
            }
        };
        touch(&last_active);
        let _ = upstream.send(datagram).await;
        // Reap the reply tasks of flows that ended.
        while tasks.try_join_next().is_some() {}
    }
}

/// Relays the endpoint's replies to `client` until the flow is idle for [`FLOW_IDLE`]
/// (or replaced), then forgets it.
async fn replies(
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    endpoint: SocketAddrV4,
    upstream: Arc<UdpSocket>,
    last_active: Arc<Mutex<Instant>>,
    flows: Flows,
    backends: Arc<Backends>,
) {
    let mut buffer = vec![0u8; 65_535];
    loop {
        let idle_until = *last_active.lock().unwrap_or_else(std::sync::PoisonError::into_inner) + FLOW_IDLE;
        match tokio::time::timeout_at(idle_until, upstream.recv(&mut buffer)).await {
            Ok(Ok(length)) => {
                touch(&last_active);
                let _ = listener.send_to(&buffer[..length], client).await;
            }
            // An ICMP error (nothing listens there): the endpoint may come back.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => {
                let still_idle = *last_active.lock().unwrap_or_else(std::sync::PoisonError::into_inner) + FLOW_IDLE <= Instant::now();
                let replaced =
                    flows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&client).is_none_or(|f| !Arc::ptr_eq(&f.upstream, &upstream));
                if still_idle || replaced {
                    break;
                }
            }
        }
    }
    let mut flows = flows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if flows.get(&client).is_some_and(|f| Arc::ptr_eq(&f.upstream, &upstream)) {
        flows.remove(&client);
    }
    backends.disconnected(endpoint);
}
