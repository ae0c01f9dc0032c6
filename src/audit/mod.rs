//! Reading the log back: hash-chain verification, export and import, history, the directory as
//! of a moment, and rebuilding the read models to prove them equal to the live ones. The folds
//! are the live ones (`scimlog_projections::apply`). Only `import` and a rebuild write, and
//! only to a store nobody else uses.

use std::io::Write;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use scimlog_projections::{apply, keys, query, KvRead, MemKv, Overlay};
use scimlog_schemas::event::{Event, EventBody, EventHash, SealedEvent};
use scimlog_schemas::personal::Opener;
use scimlog_schemas::{MemberType, ResourceKind};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::log::keys::{KeyError, KeyRing};
use crate::log::{LogError, Store};

/// What `audit verify` proved.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub count: u64,
    pub head_position: u64,
    pub head_hash: EventHash,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("position {position}: {what}")]
    Broken { position: u64, what: String },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot read or write: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("the history has {count} events, more than the {limit} this reads (--max-scan)")]
    TooLong { count: usize, limit: usize },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChainFields {
    position: u64,
    prev_hash: EventHash,
}

const PAGE: usize = 4096;

/// Walks the whole log: every record's hash must be the SHA-256 of its bytes, every event must
/// name the previous event's hash, and positions must run 1, 2, 3, ... without a gap. A flipped
/// byte, a deleted event or a reordered pair is reported with its position.
pub fn verify(store: &Store) -> Result<Verified, AuditError> {
    verify_with(store, &mut |_| {})
}

/// [`verify`], telling `progress` how many events are checked after each page.
pub fn verify_with(store: &Store, progress: &mut dyn FnMut(u64)) -> Result<Verified, AuditError> {
    let mut expected_prev = EventHash::GENESIS;
    let mut expected_position = 1u64;
    let mut count = 0u64;
    loop {
        let page = store.events_from(expected_position, PAGE)?;
        if page.is_empty() {
            break;
        }
        for (position, sealed) in page {
            let broken = |what: String| AuditError::Broken { position, what };
            if position != expected_position {
                return Err(broken(format!("expected position {expected_position}: events are missing")));
            }
            if !sealed.is_intact() {
                return Err(broken(
                    "the stored hash is not the hash of the stored bytes: the event was altered".into(),
                ));
            }
            let fields: ChainFields =
                serde_json::from_slice(&sealed.bytes).map_err(|e| broken(format!("the event does not parse: {e}")))?;
            if fields.position != position {
                return Err(broken(format!("the event says position {}: events were moved", fields.position)));
            }
            if fields.prev_hash != expected_prev {
                return Err(broken(format!(
                    "prevHash is {} but the previous event's hash is {expected_prev}: events were removed or reordered",
                    fields.prev_hash
                )));
            }
            expected_prev = sealed.event_hash();
            expected_position += 1;
            count += 1;
        }
        progress(count);
    }
    Ok(Verified { count, head_position: expected_position - 1, head_hash: expected_prev })
}

/// A recorded head: the log must still hold this event (position and hash). `verify` alone cannot
/// see events removed from the end of the log; a recorded anchor can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub position: u64,
    pub hash: EventHash,
}

impl std::str::FromStr for Anchor {
    type Err = String;
    fn from_str(s: &str) -> Result<Anchor, String> {
        let (p, h) = s.split_once(':').ok_or_else(|| format!("expected POSITION:HASH, got {s:?}"))?;
        let position =
            p.parse::<u64>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{p:?} is not a position (1, 2, ...)"))?;
        let hash = EventHash::parse_hex(&h.to_ascii_lowercase())
            .ok_or_else(|| format!("{h:?} is not a SHA-256 in hex (64 characters)"))?;
        Ok(Anchor { position, hash })
    }
}

/// Checks a verified log against recorded anchors: each must be there, with the same hash.
pub fn check_anchors(store: &Store, verified: &Verified, anchors: &[Anchor]) -> Result<(), AuditError> {
    for a in anchors {
        let broken = |what: String| AuditError::Broken { position: a.position, what };
        if a.position > verified.head_position {
            return Err(broken(format!(
                "the log ends at position {}, before the recorded anchor at {}: events were removed from its end",
                verified.head_position, a.position
            )));
        }
        let stored = store.events_from(a.position, 1)?.into_iter().next().map(|(_, s)| s.event_hash());
        if stored != Some(a.hash) {
            return Err(broken(format!(
                "the event here has hash {}, not the recorded {}: the log was rewritten",
                stored.map(|h| h.to_string()).unwrap_or_default(),
                a.hash
            )));
        }
    }
    Ok(())
}

