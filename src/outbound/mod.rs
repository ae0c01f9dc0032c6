//! Outbound provisioning: scimlog as the hub that provisions onward. Each configured target (a
//! downstream SCIM application) is a subscriber of the log with its own state, so one IdP push
//! fans out to many applications, each converging on the directory exactly and resumably.
//!
//! Layout:
//! - [`config`]: the targets file (`<data-dir>/outbound.toml`), its checks, `add`/`remove`;
//! - [`profile`]: the knobs of each kind of target (generic, aws-identity-center, slack, ...);
//! - [`mapping`]: a target's attribute mapping (users' attributes dropped or set);
//! - [`state`]: a target's own state in the store's `outbound` family (watermark, links, intents,
//!   parked objects, memberships as sent);
//! - [`render`]: documents, PATCHes and member changes, as pure functions of the read models;
//! - [`client`]: the HTTP side (credentials, pacing, `Retry-After`, backoff, error classes);
//! - [`outcomes`]: what each connector did, as events on NATS
//!   (`scimlog.<tenant>.outbound.<target>.<outcome>`) and counters;
//! - [`connector`]: one target's loop: read the log after the watermark, coalesce per resource,
//!   render from the current state, diff against what was last sent, send, record;
//! - this file: [`Status`] (what `status`, the admin API and `/metrics` show) and the supervisor
//!   [`start`], which runs one connector per target and follows changes of the targets file.
//!
//! The connectors read the log and the read models and write only their own family; they never
//! hold up the writer, and a slow or dead target holds up nothing but itself.

pub mod client;
pub mod config;
pub mod connector;
pub mod mapping;
pub mod outcomes;
pub mod profile;
pub mod render;
pub mod state;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::log::Store;

/// Recent requests kept per target (method, path without query, status, duration): in memory.
const JOURNAL_LEN: usize = 200;
/// The window of outcomes the degraded state is judged on.
const OUTCOME_WINDOW: usize = 200;
/// Object failures above this share of the window: degraded.
const DEGRADED_RATIO: f64 = 0.2;
/// A 429 this recent keeps the target `throttled`.
const THROTTLED_FOR: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    /// A 429 (or 503 with Retry-After) in the last minute: slowed down, nothing fails.
    Throttled,
    /// More than a fifth of the last 200 objects failed (parked).
    Degraded,
    /// The target refuses our credentials (after one refresh): nothing is sent but probes.
    Quarantined,
}

impl Health {
    pub const ALL: [Health; 4] = [Health::Healthy, Health::Throttled, Health::Degraded, Health::Quarantined];
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Throttled => "throttled",
            Health::Degraded => "degraded",
            Health::Quarantined => "quarantined",
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JournalEntry {
    pub at: DateTime<Utc>,
    pub method: String,
    /// The request's path without its query (a filter names a userName).
    pub path: String,
    /// None: no answer (timeout, reset).
    pub status: Option<u16>,
    pub millis: u64,
    /// Dry run: journaled, not sent.
    pub would_send: bool,
}

/// What one target's connector reports: shown by `scimlog outbound status`, the admin API and
/// `/metrics`.
#[derive(Default)]
pub struct Status {
    inner: Mutex<StatusInner>,
}

#[derive(Default)]
struct StatusInner {
    quarantined: Option<String>,
    last_throttle: Option<(Instant, Duration)>,
    outcomes: VecDeque<bool>,
    watermark: u64,
    head: u64,
    lag_seconds: f64,
    last_error: Option<String>,
    caps: String,
    requests: BTreeMap<(String, String), u64>,
    journal: VecDeque<JournalEntry>,
    parked: usize,
    parked_by_class: BTreeMap<String, usize>,
    linked_users: usize,
    linked_groups: usize,
    last_verify: Option<state::VerifyRecord>,
}

/// A snapshot of a [`Status`].
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub name: String,
    pub tenant: String,
    pub url: String,
    pub profile: String,
    pub mode: config::Mode,
    pub health: Health,
    pub watermark: u64,
    pub head: u64,
    pub lag_positions: u64,
    pub lag_seconds: f64,
    pub parked: usize,
    /// Parked objects by class (`rejected`, `conflict`, `transient`, `blocked`, `held`, `repair`).
    pub parked_by_class: BTreeMap<String, usize>,
    pub linked_users: usize,
    pub linked_groups: usize,
    /// Where the capabilities came from: `ServiceProviderConfig` or `assumed (...)`.
    pub capabilities: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_retry_after_seconds: Option<u64>,
    /// Requests by method and status (`error`: no answer).
    pub requests: BTreeMap<String, u64>,
    /// The last verify's counts (on demand, or every `verify_every_s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_verify: Option<state::VerifyRecord>,
    pub journal: Vec<JournalEntry>,
}

