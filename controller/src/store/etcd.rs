//! The etcd backend: `etcd-client` against a real etcd server. A compare-and-swap is a
//! `Txn` comparing the key's `mod_revision` (or `version == 0` for "absent").

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};

use super::types::TxnOp as StoreTxnOp;

use futures::{StreamExt, TryStreamExt};

use super::{Expect, Fence, KeyValue, LeaseId, Listing, RestoreSummary, Revision, Snapshot, Store, StoreError, WatchEvent, WatchStream};

/// How long to wait for an etcd endpoint to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one etcd request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for some member to answer while every one is unavailable
/// (an etcd leader election), and how often it asks again meanwhile.
const ELECTION_PATIENCE: Duration = Duration::from_secs(3);
const ELECTION_RETRY: Duration = Duration::from_millis(100);
/// Where a restore's filler writes go (under the backup's prefix; deleted at the end).
const RESTORE_FILLER: &str = "restore-filler";
/// Filler writes in flight at once.
const FILLER_CONCURRENCY: usize = 64;
/// Filler revisions after which their history is compacted (etcd keeps every revision
/// until then: millions of fillers would fill its space quota).
const FILLER_COMPACTION: i64 = 100_000;

#[derive(Clone)]
pub struct EtcdStore {
    members: Arc<Members>,
    endpoints: String,
}

/// One client per etcd member, and the member requests go to. etcd-client's own
/// balancing over several endpoints keeps sending requests to a member that died (each
/// fails with a connect error), so the store picks the member itself: it stays with one
/// while it answers, and a request that finds it unreachable (or without a leader) goes
/// to the next at once — losing one member of three goes unnoticed.
struct Members {
    clients: Vec<Client>,
    current: AtomicUsize,
}

/// What a request may be sent again for, to another member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads (and keep-alives, watches): whenever the member could not serve it — down,
    /// unreachable, cut off from its cluster's leader, too slow.
    Read,
    /// Writes: only when the member surely never took it (no connection, no leader to
    /// propose to). A write whose outcome is unknown (a timeout, a leader change, a
    /// connection lost after sending) is not sent again: a compare-and-swap would then
    /// fail against its own first landing and be reported as lost (etcd clientv3's
    /// rule for mutating requests).
    Write,
}

/// Whether `error` lets `request` go to another member.
fn member_unavailable(error: &etcd_client::Error, retry: Retry) -> bool {
    let never_sent =
        |message: &str| ["tcp connect error", "error trying to connect", "Connection refused", "etcdserver: no leader"].iter().any(|m| message.contains(m));
    match error {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::IoError(_) => retry == Retry::Read,
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            match retry {
                Retry::Write => status.code() == tonic::Code::Unavailable && never_sent(message),
                Retry::Read => match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => true,
                    tonic::Code::Unknown => message.contains("h2 protocol error") || message.contains("transport"),
                    _ => false,
                },
            }
        }
        _ => false,
    }
}

impl Members {
    /// Runs `request` on the current member, and on the next ones while a member is
    /// unavailable; the first that answers becomes current. When every member is
    /// unavailable (etcd electing a new leader after its leader died: a second or two)
    /// it goes round again every 100 ms for up to [`ELECTION_PATIENCE`], so that a
    /// caller sees an election only when it lasts (no quorum).
    async fn call<T, F, Fut>(&self, retry: Retry, request: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = tokio::time::Instant::now();
        let count = self.clients.len();
        loop {
            let first = self.current.load(Ordering::Relaxed);
            let mut last = None;
            for step in 0..count {
                let index = (first + step) % count;
                match request(self.clients[index].clone()).await {
                    Ok(answer) => {
                        if step > 0 {
                            self.current.store(index, Ordering::Relaxed);
                        }
                        return Ok(answer);
                    }
                    Err(error) if member_unavailable(&error, retry) => last = Some(error),
                    Err(error) => return Err(error),
                }
            }
            let last = last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd endpoint".into()));
            if started.elapsed() + ELECTION_RETRY > ELECTION_PATIENCE {
                return Err(last);
            }
            tokio::time::sleep(ELECTION_RETRY).await;
        }
    }

    /// A transaction, as a write (sent again only when surely never taken).
    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        self.call(Retry::Write, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// The current member's client (restores: one writer, nobody else).
    fn current(&self) -> Client {
        self.clients[self.current.load(Ordering::Relaxed) % self.clients.len()].clone()
    }
}

impl EtcdStore {
    /// Connects and checks that etcd answers, so a wrong address fails here, by name.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore, StoreError> {
        Self::connect_with(endpoints, None).await
    }

