//! Reading the log back: hash-chain verification and export. (History, as-of and replay grow
//! here.) Everything here reads through `log::Store`; nothing here writes.

use std::io::Write;

use scimlog_schemas::event::GENESIS_HASH;
use scimlog_schemas::personal::Opener;
use serde::Deserialize;

use crate::log::{LogError, Store};

/// What `audit verify` proved.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub count: u64,
    pub head_position: u64,
    pub head_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("position {position}: {what}")]
    Broken { position: u64, what: String },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot write the output: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChainFields {
    position: u64,
    prev_hash: String,
}

const PAGE: usize = 4096;

/// Walks the whole log: every record's hash must be the SHA-256 of its bytes, every event must
/// name the previous event's hash, and positions must run 1, 2, 3, ... without a gap. A flipped
/// byte, a deleted event or a reordered pair is reported with its position.
pub fn verify(store: &Store) -> Result<Verified, AuditError> {
    let mut expected_prev = GENESIS_HASH.to_string();
    let mut expected_position = 1u64;
    let mut count = 0u64;
    loop {
        let page = store.events_from(expected_position, PAGE)?;
        if page.is_empty() {
            break;
        }
        for (position, sealed) in page {
            let broken = |what: String| AuditError::Broken { position, what };
            if position != expected_position {
                return Err(broken(format!("expected position {expected_position}: events are missing")));
            }
            if !sealed.is_intact() {
                return Err(broken(
                    "the stored hash is not the hash of the stored bytes: the event was altered".into(),
                ));
            }
            let fields: ChainFields =
                serde_json::from_slice(&sealed.bytes).map_err(|e| broken(format!("the event does not parse: {e}")))?;
            if fields.position != position {
                return Err(broken(format!("the event says position {}: events were moved", fields.position)));
            }
            if fields.prev_hash != expected_prev {
                return Err(broken(format!(
                    "prevHash is {} but the previous event's hash is {expected_prev}: events were removed or reordered",
                    fields.prev_hash
                )));
            }
            expected_prev = sealed.hash_hex();
            expected_position += 1;
            count += 1;
        }
    }
    Ok(Verified { count, head_position: expected_position - 1, head_hash: expected_prev })
}

/// Writes events `from..=to` as JSON lines. `opened`: personal values opened with the keys
/// (erased ones read `[erased]`); otherwise the envelopes exactly as stored and hashed, sealed
/// values included.
pub fn export(
    store: &Store,
    opener: &dyn Opener,
    from: u64,
    to: Option<u64>,
    opened: bool,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    let mut next = from.max(1);
    let mut written = 0;
    loop {
        let page = store.events_from(next, PAGE)?;
        if page.is_empty() {
            return Ok(written);
        }
        for (position, sealed) in page {
            if to.is_some_and(|t| position > t) {
                return Ok(written);
            }
            let broken = |what: String| AuditError::Broken { position, what };
            let line = if opened {
                let event = sealed.decode(opener).map_err(|e| broken(e.to_string()))?;
                let mut v = serde_json::to_value(&event).expect("events serialise");
                v["hash"] = sealed.hash_hex().into();
                v
            } else {
                sealed.envelope_json().map_err(|e| broken(e.to_string()))?
            };
            serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            written += 1;
            next = position + 1;
        }
    }
}
