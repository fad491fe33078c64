#!/usr/bin/env bash
# A cluster on one machine: each "VM" is a network namespace with its own address on a
# lab bridge (a private subnet this script creates), running its own orch-agent with its
# own state dir and cgroup subtree; a real etcd on loopback (a 3-member cluster over
# mutual TLS with --etcd 3), one controller (two or three with ORCH_LAB_CONTROLLERS)
# listening on the lab bridge, every agent given every controller, and a registry (Debian's
# docker-registry) on the lab bridge at port 5000 holding the demo image. Every agent's
# registry config (root-only, in the lab's directory) maps 127.0.0.1:5000, the registry
# manifests/webapp.yaml names, to that one, as a real cluster's nodes would map it to the
# machine that runs it.
#
#   sudo bash deploy/lab.sh up N [--etcd 3]   # N nodes (1-9); --etcd 3: three etcd members
#   sudo bash deploy/lab.sh status        # each node's name, address, agent PID, state
#   sudo bash deploy/lab.sh kill-node K   # agent and containers die as with a dead VM
#   sudo bash deploy/lab.sh partition K   # cut node K's link
#   sudo bash deploy/lab.sh heal K        # restore it
#   sudo bash deploy/lab.sh restart-controller [C] [--kill]   # SIGTERM (SIGKILL) controller C (1), start it again
#   sudo bash deploy/lab.sh stop-controller [C] [--kill]      # the first half alone: controller C is down
#   sudo bash deploy/lab.sh start-controller [C]              # the second half: start it (or a new one, C up to 3), wait until it answers
#   sudo bash deploy/lab.sh pause-controller C | resume-controller C   # SIGSTOP / SIGCONT controller C
#   sudo bash deploy/lab.sh kill-agent K      # kill -9 node K's agent alone (its containers run on)
#   sudo bash deploy/lab.sh start-agent K     # start it again, on the same state
#   sudo bash deploy/lab.sh stop-etcd [M] [--kill]   # stop the store, or member M of --etcd 3 (SIGTERM, or SIGKILL)
#   sudo bash deploy/lab.sh start-etcd [M]    # start it (member M) again on its data and ports
#   sudo bash deploy/lab.sh backup FILE       # orch-controller backup of the lab's store (etcd: while it runs)
#   sudo bash deploy/lab.sh wipe-store        # the store is lost (controllers stopped first): a new etcd or file
#   sudo bash deploy/lab.sh restore FILE      # orch-controller restore into it (controllers stopped)
#   sudo bash deploy/lab.sh slow-link K RATE  # node K downloads at RATE (tc tbf, e.g. 8mbit)
#   sudo bash deploy/lab.sh fast-link K       # no limit again
#   sudo bash deploy/lab.sh down          # remove everything the lab made
#
# After `up`, `orch` on the host talks to the lab's controller with no flags: the script
# writes the CLI config (~/.config/orch/config.toml, or $ORCH_CONFIG: a context named after
# the lab, with every controller as a server), and removes it on down.
#
# Everything speaks mutual TLS: `up` makes the lab's CA and certificates in its state
# directory (orch-controller init) and the CLI config points at the CLI's certificate.
#
# Settings (environment): ORCH_LAB_NAME (prefix of every name, default olab; at most 5
# characters), ORCH_LAB_NET (the lab subnet's third octet in 10.250.X.0/24, default 0),
# ORCH_LAB_DIR (state, default /var/lib/orch/lab-$ORCH_LAB_NAME), ORCH_BIN (where the
# binaries are, default target/release), ORCH_LAB_CONTROLLERS (1-3), ORCH_LAB_ETCD (1 or 3:
# what --etcd sets), ORCH_LAB_STORE
# (etcd, the default, or embedded: the controller's own redb file in the lab's directory,
# with one controller),
# ORCH_LAB_UPSTREAM_DNS (where the nodes relay outside names; default none: the lab's
# nodes have no way out, and a lab never asks the machine's resolver), ORCH_LAB_LEASES
# (lab, the default: node lease 2 s, grace 1 s, leader lease 2 s, so lease-driven
# faults resolve quickly; or default: the controllers' own defaults, as the benchmarks
# measure them), ORCH_LAB_DATA_PATH (the agents' --data-path: kernel, the default, or
# proxy).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
source "$(dirname "$0")/lib/etcd.sh"
source "$(dirname "$0")/lib/registry.sh"
require_root "deploy/lab.sh"

