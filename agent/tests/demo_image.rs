//! `deploy/images/build-demo.sh`: the demo image builds as an OCI layout, pushes to a
//! real registry, pulls back, and serves a page naming the container's hostname.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{oci, Sandbox, AGENT};

fn script() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/images/build-demo.sh"))
}

#[test]
fn the_demo_image_builds_pushes_pulls_and_serves_its_hostname() {
    let sandbox = Sandbox::new("demo");
    let (registry, _) = oci::registry();
    let layout = sandbox.root.path().join("demo-web");
    let out = Command::new("bash").arg(script()).arg("--out").arg(&layout).args(["--push", &registry]).output().expect("run build-demo.sh");
    assert!(out.status.success(), "build-demo.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(layout.join("index.json").exists() && layout.join("oci-layout").exists());

    // From the registry, as a node would pull it; httpd started as the image says,
    // then fetched from inside the container over its loopback.
    let reference = format!("{registry}/orch/demo-web:1.0");
    let run = Command::new(AGENT)
        .args(["run", "--image", &reference, "--state-dir"])
        .arg(sandbox.state_dir())
        .args(["--cgroup-parent", &sandbox.cgroup_parent, "--name", "demo-web-0", "--"])
        .args(["sh", "-c", "echo \"<h1>Hello from $(hostname)</h1>\" > /www/index.html; httpd -p 127.0.0.1:8080 -h /www && wget -qO- http://127.0.0.1:8080/"])
        .output()
        .expect("orch-agent run");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("Hello from demo-web-0"), "{stdout}");

    // The layout itself is a valid image too, and its Cmd serves on port 80.
    let layout_ref = format!("oci:{}:1.0", layout.display());
    let pulled = Command::new(AGENT).args(["images", "--state-dir"]).arg(sandbox.state_dir()).args(["pull", &layout_ref]).output().expect("images pull");
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    assert!(String::from_utf8_lossy(&pulled.stdout).contains("1 layer(s)"));
    sandbox.assert_clean("demo-web-0");
}
