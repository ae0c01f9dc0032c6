//! Lookups over the read models, and the query planner: a filter becomes index lookups where an
//! indexed attribute is compared with `eq` (userName, externalId, emails.value, id, displayName,
//! members.value), and a bounded scan otherwise; the whole filter is then evaluated on each
//! candidate (the residual), so an index only ever narrows, never decides.

use scimlog_schemas::filter::{CompareOp, Filter};
use scimlog_schemas::name::fold as fold_case;
use scimlog_schemas::registry::registry;
use scimlog_schemas::{MemberType, ResourceKind, ScimKind};
use serde_json::{json, Map, Value};

use crate::fold::load;
use crate::keys;
use crate::kv::KvRead;
use crate::model::{GroupDoc, Member, MemberOf, UserDoc, UserHead};

pub fn user(kv: &impl KvRead, t: &str, id: &str) -> Option<UserDoc> {
    load(kv, &keys::user(t, id))
}
/// A user's stored document as it is stored, to be read as a [`crate::StoredUser`] (which
/// borrows from it) or a [`UserDoc`].
pub fn user_bytes(kv: &impl KvRead, t: &str, id: &str) -> Option<Vec<u8>> {
    kv.get(&keys::user(t, id))
}
/// A user's id, `active` and userName alone (an access answer's reads).
pub fn user_head(kv: &impl KvRead, t: &str, id: &str) -> Option<UserHead> {
    load(kv, &keys::user(t, id))
}
pub fn group(kv: &impl KvRead, t: &str, id: &str) -> Option<GroupDoc> {
    load(kv, &keys::group(t, id))
}
fn text(kv: &impl KvRead, key: &[u8]) -> Option<String> {
    kv.get(key).and_then(|b| String::from_utf8(b).ok())
}
pub fn user_id_by_user_name(kv: &impl KvRead, t: &str, user_name: &str) -> Option<String> {
    text(kv, &keys::user_name(&kv.blinder(), t, &fold_case(user_name)))
}
pub fn user_id_by_external_id(kv: &impl KvRead, t: &str, external_id: &str) -> Option<String> {
    text(kv, &keys::user_external_id(&kv.blinder(), t, external_id))
}
pub fn user_ids_by_email(kv: &impl KvRead, t: &str, email: &str, limit: usize) -> Vec<String> {
    kv.scan(&keys::user_emails(&kv.blinder(), t, &fold_case(email)), None, limit)
        .into_iter()
        .map(|(k, _)| keys::last_part(&k))
        .collect()
}
pub fn group_id_by_name(kv: &impl KvRead, t: &str, display_name: &str) -> Option<String> {
    text(kv, &keys::group_name(t, &fold_case(display_name)))
}
pub fn group_id_by_external_id(kv: &impl KvRead, t: &str, external_id: &str) -> Option<String> {
    text(kv, &keys::group_external_id(t, external_id))
}
/// How the access API and host links name a user (`by=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserBy {
    Id,
    UserName,
    ExternalId,
    /// Any of the three; two different users matching is an error, never a guess.
    Any,
}

impl UserBy {
    pub fn parse(s: &str) -> Option<UserBy> {
        match s {
            "id" => Some(UserBy::Id),
            "userName" => Some(UserBy::UserName),
            "externalId" => Some(UserBy::ExternalId),
            "any" => Some(UserBy::Any),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            UserBy::Id => "id",
            UserBy::UserName => "userName",
            UserBy::ExternalId => "externalId",
            UserBy::Any => "any",
        }
    }
}

/// `name` matches more than one user (one by id, another by userName or externalId).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmbiguousUser {
    pub name: String,
    /// (how it matched, the user id), each user once.
    pub matches: Vec<(UserBy, String)>,
}

impl std::fmt::Display for AmbiguousUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how: Vec<String> = self.matches.iter().map(|(by, id)| format!("{} of user {id}", by.as_str())).collect();
        write!(
            f,
            "{:?} names {} different users ({}); say which with by=id, by=userName or by=externalId",
            self.name,
            self.matches.len(),
            how.join(", ")
        )
    }
}

