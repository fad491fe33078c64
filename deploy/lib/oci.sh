# oci_layout ROOTFS OUT TAG CONFIG NAME: writes an OCI image layout at OUT (replacing it
# whole) holding ROOTFS as one reproducible gzip layer (sorted names, zero times, owners
# as they are) and CONFIG, the image config's "config" object (Env, Cmd, User, …), for
# the image NAME; prints the manifest digest.
# shellcheck shell=bash
oci_layout() {
    local rootfs="$1" out="$2" tag="$3" config="$4" name="$5" work
    work="$(mktemp -d /tmp/orch-oci.XXXXXX)"
    mkdir -p "$work/layout/blobs/sha256"
    tar --sort=name --mtime=@0 --numeric-owner -C "$rootfs" -cf "$work/layer.tar" .
    local diff_id layer config_blob manifest
    diff_id="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
    gzip -n -9 <"$work/layer.tar" >"$work/layer.tar.gz"
    layer="$(oci_blob "$work" "$work/layer.tar.gz")"
    printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"orch deploy/images (%s)"}]}' \
        "$config" "$diff_id" "$name" >"$work/config.json"
    config_blob="$(oci_blob "$work" "$work/config.json")"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
        "${config_blob% *}" "${config_blob#* }" "${layer% *}" "${layer#* }" >"$work/manifest.json"
    manifest="$(oci_blob "$work" "$work/manifest.json")"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
        "${manifest% *}" "${manifest#* }" "$tag" >"$work/layout/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
    mkdir -p "$(dirname "$out")"
    rm -rf "$out.new"
    cp -r "$work/layout" "$out.new"
    rm -rf "$out"
    mv "$out.new" "$out"
    rm -rf "$work"
    echo "sha256:${manifest% *}"
}

# oci_blob WORK FILE: stores FILE under WORK/layout/blobs/sha256; prints "HEX SIZE".
oci_blob() {
    local digest size
    digest="$(sha256sum "$2" | cut -d' ' -f1)"
    size="$(stat -c %s "$2")"
    cp "$2" "$1/layout/blobs/sha256/$digest"
    echo "$digest $size"
}