impl Status {
    fn with<T>(&self, f: impl FnOnce(&mut StatusInner) -> T) -> T {
        f(&mut self.inner.lock().expect("status lock"))
    }
    pub fn journal(&self, method: &str, path: &str, status: Option<u16>, took: Duration, would_send: bool) {
        let path = path.split('?').next().unwrap_or_default().to_string();
        let code = status.map_or("error".to_string(), |s| s.to_string());
        self.with(|s| {
            *s.requests
                .entry((method.to_string(), if would_send { "would-send".into() } else { code }))
                .or_default() += 1;
            if s.journal.len() == JOURNAL_LEN {
                s.journal.pop_front();
            }
            s.journal.push_back(JournalEntry {
                at: Utc::now(),
                method: method.into(),
                path,
                status,
                millis: took.as_millis() as u64,
                would_send,
            });
        })
    }
    pub fn throttled(&self, after: Duration) {
        self.with(|s| s.last_throttle = Some((Instant::now(), after)))
    }
    /// One object's outcome (parked or applied), for the degraded state.
    pub fn outcome(&self, ok: bool) {
        self.with(|s| {
            if s.outcomes.len() == OUTCOME_WINDOW {
                s.outcomes.pop_front();
            }
            s.outcomes.push_back(ok);
        })
    }
    pub fn quarantine(&self, why: Option<String>) {
        self.with(|s| {
            if let Some(w) = &why {
                s.last_error = Some(w.clone());
            }
            s.quarantined = why;
        })
    }
    pub fn is_quarantined(&self) -> bool {
        self.with(|s| s.quarantined.is_some())
    }
    pub fn error(&self, e: Option<String>) {
        self.with(|s| s.last_error = e)
    }
    pub fn caps(&self, origin: String) {
        self.with(|s| s.caps = origin)
    }
    pub fn positions(&self, watermark: u64, head: u64, lag_seconds: f64) {
        self.with(|s| {
            s.watermark = watermark;
            s.head = head;
            s.lag_seconds = lag_seconds;
        })
    }
    pub fn verified(&self, record: Option<state::VerifyRecord>) {
        self.with(|s| s.last_verify = record)
    }
    pub fn counts(&self, parked: BTreeMap<String, usize>, linked_users: usize, linked_groups: usize) {
        self.with(|s| {
            s.parked = parked.values().sum();
            s.parked_by_class = parked;
            s.linked_users = linked_users;
            s.linked_groups = linked_groups;
        })
    }

    fn health(s: &StatusInner) -> Health {
        let failed = s.outcomes.iter().filter(|ok| !**ok).count();
        if s.quarantined.is_some() {
            Health::Quarantined
        } else if s.last_throttle.is_some_and(|(at, after)| at.elapsed() < after + THROTTLED_FOR) {
            Health::Throttled
        } else if failed as f64 > DEGRADED_RATIO * OUTCOME_WINDOW.min(s.outcomes.len().max(10)) as f64 {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }

    pub fn view(&self, target: &config::Target) -> StatusView {
        self.with(|s| StatusView {
            name: target.name().into(),
            tenant: target.tenant().into(),
            url: target.config.url.clone(),
            profile: target.config.profile.as_str().into(),
            mode: target.config.mode,
            health: Status::health(s),
            watermark: s.watermark,
            head: s.head,
            lag_positions: s.head.saturating_sub(s.watermark),
            lag_seconds: s.lag_seconds,
            parked: s.parked,
            parked_by_class: s.parked_by_class.clone(),
            linked_users: s.linked_users,
            linked_groups: s.linked_groups,
            capabilities: s.caps.clone(),
            last_error: s.last_error.clone(),
            last_retry_after_seconds: s.last_throttle.map(|(_, d)| d.as_secs()),
            requests: s.requests.iter().map(|((m, c), n)| (format!("{m} {c}"), *n)).collect(),
            last_verify: s.last_verify.clone(),
            journal: s.journal.iter().cloned().collect(),
        })
    }
}

struct Running {
    target: config::Target,
    status: Arc<Status>,
    stop: watch::Sender<bool>,
    control: tokio::sync::mpsc::Sender<connector::ControlMsg>,
    task: JoinHandle<()>,
}

/// Operator requests waiting for a connector (one at a time is the usual case).
const CONTROL_QUEUE: usize = 16;
/// How long an operator request waits for the connector to take it (it may be in a long
/// request to its target, or waiting out a Retry-After).
const CONTROL_WAIT: Duration = Duration::from_secs(30);
/// How long a verify may take before its caller stops waiting (it goes on to its end).
const VERIFY_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no outbound target named {0:?} runs here for this tenant (in cluster mode, a target runs on the node it names)")]
    Unknown(String),
    #[error("the connector did not answer in time (busy with its target); try again")]
    Busy,
    /// Too large to do as asked (a plan of a huge state): said to the caller.
    #[error("{0}")]
    Refused(String),
    #[error("the connector failed: {0}")]
    Failed(String),
}

