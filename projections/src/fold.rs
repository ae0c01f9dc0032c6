//! [`apply`]: one event into the read models. Pure and infallible: the same events in the same
//! order always produce the same keys and values, which is what `replay --verify` relies on.

use scimlog_schemas::event::{Event, EventBody, MemberType};
use scimlog_schemas::name::fold as fold_case;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::access;
use crate::keys;
use crate::kv::Kv;
use crate::model::{emails_of, GroupDoc, Member, MemberOf, Tombstone, UserDoc};
use scimlog_schemas::access::ScopeKind;
use scimlog_schemas::{urn, ResourceKind};

pub(crate) fn load<T: DeserializeOwned>(kv: &(impl crate::KvRead + ?Sized), key: &[u8]) -> Option<T> {
    kv.get(key).and_then(|b| serde_json::from_slice(&b).ok())
}

fn store<T: Serialize>(kv: &mut impl Kv, key: &[u8], doc: &T) {
    kv.put(key, &serde_json::to_vec(doc).expect("documents serialise"));
}

fn bump_count(kv: &mut impl Kv, key: &[u8], delta: i64) {
    let n = kv.get(key).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
    kv.put(key, &(n as i64 + delta).max(0).to_be_bytes());
}

fn index_user(kv: &mut impl Kv, t: &str, id: &str, attributes: &Map<String, Value>, on: bool) {
    let mut keys = Vec::new();
    let b = kv.blinder();
    if let Some(u) = attributes.get("userName").and_then(Value::as_str) {
        keys.push((keys::user_name(&b, t, &fold_case(u)), id.as_bytes().to_vec()));
    }
    if let Some(x) = attributes.get("externalId").and_then(Value::as_str) {
        keys.push((keys::user_external_id(&b, t, x), id.as_bytes().to_vec()));
    }
    for e in emails_of(attributes) {
        keys.push((keys::user_email(&b, t, &fold_case(e), id), Vec::new()));
    }
    for (k, v) in keys {
        if on {
            kv.put(&k, &v);
        } else if kv.get(&k).map(|cur| cur == v || v.is_empty()).unwrap_or(false) {
            // Only drop a unique index entry that still points at this resource.
            kv.delete(&k);
        }
    }
}

fn index_group(kv: &mut impl Kv, t: &str, g: &GroupDoc, on: bool) {
    let mut keys = vec![keys::group_name(t, &fold_case(&g.display_name))];
    if let Some(x) = g.external_id() {
        keys.push(keys::group_external_id(t, x));
    }
    for k in keys {
        if on {
            kv.put(&k, g.id.as_bytes());
        } else if kv.get(&k).as_deref() == Some(g.id.as_bytes()) {
            kv.delete(&k);
        }
    }
}