/// The id of the user `name` names, matched as `by` says. With [`UserBy::Any`]: by id, by
/// userName, by externalId, and an [`AmbiguousUser`] when they name different users.
pub fn find_user(kv: &impl KvRead, t: &str, name: &str, by: UserBy) -> Result<Option<String>, AmbiguousUser> {
    // Whether a user has this id: its document is read, never decoded.
    let by_id = || kv.get(&keys::user(t, name)).map(|_| name.to_string());
    match by {
        UserBy::Id => return Ok(by_id()),
        UserBy::UserName => return Ok(user_id_by_user_name(kv, t, name)),
        UserBy::ExternalId => return Ok(user_id_by_external_id(kv, t, name)),
        UserBy::Any => {}
    }
    let mut matches: Vec<(UserBy, String)> = Vec::with_capacity(3);
    let found = [
        (UserBy::Id, by_id()),
        (UserBy::UserName, user_id_by_user_name(kv, t, name)),
        (UserBy::ExternalId, user_id_by_external_id(kv, t, name)),
    ];
    for (how, id) in found {
        if let Some(id) = id {
            if !matches.iter().any(|(_, seen)| *seen == id) {
                matches.push((how, id));
            }
        }
    }
    match matches.len() {
        0 => Ok(None),
        1 => Ok(matches.pop().map(|(_, id)| id)),
        _ => Err(AmbiguousUser { name: name.to_string(), matches }),
    }
}

/// Members of a group in id order, `limit` at a time after `after`.
pub fn members(kv: &impl KvRead, t: &str, group: &str, after: Option<&str>, limit: usize) -> Vec<Member> {
    let after_key = after.map(|a| keys::member(t, group, a));
    kv.scan(&keys::members(t, group), after_key.as_deref(), limit)
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect()
}
/// Positions of the events that touched a resource (its own, and memberships of a member), oldest
/// first.
pub fn history_positions(kv: &impl KvRead, t: &str, kind: ResourceKind, id: &str) -> Vec<u64> {
    kv.scan(&keys::history_prefix(t, kind.as_str(), id), None, usize::MAX)
        .into_iter()
        .filter_map(|(k, _)| k.get(k.len() - 8..).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes))
        .collect()
}

/// The tokens the audit trail knows, for every tenant: (tenant, name, role).
pub fn known_tokens(kv: &impl KvRead) -> Vec<(String, String, String)> {
    kv.scan(keys::ALL_TOKENS, None, usize::MAX)
        .into_iter()
        .filter_map(|(k, v)| {
            let mut parts = k.split(|b| *b == keys::SEP).skip(1);
            let tenant = String::from_utf8(parts.next()?.to_vec()).ok()?;
            let name = String::from_utf8(parts.next()?.to_vec()).ok()?;
            Some((tenant, name, String::from_utf8(v).ok()?))
        })
        .collect()
}

pub fn user_tombstone(kv: &impl KvRead, t: &str, id: &str) -> Option<crate::model::Tombstone> {
    load(kv, &keys::user_tombstone(t, id))
}

/// One membership, if `member` is directly in `group`.
pub fn member(kv: &impl KvRead, t: &str, group: &str, member: &str) -> Option<Member> {
    load(kv, &keys::member(t, group, member))
}
/// Ids of the groups `member` is directly in, the first `limit` in byte order: one point read,
/// and a scan only for a member in more groups than a list holds.
pub fn groups_of(kv: &impl KvRead, t: &str, kind: MemberType, member: &str, limit: usize) -> Vec<String> {
    let Some(value) = kv.get(&keys::member_of(t, kind, member)) else { return Vec::new() };
    match MemberOf::decode(&value) {
        MemberOf::Listed(ids) => {
            ids.into_iter().take(limit).map(|id| String::from_utf8_lossy(id).into_owned()).collect()
        }
        MemberOf::Spilled(_) => {
            kv.scan_keys(&keys::memberships(t, member), None, limit).into_iter().map(|k| keys::last_part(&k)).collect()
        }
    }
}
fn count(kv: &impl KvRead, key: &[u8]) -> u64 {
    kv.get(key).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}
