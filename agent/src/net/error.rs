use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid subnet {0}")]
    InvalidSubnet(String),
    #[error("subnet {0} has no free address left")]
    Exhausted(String),
    #[error("{address} is not in subnet {subnet}")]
    OutsideSubnet { address: Ipv4Addr, subnet: String },
    #[error("interface name {0:?} is longer than 15 characters")]
    NameTooLong(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{syscall} failed: {errno}")]
    Syscall { syscall: &'static str, errno: nix::errno::Errno },
    #[error("netlink: {what}: {source}")]
    Netlink { what: String, source: rtnetlink::Error },
    #[error("interface {0} not found")]
    NoSuchLink(String),
    #[error("IPAM state {path}: {reason}")]
    IpamState { path: PathBuf, reason: String },
    #[error("network namespace thread failed: {0}")]
    Thread(String),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("the node's balancer process: {0}")]
    Balancer(String),
    #[error("{command}: {message}")]
    Netfilter { command: String, message: String },
}

impl NetError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> NetError {
        let path = path.into();
        move |source| NetError::Io { what, path, source }
    }

    pub fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
        let what = what.into();
        move |source| NetError::Netlink { what, source }
    }
}
