//! The access read models: grants by subject and by scope, scopes (organizations, environments,
//! resource groups), hosts, and effective access with provenance.
//!
//! A group's grants are stored once, on the group: a member's effective access is read through
//! its memberships at query time, so adding or removing a member, or a role of a group, takes
//! effect for every member at once and costs O(1) writes.

use std::collections::{BTreeSet, VecDeque};

use chrono::{DateTime, Utc};
use scimlog_schemas::access::{parse_grant, Grant, ScopeKind};
use scimlog_schemas::MemberType;
use serde::{Deserialize, Serialize};

use crate::fold::load;
use crate::keys;
use crate::kv::KvRead;
use crate::model::UserHead;
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

/// A role or entitlement the directory knows: held directly by at least one user or group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnownGrant {
    /// The URN as first given.
    pub urn: String,
    pub users: u64,
    pub groups: u64,
}

/// The roles (`attr` = "roles") or entitlements the directory knows, in URN order; at most
/// `limit`.
pub fn known_grants(kv: &impl KvRead, t: &str, attr: &str, limit: usize) -> Vec<KnownGrant> {
    kv.scan(&keys::known_grants(t, attr), None, limit)
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect()
}

/// One known role or entitlement by its URN (without case).
pub fn known_grant(kv: &impl KvRead, t: &str, attr: &str, urn: &str) -> Option<KnownGrant> {
    kv.get(&keys::known_grant(t, attr, urn)).and_then(|v| serde_json::from_slice(&v).ok())
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
    /// The organization an environment or resource group belongs to; `None` for an organization,
    /// and for a scope created before organizations were recorded (it belongs to the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

impl ScopeDoc {
    /// This environment as the place an access question is asked about.
    pub fn as_environment<'a>(&'a self, default_organization: &'a str) -> Environment<'a> {
        Environment { slug: &self.slug, organization: self.organization.as_deref().unwrap_or(default_organization) }
    }
}

/// An existing environment and the organization it belongs to: where "may X do Y" is asked.
#[derive(Clone, Copy, Debug)]
pub struct Environment<'a> {
    pub slug: &'a str,
    pub organization: &'a str,
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

/// Expanding memberships (nested groups) would read more than `limit` of them (`--max-scan`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expanding nested groups reads more than {limit} memberships (--max-scan)")]
pub struct TooLarge {
    pub limit: usize,
}

/// Counts memberships read against a limit.
struct Budget {
    left: usize,
    limit: usize,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        Budget { left: limit, limit }
    }
    fn spend(&mut self, n: usize) -> Result<(), TooLarge> {
        self.left = self.left.checked_sub(n).ok_or(TooLarge { limit: self.limit })?;
        Ok(())
    }
    /// At most what is left, plus one (to see it is exceeded).
    fn page(&self) -> usize {
        self.left.saturating_add(1)
    }
}

/// Every group `member` (a user, or a group: `kind`) is in, directly or through nested groups
/// (each once, cycles ignored), reading at most `limit` memberships.
pub fn groups_transitively(
    kv: &impl KvRead,
    t: &str,
    kind: MemberType,
    member: &str,
    limit: usize,
) -> Result<Vec<String>, TooLarge> {
    let mut budget = Budget::new(limit);
    let first = query::groups_of(kv, t, kind, member, budget.page());
    budget.spend(first.len())?;
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<String> = first.into();
    let mut out = Vec::new();
    while let Some(g) = queue.pop_front() {
        if seen.insert(g.clone()) {
            let up = query::groups_of(kv, t, MemberType::Group, &g, budget.page());
            budget.spend(up.len())?;
            queue.extend(up);
            out.push(g);
        }
    }
    Ok(out)
}

/// A user's effective access: direct grants, then those of every group it is in (at most
/// `budget` memberships read), each group's node read with its parents up to `node_limit`.
pub fn effective(
    kv: &impl KvRead,
    t: &str,
    user: &UserHead,
    budget: usize,
    node_limit: usize,
) -> Result<Vec<Effective>, TooLarge> {
    let mut node = |g: &str| std::sync::Arc::new(group_node(kv, t, g, node_limit));
    let mut out = Vec::new();
    walk_grants(kv, t, user, budget, &mut node, &mut |g, via| out.push(Effective::new(g, via)))?;
    Ok(out)
}

/// What an access answer needs of one group: its name, its own grants, and the groups it is a
/// member of. It changes only with an event of the group itself ([`changes_kept_nodes`]), never
/// when a user joins or leaves it, so it can be kept between answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupNode {
    /// Empty for a group that does not exist (any more).
    pub display_name: String,
    pub grants: Vec<GrantRecord>,
    /// At most `limit + 1` (one more than an answer may read: it is then refused as too large).
    pub parents: Vec<String>,
}