name="${ORCH_LAB_NAME:-olab}"
[[ "$name" =~ ^[a-z][a-z0-9]{0,4}$ ]] || die "ORCH_LAB_NAME=$name: 1-5 lower-case letters and digits, starting with a letter"
net="${ORCH_LAB_NET:-0}"
[[ "$net" =~ ^[0-9]+$ ]] && [ "$net" -le 255 ] || die "ORCH_LAB_NET=$net: a number 0-255"
dir="${ORCH_LAB_DIR:-/var/lib/orch/lab-$name}"
bin="${ORCH_BIN:-$ORCH_ROOT/target/release}"
controllers="${ORCH_LAB_CONTROLLERS:-1}"
[[ "$controllers" =~ ^[123]$ ]] || die "ORCH_LAB_CONTROLLERS=$controllers: 1, 2 or 3"
etcd_members="${ORCH_LAB_ETCD:-1}"
store_kind="${ORCH_LAB_STORE:-etcd}"
case "${ORCH_LAB_LEASES:-lab}" in
    lab) lease_flags=(--node-lease 2s --node-grace 1s --leader-lease 2s --rebalance-cooldown 3s) ;;
    default) lease_flags=() ;;
    *) die "ORCH_LAB_LEASES=$ORCH_LAB_LEASES: lab or default" ;;
esac
case "$store_kind" in
    etcd) ;;
    embedded) [ "$controllers" = 1 ] || die "ORCH_LAB_STORE=embedded: one controller only (a redb file belongs to one process)" ;;
    *) die "ORCH_LAB_STORE=$store_kind: etcd or embedded" ;;
esac
bridge="${name}br"
prefix="10.250.$net"
host_address="$prefix.1"
registry_address="$host_address:5000"
config="${ORCH_CONFIG:-${XDG_CONFIG_HOME:-$HOME/.config}/orch/config.toml}"

node_ns() { echo "${name}-n$1"; }
node_veth() { echo "${name}v$1"; }
node_address() { echo "$prefix.$((10 + $1))"; }
controller_address() { echo "$host_address:$((7100 + 10 * ($1 - 1)))"; }
# Its /metrics, over TLS (what the lab's Prometheus scrapes).
controller_metrics_address() { echo "$host_address:$((7102 + 10 * ($1 - 1)))"; }
pid_of() { [ -f "$dir/$1.pid" ] && cat "$dir/$1.pid" || true; }
# Alive and still the program the lab started (a PID file may outlive a reboot).
alive() {
    local pid; pid="$(pid_of "$1")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir"
}
# stop_pid SIGNAL PID WHAT: sends SIGNAL and waits up to 10 s for the process to end;
# one that outlives a SIGTERM gets SIGKILL, and one that outlives that is an error.
stop_pid() {
    local signal="$1" pid="$2" what="$3" _
    kill -s "$signal" "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    if [ "$signal" != KILL ]; then
        echo "$what (PID $pid) outlived SIG$signal for 10 s: SIGKILL" >&2
        kill -s KILL "$pid" 2>/dev/null || return 0
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    fi
    die "$what (PID $pid) does not end"
}
node_number() { [[ "${1:-}" =~ ^[1-9]$ ]] || die "node number must be 1-9, got '${1:-}'"; }

# Starts a program in the background with its log and PID file.
launch() {
    local what="$1"; shift
    "$@" >>"$dir/$what.log" 2>&1 &
    echo $! >"$dir/$what.pid"
}

