#!/usr/bin/env bash
# Builds orch/debian-system: a Debian 12 root whose /sbin/init is sysvinit, for system
# containers (`spec.mode: system`, manifests/system.yaml), as an OCI image layout (and
# pushes it to a registry with --push). `--init systemd` builds orch/debian-systemd
# instead: the same services, under systemd (best-effort: see the README).
#
#   sudo bash deploy/images/build-system.sh [--init sysvinit|systemd] [--out DIR] [--push HOST:PORT] [--tag TAG]
#
# What it holds: Debian's minbase with sysvinit-core, cron, procps and busybox; an init
# script `orch-web` (runlevels 2-5) serving a page from busybox httpd on port 80; an
# inittab with no gettys (a container has no terminals to watch) and
# `pf::powerwait:/sbin/init 0`: SIGPWR, what orch sends to stop a system container,
# halts it through runlevel 0 (its services stopped in order). Built with mmdebstrap from
# Debian's archive; an image already built from this same script is kept (DIR.recipe).
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/oci.sh"

init=sysvinit
out=""
push=""
tag=12
while [ $# -gt 0 ]; do
    case "$1" in
        --init) init="${2:?--init needs sysvinit or systemd}"; shift 2 ;;
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --push) push="${2:?--push needs HOST:PORT}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a tag}"; shift 2 ;;
        *) die "unknown argument $1 (expected --init sysvinit|systemd, --out DIR, --push HOST:PORT or --tag TAG)" ;;
    esac
done
case "$init" in
    # No StopSignal in either image: orch picks SIGPWR for sysvinit and SIGRTMIN+3 when
    # /sbin/init leads to systemd (the system container test proves both choices).
    sysvinit) name=debian-system; packages=sysvinit-core ;;
    systemd) name=debian-systemd; packages=systemd-sysv ;;
    *) die "--init $init: expected sysvinit or systemd" ;;
esac
out="${out:-/var/lib/orch/images/$name}"
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--tag $tag: not a valid tag"
require_root "deploy/images/build-system.sh"

recipe="$(sha256sum "$0" | cut -d' ' -f1) $init $tag"
if [ -f "$out/index.json" ] && [ "$(cat "$out.recipe" 2>/dev/null)" = "$recipe" ]; then
    echo "orch/$name:$tag is up to date in oci:$out:$tag"
else
    command -v mmdebstrap >/dev/null || install_packages mmdebstrap
    work="$(mktemp -d /tmp/orch-system-image.XXXXXX)"
    trap 'rm -rf --one-file-system "$work"' EXIT
    cat >"$work/orch-web" <<'EOF'
#!/bin/sh
### BEGIN INIT INFO
# Provides:          orch-web
# Required-Start:    $remote_fs
# Required-Stop:     $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: a page from busybox httpd on port 80
### END INIT INFO
pidfile=/run/orch-web.pid
case "$1" in
    start)
        mkdir -p /var/www
        echo "<h1>$(hostname): a Debian system container, booted by $(readlink -f /sbin/init)</h1>" >/var/www/index.html
        start-stop-daemon --start --quiet --background --make-pidfile --pidfile "$pidfile" --exec /bin/busybox -- httpd -f -p 80 -h /var/www
        ;;
    stop)
        start-stop-daemon --stop --quiet --pidfile "$pidfile" --remove-pidfile --retry 5
        # What the root volume keeps of a clean stop (runlevel 0 ran this).
        echo "orch-web stopped in runlevel $(runlevel | cut -d' ' -f2)" >/var/log/orch-web.stopped
        ;;
    restart) "$0" stop; "$0" start ;;
    status) start-stop-daemon --status --pidfile "$pidfile" ;;
    *) echo "usage: $0 start|stop|restart|status" >&2; exit 3 ;;
esac
EOF
    cat >"$work/inittab" <<'EOF'
# orch/debian-system: sysvinit in a container (no gettys: a container has no terminals)
id:2:initdefault:
si::sysinit:/etc/init.d/rcS
l0:0:wait:/etc/init.d/rc 0
l1:1:wait:/etc/init.d/rc 1
l2:2:wait:/etc/init.d/rc 2
l3:3:wait:/etc/init.d/rc 3
l4:4:wait:/etc/init.d/rc 4
l5:5:wait:/etc/init.d/rc 5
l6:6:wait:/etc/init.d/rc 6
# SIGPWR (orch's stop signal for a system container): halt through runlevel 0.
pf::powerwait:/sbin/init 0
ca::ctrlaltdel:/sbin/init 6
EOF
    # systemd runs the same init script (its sysv generator); the inittab is sysvinit's.
    hooks=(--customize-hook="install -m 0755 '$work/orch-web' \"\$1/etc/init.d/orch-web\"")
    if [ "$init" = sysvinit ]; then
        hooks+=(--customize-hook="install -m 0644 '$work/inittab' \"\$1/etc/inittab\"")
    fi
    step "mmdebstrap: Debian 12 minbase with $packages, cron, procps, busybox"
    mmdebstrap --quiet --variant=minbase --include="$packages,cron,procps,busybox" "${hooks[@]}" \
        --customize-hook='chroot "$1" update-rc.d orch-web defaults' \
        --customize-hook='rm -f "$1/etc/hostname"; : >"$1/etc/machine-id"' \
        bookworm "$work/rootfs"
    config='{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/sbin/init"],"ExposedPorts":{"80/tcp":{}},"Labels":{"org.opencontainers.image.title":"orch/'"$name"'"}}'
    manifest_digest="$(oci_layout "$work/rootfs" "$out" "$tag" "$config" "orch/$name")"
    echo "$recipe" >"$out.recipe"
    echo "built orch/$name:$tag as oci:$out:$tag (manifest $manifest_digest)"
fi

if [ -n "$push" ]; then
    command -v skopeo >/dev/null || install_packages skopeo
    skopeo copy --quiet --dest-tls-verify=false "oci:$out:$tag" "docker://$push/orch/$name:$tag"
    echo "pushed $push/orch/$name:$tag"
fi
