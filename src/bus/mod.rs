//! The bus: the only code that knows NATS. The publisher tails the log and puts every event on
//! JetStream; it never runs inside a request, and NATS being down never slows or fails a write.
//!
//! Exactly-once and gap-free by construction: each event is published with `Nats-Msg-Id` = its
//! event id and `Nats-Expected-Last-Sequence` = the stream's last sequence, in log order, so the
//! stream holds the log in order and nothing else. Where to resume is read from the stream itself
//! (the `Scimlog-Position` header of its last message), never from local state: if NATS lost
//! acknowledged messages (Debian's nats-server 2.9 syncs its file store every 60 s), the stream's
//! tail says so and the missing events are sent again from the log.

pub mod copy;
pub mod keys_kv;
pub mod lease;
pub mod link;
pub mod log_stream;
pub mod set_acks;
pub mod snapshots;
pub mod tail;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage as Publish, stream};
use async_nats::HeaderMap;
use scimlog_schemas::event::SealedEvent;
use scimlog_schemas::personal::Opener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::log::Store;

pub const HEADER_POSITION: &str = "Scimlog-Position";
pub const HEADER_EVENT_ID: &str = "Scimlog-Event-Id";
pub const HEADER_EVENT_TYPE: &str = "Scimlog-Event-Type";
pub const HEADER_SCHEMA_VERSION: &str = "Scimlog-Schema-Version";
pub const HEADER_REQUEST_ID: &str = "Scimlog-Request-Id";
/// Marks messages sent by `scimlog republish`: the publisher skips them when it looks for where
/// to resume.
pub const HEADER_REPUBLISHED: &str = "Scimlog-Republished";

#[derive(Clone, Debug, clap::Args)]
pub struct NatsConfig {
    /// NATS server URL; publishing is on when set (e.g. nats://127.0.0.1:4222). In cluster mode
    /// several may be given, comma-separated.
    #[arg(long, env = "SCIMLOG_NATS_URL")]
    pub nats_url: Option<String>,
    /// JetStream stream name (subjects `scimlog.*.*.*`: `scimlog.<tenant>.<resource>.<event>`).
    #[arg(long, env = "SCIMLOG_NATS_STREAM", default_value = "SCIMLOG")]
    pub nats_stream: String,
    /// How long the stream keeps events. This bounds how long subscribers' copies of personal
    /// values live on in NATS after an erasure.
    #[arg(long, env = "SCIMLOG_NATS_MAX_AGE_S", default_value_t = 7 * 24 * 3600)]
    pub nats_max_age_s: u64,
    /// JetStream's de-duplication window (by `Nats-Msg-Id`).
    #[arg(long, env = "SCIMLOG_NATS_DUPLICATE_WINDOW_S", default_value_t = 120)]
    pub nats_duplicate_window_s: u64,
    /// Stream replicas (1 for a single server).
    #[arg(long, env = "SCIMLOG_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
    /// Publishes awaiting their ack at once.
    #[arg(long, env = "SCIMLOG_NATS_MAX_IN_FLIGHT", default_value_t = 256)]
    pub nats_max_in_flight: usize,
}

/// What the publisher is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublisherState {
    #[default]
    Starting,
    Publishing,
    /// NATS failed; the session starts again after a backoff (the error is kept).
    Retrying,
    /// A cluster node that does not lead: the leader publishes.
    Standby,
    Stopped,
}

impl PublisherState {
    pub const ALL: [PublisherState; 5] = [
        PublisherState::Starting,
        PublisherState::Publishing,
        PublisherState::Retrying,
        PublisherState::Standby,
        PublisherState::Stopped,
    ];
    /// As `/healthz` and the metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            PublisherState::Starting => "starting",
            PublisherState::Publishing => "publishing",
            PublisherState::Retrying => "retrying",
            PublisherState::Standby => "standby",
            PublisherState::Stopped => "stopped",
        }
    }
}

/// What the publisher is doing, for `/healthz` and the logs.
#[derive(Default)]
pub struct PublisherStatus {
    published: AtomicU64,
    state: Mutex<(PublisherState, Option<String>)>,
    /// Resumes that could not tell where the log stands in the stream (a possible gap).
    gaps: AtomicU64,
    last_gap: Mutex<Option<String>>,
    /// Commit-to-ack durations and session failures.
    metrics: crate::metrics::Metrics,
}

