//! The kernel data path (`--data-path kernel`): TCP service ports balanced by nftables
//! DNAT, so connections go with no userspace hop and keep going whatever happens to the
//! agent or the balancer process (rules and conntrack entries live in the kernel).
//!
//! - VIPs, in the balancer namespace (table `ip orch_lb`): a packet to VIP:port — the
//!   node routes the service range there — is DNAT'd to an endpoint `numgen` picks and
//!   masqueraded to the namespace's address (.2), so the reply comes back the same way.
//!   Backends see .2, as they see the userspace proxy.
//! - Node ports, in the node's namespace (table `ip orchnp_<bridge>`): a packet that
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use super::egress;
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

/// The table of VIP rules, in the balancer namespace (which is the node network's own).
pub const VIP_TABLE: &str = "orch_lb";

/// The table of node-port rules of the node network on `bridge`, in the node's namespace
/// (`orchnp_`: never the name of another bridge's egress table, `orch_…`).
pub fn ports_table(bridge: &str) -> String {
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

/// The nft script for the balancer namespace: each TCP VIP port with endpoints DNAT'd
/// over them, masquerade, the early-RST drop; it forwards nothing else (the node routes
/// the whole service range here: an address no VIP holds would bounce between the two
/// until its TTL ran out, so it is refused at once). Listeners with no endpoint have no
/// rule (the balancer process's listener closes such connections).
pub fn vip_ruleset(desired: &DesiredBalancer, strategy: Strategy) -> String {
    let mut rules = String::new();
    for (key, endpoints) in &desired.listeners {
        if let (ListenKey::Vip(vip), Some(dnat)) = (key, dnat(endpoints, strategy)) {
            let service = comment_safe(desired.owners.get(key).map_or("", String::as_str));
            let _ = writeln!(rules, "\t\tip daddr {} tcp dport {} {dnat} comment \"service {service}\"", vip.ip(), vip.port());
        }
    }
    format!(
        "table ip {VIP_TABLE}\ndelete table ip {VIP_TABLE}\ntable ip {VIP_TABLE} {{\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{rules}\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tct status dnat masquerade\n\t}}\n\
         \tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tct status dnat {DROP_EARLY_RST}\n\t\tct status dnat accept\n\t\tcounter reject with icmp type host-unreachable\n\t}}\n}}\n"
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
            let service = comment_safe(desired.owners.get(key).map_or("", String::as_str));
            let _ = writeln!(rules, "\t\tiifname != \"{bridge}\" {to_node} tcp dport {port} {dnat} comment \"service {service}\"");
            ports.push(port.to_string());
        }
    }
    // The flows these rules DNAT'd (not another program's DNAT to the same ports).
    let to_here = node_address.map(|address| format!(" ct original ip daddr {address}")).unwrap_or_default();
    let (set, flows) = if ports.is_empty() {
        (String::new(), None)
    } else {
        (
            format!("\tset node_ports {{\n\t\ttype inet_service\n\t\telements = {{ {} }}\n\t}}\n", ports.join(", ")),
            Some(format!("ct status dnat meta l4proto tcp ct original proto-dst @node_ports{to_here}")),
        )
    };
    let masquerade = flows.as_ref().map(|flows| format!("\t\t{flows} oifname != \"{bridge}\" masquerade\n")).unwrap_or_default();
    let drop_rst = flows.as_ref().map(|flows| format!("\t\t{flows} {DROP_EARLY_RST}\n")).unwrap_or_default();
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

/// The kernel path of one node network: its two namespaces, what it applied last, and
/// its connection counters.
pub struct KernelPath {
    bridge: String,
    vip_netns: PathBuf,
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
    /// The VIP and node-port rulesets in the kernel (none: unknown, both are written).
    rulesets: Option<[String; 2]>,
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
    pub fn new(
        bridge: &str,
        vip_netns: PathBuf,
        node_netns: Option<PathBuf>,
        node_address: Option<Ipv4Addr>,
        strategy: Strategy,
    ) -> Result<KernelPath, NetError> {
        netfilter::run(None, "conntrack", &["--version"], None)?;
        Ok(KernelPath {
            bridge: bridge.to_owned(),
            vip_netns,
            node_netns,
            node_address,
            strategy,
            applied: std::sync::Mutex::default(),
            metrics: KernelPathMetrics::default(),
            counted: std::sync::Mutex::default(),
        })
    }

    /// What both tables counted now, by service (a table that is missing counts nothing;
    /// one that cannot be read is logged).
    fn counts_now(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for (netns, table) in self.sides() {
            add_counts(&mut counts, counts_of(netns, &table));
        }
        counts
    }

    /// The balancer namespace with its table, and the node's with its.
    fn sides(&self) -> [(Option<&Path>, String); 2] {
        [(Some(self.vip_netns.as_path()), VIP_TABLE.to_owned()), (self.node_netns.as_deref(), ports_table(&self.bridge))]
    }

    /// Its metrics (for the agent's registry).
    pub fn metrics(&self) -> &KernelPathMetrics {
        &self.metrics
    }

    /// Brings the metrics up to the tables' counters (blocking: runs `nft`).
    pub fn refresh_metrics(&self) {
        let now = self.counts_now();
        let mut totals = self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner).counted.clone();
        add_counts(&mut totals, now);
        self.metrics.follow(&totals);
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
        let rulesets = [vip_ruleset(desired, self.strategy), node_port_ruleset(&self.bridge, desired, self.strategy, self.node_address, &applied.failed)];
        let now = endpoints(desired);
        let gone: Vec<Ipv4Addr> = applied.endpoints.difference(&now).copied().collect();
        let before = applied.rulesets.clone();
        // Both namespaces at once (an nft transaction takes ~20 ms on a small VM): each
        // table replaced when its ruleset changed — its counters kept first, as they go
        // with it —, then the unanswered connections to endpoints that left forgotten.
        let sides = self.sides();
        let outcomes: Vec<(Result<(), NetError>, BTreeMap<String, u64>)> = std::thread::scope(|scope| {
            let work: Vec<_> = sides
                .iter()
                .zip(&rulesets)
                .enumerate()
                .map(|(i, ((netns, table), ruleset))| {
                    let changed = before.as_ref().is_none_or(|b| b[i] != *ruleset);
                    let gone = &gone;
                    scope.spawn(move || {
                        let mut counted = BTreeMap::new();
                        if changed {
                            counted = counts_of(*netns, table);
                            if let Err(error) = netfilter::run(*netns, "nft", &["-f", "-"], Some(ruleset)) {
                                return (Err(error), BTreeMap::new());
                            }
                        }
                        for endpoint in gone {
                            if let Err(error) = forget_unanswered(*netns, *endpoint) {
                                tracing::warn!(%endpoint, %error, "forgetting connections not yet answered by an endpoint that left");
                            }
                        }
                        (Ok(()), counted)
                    })
                })
                .collect();
            work.into_iter()
                .map(|handle| handle.join().unwrap_or_else(|_| (Err(NetError::Thread("applying the kernel path panicked".into())), BTreeMap::new())))
                .collect()
        });
        let mut result = Ok(());
        for (outcome, counted) in outcomes {
            add_counts(&mut applied.counted, counted);
            if result.is_ok() {
                result = outcome;
            }
        }
        // A failed side is tried again with the next apply (its ruleset is not recorded).
        applied.rulesets = result.is_ok().then_some(rulesets);
        applied.endpoints = now;
        result
    }

    /// The open TCP connections the kernel path carries to `ip` now (DNAT'd ones: not a
    /// pod's own connection to it). A count is kept for [`COUNT_KEPT`]: drains ask often,
    /// and each count lists conntrack twice.
    pub fn open_to(&self, ip: Ipv4Addr) -> usize {
        let now = std::time::Instant::now();
        let mut counted = self.counted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counted.retain(|_, (at, _)| now.duration_since(*at) < COUNT_KEPT);
        if let Some((_, count)) = counted.get(&ip) {
            return *count;
        }
        let address = ip.to_string();
        let count = [Some(self.vip_netns.as_path()), self.node_netns.as_deref()]
            .into_iter()
            .map(|netns| match netfilter::run(netns, "conntrack", &["-L", "-p", "tcp", "--reply-src", &address, "--dst-nat"], None) {
                Ok(listing) => open_connections(&listing),
                Err(error) => {
                    tracing::warn!(%error, "counting the connections to {address}: taken as none");
                    0
                }
            })
            .sum();
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
            rules.contains(
                "ip daddr 10.96.0.10 tcp dport 80 counter dnat to numgen inc mod 2 map { 0 : 10.88.1.3, 1 : 10.88.2.3 } : 8080 comment \"service web\"\n"
            ),
            "{rules}"
        );
        assert!(!rules.contains("dport 53"), "UDP stays with the balancer process: {rules}");
        assert!(rules.contains("ct status dnat masquerade"), "{rules}");
        assert!(rules.contains("ct status dnat ct direction reply tcp flags & rst == rst ct status & assured == 0 drop"), "{rules}");
        assert!(rules.contains("ct status dnat accept\n\t\tcounter reject with icmp type host-unreachable\n"), "nothing else is forwarded: {rules}");
        let random = vip_ruleset(&desired(&table(&["10.88.1.3"])), Strategy::LeastConnections);
        assert!(random.contains("counter dnat to numgen random mod 1 map { 0 : 10.88.1.3 } : 8080"), "{random}");
        let none = vip_ruleset(&desired(&table(&[])), Strategy::RoundRobin);
        assert!(!none.contains("dnat to"), "no endpoint, no rule (the process's listener closes): {none}");
    }

    #[test]
    fn node_ports_come_from_outside_the_bridge_and_keep_the_client_address_for_local_endpoints() {
        let want = desired(&table(&["10.88.1.3", "10.88.2.3"]));
        let rules = node_port_ruleset("orch0", &want, Strategy::RoundRobin, Some(ip("192.0.2.7")), &BTreeSet::new());
        assert!(rules.starts_with("table ip orchnp_orch0\ndelete table ip orchnp_orch0\n"), "{rules}");
        assert!(rules.contains("iifname != \"orch0\" ip daddr 192.0.2.7 tcp dport 30080 counter dnat to numgen inc mod 2 map"), "{rules}");
        assert!(rules.contains("elements = { 30080 }"), "{rules}");
        assert!(
            rules.contains("ct status dnat meta l4proto tcp ct original proto-dst @node_ports ct original ip daddr 192.0.2.7 oifname != \"orch0\" masquerade"),
            "{rules}"
        );
        assert_eq!(ports_table("orch-0"), "orchnp_orch_0");
        let mut odd = table(&["10.88.1.3"]);
        odd[0].name = "we\"b".into();
        assert!(vip_ruleset(&desired(&odd), Strategy::RoundRobin).contains("comment \"service we_b\""), "a quote cannot end the comment");
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
    fn counts_come_from_the_rules_of_each_service() {
        let listing: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "orch_lb"}},
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
