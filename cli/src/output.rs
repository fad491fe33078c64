//! The stable machine output (`-o json|yaml`) and the tables people read. Field names
//! and phases are part of the CLI's contract: tests and scripts depend on them.

use orch_api::pb;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table (the default).
    Table,
    /// A table with more columns.
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaOut {
    pub name: String,
    pub service: String,
    pub node: String,
    pub phase: String,
    pub ready: bool,
    pub restarts: u32,
    pub ip: String,
    pub host_pid: u32,
    pub reason: String,
    /// The node the leader is moving it to (rebalancing); absent otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub moving_to: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortOut {
    pub name: String,
    pub container_port: u32,
    pub service_port: u32,
    pub node_port: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceOut {
    pub name: String,
    pub replicas: u32,
    pub ready_replicas: u32,
    pub vip: String,
    pub ports: Vec<PortOut>,
    pub image: String,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesOut {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeOut {
    pub name: String,
    pub address: String,
    pub ready: bool,
    pub pod_cidr: String,
    pub capacity: ResourcesOut,
    pub allocated: ResourcesOut,
    /// What the node's agent reports wrong (none: nothing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<ConditionOut>,
    /// Cordoned or draining: takes no new replicas.
    pub unschedulable: bool,
    /// Its replicas are being replaced elsewhere.
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionOut {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    pub since_unix_ms: i64,
}

impl NodeOut {
    /// As `get nodes` shows it: Ready or NotReady, SchedulingDisabled when cordoned
    /// (and Draining while it drains), then each condition's type.
    pub fn status(&self) -> String {
        let ready = if self.ready { "Ready" } else { "NotReady" };
        let scheduling = [self.unschedulable.then_some("SchedulingDisabled"), self.draining.then_some("Draining")];
        std::iter::once(ready).chain(scheduling.into_iter().flatten()).chain(self.conditions.iter().map(|c| c.kind.as_str())).collect::<Vec<_>>().join(",")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventOut {
    pub time_unix_ms: i64,
    pub kind: String,
    pub object: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerOut {
    pub identity: String,
    pub address: String,
    pub leader: bool,
    pub started_unix_ms: i64,
}

pub fn controller(c: &pb::ControllerInfo, leader: &str) -> ControllerOut {
    ControllerOut { identity: c.identity.clone(), address: c.address.clone(), leader: c.identity == leader, started_unix_ms: c.started_unix_ms }
}

pub fn replica(r: &pb::Replica) -> ReplicaOut {
    let status = r.status.clone().unwrap_or_default();
    ReplicaOut {
        name: r.id.clone(),
        service: r.service.clone(),
        node: r.node.clone(),
        phase: orch_api::phase_name(status.phase()).to_owned(),
        ready: status.ready,
        restarts: status.restarts,
        ip: status.ip.clone(),
        host_pid: status.host_pid,
        reason: status.reason,
        moving_to: r.moving.as_ref().map(|m| m.to_node.clone()).unwrap_or_default(),
    }
}

pub fn service(s: &pb::Service, replicas: &[pb::Replica]) -> ServiceOut {
    let spec = s.spec.clone().unwrap_or_default();
    let ready = replicas.iter().filter(|r| r.service == s.name && r.status.as_ref().is_some_and(|st| st.ready)).count();
    ServiceOut {
        name: s.name.clone(),
        replicas: spec.replicas,
        ready_replicas: u32::try_from(ready).unwrap_or(u32::MAX),
        vip: s.vip.clone(),
        ports: spec
            .ports
            .iter()
            .map(|p| PortOut { name: p.name.clone(), container_port: p.container_port, service_port: p.service_port, node_port: p.node_port })
            .collect(),
        image: spec.image,
        generation: s.generation,
    }
}

pub fn node(n: &pb::Node) -> NodeOut {
    let info = n.info.clone().unwrap_or_default();
    let capacity = info.capacity.unwrap_or_default();
    let allocated = n.allocated.unwrap_or_default();
    NodeOut {
        name: info.name,
        address: info.address,
        ready: n.ready,
        pod_cidr: n.pod_cidr.clone(),
        capacity: ResourcesOut { cpu_millis: capacity.cpu_millis, memory_bytes: capacity.memory_bytes },
        allocated: ResourcesOut { cpu_millis: allocated.cpu_millis, memory_bytes: allocated.memory_bytes },
        conditions: n.conditions.iter().map(|c| ConditionOut { kind: c.r#type.clone(), message: c.message.clone(), since_unix_ms: c.since_unix_ms }).collect(),
        unschedulable: n.scheduling.is_some_and(|s| s.unschedulable || s.draining),
        draining: n.scheduling.is_some_and(|s| s.draining),
    }
}

pub fn event(e: &pb::Event) -> EventOut {
    EventOut { time_unix_ms: e.timestamp_unix_ms, kind: e.kind.clone(), object: e.object.clone(), message: e.message.clone() }
}

/// A Config or a Secret as listings show it: a Secret's keys with their sizes, never
/// its values; a Config's values as text (base64 when not UTF-8).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigOut {
    pub name: String,
    pub generation: u64,
    /// The store revision of its last write (what `describe service` names).
    pub revision: u64,
    /// Key → size in bytes.
    pub keys: std::collections::BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<std::collections::BTreeMap<String, String>>,
    pub used_by: Vec<String>,
}

pub fn config(info: &pb::ConfigInfo) -> ConfigOut {
    use base64::Engine;
    let data = info.data.as_ref().filter(|_| info.kind() == pb::ConfigKind::Config).map(|data| {
        data.data
            .iter()
            .map(|(k, v)| {
                (k.clone(), String::from_utf8(v.clone()).unwrap_or_else(|_| format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(v))))
            })
            .collect()
    });
    ConfigOut {
        name: info.name.clone(),
        generation: info.generation,
        revision: info.revision,
        keys: info.sizes.clone().into_iter().collect(),
        data,
        used_by: info.used_by.clone(),
    }
}

pub fn render<T: Serialize>(format: Format, items: &[T]) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(items)? + "\n",
        Format::Yaml => serde_yaml::to_string(items)?,
        Format::Table | Format::Wide => anyhow::bail!("a table is printed by its command, not rendered"),
    })
}

/// Columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

pub fn age(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
    let seconds = (now - unix_ms).max(0) / 1000;
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn mebibytes(bytes: u64) -> String {
    format!("{}Mi", bytes >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_json_has_the_contract_fields() {
        let r = pb::Replica {
            id: "web-12345".into(),
            service: "web".into(),
            node: "n1".into(),
            status: Some(pb::ReplicaStatus {
                phase: pb::ReplicaPhase::Running.into(),
                ready: true,
                restarts: 2,
                ip: "10.88.1.5".into(),
                host_pid: 42,
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(replica(&r)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"name": "web-12345", "service": "web", "node": "n1", "phase": "Running", "ready": true,
                               "restarts": 2, "ip": "10.88.1.5", "hostPid": 42, "reason": ""})
        );
    }

    #[test]
    fn tables_align() {
        let out = table(&["NAME", "READY"], &[vec!["a".into(), "1/1".into()], vec!["longer".into(), "0/1".into()]]);
        assert_eq!(out, "NAME     READY\na        1/1\nlonger   0/1\n");
    }
}
