//! A node's network, built for real with rtnetlink and repaired at every start:
//!
//! - bridge `orch0` (configurable) holding the pod subnet's gateway (.1), forwarding on;
//! - a veth per container: host end on the bridge, peer in the container as `eth0` with
//!   an address from the node's IPAM and a default route via the gateway;
//! - the balancer namespace on the bridge at .2, holding every VIP; the node routes the
//!   service range to it;
//! - routes to other nodes' pod subnets via their node addresses (host-gw);
//! - masquerade for pod traffic leaving the cluster (an nftables table of its own);
//! - with `--data-path kernel`, nftables DNAT of TCP VIPs and node ports in the node's
//!   namespace, before the route to the balancer namespace applies, see `dnat`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::balancer::BalancerView;
use super::balancer_process::{self, BalancerClient, BalancerSpec};
use super::dnat::{self, DataPath, KernelPath};
use super::egress;
use super::ipam::{Ipam, Subnet};
use super::link;
use super::names;
use super::netfilter;
use super::netns::Netns;
use super::proxy::{ConnectionLimits, Strategy};
use super::table::{ListenerFailure, ServiceEndpoints, DNS_DOMAIN};
use super::NetError;

#[derive(Debug, Clone)]
pub struct NodeNetworkConfig {
    pub bridge: String,
    /// This node's pod subnet.
    pub subnet: Subnet,
    /// The service VIP range, routed to the balancer namespace.
    pub service_cidr: Subnet,
    /// The whole cluster's pod network (every node's subnet): not masqueraded.
    pub cluster_cidr: Subnet,
    /// Where the DNS server relays names outside the cluster; none: NXDOMAIN for them.
    pub upstream_dns: Vec<std::net::SocketAddr>,
    /// IPAM state lives under `<state_dir>/network/`.
    pub state_dir: PathBuf,
    /// Where node ports are published; all addresses when unset.
    pub node_address: Option<Ipv4Addr>,
    pub strategy: Strategy,
    /// What the balancer's clients can hold.
    pub limits: ConnectionLimits,
    /// The node's network namespace; the agent's own when unset. (The lab and the
    /// tests run several nodes' networks from one process.)
    pub node_netns: Option<PathBuf>,
    /// The binary the balancer process runs (`orch-agent` or `orch`: both have its hidden
    /// subcommand); none: no balancer (`orch-agent run`, one container and no services).
    pub helper: Option<PathBuf>,
    /// Where TCP service traffic is balanced: the balancer process, or nftables DNAT
    /// (only with a balancer: without a `helper` the kernel path is left as it is).
    pub data_path: DataPath,
}

/// A container's place on the node network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// The host end of the container's veth.
    pub veth: String,
    pub nameserver: Ipv4Addr,
}

/// A route to another node's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PeerRoute {
    pub subnet_network: Ipv4Addr,
    pub prefix: u8,
    pub via: Ipv4Addr,
}

/// Everything the node network holds, for `inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkView {
    pub bridge: String,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub balancer_address: Ipv4Addr,
    pub service_cidr: String,
    pub containers: Vec<(String, Ipv4Addr, String)>,
    pub routes: Vec<PeerRoute>,
    pub balancer: BalancerView,
}

pub struct NodeNetwork {
    config: NodeNetworkConfig,
    ipam: Ipam,
    handle: rtnetlink::Handle,
    bridge_index: u32,
    balancer: Option<BalancerClient>,
    /// The kernel path's rules (`--data-path kernel`).
    kernel: Option<std::sync::Arc<KernelPath>>,
    routes: tokio::sync::Mutex<BTreeSet<PeerRoute>>,
    created_bridge: bool,
}

