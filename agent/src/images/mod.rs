//! Images: references, a content-addressed store with verified blobs and layers
//! unpacked once, pulls from OCI layouts, archives and registries, and the run
//! defaults an image carries (its `USER` by name from its own accounts).

mod defaults;
mod digest;
mod error;
mod layered;
mod registries;
mod source;
mod store;
mod unpack;
mod users;

pub use defaults::{resolve_process, ImageDefaults, ResolvedProcess};
pub use digest::Digest;
pub use error::ImageError;
pub use layered::resolve as resolve_in_layers;
pub use registries::{Credentials, RegistryConfig, RegistryConfigError, RegistrySettings, DEFAULT_REGISTRY_CONFIG};
pub use source::is_plain_http;
pub use store::{ImageRecord, ImageStore, PruneReport, PullReport};
pub use unpack::{unpack_layer, LayerLimits, UnpackStats};
pub use users::{resolve_user, ImageAccounts};