/// Ids of a resource type in id order, `limit` of them after `after`: one page of the whole
/// collection at O(page) cost, whatever its size.
pub fn ids_after(kv: &impl KvRead, t: &str, kind: ScimKind, after: Option<&str>, limit: usize) -> Vec<String> {
    let after_key = after.map(|a| match kind {
        ScimKind::User => keys::user(t, a),
        ScimKind::Group => keys::group(t, a),
    });
    document_keys(kv, &collection_prefix(t, kind), after_key, limit).into_iter().map(|k| keys::last_part(&k)).collect()
}

/// The keys of a collection's documents after `after`, at most `limit`: a user's groups list,
/// which sorts right after its document ([`keys::member_of`]), is passed over.
fn document_keys(kv: &impl KvRead, prefix: &[u8], mut after: Option<Vec<u8>>, limit: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < limit {
        let want = limit - out.len();
        let batch = kv.scan_keys(prefix, after.as_deref(), want);
        let ended = batch.len() < want;
        after = batch.last().cloned();
        out.extend(batch.into_iter().filter(|k| !keys::is_user_groups(k)));
        if ended {
            break;
        }
    }
    out
}

/// The id at 1-based `index` of a resource type in id order: a walk over keys alone, O(index),
/// refused beyond `max_scan`. For a client's first page at a far `startIndex`; sequential pages
/// resume after the last id.
pub fn id_at(
    kv: &impl KvRead,
    t: &str,
    kind: ScimKind,
    index: u64,
    max_scan: usize,
) -> Result<Option<String>, QueryError> {
    if index == 0 {
        return Ok(None);
    }
    if index > max_scan as u64 {
        return Err(QueryError::StartTooFar { start: index + 1, limit: max_scan });
    }
    let prefix = collection_prefix(t, kind);
    let (mut after, mut left) = (None::<Vec<u8>>, index);
    loop {
        let batch = document_keys(kv, &prefix, after.clone(), 4096);
        if batch.is_empty() {
            return Ok(None);
        }
        if (batch.len() as u64) >= left {
            return Ok(Some(keys::last_part(&batch[left as usize - 1])));
        }
        left -= batch.len() as u64;
        after = batch.last().cloned();
    }
}

/// How many resources of a type the tenant has.
pub fn count_of(kv: &impl KvRead, t: &str, kind: ScimKind) -> u64 {
    match kind {
        ScimKind::User => user_count(kv, t),
        ScimKind::Group => group_count(kv, t),
    }
}

/// The prefix of every document of a collection.
fn collection_prefix(t: &str, kind: ScimKind) -> Vec<u8> {
    match kind {
        ScimKind::User => keys::users(t),
        ScimKind::Group => keys::groups(t),
    }
}

/// A resource's filterable form (what filters and sorts read), if it exists.
fn filterable(kv: &impl KvRead, t: &str, kind: ScimKind, id: &str) -> Option<Value> {
    match kind {
        ScimKind::User => user(kv, t, id).map(|d| d.filterable()),
        ScimKind::Group => group(kv, t, id).map(|d| d.filterable()),
    }
}

/// The registry's schema of a SCIM resource type.
pub fn schema_of(kind: ScimKind) -> &'static scimlog_schemas::registry::ResourceSchema {
    match kind {
        ScimKind::User => &registry().user,
        ScimKind::Group => &registry().group,
    }
}

pub fn user_count(kv: &impl KvRead, t: &str) -> u64 {
    count(kv, &keys::user_count(t))
}
pub fn group_count(kv: &impl KvRead, t: &str) -> u64 {
    count(kv, &keys::group_count(t))
}

fn meta(
    kind: ResourceKind,
    created: &chrono::DateTime<chrono::Utc>,
    modified: &chrono::DateTime<chrono::Utc>,
    version: u64,
) -> Value {
    json!({
        "resourceType": kind.as_str(),
        "created": created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "lastModified": modified.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "version": format!("W/\"{version}\""),
    })
}

