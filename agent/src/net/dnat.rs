//! The kernel data path (`--data-path kernel`): TCP service ports balanced by nftables
//! DNAT, so connections go with no userspace hop and keep going whatever happens to the
//! agent or the balancer process (rules and conntrack entries live in the kernel).
//!
//! - VIPs, in the balancer namespace (table `ip orch_lb`): a packet to VIP:port — the
//!   node routes the service range there — is DNAT'd to an endpoint `numgen` picks and
//!   masqueraded to the namespace's address (.2), so the reply comes back the same way.
//!   Backends see .2, as they see the userspace proxy.
//! - Node ports, in the node's namespace (table `ip orch_<bridge>_ports`): a packet that
//!   arrives from outside the bridge at the node's address is DNAT'd, and masqueraded
//!   only when its endpoint is on another node, so a local backend sees the client's own
//!   address (the Swarm complaint, moby#25526). What the node itself sends (127.0.0.1,
//!   its own address) and what pods send to a node port go on to the balancer process's
//!   listeners, as UDP and DNS do.
//! - A connection to a replica that is dying: its namespace may answer the SYN with a
//!   RST. Both tables drop a RST answering a DNAT'd connection not yet established, so
//!   the client retransmits its SYN instead of failing; when the endpoint leaves the
//!   table, the not-yet-answered conntrack entries to it are deleted (`conntrack -D`), so
//!   that retransmission is balanced again over the endpoints that are left.
//!
//! No kernel equivalent exists for `--max-connections-per-port`, `--idle-timeout`, passive
//! ejection or least connections (it picks at random) on this path; drains count the
//! established conntrack entries to the replica.
//!
//! The rulesets are pure functions of the desired balancer; each apply replaces a table
//! whole in one transaction (`nft -f -`), which leaves established connections alone.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use super::egress;
use super::netfilter;
use super::proxy::Strategy;
use super::table::{DesiredBalancer, ListenKey};
use super::NetError;

/// Where a node's TCP service traffic is balanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum DataPath {
    /// The balancer process relays every connection (limits, idle timeout, connect
    /// fallback and passive ejection, least connections).
    Proxy,
    /// nftables DNAT in the kernel; the balancer process keeps DNS, UDP, and node ports
    /// the node or its pods call.
    #[default]
    Kernel,
}

/// The table of VIP rules, in the balancer namespace (which is the node network's own).
pub const VIP_TABLE: &str = "orch_lb";

/// The table of node-port rules of the node network on `bridge`, in the node's namespace.
pub fn ports_table(bridge: &str) -> String {
    format!("{}_ports", egress::table_name(bridge))
}

/// `dnat to …` over `endpoints` (all on one port, as a table's are), or nothing for none.
fn dnat(endpoints: &[SocketAddrV4], strategy: Strategy) -> Option<String> {
    let port = endpoints.first()?.port();
    let pick = match strategy {
        Strategy::RoundRobin => "inc",
        Strategy::LeastConnections => "random",
    };
    let on_port: Vec<Ipv4Addr> = endpoints.iter().filter(|e| e.port() == port).map(|e| *e.ip()).collect();
    let map: Vec<String> = on_port.iter().enumerate().map(|(i, ip)| format!("{i} : {ip}")).collect();
    Some(format!("dnat to numgen {pick} mod {} map {{ {} }} : {port}", on_port.len(), map.join(", ")))
}

/// A RST answering a DNAT'd connection that is not established yet (a dying replica's
/// namespace refusing the SYN) is dropped: the client retransmits its SYN.
const DROP_EARLY_RST: &str = "ct direction reply tcp flags & rst == rst ct status & assured == 0 drop";

