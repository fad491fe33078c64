#!/usr/bin/env bash
# The main job: builds orch and runs it on this machine — `orch up` with
# manifests/webapp.yaml: a controller on the embedded store and a local agent in one
# foreground process. Ctrl-C stops every container and removes every kernel object it
# made; the store (/var/lib/orch/controller.redb) keeps the services for the next run.
#
#   sudo bash deploy/quickstart.sh
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
require_root "deploy/quickstart.sh"
require_rust
install_packages "${BUILD_PACKAGES[@]}" busybox-static iproute2 curl

cd "$ORCH_ROOT"
step "cargo build --workspace --release"
cargo build --workspace --release
step "building the demo image orch/demo-web:1.0 (oci:/var/lib/orch/images/demo-web:1.0)"
bash deploy/images/build-demo.sh
step "orch up -f manifests/webapp.yaml (Ctrl-C to stop)"
echo "in another terminal:  curl http://127.0.0.1:30080/   sudo ./target/release/orch get replicas -w" >&2
exec ./target/release/orch up -f manifests/webapp.yaml
