//! The single writer. It owns the head of the log and is the only code that appends: commands
//! queue up on a bounded channel, and the writer takes as many as are waiting (up to
//! `group_commit_max`), decides each against the read models as already changed by the ones before
//! it in the same batch, folds the resulting events into one overlay, and commits events and
//! read-model writes in one fsync'd `WriteBatch`. Only then does any of the requests get its
//! answer: a response always means durable.
//!
//! Serialising writes here is what makes uniqueness and version checks race-free without locks.
//!
//! In cluster mode ([`Replication`]) the writer also appends each batch to the replicated log
//! before the local commit, and only while this node leads; on a follower it applies the
//! records the leader appended ([`WriterHandle::apply_replicated`]), checked against its head,
//! through the same fold. Either way this thread is the only one that writes the store.
//!
//! An outbound runner (`scimlog outbound run`) keeps a copy of a directory folded from its
//! public event stream ([`WeakWriter::apply_copied`]): the events come opened, are sealed here
//! with this store's own keys, and chain on this store's own head, at the directory's positions.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use chrono::{SubsecRound, Utc};
use scimlog_projections::{apply, keys, Overlay};
use scimlog_schemas::event::{Event, EventBody, SealedEvent};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::keys::KeyRing;
use super::{Head, Store};
use crate::command::{self, Command, Decision, Refusal};

/// Who asks, on whose behalf, as part of which request.
#[derive(Clone, Debug)]
pub struct Origin {
    pub tenant: String,
    pub actor: String,
    pub request_id: String,
}

struct WriteRequest {
    origin: Origin,
    /// The W3C trace context of the span that submitted it (the HTTP request), when tracing is on.
    traceparent: Option<String>,
    command: Command,
    reply: oneshot::Sender<Result<Committed, WriteError>>,
}

