//! Key layouts. Parts are joined with a 0x00 byte, which no tenant name, id or folded name holds
//! (control characters are refused at the boundary), so prefixes never collide.
//!
//! | key | value |
//! | --- | --- |
//! | `u 0 tenant 0 id` | [`crate::UserDoc`] JSON |
//! | `g 0 tenant 0 id` | [`crate::GroupDoc`] JSON |
//! | `iu/un 0 tenant 0 blind(folded userName)` | user id (unique) |
//! | `iu/ex 0 tenant 0 blind(externalId)` | user id (unique, case-exact) |
//! | `iu/em 0 tenant 0 blind(folded email) 0 id` | empty (not unique) |
//! | `ig/dn 0 tenant 0 folded displayName` | group id (unique) |
//! | `ig/ex 0 tenant 0 externalId` | group id |
//! | `gm 0 tenant 0 group 0 member` | [`crate::Member`] JSON |
//! | `u 0 tenant 0 id 1` | [`crate::model::MemberOf`] of a user: its groups, or their count |
//! | `mg 0 tenant 0 member` | [`crate::model::MemberOf`] of a group in groups |
//! | `mg 0 tenant 0 member 0 group` | empty (only for a member in more groups than a list holds) |
//! | `iu/lm 0 tenant 0 lastModified 0 id`, `ig/lm ...` | empty (range index on meta.lastModified) |
//! | `h 0 tenant 0 kind 0 id 0 position` | empty (history: events that touched the resource) |
//! | `gs 0 tenant 0 subject 0 urn` | [`crate::access::GrantRecord`] (grants by subject) |
//! | `gc 0 tenant 0 kind:scope 0 subject 0 urn` | empty (grants by scope) |
//! | `sc 0 tenant 0 kind 0 slug` | [`crate::access::ScopeDoc`] |
//! | `hs 0 tenant 0 host`, `uh 0 tenant 0 user 0 host` | user id, empty (hosts) |
//! | `ud 0 tenant 0 id` | [`crate::model::Tombstone`] of a deleted user |
//! | `n/u 0 tenant`, `n/g 0 tenant` | resource count, u64 big-endian |
//!
//! `blind(v)` is [`crate::IndexBlinder::blind`]: personal values never appear in a key in clear.

use scimlog_schemas::MemberType;

use crate::IndexBlinder;

pub const SEP: u8 = 0;

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(SEP);
        }
        k.extend_from_slice(p);
    }
    k
}

/// The prefix of all keys under `parts`, ending with a separator.
pub fn prefix(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = join(parts);
    k.push(SEP);
    k
}

pub fn user(t: &str, id: &str) -> Vec<u8> {
    join(&[b"u", t.as_bytes(), id.as_bytes()])
}
pub fn users(t: &str) -> Vec<u8> {
    prefix(&[b"u", t.as_bytes()])
}
pub fn group(t: &str, id: &str) -> Vec<u8> {
    join(&[b"g", t.as_bytes(), id.as_bytes()])
}
pub fn groups(t: &str) -> Vec<u8> {
    prefix(&[b"g", t.as_bytes()])
}
pub fn user_name(b: &IndexBlinder, t: &str, folded: &str) -> Vec<u8> {
    join(&[b"iu/un", t.as_bytes(), b.blind(folded).as_bytes()])
}
pub fn user_external_id(b: &IndexBlinder, t: &str, external_id: &str) -> Vec<u8> {
    join(&[b"iu/ex", t.as_bytes(), b.blind(external_id).as_bytes()])
}
pub fn user_email(b: &IndexBlinder, t: &str, folded: &str, id: &str) -> Vec<u8> {
    join(&[b"iu/em", t.as_bytes(), b.blind(folded).as_bytes(), id.as_bytes()])
}
pub fn user_emails(b: &IndexBlinder, t: &str, folded: &str) -> Vec<u8> {
    prefix(&[b"iu/em", t.as_bytes(), b.blind(folded).as_bytes()])
}
pub fn group_name(t: &str, folded: &str) -> Vec<u8> {
    join(&[b"ig/dn", t.as_bytes(), folded.as_bytes()])
}
pub fn group_external_id(t: &str, external_id: &str) -> Vec<u8> {
    join(&[b"ig/ex", t.as_bytes(), external_id.as_bytes()])
}
pub fn member(t: &str, group: &str, member: &str) -> Vec<u8> {
    join(&[b"gm", t.as_bytes(), group.as_bytes(), member.as_bytes()])
}
pub fn members(t: &str, group: &str) -> Vec<u8> {
    prefix(&[b"gm", t.as_bytes(), group.as_bytes()])
}
/// The groups `member` (a user or a group) is directly in, in one value: a list of their ids
/// up to [`crate::model::MemberOf::LISTED_MAX`], a count beyond (then each is a [`membership`]
/// key). A user's groups are read by every GET and every access check, and one point read (for a
/// user in no group, a bloom filter's "no") costs a fraction of a scan's seek through the levels.
///
/// A user's list is keyed right after its document ([`user`] and the byte 1, which no id holds):
/// the two sort next to each other and so usually share a data block, and a GET or an access
/// check, which read both, read one block where they read two (at 1M users with 5M memberships,
/// the check's server CPU went from 56 and 53 to 42 and 45 µs in two pairs, README). Scans of
/// [`users`] skip these keys ([`is_user_groups`]).
pub fn member_of(t: &str, kind: MemberType, member: &str) -> Vec<u8> {
    match kind {
        MemberType::User => {
            let mut k = user(t, member);
            k.push(USER_GROUPS);
            k
        }
        MemberType::Group => join(&[b"mg", t.as_bytes(), member.as_bytes()]),
    }
}

