//! Outcome events: what each connector did to its target, as past-tense facts on NATS, for an
//! operator's alerting or an audit trail beside the log ("deactivated in Slack at T").
//!
//! Subject: `scimlog.<tenant>.outbound.<target>.<outcome>`, in their own JetStream stream
//! (`<nats-stream>_OUTBOUND`, subjects `scimlog.*.outbound.*.*`). Five tokens, so they never fall
//! into the log stream, whose subjects are the four-token `scimlog.<tenant>.<resource>.<event>`
//! and whose sequence must stay the log position.
//!
//! They carry ids, positions, statuses and classes, never a personal value nor a target's error
//! text (which may quote one): an erasure has nothing to chase here. Publishing never holds up a
//! connector: outcomes wait in a bounded queue ([`QUEUE`]); when NATS is away longer than the
//! queue lasts, the newest are dropped and counted (`scimlog_outbound_outcomes_dropped_total`).
//! Every outcome is also counted per target in `scimlog_outbound_outcomes_total`.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::state::Kind;
use crate::metrics::{Metrics, TargetClassLabels};

/// Outcomes waiting to be published, at most.
pub const QUEUE: usize = 10_000;
/// The outcome stream's subjects (see the module's doc).
pub const SUBJECTS: &str = "scimlog.*.outbound.*.*";

/// What happened to one object (or to the whole target).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    /// Created remotely, or found by its externalId after a create whose answer was lost.
    Linked,
    /// An object that existed remotely (found by userName/displayName) taken over.
    Adopted,
    /// Attributes or members sent.
    Updated,
    /// A user deactivated remotely (it left the directory or the scope).
    Deactivated,
    /// Deleted remotely (a group, a user under `deprovision = "delete"`, an erasure).
    Deleted,
    /// A link forgotten, the remote object left as it is (`deprovision = "none"`).
    Unlinked,
    /// Held back with a class (`rejected`, `conflict`, `transient`, `blocked`, `held`, `repair`).
    Parked,
    /// The target refused our credentials: nothing is sent but probes.
    Quarantined,
    /// A quarantined target answers again.
    Recovered,
    /// A verify found an object missing, changed or with other members remotely.
    DriftDetected,
}

impl What {
    pub fn as_str(self) -> &'static str {
        match self {
            What::Linked => "linked",
            What::Adopted => "adopted",
            What::Updated => "updated",
            What::Deactivated => "deactivated",
            What::Deleted => "deleted",
            What::Unlinked => "unlinked",
            What::Parked => "parked",
            What::Quarantined => "quarantined",
            What::Recovered => "recovered",
            What::DriftDetected => "drift_detected",
        }
    }
}

/// One outcome as published (JSON).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Unique (UUIDv7); also the message's `Nats-Msg-Id`, so a publish repeated after a lost
    /// acknowledgement is stored once.
    pub id: uuid::Uuid,
    pub tenant: String,
    pub target: String,
    pub outcome: What,
    /// `Users/<scimlog id>` or `Groups/<scimlog id>`; absent for the target's own outcomes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_id: Option<String>,
    /// The log position the object was brought to (0 for the target's own outcomes).
    pub position: u64,
    /// The target's status code, when it answered one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Parked: its class; drift: `missing`, `drifted` or `membershipDrift`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Members sent (a group's `updated`): added and removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<(usize, usize)>,
    /// A dry run's outcome: nothing was sent.
    pub dry_run: bool,
    pub at: DateTime<Utc>,
}

impl Outcome {
    /// One object's outcome (or the target's own, without an object), stamped now.
    pub fn new(tenant: &str, target: &str, what: What, object: Option<(Kind, &str)>, position: u64) -> Outcome {
        Outcome {
            id: uuid::Uuid::now_v7(),
            tenant: tenant.into(),
            target: target.into(),
            outcome: what,
            resource: object.map(|(k, id)| format!("{}/{id}", k.endpoint())),
            remote_id: None,
            position,
            status: None,
            class: None,
            members: None,
            dry_run: false,
            at: Utc::now(),
        }
    }

