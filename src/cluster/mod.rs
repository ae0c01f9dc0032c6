//! Cluster mode (`scimlog serve --cluster`): several nodes, one NATS JetStream cluster as the
//! replicated log. Exactly one node writes at a time; every node keeps its own RocksDB, folded
//! from the log by the same `projections::apply`.
//!
//! # Layout
//!
//! - [`ClusterConfig`]: the flags.
//! - [`ClusterState`]: this node's role, the leader it knows, how far the log and this node are;
//!   read by the HTTP layer (forwarding, `/healthz`, `/readyz`) and the writer.
//! - `replication.rs`: the writer's [`crate::log::writer::Replication`] over the log stream:
//!   data keys first, then the batch as atomic appends fenced on the head, outcomes resolved.
//! - [`run`]: the role loop. A follower applies the log from its head (ordered consumer), and
//!   when it has caught up and nobody holds the lease, takes it; a leader renews the lease
//!   and appends; a fence, an unknown outcome or a lost lease sends it back to following.
//!
//! The lease only says who should write; the log stream's fence (expected last sequence) is
//! what keeps two writers from both appending. See ARCHITECTURE.md "Cluster mode".

mod replication;
pub mod snapshot;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::bus::link::Link;
use crate::bus::log_stream::Followed;
use crate::bus::snapshots::SnapshotInfo;
use crate::bus::BusError;
use crate::log::keys::KeyRing;
use crate::log::writer::{ReplicatedBatch, WeakWriter};
use crate::log::Store;

pub use replication::NatsReplication;

#[derive(Clone, Debug, clap::Args)]
pub struct ClusterConfig {
    /// Run as one node of a cluster: the log is the NATS JetStream stream SCIMLOG_LOG (needs
    /// --nats-url, nats-server 2.12+, and the same master key and token file on every node).
    #[arg(long, env = "SCIMLOG_CLUSTER", requires = "node_id")]
    pub cluster: bool,
    /// This node's name, unique in the cluster (shown in /healthz and in the lease).
    #[arg(long, env = "SCIMLOG_NODE_ID")]
    pub node_id: Option<String>,
    /// Where the other nodes reach this node's HTTP listener, to forward writes while it leads
    /// (default: http://<listen>; set it when listening on 0.0.0.0). Not --public-url, which in
    /// a cluster is the load balancer's address, the same on every node.
    #[arg(long, env = "SCIMLOG_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// How long the writer lease lives without a renewal (renewed every third of it). A leader
    /// that stops (killed, paused, cut off) is replaced after at most this long.
    #[arg(long, env = "SCIMLOG_LEASE_TTL_MS", default_value_t = 10_000)]
    pub lease_ttl_ms: u64,
    /// What a node that does not lead does with a write: `proxy` it to the leader (one base URL
    /// for an IdP behind any load balancer), or `redirect` (307 to the leader's URL).
    #[arg(long, env = "SCIMLOG_WRITE_FORWARDING", value_enum, default_value = "proxy")]
    pub write_forwarding: Forwarding,
    /// How long a proxied write may take at the leader before it is answered 503.
    #[arg(long, env = "SCIMLOG_FORWARD_TIMEOUT_MS", default_value_t = 30_000)]
    pub forward_timeout_ms: u64,
    /// `/readyz` answers 503 while this node is more than this many log positions behind.
    #[arg(long, env = "SCIMLOG_READY_MAX_LAG", default_value_t = 1000)]
    pub ready_max_lag: u64,
    /// Most records a follower applies in one local commit.
    #[arg(long, env = "SCIMLOG_APPLY_BATCH_MAX", default_value_t = 512)]
    pub apply_batch_max: usize,
    /// How long the leader tries to learn whether an append it sent was stored (NATS did not
    /// answer) before it steps down and answers 503.
    #[arg(long, env = "SCIMLOG_APPEND_TIMEOUT_MS", default_value_t = 5_000)]
    pub append_timeout_ms: u64,
    /// How often the leader puts a snapshot of its store into the Object Store
    /// `scimlog_snapshots` for new nodes (0: never; after an erasure it takes one at once and
    /// deletes the older ones, which hold the erased values).
    #[arg(long, env = "SCIMLOG_SNAPSHOT_INTERVAL_S", default_value_t = 3600)]
    pub snapshot_interval_s: u64,
    /// A new snapshot only when the log grew by this many events since the last one.
    #[arg(long, env = "SCIMLOG_SNAPSHOT_MIN_EVENTS", default_value_t = 10_000)]
    pub snapshot_min_events: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    Proxy,
    Redirect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Connecting, or catching up before it may lead.
    Follower,
    Leader,
    Stopped,
}

