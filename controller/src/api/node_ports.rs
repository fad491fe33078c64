//! Node ports are the cluster's, one service each (as Kubernetes allocates them): a
//! port is claimed in the store (`ipam/nodeports/<tcp|udp>/<port>` → the service's
//! name and when it claimed it) by compare-and-swap before the service that declares it
//! is written, so two applies — on two controllers, too — never both get it; and a
//! service stored by an earlier build, without claims, is found by its spec. A claim
//! whose service does not declare the port (an apply that failed or died half way) is
//! taken over, but only [`CLAIM_GRACE`] after it was made: an apply still under way
//! keeps its claim. The grace is measured against the claim's wall-clock time: clocks
//! of controllers more than that apart could take over a claim early (the service's own
//! write is still a compare-and-swap, so two services never both store the port by
//! the claims alone, but the conflict check by spec is what catches it then).

use std::collections::BTreeMap;

use orch_api::pb;

use super::services::ApiError;
use crate::keys;
use crate::store::{Expect, Revision, Store, StoreError};

/// A node port: protocol and number.
pub type NodePort = (pb::Protocol, u32);

/// How long a claim whose service does not (yet) declare its port is left to the apply
/// that made it.
pub const CLAIM_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// A claim's value: the service's name, a newline, when it was claimed (Unix ms).
fn claim_value(name: &str) -> Vec<u8> {
    format!("{name}\n{}", crate::events::now_unix_ms()).into_bytes()
}

/// The service a claim names, and when it was made (unknown: `None`).
pub fn holder(value: &[u8]) -> (String, Option<i64>) {
    let text = String::from_utf8_lossy(value);
    match text.split_once('\n') {
        Some((name, at)) => (name.to_owned(), at.parse().ok()),
        None => (text.into_owned(), None),
    }
}

/// The node ports a template declares, each with the index of its `spec.ports` entry.
pub fn declared(spec: Option<&pb::ServiceSpec>) -> BTreeMap<NodePort, usize> {
    spec.map(|spec| {
        spec.ports.iter().enumerate().filter(|(_, port)| port.node_port != 0).map(|(index, port)| ((port.protocol(), port.node_port), index)).collect()
    })
    .unwrap_or_default()
}

fn protocol_name(protocol: pb::Protocol) -> &'static str {
    match protocol {
        pb::Protocol::Tcp => "tcp",
        pb::Protocol::Udp => "udp",
    }
}

/// What refuses `wanted` for service `name` when `holder` has the port.
fn taken(name: &str, index: usize, (protocol, port): NodePort, holder: &str) -> String {
    format!("service {name}: spec.ports[{index}].nodePort: {port}/{} is already used by service {holder}", protocol_name(protocol))
}

/// The ports `wanted` (of service `name`) declares that another of `services` declares
/// too: pure, for services stored before ports were claimed.
pub fn conflicts(name: &str, wanted: Option<&pb::ServiceSpec>, services: &[pb::Service]) -> Vec<String> {
    let mut found = Vec::new();
    for (port, index) in declared(wanted) {
        if let Some(other) = services.iter().find(|s| s.name != name && declared(s.spec.as_ref()).contains_key(&port)) {
            found.push(taken(name, index, port, &other.name));
        }
    }
    found
}

/// Claims for `name` each of `ports` it does not hold yet. A claim whose service does
/// not declare the port, made over [`CLAIM_GRACE`] ago, is taken over. Refused, naming
/// the holder, when another service has one; what this call claimed is given back then.
pub async fn claim(store: &dyn Store, name: &str, ports: &BTreeMap<NodePort, usize>) -> Result<Vec<NodePort>, ApiError> {
    let mut claimed = Vec::new();
    for (&port, &index) in ports {
        match claim_one(store, name, port).await {
            Ok(true) => claimed.push(port),
            Ok(false) => {}
            Err(error) => {
                release(store, name, &claimed).await;
                return Err(match error {
                    Claim::HeldBy(holder) => ApiError::Invalid(vec![taken(name, index, port, &holder)]),
                    Claim::Store(error) => ApiError::Store(error),
                    Claim::Decode(error) => ApiError::Decode(error),
                });
            }
        }
    }
    Ok(claimed)
}

enum Claim {
    HeldBy(String),
    Store(StoreError),
    Decode(keys::DecodeError),
}

/// `Ok(true)`: claimed now; `Ok(false)`: `name` held it already.
async fn claim_one(store: &dyn Store, name: &str, (protocol, port): NodePort) -> Result<bool, Claim> {
    let key = keys::node_port(protocol, port);
    for _ in 0..crate::store::CAS_ATTEMPTS {
        let expect = match store.get(&key).await.map_err(Claim::Store)? {
            None => Expect::Absent,
            Some(kv) => {
                let (holder, claimed_at) = holder(&kv.value);
                if holder == name {
                    // Made again (a new revision, a fresh time): a delete of the name
                    // that read the claim before this apply will not give it back.
                    return match store.put(&key, claim_value(name), Expect::Revision(kv.mod_revision)).await {
                        Ok(_) => Ok(false),
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(error) => Err(Claim::Store(error)),
                    };
                }
                if holder_keeps(store, &holder, claimed_at, (protocol, port)).await? {
                    return Err(Claim::HeldBy(holder));
                }
                Expect::Revision(kv.mod_revision)
            }
        };
        match store.put(&key, claim_value(name), expect).await {
            Ok(_) => return Ok(true),
            Err(StoreError::Conflict { .. }) => continue,
            Err(error) => return Err(Claim::Store(error)),
        }
    }
    Err(Claim::Store(StoreError::Conflict { key, expected: Expect::Absent, found: None }))
}