fn apply_changes(attributes: &mut Map<String, Value>, changed: &Map<String, Value>, removed: &[String]) {
    let before = attributes.clone();
    for r in removed {
        attributes.remove(r);
    }
    for (k, v) in changed {
        attributes.insert(k.clone(), v.clone());
    }
    // Roles and entitlements that are grants change only through their own events: an update
    // of the plain values beside them keeps them.
    keep_grants(&before, attributes);
    if let Some(Value::Object(old_ext)) = before.get(urn::GROUP_ACCESS) {
        let ext = attributes.entry(urn::GROUP_ACCESS.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(new_ext) = ext {
            keep_grants(old_ext, new_ext);
        }
    }
    tidy_grants(attributes);
}

fn keep_grants(before: &Map<String, Value>, after: &mut Map<String, Value>) {
    for attr in ["roles", "entitlements"] {
        let grants: Vec<Value> = before
            .get(attr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v.get("value").and_then(Value::as_str).is_some_and(access::is_urn))
            .cloned()
            .collect();
        if grants.is_empty() {
            continue;
        }
        let list = after.entry(attr.to_string()).or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(items) = list {
            items.retain(|v| !v.get("value").and_then(Value::as_str).is_some_and(access::is_urn));
            items.extend(grants);
        }
    }
}

/// Folds one event into the read models.
pub fn apply(kv: &mut impl Kv, e: &Event) {
    let t = e.tenant.as_str();
    let id = e.resource_id.as_str();
    kv.put(&keys::history(t, e.resource_type.as_str(), id, e.position), b"");
    if let EventBody::GroupMemberAdded { member_id, member_type }
    | EventBody::GroupMemberRemoved { member_id, member_type } = &e.body
    {
        kv.put(&keys::history(t, member_type.kind().as_str(), member_id, e.position), b"");
    }
    match &e.body {
        EventBody::UserCreated { attributes, active } => {
            let doc = UserDoc {
                id: id.into(),
                version: e.resource_version,
                created: e.recorded_at,
                last_modified: e.recorded_at,
                active: *active,
                attributes: attributes.clone(),
            };
            index_user(kv, t, id, &doc.attributes, true);
            kv.put(&keys::last_modified(keys::USER_LM, t, &doc.last_modified, id), b"");
            store(kv, &keys::user(t, id), &doc);
            bump_count(kv, &keys::user_count(t), 1);
        }
        EventBody::UserUpdated { changed, removed } => {
            let Some(mut doc) = load::<UserDoc>(kv, &keys::user(t, id)) else {
                return;
            };
            index_user(kv, t, id, &doc.attributes, false);
            apply_changes(&mut doc.attributes, changed, removed);
            // `active` lives beside the attributes: move an assignment change over.
            if let Some(a) = doc.attributes.remove("active") {
                doc.active = a.as_bool();
            } else if removed.iter().any(|r| r == "active") {
                doc.active = None;
            }
            index_user(kv, t, id, &doc.attributes, true);
            touch_user(kv, e, doc);
        }
        EventBody::UserDeactivated {} | EventBody::UserReactivated {} => {
            let Some(mut doc) = load::<UserDoc>(kv, &keys::user(t, id)) else {
                return;
            };
            doc.active = Some(matches!(e.body, EventBody::UserReactivated {}));
            touch_user(kv, e, doc);
        }
        EventBody::UserDeleted {} => {
            let Some(doc) = load::<UserDoc>(kv, &keys::user(t, id)) else {
                return;
            };
            index_user(kv, t, id, &doc.attributes, false);
            kv.delete(&keys::last_modified(keys::USER_LM, t, &doc.last_modified, id));
            kv.delete(&keys::user(t, id));
            store(kv, &keys::user_tombstone(t, id), &Tombstone { version: e.resource_version, erased: false });
            bump_count(kv, &keys::user_count(t), -1);
            // The command removed its memberships with events first; this only guards the fold.
            remove_memberships_of(kv, t, MemberType::User, id);
            // Its grants and hosts go with it.
            remove_grants_of(kv, t, id, ResourceKind::User);
            for (k, _) in kv.scan(&keys::user_hosts(t, id), None, usize::MAX) {
                kv.delete(&keys::host(t, &keys::last_part(&k)));
                kv.delete(&k);
            }
        }
        EventBody::UserErased { .. } => {
            store(kv, &keys::user_tombstone(t, id), &Tombstone { version: e.resource_version, erased: true });
        }
        EventBody::GroupCreated { display_name, attributes } => {
            let doc = GroupDoc {
                id: id.into(),
                version: e.resource_version,
                created: e.recorded_at,
                last_modified: e.recorded_at,
                display_name: display_name.clone(),
                attributes: attributes.clone(),
                member_count: 0,
            };
            index_group(kv, t, &doc, true);
            kv.put(&keys::last_modified(keys::GROUP_LM, t, &doc.last_modified, id), b"");
            store(kv, &keys::group(t, id), &doc);
            bump_count(kv, &keys::group_count(t), 1);
        }
        EventBody::GroupRenamed { display_name, .. } => {
            let Some(mut doc) = load::<GroupDoc>(kv, &keys::group(t, id)) else {
                return;
            };
            index_group(kv, t, &doc, false);
            doc.display_name = display_name.clone();
            index_group(kv, t, &doc, true);
            touch_group(kv, e, doc);
        }
        EventBody::GroupUpdated { changed, removed } => {
            let Some(mut doc) = load::<GroupDoc>(kv, &keys::group(t, id)) else {
                return;
            };
            index_group(kv, t, &doc, false);
            apply_changes(&mut doc.attributes, changed, removed);
            index_group(kv, t, &doc, true);
            touch_group(kv, e, doc);
        }
        EventBody::GroupDeleted {} => {
            let Some(doc) = load::<GroupDoc>(kv, &keys::group(t, id)) else {
                return;
            };
            index_group(kv, t, &doc, false);
            kv.delete(&keys::last_modified(keys::GROUP_LM, t, &doc.last_modified, id));
            kv.delete(&keys::group(t, id));
            bump_count(kv, &keys::group_count(t), -1);
            // Deleting a group ends every membership in it (and its own memberships in others).
            // Paged from the last key seen: each page costs its own size, so a group of n
            // members is O(n) also over an overlay that holds the deletes so far.
            let prefix = keys::members(t, id);
            let mut after: Option<Vec<u8>> = None;
            loop {
                let batch = kv.scan(&prefix, after.as_deref(), 1024);
                let Some((last, _)) = batch.last() else { break };
                after = Some(last.clone());
                for (k, v) in batch {
                    let member = keys::last_part(&k);
                    kv.delete(&k);
                    // Every member record says its type; one that does not (never written so)
                    // is taken out of both kinds' lists, where only its own holds the group.
                    match serde_json::from_slice::<Member>(&v) {
                        Ok(m) => membership_removed(kv, t, m.member_type, &member, id),
                        Err(_) => [MemberType::User, MemberType::Group]
                            .into_iter()
                            .for_each(|kind| membership_removed(kv, t, kind, &member, id)),
                    }
                }
            }
            remove_memberships_of(kv, t, MemberType::Group, id);
            remove_grants_of(kv, t, id, ResourceKind::Group);
        }
        EventBody::GroupMemberAdded { member_id, member_type } => {
            let Some(mut doc) = load::<GroupDoc>(kv, &keys::group(t, id)) else {
                return;
            };
            let key = keys::member(t, id, member_id);
            if kv.get(&key).is_none() {
                doc.member_count += 1;
            }
            store(kv, &key, &Member { id: member_id.clone(), member_type: *member_type });
            membership_added(kv, t, *member_type, member_id, id);
            touch_group(kv, e, doc);
        }
        EventBody::RoleAssigned { role, value } => grant_added(kv, e, "roles", role, value),
        EventBody::EntitlementGranted { entitlement, value } => grant_added(kv, e, "entitlements", entitlement, value),
        EventBody::RoleRevoked { role } => grant_removed(kv, e, "roles", role),
        EventBody::EntitlementRevoked { entitlement } => grant_removed(kv, e, "entitlements", entitlement),
        EventBody::OrganizationCreated { slug } => scope_created(kv, e, ScopeKind::Organization, slug, None),
        EventBody::EnvironmentCreated { slug, organization } => {
            scope_created(kv, e, ScopeKind::Environment, slug, organization.clone())
        }
        EventBody::ResourceGroupCreated { slug, organization } => {
            scope_created(kv, e, ScopeKind::ResourceGroup, slug, organization.clone())
        }
        EventBody::HostUserLinked { user_id } => {
            kv.put(&keys::host(t, id), user_id.as_bytes());
            kv.put(&keys::user_host(t, user_id, id), b"");
        }
        EventBody::HostUserUnlinked { user_id } => {
            kv.delete(&keys::host(t, id));
            kv.delete(&keys::user_host(t, user_id, id));
        }
        EventBody::TokenCreated { role } => kv.put(&keys::token(t, id), role.as_bytes()),
        EventBody::TokenRevoked {} => kv.delete(&keys::token(t, id)),
        EventBody::GroupMemberRemoved { member_id, member_type } => {
            let Some(mut doc) = load::<GroupDoc>(kv, &keys::group(t, id)) else {
                return;
            };
            let key = keys::member(t, id, member_id);
            if kv.get(&key).is_some() {
                doc.member_count = doc.member_count.saturating_sub(1);
            }
            kv.delete(&key);
            membership_removed(kv, t, *member_type, member_id, id);
            touch_group(kv, e, doc);
        }
    }
}

/// The list of roles or entitlements in a subject's attributes (a group's live in the access
/// extension).
fn grant_list<'a>(attributes: &'a mut Map<String, Value>, kind: ResourceKind, attr: &str) -> &'a mut Vec<Value> {
    let container = if kind == ResourceKind::Group {
        let ext = attributes.entry(urn::GROUP_ACCESS.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if !ext.is_object() {
            *ext = Value::Object(Map::new());
        }
        ext.as_object_mut().expect("object")
    } else {
        attributes
    };
    let list = container.entry(attr.to_string()).or_insert_with(|| Value::Array(vec![]));
    if !list.is_array() {
        *list = Value::Array(vec![]);
    }
    list.as_array_mut().expect("array")
}