/// The last byte of a user's [`member_of`] key: a control character, which ids never hold
/// (refused at the boundary), so no user's document key ends with it.
const USER_GROUPS: u8 = 1;

/// Whether a key met in a scan of [`users`] is a user's groups list rather than its document.
pub fn is_user_groups(key: &[u8]) -> bool {
    key.last() == Some(&USER_GROUPS)
}
/// One group of a member in more groups than its [`member_of`] list holds.
pub fn membership(t: &str, member: &str, group: &str) -> Vec<u8> {
    join(&[b"mg", t.as_bytes(), member.as_bytes(), group.as_bytes()])
}
/// The prefix of every [`membership`] key of `member` (never its [`member_of`] key, which has no
/// separator after the member).
pub fn memberships(t: &str, member: &str) -> Vec<u8> {
    prefix(&[b"mg", t.as_bytes(), member.as_bytes()])
}
/// The `meta.lastModified` index of a resource type: `<tag> 0 tenant 0 <RFC 3339, nanoseconds,
/// UTC: fixed width, so byte order is time order> 0 id`.
pub fn last_modified(tag: &str, t: &str, ts: &chrono::DateTime<chrono::Utc>, id: &str) -> Vec<u8> {
    join(&[tag.as_bytes(), t.as_bytes(), lm_text(ts).as_bytes(), id.as_bytes()])
}
pub fn last_modified_prefix(tag: &str, t: &str) -> Vec<u8> {
    prefix(&[tag.as_bytes(), t.as_bytes()])
}
pub fn lm_text(ts: &chrono::DateTime<chrono::Utc>) -> String {
    ts.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}
pub const USER_LM: &str = "iu/lm";
pub const GROUP_LM: &str = "ig/lm";

/// The history index: one key per event that touched a resource (the resource itself, and a
/// member's memberships), `h 0 tenant 0 kind 0 id 0 position (u64 big-endian)`. The kind
/// (`ResourceKind::as_str`) keeps a host, an environment, a token and a user that share a name
/// apart: each has its own history and version.
pub fn history(t: &str, kind: &str, id: &str, position: u64) -> Vec<u8> {
    join(&[b"h", t.as_bytes(), kind.as_bytes(), id.as_bytes(), &position.to_be_bytes()])
}
pub fn history_prefix(t: &str, kind: &str, id: &str) -> Vec<u8> {
    prefix(&[b"h", t.as_bytes(), kind.as_bytes(), id.as_bytes()])
}

