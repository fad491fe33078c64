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
    /// A credential this user may not read: the PKI is root's (and the `orch` group's).
    #[error("cannot read {path}: only root and members of the `{group}` group may use orch's credentials")]
    PermissionDenied { path: String, group: &'static str },
    #[error("certificate {what}: {message}")]
    Generate { what: String, message: String },
}

/// The group whose members may drive orch besides root: `init` makes the CLI's
/// credential (`admin.pem`/`.key`) and the PKI directory readable by it when it exists.
pub const ADMIN_GROUP: &str = "orch";

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return TlsError::PermissionDenied { path: path.display().to_string(), group: ADMIN_GROUP };
        }
        TlsError::File {
            path: path.display().to_string(),
            message: format!(
                "{e} (orch-controller --tls-dir {} init makes the cluster's certificates)",
                path.parent().map_or_else(String::new, |p| p.display().to_string())
            ),
        }
    })
}

/// Who may read a PKI file: its owner only, or also the admin group (the CLI's credential).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readers {
    Everyone,
    Owner,
    AdminGroup,
}

fn write(path: &Path, content: &str, readers: Readers) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let fail = |e: std::io::Error| TlsError::File { path: path.display().to_string(), message: e.to_string() };
    // A new file under a temporary name, so a secret is never readable in between.
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary).map_err(fail)?;
    file.write_all(content.as_bytes()).map_err(fail)?;
    // The admin group reads the CLI's credential when it exists and this process may
    // hand the file to it (root may; anyone else keeps the file to itself).
    let group = if readers == Readers::AdminGroup { admin_group_id() } else { None };
    let shared = group.is_some_and(|gid| std::os::unix::fs::fchown(&file, None, Some(gid)).is_ok());
    let mode = match readers {
        Readers::Everyone => 0o644,
        Readers::AdminGroup if shared => 0o640,
        _ => 0o600,
    };
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, path).map_err(fail)
}

/// The gid of [`ADMIN_GROUP`] from `/etc/group`, when the group exists.
fn admin_group_id() -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    group_id(&text, ADMIN_GROUP)
}

fn group_id(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.trim().parse().ok()
    })
}

/// The PKI directory: created if missing, and in any case owned by its owner only
/// (0700), or 0750 with the admin group when that group exists (its members read the
/// CLI's credential; every other key stays 0600).
fn prepare_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |e: std::io::Error| TlsError::File { path: dir.display().to_string(), message: e.to_string() };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let shared = admin_group_id().is_some_and(|gid| std::os::unix::fs::chown(dir, None, Some(gid)).is_ok());
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(if shared { 0o750 } else { 0o700 })).map_err(fail)
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
    let readers = if file == "admin" { Readers::AdminGroup } else { Readers::Owner };
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
    write(&cert_path, &cert.pem(), if readers == Readers::AdminGroup { readers } else { Readers::Everyone })?;
    write(&key_path, &key.serialize_pem(), readers)
}

/// Creates the cluster CA (unless `dir` has one: then it is reused) and certificates
/// for the controller (`controller_names`: the names and addresses agents and the CLI
/// dial), each node (`(name, address)`) and the CLI (`admin`), replacing those that
/// exist. Returns the files written.
pub fn init(dir: &Path, controller_names: &[String], nodes: &[(String, String)]) -> Result<Vec<PathBuf>, TlsError> {
    make(dir, controller_names, nodes, true)
}

/// As [`init`], but keeps every certificate that is already there and makes only the
/// missing ones: what `orch up` does at every start (the first one makes the PKI).
pub fn ensure(dir: &Path, controller_names: &[String], nodes: &[(String, String)]) -> Result<Vec<PathBuf>, TlsError> {
    make(dir, controller_names, nodes, false)
}

fn make(dir: &Path, controller_names: &[String], nodes: &[(String, String)], replace: bool) -> Result<Vec<PathBuf>, TlsError> {
    prepare_dir(dir)?;
    let missing = |file: &str| {
        let (cert, key) = identity_paths(dir, file);
        replace || !cert.exists() || !key.exists()
    };
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
        write(&ca_cert, &cert.pem(), Readers::Everyone)?;
        write(&ca_key, &key.serialize_pem(), Readers::Owner)?;
        Issuer::new(params, key)
    };
    let mut written = vec![ca_cert];
    let mut names: Vec<String> = controller_names.to_vec();
    for default in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == default) {
            names.push(default.to_owned());
        }
    }
    let mut leaves = vec![("controller".to_owned(), CONTROLLER.to_owned(), names, true)];
    for (name, address) in nodes {
        if address.parse::<IpAddr>().is_err() {
            return Err(TlsError::Generate { what: format!("node-{name}"), message: format!("{address:?} is not an IP address") });
        }
        leaves.push((format!("node-{name}"), name.clone(), vec![name.clone(), address.clone()], true));
    }
    leaves.push(("admin".to_owned(), ADMIN.to_owned(), vec![ADMIN.to_owned()], false));
    for (file, common_name, names, server) in leaves {
        if missing(&file) {
            leaf(dir, &issuer, &file, &common_name, &names, server)?;
            written.push(identity_paths(dir, &file).0);
        }
    }
    Ok(written)
}

fn identity(dir: &Path, name: &str) -> Result<Identity, TlsError> {
    let (cert, key) = identity_paths(dir, name);
    let key = read(&key)?;
    Ok(Identity::from_pem(read(&cert)?, key))
}

/// Serving as `name` (controller, node-X), accepting only clients the CA signed.
pub fn server_config(dir: &Path, name: &str) -> Result<ServerTlsConfig, TlsError> {
    Ok(ServerTlsConfig::new().identity(identity(dir, name)?).client_ca_root(Certificate::from_pem(read(&dir.join("ca.pem"))?)))
}

/// Calling as `name`, trusting only servers the CA signed.
pub fn client_config(dir: &Path, name: &str) -> Result<ClientTlsConfig, TlsError> {
    let identity = identity(dir, name)?;
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&dir.join("ca.pem"))?)).identity(identity))
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
    // The key first: when it cannot be read, that is the file to name.
    let key = read(key)?;
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?)).identity(Identity::from_pem(read(cert)?, key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_from_etc_group() {
        let text = "root:x:0:\norchestra:x:5:\norch:x:1234:alice,bob\n";
        assert_eq!(group_id(text, "orch"), Some(1234));
        assert_eq!(group_id(text, "root"), Some(0));
        assert_eq!(group_id(text, "nope"), None);
        assert_eq!(group_id("orch:x:notanumber:\n", "orch"), None);
    }
}
