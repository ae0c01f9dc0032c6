//! Streams: one per receiver, named per tenant (`acme/siem`). A stream's state is what its
//! receiver acknowledged: a watermark (every position at or below it is acknowledged, or has no
//! SET for this stream) and the acknowledged SETs above it. On one node both live in the
//! `outbound` family under `\0set\0<tenant>\0<name>\0` (no target name starts with a NUL),
//! written with fsync; in cluster mode in the replicated KV bucket `scimlog_set_acks`
//! (`bus::set_acks`), so that they survive restarts and failovers: what was delivered and not
//! acknowledged is delivered again; what was acknowledged never is.

use std::collections::BTreeSet;

use std::sync::{Arc, Mutex};

use crate::bus::set_acks::ReplicatedAcks;
use crate::log::{LogError, OutboundStore};

/// A stream's name and tenant, parsed from `TENANT/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    pub tenant: String,
    pub name: String,
}

impl std::str::FromStr for StreamId {
    type Err = String;
    fn from_str(s: &str) -> Result<StreamId, String> {
        let (tenant, name) = s.split_once('/').ok_or_else(|| format!("{s:?}: expected TENANT/NAME"))?;
        if !crate::auth::valid_tenant(tenant) {
            return Err(format!("{s:?}: {tenant:?} is not a valid tenant"));
        }
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(format!("{s:?}: a stream name is 1 to 64 of letters, digits, '-', '_' and '.'"));
        }
        Ok(StreamId { tenant: tenant.into(), name: name.into() })
    }
}

/// What a receiver has acknowledged: SETs are named by position and, where one event gives a
/// feed several SETs (a feed group deleted), their index at that position (0 otherwise).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acknowledged {
    pub watermark: u64,
    pub above: BTreeSet<(u64, u32)>,
}

/// Where every key of the stream starts.
pub fn prefix(id: &StreamId) -> Vec<u8> {
    let mut p = b"\0set\0".to_vec();
    p.extend_from_slice(id.tenant.as_bytes());
    p.push(0);
    p.extend_from_slice(id.name.as_bytes());
    p.push(0);
    p
}

fn key(id: &StreamId, kind: u8, at: Option<(u64, u32)>) -> Vec<u8> {
    let mut k = prefix(id);
    k.push(kind);
    if let Some((p, sub)) = at {
        k.extend_from_slice(&p.to_be_bytes());
        k.extend_from_slice(&sub.to_be_bytes());
    }
    k
}

/// A position and index from a key's tail (8 bytes: index 0, as the first streams wrote them).
pub fn at_of(tail: &[u8]) -> Option<(u64, u32)> {
    let p = u64::from_be_bytes(tail.get(..8)?.try_into().ok()?);
    let sub = match tail.get(8..) {
        Some([]) | None => 0,
        Some(rest) => u32::from_be_bytes(rest.try_into().ok()?),
    };
    Some((p, sub))
}

/// The stream's state as stored.
pub fn load(store: &OutboundStore, id: &StreamId) -> Result<Acknowledged, LogError> {
    let watermark = store
        .get(&key(id, b'w', None))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes);
    let acked = key(id, b'a', None);
    let mut above = BTreeSet::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(&acked, after.as_deref(), 4096)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        above.extend(page.iter().filter_map(|(k, _)| at_of(&k[acked.len()..])));
    }
    Ok(Acknowledged { watermark, above })
}

/// Stores `next` (which the caller derived from `before`): the new watermark, the positions
/// acknowledged since, and the removal of those the watermark now covers. One fsync'd write.
pub fn save(store: &OutboundStore, id: &StreamId, before: &Acknowledged, next: &Acknowledged) -> Result<(), LogError> {
    let mut entries = Vec::new();
    if next.watermark != before.watermark {
        entries.push((key(id, b'w', None), Some(next.watermark.to_be_bytes().to_vec())));
    }
    for at in before.above.difference(&next.above) {
        entries.push((key(id, b'a', Some(*at)), None));
        if at.1 == 0 {
            // As the first streams wrote it.
            entries.push((key(id, b'a', None).into_iter().chain(at.0.to_be_bytes()).collect(), None));
        }
    }
    for at in next.above.difference(&before.above) {
        entries.push((key(id, b'a', Some(*at)), Some(Vec::new())));
    }
    if entries.is_empty() {
        return Ok(());
    }
    store.write(entries, true)
}

