//! Service VIPs: the next free address of the service range. Pure; the caller claims
//! the address in the store by compare-and-swap, so two controllers never hand out the
//! same one.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The first free address of `network/prefix` after its first ten (kept for the
/// cluster's own use, as Kubernetes keeps .1 for its API), or `None` when full.
pub fn next_free_vip(network: Ipv4Addr, prefix: u8, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let base = u32::from(network) & (u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
    let size = 1u64 << (32 - u32::from(prefix));
    (10..size.saturating_sub(1)).map(|offset| Ipv4Addr::from(base + u32::try_from(offset).unwrap_or(0))).find(|candidate| !used.contains(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_free_after_the_reserved() {
        let net = Ipv4Addr::new(10, 96, 0, 0);
        assert_eq!(next_free_vip(net, 16, &BTreeSet::new()), Some(Ipv4Addr::new(10, 96, 0, 10)));
        let used = BTreeSet::from([Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 96, 0, 11)]);
        assert_eq!(next_free_vip(net, 16, &used), Some(Ipv4Addr::new(10, 96, 0, 12)));
        let tiny: BTreeSet<Ipv4Addr> = (10..15).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(next_free_vip(Ipv4Addr::new(10, 0, 0, 0), 28, &tiny), None, "/28: .10-.14 usable, all used");
    }
}
