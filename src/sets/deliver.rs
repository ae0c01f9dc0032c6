//! What a stream delivers next, for poll (`http/sets.rs`) and push (`push.rs`) alike: record
//! the acknowledgements a receiver gives (all, or none when one names no SET of the stream),
//! then collect the oldest unacknowledged SETs from the watermark on, signed, in log order.

use serde_json::{json, Map, Value};

use scimlog_schemas::event::{Event, SealedEvent};

use super::config::{Stream, FEED_ADD, FEED_REMOVE};
use super::streams::{self, Acknowledged, StreamId};
use super::{feed, Signer};
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
    /// Most SETs acknowledged beyond the watermark (`--set-max-acked-ahead`).
    pub max_ahead: usize,
}

/// SETs by `jti` in log order, whether more wait, and the head read up to.
pub struct Batch {
    pub sets: Map<String, Value>,
    pub more: bool,
    pub head: u64,
}

/// One step of a stream: the batch, the acknowledgements after it, and a feed's notes the
/// watermark passed (deleted once those are stored).
pub struct Step {
    pub batch: Batch,
    pub next: Acknowledged,
    pub gone: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// An acknowledgement names no SET of the stream (nothing was acknowledged).
    #[error("{0}")]
    UnknownJti(String),
    /// The acknowledgements would leave more than `--set-max-acked-ahead` SETs acknowledged
    /// beyond the oldest unacknowledged one (nothing was acknowledged).
    #[error("{0}")]
    TooFarAhead(String),
    #[error(transparent)]
    Log(#[from] LogError),
    /// The acknowledgements could not be read or stored (cluster mode: NATS, or another node
    /// wrote them meanwhile). Nothing was acknowledged; the receiver tries again.
    #[error("{0}")]
    Acks(String),
    /// An event could not be read or a SET signed (logged where it happened).
    #[error("{0}")]
    Internal(&'static str),
}

/// The audience of a stream's SETs: `<server>/sets/streams/<name>`.
pub fn audience(iss: &str, id: &StreamId) -> String {
    format!("{}/sets/streams/{}", iss.trim_end_matches("/scim/v2"), id.name)
}

impl Source<'_> {
    /// Records `acks` over `before`, then collects up to `max` unacknowledged SETs from the
    /// watermark on (reading at most `max_scan` events), moving the watermark past what needs
    /// no delivery. Stores nothing of the acknowledgements: the caller does (`Deliverer`).
    pub fn next(
        &self,
        stream: &Stream,
        before: &Acknowledged,
        acks: &[String],
        max: usize,
    ) -> Result<Step, DeliverError> {
        let mut next = before.clone();
        for jti in acks {
            let at = self.acknowledged(stream, before.watermark, jti)?;
            if at.0 > next.watermark {
                next.above.insert(at);
            }
        }
        let (batch, gone) = match stream.groups {
            None => (self.scan_log(stream, &mut next, max)?, vec![]),
            Some(_) => self.scan_feed(stream, &mut next, max)?,
        };
        // Counted once the watermark moved past what is acknowledged in order.
        if next.above.len() > self.max_ahead && next.above.len() > before.above.len() {
            return Err(DeliverError::TooFarAhead(format!(
                "these acknowledgements would leave {} SETs acknowledged beyond the oldest one not acknowledged \
                 (at most {}, --set-max-acked-ahead); acknowledge the oldest first; nothing was acknowledged",
                next.above.len(),
                self.max_ahead
            )));
        }
        Ok(Step { batch, next, gone })
    }

    fn sign(&self, claims: &Value) -> Result<Value, DeliverError> {
        let jws = self.signer.sign(claims).map_err(|e| {
            tracing::error!(error = %e, "a SET cannot be signed");
            DeliverError::Internal("a SET cannot be signed")
        })?;
        Ok(json!(jws))
    }

    fn decode(&self, position: u64, sealed: &SealedEvent) -> Result<Event, DeliverError> {
        sealed.decode(self.keys).map_err(|e| {
            tracing::error!(position, error = %e, "an event cannot be decoded for a SET stream");
            DeliverError::Internal("an event cannot be read")
        })
    }

    /// A stream of the whole tenant reads the log itself from the watermark on.
    fn scan_log(&self, stream: &Stream, next: &mut Acknowledged, max: usize) -> Result<Batch, DeliverError> {
        let head = self.store.head()?.position;
        let aud = audience(self.iss, &stream.id);
        let (mut sets, mut more, mut pending, mut at, mut scanned) = (Map::new(), false, false, next.watermark, 0usize);
        'scan: while at < head && scanned < self.max_scan {
            for (position, sealed) in self.store.events_from(at + 1, 256)? {
                if scanned == self.max_scan {
                    break 'scan;
                }
                scanned += 1;
                at = position;
                let e = self.decode(position, &sealed)?;
                let ours = e.tenant == stream.id.tenant && super::event_uri(&e).is_some_and(|u| stream.carries(&u));
                if !ours || next.above.contains(&(position, 0)) {
                    // Nothing unacknowledged before it: the watermark moves past it.
                    if !pending {
                        next.watermark = position;
                        next.above.remove(&(position, 0));
                    }
                    continue;
                }
                pending = true;
                if sets.len() == max {
                    more = true;
                    break 'scan;
                }
                let jti = super::jti(position, 0, &sealed.hash_hex());
                let claims = super::claims(&e, jti.clone(), self.iss, &aud).expect("event_uri said it has one");
                sets.insert(jti, self.sign(&claims)?);
            }
        }
        // Stopped before the head (a full answer, or max_scan events read): more may wait.
        more |= at < head;
        Ok(Batch { sets, more, head })
    }

