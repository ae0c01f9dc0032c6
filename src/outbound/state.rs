//! A target's own state, in the store's `outbound` family under `<target>\0`:
//!
//! | key                        | value                                                     |
//! |----------------------------|-----------------------------------------------------------|
//! | `w`                        | the watermark: every position ≤ it is applied or parked   |
//! | `r`                        | [`VerifyRecord`]: the last verify's counts, when, at what watermark |
//! | `s`                        | the fingerprint of the scope, profile and mapping the state was built in |
//! | `l\0U\0<id>`, `l\0G\0<id>` | [`Link`]: the remote id and the document last sent (null: unknown) |
//! | `i\0U\0<id>`, `i\0G\0<id>` | [`Intent`]: a create is under way (written before a POST) |
//! | `p\0U\0<id>`, `p\0G\0<id>`, `p\0M\0<group>\0<member>` | [`Parked`]: why it waits       |
//! | `m\0<group>\0<member>`     | the membership as last sent (`U` or `G`), or `?U`/`?G`: a PATCH for it went out and its outcome is unknown ([`Sent::Unsure`]); a PATCH's adds and removes follow it with `\0` and the member's remote id |
//!
//! One applied object (link, intent, parked entry, memberships) is one [`Batch`], written at
//! once. Only what is written before a request and the watermark are fsync'd
//! ([`State::commit_durable`]): an intent before a POST (a link lost in a crash leaves its
//! intent, so the object is looked up again, never created twice); a link's document made
//! unknown before an update and a membership's `?` before its PATCH (a request cut off may have
//! been done there, so the object is next sent whole and the membership as it is here, never
//! judged by the last answer); and the watermark, whose fsync makes every earlier write durable
//! with it (one WAL).
//! Nothing here holds a token; a link holds the last sent document (personal values, like the
//! read models), deleted and purged when the person is erased.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::log::{LogError, OutboundStore};

/// What an object here is: a User or a Group (the directory's own `ScimKind`).
pub use scimlog_schemas::ScimKind as Kind;

/// A kind as the state's keys spell it.
fn tag(kind: Kind) -> &'static str {
    match kind {
        Kind::User => "U",
        Kind::Group => "G",
    }
}

fn parse_tag(tag: &str) -> Option<Kind> {
    match tag {
        "U" => Some(Kind::User),
        "G" => Some(Kind::Group),
        _ => None,
    }
}

/// The kind of a group member.
pub fn member_kind(t: scimlog_schemas::MemberType) -> Kind {
    match t {
        scimlog_schemas::MemberType::User => Kind::User,
        scimlog_schemas::MemberType::Group => Kind::Group,
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub remote_id: String,
    /// The document as last sent (what the remote holds, as far as we know); null when that is
    /// unknown (adopted, a resync or repair, an update whose answer never came).
    pub sent: Value,
    /// The log position the sent document was rendered at.
    pub position: u64,
    /// Found remotely by userName/displayName, not created here (`adopt = "by-identity"`).
    #[serde(default)]
    pub adopted: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    pub position: u64,
    pub at: DateTime<Utc>,
}

/// Every class a parked entry may have (the metrics show each, zero included).
pub const PARKED_CLASSES: [&str; 6] = ["rejected", "conflict", "transient", "blocked", "held", "repair"];

/// Why an object waits. Classes: `rejected` (a 4xx for this object), `conflict` (exists
/// remotely, not ours to adopt), `transient` (retries used up), `blocked` (a membership whose
/// member or group is parked or not yet linked), `held` (by the deletion breaker), `repair`
/// (found missing or drifted by a verify, sent again at the next step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Parked {
    pub class: String,
    /// The first position that could not be applied.
    pub position: u64,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scim_type: Option<String>,
    /// The target's detail, as it said it (bounded), or ours.
    pub detail: String,
    pub next_attempt: DateTime<Utc>,
}

