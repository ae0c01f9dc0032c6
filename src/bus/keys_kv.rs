//! The replicated copy of the personal-data keys (cluster mode): KV bucket `scimlog_keys`, one
//! entry per subject, holding the data key exactly as the `keys` family does (wrapped by the
//! master key, which every node of a cluster shares). The leader puts a new key before the
//! first record sealed with it is appended; a node applying that record reads it from here.
//! An erasure purges the entry, so that no copy of the key outlives it (the log stream keeps
//! only sealed values, which the key's loss makes unreadable).
//!
//! Reads go to the stream's leader (`STREAM.MSG.GET`), never a Direct Get a lagging replica of
//! the bucket could answer with "no such key": a key taken for absent reads as `[erased]`.

use async_nats::jetstream::{self, kv, stream};

use super::{nats, BusError};

pub const KEYS_BUCKET: &str = "scimlog_keys";

pub struct ReplicatedKeys {
    js: jetstream::Context,
    kv: kv::Store,
    stream: stream::Stream,
}

/// A data key's id (`keys::data_key_id`, bytes with NULs) as a KV key: hex, which KV accepts.
pub fn kv_key(id: &[u8]) -> String {
    hex::encode(id)
}

impl ReplicatedKeys {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<ReplicatedKeys, BusError> {
        // The bucket's stream, made here rather than by `create_key_value`, which denies message
        // deletes: an erasure must overwrite the key's bytes, not only unlink them. Direct gets
        // are off, so every read is the stream leader's.
        let config = stream::Config {
            name: format!("KV_{KEYS_BUCKET}"),
            subjects: vec![format!("$KV.{KEYS_BUCKET}.>")],
            max_messages_per_subject: 1,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: false,
            allow_direct: false,
            // A batch's new keys go in as one atomic batch: one replicated write, not one each.
            allow_atomic_publish: true,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let stream = js.get_or_create_stream(config).await.map_err(nats)?;
        let kv = js.get_key_value(KEYS_BUCKET).await.map_err(nats)?;
        Ok(ReplicatedKeys { js: js.clone(), kv, stream })
    }

    /// Stores a wrapped data key; returns once the bucket's replicas acknowledged it.
    pub async fn put(&self, id: &[u8], wrapped: Vec<u8>) -> Result<(), BusError> {
        self.kv.put(kv_key(id), wrapped.into()).await.map_err(nats)?;
        Ok(())
    }

    /// Stores several wrapped data keys as one all-or-nothing batch (nats-server 2.12+, which
    /// cluster mode requires); returns once the bucket's replicas acknowledged the batch.
    pub async fn put_all(&self, keys: &[(Vec<u8>, Vec<u8>)]) -> Result<(), BusError> {
        use async_nats::header;
        for chunk in keys.chunks(super::log_stream::MAX_APPEND) {
            let Some(((last_id, last), body)) = chunk.split_last() else { continue };
            if body.is_empty() {
                self.put(last_id, last.clone()).await?;
                continue;
            }
            let batch = uuid::Uuid::now_v7().simple().to_string();
            let headers = |i: usize| {
                let mut h = async_nats::HeaderMap::new();
                h.insert(header::NATS_BATCH_ID, batch.as_str());
                h.insert(header::NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
                h
            };
            let subject = |id: &[u8]| format!("$KV.{KEYS_BUCKET}.{}", kv_key(id));
            let client = self.js.client();
            for (i, (id, wrapped)) in body.iter().enumerate() {
                client.publish_with_headers(subject(id), headers(i), wrapped.clone().into()).await.map_err(nats)?;
            }
            let mut commit = headers(body.len());
            commit.insert(header::NATS_BATCH_COMMIT, header::NATS_BATCH_COMMIT_FINAL);
            let publish = jetstream::message::PublishMessage::build().payload(last.clone().into()).headers(commit);
            self.js.send_publish(subject(last_id), publish).await.map_err(nats)?.await.map_err(nats)?;
        }
        Ok(())
    }

    /// The wrapped data key, asked of the bucket's leader: `None` only when there is none (never
    /// put, or purged by an erasure). Any failure to ask is an error, never "none".
    pub async fn get(&self, id: &[u8]) -> Result<Option<Vec<u8>>, BusError> {
        let subject = format!("$KV.{KEYS_BUCKET}.{}", kv_key(id));
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                // A delete or purge marker: the key is gone.
                let marker = m.headers.get("KV-Operation").is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
                Ok((!marker).then(|| m.payload.to_vec()))
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats(e)),
        }
    }

    /// Removes every copy of the key (an erasure): its message is erased first (a message
    /// delete overwrites the stored bytes on every replica; a purge alone only unlinks them),
    /// then a purge marker says "gone". Purging an absent key is not an error.
    pub async fn purge(&self, id: &[u8]) -> Result<(), BusError> {
        let subject = format!("$KV.{KEYS_BUCKET}.{}", kv_key(id));
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) if m.headers.get("KV-Operation").is_none() => {
                self.stream.delete_message(m.sequence).await.map_err(nats)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(nats(e)),
        }
        self.kv.purge(kv_key(id)).await.map_err(nats)
    }
}
