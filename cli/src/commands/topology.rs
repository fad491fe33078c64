//! `orch topology [-o dot|svg]`: the live cluster as Graphviz.

use std::collections::BTreeMap;
use std::io::Write;

use clap::{Args, ValueEnum};
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::client::explain;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopologyFormat {
    Dot,
    Svg,
}

#[derive(Debug, Args)]
pub struct TopologyArgs {
    #[arg(short = 'o', long = "output", value_enum, default_value = "dot")]
    pub output: TopologyFormat,
}

fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn id(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// The cluster as Graphviz DOT: a cluster box per node with its bridge, each container's
/// veth and address, the balancer namespace with its VIPs; node-to-node links.
pub fn dot(topology: &pb::TopologyResponse) -> String {
    let mut out = String::from(
        "digraph orch {\n  graph [rankdir=LR, fontname=\"Helvetica\", compound=true];\n  node [fontname=\"Helvetica\", fontsize=10];\n  edge [fontsize=9];\n",
    );
    let vip_owner: BTreeMap<String, String> = topology.services.iter().map(|s| (s.vip.clone(), s.name.clone())).collect();
    for node in &topology.nodes {
        let n = id(&node.node);
        out.push_str(&format!(
            "  subgraph cluster_{n} {{\n    label={};\n    style=rounded; color=\"#555555\";\n",
            quote(&format!("node {} ({})", node.node, node.address))
        ));
        out.push_str(&format!(
            "    {n}_bridge [shape=box, style=filled, fillcolor=\"#dde8f5\", label={}];\n",
            quote(&format!("bridge {}\\n{} gw {}", node.bridge, node.subnet, node.gateway))
        ));
        let vips: Vec<String> = node.vips.iter().map(|v| format!("{v}{}", vip_owner.get(v).map(|s| format!(" ({s})")).unwrap_or_default())).collect();
        out.push_str(&format!(
            "    {n}_lb [shape=box3d, style=filled, fillcolor=\"#f5ecd7\", label={}];\n    {n}_lb -> {n}_bridge [dir=both, label={}];\n",
            quote(&format!("load balancer netns {}\\n{}\\n{}", node.balancer_namespace, node.balancer_address, vips.join("\\n"))),
            quote("veth")
        ));
        for container in &node.containers {
            let c = id(&format!("{}_{}", node.node, container.replica));
            out.push_str(&format!(
                "    {c} [shape=component, style=filled, fillcolor=\"#e3f2e1\", label={}];\n    {c} -> {n}_bridge [dir=both, label={}];\n",
                quote(&format!("{}\\n{}\\nPID {}", container.replica, container.ip, container.host_pid)),
                quote(&container.veth)
            ));
        }
        out.push_str("  }\n");
    }
    for node in &topology.nodes {
        for route in &node.routes {
            if let Some(peer) = topology.nodes.iter().find(|p| p.address == route.via) {
                out.push_str(&format!(
                    "  {}_bridge -> {}_bridge [style=dashed, label={}];\n",
                    id(&node.node),
                    id(&peer.node),
                    quote(&format!("{} via {}", route.pod_cidr, route.via))
                ));
            }
        }
    }
    out.push_str("}\n");
    out
}

pub async fn topology(mut api: ApiClient<Channel>, args: &TopologyArgs) -> anyhow::Result<()> {
    let topology = api.topology(pb::TopologyRequest {}).await.map_err(explain)?.into_inner();
    let text = dot(&topology);
    match args.output {
        TopologyFormat::Dot => print!("{text}"),
        TopologyFormat::Svg => {
            let mut child = std::process::Command::new("dot")
                .arg("-Tsvg")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::inherit())
                .spawn()
                .map_err(|e| anyhow::anyhow!("-o svg needs Graphviz's `dot` (apt-get install graphviz): {e}"))?;
            child.stdin.take().map(|mut stdin| stdin.write_all(text.as_bytes())).transpose()?;
            let status = child.wait()?;
            anyhow::ensure!(status.success(), "dot -Tsvg failed: {status}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_names_every_container_and_links_nodes() {
        let node = |name: &str, address: &str, replica: &str, via: &str| pb::NodeInspect {
            node: name.into(),
            address: address.into(),
            bridge: "orch0".into(),
            subnet: "10.88.1.0/24".into(),
            gateway: "10.88.1.1".into(),
            balancer_namespace: "orch0-lb".into(),
            balancer_address: "10.88.1.2".into(),
            vips: vec!["10.96.0.10".into()],
            containers: vec![pb::ContainerLink { replica: replica.into(), ip: "10.88.1.3".into(), veth: "vethx".into(), host_pid: 7 }],
            routes: vec![pb::NodeRoute { node: String::new(), pod_cidr: "10.88.2.0/24".into(), via: via.into(), pod_subnet: None }],
            listeners: vec![],
            reports_listeners: true,
        };
        let topology = pb::TopologyResponse {
            nodes: vec![node("n1", "192.0.2.1", "web-aaaaa", "192.0.2.2"), node("n2", "192.0.2.2", "web-bbbbb", "192.0.2.1")],
            services: vec![pb::Service { name: "web".into(), vip: "10.96.0.10".into(), ..Default::default() }],
        };
        let text = dot(&topology);
        assert!(text.starts_with("digraph orch {") && text.trim_end().ends_with('}'));
        assert!(text.contains("web-aaaaa") && text.contains("web-bbbbb") && text.contains("10.96.0.10 (web)"));
        assert!(text.contains("n1_bridge -> n2_bridge"), "{text}");
    }
}