/// Whether a claim of `holder` (made at `claimed_at`) on `port` stands: its service
/// declares the port, or the claim is younger than [`CLAIM_GRACE`].
async fn holder_keeps(store: &dyn Store, holder: &str, claimed_at: Option<i64>, port: NodePort) -> Result<bool, Claim> {
    let service_key = keys::service(holder);
    let still_declares = match store.get(&service_key).await.map_err(Claim::Store)? {
        Some(stored) => {
            let service: pb::Service = keys::decode(&service_key, &stored.value).map_err(Claim::Decode)?;
            declared(service.spec.as_ref()).contains_key(&port)
        }
        None => false,
    };
    let age = crate::events::now_unix_ms().saturating_sub(claimed_at.unwrap_or(0));
    Ok(still_declares || u128::try_from(age).unwrap_or(0) < CLAIM_GRACE.as_millis())
}

/// What [`claim`] would refuse for `name` on `ports`, writing nothing (a dry run): the
/// ports another service's claim holds.
pub async fn refused(store: &dyn Store, name: &str, ports: &BTreeMap<NodePort, usize>) -> Result<Vec<String>, ApiError> {
    let mut found = Vec::new();
    for (&(protocol, port), &index) in ports {
        let Some(kv) = store.get(&keys::node_port(protocol, port)).await? else { continue };
        let (holder, claimed_at) = holder(&kv.value);
        if holder == name {
            continue;
        }
        match holder_keeps(store, &holder, claimed_at, (protocol, port)).await {
            Ok(true) => found.push(taken(name, index, (protocol, port), &holder)),
            Ok(false) => {}
            Err(Claim::Store(error)) => return Err(ApiError::Store(error)),
            Err(Claim::Decode(error)) => return Err(ApiError::Decode(error)),
            Err(Claim::HeldBy(holder)) => found.push(taken(name, index, (protocol, port), &holder)),
        }
    }
    Ok(found)
}

/// The claims `name` holds on `ports`: their keys and the revisions they were read at.
pub async fn held(store: &dyn Store, name: &str, ports: &[NodePort]) -> Result<Vec<(String, Revision)>, StoreError> {
    let mut claims = Vec::new();
    for &(protocol, port) in ports {
        let key = keys::node_port(protocol, port);
        if let Some(kv) = store.get(&key).await? {
            if holder(&kv.value).0 == name {
                claims.push((key, kv.mod_revision));
            }
        }
    }
    Ok(claims)
}

/// Gives back claims as they were read by [`held`]: one made again since (an apply of
/// the same name) or taken over stays. Best effort: a claim left behind is taken over
/// by the next service that declares the port.
pub async fn release_at(store: &dyn Store, claims: &[(String, Revision)]) {
    for (key, revision) in claims {
        match store.delete(key, Expect::Revision(*revision)).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(error) => tracing::warn!(%key, %error, "giving a node port back"),
        }
    }
}

/// Gives back the claims `name` holds on `ports` now (one another service took over
/// stays its).
pub async fn release(store: &dyn Store, name: &str, ports: &[NodePort]) {
    match held(store, name, ports).await {
        Ok(claims) => release_at(store, &claims).await,
        Err(error) => tracing::warn!(service = name, %error, "reading node port claims to give them back"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ports: &[(pb::Protocol, u32)]) -> pb::Service {
        pb::Service {
            name: name.into(),
            spec: Some(pb::ServiceSpec {
                ports: ports.iter().map(|&(protocol, node_port)| pb::ServicePort { node_port, protocol: protocol.into(), ..Default::default() }).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_port_another_service_declares_is_named_with_its_holder() {
        let stored = [service("api", &[(pb::Protocol::Tcp, 30080)]), service("dns", &[(pb::Protocol::Udp, 30053)])];
        let web = service("web", &[(pb::Protocol::Tcp, 0), (pb::Protocol::Tcp, 30080), (pb::Protocol::Tcp, 30053), (pb::Protocol::Udp, 30081)]);
        assert_eq!(conflicts("web", web.spec.as_ref(), &stored), ["service web: spec.ports[1].nodePort: 30080/tcp is already used by service api"]);
        assert!(conflicts("api", stored[0].spec.as_ref(), &stored).is_empty(), "its own port is no conflict");
        let udp = service("web", &[(pb::Protocol::Udp, 30053)]);
        assert_eq!(conflicts("web", udp.spec.as_ref(), &stored), ["service web: spec.ports[0].nodePort: 30053/udp is already used by service dns"]);
        assert_eq!(declared(web.spec.as_ref()).len(), 3, "port 0 is none");
    }
}
