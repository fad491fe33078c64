//! IP address management for a node's pod subnet: a pure allocator over a small state
//! (`allocate`, `release`), persisted in a JSON file under the agent's state directory
//! and changed under an exclusive file lock, so an address is never handed out twice,
//! even across agent restarts or two processes.
//!
//! Reserved: the network address, the gateway (.1, on the bridge), the load-balancer
//! namespace (.2) and the broadcast address. Allocation is next-fit after the last
//! address handed out (as CNI's host-local), so a released address is not reused at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use orch_api::cidr::Ipv4Cidr;
use serde::{Deserialize, Serialize};

use super::NetError;

/// An IPv4 subnet, e.g. `10.88.1.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// A node's subnet from its text: any [`Ipv4Cidr`] from /8 to /30 (room for the
    /// gateway, the balancer and at least one pod).
    pub fn parse(text: &str) -> Result<Subnet, NetError> {
        let cidr = Ipv4Cidr::parse_with_prefix(text, 8, 30).map_err(|e| NetError::InvalidSubnet(e.to_string()))?;
        Ok(Subnet::from(cidr))
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.network)
    }

    /// The n-th address of the subnet (0 is the network address).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    pub fn size(&self) -> u32 {
        1 << (32 - u32::from(self.prefix))
    }

    /// The bridge's address, the pods' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The load-balancer namespace's address: VIPs are routed to it, DNS answers on it.
    pub fn lb_address(&self) -> Ipv4Addr {
        self.nth(2)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        self.nth(self.size() - 1)
    }

    /// The subnet of `prefix` bits holding this one (itself when it is no longer): the
    /// cluster's /16 around a node's /24 when no controller says otherwise.
    pub fn supernet(&self, prefix: u8) -> Subnet {
        let prefix = prefix.min(self.prefix);
        let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
        Subnet { network: Ipv4Addr::from(u32::from(self.network) & mask), prefix }
    }

    fn is_reserved(&self, address: Ipv4Addr) -> bool {
        address == self.network || address == self.gateway() || address == self.lb_address() || address == self.broadcast()
    }
}

impl From<Ipv4Cidr> for Subnet {
    fn from(cidr: Ipv4Cidr) -> Subnet {
        Subnet { network: cidr.network(), prefix: cidr.prefix() }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Who holds which address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamState {
    pub allocations: BTreeMap<Ipv4Addr, String>,
    /// The last address handed out: the next search starts after it.
    pub last: Option<Ipv4Addr>,
}

/// The owner's address: the one it holds, else the next free one after the last handed
/// out. Idempotent per owner.
pub fn allocate(state: &mut IpamState, subnet: &Subnet, owner: &str) -> Result<Ipv4Addr, NetError> {
    if let Some((address, _)) = state.allocations.iter().find(|(_, o)| o.as_str() == owner) {
        return Ok(*address);
    }
    let size = subnet.size();
    let start = state.last.filter(|a| subnet.contains(*a)).map_or(0, |a| u32::from(a) - u32::from(subnet.network));
    for step in 1..=size {
        let candidate = subnet.nth((start + step) % size);
        if !subnet.is_reserved(candidate) && !state.allocations.contains_key(&candidate) {
            state.allocations.insert(candidate, owner.to_owned());
            state.last = Some(candidate);
            return Ok(candidate);
        }
    }
    Err(NetError::Exhausted(subnet.to_string()))
}

/// Frees the owner's address, if it holds one.
pub fn release(state: &mut IpamState, owner: &str) -> Option<Ipv4Addr> {
    let address = state.allocations.iter().find(|(_, o)| o.as_str() == owner).map(|(a, _)| *a)?;
    state.allocations.remove(&address);
    Some(address)
}

/// The persisted allocator of one node subnet.
#[derive(Debug, Clone)]
pub struct Ipam {
    path: PathBuf,
    /// Locked to change `path`, which is replaced by rename (so it cannot carry the lock).
    lock: PathBuf,
    subnet: Subnet,
}

impl Ipam {
    pub fn new(path: &Path, lock: &Path, subnet: Subnet) -> Ipam {
        Ipam { path: path.to_owned(), lock: lock.to_owned(), subnet }
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Runs `change` on the state under an exclusive lock (on `lock`) and saves it
    /// atomically. A missing file is an empty
    /// state; an empty or unreadable one is an error that names the file — never taken
    /// as "no address in use", which would hand live addresses out again.
    fn update<T>(&self, change: impl FnOnce(&mut IpamState) -> Result<T, NetError>) -> Result<T, NetError> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(NetError::io("cannot create", parent))?;
        }
        let lock_path = &self.lock;
        let lock =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(lock_path).map_err(NetError::io("cannot open", lock_path))?;
        let _locked = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| NetError::Syscall { syscall: "flock", errno })?;
        let mut state: IpamState = match std::fs::read(&self.path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
                return Err(NetError::IpamState {
                    path: self.path.clone(),
                    reason: "the file is empty (a write was cut short?); restore it, or remove it to forget every allocation".into(),
                })
            }
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NetError::IpamState { path: self.path.clone(), reason: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => IpamState::default(),
            Err(e) => return Err(NetError::io("cannot read", &self.path)(e)),
        };
        let result = change(&mut state)?;
        let json = serde_json::to_vec_pretty(&state).map_err(|e| NetError::IpamState { path: self.path.clone(), reason: e.to_string() })?;
        crate::state_dir::write_atomically(&self.path, &json).map_err(NetError::io("cannot write", &self.path))?;
        Ok(result)
    }

    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, NetError> {
        let subnet = self.subnet;
        self.update(|state| allocate(state, &subnet, owner))
    }

