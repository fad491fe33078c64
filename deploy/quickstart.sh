#!/usr/bin/env bash
# The main job: builds orch and runs it on this machine — `orch up` with
# manifests/webapp.yaml: a controller on the embedded store and a local agent in one
# foreground process, and the registry the manifest names (Debian's docker-registry on
# 127.0.0.1:5000, its storage in /var/lib/orch/registry) holding the demo image.
# Ctrl-C stops every container, removes every kernel object orch made and stops the
# registry; the store (/var/lib/orch/controller.redb) keeps the services, the registry
# the image, for the next run.
#
#   sudo bash deploy/quickstart.sh
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
source "$(dirname "$0")/lib/registry.sh"
require_root "deploy/quickstart.sh"
require_rust
install_registry "${BUILD_PACKAGES[@]}" busybox-static iproute2 nftables conntrack curl skopeo

cd "$ORCH_ROOT"
step "cargo build --workspace --release"
cargo build --workspace --release

registry_pid=""
stop_registry() {
    if [ -n "$registry_pid" ] && kill -0 "$registry_pid" 2>/dev/null; then
        kill "$registry_pid" 2>/dev/null || true
        wait "$registry_pid" 2>/dev/null || true
    fi
}
trap stop_registry EXIT
# A registry that answers on 127.0.0.1:5000 already (a Debian docker-registry service,
# one of yours) is used as it is; anything else there is an error.
answer="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:5000/v2/ 2>/dev/null || true)"
case "$answer" in
    200) step "a registry answers on 127.0.0.1:5000 already: pushing the demo image there" ;;
    000) start_registry /var/lib/orch/registry 127.0.0.1:5000; registry_pid="$REGISTRY_PID" ;;
    *) die "127.0.0.1:5000 answers HTTP $answer, not as a registry open to pushes: stop what listens there (manifests/webapp.yaml pulls from it)" ;;
esac
step "building the demo image orch/demo-web:1.0 and pushing it to 127.0.0.1:5000"
bash deploy/images/build-demo.sh --push 127.0.0.1:5000

step "orch up -f manifests/webapp.yaml (Ctrl-C to stop)"
echo "in another terminal:  curl http://127.0.0.1:30080/   sudo ./target/release/orch get replicas -w" >&2
# orch up takes this script's PID (exec), so Ctrl-C and `kill -INT` reach it as they
# always did; a watcher stops the registry once that PID is gone.
if [ -n "$registry_pid" ]; then
    (
        trap '' INT TERM
        while kill -0 $$ 2>/dev/null; do sleep 1; done
        kill "$registry_pid" 2>/dev/null || true
    ) </dev/null &
fi
trap - EXIT
exec ./target/release/orch up -f manifests/webapp.yaml
