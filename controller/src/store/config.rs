//! `--store embedded:PATH | etcd://HOST:PORT[,HOST:PORT…]`.

use std::path::PathBuf;
use std::sync::Arc;

use super::{EmbeddedStore, EtcdStore, RestoreSummary, Snapshot, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Embedded { path: PathBuf },
    Etcd { endpoints: Vec<String> },
}

impl StoreConfig {
    pub fn parse(address: &str) -> Result<StoreConfig, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidAddress { address: address.to_owned(), reason: reason.to_owned() };
        if let Some(path) = address.strip_prefix("embedded:") {
            if path.is_empty() {
                return Err(invalid("embedded: needs a file path, e.g. embedded:/var/lib/orch/controller.redb"));
            }
            return Ok(StoreConfig::Embedded { path: PathBuf::from(path) });
        }
        if let Some(list) = address.strip_prefix("etcd://") {
            let mut endpoints = Vec::new();
            for endpoint in list.split(',') {
                let (host, port) = endpoint.rsplit_once(':').ok_or_else(|| invalid(&format!("endpoint {endpoint:?} must be HOST:PORT")))?;
                if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(invalid(&format!("endpoint {endpoint:?} must be HOST:PORT with a port 1-65535")));
                }
                endpoints.push(format!("http://{endpoint}"));
            }
            return Ok(StoreConfig::Etcd { endpoints });
        }
        Err(invalid("expected embedded:PATH or etcd://HOST:PORT[,HOST:PORT...]"))
    }
}

/// Opens the configured backend. Must run inside a tokio runtime.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Embedded { path } => Arc::new(EmbeddedStore::open(path).await?),
        StoreConfig::Etcd { endpoints } => Arc::new(EtcdStore::connect(endpoints).await?),
    })
}

/// Puts a backup into the configured store (see [`Snapshot`]), which no controller may
/// be using: an embedded file is locked while one runs.
pub async fn restore_store(config: &StoreConfig, snapshot: &Snapshot) -> Result<RestoreSummary, StoreError> {
    match config {
        StoreConfig::Embedded { path } => EmbeddedStore::open(path).await?.restore(snapshot).await,
        StoreConfig::Etcd { endpoints } => EtcdStore::connect(endpoints).await?.restore(snapshot).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let ok = [
            ("embedded:/var/lib/orch/c.redb", StoreConfig::Embedded { path: "/var/lib/orch/c.redb".into() }),
            ("embedded:rel.redb", StoreConfig::Embedded { path: "rel.redb".into() }),
            ("etcd://127.0.0.1:2379", StoreConfig::Etcd { endpoints: vec!["http://127.0.0.1:2379".into()] }),
            ("etcd://a:1,b:2", StoreConfig::Etcd { endpoints: vec!["http://a:1".into(), "http://b:2".into()] }),
        ];
        for (text, want) in ok {
            assert_eq!(StoreConfig::parse(text).ok(), Some(want), "{text}");
        }
        for bad in ["", "embedded:", "etcd://", "etcd://host", "etcd://host:0", "etcd://:2379", "redis://x:1", "/path"] {
            let err = StoreConfig::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