/// Writes events `from..=to` as JSON lines. `opened`: personal values opened with the keys
/// (erased ones read `[erased]`); otherwise the envelopes exactly as stored and hashed, sealed
/// values included.
pub fn export(
    store: &Store,
    opener: &dyn Opener,
    from: u64,
    to: Option<u64>,
    opened: bool,
    out: &mut dyn Write,
) -> Result<u64, AuditError> {
    export_with(store, opener, from, to, opened, out, &mut |_| {})
}

/// [`export`], telling `progress` the last position written after each page.
pub fn export_with(
    store: &Store,
    opener: &dyn Opener,
    from: u64,
    to: Option<u64>,
    opened: bool,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, AuditError> {
    let mut next = from.max(1);
    let mut written = 0;
    loop {
        let page = store.events_from(next, PAGE)?;
        if page.is_empty() {
            return Ok(written);
        }
        progress(next.saturating_sub(1));
        for (position, sealed) in page {
            if to.is_some_and(|t| position > t) {
                return Ok(written);
            }
            let broken = |what: String| AuditError::Broken { position, what };
            let line = if opened {
                let event = sealed.decode(opener).map_err(|e| broken(e.to_string()))?;
                let mut v = serde_json::to_value(&event).expect("events serialise");
                v["hash"] = sealed.hash_hex().into();
                v
            } else {
                sealed.envelope_json().map_err(|e| broken(e.to_string()))?
            };
            serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            written += 1;
            next = position + 1;
        }
    }
}

/// Which events `audit log` prints.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub actor: Option<String>,
    pub types: Vec<String>,
    pub tenant: Option<String>,
}

impl EventFilter {
    fn accepts(&self, e: &Event) -> bool {
        self.since.is_none_or(|s| e.recorded_at >= s)
            && self.until.is_none_or(|u| e.recorded_at <= u)
            && self.actor.as_deref().is_none_or(|a| a == e.actor)
            && (self.types.is_empty() || self.types.iter().any(|t| t == e.event_type().as_str()))
            && self.tenant.as_deref().is_none_or(|t| t == e.tenant)
    }
}

/// Calls `f` with every event from `from` on, in log order, opened with `opener`.
pub fn each_event(
    store: &Store,
    opener: &dyn Opener,
    from: u64,
    mut f: impl FnMut(Event) -> Result<bool, AuditError>,
) -> Result<(), AuditError> {
    let mut next = from.max(1);
    loop {
        let page = store.events_from(next, PAGE)?;
        if page.is_empty() {
            return Ok(());
        }
        for (position, sealed) in page {
            let event = sealed.decode(opener).map_err(|e| AuditError::Broken { position, what: e.to_string() })?;
            if !f(event)? {
                return Ok(());
            }
            next = position + 1;
        }
    }
}

/// `audit log`: the events the filter accepts.
pub fn log(store: &Store, opener: &dyn Opener, filter: &EventFilter) -> Result<Vec<Event>, AuditError> {
    let mut out = Vec::new();
    each_event(store, opener, 1, |e| {
        if filter.accepts(&e) {
            out.push(e);
        }
        Ok(true)
    })?;
    Ok(out)
}

/// `audit history`: every event that touched a resource (for a user, also its memberships),
/// oldest first, read through the history index.
pub fn history(
    store: &Store,
    opener: &dyn Opener,
    tenant: &str,
    kind: ResourceKind,
    id: &str,
) -> Result<Vec<Event>, AuditError> {
    history_tail(store, opener, tenant, kind, id, usize::MAX).map(|(_, events)| events)
}

/// The last `limit` events of a resource's history, oldest first, and how many it has in all
/// (only the index is walked for the count; only the tail is read and decoded).
pub fn history_tail(
    store: &Store,
    opener: &dyn Opener,
    tenant: &str,
    kind: ResourceKind,
    id: &str,
    limit: usize,
) -> Result<(usize, Vec<Event>), AuditError> {
    let positions = history_index(store, tenant, kind, id)?;
    let total = positions.len();
    let events = read_events(store, opener, &positions[total.saturating_sub(limit)..])?;
    Ok((total, events))
}

