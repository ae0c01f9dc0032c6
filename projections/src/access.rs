//! The access read models: grants by subject and by scope, scopes (organizations, environments,
//! resource groups), hosts, and effective access with provenance.
//!
//! A group's grants are stored once, on the group: a member's effective access is read through
//! its memberships at query time, so adding or removing a member, or a role of a group, takes
//! effect for every member at once and costs O(1) writes.

use std::collections::{BTreeSet, VecDeque};

use chrono::{DateTime, Utc};
use scimlog_schemas::access::{parse_grant, Grant, ScopeKind};
use serde::{Deserialize, Serialize};

use crate::fold::load;
use crate::keys;
use crate::kv::KvRead;
use crate::query;

/// A grant as stored on its subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantRecord {
    pub urn: String,
    pub grant: Grant,
    /// The log position of the event that gave it.
    pub position: u64,
}

/// An organization, environment or resource group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeDoc {
    pub kind: ScopeKind,
    /// Also its id.
    pub slug: String,
    pub created: DateTime<Utc>,
    /// The token that caused its creation.
    pub created_by: String,
    pub position: u64,
}

/// A grant a user holds, directly or through a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Effective {
    pub urn: String,
    pub grant: Grant,
    /// `None`: held directly; else the group (and its displayName) it comes through.
    pub via_group: Option<(String, String)>,
    pub position: u64,
}

/// Whether a role or entitlement value is a URN (and so must be a grant of ours); other values
/// are plain attribute values.
pub fn is_urn(value: &str) -> bool {
    value.len() > 4 && value.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:"))
}

/// Parses a stored URN, whatever its namespace (the namespace is its second segment).
pub fn parse_any(attr: &str, urn: &str) -> Option<Grant> {
    let ns = urn.split(':').nth(1)?;
    parse_grant(ns, attr, urn).ok()
}

/// The index form of a scope: `environment:prod`, `environment:*`.
pub fn scope_key(kind: ScopeKind, scope: &str) -> String {
    format!("{}:{}", kind.as_str(), scope.to_ascii_lowercase())
}

/// The scope key a grant is indexed under.
pub fn grant_scope_key(g: &Grant) -> String {
    match g {
        Grant::Role { scope_kind, scope, .. } => scope_key(*scope_kind, scope),
        Grant::Entitlement { scope_kind, name } => scope_key(*scope_kind, name),
    }
}

pub fn grants_of(kv: &impl KvRead, t: &str, subject: &str) -> Vec<GrantRecord> {
    kv.scan(&keys::grants_of(t, subject), None, usize::MAX)
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect()
}

pub fn scope(kv: &impl KvRead, t: &str, kind: ScopeKind, slug: &str) -> Option<ScopeDoc> {
    load(kv, &keys::scope(t, kind.as_str(), &slug.to_ascii_lowercase()))
}

pub fn scopes(kv: &impl KvRead, t: &str, kind: ScopeKind) -> Vec<ScopeDoc> {
    kv.scan(&keys::scopes(t, kind.as_str()), None, usize::MAX)
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect()
}

pub fn host_user(kv: &impl KvRead, t: &str, host: &str) -> Option<String> {
    kv.get(&keys::host(t, host)).and_then(|b| String::from_utf8(b).ok())
}

/// Every group `member` is in, directly or through nested groups (each once, cycles ignored).
pub fn groups_transitively(kv: &impl KvRead, t: &str, member: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<String> = query::groups_of(kv, t, member, usize::MAX).into();
    let mut out = Vec::new();
    while let Some(g) = queue.pop_front() {
        if seen.insert(g.clone()) {
            queue.extend(query::groups_of(kv, t, &g, usize::MAX));
            out.push(g);
        }
    }
    out
}