/// A resource's `schemas`: its core schema, then each extension it carries (the extension
/// objects are the attributes named by URN). Responses and filters (`schemas eq "<urn>"`) read it.
fn schemas_of(core: &str, attributes: &Map<String, Value>) -> Vec<Value> {
    let mut out = vec![Value::from(core)];
    out.extend(attributes.keys().filter(|k| k.starts_with("urn:")).map(|k| Value::from(k.as_str())));
    out
}

impl UserDoc {
    pub fn schemas(&self) -> Vec<Value> {
        schemas_of(scimlog_schemas::urn::USER, &self.attributes)
    }
    /// The resource as filters see it: attributes plus schemas, id, meta and `active` as in
    /// effect (an unassigned `active` filters as true).
    pub fn filterable(&self) -> Value {
        let mut m = Map::with_capacity(self.attributes.len() + 4);
        m.insert("schemas".into(), Value::Array(self.schemas()));
        m.insert("id".into(), Value::String(self.id.clone()));
        m.extend(self.attributes.clone());
        m.insert("active".into(), Value::Bool(self.is_active()));
        m.insert("meta".into(), meta(ResourceKind::User, &self.created, &self.last_modified, self.version));
        Value::Object(m)
    }
}

impl GroupDoc {
    pub fn schemas(&self) -> Vec<Value> {
        schemas_of(scimlog_schemas::urn::GROUP, &self.attributes)
    }
    pub fn filterable(&self) -> Value {
        let mut m = Map::with_capacity(self.attributes.len() + 4);
        m.insert("schemas".into(), Value::Array(self.schemas()));
        m.insert("id".into(), Value::String(self.id.clone()));
        m.insert("displayName".into(), Value::String(self.display_name.clone()));
        m.extend(self.attributes.clone());
        m.insert("meta".into(), meta(ResourceKind::Group, &self.created, &self.last_modified, self.version));
        Value::Object(m)
    }
}

/// How a filter will be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Candidate ids from indexes; the filter is still evaluated on each.
    Lookup(Vec<Lookup>),
    /// Every resource of the tenant is read and evaluated.
    Scan,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Id(String),
    UserName(String),
    ExternalId(String),
    Email(String),
    DisplayName(String),
    /// Groups that have this member.
    Member(String),
    /// A range of `meta.lastModified`: the comparison and the bound (index text form).
    LastModified(CompareOp, String),
}

/// Plans a filter for a resource kind. Conjunctions use whichever side is indexed; disjunctions
/// need both sides indexed.
pub fn plan(kind: ScimKind, filter: &Filter) -> Plan {
    match filter {
        Filter::Compare { path, op, value: Value::String(v) }
            if path.attr.as_str().eq_ignore_ascii_case("meta")
                && path.sub.as_ref().is_some_and(|s| s.as_str().eq_ignore_ascii_case("lastModified"))
                && matches!(op, CompareOp::Eq | CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le) =>
        {
            match chrono::DateTime::parse_from_rfc3339(v) {
                Ok(ts) => Plan::Lookup(vec![Lookup::LastModified(*op, keys::lm_text(&ts.with_timezone(&chrono::Utc)))]),
                Err(_) => Plan::Scan,
            }
        }
        Filter::Compare { path, op: CompareOp::Eq, value: Value::String(v) } => {
            let core = schema_of(kind).core_urn;
            if path.schema.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case(core)) {
                return Plan::Scan;
            }
            let attr = path.attr.as_str().to_ascii_lowercase();
            let sub = path.sub.as_ref().map(|s| s.as_str().to_ascii_lowercase());
            let lookup = match (kind, attr.as_str(), sub.as_deref()) {
                (_, "id", None) => Lookup::Id(v.clone()),
                (_, "externalid", None) => Lookup::ExternalId(v.clone()),
                (ScimKind::User, "username", None) => Lookup::UserName(v.clone()),
                (ScimKind::User, "emails", None | Some("value")) => Lookup::Email(v.clone()),
                (ScimKind::Group, "displayname", None) => Lookup::DisplayName(v.clone()),
                (ScimKind::Group, "members", None | Some("value")) => Lookup::Member(v.clone()),
                _ => return Plan::Scan,
            };
            Plan::Lookup(vec![lookup])
        }
        Filter::And(a, b) => both(plan(kind, a), plan(kind, b)),
        Filter::Or(a, b) => either(plan(kind, a), plan(kind, b)),
        // `emails[type eq "work" and value eq "x"]` (Entra's `emails[type eq "work"].value eq
        // "x"`): the element's `value` is what the index holds.
        Filter::ValuePath { path, filter } if path.schema.is_none() && path.sub.is_none() => {
            let attr = path.attr.as_str().to_ascii_lowercase();
            match (kind, attr.as_str()) {
                (ScimKind::User, "emails") => plan_element(filter, &Lookup::Email),
                (ScimKind::Group, "members") => plan_element(filter, &Lookup::Member),
                _ => Plan::Scan,
            }
        }
        Filter::Compare { .. } | Filter::Present(_) | Filter::Not(_) | Filter::ValuePath { .. } => Plan::Scan,
    }
}

