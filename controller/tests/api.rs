//! The services API on both store backends, directly and through real gRPC on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use orch_api::pb;
use orch_controller::api::services::{spec_hash, ApplyOutcome};
use orch_controller::api::{ApiError, Applied, ServiceApi};
use orch_controller::store::Expect;
use std::time::Duration;

const WEB: &str =
    "apiVersion: orch/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  replicas: 2\n  image: busybox\n  ports: [{name: http, containerPort: 80}]\n";
const API: &str = "apiVersion: orch/v1\nkind: Service\nmetadata: {name: api}\nspec:\n  image: busybox\n";

fn applied(name: &str, outcome: ApplyOutcome) -> Applied {
    Applied { kind: "service", name: name.to_owned(), outcome }
}

fn source(text: &str) -> Vec<(String, String)> {
    vec![("test.yaml".to_owned(), text.to_owned())]
}

fn service_api(store: &common::TestStore) -> ServiceApi {
    let key = orch_api::secrets::SecretsKey::generate().expect("a secrets key");
    ServiceApi::new(store.store.clone(), orch_api::cidr::DEFAULT_SERVICE_RANGE).with_secrets(Some(std::sync::Arc::new(key)))
}

/// The clear text the secret of [`CONFIGS`] holds: never in the store.
const SECRET_VALUE: &str = "correct-horse-battery-staple";

const CONFIGS: &str = "apiVersion: orch/v1\nkind: Config\nmetadata: {name: site}\ndata:\n  index.html: hello\n---\n\
apiVersion: orch/v1\nkind: Secret\nmetadata: {name: db}\ndata:\n  password: correct-horse-battery-staple\n---\n\
apiVersion: orch/v1\nkind: Service\nmetadata: {name: app}\nspec:\n  image: busybox\n  \
env: [{name: PW, valueFrom: {secretKey: {name: db, key: password}}}]\n  \
volumes: [{name: site, config: {name: site}}]\n  volumeMounts: [{name: site, mountPath: /www}]\n";

async fn configs_and_secrets_roll_the_services_using_them(api: ServiceApi) {
    let applied = api.apply(&source(CONFIGS)).await.expect("apply");
    let kinds: Vec<(&str, &str, ApplyOutcome)> = applied.iter().map(|a| (a.kind, a.name.as_str(), a.outcome)).collect();
    assert_eq!(kinds, [("config", "site", ApplyOutcome::Created), ("secret", "db", ApplyOutcome::Created), ("service", "app", ApplyOutcome::Created)]);
    let app = api.get("app").await.expect("get");
    let revisions: Vec<(String, u64)> = app.config_revisions.clone().into_iter().collect::<std::collections::BTreeMap<_, _>>().into_iter().collect();
    let objects: Vec<&str> = revisions.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(objects, ["config/site", "secret/db"]);
    assert!(revisions.iter().all(|(_, r)| *r > 0), "the store revisions of both: {revisions:?}");

    // The store holds the secret sealed: no clear text in its record or anywhere else.
    let listing = api.store().list("/orch/").await.expect("list");
    for kv in &listing.items {
        assert!(!kv.value.windows(SECRET_VALUE.len()).any(|w| w == SECRET_VALUE.as_bytes()), "{} holds the secret in clear", kv.key);
    }
    let secrets = api.list_configs(pb::ConfigKind::Secret).await.expect("list secrets");
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0].data, None, "a listing never carries a secret's values");
    assert_eq!(secrets[0].sizes.get("password"), Some(&(SECRET_VALUE.len() as u64)));
    assert_eq!(secrets[0].used_by, ["app"]);
    let configs = api.list_configs(pb::ConfigKind::Config).await.expect("list configs");
    assert_eq!(configs[0].data.as_ref().and_then(|d| d.data.get("index.html")).map(Vec::as_slice), Some(b"hello".as_slice()));

    // The same again: nothing changes. A new secret value: the service rolls.
    assert!(api.apply(&source(CONFIGS)).await.expect("re-apply").iter().all(|a| a.outcome == ApplyOutcome::Unchanged));
    let changed = CONFIGS.replace(SECRET_VALUE, "another-value");
    let outcomes: Vec<ApplyOutcome> = api.apply(&source(&changed)).await.expect("apply").iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, [ApplyOutcome::Unchanged, ApplyOutcome::Configured, ApplyOutcome::Unchanged], "the service's spec did not change");
    let rolled = api.get("app").await.expect("get");
    assert_eq!(rolled.generation, app.generation + 1);
    assert_ne!(rolled.spec_hash, app.spec_hash, "a new template: the replicas roll");
    let secret_revision = api.list_configs(pb::ConfigKind::Secret).await.expect("list")[0].revision;
    assert!(secret_revision > app.config_revisions["secret/db"], "a new write");
    assert_eq!(rolled.config_revisions.get("secret/db"), Some(&secret_revision));
    assert_eq!(rolled.config_revisions.get("config/site"), app.config_revisions.get("config/site"));

    // Deleted and re-created with the same content: the service rolls too (the old
    // replicas had it at a revision the new record no longer is).
    api.delete_config(pb::ConfigKind::Config, "site").await.expect("delete");
    assert_eq!(api.get("app").await.expect("get").spec_hash, rolled.spec_hash, "deleting a Config in use rolls nothing");
    api.apply(&source(&changed)).await.expect("re-create");
    assert_ne!(api.get("app").await.expect("get").spec_hash, rolled.spec_hash, "re-created: a new template");

    // A service using none keeps its plain spec hash (nothing rolls after an upgrade).
    api.apply(&source(API)).await.expect("apply");
    let plain = api.get("api").await.expect("get");
    assert_eq!(plain.spec_hash, spec_hash(plain.spec.as_ref().expect("spec")));

    api.delete_config(pb::ConfigKind::Secret, "db").await.expect("delete");
    assert!(matches!(api.delete_config(pb::ConfigKind::Secret, "db").await, Err(ApiError::ConfigNotFound(what)) if what == "secret/db"));
}

