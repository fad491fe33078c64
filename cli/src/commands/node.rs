//! Commands that reach into nodes through the controller: `logs`, `exec`, `top`,
//! `topology`.

use std::collections::BTreeMap;
use std::io::Write;

use clap::{Args, ValueEnum};
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

use crate::client::explain;
use crate::output::{mebibytes, table};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A replica, or a service (every replica of it, each line prefixed with its name).
    pub name: String,
    /// Keep printing new output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The output before the log was last rotated.
    #[arg(long)]
    pub previous: bool,
    /// Only the last N lines (then follow, with -f).
    #[arg(long, value_name = "N", default_value = "0")]
    pub tail: u32,
}

pub async fn logs(mut api: ApiClient<Channel>, args: &LogsArgs) -> anyhow::Result<()> {
    let request = pb::LogsRequest { replica: args.name.clone(), follow: args.follow, previous: args.previous, tail_lines: args.tail };
    let mut stream = api.logs(request).await.map_err(explain)?.into_inner();
    // Partial lines per replica, so that prefixes land at line starts.
    let mut pending: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let prefix_lines = |replica: &str, data: &[u8], many: bool| -> Vec<u8> {
        if !many {
            return data.to_vec();
        }
        let mut out = Vec::new();
        for line in data.split_inclusive(|b| *b == b'\n') {
            out.extend_from_slice(format!("[{replica}] ").as_bytes());
            out.extend_from_slice(line);
        }
        out
    };
    // A service's logs (chunks naming replicas other than the name asked for) get prefixes.
    let many = |replica: &str| replica != args.name;
    let mut stdout = std::io::stdout();
    while let Some(chunk) = stream.message().await.map_err(explain)? {
        let buffer = pending.entry(chunk.replica.clone()).or_default();
        buffer.extend_from_slice(&chunk.data);
        let complete = buffer.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let lines: Vec<u8> = buffer.drain(..complete).collect();
        stdout.write_all(&prefix_lines(&chunk.replica, &lines, many(&chunk.replica)))?;
        stdout.flush()?;
    }
    for (replica, rest) in pending {
        if !rest.is_empty() {
            stdout.write_all(&prefix_lines(&replica, &rest, many(&replica)))?;
            stdout.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub replica: String,
    /// Pass standard input to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// Give the command a terminal (with -i: an interactive shell, `orch exec -it R -- sh`).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the command in the replica; returns its exit code.
pub async fn exec(mut api: ApiClient<Channel>, args: &ExecArgs) -> anyhow::Result<i32> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<pb::ExecInput>(16);
    sender
        .send(pb::ExecInput {
            body: Some(pb::exec_input::Body::Start(pb::ExecStart { replica: args.replica.clone(), command: args.command.clone(), tty: args.tty })),
        })
        .await?;
    // With a terminal on both ends, ours goes raw (keys pass through, the remote echoes).
    let _raw = if args.tty && args.stdin { RawTerminal::enter() } else { None };
    if args.stdin {
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buffer = vec![0u8; 16 << 10];
            loop {
                match stdin.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sender.send(pb::ExecInput { body: Some(pb::exec_input::Body::Stdin(buffer[..n].to_vec())) }).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sender.send(pb::ExecInput { body: Some(pb::exec_input::Body::StdinClosed(true)) }).await;
        });
    } else {
        sender.send(pb::ExecInput { body: Some(pb::exec_input::Body::StdinClosed(true)) }).await?;
    }
    let mut output = api.exec(tokio_stream::wrappers::ReceiverStream::new(receiver)).await.map_err(explain)?.into_inner();
    drop(sender);
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    while let Some(message) = output.message().await.map_err(explain)? {
        match message.body {
            Some(pb::exec_output::Body::Stdout(data)) => {
                stdout.write_all(&data)?;
                stdout.flush()?;
            }
            Some(pb::exec_output::Body::Stderr(data)) => {
                stderr.write_all(&data)?;
                stderr.flush()?;
            }
            Some(pb::exec_output::Body::ExitCode(code)) => return Ok(code),
            None => {}
        }
    }
    anyhow::bail!("the exec stream ended without an exit code")
}

/// The local terminal in raw mode until dropped.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopKind {
    #[value(alias = "node")]
    Nodes,
    #[value(alias = "replica")]
    Replicas,
}

pub async fn top(mut api: ApiClient<Channel>, kind: TopKind) -> anyhow::Result<()> {
    let top = api.top(pb::TopRequest {}).await.map_err(explain)?.into_inner();
    let text = match kind {
        TopKind::Replicas => {
            let rows: Vec<Vec<String>> = top
                .replicas
                .iter()
                .map(|r| {
                    vec![r.replica.clone(), r.service.clone(), r.node.clone(), format!("{}m", r.cpu_millis), mebibytes(r.memory_bytes), r.pids.to_string()]
                })
                .collect();
            table(&["NAME", "SERVICE", "NODE", "CPU", "MEMORY", "PIDS"], &rows)
        }
        TopKind::Nodes => {
            let rows: Vec<Vec<String>> = top
                .nodes
                .iter()
                .map(|n| {
                    let info = n.info.clone().unwrap_or_default();
                    let used: Vec<&pb::ReplicaUsage> = top.replicas.iter().filter(|r| r.node == info.name).collect();
                    let cpu: u64 = used.iter().map(|r| r.cpu_millis).sum();
                    let memory: u64 = used.iter().map(|r| r.memory_bytes).sum();
                    let capacity = info.capacity.unwrap_or_default();
                    let percent = |used: u64, total: u64| (used * 100).checked_div(total).map_or_else(|| "-".to_owned(), |p| format!("{p}%"));
                    vec![
                        info.name.clone(),
                        format!("{cpu}m"),
                        percent(cpu, capacity.cpu_millis),
                        mebibytes(memory),
                        percent(memory, capacity.memory_bytes),
                        used.len().to_string(),
                    ]
                })
                .collect();
            table(&["NAME", "CPU", "CPU%", "MEMORY", "MEMORY%", "REPLICAS"], &rows)
        }
    };
    print!("{text}");
    Ok(())
}

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
            routes: vec![pb::NodeRoute { node: String::new(), pod_cidr: "10.88.2.0/24".into(), via: via.into() }],
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