/// A conjunction is answered by whichever side is indexed.
fn both(a: Plan, b: Plan) -> Plan {
    match (a, b) {
        (Plan::Lookup(l), _) | (_, Plan::Lookup(l)) => Plan::Lookup(l),
        (Plan::Scan, Plan::Scan) => Plan::Scan,
    }
}

/// A disjunction needs both sides indexed.
fn either(a: Plan, b: Plan) -> Plan {
    match (a, b) {
        (Plan::Lookup(mut l), Plan::Lookup(r)) => {
            l.extend(r);
            Plan::Lookup(l)
        }
        _ => Plan::Scan,
    }
}

/// Plans the filter inside a value path whose elements' `value` is indexed by `lookup`.
fn plan_element(filter: &Filter, lookup: &dyn Fn(String) -> Lookup) -> Plan {
    match filter {
        Filter::Compare { path, op: CompareOp::Eq, value: Value::String(v) }
            if path.schema.is_none() && path.sub.is_none() && path.attr.as_str().eq_ignore_ascii_case("value") =>
        {
            Plan::Lookup(vec![lookup(v.clone())])
        }
        Filter::And(a, b) => both(plan_element(a, lookup), plan_element(b, lookup)),
        Filter::Or(a, b) => either(plan_element(a, lookup), plan_element(b, lookup)),
        Filter::Compare { .. } | Filter::Present(_) | Filter::Not(_) | Filter::ValuePath { .. } => Plan::Scan,
    }
}

