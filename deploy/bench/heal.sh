#!/usr/bin/env bash
# Self-healing speed on one node: a controller and a real agent, a replica killed with
# kill -9 KILLS times; prints the median and max time from death to the replacement
# running (agent's clock and an outside observer), serving and Ready again.
#
#   sudo bash deploy/bench/heal.sh [KILLS]
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
require_root "deploy/bench/heal.sh"
require_rust
install_packages "${BUILD_PACKAGES[@]}" busybox-static iproute2 nftables conntrack
cd "$ORCH_ROOT"
step "cargo bench -p orch-agent --bench heal"
ORCH_BENCH_KILLS="${1:-20}" cargo bench -q -p orch-agent --bench heal