/// A command that became durable events.
#[derive(Debug)]
pub struct Committed {
    pub events: Vec<Event>,
    pub decision: Decision,
    /// For a command that answers with a user (see [`Command::answers_with_a_user`]): the
    /// user's stored document as this request's events left it, taken from the batch's writes.
    /// `None` when the request wrote no document (a PATCH that changed nothing).
    pub user_document: Option<Vec<u8>>,
    /// The purge of an erasure in this commit (a ticket of [`super::purge::PurgeStatus`]).
    pub purge: Option<u64>,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum WriteError {
    #[error("refused: {0:?}")]
    Refused(Refusal),
    #[error("the write queue is full ({depth} requests waiting)")]
    QueueFull { depth: usize },
    /// The tenant holds its whole share of the queue.
    #[error("this tenant has {share} writes waiting")]
    TenantQueueFull { share: usize },
    #[error("the store failed to commit; nothing was written")]
    Storage,
    #[error("the writer has stopped")]
    Closed,
    /// A bug: deciding or folding this request panicked. Nothing of its batch was written; the
    /// writer goes on with the next one.
    #[error("internal error while deciding the write; nothing was written")]
    Internal,
    /// Cluster mode: this node does not lead (any more); nothing was written.
    #[error("this node does not lead the cluster now")]
    NotLeader,
    /// Cluster mode: leadership was lost while appending; whether the write is in the log is
    /// not known (the log will say; this node follows it from now on).
    #[error("leadership was lost while appending; the outcome is not known")]
    OutcomeUnknown,
    /// Cluster mode: the replicated log did not take the batch; nothing was written.
    #[error("the replicated log is unavailable; nothing was written")]
    ClusterUnavailable,
    /// An outbound runner's copy: writes go to the directory it copies.
    #[error("this is an outbound runner's copy of a directory; it takes no writes")]
    Copy,
}

/// Cluster mode's replicated log as the writer sees it (`cluster.rs` implements it over NATS).
/// Its calls block: they run on the writer thread, between deciding and committing.
pub trait Replication: Send + Sync {
    /// Whether this node may decide writes now (it holds the lease and has caught up).
    fn is_leader(&self) -> bool;
    /// Makes `records` (positions after `head`; `true` marks a request's last record) and the
    /// wrapped data keys they are sealed with durable in the cluster. Only then does the
    /// writer commit them locally.
    fn append(
        &self,
        head: &Head,
        records: &[(u64, SealedEvent, bool)],
        new_keys: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), ReplicationError>;
    /// This node must stop deciding writes (a fence, an unknown outcome, a local failure).
    fn step_down(&self, why: &str);
    /// Erased subjects' data keys, to be removed from the replicated copy too (after the local
    /// commit of the erasure, on every node: purging twice is harmless).
    fn erased(&self, key_ids: Vec<Vec<u8>>);
    /// Most records one request may write (one atomic append).
    fn max_records(&self) -> usize;
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// Another writer appended first: nothing of this batch is in the log. Step down.
    #[error("another node appended to the log first")]
    Fenced,
    /// Known not to be stored (the cluster did not answer before anything went out, or refused).
    #[error("the replicated log is unavailable: {0}")]
    NotStored(String),
    /// Whether the batch is in the log is not known; the stream will tell the follower loop.
    #[error("the outcome of the append is not known: {0}")]
    Unknown(String),
}

/// Records the leader appended, for a follower to apply, with the wrapped data keys they need
/// that this node does not have yet (read from the replicated copy).
pub struct ReplicatedBatch {
    pub records: Vec<(u64, SealedEvent)>,
    pub keys: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The records do not continue this node's log (position or hash): follow again from the head.
    #[error("record {position} does not continue the local log: {detail}")]
    Discontinuous { position: u64, detail: String },
    /// This node leads now: it appends, it does not apply others' records.
    #[error("this node leads; it does not apply replicated records")]
    Leading,
    #[error("the store failed to commit replicated records: {0}")]
    Storage(String),
    #[error("the writer has stopped")]
    Closed,
}

enum Input {
    Write(WriteRequest),
    /// Records of another log, answered with the new head.
    Other(OtherLog, oneshot::Sender<Result<Head, ApplyError>>),
}

enum OtherLog {
    /// A cluster leader's sealed records.
    Replicated(ReplicatedBatch),
    /// A directory's events as its public stream carries them (an outbound runner's copy).
    Copied(Vec<Event>),
}

#[derive(Clone)]
pub struct WriterOptions {
    /// How many requests may wait for the writer before new ones are refused with 503.
    pub queue_depth: usize,
    /// How many of them one tenant may hold.
    pub queue_per_tenant: usize,
    /// How many queued requests one commit (one fsync) may take.
    pub group_commit_max: usize,
    /// fsync every commit. Off only for benchmarks that say so.
    pub sync: bool,
    /// The role/entitlement URN namespace.
    pub namespace: String,
    /// The organization environments and resource groups are created in.
    pub default_organization: String,
    /// What one write may ask of the writer.
    pub limits: command::WriteLimits,
    /// Where commits, their sizes and durations, events and refusals are counted.
    pub metrics: crate::metrics::Metrics,
    /// Cluster mode: the replicated log every batch goes to first. `None`: a single node.
    pub replication: Option<Arc<dyn Replication>>,
    /// An outbound runner's copy of a directory: every write is refused (the directory decides
    /// them); the store changes only by [`WeakWriter::apply_copied`].
    pub copy: bool,
}

impl std::fmt::Debug for WriterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterOptions")
            .field("queue_depth", &self.queue_depth)
            .field("group_commit_max", &self.group_commit_max)
            .field("cluster", &self.replication.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct WriterHandle {
    /// `None` once closed.
    tx: Option<mpsc::Sender<Input>>,
    queue_depth: usize,
    committed: watch::Receiver<u64>,
    running: Arc<AtomicBool>,
    purges: Arc<super::purge::PurgeStatus>,
    /// Writes each tenant has queued or in the writer, against `queue_per_tenant`.
    queued: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    queue_per_tenant: usize,
    metrics: crate::metrics::Metrics,
}

/// See [`WriterHandle::downgrade`].
#[derive(Clone)]
pub struct WeakWriter {
    tx: Option<mpsc::WeakSender<Input>>,
    committed: watch::Receiver<u64>,
}

impl WeakWriter {
    /// Applies records another node appended (cluster follower). Waits for a place in the queue
    /// rather than failing: the follower loop is the only sender, and it has nothing else to do.
    pub async fn apply_replicated(&self, batch: ReplicatedBatch) -> Result<Head, ApplyError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().and_then(|tx| tx.upgrade()).ok_or(ApplyError::Closed)?;
        tx.send(Input::Other(OtherLog::Replicated(batch), reply)).await.map_err(|_| ApplyError::Closed)?;
        drop(tx);
        rx.await.map_err(|_| ApplyError::Closed)?
    }

    /// Applies events of a directory's public stream to this copy (an outbound runner), in
    /// position order after the head. Waits for a place in the queue, as `apply_replicated`.
    pub async fn apply_copied(&self, events: Vec<Event>) -> Result<Head, ApplyError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().and_then(|tx| tx.upgrade()).ok_or(ApplyError::Closed)?;
        tx.send(Input::Other(OtherLog::Copied(events), reply)).await.map_err(|_| ApplyError::Closed)?;
        drop(tx);
        rx.await.map_err(|_| ApplyError::Closed)?
    }