/// Ids whose `meta.lastModified` satisfies `op bound`, read from the range index.
fn last_modified_range(
    kv: &impl KvRead,
    t: &str,
    kind: ScimKind,
    op: CompareOp,
    bound: &str,
    max_scan: usize,
) -> Result<Vec<String>, QueryError> {
    let tag = match kind {
        ScimKind::User => keys::USER_LM,
        ScimKind::Group => keys::GROUP_LM,
    };
    let prefix = keys::last_modified_prefix(tag, t);
    let key_at = |suffix: &[u8]| {
        let mut k = prefix.clone();
        k.extend_from_slice(bound.as_bytes());
        k.extend_from_slice(suffix);
        k
    };
    // Keys sort by time (fixed-width text); entries at exactly `bound` sit between `bound` and
    // `bound` + 0x01.
    let (mut after, stop): (Option<Vec<u8>>, Option<Vec<u8>>) = match op {
        CompareOp::Gt => (Some(key_at(&[1])), None),
        CompareOp::Ge => (Some(key_at(&[])), None),
        CompareOp::Eq => (Some(key_at(&[])), Some(key_at(&[1]))),
        CompareOp::Lt => (None, Some(key_at(&[]))),
        CompareOp::Le => (None, Some(key_at(&[1]))),
        _ => return Ok(vec![]),
    };
    let mut out = Vec::new();
    loop {
        let batch = kv.scan(&prefix, after.as_deref(), 512);
        if batch.is_empty() {
            return Ok(out);
        }
        for (k, _) in &batch {
            if stop.as_ref().is_some_and(|s| k >= s) {
                return Ok(out);
            }
            out.push(keys::last_part(k));
            if out.len() > max_scan {
                return Err(QueryError::ScanTooLarge { limit: max_scan });
            }
        }
        after = batch.last().map(|(k, _)| k.clone());
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the filter needs a scan of more than {limit} resources; filter on an indexed attribute (userName, externalId, emails.value, id, displayName, members.value)")]
    ScanTooLarge { limit: usize },
    /// A search without a filter (or one sorted) over more resources than `--max-scan`.
    #[error("this search lists more than {limit} resources (--max-scan) before paging; page a whole collection with GET /Users or /Groups (by startIndex or cursor) without sortBy, or filter")]
    ListTooLarge { limit: usize },
    /// A first request at a far `startIndex` would walk more than `--max-scan` resources.
    #[error("startIndex {start} would walk more than {limit} resources (--max-scan) to find its page; page from startIndex=1 (each page continues the one before) or by cursor")]
    StartTooFar { start: u64, limit: usize },
    /// Members are not part of a group's stored form: a filter reads them by point lookups, so
    /// only the comparisons those answer are accepted.
    #[error("{term}: a group's members can be filtered only with `members eq \"<id>\"`, `members.value eq \"<id>\"`, `members[value eq \"<id>\"]` or `members pr`")]
    MemberFilter { term: String },
}

/// What a filter asks of a group's members: the member ids it compares with `eq`, and whether
/// it asks `members pr`. Members are read by point lookups, never listed.
#[derive(Default)]
struct MemberTerms {
    ids: Vec<String>,
    present: bool,
}

impl MemberTerms {
    fn of(filter: &Filter) -> Result<MemberTerms, QueryError> {
        let mut terms = MemberTerms::default();
        terms.collect(filter)?;
        Ok(terms)
    }

    fn collect(&mut self, f: &Filter) -> Result<(), QueryError> {
        let is_members = |p: &scimlog_schemas::AttrPath| {
            p.attr.as_str().eq_ignore_ascii_case("members")
                && p.schema.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(scimlog_schemas::urn::GROUP))
        };
        let refuse = || Err(QueryError::MemberFilter { term: f.to_string() });
        match f {
            Filter::And(a, b) | Filter::Or(a, b) => {
                self.collect(a)?;
                self.collect(b)
            }
            Filter::Not(a) => self.collect(a),
            Filter::Compare { path, .. } | Filter::Present(path) | Filter::ValuePath { path, .. }
                if !is_members(path) =>
            {
                Ok(())
            }
            Filter::Compare { path, op: CompareOp::Eq, value: Value::String(v) }
                if path.sub.as_ref().is_none_or(|s| s.as_str().eq_ignore_ascii_case("value")) =>
            {
                self.ids.push(v.clone());
                Ok(())
            }
            Filter::Present(path) if path.sub.as_ref().is_none_or(|s| s.as_str().eq_ignore_ascii_case("value")) => {
                self.present = true;
                Ok(())
            }
            Filter::ValuePath { filter, .. } => match filter.value_eq_list() {
                Some(ids) => {
                    self.ids.extend(ids);
                    Ok(())
                }
                None => refuse(),
            },
            Filter::Compare { .. } | Filter::Present(_) => refuse(),
        }
    }

    /// The group's filterable form with the members the filter asks about that it has.
    fn filterable(&self, kv: &impl KvRead, t: &str, doc: &GroupDoc) -> Value {
        let mut out = doc.filterable();
        let mut found: Vec<Value> = Vec::new();
        for id in &self.ids {
            if member(kv, t, &doc.id, id).is_some() {
                found.push(json!({"value": id}));
            }
        }
        if self.present && found.is_empty() {
            found.extend(members(kv, t, &doc.id, None, 1).into_iter().map(|m| json!({"value": m.id})));
        }
        if !found.is_empty() {
            out["members"] = Value::Array(found);
        }
        out
    }
}

