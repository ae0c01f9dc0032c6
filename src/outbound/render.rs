//! What a target is sent, as pure functions of the directory's state and a profile's knobs:
//! documents rendered from the read models (never from an event's body), the PATCH that turns
//! the last sent document into the new one, and member changes in chunks.

use scimlog_projections::model::{GroupDoc, UserDoc};
use scimlog_schemas::urn;
use serde_json::{json, Map, Value};

use super::mapping::Mapping;
use super::profile::{Knobs, MemberRemove};

pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// Attributes of the directory never sent: `externalId` is the scimlog id downstream (the IdP's
/// own externalId means nothing to a target), `groups` is read-only (memberships are sent as
/// group member changes).
const NOT_SENT: [&str; 3] = ["externalId", "groups", "password"];

/// The user as the target gets it: `externalId` = the scimlog id, `active` always explicit, the
/// profile's knobs and then the target's mapping applied.
pub fn user(doc: &UserDoc, knobs: &Knobs, mapping: &Mapping) -> Value {
    let mut m = Map::with_capacity(doc.attributes.len() + 3);
    m.insert("schemas".into(), Value::Array(doc.schemas()));
    m.insert("externalId".into(), Value::String(doc.id.clone()));
    for (k, v) in &doc.attributes {
        if NOT_SENT.contains(&k.as_str()) || knobs.drop_attributes.contains(&k.as_str()) {
            continue;
        }
        let v = match (knobs.single_valued, v) {
            (true, Value::Array(values)) => Value::Array(primary_or_first(values).into_iter().collect()),
            (_, v) => v.clone(),
        };
        m.insert(k.clone(), v);
    }
    if let Some(Value::Array(schemas)) = m.get_mut("schemas") {
        schemas.retain(|s| s.as_str().is_none_or(|s| !knobs.drop_attributes.contains(&s)));
    }
    mapping.apply(&doc.attributes, &mut m);
    m.insert("active".into(), Value::Bool(doc.is_active()));
    Value::Object(m)
}

fn primary_or_first(values: &[Value]) -> Option<Value> {
    values.iter().find(|v| v.get("primary") == Some(&Value::Bool(true))).or(values.first()).cloned()
}