    /// A feed folds on (`feed::advance`), then reads its descriptors from the watermark on.
    /// Returns, with the batch, the descriptors the watermark passed (to delete).
    #[allow(clippy::type_complexity)]
    fn scan_feed(
        &self,
        stream: &Stream,
        next: &mut Acknowledged,
        max: usize,
    ) -> Result<(Batch, Vec<(Vec<u8>, Option<Vec<u8>>)>), DeliverError> {
        let out = self.store.outbound();
        let folded = feed::advance(self.store, stream, self.max_scan)?;
        let head = self.store.head()?.position;
        let aud = audience(self.iss, &stream.id);
        let prefix = feed::key(stream, b'o', &[]);
        let start = feed::descriptor_key(stream, next.watermark + 1, 0);
        // From the watermark on: `scan` takes an exclusive `after`, so start at a key just
        // before the first one there could be (descriptor keys all have the same length).
        let after: Vec<u8> = start[..start.len() - 1].to_vec();
        let mut entries = out.scan(&prefix, Some(&after), self.max_scan.max(1) + 1)?;
        let limited = entries.len() > self.max_scan.max(1);
        entries.truncate(self.max_scan.max(1));
        let (mut sets, mut more) = (Map::new(), false);
        let mut first_pending: Option<u64> = None;
        let mut event: Option<(u64, Event, String)> = None;
        for (k, v) in &entries {
            let Some(at) = streams::at_of(&k[prefix.len()..]) else { continue };
            if next.above.contains(&at) {
                continue;
            }
            first_pending.get_or_insert(at.0);
            if sets.len() == max {
                more = true;
                break;
            }
            if event.as_ref().is_none_or(|(p, _, _)| *p != at.0) {
                let found = self.store.events_from(at.0, 1)?.into_iter().find(|(p, _)| *p == at.0);
                let (p, sealed) = found.ok_or(DeliverError::Internal("a feed names an event the log lacks"))?;
                event = Some((p, self.decode(p, &sealed)?, sealed.hash_hex()));
            }
            let (_, e, hash) = event.as_ref().expect("read above");
            let jti = super::jti(at.0, at.1, hash);
            let claims = match feed::Descriptor::decode(v) {
                Some(feed::Descriptor::Own) => super::claims(e, jti.clone(), self.iss, &aud),
                Some(feed::Descriptor::FeedAdd(u)) => {
                    Some(super::feed_claims(e, &u, FEED_ADD, jti.clone(), self.iss, &aud))
                }
                Some(feed::Descriptor::FeedRemove(u)) => {
                    Some(super::feed_claims(e, &u, FEED_REMOVE, jti.clone(), self.iss, &aud))
                }
                None => None,
            };
            let claims = claims.ok_or(DeliverError::Internal("a feed's descriptor cannot be read"))?;
            sets.insert(jti, self.sign(&claims)?);
        }
        // Every descriptor before the first unacknowledged one is behind the watermark: all
        // of them when none is pending and all were read, up to the fold's cursor.
        let last_read = entries.last().and_then(|(k, _)| streams::at_of(&k[prefix.len()..])).map(|a| a.0);
        let watermark = match (first_pending, limited) {
            (Some(p), _) => p - 1,
            (None, false) => folded,
            (None, true) => last_read.map_or(next.watermark, |p| p - 1),
        };
        let mut gone = Vec::new();
        if watermark > next.watermark {
            next.watermark = watermark;
            for (k, _) in
                entries.iter().filter(|(k, _)| streams::at_of(&k[prefix.len()..]).is_some_and(|a| a.0 <= watermark))
            {
                gone.push((k.clone(), None));
            }
            next.above.retain(|a| a.0 > watermark);
        }
        more |= folded < head || limited;
        Ok((Batch { sets, more, head }, gone))
    }

