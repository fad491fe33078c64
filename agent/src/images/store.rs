//! The node's content-addressed image store:
//!
//! ```text
//! <root>/blobs/sha256/<hex>     every blob, verified before it is used
//! <root>/layers/sha256/<hex>    each layer unpacked once (overlay layer format)
//! <root>/refs/<hash>.json       reference → manifest, config, layers, run defaults
//! <root>/tmp/                   downloads and unpacks in progress
//! ```
//!
//! Blobs and layers are written under `tmp/` and renamed into place, so a crash never
//! leaves a half-written one under its digest. Work on one digest is serialised
//! in-process, so concurrent pulls of the same image fetch and unpack it once.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::defaults::ImageDefaults;
use super::digest::Digest;
use super::registries::RegistrySettings;
use super::source::{Source, MAX_MANIFEST_BYTES};
use super::unpack::{unpack_layer, LayerLimits};
use super::ImageError;
use orch_api::image_ref::ImageRef;

/// A pulled image, ready to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The reference as pulled (normalised).
    pub reference: String,
    /// The image's identity.
    pub manifest_digest: String,
    pub config_digest: String,
    /// Layer blob digests, bottom first.
    pub layers: Vec<String>,
    pub defaults: ImageDefaults,
    pub pulled_unix_ms: i64,
}

/// What a pull did: how much came over the wire and how much was already here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullReport {
    pub blobs_fetched: usize,
    pub blobs_cached: usize,
    /// Cached blobs that failed verification and were fetched again.
    pub blobs_refetched: usize,
    pub layers_unpacked: usize,
    pub layers_cached: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub images_removed: Vec<String>,
    pub blobs_removed: usize,
    pub layers_removed: usize,
}

pub struct ImageStore {
    root: PathBuf,
    /// Credentials and plain-HTTP registries, read for every pull from a registry.
    registries: RegistrySettings,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What one layer may unpack to.
    layer_limits: LayerLimits,
}

/// Removes what pulls of agents no longer running left in the store's `tmp/` (a blob
/// half fetched, a layer half unpacked when an agent died): each scratch name carries
/// the process id of its agent, and a live agent's are left alone.
fn sweep_scratch(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name.split('-').nth(1).and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match removed {
            Ok(()) => tracing::info!(path = %path.display(), "removed what an interrupted pull left"),
            Err(error) => tracing::warn!(path = %path.display(), %error, "cannot remove what an interrupted pull left"),
        }
    }
}

impl ImageStore {
    pub fn open(root: &Path, registries: RegistrySettings) -> Result<ImageStore, ImageError> {
        for dir in ["blobs/sha256", "layers/sha256", "refs", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(ImageError::io("cannot create", &path))?;
        }
        sweep_scratch(&root.join("tmp"));
        Ok(ImageStore { root: root.to_owned(), registries, locks: Mutex::new(HashMap::new()), layer_limits: LayerLimits::default() })
    }

    /// The store with other limits on what one layer may unpack to.
    pub fn with_layer_limits(mut self, limits: LayerLimits) -> ImageStore {
        self.layer_limits = limits;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// The unpacked directory of a layer, by its blob digest.
    pub fn layer_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(digest.hex())
    }

    fn ref_path(&self, reference: &str) -> PathBuf {
        self.root.join("refs").join(format!("{}.json", Digest::of(reference.as_bytes()).hex()))
    }

