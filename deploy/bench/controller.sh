#!/usr/bin/env bash
# The controller's benchmarks in one run: the pure scheduler (10,000 replicas over 1,000
# nodes, against a first-fit baseline); apply → every replica bound and Running through
# the real gRPC API with fake agents in the same process, on a real etcd this script
# starts on loopback and on the embedded store; and the fleet: the orch-controller
# binary in a process of its own with NODES fake agents (heartbeats every 250 ms) —
# registration, apply, NODES/10 nodes lost at once — printing its CPU seconds, store
# requests per replica, peak RSS and leadership losses (etcd started by the benchmark).
# Each beside the pure scheduler on the same input.
#
#   sudo bash deploy/bench/controller.sh [REPLICAS] [NODES]      (2000 100; the README's: 10000 1000)
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/etcd.sh"
require_root "deploy/bench/controller.sh"
require_rust
install_packages "${BUILD_PACKAGES[@]}" etcd-server curl python3

work="$(mktemp -d /tmp/orch-bench-controller.XXXXXX)"
ETCD_PID=""
cleanup() {
    if [ -n "$ETCD_PID" ] && kill -0 "$ETCD_PID" 2>/dev/null; then
        kill "$ETCD_PID" 2>/dev/null || true
        wait "$ETCD_PID" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
start_etcd "$work/etcd"

cd "$ORCH_ROOT"
step "cargo bench -p orch-controller --bench scheduler"
cargo bench -q -p orch-controller --bench scheduler
step "cargo bench -p orch-controller --bench apply_to_bound"
ORCH_BENCH_REPLICAS="${1:-2000}" ORCH_BENCH_NODES="${2:-100}" cargo bench -q -p orch-controller --bench apply_to_bound
step "cargo bench -p orch-controller --bench fleet"
ORCH_BENCH_REPLICAS="${1:-2000}" ORCH_BENCH_NODES="${2:-100}" cargo bench -q -p orch-controller --bench fleet
