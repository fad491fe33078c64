#!/usr/bin/env bash
# Builds the demo image orch/demo-web:1.0 as an OCI image layout: busybox httpd (from
# Debian's busybox-static) serving a page that names the container's hostname.
#
#   sudo bash deploy/images/build-demo.sh [--out DIR] [--push HOST:PORT]
#
# --out   where the layout goes (default /var/lib/orch/images/demo-web; the image is
#         then oci:/var/lib/orch/images/demo-web:1.0, as manifests/webapp.yaml uses)
# --push  also copy it to the registry at HOST:PORT as orch/demo-web:1.0 (skopeo;
#         plain HTTP, for a registry on loopback or a trusted network)
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/rootfs.sh"
source "$(dirname "$0")/../lib/oci.sh"

out=/var/lib/orch/images/demo-web
push=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --push) push="${2:?--push needs HOST:PORT}"; shift 2 ;;
        *) die "unknown argument $1 (expected --out DIR or --push HOST:PORT)" ;;
    esac
done
[ -x /bin/busybox ] || { require_root "deploy/images/build-demo.sh"; install_packages busybox-static; }
if [ -n "$push" ] && ! command -v skopeo >/dev/null; then
    require_root "deploy/images/build-demo.sh --push"
    install_packages skopeo
fi

work="$(mktemp -d /tmp/orch-demo-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT
make_busybox_rootfs "$work/rootfs"
mkdir -p "$work/rootfs/www"
echo '<h1>orch demo</h1>' > "$work/rootfs/www/index.html"

page='echo "<h1>Hello from $(hostname)</h1><p>served by busybox httpd in an orch container</p>" > /www/index.html; exec httpd -f -v -p 80 -h /www'
page_json="$(printf '%s' "$page" | sed 's/\\/\\\\/g; s/"/\\"/g')"
config="$(printf '{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh","-c","%s"],"WorkingDir":"/www","ExposedPorts":{"80/tcp":{}},"Labels":{"org.opencontainers.image.title":"orch/demo-web"}}' "$page_json")"
manifest_digest="$(oci_layout "$work/rootfs" "$out" 1.0 "$config" orch/demo-web)"
echo "built orch/demo-web:1.0 as oci:$out:1.0 (manifest $manifest_digest)"

if [ -n "$push" ]; then
    skopeo copy --quiet --dest-tls-verify=false "oci:$out:1.0" "docker://$push/orch/demo-web:1.0"
    echo "pushed $push/orch/demo-web:1.0"
fi
