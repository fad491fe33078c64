//! The rtnetlink operations the node network is built from, each idempotent where the
//! agent repairs state at start (an existing bridge, address or route is fine).

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::NetError;

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const ESRCH: i32 = 3;

fn errno_of(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|c| -c.get()),
        _ => None,
    }
}

pub async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if errno_of(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(NetError::netlink(format!("look up {name}"))(e)),
    }
}

pub async fn require_index(handle: &Handle, name: &str) -> Result<u32, NetError> {
    index_of(handle, name).await?.ok_or_else(|| NetError::NoSuchLink(name.to_owned()))
}

/// The bridge `name`, created if missing, with the MAC address `mac`, and up.
///
/// A Linux bridge given no address of its own takes the lowest of its ports' and
/// changes it whenever a port with a lower one joins or the lowest leaves — with
/// containers coming and going, every few starts. Whoever cached the old one (the
/// balancer namespace, every container: the bridge is their gateway) then sends to an
/// address nobody has until its ARP entry is probed again, seconds later: a response
/// relayed through a VIP at that moment waited 10 s in retransmissions (seen in the
/// rollout tests). A bridge whose address was set keeps it, as Docker's and CNI's do.
///
/// The caller turns `arp_notify` on for the bridge first: when an existing bridge (an
/// upgraded node's) gets its address here, the kernel tells the neighbours at once.
pub async fn ensure_bridge(handle: &Handle, name: &str, mac: [u8; 6]) -> Result<u32, NetError> {
    if index_of(handle, name).await?.is_none() {
        match handle.link().add(LinkBridge::new(name).build()).execute().await {
            Ok(()) => {}
            Err(e) if errno_of(&e) == Some(EEXIST) => {}
            Err(e) => return Err(NetError::netlink(format!("create bridge {name}"))(e)),
        }
    }
    let index = require_index(handle, name).await?;
    set_mac(handle, index, name, mac).await?;
    set_up(handle, index, name).await?;
    Ok(index)
}

pub async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    handle.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.map_err(NetError::netlink(format!("set {name} up")))
}

/// Sets the link's MAC address.
pub async fn set_mac(handle: &Handle, index: u32, name: &str, mac: [u8; 6]) -> Result<(), NetError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).address(mac.to_vec()).build())
        .execute()
        .await
        .map_err(NetError::netlink(format!("set the MAC address of {name}")))
}

/// An interface's MAC address derived from its IPv4 address (Docker's `02:42:a:b:c:d`):
/// a replica restarted with the same address keeps the same MAC, so neighbours' ARP
/// caches stay right and traffic resumes at once; a bridge keeps its gateway's.
pub fn mac_for(address: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = address.octets();
    [0x02, 0x42, a, b, c, d]
}

/// Adds `address/prefix` to the link; an address already there is fine.
pub async fn add_address(handle: &Handle, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
    match handle.address().add(index, address.into(), prefix).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno_of(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(NetError::netlink(format!("add {address}/{prefix}"))(e)),
    }
}

/// Removes `address/prefix` from the link; a missing one is fine.
pub async fn delete_address(handle: &Handle, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
    let mut addresses = handle.address().get().set_link_index_filter(index).set_address_filter(address.into()).execute();
    while let Some(message) = addresses.try_next().await.map_err(NetError::netlink(format!("list addresses for {address}")))? {
        if message.header.prefix_len == prefix {
            match handle.address().del(message).execute().await {
                Ok(()) => {}
                Err(e) if errno_of(&e) == Some(ENODEV) => {}
                Err(e) => return Err(NetError::netlink(format!("delete {address}/{prefix}"))(e)),
            }
        }
    }
    Ok(())
}

/// `ip route replace DEST/PREFIX via GATEWAY`.
pub async fn replace_route(handle: &Handle, destination: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> Result<(), NetError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(destination, prefix).gateway(gateway).build();
    handle.route().add(route).replace().execute().await.map_err(NetError::netlink(format!("route {destination}/{prefix} via {gateway}")))
}

/// `ip route del DEST/PREFIX`; a missing route is fine.
pub async fn delete_route(handle: &Handle, destination: Ipv4Addr, prefix: u8) -> Result<(), NetError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(destination, prefix).build();
    match handle.route().del(route).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno_of(&e) == Some(ESRCH) => Ok(()),
        Err(e) => Err(NetError::netlink(format!("delete route {destination}/{prefix}"))(e)),
    }
}

/// A veth pair: `host` stays here, attached to the bridge `bridge_index` and up;
/// `peer` is made in the namespace `netns_fd` as `peer_name`, in one request. Returns
/// `host`'s index. (Made in place, not moved there: a device that changes namespace
/// waits for an RCU grace period, 20–60 ms of every container start on the 3-node lab
/// sharing 2 cores against ~3 ms for the whole pair — the attach's debug line shows it.)
pub async fn add_veth_into(handle: &Handle, host: &str, bridge_index: u32, netns_fd: i32, peer_name: &str) -> Result<u32, NetError> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new().name(peer_name.to_owned()).setns_by_fd(netns_fd).build();
    let pair = LinkVeth::new(host, peer_name).set_info_data(InfoData::Veth(InfoVeth::Peer(peer))).controller(bridge_index).up().build();
    handle.link().add(pair).execute().await.map_err(NetError::netlink(format!("create veth {host} (its peer {peer_name} in the container, on the bridge)")))?;
    require_index(handle, host).await
}

/// Lets the bridge send a frame back out of the port `index` it came in on (hairpin
/// mode, as kubelet's `hairpin-veth`): with `br_netfilter` loaded (Docker loads it), a
/// pod's connection to a VIP that the node DNATs to the pod itself is bridged back to
/// its own port, which a bridge otherwise drops.
pub async fn set_hairpin(handle: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    handle
        .link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(NetError::netlink(format!("set hairpin mode on the bridge port {name}")))
}

/// The ports of the bridge `bridge_index`: each link it controls, by index and name.
pub async fn ports_of(handle: &Handle, bridge_index: u32) -> Result<Vec<(u32, String)>, NetError> {
    let mut links = handle.link().get().execute();
    let mut ports = Vec::new();
    while let Some(link) = links.try_next().await.map_err(NetError::netlink("list the links"))? {
        if !link.attributes.iter().any(|a| matches!(a, LinkAttribute::Controller(index) if *index == bridge_index)) {
            continue;
        }
        let name = link.attributes.iter().find_map(|a| if let LinkAttribute::IfName(name) = a { Some(name.clone()) } else { None });
        ports.push((link.header.index, name.unwrap_or_default()));
    }
    Ok(ports)
}

/// Deletes the link `name`; a missing one is fine.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<(), NetError> {
    let Some(index) = index_of(handle, name).await? else { return Ok(()) };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno_of(&e) == Some(ENODEV) => Ok(()),
        Err(e) => Err(NetError::netlink(format!("delete {name}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_follow_addresses() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 88, 1, 7)), [0x02, 0x42, 10, 88, 1, 7]);
        assert_eq!(mac_for(Ipv4Addr::new(10, 88, 1, 7))[0] & 0x01, 0, "unicast");
    }
}