    /// The position of the last committed event (see [`WriterHandle::committed`]).
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }
}

/// One tenant's place in the queue, given back when its write is answered (or given up).
struct QueueShare {
    queued: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for QueueShare {
    fn drop(&mut self) {
        let mut queued = self.queued.lock().expect("queue share lock");
        if let Some(n) = queued.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                queued.remove(&self.tenant);
            }
        }
    }
}

/// Clears the writer's running flag when its thread ends, however it ends.
struct RunningGuard(Arc<AtomicBool>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl WriterHandle {
    /// Queues a command and waits until it is durable (or refused).
    pub async fn submit(&self, origin: Origin, command: Command) -> Result<Committed, WriteError> {
        let started = std::time::Instant::now();
        let _share = self.take_share(&origin.tenant).inspect_err(|_| self.metrics.write_rejected("tenant_share"))?;
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(WriteError::Closed)?;
        let traceparent = crate::telemetry::traceparent(&tracing::Span::current());
        tx.try_send(Input::Write(WriteRequest { origin, traceparent, command, reply })).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                self.metrics.write_rejected("queue_full");
                WriteError::QueueFull { depth: self.queue_depth }
            }
            mpsc::error::TrySendError::Closed(_) => WriteError::Closed,
        })?;
        // A reply dropped unanswered: the batch panicked (the writer goes on) or the writer is gone.
        let answer = rx.await.map_err(|_| if self.is_running() { WriteError::Internal } else { WriteError::Closed })?;
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        answer
    }

    /// A handle that does not keep the writer running: the cluster's role loop holds one, so
    /// that the writer stops (and the store closes) once the server's own handles are gone,
    /// whatever order a runtime drops its tasks in.
    pub fn downgrade(&self) -> WeakWriter {
        WeakWriter { tx: self.tx.as_ref().map(|tx| tx.downgrade()), committed: self.committed.clone() }
    }

    /// Writes waiting for the writer now.
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// A place in the queue for `tenant`, unless it holds its whole share already.
    fn take_share(&self, tenant: &str) -> Result<QueueShare, WriteError> {
        let mut queued = self.queued.lock().expect("queue share lock");
        let n = queued.entry(tenant.to_string()).or_insert(0);
        if *n >= self.queue_per_tenant {
            return Err(WriteError::TenantQueueFull { share: self.queue_per_tenant });
        }
        *n += 1;
        Ok(QueueShare { queued: self.queued.clone(), tenant: tenant.to_string() })
    }

    /// Drops this handle's end of the queue: once every handle is closed (or dropped), the
    /// writer drains what is queued and stops.
    pub fn close(&mut self) {
        self.tx = None;
    }

    /// The erasures' purges: pending, done, failed.
    pub fn purges(&self) -> &super::purge::PurgeStatus {
        &self.purges
    }

    /// Whether the writer thread is alive: `/healthz` is not "ok" without it.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// The position of the last committed event; changes after every commit.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }
}

/// Starts the writer thread. It ends when every [`WriterHandle`] is dropped and the queue is empty.
pub fn start(
    store: Store,
    keys: Arc<KeyRing>,
    opts: WriterOptions,
) -> Result<(WriterHandle, JoinHandle<()>), super::LogError> {
    let head = store.head()?;
    let (queue_depth, queue_per_tenant) = (opts.queue_depth, opts.queue_per_tenant);
    let (tx, rx) = mpsc::channel(opts.queue_depth.max(1));
    let (committed_tx, committed) = watch::channel(head.position);
    let running = Arc::new(AtomicBool::new(true));
    let guard = RunningGuard(running.clone());
    let (purger, purge_thread) = super::purge::start(store.clone());
    let purges = purger.status.clone();
    let metrics = opts.metrics.clone();
    let thread = std::thread::Builder::new()
        .name("scimlog-writer".into())
        .spawn(move || {
            let _guard = guard;
            run(store, keys, rx, head, opts, committed_tx, &purger);
            // Queued purges finish before the writer counts as stopped (and the store closes).
            drop(purger);
            let _ = purge_thread.join();
        })
        .expect("spawn writer thread");
    let queued = Default::default();
    Ok((
        WriterHandle { tx: Some(tx), queue_depth, committed, running, purges, queued, queue_per_tenant, metrics },
        thread,
    ))
}

