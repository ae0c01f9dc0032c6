//! One target's loop. A step reads the log after the watermark (at most `batch_max` positions),
//! keeps the tenant's User and Group events, coalesces them per resource and per membership, and
//! brings each one to the directory's current state:
//!
//! 1. users that exist: create or update (rendered now, diffed against the last sent document);
//! 2. groups that exist: the same, without members;
//! 3. memberships: exact member adds and removes, chunked by the profile, never a group read;
//! 4. groups that are gone: DELETE;
//! 5. users that are gone: the target's deprovision policy (an erasure always DELETEs).
//!
//! Then the watermark moves to the last position read. A crash anywhere repeats the step: every
//! part of it is idempotent (a document equal to the last sent is not sent; a create with an
//! open intent looks the object up before it POSTs again). An object the target refuses is
//! parked with its reason and retried on a schedule or at its next change; everything else goes
//! on. Refused credentials quarantine the whole target until a probe gets through.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use reqwest::Method;
use scimlog_projections::{access, query};
use scimlog_schemas::MemberType;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::client::{Client, Failure};
use super::config::{Adopt, Deprovision, Mode, Target};
use super::outcomes::{Outcome, Outcomes, What};
use super::render;
use super::state::{member_kind, Batch, Intent, Kind, Link, Parked, ParkedKey, Sent, State, VerifyRecord};
use super::Status;
use crate::log::{LogError, Store};

/// Parked entries looked at per step for a retry that fell due.
const MAX_PARKED_PER_STEP: usize = 1000;
/// Members of a group read for one PUT (targets without PATCH); beyond it the group is parked.
const MAX_PUT_MEMBERS: usize = 10_000;
/// How long an idle connector sleeps before it looks at parked entries again.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How often the links are counted for the status (a scan of all of them).
const LINK_COUNT_EVERY: Duration = Duration::from_secs(5);

/// Why a step ended early.
#[derive(Debug)]
enum Halt {
    Quarantine(String),
    Stopped,
    Storage(LogError),
}

impl From<LogError> for Halt {
    fn from(e: LogError) -> Halt {
        Halt::Storage(e)
    }
}

/// The fields of an event a connector reads: never the (sealed) personal values.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Peek {
    tenant: String,
    #[serde(rename = "type")]
    ty: String,
    resource_id: String,
    #[serde(default)]
    data: Value,
    recorded_at: DateTime<Utc>,
}

/// The resources a step brings up to date, each with the last position that touched it.
#[derive(Default)]
struct Work {
    users: BTreeMap<String, u64>,
    erased: BTreeSet<String>,
    groups: BTreeMap<String, u64>,
    members: BTreeMap<(String, String), (Kind, u64)>,
    /// Users and groups whose roles or entitlements changed (for a scope of grants).
    grants: BTreeMap<String, u64>,
}

impl Work {
    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty() && self.members.is_empty()
    }
    fn note(&mut self, position: u64, e: &Peek) {
        let id = e.resource_id.clone();
        match e.ty.as_str() {
            "user.created" | "user.updated" | "user.deactivated" | "user.reactivated" | "user.deleted" => {
                self.users.insert(id, position);
            }
            "user.erased" => {
                self.erased.insert(id.clone());
                self.users.insert(id, position);
            }
            "group.created" | "group.renamed" | "group.updated" | "group.deleted" => {
                self.groups.insert(id, position);
            }
            "group.member_added" | "group.member_removed" => {
                let member = e.data.get("memberId").and_then(Value::as_str).unwrap_or_default().to_string();
                let kind = match e.data.get("memberType").and_then(Value::as_str) {
                    Some("Group") => Kind::Group,
                    _ => Kind::User,
                };
                self.members.insert((id, member), (kind, position));
            }
            // Not provisioned themselves (roles and entitlements go out as the user's attributes
            // when the IdP sent them so), but they move holders in or out of a scope of grants.
            "role.assigned" | "role.revoked" | "entitlement.granted" | "entitlement.revoked" => {
                self.grants.insert(id, position);
            }
            // Scopes, hosts and tokens are not provisioned.
            _ => {}
        }
    }
    fn add_parked(&mut self, key: ParkedKey, position: u64, kind_of_member: impl Fn(&str) -> Kind) {
        match key {
            ParkedKey::Object(Kind::User, id) => {
                self.users.entry(id).or_insert(position);
            }
            ParkedKey::Object(Kind::Group, id) => {
                self.groups.entry(id).or_insert(position);
            }
            ParkedKey::Membership { group, member } => {
                let kind = kind_of_member(&member);
                self.members.entry((group, member)).or_insert((kind, position));
            }
        }
    }
}

/// A membership to send: the member, its kind and remote id, the position of its last change,
/// and what the state held before (put back when the target answers "not done").
struct MemberChange<'a> {
    member: &'a str,
    kind: Kind,
    position: u64,
    remote_id: String,
    before: Sent,
}

pub struct Connector {
    target: Target,
    client: Client,
    state: State,
    store: Store,
    status: Arc<Status>,
    /// Effective capabilities (profile ⊕ ServiceProviderConfig).
    patch: bool,
    filter: bool,
    /// Set by `retry` / `approve-deletes` for the next step: every parked object is due; held
    /// deprovisions are sent.
    retry_all: bool,
    approved: bool,
    /// When the recent deprovisions were sent (the breaker's window; in memory, so a restart
    /// starts a new window).
    deprovisions: std::collections::VecDeque<std::time::Instant>,
    /// When links were last counted, and the counts (users, groups).
    links_counted: Option<(std::time::Instant, usize, usize)>,
    outcomes: Outcomes,
    /// For a plan's client.
    metrics: crate::metrics::Metrics,
    stop: watch::Receiver<bool>,
    allow_private: bool,
}

/// What an operator asks of a running connector (`scimlog outbound retry|resync|approve-deletes
/// |unlink`, or the admin API); the answer says what it did.
#[derive(Debug)]
pub enum Control {
    /// Every parked object is tried at the next step, whatever its schedule.
    Retry,
    /// Deprovisions held by the deletion breaker are sent at the next step.
    ApproveDeletes,
    /// From position 0 again, every linked object sent whole (an out-of-band edit is overwritten).
    Resync,
    /// Forget one object's link (the remote object stays as it is).
    Unlink(Kind, String),
    /// Compare the target with what was last sent: linked objects missing or changed there,
    /// member lists that differ, remote objects nobody here links. With `repair`, missing and
    /// drifted objects are sent again at the next step (orphans are reported only).
    Verify { repair: bool },
    /// The exact requests the next steps would send, from a position (default: the
    /// watermark) to the head; nothing is sent but reads, nothing of the state changes.
    Plan { from: Option<u64> },
}

/// A plan: the writes the connector would send to bring the target from `from` to `to`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub from: u64,
    pub to: u64,
    pub requests: Vec<super::client::Planned>,
    /// More would be sent than [`MAX_PLAN_REQUESTS`] (the plan stops there).
    pub truncated: bool,
}

/// Requests a plan lists at most.
pub const MAX_PLAN_REQUESTS: usize = 10_000;
/// A target's state keys a plan copies at most (its scratch copy).
const MAX_PLAN_STATE: usize = 2_000_000;

/// The classes a verify reports (the metrics show each, zero included, once a verify ran).
pub const DRIFT_CLASSES: [&str; 5] = ["missing", "drifted", "membershipDrift", "orphaned", "unmanaged"];

/// Objects a verify reads remotely at most (links, and remote objects listed); also the most
/// linked users judged again when a group of a scope of grants is deleted.
const MAX_VERIFY: usize = 100_000;
/// Memberships read at most to judge one user's (or one group's users') place in a scope of
/// grants.
const MAX_SCOPE_READ: usize = 100_000;
/// Ids a verify report names per class (the counts are whole).
const REPORT_IDS: usize = 20;

/// What a verify found: counts per class and the first ids of each (scimlog ids for linked
/// objects, remote ids for objects nobody here links). Attribute names, never values.
#[derive(Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub checked: usize,
    pub missing: Vec<String>,
    pub drifted: Vec<String>,
    pub membership_drift: Vec<String>,
    /// Remote objects whose externalId is not a linked scimlog id (left by an unlink, or made by
    /// someone else with an externalId).
    pub orphaned: Vec<String>,
    /// Remote objects without an externalId: not made by scimlog.
    pub unmanaged: Vec<String>,
    pub counts: BTreeMap<String, usize>,
    pub repaired: usize,
}