    pub fn release(&self, owner: &str) -> Result<Option<Ipv4Addr>, NetError> {
        self.update(|state| Ok(release(state, owner)))
    }

    pub fn allocations(&self) -> Result<BTreeMap<Ipv4Addr, String>, NetError> {
        self.update(|state| Ok(state.allocations.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("ip")
    }

    #[test]
    fn subnets() {
        let s = Subnet::parse("10.88.1.7/24").expect("subnet");
        assert_eq!(s.to_string(), "10.88.1.0/24");
        assert_eq!((s.gateway(), s.lb_address(), s.broadcast()), (ip("10.88.1.1"), ip("10.88.1.2"), ip("10.88.1.255")));
        assert!(s.contains(ip("10.88.1.200")) && !s.contains(ip("10.88.2.1")));
        for bad in ["10.88.1.0", "10.88.1.0/31", "10.88.1.0/4", "x/24", "10.88.1.0/abc"] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allocation_is_next_fit_idempotent_and_skips_reserved() {
        let subnet = Subnet::parse("10.0.0.0/29").expect("subnet");
        let mut state = IpamState::default();
        let a = allocate(&mut state, &subnet, "a").expect("a");
        assert_eq!(a, ip("10.0.0.3"), ".0, .1 and .2 are reserved");
        assert_eq!(allocate(&mut state, &subnet, "a").expect("again"), a, "idempotent");
        let b = allocate(&mut state, &subnet, "b").expect("b");
        assert_eq!(release(&mut state, "a"), Some(a));
        let c = allocate(&mut state, &subnet, "c").expect("c");
        assert_ne!(c, a, "a released address is not reused at once");
        assert_ne!(c, b);
        // /29: .3-.6 usable (.7 is broadcast); b, c and two more fill it.
        allocate(&mut state, &subnet, "d").expect("d");
        allocate(&mut state, &subnet, "e").expect("e (wraps to the released .3)");
        assert!(matches!(allocate(&mut state, &subnet, "f"), Err(NetError::Exhausted(_))));
        let used: Vec<Ipv4Addr> = state.allocations.keys().copied().collect();
        assert!(!used.contains(&ip("10.0.0.7")) && !used.contains(&ip("10.0.0.1")));
    }

    #[test]
    fn persisted_state_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ipam/pods.json");
        let subnet = Subnet::parse("10.1.2.0/24").expect("subnet");
        let first = Ipam::new(&path, &path.with_extension("lock"), subnet);
        let a = first.allocate("a").expect("a");
        let b = first.allocate("b").expect("b");
        drop(first);
        let second = Ipam::new(&path, &path.with_extension("lock"), subnet);
        assert_eq!(second.allocate("a").expect("a again"), a, "an owner keeps its address");
        let c = second.allocate("c").expect("c");
        assert!(c != a && c != b, "nothing handed out twice after a restart");
        assert_eq!(second.release("b").expect("release"), Some(b));
        assert!(!second.allocations().expect("list").contains_key(&b));

        // A corrupt or emptied file is an error naming it, and stays as it was.
        for broken in ["{\"allocations\": {\"10.1.2", "", "\n"] {
            std::fs::write(&path, broken).expect("break the file");
            let error = second.allocate("d").expect_err("a corrupt state is no empty state");
            assert!(error.to_string().contains("pods.json"), "{error}");
            assert_eq!(std::fs::read_to_string(&path).expect("read"), broken, "left as it was");
        }
    }
}
