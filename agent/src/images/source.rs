//! Where image content comes from: an OCI image layout directory, a layout packed as a
//! tar (`oci-archive:`), or a registry speaking the OCI distribution API (through
//! `oci-client`). Sources only fetch; the store verifies every byte.

use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use orch_api::image_ref::ImageRef;

use super::digest::Digest;
use super::registries::RegistryConfig;
use super::ImageError;

/// The annotation naming a manifest's tag in an OCI layout's index.json.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The largest manifest, index or image config a pull accepts.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

pub enum Source {
    Layout {
        dir: PathBuf,
        name: String,
        tag: Option<String>,
    },
    Registry {
        client: Box<oci_client::Client>,
        reference: oci_client::Reference,
        registry: String,
        auth: RegistryAuth,
        /// The registry config the settings came from (named in errors).
        config_path: Option<PathBuf>,
    },
}

/// Registries reached over plain HTTP: loopback always, others when trusted.
pub fn is_plain_http(registry: &str, trusted: &[String]) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host == "[::1]" || host.starts_with("127.") || trusted.iter().any(|t| t == registry)
}

impl Source {
    /// The source for a registry reference, reached at `endpoint` (a mirror's, or the
    /// reference's own registry) with the node's registry settings, read from
    /// `config_path`. Layouts are [`Source::Layout`]; archives are unpacked to one first.
    pub fn for_registry(reference: &ImageRef, endpoint: &str, config: &RegistryConfig, config_path: Option<&Path>) -> Result<Source, ImageError> {
        match reference {
            ImageRef::OciLayout { .. } | ImageRef::OciArchive { .. } => {
                Err(ImageError::Layout { source_name: reference.to_string(), message: "not a registry reference".into() })
            }
            ImageRef::Registry { repository, tag, digest, .. } => {
                let registry = &endpoint.to_owned();
                let protocol =
                    if is_plain_http(registry, &config.insecure) { ClientProtocol::HttpsExcept(vec![registry.clone()]) } else { ClientProtocol::Https };
                // TLS to registries is rustls with the ring provider (the process-wide
                // default; installing it again is a no-op).
                let _ = rustls::crypto::ring::default_provider().install_default();
                let client_config = ClientConfig {
                    protocol,
                    connect_timeout: Some(std::time::Duration::from_secs(10)),
                    read_timeout: Some(std::time::Duration::from_secs(60)),
                    ..ClientConfig::default()
                };
                let reference = match (tag, digest) {
                    (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(registry.clone(), repository.clone(), tag.clone(), digest.clone()),
                    (None, Some(digest)) => oci_client::Reference::with_digest(registry.clone(), repository.clone(), digest.clone()),
                    (tag, None) => oci_client::Reference::with_tag(registry.clone(), repository.clone(), tag.clone().unwrap_or_else(|| "latest".to_owned())),
                };
                let auth = match config.credentials(registry) {
                    Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
                    None => RegistryAuth::Anonymous,
                };
                let config_path = config_path.map(Path::to_owned);
                Ok(Source::Registry { client: Box::new(oci_client::Client::new(client_config)), reference, registry: registry.clone(), auth, config_path })
            }
        }
    }

    fn layout_error(name: &str, message: impl Into<String>) -> ImageError {
        ImageError::Layout { source_name: name.to_owned(), message: message.into() }
    }

    fn registry_error(&self, error: oci_client::errors::OciDistributionError) -> ImageError {
        use oci_client::errors::OciDistributionError as E;
        let (registry, anonymous, config) = match self {
            Source::Registry { registry, auth, config_path, .. } => (
                registry.clone(),
                matches!(auth, RegistryAuth::Anonymous),
                config_path.as_ref().map_or_else(|| "the registry config".to_owned(), |p| p.display().to_string()),
            ),
            Source::Layout { name, .. } => (name.clone(), true, String::new()),
        };
        match error {
            E::DigestError(e) => ImageError::DigestMismatch { digest: String::from("(from the registry)"), detail: e.to_string() },
            E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => ImageError::Registry {
                message: if anonymous {
                    format!("requires credentials, and {config} has none for it (auths.{registry:?}; {error})")
                } else {
                    format!("refused the credentials for {registry} in {config} ({error})")
                },
                registry,
            },
            other => ImageError::Registry { registry, message: other.to_string() },
        }
    }

    /// Refuses a manifest or index over [`MAX_MANIFEST_BYTES`] (containerd's limit): one
    /// that large is no image anyone built, and it would be parsed and kept.
    fn bounded(&self, bytes: Vec<u8>) -> Result<Vec<u8>, ImageError> {
        if bytes.len() <= MAX_MANIFEST_BYTES {
            return Ok(bytes);
        }
        let message = format!("a manifest of {} bytes: the limit is {} MiB", bytes.len(), MAX_MANIFEST_BYTES >> 20);
        Err(match self {
            Source::Layout { name, .. } => Self::layout_error(name, message),
            Source::Registry { reference, .. } => ImageError::Registry { registry: reference.registry().to_owned(), message },
        })
    }

    /// The top-level manifest (or index) the reference names, with its digest.
    pub async fn root_manifest(&self) -> Result<(Vec<u8>, Digest), ImageError> {
        match self {
            Source::Layout { dir, name, tag } => {
                let index_path = dir.join("index.json");
                let index = oci_spec::image::ImageIndex::from_file(&index_path)
                    .map_err(|e| Self::layout_error(name, format!("cannot read {}: {e}", index_path.display())))?;
                let tags = |d: &oci_spec::image::Descriptor| d.annotations().as_ref().and_then(|a| a.get(REF_NAME)).cloned();
                let chosen = match tag {
                    Some(tag) => index.manifests().iter().find(|d| tags(d).as_deref() == Some(tag.as_str())),
                    None if index.manifests().len() == 1 => index.manifests().first(),
                    None => None,
                };
                let Some(descriptor) = chosen else {
                    let known: Vec<String> = index.manifests().iter().filter_map(tags).collect();
                    return Err(Self::layout_error(
                        name,
                        match tag {
                            Some(tag) => format!("no manifest tagged {tag:?} in index.json (tags: {known:?})"),
                            None => format!("index.json lists {} manifests: name one with :TAG (tags: {known:?})", index.manifests().len()),
                        },
                    ));
                };
                let digest = Digest::parse(descriptor.digest().as_ref())?;
                let bytes = self.bounded(self.layout_blob(dir, name, &digest)?)?;
                digest.verify(&bytes)?;
                Ok((bytes, digest))
            }
            Source::Registry { client, reference, auth, .. } => {
                let accepted = [OCI_IMAGE_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, IMAGE_MANIFEST_LIST_MEDIA_TYPE];
                let (bytes, _) = client.pull_manifest_raw(reference, auth, &accepted).await.map_err(|e| self.registry_error(e))?;
                let bytes = self.bounded(bytes.to_vec())?;
                let digest = Digest::of(&bytes);
                if let Some(pinned) = reference.digest() {
                    let pinned = Digest::parse(pinned)?;
                    pinned.verify(&bytes)?;
                }
                Ok((bytes, digest))
            }
        }
    }

    /// A manifest by digest (a platform's entry of an index), verified.
    pub async fn manifest(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let bytes = match self {
            Source::Layout { dir, name, .. } => self.layout_blob(dir, name, digest)?,
            Source::Registry { client, reference, auth, .. } => {
                let accepted = [OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE];
                let pinned = reference.clone_with_digest(digest.to_string());
                client.pull_manifest_raw(&pinned, auth, &accepted).await.map_err(|e| self.registry_error(e))?.0.to_vec()
            }
        };
        let bytes = self.bounded(bytes)?;
        digest.verify(&bytes)?;
        Ok(bytes)
    }

    fn layout_blob(&self, dir: &Path, name: &str, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = dir.join("blobs/sha256").join(digest.hex());
        // Its size is known before it is read: one too large is refused unread.
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.len() > MAX_MANIFEST_BYTES as u64 {
                return Err(Self::layout_error(
                    name,
                    format!("blob {digest}: a manifest of {} bytes: the limit is {} MiB", meta.len(), MAX_MANIFEST_BYTES >> 20),
                ));
            }
        }
        std::fs::read(&path).map_err(|e| Self::layout_error(name, format!("blob {digest}: cannot read {}: {e}", path.display())))
    }

