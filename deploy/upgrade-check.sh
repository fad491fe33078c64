#!/usr/bin/env bash
# An upgrade that restarts nothing. The older build's `orch up` runs the demo service
# (3 replicas, a node port) on a bridge, cgroup parent and address ranges of this
# script's own; it dies with kill -9 (a crash, or its binary being replaced), and this
# build's `orch up` starts on the same state directory (one replica has crashed and
# been restarted before, so a restart count must carry over). Passes when every
# replica is adopted — same host PID, same restart count —, the node port answers from every
# replica, `orch exec` works, and the drain at the end leaves no bridge, namespace,
# cgroup or process behind.
#
#   sudo bash deploy/upgrade-check.sh [OLD_REV]     # default: HEAD~1
#
# OLD_REV is built in a git worktree with its own target directory
# (target/upgrade-check, kept for the next run: the first build takes ~10 min on 2 cores).
# Traffic goes to 127.0.0.1 only (the node port on loopback) and into the containers
# this script started.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
require_root "deploy/upgrade-check.sh"
require_rust
install_packages "${BUILD_PACKAGES[@]}" busybox-static iproute2 nftables conntrack jq git curl

old_rev="${1:-HEAD~1}"
cd "$ORCH_ROOT"
old_sha="$(git rev-parse --verify --quiet "$old_rev^{commit}")" || die "OLD_REV $old_rev: not a commit of this repository"
new_sha="$(git rev-parse HEAD)"

# This script's own names: nothing else on the machine uses them.
bridge=oupg0
cgroup_parent=orch-upgrade-check
node=upgrade-node
listen=127.0.0.1:7191
node_port=31901
service_cidr=10.215.0.0/24
cluster_cidr=10.216.0.0/16

work="$(mktemp -d /tmp/orch-upgrade.XXXXXX)"
up_pid=""

