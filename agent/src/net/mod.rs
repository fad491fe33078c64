//! Node networking: the bridge (vSwitch), a veth per container, IPAM, routes to other
//! nodes' pods, and the load-balancer namespace with every service VIP, an L4 balancer
//! per service port and DNS for service names; masquerade for traffic leaving the
//! cluster (`egress`, nftables); with `--data-path kernel`, TCP service ports balanced by
//! nftables DNAT instead (`dnat`). Built with rtnetlink; sockets that must
//! live in another namespace are made by a thread that entered it.

mod balancer;
pub mod balancer_process;
pub mod dnat;
mod dns;
pub mod egress;
mod error;
pub mod ipam;
mod link;
pub mod names;
mod netfilter;
pub mod netns;
mod node;
mod proxy;
mod sockets;
pub mod stats;
pub mod table;
mod udp;

pub use balancer::{Balancer, BalancerView};
pub use dnat::DataPath;
pub use dns::upstream_dns;
pub use error::NetError;
pub use ipam::{Ipam, Subnet};
pub use netns::Netns;
pub use node::{Attachment, NetworkView, NodeNetwork, NodeNetworkConfig, PeerRoute};
pub use proxy::{ConnectionLimits, Strategy};
pub use table::{ListenerFailure, PortMapping, Protocol, ServiceEndpoints};
