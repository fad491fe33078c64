//! Stamps every build of the agent library with an identity, `ORCH_BUILD_ID`: the small
//! `orch-init` binary and the binary that starts it agree on the start protocol only
//! when built together (see `runtime::init`). Rerun whenever a source changes.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=src");
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    println!("cargo:rustc-env=ORCH_BUILD_ID={nanos:x}-{}", std::process::id());
}
