#!/usr/bin/env bash
# Leader failover with the controllers' DEFAULT flags (leader lease 2 s), on a 3-node lab
# with two controllers and a 3-member etcd over mutual TLS (deploy/lab.sh up 3 --etcd 3):
# RUNS times, `kill -9` of the leading controller, then at once a scale through the CLI
# (its config lists both controllers). Prints, per run and as medians: when the CLI's
# scale was stored (the other controller answered it), when the other controller led,
# and when it had resumed reconciling (the new replica created and bound by it), against
# the aim (≤ 3 s) and the leader lease; and checks every time that no replica restarted
# and none is duplicated. The killed controller is started again before the next run.
#
#   sudo bash deploy/bench/failover.sh [RUNS]
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
require_root "deploy/bench/failover.sh"
runs="${1:-5}"
release_binaries python3

work="$(mktemp -d /tmp/orch-bench-failover.XXXXXX)"
export ORCH_LAB_NAME=bfail ORCH_LAB_NET=233 ORCH_LAB_DIR="$work/lab" ORCH_CONFIG="$work/config.toml" ORCH_BIN="$bin"
export ORCH_LAB_CONTROLLERS=2 ORCH_LAB_LEASES=default
lab() { bash "$ORCH_ROOT/deploy/lab.sh" "$@"; }
cleanup() {
    lab down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
now() { date +%s%N; }

step "a 3-node lab, two controllers, three etcd members"
lab up 3 --etcd 3 >&2
sed 's/replicas: 3/replicas: 3/' "$ORCH_ROOT/manifests/webapp.yaml" >"$work/webapp.yaml"
"$bin/orch" apply -f "$work/webapp.yaml" --wait --timeout 180 >&2

# Each replica: name, host PID, restarts — what must not change across a failover.
identities() {
    "$bin/orch" get replicas -o json | python3 -c '
import json, sys
for r in sorted(json.load(sys.stdin), key=lambda r: r["name"]):
    print(r["name"], r["hostPid"], r["restarts"], r["node"])
'
}
leader_of() {
    "$bin/orch" get controllers -o json ${1:+--server "$1"} 2>/dev/null | python3 -c '
import json, sys
print(next((c["identity"] for c in json.load(sys.stdin) if c["leader"]), ""))
' 2>/dev/null || true
}
address_of() { echo "10.250.233.1:$((7100 + 10 * ($1 - 1)))"; }

replicas=3
stored=() led=() resumed=()
for i in $(seq 1 "$runs"); do
    leader=""
    for _ in $(seq 1 300); do
        leader="$(leader_of)"
        [ -n "$leader" ] && break
        sleep 0.1
    done
    [ -n "$leader" ] || die "run $i: no controller leads (logs in $work/lab)"
    dead="${leader##*controller}"
    other=$((3 - dead))
    before="$(identities)"
    replicas=$((replicas == 3 ? 4 : 3))
    sed "s/replicas: 3/replicas: $replicas/" "$ORCH_ROOT/manifests/webapp.yaml" >"$work/webapp.yaml"
    kill -9 "$(cat "$work/lab/controller$dead.pid")"
    start=$(now)
    "$bin/orch" apply -f "$work/webapp.yaml" >/dev/null
    t_stored=$(( ($(now) - start) / 1000000 ))
    t_led=""
    t_resumed=""
    deadline=$(( $(date +%s) + 30 ))
    while [ -z "$t_led" ] || [ -z "$t_resumed" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || die "run $i: no failover within 30 s (logs in $work/lab)"
        if [ -z "$t_led" ] && [ "$(leader_of "$(address_of "$other")")" = "${ORCH_LAB_NAME}-controller$other" ]; then
            t_led=$(( ($(now) - start) / 1000000 ))
        fi
        if [ -z "$t_resumed" ] && [ "$("$bin/orch" get replicas -o json | python3 -c 'import json,sys; print(sum(1 for r in json.load(sys.stdin) if r["node"]))')" = "$replicas" ]; then
            t_resumed=$(( ($(now) - start) / 1000000 ))
        fi
        sleep 0.02
    done
    "$bin/orch" apply -f "$work/webapp.yaml" --wait --timeout 60 >/dev/null
    after="$(identities)"
    # The replicas there before are there after, unchanged (a scale down removes one).
    python3 - "$before" "$after" "$replicas" <<'PY' || die "run $i: a replica restarted, moved or was duplicated"
import sys
before = {l.split()[0]: l for l in sys.argv[1].splitlines()}
after = {l.split()[0]: l for l in sys.argv[2].splitlines()}
assert len(after) == int(sys.argv[3]), f"{len(after)} replicas, want {sys.argv[3]}"
for name, line in before.items():
    assert name not in after or after[name] == line, f"{line} -> {after[name]}"
PY
    echo "run $i: controller$dead killed; the CLI's scale stored after ${t_stored} ms; controller$other led after ${t_led} ms and had bound the change after ${t_resumed} ms; no restart, no duplicate"
    stored+=("$t_stored") led+=("$t_led") resumed+=("$t_resumed")
    lab stop-controller "$dead" >/dev/null
    lab start-controller "$dead" >/dev/null
done
python3 - "${stored[*]}" "${led[*]}" "${resumed[*]}" <<'PY'
import statistics, sys
stored, led, resumed = ([int(t) for t in arg.split()] for arg in sys.argv[1:])
m = statistics.median
print(f"median of {len(led)}: the CLI's call answered by the other controller {m(stored):.0f} ms; "
      f"it led after {m(led):.0f} ms and resumed reconciling after {m(resumed):.0f} ms "
      f"({m(resumed) / 2000:.2f} x the 2 s leader lease; aim: at most 3000 ms)")
PY
