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
    ttl: Duration,
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
        Ok(Lease { kv, node, ttl })
    }

    /// Takes the lease if nobody holds it; `None` while another node does.
    pub async fn try_acquire(&self) -> Result<Option<Held>, BusError> {
        match self.answered(|| self.kv.create(LEASE_KEY, self.node.clone())).await {
            Ok(revision) => Ok(Some(Held { revision })),
            Err(e) if matches!(e.kind(), kv::CreateErrorKind::AlreadyExists) => Ok(None),
            Err(e) => Err(nats(e)),
        }
    }

    /// Renews a held lease (every third of the time to live); [`LeaseError::Lost`] when another
    /// node has taken it, or it lapsed.
    pub async fn renew(&self, held: &Held) -> Result<Held, LeaseError> {
        match self.answered(|| self.kv.update(LEASE_KEY, self.node.clone(), held.revision)).await {
            Ok(revision) => Ok(Held { revision }),
            Err(e) if matches!(e.kind(), kv::UpdateErrorKind::WrongLastRevision) => Err(LeaseError::Lost),
            Err(e) => Err(LeaseError::Bus(nats(e))),
        }
    }

    /// Gives the lease up (a graceful stop), so that another node takes over at once.
    pub async fn release(&self, held: &Held) -> Result<(), BusError> {
        self.answered(|| self.kv.delete_expect_revision(LEASE_KEY, Some(held.revision))).await.map_err(nats)
    }

    /// The current holder's value, if any (where a replica forwards writes).
    pub async fn holder(&self) -> Result<Option<Bytes>, BusError> {
        self.answered(|| self.kv.get(LEASE_KEY)).await.map_err(nats)
    }

    /// Runs a request of the bucket again while nobody answered it, every 50 ms for at most the
    /// time to live (past it the lease has lapsed anyway). A replicated stream is briefly
    /// without a responder after its configuration changed (as `open` changes an older
    /// bucket's) or its leader moved: a write then fails with "no stream found for given
    /// subject" and stored nothing, so trying it again is safe. Every other error is returned
    /// at once. (The first acquire after an upgrade failed in CI this way, twice.)
    async fn answered<T, E, F>(&self, op: impl Fn() -> F) -> Result<T, E>
    where
        E: std::error::Error + 'static,
        F: std::future::Future<Output = Result<T, E>>,
    {
        let deadline = tokio::time::Instant::now() + self.ttl;
        loop {
            match op().await {
                Err(e) if nobody_answered(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "the lease bucket had no responder; trying again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                done => return done,
            }
        }
    }
}

/// Whether an error of the NATS client, or any error under it, says that no server took the
/// request: a publish without responders ("no stream found for given subject") or a request
/// without responders.
fn nobody_answered(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::context::{PublishError, PublishErrorKind, RequestError, RequestErrorKind};
    let mut at = Some(e);
    while let Some(e) = at {
        if e.downcast_ref::<PublishError>().is_some_and(|p| p.kind() == PublishErrorKind::StreamNotFound)
            || e.downcast_ref::<RequestError>().is_some_and(|r| r.kind() == RequestErrorKind::NoResponders)
        {
            return true;
        }
        at = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::context::{PublishError, PublishErrorKind, RequestError, RequestErrorKind};
    use async_nats::jetstream::kv::{CreateError, CreateErrorKind, UpdateError, UpdateErrorKind};

    use super::nobody_answered;

    /// What a lease request meets, as the client reports it, and whether it is tried again.
    #[test]
    fn only_a_request_nobody_took_is_tried_again() {
        let no_stream = || PublishError::new(PublishErrorKind::StreamNotFound);
        // What CI's failing acquire got: create → update at revision 0 → a publish without responders.
        let cut_create = CreateError::with_source(
            CreateErrorKind::Other,
            UpdateError::with_source(UpdateErrorKind::Other, no_stream()),
        );
        let cases: Vec<(&str, Box<dyn std::error::Error>, bool)> = vec![
            ("a create whose publish had no responders", Box::new(cut_create), true),
            ("a publish without responders", Box::new(no_stream()), true),
            ("a request without responders", Box::new(RequestError::new(RequestErrorKind::NoResponders)), true),
            ("held by another node", Box::new(CreateError::new(CreateErrorKind::AlreadyExists)), false),
            (
                "a renewal at a stale revision",
                Box::new(UpdateError::with_source(
                    UpdateErrorKind::WrongLastRevision,
                    PublishError::new(PublishErrorKind::WrongLastSequence),
                )),
                false,
            ),
            (
                "a publish that timed out (it may be stored)",
                Box::new(PublishError::new(PublishErrorKind::TimedOut)),
                false,
            ),
            ("a request that timed out", Box::new(RequestError::new(RequestErrorKind::TimedOut)), false),
        ];
        for (case, e, again) in cases {
            assert_eq!(nobody_answered(e.as_ref()), again, "{case}: {e}");
        }
    }
}
