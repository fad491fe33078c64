//! The manifest model (`apiVersion: orch/v1`, `kind: Service`), its parsing and its
//! validation. `orch validate`, `orch apply` and the controller's Apply all go through
//! [`load_services`], so a manifest is judged the same everywhere.

mod bounded;
mod configs;
pub mod fields;
mod load;
pub mod model;
pub mod names;
pub mod quantity;
mod validate;
mod volumes;

pub use bounded::{MAX_EXPANDED_BYTES, MAX_EXPANDED_NODES, MAX_MANIFEST_BYTES};
pub use configs::{check_config_key, config_refs, kind_name, object_name, validate_config, ConfigContent, MAX_CONFIG_BYTES};
pub use load::{
    check_unique_configs, check_unique_names, check_unique_node_ports, load_manifests, load_services, load_sources, ConfigDocument, ManifestError, Manifests,
    ServiceDocument,
};
pub use model::{ServiceManifest, API_VERSION};
pub use validate::{
    log_policy, probe_defaults, validate_service, FieldError, ProbeDefaults, DEFAULT_BACKOFF_INITIAL_MILLIS, DEFAULT_BACKOFF_MAX_SECONDS,
    DEFAULT_BACKOFF_RESET_SECONDS, DEFAULT_GRACE_SECONDS, DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_MAX_FILES, DEFAULT_UPDATE_PERCENT, LOG_MAX_BYTES_RANGE,
    LOG_MAX_FILES_RANGE, MAX_REPLICAS, NODE_PORT_RANGE,
};
pub use volumes::{has_local_volumes, paths_overlap, KERNEL_HOST_PATHS, RESERVED_HOST_PATHS};
