//! Builds OCI image layouts for tests: layers from entry lists (whiteouts, raw unsafe
//! paths included), config, manifest, index — and pushes them with skopeo.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

pub enum Entry {
    Dir(&'static str),
    File(&'static str, &'static [u8]),
    Symlink(&'static str, &'static str),
    HardLink(&'static str, &'static str),
    CharDevice(&'static str),
    BlockDevice(&'static str),
    Fifo(&'static str),
    /// A regular file whose header path is written byte for byte, unchecked.
    RawPath(&'static str, &'static [u8]),
    /// A regular file whose header declares `declared` bytes and a PAX `size` record
    /// the real length (the record wins).
    PaxSized(&'static str, u64, &'static [u8]),
    /// An empty file preceded by a PAX record of about this many bytes.
    PaxPadded(&'static str, usize),
}

/// One PAX record, `LEN key=value\n`, LEN counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() + body != len {
        len += 1;
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    assert_eq!(record.len(), len);
    record
}

fn append_pax(builder: &mut tar::Builder<impl Write>, records: &[u8]) {
    let mut h = header(tar::EntryType::XHeader, records.len() as u64, 0o644);
    h.set_path("PaxHeaders/x").expect("pax path");
    h.set_cksum();
    builder.append(&h, records).expect("pax header");
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// A gzip-compressed layer tar of `entries`.
pub fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for entry in entries {
        match entry {
            Entry::Dir(path) => {
                let mut h = header(tar::EntryType::Directory, 0, 0o755);
                builder.append_data(&mut h, path, std::io::empty()).expect("dir");
            }
            Entry::File(path, data) => {
                let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
                builder.append_data(&mut h, path, *data).expect("file");
            }
            Entry::Symlink(path, target) => {
                let mut h = header(tar::EntryType::Symlink, 0, 0o777);
                builder.append_link(&mut h, path, target).expect("symlink");
            }
            Entry::HardLink(path, target) => {
                let mut h = header(tar::EntryType::Link, 0, 0o644);
                let name = target.as_bytes();
                h.as_old_mut().linkname[..name.len()].copy_from_slice(name);
                let path_bytes = path.as_bytes();
                h.as_old_mut().name[..path_bytes.len()].copy_from_slice(path_bytes);
                h.set_cksum();
                builder.append(&h, std::io::empty()).expect("hard link");
            }
            Entry::CharDevice(path) => {
                let mut h = header(tar::EntryType::Char, 0, 0o644);
                h.set_device_major(1).expect("major");
                h.set_device_minor(3).expect("minor");
                builder.append_data(&mut h, path, std::io::empty()).expect("char device");
            }
            Entry::BlockDevice(path) => {
                let mut h = header(tar::EntryType::Block, 0, 0o660);
                h.set_device_major(8).expect("major");
                h.set_device_minor(0).expect("minor");
                builder.append_data(&mut h, path, std::io::empty()).expect("block device");
            }
            Entry::Fifo(path) => {
                let mut h = header(tar::EntryType::Fifo, 0, 0o644);
                builder.append_data(&mut h, path, std::io::empty()).expect("fifo");
            }
            Entry::RawPath(path, data) => {
                let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
                let bytes = path.as_bytes();
                h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
                h.set_cksum();
                builder.append(&h, *data).expect("raw entry");
            }
            Entry::PaxSized(path, declared, data) => {
                append_pax(&mut builder, &pax_record("size", data.len().to_string().as_bytes()));
                let mut h = header(tar::EntryType::Regular, *declared, 0o644);
                h.set_path(path).expect("path");
                h.set_cksum();
                builder.append(&h, *data).expect("pax-sized file");
            }
            Entry::PaxPadded(path, bytes) => {
                append_pax(&mut builder, &pax_record("comment", &vec![b'x'; *bytes]));
                let mut h = header(tar::EntryType::Regular, 0, 0o644);
                builder.append_data(&mut h, path, std::io::empty()).expect("file");
            }
        }
    }
    builder.into_inner().expect("tar").finish().expect("gzip")
}

/// The same layer without compression.
pub fn uncompressed(gzipped_layer: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    std::io::copy(&mut flate2::read::GzDecoder::new(gzipped_layer), &mut raw).expect("gunzip");
    raw
}

/// A layer with busybox and its applets, so containers from the image can run.
pub fn busybox_layer() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    super::busybox_rootfs(dir.path());
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir.path()).expect("append rootfs");
    builder.into_inner().expect("tar").finish().expect("gzip")
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let digest = sha256(bytes);
    let path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    std::fs::write(path, bytes).expect("write blob");
    (digest, bytes.len())
}

/// Writes an OCI image layout at `dir` with `layers` (bottom first) and `cmd`,
/// tagged `tag`. Returns the manifest digest.
pub fn write_layout(dir: &Path, tag: &str, layers: &[Vec<u8>], cmd: &[&str]) -> String {
    write_layout_as(dir, tag, layers, cmd, None)
}

/// [`write_layout`] with the image's `USER` set to `user`.
pub fn write_layout_as(dir: &Path, tag: &str, layers: &[Vec<u8>], cmd: &[&str], user: Option<&str>) -> String {
    write_layout_for(dir, tag, layers, cmd, user, "amd64")
}

/// An OCI index tagged `tag` in the layout at `dir`, with one linux image per
/// `(architecture, layers)`, in that order. Returns the index's digest and each image's
/// manifest digest.
pub fn write_multi_platform_layout(dir: &Path, tag: &str, images: &[(&str, Vec<Vec<u8>>)], cmd: &[&str]) -> (String, Vec<String>) {
    let mut entries = Vec::new();
    let mut digests = Vec::new();
    for (architecture, layers) in images {
        let digest = write_layout_for(dir, &format!("{tag}-{architecture}"), layers, cmd, None, architecture);
        let size = std::fs::metadata(dir.join("blobs/sha256").join(&digest["sha256:".len()..])).expect("manifest blob").len();
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
            "platform": {"architecture": architecture, "os": "linux"}
        }));
        digests.push(digest);
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    let (index_digest, index_size) = put_blob(dir, index.to_string().as_bytes());
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest, "size": index_size,
        "annotations": {"org.opencontainers.image.ref.name": tag}
    }]});
    std::fs::write(dir.join("index.json"), top.to_string()).expect("index");
    (index_digest, digests)
}