wait_for() {
    local what="$1" check="$2"
    for _ in $(seq 1 200); do
        eval "$check" && return 0
        sleep 0.1
    done
    die "$what did not come up (logs in $dir)"
}

# Everyone speaks mutual TLS with certificates from the lab's own CA.
orch_cli() { "$bin/orch" --tls-dir "$dir/pki" "$@"; }

# Every controller the lab started with, comma-separated (agents learn of later ones).
all_controllers() {
    local c list=""
    for c in $(seq 1 "$(cat "$dir/controllers" 2>/dev/null || echo "$controllers")"); do list+="${list:+,}$(controller_address "$c")"; done
    echo "$list"
}

start_agent() {
    local k="$1"
    launch "agent$k" nsenter --net="/run/netns/$(node_ns "$k")" -- "$bin/orch-agent" serve --tls-dir "$dir/pki" \
        --controller "$(all_controllers)" --name "node$k" --address "$(node_address "$k")" \
        --state-dir "$dir/node$k" --volumes-dir "$dir/node$k-volumes" --bridge "${name}b$k" --cgroup-parent "${name}-node$k" \
        --api-listen "$(node_address "$k"):7101" --registry-config "$dir/registries.json" \
        --upstream-dns "${ORCH_LAB_UPSTREAM_DNS:-none}" --metrics-listen "$(node_address "$k"):7103" \
        --data-path "${ORCH_LAB_DATA_PATH:-kernel}" --allow-chaos
}

# store_args: --store, and the TLS flags of a 3-member etcd (the controllers' own
# certificate is their client certificate).
set_store_args() {
    store_args=(--store "$(cat "$dir/store")")
    if [ -f "$dir/etcd.members" ]; then
        store_args+=(--etcd-ca "$dir/pki/ca.pem" --etcd-cert "$dir/pki/controller.pem" --etcd-key "$dir/pki/controller.key")
    fi
}

start_controller() {
    local c="$1"
    set_store_args
    launch "controller$c" "$bin/orch-controller" --tls-dir "$dir/pki" "${store_args[@]}" --listen "$(controller_address "$c")" \
        --identity "${name}-controller$c" "${lease_flags[@]}" --metrics-listen "$(controller_metrics_address "$c")"
}

# stop-controller / restart-controller: [C] [--kill] in any order.
cmd_stop_controller() {
    local c=1 signal=TERM arg
    for arg in "$@"; do
        case "$arg" in
            --kill) signal=KILL ;;
            [123]) c="$arg" ;;
            *) die "stop-controller|restart-controller [C] [--kill]: C is 1-3, got '$arg'" ;;
        esac
    done
    [ -f "$dir/store" ] || die "no lab named $name is up"
    if alive "controller$c"; then
        # A paused controller takes its signal only once it runs again.
        kill -s CONT "$(pid_of "controller$c")" 2>/dev/null || true
        stop_pid "$signal" "$(pid_of "controller$c")" "controller$c"
    fi
    echo "controller$c stopped (SIG$signal)"
}

cmd_start_controller() {
    local c="${1:-1}"
    case "$c" in [123]) ;; *) die "start-controller [C]: C is 1-3, got '$c'" ;; esac
    [ -f "$dir/store" ] || die "no lab named $name is up"
    alive "controller$c" && die "controller$c runs already (PID $(pid_of "controller$c"))"
    start_controller "$c"
    wait_for "controller $c" "orch_cli --server $(controller_address "$c") get nodes >/dev/null 2>&1"
    echo "controller$c started (PID $(pid_of "controller$c"))"
}

cmd_restart_controller() {
    local c=1 arg
    for arg in "$@"; do
        case "$arg" in [123]) c="$arg" ;; esac
    done
    cmd_stop_controller "$@" >/dev/null
    cmd_start_controller "$c" >/dev/null
    echo "controller$c restarted (PID $(pid_of "controller$c"))"
}

