//! `orch-agent`: the thin binary over the `orch_agent` library. One file per subcommand
//! in `commands/`.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orch_agent::runtime::{exec, init, INIT_SUBCOMMAND};

#[derive(Debug, Parser)]
#[command(name = "orch-agent", version, about = "orch node agent: runs containers with namespaces and cgroups")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one container in the foreground (a debug command, like `runc run`).
    Run(Box<commands::run::RunArgs>),
    /// Pull, list and prune the node's images.
    Images(commands::images::ImagesArgs),
    /// The node network by hand (bridge, balancer, routes).
    Net(commands::net::NetArgs),
    /// The node agent: register with the controller, run the replicas it asks for.
    Serve(Box<commands::serve::ServeArgs>),
    /// Stop every container of this node's agent and remove its network and records.
    Teardown(commands::serve::TeardownArgs),
}

fn main() -> ExitCode {
    // The container start path re-executes this binary; it must stay single-threaded,
    // so it is dispatched before anything else (no tokio, no clap).
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
    if let Command::Serve(args) = cli.command {
        orch_api::logging::init(args.log_format, "info");
        return match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(runtime) => runtime.block_on(commands::serve::serve(*args)),
            Err(e) => {
                eprintln!("orch-agent: cannot start the async runtime: {e}");
                ExitCode::from(125)
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("orch-agent: cannot start the async runtime: {e}");
            return ExitCode::from(125);
        }
    };
    match cli.command {
        Command::Run(args) => ExitCode::from(u8::try_from(runtime.block_on(commands::run::run(*args))).unwrap_or(125)),
        Command::Images(args) => runtime.block_on(commands::images::run(args)),
        Command::Net(args) => runtime.block_on(commands::net::run(args)),
        Command::Teardown(args) => runtime.block_on(commands::serve::teardown(args)),
        Command::Serve(_) => ExitCode::SUCCESS,
    }
}