/// The group without its members (they are sent as changes, see [`member_patches`]).
pub fn group(doc: &GroupDoc, knobs: &Knobs) -> Value {
    let mut m = Map::with_capacity(doc.attributes.len() + 3);
    m.insert("schemas".into(), Value::Array(vec![Value::from(urn::GROUP)]));
    m.insert("displayName".into(), Value::String(doc.display_name.clone()));
    m.insert("externalId".into(), Value::String(doc.id.clone()));
    for (k, v) in &doc.attributes {
        if NOT_SENT.contains(&k.as_str()) || k == "members" || knobs.drop_attributes.contains(&k.as_str()) {
            continue;
        }
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

/// The user as a deprovisioned copy: the last sent document with `active: false`.
pub fn deactivated(sent: &Value) -> Value {
    let mut v = sent.clone();
    if let Value::Object(m) = &mut v {
        m.insert("active".into(), Value::Bool(false));
    }
    v
}

/// A PATCH from `sent` to `now`: one `replace` (no path) of every top-level attribute that
/// changed or appeared, one `remove` per attribute that went away. `None` when nothing changed.
/// A `sent` that is not a document (an adopted object: what it holds is unknown) replaces all.
pub fn patch(sent: &Value, now: &Value) -> Option<Value> {
    let Value::Object(now) = now else { return None };
    let empty = Map::new();
    let sent = sent.as_object().unwrap_or(&empty);
    let mut replace = Map::new();
    for (k, v) in now {
        if k != "schemas" && sent.get(k) != Some(v) {
            replace.insert(k.clone(), v.clone());
        }
    }
    let mut ops: Vec<Value> = sent
        .keys()
        .filter(|k| *k != "schemas" && !now.contains_key(*k))
        .map(|k| json!({"op": "remove", "path": k}))
        .collect();
    if !replace.is_empty() {
        ops.push(json!({"op": "replace", "value": replace}));
    }
    (!ops.is_empty()).then(|| json!({"schemas": [PATCH_OP], "Operations": ops}))
}

/// Member changes as PATCH bodies, each naming at most `max` members in all: adds first (one
/// `add` with their values), then removes, phrased as the target takes them (`remove`).
pub fn member_patches(adds: &[String], removes: &[String], max: usize, remove: MemberRemove) -> Vec<Value> {
    let max = max.max(1);
    let values = |chunk: &[String]| -> Vec<Value> { chunk.iter().map(|id| json!({"value": id})).collect() };
    let mut out = Vec::new();
    for chunk in adds.chunks(max) {
        out.push(
            json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": values(chunk)}]}),
        );
    }
    for chunk in removes.chunks(max) {
        let ops: Vec<Value> = match remove {
            MemberRemove::Filter => chunk
                .iter()
                .map(|id| json!({"op": "remove", "path": format!("members[value eq {}]", Value::String(id.clone()))}))
                .collect(),
            MemberRemove::Value => vec![json!({"op": "remove", "path": "members", "value": values(chunk)})],
        };
        out.push(json!({"schemas": [PATCH_OP], "Operations": ops}));
    }
    out
}

/// A group document with its full member list, for targets that take only PUT.
pub fn with_members(group: &Value, members: &[String]) -> Value {
    let mut v = group.clone();
    if let Value::Object(m) = &mut v {
        m.insert("members".into(), members.iter().map(|id| json!({"value": id})).collect());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::profile::Profile;

    fn doc(attributes: Value, active: Option<bool>) -> UserDoc {
        UserDoc {
            id: "u-1".into(),
            version: 1,
            created: chrono::Utc::now(),
            last_modified: chrono::Utc::now(),
            active,
            attributes: attributes.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn users_render_with_our_id_as_external_id_and_the_profile_applied() {
        let d = doc(
            json!({"userName": "ann", "externalId": "okta-9", "photos": [{"value": "p"}],
                   "emails": [{"value": "a@x"}, {"value": "b@x", "primary": true}]}),
            None,
        );
        let generic = user(&d, &Profile::Generic.knobs(), &Mapping::default());
        assert_eq!(generic["externalId"], "u-1");
        assert_eq!(generic["active"], true);
        assert_eq!(generic["emails"].as_array().unwrap().len(), 2);
        assert!(generic.get("photos").is_some());
        let aws = user(&d, &Profile::AwsIdentityCenter.knobs(), &Mapping::default());
        assert_eq!(aws["emails"], json!([{"value": "b@x", "primary": true}]));
        assert!(aws.get("photos").is_none());
    }

    #[test]
    fn a_patch_names_exactly_what_changed() {
        let sent = json!({"schemas": ["s"], "userName": "ann", "title": "x", "active": true});
        let cases = [
            (json!({"schemas": ["s"], "userName": "ann", "title": "x", "active": true}), None),
            (
                json!({"schemas": ["s"], "userName": "ann", "active": true}),
                Some(json!([{"op": "remove", "path": "title"}])),
            ),
            (
                json!({"schemas": ["s"], "userName": "bob", "title": "x", "active": false}),
                Some(json!([{"op": "replace", "value": {"userName": "bob", "active": false}}])),
            ),
        ];
        for (now, want) in cases {
            let got = patch(&sent, &now).map(|p| p["Operations"].clone());
            assert_eq!(got, want, "{now}");
        }
        let adopted = patch(&Value::Null, &json!({"schemas": ["s"], "userName": "ann"})).unwrap();
        assert_eq!(adopted["Operations"], json!([{"op": "replace", "value": {"userName": "ann"}}]));
    }

    #[test]
    fn member_changes_are_chunked_by_the_cap() {
        let adds: Vec<String> = (0..250).map(|i| format!("a{i}")).collect();
        let removes: Vec<String> = (0..3).map(|i| format!("r{i}")).collect();
        let bodies = member_patches(&adds, &removes, 100, MemberRemove::Filter);
        assert_eq!(bodies.len(), 4);
        let counts: Vec<usize> = bodies
            .iter()
            .map(|b| {
                b["Operations"].as_array().unwrap().iter().map(|op| op["value"].as_array().map_or(1, Vec::len)).sum()
            })
            .collect();
        assert_eq!(counts, [100, 100, 50, 3]);
        assert_eq!(bodies[3]["Operations"][0]["path"], "members[value eq \"r0\"]");
        let by_value = member_patches(&[], &removes, 2, MemberRemove::Value);
        let want = [
            json!([{"op": "remove", "path": "members", "value": [{"value": "r0"}, {"value": "r1"}]}]),
            json!([{"op": "remove", "path": "members", "value": [{"value": "r2"}]}]),
        ];
        assert_eq!(by_value.iter().map(|b| b["Operations"].clone()).collect::<Vec<_>>(), want);
    }
}
