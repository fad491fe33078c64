//! The netfilter programs orch runs — `nft` (Debian's `nftables`) and `conntrack`
//! (Debian's `conntrack`) — in the node's network namespace, or in another one through
//! `nsenter --net`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::NetError;

/// Runs `PROGRAM ARGS` (in `netns` through nsenter) with `input` on its stdin; its stdout.
/// A program that is missing is named with the Debian package that has it.
pub fn run(netns: Option<&Path>, program: &str, args: &[&str], input: Option<&str>) -> Result<String, NetError> {
    let mut command = match netns {
        Some(path) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net={}", path.display())).arg("--").arg(program);
            command
        }
        None => Command::new(program),
    };
    let what = match netns {
        Some(path) => format!("{program} {} (in network namespace {})", args.join(" "), path.display()),
        None => format!("{program} {}", args.join(" ")),
    };
    let failed = |message: String| NetError::Netfilter { command: what.clone(), message };
    let mut child =
        command.args(args).stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(
            |e| {
                failed(match e.kind() {
                    std::io::ErrorKind::NotFound => format!("the {program} program is missing: install Debian's {} package", package_of(program)),
                    _ => e.to_string(),
                })
            },
        )?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|e| failed(format!("writing its input: {e}")))?;
    }
    let output = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failed(String::from_utf8_lossy(&output.stderr).trim().to_owned()))
    }
}

fn package_of(program: &str) -> &str {
    match program {
        "nft" => "nftables",
        other => other,
    }
}

/// Deletes the nftables table `ip NAME`; a missing one is fine.
pub fn delete_table(netns: Option<&Path>, name: &str) -> Result<(), NetError> {
    match run(netns, "nft", &["delete", "table", "ip", name], None) {
        Err(NetError::Netfilter { message, .. }) if message.contains("No such file or directory") => Ok(()),
        other => other.map(drop),
    }
}

/// Whether the nftables table `ip NAME` exists.
pub fn has_table(netns: Option<&Path>, name: &str) -> Result<bool, NetError> {
    match run(netns, "nft", &["list", "table", "ip", name], None) {
        Ok(_) => Ok(true),
        Err(NetError::Netfilter { message, .. }) if message.contains("No such file or directory") => Ok(false),
        Err(other) => Err(other),
    }
}