/// What the last verify found (counts per class; the ids are in its answer only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRecord {
    pub at: DateTime<Utc>,
    /// The watermark when it ran: what the target was compared with.
    pub position: u64,
    pub checked: usize,
    /// missing, drifted, membershipDrift, orphaned, unmanaged (absent: none).
    pub counts: std::collections::BTreeMap<String, usize>,
}

/// Whether a membership is at the target, as far as this state knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Never sent, or its removal was.
    No,
    /// Its add was the last answered PATCH.
    Yes,
    /// A PATCH for it went out and no answer came back (cut off, lost, timed out): the target
    /// may hold it or not, so it is sent again as it is here.
    Unsure,
}

impl Sent {
    /// Whether the target holds what `want` says, as far as is known.
    pub fn matches(self, want: bool) -> bool {
        match self {
            Sent::No => !want,
            Sent::Yes => want,
            Sent::Unsure => false,
        }
    }
}

/// What a parked key names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParkedKey {
    Object(Kind, String),
    Membership { group: String, member: String },
}

/// Writes of one step, applied together by [`State::commit`].
#[derive(Default)]
pub struct Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>);

#[derive(Clone)]
pub struct State {
    store: OutboundStore,
    prefix: Vec<u8>,
}

fn json<T: Serialize>(v: &T) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(v).expect("state values serialise"))
}

impl State {
    pub fn new(store: OutboundStore, target: &str) -> State {
        let mut prefix = target.as_bytes().to_vec();
        prefix.push(0);
        State { store, prefix }
    }