/// Reads a group's [`GroupNode`], its parents up to `limit + 1`.
pub fn group_node(kv: &impl KvRead, t: &str, group: &str, limit: usize) -> GroupNode {
    GroupNode {
        display_name: query::group(kv, t, group).map(|g| g.display_name).unwrap_or_default(),
        grants: grants_of(kv, t, group),
        parents: query::groups_of(kv, t, MemberType::Group, group, limit.saturating_add(1)),
    }
}

/// Whether an event changes what the access answers keep from one commit to the next: a
/// [`GroupNode`] (a group renamed or deleted, a group put in or taken out of a group, a group's
/// role or entitlement; a user joining or leaving a group does not), or the scopes that exist
/// (an organization, environment or resource group created, which is rare: the first grant
/// that names it).
pub fn changes_kept_nodes(e: &scimlog_schemas::Event) -> bool {
    use scimlog_schemas::{EventBody as B, MemberType, ResourceKind};
    match &e.body {
        B::GroupRenamed { .. } | B::GroupDeleted {} => true,
        B::GroupMemberAdded { member_type, .. } | B::GroupMemberRemoved { member_type, .. } => {
            *member_type == MemberType::Group
        }
        B::RoleAssigned { .. }
        | B::RoleRevoked { .. }
        | B::EntitlementGranted { .. }
        | B::EntitlementRevoked { .. } => e.resource_type == ResourceKind::Group,
        B::OrganizationCreated { .. } | B::EnvironmentCreated { .. } | B::ResourceGroupCreated { .. } => true,
        B::UserCreated { .. }
        | B::UserUpdated { .. }
        | B::UserDeactivated {}
        | B::UserReactivated {}
        | B::UserDeleted {}
        | B::UserErased { .. }
        | B::GroupCreated { .. }
        | B::GroupUpdated { .. }
        | B::HostUserLinked { .. }
        | B::HostUserUnlinked { .. }
        | B::TokenCreated { .. }
        | B::TokenRevoked {} => false,
    }
}

/// Where a grant [`walk_grants`] meets comes from, borrowed from the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via<'a> {
    Direct,
    Group { id: &'a str, display_name: &'a str },
}

impl Effective {
    /// The grant `g` met through `via`, as an answer keeps it.
    pub fn new(g: &GrantRecord, via: Via<'_>) -> Effective {
        let via_group = match via {
            Via::Direct => None,
            Via::Group { id, display_name } => Some((id.to_string(), display_name.to_string())),
        };
        Effective { urn: g.urn.clone(), grant: g.grant.clone(), via_group, position: g.position }
    }

    /// Where it comes from, as the walk met it.
    pub fn via(&self) -> Via<'_> {
        match &self.via_group {
            None => Via::Direct,
            Some((id, display_name)) => Via::Group { id, display_name },
        }
    }
}