impl Report {
    fn note(&mut self, class: &str, id: String) {
        *self.counts.entry(class.into()).or_default() += 1;
        let list = match class {
            "missing" => &mut self.missing,
            "drifted" => &mut self.drifted,
            "membershipDrift" => &mut self.membership_drift,
            "orphaned" => &mut self.orphaned,
            _ => &mut self.unmanaged,
        };
        if list.len() < REPORT_IDS {
            list.push(id);
        }
    }
}

/// Objects of a kind a lookup lists at most on a target that cannot filter.
const MAX_LOOKUP_LIST: usize = 10_000;

/// What a lookup found on the target.
enum Found {
    /// The remote id.
    Yes(String),
    No,
    /// The target could not be asked (a failed read, a list too long to scan): whether the
    /// object exists there is unknown, so nothing may be created. The failure to park it with.
    Unknown(Failure),
}

impl Found {
    fn of(res: Option<&Value>) -> Found {
        match res.and_then(|r| r.get("id")).and_then(Value::as_str) {
            Some(id) => Found::Yes(id.to_string()),
            None => Found::No,
        }
    }
}

/// Why an operator request was not done.
#[derive(Debug)]
pub enum ControlFailure {
    /// Not done as asked, for a reason the operator can act on (said to them).
    Refused(String),
    /// The store or the target failed (logged; the caller hears only that it failed).
    Failed(String),
}

pub type ControlMsg = (Control, tokio::sync::oneshot::Sender<Result<String, ControlFailure>>);

/// The class of an object the deletion breaker holds.
const HELD: &str = "held";

enum Progress {
    Moved,
    Idle,
}

impl Connector {
    pub fn new(
        target: Target,
        store: Store,
        status: Arc<Status>,
        metrics: crate::metrics::Metrics,
        stop: watch::Receiver<bool>,
        allow_private_networks: bool,
        outcomes: Outcomes,
    ) -> Result<Connector, String> {
        // A dry run keeps its own state (and watermark): going live later loses nothing.
        let namespace = match target.config.mode {
            Mode::DryRun => format!("{}~dry-run", target.name()),
            Mode::Live | Mode::Paused => target.name().to_string(),
        };
        let state = State::new(store.outbound(), &namespace);
        let client =
            Client::new(target.clone(), status.clone(), metrics.clone(), stop.clone(), allow_private_networks)?;
        Ok(Connector {
            target,
            client,
            state,
            store,
            status,
            patch: true,
            filter: true,
            retry_all: false,
            approved: false,
            deprovisions: Default::default(),
            links_counted: None,
            outcomes,
            metrics,
            stop,
            allow_private: allow_private_networks,
        })
    }

    pub async fn run(
        mut self,
        mut committed: watch::Receiver<u64>,
        mut control: tokio::sync::mpsc::Receiver<ControlMsg>,
        mut stop: watch::Receiver<bool>,
    ) {
        if let Ok(last) = self.state.last_verify() {
            self.status.verified(last);
        }
        if self.target.config.mode == Mode::Paused {
            self.status.caps("paused".into());
            let _ = self.refresh_counts();
            loop {
                let asked = tokio::select! {
                    Some(asked) = control.recv() => asked,
                    _ = stop.wait_for(|s| *s) => return,
                };
                let (c, reply) = asked;
                let _ = reply.send(self.control(c).await);
            }
        }
        if let Err(e) = self.follow_config_change().await {
            tracing::error!(target = self.target.name(), error = ?e, "cannot record the target's fingerprint");
        }
        self.read_caps().await;
        loop {
            if *stop.borrow() {
                return;
            }
            let wait = match self.step().await {
                Ok(Progress::Moved) => continue,
                Ok(Progress::Idle) => match self.verify_if_due().await {
                    Ok(()) => IDLE_TICK,
                    Err(Halt::Stopped) => return,
                    Err(e) => {
                        tracing::warn!(target = self.target.name(), error = ?e, "the scheduled verify failed");
                        IDLE_TICK
                    }
                },
                Err(Halt::Stopped) => return,
                Err(Halt::Quarantine(why)) => {
                    tracing::warn!(target = self.target.name(), %why, "outbound target quarantined");
                    if !self.status.is_quarantined() {
                        self.emit(What::Quarantined, None, 0, |_| {});
                    }
                    self.status.quarantine(Some(why));
                    Duration::from_millis(self.target.config.probe_ms)
                }
                Err(Halt::Storage(e)) => {
                    tracing::error!(target = self.target.name(), error = %e, "outbound step failed on the store");
                    self.status.error(Some(e.to_string()));
                    IDLE_TICK
                }
            };
            let asked = tokio::select! {
                _ = tokio::time::sleep(wait) => None,
                _ = committed.changed(), if !self.status.is_quarantined() => None,
                Some(asked) = control.recv() => Some(asked),
                _ = stop.wait_for(|s| *s) => return,
            };
            if let Some((c, reply)) = asked {
                let _ = reply.send(self.control(c).await);
            }
        }
    }

    /// Publishes what happened (see `outcomes`): ids, positions, statuses, never values.
    fn emit(&self, what: What, object: Option<(Kind, &str)>, position: u64, fill: impl FnOnce(&mut Outcome)) {
        let mut o = Outcome::new(self.target.tenant(), self.target.name(), what, object, position);
        o.dry_run = self.target.config.mode == Mode::DryRun;
        fill(&mut o);
        self.outcomes.emit(o);
    }

    /// A scope, profile or mapping other than the one the state was built in (the targets file
    /// edited): the history is gone over again from position 0. What did not change sends
    /// nothing (equal documents and memberships are skipped); users who entered the scope are
    /// provisioned, users who left it deprovisioned (through the deletion breaker), documents
    /// rendered otherwise sent as their differences.
    async fn follow_config_change(&self) -> Result<(), Halt> {
        let now = self.target.fingerprint();
        if self.state.fingerprint()?.as_deref() == Some(now.as_str()) {
            return Ok(());
        }
        let mut b = Batch::default();
        if self.state.watermark()? > 0 {
            tracing::info!(
                target = self.target.name(),
                "the scope, profile or mapping changed: going over the history again from position 0"
            );
            self.state.set_watermark(&mut b, 0);
        }
        self.state.set_fingerprint(&mut b, &now);
        self.on_disk(move |st| st.commit_durable(b)).await
    }

    async fn control(&mut self, c: Control) -> Result<String, ControlFailure> {
        let failed = |what: &str, h: Halt| {
            ControlFailure::Failed(match h {
                Halt::Storage(e) => e.to_string(),
                Halt::Quarantine(why) => format!("the target refused the {what}: {why}"),
                Halt::Stopped => "stopping".into(),
            })
        };
        let verify = match c {
            Control::Verify { repair } => repair,
            Control::Plan { from } => {
                return match self.plan(from).await {
                    Ok(Ok(plan)) => Ok(serde_json::to_string(&plan).expect("plans serialise")),
                    Ok(Err(refused)) => Err(ControlFailure::Refused(refused)),
                    Err(h) => Err(failed("plan's reads", h)),
                };
            }
            other => return self.act(other).map_err(|e| ControlFailure::Failed(e.to_string())),
        };
        match self.verify_and_record(verify).await {
            Ok(report) => Ok(serde_json::to_string(&report).expect("reports serialise")),
            Err(h) => Err(failed("verify", h)),
        }
    }

    /// A verify whose counts are kept (the state's `r`, the status, `/metrics`).
    async fn verify_and_record(&mut self, repair: bool) -> Result<Report, Halt> {
        let position = self.state.watermark()?;
        let report = self.verify(repair).await?;
        let record = VerifyRecord { at: Utc::now(), position, checked: report.checked, counts: report.counts.clone() };
        let mut b = Batch::default();
        self.state.set_last_verify(&mut b, &record);
        self.state.commit(b)?;
        self.status.verified(Some(record));
        Ok(report)
    }

    /// The scheduled verify (`verify_every_s`), when one is due: a report, never a repair.
    async fn verify_if_due(&mut self) -> Result<(), Halt> {
        let every = self.target.config.verify_every_s;
        if every == 0 || self.target.config.mode != Mode::Live || self.status.is_quarantined() {
            return Ok(());
        }
        let due = match self.state.last_verify()? {
            Some(last) => Utc::now() - last.at >= chrono::Duration::seconds(every as i64),
            None => true,
        };
        if due {
            let report = self.verify_and_record(false).await?;
            tracing::info!(target = self.target.name(), checked = report.checked, counts = ?report.counts, "scheduled verify");
        }
        Ok(())
    }

