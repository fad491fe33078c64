//! The node's balancer in a process of its own (`<helper> __balancer SPEC`), so service
//! VIPs, node ports and DNS keep answering while the agent is down, restarting or being
//! upgraded — as kube-proxy's rules and Swarm's IPVS keep forwarding while their daemons
//! restart. The containers already outlive the agent (their shims do); now so does the
//! way to them.
//!
//! The agent starts the balancer, or finds the one an earlier agent started and keeps it
//! — with the table it serves — when it runs the same spec, protocol and version (one
//! that differs is told to stop listening, relays its open connections to their end, and
//! a new one takes the ports). It drives it over a Unix socket of the node network
//! (`/run/orch/<bridge>.balancer.sock`, mode 0600: root only; a bridge is one node
//! network on a machine): one connection per request, one JSON line each way. The
//! process lives until the node network is torn down (`Stop`); an agent that finds it
//! gone (killed, crashed) starts a new one and gives it the table again. It is started in a process group of its own, so a terminal's Ctrl-C
//! meant for `orch up` does not reach it, and writes its log to
//! `network/<bridge>.balancer.log`.

use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::balancer::{Balancer, BalancerView};
use super::netns::Netns;
use super::proxy::{ConnectionLimits, Strategy};
use super::stats::{BalancerMetrics, ServiceCounters};
use super::table::{ListenerFailure, ServiceEndpoints};
use super::NetError;

/// The hidden subcommand of the agent's binaries (`orch-agent`, `orch`) that runs
/// [`main`].
pub const BALANCER_SUBCOMMAND: &str = "__balancer";

/// The control protocol's version: a running balancer that speaks another is replaced.
pub const PROTOCOL: u32 = 1;

/// How long a started balancer gets to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one control call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a replaced balancer relays its open connections before it exits.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// A request line may be this long (a table of every service of a large cluster).
const MAX_LINE: u64 = 64 << 20;

/// Everything a balancer process is started with; a running one with another spec is
/// replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerSpec {
    pub bridge: String,
    /// The balancer namespace (named, under /run/netns).
    pub netns_name: String,
    /// Where DNS answers (the balancer namespace's address on the bridge).
    pub dns_address: Ipv4Addr,
    /// Where node ports listen; every address when unset.
    pub node_address: Option<Ipv4Addr>,
    /// The node's network namespace, when it is not the one the process starts in.
    pub node_netns: Option<PathBuf>,
    pub strategy: Strategy,
    pub max_connections: usize,
    pub idle_timeout_ms: u64,
    pub upstream_dns: Vec<SocketAddr>,
    /// The control socket.
    pub socket: PathBuf,
}

