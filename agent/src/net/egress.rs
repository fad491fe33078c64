//! A way out: container traffic that leaves the cluster — not to a pod subnet, not to a
//! service VIP — is masqueraded to the node's own address on the way out, as Docker,
//! kube-proxy and flannel do, so the outside answers without knowing the pod network.
//!
//! The rules live in an nftables table of orch's own per node network
//! (`ip orch_<bridge>`), replaced whole in one transaction (`nft -f -`, the `nft` of
//! Debian's `nftables`), and deleted with the network. The ruleset is a pure function.

use std::path::Path;

use super::ipam::Subnet;
use super::netfilter;
use super::NetError;

/// The egress rules of one node network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    pub bridge: String,
    /// This node's pod subnet: the sources that are masqueraded.
    pub pod_subnet: Subnet,
    /// Every node's pods (pod-to-pod keeps its addresses) and the service range.
    pub cluster: Subnet,
    pub services: Subnet,
}

/// The nftables table of the node network on `bridge` (nft names allow letters, digits
/// and `_`).
pub fn table_name(bridge: &str) -> String {
    format!("orch_{}", nft_safe(bridge))
}

/// `bridge` as part of an nft name: letters, digits, and `_` for anything else.
pub fn nft_safe(bridge: &str) -> String {
    bridge.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

impl Egress {
    /// The nft script: creates the table if it is missing, deletes it and adds it back
    /// with the rule, all in one transaction (no moment without masquerade, nothing
    /// stale kept).
    pub fn ruleset(&self) -> String {
        let table = table_name(&self.bridge);
        format!(
            "table ip {table}\ndelete table ip {table}\ntable ip {table} {{\n\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {pods} ip daddr != {{ {cluster}, {services} }} oifname != \"{bridge}\" masquerade comment \"orch: pods leaving the cluster\"\n\
             \t}}\n}}\n",
            pods = self.pod_subnet,
            cluster = self.cluster,
            services = self.services,
            bridge = self.bridge,
        )
    }

    /// Installs (or replaces) the table in the node's network namespace (`netns`, the
    /// agent's own when `None`).
    pub fn apply(&self, netns: Option<&Path>) -> Result<(), NetError> {
        netfilter::run(netns, "nft", &["-f", "-"], Some(&self.ruleset())).map(drop)
    }
}

/// Deletes the table of the node network on `bridge`; a missing one is fine.
pub fn remove(bridge: &str, netns: Option<&Path>) -> Result<(), NetError> {
    netfilter::delete_table(netns, &table_name(bridge))
}

/// Whether the table of the node network on `bridge` exists.
pub fn present(bridge: &str, netns: Option<&Path>) -> Result<bool, NetError> {
    netfilter::has_table(netns, &table_name(bridge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_masquerades_only_what_leaves_the_cluster() {
        let egress = Egress {
            bridge: "orch-0".into(),
            pod_subnet: Subnet::parse("10.88.1.0/24").expect("subnet"),
            cluster: Subnet::parse("10.88.0.0/16").expect("subnet"),
            services: Subnet::parse("10.96.0.0/16").expect("subnet"),
        };
        let rules = egress.ruleset();
        assert!(rules.starts_with("table ip orch_orch_0\ndelete table ip orch_orch_0\ntable ip orch_orch_0 {"), "{rules}");
        assert!(rules.contains("ip saddr 10.88.1.0/24 ip daddr != { 10.88.0.0/16, 10.96.0.0/16 } oifname != \"orch-0\" masquerade"), "{rules}");
        assert!(rules.contains("type nat hook postrouting priority srcnat"));
        assert_eq!(table_name("olabb1"), "orch_olabb1");
    }
}
