//! `orch-runc`: orch's runtime behind runc's command line, for containerd's runc shim,
//! Docker (`dockerd --add-runtime orch=/usr/local/bin/orch-runc`) and Podman
//! (`--runtime`). Single-threaded on purpose: `create` forks the container's processes.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use orch_agent::oci::{commands, create, exec, state, OciError};

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
    /// Create, start, wait for the program and delete (`runc run`); exits with its status.
    Run {
        /// The bundle directory (config.json and the root).
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Where to write the container process's PID.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// chroot instead of pivot_root.
        #[arg(long = "no-pivot")]
        no_pivot: bool,
        id: String,
    },
    /// Run another process in a created or running container.
    Exec {
        /// The process (the specification's `process` object); else COMMAND with the
        /// container's own process's settings.
        #[arg(short, long)]
        process: Option<PathBuf>,
        /// Exit once the program runs (the caller's subreaper inherits it).
        #[arg(short, long)]
        detach: bool,
        /// Where to write the process's PID.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// A unix socket that receives the terminal's pty master.
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Give the process a terminal (without --process).
        #[arg(short, long)]
        tty: bool,
        /// The working directory (without --process).
        #[arg(long)]
        cwd: Option<String>,
        /// An environment variable KEY=VALUE (without --process; repeatable).
        #[arg(short, long)]
        env: Vec<String>,
        /// UID[:GID] (without --process).
        #[arg(short, long)]
        user: Option<String>,
        /// Supplementary group ids (without --process; repeatable).
        #[arg(short = 'g', long = "additional-gids")]
        additional_gids: Vec<u32>,
        /// A capability added to the process's sets (without --process; repeatable).
        #[arg(short, long = "cap")]
        cap: Vec<String>,
        /// Set no_new_privs (without --process).
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        /// Extra descriptors to pass: not supported (only 0).
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: u32,
        id: String,
        /// The program and its arguments (without --process).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // A command line clap refuses is reported where the caller reads errors too
            // (containerd shows the log's last line, not stderr).
            if error.use_stderr() {
                let args: Vec<String> = std::env::args().collect();
                let (log, format) = log_flags(&args);
                let message = error.render().to_string();
                let first = message.lines().next().unwrap_or_default().trim_start_matches("error: ");
                write_log(log.as_deref(), format, first);
            }
            error.exit()
        }
    };
    if cli.version {
        println!("orch-runc version {}\ncommit: {}\nspec: {}", env!("CARGO_PKG_VERSION"), orch_agent::runtime::BUILD_ID, orch_agent::oci::OCI_VERSION);
        return ExitCode::SUCCESS;
    }
    match run(&cli) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        Err(error) => {
            eprintln!("orch-runc: {error}");
            write_log(cli.log.as_deref(), cli.log_format, &error.to_string());
            ExitCode::FAILURE
        }
    }
}

/// `--log` and `--log-format` found by hand in a command line clap refused.
fn log_flags(args: &[String]) -> (Option<PathBuf>, LogFormat) {
    let mut log = None;
    let mut format = LogFormat::Text;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (word.as_str(), None),
        };
        let value = || inline.clone().or_else(|| words.clone().next().cloned());
        match flag {
            "--log" => log = value().map(PathBuf::from),
            "--log-format" if value().as_deref() == Some("json") => format = LogFormat::Json,
            _ => {}
        }
    }
    (log, format)
}

/// The program's exit status to exit with (`exec` without `--detach`), else 0.
fn run(cli: &Cli) -> Result<i32, OciError> {
    let Some(command) = &cli.command else {
        return Err(OciError::Failed("a command is required (create, start, run, exec, state, kill, delete, ps, list, features; --help)".into()));
    };
    if matches!(command, Command::Features) {
        return print_json(&commands::features()).map(|()| 0);
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
    if matches!(command, Command::Create { .. } | Command::Exec { .. } | Command::Run { .. }) {
        // Before anything is made: a container's process must not lead to this binary.
        orch_agent::oci::sealed::reexec_sealed()?;
    }
    if let Command::Exec { process, detach, pid_file, console_socket, tty, cwd, env, user, additional_gids, cap, no_new_privs, preserve_fds, id, command } =
        command
    {
        if *preserve_fds > 0 {
            return Err(OciError::Failed("--preserve-fds: passing extra descriptors is not supported yet".into()));
        }
        let process = match process {
            Some(path) => {
                if !command.is_empty()
                    || *tty
                    || cwd.is_some()
                    || !env.is_empty()
                    || user.is_some()
                    || !cap.is_empty()
                    || *no_new_privs
                    || !additional_gids.is_empty()
                {
                    return Err(OciError::Failed(
                        "exec: --process FILE says everything: give no COMMAND, --tty, --cwd, --env, --user, --additional-gids, --cap or --no-new-privs with it"
                            .into(),
                    ));
                }
                exec::ProcessSource::File(path.clone())
            }
            None => exec::ProcessSource::Overrides(exec::Overrides {
                args: command.clone(),
                env: env.clone(),
                cwd: cwd.clone(),
                tty: *tty,
                user: user.as_deref().map(parse_user).transpose()?,
                additional_gids: additional_gids.clone(),
                capabilities: cap.iter().map(|c| capability_name(c)).collect::<Result<_, _>>()?,
                no_new_privileges: *no_new_privs,
            }),
        };
        return exec::exec(&exec::ExecOptions {
            root: root.clone(),
            id: id.clone(),
            process,
            detach: *detach,
            pid_file: pid_file.clone(),
            console_socket: console_socket.clone(),
        });
    }
    if let Command::Run { bundle, pid_file, no_pivot, id } = command {
        return commands::run(&create::CreateOptions {
            root: root.clone(),
            id: id.clone(),
            bundle: bundle.clone(),
            pid_file: pid_file.clone(),
            console_socket: None,
            no_pivot: *no_pivot,
        });
    }
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
        Command::Exec { .. } | Command::Run { .. } => Ok(()),
    }
    .map(|()| 0)
}

/// `--cap net_admin`, `--cap CAP_NET_ADMIN`: the capability's name, or an error for one
/// the kernel does not know.
fn capability_name(given: &str) -> Result<String, OciError> {
    let upper = given.to_uppercase();
    let name = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    match name.parse::<caps::Capability>() {
        Ok(_) => Ok(name),
        Err(_) => Err(OciError::Failed(format!("--cap {given:?}: not a capability (CAP_NET_ADMIN, net_admin…)"))),
    }
}

/// `--user UID[:GID]`.
fn parse_user(value: &str) -> Result<(u32, Option<u32>), OciError> {
    let bad = || OciError::Failed(format!("--user {value:?}: expected UID[:GID] (numbers)"));
    match value.split_once(':') {
        Some((uid, gid)) => Ok((uid.parse().map_err(|_| bad())?, Some(gid.parse().map_err(|_| bad())?))),
        None => Ok((value.parse().map_err(|_| bad())?, None)),
    }
}

fn print_json(value: &serde_json::Value) -> Result<(), OciError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| OciError::Failed(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// With `--log`, the error in the log (containerd shows that line).
fn write_log(log: Option<&std::path::Path>, format: LogFormat, message: &str) {
    let Some(path) = log else { return };
    let line = match format {
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
