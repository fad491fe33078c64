#!/usr/bin/env bash
# Container start-to-exit time: `orch-agent run --rootfs R -- /bin/true` against
# `runc run` and `orch-runc run` on the same busybox rootfs and bundle, in one
# invocation, with the ratios; then the same layer under Docker: `docker run --runtime
# orch` against `docker run` (runc), on a dockerd the script starts on its own socket,
# roots and cgroup parent (no bridge, no iptables; Debian's docker.io, its services kept
# from starting), with an image `docker import`ed from the same rootfs.
#
#   sudo bash deploy/bench/runtime-start.sh [RUNS]
#
# Each gets a fresh PID, mount, UTS, IPC and network namespace and a cgroup per run and
# tears everything down before exiting. Aim: orch at most a quarter of runc's time.
# Then one more orch run under `strace -f -ttt` shows where the time goes, step by step
# (strace slows every syscall: read the shares, not the absolute times).
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/rootfs.sh"
require_root "deploy/bench/runtime-start.sh"
require_rust
install_packages "${BUILD_PACKAGES[@]}" busybox-static hyperfine python3 strace
# docker-ce's containerd.io provides runc itself: installing Debian's would remove it.
command -v runc >/dev/null 2>&1 || install_packages runc
if ! command -v dockerd >/dev/null 2>&1; then
    install_without_services docker.io containerd
fi
runs="${1:-50}"

cd "$ORCH_ROOT"
step "cargo build --release -p orch-agent"
cargo build --release -p orch-agent >&2
agent="$ORCH_ROOT/target/release/orch-agent"
orch_runc="$ORCH_ROOT/target/release/orch-runc"

work="$(mktemp -d /tmp/orch-bench.XXXXXX)"
dockerd_pid=""
made_dirs=()
for dir in /run/docker/plugins /run/docker /run/containerd/s /run/containerd/runc /run/containerd; do
    [ -e "$dir" ] || made_dirs+=("$dir")