# pause-controller C / resume-controller C: SIGSTOP (a controller frozen, its sockets
# open: a GC pause, a hung VM) and SIGCONT.
cmd_signal_controller() {
    local signal="$1" c="${2:-}"
    case "$c" in [123]) ;; *) die "pause-controller|resume-controller C: C is 1-3, got '$c'" ;; esac
    alive "controller$c" || die "controller$c is not running"
    kill -s "$signal" "$(pid_of "controller$c")"
    echo "controller$c: SIG$signal"
}

cmd_kill_agent() {
    local k="${1:?usage: lab.sh kill-agent K}"; node_number "$k"
    alive "agent$k" || die "node$k's agent is not running"
    local pid; pid="$(pid_of "agent$k")"
    stop_pid KILL "$pid" "node$k's agent"
    echo "node$k's agent killed (PID $pid)"
}

cmd_start_agent() {
    local k="${1:?usage: lab.sh start-agent K}"; node_number "$k"
    [ -e "/run/netns/$(node_ns "$k")" ] || die "node$k is not in the lab"
    alive "agent$k" && die "node$k's agent runs already (PID $(pid_of "agent$k"))"
    start_agent "$k"
    echo "node$k's agent started (PID $(pid_of "agent$k"))"
}

# stop-etcd [M] [--kill]: the lab's etcd, or member M of a 3-member cluster.
cmd_stop_etcd() {
    local m="" signal=TERM arg
    for arg in "$@"; do
        case "$arg" in
            --kill) signal=KILL ;;
            [123]) m="$arg" ;;
            *) die "stop-etcd [M] [--kill]: M is 1-3, got '$arg'" ;;
        esac
    done
    if [ -f "$dir/etcd.members" ]; then
        [ -n "$m" ] || die "stop-etcd M: the lab runs 3 etcd members; name one (1-3)"
        alive "etcd$m" || die "etcd member $m is not running"
        stop_pid "$signal" "$(pid_of "etcd$m")" "etcd$m"
        echo "etcd member $m stopped (SIG$signal)"
        return
    fi
    [ -f "$dir/etcd.ports" ] || die "the lab $name has no etcd (ORCH_LAB_STORE=embedded, or not up)"
    alive etcd || die "the lab's etcd is not running"
    stop_pid "$signal" "$(pid_of etcd)" etcd
    echo "etcd stopped"
}

cmd_start_etcd() {
    local m="${1:-}"
    if [ -f "$dir/etcd.members" ]; then
        case "$m" in [123]) ;; *) die "start-etcd M: M is 1-3, got '$m'" ;; esac
        alive "etcd$m" && die "etcd member $m runs already"
        start_etcd_member "$m"
        echo "etcd member $m started (PID $(pid_of "etcd$m"))"
        return
    fi
    [ -f "$dir/etcd.ports" ] || die "no lab named $name is up"
    alive etcd && die "the lab's etcd runs already"
    # shellcheck disable=SC2046 # two ports
    start_etcd "$dir/etcd" $(cat "$dir/etcd.ports")
    echo "$ETCD_PID" >"$dir/etcd.pid"
    echo "etcd started (PID $ETCD_PID)"
}

# Member M of the lab's 3-member etcd: client and peer ports over mutual TLS with
# etcd-etcdM.pem from the lab's CA (orch-controller init --etcd-member), its data in
# $dir/etcdM. The same command starts it the first time and again later.
start_etcd_member() {
    local m="$1" ports client peer cluster="" i
    for i in 1 2 3; do
        read -r client peer <"$dir/etcd$i.ports"
        cluster+="${cluster:+,}etcd$i=https://127.0.0.1:$peer"
    done
    read -r client peer <"$dir/etcd$m.ports"
    local cert="$dir/pki/etcd-etcd$m.pem" key="$dir/pki/etcd-etcd$m.key" ca="$dir/pki/ca.pem"
    mkdir -p "$dir/etcd$m"
    launch "etcd$m" etcd --name "etcd$m" --data-dir "$dir/etcd$m/data" \
        --listen-client-urls "https://127.0.0.1:$client" --advertise-client-urls "https://127.0.0.1:$client" \
        --listen-peer-urls "https://127.0.0.1:$peer" --initial-advertise-peer-urls "https://127.0.0.1:$peer" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "orch-lab-$name" \
        --cert-file "$cert" --key-file "$key" --trusted-ca-file "$ca" --client-cert-auth \
        --peer-cert-file "$cert" --peer-key-file "$key" --peer-trusted-ca-file "$ca" --peer-client-cert-auth \
        --log-level warn
}

