//! `--store embedded:PATH | etcd://HOST:PORT[,HOST:PORT…]`, and for etcd the TLS
//! `--etcd-ca/--etcd-cert/--etcd-key` add.

use std::path::PathBuf;
use std::sync::Arc;

use super::{EmbeddedStore, EtcdStore, RestoreSummary, Snapshot, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Embedded { path: PathBuf },
    Etcd { endpoints: Vec<String>, tls: Option<EtcdTls> },
}

/// TLS towards etcd: the CA that signed the members' certificates, and the client's
/// certificate and key when the members ask for one (`--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl EtcdTls {
    /// From the three flags: `--etcd-ca` alone, or with both `--etcd-cert` and `--etcd-key`.
    pub fn from_flags(ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<EtcdTls>, StoreError> {
        let invalid = |reason: &str| StoreError::EtcdTls { path: String::new(), message: reason.to_owned() };
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), None, None) => Ok(Some(EtcdTls { ca, identity: None })),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(EtcdTls { ca, identity: Some((cert, key)) })),
            (None, _, _) => Err(invalid("--etcd-cert and --etcd-key need --etcd-ca (the CA that signed the etcd members' certificates)")),
            _ => Err(invalid("--etcd-cert and --etcd-key go together")),
        }
    }
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
                if orch_api::host_port(endpoint).is_none() {
                    return Err(invalid(&format!("endpoint {endpoint:?} must be HOST:PORT with a port 1-65535")));
                }
                endpoints.push(format!("http://{endpoint}"));
            }
            return Ok(StoreConfig::Etcd { endpoints, tls: None });
        }
        Err(invalid("expected embedded:PATH or etcd://HOST:PORT[,HOST:PORT...]"))
    }

    /// With TLS towards etcd (its endpoints then called over https); an error for an
    /// embedded store.
    pub fn with_etcd_tls(self, tls: Option<EtcdTls>) -> Result<StoreConfig, StoreError> {
        match (self, tls) {
            (config, None) => Ok(config),
            (StoreConfig::Etcd { endpoints, .. }, Some(tls)) => {
                let endpoints = endpoints.iter().map(|e| format!("https://{}", e.split_once("://").map_or(e.as_str(), |(_, rest)| rest))).collect();
                Ok(StoreConfig::Etcd { endpoints, tls: Some(tls) })
            }
            (StoreConfig::Embedded { path }, Some(_)) => Err(StoreError::EtcdTls {
                path: path.display().to_string(),
                message: "--etcd-ca/--etcd-cert/--etcd-key are for an etcd store (--store etcd://...)".into(),
            }),
        }
    }
}

/// Opens the configured backend. Must run inside a tokio runtime.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Embedded { path } => Arc::new(EmbeddedStore::open(path).await?),
        StoreConfig::Etcd { endpoints, tls } => Arc::new(EtcdStore::connect_with(endpoints, tls.as_ref()).await?),
    })
}

/// Puts a backup into the configured store (see [`Snapshot`]), which no controller may
/// be using: an embedded file is locked while one runs.
pub async fn restore_store(config: &StoreConfig, snapshot: &Snapshot) -> Result<RestoreSummary, StoreError> {
    match config {
        StoreConfig::Embedded { path } => EmbeddedStore::open(path).await?.restore(snapshot).await,
        StoreConfig::Etcd { endpoints, tls } => EtcdStore::connect_with(endpoints, tls.as_ref()).await?.restore(snapshot).await,
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
            ("etcd://127.0.0.1:2379", StoreConfig::Etcd { endpoints: vec!["http://127.0.0.1:2379".into()], tls: None }),
            ("etcd://a:1,b:2", StoreConfig::Etcd { endpoints: vec!["http://a:1".into(), "http://b:2".into()], tls: None }),
        ];
        for (text, want) in ok {
            assert_eq!(StoreConfig::parse(text).ok(), Some(want), "{text}");
        }
        for bad in ["", "embedded:", "etcd://", "etcd://host", "etcd://host:0", "etcd://:2379", "redis://x:1", "/path"] {
            let err = StoreConfig::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn etcd_tls_flags() {
        let path = |p: &str| Some(PathBuf::from(p));
        assert_eq!(EtcdTls::from_flags(None, None, None).ok(), Some(None));
        let tls = EtcdTls::from_flags(path("ca.pem"), path("c.pem"), path("c.key")).expect("all three").expect("some");
        assert_eq!(tls.identity, Some(("c.pem".into(), "c.key".into())));
        assert!(EtcdTls::from_flags(None, path("c.pem"), path("c.key")).is_err(), "no CA");
        assert!(EtcdTls::from_flags(path("ca.pem"), path("c.pem"), None).is_err(), "a cert without its key");
        let config = StoreConfig::parse("etcd://a:1,b:2").and_then(|c| c.with_etcd_tls(Some(tls.clone()))).expect("etcd with TLS");
        assert_eq!(config, StoreConfig::Etcd { endpoints: vec!["https://a:1".into(), "https://b:2".into()], tls: Some(tls.clone()) });
        assert!(StoreConfig::parse("embedded:/x").and_then(|c| c.with_etcd_tls(Some(tls))).is_err(), "TLS flags on an embedded store");
    }
}