    /// A plan: this target's state copied under `<name>~plan`, stepped as a dry run (real reads,
    /// writes recorded with their bodies) from `from` to the head, then the copy deleted. The
    /// live state, watermark and status stay as they were. The inner error: refused (too large).
    async fn plan(&mut self, from: Option<u64>) -> Result<Result<Plan, String>, Halt> {
        let scratch = State::new(self.store.outbound(), &format!("{}~plan", self.target.name()));
        scratch.clear()?;
        if !self.state.copy_to(&scratch, MAX_PLAN_STATE)? {
            scratch.clear()?;
            return Ok(Err(format!("the target's state has more than {MAX_PLAN_STATE} keys: too large to plan on")));
        }
        let from = match from {
            Some(p) => p,
            None => self.state.watermark()?,
        };
        let mut b = Batch::default();
        scratch.set_watermark(&mut b, from);
        scratch.commit(b)?;
        let mut target = self.target.clone();
        target.config.mode = Mode::DryRun;
        let recorder = super::client::Recorder::default();
        let status = Arc::new(Status::default());
        let (store, metrics, stop) = (self.store.clone(), self.metrics.clone(), self.stop.clone());
        let mut dry = Connector::new(target, store, status, metrics, stop, self.allow_private, Outcomes::silent())
            .map_err(Halt::Quarantine)?;
        dry.client.record_into(recorder.clone());
        (dry.state, dry.patch, dry.filter) = (scratch.clone(), self.patch, self.filter);
        dry.deprovisions = self.deprovisions.clone();
        let ran = dry.plan_steps(&recorder).await;
        let to = scratch.watermark()?;
        scratch.clear()?;
        let truncated = ran?;
        let mut requests = std::mem::take(&mut *recorder.lock().expect("recorder lock"));
        requests.truncate(MAX_PLAN_REQUESTS);
        Ok(Ok(Plan { from, to, requests, truncated }))
    }

    /// Steps a plan's dry run until it reaches the head or has recorded enough; answers whether
    /// it stopped short.
    async fn plan_steps(&mut self, recorder: &super::client::Recorder) -> Result<bool, Halt> {
        loop {
            if recorder.lock().expect("recorder lock").len() > MAX_PLAN_REQUESTS {
                return Ok(true);
            }
            if let Progress::Idle = self.step().await? {
                return Ok(false);
            }
        }
    }

    fn act(&mut self, c: Control) -> Result<String, LogError> {
        match c {
            Control::Verify { .. } | Control::Plan { .. } => unreachable!("verify and plan are answered by `control`"),
            Control::Retry => {
                self.retry_all = true;
                let n = self.state.all_parked(MAX_PARKED_PER_STEP)?.len();
                Ok(format!("{n} parked objects are tried at the next step"))
            }
            Control::ApproveDeletes => {
                self.approved = true;
                let held =
                    self.state.all_parked(MAX_PARKED_PER_STEP)?.into_iter().filter(|(_, p)| p.class == HELD).count();
                Ok(format!("{held} held deprovisions are sent at the next step"))
            }
            Control::Resync => {
                let n = self.state.forget_sent()?;
                let mut b = Batch::default();
                self.state.set_watermark(&mut b, 0);
                self.state.commit_durable(b)?;
                Ok(format!("resync from position 0: {n} linked objects are sent whole"))
            }
            Control::Unlink(kind, id) => {
                let Some(link) = self.state.link(kind, &id)? else {
                    return Ok(format!("{}/{id} is not linked", kind.endpoint()));
                };
                let mut b = Batch::default();
                self.state.delete_link(&mut b, kind, &id);
                self.state.delete_intent(&mut b, kind, &id);
                self.state.unpark(&mut b, &ParkedKey::Object(kind, id.clone()));
                if kind == Kind::Group {
                    self.forget_members(&mut b, &id).map_err(|h| match h {
                        Halt::Storage(e) => e,
                        Halt::Quarantine(_) | Halt::Stopped => unreachable!("forgetting members reads only the store"),
                    })?;
                }
                self.state.commit(b)?;
                Ok(format!("{}/{id} unlinked from remote id {}", kind.endpoint(), link.remote_id))
            }
        }
    }

