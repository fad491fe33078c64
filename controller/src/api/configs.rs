//! Configs and Secrets in the store: apply (a Secret sealed with the cluster's key
//! first), list (a Secret's keys and sizes only), delete, and the services a change
//! rolls — every service whose template uses the changed one gets a new spec hash over
//! the store revision of each Config and Secret it uses (a deleted and re-created one
//! has a new revision too, so it rolls as well).

use std::collections::BTreeMap;

use orch_api::manifest::{config_refs, object_name, ConfigContent};
use orch_api::pb;
use prost::Message;

use super::services::{config_revisions_of, with_config_revisions, ApiError, ApplyOutcome, ServiceApi};
use crate::keys;
use crate::store::{retry_on_conflict, Expect};

impl ServiceApi {
    /// The record's value for `content`, a Secret sealed under its store key.
    fn stored(&self, key: &str, content: &ConfigContent, generation: u64) -> Result<pb::StoredConfig, ApiError> {
        let data = content.to_wire();
        let sizes = content.data.iter().map(|(k, v)| (k.clone(), v.len() as u64)).collect();
        let mut stored = pb::StoredConfig { name: content.name.clone(), kind: content.kind.into(), generation, data: None, sealed: None, sizes };
        match content.kind {
            pb::ConfigKind::Config => stored.data = Some(data),
            pb::ConfigKind::Secret => stored.sealed = Some(self.secrets_key()?.seal(key, &data.encode_to_vec())?),
        }
        Ok(stored)
    }

    /// A stored Config's or Secret's content (a Secret opened with the cluster's key).
    pub(crate) fn content_of(&self, key: &str, stored: &pb::StoredConfig) -> Result<pb::ConfigData, ApiError> {
        match stored.kind() {
            pb::ConfigKind::Config => Ok(stored.data.clone().unwrap_or_default()),
            pb::ConfigKind::Secret => {
                let sealed = stored.sealed.as_ref().ok_or_else(|| ApiError::BadRequest(format!("{key}: a secret without its sealed data")))?;
                let bytes = self.secrets_key()?.open(key, sealed)?;
                pb::ConfigData::decode(bytes.as_slice()).map_err(|e| ApiError::BadRequest(format!("{key}: {e}")))
            }
        }
    }

    /// What [`apply_config`](Self::apply_config) would do, writing nothing.
    pub(crate) async fn config_outcome(&self, content: &ConfigContent) -> Result<ApplyOutcome, ApiError> {
        let key = keys::config(content.kind, &content.name);
        let Some(kv) = self.store.get(&key).await? else { return Ok(ApplyOutcome::Created) };
        let current: pb::StoredConfig = keys::decode(&key, &kv.value)?;
        Ok(if self.content_of(&key, &current)? == content.to_wire() { ApplyOutcome::Unchanged } else { ApplyOutcome::Configured })
    }

    /// Stores a Config or a Secret; a changed content moves its generation and rolls the
    /// services using it.
    pub(crate) async fn apply_config(&self, content: &ConfigContent) -> Result<ApplyOutcome, ApiError> {
        let key = keys::config(content.kind, &content.name);
        let attempt = || async {
            let Some(kv) = self.store.get(&key).await? else {
                self.store.put(&key, keys::encode(&self.stored(&key, content, 1)?), Expect::Absent).await?;
                return Ok(ApplyOutcome::Created);
            };
            let current: pb::StoredConfig = keys::decode(&key, &kv.value)?;
            if self.content_of(&key, &current)? == content.to_wire() {
                return Ok(ApplyOutcome::Unchanged);
            }
            let stored = self.stored(&key, content, current.generation + 1)?;
            self.store.put(&key, keys::encode(&stored), Expect::Revision(kv.mod_revision)).await?;
            Ok::<_, ApiError>(ApplyOutcome::Configured)
        };
        let outcome = retry_on_conflict(attempt).await?.ok_or(ApiError::Contended(key.clone()))?;
        self.reroll(content.kind, &content.name).await?;
        Ok(outcome)
    }

    /// Every service whose template uses the Config or Secret gets a template over its
    /// Configs' current revisions (its spec untouched, under compare-and-swap). The
    /// reconciler does the same for any service it finds behind (a controller that
    /// stopped between the two writes), so this is for promptness only.
    async fn reroll(&self, kind: pb::ConfigKind, name: &str) -> Result<(), ApiError> {
        for service in self.list().await? {
            if service.spec.as_ref().is_some_and(|spec| config_refs(spec).contains(&(kind, name.to_owned()))) {
                self.refresh_config_revisions(&service.name).await?;
            }
        }
        Ok(())
    }

    async fn refresh_config_revisions(&self, name: &str) -> Result<(), ApiError> {
        let key = keys::service(name);
        let attempt = || async {
            // Deleted meanwhile: nothing to roll.
            let Some(kv) = self.store.get(&key).await? else { return Ok(()) };
            let service: pb::Service = keys::decode(&key, &kv.value)?;
            let revisions = self.config_revisions(service.spec.as_ref()).await?;
            if let Some(updated) = with_config_revisions(&service, &revisions) {
                self.store.put(&key, keys::encode(&updated), Expect::Revision(kv.mod_revision)).await?;
            }
            Ok::<_, ApiError>(())
        };
        retry_on_conflict(attempt).await?.ok_or(ApiError::Contended(key.clone()))
    }

    /// The store revision of each Config and Secret a template uses (0: not there yet),
    /// as `config/NAME` → revision.
    pub(crate) async fn config_revisions(&self, spec: Option<&pb::ServiceSpec>) -> Result<BTreeMap<String, u64>, ApiError> {
        let mut found = BTreeMap::new();
        for (kind, name) in spec.map(config_refs).unwrap_or_default() {
            let revision = self.store.get(&keys::config(kind, &name)).await?.map_or(0, |kv| u64::try_from(kv.mod_revision).unwrap_or(0));
            found.insert((kind, name), revision);
        }
        Ok(spec.map(|spec| config_revisions_of(spec, |kind, name| found.get(&(kind, name.to_owned())).copied().unwrap_or(0))).unwrap_or_default())
    }

    /// Configs or Secrets with the services using each; a Secret's values stay out.
    pub async fn list_configs(&self, kind: pb::ConfigKind) -> Result<Vec<pb::ConfigInfo>, ApiError> {
        let listing = self.store.list(keys::configs_of(kind)).await?;
        let services = self.list().await?;
        let mut infos = Vec::new();
        for kv in &listing.items {
            let stored: pb::StoredConfig = keys::decode(&kv.key, &kv.value)?;
            let used_by = services
                .iter()
                .filter(|s| s.spec.as_ref().is_some_and(|spec| config_refs(spec).contains(&(kind, stored.name.clone()))))
                .map(|s| s.name.clone())
                .collect();
            infos.push(pb::ConfigInfo {
                name: stored.name.clone(),
                kind: kind.into(),
                generation: stored.generation,
                revision: u64::try_from(kv.mod_revision).unwrap_or(0),
                sizes: stored.sizes.clone(),
                data: if kind == pb::ConfigKind::Config { stored.data.clone() } else { None },
                used_by,
            });
        }
        Ok(infos)
    }

    pub async fn delete_config(&self, kind: pb::ConfigKind, name: &str) -> Result<(), ApiError> {
        let key = keys::config(kind, name);
        match self.store.delete(&key, Expect::Any).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::ConfigNotFound(object_name(kind, name))),
        }
    }
}
