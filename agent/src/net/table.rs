//! The desired service table a node converges to (from the controller, or a test), and
//! the pure decisions derived from it: which VIPs the balancer namespace holds, which
//! listeners exist, which endpoints each one spreads over, and what DNS answers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub name: String,
    pub protocol: Protocol,
    pub service_port: u16,
    /// The container port the endpoints listen on.
    pub target_port: u16,
    /// Published on the node's own address too.
    pub node_port: Option<u16>,
}

/// One service: its VIP, its ports, and the addresses of its READY replicas (on any node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    pub name: String,
    pub vip: Ipv4Addr,
    pub ports: Vec<PortMapping>,
    pub ready: Vec<Ipv4Addr>,
}

/// Where a balancer listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ListenKey {
    /// VIP:port (TCP) inside the balancer namespace.
    Vip(SocketAddrV4),
    /// A TCP node port on the node's own address.
    NodePort(u16),
    /// VIP:port (UDP) inside the balancer namespace.
    UdpVip(SocketAddrV4),
    /// A UDP node port on the node's own address.
    UdpNodePort(u16),
}

impl std::fmt::Display for ListenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenKey::Vip(address) => write!(f, "{address}/tcp"),
            ListenKey::NodePort(port) => write!(f, "node port {port}/tcp"),
            ListenKey::UdpVip(address) => write!(f, "{address}/udp"),
            ListenKey::UdpNodePort(port) => write!(f, "node port {port}/udp"),
        }
    }
}

/// A listener of a service that the balancer could not open (retried on the next
/// table): the port is held by another process, or another service declared it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerFailure {
    pub listener: ListenKey,
    pub service: String,
    pub error: String,
}

impl std::fmt::Display for ListenerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of service {}: {}", self.listener, self.service, self.error)
    }
}

/// Everything the node's balancer should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredBalancer {
    pub vips: BTreeSet<Ipv4Addr>,
    /// Each listener and the endpoints it spreads connections over.
    pub listeners: BTreeMap<ListenKey, Vec<SocketAddrV4>>,
    /// The service each listener is for.
    pub owners: BTreeMap<ListenKey, String>,
    /// Listeners two services declared: the first in the table keeps it, the others
    /// are listed here.
    pub conflicts: Vec<ListenerFailure>,
    /// DNS: `<service>` and `<service>.orch` → VIP.
    pub names: BTreeMap<String, Ipv4Addr>,
}

/// The search domain services answer under.
pub const DNS_DOMAIN: &str = "orch";

pub fn desired(table: &[ServiceEndpoints]) -> DesiredBalancer {
    let mut out = DesiredBalancer::default();
    for service in table {
        out.vips.insert(service.vip);
        out.names.insert(service.name.clone(), service.vip);
        out.names.insert(format!("{}.{DNS_DOMAIN}", service.name), service.vip);
        for port in &service.ports {
            let endpoints: Vec<SocketAddrV4> = service.ready.iter().map(|ip| SocketAddrV4::new(*ip, port.target_port)).collect();
            let vip = SocketAddrV4::new(service.vip, port.service_port);
            let (on_vip, on_node) = match port.protocol {
                Protocol::Tcp => (ListenKey::Vip(vip), port.node_port.map(ListenKey::NodePort)),
                Protocol::Udp => (ListenKey::UdpVip(vip), port.node_port.map(ListenKey::UdpNodePort)),
            };
            for key in std::iter::once(on_vip).chain(on_node) {
                match out.owners.get(&key) {
                    Some(owner) if *owner != service.name => {
                        out.conflicts.push(ListenerFailure { listener: key, service: service.name.clone(), error: format!("service {owner} has it already") });
                    }
                    _ => {
                        out.owners.insert(key, service.name.clone());
                        out.listeners.insert(key, endpoints.clone());
                    }
                }
            }
        }
    }
    out
}

/// What to change to get from the listeners that exist to the desired ones. Existing
/// listeners are kept (their endpoints are swapped in place, so established connections
/// are untouched).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerPlan {
    pub open: Vec<ListenKey>,
    pub close: Vec<ListenKey>,
}