fn run(
    store: Store,
    keys: Arc<KeyRing>,
    mut rx: mpsc::Receiver<Input>,
    mut head: Head,
    opts: WriterOptions,
    committed: watch::Sender<u64>,
    purger: &super::purge::Purger,
) {
    let mut batch = Vec::with_capacity(opts.group_commit_max);
    let mut next_input = None;
    while let Some(first) = next_input.take().or_else(|| rx.blocking_recv()) {
        let first = match first {
            Input::Write(w) => w,
            Input::Other(log, reply) => {
                let applied = apply_other_log(log, &store, &keys, &head, &opts, purger, &committed);
                if let Ok(h) = &applied {
                    head = h.clone();
                }
                let _ = reply.send(applied);
                continue;
            }
        };
        batch.push(first);
        while batch.len() < opts.group_commit_max {
            match rx.try_recv() {
                Ok(Input::Write(r)) => batch.push(r),
                // Applied after this batch, in the order it came.
                Ok(other) => {
                    next_input = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        // A panic while sealing or folding leaves the overlay half-written: the whole batch is
        // dropped (its requests learn of it as the reply senders go: 500), and the head stays.
        let taken = std::mem::take(&mut batch);
        match catch_unwind(AssertUnwindSafe(|| {
            commit_batch(&store, &keys, taken, head.clone(), &opts, purger, &committed)
        })) {
            Ok(new_head) => head = new_head,
            Err(_) => tracing::error!(position = head.position, "a write batch panicked; it was discarded"),
        }
        committed.send_replace(head.position);
    }
    tracing::info!(position = head.position, "writer drained and stopped");
}

/// Applies records of another log (a cluster leader's, or a directory's public stream for a
/// copy). As for a batch of writes, a panic while folding drops the records: the loop that sent
/// them learns it from the answer, and follows again from the head.
fn apply_other_log(
    log: OtherLog,
    store: &Store,
    keys: &KeyRing,
    head: &Head,
    opts: &WriterOptions,
    purger: &super::purge::Purger,
    committed: &watch::Sender<u64>,
) -> Result<Head, ApplyError> {
    let ctx = Committing { store, keys, opts, purger, committed };
    let applied = catch_unwind(AssertUnwindSafe(|| match log {
        OtherLog::Replicated(records) => apply_replicated(&ctx, records, head),
        OtherLog::Copied(events) => apply_copied(&ctx, events, head),
    }));
    applied.unwrap_or_else(|_| {
        tracing::error!(position = head.position, "applying records of another log panicked");
        Err(ApplyError::Storage("applying the records panicked; nothing of them was committed".into()))
    })
}

/// Decides, folds and commits one batch; answers every request in it. Returns the new head.
fn commit_batch(
    store: &Store,
    keys: &KeyRing,
    batch: Vec<WriteRequest>,
    head: Head,
    opts: &WriterOptions,
    purger: &super::purge::Purger,
    committed: &watch::Sender<u64>,
) -> Head {
    let sync = opts.sync;
    if opts.copy {
        for req in batch {
            let _ = req.reply.send(Err(WriteError::Copy));
        }
        return head;
    }
    if opts.replication.as_ref().is_some_and(|r| !r.is_leader()) {
        // A follower (or a leader that just stepped down) decides nothing: the HTTP layer
        // forwards writes to the leader; the ones already queued here are answered 503.
        for req in batch {
            let _ = req.reply.send(Err(WriteError::NotLeader));
        }
        return head;
    }
    let view = store.view();
    let mut overlay = Overlay::new(&view);
    let mut next = head.clone();
    let mut appended: Vec<(u64, SealedEvent)> = Vec::new();
    // Whether each appended record ends its request (cluster followers apply whole requests).
    let mut request_ends: Vec<bool> = Vec::new();
    let mut answers = Vec::with_capacity(batch.len());
    let mut sealer = keys.batch();
    let mut facts = BatchFacts::default();
    // Milliseconds: the precision `meta.lastModified` is shown with, so that a client filtering
    // with a value it was given matches the resource it came from.
    let now = Utc::now().trunc_subsecs(3);
    let faults = store.faults();
    // One span for the batch, linked to every request it carries (each its own trace).
    let commit_span = tracing::info_span!(target: crate::telemetry::TARGET, "commit", batch.requests = batch.len());
    for tp in batch.iter().filter_map(|r| r.traceparent.as_deref()) {
        crate::telemetry::link_to(&commit_span, tp);
    }
    let _in_commit = commit_span.enter();

    for req in batch {
        let decide_span =
            tracing::info_span!(target: crate::telemetry::TARGET, "decide", request_id = %req.origin.request_id);
        crate::telemetry::continue_from(&decide_span, req.traceparent.as_deref());
        let _in_decide = decide_span.enter();
        let ctx = command::Ctx {
            tenant: &req.origin.tenant,
            namespace: &opts.namespace,
            default_organization: &opts.default_organization,
            limits: opts.limits,
        };
        let hands_back_user = req.command.answers_with_a_user();
        // `decide` only reads: a panic in it (a bug) costs this request alone.
        let decided = catch_unwind(AssertUnwindSafe(|| {
            faults.maybe_panic_in_decide();
            command::decide(&overlay, &ctx, req.command)
        }));
        match decided {
            Err(_) => {
                tracing::error!(request_id = %req.origin.request_id, "deciding a write panicked; answered 500");
                answers.push((req.reply, Err(WriteError::Internal)));
            }
            Ok(Err(refusal)) => answers.push((req.reply, Err(WriteError::Refused(refusal)))),
            Ok(Ok(decision)) if opts.replication.as_ref().is_some_and(|r| decision.events.len() > r.max_records()) => {
                let max = opts.replication.as_ref().map_or(0, |r| r.max_records());
                let detail = format!(
                    "this request would write {} events; in cluster mode one request writes at most {max} \
                     (one atomic append): split it",
                    decision.events.len()
                );
                let refusal =
                    Refusal::Invalid(scimlog_schemas::SchemaError::new(scimlog_schemas::ScimType::TooMany, detail));
                answers.push((req.reply, Err(WriteError::Refused(refusal))));
            }
            Ok(Ok(decision)) => {
                let mut events = Vec::with_capacity(decision.events.len());
                for new in &decision.events {
                    let event = Event {
                        id: Uuid::now_v7(),
                        position: next.position + 1,
                        tenant: req.origin.tenant.clone(),
                        schema_version: new.body.event_type().schema_version(),
                        body: new.body.clone(),
                        resource_type: new.resource_type,
                        resource_id: new.resource_id.clone(),
                        resource_version: new.resource_version,
                        recorded_at: now,
                        actor: req.origin.actor.clone(),
                        request_id: req.origin.request_id.clone(),
                        traceparent: req.traceparent.clone(),
                        prev_hash: next.hash,
                    };
                    let sealed = event.seal(&mut sealer);
                    if facts.note(&event) {
                        sealer.discard(&event.tenant, &event.resource_id);
                    }
                    next = Head { position: event.position, hash: sealed.event_hash() };
                    apply(&mut overlay, &event);
                    appended.push((event.position, sealed));
                    request_ends.push(false);
                    events.push(event);
                }
                if let Some(last) = request_ends.last_mut().filter(|_| !events.is_empty()) {
                    *last = true;
                }
                // Read from the batch's own writes, never the store: no read on this thread.
                let user_document = hands_back_user
                    .then(|| overlay.writes().get(&keys::user(&req.origin.tenant, &decision.resource_id)))
                    .flatten()
                    .and_then(Clone::clone);
                answers.push((req.reply, Ok(Committed { events, decision, user_document, purge: None })));
            }
        }
    }

    let failed = view.take_error().or_else(|| sealer.take_error());
    let writes = overlay.into_writes();
    // The view is a snapshot: it must be gone before a purge, or RocksDB keeps the old values
    // alive for it.
    drop(view);
    let purge_job = facts.purge_job(&writes);
    let mut key_writes = sealer.new_keys();
    let replicated_keys: Vec<(Vec<u8>, Vec<u8>)> =
        key_writes.iter().filter_map(|(id, w)| w.clone().map(|w| (id.clone(), w))).collect();
    key_writes.extend(facts.erased.iter().map(|(t, s)| (super::keys::data_key_id(t, s), None)));
    let result = match failed {
        Some(e) => Err(CommitFailure::Store(e)),
        None if appended.is_empty() => Ok(()),
        None => {
            let started = std::time::Instant::now();
            // Cluster mode: the replicated log first; it is the truth once it took the batch.
            let replicated = match &opts.replication {
                Some(r) => {
                    let records: Vec<(u64, SealedEvent, bool)> =
                        appended.iter().zip(&request_ends).map(|((p, e), end)| (*p, e.clone(), *end)).collect();
                    r.append(&head, &records, &replicated_keys).map_err(CommitFailure::Replication)
                }
                None => Ok(()),
            };
            // The log's invariant, checked against the store itself: this batch continues the
            // stored head (position and hash), so positions stay gap-free and prevHash links.
            // Only this thread appends; a failure is a bug, and the batch is dropped (500).
            let written = replicated.and_then(|()| {
                store
                    .head()
                    .and_then(|stored| {
                        assert_eq!(stored, head, "the batch continues the stored head");
                        let _changing = facts.group_nodes_changed.then(|| store.group_nodes_changing());
                        store.commit(&appended, writes, key_writes, sync)
                    })
                    .map_err(CommitFailure::Store)
            });
            opts.metrics.write_duration.observe(started.elapsed().as_secs_f64());
            written
        }
    };
    opts.metrics.batch_commands.observe(answers.len() as f64);
    match result {
        Ok(()) => {
            keys.committed(sealer);
            if !appended.is_empty() {
                opts.metrics.batch_events.observe(appended.len() as f64);
            }
            for c in answers.iter().filter_map(|(_, a)| a.as_ref().ok()) {
                for e in &c.events {
                    let label = crate::metrics::TypeLabels { r#type: e.event_type().as_str().to_string() };
                    opts.metrics.events_written.get_or_create(&label).inc();
                }
            }
            for (t, s) in &facts.erased {
                keys.forget(t, s);
            }
            if let Some(r) = opts.replication.as_ref().filter(|_| !facts.erased.is_empty()) {
                r.erased(facts.erased.iter().map(|(t, s)| super::keys::data_key_id(t, s)).collect());
            }
            // The keys are deleted; the purge thread makes sure no file still holds them or the
            // erased read-model values, once no older snapshot can see them.
            let ticket =
                purge_job.map(|job| purger.submit(super::purge::PurgeJob { sequence: store.latest_sequence(), ..job }));
            // Before any answer: a response's `Scimlog-Position` (read from this) covers its write.
            committed.send_replace(next.position);
            for (reply, mut answer) in answers {
                if let Ok(c) = &mut answer {
                    c.purge =
                        ticket.filter(|_| c.events.iter().any(|e| matches!(e.body, EventBody::UserErased { .. })));
                }
                let _ = reply.send(answer);
            }
            next
        }
        Err(failure) => {
            let answer = failed_commit(failure, opts.replication.as_deref(), appended.len());
            for (reply, _) in answers {
                let _ = reply.send(Err(answer.clone()));
            }
            head
        }
    }
}

/// Applies records another node appended (cluster follower): each must continue this store's
/// log (position, `prevHash`, intact hash), their plaintext is folded by the same `apply` as
/// on the leader, and records, read models and the data keys they brought are committed in
/// one batch. An erasure among them destroys the key here, purges, and purges the replicated
/// copy, as on the leader.
fn apply_replicated(ctx: &Committing<'_>, batch: ReplicatedBatch, head: &Head) -> Result<Head, ApplyError> {
    let (store, keys) = (ctx.store, ctx.keys);
    if ctx.opts.replication.as_ref().is_some_and(|r| r.is_leader()) {
        return Err(ApplyError::Leading);
    }
    let opener = keys
        .opener_with(&batch.keys)
        .map_err(|e| ApplyError::Discontinuous { position: head.position + 1, detail: e.to_string() })?;
    let view = store.view();
    let mut overlay = Overlay::new(&view);
    let mut next = head.clone();
    let mut facts = BatchFacts::default();
    for (position, sealed) in &batch.records {
        let broken = |detail: String| ApplyError::Discontinuous { position: *position, detail };
        if *position != next.position + 1 || !sealed.is_intact() {
            return Err(broken(format!("expected position {} with an intact hash", next.position + 1)));
        }
        let event = sealed.decode(&opener).map_err(|e| broken(e.to_string()))?;
        if event.position != *position || event.prev_hash != next.hash {
            return Err(broken("its position or prevHash does not link to the local head".into()));
        }
        facts.note(&event);
        apply(&mut overlay, &event);
        next = Head { position: *position, hash: sealed.event_hash() };
    }
    if let Some(e) = view.take_error() {
        return Err(ApplyError::Storage(e.to_string()));
    }
    let writes = overlay.into_writes();
    drop(view);
    let new_keys = batch.keys.into_iter().map(|(id, wrapped)| (id, Some(wrapped))).collect();
    ctx.commit(Appended { records: &batch.records, writes, new_keys, facts, head, next })
}

/// Applies a directory's events, as its public stream carries them, to this copy (an outbound
/// runner's store). Positions are the directory's, increasing; holes are allowed, because the
/// stream deletes an erased person's earlier messages. Each event is sealed with this store's
/// keys and chained on this store's head (its `prevHash` and hash are the copy's own, not the
/// directory's), folded by the same `apply`, and committed in one batch with the read models. An
/// erasure destroys the copy's key of the person and purges, as in the directory.
fn apply_copied(ctx: &Committing<'_>, events: Vec<Event>, head: &Head) -> Result<Head, ApplyError> {
    let (store, keys) = (ctx.store, ctx.keys);
    let view = store.view();
    let mut overlay = Overlay::new(&view);
    let mut sealer = keys.batch();
    let mut next = head.clone();
    let mut appended = Vec::with_capacity(events.len());
    let mut facts = BatchFacts::default();
    for mut event in events {
        if event.position <= next.position {
            let detail = format!("the copy holds position {} already", next.position);
            return Err(ApplyError::Discontinuous { position: event.position, detail });
        }
        event.prev_hash = next.hash;
        let sealed = event.seal(&mut sealer);
        if facts.note(&event) {
            sealer.discard(&event.tenant, &event.resource_id);
        }
        apply(&mut overlay, &event);
        next = Head { position: event.position, hash: sealed.event_hash() };
        appended.push((event.position, sealed));
    }
    if let Some(e) = view.take_error().or_else(|| sealer.take_error()) {
        return Err(ApplyError::Storage(e.to_string()));
    }
    let writes = overlay.into_writes();
    drop(view);
    let new_keys = sealer.new_keys();
    let head = ctx.commit(Appended { records: &appended, writes, new_keys, facts, head, next })?;
    // An erased person's key made in this batch was discarded: none comes back here.
    keys.committed(sealer);
    Ok(head)
}

/// The writer's parts that commit records of another log.
struct Committing<'a> {
    store: &'a Store,
    keys: &'a KeyRing,
    opts: &'a WriterOptions,
    purger: &'a super::purge::Purger,
    committed: &'a watch::Sender<u64>,
}

/// Records of another log, folded, ready to commit after `head`.
struct Appended<'a> {
    records: &'a [(u64, SealedEvent)],
    writes: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Data keys the records need that the store does not hold yet.
    new_keys: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    facts: BatchFacts,
    head: &'a Head,
    next: Head,
}

impl Committing<'_> {
    /// Commits records, read models and keys in one batch, checked against the stored head (the
    /// leader's invariant), then does what the batch's facts ask: erased persons' keys deleted
    /// and forgotten, the purge, the replicated copies purged; answers the new head.
    fn commit(&self, a: Appended<'_>) -> Result<Head, ApplyError> {
        let (store, facts) = (self.store, &a.facts);
        let purge_job = facts.purge_job(&a.writes);
        let mut key_writes = a.new_keys;
        key_writes.extend(facts.erased.iter().map(|(t, s)| (super::keys::data_key_id(t, s), None)));
        let stored = store.head().map_err(|e| ApplyError::Storage(e.to_string()))?;
        if stored != *a.head {
            let detail = "the stored head moved".into();
            return Err(ApplyError::Discontinuous { position: a.head.position + 1, detail });
        }
        let changing = facts.group_nodes_changed.then(|| store.group_nodes_changing());
        store
            .commit(a.records, a.writes, key_writes, self.opts.sync)
            .map_err(|e| ApplyError::Storage(e.to_string()))?;
        drop(changing);
        for (t, s) in &facts.erased {
            self.keys.forget(t, s);
        }
        if let Some(job) = purge_job {
            self.purger.submit(super::purge::PurgeJob { sequence: store.latest_sequence(), ..job });
        }
        if let Some(r) = self.opts.replication.as_ref().filter(|_| !facts.erased.is_empty()) {
            r.erased(facts.erased.iter().map(|(t, s)| super::keys::data_key_id(t, s)).collect());
        }
        self.committed.send_replace(a.next.position);
        Ok(a.next)
    }
}

/// What a batch's commit must do besides writing: the people it erased or deleted (its purge
/// and its key deletions), and whether it changes group nodes (the access cache's generation).
#[derive(Default)]
struct BatchFacts {
    /// (tenant, user) erased in this batch.
    erased: Vec<(String, String)>,
    /// (tenant, user) deleted in this batch: their read-model keys are the ones it deletes.
    deleted: std::collections::HashSet<(String, String)>,
    group_nodes_changed: bool,
}

impl BatchFacts {
    /// Notes an event; answers whether it erased its person (whose key the batch must drop).
    fn note(&mut self, event: &Event) -> bool {
        self.group_nodes_changed |= scimlog_projections::access::changes_kept_nodes(event);
        let who = || (event.tenant.clone(), event.resource_id.clone());
        match event.body {
            EventBody::UserErased { .. } => {
                self.erased.push(who());
                true
            }
            EventBody::UserDeleted {} => {
                self.deleted.insert(who());
                false
            }
            _ => false,
        }
    }

    /// The purge an erasure needs: the deleted read-model keys when every erased person was
    /// deleted in the same commit (else the whole `state` family), and their data keys.
    fn purge_job(
        &self,
        writes: &std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ) -> Option<super::purge::PurgeJob> {
        (!self.erased.is_empty()).then(|| super::purge::PurgeJob {
            sequence: 0,
            state_keys: self
                .erased
                .iter()
                .all(|p| self.deleted.contains(p))
                .then(|| writes.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k.clone()).collect()),
            key_ids: self.erased.iter().map(|(t, s)| super::keys::data_key_id(t, s)).collect(),
        })
    }
}