async fn secrets_are_refused_without_a_key(store: &common::TestStore) {
    let api = ServiceApi::new(store.store.clone(), orch_api::cidr::DEFAULT_SERVICE_RANGE);
    assert!(matches!(api.apply(&source(CONFIGS)).await, Err(ApiError::NoSecretsKey)));
    assert!(api.store().list("/orch/").await.expect("list").items.is_empty(), "nothing was applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_nothing_is_applied() {
    secrets_are_refused_without_a_key(&common::embedded().await).await;
}

/// The raw bytes on disk and in etcd, read around orch: no secret in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_clear_in_the_redb_file_or_in_etcd() {
    let embedded = common::embedded().await;
    service_api(&embedded).apply(&source(CONFIGS)).await.expect("apply");
    let file = embedded.dir.as_ref().expect("dir").path().join("store.redb");
    let bytes = std::fs::read(&file).expect("read the redb file");
    assert!(bytes.windows(5).any(|w| w == b"hello"), "the config is there in clear: the search works");
    assert!(!bytes.windows(SECRET_VALUE.len()).any(|w| w == SECRET_VALUE.as_bytes()), "the secret is in {} in clear", file.display());

    let prefix = common::unique_prefix("raw-secret");
    let etcd = common::etcd_at(&prefix).await;
    service_api(&etcd).apply(&source(CONFIGS)).await.expect("apply");
    let endpoint = std::env::var(common::ETCD_ENV).expect("the test etcd");
    let out = std::process::Command::new("etcdctl")
        .args(["--endpoints", &endpoint, "get", "--prefix", &prefix])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("run etcdctl (Debian's etcd-client; deploy/test.sh installs it)");
    assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{prefix}orch/secrets/db")) || text.contains("/orch/secrets/db"), "etcdctl shows the record:\n{text}");
    assert!(out.stdout.windows(5).any(|w| w == b"hello"), "the config is there in clear: the search works");
    assert!(!out.stdout.windows(SECRET_VALUE.len()).any(|w| w == SECRET_VALUE.as_bytes()), "etcd holds the secret in clear");
}

