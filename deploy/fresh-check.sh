#!/usr/bin/env bash
# The fresh-machine check: proves that the README's first command works on a clean
# Debian 12, with nothing but what the scripts install. It builds a minimal Debian 12
# root with mmdebstrap, gives it this machine's Rust toolchain (rustup's toolchains bound
# read-only, a writable copy of CARGO_HOME's binaries), copies this checkout in (tracked
# and untracked-but-not-ignored files, as they are in the work tree), and in a mount
# namespace of its own whose root it becomes (pivot_root, not chroot: the kernel gives a
# chrooted process no user namespaces), with /proc, /sys (cgroups included), /dev and a
# fresh /run, runs
# `bash deploy/quickstart.sh` until `orch up` reports the webapp ready and its node port
# answers. Then it stops orch up (Ctrl-C), unmounts everything under the root and only
# then deletes it.
#
#   sudo bash deploy/fresh-check.sh [--tests] [--keep] [--timeout MINUTES]
#
# --tests then also runs the second command, `bash deploy/test.sh`, in the same root
# (another 20–30 minutes): proof that the test command installs all it needs too.
#
# Run it whenever Cargo.toml, Cargo.lock or anything under deploy/ changes; CI runs it
# when ORCH_FRESH_CHECK=1. It takes 15–30 minutes on 2 cores (a clean release build), and
# uses the default bridge (orch0) and ports (5000, 7100, 30080), so it refuses to start while
# another `orch up` or something else holds them.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
require_root "deploy/fresh-check.sh"
require_rust

keep=0
tests=0
timeout_minutes=60
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=1; shift ;;
        --tests) tests=1; shift ;;
        --timeout) timeout_minutes="${2:?--timeout needs minutes}"; shift 2 ;;
        *) die "unknown argument $1 (expected --tests, --keep or --timeout MINUTES)" ;;
    esac
done

# The new root shares this machine's kernel: the bridge, the ports and the cgroups are the
# host's. Refuse rather than fight over them.
ip link show orch0 >/dev/null 2>&1 && die "the bridge orch0 exists: another orch up (or a crashed one) uses it; stop it (or: orch-agent teardown) first"
for port in 5000 7100 30080; do
    if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
        die "127.0.0.1:$port is in use (another orch up, or a registry on 5000?); stop it first"
    fi
done
pgrep -f 'orch up' >/dev/null && die "an orch up is running (pgrep -f 'orch up'); stop it first"

install_packages mmdebstrap iproute2 curl

rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
cargo_bin="$(dirname "$(command -v cargo)")"
[ -d "$rustup_home/toolchains" ] || die "no rustup toolchains under $rustup_home: fresh-check gives the chroot the host's rustup toolchain"

root="$(mktemp -d /var/tmp/orch-fresh.XXXXXX)"
log="$root.log"
orch_pid=""

# Every mount point at or below $root, deepest first.
mounts_below_root() {
    awk -v root="$root" '$5 == root || index($5, root "/") == 1 {print $5}' /proc/self/mountinfo | sort -r
}