    /// The position and index an acknowledged `jti` names, if it is a SET of this stream.
    fn acknowledged(&self, stream: &Stream, watermark: u64, jti: &str) -> Result<(u64, u32), DeliverError> {
        let unknown = || {
            DeliverError::UnknownJti(format!(
                "jti {jti:?} names no SET of stream {:?}; nothing was acknowledged",
                stream.id.name
            ))
        };
        let (position, index, hash) = super::parse_jti(jti).ok_or_else(unknown)?;
        let found = self.store.events_from(position, 1)?.into_iter().find(|(p, _)| *p == position);
        let Some((_, sealed)) = found else { return Err(unknown()) };
        if !sealed.hash_hex().starts_with(hash) {
            return Err(unknown());
        }
        let e = sealed.decode(&scimlog_schemas::personal::NoKeys).map_err(|_| unknown())?;
        if e.tenant != stream.id.tenant {
            return Err(unknown());
        }
        let ours = match stream.groups {
            None => index == 0 && super::event_uri(&e).is_some_and(|u| stream.carries(&u)),
            // A feed's SET is one it wrote down; one behind the watermark is acknowledged already.
            Some(_) => {
                position <= watermark
                    || self.store.outbound().get(&feed::descriptor_key(stream, position, index))?.is_some()
            }
        };
        match ours {
            true => Ok((position, index)),
            false => Err(unknown()),
        }
    }
}

/// What a server delivers SETs with, owned (for the push tasks and the poll handler alike):
/// each step loads the stream's acknowledgements, reads and signs on the blocking pool, stores
/// the new acknowledgements, then drops a feed's notes the watermark passed.
#[derive(Clone)]
pub struct Deliverer {
    pub store: Store,
    pub keys: std::sync::Arc<KeyRing>,
    pub signer: std::sync::Arc<Signer>,
    pub iss: String,
    pub max_scan: usize,
    pub max_ahead: usize,
    pub acks: streams::AckStore,
}

impl Deliverer {
    pub async fn next(&self, stream: &Stream, acks: Vec<String>, max: usize) -> Result<Batch, DeliverError> {
        let ack_error = |e: streams::AckError| {
            tracing::warn!(error = %e, "a SET stream's acknowledgements cannot be read or stored");
            DeliverError::Acks("the stream's acknowledgements cannot be read or stored now; try again".into())
        };
        let before = self.acks.load(&stream.id).await.map_err(ack_error)?;
        let (this, stream2, acked) = (self.clone(), stream.clone(), before.acked.clone());
        let step = tokio::task::spawn_blocking(move || {
            let source = Source {
                store: &this.store,
                keys: &this.keys,
                signer: &this.signer,
                iss: &this.iss,
                max_scan: this.max_scan,
                max_ahead: this.max_ahead,
            };
            source.next(&stream2, &acked, &acks, max)
        })
        .await
        .unwrap_or(Err(DeliverError::Internal("a SET stream step panicked")))?;
        self.acks.save(&stream.id, &before, &step.next).await.map_err(ack_error)?;
        if !step.gone.is_empty() {
            let out = self.store.outbound();
            tokio::task::spawn_blocking(move || out.write(step.gone, false))
                .await
                .unwrap_or(Err(LogError::Corrupt { position: 0, detail: "a SET feed cleanup panicked".into() }))?;
        }
        Ok(step.batch)
    }
}