async fn apply_reapply_configure_and_vips(api: ServiceApi) {
    let created = api.apply(&source(&format!("{WEB}---\n{API}"))).await.expect("apply");
    assert_eq!(created, vec![applied("web", ApplyOutcome::Created), applied("api", ApplyOutcome::Created)]);
    let web = api.get("web").await.expect("get");
    let other = api.get("api").await.expect("get");
    assert_eq!(web.generation, 1);
    assert_ne!(web.vip, other.vip, "every service its own VIP");
    assert!(web.vip.starts_with("10.96."), "{}", web.vip);
    assert_eq!(web.spec_hash, spec_hash(web.spec.as_ref().expect("spec")));

    assert_eq!(api.apply(&source(WEB)).await.expect("re-apply"), vec![applied("web", ApplyOutcome::Unchanged)]);
    assert_eq!(api.get("web").await.expect("get").generation, 1, "unchanged keeps the generation");

    let changed = WEB.replace("image: busybox", "image: busybox:2");
    assert_eq!(api.apply(&source(&changed)).await.expect("apply"), vec![applied("web", ApplyOutcome::Configured)]);
    let configured = api.get("web").await.expect("get");
    assert_eq!(configured.generation, 2);
    assert_eq!(configured.vip, web.vip, "the VIP stays");
    assert_ne!(configured.spec_hash, web.spec_hash, "a template change changes the hash");
    let targets = changed.replace("  replicas: 2\n", "  replicas: 2\n  recovery: {restartWithinMillis: 500}\n");
    assert_eq!(api.apply(&source(&targets)).await.expect("apply"), vec![applied("web", ApplyOutcome::Configured)]);
    let targeted = api.get("web").await.expect("get");
    assert_eq!(targeted.spec.as_ref().and_then(|s| s.recovery.as_ref()).map(|r| r.restart_within_millis), Some(500));
    assert_eq!(targeted.spec_hash, configured.spec_hash, "recovery targets are not the template: nothing rolls");
    let names: Vec<String> = api.list().await.expect("list").into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["api", "web"]);
}

async fn invalid_input_changes_nothing(api: ServiceApi) {
    api.apply(&source(API)).await.expect("apply");
    let before = api.store().list("/orch/").await.expect("list");
    let bad = format!("{WEB}---\n{}", API.replace("image: busybox", "image: busybox\n  replicas: -1"));
    match api.apply(&source(&bad)).await {
        Err(ApiError::Invalid(problems)) => {
            assert_eq!(problems, ["test.yaml: document 2: spec.replicas: must be between 0 and 10000, got -1"]);
        }
        other => panic!("expected the manifest to be rejected, got {other:?}"),
    }
    let after = api.store().list("/orch/").await.expect("list");
    assert_eq!(after.items, before.items, "a rejected apply writes nothing, not even the valid document");
    assert!(matches!(api.get("web").await, Err(ApiError::NotFound(_))));

    // A 200 KB alias bomb (8 million strings once expanded) is refused before it is built.
    let anchor = format!("a: &big [{}]", vec!["\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\""; 200].join(","));
    let bomb = format!(
        "{WEB}---\napiVersion: orch/v1\nkind: Service\nmetadata:\n  name: bomb\n  labels:\n    {anchor}\n    b: [{}]\nspec:\n  image: busybox\n",
        vec!["*big"; 40_000].join(",")
    );
    match api.apply(&source(&bomb)).await {
        Err(ApiError::Invalid(problems)) => {
            assert!(problems.len() == 1 && problems[0].starts_with("test.yaml: document 2:") && problems[0].contains("alias bomb"), "{problems:?}")
        }
        other => panic!("expected the alias bomb to be refused, got {other:?}"),
    }
    // Split over many sources of one apply, each small enough alone, it is refused too.
    let part = format!("a: &big [{}]\nb: [{}]\n", vec!["1"; 1000].join(","), vec!["*big"; 50].join(","));
    let sources: Vec<(String, String)> = (0..10).map(|i| (format!("part{i}.yaml"), part.clone())).collect();
    match api.apply(&sources).await {
        Err(ApiError::Invalid(problems)) => {
            assert!(problems.len() == 1 && problems[0].starts_with("part4.yaml: document 1:") && problems[0].contains("alias bomb"), "{problems:?}")
        }
        other => panic!("expected the split alias bomb to be refused, got {other:?}"),
    }
    assert_eq!(api.store().list("/orch/").await.expect("list").items, before.items, "nothing written");
}

async fn scale_changes_only_the_count(api: ServiceApi) {
    api.apply(&source(WEB)).await.expect("apply");
    let before = api.get("web").await.expect("get");
    let scaled = api.scale("web", 5).await.expect("scale");
    assert_eq!(scaled.spec.as_ref().map(|s| s.replicas), Some(5));
    assert_eq!(scaled.generation, before.generation + 1);
    assert_eq!(scaled.spec_hash, before.spec_hash, "the template did not change");
    let mut expected = before.spec.clone().expect("spec");
    expected.replicas = 5;
    assert_eq!(api.get("web").await.expect("get").spec, Some(expected));
    assert!(matches!(api.scale("nope", 1).await, Err(ApiError::NotFound(_))));
    assert!(matches!(api.scale("web", 100_000).await, Err(ApiError::BadRequest(_))));
}

