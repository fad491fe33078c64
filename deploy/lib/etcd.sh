# start_etcd DIR [CLIENT_PORT PEER_PORT]: starts a real etcd (Debian etcd-server) on two
# loopback ports (free ones unless given: a restart on the same data keeps its ports)
# with its data in DIR, waits until it is healthy, and sets ETCD_PID, ETCD_PORTS
# ("CLIENT PEER") and ORCH_TEST_ETCD. The caller kills $ETCD_PID on exit.
# shellcheck shell=bash

# A free loopback port below the kernel's ephemeral range (10000-29999, under the node
# ports): no outgoing connection takes it while etcd is down, so a restart gets it back.
free_port() {
    python3 -c '
import random, socket
for _ in range(200):
    port = random.randrange(10000, 30000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port in 10000-29999")
'
}

start_etcd() {
    local dir="$1" client_port="${2:-}" peer_port="${3:-}"
    [ -n "$client_port" ] || client_port="$(free_port)"
    [ -n "$peer_port" ] || peer_port="$(free_port)"
    while [ "$peer_port" = "$client_port" ]; do peer_port="$(free_port)"; done
    step "starting etcd on 127.0.0.1:$client_port"
    mkdir -p "$dir"
    etcd --name orch-test --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$client_port" --advertise-client-urls "http://127.0.0.1:$client_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "orch-test=http://127.0.0.1:$peer_port" --log-level warn >>"$dir/etcd.log" 2>&1 &
    ETCD_PID=$!
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$client_port/health" 2>/dev/null | grep -q '"health":"true"' && break
        kill -0 "$ETCD_PID" 2>/dev/null || { tail -n 20 "$dir/etcd.log" >&2; die "etcd exited during start-up"; }
        sleep 0.1
    done
    curl -fsS "http://127.0.0.1:$client_port/health" 2>/dev/null | grep -q '"health":"true"' \
        || { kill "$ETCD_PID" 2>/dev/null; tail -n 20 "$dir/etcd.log" >&2; die "etcd did not become healthy on 127.0.0.1:$client_port"; }
    export ORCH_TEST_ETCD="http://127.0.0.1:$client_port"
    ETCD_PORTS="$client_port $peer_port"
}
