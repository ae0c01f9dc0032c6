//! Pure decisions: a request and the current read models in, events or a refusal out.
//!
//! Nothing here writes, reads a clock or draws a random number: new ids come in with the command,
//! times and positions are stamped by the writer. Each function is a given/when/then in the tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use scimlog_projections::query::UserBy;

use crate::auth::Role;
use scimlog_projections::{access, query, KvRead, UserDoc};
use scimlog_schemas::access::{parse_grant, Grant, ScopeKind};
use scimlog_schemas::event::{EventBody, MemberType, NewEvent, ResourceKind, ScimKind};
use scimlog_schemas::filter::FilterLimits;
use scimlog_schemas::patch::{self, OpKind, PatchOp};
use scimlog_schemas::registry::registry;
use scimlog_schemas::resource::{parse_group, parse_members, parse_user, GroupInput, MemberRef, UserInput};
use scimlog_schemas::urn;
use scimlog_schemas::SchemaError;
use serde_json::{json, Map, Value};

#[derive(Clone, Debug)]
pub enum Command {
    CreateUser {
        id: String,
        input: UserInput,
    },
    ReplaceUser {
        id: String,
        input: UserInput,
        if_match: Option<u64>,
    },
    DeleteUser {
        id: String,
        if_match: Option<u64>,
    },
    CreateGroup {
        id: String,
        input: GroupInput,
    },
    ReplaceGroup {
        id: String,
        input: GroupInput,
        if_match: Option<u64>,
    },
    DeleteGroup {
        id: String,
        if_match: Option<u64>,
    },
    /// Applied on the writer, against the current state: read-modify-write without a race.
    PatchUser {
        id: String,
        ops: Vec<PatchOp>,
        if_match: Option<u64>,
    },
    PatchGroup {
        id: String,
        ops: Vec<PatchOp>,
        if_match: Option<u64>,
    },
    /// Deletes the user if it still exists, then destroys its data key (`user.erased`).
    EraseUser {
        id: String,
        reason: String,
    },
    /// Links a host (device) to a user named by id, userName or externalId (`by`).
    LinkHost {
        host_id: String,
        user: String,
        by: UserBy,
    },
    UnlinkHost {
        host_id: String,
    },
    /// Brings the audit trail's tokens of the tenant to the token file's: (name, role) pairs.
    ReconcileTokens {
        tokens: Vec<(String, Role)>,
    },
    /// RFC 7644 §3.7: operations in order, later ones seeing earlier ones and their `bulkId`s;
    /// everything that succeeds commits in one batch; stops after `fail_on_errors` errors.
    Bulk {
        ops: Vec<BulkOp>,
        fail_on_errors: Option<usize>,
        limits: FilterLimits,
        max_patch_operations: usize,
    },
}

impl Command {
    /// Whether the HTTP answer to this command renders the user it names: the writer then
    /// hands that user's document back as the request left it, so the answer needs no read.
    pub fn answers_with_a_user(&self) -> bool {
        match self {
            Command::CreateUser { .. } | Command::ReplaceUser { .. } | Command::PatchUser { .. } => true,
            Command::DeleteUser { .. }
            | Command::CreateGroup { .. }
            | Command::ReplaceGroup { .. }
            | Command::DeleteGroup { .. }
            | Command::PatchGroup { .. }
            | Command::EraseUser { .. }
            | Command::LinkHost { .. }
            | Command::UnlinkHost { .. }
            | Command::ReconcileTokens { .. }
            | Command::Bulk { .. } => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkMethod {
    Post,
    Put,
    Patch,
    Delete,
}

impl BulkMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            BulkMethod::Post => "POST",
            BulkMethod::Put => "PUT",
            BulkMethod::Patch => "PATCH",
            BulkMethod::Delete => "DELETE",
        }
    }
}

#[derive(Clone, Debug)]
pub struct BulkOp {
    pub method: BulkMethod,
    pub bulk_id: Option<String>,
    pub path: String,
    pub data: Value,
    /// `If-Match` of the operation (its `version`).
    pub version: Option<u64>,
    /// The id a POST creates.
    pub new_id: String,
}

/// What became of one bulk operation.
#[derive(Clone, Debug, PartialEq)]
pub struct BulkResult {
    pub method: BulkMethod,
    pub bulk_id: Option<String>,
    /// The resource, when the operation named or created one.
    pub resource: Option<(ResourceKind, String)>,
    /// The resource's version after the operation (absent after a DELETE).
    pub version: Option<u64>,
    pub outcome: Result<u16, Refusal>,
}

/// Why a command was refused. Nothing of it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound {
        kind: ResourceKind,
        id: String,
    },
    /// 409 `uniqueness`; the detail names the value.
    Uniqueness(String),
    /// 412: `If-Match` named another version.
    VersionMismatch {
        current: u64,
        expected: u64,
    },
    /// The request is invalid against the current state (a PATCH whose result is not a valid
    /// resource, or whose path names nothing).
    Invalid(SchemaError),
    /// 409: a bulk operation refers to another of its request that failed (RFC 7644 §3.7.1).
    Unresolved(String),
}

