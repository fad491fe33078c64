#!/usr/bin/env bash
# Requests/s and latency with wrk against the same fast backend (nginx) four ways in one
# run: directly, through the service's VIP on orch's kernel path (`--data-path kernel`:
# nftables DNAT in the node's namespace, here from the node itself), through orch's balancer process (the node port called from the node
# itself, which the kernel path leaves to it, as `--data-path proxy` serves every
# connection), and through haproxy in TCP mode in an equivalent namespace on the same
# bridge. Prints the ratios. Then 400 requests, 5 ms apart, alternating between the VIP
# (kernel path) and the node port (balancer process), with a kill -9 of the process that
# set the network up (`orch-agent net up`, as an agent would) after the first 100: prints
# how many were answered (neither path depends on it).
#
#   sudo bash deploy/bench/balancer.sh [SECONDS]
#
# Aims: orch at least 1.2 x haproxy and 0.8 x direct; every request answered.
# Every address is one this script creates (bridge, namespaces, VIP, node port on the
# bridge's own address); everything is removed on exit, the balancer process too.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
require_root "deploy/bench/balancer.sh"
require_rust
install_packages "${BUILD_PACKAGES[@]}" nginx-light wrk haproxy curl iproute2 nftables conntrack
seconds="${1:-10}"

cd "$ORCH_ROOT"
step "cargo build --release"
cargo build --release >&2
agent="$ORCH_ROOT/target/release/orch-agent"

p="ob$(( $$ % 10000 ))"
bridge="${p}br"
pods=10.215.1
vip=10.216.1.10
work="$(mktemp -d /tmp/orch-bench-lb.XXXXXX)"
pids=()
node_port=$(( 32000 + $$ % 700 ))
cleanup() {
    pkill -KILL -f "__balancer.*\"bridge\":\"$bridge\"" 2>/dev/null || true
    # What net up's teardown would have removed, had it not been killed.
    rm -f "/run/orch/$bridge.balancer.sock"
    nft delete table ip "orch_$bridge" 2>/dev/null || true
    nft delete table ip "orchnp_$bridge" 2>/dev/null || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "${p}b" 2>/dev/null || true
    ip netns del "${p}h" 2>/dev/null || true
    ip link del "$bridge" 2>/dev/null || true
    ip netns del "${bridge}-lb" 2>/dev/null || true
    ip route del 10.216.1.0/24 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

cat > "$work/services.json" <<JSON
[{"name": "bench", "vip": "$vip", "ready": ["$pods.200"],
  "ports": [{"name": "http", "protocol": "Tcp", "service_port": 80, "target_port": 8080, "node_port": $node_port}]}]
JSON
"$agent" net up --bridge "$bridge" --pod-subnet "$pods.0/24" --service-cidr 10.216.1.0/24 --node-address "$pods.1" \
    --services "$work/services.json" --state-dir "$work/state" --data-path kernel >"$work/net.log" 2>&1 &
net_up=$!
pids+=("$net_up")
for _ in $(seq 100); do grep -q '"bridge"' "$work/net.log" 2>/dev/null && break; sleep 0.1; done
grep -q '"bridge"' "$work/net.log" || { cat "$work/net.log" >&2; die "orch-agent net up did not come up"; }

# A namespace on the bridge at $pods.$2 (the backend, and haproxy's).
host_on_bridge() {
    local ns="$1" octet="$2"
    ip netns add "$ns"
    ip link add "${ns}x" type veth peer name eth0 netns "$ns"
    ip link set "${ns}x" master "$bridge" up
    ip -n "$ns" addr add "$pods.$octet/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add default via "$pods.1"
}
host_on_bridge "${p}b" 200
host_on_bridge "${p}h" 250

mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    server { listen $pods.200:8080 backlog=4096; location / { return 200 "ok\n"; } }
}
CONF
ip netns exec "${p}b" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)

cat > "$work/haproxy.cfg" <<CONF
global
    maxconn 8000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend bench
    bind $pods.250:80
    default_backend nginx
backend nginx
    balance roundrobin
    server n1 $pods.200:8080
CONF
ip netns exec "${p}h" haproxy -db -f "$work/haproxy.cfg" &
pids+=($!)

for url in "http://$pods.200:8080/" "http://$vip/" "http://$pods.1:$node_port/" "http://$pods.250/"; do
    for _ in $(seq 100); do curl -fsS --max-time 1 "$url" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -fsS --max-time 1 "$url" >/dev/null || die "$url does not answer"
done

measure() { # measure NAME URL → "NAME REQ/S LATENCY"
    local out rps latency
    out="$(wrk -t2 -c64 -d"${seconds}s" --latency "$2")"
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    latency="$(awk '/^ +Latency/ {print $2; exit}' <<<"$out")"
    echo "$1 $rps $latency"
}
step "wrk -t2 -c64 -d${seconds}s, four ways"
results="$(measure direct "http://$pods.200:8080/"; measure orch "http://$vip/"; measure orch-proxy "http://$pods.1:$node_port/"; measure haproxy "http://$pods.250/")"
python3 - "$results" <<'PY'
import sys
rows = {name: (float(rps), latency) for name, rps, latency in (line.split() for line in sys.argv[1].splitlines())}
for name, (rps, latency) in rows.items():
    print(f"{name:10} {rps:10.0f} req/s   avg latency {latency}")
orch, proxy, haproxy, direct = rows["orch"][0], rows["orch-proxy"][0], rows["haproxy"][0], rows["direct"][0]
print(f"orch/haproxy: {orch / haproxy:.2f} (aim: at least 1.20; the balancer process: {proxy / haproxy:.2f})")
print(f"orch/direct:  {orch / direct:.2f} (aim: at least 0.80; the balancer process: {proxy / direct:.2f})")
PY

step "VIP $vip:80 and node port $pods.1:$node_port: 400 requests, kill -9 of orch-agent net up (PID $net_up) after 100"
python3 - "$pods.1" "$node_port" "$net_up" "$vip" <<'PY'
import os, signal, socket, sys, time
host, port, victim, vip = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
answered = 0
for i in range(400):
    if i == 100:
        os.kill(victim, signal.SIGKILL)
    try:
        with socket.create_connection((vip, 80) if i % 2 else (host, port), timeout=2) as s:
            s.settimeout(2)
            s.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            answered += data.startswith(b"HTTP/1.1 200")
    except OSError:
        pass
    time.sleep(0.005)
print(f"VIP and node port answers during a kill -9 of the agent: {answered}/400")
PY
