//! What a stream delivers next, for poll (`http/sets.rs`) and push (`push.rs`) alike: record
//! the acknowledgements a receiver gives (all, or none when one names no SET of the stream),
//! then collect the oldest unacknowledged SETs from the watermark on, signed, in log order.

use serde_json::{json, Map, Value};

use super::streams::{self, Acknowledged, StreamId};
use super::Signer;
use crate::log::keys::KeyRing;
use crate::log::{LogError, Store};

/// Where SETs come from: the log, the keys that open it, the signing key, the issuer, and how
/// many events one call may read (`--max-scan`).
pub struct Source<'a> {
    pub store: &'a Store,
    pub keys: &'a KeyRing,
    pub signer: &'a Signer,
    /// The SCIM base URL (`iss`).
    pub iss: &'a str,
    pub max_scan: usize,
}

/// SETs by `jti` in log order, whether more wait, and the head read up to.
pub struct Batch {
    pub sets: Map<String, Value>,
    pub more: bool,
    pub head: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// An acknowledgement names no SET of the stream (nothing was acknowledged).
    #[error("{0}")]
    UnknownJti(String),
    #[error(transparent)]
    Log(#[from] LogError),
    /// An event could not be read or a SET signed (logged where it happened).
    #[error("{0}")]
    Internal(&'static str),
}

/// The audience of a stream's SETs: `<server>/sets/streams/<name>`.
pub fn audience(iss: &str, id: &StreamId) -> String {
    format!("{}/sets/streams/{}", iss.trim_end_matches("/scim/v2"), id.name)
}

impl Source<'_> {
    /// Records `acks`, then collects up to `max` unacknowledged SETs from the watermark on
    /// (reading at most `max_scan` events), moving the watermark past what needs no delivery.
    pub fn next(&self, id: &StreamId, acks: &[String], max: usize) -> Result<Batch, DeliverError> {
        let store = self.store.outbound();
        let before = streams::load(&store, id)?;
        let mut next = Acknowledged { watermark: before.watermark, above: before.above.clone() };
        for jti in acks {
            let position = self.acknowledged_position(id, jti)?;
            if position > next.watermark {
                next.above.insert(position);
            }
        }
        let head = self.store.head()?.position;
        let aud = audience(self.iss, id);
        let (mut sets, mut more, mut pending, mut at, mut scanned) = (Map::new(), false, false, next.watermark, 0usize);
        'scan: while at < head && scanned < self.max_scan {
            for (position, sealed) in self.store.events_from(at + 1, 256)? {
                if scanned == self.max_scan {
                    break 'scan;
                }
                scanned += 1;
                at = position;
                let e = sealed.decode(self.keys).map_err(|e| {
                    tracing::error!(position, error = %e, "an event cannot be decoded for a SET stream");
                    DeliverError::Internal("an event cannot be read")
                })?;
                let ours = e.tenant == id.tenant && super::has_set(&e);
                if !ours || next.above.contains(&position) {
                    // Nothing unacknowledged before it: the watermark moves past it.
                    if !pending {
                        next.watermark = position;
                        next.above.remove(&position);
                    }
                    continue;
                }
                pending = true;
                if sets.len() == max {
                    more = true;
                    break 'scan;
                }
                let hash = sealed.hash_hex();
                let claims = super::claims(&e, &hash, self.iss, &aud).expect("has_set said it has one");
                let jws = self.signer.sign(&claims).map_err(|e| {
                    tracing::error!(error = %e, "a SET cannot be signed");
                    DeliverError::Internal("a SET cannot be signed")
                })?;
                sets.insert(super::jti(position, &hash), json!(jws));
            }
        }
        // Stopped before the head (a full answer, or max_scan events read): more may wait.
        more |= at < head;
        streams::save(&store, id, &before, &next)?;
        Ok(Batch { sets, more, head })
    }

    /// The position an acknowledged `jti` names, if it is a SET of this stream: a position of
    /// this log whose event has that hash, in the stream's tenant, with a SET.
    fn acknowledged_position(&self, id: &StreamId, jti: &str) -> Result<u64, DeliverError> {
        let unknown = || {
            DeliverError::UnknownJti(format!(
                "jti {jti:?} names no SET of stream {:?}; nothing was acknowledged",
                id.name
            ))
        };
        let (position, hash) = super::parse_jti(jti).ok_or_else(unknown)?;
        let found = self.store.events_from(position, 1)?.into_iter().find(|(p, _)| *p == position);
        let Some((_, sealed)) = found else { return Err(unknown()) };
        if !sealed.hash_hex().starts_with(hash) {
            return Err(unknown());
        }
        let e = sealed.decode(&scimlog_schemas::personal::NoKeys).map_err(|_| unknown())?;
        match e.tenant == id.tenant && super::has_set(&e) {
            true => Ok(position),
            false => Err(unknown()),
        }
    }
}
