#!/usr/bin/env bash
# Container start-to-exit time: `orch-agent run --rootfs R -- /bin/true` against
# `runc run` on the same busybox rootfs, in one invocation, with the ratio.
#
#   sudo bash deploy/bench/runtime-start.sh [RUNS]
#
# Both get a fresh PID, mount, UTS, IPC and network namespace and a cgroup per run and
# tear everything down before exiting. Aim: orch at most a quarter of runc's time.
# Then one more orch run under `strace -f -ttt` shows where the time goes, step by step
# (strace slows every syscall: read the shares, not the absolute times).
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/rootfs.sh"
require_root "deploy/bench/runtime-start.sh"
require_rust
install_packages "${BUILD_PACKAGES[@]}" runc busybox-static hyperfine python3 strace
runs="${1:-50}"

cd "$ORCH_ROOT"
step "cargo build --release -p orch-agent"
cargo build --release -p orch-agent >&2
agent="$ORCH_ROOT/target/release/orch-agent"

work="$(mktemp -d /tmp/orch-bench.XXXXXX)"
cleanup() {
    runc --root "$work/runc-state" delete -f orch-bench >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

make_busybox_rootfs "$work/rootfs"
mkdir -p "$work/bundle" "$work/state" "$work/runc-state"
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
    -n runc "runc --root $work/runc-state run --bundle $work/bundle orch-bench" >&2

python3 - "$work/result.json" <<'PY'
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
orch, runc = results["orch-agent"], results["runc"]
ratio = orch["median"] / runc["median"]
print(f"orch-agent run: median {orch['median']*1000:.1f} ms (mean {orch['mean']*1000:.1f} ms)")
print(f"runc run:       median {runc['median']*1000:.1f} ms (mean {runc['mean']*1000:.1f} ms)")
print(f"ratio orch/runc: {ratio:.2f} (aim: at most 0.25)")
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