# Whether the 3-member cluster answers through member M (a quorum stands behind it).
etcd_member_healthy() {
    local m="$1" client peer
    read -r client peer <"$dir/etcd$m.ports"
    curl -fsS --cacert "$dir/pki/ca.pem" --cert "$dir/pki/controller.pem" --key "$dir/pki/controller.key" \
        "https://127.0.0.1:$client/health" 2>/dev/null | grep -q '"health":"true"'
}

cmd_backup() {
    local file="${1:?usage: lab.sh backup FILE}"
    [ -f "$dir/store" ] || die "no lab named $name is up"
    set_store_args
    "$bin/orch-controller" "${store_args[@]}" backup "$file"
}

# The store is lost as with a dead disk: a new, empty etcd on the same ports (a new data
# directory), or no store file. The controllers must be stopped first.
cmd_wipe_store() {
    [ -f "$dir/store" ] || die "no lab named $name is up"
    local c
    [ -f "$dir/etcd.members" ] && die "wipe-store: not for a 3-member etcd (down and up the lab instead)"
    for c in 1 2 3; do
        alive "controller$c" && die "controller$c runs: stop-controller $c first"
    done
    if [ -f "$dir/etcd.ports" ]; then
        alive etcd && stop_pid TERM "$(pid_of etcd)" etcd
        rm -rf "$dir/etcd/data"
        # shellcheck disable=SC2046 # two ports
        start_etcd "$dir/etcd" $(cat "$dir/etcd.ports")
        echo "$ETCD_PID" >"$dir/etcd.pid"
        echo "the store is wiped: a new etcd (PID $ETCD_PID) on the same ports"
    else
        rm -f "$dir/controller.redb"
        echo "the store is wiped: $dir/controller.redb removed"
    fi
}

cmd_restore() {
    local file="${1:?usage: lab.sh restore FILE}"
    [ -f "$dir/store" ] || die "no lab named $name is up"
    set_store_args
    "$bin/orch-controller" "${store_args[@]}" restore "$file"
}

cmd_slow_link() {
    local k="${1:?usage: lab.sh slow-link K RATE}" rate="${2:?usage: lab.sh slow-link K RATE (e.g. 8mbit)}"; node_number "$k"
    [[ "$rate" =~ ^[1-9][0-9]*[kmg]?bit$ ]] || die "RATE must be like 8mbit or 500kbit, got '$rate'"
    [ -e "/sys/class/net/$(node_veth "$k")" ] || die "node$k is not in the lab"
    tc qdisc replace dev "$(node_veth "$k")" root tbf rate "$rate" burst 32kbit latency 400ms || die "tc could not limit node$k's link (above)"
    echo "node$k downloads at $rate"
}

cmd_fast_link() {
    local k="${1:?usage: lab.sh fast-link K}"; node_number "$k"
    [ -e "/sys/class/net/$(node_veth "$k")" ] || die "node$k is not in the lab"
    # (No limit to remove is fine: the default qdisc is left as it is.)
    tc qdisc del dev "$(node_veth "$k")" root 2>/dev/null || true
    echo "node$k downloads at full speed"
}