impl From<SchemaError> for Refusal {
    fn from(e: SchemaError) -> Self {
        Refusal::Invalid(e)
    }
}

/// What a command did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub events: Vec<NewEvent>,
    /// The resource the response is about.
    pub resource_id: String,
    /// False when a POST reactivated an existing, inactive user (Okta) instead of creating one.
    pub created: bool,
    /// Member ids of a group write that name no resource: skipped, reported.
    pub skipped_members: Vec<String>,
    /// One entry per bulk operation processed.
    pub bulk: Vec<BulkResult>,
}

/// The membership changes of one group PATCH so far.
#[derive(Default)]
struct MemberChanges {
    /// Per member: `Some(type)` is a member after the PATCH, `None` is not.
    changes: BTreeMap<String, Option<MemberType>>,
    /// Everyone who is a member with the changes so far applied, once an operation needed it.
    current: Option<BTreeMap<String, MemberType>>,
    /// Members handed out by `current_members` so far (bounded by `--max-scan`).
    visited: usize,
}

impl MemberChanges {
    fn set(&mut self, id: String, after: Option<MemberType>) {
        if let Some(current) = &mut self.current {
            match after {
                Some(t) => current.insert(id.clone(), t),
                None => current.remove(&id),
            };
        }
        self.changes.insert(id, after);
    }
}

/// What a decision depends on besides the read models and the command.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    pub tenant: &'a str,
    /// The role/entitlement URN namespace (`urn:<ns>:...`).
    pub namespace: &'a str,
    /// The organization environments and resource groups are created in.
    pub default_organization: &'a str,
    pub limits: WriteLimits,
}

/// Bounds on the work one write may ask of the single writer, which every tenant shares
/// (`--max-members-per-request`, `--max-values-per-attribute`, `--max-scan`). Beyond them the
/// write is refused (400) before anything is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteLimits {
    /// Members named by one request (a group's POST or PUT, or all operations of one PATCH).
    pub members_per_request: usize,
    /// Elements of one multi-valued attribute (emails, roles, ...), in a request and in the
    /// resource it makes.
    pub values_per_attribute: usize,
    /// Members one PATCH may read to apply filters other than `value eq` and remove-or-replace
    /// of all members.
    pub member_visits: usize,
}

impl WriteLimits {
    pub const DEFAULT: WriteLimits =
        WriteLimits { members_per_request: 20_000, values_per_attribute: 1_000, member_visits: 200_000 };

