//! Linux interface names (at most 15 bytes) for what the agent creates.

use sha2::{Digest, Sha256};

use super::NetError;

pub const MAX_NAME: usize = 15;

pub fn check(name: &str) -> Result<(), NetError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(NetError::NameTooLong(name.to_owned()));
    }
    Ok(())
}

/// The host end of a container's veth: `v` and 12 hex digits of a hash of the bridge and
/// the container id, so names are stable for a container and distinct across bridges.
pub fn container_veth(bridge: &str, container: &str) -> String {
    let digest = Sha256::digest(format!("{bridge}/{container}").as_bytes());
    format!("v{}", &hex::encode(digest)[..12])
}

/// Whether `name` is shaped as [`container_veth`] makes them.
pub fn is_container_veth(name: &str) -> bool {
    name.len() == 13 && name.starts_with('v') && name[1..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The host end of the load-balancer namespace's veth.
pub fn lb_veth(bridge: &str) -> Result<String, NetError> {
    let name = format!("{bridge}l");
    check(&name)?;
    Ok(name)
}

/// The load-balancer namespace's name (under /run/netns).
pub fn lb_netns(bridge: &str) -> String {
    format!("{bridge}-lb")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_limits() {
        let veth = container_veth("orch0", "webapp-7f9c2-0");
        assert_eq!(veth.len(), 13);
        assert_ne!(veth, container_veth("orch1", "webapp-7f9c2-0"));
        assert_eq!(veth, container_veth("orch0", "webapp-7f9c2-0"));
        assert!(is_container_veth(&veth));
        assert!(!is_container_veth("orch0l") && !is_container_veth("vethabcdef123") && !is_container_veth("eth0"));
        assert_eq!(lb_veth("orch0").expect("fits"), "orch0l");
        assert!(lb_veth("fifteen-chars-x").is_err());
        assert!(check("").is_err() && check("sixteen-chars-xx").is_err());
    }
}