/// The positions of a resource's history, oldest first (the history index alone).
fn history_index(store: &Store, tenant: &str, kind: ResourceKind, id: &str) -> Result<Vec<u64>, AuditError> {
    let view = store.view();
    let positions = query::history_positions(&view, tenant, kind, id);
    match view.take_error() {
        Some(e) => Err(e.into()),
        None => Ok(positions),
    }
}

/// The events at `positions`, decoded.
fn read_events(store: &Store, opener: &dyn Opener, positions: &[u64]) -> Result<Vec<Event>, AuditError> {
    let mut out = Vec::with_capacity(positions.len());
    for &position in positions {
        for (p, sealed) in store.events_from(position, 1)? {
            if p == position {
                out.push(sealed.decode(opener).map_err(|e| AuditError::Broken { position, what: e.to_string() })?);
            }
        }
    }
    Ok(out)
}

/// A user's history folded one event at a time by the live fold: each event that touched the
/// user (its memberships' too), with the user as it stood right after it (`None` before it
/// was created and once deleted), rendered as [`render`] does. What the console shows as a
/// user's history (what each event changed) and as the user as of a moment. A user with more
/// than `limit` events in its history is refused (`TooLong`).
pub fn user_story(
    store: &Store,
    opener: &dyn Opener,
    tenant: &str,
    id: &str,
    limit: usize,
) -> Result<Vec<(Event, Option<Value>)>, AuditError> {
    // The index is walked once: to refuse a long history before reading it, then to read it.
    let positions = history_index(store, tenant, ResourceKind::User, id)?;
    if positions.len() > limit {
        return Err(AuditError::TooLong { count: positions.len(), limit });
    }
    let mut kv = MemKv::with_blinder(blinder_of(store)?);
    let events = read_events(store, opener, &positions)?;
    let live = store.view();
    Ok(events
        .into_iter()
        .map(|e| {
            stand_in_for_group(&mut kv, &live, &e);
            apply(&mut kv, &e);
            let after = render(&kv, tenant, ResourceKind::User, id);
            (e, after)
        })
        .collect())
}

/// A user's history holds its memberships' events but not the groups' own: before the first
/// membership event of a group, the fold gets a stand-in for the group (as it is now, or a
/// placeholder once deleted), so that it records the membership. Memberships as of a moment
/// are then exact; the groups' names are today's.
fn stand_in_for_group(kv: &mut MemKv, live: &impl KvRead, e: &Event) {
    let (EventBody::GroupMemberAdded { .. } | EventBody::GroupMemberRemoved { .. }) = &e.body else { return };
    let (t, group) = (e.tenant.as_str(), e.resource_id.as_str());
    if query::group(&*kv, t, group).is_some() {
        return;
    }
    let doc = query::group(live, t, group).unwrap_or_else(|| scimlog_projections::GroupDoc {
        id: group.to_string(),
        version: 0,
        created: e.recorded_at,
        last_modified: e.recorded_at,
        display_name: format!("(deleted group {group})"),
        attributes: Default::default(),
        member_count: 0,
    });
    let doc = scimlog_projections::GroupDoc { member_count: 0, ..doc };
    scimlog_projections::Kv::put(kv, &keys::group(t, group), &serde_json::to_vec(&doc).expect("a group serialises"));
}

/// The id of the user that has (or last had) `user_name`: the live index first, then the log.
pub fn user_id_by_name(
    store: &Store,
    opener: &dyn Opener,
    tenant: &str,
    user_name: &str,
) -> Result<Option<String>, AuditError> {
    let view = store.view();
    if let Some(id) = query::user_id_by_user_name(&view, tenant, user_name) {
        return Ok(Some(id));
    }
    let folded = scimlog_schemas::name::fold(user_name);
    let mut found = None;
    each_event(store, opener, 1, |e| {
        let named = match &e.body {
            EventBody::UserCreated { attributes, .. } => attributes.get("userName"),
            EventBody::UserUpdated { changed, .. } => changed.get("userName"),
            _ => None,
        };
        if e.tenant == tenant && named.and_then(Value::as_str).is_some_and(|n| scimlog_schemas::name::fold(n) == folded)
        {
            found = Some(e.resource_id.clone());
        }
        Ok(true)
    })?;
    Ok(found)
}

/// The position of the last event recorded at or before `at`.
pub fn position_at(store: &Store, at: chrono::DateTime<chrono::Utc>) -> Result<u64, AuditError> {
    let mut last = 0;
    each_event(store, &scimlog_schemas::personal::NoKeys, 1, |e| {
        if e.recorded_at > at {
            return Ok(false);
        }
        last = e.position;
        Ok(true)
    })?;
    Ok(last)
}