cmd_up() {
    local n="${1:?usage: lab.sh up N [--etcd 1|3]}"
    [[ "$n" =~ ^[1-9]$ ]] || die "up N: N must be 1-9"
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --etcd) etcd_members="${2:-}"; shift 2 || die "--etcd needs 1 or 3" ;;
            *) die "up N [--etcd 1|3]: unknown argument '$1'" ;;
        esac
    done
    case "$etcd_members" in
        1) ;;
        3) [ "$store_kind" = etcd ] || die "--etcd 3 with ORCH_LAB_STORE=$store_kind: the members are an etcd store" ;;
        *) die "--etcd $etcd_members: 1 or 3 members" ;;
    esac
    [ -e "/run/netns/$(node_ns 1)" ] && die "a lab named $name is up already (lab.sh down first, or ORCH_LAB_NAME)"
    for binary in orch orch-agent orch-controller; do
        [ -x "$bin/$binary" ] || die "$bin/$binary is missing: cargo build --release first (or set ORCH_BIN)"
    done
    install_registry etcd-server util-linux nftables conntrack skopeo busybox-static
    mkdir -p "$dir"
    echo "$n" >"$dir/nodes"
    echo "$controllers" >"$dir/controllers"

    step "lab bridge $bridge at $host_address/24"
    # An address of its own: a bridge without one takes its lowest port's, and changes
    # it (under every neighbour's ARP cache) as ports come and go.
    ip link add "$bridge" address "$(printf '02:42:0a:fa:%02x:01' "$net")" type bridge
    ip addr add "$host_address/24" dev "$bridge"
    ip link set "$bridge" up
    for k in $(seq 1 "$n"); do
        local ns veth
        ns="$(node_ns "$k")"; veth="$(node_veth "$k")"
        ip netns add "$ns"
        ip link add "$veth" type veth peer name "${veth}p"
        ip link set "${veth}p" netns "$ns"
        ip -n "$ns" link set "${veth}p" name eth0
        ip -n "$ns" addr add "$(node_address "$k")/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        ip -n "$ns" route add default via "$host_address"
        ip link set "$veth" master "$bridge" up
    done

    step "cluster CA and certificates in $dir/pki"
    local node_args=()
    for k in $(seq 1 "$n"); do node_args+=(--node "node$k=$(node_address "$k")"); done
    local controller_names=()
    for c in $(seq 1 "$controllers"); do controller_names+=(--controller-name "$host_address"); done
    local member_args=()
    if [ "$etcd_members" = 3 ]; then
        for m in 1 2 3; do member_args+=(--etcd-member "etcd$m=127.0.0.1"); done
    fi
    "$bin/orch-controller" --tls-dir "$dir/pki" init "${controller_names[@]}" "${node_args[@]}" "${member_args[@]}" >/dev/null

    step "registry on $registry_address with the demo image"
    start_registry "$dir/registry" "$registry_address"
    echo "$REGISTRY_PID" >"$dir/registry.pid"
    bash "$ORCH_ROOT/deploy/images/build-demo.sh" --out "$dir/demo-web" --push "$registry_address" >/dev/null
    (umask 077; printf '{"mirrors": {"127.0.0.1:5000": {"endpoint": ["http://%s"]}}}\n' "$registry_address" >"$dir/registries.json")

    local store="embedded:$dir/controller.redb"
    if [ "$etcd_members" = 3 ]; then
        local endpoints="" m client peer
        for m in 1 2 3; do
            client="$(free_port)"; peer="$(free_port)"
            while [ "$peer" = "$client" ]; do peer="$(free_port)"; done
            echo "$client $peer" >"$dir/etcd$m.ports"
            endpoints+="${endpoints:+,}127.0.0.1:$client"
        done
        echo 3 >"$dir/etcd.members"
        for m in 1 2 3; do
            step "etcd member $m (mutual TLS)"
            start_etcd_member "$m"
        done
        wait_for "the 3-member etcd" "etcd_member_healthy 1 && etcd_member_healthy 2 && etcd_member_healthy 3"
        store="etcd://$endpoints"
    elif [ "$store_kind" = etcd ]; then
        start_etcd "$dir/etcd"
        echo "$ETCD_PID" >"$dir/etcd.pid"
        echo "$ETCD_PORTS" >"$dir/etcd.ports"
        echo "$ORCH_TEST_ETCD" >"$dir/etcd.url"
        store="etcd://${ORCH_TEST_ETCD#http://}"
    fi
    echo "$store" >"$dir/store"
    for c in $(seq 1 "$controllers"); do
        step "controller $c on $(controller_address "$c") ($store)"
        start_controller "$c"
    done
    wait_for "the controller" "orch_cli --server $(controller_address 1) get nodes >/dev/null 2>&1"
    for k in $(seq 1 "$n"); do
        step "node$k: $(node_ns "$k") at $(node_address "$k")"
        start_agent "$k"
    done
    wait_for "$n ready nodes" "[ \"\$(orch_cli --server $(controller_address 1) get nodes -o json 2>/dev/null | grep -c '\"ready\": true')\" = $n ]"
    mkdir -p "$(dirname "$config")"
    if [ ! -e "$config" ] || grep -q "written by deploy/lab.sh" "$config"; then
        local servers="" c
        for c in $(seq 1 "$controllers"); do servers+="${servers:+, }\"$(controller_address "$c")\""; done
        printf '# written by deploy/lab.sh (%s); removed by lab.sh down\ncurrent-context = "%s"\n\n[contexts.%s]\nservers = [%s]\nca = "%s"\ncert = "%s"\nkey = "%s"\n' \
            "$name" "$name" "$name" "$servers" "$dir/pki/ca.pem" "$dir/pki/admin.pem" "$dir/pki/admin.key" >"$config"
        echo "$config" >"$dir/config"
    else
        echo "note: $config exists and is not the lab's; use --server $(controller_address 1)" >&2
    fi
    cmd_status
}

