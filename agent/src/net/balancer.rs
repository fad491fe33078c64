//! The node's balancer: a network namespace on the bridge that holds every service VIP,
//! a listener per service port (and node port), and the DNS responder; converged to a
//! service table by [`Balancer::apply`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::dns;
use super::link;
use super::netns::Netns;
use super::proxy::{self, Backends, ConnectionLimits, Strategy};
use super::sockets::NsSockets;
use super::stats::BalancerMetrics;
use super::table::{desired, plan_listeners, ListenKey, ListenerFailure, ServiceEndpoints};
use super::udp;
use super::NetError;

struct Listener {
    backends: Arc<Backends>,
    task: JoinHandle<()>,
}

/// A listener stops accepting when dropped; connections it relayed are their own tasks.
impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Balancer {
    netns: Netns,
    netns_name: String,
    handle: rtnetlink::Handle,
    sockets: Arc<NsSockets>,
    /// Where node ports listen (the node's own address; all addresses when unset).
    node_address: Option<Ipv4Addr>,
    /// Sockets in the node's namespace, when it is not this thread's.
    node_sockets: Option<Arc<NsSockets>>,
    strategy: Strategy,
    limits: ConnectionLimits,
    state: tokio::sync::Mutex<BalancerState>,
    names: dns::Names,
    /// The DNS server over UDP and over TCP (taken by `stop`).
    dns_tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    metrics: BalancerMetrics,
}

#[derive(Default)]
struct BalancerState {
    vips: BTreeSet<Ipv4Addr>,
    listeners: BTreeMap<ListenKey, Listener>,
}

/// What the balancer holds, for inspect.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BalancerView {
    pub netns: String,
    pub vips: Vec<Ipv4Addr>,
    pub listeners: Vec<(ListenKey, Vec<SocketAddrV4>)>,
    pub names: BTreeMap<String, Ipv4Addr>,
}

