use super::{Expect, LeaseId, Revision};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conflict on {key}: expected {expected}, found {}", found.map_or("no key".to_owned(), |r| format!("revision {r}")))]
    Conflict { key: String, expected: Expect, found: Option<Revision> },

    #[error("cannot watch {prefix} from revision {requested}: compacted, the oldest revision kept is {oldest}")]
    Compacted { prefix: String, requested: Revision, oldest: Revision },

    #[error("fenced: {key} is no longer the one created at revision {create_revision} (this controller does not lead any more); nothing was written")]
    Fenced { key: String, create_revision: Revision },

    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),

    #[error("embedded store {path}: {message}")]
    Embedded { path: String, message: String },

    /// The etcd error is part of the message (not a `source`), so that error chains
    /// print it once.
    #[error("etcd at {endpoints}: {error}")]
    Etcd { endpoints: String, error: etcd_client::Error },

    #[error("etcd at {endpoints}: {message}")]
    EtcdProtocol { endpoints: String, message: String },

    #[error("etcd TLS: {}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    EtcdTls { path: String, message: String },

    #[error("backup {path}: {message}")]
    Snapshot { path: String, message: String },

    #[error("cannot restore into {target}: {reason}")]
    RestoreRefused { target: String, reason: String },

    #[error("invalid store address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },

    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
}

/// Checks a transaction's shape: at most `MAX_TXN_OPS` operations on distinct keys.
pub(super) fn check_txn(ops: &[super::TxnOp]) -> Result<(), StoreError> {
    if ops.len() > super::MAX_TXN_OPS {
        return Err(StoreError::InvalidTxn(format!("{} operations, at most {}", ops.len(), super::MAX_TXN_OPS)));
    }
    let mut keys = std::collections::BTreeSet::new();
    match ops.iter().find(|op| !keys.insert(op.key())) {
        Some(op) => Err(StoreError::InvalidTxn(format!("key {} appears twice", op.key()))),
        None => Ok(()),
    }
}
