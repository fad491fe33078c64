//! `orch config get-contexts [-o table|name] | use-context NAME | current-context`: the
//! contexts of the config file (`$ORCH_CONFIG`, else `~/.config/orch/config.toml`), so
//! one CLI drives a local `orch up` and a cluster. The file's format and how a context
//! is chosen are `client.rs`'s; this is reading and (atomically) writing it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use crate::client::{self, ContextRow};
use crate::output::table;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// List the contexts: the current one marked `*`, each with its servers.
    GetContexts {
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: ContextsFormat,
        /// The table without its header line.
        #[arg(long)]
        no_headers: bool,
    },
    /// Make NAME the current context (rewrites `current-context`, nothing else).
    UseContext { name: String },
    /// Print the current context's name.
    CurrentContext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContextsFormat {
    Table,
    /// The names, one per line.
    Name,
}

/// The contexts as `get-contexts` prints them.
pub fn render(rows: &[ContextRow], format: ContextsFormat, headers: bool) -> String {
    match format {
        ContextsFormat::Name => rows.iter().map(|r| r.name.clone() + "\n").collect(),
        ContextsFormat::Table => {
            let cells: Vec<Vec<String>> =
                rows.iter().map(|r| vec![if r.current { "*".into() } else { String::new() }, r.name.clone(), r.servers.join(",")]).collect();
            let text = table(&["CURRENT", "NAME", "SERVERS"], &cells);
            if headers {
                text
            } else {
                text.lines().skip(1).map(|l| l.to_owned() + "\n").collect()
            }
        }
    }
}

fn config_file() -> anyhow::Result<(PathBuf, String)> {
    let path = client::config_path().ok_or_else(|| anyhow::anyhow!("no config file: set ORCH_CONFIG, or HOME for ~/.config/orch/config.toml"))?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read the config file {}", path.display()))?;
    let has_contexts = toml::from_str::<toml::Table>(&text).is_ok_and(|t| t.contains_key("contexts") || t.contains_key("current-context"));
    anyhow::ensure!(has_contexts, "{} has no contexts (the older `key = value` format?): write config.toml with [contexts.NAME] tables", path.display());
    Ok((path, text))
}

/// Replaces `path` by `text` in one step: a temporary file beside it (0600), then a rename.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    // A symbolic link stays one: the file it names is replaced.
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // Whoever owned it keeps it (`sudo orch config use-context` on a user's file must not
    // leave it root's and unreadable to them).
    let owner = std::fs::metadata(&path).map(|m| (std::os::unix::fs::MetadataExt::uid(&m), std::os::unix::fs::MetadataExt::gid(&m))).ok();
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(error).with_context(|| format!("cannot write the config file {}", path.display()));
    }
    Ok(())
}

pub fn run(args: &ConfigArgs) -> anyhow::Result<()> {
    match &args.command {
        ConfigCommand::GetContexts { output, no_headers } => {
            let (path, text) = config_file()?;
            print!("{}", render(&client::list_contexts(&path, &text)?, *output, !no_headers));
        }
        ConfigCommand::UseContext { name } => {
            let (path, text) = config_file()?;
            write_atomically(&path, &client::with_current_context(&path, &text, name)?)?;
            println!("Switched to context {name:?} ({}).", path.display());
        }
        ConfigCommand::CurrentContext => {
            let (path, text) = config_file()?;
            let current = client::list_contexts(&path, &text)?.into_iter().find(|c| c.current);
            let current = current.ok_or_else(|| anyhow::anyhow!("{}: no current-context (`orch config use-context NAME` sets one)", path.display()))?;
            println!("{}", current.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_render_as_a_table_or_names() {
        let rows = vec![
            ContextRow { name: "lab".into(), current: true, servers: vec!["10.0.0.1:7100".into(), "10.0.0.2:7100".into()] },
            ContextRow { name: "local".into(), current: false, servers: vec![] },
        ];
        assert_eq!(render(&rows, ContextsFormat::Table, true), "CURRENT   NAME    SERVERS\n*         lab     10.0.0.1:7100,10.0.0.2:7100\n          local\n");
        assert_eq!(render(&rows, ContextsFormat::Table, false), "*         lab     10.0.0.1:7100,10.0.0.2:7100\n          local\n");
        assert_eq!(render(&rows, ContextsFormat::Name, true), "lab\nlocal\n");
    }

    #[test]
    fn a_rewrite_replaces_the_file_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "old").expect("write");
        write_atomically(&path, "new\n").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new\n");
        assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1, "no temporary file left");
    }

    /// Run as root on a user's file (`sudo orch config use-context`), it stays theirs.
    #[test]
    fn a_rewrite_keeps_the_owner() {
        use std::os::unix::fs::MetadataExt;
        assert!(nix::unistd::geteuid().is_root(), "giving a file away needs root: run the tests as root (`sudo bash deploy/test.sh`)");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "old").expect("write");
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown to nobody");
        write_atomically(&path, "new\n").expect("rewrite");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }
}