/// Drops empty grant lists (and an empty access extension).
fn tidy_grants(attributes: &mut Map<String, Value>) {
    let empty = |v: &Value| v.as_array().is_some_and(|a| a.is_empty());
    attributes.retain(|k, v| !((k == "roles" || k == "entitlements") && empty(v)));
    if let Some(Value::Object(ext)) = attributes.get_mut(urn::GROUP_ACCESS) {
        ext.retain(|_, v| !empty(v));
        if ext.is_empty() {
            attributes.remove(urn::GROUP_ACCESS);
        }
    }
}

/// Applies `f` to the subject's attributes and touches its version.
fn edit_subject(kv: &mut impl Kv, e: &Event, f: impl FnOnce(&mut Map<String, Value>)) {
    let (t, id) = (e.tenant.as_str(), e.resource_id.as_str());
    match e.resource_type {
        ResourceKind::User => {
            let Some(mut doc) = load::<UserDoc>(kv, &keys::user(t, id)) else { return };
            f(&mut doc.attributes);
            tidy_grants(&mut doc.attributes);
            touch_user(kv, e, doc);
        }
        ResourceKind::Group => {
            let Some(mut doc) = load::<GroupDoc>(kv, &keys::group(t, id)) else { return };
            f(&mut doc.attributes);
            tidy_grants(&mut doc.attributes);
            touch_group(kv, e, doc);
        }
        // Only users and groups hold grants.
        ResourceKind::Organization
        | ResourceKind::Environment
        | ResourceKind::ResourceGroup
        | ResourceKind::Host
        | ResourceKind::Token => {}
    }
}

fn same_urn(v: &Value, urn: &str) -> bool {
    v.get("value").and_then(Value::as_str).is_some_and(|x| x.eq_ignore_ascii_case(urn))
}

fn grant_added(kv: &mut impl Kv, e: &Event, attr: &str, urn: &str, value: &Value) {
    let kind = e.resource_type;
    edit_subject(kv, e, |attributes| {
        let list = grant_list(attributes, kind, attr);
        list.retain(|v| !same_urn(v, urn));
        list.push(value.clone());
    });
    if let Some(grant) = access::parse_any(attr, urn) {
        let (t, id) = (e.tenant.as_str(), e.resource_id.as_str());
        if kv.get(&keys::grant(t, id, urn)).is_none() {
            count_holder(kv, t, attr, urn, kind, 1);
        }
        kv.put(&keys::grant_by_scope(t, &access::grant_scope_key(&grant), id, urn), b"");
        store(kv, &keys::grant(t, id, urn), &access::GrantRecord { urn: urn.to_string(), grant, position: e.position });
    }
}

