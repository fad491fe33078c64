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

# One reproducible layer: sorted names, zero times and owners.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer.tar" .
diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
gzip -n -9 < "$work/layer.tar" > "$work/layer.tar.gz"

blob() { # blob FILE → prints "DIGEST SIZE" and stores the file under blobs/sha256
    local digest size
    digest="$(sha256sum "$1" | cut -d' ' -f1)"
    size="$(stat -c %s "$1")"
    cp "$1" "$work/layout/blobs/sha256/$digest"
    echo "$digest $size"
}
mkdir -p "$work/layout/blobs/sha256"
read -r layer_digest layer_size < <(blob "$work/layer.tar.gz")

page='echo "<h1>Hello from $(hostname)</h1><p>served by busybox httpd in an orch container</p>" > /www/index.html; exec httpd -f -v -p 80 -h /www'
page_json="$(printf '%s' "$page" | sed 's/\\/\\\\/g; s/"/\\"/g')"
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh","-c","$page_json"],"WorkingDir":"/www","ExposedPorts":{"80/tcp":{}},"Labels":{"org.opencontainers.image.title":"orch/demo-web"}},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created_by":"deploy/images/build-demo.sh"}]}
JSON
read -r config_digest config_size < <(blob "$work/config.json")

cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$layer_size}]}
JSON
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")

cat > "$work/layout/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,"annotations":{"org.opencontainers.image.ref.name":"1.0"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"

mkdir -p "$(dirname "$out")"
rm -rf "$out.new"
cp -r "$work/layout" "$out.new"
rm -rf "$out"
mv "$out.new" "$out"
echo "built orch/demo-web:1.0 as oci:$out:1.0 (manifest sha256:$manifest_digest)"

if [ -n "$push" ]; then
    skopeo copy --quiet --dest-tls-verify=false "oci:$out:1.0" "docker://$push/orch/demo-web:1.0"
    echo "pushed $push/orch/demo-web:1.0"
fi
