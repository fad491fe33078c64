//! What an image says about how to run it (Entrypoint, Cmd, Env, WorkingDir, User), and
//! how a manifest's command, args and env override it. Pure: table-tested.

use serde::{Deserialize, Serialize};

/// The run defaults from an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
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
        }
    }
}

/// The process to run, with the image's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedProcess {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// Numeric uid and gid; `None` runs as root.
    pub user: Option<(u32, u32)>,
}

/// Kubernetes' rules: `command` replaces the image's Entrypoint, `args` its Cmd; with a
/// command and no args the Cmd is dropped. Env entries override the image's by name.
pub fn resolve_process(defaults: &ImageDefaults, command: &[String], args: &[String], env: &[String]) -> Result<ResolvedProcess, String> {
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
    let user = defaults.user.as_deref().map(parse_user).transpose()?.flatten();
    Ok(ResolvedProcess { args: argv, env: merged, cwd: defaults.working_dir.clone(), user })
}

/// `uid`, `uid:gid` or `root`; user names need the image's /etc/passwd and are refused.
fn parse_user(user: &str) -> Result<Option<(u32, u32)>, String> {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    if (u == "root" || u == "0") && (g.is_empty() || g == "0" || g == "root") {
        return Ok(None);
    }
    let uid = if u == "root" { 0 } else { u.parse::<u32>().map_err(|_| format!("image user {user:?}: only numeric users (uid[:gid]) are supported"))? };
    let gid = if g.is_empty() {
        uid
    } else if g == "root" {
        0
    } else {
        g.parse::<u32>().map_err(|_| format!("image user {user:?}: only numeric groups are supported"))?
    };
    Ok(Some((uid, gid)))
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
            let got = resolve_process(&image, &v(command), &v(args), &[]).expect("resolves");
            assert_eq!(got.args, v(want), "command {command:?} args {args:?}");
        }
        let empty = ImageDefaults::default();
        assert!(resolve_process(&empty, &[], &[], &[]).is_err());
        assert_eq!(resolve_process(&empty, &[], &v(&["true"]), &[]).map(|p| p.args), Ok(v(&["true"])));
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
        let got = resolve_process(&image, &[], &[], &v(&["A=2", "B=3"])).expect("resolves");
        assert_eq!(got.env, v(&["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(got.cwd.as_deref(), Some("/srv"));
        assert_eq!(got.user, Some((1000, 100)));
        for (user, want) in [("root", Ok(None)), ("0:0", Ok(None)), ("33", Ok(Some((33, 33)))), ("www-data", Err(()))] {
            assert_eq!(parse_user(user).map_err(|_| ()), want, "{user}");
        }
    }
}