/// The ids matching `filter` (or all, when `None`), in id order. `max_scan` bounds how many
/// resources an unindexed filter may read.
pub fn search_ids(
    kv: &impl KvRead,
    t: &str,
    kind: ScimKind,
    filter: Option<&Filter>,
    max_scan: usize,
) -> Result<Vec<String>, QueryError> {
    let schema = schema_of(kind);
    let prefix = collection_prefix(t, kind);
    let Some(filter) = filter else {
        // Every id of the tenant would be listed before a page is cut: bounded like a scan.
        let keys = kv.scan_keys(&prefix, None, max_scan.saturating_add(1));
        if keys.len() > max_scan {
            return Err(QueryError::ListTooLarge { limit: max_scan });
        }
        return Ok(keys.into_iter().map(|k| keys::last_part(&k)).collect());
    };
    let member_terms = match kind {
        ScimKind::Group => MemberTerms::of(filter)?,
        ScimKind::User => MemberTerms::default(),
    };
    let group_filterable = |doc: &GroupDoc| member_terms.filterable(kv, t, doc);
    match plan(kind, filter) {
        Plan::Lookup(lookups) => {
            let mut ids: Vec<String> = Vec::new();
            for l in lookups {
                match (kind, l) {
                    (_, Lookup::Id(id)) => ids.push(id),
                    (ScimKind::User, Lookup::UserName(n)) => ids.extend(user_id_by_user_name(kv, t, &n)),
                    (ScimKind::User, Lookup::ExternalId(x)) => ids.extend(user_id_by_external_id(kv, t, &x)),
                    (ScimKind::User, Lookup::Email(e)) => ids.extend(user_ids_by_email(kv, t, &e, max_scan)),
                    (ScimKind::Group, Lookup::ExternalId(x)) => ids.extend(group_id_by_external_id(kv, t, &x)),
                    (ScimKind::Group, Lookup::DisplayName(n)) => ids.extend(group_id_by_name(kv, t, &n)),
                    // The member may be a user or a group: ids are unique across both.
                    (ScimKind::Group, Lookup::Member(m)) => {
                        for kind in [MemberType::User, MemberType::Group] {
                            ids.extend(groups_of(kv, t, kind, &m, max_scan));
                        }
                    }
                    (_, Lookup::LastModified(op, bound)) => {
                        ids.extend(last_modified_range(kv, t, kind, op, &bound, max_scan)?)
                    }
                    // `plan` asks no other kind for these attributes: they find nothing.
                    (ScimKind::User, Lookup::DisplayName(_) | Lookup::Member(_))
                    | (ScimKind::Group, Lookup::UserName(_) | Lookup::Email(_)) => {}
                }
            }
            ids.sort();
            ids.dedup();
            // When the filter is exactly one comparison that an index answers exactly, a hit is
            // final and the resource is not read here: members (not part of a group's filterable
            // form), and userName (its index key is folded as the filter compares it). This is
            // the lookup every IdP makes before each create.
            let index_is_final = matches!(filter, Filter::Compare { .. })
                && matches!(plan(kind, filter), Plan::Lookup(ref l) if l.len() == 1 && matches!(l[0], Lookup::Member(_) | Lookup::UserName(_)));
            Ok(ids
                .into_iter()
                .filter(|id| {
                    index_is_final
                        || match kind {
                            ScimKind::User => user(kv, t, id).map(|d| d.filterable()),
                            ScimKind::Group => group(kv, t, id).map(|d| group_filterable(&d)),
                        }
                        .is_some_and(|doc| filter.matches(schema, &doc))
                })
                .collect())
        }
        Plan::Scan => {
            let mut out = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            let mut seen = 0usize;
            loop {
                let batch = kv.scan(&prefix, after.as_deref(), 512);
                if batch.is_empty() {
                    return Ok(out);
                }
                for (k, v) in &batch {
                    seen += 1;
                    if seen > max_scan {
                        return Err(QueryError::ScanTooLarge { limit: max_scan });
                    }
                    let doc = match kind {
                        ScimKind::User => serde_json::from_slice::<UserDoc>(v).ok().map(|d| d.filterable()),
                        ScimKind::Group => serde_json::from_slice::<GroupDoc>(v).ok().map(|d| group_filterable(&d)),
                    };
                    if doc.is_some_and(|d| filter.matches(schema, &d)) {
                        out.push(keys::last_part(k));
                    }
                }
                after = batch.last().map(|(k, _)| k.clone());
            }
        }
    }
}

