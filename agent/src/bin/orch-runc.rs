//! `orch-runc`: orch's runtime behind runc's command line, for containerd's runc shim,
//! Docker (`dockerd --add-runtime orch=/usr/local/bin/orch-runc`) and Podman
//! (`--runtime`). Single-threaded on purpose: `create` forks the container's processes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use orch_agent::oci::{commands, create, state, OciError};

#[derive(Debug, Parser)]
#[command(name = "orch-runc", about = "orch's container runtime with runc's command line (OCI runtime specification)", disable_version_flag = true)]
struct Cli {
    /// Where container state is kept.
    #[arg(long, global = true, default_value = state::DEFAULT_ROOT)]
    root: PathBuf,
    /// Where errors are also written (containerd reads them from there).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// systemd cgroup management: not supported (orch-runc writes cgroupfs paths).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility; orch-runc logs errors only.
    #[arg(long, global = true)]
    debug: bool,
    /// Print the version.
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a container from a bundle; its process waits for `start`.
    Create {
        /// The bundle directory (config.json and the root).
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Where to write the container process's PID.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// A unix socket that receives the console's pty master (process.terminal).
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// chroot instead of pivot_root.
        #[arg(long = "no-pivot")]
        no_pivot: bool,
        /// Accepted for runc compatibility (orch-runc makes no session keyring).
        #[arg(long = "no-new-keyring")]
        no_new_keyring: bool,
        /// Extra descriptors to pass: not supported (only 0).
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        id: String,
    },
    /// Run a created container's program.
    Start { id: String },
    /// The container's state (the OCI specification's JSON).
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's process.
    Kill {
        /// Every process of the container.
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Remove a stopped container.
    Delete {
        /// Kill it first when it runs.
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// The container's processes.
    Ps {
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        id: String,
    },
    /// Every container.
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        format: Format,
        /// Ids only.
        #[arg(short, long)]
        quiet: bool,
    },
    /// What this runtime supports (the specification's features.json).
    Features,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("orch-runc version {}\ncommit: {}\nspec: {}", env!("CARGO_PKG_VERSION"), orch_agent::runtime::BUILD_ID, orch_agent::oci::OCI_VERSION);
        return ExitCode::SUCCESS;
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&cli, &error.to_string());
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), OciError> {
    let Some(command) = &cli.command else {
        return Err(OciError::Failed("a command is required (create, start, state, kill, delete, ps, list, features; --help)".into()));
    };
    if matches!(command, Command::Features) {
        return print_json(&commands::features());
    }
    if cli.systemd_cgroup {
        return Err(OciError::Failed(
            "--systemd-cgroup: systemd cgroup management is not supported; orch-runc writes cgroupfs paths (dockerd: --exec-opt native.cgroupdriver=cgroupfs)"
                .into(),
        ));
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Err(OciError::Failed("orch-runc runs containers as root only".into()));
    }
    let root = &cli.root;
    match command {
        Command::Create { bundle, pid_file, console_socket, no_pivot, no_new_keyring: _, preserve_fds, id } => {
            if *preserve_fds > 0 {
                return Err(OciError::Failed("--preserve-fds: passing extra descriptors is not supported yet".into()));
            }
            create::create(&create::CreateOptions {
                root: root.clone(),
                id: id.clone(),
                bundle: bundle.clone(),
                pid_file: pid_file.clone(),
                console_socket: console_socket.clone(),
                no_pivot: *no_pivot,
            })
        }
        Command::Start { id } => commands::start(root, id),
        Command::State { id } => {
            println!("{}", commands::state_json(root, id)?);
            Ok(())
        }
        Command::Kill { all, id, signal } => commands::kill(root, id, signal, *all),
        Command::Delete { force, id } => commands::delete(root, id, *force),
        Command::Ps { format, id } => {
            let pids = commands::pids(root, id)?;
            match format {
                Format::Json => print_json(&serde_json::json!(pids)),
                Format::Table => {
                    println!("PID");
                    for pid in pids {
                        println!("{pid}");
                    }
                    Ok(())
                }
            }
        }
        Command::List { format, quiet } => {
            let containers = commands::list(root);
            match (format, quiet) {
                (Format::Json, _) => print_json(&serde_json::json!(containers)),
                (Format::Table, true) => {
                    containers.iter().for_each(|c| println!("{}", c["id"].as_str().unwrap_or_default()));
                    Ok(())
                }
                (Format::Table, false) => {
                    println!("{:<24} {:<8} {:<10} BUNDLE", "ID", "PID", "STATUS");
                    for c in &containers {
                        let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
                        println!("{:<24} {:<8} {:<10} {}", text("id"), c["pid"], text("status"), text("bundle"));
                    }
                    Ok(())
                }
            }
        }
        Command::Features => print_json(&commands::features()),
    }
}

fn print_json(value: &serde_json::Value) -> Result<(), OciError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| OciError::Failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// The error on stderr and, with `--log`, in the log (containerd shows that line).
fn report(cli: &Cli, message: &str) {
    eprintln!("orch-runc: {message}");
    let Some(path) = &cli.log else { return };
    let line = match cli.log_format {
        LogFormat::Json => {
            let time = orch_agent::runtime::output::format_rfc3339(u64::try_from(orch_agent::runtime::now_unix_ms()).unwrap_or(0).saturating_mul(1_000_000));
            format!("{}\n", serde_json::json!({"level": "error", "msg": message, "time": time}))
        }
        LogFormat::Text => format!("orch-runc: {message}\n"),
    };
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(line.as_bytes());
    }
}
