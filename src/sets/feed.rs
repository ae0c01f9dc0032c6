//! Feeds (RFC 9967 §2.3): a stream scoped to groups carries their user members only. Whether a
//! user is in the feed depends on the memberships at that point of the log, not now, so the
//! feed keeps its own fold of them, advanced in log order, and writes down what each event
//! means for it: descriptors under `o<position><index>`, each the event's own SET (a member's
//! change), a `feed:add` (a user joined a feed group and was in none) or a `feed:remove` (left
//! the last one). Delivery (`deliver.rs`) reads the descriptors, not the log, from the
//! watermark on; the fold is deterministic, so a lost step is redone identically.
//!
//! State under the stream's prefix: `c` the position folded to, `s` the groups folded for (a
//! changed `groups` folds again from the start), `m<user>\0<group>` and `g<group>\0<user>`
//! the memberships, `o…` the descriptors not yet behind the watermark.
//!
//! Rules, per event of the stream's tenant:
//! - a user joins a feed group: `feed:add` if it was in none;
//! - a user leaves a feed group (or the group is deleted): `feed:remove` if that was its last,
//!   unless the user is deleted by the same request (then its `prov:delete` goes instead, as
//!   the draft asks: no `feed:remove` with a delete);
//! - any other change of a user in the feed: its SET;
//! - groups' own SETs and nested groups are not part of a feed (a feed is of users).

use std::collections::{BTreeMap, BTreeSet};

use scimlog_schemas::event::{Event, EventBody, MemberType};
use scimlog_schemas::personal::NoKeys;
use scimlog_schemas::ResourceKind;
use sha2::{Digest, Sha256};

use super::config::{Stream, FEED_ADD, FEED_REMOVE};
use super::streams::prefix;
use crate::log::{LogError, OutboundStore, Store};

/// What a feed's descriptor stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Descriptor {
    /// The SET of the event at the position.
    Own,
    FeedAdd(String),
    FeedRemove(String),
}

impl Descriptor {
    fn encode(&self) -> Vec<u8> {
        let (kind, user) = match self {
            Descriptor::Own => (0u8, ""),
            Descriptor::FeedAdd(u) => (1, u.as_str()),
            Descriptor::FeedRemove(u) => (2, u.as_str()),
        };
        std::iter::once(kind).chain(user.bytes()).collect()
    }

    pub fn decode(bytes: &[u8]) -> Option<Descriptor> {
        let (kind, user) = bytes.split_first()?;
        let user = std::str::from_utf8(user).ok()?.to_string();
        match kind {
            0 => Some(Descriptor::Own),
            1 => Some(Descriptor::FeedAdd(user)),
            2 => Some(Descriptor::FeedRemove(user)),
            _ => None,
        }
    }
}

pub fn key(stream: &Stream, kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = prefix(&stream.id);
    k.push(kind);
    k.extend_from_slice(rest);
    k
}

pub fn descriptor_key(stream: &Stream, position: u64, index: u32) -> Vec<u8> {
    let at: Vec<u8> = position.to_be_bytes().into_iter().chain(index.to_be_bytes()).collect();
    key(stream, b'o', &at)
}

fn pair(a: &str, b: &str) -> Vec<u8> {
    [a.as_bytes(), b"\0", b.as_bytes()].concat()
}

/// The feed's memberships as stored, with this step's changes over them.
struct Fold<'a> {
    store: &'a OutboundStore,
    stream: &'a Stream,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Fold<'_> {
    /// The keys under `kind` + `head` + `\0`, stored and changed, as the part after it.
    fn under(&self, kind: u8, head: &str) -> Result<BTreeSet<String>, LogError> {
        let p = key(self.stream, kind, &[head.as_bytes(), b"\0"].concat());
        let mut out = BTreeSet::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.store.scan(&p, after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            out.extend(page.iter().filter_map(|(k, _)| std::str::from_utf8(&k[p.len()..]).ok().map(String::from)));
        }
        for (k, v) in self.changes.range(p.clone()..).take_while(|(k, _)| k.starts_with(&p)) {
            let tail = String::from_utf8_lossy(&k[p.len()..]).into_owned();
            match v {
                Some(_) => out.insert(tail),
                None => out.remove(&tail),
            };
        }
        Ok(out)
    }

    fn in_feed(&self, user: &str) -> Result<bool, LogError> {
        Ok(!self.under(b'm', user)?.is_empty())
    }

    fn set(&mut self, user: &str, group: &str, member: bool) {
        let v = member.then(Vec::new);
        self.changes.insert(key(self.stream, b'm', &pair(user, group)), v.clone());
        self.changes.insert(key(self.stream, b'g', &pair(group, user)), v);
    }
}

/// The fingerprint of a feed's groups (`s`): a change folds the feed again from the start.
fn fingerprint(stream: &Stream) -> Vec<u8> {
    let mut h = Sha256::new();
    for g in stream.groups.iter().flatten() {
        h.update(g.as_bytes());
        h.update([0]);
    }
    h.finalize().to_vec()
}

