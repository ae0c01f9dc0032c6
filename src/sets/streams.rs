//! Poll streams (RFC 8936): one per receiver, named per tenant (`--set-stream acme/siem`).
//! A stream's state is what its receiver acknowledged: a watermark (every position at or below
//! it is acknowledged, or has no SET for this stream) and the acknowledged positions above it.
//! Both live in the `outbound` family under `\0set\0<tenant>\0<name>\0` (no target name starts
//! with a NUL), written with fsync, so that a stream survives restarts: what was delivered and
//! not acknowledged is delivered again; what was acknowledged never is.

use std::collections::BTreeSet;

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
/// `extra` are written in the same batch (a feed's descriptors the watermark passed).
pub fn save(
    store: &OutboundStore,
    id: &StreamId,
    before: &Acknowledged,
    next: &Acknowledged,
    extra: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Result<(), LogError> {
    let mut entries = extra;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        assert_eq!(at_of(&7u64.to_be_bytes()), Some((7, 0)));
        let both: Vec<u8> = 7u64.to_be_bytes().into_iter().chain(2u32.to_be_bytes()).collect();
        assert_eq!(at_of(&both), Some((7, 2)));
        assert_eq!(at_of(&[1, 2]), None);
        let ok: StreamId = "acme/siem-1".parse().unwrap();
        assert_eq!((ok.tenant.as_str(), ok.name.as_str()), ("acme", "siem-1"));
        for bad in ["acme", "/siem", "acme/", "Acme/siem", "acme/si em", "acme/a/b"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad}");
        }
    }
}