/// A user's grants in the order [`effective`] lists them, each handed to `visit` where it lies
/// (an access check keeps the one that allows, `/access` renders each, and neither copies the
/// rest): the user's own (when its document may hold some), then those of each group it is in
/// and each group above, once, breadth first, the groups' nodes from `node`. The walk is the
/// whole expansion whatever `visit` keeps, counting the memberships read against `limit` as
/// [`groups_transitively`] does: the same users are refused as too large whatever is asked.
pub fn walk_grants(
    kv: &impl KvRead,
    t: &str,
    user: &UserHead,
    limit: usize,
    node: &mut dyn FnMut(&str) -> std::sync::Arc<GroupNode>,
    visit: &mut dyn FnMut(&GrantRecord, Via<'_>),
) -> Result<(), TooLarge> {
    if user.may_hold_grants() {
        for g in &grants_of(kv, t, &user.id) {
            visit(g, Via::Direct);
        }
    }
    let mut budget = Budget::new(limit);
    let first = query::groups_of(kv, t, MemberType::User, &user.id, budget.page());
    budget.spend(first.len())?;
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<String> = first.into();
    while let Some(group) = queue.pop_front() {
        if seen.contains(&group) {
            continue;
        }
        let n = node(&group);
        budget.spend(n.parents.len())?;
        queue.extend(n.parents.iter().cloned());
        for g in &n.grants {
            visit(g, Via::Group { id: &group, display_name: &n.display_name });
        }
        seen.insert(group);
    }
    Ok(())
}

/// Whether a grant applies inside `env`: an environment role naming it or `*`; an organization
/// role naming the organization `env` belongs to, or `*`; an entitlement to it. Resource-group
/// grants never do. The access check and the environment's member list both decide with this.
pub fn applies_in(grant: &Grant, env: Environment<'_>) -> bool {
    match grant {
        Grant::Role { scope_kind: ScopeKind::Environment, scope, .. } => {
            scope == "*" || scope.eq_ignore_ascii_case(env.slug)
        }
        Grant::Role { scope_kind: ScopeKind::Organization, scope, .. } => {
            scope == "*" || scope.eq_ignore_ascii_case(env.organization)
        }
        Grant::Role { scope_kind: ScopeKind::ResourceGroup, .. } => false,
        Grant::Entitlement { scope_kind: ScopeKind::Environment, name } => name.eq_ignore_ascii_case(env.slug),
        Grant::Entitlement { scope_kind: ScopeKind::Organization | ScopeKind::ResourceGroup, .. } => false,
    }
}

/// Whether an effective grant gives `role` (a role name or a full URN; `None`: any role or
/// entitlement) in `env`.
pub fn allows(e: &Effective, role: Option<&str>, env: Environment<'_>) -> bool {
    record_allows(&e.urn, &e.grant, role, env)
}

/// [`allows`], of a grant as stored (`urn`, `grant`) before it is made an [`Effective`].
pub fn record_allows(urn: &str, grant: &Grant, role: Option<&str>, env: Environment<'_>) -> bool {
    let role_ok = match (grant, role) {
        (_, None) => true,
        (Grant::Role { role: r, .. }, Some(want)) => want.eq_ignore_ascii_case(r) || want.eq_ignore_ascii_case(urn),
        (Grant::Entitlement { .. }, Some(_)) => false,
    };
    role_ok && applies_in(grant, env)
}

/// Users who have some access to an environment, each with the first grant that gives it: direct
/// holders, and members (transitively) of groups that hold a grant that [`applies_in`] it.
pub fn environment_members(
    kv: &impl KvRead,
    t: &str,
    env: Environment<'_>,
    limit: usize,
) -> Result<Vec<(String, Effective)>, TooLarge> {
    let mut budget = Budget::new(limit);
    let mut out: Vec<(String, Effective)> = Vec::new();
    let mut seen = BTreeSet::new();
    let scopes = [
        scope_key(ScopeKind::Environment, env.slug),
        scope_key(ScopeKind::Environment, "*"),
        scope_key(ScopeKind::Organization, env.organization),
        scope_key(ScopeKind::Organization, "*"),
    ];
    for key in scopes {
        let granted = kv.scan(&keys::grants_in_scope(t, &key), None, budget.page());
        budget.spend(granted.len())?;
        for (k, _) in granted {
            // ... 0 subject 0 urn: the last two parts.
            let parts: Vec<&[u8]> = k.split(|b| *b == keys::SEP).collect();
            let (Some(subject), Some(urn)) = (parts.get(parts.len() - 2), parts.last()) else { continue };
            let (subject, urn) =
                (String::from_utf8_lossy(subject).into_owned(), String::from_utf8_lossy(urn).into_owned());
            let Some(record) = load::<GrantRecord>(kv, &keys::grant(t, &subject, &urn)) else { continue };
            if !applies_in(&record.grant, env) {
                continue;
            }
            let holders = if query::user(kv, t, &subject).is_some() {
                vec![(subject, None)]
            } else {
                let name = query::group(kv, t, &subject).map(|g| g.display_name).unwrap_or_default();
                let via = Some((subject.clone(), name));
                users_in_group(kv, t, &subject, &mut budget)?.into_iter().map(|u| (u, via.clone())).collect()
            };
            for (user, via_group) in holders {
                if seen.insert(user.clone()) {
                    let grant = record.grant.clone();
                    out.push((user, Effective { urn: urn.clone(), grant, via_group, position: record.position }));
                }
            }
        }
    }
    Ok(out)
}

/// The users in a group, through nested groups too (each group once), reading at most `limit`
/// memberships: whose access a grant of the group, or a change of its members, changes.
pub fn users_of_group(kv: &impl KvRead, t: &str, group: &str, limit: usize) -> Result<Vec<String>, TooLarge> {
    users_in_group(kv, t, group, &mut Budget::new(limit))
}

/// The users in a group, through nested groups too, counting the memberships read.
fn users_in_group(kv: &impl KvRead, t: &str, group: &str, budget: &mut Budget) -> Result<Vec<String>, TooLarge> {
    let mut users = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([group.to_string()]);
    while let Some(g) = queue.pop_front() {
        if !seen.insert(g.clone()) {
            continue;
        }
        let members = query::members(kv, t, &g, None, budget.page());
        budget.spend(members.len())?;
        for m in members {
            match m.member_type {
                scimlog_schemas::MemberType::User => users.push(m.id),
                scimlog_schemas::MemberType::Group => queue.push_back(m.id),
            }
        }
    }
    Ok(users)
}