/// Counts a subject of `kind` in or out of a grant's direct holders; a grant nobody holds is
/// no longer known.
fn count_holder(kv: &mut impl Kv, t: &str, attr: &str, urn: &str, kind: ResourceKind, delta: i64) {
    let key = keys::known_grant(t, attr, urn);
    let mut known: access::KnownGrant =
        load(kv, &key).unwrap_or_else(|| access::KnownGrant { urn: urn.to_string(), ..Default::default() });
    let slot = match kind {
        ResourceKind::User => &mut known.users,
        ResourceKind::Group => &mut known.groups,
        ResourceKind::Organization
        | ResourceKind::Environment
        | ResourceKind::ResourceGroup
        | ResourceKind::Host
        | ResourceKind::Token => return,
    };
    *slot = (*slot as i64 + delta).max(0) as u64;
    if known.users == 0 && known.groups == 0 {
        kv.delete(&key);
    } else {
        store(kv, &key, &known);
    }
}

/// The attribute a grant record belongs to.
fn grant_attr(g: &scimlog_schemas::access::Grant) -> &'static str {
    match g {
        scimlog_schemas::access::Grant::Role { .. } => "roles",
        scimlog_schemas::access::Grant::Entitlement { .. } => "entitlements",
    }
}

fn grant_removed(kv: &mut impl Kv, e: &Event, attr: &str, urn: &str) {
    let kind = e.resource_type;
    edit_subject(kv, e, |attributes| grant_list(attributes, kind, attr).retain(|v| !same_urn(v, urn)));
    let (t, id) = (e.tenant.as_str(), e.resource_id.as_str());
    if let Some(grant) = access::parse_any(attr, urn) {
        kv.delete(&keys::grant_by_scope(t, &access::grant_scope_key(&grant), id, urn));
    }
    if kv.get(&keys::grant(t, id, urn)).is_some() {
        count_holder(kv, t, attr, urn, kind, -1);
    }
    kv.delete(&keys::grant(t, id, urn));
}

fn remove_grants_of(kv: &mut impl Kv, t: &str, subject: &str, kind: ResourceKind) {
    for (k, v) in kv.scan(&keys::grants_of(t, subject), None, usize::MAX) {
        if let Ok(rec) = serde_json::from_slice::<access::GrantRecord>(&v) {
            kv.delete(&keys::grant_by_scope(t, &access::grant_scope_key(&rec.grant), subject, &rec.urn));
            count_holder(kv, t, grant_attr(&rec.grant), &rec.urn, kind, -1);
        }
        kv.delete(&k);
    }
}

fn scope_created(kv: &mut impl Kv, e: &Event, kind: ScopeKind, slug: &str, organization: Option<String>) {
    let doc = access::ScopeDoc {
        kind,
        slug: slug.to_string(),
        created: e.recorded_at,
        created_by: e.actor.clone(),
        position: e.position,
        organization,
    };
    store(kv, &keys::scope(&e.tenant, kind.as_str(), slug), &doc);
}

/// Ends every membership of `member` in a group (both ways), and counts it out of each group.
fn remove_memberships_of(kv: &mut impl Kv, t: &str, kind: MemberType, member: &str) {
    let key = keys::member_of(t, kind, member);
    let Some(value) = kv.get(&key) else { return };
    kv.delete(&key);
    let groups: Vec<String> = match MemberOf::decode(&value) {
        MemberOf::Listed(ids) => ids.into_iter().map(|id| String::from_utf8_lossy(id).into_owned()).collect(),
        MemberOf::Spilled(_) => take_spilled(kv, t, member),
    };
    for group in groups {
        let mk = keys::member(t, &group, member);
        if kv.get(&mk).is_some() {
            kv.delete(&mk);
            if let Some(mut g) = load::<GroupDoc>(kv, &keys::group(t, &group)) {
                g.member_count = g.member_count.saturating_sub(1);
                store(kv, &keys::group(t, &group), &g);
            }
        }
    }
}

/// Deletes a spilled member's keys of its own (one per group) and returns their group ids, in
/// byte order.
fn take_spilled(kv: &mut impl Kv, t: &str, member: &str) -> Vec<String> {
    let spilled = kv.scan_keys(&keys::memberships(t, member), None, usize::MAX);
    spilled.iter().for_each(|k| kv.delete(k));
    spilled.iter().map(|k| keys::last_part(k)).collect()
}

