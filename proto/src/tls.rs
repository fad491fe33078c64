//! Transport security between machines: a cluster CA and certificates made by
//! `orch-controller init` (rcgen), and the tonic/rustls configurations built from them.
//! Everything is mutual: the controller only accepts agents and clients whose
//! certificate the cluster CA signed, and agents only talk to a controller it signed.
//!
//! Layout of a PKI directory: `ca.pem` + `ca.key`, `controller.pem/.key` (server and
//! client: it calls the agents' node API), `node-<name>.pem/.key` (one per node; server
//! for its node API, client towards the controller), `admin.pem/.key` (the CLI).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("certificate {what}: {message}")]
    Generate { what: String, message: String },
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        message: format!(
            "{e} (orch-controller init --dir {} makes the cluster's certificates)",
            path.parent().map_or_else(String::new, |p| p.display().to_string())
        ),
    })
}

fn write(path: &Path, content: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| TlsError::File { path: path.display().to_string(), message: e.to_string() };
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(if secret { 0o600 } else { 0o644 }).open(path).map_err(fail)?;
    file.write_all(content.as_bytes()).map_err(fail)
}

fn generate(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Generate { what: what.to_owned(), message: e.to_string() }
}

/// The files of one identity in a PKI directory.
pub fn identity_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")))
}

/// A leaf certificate signed by the CA, for `names` (DNS names or IP addresses).
fn leaf(dir: &Path, issuer: &Issuer<'_, KeyPair>, file: &str, common_name: &str, names: &[String], server: bool) -> Result<(), TlsError> {
    let mut params = CertificateParams::new(names.to_vec()).map_err(generate(file))?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    params.extended_key_usages =
        if server { vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth] } else { vec![ExtendedKeyUsagePurpose::ClientAuth] };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let key = KeyPair::generate().map_err(generate(file))?;
    let cert = params.signed_by(&key, issuer).map_err(generate(file))?;
    let (cert_path, key_path) = identity_paths(dir, file);
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)
}

/// Creates the cluster CA (unless `dir` has one: then it is reused) and certificates
/// for the controller (`controller_names`: the names and addresses agents and the CLI
/// dial), each node (`(name, address)`) and the CLI (`admin`). Returns the files written.
pub fn init(dir: &Path, controller_names: &[String], nodes: &[(String, String)]) -> Result<Vec<PathBuf>, TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| TlsError::File { path: dir.display().to_string(), message: e.to_string() })?;
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let issuer = if ca_cert.exists() {
        let key = KeyPair::from_pem(&read(&ca_key)?).map_err(generate("ca"))?;
        Issuer::from_ca_cert_pem(&read(&ca_cert)?, key).map_err(generate("ca"))?
    } else {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate("ca"))?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, "orch cluster CA");
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(generate("ca"))?;
        let cert = params.self_signed(&key).map_err(generate("ca"))?;
        write(&ca_cert, &cert.pem(), false)?;
        write(&ca_key, &key.serialize_pem(), true)?;
        Issuer::new(params, key)
    };
    let mut written = vec![ca_cert];
    let mut names: Vec<String> = controller_names.to_vec();
    for default in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == default) {
            names.push(default.to_owned());
        }
    }
    leaf(dir, &issuer, "controller", "orch-controller", &names, true)?;
    written.push(identity_paths(dir, "controller").0);
    for (name, address) in nodes {
        if address.parse::<IpAddr>().is_err() {
            return Err(TlsError::Generate { what: format!("node-{name}"), message: format!("{address:?} is not an IP address") });
        }
        leaf(dir, &issuer, &format!("node-{name}"), name, &[name.clone(), address.clone()], true)?;
        written.push(identity_paths(dir, &format!("node-{name}")).0);
    }
    leaf(dir, &issuer, "admin", "admin", &["admin".to_owned()], false)?;
    written.push(identity_paths(dir, "admin").0);
    Ok(written)
}

fn identity(dir: &Path, name: &str) -> Result<Identity, TlsError> {
    let (cert, key) = identity_paths(dir, name);
    Ok(Identity::from_pem(read(&cert)?, read(&key)?))
}

/// Serving as `name` (controller, node-X), accepting only clients the CA signed.
pub fn server_config(dir: &Path, name: &str) -> Result<ServerTlsConfig, TlsError> {
    Ok(ServerTlsConfig::new().identity(identity(dir, name)?).client_ca_root(Certificate::from_pem(read(&dir.join("ca.pem"))?)))
}

/// Calling as `name`, trusting only servers the CA signed.
pub fn client_config(dir: &Path, name: &str) -> Result<ClientTlsConfig, TlsError> {
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&dir.join("ca.pem"))?)).identity(identity(dir, name)?))
}

/// The common name the CLI's certificate carries: the only one the Api accepts.
pub const ADMIN: &str = "admin";
/// The common name of the controller's certificate: the only caller of an agent's node API.
pub const CONTROLLER: &str = "orch-controller";

/// The subject common name of a DER certificate (a peer's, as TLS verified it).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(name)
}

/// Who called, by certificate: `None` for plain text (loopback only), else the common
/// name of the verified client certificate (empty when it has none).
pub fn peer_name<T>(request: &tonic::Request<T>) -> Option<String> {
    let certificates = request.peer_certs()?;
    Some(certificates.first().and_then(|c| common_name(c)).unwrap_or_default())
}

/// An interceptor admitting plain-text callers (loopback) and TLS callers whose
/// certificate is one of `allowed`.
pub fn require_peer(request: tonic::Request<()>, allowed: &[&str]) -> Result<tonic::Request<()>, tonic::Status> {
    match peer_name(&request) {
        None => Ok(request),
        Some(name) if allowed.contains(&name.as_str()) => Ok(request),
        Some(name) => Err(tonic::Status::permission_denied(format!("certificate {name:?} may not call this service (allowed: {})", allowed.join(", ")))),
    }
}

/// A client configuration from explicit files (the CLI's config: ca, cert, key).
pub fn client_config_from(ca: &Path, cert: &Path, key: &Path) -> Result<ClientTlsConfig, TlsError> {
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)).identity(Identity::from_pem(read(cert)?, read(key)?)))
}