/// Rebuilds every read model from the log when they were written with another key layout than
/// this code's (`keys::LAYOUT_VERSION`), before a server serves from them; marks a new, empty
/// store as current. Returns the number of events folded (0: nothing to do).
pub fn rebuild_if_stale(store: &Store, opener: &(dyn Opener + Sync)) -> Result<u64, AuditError> {
    let layout = store.layout_version()?;
    if layout == Some(keys::LAYOUT_VERSION) {
        return Ok(0);
    }
    let head = store.head()?.position;
    if head == 0 {
        store.mark_layout_current()?;
        return Ok(0);
    }
    tracing::warn!(
        found = layout.unwrap_or(1),
        current = keys::LAYOUT_VERSION,
        events = head,
        "the read models were laid out by another version: rebuilding them from the log"
    );
    let started = std::time::Instant::now();
    rebuild(store, opener, REBUILD_BATCH_WRITES, &mut |_| {})?;
    tracing::info!(events = head, seconds = started.elapsed().as_secs_f64(), "read models rebuilt");
    Ok(head)
}

/// How many read-model writes a rebuild into RocksDB holds before it writes them out: its
/// memory is this batch (about 35 MB at a user's entries: 4 times the batch took 110 MB more at
/// 1M users) and the store's own memtables and cache, whatever the size of the directory.
pub const REBUILD_BATCH_WRITES: usize = 65_536;