/// Puts `group` among `member`'s groups (nothing to write when it is there): into its list, or
/// into keys of their own once the list is full.
fn membership_added(kv: &mut impl Kv, t: &str, kind: MemberType, member: &str, group: &str) {
    let key = keys::member_of(t, kind, member);
    let value = kv.get(&key).unwrap_or_default();
    let next = match MemberOf::decode(&value) {
        MemberOf::Listed(mut ids) => {
            let Err(at) = ids.binary_search(&group.as_bytes()) else { return };
            ids.insert(at, group.as_bytes());
            if ids.len() <= MemberOf::LISTED_MAX {
                MemberOf::Listed(ids)
            } else {
                for id in &ids {
                    kv.put(&keys::membership(t, member, &String::from_utf8_lossy(id)), b"");
                }
                MemberOf::Spilled(ids.len() as u32)
            }
        }
        MemberOf::Spilled(n) => {
            let one = keys::membership(t, member, group);
            if kv.get(&one).is_some() {
                return;
            }
            kv.put(&one, b"");
            MemberOf::Spilled(n.saturating_add(1))
        }
    };
    kv.put(&key, &next.encode().expect("a member with a group"));
}

/// Takes `group` out of `member`'s groups; a member in no group has no value at all, and a
/// spilled member whose groups fall to [`MemberOf::RELISTED_AT`] is listed again.
fn membership_removed(kv: &mut impl Kv, t: &str, kind: MemberType, member: &str, group: &str) {
    let key = keys::member_of(t, kind, member);
    let Some(value) = kv.get(&key) else { return };
    // What stays listed, ids joined as `MemberOf` stores them.
    let list = match MemberOf::decode(&value) {
        MemberOf::Listed(mut ids) => {
            let Ok(at) = ids.binary_search(&group.as_bytes()) else { return };
            ids.remove(at);
            ids.join(&keys::SEP)
        }
        MemberOf::Spilled(n) => {
            let one = keys::membership(t, member, group);
            if kv.get(&one).is_none() {
                return;
            }
            kv.delete(&one);
            let n = n.saturating_sub(1);
            if n as usize > MemberOf::RELISTED_AT {
                kv.put(&key, &MemberOf::Spilled(n).encode().expect("a count"));
                return;
            }
            let ids = take_spilled(kv, t, member);
            ids.iter().map(String::as_bytes).collect::<Vec<_>>().join(&keys::SEP)
        }
    };
    if list.is_empty() {
        kv.delete(&key);
    } else {
        kv.put(&key, &list);
    }
}

/// Moves a resource's `meta.lastModified` index entry to the event's time.
fn move_last_modified(kv: &mut impl Kv, tag: &str, e: &Event, id: &str, old: &chrono::DateTime<chrono::Utc>) {
    kv.delete(&keys::last_modified(tag, &e.tenant, old, id));
    kv.put(&keys::last_modified(tag, &e.tenant, &e.recorded_at, id), b"");
}

fn touch_user(kv: &mut impl Kv, e: &Event, mut doc: UserDoc) {
    move_last_modified(kv, keys::USER_LM, e, &doc.id, &doc.last_modified);
    doc.version = e.resource_version;
    doc.last_modified = e.recorded_at;
    store(kv, &keys::user(&e.tenant, &doc.id), &doc);
}

