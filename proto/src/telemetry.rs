//! The daemons' metrics and health endpoints, on their own listener
//! (`--metrics-listen`): `/metrics` in Prometheus' text format, `/healthz` (the process
//! serves), `/readyz` (what the daemon's readiness check says: 200 with why, or 503
//! with why not). Plain HTTP on a loopback address only; on any other address the
//! listener speaks TLS and takes only clients with a certificate the cluster's CA
//! signed (the lab's Prometheus scrapes with one) — metrics carry no secrets, but a
//! cluster's names and addresses are nobody else's business.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The default listeners: the controller's and the agent's (`orch up` serves both).
pub const CONTROLLER_METRICS: &str = "127.0.0.1:7102";
pub const AGENT_METRICS: &str = "127.0.0.1:7103";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--metrics-listen {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("--metrics-listen {address} is not a loopback address, so it serves over TLS, which needs {path}: {message}")]
    Tls { address: SocketAddr, path: String, message: String },
    #[error("--metrics-listen {0:?}: an address and port (127.0.0.1:7102), or `none`")]
    Address(String),
}

/// What `/readyz` answers: `Ok(why ready)` or `Err(why not)`.
pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// What the endpoints serve.
pub struct Endpoints {
    pub registry: Registry,
    /// Run before each scrape: gauges computed from the daemon's current state.
    pub refresh: Option<Box<dyn Fn() + Send + Sync>>,
    pub ready: ReadyCheck,
}

impl Endpoints {
    /// The registry in Prometheus' text format, refreshed first. One scrape at a time
    /// (a refresh clears and rebuilds gauges: two at once would count twice).
    pub fn metrics_text(&self) -> String {
        static SCRAPE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = SCRAPE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(refresh) = &self.refresh {
            refresh();
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// `--metrics-listen`: an address, or `none` (no listener).
pub fn parse_listen(flag: &str) -> Result<Option<SocketAddr>, TelemetryError> {
    if flag.trim() == "none" {
        return Ok(None);
    }
    flag.trim().parse().map(Some).map_err(|_| TelemetryError::Address(flag.to_owned()))
}

/// The TLS a non-loopback metrics listener speaks: this daemon's certificate (`name`
/// in the PKI directory `dir`), and clients the cluster's CA signed only.
pub fn server_tls(dir: &Path, name: &str, address: SocketAddr) -> Result<Arc<rustls::ServerConfig>, TelemetryError> {
    let fail = |path: &Path, message: String| TelemetryError::Tls { address, path: path.display().to_string(), message };
    let (cert, key) = crate::tls::identity_paths(dir, name);
    let ca = dir.join("ca.pem");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&cert).and_then(|certs| certs.collect::<Result<_, _>>()).map_err(|e| fail(&cert, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| fail(&key, e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(&ca).map_err(|e| fail(&ca, e.to_string()))? {
        roots.add(certificate.map_err(|e| fail(&ca, e.to_string()))?).map_err(|e| fail(&ca, e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider)).build().map_err(|e| fail(&ca, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&cert, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| fail(&cert, e.to_string()))?;
    Ok(Arc::new(config))
}

/// A bound metrics listener, not serving yet: daemons bind it before they start, so a
/// taken port stops them before they change anything.
pub struct MetricsListener {
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    pub address: SocketAddr,
}

/// Binds `address`; `tls` is required off loopback.
pub async fn bind(address: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Result<MetricsListener, TelemetryError> {
    if !address.ip().is_loopback() && tls.is_none() {
        return Err(TelemetryError::Tls { address, path: "a PKI directory".into(), message: "none given".into() });
    }
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|source| TelemetryError::Listen { address, source })?;
    let bound = listener.local_addr().map_err(|source| TelemetryError::Listen { address, source })?;
    Ok(MetricsListener { listener, tls, address: bound })
}

/// Binds `address` and serves the endpoints until the task is aborted; returns the
/// bound address (port 0 picks one) and the task.
pub async fn serve(
    address: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    endpoints: Arc<Endpoints>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), TelemetryError> {
    let listener = bind(address, tls).await?;
    Ok((listener.address, listener.serve(endpoints)))
}

impl MetricsListener {
    /// Serves the endpoints until the task is aborted.
    pub fn serve(self, endpoints: Arc<Endpoints>) -> tokio::task::JoinHandle<()> {
        let MetricsListener { listener, tls, .. } = self;
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                // A scrape is one response: nothing to gain from Nagle's algorithm.
                let _ = stream.set_nodelay(true);
                let (endpoints, acceptor) = (Arc::clone(&endpoints), acceptor.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| answer(Arc::clone(&endpoints), request));
                    let http = hyper::server::conn::http1::Builder::new();
                    let served = match acceptor {
                        // A handshake that does not finish in time is dropped.
                        Some(acceptor) => match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await,
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "metrics: TLS handshake refused");
                                return;
                            }
                            Err(_) => return,
                        },
                        None => http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await,
                    };
                    if let Err(error) = served {
                        tracing::debug!(%error, "metrics: connection ended");
                    }
                });
            }
        })
    }
}

async fn answer(endpoints: Arc<Endpoints>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
        response
    };
    let plain = "text/plain; charset=utf-8";
    Ok(match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => {
            // Encoding walks every metric: off the async workers.
            let body = tokio::task::spawn_blocking(move || endpoints.metrics_text()).await.unwrap_or_default();
            text(StatusCode::OK, body, "text/plain; version=0.0.4; charset=utf-8")
        }
        (&hyper::Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into(), plain),
        (&hyper::Method::GET, "/readyz") => match (endpoints.ready)().await {
            Ok(why) => text(StatusCode::OK, format!("ready: {why}\n"), plain),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"), plain),
        },
        (&hyper::Method::GET, _) => text(StatusCode::NOT_FOUND, "/metrics, /healthz, /readyz\n".into(), plain),
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into(), plain),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_flags() {
        assert_eq!(parse_listen("none").expect("none"), None);
        assert_eq!(parse_listen("127.0.0.1:7102").expect("address"), Some(SocketAddr::from(([127, 0, 0, 1], 7102))));
        assert!(parse_listen("localhost").is_err_and(|e| e.to_string().contains("--metrics-listen \"localhost\"")));
    }

    #[tokio::test]
    async fn off_loopback_plain_text_is_refused() {
        let endpoints = Arc::new(Endpoints { registry: Registry::default(), refresh: None, ready: Arc::new(|| Box::pin(async { Ok(String::new()) })) });
        let refused = serve(SocketAddr::from(([0, 0, 0, 0], 0)), None, endpoints).await.map(|_| ());
        assert!(refused.is_err_and(|e| e.to_string().contains("serves over TLS")));
    }
}