impl Balancer {
    /// Starts the balancer in `netns` (already wired to the bridge at `dns_address`);
    /// its DNS server relays names outside the cluster to `upstream_dns` (none: NXDOMAIN).
    pub async fn start(
        netns: Netns,
        netns_name: &str,
        dns_address: Ipv4Addr,
        node_address: Option<Ipv4Addr>,
        node_netns: Option<Netns>,
        (strategy, limits): (Strategy, ConnectionLimits),
        upstream_dns: Vec<std::net::SocketAddr>,
    ) -> Result<Balancer, NetError> {
        let handle = netns.netlink()?;
        let sockets = Arc::new(NsSockets::start(&netns)?);
        let node_sockets = node_netns.map(|ns| NsSockets::start(&ns).map(Arc::new)).transpose()?;
        let names: dns::Names = Arc::new(RwLock::new(BTreeMap::new()));
        let dns_addr = SocketAddrV4::new(dns_address, 53);
        let udp = sockets.udp_socket(dns_addr).await.map_err(|source| NetError::Listen { address: format!("udp {dns_addr} in {netns_name}"), source })?;
        let tcp = sockets.tcp_listener(dns_addr).await.map_err(|source| NetError::Listen { address: format!("tcp {dns_addr} in {netns_name}"), source })?;
        let upstream = (!upstream_dns.is_empty()).then(|| Arc::new(dns::Upstream { servers: upstream_dns, sockets: Arc::clone(&sockets) }));
        let dns_tasks =
            vec![tokio::spawn(dns::serve(udp, Arc::clone(&names), upstream.clone())), tokio::spawn(dns::serve_tcp(tcp, Arc::clone(&names), upstream))];
        Ok(Balancer {
            netns,
            netns_name: netns_name.to_owned(),
            handle,
            sockets,
            node_address,
            node_sockets,
            strategy,
            limits,
            state: tokio::sync::Mutex::new(BalancerState::default()),
            names,
            dns_tasks: std::sync::Mutex::new(dns_tasks),
            metrics: BalancerMetrics::default(),
        })
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Converges VIPs, listeners, endpoints and DNS names to `table`. Listeners that
    /// stay keep running; their endpoint sets are swapped, so established connections
    /// are untouched. A listener that cannot be opened (its port held by another
    /// process, or declared by two services) stops nothing else: it is returned, and
    /// tried again by the next call.
    pub async fn apply(&self, table: &[ServiceEndpoints]) -> Result<Vec<ListenerFailure>, NetError> {
        let want = desired(table);
        let mut failures = want.conflicts.clone();
        let mut state = self.state.lock().await;
        let lo = link::require_index(&self.handle, "lo").await?;
        for vip in want.vips.difference(&state.vips.clone()) {
            link::add_address(&self.handle, lo, *vip, 32).await?;
            state.vips.insert(*vip);
        }
        let plan = plan_listeners(&state.listeners.keys().copied().collect(), &want);
        for key in &plan.open {
            let endpoints = want.listeners.get(key).cloned().unwrap_or_default();
            let backends = Arc::new(Backends::new(self.strategy, endpoints));
            let service = want.owners.get(key).cloned().unwrap_or_default();
            match self.open(*key, &backends, &service).await {
                Ok(task) => {
                    state.listeners.insert(*key, Listener { backends, task });
                }
                Err(error) => {
                    tracing::warn!(listener = %key, %service, %error, "cannot open a listener; the others are served");
                    failures.push(ListenerFailure { listener: *key, service, error: error.to_string() });
                }
            }
        }
        for key in &plan.close {
            state.listeners.remove(key);
        }
        for (key, endpoints) in &want.listeners {
            if let Some(listener) = state.listeners.get(key) {
                listener.backends.set(endpoints.clone());
            }
        }
        for vip in state.vips.clone().difference(&want.vips) {
            link::delete_address(&self.handle, lo, *vip, 32).await?;
            state.vips.remove(vip);
        }
        *self.names.write().unwrap_or_else(std::sync::PoisonError::into_inner) = want.names;
        Ok(failures)
    }

    /// Opens one listener and starts serving it.
    async fn open(&self, key: ListenKey, backends: &Arc<Backends>, service: &str) -> Result<JoinHandle<()>, NetError> {
        let limits = self.limits;
        let stats = self.metrics.listener(service);
        Ok(match key {
            ListenKey::Vip(address) => {
                let listener = self
                    .sockets
                    .tcp_listener(address)
                    .await
                    .map_err(|source| NetError::Listen { address: format!("{address} in {}", self.netns_name), source })?;
                tokio::spawn(proxy::serve(listener, Arc::clone(backends), Some(Arc::clone(&self.sockets)), limits, stats))
            }
            ListenKey::NodePort(port) => {
                let address = SocketAddrV4::new(self.node_address.unwrap_or(Ipv4Addr::UNSPECIFIED), port);
                let listener = match &self.node_sockets {
                    Some(sockets) => sockets.tcp_listener(address).await,
                    None => tokio::net::TcpListener::bind(address).await,
                };
                let listener = listener.map_err(|source| NetError::Listen { address: format!("node port {address}"), source })?;
                tokio::spawn(proxy::serve(listener, Arc::clone(backends), self.node_sockets.clone(), limits, stats))
            }
            ListenKey::UdpVip(address) => {
                let socket = self
                    .sockets
                    .udp_socket(address)
                    .await
                    .map_err(|source| NetError::Listen { address: format!("udp {address} in {}", self.netns_name), source })?;
                tokio::spawn(udp::serve(socket, Arc::clone(backends), Some(Arc::clone(&self.sockets))))
            }
            ListenKey::UdpNodePort(port) => {
                let address = SocketAddrV4::new(self.node_address.unwrap_or(Ipv4Addr::UNSPECIFIED), port);
                let socket = match &self.node_sockets {
                    Some(sockets) => sockets.udp_socket(address).await,
                    None => tokio::net::UdpSocket::bind(address).await,
                };
                let socket = socket.map_err(|source| NetError::Listen { address: format!("udp node port {address}"), source })?;
                tokio::spawn(udp::serve(socket, Arc::clone(backends), self.node_sockets.clone()))
            }
        })
    }

    /// The balancer's metrics (for the agent's registry).
    pub fn metrics(&self) -> &BalancerMetrics {
        &self.metrics
    }

    /// The TCP connections relayed to `ip` now, over every listener.
    pub async fn active_connections(&self, ip: Ipv4Addr) -> usize {
        self.state.lock().await.listeners.values().map(|l| l.backends.active_to(ip)).sum()
    }

    pub async fn view(&self) -> BalancerView {
        let state = self.state.lock().await;
        BalancerView {
            netns: self.netns_name.clone(),
            vips: state.vips.iter().copied().collect(),
            listeners: state.listeners.iter().map(|(k, l)| (*k, l.backends.endpoints())).collect(),
            names: self.names.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
        }
    }

    /// Stops every listener and the DNS responder, and returns once their sockets are
    /// closed (their ports free for another process); relayed connections go on.
    pub async fn stop(&self) {
        let listeners = std::mem::take(&mut self.state.lock().await.listeners);
        let dns = std::mem::take(&mut *self.dns_tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for (_, mut listener) in listeners {
            listener.task.abort();
            let _ = (&mut listener.task).await;
        }
        for task in dns {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Balancer {
    /// The listeners go with the state; the DNS server is aborted here.
    fn drop(&mut self) {
        self.dns_tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().for_each(JoinHandle::abort);
    }
}