async fn delete_frees_the_name_and_the_vip(api: ServiceApi) {
    api.apply(&source(WEB)).await.expect("apply");
    let vip = api.get("web").await.expect("get").vip;
    assert_eq!(api.delete("web", false).await.expect("delete"), [], "no local volumes kept");
    assert!(matches!(api.get("web").await, Err(ApiError::NotFound(_))));
    assert!(matches!(api.delete("web", false).await, Err(ApiError::NotFound(_))));
    assert!(matches!(api.delete("web", true).await, Err(ApiError::NotFound(_))), "nothing to purge either");
    assert!(api.store().get(&format!("/orch/ipam/vips/{vip}")).await.expect("get").is_none(), "VIP released");
    api.apply(&source(WEB)).await.expect("apply again");
    assert_eq!(api.get("web").await.expect("get").generation, 1, "a new service, from scratch");
}

async fn delete_keeps_local_volumes_unless_purged(api: ServiceApi) {
    use orch_controller::store::Expect;
    api.apply(&source(WEB)).await.expect("apply");
    let claim = pb::VolumeClaim { service: "web".into(), slot: 0, node: "n1".into() };
    let claim_key = orch_controller::keys::volume_claim("web", 0);
    let purge_key = orch_controller::keys::volume_purge("web");
    api.store().put(&claim_key, orch_controller::keys::encode(&claim), Expect::Absent).await.expect("a claim");
    assert_eq!(api.delete("web", false).await.expect("delete"), [claim], "the kept volumes are named");
    assert!(api.store().get(&claim_key).await.expect("get").is_some(), "the claim stays");
    // Purged after the service is gone: the nodes are told, the claim goes.
    assert_eq!(api.delete("web", true).await.expect("purge"), []);
    assert!(api.store().get(&claim_key).await.expect("get").is_none());
    assert!(api.store().get(&purge_key).await.expect("get").is_some(), "the purge record for the nodes");
    // A service of the name again: the nodes stop purging.
    api.apply(&source(WEB)).await.expect("apply again");
    assert!(api.store().get(&purge_key).await.expect("get").is_none());
}

fn with_node_port(text: &str, name: &str, node_port: u32) -> String {
    text.replace("{name: web}", &format!("{{name: {name}}}")).replace("containerPort: 80}", &format!("containerPort: 80, nodePort: {node_port}}}"))
}