/// What the lease holds: who writes, and where to send writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub node: String,
    pub url: String,
}

/// This node's view of the cluster.
pub struct ClusterState {
    pub node_id: String,
    pub url: String,
    pub forwarding: Forwarding,
    pub forward_timeout: Duration,
    pub ready_max_lag: u64,
    role: watch::Sender<Role>,
    /// Whether this node leads, for the publisher (it publishes only then).
    leading: watch::Sender<bool>,
    leader: Mutex<Option<LeaderInfo>>,
    /// The log's last position as last seen (a record's pending count, or the stream's info).
    log_head: AtomicU64,
    last_error: Mutex<Option<String>>,
    step_down: tokio::sync::Notify,
    /// Erasures applied here (leading or following): the snapshot loop replaces older snapshots.
    erasures: AtomicU64,
    /// The snapshot this node's store was started from, if it was.
    started_from: Mutex<Option<SnapshotInfo>>,
    /// Wakes the follower loop to read the lease now (the leader it names did not answer).
    recheck: tokio::sync::Notify,
    /// Set when the log no longer holds records this node has not applied (trimmed, or lost by
    /// NATS): the node serves nothing but its probes until it is rebuilt (README "Cluster").
    gap: Mutex<Option<String>>,
}

impl ClusterState {
    pub fn new(cfg: &ClusterConfig, node_id: String, url: String) -> ClusterState {
        ClusterState {
            node_id,
            url,
            forwarding: cfg.write_forwarding,
            forward_timeout: Duration::from_millis(cfg.forward_timeout_ms),
            ready_max_lag: cfg.ready_max_lag,
            role: watch::channel(Role::Follower).0,
            leading: watch::channel(false).0,
            leader: Mutex::new(None),
            log_head: AtomicU64::new(0),
            last_error: Mutex::new(None),
            step_down: tokio::sync::Notify::new(),
            erasures: AtomicU64::new(0),
            started_from: Mutex::new(None),
            recheck: tokio::sync::Notify::new(),
            gap: Mutex::new(None),
        }
    }

    pub fn role(&self) -> Role {
        *self.role.borrow()
    }

    pub fn is_leader(&self) -> bool {
        self.role() == Role::Leader
    }

    /// Who leads, as last seen (this node while it leads).
    pub fn leader(&self) -> Option<LeaderInfo> {
        self.leader.lock().expect("leader lock").clone()
    }

    pub fn log_head(&self) -> u64 {
        self.log_head.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("error lock").clone()
    }

    pub fn erasures(&self) -> u64 {
        self.erasures.load(Ordering::SeqCst)
    }

    pub(crate) fn note_erasure(&self) {
        self.erasures.fetch_add(1, Ordering::SeqCst);
    }

    /// The snapshot this node was started from (`/healthz`).
    pub fn started_from(&self) -> Option<SnapshotInfo> {
        self.started_from.lock().expect("snapshot lock").clone()
    }

    pub fn set_started_from(&self, snapshot: SnapshotInfo) {
        *self.started_from.lock().expect("snapshot lock") = Some(snapshot);
    }

    /// The leader this node names did not answer a forwarded write: read the lease again now
    /// rather than at the next tick (after a failover it names the new leader sooner).
    pub fn leader_unreachable(&self) {
        self.recheck.notify_one();
    }

    /// Why this node cannot follow the log any more, if it cannot.
    pub fn gap(&self) -> Option<String> {
        self.gap.lock().expect("gap lock").clone()
    }

    fn set_gap(&self, why: String) {
        tracing::error!(node = %self.node_id, "{why}");
        *self.gap.lock().expect("gap lock") = Some(why);
    }

