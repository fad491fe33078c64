#!/usr/bin/env bash
# One CLI call against a local controller, end to end (process start, TLS handshake,
# the admission call, the command's call, output): `orch get services -o json` over
# mutual TLS and over plain text on loopback, beside etcd's own CLI doing one call to a
# local etcd (`etcdctl get`, plain text), in one hyperfine invocation, with the ratios.
#
#   sudo bash deploy/bench/cli.sh [RUNS]
#
# The controllers run on embedded stores in a temporary directory, with no agent; the
# etcd on two free loopback ports. Aim: the TLS call at most 5 ms.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/etcd.sh"
require_root "deploy/bench/cli.sh"
runs="${1:-100}"
bin="${ORCH_BIN:-$ORCH_ROOT/target/release}"
if [ -z "${ORCH_BIN:-}" ]; then
    require_rust
    install_packages "${BUILD_PACKAGES[@]}" etcd-server etcd-client hyperfine python3 curl
    cd "$ORCH_ROOT"
    step "cargo build --release -p orch -p orch-controller"
    cargo build --release -p orch -p orch-controller >&2
else
    install_packages etcd-server etcd-client hyperfine python3 curl
fi

work="$(mktemp -d /tmp/orch-bench-cli.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

start_etcd "$work/etcd"
pids+=("$ETCD_PID")
etcdctl --endpoints="$ORCH_TEST_ETCD" put /bench value >/dev/null

"$bin/orch-controller" --tls-dir "$work/pki" init --controller-name 127.0.0.1 >/dev/null
tls_port="$(free_port)"
plain_port="$(free_port)"
"$bin/orch-controller" --tls-dir "$work/pki" --store "embedded:$work/tls.redb" --listen "127.0.0.1:$tls_port" \
    --metrics-listen none >"$work/tls.log" 2>&1 &
pids+=("$!")
"$bin/orch-controller" --store "embedded:$work/plain.redb" --insecure-listen "127.0.0.1:$plain_port" \
    --metrics-listen none >"$work/plain.log" 2>&1 &
pids+=("$!")
tls_call="$bin/orch --server 127.0.0.1:$tls_port --tls-dir $work/pki get services -o json"
plain_call="$bin/orch --server http://127.0.0.1:$plain_port get services -o json"
for call in "$tls_call" "$plain_call"; do
    for _ in $(seq 1 100); do $call >/dev/null 2>&1 && break; sleep 0.1; done
    $call >/dev/null || die "the controller does not answer: $call"
done

step "hyperfine: $runs runs each"
hyperfine --warmup 5 --runs "$runs" --export-json "$work/result.json" \
    -n "orch (mutual TLS)" "$tls_call" \
    -n "orch (plain text)" "$plain_call" \
    -n etcdctl "etcdctl --endpoints=$ORCH_TEST_ETCD get /bench" >&2

python3 - "$work/result.json" <<'PY'
import json, sys
results = {r["command"]: r for r in json.load(open(sys.argv[1]))["results"]}
tls, plain, etcd = results["orch (mutual TLS)"], results["orch (plain text)"], results["etcdctl"]
for name, r in (("orch get services (mutual TLS)", tls), ("orch get services (plain text)", plain), ("etcdctl get (plain text)", etcd)):
    print(f"{name:32} median {r['median']*1000:6.1f} ms (mean {r['mean']*1000:.1f} ms)")
print(f"ratio orch TLS / etcdctl:   {tls['median'] / etcd['median']:.2f}")
print(f"ratio orch plain / etcdctl: {plain['median'] / etcd['median']:.2f}")
print(f"orch TLS call: {tls['median']*1000:.1f} ms (aim: at most 5 ms)")
PY