impl PublisherStatus {
    /// Possible gaps found so far, and the last one's description.
    pub fn gaps(&self) -> (u64, Option<String>) {
        (self.gaps.load(Ordering::Relaxed), self.last_gap.lock().expect("status lock").clone())
    }
    /// The last log position known to be in the stream.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    pub fn state(&self) -> (PublisherState, Option<String>) {
        self.state.lock().expect("status lock").clone()
    }
    fn set(&self, state: PublisherState, error: Option<String>) {
        let mut s = self.state.lock().expect("status lock");
        if s.0 != state {
            match &error {
                Some(e) => tracing::warn!(state = ?state, error = %e, "publisher"),
                None => tracing::info!(state = ?state, "publisher"),
            }
        }
        *s = (state, error);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error("event at position {0} cannot be decoded: {1}")]
    Decode(u64, String),
    /// The NATS server cannot do what is asked of it (too old): trying again will not help.
    #[error("{0}")]
    Unsupported(String),
}

/// A session's client: a short connection timeout and few reconnects, since the caller retries
/// a failed session whole (from where the stream or the store says).
pub(crate) async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, BusError> {
    let url = cfg.nats_url.as_deref().unwrap_or_default();
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(Some(3))
        .connect(server_addrs(url))
        .await
        .map_err(nats)
}

/// `--nats-url`'s servers: one URL, or several comma-separated.
pub fn server_addrs(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect()
}

fn nats<E: std::fmt::Display>(e: E) -> BusError {
    BusError::Nats(e.to_string())
}

/// The subject of an event: `scimlog.<tenant>.<resource>.<event>`, e.g.
/// `scimlog.acme.group.member_added` (the event type is `<resource>.<event>`).
pub fn subject(tenant: &str, event_type: &str) -> String {
    format!("scimlog.{tenant}.{event_type}")
}

/// The log stream's subjects: exactly the events' four tokens. Other subjects under `scimlog.`
/// (the outbound outcomes' five) must not fall into it, since its sequence is the log position.
pub const EVENT_SUBJECTS: &str = "scimlog.*.*.*";

pub fn stream_config(cfg: &NatsConfig) -> stream::Config {
    limits_stream(cfg, &cfg.nats_stream, EVENT_SUBJECTS)
}

/// A file stream of these subjects kept as the configuration says (age, de-duplication window,
/// replicas): the log stream, and the outbound outcomes' stream.
pub fn limits_stream(cfg: &NatsConfig, name: &str, subjects: &str) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(cfg.nats_max_age_s),
        duplicate_window: Duration::from_secs(cfg.nats_duplicate_window_s),
        num_replicas: cfg.nats_replicas,
        ..Default::default()
    }
}

/// Creates the stream, or brings an existing one to the configured settings.
async fn ensure_stream(js: &jetstream::Context, cfg: &NatsConfig) -> Result<stream::Stream, BusError> {
    let wanted = stream_config(cfg);
    let mut stream = js.get_or_create_stream(wanted.clone()).await.map_err(nats)?;
    let current = stream.info().await.map_err(nats)?.config.clone();
    if current.subjects != wanted.subjects
        || current.max_age != wanted.max_age
        || current.duplicate_window != wanted.duplicate_window
        || current.num_replicas != wanted.num_replicas
    {
        js.update_stream(wanted).await.map_err(nats)?;
        stream = js.get_stream(&cfg.nats_stream).await.map_err(nats)?;
    }
    Ok(stream)
}

/// The envelope as published: personal values opened (subscribers need them; erased ones read
/// `[erased]`), plus `hash`, the hash of the stored (sealed) form that `scimlog audit` verifies.
pub fn published_body(sealed: &SealedEvent, opener: &dyn Opener) -> Result<(scimlog_schemas::Event, Vec<u8>), String> {
    let event = sealed.decode(opener).map_err(|e| e.to_string())?;
    let body = event.published_json(&sealed.event_hash());
    Ok((event, body))
}

