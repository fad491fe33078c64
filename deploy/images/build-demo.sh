#!/usr/bin/env bash
# Builds the demo image orch/demo-web:1.0 as an OCI image layout: busybox httpd (from
# Debian's busybox-static) serving a page that names the container's hostname.
#
#   sudo bash deploy/images/build-demo.sh [--out DIR] [--push HOST:PORT] [--tag TAG] [--ballast MIB]
#
# --out      where the layout goes (default /var/lib/orch/images/demo-web; the image is
#            then oci:/var/lib/orch/images/demo-web:1.0, as manifests/webapp.yaml uses)
# --push     also copy it to the registry at HOST:PORT as orch/demo-web:TAG (skopeo;
#            plain HTTP, for a registry on loopback or a trusted network)
# --tag      the tag (default 1.0)
# --ballast  add /ballast, MIB mebibytes of random bytes (they do not compress): an
#            image that takes a while to pull, for the fault tests (default 0: none)
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/rootfs.sh"
source "$(dirname "$0")/../lib/oci.sh"

out=/var/lib/orch/images/demo-web
push=""
tag=1.0
ballast=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="${2:?--out needs a directory}"; shift 2 ;;
        --push) push="${2:?--push needs HOST:PORT}"; shift 2 ;;
        --tag) tag="${2:?--tag needs a tag}"; shift 2 ;;
        --ballast) ballast="${2:?--ballast needs a size in MiB}"; shift 2 ;;
        *) die "unknown argument $1 (expected --out DIR, --push HOST:PORT, --tag TAG or --ballast MIB)" ;;
    esac
done
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--tag $tag: not a valid tag"
[[ "$ballast" =~ ^(0|[1-9][0-9]{0,3})$ ]] || die "--ballast $ballast: a number of MiB (0-9999)"
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
[ "$ballast" -eq 0 ] || head -c "$((ballast << 20))" /dev/urandom >"$work/rootfs/ballast"

page='echo "<h1>Hello from $(hostname)</h1><p>served by busybox httpd in an orch container</p>" > /www/index.html; exec httpd -f -v -p 80 -h /www'
page_json="$(printf '%s' "$page" | sed 's/\\/\\\\/g; s/"/\\"/g')"
config="$(printf '{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh","-c","%s"],"WorkingDir":"/www","ExposedPorts":{"80/tcp":{}},"Labels":{"org.opencontainers.image.title":"orch/demo-web"}}' "$page_json")"
manifest_digest="$(oci_layout "$work/rootfs" "$out" "$tag" "$config" orch/demo-web)"
echo "built orch/demo-web:$tag as oci:$out:$tag (manifest $manifest_digest)"

if [ -n "$push" ]; then
    skopeo copy --quiet --dest-tls-verify=false "oci:$out:$tag" "docker://$push/orch/demo-web:$tag"
    echo "pushed $push/orch/demo-web:$tag"
fi
