//! Making an erasure physical: after a commit that erased people, no file of the store may keep
//! their values (old read-model versions, the wrapped data key). RocksDB keeps every version a
//! live snapshot can see, through flushes and compactions, so the purge waits until no snapshot
//! older than the erasure is alive, then flushes and compacts the key ranges concerned. It runs
//! on its own thread: the writer (and so every tenant's writes) never waits for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{LogError, Store};

/// One erasure's purge.
pub(crate) struct PurgeJob {
    /// The store's last sequence number once the erasure was committed: snapshots older than it
    /// may still see the erased values.
    pub sequence: u64,
    /// The read-model keys the erasure deleted, or `None` when they are not known (the person
    /// had been deleted before): then the whole family is compacted.
    pub state_keys: Option<Vec<Vec<u8>>>,
    /// The destroyed data keys' ids.
    pub key_ids: Vec<Vec<u8>>,
}

/// How many purges were asked for, finished and failed since start. Shown by `/healthz`.
/// Jobs run in order: job `n` (1, 2, ...) is over once `finished() >= n`.
#[derive(Default, Debug)]
pub struct PurgeStatus {
    submitted: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
}

impl PurgeStatus {
    pub fn pending(&self) -> u64 {
        self.submitted.load(Ordering::SeqCst).saturating_sub(self.finished())
    }
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }
    /// Jobs over, done or failed.
    pub fn finished(&self) -> u64 {
        self.done() + self.failed()
    }
}

/// The writer's end: queues purges (an unbounded queue: erasures are admin requests, and each
/// job is a few keys).
pub(crate) struct Purger {
    tx: mpsc::Sender<PurgeJob>,
    pub status: Arc<PurgeStatus>,
}

impl Purger {
    /// Queues a purge; returns its ticket (see [`PurgeStatus`]).
    pub fn submit(&self, job: PurgeJob) -> u64 {
        let ticket = self.status.submitted.fetch_add(1, Ordering::SeqCst) + 1;
        if self.tx.send(job).is_err() {
            tracing::error!("the purge thread has stopped; an erasure's data stays in the files until the next purge");
            self.status.failed.fetch_add(1, Ordering::SeqCst);
        }
        ticket
    }
}

/// More keys than this in one erasure (a person in thousands of groups): the families are
/// compacted whole instead of key by key.
const MAX_RANGES: usize = 1024;
/// How often the purge looks again whether old snapshots are gone.
const POLL: Duration = Duration::from_millis(20);

/// Starts the purge thread; it ends when the [`Purger`] is dropped and every queued job is done.
pub(crate) fn start(store: Store) -> (Purger, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<PurgeJob>();
    let status = Arc::new(PurgeStatus::default());
    let thread_status = status.clone();
    let thread = std::thread::Builder::new()
        .name("scimlog-purge".into())
        .spawn(move || {
            for job in rx {
                match run(&store, &job) {
                    Ok(()) => thread_status.done.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        tracing::error!(error = %e, "purging erased data from the store files failed");
                        thread_status.failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        })
        .expect("spawn purge thread");
    (Purger { tx, status }, thread)
}

fn run(store: &Store, job: &PurgeJob) -> Result<(), LogError> {
    let started = Instant::now();
    let mut warned = Instant::now();
    while let Some(oldest) = store.oldest_snapshot_sequence()? {
        if oldest >= job.sequence {
            break;
        }
        if warned.elapsed() > Duration::from_secs(60) {
            tracing::warn!(oldest, erased_at = job.sequence, "an erasure's purge waits for an old snapshot to end");
            warned = Instant::now();
        }
        std::thread::sleep(POLL);
    }
    let state = job.state_keys.as_deref().filter(|k| k.len() <= MAX_RANGES);
    store.purge_ranges(state, &job.key_ids)?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "erased data purged from the store files");
    Ok(())
}
