#!/usr/bin/env bash
# A churn soak on `orch up`: scale up and down, kill -9 of replicas and rolling updates,
# round after round for MINUTES (10 by default; the test command runs 1), then prints
# the resident memory (and its trend) and open descriptors of the orch up process
# before and after, and fails if descriptors grew by more than 16 or memory by more
# than 16 MiB.
#
#   sudo bash deploy/bench/soak.sh [MINUTES]
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
require_root "deploy/bench/soak.sh"
require_rust
install_packages "${BUILD_PACKAGES[@]}" busybox-static iproute2 nftables conntrack
minutes="${1:-10}"
if ! [[ "$minutes" =~ ^[1-9][0-9]{0,3}$ ]]; then
    echo "deploy/bench/soak.sh: MINUTES must be a whole number from 1 to 9999, got '$minutes'" >&2
    exit 2
fi
cd "$ORCH_ROOT"
step "cargo test -p orch --test soak ($minutes min)"
ORCH_SOAK_SECONDS=$((minutes * 60)) cargo test --release -p orch --test soak -- --nocapture