    /// Turns true while this node leads.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    fn set_role(&self, role: Role) {
        self.role.send_replace(role);
        self.leading.send_replace(role == Role::Leader);
    }

    fn saw_head(&self, position: u64) {
        self.log_head.fetch_max(position, Ordering::Relaxed);
    }

    fn set_leader(&self, leader: Option<LeaderInfo>) {
        *self.leader.lock().expect("leader lock") = leader;
    }

    fn note_error(&self, e: impl std::fmt::Display) {
        *self.last_error.lock().expect("error lock") = Some(e.to_string());
    }

    /// Stops deciding writes at once (the writer checks the role before each batch) and wakes
    /// the role loop, which gives the lease up and follows again.
    pub fn step_down(&self, why: &str) {
        if self.role() == Role::Leader {
            tracing::warn!(node = %self.node_id, why, "stepping down");
            self.set_role(Role::Follower);
            self.note_error(format!("stepped down: {why}"));
            self.step_down.notify_one();
        }
    }
}

/// What the role loop works with.
pub struct Node {
    pub state: Arc<ClusterState>,
    pub link: Arc<Link>,
    pub writer: WeakWriter,
    pub store: Store,
    pub keys: Arc<KeyRing>,
    pub lease_ttl: Duration,
    pub apply_batch_max: usize,
    pub data_dir: std::path::PathBuf,
    /// `None`: no snapshots.
    pub snapshot_interval: Option<Duration>,
    pub snapshot_min_events: u64,
}

/// How long a starting node waits for NATS (a cluster still forming cannot place replicas yet).
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

