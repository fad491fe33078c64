//! `orch.v1.NodeAgent`: what the controller asks an agent directly — a replica's logs
//! (following them), exec in a replica (through `orch-agent __exec`, streams both
//! ways), usage from the cgroups, and the node's wiring for `orch topology`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use orch_api::pb;
use orch_api::pb::node_agent_server::NodeAgent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::context::NodeContext;
use super::logs::{LogQuery, LogReader};

/// The interceptor that checks who calls the node API.
pub type PeerCheck = fn(tonic::Request<()>) -> Result<tonic::Request<()>, Status>;

/// Holds the node context weakly: open API streams must not keep a draining agent from
/// taking its network down.
pub struct NodeApi {
    ctx: std::sync::Weak<NodeContext>,
    address: String,
    /// `--allow-chaos`: `orch chaos` may take the node down or partition it.
    allows_outages: bool,
}

impl NodeApi {
    pub fn new(ctx: &Arc<NodeContext>, address: String) -> NodeApi {
        NodeApi { ctx: Arc::downgrade(ctx), address, allows_outages: false }
    }

    pub fn allowing_outages(self, allows_outages: bool) -> NodeApi {
        NodeApi { allows_outages, ..self }
    }

    fn context(&self) -> Result<Arc<NodeContext>, Status> {
        self.ctx.upgrade().ok_or_else(|| Status::unavailable("the agent is stopping"))
    }