/// The next events to publish from `next`, decoded once: (position, event, body). A
/// `user.erased` goes out alone, once the messages before it are acknowledged (`drained`: none
/// is in flight) and the person's earlier messages are deleted from the stream.
async fn outgoing(
    store: &Store,
    opener: &(dyn Opener + Send + Sync),
    stream: &stream::Stream,
    next: u64,
    limit: usize,
    drained: bool,
) -> Result<Vec<(u64, scimlog_schemas::Event, Vec<u8>)>, BusError> {
    let mut out = Vec::new();
    for (position, sealed) in store.events_from(next, limit)? {
        let (event, body) = published_body(&sealed, opener).map_err(|e| BusError::Decode(position, e))?;
        if !matches!(event.body, scimlog_schemas::EventBody::UserErased { .. }) {
            out.push((position, event, body));
            continue;
        }
        if out.is_empty() && drained {
            let n = delete_erased(stream, store, &event.tenant, &event.resource_id).await?;
            tracing::info!(position, deleted = n, "an erased person's messages were deleted from the stream");
            out.push((position, event, body));
        }
        break;
    }
    Ok(out)
}

/// The headers of an event's message; `traceparent` is the W3C trace context to send on (the
/// publish span's while tracing, else the one stored with the event), so that a subscriber
/// continues the trace of the request that wrote it.
pub fn headers(event: &scimlog_schemas::Event, traceparent: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(tp) = traceparent {
        h.insert("traceparent", tp);
    }
    h.insert(HEADER_POSITION, event.position.to_string().as_str());
    h.insert(HEADER_EVENT_ID, event.id.to_string().as_str());
    h.insert(HEADER_EVENT_TYPE, event.event_type().as_str());
    h.insert(HEADER_SCHEMA_VERSION, event.schema_version.to_string().as_str());
    h.insert(HEADER_REQUEST_ID, event.request_id.as_str());
    h
}