    /// As [`EtcdStore::connect`], over TLS when `tls` is given (https endpoints). Requests
    /// move off a member that fails to the next ([`Members`]), so a cluster that loses a
    /// member (its quorum kept) goes on answering.
    pub async fn connect_with(endpoints: &[String], tls: Option<&super::EtcdTls>) -> Result<EtcdStore, StoreError> {
        let named = endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            // A member cut off from its cluster's leader refuses (and ends watches)
            // rather than serve stale data: the request moves to another member.
            .with_require_leader(true);
        if let Some(tls) = tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let mut clients = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            // Connections are made on first use: a member that is down now is no error.
            clients.push(Client::connect([endpoint], Some(options.clone())).await.map_err(|error| StoreError::Etcd { endpoints: named.clone(), error })?);
        }
        if clients.is_empty() {
            return Err(StoreError::InvalidAddress { address: named, reason: "no etcd endpoint".into() });
        }
        let store = EtcdStore { members: Arc::new(Members { clients, current: AtomicUsize::new(0) }), endpoints: named };
        store.members.call(Retry::Read, |mut c| async move { c.status().await }).await.map_err(|e| store.fail(e))?;
        Ok(store)
    }

    /// Puts a backup into this etcd, which must hold no key under the backup's prefix and
    /// be at a revision below every restored key's. etcd numbers every write itself, so
    /// each key (or group of keys written together) is written when etcd's next revision
    /// is the one it had: filler writes to one scratch key advance the revision across
    /// the gaps (their history compacted as it goes). Nobody else may write meanwhile.
    ///
    /// Not atomic: the first write also sets `<prefix>restore-in-progress`
    /// ([`super::snapshot::marker_key`]), the last one removes it with the scratch key,
    /// and a controller refuses to start on a store that still has it. An error names
    /// how far it got.
    pub async fn restore(&self, snapshot: &Snapshot) -> Result<RestoreSummary, StoreError> {
        let mut client = self.members.current();
        let existing = client.get(snapshot.prefix.as_str(), Some(GetOptions::new().with_prefix().with_count_only())).await.map_err(|e| self.fail(e))?;
        let mut revision = header_revision(existing.header());
        let target = format!("etcd at {}", self.endpoints);
        let plan = snapshot.restore_plan(&target, revision, usize::try_from(existing.count()).unwrap_or(usize::MAX))?;
        let total: usize = plan.iter().map(|(_, group)| group.len()).sum();
        let filler = format!("{}{RESTORE_FILLER}", snapshot.prefix);
        let marker = super::snapshot::marker_key(&snapshot.prefix);
        let (mut filler_writes, mut restored, mut compacted_at) = (0u64, 0usize, revision);
        let partial = |restored: usize, reason: String| StoreError::RestoreRefused {
            target: target.clone(),
            reason: format!("{reason}; {restored} of {total} keys were written: this etcd must be wiped (a new data directory) and the restore run again"),
        };
        for (wanted, group) in &plan {
            let gap = wanted - 1 - revision;
            if gap > 0 {
                futures::stream::iter(0..gap)
                    .map(|_| {
                        let (mut client, key) = (self.members.current(), filler.clone());
                        async move { client.put(key, Vec::new(), None).await }
                    })
                    .buffer_unordered(FILLER_CONCURRENCY)
                    .try_for_each(|_| async { Ok(()) })
                    .await
                    .map_err(|e| partial(restored, format!("a filler write failed: {e}")))?;
                filler_writes += gap.unsigned_abs();
                if wanted - 1 - compacted_at >= FILLER_COMPACTION {
                    // The scratch key's history is all that goes: every restored key keeps
                    // its latest (only) revision.
                    client.compact(wanted - 1, None).await.map_err(|e| partial(restored, format!("compacting the fillers' history: {e}")))?;
                    compacted_at = wanted - 1;
                }
            }
            let mut puts: Vec<TxnOp> = group.iter().map(|kv| TxnOp::put(kv.key.as_str(), kv.value.clone(), None)).collect();
            if restored == 0 {
                puts.push(TxnOp::put(marker.as_str(), Vec::new(), None));
            }
            let response = client.txn(Txn::new().and_then(puts)).await.map_err(|e| partial(restored, format!("writing {:?}: {e}", group[0].key)))?;
            revision = header_revision(response.header());
            if revision != *wanted {
                return Err(partial(
                    restored,
                    format!("{:?} landed at revision {revision} instead of {wanted}: something else writes to this etcd; stop it", group[0].key),
                ));
            }
            restored += group.len();
        }
        let finish = Txn::new().and_then([TxnOp::delete(filler.as_str(), None::<DeleteOptions>), TxnOp::delete(marker.as_str(), None::<DeleteOptions>)]);
        revision = header_revision(client.txn(finish).await.map_err(|e| partial(restored, format!("removing {marker}: {e}")))?.header());
        Ok(RestoreSummary { restored, left_out: snapshot.records.len() - restored, revision, filler_writes })
    }

    fn fail(&self, error: etcd_client::Error) -> StoreError {
        StoreError::Etcd { endpoints: self.endpoints.clone(), error }
    }

    fn protocol(&self, message: impl Into<String>) -> StoreError {
        StoreError::EtcdProtocol { endpoints: self.endpoints.clone(), message: message.into() }
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        Ok(KeyValue {
            key: kv.key_str().map_err(|e| self.protocol(format!("non-UTF-8 key: {e}")))?.to_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        })
    }

    fn compare(key: &str, expect: Expect) -> Option<Compare> {
        match expect {
            Expect::Any => None,
            Expect::Absent => Some(Compare::version(key, CompareOp::Equal, 0)),
            Expect::Revision(r) => Some(Compare::mod_revision(key, CompareOp::Equal, r)),
        }
    }

    /// The conflict error for a failed compare, from the `or_else` get's answer.
    fn conflict(&self, key: &str, expect: Expect, responses: Vec<TxnOpResponse>) -> StoreError {
        let found = responses.into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        });
        StoreError::Conflict { key: key.to_owned(), expected: expect, found }
    }
}

