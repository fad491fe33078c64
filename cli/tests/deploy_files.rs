//! The systemd units `deploy/install.sh` installs pass `systemd-analyze verify` (which
//! needs no running systemd), with their binaries pointed at the ones this build made.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{text, ORCH, ROOT};

#[test]
fn the_systemd_units_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].into_iter().map(PathBuf::from).find(|p| p.exists());
    let analyze =
        analyze.expect("systemd-analyze is missing: `bash deploy/test.sh` installs Debian's systemd package, which has it (no running systemd needed)");
    let binaries = PathBuf::from(ORCH).parent().expect("the build's directory").to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut units = Vec::new();
    for unit in ["orch-agent.service", "orch-controller.service", "orch-etcd.service"] {
        let text = std::fs::read_to_string(format!("{ROOT}/deploy/systemd/{unit}")).expect("read the unit");
        // As installed, the binaries are in /usr/local/bin; verify checks they exist.
        let text = text.replace("/usr/local/bin/", &format!("{}/", binaries.display()));
        let path = dir.path().join(unit);
        std::fs::write(&path, text).expect("write the unit");
        units.push(path);
    }
    let out = Command::new(analyze).arg("verify").args(&units).current_dir(dir.path()).output().expect("run systemd-analyze");
    let complaints = text(&out.stderr);
    assert!(out.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
}
