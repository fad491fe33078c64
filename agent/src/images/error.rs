use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Reference(#[from] orch_api::image_ref::ImageRefError),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("blob {digest} failed verification: {detail}")]
    DigestMismatch { digest: String, detail: String },
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    InvalidDigest(String),
    #[error("{source_name}: {message}")]
    Layout { source_name: String, message: String },
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("layer {digest}: entry {entry:?}: {reason}")]
    UnsafeEntry { digest: String, entry: String, reason: String },
    #[error("layer {digest}: {message}")]
    Layer { digest: String, message: String },
    #[error("image {reference}: {message}")]
    Config { reference: String, message: String },
    #[error("image {0} is not in the local store; pull it first")]
    NotFound(String),
    #[error("{0}")]
    RegistryConfig(#[from] super::registries::RegistryConfigError),
}

impl ImageError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { what, path, source }
    }
}
