//! The config's hooks: programs run at fixed points of the container's life with its
//! state (the specification's JSON) on standard input — `prestart` and `createRuntime`
//! by `create` in the runtime's namespaces once the container's exist (Docker's network
//! setup is one), `createContainer` by the container process before it pivots,
//! `startContainer` by it right before its program, `poststart` by `start`, `poststop`
//! by `delete`. A hook that fails (or outlives its `timeout`) fails its step, but
//! `poststop`, which is only reported.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

/// How long a hook without a timeout may run: the specification sets none, a runtime
/// must still end.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `hooks` (the config's `stage` list) in order with `state` on standard input.
pub fn run(hooks: &[Hook], stage: &str, state: &serde_json::Value) -> Result<(), String> {
    for (i, hook) in hooks.iter().enumerate() {
        run_one(hook, state).map_err(|e| format!("hooks.{stage}[{i}] {}: {e}", hook.path().display()))?;
    }
    Ok(())
}

fn run_one(hook: &Hook, state: &serde_json::Value) -> Result<(), String> {
    let args = hook.args().clone().unwrap_or_default();
    let mut command = Command::new(hook.path());
    if let Some((first, rest)) = args.split_first() {
        command.arg0(first).args(rest);
    }
    command.env_clear();
    for pair in hook.env().clone().unwrap_or_default() {
        if let Some((key, value)) = pair.split_once('=') {
            command.env(key, value);
        }
    }
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|e| format!("cannot start: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that reads nothing closes its end: that is no failure of ours.
        let _ = stdin.write_all(state.to_string().as_bytes());
    }
    let timeout = hook.timeout().and_then(|s| u64::try_from(s).ok()).filter(|s| *s > 0).map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let began = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if began.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after its timeout of {timeout:?}: killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut said);
    }
    Err(format!("{status}: {}", said.trim()))
}

/// The config's hooks by stage (an unset list is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageHooks {
    pub prestart: Vec<Hook>,
    pub create_runtime: Vec<Hook>,
    pub create_container: Vec<Hook>,
    pub start_container: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

impl StageHooks {
    pub fn of(hooks: &oci_spec::runtime::Hooks) -> StageHooks {
        let list = |stage: &Option<Vec<Hook>>| stage.clone().unwrap_or_default();
        StageHooks {
            prestart: list(hooks.prestart()),
            create_runtime: list(hooks.create_runtime()),
            create_container: list(hooks.create_container()),
            start_container: list(hooks.start_container()),
            poststart: list(hooks.poststart()),
            poststop: list(hooks.poststop()),
        }
    }

    /// Each stage by its name in the config.
    pub fn stages(&self) -> [(&'static str, &[Hook]); 6] {
        [
            ("prestart", &self.prestart),
            ("createRuntime", &self.create_runtime),
            ("createContainer", &self.create_container),
            ("startContainer", &self.start_container),
            ("poststart", &self.poststart),
            ("poststop", &self.poststop),
        ]
    }

    pub fn is_empty(&self) -> bool {
        self.stages().iter().all(|(_, hooks)| hooks.is_empty())
    }
}
