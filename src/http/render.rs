//! Read models rendered as SCIM JSON.

use chrono::SecondsFormat;
use scimlog_projections::{query, GroupDoc, KvRead, UserDoc};
use scimlog_schemas::registry::registry;
use scimlog_schemas::{urn, MemberType, ResourceKind};
use serde_json::{json, Map, Value};

use super::extract::Projection;
use crate::config::GrantShape;

fn meta(
    base: &str,
    kind: ResourceKind,
    id: &str,
    created: &chrono::DateTime<chrono::Utc>,
    modified: &chrono::DateTime<chrono::Utc>,
    version: u64,
) -> Value {
    json!({
        "resourceType": kind.as_str(),
        "created": created.to_rfc3339_opts(SecondsFormat::Millis, true),
        "lastModified": modified.to_rfc3339_opts(SecondsFormat::Millis, true),
        "location": location(base, kind, id),
        "version": format!("W/\"{version}\""),
    })
}

/// Roles and entitlements as plain strings (Okta's shape), when configured so.
pub fn shape_grants(m: &mut Map<String, Value>, shape: GrantShape) {
    if shape != GrantShape::Strings {
        return;
    }
    let flatten = |c: &mut Map<String, Value>| {
        for attr in ["roles", "entitlements"] {
            if let Some(Value::Array(items)) = c.get_mut(attr) {
                for item in items.iter_mut() {
                    if let Some(v) = item.get("value").cloned() {
                        *item = v;
                    }
                }
            }
        }
    };
    flatten(m);
    if let Some(Value::Object(ext)) = m.get_mut(urn::GROUP_ACCESS) {
        flatten(ext);
    }
}

pub fn location(base: &str, kind: ResourceKind, id: &str) -> String {
    format!("{base}/{}/{id}", kind.endpoint())
}

/// A user as SCIM JSON. The document is taken, not borrowed: its attributes move into the
/// answer instead of being copied (a GET renders each document once). `group_name` names each
/// of the user's groups (`None`: the group is gone, and left out).
pub fn user(
    kv: &impl KvRead,
    t: &str,
    base: &str,
    doc: UserDoc,
    proj: &Projection,
    shape: GrantShape,
    group_name: impl Fn(&str) -> Option<String>,
) -> Value {
    let groups = |id: &str| {
        query::groups_of(kv, t, id, usize::MAX)
            .into_iter()
            .filter_map(|g| group_name(&g).map(|name| (g, name)))
            .map(|(g, name)| {
                let reference = location(base, ResourceKind::Group, &g);
                json!({"value": g, "$ref": reference, "display": name, "type": "direct"})
            })
            .collect()
    };
    user_with(base, doc, proj, shape, groups)
}

/// A user just created: no group can name it yet (a member that names no resource is
/// skipped), so its groups are not read.
pub fn new_user(base: &str, doc: UserDoc, proj: &Projection, shape: GrantShape) -> Value {
    user_with(base, doc, proj, shape, |_| Vec::new())
}

fn user_with(
    base: &str,
    doc: UserDoc,
    proj: &Projection,
    shape: GrantShape,
    groups: impl FnOnce(&str) -> Vec<Value>,
) -> Value {
    let schemas = doc.schemas();
    let meta = meta(base, ResourceKind::User, &doc.id, &doc.created, &doc.last_modified, doc.version);
    let groups = if proj.wants("groups") { groups(&doc.id) } else { Vec::new() };
    let UserDoc { id, active, attributes, .. } = doc;
    // The order of the answer's keys: schemas, id, the attributes, active, groups, meta.
    let mut m = Map::with_capacity(attributes.len() + 5);
    m.insert("schemas".into(), Value::Array(schemas));
    m.insert("id".into(), Value::String(id));
    m.extend(attributes);
    if let Some(active) = active {
        m.insert("active".into(), Value::Bool(active));
    }
    if !groups.is_empty() {
        m.insert("groups".into(), Value::Array(groups));
    }
    m.insert("meta".into(), meta);
    shape_grants(&mut m, shape);
    proj.apply(&registry().user, Value::Object(m))
}

pub fn group(kv: &impl KvRead, t: &str, base: &str, doc: &GroupDoc, proj: &Projection, shape: GrantShape) -> Value {
    let mut m = Map::with_capacity(doc.attributes.len() + 5);
    m.insert("schemas".into(), Value::Array(doc.schemas()));
    m.insert("id".into(), Value::String(doc.id.clone()));
    m.insert("displayName".into(), Value::String(doc.display_name.clone()));
    m.extend(doc.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Members are read only when asked for: `excludedAttributes=members` costs no member reads.
    if proj.wants("members") && doc.member_count > 0 {
        let members: Vec<Value> = query::members(kv, t, &doc.id, None, usize::MAX)
            .into_iter()
            .map(|mb| {
                let display = match mb.member_type {
                    MemberType::User => query::user(kv, t, &mb.id).map(|u| u.display().to_string()),
                    MemberType::Group => query::group(kv, t, &mb.id).map(|g| g.display_name),
                };
                let kind = mb.member_type.kind();
                let mut v = json!({"value": mb.id, "$ref": location(base, kind, &mb.id), "type": kind.as_str()});
                if let Some(d) = display {
                    v["display"] = Value::String(d);
                }
                v
            })
            .collect();
        m.insert("members".into(), Value::Array(members));
    }
    m.insert("meta".into(), meta(base, ResourceKind::Group, &doc.id, &doc.created, &doc.last_modified, doc.version));
    shape_grants(&mut m, shape);
    proj.apply(&registry().group, Value::Object(m))
}

/// An RFC 9865 page: `nextCursor` while there is more, no `startIndex`.
pub fn cursor_list_response(total: usize, resources: Vec<Value>, next_cursor: Option<String>) -> Value {
    let mut v = json!({
        "schemas": [urn::LIST_RESPONSE],
        "totalResults": total,
        "itemsPerPage": resources.len(),
    });
    if let Some(c) = next_cursor {
        v["nextCursor"] = Value::String(c);
    }
    v["Resources"] = Value::Array(resources);
    v
}

/// A ListResponse page. The resources are moved in, never put through `json!`, which would copy
/// each of them (serialised into a new `Value`): that copy was 5% of a lookup's CPU.
pub fn list_response(total: usize, start_index: usize, resources: Vec<Value>) -> Value {
    let mut v = json!({
        "schemas": [urn::LIST_RESPONSE],
        "totalResults": total,
        "startIndex": start_index,
        "itemsPerPage": resources.len(),
    });
    v["Resources"] = Value::Array(resources);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page is the RFC's ListResponse, its keys in the order clients have always seen, with
    /// the resources as given.
    #[test]
    fn a_list_response_holds_its_resources_after_the_counts() {
        let page = list_response(7, 3, vec![json!({"id": "a"}), json!({"id": "b"})]);
        assert_eq!(
            serde_json::to_string(&page).unwrap(),
            r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":7,"startIndex":3,"itemsPerPage":2,"Resources":[{"id":"a"},{"id":"b"}]}"#
        );
        let empty = list_response(0, 1, Vec::new());
        assert_eq!(empty["itemsPerPage"], 0);
        assert_eq!(empty["Resources"], json!([]));
    }
}
