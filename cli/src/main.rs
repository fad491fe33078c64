//! `orch`: the command line. One file per subcommand under `commands/`. The same binary
//! is the agent's helper in `orch up` (it re-executes itself as the container shim and
//! the exec helper), so those hidden subcommands are dispatched before anything else.

mod client;
mod commands;
mod output;
mod sources;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use orch_agent::runtime::{exec, init, INIT_SUBCOMMAND};

#[derive(Debug, Parser)]
#[command(name = "orch", version, about = "orch: a small, fast container orchestrator")]
struct Cli {
    /// The controller: HOST:PORT, several separated by commas (tried in order), or
    /// http://HOST:PORT for one started with --insecure-listen; else ORCH_SERVER, the
    /// config file's current context (~/.config/orch/config.toml), 127.0.0.1:7100.
    #[arg(long, global = true, env = "ORCH_SERVER")]
    server: Option<String>,
    /// The PKI directory: the CLI's credential (ca.pem, admin.pem, admin.key) and, for
    /// `orch up`, where the cluster's certificates are made on the first start; else the
    /// context's ca, cert and key; else /etc/orch/pki.
    #[arg(long, global = true, env = "ORCH_TLS_DIR")]
    tls_dir: Option<std::path::PathBuf>,
    /// A context of the config file other than its current-context.
    #[arg(long, global = true, env = "ORCH_CONTEXT")]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a controller and a local agent in this process (the quick start).
    Up(Box<commands::up::UpArgs>),
    /// Create or update services, configs and secrets from manifests.
    Apply(commands::apply::ApplyArgs),
    /// What `apply -f` would change, field by field: exit 0 none, 1 some, 2 an error.
    Diff(commands::diff::DiffArgs),
    /// Create or update a config or a secret from files and literals.
    Create(commands::create::CreateArgs),
    /// List services, replicas, nodes, events, configs or secrets.
    Get(commands::get::GetArgs),
    /// Show one service, replica, node, config or secret in detail.
    Describe(commands::describe::DescribeArgs),
    /// Everything that happened to a replica or a service, in order and in plain words:
    /// where it was scheduled and why, exits, probe flips, moves and their causes.
    Why(commands::why::WhyArgs),
    /// Delete services (by name or by manifest), configs, secrets or nodes.
    Delete(commands::delete::DeleteArgs),
    /// Change a service's replica count.
    Scale(commands::scale::ScaleArgs),
    /// Follow a rolling update.
    Rollout(commands::rollout::RolloutArgs),
    /// Mark a node unschedulable: it keeps its replicas and takes no new ones.
    Cordon(commands::node::NodeArgs),
    /// Make a cordoned or drained node take replicas again.
    Uncordon(commands::node::NodeArgs),
    /// Cordon a node and move its replicas elsewhere (replacements ready first); exits
    /// when it is empty.
    Drain(commands::node::DrainArgs),
    /// Move replicas back towards the spread the scheduler would choose today (one at a
    /// time, each replacement ready first); waits until balanced.
    Rebalance(commands::rebalance::RebalanceArgs),
    /// Inject faults for a while on a seeded plan: replicas killed at a rate, a node taken
    /// down, a node partitioned (outages only on agents started with --allow-chaos).
    Chaos(commands::chaos::ChaosArgs),
    /// Send steady requests through services' VIPs and node ports for a while; report
    /// sent, answered, cut and lost per service, and the incidents (exit 1 if any lost).
    Verify(commands::verify::VerifyArgs),
    /// Print a replica's (or every replica of a service's) output.
    Logs(commands::logs::LogsArgs),
    /// Run a command in a replica: `orch exec REPLICA -- CMD…` (-i passes stdin).
    Exec(commands::exec::ExecArgs),
    /// Attach to a system container's console (what its init and services print; what
    /// you type goes to it); Ctrl-] detaches.
    Console(commands::exec::ConsoleArgs),
    /// CPU and memory in use, per node or per replica.
    Top { kind: commands::top::TopKind },
    /// Draw the live cluster: nodes, bridges, veths, addresses, balancers, links.
    Topology(commands::topology::TopologyArgs),
    /// Check manifests without applying them: exit 0 when valid, 1 with every problem.
    Validate(commands::validate::ValidateArgs),
    /// Write every orch key of the store (read at one revision, through the controller)
    /// to a file; `orch-controller restore` puts it back.
    Backup(commands::backup::BackupArgs),
    /// The config file's contexts: get-contexts, use-context NAME, current-context.
    Config(commands::config::ConfigArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
    /// Print the version of this client.
    Version,
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == INIT_SUBCOMMAND) {
        init::shim_main();
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == exec::EXEC_SUBCOMMAND) {
        exec::exec_main();
    }
    // The node's balancer, a process of its own that outlives the agent.
    if std::env::args_os().nth(1).is_some_and(|a| a == orch_agent::net::balancer_process::BALANCER_SUBCOMMAND) {
        orch_agent::net::balancer_process::main();
    }
    let cli = Cli::parse();
    // `orch diff` exits as kubectl's: 1 means "differences", so an error is 2.
    let failure = if matches!(cli.command, Command::Diff(_)) { ExitCode::from(2) } else { ExitCode::FAILURE };
    let outcome = match cli.command {
        Command::Validate(args) => commands::validate::run(&args),
        Command::Config(args) => commands::config::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Version => {
            println!("orch {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "orch", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        command => run_async(&cli.server, &cli.tls_dir, &cli.context, command),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            failure
        }
    }
}

fn run_async(server: &Option<String>, tls_dir: &Option<std::path::PathBuf>, context: &Option<String>, command: Command) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        if let Command::Up(args) = command {
            orch_api::logging::init(args.log_format, "warn");
            let pki = tls_dir.clone().unwrap_or_else(|| client::DEFAULT_PKI_DIR.into());
            commands::up::run(*args, &pki).await?;
            return Ok(ExitCode::SUCCESS);
        }
        let target = client::target(server.as_deref(), tls_dir.as_deref(), context.as_deref())?;
        let api = client::connect(&target).await?;
        match command {
            Command::Apply(args) => commands::apply::apply(api, &args).await?,
            Command::Diff(args) => {
                let differs = commands::diff::diff(api, &args).await?;
                return Ok(if differs { ExitCode::FAILURE } else { ExitCode::SUCCESS });
            }
            Command::Create(args) => commands::create::create(api, &args).await?,
            Command::Get(args) => commands::get::run(api, &args).await?,
            Command::Describe(args) => commands::describe::run(api, &args).await?,
            Command::Why(args) => commands::why::why(api, &args).await?,
            Command::Delete(args) => commands::delete::delete(api, &args).await?,
            Command::Scale(args) => commands::scale::scale(api, &args).await?,
            Command::Rollout(args) => commands::rollout::rollout(api, &args).await?,
            Command::Cordon(args) => commands::node::cordon(api, &args).await?,
            Command::Uncordon(args) => commands::node::uncordon(api, &args).await?,
            Command::Drain(args) => commands::node::drain(api, &args).await?,
            Command::Rebalance(args) => commands::rebalance::rebalance(api, &args).await?,
            Command::Chaos(args) => commands::chaos::chaos(api, &args).await?,
            Command::Verify(args) => commands::verify::verify(api, &args).await?,
            Command::Logs(args) => commands::logs::logs(api, &args).await?,
            Command::Exec(args) => {
                let code = commands::exec::exec(api, &args).await?;
                return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
            }
            Command::Console(args) => commands::exec::console(api, &args).await?,
            Command::Top { kind } => commands::top::top(api, kind).await?,
            Command::Topology(args) => commands::topology::topology(api, &args).await?,
            Command::Backup(args) => commands::backup::backup(api, &args).await?,
            Command::Up(_) | Command::Validate(_) | Command::Config(_) | Command::Version | Command::Completion { .. } => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}