/// Where a server keeps what its streams' receivers acknowledged.
#[derive(Clone)]
pub enum AckStore {
    /// One node: the `outbound` family.
    Local(OutboundStore),
    /// Cluster mode: the replicated bucket, and the watermarks this node last read or wrote
    /// there (for `/metrics`, which does not wait on NATS).
    Replicated(Arc<ReplicatedAcks>, Arc<Mutex<std::collections::BTreeMap<StreamId, u64>>>),
}

/// A stream's acknowledgements as loaded, with the revision a replicated save must match.
pub struct Loaded {
    pub acked: Acknowledged,
    revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Replicated(#[from] crate::bus::BusError),
}

impl AckStore {
    pub fn replicated(acks: Arc<ReplicatedAcks>) -> AckStore {
        AckStore::Replicated(acks, Default::default())
    }

    pub async fn load(&self, id: &StreamId) -> Result<Loaded, AckError> {
        match self {
            AckStore::Local(store) => {
                let (store, id) = (store.clone(), id.clone());
                let acked = tokio::task::spawn_blocking(move || load(&store, &id)).await.map_err(|e| {
                    LogError::Corrupt { position: 0, detail: format!("a SET stream load panicked: {e}") }
                })??;
                Ok(Loaded { acked, revision: 0 })
            }
            AckStore::Replicated(kv, seen) => {
                let (value, revision) = kv.load(&kv_key(id)).await?;
                let acked = value.as_deref().and_then(decode).unwrap_or_default();
                seen.lock().expect("acks lock").insert(id.clone(), acked.watermark);
                Ok(Loaded { acked, revision })
            }
        }
    }

    /// Stores `next` (derived from `before`); in cluster mode only if no other node wrote the
    /// stream's entry since `before` was loaded.
    pub async fn save(&self, id: &StreamId, before: &Loaded, next: &Acknowledged) -> Result<(), AckError> {
        if before.acked == *next {
            return Ok(());
        }
        match self {
            AckStore::Local(store) => {
                let (store, id, b, n) = (store.clone(), id.clone(), before.acked.clone(), next.clone());
                tokio::task::spawn_blocking(move || save(&store, &id, &b, &n)).await.map_err(|e| {
                    LogError::Corrupt { position: 0, detail: format!("a SET stream save panicked: {e}") }
                })??;
                Ok(())
            }
            AckStore::Replicated(kv, seen) => {
                kv.save(&kv_key(id), encode(next), before.revision).await?;
                seen.lock().expect("acks lock").insert(id.clone(), next.watermark);
                Ok(())
            }
        }
    }

    /// The stream's watermark as this node knows it without waiting (for `/metrics`).
    pub fn watermark_now(&self, id: &StreamId) -> u64 {
        match self {
            AckStore::Local(store) => load(store, id).map_or(0, |a| a.watermark),
            AckStore::Replicated(_, seen) => seen.lock().expect("acks lock").get(id).copied().unwrap_or(0),
        }
    }
}

/// `<tenant>.<name>`: a KV key (tenants and names use only characters a key may hold).
fn kv_key(id: &StreamId) -> String {
    format!("{}.{}", id.tenant, id.name)
}

/// The watermark, then each (position, index) above it: 8 + 12 bytes each, big-endian.
fn encode(a: &Acknowledged) -> Vec<u8> {
    let mut out = a.watermark.to_be_bytes().to_vec();
    for (p, i) in &a.above {
        out.extend_from_slice(&p.to_be_bytes());
        out.extend_from_slice(&i.to_be_bytes());
    }
    out
}

fn decode(bytes: &[u8]) -> Option<Acknowledged> {
    let watermark = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let rest = &bytes[8..];
    if !rest.len().is_multiple_of(12) {
        return None;
    }
    let above = rest.chunks(12).filter_map(at_of).collect();
    Some(Acknowledged { watermark, above })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        assert_eq!(at_of(&7u64.to_be_bytes()), Some((7, 0)));
        let both: Vec<u8> = 7u64.to_be_bytes().into_iter().chain(2u32.to_be_bytes()).collect();
        assert_eq!(at_of(&both), Some((7, 2)));
        assert_eq!(at_of(&[1, 2]), None);
        let a = Acknowledged { watermark: 9, above: [(11, 0), (11, 2), (40, 0)].into_iter().collect() };
        assert_eq!(decode(&encode(&a)), Some(a));
        assert_eq!(decode(&[0; 7]), None);
        assert_eq!(decode(&[0; 13]), None);
        let ok: StreamId = "acme/siem-1".parse().unwrap();
        assert_eq!((ok.tenant.as_str(), ok.name.as_str()), ("acme", "siem-1"));
        for bad in ["acme", "/siem", "acme/", "Acme/siem", "acme/si em", "acme/a/b"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad}");
        }
    }
}