impl BalancerSpec {
    fn limits(&self) -> ConnectionLimits {
        ConnectionLimits { max_connections: self.max_connections, idle_timeout: Duration::from_millis(self.idle_timeout_ms) }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Hello,
    Apply(Vec<ServiceEndpoints>),
    /// The table last applied (handed to a replacement).
    Table,
    View,
    Active(Ipv4Addr),
    Metrics,
    /// Close every listener and the control socket now; with `drain`, relay the open
    /// connections to their end (at most [`DRAIN_LIMIT`]) before exiting.
    Stop {
        drain: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum Response {
    Hello(Hello),
    Applied(Vec<ListenerFailure>),
    Table(Vec<ServiceEndpoints>),
    View(BalancerView),
    Active(usize),
    Metrics(Vec<ServiceCounters>),
    Stopping,
    Error(String),
}

/// Who answers on a control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Hello {
    protocol: u32,
    version: String,
    pid: i32,
    spec: BalancerSpec,
    /// The inode of the balancer namespace it serves (a namespace deleted and made
    /// again under the same name is another).
    netns_inode: u64,
}

/// Where the balancer of the node network on `bridge` answers.
pub fn socket_path(bridge: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{bridge}.balancer.sock"))
}

/// Sockets and runtime files of node networks (a tmpfs: gone with a reboot, as the
/// processes are).
const RUN_DIR: &str = "/run/orch";

/// Which build a binary is: the crate's version and the file's size and mtime (a rebuilt
/// or upgraded binary of the same version is another).
fn version_of(binary: &Path) -> String {
    let stamp = std::fs::metadata(binary).map(|m| format!("{}+{}.{}", m.len(), m.mtime(), m.mtime_nsec())).unwrap_or_default();
    format!("{} {stamp}", env!("CARGO_PKG_VERSION"))
}

/// The inode of a namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`): which
/// namespace it is.
fn netns_inode(path: &Path) -> Result<u64, NetError> {
    std::fs::metadata(path).map(|m| m.ino()).map_err(NetError::io("cannot stat network namespace", path))
}

fn protocol_error(socket: &Path, message: impl std::fmt::Display) -> NetError {
    NetError::Balancer(format!("{}: {message}", socket.display()))
}

// ---------------------------------------------------------------------------------------
// The process.

/// `__balancer SPEC-JSON`: serves until told to stop (or SIGTERM/SIGINT). Never returns.
pub fn main() -> ! {
    // JSON lines: the log is a file (`network/<bridge>.balancer.log`), not a terminal.
    orch_api::logging::init(orch_api::logging::LogFormat::Json, "info");
    let code = match run_process() {
        Ok(()) => 0,
        Err(error) => {
            tracing::error!(%error, "the balancer process stops");
            1
        }
    };
    std::process::exit(code)
}

fn run_process() -> Result<(), NetError> {
    let text = std::env::args().nth(2).ok_or_else(|| NetError::Balancer(format!("usage: {BALANCER_SUBCOMMAND} SPEC-JSON")))?;
    let spec: BalancerSpec = serde_json::from_str(&text).map_err(|e| NetError::Balancer(format!("the balancer's spec: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("balancer")
        .enable_all()
        .build()
        .map_err(|e| NetError::Thread(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(serve_process(spec))
}

async fn serve_process(spec: BalancerSpec) -> Result<(), NetError> {
    // Files this process makes (its control socket) are root's alone from the start.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let netns_path = Netns::named_path(&spec.netns_name);
    let netns = Netns::open(&netns_path)?;
    let inode = netns_inode(&netns_path)?;
    let node_netns = spec.node_netns.as_deref().map(Netns::open).transpose()?;
    let balancer = Arc::new(
        Balancer::start(netns, &spec.netns_name, spec.dns_address, spec.node_address, node_netns, (spec.strategy, spec.limits()), spec.upstream_dns.clone())
            .await?,
    );
    // A socket file left by a balancer that is gone (the agent found nobody answering).
    let _ = std::fs::remove_file(&spec.socket);
    if let Some(dir) = spec.socket.parent() {
        std::fs::create_dir_all(dir).map_err(NetError::io("cannot create", dir))?;
    }
    let control = tokio::net::UnixListener::bind(&spec.socket).map_err(NetError::io("cannot bind the balancer's control socket", &spec.socket))?;
    std::fs::set_permissions(&spec.socket, std::fs::Permissions::from_mode(0o600)).map_err(NetError::io("cannot restrict", &spec.socket))?;
    let socket_inode = std::fs::metadata(&spec.socket).map(|m| m.ino()).map_err(NetError::io("cannot stat", &spec.socket))?;
    let binary = std::env::current_exe().map_err(NetError::io("cannot find this binary", "/proc/self/exe"))?;
    let hello = Hello {
        protocol: PROTOCOL,
        version: version_of(&binary),
        pid: std::process::id().try_into().unwrap_or(i32::MAX),
        spec: spec.clone(),
        netns_inode: inode,
    };
    // The agent waits for this line; nothing else is ever written to stdout.
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "ready").and_then(|()| stdout.flush());
    }
    tracing::info!(socket = %spec.socket.display(), netns = %spec.netns_name, "balancer serving");

    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<bool>(1);
    let served = Arc::new(Served::default());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(NetError::io("cannot handle SIGTERM", ""))?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(NetError::io("cannot handle SIGINT", ""))?;
    let drain = loop {
        tokio::select! {
            accepted = control.accept() => match accepted {
                Ok((stream, _)) => {
                    let (balancer, hello, stop_tx, served) = (Arc::clone(&balancer), hello.clone(), stop_tx.clone(), Arc::clone(&served));
                    let socket = (spec.socket.clone(), socket_inode);
                    tokio::spawn(async move {
                        if let Err(error) = answer(stream, &balancer, &hello, &stop_tx, &socket, &served).await {
                            tracing::warn!(%error, "a control call failed");
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "cannot accept a control connection"),
            },
            Some(drain) = stop_rx.recv() => break drain,
            _ = terminate.recv() => break false,
            _ = interrupt.recv() => break false,
        }
    };
    drop(control);
    remove_socket_if_ours(&spec.socket, socket_inode);
    balancer.stop().await;
    if drain {
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
        while balancer.metrics().active_total() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tracing::info!(drain, "balancer stopped");
    Ok(())
}

/// Removes the control socket unless another balancer has bound the path since.
fn remove_socket_if_ours(path: &Path, inode: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.ino() == inode) {
        let _ = std::fs::remove_file(path);
    }
}

/// What the control connections share: the table last applied, and whether the process
/// was told to stop (then nothing opens a listener again).
#[derive(Default)]
struct Served {
    table: tokio::sync::Mutex<Vec<ServiceEndpoints>>,
    stopping: std::sync::atomic::AtomicBool,
}

async fn answer(
    stream: tokio::net::UnixStream,
    balancer: &Balancer,
    hello: &Hello,
    stop: &tokio::sync::mpsc::Sender<bool>,
    (socket, socket_inode): &(PathBuf, u64),
    served: &Served,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    tokio::io::BufReader::new(read.take(MAX_LINE)).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(e) => Response::Error(format!("not a request: {e}")),
        Ok(Request::Hello) => Response::Hello(hello.clone()),
        Ok(Request::Apply(table)) => {
            let mut last = served.table.lock().await;
            if served.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                Response::Error("this balancer is stopping".into())
            } else {
                match balancer.apply(&table).await {
                    Ok(failures) => {
                        *last = table;
                        Response::Applied(failures)
                    }
                    Err(error) => Response::Error(error.to_string()),
                }
            }
        }
        Ok(Request::Table) => Response::Table(served.table.lock().await.clone()),
        Ok(Request::View) => Response::View(balancer.view().await),
        Ok(Request::Active(ip)) => Response::Active(balancer.active_connections(ip).await),
        Ok(Request::Metrics) => Response::Metrics(balancer.metrics().snapshot()),
        Ok(Request::Stop { drain }) => {
            // The ports are free once the answer is sent: a new balancer can take them.
            // (Under the table's lock: no apply in flight opens one again.)
            let _applies = served.table.lock().await;
            served.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
            balancer.stop().await;
            remove_socket_if_ours(socket, *socket_inode);
            let _ = stop.try_send(drain);
            Response::Stopping
        }
    };
    let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

// ---------------------------------------------------------------------------------------
// The agent's side.

/// The agent's handle on the node's balancer process.
pub struct BalancerClient {
    spec: BalancerSpec,
    /// The binary to start it with.
    helper: PathBuf,
    log: PathBuf,
    pid: Mutex<i32>,
    /// The agent's copy of the balancer's counters, brought up to date before each scrape.
    metrics: BalancerMetrics,
    last_seen: Mutex<Vec<ServiceCounters>>,
}

impl BalancerClient {
    /// Finds the balancer serving `spec` and keeps it, or starts one (replacing one that
    /// serves another spec or speaks another version).
    pub async fn attach_or_start(spec: BalancerSpec, helper: &Path, log: PathBuf) -> Result<BalancerClient, NetError> {
        check_socket_path(&spec.socket)?;
        let client =
            BalancerClient { spec, helper: helper.to_owned(), log, pid: Mutex::new(0), metrics: BalancerMetrics::default(), last_seen: Mutex::new(Vec::new()) };
        let wanted_inode = netns_inode(&Netns::named_path(&client.spec.netns_name))?;
        let wanted_version = version_of(&client.helper);
        match call(&client.spec.socket, &Request::Hello).await {
            Ok(Response::Hello(hello))
                if hello.protocol == PROTOCOL && hello.version == wanted_version && hello.spec == client.spec && hello.netns_inode == wanted_inode =>
            {
                tracing::info!(pid = hello.pid, "the node's balancer runs already: kept, with the table it serves");
                client.set_pid(hello.pid);
                return Ok(client);
            }
            Ok(Response::Hello(hello)) => {
                tracing::info!(pid = hello.pid, version = %hello.version, "the node's balancer runs another build or spec: replaced, with its table (it relays its open connections to their end)");
                let table = match call(&client.spec.socket, &Request::Table).await {
                    Ok(Response::Table(table)) => table,
                    _ => Vec::new(),
                };
                if !matches!(call(&client.spec.socket, &Request::Stop { drain: true }).await, Ok(Response::Stopping)) {
                    client.kill_strays().await;
                }
                client.start().await?;
                if !table.is_empty() {
                    client.apply(&table).await?;
                }
                return Ok(client);
            }
            Ok(other) => return Err(protocol_error(&client.spec.socket, format!("answered {other:?} to hello"))),
            // Nobody answers: one whose socket is gone or that hangs would hold the ports.
            Err(_) => client.kill_strays().await,
        }
        client.start().await?;
        Ok(client)
    }

    /// Kills the balancers of this bridge that do not answer (a hung one, one whose
    /// socket is gone): they hold the ports a new one needs.
    async fn kill_strays(&self) {
        let strays = pids(&self.spec.bridge);
        if !strays.is_empty() {
            tracing::warn!(?strays, "balancers of this node network that do not answer: killed");
        }
        kill_and_wait(&strays).await;
    }

    /// Whether the balancer answers its socket.
    pub async fn answers(&self) -> bool {
        matches!(call(&self.spec.socket, &Request::Hello).await, Ok(Response::Hello(_)))
    }

    fn set_pid(&self, pid: i32) {
        *self.pid.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = pid;
    }

    fn pid(&self) -> i32 {
        *self.pid.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn start(&self) -> Result<(), NetError> {
        let spec = serde_json::to_string(&self.spec).map_err(|e| NetError::Balancer(e.to_string()))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.log).map_err(NetError::io("cannot open", &self.log))?;
        let mut command = tokio::process::Command::new(&self.helper);
        command.arg(BALANCER_SUBCOMMAND).arg(spec).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(log).process_group(0);
        let mut child = command.spawn().map_err(NetError::io("cannot start the balancer process", &self.helper))?;
        let pid = child.id().and_then(|id| i32::try_from(id).ok()).unwrap_or(0);
        let stdout = child.stdout.take().ok_or_else(|| NetError::Balancer("the balancer process has no stdout".into()))?;
        let mut line = String::new();
        let said = tokio::time::timeout(START_TIMEOUT, tokio::io::BufReader::new(stdout).read_line(&mut line)).await;
        if !matches!(said, Ok(Ok(_))) || line.trim() != "ready" {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(NetError::Balancer(format!(
                "the balancer process ({} {BALANCER_SUBCOMMAND}) did not start: {}",
                self.helper.display(),
                log_tail(&self.log)
            )));
        }
        // Tokio reaps it in the background once it exits while this process runs.
        drop(child);
        self.set_pid(pid);
        tracing::info!(pid, "the node's balancer started");
        Ok(())
    }

    /// One call; a balancer that is gone (killed, crashed) is started again and the call
    /// repeated once.
    async fn call_or_restart(&self, request: &Request) -> Result<Response, NetError> {
        match call(&self.spec.socket, request).await {
            Ok(response) => Ok(response),
            Err(error) if matches!(request, Request::Apply(_)) => {
                tracing::warn!(%error, "the node's balancer does not answer: starting it again");
                self.kill_strays().await;
                self.start().await?;
                call(&self.spec.socket, request).await
            }
            Err(error) => Err(error),
        }
    }

    /// Converges the balancer to `table`; returns the listeners it could not open.
    pub async fn apply(&self, table: &[ServiceEndpoints]) -> Result<Vec<ListenerFailure>, NetError> {
        match self.call_or_restart(&Request::Apply(table.to_vec())).await? {
            Response::Applied(failures) => Ok(failures),
            Response::Error(error) => Err(NetError::Balancer(error)),
            other => Err(protocol_error(&self.spec.socket, format!("answered {other:?} to apply"))),
        }
    }

    pub async fn view(&self) -> Result<BalancerView, NetError> {
        match call(&self.spec.socket, &Request::View).await? {
            Response::View(view) => Ok(view),
            other => Err(protocol_error(&self.spec.socket, format!("answered {other:?} to view"))),
        }
    }

    /// The TCP connections relayed to `ip` now; a balancer that does not answer relays none.
    pub async fn active_connections(&self, ip: Ipv4Addr) -> usize {
        match call(&self.spec.socket, &Request::Active(ip)).await {
            Ok(Response::Active(n)) => n,
            Ok(other) => {
                tracing::warn!(?other, "the balancer answered something else to active");
                0
            }
            Err(error) => {
                tracing::warn!(%error, "cannot ask the balancer for its connections");
                0
            }
        }
    }

    /// The agent's copy of the balancer's counters (registered in its registry).
    pub fn metrics(&self) -> &BalancerMetrics {
        &self.metrics
    }

    /// Brings the agent's copy of the counters up to date (blocking: called from the
    /// metrics endpoint's scrape, on a blocking thread).
    pub fn refresh_metrics_blocking(&self) {
        match call_blocking(&self.spec.socket, &Request::Metrics) {
            Ok(Response::Metrics(now)) => {
                let mut last = self.last_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                self.metrics.mirror(&last, &now);
                *last = now;
            }
            Ok(other) => tracing::warn!(?other, "the balancer answered something else to metrics"),
            Err(error) => tracing::warn!(%error, "cannot read the balancer's metrics"),
        }
    }

    /// Stops the balancer now (listeners, DNS, relayed connections) and waits until it is gone.
    pub async fn stop(&self) {
        stop_and_wait(&self.spec.socket, self.pid()).await;
    }
}

/// Stops the balancer answering on `socket` (its PID from its hello when `pid` is 0) and
/// waits until the process is gone (SIGKILL after 5 s). Nobody answering is fine.
pub async fn stop_and_wait(socket: &Path, pid: i32) {
    let pid = match (pid, call(socket, &Request::Hello).await) {
        (0, Ok(Response::Hello(hello))) => hello.pid,
        (pid, _) => pid,
    };
    let _ = call(socket, &Request::Stop { drain: false }).await;
    let _ = std::fs::remove_file(socket);
    if pid > 0 && !gone_within(pid, Duration::from_secs(5)).await {
        kill_and_wait(&[pid]).await;
    }
}

/// Stops every balancer of the node network on `bridge`: the one answering on its socket,
/// then any other its command line names (one whose socket is gone), SIGKILL.
pub async fn stop_all(bridge: &str) {
    stop_and_wait(&socket_path(bridge), 0).await;
    kill_and_wait(&pids(bridge)).await;
}

/// SIGKILL to each of `pids`, and wait (at most 5 s each) until it is gone.
async fn kill_and_wait(pids: &[i32]) {
    for pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
        gone_within(*pid, Duration::from_secs(5)).await;
    }
}

/// Whether balancer `pid` is gone within `limit` (polled every 10 ms).
async fn gone_within(pid: i32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while is_balancer(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// The PIDs of the balancer processes of the node network on `bridge`, found by their
/// command line (`__balancer SPEC`, the spec naming the bridge).
pub fn pids(bridge: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let mut args = cmdline.split(|b| *b == 0).skip(1);
            if args.next()? != BALANCER_SUBCOMMAND.as_bytes() {
                return None;
            }
            let spec: BalancerSpec = serde_json::from_slice(args.next()?).ok()?;
            (spec.bridge == bridge && is_balancer(pid)).then_some(pid)
        })
        .collect()
}

/// Whether `pid` is alive and a balancer process (a zombie or a reused PID is not).
fn is_balancer(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !zombie && cmdline.split(|b| *b == 0).any(|arg| arg == BALANCER_SUBCOMMAND.as_bytes())
}

fn check_socket_path(path: &Path) -> Result<(), NetError> {
    // sun_path holds 108 bytes with the terminating NUL.
    if path.as_os_str().len() > 107 {
        return Err(NetError::Balancer(format!("the control socket path {} is longer than 107 bytes", path.display())));
    }
    Ok(())
}

/// The last lines of the balancer's log, for an error.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    if lines.is_empty() {
        format!("nothing in {}", path.display())
    } else {
        format!("{} (from {})", lines.into_iter().rev().collect::<Vec<_>>().join(" | "), path.display())
    }
}

async fn call(socket: &Path, request: &Request) -> Result<Response, NetError> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        let mut text = serde_json::to_string(request).map_err(std::io::Error::other)?;
        text.push('\n');
        stream.write_all(text.as_bytes()).await?;
        stream.shutdown().await?;
        let mut answer = String::new();
        tokio::io::BufReader::new(stream.take(MAX_LINE)).read_line(&mut answer).await?;
        serde_json::from_str::<Response>(&answer).map_err(std::io::Error::other)
    };
    match tokio::time::timeout(CALL_TIMEOUT, exchange).await {
        Ok(result) => result.map_err(NetError::io("balancer control socket", socket)),
        Err(_) => Err(protocol_error(socket, format!("no answer within {CALL_TIMEOUT:?}"))),
    }
}

fn call_blocking(socket: &Path, request: &Request) -> Result<Response, NetError> {
    let exchange = || -> std::io::Result<Response> {
        let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        let mut text = serde_json::to_string(request).map_err(std::io::Error::other)?;
        text.push('\n');
        stream.write_all(text.as_bytes())?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut answer = String::new();
        std::io::BufReader::new(std::io::Read::take(stream, MAX_LINE)).read_line(&mut answer)?;
        serde_json::from_str::<Response>(&answer).map_err(std::io::Error::other)
    };
    exchange().map_err(NetError::io("balancer control socket", socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_survive_the_wire() {
        let request = Request::Stop { drain: true };
        let text = serde_json::to_string(&request).expect("json");
        assert!(matches!(serde_json::from_str::<Request>(&text), Ok(Request::Stop { drain: true })), "{text}");
        let failure = ListenerFailure { listener: super::super::table::ListenKey::NodePort(30080), service: "web".into(), error: "address in use".into() };
        let text = serde_json::to_string(&Response::Applied(vec![failure.clone()])).expect("json");
        assert!(matches!(serde_json::from_str::<Response>(&text), Ok(Response::Applied(f)) if f == vec![failure]), "{text}");
    }

    #[test]
    fn a_socket_path_too_long_for_sun_path_is_refused_by_name() {
        let long = PathBuf::from(format!("/tmp/{}/b.sock", "x".repeat(120)));
        let error = check_socket_path(&long).expect_err("too long");
        assert!(error.to_string().contains("longer than 107 bytes"), "{error}");
        check_socket_path(Path::new("/var/lib/orch/agent/network/orch0.balancer.sock")).expect("short enough");
    }
}
