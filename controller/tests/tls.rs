//! Mutual TLS between machines: certificates from `orch_api::tls::init`, a controller
//! serving over TLS, an agent (fake, over real gRPC) with its node certificate admitted,
//! and clients without a certificate, with one from another CA, or in plain text refused;
//! a node's certificate neither drives the API nor speaks for another node; roles live
//! in a field no node name can forge, certificates expire and `renew` re-issues them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::wait_until;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use orch_controller::server::{Controller, ControllerConfig, ControllerTls};
use orch_controller::testing::{FakeAgent, FakeAgentConfig};

use tonic::transport::{Certificate, Channel, ClientTlsConfig};

async fn client(address: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<ApiClient<Channel>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{address}")).map_err(|e| e.to_string())?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect_timeout(Duration::from_secs(3)).connect().await.map_err(|e| e.to_string())?;
    Ok(ApiClient::new(channel))
}

/// Whether a listing goes through: connecting may succeed lazily and fail on the call.
async fn can_list(address: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> bool {
    match client(address, tls).await {
        Ok(mut api) => api.list_nodes(pb::ListNodesRequest {}).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_cluster_certificates_get_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let written = orch_api::tls::init(&pki, &["127.0.0.1".to_owned()], &[("worker".to_owned(), "127.0.0.1".to_owned())]).expect("init");
    assert_eq!(written.len(), 5, "ca, controller, node-worker, admin, secrets.key: {written:?}");
    for key in ["ca.key", "secrets.key"] {
        let key_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(pki.join(key)).expect("key").permissions());
        assert_eq!(key_mode & 0o077, 0, "{key} is for root only");
    }
    // A second init reuses the CA (adds a node) and the first node's cert still verifies;
    // the secrets key is never replaced (every sealed Secret would be lost).
    let ca_before = std::fs::read(pki.join("ca.pem")).expect("ca");
    let secrets_before = std::fs::read(pki.join("secrets.key")).expect("secrets key");
    orch_api::tls::init(&pki, &["127.0.0.1".to_owned()], &[("late".to_owned(), "127.0.0.1".to_owned())]).expect("add a node");
    assert_eq!(std::fs::read(pki.join("ca.pem")).expect("ca"), ca_before, "the CA is kept");
    assert_eq!(std::fs::read(pki.join("secrets.key")).expect("secrets key"), secrets_before, "the secrets key is kept");

    let store = common::embedded().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let config = ControllerConfig { tls: Some(ControllerTls::load(&pki).expect("load")), ..ControllerConfig::default() };
    let controller = Controller::start(Arc::clone(&store.store), config, listener);

    // The CLI's certificate gets in.
    let admin = orch_api::tls::client_config(&pki, "admin").expect("admin");
    wait_until("the TLS API to answer the admin", Duration::from_secs(30), || {
        let admin = admin.clone();
        async move { can_list(address, Some(admin)).await }
    })
    .await;

    // An agent with its node certificate registers and stays Ready.
    let mut worker = FakeAgentConfig::new("worker", "127.0.0.1");
    worker.tls = Some(orch_api::tls::client_config(&pki, "node-worker").expect("node cert"));
    let _agent = FakeAgent::start(address, worker);
    let api = client(address, Some(admin.clone())).await.expect("admin client");
    wait_until("the agent to register over TLS", Duration::from_secs(30), || {
        let mut api = api.clone();
        async move { api.list_nodes(pb::ListNodesRequest {}).await.is_ok_and(|r| r.into_inner().nodes.iter().any(|n| n.ready)) }
    })
    .await;

    // No certificate, a certificate from another CA, plain text: refused.
    let ca_only = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read_to_string(pki.join("ca.pem")).expect("ca")));
    assert!(!can_list(address, Some(ca_only)).await, "a client without a certificate is refused");
    let other = dir.path().join("other");
    orch_api::tls::init(&other, &["127.0.0.1".to_owned()], &[]).expect("another CA");
    let stranger = orch_api::tls::client_config(&other, "admin").expect("stranger");
    assert!(!can_list(address, Some(stranger)).await, "a certificate from another CA is refused");
    assert!(!can_list(address, None).await, "plain text is refused");
    // An agent holding a certificate from another CA is refused at the same handshake.
    let mut outsider = tonic::transport::Endpoint::from_shared(format!("https://{address}")).expect("uri");
    outsider = outsider.tls_config(orch_api::tls::client_config(&other, "admin").expect("stranger")).expect("tls");
    let registered = match outsider.connect().await {
        Ok(channel) => pb::nodes_client::NodesClient::new(channel)
            .register(pb::RegisterRequest { node: Some(pb::NodeInfo { name: "intruder".into(), address: "127.0.0.1".into(), ..Default::default() }) })
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!registered, "an agent without a valid certificate cannot register");
    // Certificates carry roles: a node's certificate cannot use the CLI's API, nor
    // register as another node.
    let as_node = orch_api::tls::client_config(&pki, "node-worker").expect("node cert");
    let mut node_api = client(address, Some(as_node.clone())).await.expect("connect as a node");
    let denied = node_api.list_nodes(pb::ListNodesRequest {}).await.expect_err("a node cert is not admin");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://{address}")).expect("uri").tls_config(as_node).expect("tls").connect().await.expect("connect");
    let impersonation = pb::nodes_client::NodesClient::new(channel)
        .register(pb::RegisterRequest { node: Some(pb::NodeInfo { name: "late".into(), address: "127.0.0.1".into(), ..Default::default() }) })
        .await
        .expect_err("node-worker's certificate cannot register node late");
    assert_eq!(impersonation.code(), tonic::Code::PermissionDenied, "{impersonation:?}");
    controller.stop().await;
}

