//! Transport security — the front door — on every connection, between machines and on
//! loopback alike: a cluster CA and certificates made by `orch-controller init` or
//! `orch up` (rcgen), and the tonic/rustls configurations built from them. Everything
//! is mutual: the controller only accepts agents and clients whose certificate the
//! cluster CA signed, and agents only talk to a controller it signed.
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

/// Hands an existing CLI credential to the admin group, when that group exists (made
/// after the credential, say): 0640 with that group. Best effort, as in `write`.
fn share_admin_credential(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Some(gid) = admin_group_id() else { return };
    let (cert, key) = identity_paths(dir, ADMIN);
    for path in [cert, key] {
        if std::os::unix::fs::chown(&path, None, Some(gid)).is_ok() {
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640));
        }
    }
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

/// What a certificate may do. Carried in its subject's organizational unit
/// (`orch:admin`, `orch:controller`, `orch:node`), which only `init` sets: a node's
/// name is its common name and can never make it an admin or a controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The CLI: drives `orch.v1.Api`.
    Admin,
    /// A controller: serves the API and calls the agents' node API.
    Controller,
    /// An agent: registers and holds a session as the node its common name names.
    Node,
    /// An etcd member (`init --etcd-member`): serves the store to controllers and its
    /// peers; admitted by no orch service.
    Store,
}

impl Role {
    fn unit(self) -> &'static str {
        match self {
            Role::Admin => "orch:admin",
            Role::Controller => "orch:controller",
            Role::Node => "orch:node",
            Role::Store => "orch:store",
        }
    }

    fn from_unit(unit: &str) -> Option<Role> {
        [Role::Admin, Role::Controller, Role::Node, Role::Store].into_iter().find(|role| role.unit() == unit)
    }
}

/// Names no node may have: they are (or were, before roles) the names of roles.
pub const RESERVED_NODE_NAMES: [&str; 4] = ["admin", "controller", "orch-controller", "ca"];

/// How long a leaf certificate is valid by default (`renew` re-issues it); the CA: ten years.
pub const LEAF_VALIDITY_DAYS: u32 = 365;
const CA_VALIDITY_DAYS: u32 = 3650;

/// The civil date `days` days after 1970-01-01 (Howard Hinnant's algorithm); the agent's
/// log timestamps use it too.
pub fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (i32::try_from(year).unwrap_or(i32::MAX), u8::try_from(month).unwrap_or(1), u8::try_from(day).unwrap_or(1))
}

/// Valid from yesterday (clocks differ a little) for `days` days.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let today = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs() / 86_400).unwrap_or(0));
    let (y, m, d) = civil_from_days(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today + i64::from(days));
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// A leaf certificate signed by the CA, for `names` (DNS names or IP addresses), valid
/// for `days`.
fn leaf(dir: &Path, issuer: &Issuer<'_, KeyPair>, file: &str, role: Role, common_name: &str, names: &[String], days: u32) -> Result<(), TlsError> {
    let readers = if role == Role::Admin { Readers::AdminGroup } else { Readers::Owner };
    let mut params = CertificateParams::new(names.to_vec()).map_err(generate(file))?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    subject.push(DnType::OrganizationalUnitName, role.unit());
    params.distinguished_name = subject;
    set_validity(&mut params, days);
    params.extended_key_usages = if role == Role::Admin {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    };
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
    make(dir, controller_names, nodes, &[], true)
}

/// As [`init`], and a certificate for each etcd member (`(name, address)`:
/// `etcd-<name>.pem`/`.key`, role `orch:store`, for its peer and client ports) — an etcd
/// cluster on the cluster's own CA, which controllers reach with their own certificate.
pub fn init_with_store(dir: &Path, controller_names: &[String], nodes: &[(String, String)], members: &[(String, String)]) -> Result<Vec<PathBuf>, TlsError> {
    make(dir, controller_names, nodes, members, true)
}

