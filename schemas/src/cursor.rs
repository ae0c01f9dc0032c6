//! RFC 9865 cursors: opaque, tamper-evident (HMAC-SHA256 under a secret derived from the master
//! key), bound to the tenant and the query, and expiring after `--cursor-timeout-s`. Pure: the
//! secret and the time come in (so the fuzz target `cursor` drives it directly).

use crate::{SchemaError, ScimType};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// What a cursor carries: where the next page starts in the query's ordered results.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CursorState {
    /// Tenant and query fingerprint: a cursor only continues the query that issued it.
    q: String,
    /// Offset of the next page in the ordered results.
    pub offset: usize,
    /// The last id of the page before, when the results are in id order: the next page starts
    /// after it even if resources before it were deleted in the meantime.
    pub after: Option<String>,
    /// Expiry, Unix seconds.
    e: i64,
}

/// The fingerprint of a query: tenant, resource types, filter and sort.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}

/// The tag's length in bytes: HMAC-SHA256 truncated to 128 bits. A cursor must carry exactly this
/// many: a shorter tag is guessed in a few hundred tries.
const TAG_BYTES: usize = 16;

fn mac(secret: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(payload);
    m.finalize().into_bytes()[..TAG_BYTES].to_vec()
}

pub fn issue(secret: &[u8; 32], query: &str, offset: usize, after: Option<String>, now: i64, timeout_s: u64) -> String {
    let expires = now.saturating_add(i64::try_from(timeout_s).unwrap_or(i64::MAX));
    let state = CursorState { q: query.to_string(), offset, after, e: expires };
    let payload = serde_json::to_vec(&state).expect("cursor serialises");
    format!("{}.{}", B64.encode(&payload), B64.encode(mac(secret, &payload)))
}

pub fn open(secret: &[u8; 32], query: &str, cursor: &str, now: i64) -> Result<CursorState, SchemaError> {
    let invalid =
        || SchemaError::new(ScimType::InvalidCursor, format!("cursor {cursor:?} was not issued for this query"));
    let (payload, tag) = cursor.split_once('.').ok_or_else(invalid)?;
    let payload = B64.decode(payload).map_err(|_| invalid())?;
    let tag = B64.decode(tag).map_err(|_| invalid())?;
    if tag.len() != TAG_BYTES {
        return Err(invalid());
    }
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(&payload);
    m.verify_truncated_left(&tag).map_err(|_| invalid())?;
    let state: CursorState = serde_json::from_slice(&payload).map_err(|_| invalid())?;
    if state.q != query {
        return Err(invalid());
    }
    if state.e < now {
        return Err(SchemaError::new(ScimType::ExpiredCursor, format!("cursor {cursor:?} has expired; start again")));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_bound_signed_and_expire() {
        let secret = [7u8; 32];
        let c = issue(&secret, "q1", 10, Some("id9".into()), 1000, 60);
        let s = open(&secret, "q1", &c, 1000).unwrap();
        assert_eq!((s.offset, s.after.as_deref()), (10, Some("id9")));
        assert_eq!(open(&secret, "q2", &c, 1000).unwrap_err().scim_type, ScimType::InvalidCursor);
        assert_eq!(open(&[8u8; 32], "q1", &c, 1000).unwrap_err().scim_type, ScimType::InvalidCursor);
        let mut forged = c.clone();
        forged.replace_range(0..1, if c.starts_with('e') { "f" } else { "e" });
        assert_eq!(open(&secret, "q1", &forged, 1000).unwrap_err().scim_type, ScimType::InvalidCursor);
        assert_eq!(open(&secret, "q1", &c, 1061).unwrap_err().scim_type, ScimType::ExpiredCursor);
        assert_eq!(open(&secret, "q1", "garbage", 1000).unwrap_err().scim_type, ScimType::InvalidCursor);
    }

    /// A forger who shortens the tag must not get a 1-in-256 chance per try: every one of the 256
    /// one-byte tags, and the right tag cut short or made longer, is refused.
    #[test]
    fn a_truncated_or_extended_tag_is_refused() {
        let secret = [7u8; 32];
        let c = issue(&secret, "q1", 10, None, 1000, 60);
        let (payload, tag) = c.split_once('.').unwrap();
        let tag = B64.decode(tag).unwrap();
        for len in [1, 8, 15] {
            let short = format!("{payload}.{}", B64.encode(&tag[..len]));
            assert_eq!(open(&secret, "q1", &short, 1000).unwrap_err().scim_type, ScimType::InvalidCursor, "{len}");
        }
        let long = format!("{payload}.{}", B64.encode([tag.as_slice(), &[0]].concat()));
        assert_eq!(open(&secret, "q1", &long, 1000).unwrap_err().scim_type, ScimType::InvalidCursor);
        let accepted =
            (0..=255u8).filter(|b| open(&secret, "q1", &format!("{payload}.{}", B64.encode([*b])), 1000).is_ok());
        assert_eq!(accepted.count(), 0);
    }
}
