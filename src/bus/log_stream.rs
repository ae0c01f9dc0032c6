//! The replicated log of cluster mode: a JetStream stream
//! replicated by NATS's own Raft, holding the sealed, hash-chained records exactly as RocksDB's
//! events family stores them (`SealedEvent::to_record`), so that stream sequence n = log
//! position n on every node.
//!
//! The fence is the stream's sequence, not a lease: every append names the head its writer
//! believes in (`Nats-Expected-Last-Sequence`), and the stream refuses it when another writer
//! appended in between ([`AppendError::Fenced`]). A fenced writer must step down, never retry on
//! a refreshed head: it decided on a stale state. An outcome that is not known (a timeout, a
//! lost connection) is [`AppendError::Ambiguous`]: read the head ([`LogStream::head`]) and the
//! record there before doing anything else.

use async_nats::jetstream::{self, message::PublishMessage as Publish, stream};
use async_nats::HeaderMap;
use scimlog_schemas::event::SealedEvent;

use super::{nats, BusError, HEADER_POSITION};

pub const LOG_STREAM: &str = "SCIMLOG_LOG";
pub const LOG_SUBJECT: &str = "scimlog-log.events";
/// Marks the last record of one request: a reader applies only whole requests.
pub const HEADER_REQUEST_END: &str = "Scimlog-Request-End";

/// Most records appended at once (a group commit); also the server's limit on an atomic batch.
pub const MAX_APPEND: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream's last sequence is not `expected`: another writer has appended. Nothing of
    /// this append was stored past that point; the writer must step down.
    #[error("the log stream is not at position {expected}: another writer appended")]
    Fenced { expected: u64 },
    /// Whether the records were stored is unknown (timeout, reconnect): read the head first.
    #[error("the outcome of an append is unknown: {0}")]
    Ambiguous(String),
    /// Refused outright (a record too large, more than [`MAX_APPEND`]); nothing stored.
    #[error("the log stream refused an append: {0}")]
    Refused(String),
}

/// The stream's configuration: `replicas` copies (3 in a cluster), never aged or deleted from
/// (trimming is an admin step after a snapshot).
pub fn log_stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: LOG_STREAM.into(),
        subjects: vec![LOG_SUBJECT.into()],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        deny_delete: true,
        // 2.12+: one append as an all-or-nothing batch. Older servers ignore the field (and so
        // do not echo it back): `LogStream::atomic` tells which.
        allow_atomic_publish: true,
        ..Default::default()
    }
}

pub struct LogStream {
    js: jetstream::Context,
    stream: stream::Stream,
    /// Whether the server stores atomic batches (2.12+ echoes `allow_atomic_publish`).
    atomic: bool,
}

impl LogStream {
    /// Opens the log stream, creating it with `replicas` copies when absent; an existing stream
    /// with another replica count is an error, never silently used.
    pub async fn open(js: jetstream::Context, replicas: usize) -> Result<LogStream, BusError> {
        let mut stream = js.get_or_create_stream(log_stream_config(replicas)).await.map_err(nats)?;
        let config = stream.info().await.map_err(nats)?.config.clone();
        if config.num_replicas != replicas {
            let have = config.num_replicas;
            return Err(BusError::Nats(format!("stream {LOG_STREAM} has {have} replicas, not {replicas}")));
        }
        Ok(LogStream { js, stream, atomic: config.allow_atomic_publish })
    }

    /// Whether [`LogStream::append_atomic`] is available (nats-server 2.12+); Debian's 2.9
    /// silently ignores the setting, and batch headers with it.
    pub fn atomic(&self) -> bool {
        self.atomic
    }

    /// The stream's last sequence, asked of its leader (never a possibly lagging replica).
    pub async fn head(&self) -> Result<u64, BusError> {
        let mut stream = self.stream.clone();
        Ok(stream.info().await.map_err(nats)?.state.last_sequence)
    }

