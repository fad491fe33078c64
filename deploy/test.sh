#!/usr/bin/env bash
# The test command: installs everything the tests need (Debian packages included), starts
# the real services they use on loopback (etcd, a registry), runs every test, and cleans up.
#
#   sudo bash deploy/test.sh            # everything
#   sudo bash deploy/test.sh -p orch    # extra arguments go to `cargo test`
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
source "$(dirname "$0")/lib/etcd.sh"
require_root "deploy/test.sh"
require_rust

# What the tests use for real: etcd for the store suite, a registry and skopeo for the
# image suite, busybox for container root filesystems, protoc for the build, graphviz to
# check that `orch topology -o dot` is valid DOT.
TEST_PACKAGES=(etcd-server docker-registry skopeo curl iproute2 busybox-static python3 graphviz)
install_packages "${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}"

workdir="$(mktemp -d /tmp/orch-test.XXXXXX)"
etcd_pid=""
registry_pid=""
cleanup() {
    for pid in "$etcd_pid" "$registry_pid"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$workdir"
}
trap cleanup EXIT INT TERM

start_etcd "$workdir/etcd"
etcd_pid="$ETCD_PID"

registry_port="$(free_port)"
step "starting docker-registry on 127.0.0.1:$registry_port"
mkdir -p "$workdir/registry"
cat > "$workdir/registry/config.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $workdir/registry/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$registry_port
YAML
docker-registry serve "$workdir/registry/config.yml" >"$workdir/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$registry_port/v2/" >/dev/null 2>&1 && break
    kill -0 "$registry_pid" 2>/dev/null || { cat "$workdir/registry.log" >&2; die "docker-registry exited during start-up"; }
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$registry_port/v2/" >/dev/null || { cat "$workdir/registry.log" >&2; die "docker-registry did not answer on 127.0.0.1:$registry_port"; }
export ORCH_TEST_REGISTRY="127.0.0.1:$registry_port"
export ORCH_TEST_REGISTRY_DIR="$workdir/registry/storage"

cd "$ORCH_ROOT"
# Hygiene first: a formatting or lint failure fails the run before the long tests.
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings
# One release build serves the tests and the binaries the lab runs (cargo test builds
# every binary the integration tests use into target/release).
step "cargo test --workspace --release"
cargo test --workspace --release --no-fail-fast "$@"

# The fresh-machine check (a clean Debian 12 root, the README's first command in it)
# takes 15–30 minutes: on request only (ORCH_FRESH_CHECK=1), and by hand whenever the
# dependencies or the scripts change.
if [ "${ORCH_FRESH_CHECK:-}" = 1 ]; then
    step "deploy/fresh-check.sh (ORCH_FRESH_CHECK=1)"
    bash deploy/fresh-check.sh
fi