/// The version of the read models' key layout (under [`LAYOUT`]). A server that finds another
/// version (or none, over a non-empty log) rebuilds every read model from the log at start.
/// 2: history keys carry the resource kind; userNames and displayNames folded with NFKC.
/// 3: userNames, externalIds and emails blinded in index keys.
/// 4: known grants with their direct holders (`gv`), for `/Roles` and `/Entitlements`.
/// 5: a member's groups listed in one value (`mg 0 tenant 0 member`), up to a bound.
/// 6: a user's groups listed right after its document (`u 0 tenant 0 id 1`).
pub const LAYOUT_VERSION: u32 = 6;
/// The key that holds [`LAYOUT_VERSION`] (u32 big-endian); no tag of a read model starts so.
pub const LAYOUT: &[u8] = b"_layout";

/// A grant held by a subject (user or group): `gs 0 tenant 0 subject 0 urn` -> grant record.
pub fn grant(t: &str, subject: &str, urn: &str) -> Vec<u8> {
    join(&[b"gs", t.as_bytes(), subject.as_bytes(), urn.as_bytes()])
}
pub fn grants_of(t: &str, subject: &str) -> Vec<u8> {
    prefix(&[b"gs", t.as_bytes(), subject.as_bytes()])
}
/// The same grant by its scope: `gc 0 tenant 0 kind:scope 0 subject 0 urn` -> empty.
pub fn grant_by_scope(t: &str, scope: &str, subject: &str, urn: &str) -> Vec<u8> {
    join(&[b"gc", t.as_bytes(), scope.as_bytes(), subject.as_bytes(), urn.as_bytes()])
}
pub fn grants_in_scope(t: &str, scope: &str) -> Vec<u8> {
    prefix(&[b"gc", t.as_bytes(), scope.as_bytes()])
}
/// A grant the directory knows, with how many subjects hold it directly:
/// `gv 0 tenant 0 roles|entitlements 0 urn (ASCII lower case)` -> [`crate::access::KnownGrant`].
pub fn known_grant(t: &str, attr: &str, urn: &str) -> Vec<u8> {
    join(&[b"gv", t.as_bytes(), attr.as_bytes(), urn.to_ascii_lowercase().as_bytes()])
}
pub fn known_grants(t: &str, attr: &str) -> Vec<u8> {
    prefix(&[b"gv", t.as_bytes(), attr.as_bytes()])
}
/// An organization, environment or resource group: `sc 0 tenant 0 kind 0 slug` -> scope doc.
pub fn scope(t: &str, kind: &str, slug: &str) -> Vec<u8> {
    join(&[b"sc", t.as_bytes(), kind.as_bytes(), slug.as_bytes()])
}
pub fn scopes(t: &str, kind: &str) -> Vec<u8> {
    prefix(&[b"sc", t.as_bytes(), kind.as_bytes()])
}
/// The user a host belongs to: `hs 0 tenant 0 host` -> user id; and back, `uh 0 tenant 0 user 0 host`.
pub fn host(t: &str, host: &str) -> Vec<u8> {
    join(&[b"hs", t.as_bytes(), host.as_bytes()])
}
pub fn user_host(t: &str, user: &str, host: &str) -> Vec<u8> {
    join(&[b"uh", t.as_bytes(), user.as_bytes(), host.as_bytes()])
}
pub fn user_hosts(t: &str, user: &str) -> Vec<u8> {
    prefix(&[b"uh", t.as_bytes(), user.as_bytes()])
}

/// A token known to the audit trail: `tk 0 tenant 0 name` -> its role.
pub fn token(t: &str, name: &str) -> Vec<u8> {
    join(&[b"tk", t.as_bytes(), name.as_bytes()])
}
pub fn tokens(t: &str) -> Vec<u8> {
    prefix(&[b"tk", t.as_bytes()])
}
/// Every tenant's tokens.
pub const ALL_TOKENS: &[u8] = b"tk\0";

/// What remains of a deleted user: its last version and whether it was erased.
pub fn user_tombstone(t: &str, id: &str) -> Vec<u8> {
    join(&[b"ud", t.as_bytes(), id.as_bytes()])
}
pub fn user_count(t: &str) -> Vec<u8> {
    join(&[b"n/u", t.as_bytes()])
}
pub fn group_count(t: &str) -> Vec<u8> {
    join(&[b"n/g", t.as_bytes()])
}

/// The last part of a key (after the final separator), as text.
pub fn last_part(key: &[u8]) -> String {
    let start = key.iter().rposition(|b| *b == SEP).map(|i| i + 1).unwrap_or(0);
    String::from_utf8_lossy(&key[start..]).into_owned()
}
