//! `Ipv4Cidr`: an IPv4 network and prefix length (`10.96.0.0/16`), the one CIDR type of
//! the controller, the agents and the CLI. Parsing masks the host bits off
//! (`10.88.1.7/24` is `10.88.1.0/24`); what range of prefixes a flag accepts is the
//! caller's rule ([`Ipv4Cidr::parse_with_prefix`]). Address arithmetic on a node's pod
//! subnet (gateway, balancer, allocation) is the agent's `Subnet`, built from one.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?}: expected A.B.C.D/N")]
    Syntax(String),
    #[error("{0:?}: not an IPv4 address")]
    Address(String),
    #[error("{text:?}: the prefix must be {rule}")]
    Prefix { text: String, rule: String },
    #[error("{0:?}: host bits are set")]
    HostBits(String),
}

impl Ipv4Cidr {
    /// The network of `address` under `prefix` (host bits cleared); `prefix` at most 32.
    pub fn new(address: Ipv4Addr, prefix: u8) -> Result<Ipv4Cidr, CidrError> {
        if prefix > 32 {
            return Err(CidrError::Prefix { text: format!("{address}/{prefix}"), rule: prefix_rule(0, 32) });
        }
        Ok(Ipv4Cidr { network: Ipv4Addr::from(u32::from(address) & mask(prefix)), prefix })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let shorter = self.prefix.min(other.prefix);
        u32::from(self.network) & mask(shorter) == u32::from(other.network) & mask(shorter)
    }

