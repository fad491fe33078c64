//! Backups: every key under a prefix read at one revision, with its revision metadata,
//! kept in a file, and put back into an empty store **with the same revisions**.
//!
//! The revisions matter: a Service's template names the store revision of each Config
//! and Secret it uses (`config_revisions`, part of its hash), so a restore that
//! renumbered them would roll every service that uses one. The embedded store writes
//! the records as they were; etcd (which numbers every write itself) gets filler writes
//! in the gaps so each key lands at its revision (`EtcdStore::restore`).
//!
//! Keys on a lease (the leader's claim, nodes' liveness, events) are kept in the file
//! but not restored: their leases died with the store, and their owners write them again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use orch_api::pb;
use prost::Message;

use super::{KeyValue, Revision, Store, StoreError};

/// The key a restore that is not atomic (etcd's) holds while it runs, under the backup's
/// prefix: a store that has it is half-restored, and a controller refuses to start on it.
pub fn marker_key(prefix: &str) -> String {
    format!("{prefix}restore-in-progress")
}

/// The first line of a backup file; a `pb::StoreSnapshot` follows.
pub const FILE_MAGIC: &[u8] = b"ORCHSNAP1\n";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The store revision every record was read at.
    pub revision: Revision,
    pub taken_unix_ms: u64,
    /// Where it was read ("etcd://…", "embedded:…", "controller …").
    pub source: String,
    /// Every record's key starts with it.
    pub prefix: String,
    /// In key order.
    pub records: Vec<KeyValue>,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub restored: usize,
    /// Keys on a lease, left out.
    pub left_out: usize,
    /// The store's revision afterwards.
    pub revision: Revision,
    /// Writes made only to advance etcd's revision to each key's (0 on the embedded store).
    pub filler_writes: u64,
}

/// Reads every key under `prefix` as one consistent listing.
pub async fn take(store: &dyn Store, prefix: &str, source: &str) -> Result<Snapshot, StoreError> {
    let listing = store.list(prefix).await?;
    Ok(Snapshot { revision: listing.revision, taken_unix_ms: now_unix_ms(), source: source.to_owned(), prefix: prefix.to_owned(), records: listing.items })
}

