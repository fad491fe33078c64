#!/usr/bin/env bash
# Apply → ready, as `apply --wait` means it now: every replica ready on the new template
# AND every node's balancer sending the VIP to exactly those replicas. On a 3-node lab
# (deploy/lab.sh: etcd, a controller, three agents), after a first apply that pulls the
# image: RUNS copies of manifests/webapp.yaml (3 replicas, HTTP readiness probe every 2 s,
# other names, no node port) applied one by one; prints each time — and when the CLI first
# saw 3/3 ready, before the balancers routed them —, the median and the aim (≤ 300 ms).
#
#   sudo bash deploy/bench/ready.sh [RUNS]
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
require_root "deploy/bench/ready.sh"
runs="${1:-5}"
release_binaries python3

work="$(mktemp -d /tmp/orch-bench-ready.XXXXXX)"
export ORCH_LAB_NAME=brdy ORCH_LAB_NET=231 ORCH_LAB_DIR="$work/lab" ORCH_CONFIG="$work/config.toml" ORCH_BIN="$bin"
cleanup() {
    bash "$ORCH_ROOT/deploy/lab.sh" down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

step "a 3-node lab"
bash "$ORCH_ROOT/deploy/lab.sh" up 3 >&2
step "the first apply (pulls the image on every node)"
"$bin/orch" apply -f "$ORCH_ROOT/manifests/webapp.yaml" --wait --timeout 180 >&2

step "$runs applies, one by one, each with --wait"
times=()
for i in $(seq 1 "$runs"); do
    sed "s/name: webapp/name: ready$i/; /nodePort/d" "$ORCH_ROOT/manifests/webapp.yaml" >"$work/ready$i.yaml"
    start=$(date +%s%N)
    # apply --wait's progress lines, each with the milliseconds since the start.
    "$bin/orch" apply -f "$work/ready$i.yaml" --wait --timeout 60 | python3 -u -c '
import sys, time
start = int(sys.argv[1])
for line in sys.stdin:
    print(f"{(time.time_ns() - start) // 1000000} {line.rstrip()}")
' "$start" >"$work/progress$i"
    end=$(date +%s%N)
    times+=("$(( (end - start) / 1000000 ))")
    ready_at="$(awk '/3\/3 ready/ {print $1; exit}' "$work/progress$i")"
    echo "ready$i: apply -> 3 replicas ready and routed on every node in ${times[-1]} ms" \
        "(3/3 ready reported at ${ready_at:-?} ms, the CLI asking every 10 ms in its first 2 s; routed on every node after that)"
done
python3 - "${times[@]}" <<'PY'
import statistics, sys
times = sorted(int(t) for t in sys.argv[1:])
print(f"median {statistics.median(times):.0f} ms, max {times[-1]} ms (aim: at most 300 ms)")
PY