/// A certificate file's subject (common name, organizational units), subject
/// alternative names, serial and lifetime in days.
fn inspect(path: &std::path::Path) -> (String, Vec<String>, Vec<String>, Vec<u8>, i64) {
    let pem = std::fs::read(path).expect("certificate");
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    let certificate = block.parse_x509().expect("X.509");
    let subject = certificate.subject();
    let name = subject.iter_common_name().next().and_then(|n| n.as_str().ok()).unwrap_or_default().to_owned();
    let units = subject.iter_organizational_unit().filter_map(|u| u.as_str().ok().map(str::to_owned)).collect();
    let mut names = Vec::new();
    if let Ok(Some(extension)) = certificate.subject_alternative_name() {
        for general in &extension.value.general_names {
            match general {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => names.push(format!("{bytes:?}")),
                _ => {}
            }
        }
    }
    let validity = certificate.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    (name, units, names, certificate.raw_serial().to_vec(), days)
}

#[test]
fn certificates_carry_roles_expire_and_renew() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    // A node may not be named after a role.
    for reserved in ["admin", "orch-controller"] {
        let refused = orch_api::tls::init(&pki, &[], &[(reserved.to_owned(), "127.0.0.1".to_owned())]).expect_err("a reserved node name");
        assert!(refused.to_string().contains("reserved"), "{refused}");
    }
    orch_api::tls::init(&pki, &["127.0.0.1".to_owned()], &[("worker".to_owned(), "10.0.0.5".to_owned())]).expect("init");

    let (name, units, names, serial, days) = inspect(&pki.join("node-worker.pem"));
    assert_eq!((name.as_str(), units), ("worker", vec!["orch:node".to_owned()]), "the role is in the organizational unit, the name in the common name");
    assert!(names.contains(&"worker".to_owned()) && names.contains(&"[10, 0, 0, 5]".to_owned()), "{names:?}");
    assert!((365..=367).contains(&days), "a leaf lives a year (from yesterday): {days} days");
    assert_eq!(inspect(&pki.join("admin.pem")).1, vec!["orch:admin".to_owned()]);
    assert_eq!(inspect(&pki.join("controller.pem")).1, vec!["orch:controller".to_owned()]);
    let ca_days = inspect(&pki.join("ca.pem")).4;
    assert!(ca_days >= 3650, "the CA lives ten years: {ca_days} days");

    // renew: every leaf again, same identity, new serial and lifetime, the same CA.
    let ca_before = std::fs::read(pki.join("ca.pem")).expect("ca");
    let renewed = orch_api::tls::renew(&pki, 30).expect("renew");
    assert_eq!(renewed.len(), 3, "admin, controller, node-worker: {renewed:?}");
    let (name_after, units_after, names_after, serial_after, days_after) = inspect(&pki.join("node-worker.pem"));
    assert_eq!((name_after.as_str(), units_after, names_after), ("worker", vec!["orch:node".to_owned()], names));
    assert_ne!(serial_after, serial, "a new certificate");
    assert!((30..=32).contains(&days_after), "{days_after} days");
    assert_eq!(std::fs::read(pki.join("ca.pem")).expect("ca"), ca_before, "the CA is kept");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(pki.join("node-worker.key")).expect("key").permissions());
    assert_eq!(key_mode & 0o077, 0, "renewed keys are root's only");

    // ensure (orch up's start) keeps current certificates and re-issues those expiring
    // within 30 days: the 30-day ones from the renew above are replaced by year-long ones.
    let admin_serial = inspect(&pki.join("admin.pem")).3;
    orch_api::tls::ensure(&pki, &["127.0.0.1".to_owned()], &[("worker".to_owned(), "10.0.0.5".to_owned())]).expect("ensure");
    let (_, _, _, serial_ensured, days_ensured) = inspect(&pki.join("node-worker.pem"));
    assert_ne!(serial_ensured, serial_after, "a certificate about to expire is re-issued");
    assert!((365..=367).contains(&days_ensured), "{days_ensured} days");
    let admin_serial_ensured = inspect(&pki.join("admin.pem")).3;
    orch_api::tls::ensure(&pki, &["127.0.0.1".to_owned()], &[("worker".to_owned(), "10.0.0.5".to_owned())]).expect("ensure again");
    assert_ne!(admin_serial_ensured, admin_serial);
    assert_eq!(inspect(&pki.join("admin.pem")).3, admin_serial_ensured, "a current certificate is kept");
}
