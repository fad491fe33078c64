#!/usr/bin/env bash
# The Open Container Initiative's runtime-tools validation suite against orch-runc and
# runc on this machine, its results side by side.
#
#   sudo bash deploy/bench/oci-validation.sh [TEST...]     # default: every test
#
# Debian's golang-github-opencontainers-runtime-tools-dev ships runtime-tools' library
# but not its validation programs (no validation/, no cmd/runtimetest), so the script
# builds them from runtime-tools' own repository at the commit Debian packages
# (0105384, April 2022; its vendor/ directory: no module download) with Debian's Go
# (golang-go), once, in $ORCH_RUNTIME_TOOLS_DIR (default /var/tmp/orch-runtime-tools).
# ORCH_RUNTIME_TOOLS_URL names another clone source. Each test runs with
# RUNTIME=orch-runc and RUNTIME=runc (Debian's), bounded by 120 s; the TAP output of
# each is kept in a temporary directory printed at the end. Not part of the test
# command (it clones from the network and takes ~4 minutes).
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
require_root "deploy/bench/oci-validation.sh"
require_rust
install_packages "${BUILD_PACKAGES[@]}" golang-go git make
# docker-ce's containerd.io provides runc itself: installing Debian's would remove it.
command -v runc >/dev/null 2>&1 || install_packages runc

commit=0105384f68e16803891d0a17d9067b1def6a2778
url="${ORCH_RUNTIME_TOOLS_URL:-https://github.com/opencontainers/runtime-tools.git}"
tools="${ORCH_RUNTIME_TOOLS_DIR:-/var/tmp/orch-runtime-tools}"

cd "$ORCH_ROOT"
step "cargo build --release -p orch-agent --bin orch-runc"
cargo build --release -p orch-agent --bin orch-runc >&2
orch_runc="$ORCH_ROOT/target/release/orch-runc"

if [ ! -d "$tools/src/.git" ]; then
    step "cloning runtime-tools from $url"
    mkdir -p "$tools"
    git clone -q "$url" "$tools/src"
fi
git -C "$tools/src" checkout -q "$commit"
if [ ! -x "$tools/src/runtimetest" ] || [ ! -x "$tools/src/validation/default/default.t" ]; then
    step "building runtimetest and the validation programs at ${commit:0:7} (Go $(go version | awk '{print $3}'))"
    (cd "$tools/src" && GOFLAGS=-mod=vendor GOPATH="$tools/gopath" GOCACHE="$tools/gocache" CGO_ENABLED=0 \
        make runtimetest validation-executables >"$tools/build.log" 2>&1) || { tail -20 "$tools/build.log" >&2; die "building runtime-tools failed (log: $tools/build.log)"; }
fi

out="$(mktemp -d /tmp/orch-oci-validation.XXXXXX)"
# A program stopped by its timeout leaves its container: forced away at the end (the
# suite's ids are UUIDs in each runtime's default root).
runc_before="$(runc list -q 2>/dev/null || true)"
orch_before="$("$orch_runc" list -q 2>/dev/null || true)"
ocitests_before="$(ls -d /tmp/ocitest* 2>/dev/null || true)"
cleanup() {
    local id dir
    # runc mounts a container without a mount namespace of its own (linux_ns_itype)
    # into the caller's: the bundles' mounts go, deepest first, then the bundles.
    { grep -o ' /tmp/ocitest[^ ]*' /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    for dir in /tmp/ocitest*; do
        [ -e "$dir" ] || continue
        grep -qx "$dir" <<<"$ocitests_before" || rm -rf "$dir"
    done
    for id in $(runc list -q 2>/dev/null || true); do
        grep -qx "$id" <<<"$runc_before" || runc delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $("$orch_runc" list -q 2>/dev/null || true); do
        grep -qx "$id" <<<"$orch_before" || "$orch_runc" delete -f "$id" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$tools/src"
if [ $# -gt 0 ]; then
    tests=()
    for name in "$@"; do tests+=("validation/$name/$name.t"); done
else
    mapfile -t tests < <(ls validation/*/*.t)
fi
step "${#tests[@]} validation programs, each with orch-runc and runc (TAP in $out)"
for runtime in orch-runc runc; do
    binary="$orch_runc"
    [ "$runtime" = runc ] && binary="$(command -v runc)"
    mkdir -p "$out/$runtime"
    for test in "${tests[@]}"; do
        name="$(basename "$test" .t)"
        status=0
        RUNTIME="$binary" timeout 120 "$test" >"$out/$runtime/$name.tap" 2>&1 || status=$?
        echo "# exit $status" >>"$out/$runtime/$name.tap"
    done
done

python3 - "$out" "${tests[@]}" <<'PY'
import os, re, sys
out, tests = sys.argv[1], [os.path.basename(t)[:-2] for t in sys.argv[2:]]
def result(runtime, name):
    text = open(os.path.join(out, runtime, name + ".tap"), errors="replace").read()
    ok = len(re.findall(r"^ok ", text, re.M))
    failed = re.findall(r"^not ok \d+ - (.*)$", text, re.M)
    code = int(re.findall(r"^# exit (\d+)$", text, re.M)[-1])
    return ok, failed, code
totals = {"orch-runc": [0, 0, 0], "runc": [0, 0, 0]}
print(f"{'test':<40} {'orch-runc ok/not ok/exit':>26} {'runc ok/not ok/exit':>22}")
for name in tests:
    row = {}
    for runtime in totals:
        ok, failed, code = result(runtime, name)
        row[runtime] = (ok, len(failed), code, failed)
        totals[runtime][0] += ok
        totals[runtime][1] += len(failed)
        totals[runtime][2] += code != 0
    o, r = row["orch-runc"], row["runc"]
    if o[:3] != r[:3]:
        print(f"{name:<40} {f'{o[0]}/{o[1]}/{o[2]}':>26} {f'{r[0]}/{r[1]}/{r[2]}':>22}")
print(f"{'(the other tests: the same on both)':<40}")
for runtime, (ok, failed, programs) in totals.items():
    print(f"{runtime}: {ok} ok, {failed} not ok, {programs} of {len(tests)} programs exited non-zero")
print("orch-runc's not ok (runc's too where marked):")
for name in tests:
    theirs = set(result("runc", name)[1])
    for failure in sorted(set(result("orch-runc", name)[1])):
        print(f"  {name}: {failure}{'   (runc too)' if failure in theirs else ''}")
PY
echo "TAP output: $out" >&2
