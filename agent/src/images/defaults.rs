//! What an image says about how to run it (Entrypoint, Cmd, Env, WorkingDir, User,
//! StopSignal), and how a manifest's command, args and env override it. Pure:
//! table-tested.

use serde::{Deserialize, Serialize};

use super::users::{resolve_user, ImageAccounts};
use crate::runtime::User;

/// The run defaults from an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// The image's `StopSignal` (`SIGQUIT` for nginx), as written; records from before
    /// the field have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

impl ImageDefaults {
    pub fn from_config(config: &oci_spec::image::ImageConfiguration) -> ImageDefaults {
        let Some(c) = config.config() else { return ImageDefaults::default() };
        ImageDefaults {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
            stop_signal: c.stop_signal().clone().filter(|s| !s.is_empty()),
        }
    }
}

/// The process to run, with the image's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedProcess {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// Numeric ids and supplementary groups; `None` runs as root.
    pub user: Option<User>,
}

/// Kubernetes' rules: `command` replaces the image's Entrypoint, `args` its Cmd; with a
/// command and no args the Cmd is dropped. Env entries override the image's by name.
/// The image's `USER` is resolved against its own `accounts` (names allowed).
pub fn resolve_process(
    defaults: &ImageDefaults,
    command: &[String],
    args: &[String],
    env: &[String],
    accounts: &ImageAccounts,
) -> Result<ResolvedProcess, String> {
    let argv: Vec<String> = match (command.is_empty(), args.is_empty()) {
        (true, true) => defaults.entrypoint.iter().chain(&defaults.cmd).cloned().collect(),
        (true, false) => defaults.entrypoint.iter().chain(args).cloned().collect(),
        (false, _) => command.iter().chain(args).cloned().collect(),
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err("no command to run: the image has no Entrypoint or Cmd and none was given".into());
    }
    let mut merged = defaults.env.clone();
    for entry in env {
        let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
        merged.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != name);
        merged.push(entry.clone());
    }
    let user = defaults.user.as_deref().map(|user| resolve_user(user, accounts)).transpose()?.flatten();
    Ok(ResolvedProcess { args: argv, env: merged, cwd: defaults.working_dir.clone(), user })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn command_and_args_table() {
        let image = ImageDefaults { entrypoint: v(&["/entry"]), cmd: v(&["--default"]), ..Default::default() };
        let table: [(&[&str], &[&str], &[&str]); 4] = [
            (&[], &[], &["/entry", "--default"]),
            (&[], &["--mine"], &["/entry", "--mine"]),
            (&["/bin/sh"], &[], &["/bin/sh"]),
            (&["/bin/sh"], &["-c", "x"], &["/bin/sh", "-c", "x"]),
        ];
        for (command, args, want) in table {
            let got = resolve_process(&image, &v(command), &v(args), &[], &ImageAccounts::default()).expect("resolves");
            assert_eq!(got.args, v(want), "command {command:?} args {args:?}");
        }
        let empty = ImageDefaults::default();
        assert!(resolve_process(&empty, &[], &[], &[], &ImageAccounts::default()).is_err());
        assert_eq!(resolve_process(&empty, &[], &v(&["true"]), &[], &ImageAccounts::default()).map(|p| p.args), Ok(v(&["true"])));
    }

    #[test]
    fn env_overrides_by_name_and_user_parses() {
        let image = ImageDefaults {
            cmd: v(&["x"]),
            env: v(&["PATH=/bin", "A=1"]),
            working_dir: Some("/srv".into()),
            user: Some("1000:100".into()),
            ..Default::default()
        };
        let got = resolve_process(&image, &[], &[], &v(&["A=2", "B=3"]), &ImageAccounts::default()).expect("resolves");
        assert_eq!(got.env, v(&["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(got.cwd.as_deref(), Some("/srv"));
        assert_eq!(got.user, Some(User::ids(1000, 100)));
        let named = ImageDefaults { user: Some("www-data".into()), ..image.clone() };
        assert!(resolve_process(&named, &[], &[], &[], &ImageAccounts::default()).is_err(), "a name the image does not know");
        let accounts = ImageAccounts { passwd: "www-data:x:33:33::/var/www:/bin/false\n".into(), group: String::new() };
        assert_eq!(resolve_process(&named, &[], &[], &[], &accounts).map(|p| p.user), Ok(Some(User::ids(33, 33))));
    }
}