/// Connects to NATS and opens the cluster's objects; the lease names this node and its URL.
/// Retries for [`CONNECT_PATIENCE`], except when the server is too old.
pub async fn connect(
    cfg: &ClusterConfig,
    nats_url: &str,
    replicas: usize,
    state: &ClusterState,
) -> anyhow::Result<Link> {
    let me = LeaderInfo { node: state.node_id.clone(), url: state.url.clone() };
    let holder = Bytes::from(serde_json::to_vec(&me)?);
    let started = Instant::now();
    loop {
        let ttl = Duration::from_millis(cfg.lease_ttl_ms);
        match Link::open(nats_url, replicas, ttl, holder.clone()).await {
            Ok(link) => return Ok(link),
            Err(e @ BusError::Unsupported(_)) => return Err(e.into()),
            Err(e) if started.elapsed() < CONNECT_PATIENCE => {
                tracing::warn!(error = %e, "NATS is not ready for the cluster yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The role loop: follow, lead when the lease is free, follow again; until `stop` turns true.
/// Beside it, the snapshot loop (it acts while this node leads).
pub async fn run(node: Node, stop: watch::Receiver<bool>) {
    let snapshots = async {
        match node.snapshot_interval {
            Some(every) => snapshot::run(&node, &node.data_dir, every, node.snapshot_min_events).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = roles(&node, stop) => {}
        _ = snapshots => {}
    }
    node.state.set_role(Role::Stopped);
}

async fn roles(node: &Node, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            break;
        }
        let followed = tokio::select! {
            r = follow(node) => r,
            _ = stop.changed() => break,
        };
        match followed {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(node = %node.state.node_id, error = %e, "following the log failed; starting again");
                node.state.note_error(&e);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        // Caught up, and nobody held the lease a moment ago.
        match node.link.lease.try_acquire().await {
            Ok(Some(held)) => {
                if lead(node, held, &mut stop).await.is_break() {
                    break;
                }
            }
            Ok(None) => {}
            Err(e) => node.state.note_error(&e),
        }
    }
}

/// Follows the log: applies every record from this node's head on, in batches that end with a
/// whole request; returns once it has applied everything the log holds and the lease is free.
async fn follow(node: &Node) -> Result<(), BusError> {
    let applied = *node.writer.committed().borrow();
    let first = node.link.stream.first().await?;
    if first > applied + 1 {
        let why = format!(
            "the log starts at position {first}, but this node has applied only {applied}: records it \
             needs are gone (the log was trimmed); it serves nothing until its data dir is emptied, \
             which makes it start from a snapshot"
        );
        node.state.set_gap(why.clone());
        return Err(BusError::Nats(why));
    }
    let mut records = node.link.stream.follow(applied + 1).await?;
    let mut batch: Vec<Followed> = Vec::new();
    let mut check = tokio::time::interval(node.lease_ttl / 10);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            record = records.next() => {
                let record = record?;
                node.state.saw_head(record.position + record.pending);
                let whole = record.request_end && (record.pending == 0 || batch.len() + 1 >= node.apply_batch_max);
                batch.push(record);
                if whole {
                    apply(node, std::mem::take(&mut batch).into_iter().map(|f| (f.position, f.sealed)).collect()).await?;
                }
            }
            // Every tick, and at once when a forwarded write found the named leader unreachable.
            _ = async { tokio::select! { _ = check.tick() => {}, _ = node.state.recheck.notified() => {} } } => {
                let holder = node.link.lease.holder().await?;
                let leader = holder.as_deref().and_then(|h| serde_json::from_slice::<LeaderInfo>(h).ok());
                let free = leader.is_none();
                node.state.set_leader(leader);
                if free && batch.is_empty() {
                    let head = node.link.stream.head().await?;
                    node.state.saw_head(head);
                    if *node.writer.committed().borrow() >= head {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// Applies followed records through the writer, with the data keys they need.
async fn apply(node: &Node, records: Vec<(u64, scimlog_schemas::event::SealedEvent)>) -> Result<(), BusError> {
    let keys = keys_needed(node, &records).await?;
    node.writer
        .apply_replicated(ReplicatedBatch { records, keys })
        .await
        .map_err(|e| BusError::Nats(format!("applying replicated records: {e}")))?;
    Ok(())
}

/// The wrapped data keys `records` are sealed with that this store lacks, from the replicated
/// copy. A key absent there too was purged by an erasure: its values read as `[erased]`, as
/// they do on every node once the erasure is applied.
async fn keys_needed(
    node: &Node,
    records: &[(u64, scimlog_schemas::event::SealedEvent)],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, BusError> {
    let mut wanted: Vec<Vec<u8>> = Vec::new();
    for (_, sealed) in records {
        if let Some(id) = sealed_key_id(&sealed.bytes) {
            if !wanted.contains(&id) && !node.keys.has_key(&id)? {
                wanted.push(id);
            }
        }
    }
    // All at once: a batch of new people needs one round trip, not one each.
    let fetched = futures::future::try_join_all(wanted.iter().map(|id| node.link.keys.get(id))).await?;
    Ok(wanted.into_iter().zip(fetched).filter_map(|(id, wrapped)| wrapped.map(|w| (id, w))).collect())
}

/// The data key a record's sealed values need, if it has any (`data.sealed.subject`).
fn sealed_key_id(bytes: &[u8]) -> Option<Vec<u8>> {
    const MARK: &[u8] = b"\"sealed\"";
    bytes.windows(MARK.len()).any(|w| w == MARK).then_some(())?;
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let tenant = v.get("tenant")?.as_str()?;
    let subject = v.get("data")?.get("sealed")?.get("subject")?.as_str()?;
    Some(crate::log::keys::data_key_id(tenant, subject))
}

/// Leads while the lease holds: catches up with anything appended since following stopped,
/// then opens writes and renews. Breaks when the server stops.
async fn lead(
    node: &Node,
    mut held: crate::bus::lease::Held,
    stop: &mut watch::Receiver<bool>,
) -> std::ops::ControlFlow<()> {
    use std::ops::ControlFlow;
    let state = &node.state;
    if let Err(e) = catch_up(node).await {
        tracing::warn!(node = %state.node_id, error = %e, "took the lease but could not catch up; giving it back");
        state.note_error(&e);
        let _ = node.link.lease.release(&held).await;
        return ControlFlow::Continue(());
    }
    state.set_leader(Some(LeaderInfo { node: state.node_id.clone(), url: state.url.clone() }));
    state.set_role(Role::Leader);
    tracing::info!(node = %state.node_id, position = *node.writer.committed().borrow(), "leading");
    let renew_every = node.lease_ttl / 3;
    let mut last_renewed = Instant::now();
    let outcome = loop {
        tokio::select! {
            _ = tokio::time::sleep(renew_every) => {}
            _ = state.step_down.notified() => break ControlFlow::Continue(()),
            _ = stop.changed() => break ControlFlow::Break(()),
        }
        if !state.is_leader() {
            break ControlFlow::Continue(());
        }
        // Bounded: with NATS unreachable a request would wait its own timeout, longer than the
        // lease may have left.
        let renewed = tokio::time::timeout(renew_every, node.link.lease.renew(&held)).await.unwrap_or_else(|_| {
            Err(crate::bus::lease::LeaseError::Bus(BusError::Nats("renewing the lease timed out".into())))
        });
        match renewed {
            Ok(h) => {
                held = h;
                last_renewed = Instant::now();
            }
            Err(crate::bus::lease::LeaseError::Lost) => {
                state.step_down("the lease was taken over");
                break ControlFlow::Continue(());
            }
            // A renewal that fails for longer than the lease's life minus one period means the
            // lease may have lapsed and another node may lead: stop deciding before it does.
            Err(crate::bus::lease::LeaseError::Bus(e)) => {
                state.note_error(&e);
                if last_renewed.elapsed() + renew_every >= node.lease_ttl {
                    state.step_down("the lease could not be renewed in time");
                    break ControlFlow::Continue(());
                }
            }
        }
    };
    state.set_role(if outcome.is_break() { Role::Stopped } else { Role::Follower });
    // Hand over at once (a graceful stop, or a step-down): a standby need not wait for expiry.
    // Refused harmlessly when another node holds it already.
    let _ = node.link.lease.release(&held).await;
    state.set_leader(None);
    outcome
}

/// Brings this node to the log's head before it leads: applies what was appended since it
/// stopped following (a former leader's last appends), or, when this node's own log is ahead
/// of an empty stream (a single node becoming the first node of a cluster), appends it.
async fn catch_up(node: &Node) -> Result<(), BusError> {
    loop {
        let head = node.link.stream.head().await?;
        node.state.saw_head(head);
        let applied = *node.writer.committed().borrow();
        if applied == head {
            return Ok(());
        }
        if head == 0 {
            return seed(node, applied).await;
        }
        if applied > head {
            return Err(BusError::Nats(format!(
                "this node's log is at {applied}, ahead of the cluster's log at {head}: it holds writes the \
                 cluster does not; it will not lead (see README \"Cluster\": a node that diverged is rebuilt)"
            )));
        }
        let until = head.min(applied + node.apply_batch_max as u64);
        let mut records = Vec::new();
        for position in applied + 1..=until {
            match node.link.stream.read(position).await? {
                Some(sealed) => records.push((position, sealed)),
                None => return Err(BusError::Nats(format!("the log stream lacks record {position}"))),
            }
        }
        apply(node, records).await?;
    }
}

/// Appends this node's whole log to an empty log stream, with every data key, so that a
/// single node's data becomes the cluster's. Fenced like any append: if another node seeded
/// first, this fails and the node follows.
async fn seed(node: &Node, applied: u64) -> Result<(), BusError> {
    tracing::info!(node = %node.state.node_id, position = applied, "the cluster's log is empty: seeding it with this node's log");
    let mut data_keys = node.keys.wrapped_keys().map_err(|e| BusError::Nats(e.to_string()))?;
    data_keys.retain(|(id, _)| id.starts_with(b"dk\0"));
    node.link.keys.put_all(&data_keys).await?;
    let mut at = 0;
    while at < applied {
        let page = node.store.events_from(at + 1, crate::bus::log_stream::MAX_APPEND)?;
        let records: Vec<_> = page.into_iter().map(|(p, e)| (p, e, true)).collect();
        let Some(last) = records.last().map(|r| r.0) else { break };
        node.link.stream.append_atomic(at, &records).await.map_err(|e| BusError::Nats(e.to_string()))?;
        at = last;
    }
    node.state.saw_head(at);
    Ok(())
}
