#!/usr/bin/env bash
# The main job: sets up and runs orch on this machine.
#
#   sudo bash deploy/quickstart.sh
#
# Today it builds orch and checks manifests/webapp.yaml; once the controller, agent and
# CLI issues land it starts `orch up -f manifests/webapp.yaml` on the embedded store.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
require_root "deploy/quickstart.sh"
require_rust
install_packages "${BUILD_PACKAGES[@]}" busybox-static

cd "$ORCH_ROOT"
step "cargo build --workspace --release"
cargo build --workspace --release
step "building the demo image orch/demo-web:1.0 (oci:/var/lib/orch/images/demo-web:1.0)"
bash deploy/images/build-demo.sh
step "orch validate -f manifests/webapp.yaml"
./target/release/orch validate -f manifests/webapp.yaml
step "one replica of the demo image, by hand: its page from inside the container"
./target/release/orch-agent run --image oci:/var/lib/orch/images/demo-web:1.0 --name quickstart-demo -- \
    sh -c 'echo "<h1>Hello from $(hostname)</h1>" > /www/index.html; httpd -p 127.0.0.1:80 -h /www && wget -qO- http://127.0.0.1/'
echo "built: target/release/orch, target/release/orch-controller, target/release/orch-agent"