/// Rebuilds every read model in place, from the log, into RocksDB (`replay --rebuild`, an
/// upgrade at start): the `state` family is emptied, the log is folded into it in batches of
/// `batch_writes`, flushed, and only then marked current. A rebuild that fails or is cut off
/// leaves read models with no layout mark, which the next start rebuilds before serving.
/// Needs a store nobody else writes. Returns the number of events folded.
pub fn rebuild(
    store: &Store,
    opener: &(dyn Opener + Sync),
    batch_writes: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, AuditError> {
    blinder_of(store)?;
    let head = store.head()?.position;
    store.clear_state()?;
    fold_into(store, store, opener, head, batch_writes, progress)?;
    store.flush_state()?;
    store.mark_layout_current()?;
    Ok(head)
}

/// The block cache of a scratch store a rebuild folds into.
const SCRATCH_BLOCK_CACHE_BYTES: usize = 8 << 20;

/// What a scratch store's directory is called in the data dir (then a random suffix).
const SCRATCH_PREFIX: &str = ".scimlog-rebuild-";
/// The file in a scratch store's directory its owner holds locked while it lives.
const SCRATCH_OWNER: &str = "owner.lock";

/// Read models folded from a log into a scratch store of their own, in a directory that is
/// removed when this is dropped.
pub struct Rebuilt {
    // Dropped before the directory it lives in.
    store: Store,
    // Locked while this lives: a directory whose lock nobody holds was left by a process that
    // was killed, and `remove_abandoned_scratch` takes it away.
    _owner: std::fs::File,
    _dir: tempfile::TempDir,
}

impl Rebuilt {
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Folds `store`'s log up to `last` into a scratch store under `scratch_in` (`replay --verify`,
/// the benchmark), in batches of `batch_writes`: memory stays bounded whatever the directory's
/// size, and the disk holds a second copy of the read models until the result is dropped.
/// `store` may be a read-only instance beside a live server.
pub fn rebuild_beside(
    store: &Store,
    opener: &(dyn Opener + Sync),
    last: u64,
    scratch_in: &std::path::Path,
    batch_writes: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<Rebuilt, AuditError> {
    let blinder = blinder_of(store)?;
    remove_abandoned_scratch(scratch_in);
    let dir = tempfile::Builder::new().prefix(SCRATCH_PREFIX).tempdir_in(scratch_in)?;
    let owner = std::fs::File::create(dir.path().join(SCRATCH_OWNER))?;
    owner.try_lock().map_err(|e| std::io::Error::other(format!("cannot lock a new scratch store: {e}")))?;
    // The fold reads what it wrote last (memtables, the newest files) and absent keys (bloom
    // filters): a small block cache does, and the memory goes to the memtables.
    let memory = crate::log::StoreMemory { block_cache_bytes: SCRATCH_BLOCK_CACHE_BYTES, ..Default::default() };
    let scratch = Store::open_with(dir.path(), &memory)?;
    scratch.set_blinder(blinder);
    fold_into(store, &scratch, opener, last, batch_writes, progress)?;
    Ok(Rebuilt { store: scratch, _owner: owner, _dir: dir })
}

/// Removes the scratch stores in `dir` that a `replay --verify` killed by a signal left behind
/// (a second copy of the read models each, personal values included): those whose owner lock
/// nobody holds. One still in use is left alone. Returns how many it removed; a failure to
/// remove one is logged, never fatal (called at start and before each verify).
pub fn remove_abandoned_scratch(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX) || !path.is_dir() {
            continue;
        }
        // Cut off before its lock was taken, a directory has no lock file: abandoned too.
        let held = std::fs::File::open(path.join(SCRATCH_OWNER))
            .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
        if held {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a scratch store a killed replay left behind");
                removed += 1;
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove an abandoned scratch store"),
        }
    }
    removed
}

/// Folds `source`'s log up to `last` into `target`'s `state` family, which holds nothing of the
/// directory yet. The fold reads through an overlay of the writes pending since the last batch
/// over the target as written so far, so each event sees what its predecessors left, exactly
/// as the writer's fold does.
fn fold_into(
    source: &Store,
    target: &Store,
    opener: &(dyn Opener + Sync),
    last: u64,
    batch_writes: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<(), AuditError> {
    let view = target.live_view();
    let mut pending = Overlay::new(&view);
    each_decoded_page(source, opener, last, progress, &mut |events| {
        for e in &events {
            apply(&mut pending, e);
        }
        if pending.writes().len() >= batch_writes.max(1) {
            target.write_state_unlogged(std::mem::replace(&mut pending, Overlay::new(&view)).into_writes())?;
        }
        view.take_error().map_or(Ok(()), |e| Err(e.into()))
    })?;
    target.write_state_unlogged(pending.into_writes())?;
    view.take_error().map_or(Ok(()), |e| Err(e.into()))
}

/// Every read model as it stood after `position`, folded in memory by the same code as the
/// live ones (as of a moment, a person's story; tests' oracle). `progress` is called now and
/// then with the position reached.
pub fn fold_until(
    store: &Store,
    opener: &(dyn Opener + Sync),
    position: Option<u64>,
    progress: &mut dyn FnMut(u64),
) -> Result<MemKv, AuditError> {
    // Folded with the store's own blinder, so that the result equals its read models.
    let mut kv = MemKv::with_blinder(blinder_of(store)?);
    each_decoded_page(store, opener, position.unwrap_or(u64::MAX), progress, &mut |events| {
        for e in &events {
            apply(&mut kv, e);
        }
        Ok(())
    })?;
    Ok(kv)
}

/// Hands the log's events from position 1 to `last` to `fold`, decoded, a page at a time in
/// log order. The fold is one thread (each event sees the state its predecessors left), but
/// decoding is most of the work (parsing, opening sealed values, unwrapping data keys), so a
/// reader thread hands pages of stored events in turn to one decoder per core, and this thread
/// folds the decoded pages in the order they were read.
fn each_decoded_page(
    store: &Store,
    opener: &(dyn Opener + Sync),
    last: u64,
    progress: &mut dyn FnMut(u64),
    fold: &mut dyn FnMut(Vec<Event>) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let decoders = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    std::thread::scope(|s| {
        let (mut to_decoders, mut from_decoders) = (Vec::new(), Vec::new());
        for _ in 0..decoders {
            let (pages_tx, pages) = std::sync::mpsc::sync_channel::<Vec<(u64, SealedEvent)>>(1);
            let (decoded_tx, decoded) = std::sync::mpsc::sync_channel::<Result<Vec<Event>, AuditError>>(1);
            s.spawn(move || {
                for page in pages {
                    let events: Result<Vec<Event>, AuditError> = page
                        .into_iter()
                        .map(|(position, sealed)| {
                            sealed.decode(opener).map_err(|e| AuditError::Broken { position, what: e.to_string() })
                        })
                        .collect();
                    // A closed channel means the fold stopped (an error): stop too.
                    if decoded_tx.send(events).is_err() {
                        return;
                    }
                }
            });
            to_decoders.push(pages_tx);
            from_decoders.push(decoded);
        }
        // Page k goes to decoder k % n. When the reader ends it drops its senders: each decoder
        // finishes its queue and closes, and the fold meets the first closed one in turn.
        let reader = s.spawn(move || -> Result<(), AuditError> {
            let mut next = 1;
            for k in 0.. {
                let mut page = store.events_from(next, PAGE)?;
                let Some(&(end, _)) = page.last() else { return Ok(()) };
                page.retain(|(p, _)| *p <= last);
                if page.is_empty() || to_decoders[k % to_decoders.len()].send(page).is_err() || end >= last {
                    return Ok(());
                }
                next = end + 1;
            }
            Ok(())
        });
        let folded = (|| {
            let mut reported = 0;
            for k in 0.. {
                let Ok(events) = from_decoders[k % from_decoders.len()].recv() else { break };
                let events = events?;
                let reached = events.last().map_or(reported, |e| e.position);
                fold(events)?;
                // After each page that passes a multiple of 10 000 (pages are smaller).
                if reached / 10_000 > reported / 10_000 {
                    progress(reached);
                }
                reported = reached;
            }
            Ok(())
        })();
        // The receivers go first, so that a reader blocked on a full queue ends.
        drop(from_decoders);
        let read = reader.join().expect("the log reader does not panic");
        folded.and(read)
    })
}

/// A resource as it stood in `kv`, as SCIM-like JSON (attributes, id, meta; a group's members;
/// a user's groups).
pub fn render(kv: &MemKv, tenant: &str, kind: ResourceKind, id: &str) -> Option<Value> {
    match kind {
        ResourceKind::User => query::user(kv, tenant, id).map(|u| {
            let mut v = u.filterable();
            let mut schemas = vec![json!(scimlog_schemas::urn::USER)];
            if u.attributes.contains_key(scimlog_schemas::urn::ENTERPRISE_USER) {
                schemas.push(json!(scimlog_schemas::urn::ENTERPRISE_USER));
            }
            v["schemas"] = Value::Array(schemas);
            if u.active.is_none() {
                v.as_object_mut().map(|o| o.remove("active"));
            }
            let groups: Vec<Value> = query::groups_of(kv, tenant, MemberType::User, id, usize::MAX)
                .into_iter()
                .map(|g| json!({"value": g, "display": query::group(kv, tenant, &g).map(|g| g.display_name)}))
                .collect();
            if !groups.is_empty() {
                v["groups"] = Value::Array(groups);
            }
            v
        }),
        ResourceKind::Group => query::group(kv, tenant, id).map(|g| {
            let mut v = g.filterable();
            v["schemas"] = json!([scimlog_schemas::urn::GROUP]);
            let members: Vec<Value> = query::members(kv, tenant, id, None, usize::MAX)
                .into_iter()
                .map(|m| json!({"value": m.id, "type": m.member_type.kind().as_str()}))
                .collect();
            if !members.is_empty() {
                v["members"] = Value::Array(members);
            }
            v
        }),
        _ => None,
    }
}

/// The directory of a tenant in `kv`: counts and every resource's id and name.
pub fn summary(kv: &MemKv, tenant: &str) -> Value {
    let users: Vec<Value> = kv
        .scan(&keys::users(tenant), None, usize::MAX)
        .into_iter()
        .filter(|(k, _)| !keys::is_user_groups(k))
        .filter_map(|(_, v)| serde_json::from_slice::<scimlog_projections::UserDoc>(&v).ok())
        .map(|u| json!({"id": u.id, "userName": u.user_name(), "active": u.is_active(), "version": u.version}))
        .collect();
    let groups: Vec<Value> = kv
        .scan(&keys::groups(tenant), None, usize::MAX)
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<scimlog_projections::GroupDoc>(&v).ok())
        .map(|g| json!({"id": g.id, "displayName": g.display_name, "members": g.member_count, "version": g.version}))
        .collect();
    json!({"tenant": tenant, "users": users.len(), "groups": groups.len(), "Users": users, "Groups": groups})
}

/// Where a rebuilt read model differs from the live one.
#[derive(Debug, Default)]
pub struct Differences {
    pub count: usize,
    /// The first few: key (escaped), live value, rebuilt value.
    pub first: Vec<(String, Option<String>, Option<String>)>,
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace('\0', "\u{241f}")
}

/// Compares a state rebuilt in memory with the live `state` family, key by key.
pub fn compare(store: &Store, rebuilt: &MemKv) -> Result<Differences, AuditError> {
    let mut failed = None;
    let live = store.state_entries().map_while(|r| r.map_err(|e| failed = Some(e)).ok());
    let d = differences(live, rebuilt.0.iter());
    failed.map_or(Ok(d), |e| Err(e.into()))
}

/// Compares read models rebuilt into a scratch store with the live `state` family, key by key,
/// reading both in order as it goes.
pub fn compare_stores(store: &Store, rebuilt: &Rebuilt) -> Result<Differences, AuditError> {
    let (mut live_failed, mut rebuilt_failed) = (None, None);
    let live = store.state_entries().map_while(|r| r.map_err(|e| live_failed = Some(e)).ok());
    let again = rebuilt.store.state_entries().map_while(|r| r.map_err(|e| rebuilt_failed = Some(e)).ok());
    let d = differences(live, again);
    live_failed.or(rebuilt_failed).map_or(Ok(d), |e| Err(e.into()))
}

/// The keys two ordered sequences of read-model entries disagree on. The layout mark is not a
/// read model (no fold writes it) and is passed over on both sides.
fn differences<A: AsRef<[u8]>, B: AsRef<[u8]>>(
    live: impl Iterator<Item = (A, A)>,
    rebuilt: impl Iterator<Item = (B, B)>,
) -> Differences {
    let mut d = Differences::default();
    let mut note = |k: &[u8], a: Option<&[u8]>, b: Option<&[u8]>| {
        d.count += 1;
        if d.first.len() < 10 {
            d.first.push((show(k), a.map(show), b.map(show)));
        }
    };
    let mut li = live.filter(|(k, _)| k.as_ref() != keys::LAYOUT).peekable();
    let mut ri = rebuilt.filter(|(k, _)| k.as_ref() != keys::LAYOUT).peekable();
    loop {
        let order = match (li.peek(), ri.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((lk, _)), Some((rk, _))) => lk.as_ref().cmp(rk.as_ref()),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (k, v) = li.next().expect("peeked");
                note(k.as_ref(), Some(v.as_ref()), None);
            }
            std::cmp::Ordering::Greater => {
                let (k, v) = ri.next().expect("peeked");
                note(k.as_ref(), None, Some(v.as_ref()));
            }
            std::cmp::Ordering::Equal => {
                let ((k, lv), (_, rv)) = (li.next().expect("peeked"), ri.next().expect("peeked"));
                if lv.as_ref() != rv.as_ref() {
                    note(k.as_ref(), Some(lv.as_ref()), Some(rv.as_ref()));
                }
            }
        }
    }
    d
}