async fn node_ports_are_one_service_each(api: ServiceApi) {
    use orch_controller::keys;
    api.apply(&source(&with_node_port(WEB, "web", 30080))).await.expect("apply web");
    let claim = |port: u32| {
        let store = api.store().clone();
        async move {
            store.get(&keys::node_port(pb::Protocol::Tcp, port)).await.expect("get").map(|kv| {
                let value = String::from_utf8_lossy(&kv.value).into_owned();
                value.split_once('\n').map_or(value.clone(), |(name, _)| name.to_owned())
            })
        }
    };
    assert_eq!(claim(30080).await.as_deref(), Some("web"), "the port is claimed for its service");

    let before = api.store().list("/orch/").await.expect("list");
    match api.apply(&source(&with_node_port(WEB, "shop", 30080))).await {
        Err(ApiError::Invalid(problems)) => assert_eq!(problems, ["service shop: spec.ports[0].nodePort: 30080/tcp is already used by service web"]),
        other => panic!("expected the port to be refused, got {other:?}"),
    }
    assert_eq!(api.store().list("/orch/").await.expect("list").items, before.items, "a refused apply writes nothing (no VIP, no claim)");

    // A service stored by an earlier build holds its port without a claim.
    let mut legacy: pb::Service = api.get("web").await.expect("get");
    legacy.name = "legacy".into();
    legacy.vip = "10.96.0.99".into();
    legacy.spec.as_mut().expect("spec").ports[0].node_port = 30090;
    api.store().put(&keys::service("legacy"), keys::encode(&legacy), orch_controller::store::Expect::Absent).await.expect("a legacy record");
    match api.apply(&source(&with_node_port(WEB, "shop", 30090))).await {
        Err(ApiError::Invalid(problems)) => assert_eq!(problems, ["service shop: spec.ports[0].nodePort: 30090/tcp is already used by service legacy"]),
        other => panic!("expected the legacy service's port to be refused, got {other:?}"),
    }

    // web moves to another port: the old one is given back, and shop may take it.
    assert_eq!(api.apply(&source(&with_node_port(WEB, "web", 30081))).await.expect("move"), vec![applied("web", ApplyOutcome::Configured)]);
    assert_eq!(claim(30080).await, None, "the port web no longer declares is free");
    assert_eq!(claim(30081).await.as_deref(), Some("web"));
    api.apply(&source(&with_node_port(WEB, "shop", 30080))).await.expect("shop takes the freed port");
    api.delete("shop", false).await.expect("delete");
    assert_eq!(claim(30080).await, None, "a deleted service's ports are free");

    // A claim of an apply under way (its service not written yet) holds; one left by an
    // apply that died half way (its service never written) is taken over after a while.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    api.store()
        .put(&keys::node_port(pb::Protocol::Tcp, 30082), format!("ghost\n{now}").into_bytes(), orch_controller::store::Expect::Absent)
        .await
        .expect("a fresh claim");
    match api.apply(&source(&with_node_port(WEB, "shop", 30082))).await {
        Err(ApiError::Invalid(problems)) => assert_eq!(problems, ["service shop: spec.ports[0].nodePort: 30082/tcp is already used by service ghost"]),
        other => panic!("expected a claim under way to hold, got {other:?}"),
    }
    let long_ago = now - 60_000;
    let stale = api.store().get(&keys::node_port(pb::Protocol::Tcp, 30082)).await.expect("get").expect("the claim");
    api.store()
        .put(
            &keys::node_port(pb::Protocol::Tcp, 30082),
            format!("ghost\n{long_ago}").into_bytes(),
            orch_controller::store::Expect::Revision(stale.mod_revision),
        )
        .await
        .expect("a stale claim");
    api.apply(&source(&with_node_port(WEB, "shop", 30082))).await.expect("a stale claim does not hold the port");
    assert_eq!(claim(30082).await.as_deref(), Some("shop"));

    // Every apply makes its claims again (a fresh revision): a delete of the name that
    // read them before gives back only what it read, never a claim made since.
    let revision = || async { api.store().get(&keys::node_port(pb::Protocol::Tcp, 30082)).await.expect("get").expect("the claim").mod_revision };
    let first = revision().await;
    assert_eq!(api.apply(&source(&with_node_port(WEB, "shop", 30082))).await.expect("again"), vec![applied("shop", ApplyOutcome::Unchanged)]);
    assert!(revision().await > first, "the claim was not made again");
    api.delete("shop", false).await.expect("delete");
    assert_eq!(claim(30082).await, None, "a deleted service's ports are free");
}

/// A store whose first write of a service lands but reports an error, as an etcd
/// request that timed out after the cluster applied it.
struct LandsThenFails {
    inner: std::sync::Arc<dyn orch_controller::store::Store>,
    failed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl orch_controller::store::Store for LandsThenFails {
    async fn get(&self, key: &str) -> Result<Option<orch_controller::store::KeyValue>, orch_controller::store::StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<orch_controller::store::Listing, orch_controller::store::StoreError> {
        self.inner.list(prefix).await
    }
    async fn put_with_lease(
        &self,
        key: &str,
        value: Vec<u8>,
        expect: orch_controller::store::Expect,
        lease: Option<orch_controller::store::LeaseId>,
    ) -> Result<orch_controller::store::Revision, orch_controller::store::StoreError> {
        let revision = self.inner.put_with_lease(key, value, expect, lease).await?;
        if key.starts_with(orch_controller::keys::SERVICES) && !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(orch_controller::store::StoreError::EtcdProtocol { endpoints: "test".into(), message: "request timed out".into() });
        }
        Ok(revision)
    }
    async fn delete(
        &self,
        key: &str,
        expect: orch_controller::store::Expect,
    ) -> Result<Option<orch_controller::store::Revision>, orch_controller::store::StoreError> {
        self.inner.delete(key, expect).await
    }
    async fn txn_fenced(
        &self,
        fence: Option<&orch_controller::store::Fence>,
        ops: Vec<orch_controller::store::TxnOp>,
    ) -> Result<Vec<Option<orch_controller::store::Revision>>, orch_controller::store::StoreError> {
        self.inner.txn_fenced(fence, ops).await
    }
    async fn watch(
        &self,
        prefix: &str,
        from: orch_controller::store::Revision,
    ) -> Result<orch_controller::store::WatchStream, orch_controller::store::StoreError> {
        self.inner.watch(prefix, from).await
    }
    async fn grant_lease(&self, ttl: std::time::Duration) -> Result<orch_controller::store::LeaseId, orch_controller::store::StoreError> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: orch_controller::store::LeaseId) -> Result<(), orch_controller::store::StoreError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: orch_controller::store::LeaseId) -> Result<(), orch_controller::store::StoreError> {
        self.inner.revoke_lease(lease).await
    }
}