enum CommitFailure {
    Store(super::LogError),
    Replication(ReplicationError),
}

/// What the requests of a batch that was not committed learn (each cause logged once here), and
/// whether this node stops leading: after a fence or an unknown outcome it decided on a state
/// that may not be the log's, and in cluster mode a local failure after the append leaves the
/// log ahead of this store, which only following can repair.
fn failed_commit(failure: CommitFailure, replication: Option<&dyn Replication>, events: usize) -> WriteError {
    match (failure, replication) {
        (CommitFailure::Store(e), None) => {
            // The requests only learn that nothing was written.
            tracing::error!(error = %e, events, "commit failed; batch discarded");
            WriteError::Storage
        }
        (CommitFailure::Store(e), Some(r)) => {
            tracing::error!(error = %e, events, "the local commit failed after the replicated append; stepping down");
            r.step_down("the local commit failed");
            WriteError::OutcomeUnknown
        }
        (CommitFailure::Replication(e @ ReplicationError::Fenced), r) => {
            tracing::warn!(error = %e, events, "fenced: another node leads; stepping down, nothing was written");
            if let Some(r) = r {
                r.step_down(&e.to_string());
            }
            WriteError::NotLeader
        }
        (CommitFailure::Replication(e @ ReplicationError::Unknown(_)), r) => {
            tracing::warn!(error = %e, events, "the append's outcome is not known; stepping down");
            if let Some(r) = r {
                r.step_down(&e.to_string());
            }
            WriteError::OutcomeUnknown
        }
        (CommitFailure::Replication(e @ ReplicationError::NotStored(_)), _) => {
            tracing::warn!(error = %e, events, "the replicated log did not take the batch; nothing was written");
            WriteError::ClusterUnavailable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer counts as running until its thread ends, however it ends; `/healthz` answers
    /// 503 from then on (`http::health`), and a write answers "stopped", not "internal error".
    #[test]
    fn the_writer_reports_when_it_has_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = Arc::new(KeyRing::open(store.clone(), &Default::default(), dir.path()).unwrap());
        let opts = WriterOptions {
            queue_depth: 4,
            queue_per_tenant: 4,
            group_commit_max: 4,
            sync: false,
            namespace: "scimlog".into(),
            default_organization: "default".into(),
            limits: command::WriteLimits::DEFAULT,
            metrics: Default::default(),
            replication: None,
            copy: false,
        };
        let (mut handle, thread) = start(store, keys, opts).unwrap();
        let mut observer = handle.clone();
        assert!(observer.is_running());
        handle.close();
        observer.close();
        thread.join().unwrap();
        assert!(!observer.is_running());
        let origin = Origin { tenant: "t".into(), actor: "a".into(), request_id: "r".into() };
        let stopped = futures::executor::block_on(observer.submit(origin, Command::UnlinkHost { host_id: "h".into() }));
        assert!(matches!(stopped, Err(WriteError::Closed)), "{stopped:?}");
    }
}