/// The nft script for the balancer namespace: each TCP VIP port with endpoints DNAT'd
/// over them, masquerade, the early-RST drop. Listeners with no endpoint have no rule
/// (the balancer process's listener closes such connections).
pub fn vip_ruleset(desired: &DesiredBalancer, strategy: Strategy) -> String {
    let mut rules = String::new();
    for (key, endpoints) in &desired.listeners {
        if let (ListenKey::Vip(vip), Some(dnat)) = (key, dnat(endpoints, strategy)) {
            let service = desired.owners.get(key).map_or("", String::as_str);
            let _ = writeln!(rules, "\t\tip daddr {} tcp dport {} {dnat} comment \"service {service}\"", vip.ip(), vip.port());
        }
    }
    format!(
        "table ip {VIP_TABLE}\ndelete table ip {VIP_TABLE}\ntable ip {VIP_TABLE} {{\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{rules}\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tct status dnat masquerade\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct status dnat {DROP_EARLY_RST}\n\t}}\n}}\n"
    )
}

/// The nft script for the node's namespace: each TCP node port with endpoints (and not
/// in `failed`: a port another process holds is left to it) DNAT'd when it comes from
/// outside the bridge to `node_address` (any local address when unset); masquerade
/// towards endpoints on other nodes; the early-RST drop.
pub fn node_port_ruleset(bridge: &str, desired: &DesiredBalancer, strategy: Strategy, node_address: Option<Ipv4Addr>, failed: &BTreeSet<ListenKey>) -> String {
    let table = ports_table(bridge);
    let to_node = match node_address {
        Some(address) => format!("ip daddr {address}"),
        None => "fib daddr type local".to_owned(),
    };
    let mut rules = String::new();
    let mut ports = Vec::new();
    for (key, endpoints) in &desired.listeners {
        if let (ListenKey::NodePort(port), Some(dnat)) = (key, dnat(endpoints, strategy)) {
            if failed.contains(key) {
                continue;
            }
            let service = desired.owners.get(key).map_or("", String::as_str);
            let _ = writeln!(rules, "\t\tiifname != \"{bridge}\" {to_node} tcp dport {port} {dnat} comment \"service {service}\"");
            ports.push(port.to_string());
        }
    }
    let (set, flows) = if ports.is_empty() {
        (String::new(), None)
    } else {
        (
            format!("\tset node_ports {{\n\t\ttype inet_service\n\t\telements = {{ {} }}\n\t}}\n", ports.join(", ")),
            Some("ct status dnat meta l4proto tcp ct original proto-dst @node_ports"),
        )
    };
    let masquerade = flows.map(|flows| format!("\t\t{flows} oifname != \"{bridge}\" masquerade\n")).unwrap_or_default();
    let drop_rst = flows.map(|flows| format!("\t\t{flows} {DROP_EARLY_RST}\n")).unwrap_or_default();
    format!(
        "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n{set}\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{rules}\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n{masquerade}\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n{drop_rst}\t}}\n}}\n"
    )
}

/// Every endpoint address the kernel path balances over.
pub fn endpoints(desired: &DesiredBalancer) -> BTreeSet<Ipv4Addr> {
    desired
        .listeners
        .iter()
        .filter(|(key, _)| matches!(key, ListenKey::Vip(_) | ListenKey::NodePort(_)))
        .flat_map(|(_, endpoints)| endpoints.iter().map(|e| *e.ip()))
        .collect()
}

/// The kernel path of one node network: its two namespaces and what it applied last.
pub struct KernelPath {
    bridge: String,
    vip_netns: PathBuf,
    node_netns: Option<PathBuf>,
    node_address: Option<Ipv4Addr>,
    strategy: Strategy,
    applied: std::sync::Mutex<Applied>,
}

#[derive(Default)]
struct Applied {
    rulesets: Option<(String, String)>,
    endpoints: BTreeSet<Ipv4Addr>,
    failed: BTreeSet<ListenKey>,
}

