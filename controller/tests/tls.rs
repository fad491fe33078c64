//! Mutual TLS between machines: certificates from `orch_api::tls::init`, a controller
//! serving over TLS, an agent (fake, over real gRPC) with its node certificate admitted,
//! and clients without a certificate, with one from another CA, or in plain text refused;
//! a node's certificate neither drives the API nor speaks for another node.
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
    assert_eq!(written.len(), 4, "ca, controller, node-worker, admin: {written:?}");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(pki.join("ca.key")).expect("key").permissions());
    assert_eq!(key_mode & 0o077, 0, "private keys are for root only");
    // A second init reuses the CA (adds a node) and the first node's cert still verifies.
    let ca_before = std::fs::read(pki.join("ca.pem")).expect("ca");
    orch_api::tls::init(&pki, &["127.0.0.1".to_owned()], &[("late".to_owned(), "127.0.0.1".to_owned())]).expect("add a node");
    assert_eq!(std::fs::read(pki.join("ca.pem")).expect("ca"), ca_before, "the CA is kept");

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