/// Orders `ids` by the attribute at `path` (RFC 7644 §3.4.2.3); resources without a value come
/// last in ascending order. Reads every resource: refused beyond `max_scan`.
pub fn sort_ids(
    kv: &impl KvRead,
    t: &str,
    kind: ScimKind,
    ids: Vec<String>,
    path: &scimlog_schemas::AttrPath,
    descending: bool,
    max_scan: usize,
) -> Result<Vec<String>, QueryError> {
    if ids.len() > max_scan {
        return Err(QueryError::ScanTooLarge { limit: max_scan });
    }
    let schema = schema_of(kind);
    let mut keyed: Vec<(Option<Value>, Option<&scimlog_schemas::registry::Attr>, String)> = ids
        .into_iter()
        .map(|id| {
            let doc = filterable(kv, t, kind, &id);
            let (def, key) = match &doc {
                Some(d) => {
                    let (def, value) = scimlog_schemas::filter::sort_value(schema, path, d);
                    (def, value.cloned())
                }
                None => (None, None),
            };
            (key, def, id)
        })
        .collect();
    keyed.sort_by(|(a, def, ida), (b, _, idb)| {
        scimlog_schemas::filter::compare_sort_keys(*def, a.as_ref(), b.as_ref(), descending).then_with(|| ida.cmp(idb))
    });
    Ok(keyed.into_iter().map(|(_, _, id)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scimlog_schemas::filter::FilterLimits;

    #[test]
    fn plan_table() {
        let u = ScimKind::User;
        let g = ScimKind::Group;
        let table = [
            (u, r#"userName eq "a""#, Plan::Lookup(vec![Lookup::UserName("a".into())])),
            (u, r#"USERNAME eq "a" and active eq true"#, Plan::Lookup(vec![Lookup::UserName("a".into())])),
            (u, r#"emails.value eq "a@x""#, Plan::Lookup(vec![Lookup::Email("a@x".into())])),
            (
                u,
                r#"externalId eq "1" or id eq "2""#,
                Plan::Lookup(vec![Lookup::ExternalId("1".into()), Lookup::Id("2".into())]),
            ),
            (u, r#"userName eq "a" or title eq "b""#, Plan::Scan),
            (u, r#"userName co "a""#, Plan::Scan),
            (u, r#"displayName eq "a""#, Plan::Scan),
            (g, r#"displayName eq "Ops""#, Plan::Lookup(vec![Lookup::DisplayName("Ops".into())])),
            (g, r#"members.value eq "u1""#, Plan::Lookup(vec![Lookup::Member("u1".into())])),
            (
                u,
                r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "a""#,
                Plan::Lookup(vec![Lookup::UserName("a".into())]),
            ),
            (
                g,
                r#"meta.lastModified gt "2024-05-13T06:42:34+02:00""#,
                Plan::Lookup(vec![Lookup::LastModified(CompareOp::Gt, "2024-05-13T04:42:34.000000000Z".into())]),
            ),
            (u, r#"meta.lastModified gt "yesterday""#, Plan::Scan),
            (u, r#"emails[type eq "work"].value eq "a@x""#, Plan::Lookup(vec![Lookup::Email("a@x".into())])),
            (
                u,
                r#"emails[value eq "a@x" or value eq "b@x"]"#,
                Plan::Lookup(vec![Lookup::Email("a@x".into()), Lookup::Email("b@x".into())]),
            ),
            (u, r#"emails[type eq "work"].value co "a""#, Plan::Scan),
            (u, r#"addresses[type eq "work"].postalCode eq "1""#, Plan::Scan),
            (g, r#"members[value eq "u1"]"#, Plan::Lookup(vec![Lookup::Member("u1".into())])),
        ];
        for (kind, f, want) in table {
            let filter = Filter::parse(f, FilterLimits::default()).unwrap();
            assert_eq!(plan(kind, &filter), want, "{f}");
        }
    }
}
