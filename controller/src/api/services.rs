//! Services in the store: apply (created / configured / unchanged), get, list, delete,
//! scale — and the read-only listings the CLI shows. Every write that depends on a read
//! is a compare-and-swap; rejected input changes nothing.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use orch_api::cidr::Ipv4Cidr;
use orch_api::manifest::{load_sources, Manifests, MAX_REPLICAS};
use orch_api::pb;
use prost::Message;
use sha2::{Digest, Sha256};

use super::node_ports;
use super::vip::next_free_vip;
use crate::keys;
use crate::store::{retry_on_conflict, Expect, MaybeConflict, Store, StoreError};
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid manifest:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("{0}")]
    BadRequest(String),
    #[error("service {0:?} not found")]
    NotFound(String),
    #[error("the service range {0} has no free VIP left")]
    VipsExhausted(String),
    #[error("too much contention on {0}; try again")]
    Contended(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Decode(#[from] keys::DecodeError),
    #[error("{0} not found")]
    ConfigNotFound(String),
    #[error("secrets need the cluster's secrets key, and this controller has none: `orch-controller init` writes secrets.key into --tls-dir (every controller needs the same file), or give --secrets-key")]
    NoSecretsKey,
    #[error("secrets: {0}")]
    Secrets(#[from] orch_api::secrets::SecretsError),
    #[error("node {0:?} is not registered")]
    NodeNotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    RevisionNotFound(String),
}

impl From<crate::nodes::NodeError> for ApiError {
    fn from(error: crate::nodes::NodeError) -> ApiError {
        use crate::nodes::NodeError;
        match error {
            NodeError::Store(e) => ApiError::Store(e),
            NodeError::Decode(e) => ApiError::Decode(e),
            NodeError::Unknown(node) => ApiError::NodeNotFound(node),
            NodeError::StillReady(_) => ApiError::Precondition(error.to_string()),
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

impl MaybeConflict for ApiError {
    fn is_conflict(&self) -> bool {
        matches!(self, ApiError::Store(e) if e.is_conflict())
    }
}

/// What one document of an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `service`, `config` or `secret`.
    pub kind: &'static str,
    pub name: String,
    pub outcome: ApplyOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Configured,
    Unchanged,
}

/// The part of a spec that makes replicas different (everything but the count and the
/// update strategy), hashed: replicas whose hash differs from the service's are rolled.
pub fn spec_hash(spec: &pb::ServiceSpec) -> String {
    let mut template = spec.clone();
    template.replicas = 0;
    template.update = None;
    template.recovery = None;
    template.rebalance = None;
    hex::encode(&Sha256::digest(template.encode_to_vec())[..5])
}

/// The spec hash with the generation of every Config and Secret the template uses and
/// the last `orch rollout restart` (0: none): a changed one makes a new template, and
/// the service rolls. A template that uses none and was never restarted keeps
/// [`spec_hash`] (so nothing rolls after an upgrade).
pub fn template_hash(spec: &pb::ServiceSpec, config_revisions: &std::collections::BTreeMap<String, u64>, restarted_unix_ms: i64) -> String {
    let base = spec_hash(spec);
    if config_revisions.is_empty() && restarted_unix_ms == 0 {
        return base;
    }
    let mut hasher = Sha256::new();
    hasher.update(base.as_bytes());
    for (object, revision) in config_revisions {
        hasher.update(format!(";{object}={revision}").as_bytes());
    }
    if restarted_unix_ms != 0 {
        hasher.update(format!(";restarted={restarted_unix_ms}").as_bytes());
    }
    hex::encode(&hasher.finalize()[..5])
}

/// The store revision of each Config and Secret `spec` uses, as `config/NAME` →
/// revision (0: missing), given where to look one up.
pub fn config_revisions_of(spec: &pb::ServiceSpec, revision_of: impl Fn(pb::ConfigKind, &str) -> u64) -> std::collections::BTreeMap<String, u64> {
    orch_api::manifest::config_refs(spec).into_iter().map(|(kind, name)| (orch_api::manifest::object_name(kind, &name), revision_of(kind, &name))).collect()
}

/// `service` again with a template over `revisions` (its Configs' and Secrets' store
/// revisions): a new generation and spec hash, so it rolls. `None` when they are the
/// ones it was made with.
///
/// A Config deleted while in use does not roll it (its replicas keep what they have, as
/// a Kubernetes pod keeps a deleted ConfigMap's files); re-created, it does.
pub fn with_config_revisions(service: &pb::Service, revisions: &std::collections::BTreeMap<String, u64>) -> Option<pb::Service> {
    let revisions: std::collections::BTreeMap<String, u64> = revisions
        .iter()
        .map(|(object, &revision)| (object.clone(), if revision == 0 { service.config_revisions.get(object).copied().unwrap_or(0) } else { revision }))
        .collect();
    let revisions = &revisions;
    let same = service.config_revisions.len() == revisions.len() && revisions.iter().all(|(object, r)| service.config_revisions.get(object) == Some(r));
    if same {
        return None;
    }
    let changed: Vec<&str> = revisions.iter().filter(|(object, r)| service.config_revisions.get(*object) != Some(r)).map(|(o, _)| o.as_str()).collect();
    let mut updated = service.clone();
    updated.generation += 1;
    updated.spec_hash = updated.spec.as_ref().map(|spec| template_hash(spec, revisions, service.restarted_unix_ms)).unwrap_or_default();
    updated.config_revisions = revisions.clone().into_iter().collect();
    updated.change_cause = if changed.is_empty() { "its configs changed".to_owned() } else { format!("{} changed", changed.join(", ")) };
    Some(updated)
}

/// Whether writing `wanted` (its spec and labels, over the Configs' `revisions`, with
/// the restart stamp `restarted`) over `current` changes nothing.
fn unchanged(current: &pb::Service, wanted: &pb::Service, revisions: &std::collections::BTreeMap<String, u64>, restarted: i64) -> bool {
    current.spec == wanted.spec
        && current.labels == wanted.labels
        && with_config_revisions(current, revisions).is_none()
        && restarted == current.restarted_unix_ms
}

/// A paused service's template changes roll nothing: an undo or a restart would only
/// seem to work (as Kubernetes, refused).
fn refuse_while_paused(service: &pb::Service, what: &str) -> Result<(), ApiError> {
    if service.paused {
        return Err(ApiError::Precondition(format!(
            "service {:?}'s rollouts are paused: `orch rollout resume service {}` first, then {what}",
            service.name, service.name
        )));
    }
    Ok(())
}

/// Who asks for a template, for the revision history: the change it records and, for
/// an undo, the restart stamp of the revision it goes back to (`None`: an apply keeps
/// the service's).
pub(crate) struct TemplateChange {
    pub cause: String,
    pub restarted_unix_ms: Option<i64>,
}

/// A VIP claimed for a service, and the revision of its claim.
struct VipClaim {
    vip: Ipv4Addr,
    revision: crate::store::Revision,
    /// Claimed by this call (not one held under the service's name already).
    fresh: bool,
}

/// The port a node port claim's key names.
fn parse_node_port_key(key: &str) -> Option<node_ports::NodePort> {
    let (protocol, port) = key.strip_prefix(keys::NODE_PORTS)?.split_once('/')?;
    let protocol = match protocol {
        "tcp" => pb::Protocol::Tcp,
        "udp" => pb::Protocol::Udp,
        _ => return None,
    };
    Some((protocol, port.parse().ok()?))
}

#[derive(Clone)]
pub struct ServiceApi {
    pub(crate) store: Arc<dyn Store>,
    service_range: Ipv4Cidr,
    /// Seals and opens Secrets; none: Secrets are refused.
    secrets: Option<Arc<orch_api::secrets::SecretsKey>>,
    /// How to call the agents' node API (mutual TLS), plain text when unset.
    pub(crate) node_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Where the faults `orch chaos` injects are recorded.
    pub(crate) events: Option<crate::events::EventLog>,
}

impl ServiceApi {
    pub fn new(store: Arc<dyn Store>, service_range: Ipv4Cidr) -> ServiceApi {
        ServiceApi { store, service_range, node_tls: None, secrets: None, events: None }
    }

    pub fn with_secrets(self, secrets: Option<Arc<orch_api::secrets::SecretsKey>>) -> ServiceApi {
        ServiceApi { secrets, ..self }
    }

    pub(crate) fn secrets_key(&self) -> Result<&orch_api::secrets::SecretsKey, ApiError> {
        self.secrets.as_deref().ok_or(ApiError::NoSecretsKey)
    }

    pub fn with_events(self, events: crate::events::EventLog) -> ServiceApi {
        ServiceApi { events: Some(events), ..self }
    }

    pub fn with_node_tls(mut self, tls: tonic::transport::ClientTlsConfig) -> ServiceApi {
        self.node_tls = Some(tls);
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Every document of every source, validated (any problem rejects the whole apply).
    fn load(&self, sources: &[(String, String)]) -> Result<Manifests, ApiError> {
        let manifests = load_sources(sources.iter().map(|(name, text)| (name.as_str(), text.as_str())))
            .map_err(|errors| ApiError::Invalid(errors.iter().map(ToString::to_string).collect()))?;
        if manifests.services.is_empty() && manifests.configs.is_empty() {
            return Err(ApiError::BadRequest("no services, configs or secrets in the given manifests".into()));
        }
        if manifests.configs.iter().any(|c| c.content.kind == pb::ConfigKind::Secret) {
            self.secrets_key()?;
        }
        Ok(manifests)
    }

    /// Validates every document of every source first (any problem rejects the whole
    /// apply, untouched), then applies Configs and Secrets first (so the services using
    /// them start with them), then services.
    pub async fn apply(&self, sources: &[(String, String)]) -> Result<Vec<Applied>, ApiError> {
        let Manifests { services: documents, configs } = self.load(sources)?;
        let mut results = Vec::new();
        for config in configs {
            let outcome = self.apply_config(&config.content).await?;
            results.push(Applied { kind: orch_api::manifest::kind_name(config.content.kind), name: config.content.name, outcome });
        }
        for document in documents {
            let source = std::path::Path::new(&document.source_name).file_name().map_or(document.source_name.clone(), |n| n.to_string_lossy().into_owned());
            let change = TemplateChange { cause: format!("apply {source}"), restarted_unix_ms: None };
            let (name, outcome) = self.apply_one(document.service, &change).await?;
            results.push(Applied { kind: "service", name, outcome });
        }
        Ok(results)
    }

    /// What [`apply`](Self::apply) would report for `sources`, writing nothing: the same
    /// validation, the node ports other services hold, and each document's outcome as
    /// the store is now (a service using a changed Config rolls through the Config, and
    /// is reported unchanged, as an apply reports it).
    pub async fn apply_dry_run(&self, sources: &[(String, String)]) -> Result<Vec<Applied>, ApiError> {
        let Manifests { services: documents, configs } = self.load(sources)?;
        let mut results = Vec::new();
        for config in configs {
            let outcome = self.config_outcome(&config.content).await?;
            results.push(Applied { kind: orch_api::manifest::kind_name(config.content.kind), name: config.content.name, outcome });
        }
        let stored = self.list().await?;
        for document in documents {
            let wanted = document.service;
            let mut refused = node_ports::conflicts(&wanted.name, wanted.spec.as_ref(), &stored);
            refused.extend(node_ports::refused(self.store.as_ref(), &wanted.name, &node_ports::declared(wanted.spec.as_ref())).await?);
            if !refused.is_empty() {
                return Err(ApiError::Invalid(refused));
            }
            let outcome = match stored.iter().find(|s| s.name == wanted.name) {
                None => ApplyOutcome::Created,
                Some(current) => {
                    let revisions = self.config_revisions(wanted.spec.as_ref()).await?;
                    if unchanged(current, &wanted, &revisions, current.restarted_unix_ms) {
                        ApplyOutcome::Unchanged
                    } else {
                        ApplyOutcome::Configured
                    }
                }
            };
            results.push(Applied { kind: "service", name: wanted.name, outcome });
        }
        Ok(results)
    }

    pub(crate) async fn apply_one(&self, wanted: pb::Service, change: &TemplateChange) -> Result<(String, ApplyOutcome), ApiError> {
        let span = tracing::info_span!("apply", service = %wanted.name, change = %change.cause);
        let applied = tracing::Instrument::instrument(self.apply_one_inner(wanted, change), span.clone()).await;
        let _span = span.entered();
        match &applied {
            Ok((_, outcome)) => tracing::info!(?outcome, "service applied"),
            Err(error) => tracing::info!(%error, "service not applied"),
        }
        applied
    }

    async fn apply_one_inner(&self, wanted: pb::Service, change: &TemplateChange) -> Result<(String, ApplyOutcome), ApiError> {
        let ports = node_ports::declared(wanted.spec.as_ref());
        if !ports.is_empty() {
            // Services stored by earlier builds hold their ports without claims.
            let found = node_ports::conflicts(&wanted.name, wanted.spec.as_ref(), &self.list().await?);
            if !found.is_empty() {
                return Err(ApiError::Invalid(found));
            }
        }
        let claimed = node_ports::claim(self.store.as_ref(), &wanted.name, &ports).await?;
        let written = self.write_service(&wanted, change).await;
        match &written {
            Ok((_, ApplyOutcome::Configured)) => {
                // Ports the previous template declared and this one does not go back.
                let held = self.store.list(keys::NODE_PORTS).await.map(|listing| listing.items).unwrap_or_default();
                let dropped: Vec<node_ports::NodePort> = held
                    .iter()
                    .filter(|kv| node_ports::holder(&kv.value).0 == wanted.name)
                    .filter_map(|kv| parse_node_port_key(&kv.key))
                    .filter(|port| !ports.contains_key(port))
                    .collect();
                node_ports::release(self.store.as_ref(), &wanted.name, &dropped).await;
            }
            Ok(_) => {}
            // The write's outcome is unknown (a timeout): the service may hold the ports;
            // its claims stay (taken over after their grace if it does not).
            Err(ApiError::Store(error)) if !error.is_conflict() => {}
            Err(_) => node_ports::release(self.store.as_ref(), &wanted.name, &claimed).await,
        }
        written
    }

    /// Creates or updates the service record (its ports already claimed).
    async fn write_service(&self, wanted: &pb::Service, change: &TemplateChange) -> Result<(String, ApplyOutcome), ApiError> {
        let key = keys::service(&wanted.name);
        let attempt = || async {
            // Read again on every attempt: a concurrent roll may have moved them.
            let revisions = self.config_revisions(wanted.spec.as_ref()).await?;
            let hash = |spec: Option<&pb::ServiceSpec>, restarted: i64| spec.map(|s| template_hash(s, &revisions, restarted)).unwrap_or_default();
            let Some(kv) = self.store.get(&key).await? else {
                let VipClaim { vip, revision: claimed_at, fresh } = self.claim_vip(&wanted.name).await?;
                let mut service = wanted.clone();
                service.generation = 1;
                service.vip = vip.to_string();
                service.restarted_unix_ms = change.restarted_unix_ms.unwrap_or(0);
                service.spec_hash = hash(service.spec.as_ref(), service.restarted_unix_ms);
                service.change_cause = change.cause.clone();
                service.config_revisions = revisions.clone().into_iter().collect();
                if let Err(e) = self.store.put(&key, keys::encode(&service), Expect::Absent).await {
                    if e.is_conflict() {
                        // Lost the name to another apply: nothing was written, the address goes
                        // back — if this attempt claimed it, and nobody took it again since.
                        if fresh {
                            self.release_vip(vip, claimed_at).await?;
                        }
                        return Err(ApiError::Store(e));
                    }
                    // The outcome is unknown (a timeout, a lost connection): the write may
                    // have landed, and releasing the address would hand it out twice.
                    match self.store.get(&key).await {
                        Ok(Some(kv)) if keys::decode::<pb::Service>(&key, &kv.value).is_ok_and(|landed| landed.vip == service.vip) => {
                            tracing::info!(service = %service.name, error = %e, "the service was written although the store said otherwise");
                        }
                        _ => {
                            // Not there (yet?): the address stays claimed under the service's
                            // name; the next apply of that name takes it again.
                            tracing::warn!(service = %service.name, %vip, error = %e, "keeping the VIP claimed: the service write's outcome is unknown");
                            return Err(ApiError::Store(e));
                        }
                    }
                }
                // A service of this name deleted with its volumes earlier: the nodes stop
                // purging, the new one's volumes stay.
                self.store.delete(&keys::volume_purge(&service.name), Expect::Any).await?;
                return Ok((service.name, ApplyOutcome::Created));
            };
            let current: pb::Service = keys::decode(&key, &kv.value)?;
            let restarted = change.restarted_unix_ms.unwrap_or(current.restarted_unix_ms);
            if unchanged(&current, wanted, &revisions, restarted) {
                return Ok((current.name, ApplyOutcome::Unchanged));
            }
            let mut service = current;
            service.spec = wanted.spec.clone();
            service.labels = wanted.labels.clone();
            service.generation += 1;
            service.restarted_unix_ms = restarted;
            let hash = hash(service.spec.as_ref(), restarted);
            if hash != service.spec_hash {
                service.change_cause = change.cause.clone();
            }
            service.spec_hash = hash;
            service.config_revisions = revisions.clone().into_iter().collect();
            self.store.put(&key, keys::encode(&service), Expect::Revision(kv.mod_revision)).await?;
            Ok::<_, ApiError>((service.name, ApplyOutcome::Configured))
        };
        retry_on_conflict(attempt).await?.ok_or(ApiError::Contended(key.clone()))
    }

    /// Claims the next free VIP by creating its key; a concurrent claim moves on. One
    /// already claimed under `service`'s name (by an apply whose write's outcome was
    /// unknown, the service absent since) is taken again — by rewriting its claim, so
    /// that whoever read the claim before (a delete, a concurrent apply of the name)
    /// cannot release it any more.
    async fn claim_vip(&self, service: &str) -> Result<VipClaim, ApiError> {
        let attempt = || async {
            let claims = self.store.list(keys::VIPS).await?.items;
            if let Some(mine) = claims.iter().find(|kv| kv.value == service.as_bytes()) {
                if let Ok(vip) = mine.key[keys::VIPS.len()..].parse::<Ipv4Addr>() {
                    let revision = self.store.put(&mine.key, service.as_bytes().to_vec(), Expect::Revision(mine.mod_revision)).await?;
                    return Ok(VipClaim { vip, revision, fresh: false });
                }
            }
            let used: BTreeSet<Ipv4Addr> = claims.iter().filter_map(|kv| kv.key[keys::VIPS.len()..].parse().ok()).collect();
            let Some(vip) = next_free_vip(self.service_range.network(), self.service_range.prefix(), &used) else {
                return Err(ApiError::VipsExhausted(self.service_range.to_string()));
            };
            let revision = self.store.put(&keys::vip(vip), service.as_bytes().to_vec(), Expect::Absent).await?;
            Ok::<_, ApiError>(VipClaim { vip, revision, fresh: true })
        };
        retry_on_conflict(attempt).await?.ok_or_else(|| ApiError::Contended(keys::VIPS.to_owned()))
    }

    /// Gives a VIP back, unless its claim changed since `revision` (taken again by an
    /// apply of the same name meanwhile).
    async fn release_vip(&self, vip: Ipv4Addr, revision: crate::store::Revision) -> Result<(), ApiError> {
        match self.store.delete(&keys::vip(vip), Expect::Revision(revision)).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(error) => Err(ApiError::Store(error)),
        }
    }

    pub async fn get(&self, name: &str) -> Result<pb::Service, ApiError> {
        let key = keys::service(name);
        let kv = self.store.get(&key).await?.ok_or_else(|| ApiError::NotFound(name.to_owned()))?;
        Ok(keys::decode(&key, &kv.value)?)
    }

    pub async fn list(&self) -> Result<Vec<pb::Service>, ApiError> {
        let listing = self.store.list(keys::SERVICES).await?;
        Ok(keys::decode_all(&listing.items)?)
    }

    /// Deletes the service (its replicas follow) and frees its VIP. Its local volumes
    /// stay on their nodes — returned as the claims that keep them — unless
    /// `purge_volumes`: then every node removes them and the claims go.
    pub async fn delete(&self, name: &str, purge_volumes: bool) -> Result<Vec<pb::VolumeClaim>, ApiError> {
        let key = keys::service(name);
        let attempt = || async {
            let Some(kv) = self.store.get(&key).await? else { return Err(ApiError::NotFound(name.to_owned())) };
            let service: pb::Service = keys::decode(&key, &kv.value)?;
            // The VIP's claim as it is before the service goes: released only if no apply
            // of the name takes it again in between.
            let claim = match service.vip.parse::<Ipv4Addr>() {
                Ok(vip) => self.store.get(&keys::vip(vip)).await?.filter(|kv| kv.value == name.as_bytes()).map(|kv| (vip, kv.mod_revision)),
                Err(_) => None,
            };
            // Node port claims too, for the same reason.
            let ports: Vec<node_ports::NodePort> = node_ports::declared(service.spec.as_ref()).into_keys().collect();
            let port_claims = node_ports::held(self.store.as_ref(), name, &ports).await?;
            self.store.delete(&key, Expect::Revision(kv.mod_revision)).await?;
            if let Some((vip, revision)) = claim {
                self.release_vip(vip, revision).await?;
            }
            node_ports::release_at(self.store.as_ref(), &port_claims).await;
            Ok::<_, ApiError>(())
        };
        // A service deleted earlier without its volumes may be purged now.
        let deleted = match retry_on_conflict(attempt).await.and_then(|done| done.ok_or(ApiError::Contended(key.clone()))) {
            Ok(()) => true,
            Err(ApiError::NotFound(_)) if purge_volumes => false,
            Err(error) => return Err(error),
        };
        let claims = self.store.list(&keys::volume_claims_of(name)).await?;
        if !purge_volumes {
            return Ok(keys::decode_all(&claims.items)?);
        }
        if !deleted && claims.items.is_empty() {
            return Err(ApiError::NotFound(name.to_owned()));
        }
        let purge = pb::PurgedVolumes { service: name.to_owned(), unix_ms: crate::events::now_unix_ms() };
        self.store.put(&keys::volume_purge(name), keys::encode(&purge), Expect::Any).await?;
        for claim in &claims.items {
            self.store.delete(&claim.key, Expect::Revision(claim.mod_revision)).await?;
        }
        Ok(Vec::new())
    }

    /// The recorded templates of `name`, oldest first, and the number of the current one
    /// (0 until the reconciler has recorded it).
    pub async fn list_revisions(&self, name: &str) -> Result<(Vec<pb::ServiceRevision>, u64), ApiError> {
        let service = self.get(name).await?;
        let listing = self.store.list(&keys::revisions_of(name)).await?;
        let revisions: Vec<pb::ServiceRevision> = keys::decode_all(&listing.items)?;
        let current = revisions.iter().rev().find(|r| r.spec_hash == service.spec_hash).map_or(0, |r| r.revision);
        Ok((revisions, current))
    }

    /// Goes back to a recorded template: `to_revision`, or (0) the one before the
    /// current. The replica count and update strategy stay as they are (Kubernetes'
    /// `rollout undo` takes the pod template only); Configs and Secrets are not
    /// versioned, so the template uses their current data. The template becomes the
    /// newest revision, and the service rolls to it.
    pub async fn undo(&self, name: &str, to_revision: u64) -> Result<pb::Service, ApiError> {
        let (revisions, current) = self.list_revisions(name).await?;
        let numbers = || revisions.iter().map(|r| r.revision.to_string()).collect::<Vec<_>>().join(", ");
        let target = if to_revision == 0 {
            revisions.iter().rev().find(|r| r.revision != current && (current == 0 || r.revision < current)).ok_or_else(|| {
                ApiError::RevisionNotFound(format!("service {name:?} has no revision before the current one to go back to (revisions: {})", numbers()))
            })?
        } else {
            revisions
                .iter()
                .find(|r| r.revision == to_revision)
                .ok_or_else(|| ApiError::RevisionNotFound(format!("service {name:?} has no revision {to_revision} (revisions: {})", numbers())))?
        };
        let service = self.get(name).await?;
        refuse_while_paused(&service, "undo")?;
        let mut spec = target.spec.clone().unwrap_or_default();
        if let Some(now) = service.spec.as_ref() {
            spec.replicas = now.replicas;
            spec.update = now.update;
        }
        let wanted = pb::Service { name: name.to_owned(), labels: service.labels.clone(), spec: Some(spec), ..Default::default() };
        let change = TemplateChange { cause: format!("undo to revision {}", target.revision), restarted_unix_ms: Some(target.restarted_unix_ms) };
        self.apply_one(wanted, &change).await?;
        self.get(name).await
    }

    /// A rolling restart: the same spec under a new restart stamp, so every replica is
    /// replaced within the service's maxSurge and maxUnavailable.
    pub async fn restart(&self, name: &str) -> Result<pb::Service, ApiError> {
        self.update_service(name, |service| {
            refuse_while_paused(service, "restart")?;
            let config_revisions: std::collections::BTreeMap<String, u64> = service.config_revisions.clone().into_iter().collect();
            // Later than the last one even if the clock stepped back.
            service.restarted_unix_ms = crate::events::now_unix_ms().max(service.restarted_unix_ms + 1);
            service.spec_hash = service.spec.as_ref().map(|spec| template_hash(spec, &config_revisions, service.restarted_unix_ms)).unwrap_or_default();
            service.change_cause = "restart".to_owned();
            service.generation += 1;
            Ok(true)
        })
        .await
    }

    /// Pauses (or resumes) the service's rollouts.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<pb::Service, ApiError> {
        self.update_service(name, |service| Ok(std::mem::replace(&mut service.paused, paused) != paused)).await
    }

    /// `orch rebalance [SERVICE]`: asks the leader to rebalance the service (every service
    /// when `name` is empty) now; returns the services asked for.
    pub async fn request_rebalance(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let names: Vec<String> = if name.is_empty() { self.list().await?.into_iter().map(|s| s.name).collect() } else { vec![name.to_owned()] };
        let now = crate::events::now_unix_ms();
        for name in &names {
            self.update_service(name, |service| {
                service.rebalance_requested_unix_ms = now;
                Ok(true)
            })
            .await?;
        }
        Ok(names)
    }

    /// Reads the service, lets `change` edit it (returning whether it did) and writes it
    /// back with a compare-and-swap, retried on conflict.
    async fn update_service(&self, name: &str, change: impl Fn(&mut pb::Service) -> Result<bool, ApiError>) -> Result<pb::Service, ApiError> {
        let key = keys::service(name);
        let attempt = || async {
            let Some(kv) = self.store.get(&key).await? else { return Err(ApiError::NotFound(name.to_owned())) };
            let mut service: pb::Service = keys::decode(&key, &kv.value)?;
            if change(&mut service)? {
                self.store.put(&key, keys::encode(&service), Expect::Revision(kv.mod_revision)).await?;
            }
            Ok::<_, ApiError>(service)
        };
        retry_on_conflict(attempt).await?.ok_or(ApiError::Contended(key.clone()))
    }

    /// Changes only the replica count.
    pub async fn scale(&self, name: &str, replicas: u32) -> Result<pb::Service, ApiError> {
        if i64::from(replicas) > MAX_REPLICAS {
            return Err(ApiError::BadRequest(format!("replicas: must be between 0 and {MAX_REPLICAS}, got {replicas}")));
        }
        self.update_service(name, |service| {
            let Some(spec) = service.spec.as_mut() else { return Err(ApiError::BadRequest(format!("service {name:?} has no spec"))) };
            if spec.replicas == replicas {
                return Ok(false);
            }
            spec.replicas = replicas;
            service.generation += 1;
            Ok(true)
        })
        .await
    }

    /// Replica records with the status their node last reported (a Pending replica
    /// carries the scheduler's reason instead).
    pub async fn list_replicas(&self, service: Option<&str>) -> Result<Vec<pb::Replica>, ApiError> {
        let prefix = service.map_or_else(|| keys::REPLICAS.to_owned(), keys::replicas_of);
        let listing = self.store.list(&prefix).await?;
        let mut replicas: Vec<pb::Replica> = keys::decode_all(&listing.items)?;
        let statuses = self.store.list(keys::STATUS).await?;
        let mut reported: std::collections::BTreeMap<String, pb::ReplicaReport> = std::collections::BTreeMap::new();
        for kv in &statuses.items {
            let status: pb::ReplicaReport = keys::decode(&kv.key, &kv.value)?;
            reported.insert(kv.key.clone(), status);
        }
        for replica in &mut replicas {
            if replica.node.is_empty() {
                continue;
            }
            if let Some(status) = reported.remove(&keys::status(&replica.node, &replica.id)) {
                replica.status = status.status;
            }
        }
        Ok(replicas)
    }

    pub async fn list_nodes(&self) -> Result<Vec<pb::Node>, ApiError> {
        Ok(crate::nodes::list_nodes(self.store.as_ref()).await?)
    }

    /// Cordons, drains or uncordons a node (the reconciler's Killing events say which
    /// replicas a drain replaces).
    pub async fn set_node_scheduling(&self, node: &str, unschedulable: bool, drain: bool) -> Result<pb::Node, ApiError> {
        Ok(crate::nodes::set_scheduling(self.store.as_ref(), node, unschedulable, drain).await?)
    }

    /// Forgets a node; the replicas that were bound to it.
    pub async fn delete_node(&self, node: &str, force: bool) -> Result<Vec<String>, ApiError> {
        Ok(crate::nodes::delete_node(self.store.as_ref(), node, force).await?)
    }

    pub async fn list_events(&self, object: Option<&str>) -> Result<Vec<pb::Event>, ApiError> {
        let listing = self.store.list(keys::EVENTS).await?;
        let events: Result<Vec<pb::Event>, ApiError> = Ok(keys::decode_all(&listing.items)?);
        Ok(events?.into_iter().filter(|e| object.is_none_or(|o| e.object == o)).collect())
    }
}