cleanup() {
    local status=$?
    if [ -n "$orch_pid" ] && kill -0 "$orch_pid" 2>/dev/null; then
        step "stopping orch up (pid $orch_pid)"
        kill -INT "$orch_pid" 2>/dev/null || true
        for _ in $(seq 1 600); do kill -0 "$orch_pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$orch_pid" 2>/dev/null; then
            kill -KILL "$orch_pid" 2>/dev/null || true
            sleep 1
            chroot "$root" /root/orch/target/release/orch-agent teardown --state-dir /var/lib/orch/agent >/dev/null 2>&1 || true
        fi
    fi
    if [ "$keep" = 1 ]; then
        echo "fresh-check: kept $root (mounted; unmount with: umount -R $root)" >&2
        exit "$status"
    fi
    local target
    for _ in 1 2 3; do
        for target in $(mounts_below_root); do
            umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
        done
        [ -z "$(mounts_below_root)" ] && break
        sleep 1
    done
    if [ -n "$(mounts_below_root)" ]; then
        echo "fresh-check: still mounted under $root, NOT deleting it:" >&2
        mounts_below_root >&2
        exit 1
    fi
    rm -rf --one-file-system "$root"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$SECONDS
step "building a minimal Debian 12 root in $root (mmdebstrap --variant=minbase)"
mmdebstrap --quiet --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$log" 2>&1 \
    || { tail -20 "$log" >&2; die "mmdebstrap failed (log: $log)"; }
chmod 755 "$root"   # mktemp made it 0700; / is 0755 (user-namespaced containers need to traverse it)
cp /etc/resolv.conf "$root/etc/resolv.conf"
# Certificate authorities this machine's administrator added (a proxy's, say) are part
# of its provisioning, not of orch's install steps: the new root trusts them too, once
# the scripts install ca-certificates.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
fi
echo "orch-fresh" > "$root/etc/hostname"
# As in any chroot: packages do not start their daemons (etcd-server would start one on
# 127.0.0.1:2379); the scripts start what they need themselves.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"

# The root is a mount point of its own, as / is on a real machine; what is bound in
# does not propagate back to the host when it is unmounted.
mount --bind "$root" "$root"
mount --make-private "$root"
for fs in proc sys dev; do
    mount --rbind "/$fs" "$root/$fs"
    mount --make-rslave "$root/$fs"
done
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mkdir -p "$root/opt/rustup" "$root/opt/cargo/bin"
mount --bind "$rustup_home" "$root/opt/rustup"
mount -o remount,bind,ro "$root/opt/rustup"
cp -a "$cargo_bin/." "$root/opt/cargo/bin/"

step "copying this checkout to /root/orch in the new root"
mkdir -p "$root/root/orch"
git -C "$ORCH_ROOT" ls-files -z --cached --others --exclude-standard \
    | tar -C "$ORCH_ROOT" --null --ignore-failed-read -T - -cf - 2>/dev/null \
    | tar -C "$root/root/orch" -xf -

# in_root [NAME=VALUE…] SCRIPT: becomes `bash SCRIPT` in the checkout in the new root
# (exec: call it in a subshell or in the background, whose PID is then the script's),
# with a clean environment (plus the NAME=VALUEs) and the toolchain on PATH. The root
# is entered as a real machine's is: a private mount namespace, pivot_root into the new
# root, the old one detached.
in_root() {
    local script="${*: -1}"
    exec unshare --mount --propagation private -- /bin/sh -ec '
        cd "$1"; mkdir -p .old-root; pivot_root . .old-root; cd /; umount -l /.old-root; rmdir /.old-root
        shift; exec "$@"' sh "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
        PATH=/opt/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo "${@:1:$#-1}" \
        bash -c "cd /root/orch && exec bash $script"
}

step "running the README's first command in the new root: bash deploy/quickstart.sh (log: $log)"
in_root deploy/quickstart.sh >>"$log" 2>&1 </dev/null &
orch_pid=$!   # quickstart execs orch up: this PID becomes it (its registry stops after it)

deadline=$((SECONDS + timeout_minutes * 60))
until grep -q 'service/webapp answers on' "$log"; do
    kill -0 "$orch_pid" 2>/dev/null || { tail -40 "$log" >&2; die "quickstart.sh stopped before orch up reported the webapp ready (log: $log)"; }
    [ $SECONDS -lt $deadline ] || { tail -40 "$log" >&2; die "webapp not ready within $timeout_minutes minutes (log: $log)"; }
    sleep 2
done
ready_after=$((SECONDS - started))
page="$(curl -fsS --max-time 5 http://127.0.0.1:30080/)" || { tail -20 "$log" >&2; die "the node port 127.0.0.1:30080 did not answer"; }
case "$page" in
    *"Hello from webapp-"*) ;;
    *) die "the node port answered something else: $page" ;;
esac
step "webapp ready ${ready_after}s after the start and answering on 127.0.0.1:30080: $page"

step "stopping orch up (Ctrl-C)"
interrupt_and_wait "$orch_pid" 120 "orch up (log: $log)"
orch_pid=""
grep -q 'orch: stopped' "$log" || die "orch up did not report a clean stop (log: $log)"
ip link show orch0 >/dev/null 2>&1 && die "orch up left the bridge orch0 behind"
for _ in $(seq 1 50); do ss -Hltn "sport = :5000" 2>/dev/null | grep -q . || break; sleep 0.2; done
ss -Hltn "sport = :5000" 2>/dev/null | grep -q . && die "the quickstart's registry still listens on 127.0.0.1:5000 after orch up stopped"
if [ "$tests" = 1 ]; then
    step "running the README's second command in the new root: bash deploy/test.sh (log: $log)"
    (in_root CI=true deploy/test.sh) >>"$log" 2>&1 </dev/null \
        || { grep -E '^test .* FAILED|^error|panicked' "$log" | tail -20 >&2; die "deploy/test.sh failed in the new root (log: $log)"; }
    step "deploy/test.sh passed in the new root: $(grep -E '^test result' "$log" | awk '{p+=$4; f+=$6} END {print p " passed, " f " failed"}')"
fi
rm -f "$log"
echo "fresh-check: passed in $((SECONDS - started)) s (a clean Debian 12 root: install, build, orch up, webapp answering, clean stop)"
