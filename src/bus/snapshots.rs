//! Snapshots of a node's store for new nodes (cluster mode): the JetStream Object Store bucket
//! `scimlog_snapshots`, one object per snapshot, named by its log position, holding a tar of a
//! RocksDB checkpoint, with the position and the hash of the event there as metadata. A new
//! node unpacks the newest usable one and follows the log from the position after it.

use std::collections::HashMap;

use async_nats::jetstream::{self, object_store};
use futures::StreamExt;

use super::{nats, BusError};

pub const SNAPSHOTS_BUCKET: &str = "scimlog_snapshots";

/// What a snapshot is of: the log up to `position`, whose event has hash `hash` (hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    pub position: u64,
    pub hash: String,
    pub size: usize,
}

pub struct Snapshots {
    store: object_store::ObjectStore,
}

impl Snapshots {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Snapshots, BusError> {
        let store = match js.get_object_store(SNAPSHOTS_BUCKET).await {
            Ok(s) => s,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: SNAPSHOTS_BUCKET.into(),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(nats)?,
        };
        Ok(Snapshots { store })
    }

    /// Stores the tar in `file` as the snapshot at `position` (its event's hash `hash`).
    pub async fn put(&self, position: u64, hash: &str, file: &mut tokio::fs::File) -> Result<SnapshotInfo, BusError> {
        let name = format!("snapshot-{position:020}");
        let metadata =
            HashMap::from([("position".to_string(), position.to_string()), ("hash".to_string(), hash.into())]);
        let meta = object_store::ObjectMetadata { name: name.clone(), metadata, ..Default::default() };
        let info = self.store.put(meta, file).await.map_err(nats)?;
        Ok(SnapshotInfo { name, position, hash: hash.into(), size: info.size })
    }

    /// Every snapshot, oldest first.
    pub async fn list(&self) -> Result<Vec<SnapshotInfo>, BusError> {
        let mut list = self.store.list().await.map_err(nats)?;
        let mut out = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(nats)?;
            if info.deleted {
                continue;
            }
            let position = info.metadata.get("position").and_then(|p| p.parse().ok());
            let hash = info.metadata.get("hash").cloned();
            if let (Some(position), Some(hash)) = (position, hash) {
                out.push(SnapshotInfo { name: info.name.clone(), position, hash, size: info.size });
            }
        }
        out.sort_by_key(|s| s.position);
        Ok(out)
    }

    /// Writes the snapshot's tar to `out`.
    pub async fn fetch(&self, name: &str, out: &mut tokio::fs::File) -> Result<(), BusError> {
        let mut object = self.store.get(name).await.map_err(nats)?;
        tokio::io::copy(&mut object, out).await.map_err(nats)?;
        Ok(())
    }

    pub async fn delete(&self, name: &str) -> Result<(), BusError> {
        self.store.delete(name).await.map_err(nats)
    }
}
