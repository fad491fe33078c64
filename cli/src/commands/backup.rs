//! `orch backup FILE`: every orch key of the store, read at one revision through the
//! controller (so it works while the embedded store is in use), written as the file
//! `orch-controller restore` reads.

use std::path::PathBuf;

use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use orch_controller::store::Snapshot;
use tonic::transport::Channel;

use crate::client::explain;

/// The largest backup taken through the API (a small cluster's store is a few MiB).
const MAX_BACKUP_BYTES: usize = 1 << 30;

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The file to write (mode 0600; replaced whole, or left as it was).
    pub file: PathBuf,
}

pub async fn backup(api: ApiClient<Channel>, args: &BackupArgs) -> anyhow::Result<()> {
    let mut api = api.max_decoding_message_size(MAX_BACKUP_BYTES);
    let message = api.backup(pb::BackupRequest {}).await.map_err(explain)?.into_inner();
    let snapshot = Snapshot::from_pb(message, "the controller's answer")?;
    snapshot.write_file(&args.file)?;
    println!("{}: {} keys at revision {}", args.file.display(), snapshot.records.len(), snapshot.revision);
    Ok(())
}
