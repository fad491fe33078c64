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
install_packages "${BUILD_PACKAGES[@]}"

cd "$ORCH_ROOT"
step "cargo build --workspace --release"
cargo build --workspace --release
step "orch validate -f manifests/webapp.yaml"
./target/release/orch validate -f manifests/webapp.yaml
echo "built: target/release/orch, target/release/orch-controller, target/release/orch-agent"