/// Where to resume: (next log position to publish, the stream's last sequence), from the last
/// message this publisher wrote (republished copies are skipped; so are messages that are gone,
/// deleted after an erasure or aged out). Any other error reading the stream is an error, and the
/// session retries: a NATS that does not answer never counts as "aged out".
async fn resume_point(stream: &mut stream::Stream, status: &PublisherStatus) -> Result<(u64, u64), BusError> {
    let state = stream.info().await.map_err(nats)?.state.clone();
    let last = state.last_sequence;
    let mut seq = last;
    while seq >= state.first_sequence.max(1) {
        match stream.get_raw_message(seq).await {
            Ok(msg) if msg.headers.get(HEADER_REPUBLISHED).is_some() => seq -= 1,
            Ok(msg) => {
                let position =
                    msg.headers.get(HEADER_POSITION).and_then(|v| v.as_str().parse::<u64>().ok()).ok_or_else(|| {
                        BusError::Nats(format!("stream message {seq} has no {HEADER_POSITION} header"))
                    })?;
                return Ok((position + 1, last));
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => seq -= 1,
            Err(e) => return Err(nats(e)),
        }
    }
    if last == 0 {
        return Ok((1, 0));
    }
    // No message of this publisher is left (all aged out or deleted): where the log stands in
    // the stream is not known. Sequence n holds position n unless `republish` appended beyond the
    // duplicate window, so resuming at `last + 1` may skip events: say so, loudly.
    let gap = format!(
        "the stream holds no message of this log (last sequence {last}, all aged out or deleted): \
         resuming at position {}; events before it may be missing from the stream \
         (scimlog republish --from 1 sends them again)",
        last + 1
    );
    tracing::error!("{gap}");
    status.gaps.fetch_add(1, Ordering::Relaxed);
    *status.last_gap.lock().expect("status lock") = Some(gap);
    Ok((last + 1, last))
}

/// Deletes from the stream the messages that carried an erased person's values in clear
/// (`user.created`, `user.updated` at the positions of their history; stream sequence = log
/// position, checked against each message's `Scimlog-Position`), before `user.erased` itself is
/// published. Copies that `republish` appended beyond the duplicate window are not found here;
/// they age out with the stream's max age.
async fn delete_erased(stream: &stream::Stream, store: &Store, tenant: &str, user: &str) -> Result<u64, BusError> {
    let positions = {
        let view = store.view();
        let p = scimlog_projections::query::history_positions(&view, tenant, scimlog_schemas::ResourceKind::User, user);
        if let Some(e) = view.take_error() {
            return Err(e.into());
        }
        p
    };
    let mut deleted = 0;
    for position in positions {
        let msg = match stream.get_raw_message(position).await {
            Ok(m) => m,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => continue,
            Err(e) => return Err(nats(e)),
        };
        let header = |name: &str| msg.headers.get(name).map(|v| v.as_str().to_string());
        let carries_values = matches!(header(HEADER_EVENT_TYPE).as_deref(), Some("user.created" | "user.updated"));
        if header(HEADER_POSITION) == Some(position.to_string()) && carries_values {
            stream.delete_message(position).await.map_err(nats)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Starts the publisher. It runs until `shutdown` turns true; with `active` (cluster mode) it
/// publishes only while that is true (this node leads), and stands by otherwise: the stream
/// says where to resume, so a new leader's publisher continues where the last one stopped.
pub fn start(
    cfg: NatsConfig,
    store: Store,
    opener: Arc<dyn Opener + Send + Sync>,
    committed: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    active: Option<watch::Receiver<bool>>,
    metrics: crate::metrics::Metrics,
) -> (Arc<PublisherStatus>, tokio::task::JoinHandle<()>) {
    let status = Arc::new(PublisherStatus { metrics, ..Default::default() });
    status.set(PublisherState::Starting, None);
    let s = status.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut shutdown = shutdown;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let stop = match &active {
                Some(active) if !*active.borrow() => {
                    s.set(PublisherState::Standby, None);
                    let mut active = active.clone();
                    tokio::select! {
                        _ = active.wait_for(|a| *a) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
                Some(active) => stop_when_inactive(shutdown.clone(), active.clone()),
                None => shutdown.clone(),
            };
            let session = session(&cfg, &store, &*opener, committed.clone(), stop, &s);
            match session.await {
                Ok(()) => break,
                Err(e) => {
                    s.metrics.publisher_errors.inc();
                    s.set(PublisherState::Retrying, Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        s.set(PublisherState::Stopped, None);
    });
    (status, task)
}

/// A stop signal that turns true with `shutdown`, or when `active` turns false.
fn stop_when_inactive(mut shutdown: watch::Receiver<bool>, mut active: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let stopped = |s: &watch::Receiver<bool>, a: &watch::Receiver<bool>| *s.borrow() || !*a.borrow();
    let (tx, rx) = watch::channel(stopped(&shutdown, &active));
    tokio::spawn(async move {
        while !*tx.borrow() {
            tokio::select! {
                r = shutdown.changed() => if r.is_err() { break },
                r = active.changed() => if r.is_err() { break },
                _ = tx.closed() => break,
            }
            tx.send_replace(stopped(&shutdown, &active));
        }
    });
    rx
}

/// One connection's worth of publishing; returns Ok only on shutdown.
async fn session(
    cfg: &NatsConfig,
    store: &Store,
    opener: &(dyn Opener + Send + Sync),
    mut committed: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
    status: &PublisherStatus,
) -> Result<(), BusError> {
    let js = jetstream::new(connect(cfg).await?);
    let mut stream = ensure_stream(&js, cfg).await?;
    loop {
        let (mut next, mut last_seq) = resume_point(&mut stream, status).await?;
        status.published.store(next - 1, Ordering::Relaxed);
        status.set(PublisherState::Publishing, None);
        let max = cfg.nats_max_in_flight.max(1);
        let mut window = InFlight::new();
        // A refill found a `user.erased` first: it waits until nothing is in flight.
        let mut erasure_waits = false;
        'publish: loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            // Refill the window once half of it is acknowledged: the next page is read, decoded
            // and sent while the stream stores the one before (not stop-and-wait per page), in
            // pages of half the window or more, so reads stay batched.
            let head = *committed.borrow_and_update();
            erasure_waits &= !window.is_empty();
            if next <= head && window.len() <= max / 2 && !erasure_waits {
                let page = outgoing(store, opener, &stream, next, max - window.len(), window.is_empty()).await?;
                erasure_waits = page.is_empty();
                for (position, event, body) in page {
                    let ack = send(&js, &event, body, last_seq + window.len() as u64).await?;
                    window.push_back((position, event.recorded_at, ack));
                    next = position + 1;
                }
            }
            let Some((position, committed_at, ack)) = window.pop_front() else {
                tokio::select! {
                    _ = committed.changed() => {}
                    _ = shutdown.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        // Idle: make sure the stream still holds what it acknowledged (a NATS
                        // restart can lose its tail); if not, resend from where it stands.
                        if stream.info().await.map_err(nats)?.state.last_sequence != last_seq {
                            tracing::warn!(last_seq, "the stream's last sequence changed while idle; resyncing");
                            break 'publish;
                        }
                    }
                }
                continue;
            };
            let want = last_seq + 1;
            match ack.await {
                Ok(a) if a.sequence == want && !a.duplicate => {
                    last_seq = want;
                    status.published.store(position, Ordering::Relaxed);
                    let waited = chrono::Utc::now() - committed_at;
                    status.metrics.publisher_ack.observe(waited.as_seconds_f64().max(0.0));
                }
                Ok(a) => {
                    tracing::warn!(
                        position,
                        seq = a.sequence,
                        duplicate = a.duplicate,
                        "stream out of step; resyncing"
                    );
                    break 'publish;
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    // The stream is not where we thought (it lost its tail, or someone else
                    // wrote): ask it where it stands.
                    tracing::warn!(position, "stream's last sequence moved; resyncing");
                    break 'publish;
                }
                Err(e) => return Err(nats(e)),
            }
        }
    }
}

/// The publishes sent and not yet acknowledged, oldest first: (position, commit time, ack).
type InFlight = std::collections::VecDeque<(u64, chrono::DateTime<chrono::Utc>, jetstream::context::PublishAckFuture)>;

/// Sends one event's message, expecting the stream's last sequence to be `expected` (each
/// message continues the one before, so a stream that lost its tail or got another writer
/// refuses it); the publish span continues the trace of the request that wrote the event.
async fn send(
    js: &jetstream::Context,
    event: &scimlog_schemas::Event,
    body: Vec<u8>,
    expected: u64,
) -> Result<jetstream::context::PublishAckFuture, BusError> {
    let subject = subject(&event.tenant, event.event_type().as_str());
    let span = tracing::info_span!(
        target: crate::telemetry::TARGET,
        "publish",
        otel.name = %format!("{subject} publish"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.destination.name = %subject,
        scimlog.position = event.position,
    );
    crate::telemetry::continue_from(&span, event.traceparent.as_deref());
    let traceparent = crate::telemetry::traceparent(&span).or_else(|| event.traceparent.clone());
    let publish = Publish::build()
        .payload(body.into())
        .headers(headers(event, traceparent.as_deref()))
        .message_id(event.id.to_string())
        .expected_last_sequence(expected);
    js.send_publish(subject, publish).instrument(span).await.map_err(nats)
}

/// Sends positions `from..=to` again (marked as republished). JetStream drops those still inside
/// its de-duplication window; beyond it they are appended again, and consumers de-duplicate by
/// event id.
pub async fn republish(
    cfg: &NatsConfig,
    store: &Store,
    opener: &(dyn Opener + Send + Sync),
    from: u64,
    to: Option<u64>,
) -> Result<(u64, u64), BusError> {
    let url = cfg.nats_url.as_deref().ok_or_else(|| BusError::Nats("--nats-url is required".into()))?;
    let client = async_nats::connect(server_addrs(url)).await.map_err(nats)?;
    let js = jetstream::new(client);
    ensure_stream(&js, cfg).await?;
    let (mut sent, mut duplicates) = (0u64, 0u64);
    let mut next = from.max(1);
    loop {
        let page = store.events_from(next, cfg.nats_max_in_flight.max(1))?;
        let page: Vec<_> = page.into_iter().take_while(|(p, _)| to.is_none_or(|t| *p <= t)).collect();
        if page.is_empty() {
            return Ok((sent, duplicates));
        }
        let mut acks = Vec::new();
        for (position, sealed) in &page {
            let (event, body) = published_body(sealed, opener).map_err(|e| BusError::Decode(*position, e))?;
            let mut h = headers(&event, event.traceparent.as_deref());
            h.insert(HEADER_REPUBLISHED, "true");
            let publish = Publish::build().payload(body.into()).headers(h).message_id(event.id.to_string());
            acks.push(
                js.send_publish(subject(&event.tenant, event.event_type().as_str()), publish).await.map_err(nats)?,
            );
        }
        for ack in acks {
            let a = ack.await.map_err(nats)?;
            if a.duplicate {
                duplicates += 1;
            } else {
                sent += 1;
            }
        }
        next = page.last().map(|(p, _)| p + 1).unwrap_or(next);
    }
}
