#!/usr/bin/env bash
# Builds the two images of manifests/stack.yaml from Debian 12's own packages, the way
# images ship: whole root filesystems made by mmdebstrap (device nodes in /dev, named
# users in /etc/passwd), packed as OCI image layouts and pushed to a registry.
#
#   orch/stack-cache:1.0   redis-server, running as USER redis
#   orch/stack-web:1.0     busybox httpd and redis-cli, running as USER www-data: a page
#                          that counts its visits in the cache, reached by service name
#
#   sudo bash deploy/images/build-stack.sh [--push HOST:PORT] [--mirror URL]
#
# --push    the registry (default 127.0.0.1:5000, the one manifests/stack.yaml names and
#           deploy/quickstart.sh runs)
# --mirror  the Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/oci.sh"
require_root "deploy/images/build-stack.sh"

push=127.0.0.1:5000
mirror=http://deb.debian.org/debian
while [ $# -gt 0 ]; do
    case "$1" in
        --push) push="${2:?--push needs HOST:PORT}"; shift 2 ;;
        --mirror) mirror="${2:?--mirror needs a URL}"; shift 2 ;;
        *) die "unknown argument $1 (expected --push HOST:PORT or --mirror URL)" ;;
    esac
done
install_packages mmdebstrap skopeo ca-certificates

work="$(mktemp -d /tmp/orch-stack-images.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# root_of NAME PACKAGES: a Debian 12 root with the essential packages and PACKAGES.
root_of() {
    step "mmdebstrap: $1 from Debian 12 packages ($2)"
    mmdebstrap --quiet --variant=essential --include="$2" bookworm "$work/$1" "$mirror" \
        || die "mmdebstrap could not build the $1 root from $mirror (is the mirror reachable?)"
}

root_of cache redis-server
cache_config='{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"User":"redis","WorkingDir":"/var/lib/redis","Cmd":["redis-server","--bind","0.0.0.0","--protected-mode","no","--save","","--appendonly","no"],"ExposedPorts":{"6379/tcp":{}}}'
oci_layout "$work/cache" "$work/layouts/cache" 1.0 "$cache_config" orch/stack-cache >/dev/null

root_of web busybox,redis-tools
mkdir -p "$work/web/www/cgi-bin"
cat >"$work/web/www/index.html" <<'HTML'
<h1>orch stack</h1><p><a href="/cgi-bin/visits">count a visit</a> (in redis, at the service named cache)</p>
HTML
cat >"$work/web/www/cgi-bin/visits" <<'CGI'
#!/bin/sh
count="$(redis-cli -h cache incr visits 2>&1)"
printf 'Content-Type: text/html\r\n\r\n<h1>Hello from %s</h1><p>visit %s, counted by redis at cache:6379</p>\n' "$(hostname)" "$count"
CGI
chmod 755 "$work/web/www/cgi-bin/visits"
web_config='{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"User":"www-data","WorkingDir":"/www","Cmd":["busybox","httpd","-f","-p","8080","-h","/www"],"ExposedPorts":{"8080/tcp":{}}}'
oci_layout "$work/web" "$work/layouts/web" 1.0 "$web_config" orch/stack-web >/dev/null

for image in cache web; do
    skopeo copy --quiet --dest-tls-verify=false "oci:$work/layouts/$image:1.0" "docker://$push/orch/stack-$image:1.0"
    echo "pushed $push/orch/stack-$image:1.0"
done