    /// The cluster network and the service range a cluster is given must not share an
    /// address: a VIP inside the pod network would be routed as a pod.
    pub fn check_apart(cluster: &Ipv4Cidr, services: &Ipv4Cidr) -> Result<(), String> {
        if cluster.overlaps(services) {
            return Err(format!("--cluster-cidr {cluster} and --service-cidr {services} overlap: give them apart"));
        }
        Ok(())
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// `text` as a CIDR whose prefix is within `min..=max` (each flag's own rule), the
    /// error naming the text as written.
    pub fn parse_with_prefix(text: &str, min: u8, max: u8) -> Result<Ipv4Cidr, CidrError> {
        let cidr: Ipv4Cidr = text.parse()?;
        if (min..=max).contains(&cidr.prefix) {
            Ok(cidr)
        } else {
            Err(CidrError::Prefix { text: text.to_owned(), rule: prefix_rule(min, max) })
        }
    }
}

/// The service range when none is given: 10.96.0.0/16, as Kubernetes'.
pub const DEFAULT_SERVICE_RANGE: Ipv4Cidr = Ipv4Cidr { network: Ipv4Addr::new(10, 96, 0, 0), prefix: 16 };

/// The service VIP range a cluster takes (`--service-cidr`): /8 to /28.
pub fn parse_service_range(text: &str) -> Result<Ipv4Cidr, CidrError> {
    Ipv4Cidr::parse_with_prefix(text, 8, 28)
}

/// The cluster pod network when none is given: 10.88.0.0/16 (254 nodes).
pub const DEFAULT_CLUSTER_NETWORK: Ipv4Cidr = Ipv4Cidr { network: Ipv4Addr::new(10, 88, 0, 0), prefix: 16 };

/// The cluster's pod network (`--cluster-cidr`): /8 to /16, node n getting its n-th /24
/// — a /16 holds 254 nodes, a /14 1,022, a /12 4,094.
pub fn parse_cluster_network(text: &str) -> Result<Ipv4Cidr, CidrError> {
    Ipv4Cidr::parse_with_prefix(text, 8, 16)
}

fn prefix_rule(min: u8, max: u8) -> String {
    if min == max {
        format!("/{min}")
    } else {
        format!("between {min} and {max}")
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Ipv4Cidr, CidrError> {
        let (address, prefix) = text.split_once('/').ok_or_else(|| CidrError::Syntax(text.to_owned()))?;
        let address: Ipv4Addr = address.parse().map_err(|_| CidrError::Address(text.to_owned()))?;
        let prefix: u8 = prefix.parse().map_err(|_| CidrError::Syntax(text.to_owned()))?;
        if prefix > 32 {
            return Err(CidrError::Prefix { text: text.to_owned(), rule: prefix_rule(0, 32) });
        }
        Ipv4Cidr::new(address, prefix)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl From<Ipv4Cidr> for crate::pb::Ipv4Cidr {
    fn from(cidr: Ipv4Cidr) -> crate::pb::Ipv4Cidr {
        crate::pb::Ipv4Cidr { network: u32::from(cidr.network), prefix: u32::from(cidr.prefix) }
    }
}

impl TryFrom<&crate::pb::Ipv4Cidr> for Ipv4Cidr {
    type Error = CidrError;

    /// A CIDR from the wire: the prefix at most 32 and no host bit set (a peer that
    /// sends `10.88.1.7/24` is wrong, not rounded).
    fn try_from(wire: &crate::pb::Ipv4Cidr) -> Result<Ipv4Cidr, CidrError> {
        let address = Ipv4Addr::from(wire.network);
        let text = format!("{address}/{}", wire.prefix);
        let prefix = u8::try_from(wire.prefix).ok().filter(|p| *p <= 32).ok_or_else(|| CidrError::Prefix { text: text.clone(), rule: prefix_rule(0, 32) })?;
        let cidr = Ipv4Cidr::new(address, prefix)?;
        if cidr.network != address {
            return Err(CidrError::HostBits(text));
        }
        Ok(cidr)
    }
}

/// A CIDR a record or message carries twice, typed and as text (for peers of earlier
/// builds, which know only the text): the typed one when it is set.
pub fn from_wire(typed: Option<&crate::pb::Ipv4Cidr>, text: &str) -> Result<Ipv4Cidr, CidrError> {
    match typed {
        Some(typed) => Ipv4Cidr::try_from(typed),
        None => text.parse(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_masks_and_says_what_is_wrong() {
        let cidr: Ipv4Cidr = "10.88.1.7/24".parse().expect("valid");
        assert_eq!((cidr.network(), cidr.prefix(), cidr.to_string()), (Ipv4Addr::new(10, 88, 1, 0), 24, "10.88.1.0/24".to_owned()));
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().map(|c| c.prefix()), Ok(0));
        for (bad, message) in
            [("10.0.0.0", "expected A.B.C.D/N"), ("10.0.0/8", "not an IPv4 address"), ("10.0.0.0/x", "expected"), ("10.0.0.0/33", "between 0 and 32")]
        {
            let error = bad.parse::<Ipv4Cidr>().expect_err(bad).to_string();
            assert!(error.contains(message) && error.contains(bad), "{bad}: {error}");
        }
        assert_eq!(parse_cluster_network("10.88.0.0/16").map(|c| c.prefix()), Ok(16));
        assert_eq!(parse_cluster_network("10.64.0.0/14").map(|c| c.prefix()), Ok(14));
        let (wide, services) = (parse_cluster_network("10.0.0.0/8").expect("a /8"), DEFAULT_SERVICE_RANGE);
        assert!(wide.overlaps(&services) && services.overlaps(&wide), "10.96.0.0/16 is inside 10.0.0.0/8");
        assert!(Ipv4Cidr::check_apart(&wide, &services).is_err());
        assert!(Ipv4Cidr::check_apart(&DEFAULT_CLUSTER_NETWORK, &services).is_ok(), "the defaults are apart");
        assert_eq!(parse_cluster_network("10.88.0.0/16"), Ok(DEFAULT_CLUSTER_NETWORK), "the flags' default text");
        assert_eq!(parse_cluster_network("10.88.0.0/24").map_err(|e| e.to_string()), Err("\"10.88.0.0/24\": the prefix must be between 8 and 16".to_owned()));
        assert!(parse_service_range("10.96.0.0/30").is_err());
        assert_eq!(parse_service_range("10.96.0.0/16"), Ok(DEFAULT_SERVICE_RANGE), "the flags' default text");
        let wire = crate::pb::Ipv4Cidr::from(cidr);
        assert_eq!((wire.network, wire.prefix), (0x0a58_0100, 24));
        assert_eq!(Ipv4Cidr::try_from(&wire), Ok(cidr), "there and back");
        assert_eq!(from_wire(Some(&wire), "garbage"), Ok(cidr), "typed first");
        assert_eq!(from_wire(None, "10.88.1.0/24"), Ok(cidr), "the text of an earlier build");
        let host_bits = crate::pb::Ipv4Cidr { network: 0x0a58_0107, prefix: 24 };
        assert_eq!(Ipv4Cidr::try_from(&host_bits).map_err(|e| e.to_string()), Err("\"10.88.1.7/24\": host bits are set".to_owned()));
        assert!(Ipv4Cidr::try_from(&crate::pb::Ipv4Cidr { network: 0, prefix: 33 }).is_err());
        assert_eq!(
            Ipv4Cidr::parse_with_prefix("10.0.0.0/4", 8, 28).map_err(|e| e.to_string()),
            Err("\"10.0.0.0/4\": the prefix must be between 8 and 28".to_owned()),
            "the text as written, not its network"
        );
    }
}