/// Imports a `--sealed` export into an empty store. The whole input is read and checked first
/// (JSON, hashes, one contiguous chain, every event decodable), and only then written, so a
/// broken line anywhere leaves the store as empty as it was. `open` gives the input from its
/// start, once per pass.
pub fn import<R: std::io::BufRead>(
    store: &Store,
    keys: &KeyRing,
    open: impl Fn() -> std::io::Result<R>,
) -> Result<u64, AuditError> {
    import_with(store, keys, open, &mut |_| {})
}

/// How far an import is: the events checked by its first pass, those written by its second,
/// then the position its fold of the read models reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportProgress {
    Checked(u64),
    Written { done: u64, total: u64 },
    Folded { done: u64, total: u64 },
}

/// [`import`], telling `progress` how far it is every [`PAGE`] events.
pub fn import_with<R: std::io::BufRead>(
    store: &Store,
    keys: &KeyRing,
    open: impl Fn() -> std::io::Result<R>,
    progress: &mut dyn FnMut(ImportProgress),
) -> Result<u64, AuditError> {
    if store.head()?.position != 0 {
        return Err(AuditError::Broken { position: 0, what: "import needs an empty data dir".into() });
    }
    // Pass 1: check everything, write nothing. Personal values are not opened here (no key is
    // restored yet); the events must still decode.
    let mut chain = ChainCheck::default();
    for (n, line) in open()?.lines().enumerate() {
        if let Some(ImportLine::Event(position, sealed)) = parse_import_line(n, &line?, &mut chain)? {
            sealed
                .decode(&scimlog_schemas::personal::NoKeys)
                .map_err(|e| AuditError::Broken { position, what: format!("line {}: {e}", n + 1) })?;
            if chain.count % PAGE as u64 == 0 {
                progress(ImportProgress::Checked(chain.count));
            }
        }
    }
    let total = chain.count;
    // Pass 2: restore the keys, append the events (each opened first: a key the export lacks
    // stops the import before its page is written).
    let mut chain = ChainCheck::default();
    let mut batch: Vec<(u64, SealedEvent)> = Vec::new();
    for (n, line) in open()?.lines().enumerate() {
        match parse_import_line(n, &line?, &mut chain)? {
            None => {}
            Some(ImportLine::Key(id, wrapped)) => keys.restore(id, wrapped)?,
            Some(ImportLine::Event(position, sealed)) => {
                sealed
                    .decode(keys)
                    .map_err(|e| AuditError::Broken { position, what: format!("line {}: {e}", n + 1) })?;
                batch.push((position, sealed));
                if batch.len() >= PAGE {
                    store.append_raw(&std::mem::take(&mut batch))?;
                    progress(ImportProgress::Written { done: chain.count, total });
                }
            }
        }
    }
    store.append_raw(&batch)?;
    progress(ImportProgress::Written { done: chain.count, total });
    // Pass 3: the read models, folded from the log now written (into RocksDB, in batches).
    rebuild(store, keys, REBUILD_BATCH_WRITES, &mut |done| progress(ImportProgress::Folded { done, total }))?;
    Ok(chain.count)
}

