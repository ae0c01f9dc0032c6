//! The single writer. It owns the head of the log and is the only code that appends: commands
//! queue up on a bounded channel, and the writer takes as many as are waiting (up to
//! `group_commit_max`), decides each against the read models as already changed by the ones before
//! it in the same batch, folds the resulting events into one overlay, and commits events and
//! read-model writes in one fsync'd `WriteBatch`. Only then does any of the requests get its
//! answer: a response always means durable.
//!
//! Serialising writes here is what makes uniqueness and version checks race-free without locks.

use std::sync::Arc;
use std::thread::JoinHandle;

use chrono::{SubsecRound, Utc};
use scimlog_projections::{apply, Overlay};
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
    command: Command,
    reply: oneshot::Sender<Result<Committed, WriteError>>,
}

/// A command that became durable events.
#[derive(Debug)]
pub struct Committed {
    pub events: Vec<Event>,
    pub decision: Decision,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("refused: {0:?}")]
    Refused(Refusal),
    #[error("the write queue is full ({depth} requests waiting)")]
    QueueFull { depth: usize },
    #[error("the store failed to commit; nothing was written")]
    Storage,
    #[error("the writer has stopped")]
    Closed,
}

#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// How many requests may wait for the writer before new ones are refused with 503.
    pub queue_depth: usize,
    /// How many queued requests one commit (one fsync) may take.
    pub group_commit_max: usize,
    /// fsync every commit. Off only for benchmarks that say so.
    pub sync: bool,
    /// The role/entitlement URN namespace.
    pub namespace: String,
    /// The organization environments and resource groups are created in.
    pub default_organization: String,
}

#[derive(Clone)]
pub struct WriterHandle {
    /// `None` once closed.
    tx: Option<mpsc::Sender<WriteRequest>>,
    queue_depth: usize,
    committed: watch::Receiver<u64>,
}

impl WriterHandle {
    /// Queues a command and waits until it is durable (or refused).
    pub async fn submit(&self, origin: Origin, command: Command) -> Result<Committed, WriteError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(WriteError::Closed)?;
        tx.try_send(WriteRequest { origin, command, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WriteError::QueueFull { depth: self.queue_depth },
            mpsc::error::TrySendError::Closed(_) => WriteError::Closed,
        })?;
        rx.await.map_err(|_| WriteError::Closed)?
    }

    /// Drops this handle's end of the queue: once every handle is closed (or dropped), the
    /// writer drains what is queued and stops.
    pub fn close(&mut self) {
        self.tx = None;
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
    let queue_depth = opts.queue_depth;
    let (tx, rx) = mpsc::channel(opts.queue_depth.max(1));
    let (committed_tx, committed) = watch::channel(head.position);
    let thread = std::thread::Builder::new()
        .name("scimlog-writer".into())
        .spawn(move || run(store, keys, rx, head, opts, committed_tx))
        .expect("spawn writer thread");
    Ok((WriterHandle { tx: Some(tx), queue_depth, committed }, thread))
}

fn run(
    store: Store,
    keys: Arc<KeyRing>,
    mut rx: mpsc::Receiver<WriteRequest>,
    mut head: Head,
    opts: WriterOptions,
    committed: watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(opts.group_commit_max);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < opts.group_commit_max {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        head = commit_batch(&store, &keys, std::mem::take(&mut batch), head, &opts);
        committed.send_replace(head.position);
    }
    tracing::info!(position = head.position, "writer drained and stopped");
}

/// Decides, folds and commits one batch; answers every request in it. Returns the new head.
fn commit_batch(store: &Store, keys: &KeyRing, batch: Vec<WriteRequest>, head: Head, opts: &WriterOptions) -> Head {
    let sync = opts.sync;
    let view = store.view();
    let mut overlay = Overlay::new(&view);
    let mut next = head.clone();
    let mut appended: Vec<(u64, SealedEvent)> = Vec::new();
    let mut answers = Vec::with_capacity(batch.len());
    let mut sealer = keys.batch();
    let mut erased: Vec<(String, String)> = Vec::new();
    // Milliseconds: the precision `meta.lastModified` is shown with, so that a client filtering
    // with a value it was given matches the resource it came from.
    let now = Utc::now().trunc_subsecs(3);

    for req in batch {
        let ctx = command::Ctx {
            tenant: &req.origin.tenant,
            namespace: &opts.namespace,
            default_organization: &opts.default_organization,
        };
        let decided = command::decide(&overlay, &ctx, req.command);
        match decided {
            Err(refusal) => answers.push((req.reply, Err(WriteError::Refused(refusal)))),
            Ok(decision) => {
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
                        prev_hash: next.hash.clone(),
                    };
                    let sealed = event.seal(&mut sealer);
                    if let EventBody::UserErased { .. } = event.body {
                        sealer.discard(&event.tenant, &event.resource_id);
                        erased.push((event.tenant.clone(), event.resource_id.clone()));
                    }
                    next = Head { position: event.position, hash: sealed.hash_hex() };
                    apply(&mut overlay, &event);
                    appended.push((event.position, sealed));
                    events.push(event);
                }
                answers.push((req.reply, Ok(Committed { events, decision })));
            }
        }
    }

    let failed = view.take_error().or_else(|| sealer.take_error());
    let writes = overlay.into_writes();
    // The view is a snapshot: it must be gone before a purge, or RocksDB keeps the old values
    // alive for it.
    drop(view);
    let mut key_writes = sealer.new_keys();
    key_writes.extend(erased.iter().map(|(t, s)| (super::keys::data_key_id(t, s), None)));
    let result = match failed {
        Some(e) => Err(e),
        None if appended.is_empty() => Ok(()),
        None => store.commit(&appended, writes, key_writes, sync),
    };
    match result {
        Ok(()) => {
            keys.committed(sealer);
            for (t, s) in &erased {
                keys.forget(t, s);
            }
            if !erased.is_empty() {
                // The keys are deleted; now make sure no file still holds them or the erased
                // read-model values. Rare, so done inline before answering.
                if let Err(e) = store.purge_deleted() {
                    tracing::error!(error = %e, "purging erased data from the store files failed");
                }
            }
            for (reply, answer) in answers {
                let _ = reply.send(answer);
            }
            next
        }
        Err(e) => {
            // Logged once here; the requests only learn that nothing was written.
            tracing::error!(error = %e, events = appended.len(), "commit failed; batch discarded");
            for (reply, _) in answers {
                let _ = reply.send(Err(WriteError::Storage));
            }
            head
        }
    }
}