#[async_trait::async_trait]
impl crate::runtime::ContainerNetwork for NodeNetwork {
    async fn attach(&self, container: &str, pid: i32) -> Result<(), String> {
        NodeNetwork::attach(self, container, pid).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

impl NodeNetwork {
    /// Sets the node network up, or repairs it: idempotent.
    pub async fn setup(config: NodeNetworkConfig) -> Result<NodeNetwork, NetError> {
        names::check(&config.bridge)?;
        let lb_veth = names::lb_veth(&config.bridge)?;
        let node = match &config.node_netns {
            Some(path) => Netns::open(path)?,
            None => Netns::current()?,
        };
        let handle = node.netlink()?;
        let subnet = config.subnet;
        let created_bridge = link::index_of(&handle, &config.bridge).await?.is_none();
        // A bridge that exists already (an upgraded node's may have no address of its
        // own yet) announces the address ensure_bridge gives it: gratuitous ARP.
        let arp_notify = format!("net.ipv4.conf.{}.arp_notify", config.bridge);
        if !created_bridge {
            node.sysctl(&arp_notify, "1")?;
        }
        let bridge_index = link::ensure_bridge(&handle, &config.bridge, link::mac_for(subnet.gateway())).await?;
        node.sysctl(&arp_notify, "1")?;
        link::add_address(&handle, bridge_index, subnet.gateway(), subnet.prefix).await?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        egress::Egress { bridge: config.bridge.clone(), pod_subnet: subnet, cluster: config.cluster_cidr, services: config.service_cidr }
            .apply(config.node_netns.as_deref())?;

        // The balancer namespace, wired to the bridge at .2.
        let lb_name = names::lb_netns(&config.bridge);
        let lb = Netns::create_named(&lb_name)?;
        let lb_handle = lb.netlink()?;
        let lo = link::require_index(&lb_handle, "lo").await?;
        link::set_up(&lb_handle, lo, "lo").await?;
        if link::index_of(&handle, &lb_veth).await?.is_none() {
            link::delete_link(&lb_handle, "eth0").await?;
            link::add_veth_into(&handle, &lb_veth, bridge_index, lb.raw_fd(), "eth0").await?;
        }
        let eth0 = link::require_index(&lb_handle, "eth0").await?;
        link::add_address(&lb_handle, eth0, subnet.lb_address(), subnet.prefix).await?;
        link::set_up(&lb_handle, eth0, "eth0").await?;
        link::replace_route(&lb_handle, Ipv4Addr::UNSPECIFIED, 0, subnet.gateway()).await?;
        link::replace_route(&handle, config.service_cidr.network, config.service_cidr.prefix, subnet.lb_address()).await?;
        drop(lb_handle);
        // The balancer namespace forwards nothing — but on a node an earlier version ran,
        // which DNAT'd VIPs there, the connections it carried keep their NAT and
        // forwarding (its table, drained); the proxy path keeps no rule an earlier
        // kernel-path run left. Every container port in hairpin mode (those of containers
        // an earlier version attached too). A network without a balancer (`orch-agent
        // run`) leaves all of it alone: an agent may be running on the same bridge.
        let kernel = match (config.data_path, &config.helper) {
            (_, None) => None,
            (data_path, Some(_)) => {
                if netfilter::has_table(Some(lb.path()), dnat::LEGACY_VIP_TABLE)? {
                    netfilter::run(Some(lb.path()), "nft", &["-f", "-"], Some(&dnat::legacy_vip_table_drained()))?;
                } else {
                    lb.sysctl("net.ipv4.ip_forward", "0")?;
                }
                for (index, name) in link::ports_of(&handle, bridge_index).await? {
                    if names::is_container_veth(&name) {
                        if let Err(error) = link::set_hairpin(&handle, index, &name).await {
                            tracing::warn!(%error, "a container port (gone meanwhile?) stays out of hairpin mode");
                        }
                    }
                }
                match data_path {
                    DataPath::Kernel => {
                        let path = KernelPath::new(&config.bridge, config.subnet, config.node_netns.clone(), config.node_address, config.strategy)?;
                        Some(std::sync::Arc::new(path))
                    }
                    DataPath::Proxy => {
                        dnat::remove(&config.bridge, config.node_netns.as_deref())?;
                        None
                    }
                }
            }
        };

        // The balancer runs in a process of its own, so the node's VIPs, node ports and
        // DNS answer while the agent is down; one an earlier agent started is kept.
        let state = crate::StateDir::new(&config.state_dir);
        std::fs::create_dir_all(state.network()).map_err(NetError::io("cannot create", state.network()))?;
        let spec = BalancerSpec {
            bridge: config.bridge.clone(),
            netns_name: lb_name.clone(),
            dns_address: subnet.lb_address(),
            node_address: config.node_address,
            node_netns: config.node_netns.clone(),
            strategy: config.strategy,
            max_connections: config.limits.max_connections,
            idle_timeout_ms: u64::try_from(config.limits.idle_timeout.as_millis()).unwrap_or(u64::MAX),
            upstream_dns: config.upstream_dns.clone(),
            socket: balancer_process::socket_path(&config.bridge),
        };
        let balancer = match &config.helper {
            Some(helper) => Some(BalancerClient::attach_or_start(spec, helper, state.balancer_log(&config.bridge)).await?),
            None => None,
        };
        let ipam = Ipam::new(&state.addresses(&config.bridge), &state.addresses_lock(&config.bridge), subnet);
        Ok(NodeNetwork { config, ipam, handle, bridge_index, balancer, kernel, routes: tokio::sync::Mutex::new(BTreeSet::new()), created_bridge })
    }

    /// Whether this setup created the bridge (rather than repairing an existing one).
    pub fn created_bridge(&self) -> bool {
        self.created_bridge
    }

    pub fn config(&self) -> &NodeNetworkConfig {
        &self.config
    }

    pub fn balancer(&self) -> Option<&BalancerClient> {
        self.balancer.as_ref()
    }

    /// The kernel data path, when this network has one.
    pub fn kernel_path(&self) -> Option<&KernelPath> {
        self.kernel.as_deref()
    }

    /// Reserves the container's address (idempotent) and writes the files it gets
    /// bind-mounted: /etc/resolv.conf, /etc/hosts, /etc/hostname. Returns
    /// `(host file, container path)` pairs.
    pub fn prepare(&self, container: &str, hostname: &str, dir: &Path) -> Result<(Ipv4Addr, Vec<(PathBuf, String)>), NetError> {
        let ip = self.ipam.allocate(container)?;
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(NetError::io("cannot create", &etc))?;
        let files = [
            ("resolv.conf", format!("nameserver {}\nsearch {DNS_DOMAIN}\noptions ndots:1\n", self.config.subnet.lb_address())),
            ("hosts", format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n")),
            ("hostname", format!("{hostname}\n")),
        ];
        let mut mounts = Vec::new();
        for (name, content) in files {
            let path = etc.join(name);
            std::fs::write(&path, content).map_err(NetError::io("cannot write", &path))?;
            mounts.push((path, format!("/etc/{name}")));
        }
        Ok((ip, mounts))
    }

    /// Wires the container whose init is `pid` (its network namespace) to the bridge.
    pub async fn attach(&self, container: &str, pid: i32) -> Result<Attachment, NetError> {
        let began = std::time::Instant::now();
        let subnet = self.config.subnet;
        let ip = self.ipam.allocate(container)?;
        let allocated = began.elapsed();
        let veth = names::container_veth(&self.config.bridge, container);
        link::delete_link(&self.handle, &veth).await?;
        let target = Netns::of_pid(pid)?;
        let port = link::add_veth_into(&self.handle, &veth, self.bridge_index, target.raw_fd(), "eth0").await?;
        let paired = began.elapsed();
        link::set_hairpin(&self.handle, port, &veth).await?;
        let inner = target.netlink()?;
        let eth0 = link::require_index(&inner, "eth0").await?;
        link::set_mac(&inner, eth0, "eth0", link::mac_for(ip)).await?;
        link::add_address(&inner, eth0, ip, subnet.prefix).await?;
        link::set_up(&inner, eth0, "eth0").await?;
        link::replace_route(&inner, Ipv4Addr::UNSPECIFIED, 0, subnet.gateway()).await?;
        let ms = |at: std::time::Duration| at.as_secs_f64() * 1000.0;
        tracing::debug!(ipam = ms(allocated), veth = ms(paired), configured = ms(began.elapsed()), "attach: milliseconds until each step was done");
        Ok(Attachment { ip, prefix: subnet.prefix, gateway: subnet.gateway(), veth, nameserver: subnet.lb_address() })
    }

    /// Removes the container's veth (gone already if its namespace died) and frees its
    /// address.
    pub async fn detach(&self, container: &str) -> Result<(), NetError> {
        link::delete_link(&self.handle, &names::container_veth(&self.config.bridge, container)).await?;
        self.ipam.release(container)?;
        Ok(())
    }

    /// Converges the routes to other nodes' pod subnets.
    pub async fn set_peer_routes(&self, wanted: &[PeerRoute]) -> Result<(), NetError> {
        let mut routes = self.routes.lock().await;
        let wanted: BTreeSet<PeerRoute> = wanted.iter().copied().collect();
        for route in &wanted {
            link::replace_route(&self.handle, route.subnet_network, route.prefix, route.via).await?;
        }
        for stale in routes.difference(&wanted) {
            link::delete_route(&self.handle, stale.subnet_network, stale.prefix).await?;
        }
        *routes = wanted;
        Ok(())
    }

    /// Converges the kernel path's rules (when it has one) and the balancer process to the
    /// service table. The kernel first, with the node ports the process could not open
    /// last time left out: once the process — what `Inspect` reports, and so "ready means
    /// answering" — has the table, the rules have it too. Then again if the process's
    /// failures changed (a rewrite only then). The rules are applied even when the process
    /// does not answer: they carry the traffic then.
    pub async fn apply_services(&self, table: &[ServiceEndpoints]) -> Result<Vec<ListenerFailure>, NetError> {
        let began = std::time::Instant::now();
        let want = super::table::desired(table);
        let kernel_first = self.apply_kernel(&want, None).await;
        let kernel_done = began.elapsed();
        let applied = match &self.balancer {
            Some(balancer) => balancer.apply(table).await,
            None if table.is_empty() => Ok(Vec::new()),
            None => Err(NetError::Balancer("this node network runs no balancer".into())),
        };
        let ms = |at: std::time::Duration| at.as_secs_f64() * 1000.0;
        tracing::debug!(kernel = ms(kernel_done), balancer = ms(began.elapsed()), "service table: milliseconds until each was applied");
        // A listener the balancer process could not open for its owner (a second service
        // declaring a port is a failure of that service, not of the port).
        let failed =
            applied.as_ref().ok().map(|failures| failures.iter().filter(|f| want.owners.get(&f.listener) == Some(&f.service)).map(|f| f.listener).collect());
        let kernel_then = match failed {
            Some(failed) => self.apply_kernel(&want, Some(failed)).await,
            None => Ok(()),
        };
        kernel_first?;
        kernel_then?;
        applied
    }

    /// Applies `want` to the kernel path, when this network has one (`failed`: see
    /// [`KernelPath::apply`]).
    async fn apply_kernel(
        &self,
        want: &super::table::DesiredBalancer,
        failed: Option<std::collections::BTreeSet<super::table::ListenKey>>,
    ) -> Result<(), NetError> {
        let Some(kernel) = &self.kernel else { return Ok(()) };
        let (kernel, want) = (std::sync::Arc::clone(kernel), want.clone());
        tokio::task::spawn_blocking(move || kernel.apply(&want, failed)).await.map_err(|e| NetError::Thread(format!("applying the kernel path: {e}")))?
    }

    /// The TCP connections to `ip` this node carries now: relayed by its balancer
    /// process, and open through its kernel path.
    pub async fn active_connections(&self, ip: Ipv4Addr) -> usize {
        let relayed = match &self.balancer {
            Some(balancer) => balancer.active_connections(ip).await,
            None => 0,
        };
        let open = match &self.kernel {
            Some(kernel) => {
                let kernel = std::sync::Arc::clone(kernel);
                tokio::task::spawn_blocking(move || kernel.open_to(ip)).await.unwrap_or_else(|error| {
                    tracing::warn!(%error, "counting the kernel path's connections to {ip}: taken as none");
                    0
                })
            }
            None => 0,
        };
        relayed + open
    }

    pub async fn view(&self) -> Result<NetworkView, NetError> {
        let subnet = self.config.subnet;
        let containers = self
            .ipam
            .allocations()?
            .into_iter()
            .map(|(ip, owner)| {
                let veth = names::container_veth(&self.config.bridge, &owner);
                (owner, ip, veth)
            })
            .collect();
        Ok(NetworkView {
            bridge: self.config.bridge.clone(),
            subnet: subnet.to_string(),
            gateway: subnet.gateway(),
            balancer_address: subnet.lb_address(),
            service_cidr: self.config.service_cidr.to_string(),
            containers,
            routes: self.routes.lock().await.iter().copied().collect(),
            balancer: match &self.balancer {
                Some(balancer) => {
                    balancer.view().await.map_err(|error| tracing::warn!(%error, "the balancer does not answer: its part of the view is empty")).ok()
                }
                None => None,
            }
            .unwrap_or_else(|| BalancerView { netns: names::lb_netns(&self.config.bridge), ..BalancerView::default() }),
        })
    }

    /// Removes what a node network on `bridge` left behind after its agent is gone — the
    /// service route (when its range is known), the balancer's veth and namespace, the
    /// bridge, the egress table and the address allocations — without setting anything up first
    /// (`orch-agent teardown`). Whatever is already missing is fine.
    pub async fn remove_leftovers(bridge: &str, service_cidr: Option<Subnet>, state_dir: &std::path::Path) -> Result<(), NetError> {
        names::check(bridge)?;
        let state = crate::StateDir::new(state_dir);
        balancer_process::stop_all(bridge).await;
        let handle = Netns::current()?.netlink()?;
        if let Some(cidr) = service_cidr {
            link::delete_route(&handle, cidr.network, cidr.prefix).await?;
        }
        link::delete_link(&handle, &names::lb_veth(bridge)?).await?;
        Netns::delete_named(&names::lb_netns(bridge))?;
        link::delete_link(&handle, bridge).await?;
        let ports = dnat::remove(bridge, None);
        let _ = std::fs::remove_file(state.addresses(bridge));
        let _ = std::fs::remove_file(state.addresses_lock(bridge));
        let _ = std::fs::remove_file(state.balancer_log(bridge));
        egress::remove(bridge, None)?;
        ports
    }

    /// Removes everything the node network made: listeners, the balancer namespace and
    /// its veth, peer routes, the service route, the bridge and the egress table. With `forget`, the IPAM
    /// state goes too.
    pub async fn teardown(self, forget: bool) -> Result<(), NetError> {
        if let Some(balancer) = &self.balancer {
            balancer.stop().await;
        }
        let routes: Vec<PeerRoute> = self.routes.lock().await.iter().copied().collect();
        for route in routes {
            link::delete_route(&self.handle, route.subnet_network, route.prefix).await?;
        }
        link::delete_route(&self.handle, self.config.service_cidr.network, self.config.service_cidr.prefix).await?;
        link::delete_link(&self.handle, &names::lb_veth(&self.config.bridge)?).await?;
        Netns::delete_named(&names::lb_netns(&self.config.bridge))?;
        link::delete_link(&self.handle, &self.config.bridge).await?;
        // Both tables go, whichever fails.
        let egress = egress::remove(&self.config.bridge, self.config.node_netns.as_deref());
        dnat::remove(&self.config.bridge, self.config.node_netns.as_deref())?;
        egress?;
        if forget {
            let state = crate::StateDir::new(&self.config.state_dir);
            let _ = std::fs::remove_file(state.addresses(&self.config.bridge));
            let _ = std::fs::remove_file(state.addresses_lock(&self.config.bridge));
            let _ = std::fs::remove_file(state.balancer_log(&self.config.bridge));
        }
        Ok(())
    }
}