    /// Writes the blob to `dest` (unverified: the caller verifies).
    pub async fn fetch_blob(&self, digest: &Digest, dest: &Path) -> Result<(), ImageError> {
        match self {
            Source::Layout { dir, name, .. } => {
                let path = dir.join("blobs/sha256").join(digest.hex());
                // tokio's copy runs on the blocking pool: a large layer holds no worker.
                tokio::fs::copy(&path, dest).await.map_err(|e| Self::layout_error(name, format!("blob {digest}: cannot copy {}: {e}", path.display())))?;
                Ok(())
            }
            Source::Registry { client, reference, .. } => {
                let file = tokio::fs::File::create(dest).await.map_err(ImageError::io("cannot create", dest))?;
                let digest_text = digest.to_string();
                client.pull_blob(reference, digest_text.as_str(), file).await.map_err(|e| match self.registry_error(e) {
                    ImageError::DigestMismatch { detail, .. } => ImageError::DigestMismatch { digest: digest_text.clone(), detail },
                    other => other,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_trusted() {
        let trusted = vec!["10.0.0.5:5000".to_owned()];
        for (registry, plain) in [
            ("127.0.0.1:5000", true),
            ("localhost:5000", true),
            ("localhost", true),
            ("10.0.0.5:5000", true),
            ("10.0.0.5:5001", false),
            ("registry.example:443", false),
            ("docker.io", false),
        ] {
            assert_eq!(is_plain_http(registry, &trusted), plain, "{registry}");
        }
    }
}