    /// Each multi-valued attribute of a resource (also inside extensions) within the limit.
    fn check_values(&self, attributes: &Map<String, Value>) -> Result<(), Refusal> {
        for (name, value) in attributes {
            match value {
                Value::Array(items) if items.len() > self.values_per_attribute => {
                    return Err(Refusal::Invalid(SchemaError::invalid_value(format!(
                        "{name} has {} values, more than the limit of {} (--max-values-per-attribute)",
                        items.len(),
                        self.values_per_attribute
                    ))));
                }
                Value::Object(inner) if name.starts_with("urn:") => self.check_values(inner)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn check_members(&self, named: usize) -> Result<(), Refusal> {
        if named <= self.members_per_request {
            return Ok(());
        }
        Err(Refusal::Invalid(SchemaError::invalid_value(format!(
            "the request names {named} members, more than the limit of {} (--max-members-per-request); \
             send them in several requests",
            self.members_per_request
        ))))
    }

    /// The operations of a PATCH: members named in all of them together, and every other list.
    fn check_patch(&self, ops: &[PatchOp]) -> Result<(), Refusal> {
        let count = |v: &Value| match v {
            Value::Array(a) => a.len(),
            Value::Null => 0,
            _ => 1,
        };
        let mut members = 0usize;
        for op in ops {
            match (&op.path, &op.value) {
                (Some(path), value) if path.is_attr("members") => members = members.saturating_add(count(value)),
                (Some(_), Value::Array(items)) if items.len() > self.values_per_attribute => {
                    let path = op.path_text.as_deref().unwrap_or_default();
                    return Err(Refusal::Invalid(SchemaError::invalid_value(format!(
                        "the operation on {path:?} has {} values, more than the limit of {} \
                         (--max-values-per-attribute)",
                        items.len(),
                        self.values_per_attribute
                    ))));
                }
                (Some(_), _) => {}
                (None, Value::Object(map)) => {
                    let mut rest = map.clone();
                    if let Some(k) = map.keys().find(|k| k.eq_ignore_ascii_case("members")) {
                        members = members.saturating_add(rest.remove(k).as_ref().map(count).unwrap_or(0));
                    }
                    self.check_values(&rest)?;
                }
                (None, _) => {}
            }
        }
        self.check_members(members)
    }
}

pub fn decide(kv: &impl KvRead, ctx: &Ctx, command: Command) -> Result<Decision, Refusal> {
    match command {
        Command::Bulk { ops, fail_on_errors, limits, max_patch_operations } => {
            Ok(bulk::decide_bulk(kv, ctx, ops, fail_on_errors, limits, max_patch_operations))
        }
        single => decide_single(kv, ctx, single),
    }
}

/// Any command but `Bulk` (whose operations are each decided here).
fn decide_single(kv: &impl KvRead, ctx: &Ctx, command: Command) -> Result<Decision, Refusal> {
    let mut d = Decider {
        kv,
        t: ctx.tenant,
        ns: ctx.namespace,
        default_org: ctx.default_organization,
        limits: ctx.limits,
        versions: HashMap::new(),
        events: Vec::new(),
        created_scopes: BTreeSet::new(),
    };
    let (resource_id, created, skipped_members) = match command {
        Command::CreateUser { id, input } => d.create_user(id, input)?,
        Command::ReplaceUser { id, input, if_match } => d.replace_user(id, input, if_match)?,
        Command::DeleteUser { id, if_match } => d.delete_user(id, if_match)?,
        Command::CreateGroup { id, input } => d.create_group(id, input)?,
        Command::ReplaceGroup { id, input, if_match } => d.replace_group(id, input, if_match)?,
        Command::DeleteGroup { id, if_match } => d.delete_group(id, if_match)?,
        Command::PatchUser { id, ops, if_match } => d.patch_user(id, &ops, if_match)?,
        Command::PatchGroup { id, ops, if_match } => d.patch_group(id, &ops, if_match)?,
        Command::EraseUser { id, reason } => d.erase_user(id, reason)?,
        Command::LinkHost { host_id, user, by } => d.link_host(host_id, &user, by)?,
        Command::UnlinkHost { host_id } => d.unlink_host(host_id)?,
        Command::ReconcileTokens { tokens } => d.reconcile_tokens(tokens)?,
        Command::Bulk { .. } => {
            return Err(Refusal::Invalid(SchemaError::invalid_value(
                "a bulk operation cannot hold another bulk request",
            )))
        }
    };
    Ok(Decision { events: d.events, resource_id, created, skipped_members, bulk: vec![] })
}

type Outcome = Result<(String, bool, Vec<String>), Refusal>;

/// Grants keyed by canonical URN: the parsed grant, the element as stored, and its attribute.
type Grants = BTreeMap<String, (Grant, Value, &'static str)>;

struct Decider<'a, K: KvRead> {
    kv: &'a K,
    t: &'a str,
    ns: &'a str,
    default_org: &'a str,
    limits: WriteLimits,
    /// Scopes this decision creates, so that two grants naming one create it once.
    created_scopes: BTreeSet<(ScopeKind, String)>,
    /// Versions of resources touched so far by this decision.
    versions: HashMap<(ResourceKind, String), u64>,
    events: Vec<NewEvent>,
}

fn check_version(if_match: Option<u64>, current: u64) -> Result<(), Refusal> {
    match if_match {
        Some(expected) if expected != current => Err(Refusal::VersionMismatch { current, expected }),
        _ => Ok(()),
    }
}

/// The top-level attributes that differ: (changed with their new values, removed names).
fn diff(old: &Map<String, Value>, new: &Map<String, Value>) -> (Map<String, Value>, Vec<String>) {
    let changed: Map<String, Value> =
        new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let removed: Vec<String> = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
    (changed, removed)
}

impl<K: KvRead> Decider<'_, K> {
    fn emit(&mut self, kind: ResourceKind, id: &str, current: u64, body: EventBody) {
        let v = self.versions.entry((kind, id.to_string())).or_insert(current);
        *v += 1;
        self.events.push(NewEvent { resource_type: kind, resource_id: id.to_string(), resource_version: *v, body });
    }

    fn user(&self, id: &str) -> Result<UserDoc, Refusal> {
        query::user(self.kv, self.t, id).ok_or_else(|| Refusal::NotFound { kind: ResourceKind::User, id: id.into() })
    }

    /// Refuses when `input`'s userName or externalId belongs to a user other than `own_id`.
    fn check_user_unique(&self, input: &UserInput, own_id: Option<&str>) -> Result<(), Refusal> {
        if let Some(other) = query::user_id_by_user_name(self.kv, self.t, input.user_name()) {
            if Some(other.as_str()) != own_id {
                return Err(Refusal::Uniqueness(format!("userName {:?} is already taken", input.user_name())));
            }
        }
        if let Some(x) = input.external_id() {
            if let Some(other) = query::user_id_by_external_id(self.kv, self.t, x) {
                if Some(other.as_str()) != own_id {
                    return Err(Refusal::Uniqueness(format!("externalId {x:?} is already taken by another user")));
                }
            }
        }
        Ok(())
    }

    fn create_user(&mut self, id: String, input: UserInput) -> Outcome {
        self.limits.check_values(&input.attributes)?;
        // Okta re-provisions a deactivated person with a POST: an inactive user with the same
        // userName (or externalId) is reactivated and updated instead of refused.
        let existing = match query::user_id_by_user_name(self.kv, self.t, input.user_name()) {
            Some(id) => Some((id, format!("userName {:?} is already taken", input.user_name()))),
            None => input.external_id().and_then(|x| {
                let id = query::user_id_by_external_id(self.kv, self.t, x)?;
                Some((id, format!("externalId {x:?} is already taken by another user")))
            }),
        };
        if let Some((existing, taken)) = existing {
            if self.user(&existing)?.is_active() {
                return Err(Refusal::Uniqueness(taken));
            }
            let mut input = input;
            input.active = Some(true);
            self.replace_user(existing.clone(), input, None)?;
            return Ok((existing, false, vec![]));
        }
        // Both indexes were just read and name nobody: the userName and externalId are free
        // (`check_user_unique` would read them again).
        let mut attributes = input.attributes;
        let grants = self.take_grants(&mut attributes, ScimKind::User, true)?;
        self.emit(ResourceKind::User, &id, 0, EventBody::UserCreated { attributes, active: input.active });
        self.grant_events(ResourceKind::User, &id, 0, BTreeMap::new(), grants);
        Ok((id, true, vec![]))
    }

    fn replace_user(&mut self, id: String, input: UserInput, if_match: Option<u64>) -> Outcome {
        self.limits.check_values(&input.attributes)?;
        let doc = self.user(&id)?;
        check_version(if_match, doc.version)?;
        self.check_user_unique(&input, Some(&id))?;
        let mut new_attributes = input.attributes.clone();
        let new_grants = self.take_grants(&mut new_attributes, ScimKind::User, true)?;
        let mut old_attributes = doc.attributes.clone();
        let old_grants = self.take_grants(&mut old_attributes, ScimKind::User, false)?;
        let (mut changed, mut removed) = diff(&old_attributes, &new_attributes);
        let (was, will) = (doc.is_active(), input.active.unwrap_or(true));
        // Assigning or unassigning `active` without changing the state is an attribute change;
        // a change of state is its own event (which leaves `active` assigned).
        if was == will && doc.active != input.active {
            match input.active {
                Some(a) => {
                    changed.insert("active".into(), Value::Bool(a));
                }
                None => removed.push("active".into()),
            }
        }
        if !changed.is_empty() || !removed.is_empty() {
            self.emit(ResourceKind::User, &id, doc.version, EventBody::UserUpdated { changed, removed });
        }
        match (was, will) {
            (true, false) => self.emit(ResourceKind::User, &id, doc.version, EventBody::UserDeactivated {}),
            (false, true) => self.emit(ResourceKind::User, &id, doc.version, EventBody::UserReactivated {}),
            _ => {}
        }
        // Unassigning the `active` of a deactivated user reactivates it and leaves it unassigned.
        if was != will && input.active.is_none() {
            let body = EventBody::UserUpdated { changed: Map::new(), removed: vec!["active".into()] };
            self.emit(ResourceKind::User, &id, doc.version, body);
        }
        self.grant_events(ResourceKind::User, &id, doc.version, old_grants, new_grants);
        Ok((id, false, vec![]))
    }

    fn delete_user(&mut self, id: String, if_match: Option<u64>) -> Outcome {
        let doc = self.user(&id)?;
        check_version(if_match, doc.version)?;
        self.leave_all_groups(&id, MemberType::User);
        self.emit(ResourceKind::User, &id, doc.version, EventBody::UserDeleted {});
        Ok((id, false, vec![]))
    }

    fn erase_user(&mut self, id: String, reason: String) -> Outcome {
        let version = match query::user(self.kv, self.t, &id) {
            Some(doc) => {
                self.leave_all_groups(&id, MemberType::User);
                self.emit(ResourceKind::User, &id, doc.version, EventBody::UserDeleted {});
                doc.version
            }
            None => match query::user_tombstone(self.kv, self.t, &id) {
                Some(t) if !t.erased => t.version,
                _ => return Err(Refusal::NotFound { kind: ResourceKind::User, id }),
            },
        };
        self.emit(ResourceKind::User, &id, version, EventBody::UserErased { reason });
        Ok((id, false, vec![]))
    }

    /// Takes the roles and entitlements out of a subject's attributes (a group's live in the
    /// access extension), keyed by canonical URN. `strict`: URNs are parsed in the configured
    /// namespace and a malformed one refuses the request; else (stored values) unparsable ones
    /// are dropped.
    fn take_grants(
        &self,
        attributes: &mut Map<String, Value>,
        kind: ScimKind,
        strict: bool,
    ) -> Result<Grants, Refusal> {
        let mut out = Grants::new();
        let container = match kind {
            ScimKind::Group => attributes.get_mut(urn::GROUP_ACCESS).and_then(Value::as_object_mut),
            ScimKind::User => Some(&mut *attributes),
        };
        if let Some(c) = container {
            for attr in ["roles", "entitlements"] {
                let Some(Value::Array(items)) = c.remove(attr) else { continue };
                // Values that are not URNs (plain role names some IdPs send for their own use)
                // are kept as ordinary attribute values; every URN must be ours and well formed.
                let mut plain = Vec::new();
                for mut el in items {
                    let Some(text) = el.get("value").and_then(Value::as_str).map(String::from) else {
                        if strict {
                            return Err(
                                SchemaError::invalid_value(format!("an element of {attr} has no 'value'")).into()
                            );
                        }
                        continue;
                    };
                    if !access::is_urn(&text) {
                        plain.push(el);
                        continue;
                    }
                    let (grant, urn) = if strict {
                        let g = parse_grant(self.ns, attr, &text)?;
                        let urn = g.urn(self.ns);
                        (g, urn)
                    } else {
                        match access::parse_any(attr, &text) {
                            Some(g) => (g, text.clone()),
                            None => continue,
                        }
                    };
                    el["value"] = Value::String(urn.clone());
                    out.insert(urn, (grant, el, attr));
                }
                if !plain.is_empty() {
                    c.insert(attr.to_string(), Value::Array(plain));
                }
            }
        }
        if kind == ScimKind::Group
            && attributes.get(urn::GROUP_ACCESS).and_then(Value::as_object).is_some_and(|o| o.is_empty())
        {
            attributes.remove(urn::GROUP_ACCESS);
        }
        Ok(out)
    }

    /// Events for the difference between a subject's grants before and after; a scope a new grant
    /// names is created first if it does not exist.
    fn grant_events(&mut self, kind: ResourceKind, id: &str, version: u64, old: Grants, new: Grants) {
        for (urn, (grant, el, attr)) in &new {
            if old.get(urn).map(|o| &o.1) == Some(el) {
                continue;
            }
            self.ensure_scope(grant);
            let body = if *attr == "roles" {
                EventBody::RoleAssigned { role: urn.clone(), value: el.clone() }
            } else {
                EventBody::EntitlementGranted { entitlement: urn.clone(), value: el.clone() }
            };
            self.emit(kind, id, version, body);
        }
        for (urn, (_, _, attr)) in &old {
            if !new.contains_key(urn) {
                let body = if *attr == "roles" {
                    EventBody::RoleRevoked { role: urn.clone() }
                } else {
                    EventBody::EntitlementRevoked { entitlement: urn.clone() }
                };
                self.emit(kind, id, version, body);
            }
        }
    }

    /// Creates the scope a grant names (matched by id or slug, without case) if it is new;
    /// environments and resource groups are created in the default organization (created with
    /// them), and record it: an organization role then applies to them only if it names it.
    fn ensure_scope(&mut self, grant: &Grant) {
        let Some((kind, name)) = grant.named_scope() else { return };
        let organization = match kind {
            ScopeKind::Organization => None,
            ScopeKind::Environment | ScopeKind::ResourceGroup => {
                let org = self.default_org.to_ascii_lowercase();
                self.create_scope(ScopeKind::Organization, org.clone(), None);
                Some(org)
            }
        };
        self.create_scope(kind, name.to_ascii_lowercase(), organization);
    }

    fn create_scope(&mut self, kind: ScopeKind, slug: String, organization: Option<String>) {
        if access::scope(self.kv, self.t, kind, &slug).is_some() || !self.created_scopes.insert((kind, slug.clone())) {
            return;
        }
        let (resource, body) = match kind {
            ScopeKind::Organization => {
                (ResourceKind::Organization, EventBody::OrganizationCreated { slug: slug.clone() })
            }
            ScopeKind::Environment => {
                (ResourceKind::Environment, EventBody::EnvironmentCreated { slug: slug.clone(), organization })
            }
            ScopeKind::ResourceGroup => {
                (ResourceKind::ResourceGroup, EventBody::ResourceGroupCreated { slug: slug.clone(), organization })
            }
        };
        self.emit(resource, &slug, 0, body);
    }

    /// The version a host's or token's next event gets: the events of its history so far.
    fn version_from_history(&self, kind: ResourceKind, id: &str) -> u64 {
        query::history_positions(self.kv, self.t, kind, id).len() as u64
    }

    fn link_host(&mut self, host_id: String, user: &str, by: UserBy) -> Outcome {
        let user_id = query::find_user(self.kv, self.t, user, by)
            .map_err(|ambiguous| Refusal::Uniqueness(ambiguous.to_string()))?
            .ok_or_else(|| Refusal::NotFound { kind: ResourceKind::User, id: user.to_string() })?;
        let version = self.version_from_history(ResourceKind::Host, &host_id);
        match access::host_user(self.kv, self.t, &host_id) {
            Some(current) if current == user_id => {}
            Some(current) => {
                self.emit(ResourceKind::Host, &host_id, version, EventBody::HostUserUnlinked { user_id: current });
                self.emit(ResourceKind::Host, &host_id, version, EventBody::HostUserLinked { user_id });
            }
            None => self.emit(ResourceKind::Host, &host_id, version, EventBody::HostUserLinked { user_id }),
        }
        Ok((host_id, false, vec![]))
    }

    fn reconcile_tokens(&mut self, wanted: Vec<(String, Role)>) -> Outcome {
        // The audit trail's roles are the event's text; a role this build does not know (written
        // by a newer one) differs from every wanted role, so it is revoked and created again.
        let known: BTreeMap<String, Option<Role>> = query::known_tokens(self.kv)
            .into_iter()
            .filter(|(t, _, _)| t == self.t)
            .map(|(_, name, role)| (name, Role::parse(&role)))
            .collect();
        let wanted: BTreeMap<String, Role> = wanted.into_iter().collect();
        for (name, role) in &known {
            if role.is_none() || wanted.get(name) != role.as_ref() {
                let version = self.version_from_history(ResourceKind::Token, name);
                self.emit(ResourceKind::Token, name, version, EventBody::TokenRevoked {});
            }
        }
        for (name, role) in &wanted {
            if known.get(name) != Some(&Some(*role)) {
                let version = self.version_from_history(ResourceKind::Token, name);
                let role = role.as_str().to_string();
                self.emit(ResourceKind::Token, name, version, EventBody::TokenCreated { role });
            }
        }
        Ok((String::new(), false, vec![]))
    }

    fn unlink_host(&mut self, host_id: String) -> Outcome {
        let user_id = access::host_user(self.kv, self.t, &host_id)
            .ok_or_else(|| Refusal::NotFound { kind: ResourceKind::Host, id: host_id.clone() })?;
        let version = self.version_from_history(ResourceKind::Host, &host_id);
        self.emit(ResourceKind::Host, &host_id, version, EventBody::HostUserUnlinked { user_id });
        Ok((host_id, false, vec![]))
    }

    /// `group.member_removed` for every group `member` is in, so that subscribers see each
    /// membership end before the resource goes.
    fn leave_all_groups(&mut self, member: &str, member_type: MemberType) {
        for g in query::groups_of(self.kv, self.t, member_type, member, usize::MAX) {
            if let Some(group) = query::group(self.kv, self.t, &g) {
                self.emit(
                    ResourceKind::Group,
                    &g,
                    group.version,
                    EventBody::GroupMemberRemoved { member_id: member.into(), member_type },
                );
            }
        }
    }

    fn check_group_unique(&self, input: &GroupInput, own_id: Option<&str>) -> Result<(), Refusal> {
        if let Some(other) = query::group_id_by_name(self.kv, self.t, &input.display_name) {
            if Some(other.as_str()) != own_id {
                return Err(Refusal::Uniqueness(format!(
                    "group displayName {:?} is already taken",
                    input.display_name
                )));
            }
        }
        if let Some(x) = input.attributes.get("externalId").and_then(Value::as_str) {
            if let Some(other) = query::group_id_by_external_id(self.kv, self.t, x) {
                if Some(other.as_str()) != own_id {
                    return Err(Refusal::Uniqueness(format!("externalId {x:?} is already taken by another group")));
                }
            }
        }
        Ok(())
    }

    /// Resolves member references to existing resources; unknown ones are returned as skipped.
    fn resolve_members(&self, group_id: &str, refs: &[MemberRef]) -> (Vec<(String, MemberType)>, Vec<String>) {
        let mut found = Vec::new();
        let mut skipped = Vec::new();
        for m in refs {
            let is_user = || query::user(self.kv, self.t, &m.value).is_some();
            let is_group = || m.value != group_id && query::group(self.kv, self.t, &m.value).is_some();
            let resolved = match m.member_type {
                Some(MemberType::User) => is_user().then_some(MemberType::User),
                Some(MemberType::Group) => is_group().then_some(MemberType::Group),
                None if is_user() => Some(MemberType::User),
                None => is_group().then_some(MemberType::Group),
            };
            match resolved {
                Some(t) => found.push((m.value.clone(), t)),
                None => skipped.push(m.value.clone()),
            }
        }
        (found, skipped)
    }

    fn create_group(&mut self, id: String, input: GroupInput) -> Outcome {
        self.check_group_input(&input)?;
        self.check_group_unique(&input, None)?;
        let (members, skipped) = self.resolve_members(&id, input.members.as_deref().unwrap_or_default());
        let mut attributes = input.attributes;
        let grants = self.take_grants(&mut attributes, ScimKind::Group, true)?;
        self.emit(
            ResourceKind::Group,
            &id,
            0,
            EventBody::GroupCreated { display_name: input.display_name, attributes },
        );
        self.grant_events(ResourceKind::Group, &id, 0, BTreeMap::new(), grants);
        for (member_id, member_type) in members {
            self.emit(ResourceKind::Group, &id, 0, EventBody::GroupMemberAdded { member_id, member_type });
        }
        Ok((id, true, skipped))
    }

    fn group(&self, id: &str) -> Result<scimlog_projections::GroupDoc, Refusal> {
        query::group(self.kv, self.t, id).ok_or_else(|| Refusal::NotFound { kind: ResourceKind::Group, id: id.into() })
    }

    /// `group.renamed` / `group.updated` for what differs between the stored group and `input`.
    fn group_attribute_events(
        &mut self,
        doc: &scimlog_projections::GroupDoc,
        input: &GroupInput,
    ) -> Result<(), Refusal> {
        self.check_group_unique(input, Some(&doc.id))?;
        if input.display_name != doc.display_name {
            self.emit(
                ResourceKind::Group,
                &doc.id,
                doc.version,
                EventBody::GroupRenamed {
                    display_name: input.display_name.clone(),
                    previous_display_name: doc.display_name.clone(),
                },
            );
        }
        let mut new_attributes = input.attributes.clone();
        let new_grants = self.take_grants(&mut new_attributes, ScimKind::Group, true)?;
        let mut old_attributes = doc.attributes.clone();
        let old_grants = self.take_grants(&mut old_attributes, ScimKind::Group, false)?;
        let (changed, removed) = diff(&old_attributes, &new_attributes);
        if !changed.is_empty() || !removed.is_empty() {
            self.emit(ResourceKind::Group, &doc.id, doc.version, EventBody::GroupUpdated { changed, removed });
        }
        self.grant_events(ResourceKind::Group, &doc.id, doc.version, old_grants, new_grants);
        Ok(())
    }

    /// Member events for the wanted end state of the memberships in `changes` (member id ->
    /// `Some(type)` present, `None` absent); unchanged ones emit nothing.
    fn membership_events(
        &mut self,
        doc: &scimlog_projections::GroupDoc,
        changes: BTreeMap<String, Option<MemberType>>,
    ) {
        for (member_id, after) in changes {
            let was = query::member(self.kv, self.t, &doc.id, &member_id).map(|m| m.member_type);
            match (was, after) {
                (None, Some(member_type)) => self.emit(
                    ResourceKind::Group,
                    &doc.id,
                    doc.version,
                    EventBody::GroupMemberAdded { member_id, member_type },
                ),
                (Some(member_type), None) => self.emit(
                    ResourceKind::Group,
                    &doc.id,
                    doc.version,
                    EventBody::GroupMemberRemoved { member_id, member_type },
                ),
                _ => {}
            }
        }
    }

    fn check_group_input(&self, input: &GroupInput) -> Result<(), Refusal> {
        self.limits.check_members(input.members.as_ref().map_or(0, Vec::len))?;
        self.limits.check_values(&input.attributes)
    }

    fn replace_group(&mut self, id: String, input: GroupInput, if_match: Option<u64>) -> Outcome {
        self.check_group_input(&input)?;
        let doc = self.group(&id)?;
        check_version(if_match, doc.version)?;
        self.group_attribute_events(&doc, &input)?;
        // PUT replaces the whole resource (RFC 7644 §3.5.1): absent members means no members.
        let (wanted, skipped) = self.resolve_members(&id, input.members.as_deref().unwrap_or_default());
        let mut changes: BTreeMap<String, Option<MemberType>> =
            query::members(self.kv, self.t, &id, None, usize::MAX).into_iter().map(|m| (m.id, None)).collect();
        for (member_id, member_type) in wanted {
            changes.insert(member_id, Some(member_type));
        }
        self.membership_events(&doc, changes);
        Ok((id, false, skipped))
    }

    fn patch_user(&mut self, id: String, ops: &[PatchOp], if_match: Option<u64>) -> Outcome {
        self.limits.check_patch(ops)?;
        let doc = self.user(&id)?;
        check_version(if_match, doc.version)?;
        let mut map = doc.attributes.clone();
        if let Some(active) = doc.active {
            map.insert("active".into(), Value::Bool(active));
        }
        for op in ops {
            patch::apply(&registry().user, &mut map, op)?;
        }
        // The patched resource is validated as a whole, exactly like a PUT body.
        let input = parse_user(&Value::Object(map))?;
        self.replace_user(id, input, None)
    }

    fn patch_group(&mut self, id: String, ops: &[PatchOp], if_match: Option<u64>) -> Outcome {
        self.limits.check_patch(ops)?;
        let doc = self.group(&id)?;
        check_version(if_match, doc.version)?;
        let mut map = doc.attributes.clone();
        map.insert("displayName".into(), Value::String(doc.display_name.clone()));
        let mut changes = MemberChanges::default();
        let mut skipped = Vec::new();
        for op in ops {
            // Members never pass through the document: each operation becomes per-member changes,
            // so a PATCH costs O(members named), whatever the group's size.
            match &op.path {
                Some(path) if path.is_attr("members") => self.member_op(&id, op, &mut changes, &mut skipped)?,
                None => {
                    let mut rest = op.value.as_object().cloned().unwrap_or_default();
                    let members_key = rest.keys().find(|k| k.eq_ignore_ascii_case("members")).cloned();
                    if let Some(k) = members_key {
                        let value = rest.remove(&k).unwrap_or(Value::Null);
                        let as_op = PatchOp {
                            op: op.op,
                            path_text: Some("members".into()),
                            path: Some(patch::PatchPath::parse("members", Default::default())?),
                            value,
                        };
                        self.member_op(&id, &as_op, &mut changes, &mut skipped)?;
                    }
                    let rest_op = PatchOp { value: Value::Object(rest), ..op.clone() };
                    patch::apply(&registry().group, &mut map, &rest_op)?;
                }
                Some(_) => patch::apply(&registry().group, &mut map, op)?,
            }
        }
        let input = parse_group(&Value::Object(map))?;
        self.limits.check_values(&input.attributes)?;
        self.group_attribute_events(&doc, &input)?;
        self.membership_events(&doc, changes.changes);
        Ok((id, false, skipped))
    }

    /// Everyone who is a member once `changes` are applied: the group's members are read once
    /// per PATCH (the first time an operation needs them), then kept up to date. Each call
    /// counts the members it hands out against `--max-scan`.
    fn current_members(
        &self,
        group_id: &str,
        changes: &mut MemberChanges,
    ) -> Result<Vec<(String, MemberType)>, Refusal> {
        if changes.current.is_none() {
            let mut all: BTreeMap<String, MemberType> = query::members(self.kv, self.t, group_id, None, usize::MAX)
                .into_iter()
                .map(|m| (m.id, m.member_type))
                .collect();
            for (id, after) in &changes.changes {
                match after {
                    Some(t) => all.insert(id.clone(), *t),
                    None => all.remove(id),
                };
            }
            changes.current = Some(all);
        }
        let current = changes.current.as_ref().expect("loaded above");
        changes.visited = changes.visited.saturating_add(current.len());
        if changes.visited > self.limits.member_visits {
            return Err(Refusal::Invalid(SchemaError::new(
                scimlog_schemas::ScimType::TooMany,
                format!(
                    "this PATCH would read {} members of the group, more than the limit of {} (--max-scan); \
                     remove members by value (members[value eq \"...\"]) or in several requests",
                    changes.visited, self.limits.member_visits
                ),
            )));
        }
        Ok(current.iter().map(|(id, t)| (id.clone(), *t)).collect())
    }

    /// The membership a PATCH operation on `members` asks for, recorded in `changes`.
    fn member_op(
        &mut self,
        group_id: &str,
        op: &PatchOp,
        changes: &mut MemberChanges,
        skipped: &mut Vec<String>,
    ) -> Result<(), Refusal> {
        let path = op.path.as_ref().expect("member ops have a path");
        let invalid = |why: &str| {
            Refusal::Invalid(SchemaError::new(
                scimlog_schemas::ScimType::InvalidPath,
                format!("{:?}: {why}", op.path_text.as_deref().unwrap_or("members")),
            ))
        };
        if path.attr.sub.is_some() || path.sub_after.is_some() {
            return Err(invalid("members are added and removed whole; sub-attributes cannot be patched"));
        }
        match (op.op, &path.filter) {
            (OpKind::Remove, Some(filter)) => match filter.value_eq_list() {
                Some(ids) => ids.into_iter().for_each(|m| changes.set(m, None)),
                None => {
                    let attr = registry().group.attr("members").expect("Group has members");
                    for (m, t) in self.current_members(group_id, changes)? {
                        if filter.matches_element(attr, &json!({"value": m, "type": t.kind().as_str()})) {
                            changes.set(m, None);
                        }
                    }
                }
            },
            (_, Some(_)) => return Err(invalid("a member filter can only be used to remove members")),
            (OpKind::Remove, None) if op.value.is_null() || op.value.as_array().is_some_and(|a| a.is_empty()) => {
                for (m, _) in self.current_members(group_id, changes)? {
                    changes.set(m, None);
                }
            }
            (OpKind::Remove, None) => {
                for m in parse_members(&op.value)? {
                    changes.set(m.value, None);
                }
            }
            (OpKind::Add | OpKind::Replace, None) => {
                if op.op == OpKind::Replace {
                    for (m, _) in self.current_members(group_id, changes)? {
                        changes.set(m, None);
                    }
                }
                let refs = parse_members(&op.value)?;
                let (found, unknown) = self.resolve_members(group_id, &refs);
                skipped.extend(unknown);
                for (m, t) in found {
                    changes.set(m, Some(t));
                }
            }
        }
        Ok(())
    }

    fn delete_group(&mut self, id: String, if_match: Option<u64>) -> Outcome {
        let doc = query::group(self.kv, self.t, &id)
            .ok_or_else(|| Refusal::NotFound { kind: ResourceKind::Group, id: id.clone() })?;
        check_version(if_match, doc.version)?;
        // Its memberships in other groups end with events; its own members go with group.deleted.
        self.leave_all_groups(&id, MemberType::Group);
        self.emit(ResourceKind::Group, &id, doc.version, EventBody::GroupDeleted {});
        Ok((id, false, vec![]))
    }
}

mod bulk;
#[cfg(test)]
mod tests;
