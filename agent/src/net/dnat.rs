//! The kernel data path (`--data-path kernel`): TCP service ports balanced by nftables
//! DNAT in the node's own namespace (table `ip orchnp_<bridge>`), so connections go with
//! no userspace hop and no extra namespace, and keep going whatever happens to the agent
//! or the balancer process (rules and conntrack entries live in the kernel).
//!
//! - VIPs: a packet to VIP:port — from a pod on the bridge (prerouting) or from the node
//!   itself (output) — is DNAT'd to an endpoint `numgen` picks, before the route that
//!   would take it to the balancer namespace applies. A pod's connection to an endpoint
//!   on its own bridge is masqueraded to the bridge's address (the reply would otherwise
//!   go to the pod directly, over the bridge, and never be un-NAT'd); towards another
//!   node the backend sees the pod's own address. A VIP connection from another host
//!   goes on to the balancer process (unmasqueraded, its endpoint on another node would
//!   answer the client directly).
//! - Node ports: a packet that arrives from outside the bridge at the node's address is
//!   DNAT'd, and masqueraded only when its endpoint is on another node, so a local
//!   backend sees the client's own address (the Swarm complaint, moby#25526). What the
//!   node itself sends to a node port (127.0.0.1, its own address) and what pods send to
//!   one go on to the balancer process's listeners, as UDP, DNS and service ports with
//!   no endpoint do.
//! - A connection to a replica that is dying: its namespace may answer the SYN with a
//!   RST. The table drops a RST answering one of its DNAT'd connections not yet
//!   established (forwarded, or to the node itself), so the client retransmits its SYN
//!   instead of failing; when the endpoint leaves the table, the not-yet-answered
//!   conntrack entries to it are deleted (`conntrack -D`), so that retransmission is
//!   balanced again over the endpoints that are left.
//!
//! No kernel equivalent exists for `--max-connections-per-port`, `--idle-timeout`, passive
//! ejection or least connections (it picks at random) on this path; drains count the
//! established conntrack entries to the replica.
//!
//! The ruleset is a pure function of the desired balancer; each apply replaces the table
//! whole in one transaction (`nft -f -`), which leaves established connections alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use super::egress;
use super::ipam::Subnet;
use super::netfilter;
use super::proxy::Strategy;
use super::stats::KernelPathMetrics;
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

/// The table an earlier version kept in the balancer namespace (VIPs were DNAT'd there,
/// with forwarding on).
pub const LEGACY_VIP_TABLE: &str = "orch_lb";

/// What an upgraded node keeps of [`LEGACY_VIP_TABLE`]: no new DNAT, but NAT hooks (a
/// connection it DNAT'd keeps its translation in conntrack; the kernel applies it only
/// while a nat chain is registered in the namespace) and forwarding for those
/// connections alone, so an upgrade cuts none of them.
pub fn legacy_vip_table_drained() -> String {
    format!(
        "table ip {LEGACY_VIP_TABLE}\ndelete table ip {LEGACY_VIP_TABLE}\ntable ip {LEGACY_VIP_TABLE} {{\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tct status dnat accept\n\t}}\n}}\n"
    )
}

/// The kernel path's table of the node network on `bridge`, in the node's namespace
/// (`orchnp_`, node path: never the name of another bridge's egress table, `orch_…`).
pub fn table_name(bridge: &str) -> String {
    format!("orchnp_{}", egress::nft_safe(bridge))
}

/// A service name as a rule's comment carries it: letters, digits, `-` and `.` (a name
/// from elsewhere cannot end the comment's quotes).
fn comment_safe(service: &str) -> String {
    service.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
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
    Some(format!("counter dnat to numgen {pick} mod {} map {{ {} }} : {port}", on_port.len(), map.join(", ")))
}

/// A RST answering a DNAT'd connection that is not established yet (a dying replica's
/// namespace refusing the SYN) is dropped: the client retransmits its SYN, which is
/// balanced again. (The price: a service whose every endpoint refuses — a wrong
/// targetPort and no readiness probe — makes clients wait in SYN retries instead of
/// seeing a refusal.)
const DROP_EARLY_RST: &str = "ct direction reply tcp flags & rst == rst ct status & assured == 0 drop";