impl KernelPath {
    /// The kernel path for the node network on `bridge`; fails when `nft` or `conntrack`
    /// cannot run.
    pub fn new(
        bridge: &str,
        vip_netns: PathBuf,
        node_netns: Option<PathBuf>,
        node_address: Option<Ipv4Addr>,
        strategy: Strategy,
    ) -> Result<KernelPath, NetError> {
        netfilter::run(None, "conntrack", &["--version"], None)?;
        Ok(KernelPath { bridge: bridge.to_owned(), vip_netns, node_netns, node_address, strategy, applied: std::sync::Mutex::default() })
    }

    /// Replaces both tables (when they changed), then forgets the conntrack entries not
    /// yet answered towards endpoints that left (a failure there is logged: the rules
    /// are in). `failed`: the balancer process's listeners that could not open (none:
    /// it did not answer; those of the last apply).
    pub fn apply(&self, desired: &DesiredBalancer, failed: Option<BTreeSet<ListenKey>>) -> Result<(), NetError> {
        let mut applied = self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(failed) = failed {
            applied.failed = failed;
        }
        let rulesets = (vip_ruleset(desired, self.strategy), node_port_ruleset(&self.bridge, desired, self.strategy, self.node_address, &applied.failed));
        let now = endpoints(desired);
        if applied.rulesets.as_ref() != Some(&rulesets) {
            netfilter::run(Some(&self.vip_netns), "nft", &["-f", "-"], Some(&rulesets.0))?;
            netfilter::run(self.node_netns.as_deref(), "nft", &["-f", "-"], Some(&rulesets.1))?;
            applied.rulesets = Some(rulesets);
        }
        for gone in applied.endpoints.difference(&now) {
            for netns in [Some(self.vip_netns.as_path()), self.node_netns.as_deref()] {
                if let Err(error) = forget_unanswered(netns, *gone) {
                    tracing::warn!(endpoint = %gone, %error, "forgetting connections not yet answered by an endpoint that left");
                }
            }
        }
        applied.endpoints = now;
        Ok(())
    }

    /// The established TCP connections the kernel path carries to `ip` now.
    pub fn established_to(&self, ip: Ipv4Addr) -> usize {
        let ip = ip.to_string();
        [Some(self.vip_netns.as_path()), self.node_netns.as_deref()]
            .into_iter()
            .map(|netns| match netfilter::run(netns, "conntrack", &["-L", "-p", "tcp", "--reply-src", &ip, "--state", "ESTABLISHED"], None) {
                Ok(listing) => listing.lines().filter(|line| !line.trim().is_empty()).count(),
                Err(error) => {
                    tracing::warn!(%error, "counting connections to {ip}");
                    0
                }
            })
            .sum()
    }
}

/// Deletes the conntrack entries towards `ip` that no SYN-ACK answered: the client's
/// next SYN is balanced again. (One closed by a RST the forward chain dropped is
/// balanced again by the kernel when the client's SYN comes back.)
fn forget_unanswered(netns: Option<&Path>, ip: Ipv4Addr) -> Result<(), NetError> {
    match netfilter::run(netns, "conntrack", &["-D", "-p", "tcp", "--reply-src", &ip.to_string(), "--state", "SYN_SENT"], None) {
        Err(NetError::Netfilter { message, .. }) if message.contains(" 0 flow entries") => Ok(()),
        other => other.map(drop),
    }
}

/// Removes the node-port table of the node network on `bridge` (the VIP table goes with
/// the balancer namespace); a missing one is fine.
pub fn remove(bridge: &str, node_netns: Option<&Path>) -> Result<(), NetError> {
    netfilter::delete_table(node_netns, &ports_table(bridge))
}