    fn key(&self, parts: &[&str]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                k.push(0);
            }
            k.extend_from_slice(p.as_bytes());
        }
        k
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>, LogError> {
        match self.store.get(key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| LogError::Corrupt { position: 0, detail: format!("outbound state: {e}") }),
        }
    }

    pub fn watermark(&self) -> Result<u64, LogError> {
        Ok(self.store.get(&self.key(&["w"]))?.and_then(|v| v.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0))
    }
    /// The fingerprint of the target's scope, profile and mapping the state was built in
    /// (`None` before the first step).
    pub fn fingerprint(&self) -> Result<Option<String>, LogError> {
        Ok(self.store.get(&self.key(&["s"]))?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
    pub fn last_verify(&self) -> Result<Option<VerifyRecord>, LogError> {
        self.get(&self.key(&["r"]))
    }
    pub fn link(&self, kind: Kind, id: &str) -> Result<Option<Link>, LogError> {
        self.get(&self.key(&["l", tag(kind), id]))
    }
    pub fn intent(&self, kind: Kind, id: &str) -> Result<Option<Intent>, LogError> {
        self.get(&self.key(&["i", tag(kind), id]))
    }
    pub fn parked(&self, key: &ParkedKey) -> Result<Option<Parked>, LogError> {
        self.get(&self.parked_key(key))
    }
    pub fn member_sent(&self, group: &str, member: &str) -> Result<Sent, LogError> {
        Ok(self.member(group, member)?.0)
    }
    /// A membership as sent, and the remote id a PATCH sent it with (none: not sent, sent in a
    /// group's PUT, or before the id was kept): its removal can go out after the member's
    /// link is gone.
    pub fn member(&self, group: &str, member: &str) -> Result<(Sent, Option<String>), LogError> {
        let Some(v) = self.store.get(&self.key(&["m", group, member]))? else { return Ok((Sent::No, None)) };
        let sent = if v.first() == Some(&b'?') { Sent::Unsure } else { Sent::Yes };
        let remote_id = v.iter().position(|&c| c == 0).map(|at| String::from_utf8_lossy(&v[at + 1..]).into_owned());
        Ok((sent, remote_id))
    }

    fn parked_key(&self, key: &ParkedKey) -> Vec<u8> {
        match key {
            ParkedKey::Object(kind, id) => self.key(&["p", tag(*kind), id]),
            ParkedKey::Membership { group, member } => self.key(&["p", "M", group, member]),
        }
    }

    /// Up to `limit` parked entries, in key order.
    pub fn all_parked(&self, limit: usize) -> Result<Vec<(ParkedKey, Parked)>, LogError> {
        let prefix = self.key(&["p", ""]);
        let mut out = Vec::new();
        for (k, v) in self.store.scan(&prefix, None, limit)? {
            let rest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let parts: Vec<&str> = rest.split('\0').collect();
            let key = match parts.as_slice() {
                ["M", g, m] => ParkedKey::Membership { group: g.to_string(), member: m.to_string() },
                [tag, id] => match parse_tag(tag) {
                    Some(kind) => ParkedKey::Object(kind, id.to_string()),
                    None => continue,
                },
                _ => continue,
            };
            let parked = serde_json::from_slice(&v)
                .map_err(|e| LogError::Corrupt { position: 0, detail: format!("outbound parked entry: {e}") })?;
            out.push((key, parked));
        }
        Ok(out)
    }

    /// Up to `limit` links of a kind, with the scimlog id each belongs to.
    pub fn links(&self, kind: Kind, limit: usize) -> Result<Vec<(String, Link)>, LogError> {
        let prefix = self.key(&["l", tag(kind), ""]);
        let mut out = Vec::new();
        for (k, v) in self.store.scan(&prefix, None, limit)? {
            let link = serde_json::from_slice(&v)
                .map_err(|e| LogError::Corrupt { position: 0, detail: format!("outbound link: {e}") })?;
            out.push((String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), link));
        }
        Ok(out)
    }

    /// How many links of a kind there are (bounded by `limit`).
    pub fn count_links(&self, kind: Kind, limit: usize) -> Result<usize, LogError> {
        Ok(self.store.scan(&self.key(&["l", tag(kind), ""]), None, limit)?.len())
    }

    /// The members last sent for a group (and those whose PATCH's outcome is unknown: they may
    /// be there), after `after`, up to `limit`.
    pub fn members_sent(&self, group: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, LogError> {
        let prefix = self.key(&["m", group, ""]);
        let after = after.map(|a| self.key(&["m", group, a]));
        Ok(self
            .store
            .scan(&prefix, after.as_deref(), limit)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect())
    }

    /// Makes every link's last sent document unknown, so each object is next sent whole (a
    /// resync); answers how many links there are. Pages of 1000, one batch each.
    pub fn forget_sent(&self) -> Result<usize, LogError> {
        const PAGE: usize = 1000;
        let mut n = 0;
        for kind in [Kind::User, Kind::Group] {
            let prefix = self.key(&["l", tag(kind), ""]);
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = self.store.scan(&prefix, after.as_deref(), PAGE)?;
                let mut b = Batch::default();
                for (k, v) in &page {
                    let mut link: Link = serde_json::from_slice(v)
                        .map_err(|e| LogError::Corrupt { position: 0, detail: format!("outbound link: {e}") })?;
                    link.sent = Value::Null;
                    b.0.push((k.clone(), json(&link)));
                }
                n += page.len();
                self.commit(b)?;
                if page.len() < PAGE {
                    break;
                }
                after = page.last().map(|(k, _)| k.clone());
            }
        }
        Ok(n)
    }

    /// Every key of this state, copied under `to`'s (a plan's scratch copy), in pages. Stops,
    /// answering false, beyond `limit` keys.
    pub fn copy_to(&self, to: &State, limit: usize) -> Result<bool, LogError> {
        const PAGE: usize = 1000;
        let (mut after, mut n): (Option<Vec<u8>>, usize) = (None, 0);
        loop {
            let page = self.store.scan(&self.prefix, after.as_deref(), PAGE)?;
            n += page.len();
            if n > limit {
                return Ok(false);
            }
            let mut b = Batch::default();
            for (k, v) in &page {
                let mut key = to.prefix.clone();
                key.extend_from_slice(&k[self.prefix.len()..]);
                b.0.push((key, Some(v.clone())));
            }
            self.commit(b)?;
            if page.len() < PAGE {
                return Ok(true);
            }
            after = page.last().map(|(k, _)| k.clone());
        }
    }

    /// Deletes every key of this state (a plan's scratch copy), in pages.
    pub fn clear(&self) -> Result<(), LogError> {
        const PAGE: usize = 1000;
        loop {
            let page = self.store.scan(&self.prefix, None, PAGE)?;
            let mut b = Batch::default();
            b.0.extend(page.iter().map(|(k, _)| (k.clone(), None)));
            self.commit(b)?;
            if page.len() < PAGE {
                return Ok(());
            }
        }
    }

    /// Writes a batch, not waiting for the disk (see the module's doc for why that is safe).
    pub fn commit(&self, batch: Batch) -> Result<(), LogError> {
        if batch.0.is_empty() {
            return Ok(());
        }
        self.store.write(batch.0, false)
    }

    /// Writes a batch and waits until it (and everything written before) is on disk: an intent
    /// before its POST, the watermark.
    pub fn commit_durable(&self, batch: Batch) -> Result<(), LogError> {
        self.store.write(batch.0, true)
    }

    /// Flushes and compacts this target's keys of an erased person: the link (its last sent
    /// document) and a parked entry (a target's error detail may quote a value).
    pub fn purge_user(&self, id: &str) -> Result<(), LogError> {
        self.store.purge(&self.key(&["l", tag(Kind::User), id]))?;
        self.store.purge(&self.key(&["p", tag(Kind::User), id]))
    }

    // Batch builders.
    pub fn set_watermark(&self, b: &mut Batch, position: u64) {
        b.0.push((self.key(&["w"]), Some(position.to_be_bytes().to_vec())));
    }
    pub fn set_last_verify(&self, b: &mut Batch, record: &VerifyRecord) {
        b.0.push((self.key(&["r"]), json(record)));
    }
    pub fn set_fingerprint(&self, b: &mut Batch, fingerprint: &str) {
        b.0.push((self.key(&["s"]), Some(fingerprint.as_bytes().to_vec())));
    }
    pub fn put_link(&self, b: &mut Batch, kind: Kind, id: &str, link: &Link) {
        b.0.push((self.key(&["l", tag(kind), id]), json(link)));
    }
    pub fn delete_link(&self, b: &mut Batch, kind: Kind, id: &str) {
        b.0.push((self.key(&["l", tag(kind), id]), None));
    }
    pub fn put_intent(&self, b: &mut Batch, kind: Kind, id: &str, intent: &Intent) {
        b.0.push((self.key(&["i", tag(kind), id]), json(intent)));
    }
    pub fn delete_intent(&self, b: &mut Batch, kind: Kind, id: &str) {
        b.0.push((self.key(&["i", tag(kind), id]), None));
    }
    pub fn park(&self, b: &mut Batch, key: &ParkedKey, parked: &Parked) {
        b.0.push((self.parked_key(key), json(parked)));
    }
    pub fn unpark(&self, b: &mut Batch, key: &ParkedKey) {
        b.0.push((self.parked_key(key), None));
    }
    pub fn set_member_sent(&self, b: &mut Batch, group: &str, member: &str, kind: Option<Kind>) {
        b.0.push((self.key(&["m", group, member]), kind.map(|k| tag(k).as_bytes().to_vec())));
    }
    /// A member added by PATCH, with the remote id it was added as (for its removal after the
    /// member itself is gone: [`State::member`]).
    pub fn set_member_added(&self, b: &mut Batch, group: &str, member: &str, kind: Kind, remote_id: &str) {
        b.0.push((self.key(&["m", group, member]), Some(format!("{}\0{remote_id}", tag(kind)).into_bytes())));
    }
    /// Written (durably) before a membership PATCH goes out; the answer replaces it.
    pub fn set_member_unsure(&self, b: &mut Batch, group: &str, member: &str, kind: Kind, remote_id: &str) {
        b.0.push((self.key(&["m", group, member]), Some(format!("?{}\0{remote_id}", tag(kind)).into_bytes())));
    }
}
