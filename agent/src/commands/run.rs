//! `orch-agent run`: one container in the foreground, the way `runc run` uses
//! libcontainer. Streams the container's output, exits with its code (128+N when killed
//! by signal N), and removes every kernel object it made, on Ctrl-C too.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use nix::sys::signal::Signal;
use orch_api::manifest::quantity::{parse_cpu_millis, parse_memory_bytes};
use tokio::signal::unix::{signal, SignalKind};

use orch_agent::cgroups::Limits;
use orch_agent::images::{resolve_process, ImageAccounts, ImageStore, RegistrySettings};
use orch_agent::net::{NodeNetwork, NodeNetworkConfig, Strategy, Subnet};
use orch_agent::runtime::BindMount;
use orch_agent::runtime::{
    capability_set, ContainerSpec, IdRange, Runtime, RuntimeConfig, RuntimeError, SeccompProfile, Security, Stdio, User, CODE_RUNTIME, DEFAULT_ID_RANGE,
};
use orch_agent::StateDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetMode {
    /// Only a loopback interface.
    None,
    /// A veth on the node bridge with an address from the node's subnet.
    Bridge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompMode {
    RuntimeDefault,
    Unconfined,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A directory to use as the read-only root (an overlay keeps it unchanged).
    #[arg(long, value_name = "DIR", conflicts_with = "image", required_unless_present = "image")]
    pub rootfs: Option<PathBuf>,
    /// An image: oci:PATH[:TAG], oci-archive:PATH[:TAG] or HOST[:PORT]/REPO[:TAG|@DIGEST].
    /// Its Entrypoint, Cmd, Env, WorkingDir and User are the defaults.
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// Replace the image's Entrypoint (the command after `--` replaces its Cmd).
    #[arg(long, value_name = "PROGRAM", requires = "image")]
    pub entrypoint: Option<String>,
    /// Registry credentials (Docker's auth.json shape) and plain-HTTP registries, in a
    /// file only root may read [default: /etc/orch/registries.json when it exists].
    #[arg(long, value_name = "PATH")]
    pub registry_config: Option<PathBuf>,
    /// Container name (a DNS label); generated when absent.
    #[arg(long)]
    pub name: Option<String>,
    /// Hostname inside the container; the name by default.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Memory limit, e.g. 64Mi.
    #[arg(long, value_name = "QUANTITY")]
    pub memory: Option<String>,
    /// CPU limit, e.g. 0.5 or 500m.
    #[arg(long, value_name = "QUANTITY")]
    pub cpus: Option<String>,
    /// Maximum number of processes.
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// CPUs to run on, e.g. 0-1.
    #[arg(long, value_name = "LIST")]
    pub cpuset: Option<String>,
    /// Environment variable, repeatable.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    #[arg(long, value_enum, default_value = "none")]
    pub net: NetMode,
    /// With --net bridge: the node bridge (created, with its balancer namespace, if
    /// missing; removed again on exit when this run created it).
    #[arg(long, default_value = "orch0")]
    pub bridge: String,
    /// With --net bridge: the node's pod subnet.
    #[arg(long, default_value = "10.88.1.0/24")]
    pub pod_subnet: String,
    /// With --net bridge: the service VIP range, routed to the balancer namespace.
    #[arg(long, default_value = "10.96.0.0/16")]
    pub service_cidr: String,
    /// Run in a user namespace: root inside is HOST_ID on the host (default
    /// 100000:65536), so a process that escapes holds no privilege there.
    #[arg(long, value_name = "HOST_ID[:SIZE]", num_args = 0..=1, default_missing_value = "100000:65536")]
    pub userns: Option<String>,
    /// Run the command as UID:GID (numeric), instead of the image's user or root.
    #[arg(long, value_name = "UID:GID")]
    pub user: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// A capability to keep besides Docker's default set (NET_ADMIN, ALL…); repeatable.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// A capability to drop from the set (MKNOD, ALL…); repeatable.
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// The seccomp filter: Docker's default profile, or none.
    #[arg(long, value_enum, default_value = "runtime-default")]
    pub seccomp: SeccompMode,
    /// Seconds between SIGTERM and SIGKILL when stopping on a signal.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: u64,
    /// Where container directories and state live.
    #[arg(long, env = "ORCH_AGENT_STATE_DIR", default_value = "/var/lib/orch/agent")]
    pub state_dir: PathBuf,
    /// Parent of the container's cgroup in every hierarchy.
    #[arg(long, env = "ORCH_CGROUP_PARENT", default_value = "orch")]
    pub cgroup_parent: String,
    /// The command and its arguments (with --image: replaces the image's Cmd).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs the container; returns the process exit code.
pub async fn run(args: RunArgs) -> i32 {
    match run_container(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("orch-agent: {error}");
            error.exit_code()
        }
    }
}

fn bad_flag(flag: &str, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Start { message: format!("--{flag}: {reason}"), code: CODE_RUNTIME }
}

fn limits(args: &RunArgs) -> Result<Limits, RuntimeError> {
    let memory_bytes = args.memory.as_deref().map(parse_memory_bytes).transpose().map_err(|e| bad_flag("memory", e))?;
    let cpu_limit_millis = args.cpus.as_deref().map(parse_cpu_millis).transpose().map_err(|e| bad_flag("cpus", e))?;
    if memory_bytes == Some(0) || cpu_limit_millis == Some(0) || args.pids == Some(0) {
        return Err(bad_flag("memory, --cpus and --pids", "must be more than 0"));
    }
    if let Some(cpus) = &args.cpuset {
        if cpus.is_empty() || !cpus.bytes().all(|b| b.is_ascii_digit() || b == b',' || b == b'-') {
            return Err(bad_flag("cpuset", format!("{cpus:?} is not a CPU list such as 0-1,3")));
        }
    }
    Ok(Limits {
        memory_bytes,
        cpu_limit_millis,
        cpu_request_millis: cpu_limit_millis,
        pids: args.pids,
        cpuset: args.cpuset.clone(),
        devices: None,
        nested_cgroups: false,
    })
}

fn id_range(text: &str) -> Result<IdRange, RuntimeError> {
    let (host, size) = text.split_once(':').unwrap_or((text, ""));
    let host_id = host.parse::<u32>().map_err(|_| bad_flag("userns", format!("{host:?} is not a host id")))?;
    let size =
        if size.is_empty() { DEFAULT_ID_RANGE.size } else { size.parse::<u32>().map_err(|_| bad_flag("userns", format!("{size:?} is not a range size")))? };
    if host_id == 0 || size == 0 {
        return Err(bad_flag("userns", "the host id and the size must be more than 0 (root must not map to root)"));
    }
    Ok(IdRange { host_id, size })
}

fn security(args: &RunArgs) -> Result<Security, RuntimeError> {
    let capabilities = capability_set(&args.cap_add, &args.cap_drop).map_err(|e| bad_flag("cap-add and --cap-drop", e))?;
    let seccomp = match args.seccomp {
        SeccompMode::RuntimeDefault => SeccompProfile::RuntimeDefault,
        SeccompMode::Unconfined => SeccompProfile::Unconfined,
    };
    Ok(Security { capabilities, seccomp, read_only_root: args.read_only })
}

fn user(text: &str) -> Result<User, RuntimeError> {
    let (uid, gid) = text.split_once(':').ok_or_else(|| bad_flag("user", format!("{text:?} is not UID:GID")))?;
    let id = |part: &str| part.parse::<u32>().map_err(|_| bad_flag("user", format!("{part:?} in {text:?} is not a numeric id")));
    Ok(User::ids(id(uid)?, id(gid)?))
}

async fn run_container(args: RunArgs) -> Result<i32, RuntimeError> {
    let limits = limits(&args)?;
    let security = security(&args)?;
    let run_as = args.user.as_deref().map(user).transpose()?;
    let user_namespace = args.userns.as_deref().map(id_range).transpose()?;
    for entry in &args.env {
        if !entry.contains('=') || entry.starts_with('=') {
            return Err(bad_flag("env", format!("{entry:?} is not KEY=VALUE")));
        }
    }
    let id = args.name.clone().unwrap_or_else(generated_name);
    let process = match (&args.rootfs, &args.image) {
        (Some(rootfs), _) => {
            if args.command.is_empty() {
                return Err(bad_flag("rootfs", "a command is needed after `--` (a plain rootfs has no defaults)"));
            }
            Process { layers: vec![rootfs.clone()], args: args.command.clone(), env: args.env.clone(), cwd: None, user: None, image: None }
        }
        (None, Some(reference)) => image_process(&args, reference).await?,
        (None, None) => return Err(bad_flag("rootfs", "give --rootfs DIR or --image REF")),
    };
    let init_exe = std::env::current_exe().map_err(RuntimeError::io("cannot find the agent binary", "/proc/self/exe"))?;
    let runtime = Runtime::new(RuntimeConfig { state_dir: args.state_dir.clone(), cgroup_parent: args.cgroup_parent.clone(), init_exe })?;
    let network = match args.net {
        NetMode::None => None,
        NetMode::Bridge => Some(node_network(&args).await?),
    };
    let hostname = args.hostname.clone().unwrap_or_else(|| id.clone());
    let files_dir = StateDir::new(&args.state_dir).files(&id);
    let mut mounts = Vec::new();
    if let Some(network) = &network {
        match network.prepare(&id, &hostname, &files_dir) {
            Ok((_, files)) => mounts = files.into_iter().map(|(source, target)| BindMount::new(source, target)).collect(),
            Err(e) => {
                release_network(network, &id, &files_dir).await;
                return Err(bad_flag("net", e));
            }
        }
    }
    let spec = ContainerSpec {
        id,
        layers: process.layers,
        hostname: Some(hostname),
        args: process.args,
        env: process.env,
        cwd: args.workdir.clone().or(process.cwd),
        limits,
        stdio: Stdio::Inherit,
        user_namespace,
        user: run_as.or(process.user),
        image: process.image,
        mounts,
        security,
        system: None,
        stop_signal: Signal::SIGTERM as i32,
    };
    let exit = run_to_end(&args, &runtime, &spec, network.as_ref()).await;
    if let Some(network) = network {
        release_network(&network, &spec.id, &files_dir).await;
        if network.created_bridge() {
            if let Err(e) = network.teardown(true).await {
                eprintln!("orch-agent: removing the node network: {e}");
            }
        }
    }
    exit
}

/// Starts the container, waits for it (forwarding Ctrl-C and friends), removes it.
async fn run_to_end(args: &RunArgs, runtime: &Runtime, spec: &ContainerSpec, network: Option<&NodeNetwork>) -> Result<i32, RuntimeError> {
    // Listen before starting, so a Ctrl-C during the start is not lost.
    let mut interrupt = signal(SignalKind::interrupt()).map_err(RuntimeError::io("cannot handle", "SIGINT"))?;
    let mut terminate = signal(SignalKind::terminate()).map_err(RuntimeError::io("cannot handle", "SIGTERM"))?;
    let mut hangup = signal(SignalKind::hangup()).map_err(RuntimeError::io("cannot handle", "SIGHUP"))?;
    let container = runtime.start_with_network(spec, network.map(|n| n as &dyn orch_agent::runtime::ContainerNetwork)).await?;
    let grace = Duration::from_secs(args.stop_timeout);
    let exit = tokio::select! {
        exit = container.wait() => exit,
        _ = interrupt.recv() => container.stop_with(Signal::SIGINT as i32, grace).await,
        _ = terminate.recv() => container.stop_with(Signal::SIGTERM as i32, grace).await,
        _ = hangup.recv() => container.stop_with(Signal::SIGHUP as i32, grace).await,
    };
    if exit.oom_killed {
        eprintln!("orch-agent: container {} was OOMKilled (memory limit reached)", container.id());
    }
    let id = container.id().to_owned();
    if let Err(e) = container.remove().await {
        eprintln!("orch-agent: cleaning up container {id}: {e}");
        return Ok(CODE_RUNTIME);
    }
    Ok(exit.code)
}

async fn node_network(args: &RunArgs) -> Result<NodeNetwork, RuntimeError> {
    let subnet = Subnet::parse(&args.pod_subnet).map_err(|e| bad_flag("pod-subnet", e))?;
    let service_cidr = Subnet::parse(&args.service_cidr).map_err(|e| bad_flag("service-cidr", e))?;
    NodeNetwork::setup(NodeNetworkConfig {
        bridge: args.bridge.clone(),
        subnet,
        service_cidr,
        cluster_cidr: subnet.supernet(16),
        upstream_dns: Vec::new(),
        state_dir: args.state_dir.clone(),
        node_address: None,
        strategy: Strategy::RoundRobin,
        limits: orch_agent::net::ConnectionLimits::default(),
        node_netns: None,
        helper: None,
        data_path: orch_agent::net::DataPath::Proxy,
    })
    .await
    .map_err(|e| bad_flag("net", e))
}

/// Frees the container's address and its generated files.
async fn release_network(network: &NodeNetwork, id: &str, files: &std::path::Path) {
    if let Err(e) = network.detach(id).await {
        eprintln!("orch-agent: releasing the network of {id}: {e}");
    }
    let _ = std::fs::remove_dir_all(files);
}

/// What to run and from which layers.
struct Process {
    layers: Vec<PathBuf>,
    args: Vec<String>,
    env: Vec<String>,
    cwd: Option<String>,
    user: Option<User>,
    image: Option<String>,
}

/// Pulls the image (or finds it in the node's store) and applies its defaults, the way
/// `docker run IMAGE CMD` does: CMD replaces Cmd, --entrypoint replaces Entrypoint.
async fn image_process(args: &RunArgs, reference: &str) -> Result<Process, RuntimeError> {
    let image_error = |e: orch_agent::images::ImageError| bad_flag("image", e);
    let store = ImageStore::open(&StateDir::new(&args.state_dir).images(), RegistrySettings::from_flag(args.registry_config.clone())).map_err(image_error)?;
    let (record, _) = store.pull(reference).await.map_err(image_error)?;
    let layers = store.lower_dirs(&record).map_err(image_error)?;
    let entrypoint: Vec<String> = args.entrypoint.iter().cloned().collect();
    let accounts = ImageAccounts::read(&layers);
    let resolved = resolve_process(&record.defaults, &entrypoint, &args.command, &args.env, &accounts).map_err(|e| bad_flag("image", e))?;
    Ok(Process { layers, args: resolved.args, env: resolved.env, cwd: resolved.cwd, user: resolved.user, image: Some(record.manifest_digest) })
}

fn generated_name() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("run-{}-{nanos:08x}", std::process::id())
}