cmd_status() {
    [ -f "$dir/nodes" ] || die "no lab named $name is up"
    printf '%-8s %-14s %-9s %s\n' NODE ADDRESS AGENT STATE
    for k in $(seq 1 "$(cat "$dir/nodes")"); do
        local state="running" pid
        pid="$(pid_of "agent$k")"
        alive "agent$k" || state="dead"
        if [ "$(cat "/sys/class/net/$(node_veth "$k")/operstate" 2>/dev/null)" = "down" ]; then
            [ "$state" = running ] && state="partitioned" || state="$state, partitioned"
        fi
        printf '%-8s %-14s %-9s %s\n' "node$k" "$(node_address "$k")" "${pid:--}" "$state"
    done
    for c in 1 2 3; do
        [ -f "$dir/controller$c.pid" ] || continue
        alive "controller$c" && echo "controller$c: $(controller_address "$c") (PID $(pid_of "controller$c"))" || echo "controller$c: dead"
    done
    if [ -f "$dir/etcd.members" ]; then
        for m in 1 2 3; do
            alive "etcd$m" && echo "etcd$m: 127.0.0.1:$(cut -d' ' -f1 "$dir/etcd$m.ports") (PID $(pid_of "etcd$m"))" || echo "etcd$m: dead"
        done
    fi
}