pub fn plan_listeners(current: &BTreeSet<ListenKey>, desired: &DesiredBalancer) -> ListenerPlan {
    ListenerPlan {
        open: desired.listeners.keys().filter(|k| !current.contains(k)).copied().collect(),
        close: current.iter().filter(|k| !desired.listeners.contains_key(k)).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("ip")
    }

    fn web() -> ServiceEndpoints {
        ServiceEndpoints {
            name: "web".into(),
            vip: ip("10.96.0.10"),
            ports: vec![
                PortMapping { name: "http".into(), protocol: Protocol::Tcp, service_port: 80, target_port: 8080, node_port: Some(30080) },
                PortMapping { name: "dns".into(), protocol: Protocol::Udp, service_port: 53, target_port: 5353, node_port: Some(30053) },
            ],
            ready: vec![ip("10.88.1.3"), ip("10.88.2.3")],
        }
    }

    #[test]
    fn desired_from_a_table() {
        let d = desired(&[web()]);
        assert_eq!(d.vips, BTreeSet::from([ip("10.96.0.10")]));
        let endpoints = vec![SocketAddrV4::new(ip("10.88.1.3"), 8080), SocketAddrV4::new(ip("10.88.2.3"), 8080)];
        assert_eq!(d.listeners.get(&ListenKey::Vip(SocketAddrV4::new(ip("10.96.0.10"), 80))), Some(&endpoints));
        assert_eq!(d.listeners.get(&ListenKey::NodePort(30080)), Some(&endpoints));
        let dns = vec![SocketAddrV4::new(ip("10.88.1.3"), 5353), SocketAddrV4::new(ip("10.88.2.3"), 5353)];
        assert_eq!(d.listeners.get(&ListenKey::UdpVip(SocketAddrV4::new(ip("10.96.0.10"), 53))), Some(&dns));
        assert_eq!(d.listeners.get(&ListenKey::UdpNodePort(30053)), Some(&dns));
        assert_eq!(d.listeners.len(), 4, "TCP and UDP, each on the VIP and a node port");
        assert_eq!(d.names.get("web.orch"), Some(&ip("10.96.0.10")));
        assert_eq!(d.names.get("web"), Some(&ip("10.96.0.10")));
    }

    #[test]
    fn a_node_port_two_services_declare_stays_with_the_first_and_the_second_is_named() {
        let mut api = web();
        api.name = "api".into();
        api.vip = ip("10.96.0.11");
        api.ports.truncate(1);
        api.ready = vec![ip("10.88.1.9")];
        let d = desired(&[web(), api]);
        let web_endpoints = vec![SocketAddrV4::new(ip("10.88.1.3"), 8080), SocketAddrV4::new(ip("10.88.2.3"), 8080)];
        assert_eq!(d.listeners.get(&ListenKey::NodePort(30080)), Some(&web_endpoints), "the first service keeps it");
        assert_eq!(d.owners.get(&ListenKey::NodePort(30080)).map(String::as_str), Some("web"));
        assert_eq!(d.conflicts.len(), 1, "{:?}", d.conflicts);
        assert_eq!(d.conflicts[0].to_string(), "node port 30080/tcp of service api: service web has it already");
        let api_vip = ListenKey::Vip(SocketAddrV4::new(ip("10.96.0.11"), 80));
        assert_eq!(d.owners.get(&api_vip).map(String::as_str), Some("api"), "its own VIP listener is unaffected");
    }

    #[test]
    fn plan_opens_and_closes_only_the_difference() {
        let vip80 = ListenKey::Vip(SocketAddrV4::new(ip("10.96.0.10"), 80));
        let stale = ListenKey::Vip(SocketAddrV4::new(ip("10.96.0.99"), 80));
        let current = BTreeSet::from([vip80, stale]);
        let plan = plan_listeners(&current, &desired(&[web()]));
        assert_eq!(plan.open, vec![ListenKey::NodePort(30080), ListenKey::UdpVip(SocketAddrV4::new(ip("10.96.0.10"), 53)), ListenKey::UdpNodePort(30053)]);
        assert_eq!(plan.close, vec![stale]);
        assert_eq!(plan_listeners(&BTreeSet::new(), &desired(&[])), ListenerPlan::default());
    }
}
