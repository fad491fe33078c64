//! `orch exec [-i] [-t] REPLICA -- CMD…`, through the controller to the node's agent.

use std::io::Write;

use clap::Args;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

use crate::client::explain;

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
pub async fn exec(api: ApiClient<Channel>, args: &ExecArgs) -> anyhow::Result<i32> {
    let start = pb::ExecStart { replica: args.replica.clone(), command: args.command.clone(), tty: args.tty, console: false };
    // With a terminal on both ends, ours goes raw (keys pass through, the remote echoes).
    attach(api, start, args.stdin, args.tty && args.stdin, None).await
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// A replica of a system container (spec.mode: system).
    pub replica: String,
}

/// The key that detaches from a console (as telnet's and virsh's): Ctrl-].
const DETACH: u8 = 0x1d;

/// `orch console REPLICA`: attached to a system container's console until Ctrl-].
pub async fn console(api: ApiClient<Channel>, args: &ConsoleArgs) -> anyhow::Result<()> {
    eprintln!("attached to the console of {} (Ctrl-] detaches)", args.replica);
    let start = pb::ExecStart { replica: args.replica.clone(), command: Vec::new(), tty: true, console: true };
    attach(api, start, true, true, Some(DETACH)).await?;
    eprintln!("\r\ndetached from {}", args.replica);
    Ok(())
}

/// Starts `start` on the replica's node and relays until it ends (its exit code), or
/// until `detach` is typed.
async fn attach(mut api: ApiClient<Channel>, start: pb::ExecStart, stdin: bool, raw: bool, detach: Option<u8>) -> anyhow::Result<i32> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<pb::ExecInput>(16);
    sender.send(pb::ExecInput { body: Some(pb::exec_input::Body::Start(start)) }).await?;
    let _raw = if raw { RawTerminal::enter() } else { None };
    let (detached, mut detaching) = tokio::sync::oneshot::channel::<()>();
    if stdin {
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buffer = vec![0u8; 16 << 10];
            loop {
                match stdin.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) if detach.is_some_and(|key| buffer[..n].contains(&key)) => {
                        let _ = detached.send(());
                        return;
                    }
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
    // Polled until it resolves once (a resolved receiver must not be polled again):
    // detached, or the input ended without the key.
    let mut may_detach = stdin && detach.is_some();
    loop {
        let message = tokio::select! {
            message = output.message() => message.map_err(explain)?,
            detached = &mut detaching, if may_detach => {
                if detached.is_ok() {
                    return Ok(0);
                }
                may_detach = false;
                continue;
            }
        };
        let Some(message) = message else { break };
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