/// Where the feed's fold stands (0: nothing folded yet).
pub fn cursor(store: &OutboundStore, stream: &Stream) -> Result<u64, LogError> {
    Ok(store
        .get(&key(stream, b'c', &[]))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Deletes the fold (memberships, descriptors, cursor) when the feed's groups changed.
fn restart_if_regrouped(store: &OutboundStore, stream: &Stream) -> Result<(), LogError> {
    let want = fingerprint(stream);
    if store.get(&key(stream, b's', &[]))?.as_deref() == Some(want.as_slice()) {
        return Ok(());
    }
    let mut entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![(key(stream, b'c', &[]), None)];
    for kind in [b'm', b'g', b'o'] {
        let p = key(stream, kind, &[]);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.scan(&p, after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            entries.extend(page.into_iter().map(|(k, _)| (k, None)));
        }
    }
    entries.push((key(stream, b's', &[]), Some(want)));
    store.write(entries, true)
}

/// Folds the feed on from its cursor: at least `max_scan` events when there are that many (the
/// last request is always folded whole, so that a deletion is seen with its removals), to the
/// head at most. Returns the new cursor.
pub fn advance(store: &Store, stream: &Stream, max_scan: usize) -> Result<u64, LogError> {
    let out = store.outbound();
    restart_if_regrouped(&out, stream)?;
    let from = cursor(&out, stream)?;
    let head = store.head()?.position;
    let mut events: Vec<Event> = Vec::new();
    let mut at = from;
    'read: while at < head {
        for (position, sealed) in store.events_from(at + 1, 256)? {
            let e = sealed.decode(&NoKeys).map_err(|e| LogError::Corrupt {
                position,
                detail: format!("cannot be decoded for a SET feed: {e}"),
            })?;
            let same_request = events.last().is_some_and(|l| l.request_id == e.request_id);
            if events.len() >= max_scan.max(1) && !same_request {
                break 'read;
            }
            at = position;
            events.push(e);
        }
    }
    if events.is_empty() {
        return Ok(from);
    }
    let mut fold = Fold { store: &out, stream, changes: BTreeMap::new() };
    let mut descriptors = Vec::new();
    let mut deleting: BTreeSet<String> = BTreeSet::new();
    for (i, e) in events.iter().enumerate() {
        for (index, d) in (0u32..).zip(step(&mut fold, &mut deleting, &events[i + 1..], e)?) {
            descriptors.push((descriptor_key(stream, e.position, index), Some(d.encode())));
        }
    }
    let mut entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = fold.changes.into_iter().collect();
    entries.extend(descriptors);
    entries.push((key(stream, b'c', &[]), Some(at.to_be_bytes().to_vec())));
    out.write(entries, false)?;
    Ok(at)
}

/// What one event means for the feed (`rest`: the events after it, to the end of its request).
fn step(
    fold: &mut Fold,
    deleting: &mut BTreeSet<String>,
    rest: &[Event],
    e: &Event,
) -> Result<Vec<Descriptor>, LogError> {
    let stream = fold.stream;
    if e.tenant != stream.id.tenant {
        return Ok(vec![]);
    }
    let in_scope = |g: &str| stream.groups.as_ref().is_some_and(|gs| gs.contains(g));
    let mut out = Vec::new();
    match (&e.body, e.resource_type) {
        (EventBody::GroupMemberAdded { member_id, member_type: MemberType::User }, ResourceKind::Group)
            if in_scope(&e.resource_id) =>
        {
            let was = fold.in_feed(member_id)?;
            fold.set(member_id, &e.resource_id, true);
            if !was && stream.carries(FEED_ADD) {
                out.push(Descriptor::FeedAdd(member_id.clone()));
            }
        }
        (EventBody::GroupMemberRemoved { member_id, member_type: MemberType::User }, ResourceKind::Group)
            if in_scope(&e.resource_id) =>
        {
            fold.set(member_id, &e.resource_id, false);
            if !fold.in_feed(member_id)? {
                let deleted_next = rest
                    .iter()
                    .take_while(|r| r.request_id == e.request_id)
                    .any(|r| matches!(r.body, EventBody::UserDeleted {}) && r.resource_id == *member_id);
                if deleted_next {
                    deleting.insert(member_id.clone());
                } else if stream.carries(FEED_REMOVE) {
                    out.push(Descriptor::FeedRemove(member_id.clone()));
                }
            }
        }
        (EventBody::GroupDeleted {}, ResourceKind::Group) if in_scope(&e.resource_id) => {
            for user in fold.under(b'g', &e.resource_id)? {
                fold.set(&user, &e.resource_id, false);
                if !fold.in_feed(&user)? && stream.carries(FEED_REMOVE) {
                    out.push(Descriptor::FeedRemove(user));
                }
            }
        }
        (_, ResourceKind::User) => {
            let member = deleting.contains(&e.resource_id) || fold.in_feed(&e.resource_id)?;
            if member && super::event_uri(e).is_some_and(|uri| stream.carries(&uri)) {
                out.push(Descriptor::Own);
            }
            if matches!(e.body, EventBody::UserDeleted {}) {
                deleting.remove(&e.resource_id);
                for g in fold.under(b'm', &e.resource_id)? {
                    fold.set(&e.resource_id, &g, false);
                }
            }
        }
        _ => {}
    }
    Ok(out)
}