/// A user's effective access: direct grants, then those of every group it is in.
pub fn effective(kv: &impl KvRead, t: &str, user: &str) -> Vec<Effective> {
    let mut out: Vec<Effective> = grants_of(kv, t, user)
        .into_iter()
        .map(|g| Effective { urn: g.urn, grant: g.grant, via_group: None, position: g.position })
        .collect();
    for group in groups_transitively(kv, t, user) {
        let name = query::group(kv, t, &group).map(|g| g.display_name).unwrap_or_default();
        for g in grants_of(kv, t, &group) {
            out.push(Effective {
                urn: g.urn,
                grant: g.grant,
                via_group: Some((group.clone(), name.clone())),
                position: g.position,
            });
        }
    }
    out
}

/// Whether an effective grant gives `role` (a role name or a full URN; `None`: any role or
/// entitlement) in environment `env`. Organization-wide roles apply to every environment.
pub fn allows(e: &Effective, role: Option<&str>, env: &str) -> bool {
    match &e.grant {
        Grant::Role { scope_kind, scope, role: r } => {
            let role_ok = role.is_none_or(|want| want.eq_ignore_ascii_case(r) || want.eq_ignore_ascii_case(&e.urn));
            let scope_ok = match scope_kind {
                ScopeKind::Environment => scope == "*" || scope.eq_ignore_ascii_case(env),
                ScopeKind::Organization => true,
                ScopeKind::ResourceGroup => false,
            };
            role_ok && scope_ok
        }
        Grant::Entitlement { scope_kind: ScopeKind::Environment, name } => {
            role.is_none() && name.eq_ignore_ascii_case(env)
        }
        Grant::Entitlement { .. } => false,
    }
}

/// Users who have some access to a scope, each with the first grant that gives it: direct
/// holders, and members (transitively) of groups that hold a grant on it. `*` grants count.
pub fn scope_members(kv: &impl KvRead, t: &str, kind: ScopeKind, slug: &str) -> Vec<(String, Effective)> {
    let mut out: Vec<(String, Effective)> = Vec::new();
    let mut seen = BTreeSet::new();
    for key in [scope_key(kind, slug), scope_key(kind, "*")] {
        for (k, _) in kv.scan(&keys::grants_in_scope(t, &key), None, usize::MAX) {
            // ... 0 subject 0 urn: the last two parts.
            let parts: Vec<&[u8]> = k.split(|b| *b == keys::SEP).collect();
            let (Some(subject), Some(urn)) = (parts.get(parts.len() - 2), parts.last()) else { continue };
            let (subject, urn) =
                (String::from_utf8_lossy(subject).into_owned(), String::from_utf8_lossy(urn).into_owned());
            let Some(record) = load::<GrantRecord>(kv, &keys::grant(t, &subject, &urn)) else { continue };
            if query::user(kv, t, &subject).is_some() {
                if seen.insert(subject.clone()) {
                    out.push((
                        subject,
                        Effective { urn, grant: record.grant, via_group: None, position: record.position },
                    ));
                }
                continue;
            }
            let name = query::group(kv, t, &subject).map(|g| g.display_name).unwrap_or_default();
            for user in users_in_group(kv, t, &subject) {
                if seen.insert(user.clone()) {
                    let via = Some((subject.clone(), name.clone()));
                    out.push((
                        user,
                        Effective {
                            urn: urn.clone(),
                            grant: record.grant.clone(),
                            via_group: via,
                            position: record.position,
                        },
                    ));
                }
            }
        }
    }
    out
}

/// The users in a group, through nested groups too.
pub fn users_in_group(kv: &impl KvRead, t: &str, group: &str) -> Vec<String> {
    let mut users = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([group.to_string()]);
    while let Some(g) = queue.pop_front() {
        if !seen.insert(g.clone()) {
            continue;
        }
        for m in query::members(kv, t, &g, None, usize::MAX) {
            match m.member_type {
                scimlog_schemas::MemberType::User => users.push(m.id),
                scimlog_schemas::MemberType::Group => queue.push_back(m.id),
            }
        }
    }
    users
}