/// Removes both tables: a node network on the proxy path keeps none a kernel-path run left.
pub fn remove_both(bridge: &str, vip_netns: &Path, node_netns: Option<&Path>) -> Result<(), NetError> {
    netfilter::delete_table(Some(vip_netns), VIP_TABLE)?;
    remove(bridge, node_netns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::table::{desired, PortMapping, Protocol, ServiceEndpoints};

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("ip")
    }

    fn table(ready: &[&str]) -> Vec<ServiceEndpoints> {
        vec![ServiceEndpoints {
            name: "web".into(),
            vip: ip("10.96.0.10"),
            ports: vec![
                PortMapping { name: "http".into(), protocol: Protocol::Tcp, service_port: 80, target_port: 8080, node_port: Some(30080) },
                PortMapping { name: "dns".into(), protocol: Protocol::Udp, service_port: 53, target_port: 5353, node_port: Some(30053) },
            ],
            ready: ready.iter().map(|r| ip(r)).collect(),
        }]
    }

    #[test]
    fn vips_are_dnat_ed_over_their_endpoints_and_masqueraded() {
        let rules = vip_ruleset(&desired(&table(&["10.88.1.3", "10.88.2.3"])), Strategy::RoundRobin);
        assert!(rules.starts_with("table ip orch_lb\ndelete table ip orch_lb\ntable ip orch_lb {"), "{rules}");
        assert!(
            rules.contains("ip daddr 10.96.0.10 tcp dport 80 dnat to numgen inc mod 2 map { 0 : 10.88.1.3, 1 : 10.88.2.3 } : 8080 comment \"service web\"\n"),
            "{rules}"
        );
        assert!(!rules.contains("dport 53"), "UDP stays with the balancer process: {rules}");
        assert!(rules.contains("ct status dnat masquerade"), "{rules}");
        assert!(rules.contains("ct status dnat ct direction reply tcp flags & rst == rst ct status & assured == 0 drop"), "{rules}");
        let random = vip_ruleset(&desired(&table(&["10.88.1.3"])), Strategy::LeastConnections);
        assert!(random.contains("dnat to numgen random mod 1 map { 0 : 10.88.1.3 } : 8080"), "{random}");
        let none = vip_ruleset(&desired(&table(&[])), Strategy::RoundRobin);
        assert!(!none.contains("dnat to"), "no endpoint, no rule (the process's listener closes): {none}");
    }

    #[test]
    fn node_ports_come_from_outside_the_bridge_and_keep_the_client_address_for_local_endpoints() {
        let want = desired(&table(&["10.88.1.3", "10.88.2.3"]));
        let rules = node_port_ruleset("orch0", &want, Strategy::RoundRobin, Some(ip("192.0.2.7")), &BTreeSet::new());
        assert!(rules.starts_with("table ip orch_orch0_ports\ndelete table ip orch_orch0_ports\n"), "{rules}");
        assert!(rules.contains("iifname != \"orch0\" ip daddr 192.0.2.7 tcp dport 30080 dnat to numgen inc mod 2 map"), "{rules}");
        assert!(rules.contains("elements = { 30080 }"), "{rules}");
        assert!(rules.contains("ct status dnat meta l4proto tcp ct original proto-dst @node_ports oifname != \"orch0\" masquerade"), "{rules}");
        assert!(!rules.contains("30053"), "{rules}");
        let anywhere = node_port_ruleset("orch0", &want, Strategy::RoundRobin, None, &BTreeSet::new());
        assert!(anywhere.contains("iifname != \"orch0\" fib daddr type local tcp dport 30080"), "{anywhere}");
        let held = node_port_ruleset("orch0", &want, Strategy::RoundRobin, None, &BTreeSet::from([ListenKey::NodePort(30080)]));
        assert!(
            !held.contains("dnat") && !held.contains("set node_ports") && !held.contains("masquerade"),
            "a port another process holds is left to it: {held}"
        );
    }

    #[test]
    fn endpoints_are_those_of_tcp_listeners() {
        assert_eq!(endpoints(&desired(&table(&["10.88.1.3", "10.88.2.3"]))), BTreeSet::from([ip("10.88.1.3"), ip("10.88.2.3")]));
        assert_eq!(endpoints(&desired(&table(&[]))), BTreeSet::new());
    }
}
