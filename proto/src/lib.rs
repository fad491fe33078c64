//! `orch-api`: the one source of truth for orch's resource model.
//!
//! - [`pb`]: the `orch.v1` gRPC services and messages, generated from `proto/orch/v1/*.proto`.
//! - [`manifest`]: the YAML manifest model, parsing and validation (shared by the CLI and
//!   the controller).
//! - [`cidr`]: `Ipv4Cidr`, the one CIDR type of every binary.
//! - [`deltas`]: desired sets sent as deltas, made whole again on the receiving end.
//! - [`events`]: the kinds of event the controller and the agents report.
//! - [`image_ref`]: the image references the agent accepts.
//! - [`selector`]: label selectors (`orch get|delete -l`).
//! - [`signal`]: signal names and numbers (`spec.stopSignal`, an image's `StopSignal`).
//! - [`tls`]: the cluster's certificates (`orch-controller init`) and the mutual-TLS
//!   configurations the controller, agents and CLI build from them.

pub mod cidr;
pub mod deltas;
pub mod events;
pub mod image_ref;
pub mod incoming;
pub mod logging;
pub mod manifest;
pub mod secrets;
pub mod selector;
pub mod signal;
pub mod telemetry;
pub mod tls;

/// Generated `orch.v1` code (tonic + prost).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("orch.v1");
}

/// `HOST:PORT` split into the host (an IPv6 address's brackets removed) and a port from 1
/// to 65535; `None` when it is not that.
pub fn host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_matches(|c| c == '[' || c == ']');
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    (!host.is_empty()).then_some((host, port))
}

/// A replica's phase as users read it (`orch get replicas`, metrics' labels).
pub fn phase_name(phase: pb::ReplicaPhase) -> &'static str {
    match phase {
        pb::ReplicaPhase::Pending => "Pending",
        pb::ReplicaPhase::Starting => "Starting",
        pb::ReplicaPhase::Running => "Running",
        pb::ReplicaPhase::Terminating => "Terminating",
        pb::ReplicaPhase::Failed => "Failed",
        pb::ReplicaPhase::Succeeded => "Succeeded",
    }
}

/// What a node reports of a replica: its identity and status, without the template.
impl From<&pb::Replica> for pb::ReplicaReport {
    fn from(replica: &pb::Replica) -> pb::ReplicaReport {
        pb::ReplicaReport {
            id: replica.id.clone(),
            service: replica.service.clone(),
            node: replica.node.clone(),
            spec_hash: replica.spec_hash.clone(),
            status: replica.status.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn host_and_port() {
        assert_eq!(super::host_port("10.0.0.1:7100"), Some(("10.0.0.1", 7100)));
        assert_eq!(super::host_port("[::1]:7100"), Some(("::1", 7100)));
        assert_eq!(super::host_port("node-1:1"), Some(("node-1", 1)));
        for bad in ["10.0.0.1", ":7100", "host:0", "host:65536", "host:x", ""] {
            assert_eq!(super::host_port(bad), None, "{bad}");
        }
    }

    use super::pb;

    #[test]
    fn a_report_and_a_replica_without_its_template_read_each_other() {
        let status = pb::ReplicaStatus { phase: pb::ReplicaPhase::Running.into(), ready: true, restarts: 2, ip: "10.88.1.5".into(), ..Default::default() };
        let replica = pb::Replica {
            id: "web-1".into(),
            service: "web".into(),
            node: "n1".into(),
            spec_hash: "abc".into(),
            status: Some(status),
            spec: Some(pb::ServiceSpec { image: "web:1".into(), ..Default::default() }),
            slot: Some(1),
            moving: Some(pb::ReplicaMove { reason: "rebalance".into(), to_node: "n2".into(), since_unix_ms: 1 }),
        };
        let report = pb::ReplicaReport::from(&replica);
        // An earlier build stored and sent statuses as Replicas (template blanked).
        let stored_before = pb::Replica { spec: None, ..replica.clone() }.encode_to_vec();
        assert_eq!(pb::ReplicaReport::decode(stored_before.as_slice()), Ok(report.clone()));
        // And an earlier controller reads a report as a Replica.
        assert_eq!(pb::Replica::decode(report.encode_to_vec().as_slice()), Ok(pb::Replica { spec: None, slot: None, moving: None, ..replica.clone() }));
        // A full replica (its template included) still reads as its report.
        assert_eq!(pb::ReplicaReport::decode(replica.encode_to_vec().as_slice()), Ok(report));
    }
}