/// A service write whose outcome is unknown keeps its VIP: the service is there and no
/// other service gets the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vip_is_never_released_while_its_service_write_may_have_landed() {
    let store = common::embedded().await;
    let flaky = std::sync::Arc::new(LandsThenFails { inner: store.store.clone(), failed: std::sync::atomic::AtomicBool::new(false) });
    let api = ServiceApi::new(flaky, orch_api::cidr::DEFAULT_SERVICE_RANGE);
    assert_eq!(api.apply(&source(WEB)).await.expect("the re-read finds it written"), vec![applied("web", ApplyOutcome::Created)]);
    let web = api.get("web").await.expect("web is there");
    api.apply(&source(API)).await.expect("apply api");
    let other = api.get("api").await.expect("api is there");
    assert_ne!(web.vip, other.vip, "the address of a service whose write seemed to fail is not handed out again");
    let claim = store.store.get(&orch_controller::keys::vip(web.vip.parse().expect("an address"))).await.expect("get");
    assert_eq!(claim.map(|kv| kv.value), Some(b"web".to_vec()), "still web's");

    // A VIP kept claimed under a name whose service never landed: the next apply of that
    // name takes it again (nothing leaks), and a delete gives it back.
    let kept = std::net::Ipv4Addr::new(10, 96, 0, 50);
    store.store.put(&orch_controller::keys::vip(kept), b"shop".to_vec(), orch_controller::store::Expect::Absent).await.expect("a kept claim");
    api.apply(&source(&WEB.replace("{name: web}", "{name: shop}"))).await.expect("apply shop");
    assert_eq!(api.get("shop").await.expect("shop").vip, kept.to_string());
    api.delete("shop", false).await.expect("delete");
    assert!(store.store.get(&orch_controller::keys::vip(kept)).await.expect("get").is_none(), "released with its service");
}

/// Every key under `/orch/` with its value and revision.
async fn everything(api: &ServiceApi) -> Vec<(String, Vec<u8>, i64)> {
    api.store().list("/orch/").await.expect("list").items.into_iter().map(|kv| (kv.key, kv.value, kv.mod_revision)).collect()
}

async fn a_dry_run_reports_and_writes_nothing(api: ServiceApi) {
    api.apply(&source(&format!("{CONFIGS}---\n{}", with_node_port(WEB, "web", 30080)))).await.expect("apply");
    let before = everything(&api).await;
    // Watched from here on: a dry run that wrote a key and put it back would show.
    let revision_before = api.store().list("/orch/").await.expect("list").revision;
    let mut changes = api.store().watch("/orch/", revision_before + 1).await.expect("watch");
    let outcomes = |applied: Vec<Applied>| applied.into_iter().map(|a| (a.kind, a.name, a.outcome)).collect::<Vec<_>>();
    let same = format!("{CONFIGS}---\n{}", with_node_port(WEB, "web", 30080));
    assert!(api.apply_dry_run(&source(&same)).await.expect("dry run").iter().all(|a| a.outcome == ApplyOutcome::Unchanged));
    let changed =
        format!("{}---\n{}---\n{API}", CONFIGS.replace(SECRET_VALUE, "another"), with_node_port(WEB, "web", 30080).replace("replicas: 2", "replicas: 3"));
    let expected = [
        ("config", "site".to_owned(), ApplyOutcome::Unchanged),
        ("secret", "db".to_owned(), ApplyOutcome::Configured),
        ("service", "app".to_owned(), ApplyOutcome::Unchanged),
        ("service", "web".to_owned(), ApplyOutcome::Configured),
        ("service", "api".to_owned(), ApplyOutcome::Created),
    ];
    assert_eq!(outcomes(api.apply_dry_run(&source(&changed)).await.expect("dry run")), expected);
    // What an apply refuses, a dry run refuses: an invalid document, a node port held.
    let invalid = api.apply_dry_run(&source(&WEB.replace("replicas: 2", "replicas: -1"))).await;
    assert!(matches!(&invalid, Err(ApiError::Invalid(e)) if e[0].contains("spec.replicas")), "{invalid:?}");
    let held = api.apply_dry_run(&source(&with_node_port(WEB, "shop", 30080))).await;
    assert!(matches!(&held, Err(ApiError::Invalid(e)) if e[0].contains("30080/tcp is already used by service web")), "{held:?}");
    assert_eq!(everything(&api).await, before, "the store is untouched");
    // Not even written and put back: the first change since is a marker written now.
    let marker = api.store().put("/orch/marker", Vec::new(), Expect::Any).await.expect("marker");
    let first = tokio::time::timeout(Duration::from_secs(30), changes.next()).await.expect("an event").expect("open").expect("not an error");
    assert_eq!((first.key(), first.revision()), ("/orch/marker", marker), "a dry run writes nothing");
    api.store().delete("/orch/marker", Expect::Any).await.expect("delete the marker");
    // And the apply does what the dry run said.
    assert_eq!(outcomes(api.apply(&source(&changed)).await.expect("apply")), expected);
}

macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let store = super::common::embedded().await;
                    super::$test(super::service_api(&store)).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let store = super::common::etcd_namespaced(stringify!($test)).await;
                    super::$test(super::service_api(&store)).await;
                }
            )*
        }
    };
}

on_both_stores!(
    apply_reapply_configure_and_vips,
    invalid_input_changes_nothing,
    scale_changes_only_the_count,
    delete_frees_the_name_and_the_vip,
    delete_keeps_local_volumes_unless_purged,
    configs_and_secrets_roll_the_services_using_them,
    node_ports_are_one_service_each,
    a_dry_run_reports_and_writes_nothing
);

/// The same through real gRPC on loopback, as the CLI will call it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_api_answers_and_maps_errors() {
    use orch_api::pb::api_client::ApiClient;
    use orch_controller::api::rpc::ApiRpc;

    let store = common::embedded().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ApiRpc::new(service_api(&store)).into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = ApiClient::connect(format!("http://{address}")).await.expect("connect");
    let applied = client
        .apply(pb::ApplyRequest { sources: vec![pb::ManifestSource { name: "web.yaml".into(), content: WEB.into() }] })
        .await
        .expect("apply")
        .into_inner();
    assert_eq!(applied.results, vec![pb::ApplyResult { service: "web".into(), outcome: pb::ApplyOutcome::Created.into(), kind: "service".into() }]);
    let changed = WEB.replace("replicas: 2", "replicas: 5");
    let dry = client
        .apply_dry_run(pb::ApplyRequest { sources: vec![pb::ManifestSource { name: "web.yaml".into(), content: changed }] })
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(dry.results[0].outcome(), pb::ApplyOutcome::Configured);
    let stored = client.get_service(pb::GetServiceRequest { name: "web".into() }).await.expect("get").into_inner();
    assert_eq!((stored.generation, stored.spec.map(|s| s.replicas)), (1, Some(2)), "a dry run changes nothing");
    let bad = client
        .apply(pb::ApplyRequest {
            sources: vec![pb::ManifestSource { name: "bad.yaml".into(), content: WEB.replace("containerPort: 80", "containerPort: 0") }],
        })
        .await
        .expect_err("invalid");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("bad.yaml: document 1: spec.ports[0].containerPort"), "{}", bad.message());
    let missing = client.get_service(pb::GetServiceRequest { name: "nope".into() }).await.expect_err("missing");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let scaled = client.scale_service(pb::ScaleServiceRequest { name: "web".into(), replicas: 4 }).await.expect("scale").into_inner();
    assert_eq!(scaled.spec.map(|s| s.replicas), Some(4));
    let listed = client.list_services(pb::ListServicesRequest {}).await.expect("list").into_inner();
    assert_eq!(listed.services.len(), 1);
    client.delete_service(pb::DeleteServiceRequest { name: "web".into(), purge_volumes: false }).await.expect("delete");
    assert!(client.list_services(pb::ListServicesRequest {}).await.expect("list").into_inner().services.is_empty());
    server.abort();
}