    pub fn subject(&self) -> String {
        format!("scimlog.{}.outbound.{}.{}", self.tenant, self.target, self.outcome.as_str())
    }
}

/// A connector's side of the queue: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Outcomes {
    tx: Option<mpsc::Sender<Outcome>>,
    metrics: Option<Metrics>,
}

impl Outcomes {
    /// Outcomes counted, published nowhere (no NATS configured).
    pub fn counted_only(metrics: Metrics) -> Outcomes {
        Outcomes { tx: None, metrics: Some(metrics) }
    }

    /// Neither counted nor published: a plan's, which only imagines them.
    pub fn silent() -> Outcomes {
        Outcomes { tx: None, metrics: None }
    }

    pub fn emit(&self, o: Outcome) {
        let Some(metrics) = &self.metrics else { return };
        let labels = TargetClassLabels { target: o.target.clone(), class: o.outcome.as_str().into() };
        metrics.outbound_outcomes.get_or_create(&labels).inc();
        let Some(tx) = &self.tx else { return };
        if tx.try_send(o).is_err() {
            metrics.outbound_outcomes_dropped.inc();
        }
    }
}

/// The outcome stream's settings: kept as the log stream is (`--nats-max-age-s`, replicas).
pub fn stream_config(cfg: &crate::bus::NatsConfig) -> stream::Config {
    crate::bus::limits_stream(cfg, &format!("{}_OUTBOUND", cfg.nats_stream), SUBJECTS)
}

/// Starts the publisher task (when NATS is configured) and answers the connectors' side.
pub fn start(
    cfg: Option<crate::bus::NatsConfig>,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> (Outcomes, Option<tokio::task::JoinHandle<()>>) {
    let Some(cfg) = cfg.filter(|c| c.nats_url.is_some()) else { return (Outcomes::counted_only(metrics), None) };
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = tokio::spawn(publish(cfg, rx, shutdown));
    (Outcomes { tx: Some(tx), metrics: Some(metrics) }, Some(task))
}

/// How long the publisher waits before it connects again after a failure (doubling to a minute).
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Publishes until every connector is gone (the queue closes), then what is left is sent; the
/// server gives that a moment at shutdown. After a failure it connects again with a backoff,
/// the unacknowledged outcome first.
async fn publish(cfg: crate::bus::NatsConfig, mut rx: mpsc::Receiver<Outcome>, mut shutdown: watch::Receiver<bool>) {
    let mut pending: Option<Outcome> = None;
    let mut backoff = BACKOFF_FIRST;
    loop {
        match session(&cfg, &mut rx, &mut pending).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "publishing outbound outcomes failed; trying again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection, made when there is an outcome to send: publishes outcomes in order, each
/// acknowledged by JetStream before the next (they are few: one per object sent). Ends `Ok`
/// when every connector is gone.
async fn session(
    cfg: &crate::bus::NatsConfig,
    rx: &mut mpsc::Receiver<Outcome>,
    pending: &mut Option<Outcome>,
) -> Result<(), String> {
    // Connected at the first outcome: a server without targets makes no stream.
    if pending.is_none() {
        match rx.recv().await {
            Some(o) => *pending = Some(o),
            None => return Ok(()),
        }
    }
    let url = crate::bus::server_addrs(cfg.nats_url.as_deref().unwrap_or_default()).join(",");
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    js.get_or_create_stream(stream_config(cfg)).await.map_err(|e| e.to_string())?;
    loop {
        let o = match pending.take() {
            Some(o) => o,
            None => match rx.recv().await {
                Some(o) => o,
                None => return Ok(()),
            },
        };
        let body = serde_json::to_vec(&o).expect("outcomes serialise");
        let message = jetstream::message::PublishMessage::build().payload(body.into()).message_id(o.id.to_string());
        let sent = match js.send_publish(o.subject(), message).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            *pending = Some(o);
            return Err(e);
        }
    }
}
