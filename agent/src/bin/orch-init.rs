//! `orch-init`: the small binary the runtime starts as each container's shim (and its
//! PID 1), instead of re-executing the agent's far larger binary: a container starts
//! about a millisecond sooner. Installed beside `orch-agent` (or `orch`); without it,
//! or from another build, the agent's own binary does the same work.

use orch_agent::runtime::{init, INIT_SUBCOMMAND};

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == INIT_SUBCOMMAND) {
        init::shim_main();
    }
    eprintln!("orch-init: started by the orch agent to run a container, not by hand");
    std::process::exit(orch_agent::runtime::CODE_RUNTIME)
}