    fn scratch(&self, what: &str) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root.join("tmp").join(format!("{what}-{}-{n}", std::process::id()))
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(key.to_owned()).or_default())
    }

    /// The image already in the store under `reference`.
    pub fn get(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let normalized = ImageRef::parse(reference)?.to_string();
        let path = self.ref_path(&normalized);
        let text = std::fs::read(&path).map_err(|_| ImageError::NotFound(normalized.clone()))?;
        let mut record: ImageRecord = serde_json::from_slice(&text)
            .map_err(|e| ImageError::Config { reference: normalized, message: format!("corrupt record {}: {e}", path.display()) })?;
        if record.defaults.stop_signal.is_none() {
            // A record from before the field: the config blob, kept, still says.
            record.defaults.stop_signal = self.config_stop_signal(&record.config_digest);
        }
        Ok(record)
    }

    /// The `StopSignal` of the image config stored as blob `digest`, if it names one.
    fn config_stop_signal(&self, digest: &str) -> Option<String> {
        let digest = Digest::parse(digest).ok()?;
        let config = oci_spec::image::ImageConfiguration::from_file(self.blob_path(&digest)).ok()?;
        ImageDefaults::from_config(&config).stop_signal
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        let Ok(entries) = std::fs::read_dir(self.root.join("refs")) else { return Vec::new() };
        let mut records: Vec<ImageRecord> =
            // `*.json` only: a record being replaced has a temporary file beside it.
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|path| path.extension().is_some_and(|e| e == "json"))
                .filter_map(|path| std::fs::read(path).ok())
                .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
                .collect();
        records.sort_by(|a, b| a.reference.cmp(&b.reference));
        records
    }

    /// Overlay lower directories for an image, top layer first.
    pub fn lower_dirs(&self, record: &ImageRecord) -> Result<Vec<PathBuf>, ImageError> {
        record.layers.iter().rev().map(|d| Digest::parse(d).map(|d| self.layer_path(&d))).collect()
    }

    /// Pulls `reference` (or finds it complete in the store) and returns its record.
    pub async fn pull(&self, reference: &str) -> Result<(ImageRecord, PullReport), ImageError> {
        let parsed = ImageRef::parse(reference)?;
        let normalized = parsed.to_string();
        let mut report = PullReport::default();
        let (source, scratch_layout) = match &parsed {
            ImageRef::OciArchive { path, tag } => {
                let dir = self.scratch("archive");
                std::fs::create_dir_all(&dir).map_err(ImageError::io("cannot create", &dir))?;
                let archive = std::fs::File::open(path).map_err(ImageError::io("cannot open the archive", path))?;
                let unpacked = tokio::task::spawn_blocking({
                    let dir = dir.clone();
                    let name = normalized.clone();
                    let limits = self.layer_limits;
                    move || unpack_layer(archive, &dir, &name, limits)
                })
                .await
                .map_err(|e| ImageError::Layout { source_name: normalized.clone(), message: format!("unpack task failed: {e}") })?;
                if let Err(e) = unpacked {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
                let source = Source::Layout { dir: dir.clone(), name: normalized.clone(), tag: tag.clone() };
                (source, Some(dir))
            }
            ImageRef::Registry { registry, .. } => return self.pull_through_endpoints(&parsed, registry, &normalized).await,
            ImageRef::OciLayout { path, tag } => (Source::Layout { dir: PathBuf::from(path), name: normalized.clone(), tag: tag.clone() }, None),
        };
        let result = self.pull_from(&source, &normalized, &mut report).await;
        if let Some(dir) = scratch_layout {
            let _ = std::fs::remove_dir_all(dir);
        }
        result.map(|record| (record, report))
    }

    /// A registry image from the first of the registry's endpoints (its mirrors, then
    /// itself) that serves it whole. One endpoint's failure is returned as it is;
    /// several failures are listed together.
    async fn pull_through_endpoints(&self, parsed: &ImageRef, registry: &str, normalized: &str) -> Result<(ImageRecord, PullReport), ImageError> {
        let config = self.registries.load()?;
        let endpoints = config.endpoints(registry);
        let mut failures = Vec::new();
        for endpoint in &endpoints {
            let mut report = PullReport::default();
            let source = Source::for_registry(parsed, endpoint, &config, self.registries.path.as_deref())?;
            match self.pull_from(&source, normalized, &mut report).await {
                Ok(record) => return Ok((record, report)),
                Err(error) if endpoints.len() == 1 => return Err(error),
                Err(error) => {
                    tracing::info!(%registry, %endpoint, %error, "pull through this endpoint failed; trying the next");
                    failures.push(format!("{endpoint}: {error}"));
                }
            }
        }
        Err(ImageError::Registry { registry: registry.to_owned(), message: format!("no endpoint served {normalized}: {}", failures.join("; ")) })
    }

    async fn pull_from(&self, source: &Source, reference: &str, report: &mut PullReport) -> Result<ImageRecord, ImageError> {
        let config_error = |message: String| ImageError::Config { reference: reference.to_owned(), message };
        let (root_bytes, root_digest) = source.root_manifest().await?;
        let (manifest_bytes, manifest_digest) = match pick_platform(&root_bytes).map_err(config_error)? {
            None => (root_bytes, root_digest),
            Some(child) => (source.manifest(&child).await?, child),
        };
        self.store_bytes(&manifest_digest, &manifest_bytes)?;
        let manifest = oci_spec::image::ImageManifest::from_reader(manifest_bytes.as_slice())
            .map_err(|e| config_error(format!("manifest {manifest_digest} is not an image manifest: {e}")))?;

        let config_digest = Digest::parse(manifest.config().digest().as_ref())?;
        // Sizes the manifest declares are checked before anything is fetched (and the
        // fetched blob must match them).
        if manifest.config().size() > MAX_MANIFEST_BYTES as u64 {
            return Err(config_error(format!("config {config_digest} of {} bytes: the limit is {} MiB", manifest.config().size(), MAX_MANIFEST_BYTES >> 20)));
        }
        if let Some(layer) = manifest.layers().iter().find(|layer| layer.size() > self.layer_limits.max_bytes) {
            return Err(ImageError::Layer {
                digest: layer.digest().to_string(),
                message: format!("a blob of {} bytes, over the node's --max-layer-size ({} bytes)", layer.size(), self.layer_limits.max_bytes),
            });
        }
        let config_path = self.ensure_blob(source, &config_digest, Some(manifest.config().size()), report).await?;
        let config = oci_spec::image::ImageConfiguration::from_file(&config_path)
            .map_err(|e| config_error(format!("config {config_digest} is not an image config: {e}")))?;

        let mut layers = Vec::with_capacity(manifest.layers().len());
        for descriptor in manifest.layers() {
            let digest = Digest::parse(descriptor.digest().as_ref())?;
            self.ensure_layer(source, &digest, descriptor.size(), report).await?;
            layers.push(digest.to_string());
        }
        let record = ImageRecord {
            reference: reference.to_owned(),
            manifest_digest: manifest_digest.to_string(),
            config_digest: config_digest.to_string(),
            layers,
            defaults: ImageDefaults::from_config(&config),
            pulled_unix_ms: crate::runtime::now_unix_ms(),
        };
        let path = self.ref_path(reference);
        let json = serde_json::to_vec_pretty(&record).map_err(|e| config_error(e.to_string()))?;
        crate::state_dir::write_atomically(&path, &json).map_err(ImageError::io("cannot write", &path))?;
        Ok(record)
    }

    fn store_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
        let path = self.blob_path(digest);
        if path.exists() {
            return Ok(());
        }
        // Written in tmp/ (where prune never looks), flushed, then renamed in.
        let tmp = self.scratch("blob");
        std::fs::write(&tmp, bytes).map_err(ImageError::io("cannot write", &tmp))?;
        crate::state_dir::sync_then_rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ImageError::io("cannot write", &path)(e)
        })
    }

    /// The verified blob in the store, fetched if missing; a stored blob that fails
    /// verification is deleted and fetched again, never used.
    async fn ensure_blob(&self, source: &Source, digest: &Digest, size: Option<u64>, report: &mut PullReport) -> Result<PathBuf, ImageError> {
        let lock = self.lock_for(&format!("blob:{digest}"));
        let _held = lock.lock().await;
        let path = self.blob_path(digest);
        if path.exists() {
            match verify_off_the_workers(digest, &path, size).await {
                Ok(()) => {
                    report.blobs_cached += 1;
                    return Ok(path);
                }
                Err(e) => {
                    tracing::warn!(%digest, error = %e, "stored blob is corrupt; fetching it again");
                    let _ = std::fs::remove_file(&path);
                    report.blobs_refetched += 1;
                }
            }
        }
        let tmp = self.scratch("blob");
        let fetched = match source.fetch_blob(digest, &tmp).await {
            Ok(()) => verify_off_the_workers(digest, &tmp, size).await,
            Err(e) => Err(e),
        };
        if let Err(e) = fetched {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        crate::state_dir::sync_then_rename(&tmp, &path).map_err(ImageError::io("cannot store", &path))?;
        report.blobs_fetched += 1;
        Ok(path)
    }

    /// The layer unpacked in the store, unpacked once from its verified blob.
    async fn ensure_layer(&self, source: &Source, digest: &Digest, size: u64, report: &mut PullReport) -> Result<(), ImageError> {
        let lock = self.lock_for(&format!("layer:{digest}"));
        let _held = lock.lock().await;
        let dest = self.layer_path(digest);
        if dest.exists() {
            report.layers_cached += 1;
            return Ok(());
        }
        let blob = self.ensure_blob(source, digest, Some(size), report).await?;
        let tmp = self.scratch("layer");
        std::fs::create_dir_all(&tmp).map_err(ImageError::io("cannot create", &tmp))?;
        let name = digest.to_string();
        let limits = self.layer_limits;
        let unpacked = tokio::task::spawn_blocking({
            let tmp = tmp.clone();
            move || -> Result<(), ImageError> {
                let file = std::fs::File::open(&blob).map_err(ImageError::io("cannot open", &blob))?;
                unpack_layer(file, &tmp, &name, limits)?;
                // Every file of the layer on disk before its directory is renamed in:
                // a crash never leaves a layer that looks whole with empty files.
                crate::state_dir::sync_filesystem(&tmp).map_err(ImageError::io("cannot flush", &tmp))
            }
        })
        .await
        .map_err(|e| ImageError::Layer { digest: digest.to_string(), message: format!("unpack task failed: {e}") })
        .and_then(|r| r);
        if let Err(e) = unpacked {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        crate::state_dir::sync_then_rename(&tmp, &dest).map_err(ImageError::io("cannot store", &dest))?;
        report.layers_unpacked += 1;
        Ok(())
    }

    /// Removes every image whose manifest digest is not in `in_use`, then every blob
    /// and unpacked layer no remaining image needs. An image a container uses is
    /// never removed.
    pub fn prune(&self, in_use: &BTreeSet<String>) -> Result<PruneReport, ImageError> {
        let mut report = PruneReport::default();
        let mut live_blobs = BTreeSet::new();
        let mut live_layers = BTreeSet::new();
        for record in self.list() {
            if in_use.contains(&record.manifest_digest) {
                live_blobs.insert(record.manifest_digest.clone());
                live_blobs.insert(record.config_digest.clone());
                for layer in &record.layers {
                    live_blobs.insert(layer.clone());
                    live_layers.insert(layer.clone());
                }
            } else {
                let path = self.ref_path(&record.reference);
                std::fs::remove_file(&path).map_err(ImageError::io("cannot remove", &path))?;
                report.images_removed.push(record.reference);
            }
        }
        for (dir, live, counter) in [("blobs/sha256", &live_blobs, &mut report.blobs_removed), ("layers/sha256", &live_layers, &mut report.layers_removed)] {
            let Ok(entries) = std::fs::read_dir(self.root.join(dir)) else { continue };
            for entry in entries.flatten() {
                let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
                if live.contains(&digest) {
                    continue;
                }
                let path = entry.path();
                let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                removed.map_err(ImageError::io("cannot remove", &path))?;
                *counter += 1;
            }
        }
        Ok(report)
    }
}

/// Hashes a stored blob on tokio's blocking pool: a layer of hundreds of megabytes must
/// not hold an async worker (heartbeats and the node API run there) for seconds.
async fn verify_off_the_workers(digest: &Digest, path: &Path, size: Option<u64>) -> Result<(), ImageError> {
    let (digest, path) = (digest.clone(), path.to_owned());
    let name = digest.to_string();
    tokio::task::spawn_blocking(move || digest.verify_file(&path, size))
        .await
        .map_err(|e| ImageError::Layer { digest: name, message: format!("verification task failed: {e}") })?
}

/// For an index (or Docker manifest list), the digest of this machine's platform's
/// manifest; `None` for an image manifest.
fn pick_platform(bytes: &[u8]) -> Result<Option<Digest>, String> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    let is_index = probe.manifests.is_some() || probe.media_type.as_deref().is_some_and(|m| m.contains("index") || m.contains("manifest.list"));
    if !is_index {
        return Ok(None);
    }
    let index = oci_spec::image::ImageIndex::from_reader(bytes).map_err(|e| format!("bad image index: {e}"))?;
    let want_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let matches =
        |d: &&oci_spec::image::Descriptor| d.platform().as_ref().is_none_or(|p| p.os().to_string() == "linux" && p.architecture().to_string() == want_arch);
    let chosen = index.manifests().iter().find(matches).ok_or_else(|| format!("the index has no linux/{want_arch} image"))?;
    Digest::parse(chosen.digest().as_ref()).map(Some).map_err(|e| e.to_string())
}