    /// The stream's first sequence (1 unless the log was trimmed after a snapshot).
    pub async fn first(&self) -> Result<u64, BusError> {
        let mut stream = self.stream.clone();
        Ok(stream.info().await.map_err(nats)?.state.first_sequence)
    }

    /// The records from `from` on, in order, as they are appended: an ordered consumer
    /// (ephemeral, no acks, recreated by the client on a gap), so a reader never skips one.
    pub async fn follow(&self, from: u64) -> Result<Follow, BusError> {
        use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
        let config = OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: from.max(1) },
            ..Default::default()
        };
        let consumer = self.stream.create_consumer(config).await.map_err(nats)?;
        Ok(Follow { messages: consumer.messages().await.map_err(nats)?, next: from.max(1) })
    }

    /// The record at `position`, if the stream holds it.
    pub async fn read(&self, position: u64) -> Result<Option<SealedEvent>, BusError> {
        match self.stream.get_raw_message(position).await {
            Ok(m) => {
                SealedEvent::from_record(&m.payload).map(Some).map_err(|e| BusError::Decode(position, e.to_string()))
            }
            Err(e) if matches!(e.kind(), jetstream::stream::LastRawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(nats(e)),
        }
    }

    /// Appends `records` (positions `head+1..`, one request's last marked `request_end`) after
    /// `head`, one at a time, each fenced on the sequence before it: all are stored in order, or
    /// none from the first refused one on. Answers the new head.
    ///
    /// Not pipelined, on purpose: with several records in flight, a later record's fence can
    /// match after an earlier one was refused (the head moved by exactly as many records), and
    /// adding `Nats-Expected-Last-Msg-Id` to close that gap left a clustered 2.15 stream refusing
    /// and then not answering appends at its true head (tests/it/cluster.rs found both). One
    /// round trip per record is the price until requests go as atomic batches (2.12+).
    /// No `Nats-Msg-Id` either: the fence makes a resend safe (a stored record moved the head),
    /// and a clustered stream answers a resent id "in process" (10158) for a while.
    pub async fn append(&self, head: u64, records: &[(u64, SealedEvent, bool)]) -> Result<u64, AppendError> {
        if records.len() > MAX_APPEND {
            return Err(AppendError::Refused(format!("{} records at once; at most {MAX_APPEND}", records.len())));
        }
        let mut new_head = head;
        for (position, sealed, request_end) in records {
            assert_eq!(*position, new_head + 1, "a record's position follows the one before");
            let publish = Publish::build()
                .payload(sealed.to_record().into())
                .headers(record_headers(*position, *request_end))
                .expected_last_sequence(new_head);
            new_head = self.commit(publish, new_head, 1).await?;
        }
        Ok(new_head)
    }

    /// Appends `records` after `head` as one atomic batch (ADR-50, nats-server 2.12+): all are
    /// stored, in order, or none. The first record carries the fence; the others go out without
    /// waiting, and the last commits. A batch that never commits (the writer died) is dropped by
    /// the server. Answers the new head.
    pub async fn append_atomic(&self, head: u64, records: &[(u64, SealedEvent, bool)]) -> Result<u64, AppendError> {
        if !self.atomic {
            return Err(AppendError::Refused("the server does not store atomic batches (nats-server 2.12+)".into()));
        }
        let Some(((last_position, last, last_end), body)) =
            records.split_last().filter(|_| records.len() <= MAX_APPEND)
        else {
            return Err(AppendError::Refused(format!("{} records in a batch; 1 to {MAX_APPEND}", records.len())));
        };
        let batch_id = uuid::Uuid::now_v7().simple().to_string();
        let in_batch = |i: usize, position: u64, request_end: bool| {
            assert_eq!(position, head + 1 + i as u64, "a record's position follows the one before");
            let mut headers = record_headers(position, request_end);
            headers.insert(async_nats::header::NATS_BATCH_ID, batch_id.as_str());
            headers.insert(async_nats::header::NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
            if i == 0 {
                headers.insert(async_nats::header::NATS_EXPECTED_LAST_SEQUENCE, head.to_string().as_str());
            }
            headers
        };
        let client = self.js.client();
        for (i, (position, sealed, request_end)) in body.iter().enumerate() {
            let sent = client.publish_with_headers(
                LOG_SUBJECT,
                in_batch(i, *position, *request_end),
                sealed.to_record().into(),
            );
            sent.await.map_err(|e| AppendError::Ambiguous(e.to_string()))?;
        }
        let mut headers = in_batch(body.len(), *last_position, *last_end);
        headers.insert(async_nats::header::NATS_BATCH_COMMIT, async_nats::header::NATS_BATCH_COMMIT_FINAL);
        let publish = Publish::build().payload(last.to_record().into()).headers(headers);
        self.commit(publish, head, records.len() as u64).await
    }

    /// Sends a message that stores `count` records after `head` (one record, or a batch's commit)
    /// and reads its acknowledgement: the new head, fenced, or not known.
    async fn commit(&self, publish: Publish, head: u64, count: u64) -> Result<u64, AppendError> {
        let ack =
            self.js.send_publish(LOG_SUBJECT, publish).await.map_err(|e| AppendError::Ambiguous(e.to_string()))?;
        match ack.await {
            Ok(a) if a.sequence == head + count && !a.duplicate => Ok(a.sequence),
            Ok(a) => Err(AppendError::Ambiguous(format!("acked as {} (duplicate: {})", a.sequence, a.duplicate))),
            Err(e) => Err(classify(e, head)),
        }
    }
}

/// One record as a follower reads it.
pub struct Followed {
    pub position: u64,
    pub sealed: SealedEvent,
    /// The last record of its request: a follower applies up to such a record only.
    pub request_end: bool,
    /// Records after this one in the stream, as the server counted when it sent this one.
    pub pending: u64,
}

pub struct Follow {
    messages: async_nats::jetstream::consumer::pull::Ordered,
    next: u64,
}

impl Follow {
    /// The next record; an error ends the follow (the caller starts again from what it applied).
    /// A record whose sequence is not the one expected means the stream lost or trimmed records
    /// this node has not applied: an error, never a silent skip.
    pub async fn next(&mut self) -> Result<Followed, BusError> {
        use futures::StreamExt;
        let message = match self.messages.next().await {
            Some(m) => m.map_err(nats)?,
            None => return Err(BusError::Nats("the log stream's consumer ended".into())),
        };
        let info = message.info().map_err(nats)?;
        let (position, pending) = (info.stream_sequence, info.pending);
        if position != self.next {
            return Err(BusError::Nats(format!("the log stream sent record {position}, expected {}", self.next)));
        }
        let sealed =
            SealedEvent::from_record(&message.payload).map_err(|e| BusError::Decode(position, e.to_string()))?;
        let request_end = message.headers.as_ref().is_some_and(|h| h.get(HEADER_REQUEST_END).is_some());
        self.next += 1;
        Ok(Followed { position, sealed, request_end, pending })
    }
}

/// The headers every record carries: its position, and whether it ends a request.
fn record_headers(position: u64, request_end: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_POSITION, position.to_string().as_str());
    if request_end {
        headers.insert(HEADER_REQUEST_END, "1");
    }
    headers
}

fn classify(e: jetstream::context::PublishError, expected: u64) -> AppendError {
    use jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::WrongLastSequence => AppendError::Fenced { expected },
        K::MaxPayloadExceeded => AppendError::Refused(e.to_string()),
        // "No stream" is also what a publish meets while the client reconnects to another node
        // or the stream elects a leader (no responders): not known to be final.
        K::StreamNotFound | K::TimedOut | K::BrokenPipe | K::MaxAckPending | K::WrongLastMessageId | K::Other => {
            AppendError::Ambiguous(e.to_string())
        }
    }
}
