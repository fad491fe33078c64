//! Node pod subnets: node *n* gets the *n*-th /24 of the cluster's pod network
//! (10.88.n.0/24 by default). Pure; the registry claims an index by compare-and-swap.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The pod subnet of node index `n` (1-based) in `cluster` (a /16): `A.B.n.0/24`.
pub fn node_subnet(cluster: Ipv4Addr, n: u8) -> String {
    let [a, b, _, _] = cluster.octets();
    format!("{a}.{b}.{n}.0/24")
}

/// The lowest index in 1..=254 not in `used`.
pub fn next_free_index(used: &BTreeSet<u8>) -> Option<u8> {
    (1..=254).find(|n| !used.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_indexes() {
        assert_eq!(node_subnet(Ipv4Addr::new(10, 88, 0, 0), 3), "10.88.3.0/24");
        assert_eq!(next_free_index(&BTreeSet::new()), Some(1));
        assert_eq!(next_free_index(&BTreeSet::from([1, 2, 4])), Some(3));
        let full: BTreeSet<u8> = (1..=254).collect();
        assert_eq!(next_free_index(&full), None);
    }
}
