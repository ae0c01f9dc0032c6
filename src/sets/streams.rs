//! Poll streams (RFC 8936): one per receiver, named per tenant (`--set-stream acme/siem`).
//! A stream's state is what its receiver acknowledged: a watermark (every position at or below
//! it is acknowledged, or has no SET for this stream) and the acknowledged positions above it.
//! Both live in the `outbound` family under `\0set\0<tenant>\0<name>\0` (no target name starts
//! with a NUL), written with fsync, so that a stream survives restarts: what was delivered and
//! not acknowledged is delivered again; what was acknowledged never is.

use std::collections::BTreeSet;

use crate::log::{LogError, OutboundStore};

/// A stream's name and tenant, parsed from `TENANT/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// What a receiver has acknowledged.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acknowledged {
    pub watermark: u64,
    pub above: BTreeSet<u64>,
}

fn prefix(id: &StreamId) -> Vec<u8> {
    let mut p = b"\0set\0".to_vec();
    p.extend_from_slice(id.tenant.as_bytes());
    p.push(0);
    p.extend_from_slice(id.name.as_bytes());
    p.push(0);
    p
}

fn key(id: &StreamId, kind: u8, position: Option<u64>) -> Vec<u8> {
    let mut k = prefix(id);
    k.push(kind);
    if let Some(p) = position {
        k.extend_from_slice(&p.to_be_bytes());
    }
    k
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
        above.extend(page.iter().filter_map(|(k, _)| k[acked.len()..].try_into().ok().map(u64::from_be_bytes)));
    }
    Ok(Acknowledged { watermark, above })
}

/// Stores `next` (which the caller derived from `before`): the new watermark, the positions
/// acknowledged since, and the removal of those the watermark now covers. One fsync'd write.
pub fn save(store: &OutboundStore, id: &StreamId, before: &Acknowledged, next: &Acknowledged) -> Result<(), LogError> {
    let mut entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    if next.watermark != before.watermark {
        entries.push((key(id, b'w', None), Some(next.watermark.to_be_bytes().to_vec())));
    }
    for p in before.above.difference(&next.above) {
        entries.push((key(id, b'a', Some(*p)), None));
    }
    for p in next.above.difference(&before.above) {
        entries.push((key(id, b'a', Some(*p)), Some(Vec::new())));
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
        let ok: StreamId = "acme/siem-1".parse().unwrap();
        assert_eq!((ok.tenant.as_str(), ok.name.as_str()), ("acme", "siem-1"));
        for bad in ["acme", "/siem", "acme/", "Acme/siem", "acme/si em", "acme/a/b"] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad}");
        }
    }
}
