#!/usr/bin/env bash
# The test command: installs everything the tests need (Debian packages included), starts
# the real services they use on loopback (etcd, a registry), runs every test, and cleans up.
#
#   sudo bash deploy/test.sh            # everything
#   sudo bash deploy/test.sh -p orch    # extra arguments go to `cargo test`
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
source "$(dirname "$0")/lib/etcd.sh"
source "$(dirname "$0")/lib/registry.sh"
require_root "deploy/test.sh"
require_rust

# What the tests use for real: etcd for the store suite, registries (docker-registry,
# through install_registry) and skopeo for the image suite (apache2-utils' htpasswd for
# the one that requires a password), busybox for container root filesystems, nftables
# and conntrack (egress, the kernel data path),
# dnsmasq-base (the DNS server of the egress tests' "outside"; not the dnsmasq
# package, whose service would start on the host), protoc for the build, graphviz to
# check that `orch topology -o dot` is valid DOT, prometheus (its promtool checks the
# metrics' format, and the lab's Prometheus scrapes every controller and agent; its own
# service is never started), systemd for `systemd-analyze verify` of deploy/systemd's
# units (no running systemd needed; on a machine without one nothing starts),
# mmdebstrap for the Debian system container image (deploy/images/build-system.sh),
# procps for `sysctl` (the network tests set forwarding in namespaces they make; a
# minimal Debian root has no procps: deploy/fresh-check.sh --tests found it),
# docker.io (and its containerd) for orch-runc under a real Docker: their services are
# kept from starting (and disabled on a systemd machine); agent/tests/docker.rs starts a
# dockerd of its own on a socket, roots and cgroup parent in a temporary directory;
# podman likewise (agent/tests/podman.rs: its storage, run root and tmpdir in one).
TEST_PACKAGES=(etcd-server etcd-client apache2-utils skopeo curl iproute2 nftables conntrack dnsmasq-base busybox-static python3 graphviz mmdebstrap procps)
install_registry "${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
install_without_services prometheus systemd
if command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
    # Docker's own packages (docker-ce) conflict with Debian's: the test uses what is there.
    step "dockerd is installed ($(command -v dockerd)): the orch-runc Docker test uses it"
else
    install_without_services docker.io containerd
fi
install_without_services podman

workdir="$(mktemp -d /tmp/orch-test.XXXXXX)"
etcd_pid=""
registry_pid=""
auth_registry_pid=""
cleanup() {
    for pid in "$etcd_pid" "$registry_pid" "$auth_registry_pid"; do
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

start_registry "$workdir/registry" "127.0.0.1:$(free_port)"
registry_pid="$REGISTRY_PID"
export ORCH_TEST_REGISTRY="$REGISTRY_ADDRESS"
export ORCH_TEST_REGISTRY_DIR="$workdir/registry/storage"

# A second registry that requires a user and password (htpasswd, bcrypt): pulls with
# credentials from a registry config, and a clear refusal without them.
auth_password="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
htpasswd -Bbn orch-test "$auth_password" >"$workdir/htpasswd" 2>/dev/null
start_registry "$workdir/auth-registry" "127.0.0.1:$(free_port)" "$workdir/htpasswd"
auth_registry_pid="$REGISTRY_PID"
export ORCH_TEST_AUTH_REGISTRY="$REGISTRY_ADDRESS"
export ORCH_TEST_AUTH_REGISTRY_CREDENTIALS="orch-test:$auth_password"

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
