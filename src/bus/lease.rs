//! Who should write (cluster mode, issue 15; driven by `cluster::roles`): a lease in a NATS KV
//! bucket whose `max_age` is the lease's time to live. `create` acquires (refused while a live
//! holder's entry exists), `update` at the last revision renews (refused once another node holds
//! it), `delete` at the last revision hands over at once. The lease only routes writes and
//! decides who tries to append; correctness comes from the log stream's fence
//! (`log_stream::AppendError::Fenced`), since a paused holder can outlive its lease.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;

use super::{nats, BusError};

pub const LEASE_BUCKET: &str = "scimlog_leader";
pub const LEASE_KEY: &str = "writer";

/// A held lease: its revision is the fencing epoch of renewals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub revision: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another node holds it (or took it over): stop writing.
    #[error("the lease is held by another node")]
    Lost,
    #[error(transparent)]
    Bus(#[from] BusError),
}

pub struct Lease {
    kv: kv::Store,
    node: Bytes,
}

impl Lease {
    /// Opens the lease bucket (created with `replicas` copies and time to live `ttl`) for `node`,
    /// whose value (e.g. `{"node": ..., "url": ...}`) tells the others where to send writes.
    ///
    /// The bucket's stream is made here, not by `create_key_value`, because that one allows direct
    /// gets, which any replica answers from what it has applied so far: `create` reads the key back
    /// after a refused first try, and a replica that had not yet seen a release answered "held",
    /// so a released lease was not free at once. With direct gets off every read is the stream
    /// leader's. A bucket made by an older scimlog (direct gets on), or with another time to
    /// live, is updated to this configuration.
    pub async fn open(js: &jetstream::Context, replicas: usize, ttl: Duration, node: Bytes) -> Result<Lease, BusError> {
        let config = stream::Config {
            name: format!("KV_{LEASE_BUCKET}"),
            subjects: vec![format!("$KV.{LEASE_BUCKET}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: false,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let mut stream = js.get_or_create_stream(config).await.map_err(nats)?;
        let found = &stream.info().await.map_err(nats)?.config;
        let updated = found.allow_direct || found.max_age != ttl;
        if updated {
            // The window in which a message id is remembered may not outlast the messages.
            let duplicate_window = found.duplicate_window.min(ttl);
            let config = stream::Config { allow_direct: false, max_age: ttl, duplicate_window, ..found.clone() };
            js.update_stream(&config).await.map_err(nats)?;
        }
        let kv = js.get_key_value(LEASE_BUCKET).await.map_err(nats)?;
        if updated {
            settle(&kv).await?;
        }
        Ok(Lease { kv, node })
    }

    /// Takes the lease if nobody holds it; `None` while another node does.
    pub async fn try_acquire(&self) -> Result<Option<Held>, BusError> {
        match self.kv.create(LEASE_KEY, self.node.clone()).await {
            Ok(revision) => Ok(Some(Held { revision })),
            Err(e) if matches!(e.kind(), kv::CreateErrorKind::AlreadyExists) => Ok(None),
            Err(e) => Err(nats(e)),
        }
    }

    /// Renews a held lease (every third of the time to live); [`LeaseError::Lost`] when another
    /// node has taken it, or it lapsed.
    pub async fn renew(&self, held: &Held) -> Result<Held, LeaseError> {
        match self.kv.update(LEASE_KEY, self.node.clone(), held.revision).await {
            Ok(revision) => Ok(Held { revision }),
            Err(e) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => Err(LeaseError::Lost),
            Err(e) => Err(LeaseError::Bus(nats(e))),
        }
    }

    /// Gives the lease up (a graceful stop), so that another node takes over at once.
    pub async fn release(&self, held: &Held) -> Result<(), BusError> {
        self.kv.delete_expect_revision(LEASE_KEY, Some(held.revision)).await.map_err(nats)
    }

    /// The current holder's value, if any (where a replica forwards writes).
    pub async fn holder(&self) -> Result<Option<Bytes>, BusError> {
        Ok(self.kv.get(LEASE_KEY).await.map_err(nats)?)
    }
}

/// How long [`Lease::open`] waits for a bucket it changed to answer again.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until the bucket's stream answers a read again. A replicated stream whose
/// configuration changed is briefly without a leader; reads and writes in that moment have no
/// responders ("no stream found"), and the first acquire after an upgrade failed in CI. So an
/// open that changed the bucket returns once it serves. Every error is retried until the
/// deadline: the client reports that moment as an `Other` entry error, as it does a refused
/// read, so a refused read surfaces only after [`SETTLE_TIMEOUT`].
async fn settle(kv: &kv::Store) -> Result<(), BusError> {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        match kv.get(LEASE_KEY).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "the lease bucket does not answer yet after its update");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(nats(e)),
        }
    }
}