/// Re-issues every leaf certificate in `dir` (each `*.pem` but `ca.pem`) with the same
/// role, names and addresses, a new key and a new lifetime of `days`; the CA stays, so
/// nothing else needs to change. Returns the files written.
pub fn renew(dir: &Path, days: u32) -> Result<Vec<PathBuf>, TlsError> {
    let issuer = load_issuer(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|e| TlsError::File { path: dir.display().to_string(), message: e.to_string() })?;
    let mut files: Vec<String> =
        entries.flatten().filter_map(|e| e.file_name().to_str()?.strip_suffix(".pem").map(str::to_owned)).filter(|name| name != "ca").collect();
    files.sort();
    let mut written = Vec::new();
    for file in files {
        let (path, _) = identity_paths(dir, &file);
        let pem = read(&path)?;
        let bad = |message: &str| TlsError::Generate { what: file.clone(), message: message.to_owned() };
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(&e.to_string()))?;
        let certificate = block.parse_x509().map_err(|e| bad(&e.to_string()))?;
        let (common_name, role) =
            subject_identity(&certificate).ok_or_else(|| bad("no orch role in the subject (made before roles existed: run init again)"))?;
        let mut names = Vec::new();
        if let Ok(Some(extension)) = certificate.subject_alternative_name() {
            for name in &extension.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => names.push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).map_err(|_| bad("address"))?).to_string()),
                        16 => names.push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).map_err(|_| bad("address"))?).to_string()),
                        _ => return Err(bad("an IP address of odd length")),
                    },
                    _ => {}
                }
            }
        }
        leaf(dir, &issuer, &file, role, &common_name, &names, days)?;
        written.push(path);
    }
    Ok(written)
}

/// Whether the certificate at `path` carries an orch role and stays valid for 30 more days.
fn leaf_is_current(path: &Path) -> bool {
    let Ok(pem) = std::fs::read(path) else { return false };
    let Ok((_, block)) = x509_parser::pem::parse_x509_pem(&pem) else { return false };
    let Ok(certificate) = block.parse_x509() else { return false };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    subject_identity(&certificate).is_some() && certificate.validity().not_after.timestamp() > now + 30 * 86_400
}

/// The CA of a PKI directory, to sign with.
fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let key = KeyPair::from_pem(&read(&dir.join("ca.key"))?).map_err(generate("ca"))?;
    Issuer::from_ca_cert_pem(&read(&dir.join("ca.pem"))?, key).map_err(generate("ca"))
}

/// As [`init`], but keeps every certificate that is already there and current, and
/// makes the missing ones and those that carry no role or expire within 30 days: what
/// `orch up` does at every start (the first one makes the PKI; later ones rotate it).
pub fn ensure(dir: &Path, controller_names: &[String], nodes: &[(String, String)]) -> Result<Vec<PathBuf>, TlsError> {
    make(dir, controller_names, nodes, &[], false)
}

fn make(dir: &Path, controller_names: &[String], nodes: &[(String, String)], members: &[(String, String)], replace: bool) -> Result<Vec<PathBuf>, TlsError> {
    prepare_dir(dir)?;
    let missing = |file: &str| {
        let (cert, key) = identity_paths(dir, file);
        replace || !key.exists() || !leaf_is_current(&cert)
    };
    for (name, _) in nodes {
        if RESERVED_NODE_NAMES.contains(&name.as_str()) {
            return Err(TlsError::Generate {
                what: format!("node-{name}"),
                message: format!("{name:?} is reserved (a role's name); give the node another name"),
            });
        }
    }
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let issuer = if ca_cert.exists() {
        load_issuer(dir)?
    } else {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate("ca"))?;
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, "orch cluster CA");
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        set_validity(&mut params, CA_VALIDITY_DAYS);
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
    let mut leaves = vec![("controller".to_owned(), Role::Controller, CONTROLLER.to_owned(), names)];
    for (name, address) in nodes {
        if address.parse::<IpAddr>().is_err() {
            return Err(TlsError::Generate { what: format!("node-{name}"), message: format!("{address:?} is not an IP address") });
        }
        leaves.push((format!("node-{name}"), Role::Node, name.clone(), vec![name.clone(), address.clone()]));
    }
    for (name, address) in members {
        if address.parse::<IpAddr>().is_err() {
            return Err(TlsError::Generate { what: format!("etcd-{name}"), message: format!("{address:?} is not an IP address") });
        }
        leaves.push((format!("etcd-{name}"), Role::Store, name.clone(), vec![name.clone(), address.clone()]));
    }
    leaves.push(("admin".to_owned(), Role::Admin, ADMIN.to_owned(), vec![ADMIN.to_owned()]));
    for (file, role, common_name, names) in leaves {
        if missing(&file) {
            leaf(dir, &issuer, &file, role, &common_name, &names, LEAF_VALIDITY_DAYS)?;
            written.push(identity_paths(dir, &file).0);
        }
    }
    // The secrets key: made once, never replaced (a new one would lose every Secret).
    if !dir.join(crate::secrets::SECRETS_KEY_FILE).exists() {
        let path = crate::secrets::ensure_key_file(dir).map_err(|e| TlsError::File { path: dir.display().to_string(), message: e.to_string() })?;
        written.push(path);
    }
    share_admin_credential(dir);
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