fn now_unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl Snapshot {
    /// The records a restore writes: those on no lease.
    pub fn restorable(&self) -> impl Iterator<Item = &KeyValue> {
        self.records.iter().filter(|kv| kv.lease == 0)
    }

    /// The restorable records grouped by `mod_revision`, oldest first (several keys
    /// share one when a transaction wrote them together), after checking that `target`
    /// can take them: no key under the prefix yet, and its revision below every
    /// record's (revisions only grow).
    pub fn restore_plan(&self, target: &str, current_revision: Revision, keys_present: usize) -> Result<Vec<(Revision, Vec<&KeyValue>)>, StoreError> {
        let refuse = |reason: String| StoreError::RestoreRefused { target: target.to_owned(), reason };
        if keys_present > 0 {
            return Err(refuse(format!("it already holds {keys_present} keys under {}: restore into an empty store (a new file, or a new etcd)", self.prefix)));
        }
        let mut groups: BTreeMap<Revision, Vec<&KeyValue>> = BTreeMap::new();
        for kv in self.restorable() {
            if !kv.key.starts_with(&self.prefix) {
                return Err(refuse(format!("the backup's key {:?} is not under its prefix {:?}", kv.key, self.prefix)));
            }
            if kv.mod_revision < 1 || kv.mod_revision > self.revision || kv.create_revision > kv.mod_revision {
                return Err(refuse(format!(
                    "the backup's key {:?} has revisions {}/{} that do not fit the backup's revision {}",
                    kv.key, kv.create_revision, kv.mod_revision, self.revision
                )));
            }
            groups.entry(kv.mod_revision).or_default().push(kv);
        }
        if let Some((&oldest, group)) = groups.first_key_value() {
            if oldest <= current_revision {
                return Err(refuse(format!(
                    "it is at revision {current_revision} already, and {:?} must be restored at revision {oldest} (revisions only grow): restore into a new store \
                     (for etcd: a new data directory; `etcdctl snapshot restore` also keeps revisions)",
                    group[0].key
                )));
            }
        }
        Ok(groups.into_iter().collect())
    }

    pub fn to_pb(&self) -> pb::StoreSnapshot {
        let records: Vec<pb::StoreRecord> = self
            .records
            .iter()
            .map(|kv| pb::StoreRecord {
                key: kv.key.clone(),
                value: kv.value.clone(),
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                lease: kv.lease,
            })
            .collect();
        pb::StoreSnapshot {
            revision: self.revision,
            taken_unix_ms: self.taken_unix_ms,
            source: self.source.clone(),
            prefix: self.prefix.clone(),
            record_count: records.len() as u64,
            records,
        }
    }

    /// The snapshot a `pb::StoreSnapshot` (from a file named `origin`, or the wire) holds.
    pub fn from_pb(message: pb::StoreSnapshot, origin: &str) -> Result<Snapshot, StoreError> {
        let bad = |message: String| StoreError::Snapshot { path: origin.to_owned(), message };
        if message.record_count != message.records.len() as u64 {
            return Err(bad(format!("cut short: {} records of the {} it says it holds", message.records.len(), message.record_count)));
        }
        if message.prefix.is_empty() {
            return Err(bad("no key prefix".into()));
        }
        let records = message
            .records
            .into_iter()
            .map(|r| KeyValue { key: r.key, value: r.value, create_revision: r.create_revision, mod_revision: r.mod_revision, lease: r.lease })
            .collect();
        Ok(Snapshot { revision: message.revision, taken_unix_ms: message.taken_unix_ms, source: message.source, prefix: message.prefix, records })
    }

    pub fn encode(&self) -> Vec<u8> {
        let message = self.to_pb();
        let mut bytes = Vec::with_capacity(FILE_MAGIC.len() + message.encoded_len());
        bytes.extend_from_slice(FILE_MAGIC);
        message.encode(&mut bytes).unwrap_or_default();
        bytes
    }

    pub fn decode(bytes: &[u8], origin: &str) -> Result<Snapshot, StoreError> {
        let bad = |message: String| StoreError::Snapshot { path: origin.to_owned(), message };
        let body = bytes.strip_prefix(FILE_MAGIC).ok_or_else(|| bad("not an orch backup (it does not start with ORCHSNAP1)".into()))?;
        let message = pb::StoreSnapshot::decode(body).map_err(|e| bad(format!("damaged: {e}")))?;
        Snapshot::from_pb(message, origin)
    }

    /// Writes the file whole or not at all (a temporary file renamed over it), readable
    /// by its owner only: it holds the cluster's whole state.
    pub fn write_file(&self, path: &Path) -> Result<(), StoreError> {
        let fail = |step: &str, e: std::io::Error| StoreError::Snapshot { path: path.display().to_string(), message: format!("{step}: {e}") };
        let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let mut file = tempfile::Builder::new().prefix(".orch-backup-").tempfile_in(directory).map_err(|e| fail("create a temporary file beside it", e))?;
        file.write_all(&self.encode()).map_err(|e| fail("write", e))?;
        file.as_file().sync_all().map_err(|e| fail("sync", e))?;
        file.persist(path).map_err(|e| fail("rename into place", e.error))?;
        Ok(())
    }

    pub fn read_file(path: &Path) -> Result<Snapshot, StoreError> {
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| StoreError::Snapshot { path: origin.clone(), message: format!("read: {e}") })?;
        Snapshot::decode(&bytes, &origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create: Revision, modified: Revision, lease: i64) -> KeyValue {
        KeyValue { key: key.into(), value: key.as_bytes().to_vec(), create_revision: create, mod_revision: modified, lease }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            revision: 20,
            taken_unix_ms: 1,
            source: "test".into(),
            prefix: "/orch/".into(),
            records: vec![kv("/orch/a", 3, 9, 0), kv("/orch/alive/n1", 12, 12, 77), kv("/orch/b", 9, 9, 0), kv("/orch/c", 4, 5, 0)],
        }
    }

    #[test]
    fn the_plan_groups_keys_by_revision_oldest_first_and_leaves_out_leases() {
        let snapshot = snapshot();
        let plan = snapshot.restore_plan("t", 1, 0).expect("plan");
        let keys: Vec<(Revision, Vec<&str>)> = plan.iter().map(|(r, kvs)| (*r, kvs.iter().map(|kv| kv.key.as_str()).collect())).collect();
        assert_eq!(keys, vec![(5, vec!["/orch/c"]), (9, vec!["/orch/a", "/orch/b"])]);
    }

    #[test]
    fn the_plan_refuses_what_it_cannot_restore_exactly() {
        let snapshot = snapshot();
        let table: [(Revision, usize, &str); 3] = [
            (0, 1, "already holds 1 keys under /orch/"),
            (5, 0, "at revision 5 already, and \"/orch/c\" must be restored at revision 5"),
            (9, 0, "at revision 9"),
        ];
        for (current, present, want) in table {
            let error = snapshot.restore_plan("target-x", current, present).expect_err(want).to_string();
            assert!(error.contains("target-x") && error.contains(want), "{current}/{present}: {error}");
        }
        let mut outside = snapshot.clone();
        outside.records.push(kv("/other/x", 1, 2, 0));
        assert!(outside.restore_plan("t", 0, 0).expect_err("outside").to_string().contains("not under its prefix"));
        let mut future = snapshot.clone();
        future.records.push(kv("/orch/z", 1, 21, 0));
        assert!(future.restore_plan("t", 0, 0).expect_err("future").to_string().contains("do not fit"));
    }

    #[test]
    fn files_round_trip_and_damage_is_named() {
        let snapshot = snapshot();
        let bytes = snapshot.encode();
        assert_eq!(Snapshot::decode(&bytes, "f").expect("decode"), snapshot);
        let cut = Snapshot::decode(&bytes[..bytes.len() - 7], "f.bak").expect_err("cut").to_string();
        assert!(cut.contains("f.bak") && (cut.contains("cut short") || cut.contains("damaged")), "{cut}");
        // Cut between records: the count, encoded last, is gone.
        let whole_records = FILE_MAGIC.len() + snapshot.to_pb().encoded_len() - 2;
        let error = Snapshot::decode(&bytes[..whole_records], "f").expect_err("count").to_string();
        assert!(error.contains("cut short: 4 records of the 0"), "{error}");
        assert!(Snapshot::decode(b"{\"json\": 1}", "g").expect_err("magic").to_string().contains("not an orch backup"));

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.orch");
        snapshot.write_file(&path).expect("write");
        assert_eq!(Snapshot::read_file(&path).expect("read"), snapshot);
        let mode = std::fs::metadata(&path).expect("stat").permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        assert!(Snapshot::read_file(&dir.path().join("none")).expect_err("missing").to_string().contains("none"));
    }
}