    /// Reads every linked object back (and the target's lists), compares, and with `repair`
    /// parks the missing and drifted ones as due, so the next step sends them whole.
    async fn verify(&mut self, repair: bool) -> Result<Report, Halt> {
        let mut report = Report::default();
        let mut linked_ids = BTreeSet::new();
        for kind in [Kind::User, Kind::Group] {
            for (id, link) in self.state.links(kind, MAX_VERIFY)? {
                report.checked += 1;
                linked_ids.insert(id.clone());
                let path = format!("/{}/{}", kind.endpoint(), enc(&link.remote_id));
                let remote = match self.client.send(Method::GET, &path, None).await {
                    Ok(r) => r.body,
                    Err(Failure::NotFound) => {
                        report.note("missing", id.clone());
                        self.drift(kind, &id, "missing");
                        report.repaired += self.repair(repair, kind, &id, None)?;
                        continue;
                    }
                    Err(f) => return Err(halt_of(f)),
                };
                let changed: Vec<&String> = match &link.sent {
                    Value::Object(sent) => sent
                        .iter()
                        .filter(|(k, v)| *k != "schemas" && remote.get(*k) != Some(*v))
                        .map(|(k, _)| k)
                        .collect(),
                    _ => vec![],
                };
                if !changed.is_empty() {
                    self.drift(kind, &id, "drifted");
                    report.note(
                        "drifted",
                        format!("{id} ({})", changed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
                    );
                    report.repaired += self.repair(repair, kind, &id, Some(&link))?;
                }
                if kind == Kind::Group && self.member_drift(&id, &remote)? {
                    report.note("membershipDrift", id.clone());
                    self.drift(kind, &id, "membershipDrift");
                    if repair {
                        // Members there that are not members here go; every member here is
                        // sent again (a member not linked now waits, parked).
                        self.remove_strangers(&id, &link.remote_id, &remote).await?;
                        self.resend_members(kind, &id, link.position).await?;
                        report.repaired += 1;
                    }
                }
            }
        }
        for kind in [Kind::User, Kind::Group] {
            for res in self.list_remote(kind).await? {
                let remote_id = res.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                match res.get("externalId").and_then(Value::as_str) {
                    Some(ext) if linked_ids.contains(ext) => {}
                    Some(_) => report.note("orphaned", remote_id),
                    None => report.note("unmanaged", remote_id),
                }
            }
        }
        Ok(report)
    }

    fn drift(&self, kind: Kind, id: &str, class: &str) {
        self.emit(What::DriftDetected, Some((kind, id)), 0, |o| o.class = Some(class.into()));
    }

    /// Removes from a remote group the members that are not, linked, members of it here.
    async fn remove_strangers(&mut self, group: &str, remote_id: &str, remote: &Value) -> Result<(), Halt> {
        let t = self.target.tenant().to_string();
        let local = { query::members(&self.store.view(), &t, group, None, MAX_VERIFY) };
        let mut ours = BTreeSet::new();
        for m in local {
            let kind = member_kind(m.member_type);
            ours.extend(self.state.link(kind, &m.id)?.map(|l| l.remote_id));
        }
        let strangers: Vec<String> = remote["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["value"].as_str())
            .filter(|v| !ours.contains(*v))
            .map(str::to_string)
            .collect();
        let path = format!("/Groups/{}", enc(remote_id));
        let knobs = &self.target.knobs;
        for body in render::member_patches(&[], &strangers, knobs.max_members_per_request, knobs.member_remove) {
            self.client.send(Method::PATCH, &path, Some(&body)).await.map_err(halt_of)?;
        }
        Ok(())
    }

    /// Whether a group's members there differ from the members as last sent.
    fn member_drift(&self, group: &str, remote: &Value) -> Result<bool, Halt> {
        let there: BTreeSet<&str> =
            remote["members"].as_array().into_iter().flatten().filter_map(|m| m["value"].as_str()).collect();
        let mut sent = BTreeSet::new();
        for m in self.state.members_sent(group, None, MAX_VERIFY)? {
            sent.extend(self.member_remote_id(&m)?);
        }
        Ok(there.len() != sent.len() || sent.iter().any(|s| !there.contains(s.as_str())))
    }

    /// Repair of one object: a missing one is unlinked (created again), a drifted one gets an
    /// unknown last sent document (sent whole); either is parked as due, so the next step takes it.
    fn repair(&self, repair: bool, kind: Kind, id: &str, drifted: Option<&Link>) -> Result<usize, Halt> {
        if !repair {
            return Ok(0);
        }
        let mut b = Batch::default();
        match drifted {
            Some(link) => self.state.put_link(&mut b, kind, id, &Link { sent: Value::Null, ..link.clone() }),
            None => self.state.delete_link(&mut b, kind, id),
        }
        let parked = Parked {
            class: "repair".into(),
            position: 0,
            attempts: 0,
            status: None,
            scim_type: None,
            detail: "verify found it missing or drifted".into(),
            next_attempt: Utc::now(),
        };
        self.state.park(&mut b, &ParkedKey::Object(kind, id.into()), &parked);
        self.state.commit(b)?;
        Ok(1)
    }

    /// Every object of a kind on the target, paged by `startIndex` (at most [`MAX_VERIFY`]).
    async fn list_remote(&self, kind: Kind) -> Result<Vec<Value>, Halt> {
        let mut out = Vec::new();
        while out.len() < MAX_VERIFY {
            let (resources, total) = self.remote_page(kind, out.len()).await.map_err(halt_of)?;
            let n = resources.len();
            out.extend(resources);
            if n == 0 || out.len() >= total {
                break;
            }
        }
        Ok(out)
    }

    /// One page of a kind's objects on the target, after the first `seen`: the objects and the
    /// target's `totalResults`.
    async fn remote_page(&self, kind: Kind, seen: usize) -> Result<(Vec<Value>, usize), Failure> {
        const PAGE: usize = 100;
        let path = format!("/{}?startIndex={}&count={PAGE}", kind.endpoint(), seen + 1);
        let mut page = self.client.send(Method::GET, &path, None).await?.body;
        let total = page["totalResults"].as_u64().unwrap_or(0) as usize;
        match page.get_mut("Resources").map(Value::take) {
            Some(Value::Array(resources)) => Ok((resources, total)),
            _ => Ok((Vec::new(), total)),
        }
    }

    /// Reads `/ServiceProviderConfig`: PATCH and filter support, unless the profile decides.
    async fn read_caps(&mut self) {
        let (patch, filter, origin) = match self.client.send(Method::GET, "/ServiceProviderConfig", None).await {
            Ok(r) => {
                let flag = |k: &str| r.body.get(k).and_then(|v| v.get("supported")).and_then(Value::as_bool);
                (flag("patch").unwrap_or(false), flag("filter").unwrap_or(false), "ServiceProviderConfig".to_string())
            }
            Err(f) => (true, true, format!("assumed (ServiceProviderConfig unreadable: {})", f.detail())),
        };
        self.patch = self.target.knobs.patch.unwrap_or(patch);
        self.filter = filter;
        self.status.caps(format!("{origin}; patch={} filter={}", self.patch, self.filter));
    }

    /// Runs a write that waits for the disk (an fsync, a flush and compaction) on the blocking
    /// pool: a busy connector never holds up the runtime's workers, which serve HTTP.
    async fn on_disk(&self, write: impl FnOnce(&State) -> Result<(), LogError> + Send + 'static) -> Result<(), Halt> {
        let state = self.state.clone();
        match tokio::task::spawn_blocking(move || write(&state)).await {
            Ok(done) => Ok(done?),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The status's counts. Parked entries are few and counted every step; links are counted
    /// (a scan of every one) at most every [`LINK_COUNT_EVERY`].
    fn refresh_counts(&mut self) -> Result<(), LogError> {
        const COUNT_LIMIT: usize = 1_000_000;
        if self.links_counted.is_none_or(|(at, _, _)| at.elapsed() >= LINK_COUNT_EVERY) {
            let users = self.state.count_links(Kind::User, COUNT_LIMIT)?;
            let groups = self.state.count_links(Kind::Group, COUNT_LIMIT)?;
            self.links_counted = Some((std::time::Instant::now(), users, groups));
        }
        let (_, users, groups) = self.links_counted.expect("counted above");
        let mut parked = BTreeMap::new();
        for (_, p) in self.state.all_parked(COUNT_LIMIT)? {
            *parked.entry(p.class).or_default() += 1;
        }
        self.status.counts(parked, users, groups);
        Ok(())
    }

    async fn step(&mut self) -> Result<Progress, Halt> {
        let watermark = self.state.watermark()?;
        let head = self.store.head()?.position;
        let mut work = Work::default();
        let (mut to, mut oldest) = (watermark, None);
        if head > watermark {
            for (position, sealed) in self.store.events_from(watermark + 1, self.target.config.batch_max)? {
                to = position;
                let e: Peek = serde_json::from_slice(&sealed.bytes)
                    .map_err(|e| LogError::Corrupt { position, detail: e.to_string() })?;
                oldest.get_or_insert(e.recorded_at);
                if e.tenant == self.target.tenant() {
                    work.note(position, &e);
                }
            }
        }
        let lag = oldest.map_or(0.0, |t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0);
        self.status.positions(watermark, head, lag);
        let now = Utc::now();
        let (retry_all, approved) = (std::mem::take(&mut self.retry_all), std::mem::take(&mut self.approved));
        for (key, p) in self.state.all_parked(MAX_PARKED_PER_STEP)? {
            let due = match p.class.as_str() {
                HELD => approved,
                _ => retry_all || p.next_attempt <= now,
            };
            if due {
                let view = self.store.view();
                let member_kind = |m: &str| match query::group(&view, self.target.tenant(), m) {
                    Some(_) => Kind::Group,
                    None => Kind::User,
                };
                work.add_parked(key, p.position, member_kind);
            }
        }
        if work.is_empty() && to == watermark {
            self.refresh_counts()?;
            self.status.positions(watermark, head, 0.0);
            return Ok(Progress::Idle);
        }
        self.apply(&work, approved).await?;
        if to > watermark {
            let mut b = Batch::default();
            self.state.set_watermark(&mut b, to);
            self.on_disk(move |st| st.commit_durable(b)).await?;
        }
        if self.status.is_quarantined() {
            self.emit(What::Recovered, None, to, |_| {});
        }
        self.status.quarantine(None);
        self.refresh_counts()?;
        self.status.positions(to, head, lag);
        Ok(if to > watermark { Progress::Moved } else { Progress::Idle })
    }

    /// Whether a group is provisioned: every group, or the scope's own groups.
    fn group_in_scope(&self, id: &str) -> bool {
        self.target.scope.as_ref().is_none_or(|s| s.has_group(id))
    }

    /// Whether a user is provisioned: every user, or, now, a member of a scope group or a
    /// holder of a scope role or entitlement (directly or through groups, nested too).
    fn user_in_scope(&self, id: &str) -> bool {
        let Some(scope) = &self.target.scope else { return true };
        let (view, t) = (self.store.view(), self.target.tenant());
        if scope.groups.iter().any(|g| query::member(&view, t, g, id).is_some()) {
            return true;
        }
        if !scope.by_grant() {
            return false;
        }
        // The user's own grants, then its groups' (no display names: `access::effective` would
        // read each group's document for its provenance).
        match access::groups_transitively(&view, t, MemberType::User, id, MAX_SCOPE_READ) {
            Ok(groups) => std::iter::once(id.to_string())
                .chain(groups)
                .any(|subject| access::grants_of(&view, t, &subject).iter().any(|g| scope.holds(&g.grant))),
            // Kept rather than deprovisioned on a guess; said once per judgement.
            Err(e) => {
                let why = "a user's groups are too many to judge its scope; it stays in";
                tracing::warn!(target = self.target.name(), error = %e, "{why}");
                true
            }
        }
    }

    /// With a scope, the users whose place in it may have changed: members joining or leaving
    /// a scope group (or, for a scope of grants, any group, and the users of a nested group),
    /// holders of a changed grant, and the members last sent of a scope group that is gone.
    fn scope_changes(&self, work: &Work, users: &mut BTreeMap<String, u64>) -> Result<(), Halt> {
        let Some(scope) = &self.target.scope else { return Ok(()) };
        let by_grant = scope.by_grant();
        let t = self.target.tenant();
        let view = self.store.view();
        let mut note = |id: String, position: u64| {
            users.entry(id).or_insert(position);
        };
        for ((g, m), &(kind, position)) in &work.members {
            match kind {
                Kind::User if by_grant || scope.has_group(g) => note(m.clone(), position),
                // A nested group joining or leaving: its users' inherited grants changed.
                Kind::Group if by_grant => self.users_of(&view, m).into_iter().for_each(|u| note(u, position)),
                Kind::User | Kind::Group => {}
            }
        }
        if by_grant {
            for (subject, &position) in &work.grants {
                match query::user(&view, t, subject) {
                    Some(_) => note(subject.clone(), position),
                    None => self.users_of(&view, subject).into_iter().for_each(|u| note(u, position)),
                }
            }
        }
        let mut deleted = None;
        for (g, &position) in &work.groups {
            if query::group(&view, t, g).is_some() {
                continue;
            }
            deleted = deleted.max(Some(position));
            if scope.has_group(g) {
                for m in self.state.members_sent(g, None, MAX_VERIFY)? {
                    note(m, position);
                }
            }
        }
        // A deleted group took its members' inherited grants along, and its members are not
        // known any more: every linked user is judged again (once, however many were deleted).
        if let (true, Some(position)) = (by_grant, deleted) {
            for (u, _) in self.state.links(Kind::User, MAX_VERIFY)? {
                note(u, position);
            }
        }
        Ok(())
    }

    /// The users of a group, nested groups included (bounded; too many is said and skipped).
    fn users_of(&self, view: &crate::log::StateView<'_>, group: &str) -> Vec<String> {
        access::users_of_group(view, self.target.tenant(), group, MAX_SCOPE_READ).unwrap_or_else(|e| {
            tracing::warn!(target = self.target.name(), error = %e, "a group's users are too many to judge their scope");
            Vec::new()
        })
    }

    async fn apply(&mut self, work: &Work, approved: bool) -> Result<(), Halt> {
        let t = self.target.tenant().to_string();
        let mut users = work.users.clone();
        self.scope_changes(work, &mut users)?;
        let mut gone_users = Vec::new();
        for (id, &position) in &users {
            let doc = { query::user(&self.store.view(), &t, id) };
            match doc.filter(|_| self.user_in_scope(id)) {
                Some(doc) => {
                    self.upsert(Kind::User, id, render::user(&doc, &self.target.knobs, &self.target.mapping), position)
                        .await?
                }
                // Gone, or out of the scope: deprovisioned (if it was ever sent).
                None => gone_users.push((id, position)),
            }
        }
        let mut gone_groups = Vec::new();
        for (id, &position) in &work.groups {
            let doc = { query::group(&self.store.view(), &t, id) };
            match doc.filter(|_| self.group_in_scope(id)) {
                Some(doc) => self.upsert(Kind::Group, id, render::group(&doc, &self.target.knobs), position).await?,
                None => gone_groups.push((id, position)),
            }
        }
        let mut by_group: BTreeMap<&str, Vec<(&str, Kind, u64)>> = BTreeMap::new();
        for ((g, m), &(kind, position)) in &work.members {
            // Out of the scope: a group not provisioned, or a nested group that is not.
            if !self.group_in_scope(g) || (kind == Kind::Group && !self.group_in_scope(m)) {
                self.unpark_if(ParkedKey::Membership { group: g.clone(), member: m.clone() })?;
                continue;
            }
            by_group.entry(g).or_default().push((m, kind, position));
        }
        for (group, members) in by_group {
            self.sync_members(group, &members).await?;
        }
        let held = self.breaker(&gone_users, &gone_groups, &work.erased, approved)?;
        for (id, position) in gone_groups {
            match &held {
                Some(why) => self.hold(Kind::Group, id, position, why)?,
                None => self.remove(Kind::Group, id, position, false).await?,
            }
        }
        for (id, position) in gone_users {
            let erased = work.erased.contains(id.as_str());
            match (&held, erased) {
                (Some(why), false) => self.hold(Kind::User, id, position, why)?,
                (None, _) | (Some(_), true) => self.remove(Kind::User, id, position, erased).await?,
            }
        }
        Ok(())
    }

    /// The deletion breaker: many deprovisions at once (a scope or IdP mistake) are held. Answers
    /// why, when this step's deprovisions are to be held.
    fn breaker(
        &mut self,
        gone_users: &[(&String, u64)],
        gone_groups: &[(&String, u64)],
        erased: &BTreeSet<String>,
        approved: bool,
    ) -> Result<Option<String>, Halt> {
        let mut deprovisions = 0;
        for (id, _) in gone_groups {
            deprovisions += self.state.link(Kind::Group, id)?.is_some() as usize;
        }
        for (id, _) in gone_users.iter().filter(|(id, _)| !erased.contains(*id)) {
            deprovisions += self.state.link(Kind::User, id)?.is_some() as usize;
        }
        let window = Duration::from_secs(self.target.config.breaker_window_s);
        while self.deprovisions.front().is_some_and(|t| t.elapsed() > window) {
            self.deprovisions.pop_front();
        }
        if approved {
            self.deprovisions.clear();
        }
        let recent = self.deprovisions.len();
        let max = self.target.config.max_deprovisions;
        if approved || recent + deprovisions <= max {
            return Ok(None);
        }
        tracing::warn!(
            target = self.target.name(),
            deprovisions,
            "deletion breaker tripped: deprovisions held until approved"
        );
        Ok(Some(format!(
            "deletion breaker: {deprovisions} deprovisions after {recent} in the last {} s exceed max_deprovisions {max}; approve with `scimlog outbound approve-deletes`",
            self.target.config.breaker_window_s
        )))
    }

    fn hold(&self, kind: Kind, id: &str, position: u64, detail: &str) -> Result<(), Halt> {
        if self.state.link(kind, id)?.is_none() {
            return Ok(());
        }
        self.park(ParkedKey::Object(kind, id.into()), position, HELD, None, None, detail)
    }

    /// Brings one existing object to `doc`: create when unlinked, else update what changed.
    async fn upsert(&mut self, kind: Kind, id: &str, doc: Value, position: u64) -> Result<(), Halt> {
        let Some(link) = self.state.link(kind, id)? else { return self.create(kind, id, doc, position).await };
        if link.sent == doc {
            return self.settled(kind, id);
        }
        let path = format!("/{}/{}", kind.endpoint(), enc(&link.remote_id));
        // A user whose remote state is unknown (adopted, resync) is replaced whole: attributes
        // set downstream by someone else go away.
        let put_user = kind == Kind::User && (!self.patch || link.sent.is_null());
        let request = match (self.patch && !put_user, kind) {
            // None: a PATCH of attributes the target is not sent sends nothing.
            (true, _) => render::patch(&link.sent, &doc).map(|body| (Method::PATCH, body)),
            (false, Kind::User) => Some((Method::PUT, doc.clone())),
            // Members go by PATCH: the group's PUT carries its own attributes only.
            (false, Kind::Group) if self.target.knobs.members_by_patch => Some((Method::PUT, doc.clone())),
            (false, Kind::Group) => match self.members_for_put(id)? {
                Some(members) => Some((Method::PUT, render::with_members(&doc, &members))),
                None => {
                    let detail =
                        format!("the group has more than {MAX_PUT_MEMBERS} members and the target takes only PUT");
                    let f = Failure::Rejected { status: 0, scim_type: None, detail };
                    return self.fail(ParkedKey::Object(kind, id.into()), position, f);
                }
            },
        };
        // Whether a request went out.
        let result = match request {
            None => Ok(false),
            Some((method, body)) => {
                self.unsure(kind, id, &link).await?;
                self.client.send(method, &path, Some(&body)).await.map(|_| true)
            }
        };
        match result {
            Ok(sent) => {
                let remote = link.remote_id.clone();
                let mut b = Batch::default();
                self.state.put_link(&mut b, kind, id, &Link { sent: doc, position, ..link });
                self.state.unpark(&mut b, &ParkedKey::Object(kind, id.into()));
                self.state.commit(b)?;
                self.status.outcome(true);
                if sent {
                    self.emit(What::Updated, Some((kind, id)), position, |o| o.remote_id = Some(remote));
                }
                Ok(())
            }
            Err(Failure::NotFound) => {
                // Deleted out of band: created again (S6 finds nothing, so it POSTs).
                tracing::info!(
                    target = self.target.name(),
                    kind = kind.endpoint(),
                    "linked object is gone remotely; creating it again"
                );
                let mut b = Batch::default();
                self.state.delete_link(&mut b, kind, id);
                self.state.commit(b)?;
                self.create(kind, id, doc, position).await
            }
            Err(f) => {
                self.sure_again(kind, id, &link, &f)?;
                self.fail(ParkedKey::Object(kind, id.into()), position, f)
            }
        }
    }

    /// Forgets, durably, what a linked object's last sent document was, before a request that
    /// changes it: a request cut off (a kill, a lost answer) may have been done there, so the
    /// object is next sent whole, never judged by a document the target may no longer hold
    /// (the directory changing it back would otherwise send nothing).
    async fn unsure(&self, kind: Kind, id: &str, link: &Link) -> Result<(), Halt> {
        if link.sent.is_null() {
            return Ok(());
        }
        let mut b = Batch::default();
        self.state.put_link(&mut b, kind, id, &Link { sent: Value::Null, ..link.clone() });
        self.on_disk(move |st| st.commit_durable(b)).await
    }

    /// Puts back what [`Connector::unsure`] forgot when the answer says the request was not done.
    fn sure_again(&self, kind: Kind, id: &str, link: &Link, f: &Failure) -> Result<(), Halt> {
        if f.maybe_applied() {
            return Ok(());
        }
        let mut b = Batch::default();
        self.state.put_link(&mut b, kind, id, link);
        Ok(self.state.commit(b)?)
    }

    /// The remote id of a member as sent (a user's, else a nested group's), if it is linked.
    fn member_remote_id(&self, member: &str) -> Result<Option<String>, LogError> {
        let link = match self.state.link(Kind::User, member)? {
            Some(l) => Some(l),
            None => self.state.link(Kind::Group, member)?,
        };
        Ok(link.map(|l| l.remote_id))
    }

    /// The remote ids of a group's members, for a PUT; `None` when there are too many.
    fn members_for_put(&self, group: &str) -> Result<Option<Vec<String>>, Halt> {
        let sent = self.state.members_sent(group, None, MAX_PUT_MEMBERS + 1)?;
        if sent.len() > MAX_PUT_MEMBERS {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(sent.len());
        for m in sent {
            out.extend(self.member_remote_id(&m)?);
        }
        Ok(Some(out))
    }

    fn settled(&self, kind: Kind, id: &str) -> Result<(), Halt> {
        let key = ParkedKey::Object(kind, id.into());
        if self.state.parked(&key)?.is_some() {
            let mut b = Batch::default();
            self.state.unpark(&mut b, &key);
            self.state.commit(b)?;
        }
        Ok(())
    }

    /// Creates an object, at most once: an intent is written before the POST, and after a 409
    /// or an unknown outcome (or at the start, when an earlier intent is open) the object is
    /// looked up by its externalId (our id) before anything is sent again.
    async fn create(&mut self, kind: Kind, id: &str, doc: Value, position: u64) -> Result<(), Halt> {
        let key = ParkedKey::Object(kind, id.into());
        if self.state.intent(kind, id)?.is_some() {
            match self.lookup(kind, "externalId", id).await? {
                Found::Yes(remote) => return self.adopt(kind, id, doc, position, remote, false).await,
                Found::No => {}
                Found::Unknown(f) => return self.fail(key, position, f),
            }
        }
        let mut b = Batch::default();
        self.state.put_intent(&mut b, kind, id, &Intent { position, at: Utc::now() });
        self.on_disk(move |st| st.commit_durable(b)).await?;
        let mut tries = 0;
        loop {
            tries += 1;
            let failure = match self.client.send(Method::POST, &format!("/{}", kind.endpoint()), Some(&doc)).await {
                Ok(reply) => match reply.body.get("id").and_then(Value::as_str) {
                    Some(remote) => {
                        self.linked(kind, id, doc, position, remote.to_string(), false)?;
                        return self.resend_members(kind, id, position).await;
                    }
                    None => Failure::Rejected {
                        status: reply.status,
                        scim_type: None,
                        detail: format!("the target answered {} without an id", reply.status),
                    },
                },
                Err(f) => f,
            };
            let unknown = matches!(failure, Failure::Transient { maybe_applied: true, .. });
            if !unknown && !matches!(failure, Failure::Conflict { .. }) {
                return self.fail(key, position, failure);
            }
            // Ours from an earlier try whose answer was lost? Never POST blindly.
            match self.lookup(kind, "externalId", id).await? {
                Found::Yes(remote) => return self.adopt(kind, id, doc, position, remote, false).await,
                Found::No => {}
                Found::Unknown(f) => return self.fail(key, position, f),
            }
            if unknown && tries < self.target.config.retry_max {
                if self.client.pause(tries).await.is_err() {
                    return Err(Halt::Stopped);
                }
                continue;
            }
            if !unknown && self.target.config.adopt == Adopt::ByIdentity {
                let (attr, value) = match kind {
                    Kind::User => ("userName", doc.get("userName")),
                    Kind::Group => ("displayName", doc.get("displayName")),
                };
                if let Some(v) = value.and_then(Value::as_str) {
                    if let Found::Yes(remote) = self.lookup(kind, attr, v).await? {
                        return self.adopt(kind, id, doc, position, remote, true).await;
                    }
                }
            }
            return self.fail(key, position, failure);
        }
    }

    /// Records a link to a remote object found by a lookup, then converges it on `doc`.
    async fn adopt(
        &mut self,
        kind: Kind,
        id: &str,
        doc: Value,
        position: u64,
        remote: String,
        adopted: bool,
    ) -> Result<(), Halt> {
        tracing::info!(
            target = self.target.name(),
            kind = kind.endpoint(),
            adopted,
            "linked an existing remote object"
        );
        // What it holds is unknown: an empty "last sent" makes the update send every attribute.
        self.linked(kind, id, Value::Null, position, remote, adopted)?;
        Box::pin(self.upsert(kind, id, doc, position)).await?;
        Box::pin(self.resend_members(kind, id, position)).await
    }

    /// A group just created remotely holds no member: every member it has here is sent (and
    /// the members recorded as sent for an earlier remote copy are forgotten). Users: nothing.
    async fn resend_members(&mut self, kind: Kind, group: &str, position: u64) -> Result<(), Halt> {
        const PAGE: usize = 1000;
        if kind == Kind::User {
            return Ok(());
        }
        let mut b = Batch::default();
        self.forget_members(&mut b, group)?;
        self.state.commit(b)?;
        let t = self.target.tenant().to_string();
        let mut after: Option<String> = None;
        loop {
            let page = { query::members(&self.store.view(), &t, group, after.as_deref(), PAGE) };
            let members: Vec<(&str, Kind, u64)> =
                page.iter().map(|m| (m.id.as_str(), member_kind(m.member_type), position)).collect();
            self.sync_members(group, &members).await?;
            if page.len() < PAGE {
                return Ok(());
            }
            after = page.last().map(|m| m.id.clone());
        }
    }

    fn linked(
        &self,
        kind: Kind,
        id: &str,
        sent: Value,
        position: u64,
        remote_id: String,
        adopted: bool,
    ) -> Result<(), Halt> {
        let mut b = Batch::default();
        let what = if adopted { What::Adopted } else { What::Linked };
        self.emit(what, Some((kind, id)), position, |o| o.remote_id = Some(remote_id.clone()));
        self.state.put_link(&mut b, kind, id, &Link { remote_id, sent, position, adopted });
        self.state.delete_intent(&mut b, kind, id);
        self.state.unpark(&mut b, &ParkedKey::Object(kind, id.into()));
        self.state.commit(b)?;
        self.status.outcome(true);
        Ok(())
    }

    /// The remote object whose `attr` equals `value` (without case): by a filter, or, when the
    /// target cannot filter, by listing it. A lookup that cannot be made answers `Unknown`: a
    /// create is then parked, never sent again blindly.
    async fn lookup(&self, kind: Kind, attr: &str, value: &str) -> Result<Found, Halt> {
        let matches =
            |res: &&Value| res.get(attr).and_then(Value::as_str).is_some_and(|v| v.eq_ignore_ascii_case(value));
        if !self.filter {
            return self.lookup_by_listing(kind, matches).await;
        }
        let filter = format!("{attr} eq {}", Value::String(value.into()));
        let path = format!("/{}?filter={}", kind.endpoint(), enc(&filter));
        match self.client.send(Method::GET, &path, None).await {
            Ok(r) => Ok(Found::of(r.body["Resources"].as_array().into_iter().flatten().find(matches))),
            Err(f) => self.lookup_failed(f),
        }
    }

    /// A target that cannot filter: its objects listed a page at a time (at most
    /// [`MAX_LOOKUP_LIST`]) and matched here.
    async fn lookup_by_listing(&self, kind: Kind, matches: impl Fn(&&Value) -> bool) -> Result<Found, Halt> {
        let mut seen = 0;
        loop {
            let (resources, total) = match self.remote_page(kind, seen).await {
                Ok(page) => page,
                Err(f) => return self.lookup_failed(f),
            };
            if let Some(found) = resources.iter().find(&matches) {
                return Ok(Found::of(Some(found)));
            }
            seen += resources.len();
            if resources.is_empty() || seen >= total {
                return Ok(Found::No);
            }
            if seen >= MAX_LOOKUP_LIST {
                let detail = format!(
                    "cannot tell whether it exists there: the target cannot filter and lists more than {MAX_LOOKUP_LIST} {}",
                    kind.endpoint()
                );
                return Ok(Found::Unknown(Failure::Conflict { detail }));
            }
        }
    }

    fn lookup_failed(&self, f: Failure) -> Result<Found, Halt> {
        match f {
            Failure::Unauthorized(s) => Err(Halt::Quarantine(Failure::Unauthorized(s).detail())),
            Failure::Stopped => Err(Halt::Stopped),
            f => {
                tracing::warn!(target = self.target.name(), error = %f.detail(), "a lookup failed");
                let detail = format!("cannot tell whether it exists there: the lookup failed: {}", f.detail());
                Ok(Found::Unknown(Failure::Transient { detail, maybe_applied: false }))
            }
        }
    }

    /// Member adds and removes of one group, from the memberships as they are now against the
    /// memberships as last sent: O(1) per change, whatever the group's size.
    async fn sync_members(&mut self, group: &str, members: &[(&str, Kind, u64)]) -> Result<(), Halt> {
        let t = self.target.tenant().to_string();
        let exists = { query::group(&self.store.view(), &t, group).is_some() };
        let Some(group_link) = self.state.link(Kind::Group, group)? else {
            for &(m, _, position) in members {
                let key = ParkedKey::Membership { group: group.into(), member: m.into() };
                match exists {
                    true => self.park(key, position, "blocked", None, None, "the group is not linked yet")?,
                    false => self.unpark_if(key)?,
                }
            }
            return Ok(());
        };
        if !self.patch && !self.target.knobs.members_by_patch {
            // A PUT-only target gets the whole member list with the group.
            return self.put_members(group, &group_link, members).await;
        }
        let (mut adds, mut removes, mut orphans) = (Vec::new(), Vec::new(), Vec::new());
        for &(m, kind, position) in members {
            let want = { query::member(&self.store.view(), &t, group, m).is_some() };
            let (before, sent_as) = self.state.member(group, m)?;
            let key = ParkedKey::Membership { group: group.into(), member: m.into() };
            if before.matches(want) {
                self.unpark_if(key)?;
                continue;
            }
            let change = |l: Link| MemberChange { member: m, kind, position, remote_id: l.remote_id, before };
            match (self.state.link(kind, m)?, want) {
                (Some(l), true) => adds.push(change(l)),
                (Some(l), false) => removes.push(change(l)),
                (None, true) => self.park(key, position, "blocked", None, None, "the member is not linked yet")?,
                // The member is gone remotely (or never got there). A target that keeps a deleted
                // user's id in its groups (scim2-server does) still has it when this removal
                // failed before the user's DELETE went out: it goes with the id it was added as.
                (None, false) => match sent_as {
                    Some(remote_id) => orphans.push(MemberChange { member: m, kind, position, remote_id, before }),
                    None => {
                        let mut b = Batch::default();
                        self.state.set_member_sent(&mut b, group, m, None);
                        self.state.unpark(&mut b, &key);
                        self.state.commit(b)?;
                    }
                },
            }
        }
        let path = format!("/Groups/{}", enc(&group_link.remote_id));
        let cap = self.target.knobs.max_members_per_request;
        let (mut added, mut removed, mut last) = (0, 0, 0);
        for (chunk, add) in adds.chunks(cap).map(|c| (c, true)).chain(removes.chunks(cap).map(|c| (c, false))) {
            if !self.patch_members(group, &path, chunk, add).await? {
                continue;
            }
            last = chunk.iter().map(|c| c.position).fold(last, u64::max);
            match add {
                true => added += chunk.len(),
                false => removed += chunk.len(),
            }
        }
        for orphan in &orphans {
            if self.remove_orphan(group, &path, orphan).await? {
                (removed, last) = (removed + 1, last.max(orphan.position));
            }
        }
        if added + removed > 0 {
            let remote = group_link.remote_id.clone();
            self.emit(What::Updated, Some((Kind::Group, group)), last, |o| {
                o.remote_id = Some(remote);
                o.members = Some((added, removed));
            });
        }
        Ok(())
    }

    /// Unsure until answered, on disk before a membership PATCH goes out: a PATCH cut off (a
    /// kill, a lost answer) may have been done there, so the membership is next sent as it is
    /// here then, never judged by what was last answered.
    async fn mark_unsure(&self, group: &str, chunk: &[MemberChange<'_>]) -> Result<(), Halt> {
        let mut b = Batch::default();
        for c in chunk {
            self.state.set_member_unsure(&mut b, group, c.member, c.kind, &c.remote_id);
        }
        self.on_disk(move |st| st.commit_durable(b)).await
    }

    /// One chunk of a group's member adds (or removes), in as few PATCHes as the profile allows;
    /// answers whether the target took them (else they are parked).
    async fn patch_members(
        &mut self,
        group: &str,
        path: &str,
        chunk: &[MemberChange<'_>],
        add: bool,
    ) -> Result<bool, Halt> {
        let ids: Vec<String> = chunk.iter().map(|c| c.remote_id.clone()).collect();
        let (cap, remove) = (self.target.knobs.max_members_per_request, self.target.knobs.member_remove);
        let bodies = match add {
            true => render::member_patches(&ids, &[], cap, remove),
            false => render::member_patches(&[], &ids, cap, remove),
        };
        self.mark_unsure(group, chunk).await?;
        let mut result = Ok(());
        for body in &bodies {
            result = self.client.send(Method::PATCH, path, Some(body)).await.map(|_| ());
            if result.is_err() {
                break;
            }
        }
        let mut b = Batch::default();
        let f = match result {
            Ok(()) => {
                for c in chunk {
                    match add {
                        true => self.state.set_member_added(&mut b, group, c.member, c.kind, &c.remote_id),
                        false => self.state.set_member_sent(&mut b, group, c.member, None),
                    }
                    self.state.unpark(&mut b, &ParkedKey::Membership { group: group.into(), member: c.member.into() });
                }
                self.state.commit(b)?;
                return Ok(true);
            }
            Err(f) => f,
        };
        if !f.maybe_applied() {
            // Answered "not done": the target holds what it held before.
            for c in chunk {
                match c.before {
                    Sent::No => self.state.set_member_sent(&mut b, group, c.member, None),
                    Sent::Yes => self.state.set_member_added(&mut b, group, c.member, c.kind, &c.remote_id),
                    Sent::Unsure => self.state.set_member_unsure(&mut b, group, c.member, c.kind, &c.remote_id),
                }
            }
            self.state.commit(b)?;
        }
        for c in chunk {
            let key = ParkedKey::Membership { group: group.into(), member: c.member.into() };
            self.fail(key, c.position, f.clone())?;
        }
        Ok(false)
    }

    /// A membership added by PATCH whose member is gone (no link): removed with the id it was
    /// added as. A target refusing it (a 4xx: it may not know the id any more) ends it here, as
    /// a target that dropped the member from its groups by itself would: there is nothing to
    /// retry. Answers whether the removal was sent and taken.
    async fn remove_orphan(&mut self, group: &str, path: &str, c: &MemberChange<'_>) -> Result<bool, Halt> {
        let key = ParkedKey::Membership { group: group.into(), member: c.member.into() };
        self.mark_unsure(group, std::slice::from_ref(c)).await?;
        let body = render::member_patches(&[], std::slice::from_ref(&c.remote_id), 1, self.target.knobs.member_remove);
        let result = self.client.send(Method::PATCH, path, body.first()).await;
        match &result {
            Ok(_) => {}
            Err(f @ (Failure::NotFound | Failure::Conflict { .. } | Failure::Rejected { .. })) => {
                tracing::info!(target = self.target.name(), error = %f.detail(), "a gone member's removal was refused: forgotten");
            }
            // Not answered, or not now: it stays unsure and waits.
            Err(f) => return self.fail(key, c.position, f.clone()).map(|()| false),
        }
        let mut b = Batch::default();
        self.state.set_member_sent(&mut b, group, c.member, None);
        self.state.unpark(&mut b, &key);
        self.state.commit(b)?;
        Ok(result.is_ok())
    }

    /// Targets without PATCH: the group is PUT with every member it has now.
    async fn put_members(&mut self, group: &str, link: &Link, members: &[(&str, Kind, u64)]) -> Result<(), Halt> {
        let t = self.target.tenant().to_string();
        let now = { query::members(&self.store.view(), &t, group, None, MAX_PUT_MEMBERS + 1) };
        let position = members.iter().map(|m| m.2).max().unwrap_or(0);
        if now.len() > MAX_PUT_MEMBERS {
            let detail = format!("the group has more than {MAX_PUT_MEMBERS} members and the target takes only PUT");
            let f = Failure::Rejected { status: 0, scim_type: None, detail };
            return self.fail(ParkedKey::Object(Kind::Group, group.into()), position, f);
        }
        let mut remote = Vec::with_capacity(now.len());
        for m in &now {
            let kind = member_kind(m.member_type);
            remote.extend(self.state.link(kind, &m.id)?.map(|l| l.remote_id));
        }
        let doc = { query::group(&self.store.view(), &t, group) };
        let Some(doc) = doc else { return Ok(()) };
        let body = render::with_members(&render::group(&doc, &self.target.knobs), &remote);
        let path = format!("/Groups/{}", enc(&link.remote_id));
        match self.client.send(Method::PUT, &path, Some(&body)).await {
            Ok(_) => {
                let mut b = Batch::default();
                let (mut added, mut removed) = (0, 0);
                for &(m, kind, _) in members {
                    let is_member = now.iter().any(|x| x.id == m);
                    match is_member {
                        true => added += 1,
                        false => removed += 1,
                    }
                    self.state.set_member_sent(&mut b, group, m, is_member.then_some(kind));
                    self.state.unpark(&mut b, &ParkedKey::Membership { group: group.into(), member: m.into() });
                }
                self.state.commit(b)?;
                let remote = link.remote_id.clone();
                self.emit(What::Updated, Some((Kind::Group, group)), position, |o| {
                    o.remote_id = Some(remote);
                    o.members = Some((added, removed));
                });
                Ok(())
            }
            Err(f) => {
                // The memberships it carried wait, each: their retry sends the PUT again (a retry
                // of the group alone sends nothing when its own attributes did not change).
                for &(m, _, position) in members {
                    let key = ParkedKey::Membership { group: group.into(), member: m.into() };
                    self.fail(key, position, f.clone())?;
                }
                Ok(())
            }
        }
    }

    /// An object that is gone here: DELETE, deactivate or forget, as the policy says.
    async fn remove(&mut self, kind: Kind, id: &str, position: u64, erased: bool) -> Result<(), Halt> {
        let key = ParkedKey::Object(kind, id.into());
        let link = match self.state.link(kind, id)? {
            Some(link) => link,
            // Never linked, but a create is open: its POST was cut off (a kill, a lost answer)
            // and may have made the object. It is ours to remove, found by its externalId, as
            // `create` finds it; otherwise it would stay at the target for good.
            None if self.state.intent(kind, id)?.is_some() => match self.lookup(kind, "externalId", id).await? {
                Found::Yes(remote_id) => Link { remote_id, sent: Value::Null, position, adopted: false },
                Found::No => {
                    let mut b = Batch::default();
                    self.state.delete_intent(&mut b, kind, id);
                    self.state.unpark(&mut b, &key);
                    self.state.commit(b)?;
                    return Ok(());
                }
                Found::Unknown(f) => return self.fail(key, position, f),
            },
            None => return self.unpark_if(key),
        };
        let policy = match (kind, erased) {
            (Kind::Group, _) | (Kind::User, true) => Deprovision::Delete,
            (Kind::User, false) => self.target.config.deprovision,
        };
        let path = format!("/{}/{}", kind.endpoint(), enc(&link.remote_id));
        let mut b = Batch::default();
        // Settled now, whatever the policy does.
        self.state.delete_intent(&mut b, kind, id);
        let remote = link.remote_id.clone();
        let what = match policy {
            Deprovision::Delete => What::Deleted,
            Deprovision::Deactivate => What::Deactivated,
            Deprovision::None => What::Unlinked,
        };
        match policy {
            Deprovision::Delete => match self.client.send(Method::DELETE, &path, None).await {
                Ok(_) | Err(Failure::NotFound) => {
                    self.state.delete_link(&mut b, kind, id);
                    if kind == Kind::Group {
                        self.forget_members(&mut b, id)?;
                    }
                }
                Err(f) => return self.fail(key, position, f),
            },
            Deprovision::Deactivate => {
                if link.sent.get("active") == Some(&Value::Bool(false)) {
                    return self.unpark_if(key);
                }
                let now = render::deactivated(&link.sent);
                self.unsure(kind, id, &link).await?;
                // A PUT needs the whole document: unknown (adopted, resync), it is a PATCH.
                let sent = match self.patch || !link.sent.is_object() {
                    true => {
                        let body = json!({"schemas": [render::PATCH_OP], "Operations": [{"op": "replace", "value": {"active": false}}]});
                        self.client.send(Method::PATCH, &path, Some(&body)).await
                    }
                    false => self.client.send(Method::PUT, &path, Some(&now)).await,
                };
                match sent {
                    Ok(_) | Err(Failure::NotFound) => {
                        self.state.put_link(&mut b, kind, id, &Link { sent: now, position, ..link });
                    }
                    Err(f) => {
                        self.sure_again(kind, id, &link, &f)?;
                        return self.fail(key, position, f);
                    }
                }
            }
            Deprovision::None => self.state.delete_link(&mut b, kind, id),
        }
        self.state.unpark(&mut b, &key);
        self.state.commit(b)?;
        self.emit(what, Some((kind, id)), position, |o| o.remote_id = Some(remote));
        if !erased {
            self.deprovisions.push_back(std::time::Instant::now());
        }
        if erased {
            // The last sent document held the person's values: out of the files too.
            let id = id.to_string();
            self.on_disk(move |st| st.purge_user(&id)).await?;
        }
        self.status.outcome(true);
        Ok(())
    }

    fn forget_members(&self, b: &mut Batch, group: &str) -> Result<(), Halt> {
        const PAGE: usize = 1000;
        let mut after: Option<String> = None;
        loop {
            let page = self.state.members_sent(group, after.as_deref(), PAGE)?;
            for m in &page {
                self.state.set_member_sent(b, group, m, None);
            }
            if page.len() < PAGE {
                return Ok(());
            }
            after = page.last().cloned();
        }
    }

    fn unpark_if(&self, key: ParkedKey) -> Result<(), Halt> {
        if self.state.parked(&key)?.is_some() {
            let mut b = Batch::default();
            self.state.unpark(&mut b, &key);
            self.state.commit(b)?;
        }
        Ok(())
    }

    /// A failed object: parked (everything else goes on), or the whole step halted (refused
    /// credentials, stopping).
    fn fail(&self, key: ParkedKey, position: u64, f: Failure) -> Result<(), Halt> {
        let (class, status, scim_type) = match &f {
            Failure::Unauthorized(_) => return Err(Halt::Quarantine(f.detail())),
            Failure::Stopped => return Err(Halt::Stopped),
            Failure::Throttled(_) | Failure::Transient { .. } => ("transient", None, None),
            Failure::Conflict { .. } => ("conflict", Some(409), None),
            Failure::NotFound => ("rejected", Some(404), None),
            Failure::Rejected { status, scim_type, .. } => ("rejected", Some(*status), scim_type.clone()),
        };
        tracing::warn!(target = self.target.name(), class, error = %f.detail(), "outbound object parked");
        self.status.outcome(false);
        self.park(key, position, class, status, scim_type, &f.detail())
    }

    fn park(
        &self,
        key: ParkedKey,
        position: u64,
        class: &str,
        status: Option<u16>,
        scim_type: Option<String>,
        detail: &str,
    ) -> Result<(), Halt> {
        let old = self.state.parked(&key)?;
        // Said once per class: a blocked membership is parked again at every retry.
        if old.as_ref().is_none_or(|p| p.class != class) {
            let object = match &key {
                ParkedKey::Object(kind, id) => (*kind, id.as_str()),
                ParkedKey::Membership { group, .. } => (Kind::Group, group.as_str()),
            };
            self.emit(What::Parked, Some(object), position, |o| {
                o.status = status;
                o.class = Some(class.into());
            });
        }
        let attempts = old.as_ref().map_or(0, |p| p.attempts) + 1;
        let parked = Parked {
            class: class.into(),
            position: old.map_or(position, |p| p.position.min(position)),
            attempts,
            status,
            scim_type,
            detail: detail.into(),
            next_attempt: Utc::now() + retry_after(class, attempts),
        };
        let mut b = Batch::default();
        self.state.park(&mut b, &key, &parked);
        self.state.commit(b)?;
        Ok(())
    }
}

/// A failure that ends a verify (an object's own failures are reported, not parked, there).
fn halt_of(f: Failure) -> Halt {
    match f {
        Failure::Stopped => Halt::Stopped,
        other => Halt::Quarantine(other.detail()),
    }
}

/// When a parked object is tried again (besides at its next change): a blocked membership soon
/// (its member may be linked by then), anything else on a lengthening schedule.
fn retry_after(class: &str, attempts: u32) -> chrono::Duration {
    const SCHEDULE_S: [i64; 5] = [60, 900, 3600, 6 * 3600, 24 * 3600];
    match class {
        "blocked" => chrono::Duration::seconds((attempts as i64).min(60)),
        // Only an approval releases it.
        HELD => chrono::Duration::days(3650),
        _ => chrono::Duration::seconds(SCHEDULE_S[(attempts as usize - 1).min(SCHEDULE_S.len() - 1)]),
    }
}

/// Percent-encodes a path segment or a query value.
fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}