fn touch_group(kv: &mut impl Kv, e: &Event, mut doc: GroupDoc) {
    move_last_modified(kv, keys::GROUP_LM, e, &doc.id, &doc.last_modified);
    doc.version = e.resource_version;
    doc.last_modified = e.recorded_at;
    store(kv, &keys::group(&e.tenant, &doc.id), &doc);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvRead, MemKv};
    use crate::query;
    use chrono::{DateTime, Utc};
    use scimlog_schemas::event::{EventBody as B, EventHash, ResourceKind};
    use scimlog_schemas::MemberType;
    use scimlog_schemas::ScimKind;
    use serde_json::json;

    fn ev(pos: u64, kind: ResourceKind, id: &str, version: u64, body: EventBody) -> Event {
        Event {
            id: uuid::Uuid::nil(),
            position: pos,
            tenant: "t".into(),
            schema_version: 1,
            body,
            resource_type: kind,
            resource_id: id.into(),
            resource_version: version,
            recorded_at: DateTime::<Utc>::from_timestamp(1_700_000_000 + pos as i64, 0).unwrap(),
            actor: "test".into(),
            request_id: "r".into(),
            traceparent: None,
            prev_hash: EventHash::GENESIS,
        }
    }

    fn attrs(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// Each row: the events folded so far, then what the read model must answer.
    #[test]
    fn fold_table() {
        use ResourceKind::{Group as G, User as U};
        let events = vec![
            ev(
                1,
                U,
                "u1",
                1,
                B::UserCreated {
                    attributes: attrs(
                        json!({"userName": "Alice", "externalId": "X1", "emails": [{"value": "A@x.org"}]}),
                    ),
                    active: Some(true),
                },
            ),
            ev(2, U, "u2", 1, B::UserCreated { attributes: attrs(json!({"userName": "bob"})), active: Some(true) }),
            ev(3, G, "g1", 1, B::GroupCreated { display_name: "Ops".into(), attributes: Map::new() }),
            ev(4, G, "g1", 2, B::GroupMemberAdded { member_id: "u1".into(), member_type: MemberType::User }),
            ev(5, G, "g1", 3, B::GroupMemberAdded { member_id: "u2".into(), member_type: MemberType::User }),
            ev(
                6,
                U,
                "u1",
                2,
                B::UserUpdated {
                    changed: attrs(json!({"userName": "alice2", "emails": [{"value": "new@x.org"}]})),
                    removed: vec!["externalId".into()],
                },
            ),
            ev(7, U, "u2", 2, B::UserDeactivated {}),
            ev(
                8,
                G,
                "g1",
                4,
                B::GroupRenamed { display_name: "Operations".into(), previous_display_name: "Ops".into() },
            ),
            ev(9, G, "g1", 5, B::GroupMemberRemoved { member_id: "u1".into(), member_type: MemberType::User }),
            ev(10, U, "u2", 3, B::UserDeleted {}),
        ];
        let mut kv = MemKv::default();
        let check = |kv: &MemKv, step: u64| {
            let by_name = |n: &str| query::user_id_by_user_name(kv, "t", n);
            match step {
                1 => {
                    assert_eq!(by_name("ALICE").as_deref(), Some("u1"));
                    assert_eq!(query::user_id_by_external_id(kv, "t", "X1").as_deref(), Some("u1"));
                    assert_eq!(query::user_ids_by_email(kv, "t", "a@X.org", 10), vec!["u1"]);
                }
                5 => {
                    let g = query::group(kv, "t", "g1").unwrap();
                    assert_eq!((g.member_count, g.version), (2, 3));
                    assert_eq!(query::groups_of(kv, "t", MemberType::User, "u1", 10), vec!["g1"]);
                    let m: Vec<String> = query::members(kv, "t", "g1", None, 10).into_iter().map(|m| m.id).collect();
                    assert_eq!(m, ["u1", "u2"]);
                }
                6 => {
                    assert_eq!(by_name("alice"), None);
                    assert_eq!(by_name("Alice2").as_deref(), Some("u1"));
                    assert_eq!(query::user_id_by_external_id(kv, "t", "X1"), None);
                    assert!(query::user_ids_by_email(kv, "t", "a@x.org", 10).is_empty());
                    assert_eq!(query::user(kv, "t", "u1").unwrap().version, 2);
                }
                7 => assert!(!query::user(kv, "t", "u2").unwrap().is_active()),
                8 => {
                    assert_eq!(query::group_id_by_name(kv, "t", "OPERATIONS").as_deref(), Some("g1"));
                    assert_eq!(query::group_id_by_name(kv, "t", "ops"), None);
                }
                9 => {
                    assert!(query::groups_of(kv, "t", MemberType::User, "u1", 10).is_empty());
                    assert_eq!(query::group(kv, "t", "g1").unwrap().member_count, 1);
                }
                10 => {
                    assert!(query::user(kv, "t", "u2").is_none());
                    assert_eq!(by_name("bob"), None);
                    assert_eq!(query::group(kv, "t", "g1").unwrap().member_count, 0);
                    assert_eq!(query::user_count(kv, "t"), 1);
                }
                _ => {}
            }
        };
        for e in &events {
            apply(&mut kv, e);
            check(&kv, e.position);
        }
        // Folding the same events again from scratch gives byte-identical state.
        let mut again = MemKv::default();
        events.iter().for_each(|e| apply(&mut again, e));
        assert_eq!(again, kv);
    }

    /// An access check reads a user's grant records only when its document may hold one
    /// (`UserHead::may_hold_grants`): so no record may outlive its URN in the document. Each row
    /// is a user's story; after every event, each grant record of the user must have its URN in
    /// the stored document, as the access answers decode it.
    #[test]
    fn a_users_grant_records_never_outlive_the_urn_in_its_document() {
        use ResourceKind::User as U;
        const ADMIN: &str = "urn:scimlog:role:environment:prod:admin";
        const RG: &str = "urn:scimlog:entitlement:resource-group:rg-a";
        let created = |attributes: Value| B::UserCreated { attributes: attrs(attributes), active: Some(true) };
        let role = |urn: &str| B::RoleAssigned { role: urn.into(), value: json!({"value": urn}) };
        let entitlement = |urn: &str| B::EntitlementGranted { entitlement: urn.into(), value: json!({"value": urn}) };
        let update = |changed: Value, removed: &[&str]| B::UserUpdated {
            changed: attrs(changed),
            removed: removed.iter().map(|r| r.to_string()).collect(),
        };
        let stories: Vec<(&str, Vec<B>)> = vec![
            (
                "assigned, then revoked",
                vec![created(json!({"userName": "a"})), role(ADMIN), B::RoleRevoked { role: ADMIN.into() }],
            ),
            (
                "an update replaces the plain roles",
                vec![
                    created(json!({"userName": "a", "roles": [{"value": "Employee"}]})),
                    role(ADMIN),
                    update(json!({"roles": [{"value": "Contractor"}]}), &[]),
                ],
            ),
            (
                "an update removes roles and entitlements",
                vec![
                    created(json!({"userName": "a"})),
                    role(ADMIN),
                    entitlement(RG),
                    update(json!({}), &["roles", "entitlements"]),
                ],
            ),
            (
                "an update sets roles to something not a list",
                vec![
                    created(json!({"userName": "a"})),
                    role(&ADMIN.to_uppercase()),
                    update(json!({"roles": "x"}), &[]),
                ],
            ),
            (
                "deactivated, reactivated, updated",
                vec![
                    created(json!({"userName": "a"})),
                    entitlement(RG),
                    B::UserDeactivated {},
                    B::UserReactivated {},
                    update(json!({"userName": "b"}), &[]),
                ],
            ),
            ("deleted", vec![created(json!({"userName": "a"})), role(ADMIN), B::UserDeleted {}]),
        ];
        for (story, bodies) in stories {
            let mut kv = MemKv::default();
            for (i, body) in bodies.into_iter().enumerate() {
                let position = i as u64 + 1;
                apply(&mut kv, &ev(position, U, "u1", position, body));
                let records = crate::access::grants_of(&kv, "t", "u1");
                let head = query::user_head(&kv, "t", "u1");
                let may = head.as_ref().is_some_and(|h| h.may_hold_grants());
                assert!(records.is_empty() || may, "{story}, event {position}: records {records:?}, head {head:?}");
                if let Some(doc) = query::user(&kv, "t", "u1") {
                    assert_eq!(head, Some(doc.head()), "{story}, event {position}");
                }
            }
        }
    }

    /// A user's groups list is keyed right after its document, so that the two share a data
    /// block (a GET and an access check read both); listing users passes over these keys, and
    /// a user in groups is listed once, at its place, by page and by index.
    #[test]
    fn a_users_groups_list_sits_beside_its_document_and_is_never_listed_as_a_user() {
        use ResourceKind::{Group as G, User as U};
        let mut kv = MemKv::default();
        let ids = ["u1", "u1-", "u10", "u2", "u3"];
        for (i, id) in ids.iter().enumerate() {
            let created = B::UserCreated { attributes: attrs(json!({"userName": id})), active: Some(true) };
            apply(&mut kv, &ev(i as u64 + 1, U, id, 1, created));
        }
        apply(&mut kv, &ev(6, G, "g1", 1, B::GroupCreated { display_name: "A".into(), attributes: Map::new() }));
        for (i, member) in ["u1", "u10", "u3"].iter().enumerate() {
            let added = B::GroupMemberAdded { member_id: member.to_string(), member_type: MemberType::User };
            apply(&mut kv, &ev(7 + i as u64, G, "g1", 2 + i as u64, added));
        }
        // Beside its document: no other key of the collection sorts between the two.
        let all = kv.scan_keys(&keys::users("t"), None, usize::MAX);
        for id in ["u1", "u10", "u3"] {
            let at = all.iter().position(|k| *k == keys::user("t", id)).unwrap();
            assert_eq!(all[at + 1], keys::member_of("t", MemberType::User, id), "{id}'s list follows its document");
            assert_eq!(query::groups_of(&kv, "t", MemberType::User, id, 10), ["g1"], "{id}'s groups");
        }
        let page = |after: Option<&str>, n| query::ids_after(&kv, "t", ScimKind::User, after, n);
        let cases: [(Option<&str>, usize, &[&str]); 6] = [
            (None, 10, &["u1", "u1-", "u10", "u2", "u3"]),
            (None, 1, &["u1"]),
            (None, 2, &["u1", "u1-"]),
            (Some("u1"), 2, &["u1-", "u10"]),
            (Some("u10"), 10, &["u2", "u3"]),
            (Some("u3"), 10, &[]),
        ];
        for (after, n, want) in cases {
            assert_eq!(page(after, n), want, "{n} after {after:?}");
        }
        for (i, id) in ids.iter().enumerate() {
            let at = query::id_at(&kv, "t", ScimKind::User, i as u64 + 1, 100).unwrap();
            assert_eq!(at.as_deref(), Some(*id), "index {}", i + 1);
        }
        assert_eq!(query::id_at(&kv, "t", ScimKind::User, 6, 100).unwrap(), None, "five users, not eight");
    }

    #[test]
    fn group_deletion_ends_memberships_both_ways() {
        use ResourceKind::{Group as G, User as U};
        let mut kv = MemKv::default();
        for e in [
            ev(1, U, "u1", 1, B::UserCreated { attributes: attrs(json!({"userName": "a"})), active: Some(true) }),
            ev(2, G, "g1", 1, B::GroupCreated { display_name: "A".into(), attributes: Map::new() }),
            ev(3, G, "g2", 1, B::GroupCreated { display_name: "B".into(), attributes: Map::new() }),
            ev(4, G, "g1", 2, B::GroupMemberAdded { member_id: "u1".into(), member_type: MemberType::User }),
            ev(5, G, "g2", 2, B::GroupMemberAdded { member_id: "g1".into(), member_type: MemberType::Group }),
            ev(6, G, "g1", 3, B::GroupDeleted {}),
        ] {
            apply(&mut kv, &e);
        }
        assert!(query::groups_of(&kv, "t", MemberType::User, "u1", 10).is_empty());
        assert_eq!(query::group(&kv, "t", "g2").unwrap().member_count, 0);
        assert!(query::members(&kv, "t", "g2", None, 10).is_empty());
        assert_eq!(query::group_id_by_name(&kv, "t", "a"), None);
    }

    /// Every member's groups read back exactly as the groups that hold it as a member, in byte
    /// order, after every event of a long run of adds, removes and deletions of users and of
    /// nested groups: in the first half most events add (users go past the groups a list holds,
    /// and spill), in the second most remove (they are listed again). A member in no group has
    /// no value at all, and each group's count of members stays right.
    #[test]
    fn a_members_groups_agree_with_the_groups_members_after_every_event() {
        use ResourceKind::{Group as G, User as U};
        let groups: Vec<String> = (0..80).map(|i| format!("g{i:02}")).collect();
        let mut kv = MemKv::default();
        let mut pos = 0;
        let mut next = |kv: &mut MemKv, kind, id: &str, body| {
            pos += 1;
            apply(kv, &ev(pos, kind, id, pos, body));
        };
        let mut users: Vec<String> = Vec::new();
        let new_user = |kv: &mut MemKv,
                        next: &mut dyn FnMut(&mut MemKv, ResourceKind, &str, EventBody),
                        users: &mut Vec<String>| {
            let u = format!("u{}", users.len());
            next(kv, U, &u, B::UserCreated { attributes: attrs(json!({ "userName": u })), active: Some(true) });
            users.push(u.clone());
            u
        };
        let mut live_users: Vec<String> = (0..3).map(|_| new_user(&mut kv, &mut next, &mut users)).collect();
        for g in &groups {
            next(&mut kv, G, g, B::GroupCreated { display_name: g.clone(), attributes: Map::new() });
        }
        let mut live_groups = groups.clone();
        let mut seed: u64 = 0x5eed;
        let mut draw = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let (mut spilled, mut relisted) = (0, 0);
        for step in 0..1600 {
            let g = live_groups[draw(live_groups.len())].clone();
            let (member, member_type) = match draw(16) {
                0 => (live_groups[draw(live_groups.len())].clone(), MemberType::Group),
                _ => (live_users[draw(live_users.len())].clone(), MemberType::User),
            };
            let adds = if step < 800 { 19 } else { 3 };
            let spilled_now = |kv: &MemKv| {
                matches!(
                    kv.get(&keys::member_of("t", member_type, &member)).as_deref().map(MemberOf::decode),
                    Some(MemberOf::Spilled(_))
                )
            };
            let was_spilled = spilled_now(&kv);
            match draw(20) {
                0 if member_type == MemberType::User && draw(40) == 0 => {
                    live_users.retain(|u| *u != member);
                    next(&mut kv, U, &member, B::UserDeleted {});
                    live_users.push(new_user(&mut kv, &mut next, &mut users));
                }
                1 if live_groups.len() > 70 && draw(10) == 0 => {
                    live_groups.retain(|x| *x != g);
                    next(&mut kv, G, &g, B::GroupDeleted {});
                }
                n if n < adds && member != g => {
                    next(&mut kv, G, &g, B::GroupMemberAdded { member_id: member.clone(), member_type })
                }
                _ => next(&mut kv, G, &g, B::GroupMemberRemoved { member_id: member.clone(), member_type }),
            }
            let now_spilled = spilled_now(&kv);
            spilled += usize::from(!was_spilled && now_spilled);
            relisted += usize::from(was_spilled && !now_spilled);
            let every_tenth = if step % 10 == 0 { groups.as_slice() } else { &[] };
            let members = users.iter().map(|u| (u, MemberType::User));
            for (m, kind) in members.chain(every_tenth.iter().map(|g| (g, MemberType::Group))) {
                let want: Vec<String> =
                    groups.iter().filter(|g| query::member(&kv, "t", g, m).is_some()).cloned().collect();
                assert_eq!(query::groups_of(&kv, "t", kind, m, usize::MAX), want, "{m}'s groups after step {step}");
                let first: Vec<String> = want.iter().take(3).cloned().collect();
                assert_eq!(query::groups_of(&kv, "t", kind, m, 3), first, "{m}'s first 3 groups after step {step}");
                let value = kv.get(&keys::member_of("t", kind, m));
                assert_eq!(value.is_none(), want.is_empty(), "{m}: a value exactly when in a group, step {step}");
                let keys_of_its_own = kv.scan_keys(&keys::memberships("t", m), None, usize::MAX).len();
                match value.as_deref().map(MemberOf::decode) {
                    Some(MemberOf::Spilled(n)) => {
                        assert_eq!((n as usize, keys_of_its_own), (want.len(), want.len()), "{m} at step {step}")
                    }
                    _ => assert_eq!(keys_of_its_own, 0, "{m}: a listed member has no keys, step {step}"),
                }
            }
            if step % 10 == 0 {
                for g in &live_groups {
                    let count = query::members(&kv, "t", g, None, usize::MAX).len() as u64;
                    assert_eq!(query::group(&kv, "t", g).unwrap().member_count, count, "{g}'s count, step {step}");
                }
            }
        }
        assert!(spilled >= 3 && relisted >= 3, "the run spilled {spilled} times and listed again {relisted}");
    }
}
