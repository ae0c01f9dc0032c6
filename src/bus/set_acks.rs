//! What the SET streams' receivers acknowledged, in cluster mode: KV bucket `scimlog_set_acks`,
//! one entry per stream (`<tenant>.<name>`), so that a node that takes the lead goes on where
//! the last leader's receivers were, never sending again what they acknowledged. Only the leader
//! writes (polls are forwarded to it; only it pushes), each write conditional on the revision it
//! read: a node that lost the lead and still writes is refused, not obeyed.
//!
//! Reads go to the stream's leader (no Direct Get), as for the keys: a lagging replica could
//! answer with an older entry, and what it says was acknowledged would be sent again.

use async_nats::jetstream::{self, kv, stream};

use super::{nats, BusError};

pub const SET_ACKS_BUCKET: &str = "scimlog_set_acks";

pub struct ReplicatedAcks {
    kv: kv::Store,
}

impl ReplicatedAcks {
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<ReplicatedAcks, BusError> {
        let config = stream::Config {
            name: format!("KV_{SET_ACKS_BUCKET}"),
            subjects: vec![format!("$KV.{SET_ACKS_BUCKET}.>")],
            max_messages_per_subject: 1,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: false,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        js.get_or_create_stream(config).await.map_err(nats)?;
        let kv = js.get_key_value(SET_ACKS_BUCKET).await.map_err(nats)?;
        Ok(ReplicatedAcks { kv })
    }

    /// The entry of `key` and its revision (0: none yet).
    pub async fn load(&self, key: &str) -> Result<(Option<Vec<u8>>, u64), BusError> {
        match self.kv.entry(key).await.map_err(nats)? {
            Some(e) if matches!(e.operation, kv::Operation::Put) => Ok((Some(e.value.to_vec()), e.revision)),
            Some(e) => Ok((None, e.revision)),
            None => Ok((None, 0)),
        }
    }

    /// Replaces the entry of `key`, if it is still at `revision` (0: if there is none); returns
    /// once the bucket's replicas have it.
    pub async fn save(&self, key: &str, value: Vec<u8>, revision: u64) -> Result<(), BusError> {
        let done = match revision {
            0 => self.kv.create(key, value.into()).await.map(|_| ()).map_err(nats),
            r => self.kv.update(key, value.into(), r).await.map(|_| ()).map_err(nats),
        };
        done.map_err(|e| BusError::Nats(format!("the acknowledgements of SET stream {key} changed meanwhile: {e}")))
    }
}
