//! An outbound runner's copy of the directory (`scimlog outbound run`): a durable JetStream pull
//! consumer on the directory's public event stream, whose events are folded into this process's
//! own store by the writer ([`crate::log::writer::WeakWriter::apply_copied`]), at the
//! directory's positions. The connector then reads that store as it reads the directory's own
//! inside `scimlog serve`: same positions, same read models, same fold.
//!
//! Where to go on is this store's head, committed with the read models; the durable consumer
//! (`scimlog-outbound-<target>`) shows NATS operators how far the runner is, and is made again
//! from the head whenever its delivery does not continue it (a store replaced, messages handed to
//! a process that died unacknowledged). Redelivered events at or below the head are skipped.
//!
//! Holes: the directory deletes an erased person's earlier messages from the stream, so positions
//! may be missing; a missing position the stream still covers (its first sequence is at or below
//! it) is such a deletion and is passed over. One before the stream's first message stops the
//! copy with that reason: it aged out (or, which the stream cannot tell apart, was an erased
//! person's deleted first message), and read models folded without it could be wrong.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use scimlog_schemas::event::Event;
use scimlog_schemas::personal::NoKeys;
use tokio::sync::watch;

use super::{nats, BusError, NatsConfig, EVENT_SUBJECTS, HEADER_POSITION};
use crate::log::writer::{ApplyError, WeakWriter};
use crate::log::Store;

/// How long a pull waits for messages before the copy looks at the stream's state.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// How long NATS waits for an acknowledgement before delivering a message again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// The longest pause between two sessions after an error.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What `/healthz` shows of the copy.
#[derive(Debug, Default)]
pub struct CopyStatus {
    /// The durable consumer's name.
    pub consumer: String,
    /// The stream's last sequence when last looked at (= the directory's last published position).
    stream_last: AtomicU64,
    /// Positions passed over because the stream had deleted them (an erased person's messages).
    holes: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl CopyStatus {
    pub fn new(consumer: String) -> CopyStatus {
        CopyStatus { consumer, ..Default::default() }
    }
    pub fn stream_last(&self) -> u64 {
        self.stream_last.load(Ordering::Relaxed)
    }
    pub fn holes(&self) -> u64 {
        self.holes.load(Ordering::Relaxed)
    }
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("copy status lock").clone()
    }
    fn note_error(&self, e: Option<String>) {
        *self.last_error.lock().expect("copy status lock") = e;
    }
}

/// The durable consumer of the runner of `target`.
pub fn consumer_name(target: &str) -> String {
    format!("scimlog-outbound-{target}")
}

pub struct Copier {
    pub cfg: NatsConfig,
    pub store: Store,
    pub writer: WeakWriter,
    pub status: Arc<CopyStatus>,
    /// Most events folded in one local commit.
    pub batch_max: usize,
}

/// Follows the stream until `shutdown`; errors are shown in the status and retried.
pub async fn run(copy: Copier, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = tokio::select! {
            r = session(&copy) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "the copy of the directory stopped following its stream; trying again");
            copy.status.note_error(Some(e.to_string()));
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn session(copy: &Copier) -> Result<(), BusError> {
    let js = jetstream::new(super::connect(&copy.cfg).await?);
    let mut stream = js.get_stream(&copy.cfg.nats_stream).await.map_err(|e| {
        BusError::Nats(format!(
            "the directory's stream {:?} cannot be read (a directory makes it when it first publishes): {e}",
            copy.cfg.nats_stream
        ))
    })?;
    let mut head = copy.store.head()?.position;
    let consumer = durable(&stream, &copy.status.consumer, head).await?;
    loop {
        let mut batch =
            consumer.batch().max_messages(copy.batch_max.max(1)).expires(PULL_WAIT).messages().await.map_err(nats)?;
        let (mut events, mut last, mut at) = (Vec::new(), None, head);
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(nats)?;
            let event = decode(&msg)?;
            // At or below what this copy holds: a redelivery, or a republished copy.
            if event.position > at {
                at = event.position;
                events.push(event);
            }
            last = Some(msg);
        }
        // Where the stream stands, for the lag (a message's own `pending` counts deleted ones).
        let stream_last = stream.info().await.map_err(nats)?.state.last_sequence;
        copy.status.stream_last.store(stream_last, Ordering::Relaxed);
        let Some(last) = last else { continue };
        if !events.is_empty() {
            passed_over(&mut stream, head, &events, &copy.status).await?;
            head = match copy.writer.apply_copied(events).await {
                Ok(h) => h.position,
                Err(ApplyError::Closed) => return Ok(()),
                Err(e) => return Err(BusError::Nats(format!("folding the stream's events: {e}"))),
            };
        }
        // Every message up to this one is folded (or was already): one acknowledgement for all.
        last.ack().await.map_err(nats)?;
        copy.status.note_error(None);
    }
}