/// The CA (and the client's identity) files as etcd-client's TLS options; an error names
/// the file that cannot be read.
fn tls_options(tls: &super::EtcdTls) -> Result<etcd_client::TlsOptions, StoreError> {
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| StoreError::EtcdTls { path: path.display().to_string(), message: e.to_string() });
    // A member that accepts the connection but never finishes the handshake is given up.
    let mut options = etcd_client::TlsOptions::new().timeout(CONNECT_TIMEOUT).ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
    if let Some((cert, key)) = &tls.identity {
        options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, etcd_client::ResponseHeader::revision)
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self.members.call(Retry::Read, |mut c| async move { c.get(key, None).await }).await.map_err(|e| self.fail(e))?;
        response.kvs().first().map(|kv| self.convert(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let response = self
            .members
            .call(Retry::Read, |mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await
            .map_err(|e| self.fail(e))?;
        let items = response.kvs().iter().map(|kv| self.convert(kv)).collect::<Result<_, _>>()?;
        Ok(Listing { items, revision: header_revision(response.header()) })
    }

    async fn put_with_lease(&self, key: &str, value: Vec<u8>, expect: Expect, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        let result = match Self::compare(key, expect) {
            None => self
                .members
                .call(Retry::Write, |mut c| {
                    let (value, options) = (value.clone(), options.clone());
                    async move { c.put(key, value, options).await }
                })
                .await
                .map(|r| header_revision(r.header())),
            Some(compare) => {
                let txn = Txn::new().when([compare]).and_then([TxnOp::put(key, value, options)]).or_else([TxnOp::get(key, None)]);
                match self.members.txn(txn).await {
                    Ok(r) if r.succeeded() => Ok(header_revision(r.header())),
                    Ok(r) => return Err(self.conflict(key, expect, r.op_responses())),
                    Err(e) => Err(e),
                }
            }
        };
        result.map_err(|e| match lease {
            Some(id) if e.to_string().contains("requested lease not found") => StoreError::LeaseNotFound(id),
            _ => self.fail(e),
        })
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<Option<Revision>, StoreError> {
        match Self::compare(key, expect) {
            None => {
                let r = self.members.call(Retry::Write, |mut c| async move { c.delete(key, None).await }).await.map_err(|e| self.fail(e))?;
                Ok((r.deleted() > 0).then(|| header_revision(r.header())))
            }
            Some(compare) => {
                let txn = Txn::new().when([compare]).and_then([TxnOp::delete(key, None::<DeleteOptions>)]).or_else([TxnOp::get(key, None)]);
                let r = self.members.txn(txn).await.map_err(|e| self.fail(e))?;
                if !r.succeeded() {
                    return Err(self.conflict(key, expect, r.op_responses()));
                }
                let deleted = r.op_responses().into_iter().any(|op| matches!(op, TxnOpResponse::Delete(d) if d.deleted() > 0));
                Ok(deleted.then(|| header_revision(r.header())))
            }
        }
    }

    async fn txn_fenced(&self, fence: Option<&Fence>, ops: Vec<StoreTxnOp>) -> Result<Vec<Option<Revision>>, StoreError> {
        super::error::check_txn(&ops)?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let compared: Vec<(String, Expect)> = ops
            .iter()
            .filter_map(|op| match op {
                StoreTxnOp::Put { key, expect, .. } | StoreTxnOp::Delete { key, expect } => (*expect != Expect::Any).then(|| (key.clone(), *expect)),
            })
            .collect();
        let lease = ops.iter().find_map(|op| match op {
            StoreTxnOp::Put { lease, .. } => *lease,
            StoreTxnOp::Delete { .. } => None,
        });
        let mut compares: Vec<Compare> = compared.iter().filter_map(|(key, expect)| Self::compare(key, *expect)).collect();
        if let Some(fence) = fence {
            // A missing key's create_revision compares as 0: no leader is no fence either.
            compares.push(Compare::create_revision(fence.key.as_str(), CompareOp::Equal, fence.create_revision));
        }
        let writes: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                StoreTxnOp::Put { key, value, lease, .. } => TxnOp::put(key.as_str(), value.clone(), lease.map(|id| PutOptions::new().with_lease(id))),
                StoreTxnOp::Delete { key, .. } => TxnOp::delete(key.as_str(), None::<DeleteOptions>),
            })
            .collect();
        let mut reads: Vec<TxnOp> = compared.iter().map(|(key, _)| TxnOp::get(key.as_str(), None)).collect();
        if let Some(fence) = fence {
            reads.push(TxnOp::get(fence.key.as_str(), None));
        }
        let txn = Txn::new().when(compares).and_then(writes).or_else(reads);
        let response = match self.members.txn(txn).await {
            Ok(response) => response,
            Err(e) => {
                return Err(match lease {
                    Some(id) if e.to_string().contains("requested lease not found") => StoreError::LeaseNotFound(id),
                    _ => self.fail(e),
                })
            }
        };
        if !response.succeeded() {
            // The fence first (the last read), then the first compare that failed, from
            // the reads of every compared key.
            let read: Vec<Option<(Revision, Revision)>> = response
                .op_responses()
                .into_iter()
                .map(|r| match r {
                    TxnOpResponse::Get(get) => get.kvs().first().map(|kv| (kv.create_revision(), kv.mod_revision())),
                    _ => None,
                })
                .collect();
            if let Some(fence) = fence {
                if read.last().copied().flatten().map(|(created, _)| created) != Some(fence.create_revision) {
                    return Err(StoreError::Fenced { key: fence.key.clone(), create_revision: fence.create_revision });
                }
            }
            let found = read.into_iter().map(|kv| kv.map(|(_, modified)| modified));
            for ((key, expect), found) in compared.iter().zip(found) {
                if !expect.holds(found) {
                    return Err(StoreError::Conflict { key: key.clone(), expected: *expect, found });
                }
            }
            // Not reached: the reads run at the compares' revision. Name the first key.
            let (key, expected) = compared.first().cloned().unwrap_or((String::new(), Expect::Any));
            return Err(StoreError::Conflict { key, expected, found: None });
        }
        let revision = header_revision(response.header());
        Ok(response
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Delete(d) => (d.deleted() > 0).then_some(revision),
                _ => Some(revision),
            })
            .collect())
    }

    async fn watch(&self, prefix: &str, from_revision: Revision) -> Result<WatchStream, StoreError> {
        let mut options = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            options = options.with_start_revision(from_revision);
        }
        let mut etcd_stream = self
            .members
            .call(Retry::Read, |mut c| {
                let options = options.clone();
                async move { c.watch(prefix, Some(options)).await }
            })
            .await
            .map_err(|e| self.fail(e))?;
        let (sender, stream) = WatchStream::channel();
        let store = self.clone();
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = sender.closed() => return,
                    message = etcd_stream.message() => message,
                };
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = sender.send(Err(store.fail(e))).await;
                        return;
                    }
                };
                if response.canceled() {
                    let error = if response.compact_revision() > 0 {
                        StoreError::Compacted { prefix: prefix.clone(), requested: from_revision, oldest: response.compact_revision() }
                    } else {
                        store.protocol(format!("watch on {prefix} cancelled: {}", response.cancel_reason()))
                    };
                    let _ = sender.send(Err(error)).await;
                    return;
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let converted = match event.event_type() {
                        EventType::Put => store.convert(kv).map(WatchEvent::Put),
                        EventType::Delete => store.convert(kv).map(|kv| WatchEvent::Delete { key: kv.key, revision: kv.mod_revision }),
                    };
                    if sender.send(converted).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(stream)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX).max(1);
        let response = self.members.call(Retry::Write, |mut c| async move { c.lease_grant(seconds, None).await }).await.map_err(|e| self.fail(e))?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let not_found = |e: etcd_client::Error| match e {
            etcd_client::Error::LeaseKeepAliveError(_) => StoreError::LeaseNotFound(lease),
            other => self.fail(other),
        };
        let answer = self
            .members
            .call(Retry::Read, |mut c| async move {
                let (mut keeper, mut responses) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                responses.message().await
            })
            .await
            .map_err(not_found)?;
        match answer {
            Some(response) if response.ttl() > 0 => Ok(()),
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self.members.call(Retry::Read, |mut c| async move { c.lease_revoke(lease).await }).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("requested lease not found") => Err(StoreError::LeaseNotFound(lease)),
            Err(e) => Err(self.fail(e)),
        }
    }
}