/// A layer blob already in a layout: its descriptor fields and its diff id.
struct StoredLayer {
    digest: String,
    size: u64,
    media_type: &'static str,
    diff_id: String,
}

fn store_layer(dir: &Path, layer: &[u8]) -> StoredLayer {
    let (digest, size) = put_blob(dir, layer);
    if !layer.starts_with(&[0x1f, 0x8b]) {
        return StoredLayer { diff_id: digest.clone(), digest, size: size as u64, media_type: "application/vnd.oci.image.layer.v1.tar" };
    }
    let mut raw = Vec::new();
    std::io::copy(&mut flate2::read::GzDecoder::new(layer), &mut raw).expect("gunzip");
    StoredLayer { digest, size: size as u64, media_type: "application/vnd.oci.image.layer.v1.tar+gzip", diff_id: sha256(&raw) }
}

fn write_layout_for(dir: &Path, tag: &str, layers: &[Vec<u8>], cmd: &[&str], user: Option<&str>, architecture: &str) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dirs");
    let stored: Vec<StoredLayer> = layers.iter().map(|layer| store_layer(dir, layer)).collect();
    finish_layout(dir, tag, &stored, cmd, user, architecture)
}

/// A layout whose image is `base` (bottom first) and on top an uncompressed layer
/// holding one file of `large_bytes`, streamed to disk (never held in memory).
pub fn write_layout_with_large_layer(dir: &Path, tag: &str, base: &[Vec<u8>], large_bytes: u64, cmd: &[&str]) -> String {
    use std::io::Read;
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dirs");
    let mut stored: Vec<StoredLayer> = base.iter().map(|layer| store_layer(dir, layer)).collect();
    let scratch = dir.join("large-layer.tar");
    {
        let file = std::io::BufWriter::new(std::fs::File::create(&scratch).expect("create the large layer"));
        let mut builder = tar::Builder::new(file);
        let mut file_header = header(tar::EntryType::Regular, large_bytes, 0o644);
        builder.append_data(&mut file_header, "large.bin", std::io::repeat(0x5a).take(large_bytes)).expect("write the large file");
        builder.into_inner().expect("finish the tar").flush().expect("flush");
    }
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut std::fs::File::open(&scratch).expect("open the large layer"), &mut hasher).expect("hash the large layer");
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    std::fs::rename(&scratch, dir.join("blobs/sha256").join(&digest["sha256:".len()..])).expect("store the large layer");
    stored.push(StoredLayer { diff_id: digest.clone(), digest, size, media_type: "application/vnd.oci.image.layer.v1.tar" });
    finish_layout(dir, tag, &stored, cmd, None, "amd64")
}