    /// The service, admitting over TLS only the controller's certificate (plain text only
    /// reaches it behind `--insecure-api-listen`).
    pub fn into_server(self) -> tonic::service::interceptor::InterceptedService<pb::node_agent_server::NodeAgentServer<NodeApi>, PeerCheck> {
        fn controller_only(request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
            orch_api::tls::require_role(request, &[orch_api::tls::Role::Controller])
        }
        pb::node_agent_server::NodeAgentServer::with_interceptor(self, controller_only)
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecOutput, Status>> + Send>>;

fn valid_id(id: &str) -> Result<(), Status> {
    orch_api::manifest::names::check_dns_label(id).map_err(|_| Status::invalid_argument(format!("{id:?} is not a replica name")))
}

impl NodeApi {
    /// `orch console`: relays between the client and the console socket the replica's
    /// shim serves (system containers only).
    async fn console(&self, replica: &str, mut input: Streaming<pb::ExecInput>) -> Result<Response<ExecStream>, Status> {
        let ctx = self.context()?;
        if ctx.running.get(replica).is_none() {
            return Err(Status::failed_precondition(format!("replica {replica} is not running on node {}", ctx.node)));
        }
        let socket = ctx.state.containers().join(replica).join(crate::runtime::init::CONSOLE_SOCKET);
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|_| Status::failed_precondition(format!("replica {replica} has no console (only a system container, spec.mode: system, has one)")))?;
        let (mut from_console, mut to_console) = stream.into_split();
        tokio::spawn(async move {
            while let Ok(Some(message)) = input.message().await {
                let closed = match message.body {
                    Some(pb::exec_input::Body::Stdin(bytes)) => to_console.write_all(&bytes).await.is_err(),
                    Some(pb::exec_input::Body::StdinClosed(_)) => true,
                    _ => false,
                };
                if closed {
                    return;
                }
            }
        });
        let (sender, receiver) = mpsc::channel::<Result<pb::ExecOutput, Status>>(16);
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 16 << 10];
            loop {
                let read = tokio::select! {
                    read = from_console.read(&mut buffer) => read,
                    () = sender.closed() => return,
                };
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sender.send(Ok(pb::ExecOutput { body: Some(pb::exec_output::Body::Stdout(buffer[..n].to_vec())) })).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sender.send(Ok(pb::ExecOutput { body: Some(pb::exec_output::Body::ExitCode(0)) })).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}

#[tonic::async_trait]
impl NodeAgent for NodeApi {
    type LogsStream = Chunks;

    async fn chaos(&self, request: Request<pb::ChaosRequest>) -> Result<Response<pb::ChaosResponse>, Status> {
        use super::chaos::ChaosError;
        let request = request.into_inner();
        if let Some(pb::chaos_request::Fault::KillReplica(replica)) = &request.fault {
            valid_id(replica)?;
        }
        let ctx = self.context()?;
        let message = super::chaos::carry_out(&ctx, self.allows_outages, &request).map_err(|error| match error {
            ChaosError::NotAllowed { .. } | ChaosError::AlreadyOut { .. } => Status::failed_precondition(error.to_string()),
            ChaosError::NotRunning { .. } => Status::not_found(error.to_string()),
            ChaosError::Length { .. } | ChaosError::NoKind | ChaosError::NoFault => Status::invalid_argument(error.to_string()),
            ChaosError::Kill { .. } => Status::internal(error.to_string()),
        })?;
        tracing::warn!(%message, "orch chaos");
        Ok(Response::new(pb::ChaosResponse { node: ctx.node.clone(), message, at_unix_ms: crate::runtime::now_unix_ms() }))
    }

    async fn logs(&self, request: Request<pb::LogsRequest>) -> Result<Response<Chunks>, Status> {
        let request = request.into_inner();
        valid_id(&request.replica)?;
        let ctx = self.context()?;
        let query = LogQuery {
            tail_lines: request.tail_lines as usize,
            since: u64::try_from(request.since_unix_ms).ok().filter(|ms| *ms > 0).map(|ms| ms.saturating_mul(1_000_000)),
            limit_bytes: Some(request.limit_bytes).filter(|limit| *limit > 0),
            timestamps: request.timestamps,
        };
        let follow = request.follow && !request.previous;
        let (state, replica, previous) = (ctx.state.clone(), request.replica.clone(), request.previous);
        let opened = tokio::task::spawn_blocking(move || LogReader::open(&state, &replica, previous, follow, query))
            .await
            .map_err(|e| Status::internal(format!("reading the log: {e}")))?
            .map_err(|e| Status::internal(format!("reading the log of {}: {e}", request.replica)))?;
        let Some(reader) = opened else {
            return Err(Status::not_found(format!(
                "replica {} has no {}log on node {}",
                request.replica,
                if request.previous { "previous " } else { "" },
                ctx.node
            )));
        };
        let (sender, receiver) = mpsc::channel(4);
        let replica = request.replica.clone();
        let record = ctx.state.record(&request.replica);
        drop(ctx);
        tokio::spawn(async move {
            let mut reader = reader;
            loop {
                // Files are read on the blocking pool, a chunk at a time.
                let step = tokio::task::spawn_blocking(move || {
                    let chunk = reader.next_chunk();
                    (reader, chunk)
                })
                .await;
                let chunk;
                (reader, chunk) = match step {
                    Ok(step) => step,
                    Err(_) => return,
                };
                match chunk {
                    Ok(Some(data)) => {
                        if sender.send(Ok(pb::LogChunk { replica: replica.clone(), data })).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        let _ = sender.send(Err(Status::internal(format!("reading the log of {replica}: {error}")))).await;
                        return;
                    }
                }
                // At the end: done, or follow until the replica is gone or the reader.
                if !follow || reader.finished() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if sender.is_closed() || !record.exists() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    type ExecStream = ExecStream;

    async fn exec(&self, request: Request<Streaming<pb::ExecInput>>) -> Result<Response<ExecStream>, Status> {
        let mut input = request.into_inner();
        let first = input.message().await?.ok_or_else(|| Status::invalid_argument("exec: no start message"))?;
        let Some(pb::exec_input::Body::Start(start)) = first.body else { return Err(Status::invalid_argument("exec: the first message must be start")) };
        valid_id(&start.replica)?;
        if start.console {
            return self.console(&start.replica, input).await;
        }
        if start.command.first().is_none_or(String::is_empty) {
            return Err(Status::invalid_argument("exec: a command is needed"));
        }
        let ctx = self.context()?;
        let running = ctx
            .running
            .get(&start.replica)
            .ok_or_else(|| Status::failed_precondition(format!("replica {} is not running on node {}", start.replica, ctx.node)))?;
        let mut exec = running.exec;
        exec.command = start.command;
        exec.tty = start.tty;
        if exec.tty && !exec.env.iter().any(|e| e.starts_with("TERM=")) {
            exec.env.push("TERM=xterm".into());
        }
        let mut child = exec
            .helper_command(&ctx.helper)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Status::internal(format!("exec helper: {e}")))?;
        let (sender, receiver) = mpsc::channel::<Result<pb::ExecOutput, Status>>(16);
        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        tokio::spawn(async move {
            while let Ok(Some(message)) = input.message().await {
                match message.body {
                    Some(pb::exec_input::Body::Stdin(bytes)) => {
                        if let Some(pipe) = stdin.as_mut() {
                            if pipe.write_all(&bytes).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    Some(pb::exec_input::Body::StdinClosed(_)) => stdin = None,
                    _ => {}
                }
            }
        });
        let pump = |mut pipe: Box<dyn tokio::io::AsyncRead + Send + Unpin>, sender: mpsc::Sender<Result<pb::ExecOutput, Status>>, is_err: bool| async move {
            let mut buffer = vec![0u8; 16 << 10];
            loop {
                match pipe.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let data = buffer[..n].to_vec();
                        let body = if is_err { pb::exec_output::Body::Stderr(data) } else { pb::exec_output::Body::Stdout(data) };
                        if sender.send(Ok(pb::ExecOutput { body: Some(body) })).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        tokio::spawn(async move {
            let out = stdout.take().map(|p| tokio::spawn(pump(Box::new(p), sender.clone(), false)));
            let err = stderr.take().map(|p| tokio::spawn(pump(Box::new(p), sender.clone(), true)));
            // The client going away ends the command (a shell would wait forever).
            let status = tokio::select! {
                status = child.wait() => status,
                () = sender.closed() => {
                    let _ = child.kill().await;
                    child.wait().await
                }
            };
            for task in [out, err].into_iter().flatten() {
                let _ = task.await;
            }
            let code = status.ok().and_then(|s| s.code()).unwrap_or(crate::runtime::CODE_RUNTIME);
            let _ = sender.send(Ok(pb::ExecOutput { body: Some(pb::exec_output::Body::ExitCode(code)) })).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn stats(&self, _: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let ctx = self.context()?;
        let running = ctx.running.all();
        let before: BTreeMap<String, u64> = running.keys().filter_map(|id| Some((id.clone(), ctx.runtime.usage(id)?.cpu_usage_nanos))).collect();
        let interval = Duration::from_millis(250);
        tokio::time::sleep(interval).await;
        let mut replicas = Vec::new();
        for (id, replica) in running {
            let Some(now) = ctx.runtime.usage(&id) else { continue };
            let spent = now.cpu_usage_nanos.saturating_sub(before.get(&id).copied().unwrap_or(now.cpu_usage_nanos));
            replicas.push(pb::ReplicaUsage {
                replica: id,
                service: replica.service,
                node: ctx.node.clone(),
                cpu_usage_nanos: now.cpu_usage_nanos,
                cpu_millis: spent * 1000 / u64::try_from(interval.as_nanos()).unwrap_or(1),
                memory_bytes: now.memory_bytes,
                pids: now.pids,
            });
        }
        Ok(Response::new(pb::StatsResponse { replicas }))
    }

    async fn inspect(&self, _: Request<pb::InspectRequest>) -> Result<Response<pb::NodeInspect>, Status> {
        let ctx = self.context()?;
        let view = ctx.network.view().await.map_err(|e| Status::internal(format!("network view: {e}")))?;
        let running = ctx.running.all();
        let containers = view
            .containers
            .iter()
            .map(|(owner, ip, veth)| pb::ContainerLink {
                replica: owner.clone(),
                ip: ip.to_string(),
                veth: veth.clone(),
                host_pid: running.get(owner).map_or(0, |r| u32::try_from(r.exec.pid).unwrap_or(0)),
            })
            .collect();
        let routes = view.routes.iter().map(pb::NodeRoute::from).collect();
        let listeners = view.balancer.listeners.iter().map(|(key, backends)| super::convert::balancer_listener(key, backends)).collect();
        Ok(Response::new(pb::NodeInspect {
            node: ctx.node.clone(),
            address: self.address.clone(),
            bridge: view.bridge,
            subnet: view.subnet,
            gateway: view.gateway.to_string(),
            balancer_namespace: view.balancer.netns,
            balancer_address: view.balancer_address.to_string(),
            vips: view.balancer.vips.iter().map(ToString::to_string).collect(),
            containers,
            routes,
            listeners,
            reports_listeners: true,
        }))
    }
}
