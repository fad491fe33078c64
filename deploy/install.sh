#!/usr/bin/env bash
# Installs orch on this machine for a real cluster: the binaries (from target/release),
# the systemd units (deploy/systemd/), the certificates and a settings file; then
# enables and starts the service.
#
#   sudo bash deploy/install.sh etcd --name e1 --address 10.0.0.1 --pki DIR [--cluster e1=https://10.0.0.1:2380,e2=...,e3=...]
#   sudo bash deploy/install.sh controller --store etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379 --listen 10.0.0.1:7100 --pki DIR
#   sudo bash deploy/install.sh agent --controller 10.0.0.1:7100,10.0.0.2:7100 --name node1 --address 10.0.0.11 --pki DIR
#
# --pki DIR holds what `orch-controller --tls-dir DIR init --controller-name 10.0.0.1
# --controller-name 10.0.0.2 --node node1=10.0.0.11 --etcd-member e1=10.0.0.1 ...` made:
# an etcd member needs ca.pem and etcd-NAME.pem/.key, a controller ca.pem,
# controller.pem/.key (also its client certificate towards etcd) and secrets.key (the
# same on every controller), an agent ca.pem and node-NAME.pem/.key (copy only those to
# each machine; never secrets.key to an agent).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
require_root "deploy/install.sh"

role="${1:-}"; shift || true
store="" listen="" advertise="" controller="" name="" address="" pki="" cluster=""
while [ $# -gt 0 ]; do
    case "$1" in
        --store) store="${2:?}"; shift 2 ;;
        --listen) listen="${2:?}"; shift 2 ;;
        --advertise) advertise="${2:?}"; shift 2 ;;
        --controller) controller="${2:?}"; shift 2 ;;
        --name) name="${2:?}"; shift 2 ;;
        --address) address="${2:?}"; shift 2 ;;
        --pki) pki="${2:?}"; shift 2 ;;
        --cluster) cluster="${2:?}"; shift 2 ;;
        *) die "unknown argument $1" ;;
    esac
done
bin="${ORCH_BIN:-$ORCH_ROOT/target/release}"
units="$ORCH_ROOT/deploy/systemd"
mkdir -p /etc/orch/pki /var/lib/orch
chmod 700 /etc/orch/pki

copy_pki() {
    [ -n "$pki" ] || die "--pki DIR is required (orch-controller --tls-dir DIR init makes it)"
    for file in "$@"; do
        [ -f "$pki/$file" ] || die "$pki/$file is missing"
        install -m "$([[ "$file" == *.key ]] && echo 600 || echo 644)" "$pki/$file" "/etc/orch/pki/$file"
    done
}

start() {
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable --now "$1"
        echo "$1 enabled and started (journalctl -u $1)"
    else
        echo "no systemd here: start it by hand with the command in /etc/systemd/system/$1"
    fi
}

case "$role" in
    controller)
        [ -n "$store" ] || die "controller: --store etcd://HOST:PORT[,HOST:PORT...] is required (every etcd member)"
        listen="${listen:-0.0.0.0:7100}"
        advertise="${advertise:-$listen}"
        [[ "$advertise" != 0.0.0.0:* ]] || die "controller: --listen is 0.0.0.0: give --advertise HOST:PORT (where agents and the CLI reach this controller)"
        install -m 755 "$bin/orch-controller" "$bin/orch" /usr/local/bin/
        copy_pki ca.pem controller.pem controller.key
        # The key that seals Secrets: every controller the same, no agent ever.
        if [ -f "$pki/secrets.key" ]; then copy_pki secrets.key; fi
        [ -f "$pki/admin.pem" ] && copy_pki admin.pem admin.key
        printf 'ORCH_STORE=%s\nORCH_LISTEN=%s\nORCH_ADVERTISE=%s\n' "$store" "$listen" "$advertise" >/etc/orch/controller.env
        if [[ "$store" == etcd://* ]]; then
            # etcd speaks mutual TLS (install.sh etcd): the controller's own certificate is its client's.
            printf 'ORCH_ETCD_CA=%s\nORCH_ETCD_CERT=%s\nORCH_ETCD_KEY=%s\n' /etc/orch/pki/ca.pem /etc/orch/pki/controller.pem /etc/orch/pki/controller.key >>/etc/orch/controller.env
        fi
        install -m 644 "$units/orch-controller.service" /etc/systemd/system/
        start orch-controller.service
        ;;
    agent)
        [ -n "$controller" ] && [ -n "$name" ] && [ -n "$address" ] || die "agent: --controller HOST:PORT[,HOST:PORT...] --name NAME --address IP are required"
        install_packages iproute2 nftables conntrack
        # orch-init: the small binary each container's shim runs (the agent works without it, slower);
        # orch-runc: the same runtime behind runc's command line (Docker, containerd).
        install -m 755 "$bin/orch-agent" "$bin/orch-init" "$bin/orch-runc" /usr/local/bin/
        copy_pki ca.pem "node-$name.pem" "node-$name.key"
        printf 'ORCH_CONTROLLER=%s\nORCH_NODE_NAME=%s\nORCH_NODE_ADDRESS=%s\n' "$controller" "$name" "$address" >/etc/orch/agent.env
        install -m 644 "$units/orch-agent.service" /etc/systemd/system/
        start orch-agent.service
        ;;
    etcd)
        [ -n "$name" ] && [ -n "$address" ] || die "etcd: --name NAME --address IP are required"
        install_packages etcd-server
        copy_pki ca.pem "etcd-$name.pem" "etcd-$name.key"
        printf 'ETCD_NAME=%s\nETCD_ADDRESS=%s\nETCD_CLUSTER=%s\n' "$name" "$address" "${cluster:-$name=https://$address:2380}" >/etc/orch/etcd.env
        install -m 644 "$units/orch-etcd.service" /etc/systemd/system/
        start orch-etcd.service
        ;;
    *) die "usage: install.sh controller|agent|etcd [flags] (see the top of this file)" ;;
esac