/// The store's index blinder (set when its key ring was opened).
fn blinder_of(store: &Store) -> Result<scimlog_projections::IndexBlinder, AuditError> {
    store.blinder().ok_or_else(|| AuditError::Broken {
        position: 0,
        what: "the store has no index secret yet: start the server once on it (it upgrades the read models)".into(),
    })
}

/// Where an import stands in the chain it reads.
struct ChainCheck {
    expected_prev: EventHash,
    count: u64,
}

impl Default for ChainCheck {
    fn default() -> Self {
        ChainCheck { expected_prev: EventHash::GENESIS, count: 0 }
    }
}

enum ImportLine {
    /// A wrapped data key: (key id, wrapped key).
    Key(Vec<u8>, Vec<u8>),
    Event(u64, SealedEvent),
}

/// Parses line `n` (0-based) of an export and checks it continues `chain`.
fn parse_import_line(n: usize, line: &str, chain: &mut ChainCheck) -> Result<Option<ImportLine>, AuditError> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let broken = |what: String| AuditError::Broken { position: n as u64 + 1, what: format!("line {}: {what}", n + 1) };
    let mut v: Value = serde_json::from_str(line).map_err(|e| broken(e.to_string()))?;
    if let Some(k) = v.get("dataKey") {
        let id = k["id"].as_str().and_then(|s| B64.decode(s).ok()).ok_or_else(|| broken("bad dataKey id".into()))?;
        let wrapped =
            k["wrapped"].as_str().and_then(|s| B64.decode(s).ok()).ok_or_else(|| broken("bad dataKey".into()))?;
        return Ok(Some(ImportLine::Key(id, wrapped)));
    }
    if is_opened(&v) {
        return Err(broken(
            "this is an opened export (personal values in clear), which cannot be imported: \
             export with `scimlog audit export --sealed`"
                .into(),
        ));
    }
    let hash = v.as_object_mut().and_then(|o| o.remove("hash")).and_then(|h| h.as_str().map(String::from));
    let bytes = serde_json::to_vec(&v).map_err(|e| broken(e.to_string()))?;
    let sealed = SealedEvent { hash: Sha256::digest(&bytes).into(), bytes };
    if hash.as_deref() != Some(sealed.hash_hex().as_str()) {
        return Err(broken("the hash does not match the event: the export was altered".into()));
    }
    let fields: ChainFields = serde_json::from_slice(&sealed.bytes).map_err(|e| broken(e.to_string()))?;
    if fields.prev_hash != chain.expected_prev || fields.position != chain.count + 1 {
        return Err(broken("the events are not a contiguous chain from the first".into()));
    }
    chain.expected_prev = sealed.event_hash();
    chain.count += 1;
    Ok(Some(ImportLine::Event(fields.position, sealed)))
}

/// An event of an opened export: a `user.created` always carries a userName, which the stored
/// (sealed) form holds under `data.sealed`; the opened form has it in clear.
fn is_opened(v: &Value) -> bool {
    v["type"] == "user.created" && v["data"].get("sealed").is_none()
}

/// Writes the key lines that make a sealed export importable (wrapped keys: useless without the
/// master key).
pub fn export_keys(keys: &KeyRing, out: &mut dyn Write) -> Result<u64, AuditError> {
    let mut n = 0;
    for (id, wrapped) in keys.wrapped_keys()? {
        serde_json::to_writer(&mut *out, &json!({"dataKey": {"id": B64.encode(&id), "wrapped": B64.encode(&wrapped)}}))
            .map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    Ok(n)
}