/// The nft script for the node's namespace. VIPs: each TCP VIP port with endpoints
/// DNAT'd over them, from pods and from the node; a connection from a pod of `pods` (the
/// bridge's subnet) to an endpoint on the bridge masqueraded (matched by its original
/// source: in postrouting the kernel knows no input interface).
/// Node ports: each TCP node port with endpoints (and not in `failed`: a port another
/// process holds is left to it) DNAT'd when it comes from outside the bridge to
/// `node_address` (any local address when unset), masqueraded towards endpoints on
/// other nodes. The early-RST drop for both. Ports with no endpoint have no rule (the
/// balancer process's listener closes such connections).
pub fn ruleset(
    bridge: &str,
    pods: Subnet,
    desired: &DesiredBalancer,
    strategy: Strategy,
    node_address: Option<Ipv4Addr>,
    failed: &BTreeSet<ListenKey>,
) -> String {
    let table = table_name(bridge);
    let to_node = match node_address {
        Some(address) => format!("ip daddr {address}"),
        None => "fib daddr type local".to_owned(),
    };
    let (mut services, mut node_port_rules) = (String::new(), String::new());
    let (mut vips, mut ports) = (BTreeSet::new(), Vec::new());
    for (key, endpoints) in &desired.listeners {
        let Some(dnat) = dnat(endpoints, strategy) else { continue };
        let service = comment_safe(desired.owners.get(key).map_or("", String::as_str));
        match key {
            ListenKey::Vip(vip) => {
                let _ = writeln!(services, "\t\tip daddr {} tcp dport {} {dnat} comment \"service {service}\"", vip.ip(), vip.port());
                vips.insert(*vip.ip());
            }
            ListenKey::NodePort(port) if !failed.contains(key) => {
                let _ = writeln!(node_port_rules, "\t\tiifname != \"{bridge}\" {to_node} tcp dport {port} {dnat} comment \"service {service}\"");
                ports.push(port.to_string());
            }
            _ => {}
        }
    }
    let mut sets = String::new();
    let (mut prerouting, mut output, mut postrouting, mut forward, mut input) = (String::new(), String::new(), String::new(), String::new(), String::new());
    if !vips.is_empty() {
        let addresses: Vec<String> = vips.iter().map(Ipv4Addr::to_string).collect();
        let _ = write!(sets, "\tset vips {{\n\t\ttype ipv4_addr\n\t\telements = {{ {} }}\n\t}}\n", addresses.join(", "));
        // From pods; a VIP connection from another host (a gateway routing the service
        // range here) goes on to the balancer process, which relays it from .2.
        let _ = writeln!(prerouting, "\t\tiifname \"{bridge}\" ip daddr @vips jump services");
        output.push_str("\t\tip daddr @vips jump services\n");
        // The flows the VIP rules DNAT'd.
        let flows = "ct status dnat meta l4proto tcp ct original ip daddr @vips";
        let _ = writeln!(postrouting, "\t\t{flows} ct original ip saddr {pods} oifname \"{bridge}\" masquerade");
        let _ = writeln!(forward, "\t\t{flows} {DROP_EARLY_RST}");
        let _ = writeln!(input, "\t\t{flows} {DROP_EARLY_RST}");
    }
    prerouting.push_str(&node_port_rules);
    if !ports.is_empty() {
        let _ = write!(sets, "\tset node_ports {{\n\t\ttype inet_service\n\t\telements = {{ {} }}\n\t}}\n", ports.join(", "));
        // The flows the node-port rules DNAT'd (not another program's DNAT to the same ports).
        let to_here = node_address.map(|address| format!(" ct original ip daddr {address}")).unwrap_or_default();
        let flows = format!("ct status dnat meta l4proto tcp ct original proto-dst @node_ports{to_here}");
        let _ = writeln!(postrouting, "\t\t{flows} oifname != \"{bridge}\" masquerade");
        let _ = writeln!(forward, "\t\t{flows} {DROP_EARLY_RST}");
    }
    format!(
        "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n{sets}\
         \tchain services {{\n{services}\t}}\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{prerouting}\t}}\n\
         \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n{output}\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n{postrouting}\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n{forward}\t}}\n\
         \tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n{input}\t}}\n}}\n"
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

/// The kernel path of one node network: the node's namespace, what it applied last, and
/// its connection counters.
pub struct KernelPath {
    bridge: String,
    pods: Subnet,
    node_netns: Option<PathBuf>,
    node_address: Option<Ipv4Addr>,
    strategy: Strategy,
    applied: std::sync::Mutex<Applied>,
    metrics: KernelPathMetrics,
    /// Recent counts of [`KernelPath::open_to`], by address.
    counted: std::sync::Mutex<std::collections::HashMap<Ipv4Addr, (std::time::Instant, usize)>>,
}

#[derive(Default)]
struct Applied {
    /// The ruleset in the kernel (none: unknown, it is written).
    ruleset: Option<String>,
    endpoints: BTreeSet<Ipv4Addr>,
    failed: BTreeSet<ListenKey>,
    /// Connections counted by the tables replaced so far, by service.
    counted: BTreeMap<String, u64>,
}

/// Adds `more` to `into`, service by service.
fn add_counts(into: &mut BTreeMap<String, u64>, more: BTreeMap<String, u64>) {
    for (service, count) in more {
        *into.entry(service).or_default() += count;
    }
}

/// The connections each service's DNAT rules counted, from `nft -j list table` output.
pub fn counts_in(listing: &serde_json::Value) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let rules = listing["nftables"].as_array().into_iter().flatten().filter_map(|item| item.get("rule"));
    for rule in rules {
        let Some(service) = rule["comment"].as_str().and_then(|c| c.strip_prefix("service ")) else { continue };
        let packets: u64 = rule["expr"].as_array().into_iter().flatten().filter_map(|e| e["counter"]["packets"].as_u64()).sum();
        *counts.entry(service.to_owned()).or_default() += packets;
    }
    counts
}

impl KernelPath {
    /// The kernel path for the node network on `bridge`; fails when `nft` or `conntrack`
    /// cannot run.
    pub fn new(bridge: &str, pods: Subnet, node_netns: Option<PathBuf>, node_address: Option<Ipv4Addr>, strategy: Strategy) -> Result<KernelPath, NetError> {
        netfilter::run(None, "conntrack", &["--version"], None)?;
        Ok(KernelPath {
            bridge: bridge.to_owned(),
            pods,
            node_netns,
            node_address,
            strategy,
            applied: std::sync::Mutex::default(),
            metrics: KernelPathMetrics::default(),
            counted: std::sync::Mutex::default(),
        })
    }

    /// Its metrics (for the agent's registry).
    pub fn metrics(&self) -> &KernelPathMetrics {
        &self.metrics
    }

    /// Brings the metrics up to the table's counters (blocking: runs `nft`; holds the
    /// applied state meanwhile, so a replacement cannot count its table twice).
    pub fn refresh_metrics(&self) {
        let applied = self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut totals = applied.counted.clone();
        add_counts(&mut totals, counts_of(self.node_netns.as_deref(), &table_name(&self.bridge)));
        self.metrics.follow(&totals);
    }

    /// Replaces the table (when it changed; its counters kept first, as they go with
    /// it), then forgets the conntrack entries not yet answered towards endpoints that
    /// left (a failure there is logged: the rules are in). `failed`: the balancer
    /// process's listeners that could not open (none: it did not answer; those of the
    /// last apply).
    pub fn apply(&self, desired: &DesiredBalancer, failed: Option<BTreeSet<ListenKey>>) -> Result<(), NetError> {
        let mut applied = self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(failed) = failed {
            applied.failed = failed;
        }
        let ruleset = ruleset(&self.bridge, self.pods, desired, self.strategy, self.node_address, &applied.failed);
        let now = endpoints(desired);
        let netns = self.node_netns.as_deref();
        if applied.ruleset.as_ref() != Some(&ruleset) {
            let table = table_name(&self.bridge);
            let counted = counts_of(netns, &table);
            // A failed apply is tried again with the next (its ruleset is not recorded).
            applied.ruleset = None;
            netfilter::run(netns, "nft", &["-f", "-"], Some(&ruleset))?;
            add_counts(&mut applied.counted, counted);
            applied.ruleset = Some(ruleset);
        }
        for endpoint in applied.endpoints.difference(&now) {
            if let Err(error) = forget_unanswered(netns, *endpoint) {
                tracing::warn!(%endpoint, %error, "forgetting connections not yet answered by an endpoint that left");
            }
        }
        applied.endpoints = now;
        Ok(())
    }

    /// The open TCP connections the kernel path carries to `ip` now (DNAT'd ones: not a
    /// pod's own connection to it). A count is kept for [`COUNT_KEPT`]: drains ask often.
    pub fn open_to(&self, ip: Ipv4Addr) -> usize {
        let now = std::time::Instant::now();
        let mut counted = self.counted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counted.retain(|_, (at, _)| now.duration_since(*at) < COUNT_KEPT);
        if let Some((_, count)) = counted.get(&ip) {
            return *count;
        }
        let address = ip.to_string();
        let count = match netfilter::run(self.node_netns.as_deref(), "conntrack", &["-L", "-p", "tcp", "--reply-src", &address, "--dst-nat"], None) {
            Ok(listing) => open_connections(&listing),
            Err(error) => {
                tracing::warn!(%error, "counting the connections to {address}: taken as none");
                0
            }
        };
        counted.insert(ip, (now, count));
        count
    }
}

/// How long a count of [`KernelPath::open_to`] is reused.
pub const COUNT_KEPT: std::time::Duration = std::time::Duration::from_millis(250);

/// The connections of a `conntrack -L` listing that are open: handshake answered, not
/// yet closed both ways (`tcp 6 431999 ESTABLISHED src=…`: the fourth field).
pub fn open_connections(listing: &str) -> usize {
    listing.lines().filter(|line| matches!(line.split_whitespace().nth(3), Some("SYN_RECV" | "ESTABLISHED" | "FIN_WAIT" | "CLOSE_WAIT"))).count()
}

/// What the DNAT rules of `table` in `netns` counted, by service (a missing table counts
/// nothing; one that cannot be read is logged).
fn counts_of(netns: Option<&Path>, table: &str) -> BTreeMap<String, u64> {
    let listing = netfilter::run(netns, "nft", &["-j", "list", "table", "ip", table], None).and_then(|text| {
        serde_json::from_str(&text).map_err(|e| NetError::Netfilter { command: format!("nft -j list table ip {table}"), message: e.to_string() })
    });
    match listing {
        Ok(listing) => counts_in(&listing),
        Err(NetError::Netfilter { message, .. }) if message.contains("No such file or directory") => BTreeMap::new(),
        Err(error) => {
            tracing::warn!(%error, "reading the kernel path's counters");
            BTreeMap::new()
        }
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

/// Removes the kernel path's table of the node network on `bridge`; a missing one is fine.
pub fn remove(bridge: &str, node_netns: Option<&Path>) -> Result<(), NetError> {
    netfilter::delete_table(node_netns, &table_name(bridge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::table::{desired, PortMapping, Protocol, ServiceEndpoints};

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("ip")
    }

    fn pods() -> Subnet {
        Subnet::parse("10.88.1.0/24").expect("subnet")
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
    fn vips_are_dnat_ed_from_pods_and_the_node_with_hairpin_masquerade() {
        let want = desired(&table(&["10.88.1.3", "10.88.2.3"]));
        let rules = ruleset("orch0", pods(), &want, Strategy::RoundRobin, Some(ip("192.0.2.7")), &BTreeSet::new());
        assert!(rules.starts_with("table ip orchnp_orch0\ndelete table ip orchnp_orch0\ntable ip orchnp_orch0 {"), "{rules}");
        assert!(
            rules.contains(
                "\tchain services {\n\t\tip daddr 10.96.0.10 tcp dport 80 counter dnat to numgen inc mod 2 map { 0 : 10.88.1.3, 1 : 10.88.2.3 } : 8080 comment \"service web\"\n"
            ),
            "{rules}"
        );
        assert!(rules.contains("set vips {\n\t\ttype ipv4_addr\n\t\telements = { 10.96.0.10 }"), "{rules}");
        assert!(rules.contains("priority dstnat; policy accept;\n\t\tiifname \"orch0\" ip daddr @vips jump services\n"), "from pods: {rules}");
        assert!(rules.contains("type nat hook output priority -100; policy accept;\n\t\tip daddr @vips jump services\n"), "from the node: {rules}");
        assert!(!rules.contains("dport 53"), "UDP stays with the balancer process: {rules}");
        let flows = "ct status dnat meta l4proto tcp ct original ip daddr @vips";
        assert!(rules.contains(&format!("{flows} ct original ip saddr 10.88.1.0/24 oifname \"orch0\" masquerade")), "pods of the bridge only: {rules}");
        let drop = format!("{flows} ct direction reply tcp flags & rst == rst ct status & assured == 0 drop");
        assert!(rules.contains(&format!("type filter hook forward priority filter; policy accept;\n\t\t{drop}\n")), "{rules}");
        assert!(rules.contains(&format!("type filter hook input priority filter; policy accept;\n\t\t{drop}\n")), "{rules}");
        let random = ruleset("orch0", pods(), &desired(&table(&["10.88.1.3"])), Strategy::LeastConnections, None, &BTreeSet::new());
        assert!(random.contains("counter dnat to numgen random mod 1 map { 0 : 10.88.1.3 } : 8080"), "{random}");
        let none = ruleset("orch0", pods(), &desired(&table(&[])), Strategy::RoundRobin, None, &BTreeSet::new());
        assert!(
            !none.contains("dnat to") && !none.contains("@vips") && !none.contains("masquerade"),
            "no endpoint, no rule (the process's listener closes): {none}"
        );
        assert!(none.contains("chain services {\n\t}\n"), "the chains are there, empty: {none}");
    }

    #[test]
    fn node_ports_come_from_outside_the_bridge_and_keep_the_client_address_for_local_endpoints() {
        let want = desired(&table(&["10.88.1.3", "10.88.2.3"]));
        let rules = ruleset("orch0", pods(), &want, Strategy::RoundRobin, Some(ip("192.0.2.7")), &BTreeSet::new());
        assert!(rules.contains("iifname != \"orch0\" ip daddr 192.0.2.7 tcp dport 30080 counter dnat to numgen inc mod 2 map"), "{rules}");
        assert!(rules.contains("elements = { 30080 }"), "{rules}");
        assert!(
            rules.contains("ct status dnat meta l4proto tcp ct original proto-dst @node_ports ct original ip daddr 192.0.2.7 oifname != \"orch0\" masquerade"),
            "{rules}"
        );
        assert_eq!(table_name("orch-0"), "orchnp_orch_0");
        let mut odd = table(&["10.88.1.3"]);
        odd[0].name = "we\"b".into();
        assert!(
            ruleset("orch0", pods(), &desired(&odd), Strategy::RoundRobin, None, &BTreeSet::new()).contains("comment \"service we_b\""),
            "a quote cannot end the comment"
        );
        assert!(!rules.contains("30053"), "{rules}");
        let anywhere = ruleset("orch0", pods(), &want, Strategy::RoundRobin, None, &BTreeSet::new());
        assert!(anywhere.contains("iifname != \"orch0\" fib daddr type local tcp dport 30080"), "{anywhere}");
        let held = ruleset("orch0", pods(), &want, Strategy::RoundRobin, None, &BTreeSet::from([ListenKey::NodePort(30080)]));
        assert!(
            !held.contains("dport 30080") && !held.contains("set node_ports") && !held.contains("oifname != \"orch0\" masquerade"),
            "a port another process holds is left to it: {held}"
        );
        assert!(held.contains("ip daddr 10.96.0.10 tcp dport 80 counter dnat"), "the VIP keeps its rule: {held}");
    }

    #[test]
    fn counts_come_from_the_rules_of_each_service() {
        let listing: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "orchnp_orch0"}},
                {"rule": {"chain": "prerouting", "comment": "service web", "expr": [{"counter": {"packets": 7, "bytes": 420}}, {"dnat": {}}]}},
                {"rule": {"chain": "prerouting", "comment": "service web", "expr": [{"counter": {"packets": 2, "bytes": 120}}]}},
                {"rule": {"chain": "prerouting", "comment": "service api", "expr": [{"counter": {"packets": 1, "bytes": 60}}]}},
                {"rule": {"chain": "postrouting", "expr": [{"masquerade": null}]}}]}"#,
        )
        .expect("json");
        assert_eq!(counts_in(&listing), BTreeMap::from([("web".to_owned(), 9), ("api".to_owned(), 1)]));
        assert_eq!(counts_in(&serde_json::json!({})), BTreeMap::new());
    }

    #[test]
    fn open_connections_are_those_answered_and_not_closed() {
        let listing = "tcp      6 431999 ESTABLISHED src=10.88.1.1 dst=10.96.0.10 sport=4 dport=80 src=10.88.1.3 dst=10.88.1.2 sport=80 dport=4 [ASSURED] mark=0 use=1\n\
                       tcp      6 118 CLOSE_WAIT src=10.88.1.1 dst=10.96.0.10 sport=5 dport=80 src=10.88.1.3 dst=10.88.1.2 sport=80 dport=5 [ASSURED] mark=0 use=1\n\
                       tcp      6 100 TIME_WAIT src=10.88.1.1 dst=10.96.0.10 sport=6 dport=80 src=10.88.1.3 dst=10.88.1.2 sport=80 dport=6 [ASSURED] mark=0 use=1\n\
                       tcp      6 110 SYN_SENT src=10.88.1.1 dst=10.96.0.10 sport=7 dport=80 [UNREPLIED] src=10.88.1.3 dst=10.88.1.2 sport=80 dport=7 mark=0 use=1\n";
        assert_eq!(open_connections(listing), 2);
        assert_eq!(open_connections(""), 0);
    }

    #[test]
    fn endpoints_are_those_of_tcp_listeners() {
        assert_eq!(endpoints(&desired(&table(&["10.88.1.3", "10.88.2.3"]))), BTreeSet::from([ip("10.88.1.3"), ip("10.88.2.3")]));
        assert_eq!(endpoints(&desired(&table(&[]))), BTreeSet::new());
    }
}
