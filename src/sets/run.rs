//! The streams a running server serves: the flags' and the file's, read again within a second
//! of a change (`scimlog sets add`, the admin API, an edit), with one push task per push
//! stream, started, stopped and restarted (when its table changed) to match. In cluster mode
//! only the leader pushes: a follower's tasks stop when it loses the lead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::config::{self, Stream};
use super::push::{PushState, Status, Worker};
use super::streams::StreamId;

/// How often the streams file is looked at.
const FILE_POLL: Duration = Duration::from_secs(1);

/// The streams as last read, and the push tasks' states.
#[derive(Default)]
pub struct Streams {
    all: RwLock<Arc<Vec<Stream>>>,
    push: Mutex<BTreeMap<StreamId, Running>>,
    /// Why the file was last refused (the streams stay as they were), if it was.
    pub file_error: Mutex<Option<String>>,
}

struct Running {
    stream: Stream,
    status: Status,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The flags' streams, then the file's (one named as a flag's is left out, with an error).
fn merge(flags: &[Stream], file: Vec<Stream>) -> Vec<Stream> {
    let mut all = flags.to_vec();
    for s in file {
        if all.iter().any(|f| f.id == s.id) {
            tracing::error!(tenant = %s.id.tenant, stream = %s.id.name, "a SET stream in the file has the name of one the flags configure; the flags' stays");
            continue;
        }
        all.push(s);
    }
    all
}

impl Streams {
    /// The flags' streams and the file's as it is at start (the supervisor reports a file it
    /// cannot read).
    pub fn new(flags: &[Stream], file: &std::path::Path, data_dir: &std::path::Path) -> Streams {
        let all = merge(flags, config::load(file, data_dir).unwrap_or_default());
        Streams { all: RwLock::new(Arc::new(all)), ..Default::default() }
    }

    pub fn all(&self) -> Arc<Vec<Stream>> {
        self.all.read().expect("streams lock").clone()
    }

    pub fn find(&self, tenant: &str, name: &str) -> Option<Stream> {
        self.all().iter().find(|s| s.id.tenant == tenant && s.id.name == name).cloned()
    }

    /// A push stream's task state (`None`: not a push stream, or not pushing on this node).
    pub fn push_state(&self, id: &StreamId) -> Option<PushState> {
        let running = self.push.lock().expect("streams lock");
        running.get(id).map(|r| r.status.lock().expect("push status lock").clone())
    }
}

/// What the supervisor needs to run push tasks: the file, the flags' streams, what every task
/// gets (`worker`, each with its own stop signal) and the server's shutdown.
pub struct Context {
    pub file: PathBuf,
    pub data_dir: PathBuf,
    pub flags: Vec<Stream>,
    pub worker: Worker,
    pub shutdown: watch::Receiver<bool>,
    /// Whether this node may push (cluster mode: the leader only).
    pub leading: Box<dyn Fn() -> bool + Send + Sync>,
}

/// Starts the supervisor; it ends, with every push task, at shutdown.
pub fn start(ctx: Context, streams: Arc<Streams>) -> JoinHandle<()> {
    tokio::spawn(supervise(ctx, streams))
}

async fn supervise(mut ctx: Context, streams: Arc<Streams>) {
    let mut stamp = None;
    loop {
        let now = crate::files::FileStamp::of(&ctx.file);
        if stamp != Some(now) {
            stamp = Some(now);
            match config::load(&ctx.file, &ctx.data_dir) {
                Ok(file) => {
                    *streams.file_error.lock().expect("streams lock") = None;
                    *streams.all.write().expect("streams lock") = Arc::new(merge(&ctx.flags, file));
                }
                Err(e) => {
                    tracing::error!(error = %e, "the SET streams file is not valid; the streams stay as they were");
                    *streams.file_error.lock().expect("streams lock") = Some(e.to_string());
                }
            }
        }
        reconcile(&ctx, &streams, (ctx.leading)()).await;
        tokio::select! {
            _ = tokio::time::sleep(FILE_POLL) => {}
            _ = ctx.shutdown.wait_for(|s| *s) => break,
        }
    }
    let all: Vec<Running> = std::mem::take(&mut *streams.push.lock().expect("streams lock")).into_values().collect();
    stop(all).await;
}

async fn stop(running: Vec<Running>) {
    for r in running {
        let _ = r.stop.send(true);
        let _ = r.task.await;
    }
}

/// Stops the push tasks of streams removed or changed (all of them when not leading), starts
/// those of new ones.
async fn reconcile(ctx: &Context, streams: &Streams, leading: bool) {
    let want: BTreeMap<StreamId, Stream> = match leading {
        true => streams.all().iter().filter(|s| s.push.is_some()).map(|s| (s.id.clone(), s.clone())).collect(),
        false => BTreeMap::new(),
    };
    let stopping: Vec<Running> = {
        let mut running = streams.push.lock().expect("streams lock");
        let gone: Vec<StreamId> =
            running.iter().filter(|(id, r)| want.get(*id) != Some(&r.stream)).map(|(id, _)| id.clone()).collect();
        gone.iter().filter_map(|id| running.remove(id)).collect()
    };
    for r in &stopping {
        tracing::info!(tenant = %r.stream.id.tenant, stream = %r.stream.id.name, "stopping a SET push stream (removed, changed, or not leading)");
    }
    stop(stopping).await;
    let mut running = streams.push.lock().expect("streams lock");
    for (id, stream) in want {
        if running.contains_key(&id) {
            continue;
        }
        let (stop, stop_rx) = watch::channel(false);
        let status = Status::default();
        let worker = Worker { shutdown: stop_rx, ..ctx.worker.clone() };
        let task = tokio::spawn(worker.run(stream.clone(), status.clone()));
        tracing::info!(tenant = %id.tenant, stream = %id.name, "SET push stream started");
        running.insert(id, Running { stream, status, stop, task });
    }
}
