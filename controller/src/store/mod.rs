//! The store: one trait, two backends (see ARCHITECTURE.md, "Store").
//!
//! - [`EmbeddedStore`]: a redb file with an in-process watch broadcast and a monotonic
//!   revision (the k3s/kine idea). The default, for a single node.
//! - [`EtcdStore`]: a real etcd server through `etcd-client`, for clusters.
//!
//! Both pass the same conformance suite (`controller/tests/store_conformance.rs`).
//! Every write that depends on a read is a compare-and-swap ([`Expect`]); watches resume
//! from a revision and never skip or repeat an event.

mod cas;
mod config;
mod embedded;
mod error;
mod etcd;
mod prefixed;
mod snapshot;
mod types;

pub use cas::{retry_on_conflict, MaybeConflict, CAS_ATTEMPTS};
pub use config::{open_store, restore_store, EtcdTls, StoreConfig};
pub use embedded::{EmbeddedStore, DEFAULT_LOG_RETENTION};
pub use error::StoreError;
pub use etcd::EtcdStore;
pub use prefixed::PrefixedStore;
pub use snapshot::{marker_key as restore_marker_key, take as take_snapshot, RestoreSummary, Snapshot, FILE_MAGIC as SNAPSHOT_FILE_MAGIC};
pub use types::{Expect, Fence, KeyValue, LeaseId, Listing, Revision, Store, TxnOp, WatchEvent, WatchStream, MAX_TXN_OPS, TXN_BYTES};
