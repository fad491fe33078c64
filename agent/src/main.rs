//! `orch-agent`: the thin binary over the `orch_agent` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("error: orch-agent {} has no commands yet: the runtime arrives with the agent runtime issue", env!("CARGO_PKG_VERSION"));
    ExitCode::FAILURE
}
