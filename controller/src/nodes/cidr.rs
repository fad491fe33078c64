//! Node pod subnets: node *n* gets the *n*-th /24 of the cluster's pod network
//! (10.88.n.0/24 by default; a /16 holds 254 nodes, a /14 1,022). Pure; the registry
//! claims an index by compare-and-swap.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use orch_api::cidr::Ipv4Cidr;

/// The pod subnet of node index `n` (1-based) in `cluster`: its `n`-th /24.
pub fn node_subnet(cluster: Ipv4Cidr, n: u32) -> String {
    let network = u32::from(cluster.network()).wrapping_add(n << 8);
    format!("{}/24", Ipv4Addr::from(network))
}

/// How many /24s `cluster` has (the first and the last are never given out).
pub fn subnet_count(cluster: Ipv4Cidr) -> u32 {
    1 << (24 - u32::from(cluster.prefix().min(24)))
}

/// The lowest index in 1..count-1 not in `used`.
pub fn next_free_index(used: &BTreeSet<u32>, count: u32) -> Option<u32> {
    (1..count.saturating_sub(1)).find(|n| !used.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_indexes() {
        let sixteen: Ipv4Cidr = "10.88.0.0/16".parse().expect("cidr");
        assert_eq!(node_subnet(sixteen, 3), "10.88.3.0/24");
        assert_eq!(subnet_count(sixteen), 256);
        assert_eq!(next_free_index(&BTreeSet::new(), 256), Some(1));
        assert_eq!(next_free_index(&BTreeSet::from([1, 2, 4]), 256), Some(3));
        let full: BTreeSet<u32> = (1..=254).collect();
        assert_eq!(next_free_index(&full, 256), None, "a /16: 254 nodes");
        let fourteen: Ipv4Cidr = "10.64.0.0/14".parse().expect("cidr");
        assert_eq!(subnet_count(fourteen), 1024);
        assert_eq!(next_free_index(&full, 1024), Some(255));
        assert_eq!(node_subnet(fourteen, 255), "10.64.255.0/24");
        assert_eq!(node_subnet(fourteen, 256), "10.65.0.0/24", "past the first /16");
        assert_eq!(node_subnet(fourteen, 1022), "10.67.254.0/24");
        let all: BTreeSet<u32> = (1..=1022).collect();
        assert_eq!(next_free_index(&all, 1024), None, "a /14: 1,022 nodes");
    }
}