done
cleanup() {
    runc --root "$work/runc-state" delete -f orch-bench >/dev/null 2>&1 || true
    "$orch_runc" --root "$work/orch-runc-state" delete -f orch-bench >/dev/null 2>&1 || true
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        kill "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$dockerd_pid" 2>/dev/null || true
    fi
    # Its containerd outlives a dockerd that had to be killed.
    if [ -s "$work/docker/exec/containerd/containerd.pid" ]; then
        kill "$(cat "$work/docker/exec/containerd/containerd.pid")" 2>/dev/null || true
    fi
    { grep -o " $work[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    for hierarchy in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do rmdir "$hierarchy/orch-bench-docker" 2>/dev/null || true; done
    # containerd's shims remove their sockets a moment after the daemon is gone.
    for _ in $(seq 1 50); do
        for dir in "${made_dirs[@]}"; do rmdir "$dir" 2>/dev/null || true; done
        left=0
        for dir in "${made_dirs[@]}"; do [ -e "$dir" ] && left=1; done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    rm -rf "$work" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

make_busybox_rootfs "$work/rootfs"
mkdir -p "$work/bundle" "$work/state" "$work/runc-state" "$work/orch-runc-state"
(cd "$work/bundle" && runc spec)
python3 - "$work/bundle/config.json" "$work/rootfs" <<'PY'
import json, sys
path, rootfs = sys.argv[1], sys.argv[2]
spec = json.load(open(path))
spec["root"] = {"path": rootfs, "readonly": True}
spec["process"]["args"] = ["/bin/true"]
spec["process"]["terminal"] = False
json.dump(spec, open(path, "w"), indent=2)
PY

step "hyperfine: $runs runs each"
hyperfine --warmup 3 --runs "$runs" --export-json "$work/result.json" \
    -n orch-agent "$agent run --rootfs $work/rootfs --state-dir $work/state --cgroup-parent orch-bench --name bench -- /bin/true" \
    -n orch-runc "$orch_runc --root $work/orch-runc-state run --bundle $work/bundle orch-bench" \
    -n runc "runc --root $work/runc-state run --bundle $work/bundle orch-bench" >&2

step "a dockerd of the benchmark's own, with --add-runtime orch=$orch_runc"
echo "{\"deprecated-key-path\": \"$work/docker/key.json\"}" >"$work/daemon.json"
dockerd --config-file "$work/daemon.json" --data-root "$work/docker/data" --exec-root "$work/docker/exec" \
    --pidfile "$work/docker/dockerd.pid" --host "unix://$work/docker.sock" \
    --iptables=false --ip6tables=false --bridge=none --ip-forward=false --ip-masq=false \
    --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent orch-bench-docker \
    --add-runtime "orch=$orch_runc" >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
export DOCKER_HOST="unix://$work/docker.sock" DOCKER_CONFIG="$work/docker-client"
for _ in $(seq 1 300); do docker version >/dev/null 2>&1 && break; kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
docker version >/dev/null 2>&1 || { cat "$work/dockerd.log" >&2; die "dockerd did not start"; }
tar -C "$work/rootfs" -c . | docker import - orch-bench:busybox >/dev/null
hyperfine --warmup 3 --runs "$runs" --export-json "$work/docker.json" \
    -n "docker run --runtime orch" "docker run --rm --runtime orch --network none orch-bench:busybox /bin/true" \
    -n "docker run (runc)" "docker run --rm --network none orch-bench:busybox /bin/true" >&2

python3 - "$work/result.json" "$work/docker.json" <<'PY'
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
results.update({r["command"]: r for r in json.load(open(sys.argv[2]))["results"]})
def line(name):
    r = results[name]
    print(f"{name + ':':<28} median {r['median']*1000:6.1f} ms (mean {r['mean']*1000:6.1f} ms)")
for name in ["orch-agent", "orch-runc", "runc", "docker run --runtime orch", "docker run (runc)"]:
    line(name)
m = {k: v["median"] for k, v in results.items()}
print(f"ratio orch-agent/runc: {m['orch-agent'] / m['runc']:.2f} (aim: at most 0.25)")
print(f"ratio orch-runc/runc: {m['orch-runc'] / m['runc']:.2f} (the same runtime behind runc's command line)")
print(f"ratio docker run --runtime orch / docker run: {m['docker run --runtime orch'] / m['docker run (runc)']:.2f}")
print(f"what Docker adds over its runtime: {(m['docker run (runc)'] - m['runc'])*1000:.0f} ms with runc, "
      f"{(m['docker run --runtime orch'] - m['orch-runc'])*1000:.0f} ms with orch-runc")
PY

step "where orch's start goes: one run under strace -f (slower; the shares are what count)"
strace -f -ttt -o "$work/trace.txt" "$agent" run --rootfs "$work/rootfs" --state-dir "$work/state" --cgroup-parent orch-bench --name bench -- /bin/true
python3 - "$work/trace.txt" <<'PY'
import re, sys
events = []
for line in open(sys.argv[1]):
    m = re.match(r"(\d+)\s+(\d+\.\d+)\s+(.*)", line)
    if m:
        events.append((float(m.group(2)), int(m.group(1)), m.group(3)))
if not events:
    sys.exit("no trace")
t0, end = events[0][0], events[-1][0]
steps = []
mounts = 0
for t, pid, call in events:
    if call.startswith("mount(") and "resumed" not in call:
        mounts += 1
    if re.match(r"(execve|clone3?|unshare|fsync|pivot_root|setns|seccomp|prctl\(PR_SET_NO_NEW_PRIVS)", call) and "resumed" not in call:
        steps.append((t, pid, call.split(",")[0][:70]))
previous = t0
print(f"{'at ms':>7} {'step ms':>8}  pid     syscall")
for t, pid, what in steps:
    print(f"{(t - t0) * 1000:7.2f} {(t - previous) * 1000:8.2f}  {pid:<7} {what}")
    previous = t
print(f"{(end - t0) * 1000:7.2f} {(end - previous) * 1000:8.2f}  exit    ({len(events)} syscalls, {mounts} mounts)")
PY