fn finish_layout(dir: &Path, tag: &str, layers: &[StoredLayer], cmd: &[&str], user: Option<&str>, architecture: &str) -> String {
    let layer_descriptors: Vec<_> = layers.iter().map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect();
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let config = serde_json::json!({
        "architecture": architecture, "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin", "FROM_IMAGE=yes"], "WorkingDir": "/", "User": user.unwrap_or_default()},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let (config_digest, config_size) = put_blob(dir, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layer_descriptors
    });
    let (manifest_digest, manifest_size) = put_blob(dir, manifest.to_string().as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest_size,
        "annotations": {"org.opencontainers.image.ref.name": tag}
    }]});
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    manifest_digest
}

/// Packs a layout directory as an `oci-archive:` tar.
pub fn archive_layout(layout: &Path, archive: &Path) {
    let file = std::fs::File::create(archive).expect("create archive");
    let mut builder = tar::Builder::new(file);
    builder.append_dir_all(".", layout).expect("append layout");
    builder.into_inner().expect("finish").flush().expect("flush");
}

/// The registry `deploy/test.sh` started on loopback.
pub const REGISTRY_ENV: &str = "ORCH_TEST_REGISTRY";
pub const REGISTRY_DIR_ENV: &str = "ORCH_TEST_REGISTRY_DIR";

pub fn registry() -> (String, PathBuf) {
    let address = std::env::var(REGISTRY_ENV).unwrap_or_else(|_| {
        panic!(
            "{REGISTRY_ENV} is not set: these tests pull from a real registry. Run `bash deploy/test.sh`, which \
             installs docker-registry and starts it on loopback (and sets {REGISTRY_ENV} and {REGISTRY_DIR_ENV})"
        )
    });
    let dir = std::env::var(REGISTRY_DIR_ENV).unwrap_or_else(|_| panic!("{REGISTRY_DIR_ENV} is not set (see deploy/test.sh)"));
    (address, PathBuf::from(dir))
}

/// The registry `deploy/test.sh` started on loopback behind htpasswd, and its
/// `USER:PASSWORD`.
pub fn auth_registry() -> (String, String) {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run `bash deploy/test.sh`, which starts a registry that requires a password"))
    };
    (var("ORCH_TEST_AUTH_REGISTRY"), var("ORCH_TEST_AUTH_REGISTRY_CREDENTIALS"))
}

/// `skopeo copy oci:LAYOUT:TAG docker://REGISTRY/REPO:TAG` over plain HTTP.
pub fn push(layout: &Path, tag: &str, registry: &str, repository: &str) {
    push_as(layout, tag, registry, repository, &[]);
}

/// [`push`] with more skopeo flags (`--dest-creds U:P`, `--format v2s2`, `--all`).
pub fn push_as(layout: &Path, tag: &str, registry: &str, repository: &str, flags: &[&str]) {
    let status = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .args(flags)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{registry}/{repository}:{tag}"))
        .status()
        .expect("skopeo (deploy/test.sh installs it)");
    assert!(status.success(), "skopeo push to {registry}/{repository}:{tag} failed");
}

/// Where the registry keeps a blob's bytes (distribution's filesystem driver layout).
pub fn registry_blob_path(storage: &Path, digest: &str) -> PathBuf {
    let hex = &digest["sha256:".len()..];
    storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
}