# Every process of node K: its agent, the shims (in the node's network namespace) and
# the containers (in its cgroup subtree).
kill_node_processes() {
    local k="$1"
    if alive "agent$k"; then kill -9 "$(pid_of "agent$k")" 2>/dev/null || true; fi
    for pid in $(ip netns pids "$(node_ns "$k")" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    for procs in /sys/fs/cgroup/*/"${name}-node$k"/*/cgroup.procs /sys/fs/cgroup/"${name}-node$k"/*/cgroup.procs; do
        [ -f "$procs" ] || continue
        for pid in $(cat "$procs"); do kill -9 "$pid" 2>/dev/null || true; done
    done
}

cmd_kill_node() {
    local k="${1:?usage: lab.sh kill-node K}"; node_number "$k"
    [ -e "/run/netns/$(node_ns "$k")" ] || die "node$k is not in the lab"
    # As a machine dies: the link goes first, so no FIN of its connections reaches the
    # controller (a closed connection is an agent restarting on a live machine).
    ip link set "$(node_veth "$k")" down
    kill_node_processes "$k"
    echo "node$k killed (link down, agent, balancer and containers gone)"
}

cmd_partition() {
    local k="${1:?usage: lab.sh partition K}"; node_number "$k"
    ip link set "$(node_veth "$k")" down || die "node$k is not in the lab"
    echo "node$k partitioned"
}

cmd_heal() {
    local k="${1:?usage: lab.sh heal K}"; node_number "$k"
    ip link set "$(node_veth "$k")" up || die "node$k is not in the lab"
    echo "node$k healed"
}

cmd_down() {
    local n=0
    [ -f "$dir/nodes" ] && n="$(cat "$dir/nodes")"
    for k in $(seq 1 "$n"); do
        kill_node_processes "$k"
        if [ -e "/run/netns/$(node_ns "$k")" ]; then
            nsenter --net="/run/netns/$(node_ns "$k")" -- "$bin/orch-agent" teardown --state-dir "$dir/node$k" \
                --bridge "${name}b$k" --cgroup-parent "${name}-node$k" >/dev/null 2>&1 || true
        fi
        for hierarchy in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
            [ -d "$hierarchy${name}-node$k" ] && find "$hierarchy${name}-node$k" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        done
        ip netns del "${name}b$k-lb" 2>/dev/null || true
        ip netns del "$(node_ns "$k")" 2>/dev/null || true
        ip link del "$(node_veth "$k")" 2>/dev/null || true
    done
    for c in 1 2 3; do
        # A paused controller ends only once it may run again.
        alive "controller$c" && { kill -CONT "$(pid_of "controller$c")"; kill "$(pid_of "controller$c")"; sleep 0.2; kill -9 "$(pid_of "controller$c")" 2>/dev/null || true; } || true
    done
    alive etcd && { kill "$(pid_of etcd)"; sleep 0.5; } || true
    for m in 1 2 3; do
        alive "etcd$m" && { kill "$(pid_of "etcd$m")"; sleep 0.2; kill -9 "$(pid_of "etcd$m")" 2>/dev/null || true; } || true
    done
    alive registry && { kill "$(pid_of registry)"; sleep 0.2; } || true
    ip link del "$bridge" 2>/dev/null || true
    if [ -f "$dir/config" ]; then rm -f "$(cat "$dir/config")"; fi
    rm -rf "$dir"
    echo "lab $name removed"
}

case "${1:-}" in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    kill-node) cmd_kill_node "${2:-}" ;;
    partition) cmd_partition "${2:-}" ;;
    heal) cmd_heal "${2:-}" ;;
    restart-controller) shift; cmd_restart_controller "$@" ;;
    stop-controller) shift; cmd_stop_controller "$@" ;;
    start-controller) cmd_start_controller "${2:-}" ;;
    kill-agent) cmd_kill_agent "${2:-}" ;;
    start-agent) cmd_start_agent "${2:-}" ;;
    stop-etcd) shift; cmd_stop_etcd "$@" ;;
    start-etcd) cmd_start_etcd "${2:-}" ;;
    pause-controller) cmd_signal_controller STOP "${2:-}" ;;
    resume-controller) cmd_signal_controller CONT "${2:-}" ;;
    backup) cmd_backup "${2:-}" ;;
    wipe-store) cmd_wipe_store ;;
    restore) cmd_restore "${2:-}" ;;
    slow-link) cmd_slow_link "${2:-}" "${3:-}" ;;
    fast-link) cmd_fast_link "${2:-}" ;;
    *) die "usage: lab.sh up N [--etcd 3] | down | status | kill-node K | partition K | heal K | restart-controller [C] [--kill] | stop-controller [C] [--kill] | start-controller [C] | pause-controller C | resume-controller C | kill-agent K | start-agent K | stop-etcd [M] [--kill] | start-etcd [M] | backup FILE | wipe-store | restore FILE | slow-link K RATE | fast-link K" ;;
esac