/// The common name of the CLI's certificate (and its files' name in a PKI directory).
pub const ADMIN: &str = "admin";
/// The common name of the controller's certificate.
pub const CONTROLLER: &str = "orch-controller";

/// Who a verified certificate names: its common name and its role.
fn subject_identity(certificate: &x509_parser::certificate::X509Certificate<'_>) -> Option<(String, Role)> {
    let subject = certificate.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let role = subject.iter_organizational_unit().find_map(|unit| Role::from_unit(unit.as_str().ok()?))?;
    Some((name, role))
}

/// Who called over TLS, from the certificate the handshake verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// `None`: a certificate the CA signed that carries no orch role (it gets nothing).
    pub role: Option<Role>,
}

/// Who called: `None` for plain text (only behind --insecure-listen, on loopback), else
/// the verified client certificate's name and role.
pub fn peer<T>(request: &tonic::Request<T>) -> Option<Peer> {
    let certificates = request.peer_certs()?;
    let parsed = certificates.first().and_then(|der| {
        let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
        let name = certificate.subject().iter_common_name().next().and_then(|n| n.as_str().ok()).unwrap_or_default().to_owned();
        Some(Peer { role: subject_identity(&certificate).map(|(_, role)| role), name })
    });
    Some(parsed.unwrap_or(Peer { name: String::new(), role: None }))
}

/// An interceptor admitting plain-text callers (behind --insecure-listen) and TLS callers
/// whose certificate carries one of the `allowed` roles.
pub fn require_role(request: tonic::Request<()>, allowed: &[Role]) -> Result<tonic::Request<()>, tonic::Status> {
    match peer(&request) {
        None => Ok(request),
        Some(Peer { role: Some(role), .. }) if allowed.contains(&role) => Ok(request),
        Some(Peer { name, role }) => {
            let role = role.map_or("no role", Role::unit);
            Err(tonic::Status::permission_denied(format!("certificate {name:?} ({role}) may not call this service")))
        }
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
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_787), (2026, 11, 30));
        assert_eq!(civil_from_days(20_787 + 365), (2027, 11, 30));
    }

    #[test]
    fn roles_round_trip_through_the_unit() {
        for role in [Role::Admin, Role::Controller, Role::Node, Role::Store] {
            assert_eq!(Role::from_unit(role.unit()), Some(role));
        }
        assert_eq!(Role::from_unit("admin"), None, "a bare name is not a role");
    }

    #[test]
    fn group_ids_from_etc_group() {
        let text = "root:x:0:\norchestra:x:5:\norch:x:1234:alice,bob\n";
        assert_eq!(group_id(text, "orch"), Some(1234));
        assert_eq!(group_id(text, "root"), Some(0));
        assert_eq!(group_id(text, "nope"), None);
        assert_eq!(group_id("orch:x:notanumber:\n", "orch"), None);
    }
}