# Stops what is still running (after a failure: the drain did not happen) and removes
# every trace: orch up, the node network, cgroups, the worktree.
cleanup() {
    local status=$?
    if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
        kill -INT "$up_pid" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$up_pid" 2>/dev/null || true
    fi
    if [ -x "$ORCH_ROOT/target/release/orch-agent" ] && [ -d "$work/state/agent" ]; then
        "$ORCH_ROOT/target/release/orch-agent" teardown --state-dir "$work/state/agent" --bridge "$bridge" \
            --cgroup-parent "$cgroup_parent" >/dev/null 2>&1 || true
    fi
    for hierarchy in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
        [ -d "$hierarchy$cgroup_parent" ] && find "$hierarchy$cgroup_parent" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    git -C "$ORCH_ROOT" worktree remove --force "$work/old" >/dev/null 2>&1 || true
    if [ "$status" -ne 0 ]; then
        echo "--- the last lines of each orch up:" >&2
        for log in "$work"/*.log; do [ -f "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }; done
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

step "building this build ($new_sha)"
cargo build -q --release -p orch -p orch-agent
new_bin="$ORCH_ROOT/target/release/orch"

step "building the old build ($old_rev = $old_sha) in a worktree"
git worktree add --detach -q "$work/old" "$old_sha"
(cd "$work/old" && CARGO_TARGET_DIR="$ORCH_ROOT/target/upgrade-check" cargo build -q --release -p orch)
old_bin="$work/orch-old"
cp "$ORCH_ROOT/target/upgrade-check/release/orch" "$old_bin"

step "building the demo image"
bash "$ORCH_ROOT/deploy/images/build-demo.sh" --out "$work/image" >/dev/null
sed -e "s|127.0.0.1:5000/orch/demo-web:1.0|oci:$work/image:1.0|" -e "s|nodePort: 30080|nodePort: $node_port|" \
    "$ORCH_ROOT/manifests/webapp.yaml" > "$work/webapp.yaml"
grep -q "nodePort: $node_port" "$work/webapp.yaml" || die "manifests/webapp.yaml has no nodePort 30080 to move"
grep -q "oci:$work/image:1.0" "$work/webapp.yaml" || die "manifests/webapp.yaml does not name 127.0.0.1:5000/orch/demo-web:1.0 to replace"

# orch_up BINARY LOG: starts `orch up` in the background; returns once the service is
# ready and answering ("answers on"), or fails after 180 s.
orch_up() {
    "$1" --tls-dir "$work/pki" up -f "$work/webapp.yaml" --state-dir "$work/state" --listen "$listen" --name "$node" \
        --bridge "$bridge" --cgroup-parent "$cgroup_parent" --service-cidr "$service_cidr" --cluster-cidr "$cluster_cidr" \
        > "$2" 2>&1 &
    up_pid=$!
    for _ in $(seq 1 1800); do
        grep -q "answers on" "$2" && return 0
        kill -0 "$up_pid" 2>/dev/null || die "orch up ($1) ended early; see above"
        sleep 0.1
    done
    die "orch up ($1) was not ready within 180 s"
}

cli() { "$new_bin" --tls-dir "$work/pki" --server "$listen" "$@"; }

# name:hostPid:restarts of every replica, one per line, sorted; every one Running and ready.
replicas() {
    local json
    json="$(cli get replicas -o json)"
    [ "$(jq '[.[] | select(.phase == "Running" and .ready == true)] | length' <<< "$json")" = 3 ] \
        || die "not 3 replicas Running and ready: $json"
    jq -r '.[] | "\(.name):\(.hostPid):\(.restarts)"' <<< "$json" | sort
}

step "old build: orch up; one replica crashes (kill -9) and is restarted"
orch_up "$old_bin" "$work/old.log"
victim_pid="$(replicas | head -n 1 | cut -d: -f2)"
kill -9 "$victim_pid"
restarted=""
for _ in $(seq 1 600); do
    restarted="$(cli get replicas -o json | jq '[.[] | select(.restarts == 1 and .phase == "Running" and .ready == true)] | length')" || true
    [ "$restarted" = 1 ] && break
    sleep 0.1
done
[ "$restarted" = 1 ] || die "the replica killed under the old build (host PID $victim_pid) was not back within 60 s"
before="$(replicas)"
echo "$before" | sed 's/^/    /' >&2

step "old build: kill -9 (the containers keep running)"
kill -9 "$up_pid"
wait "$up_pid" 2>/dev/null || true
up_pid=""
while IFS=: read -r _ pid _; do
    kill -0 "$pid" 2>/dev/null || die "host PID $pid died with the old orch up"
done <<< "$before"

step "this build: orch up on the same state"
orch_up "$new_bin" "$work/new.log"
after="$(replicas)"
echo "$after" | sed 's/^/    /' >&2
[ "$before" = "$after" ] || die "the replicas changed across the upgrade: before
$before
after
$after"

step "the node port answers from every replica; exec works"
declare -A answered=()
for _ in $(seq 1 30); do
    page="$(curl -fsS --max-time 5 "http://127.0.0.1:$node_port/")" || die "the node port 127.0.0.1:$node_port did not answer"
    [ -n "$page" ] || die "the node port answered nothing"
    answered["$page"]=1
done
[ "${#answered[@]}" -eq 3 ] || die "30 requests through the node port reached ${#answered[@]} replicas, not 3"
replica="$(head -n 1 <<< "$after" | cut -d: -f1)"
hostname="$(cli exec "$replica" -- hostname)" || die "orch exec $replica failed"
[ "$hostname" = "$replica" ] || die "orch exec $replica -- hostname said $hostname"

step "this build: Ctrl-C drains the node"
interrupt_and_wait "$up_pid" 60 "this build's orch up"
up_pid=""
while IFS=: read -r _ pid _; do
    kill -0 "$pid" 2>/dev/null && die "host PID $pid still runs after the drain"
done <<< "$after"
ip link show "$bridge" >/dev/null 2>&1 && die "the bridge $bridge is still there after the drain"
ip netns list | grep -q "$bridge" && die "a namespace of $bridge is still there after the drain: $(ip netns list | grep "$bridge")"
for hierarchy in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    if [ -d "$hierarchy$cgroup_parent" ] && [ -n "$(find "$hierarchy$cgroup_parent" -mindepth 1 -type d)" ]; then
        die "container cgroups are left in $hierarchy$cgroup_parent"
    fi
done

echo "upgrade $old_sha -> $new_sha: 3 replicas adopted (same host PIDs, same restart counts), node port and exec work, the drain left nothing"