/// The runner's durable consumer, reused when its delivery continues `head` (nothing handed out
/// unacknowledged, nothing acknowledged beyond it), else made again to start after `head`.
async fn durable(stream: &stream::Stream, name: &str, head: u64) -> Result<Consumer<pull::Config>, BusError> {
    let config = pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: EVENT_SUBJECTS.into(),
        ack_policy: AckPolicy::All,
        deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: head + 1 },
        ack_wait: ACK_WAIT,
        ..Default::default()
    };
    if let Ok(mut existing) = stream.get_consumer::<pull::Config>(name).await {
        let info = existing.info().await.map_err(nats)?;
        if info.num_ack_pending == 0 && info.ack_floor.stream_sequence <= head {
            return Ok(existing);
        }
        tracing::info!(consumer = name, head, "the durable consumer does not continue this copy; making it again");
        stream.delete_consumer(name).await.map_err(nats)?;
    }
    stream.create_consumer(config).await.map_err(nats)
}

/// The event a message carries, checked against its position header.
fn decode(msg: &jetstream::Message) -> Result<Event, BusError> {
    let header = msg.headers.as_ref().and_then(|h| h.get(HEADER_POSITION)).map(|v| v.as_str().to_string());
    let position = header
        .as_deref()
        .and_then(|p| p.parse::<u64>().ok())
        .ok_or_else(|| BusError::Nats(format!("a message on {} has no {HEADER_POSITION} header", msg.subject)))?;
    // Published events carry their personal values opened: nothing to open here.
    let event = Event::decode(&msg.payload, &NoKeys).map_err(|e| BusError::Decode(position, e.to_string()))?;
    if event.position != position {
        let detail = format!("its {HEADER_POSITION} header says {position}, its body {}", event.position);
        return Err(BusError::Decode(position, detail));
    }
    Ok(event)
}

/// Checks the positions missing before and between `events`: each must be one the stream still
/// covers (deleted after an erasure), never one that aged out.
async fn passed_over(
    stream: &mut stream::Stream,
    head: u64,
    events: &[Event],
    status: &CopyStatus,
) -> Result<(), BusError> {
    let mut expected = head + 1;
    let mut missing = Vec::new();
    for e in events {
        if e.position > expected {
            missing.push((expected, e.position - 1));
        }
        expected = e.position + 1;
    }
    let Some(&(first_missing, _)) = missing.first() else { return Ok(()) };
    let first_held = stream.info().await.map_err(nats)?.state.first_sequence;
    if first_held > first_missing {
        return Err(BusError::Unsupported(format!(
            "the stream no longer holds position {first_missing} (its first message is position {first_held}: \
             the ones before aged out, or were an erased person's and deleted), so this copy cannot go on \
             from position {head}: a runner needs the whole log in the stream (a longer --nats-max-age-s \
             on the directory keeps it)"
        )));
    }
    let n: u64 = missing.iter().map(|(a, b)| b - a + 1).sum();
    tracing::info!(head, positions = n, "positions deleted from the stream (erased persons' messages) passed over");
    status.holes.fetch_add(n, Ordering::Relaxed);
    Ok(())
}