/// The running connectors, by target name.
#[derive(Default)]
pub struct Outbound {
    running: Mutex<BTreeMap<String, Running>>,
    /// The targets file's last error (a bad edit keeps the last good set running).
    file_error: Mutex<Option<String>>,
}

impl Outbound {
    /// Every target's status, or those of one tenant.
    pub fn statuses(&self, tenant: Option<&str>) -> Vec<StatusView> {
        let running = self.running.lock().expect("outbound lock");
        running
            .values()
            .filter(|r| tenant.is_none_or(|t| r.target.tenant() == t))
            .map(|r| r.status.view(&r.target))
            .collect()
    }
    /// Hands an operator request to a tenant's target and waits for its answer.
    pub async fn control(&self, tenant: &str, name: &str, c: connector::Control) -> Result<String, ControlError> {
        let tx = {
            let running = self.running.lock().expect("outbound lock");
            match running.get(name) {
                Some(r) if r.target.tenant() == tenant => r.control.clone(),
                _ => return Err(ControlError::Unknown(name.into())),
            }
        };
        // A verify reads every linked object back: it may take minutes.
        let wait = match c {
            connector::Control::Verify { .. } | connector::Control::Plan { .. } => VERIFY_WAIT,
            connector::Control::Retry
            | connector::Control::ApproveDeletes
            | connector::Control::Resync
            | connector::Control::Unlink(..) => CONTROL_WAIT,
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let asked = async {
            tx.send((c, reply)).await.map_err(|_| ControlError::Busy)?;
            answer.await.map_err(|_| ControlError::Busy)
        };
        match tokio::time::timeout(wait, asked).await {
            Ok(Ok(Ok(done))) => Ok(done),
            Ok(Ok(Err(connector::ControlFailure::Refused(why)))) => Err(ControlError::Refused(why)),
            Ok(Ok(Err(connector::ControlFailure::Failed(e)))) => Err(ControlError::Failed(e)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ControlError::Busy),
        }
    }

    pub fn file_error(&self) -> Option<String> {
        self.file_error.lock().expect("outbound lock").clone()
    }
}

/// What the supervisor needs from the server.
pub struct Context {
    pub store: Store,
    pub targets_file: PathBuf,
    pub committed: watch::Receiver<u64>,
    pub shutdown: watch::Receiver<bool>,
    pub metrics: crate::metrics::Metrics,
    /// `--allow-private-networks` (see `net_guard`).
    pub allow_private_networks: bool,
    pub outcomes: outcomes::Outcomes,
    /// Which targets of the file this process runs.
    pub placement: Placement,
}

/// Which targets of the targets file a process runs.
#[derive(Clone, Debug)]
pub enum Placement {
    /// A single server: all of them.
    All,
    /// A cluster node (its id): those whose `node` names it.
    Node(String),
    /// An outbound runner (`scimlog outbound run --target T`): that one alone.
    Runner(String),
}

/// How often the targets file is looked at.
const FILE_POLL: Duration = Duration::from_secs(1);

/// Starts the supervisor: it (re)reads the targets file when it changes and runs one connector
/// per target, stopping those removed or changed. It ends, with every connector, at shutdown.
pub fn start(ctx: Context) -> (Arc<Outbound>, JoinHandle<()>) {
    let outbound = Arc::new(Outbound::default());
    let task = tokio::spawn(supervise(ctx, outbound.clone()));
    (outbound, task)
}

async fn supervise(mut ctx: Context, outbound: Arc<Outbound>) {
    let mut stamp = None;
    loop {
        let now = crate::files::FileStamp::of(&ctx.targets_file);
        if stamp != Some(now) {
            stamp = Some(now);
            match config::load(&ctx.targets_file) {
                Ok(targets) => {
                    let (here, error) = placed(targets, &ctx.placement);
                    if let Some(e) = &error {
                        tracing::error!(error = %e, "the targets file does not place every target");
                    }
                    *outbound.file_error.lock().expect("outbound lock") = error;
                    reconcile(&ctx, &outbound, here).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the outbound targets file is not valid; the running targets stay as they were");
                    *outbound.file_error.lock().expect("outbound lock") = Some(e.to_string());
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(FILE_POLL) => {}
            _ = ctx.shutdown.wait_for(|s| *s) => break,
        }
    }
    let all: Vec<Running> =
        std::mem::take(&mut *outbound.running.lock().expect("outbound lock")).into_values().collect();
    for r in all {
        let _ = r.stop.send(true);
        let _ = r.task.await;
    }
}

/// The targets this process runs, and what is wrong with the file's placement: targets no node
/// runs (cluster mode, no `node`), or a runner's target that is not in the file.
fn placed(targets: Vec<config::Target>, placement: &Placement) -> (Vec<config::Target>, Option<String>) {
    match placement {
        Placement::All => (targets, None),
        Placement::Node(me) => {
            let nowhere: Vec<&str> = targets.iter().filter(|t| t.config.node.is_none()).map(|t| t.name()).collect();
            let error = (!nowhere.is_empty()).then(|| {
                format!(
                    "in cluster mode a target names the node that runs it (node = \"<node id>\"); these run nowhere: {}",
                    nowhere.join(", ")
                )
            });
            (targets.into_iter().filter(|t| t.config.node.as_deref() == Some(me.as_str())).collect(), error)
        }
        Placement::Runner(name) => {
            let mine: Vec<config::Target> = targets.into_iter().filter(|t| t.name() == name).collect();
            let error = mine.is_empty().then(|| format!("this runner's target {name:?} is not in the targets file"));
            (mine, error)
        }
    }
}

/// Starts the new targets, stops the removed ones, restarts the changed ones.
async fn reconcile(ctx: &Context, outbound: &Outbound, targets: Vec<config::Target>) {
    let mut stopping = Vec::new();
    {
        let mut running = outbound.running.lock().expect("outbound lock");
        let keep: BTreeMap<&str, &config::Target> = targets.iter().map(|t| (t.name(), t)).collect();
        let gone: Vec<String> =
            running.iter().filter(|(n, r)| keep.get(n.as_str()) != Some(&&r.target)).map(|(n, _)| n.clone()).collect();
        for n in gone {
            stopping.extend(running.remove(&n));
        }
    }
    for r in stopping {
        tracing::info!(target = r.target.name(), "stopping the outbound connector (removed or changed)");
        let _ = r.stop.send(true);
        let _ = r.task.await;
    }
    let mut running = outbound.running.lock().expect("outbound lock");
    for t in targets {
        if running.contains_key(t.name()) {
            continue;
        }
        let status = Arc::new(Status::default());
        let (stop, stop_rx) = watch::channel(false);
        let (control, control_rx) = tokio::sync::mpsc::channel(CONTROL_QUEUE);
        let task = match connector::Connector::new(
            t.clone(),
            ctx.store.clone(),
            status.clone(),
            ctx.metrics.clone(),
            stop_rx.clone(),
            ctx.allow_private_networks,
            ctx.outcomes.clone(),
        ) {
            Ok(c) => tokio::spawn(c.run(ctx.committed.clone(), control_rx, stop_rx)),
            Err(e) => {
                tracing::error!(target = t.name(), error = %e, "cannot start the outbound connector");
                status.error(Some(e));
                tokio::spawn(async {})
            }
        };
        tracing::info!(target = t.name(), tenant = t.tenant(), "outbound connector started");
        running.insert(t.name().to_string(), Running { target: t, status, stop, control, task });
    }
}
