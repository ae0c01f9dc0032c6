//! Validation and coercion of a User or Group body against the attribute registry.
//!
//! What comes out is canonical: attribute names spelled as the schema spells them, string booleans
//! (`"False"`, sent by Entra) turned into booleans, single values of multi-valued attributes
//! wrapped in a list, plain strings in multi-valued complex attributes (Okta's `roles`) turned into
//! `{"value": ...}`, empty values dropped. readOnly attributes are ignored (RFC 7644 §3.3), the
//! writeOnly `password` is dropped on the spot: it is never stored, evented or returned.

use serde_json::{Map, Value};

use crate::error::SchemaError;
use crate::event::MemberType;
use crate::registry::{registry, Attr, AttrType, Mutability, ResourceSchema};

/// A validated User body.
#[derive(Clone, Debug, PartialEq)]
pub struct UserInput {
    /// Canonical attributes, without `id`, `meta`, `schemas`, `groups`, `password`, `active`.
    pub attributes: Map<String, Value>,
    /// `None` when the body leaves `active` unassigned; such a user counts as active.
    pub active: Option<bool>,
    /// Attribute names that were not in the schema, or readOnly: ignored, reported in the logs.
    pub ignored: Vec<String>,
}

impl UserInput {
    pub fn user_name(&self) -> &str {
        self.attributes.get("userName").and_then(Value::as_str).unwrap_or_default()
    }
    pub fn external_id(&self) -> Option<&str> {
        self.attributes.get("externalId").and_then(Value::as_str)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRef {
    pub value: String,
    pub member_type: Option<MemberType>,
}

/// A validated Group body.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupInput {
    pub display_name: String,
    /// Canonical attributes other than `displayName` and `members` (e.g. `externalId`).
    pub attributes: Map<String, Value>,
    /// `None` when the body has no `members` attribute at all.
    pub members: Option<Vec<MemberRef>>,
    pub ignored: Vec<String>,
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(path: &str, want: &str, got: &Value) -> SchemaError {
    let shown = got.to_string();
    let shown: String =
        if shown.len() > 64 { format!("{}...", &shown[..shown.floor_char_boundary(64)]) } else { shown };
    SchemaError::invalid_value(format!("attribute '{path}' must be {want}, got {} {shown}", type_name(got)))
}

/// Refuses control characters (C0 and DEL) in a string: they are never part of a name, an id or
/// an address, and NUL separates the parts of index keys. Only a `formatted` text (an address
/// on several lines) may hold tab, line feed and carriage return.
pub fn no_controls(path: &str, s: &str, multi_line: bool) -> Result<(), SchemaError> {
    let allowed = |c: char| multi_line && matches!(c, '\t' | '\n' | '\r');
    match s.chars().find(|c| (c.is_ascii_control()) && !allowed(*c)) {
        None => Ok(()),
        Some(c) => Err(SchemaError::invalid_value(format!(
            "attribute '{path}' holds the control character U+{:04X}, which no value may contain",
            c as u32
        ))),
    }
}

/// Coerces one value of a single-valued attribute (or one element of a multi-valued one).
fn coerce_single(attr: &Attr, path: &str, v: &Value, ignored: &mut Vec<String>) -> Result<Value, SchemaError> {
    match attr.ty {
        AttrType::String | AttrType::Reference | AttrType::Binary => match v {
            Value::String(s) => {
                no_controls(path, s, attr.name == "formatted" || attr.ty == AttrType::Binary)?;
                Ok(v.clone())
            }
            _ => Err(wrong_type(path, "a string", v)),
        },
        AttrType::Boolean => match v {
            Value::Bool(_) => Ok(v.clone()),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            _ => Err(wrong_type(path, "a boolean", v)),
        },
        AttrType::Integer => match v {
            Value::Number(n) if n.is_i64() => Ok(v.clone()),
            _ => Err(wrong_type(path, "an integer", v)),
        },
        AttrType::Decimal => match v {
            Value::Number(_) => Ok(v.clone()),
            _ => Err(wrong_type(path, "a number", v)),
        },
        AttrType::DateTime => match v {
            Value::String(s) if chrono::DateTime::parse_from_rfc3339(s).is_ok() => Ok(v.clone()),
            _ => Err(wrong_type(path, "an RFC 3339 date-time", v)),
        },
        AttrType::Complex => {
            let obj = match v {
                Value::Object(o) => o,
                // Okta sends roles and entitlements as plain strings, Entra the manager's id.
                Value::String(_) if attr.sub("value").is_some() => {
                    return Ok(Value::Object(Map::from_iter([("value".to_string(), v.clone())])));
                }
                _ => return Err(wrong_type(path, "an object", v)),
            };
            let mut out = Map::new();
            for (k, sv) in obj {
                let Some(sub) = attr.sub(k) else {
                    ignored.push(format!("{path}.{k}"));
                    continue;
                };
                if is_empty(sv) {
                    continue;
                }
                // The server's to set, not the client's, like a readOnly attribute at the top:
                // `manager.displayName` would be another person's name, stored unasked.
                if sub.mutability == Mutability::ReadOnly {
                    ignored.push(format!("{path}.{}", sub.name));
                    continue;
                }
                let sub_path = format!("{path}.{}", sub.name);
                out.insert(sub.name.clone(), coerce_value(sub, &sub_path, sv, ignored)?);
            }
            Ok(Value::Object(out))
        }
    }
}

fn coerce_value(attr: &Attr, path: &str, v: &Value, ignored: &mut Vec<String>) -> Result<Value, SchemaError> {
    if attr.multi_valued {
        let items: Vec<&Value> = match v {
            Value::Array(items) => items.iter().collect(),
            // A lone object stands for a list of one; a lone string for a complex list is a mistake
            // (only inside a list do plain strings mean `{"value": ...}`, as Okta sends roles).
            single if attr.ty == AttrType::Complex && !single.is_object() => {
                return Err(wrong_type(path, "a list of objects", single))
            }
            single => vec![single],
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if is_empty(item) {
                continue;
            }
            let c = coerce_single(attr, path, item, ignored)?;
            if !is_empty(&c) {
                out.push(c);
            }
        }
        Ok(Value::Array(out))
    } else {
        if let Value::Array(items) = v {
            // Entra sends a one-element list for some single-valued complex attributes (manager).
            if items.len() == 1 {
                return coerce_single(attr, path, &items[0], ignored);
            }
            return Err(wrong_type(path, "a single value", v));
        }
        coerce_single(attr, path, v, ignored)
    }
}

/// Coerces the attributes of one schema (core or extension) from `obj` into `out`.
fn coerce_attrs(
    schema: &ResourceSchema,
    obj: &Map<String, Value>,
    out: &mut Map<String, Value>,
    ignored: &mut Vec<String>,
) -> Result<(), SchemaError> {
    for (key, v) in obj {
        if key.eq_ignore_ascii_case("schemas") {
            continue;
        }
        if let Some((urn, attrs)) = schema.extension(key) {
            let Value::Object(ext) = v else {
                if is_empty(v) {
                    continue;
                }
                return Err(wrong_type(key, "an object", v));
            };
            let mut ext_out = Map::new();
            for (k, ev) in ext {
                let Some(attr) = attrs.iter().find(|a| a.name.eq_ignore_ascii_case(k)) else {
                    ignored.push(format!("{urn}:{k}"));
                    continue;
                };
                if attr.mutability == Mutability::ReadOnly || is_empty(ev) {
                    continue;
                }
                let c = coerce_value(attr, &format!("{urn}:{}", attr.name), ev, ignored)?;
                if !is_empty(&c) {
                    ext_out.insert(attr.name.clone(), c);
                }
            }
            for (name, c) in ext_out {
                put_in_extension(out, urn, &name, c)?;
            }
            continue;
        }
        let attr = match schema.locate(None, key) {
            Some((None, attr)) => attr,
            // A bare name only an extension defines (Testkube's group `roles`, a top-level
            // `manager`) is that extension's attribute, exactly as if sent inside it.
            Some((Some(urn), attr)) => {
                if attr.mutability == Mutability::ReadOnly || is_empty(v) {
                    continue;
                }
                let c = coerce_value(attr, &attr.name, v, ignored)?;
                if !is_empty(&c) {
                    put_in_extension(out, urn, &attr.name, c)?;
                }
                continue;
            }
            None => {
                ignored.push(key.clone());
                continue;
            }
        };
        match attr.mutability {
            Mutability::ReadOnly => continue,
            // Accepted so that IdPs may send it, and dropped: never stored, never evented.
            Mutability::WriteOnly => continue,
            _ => {}
        }
        if is_empty(v) {
            continue;
        }
        let c = coerce_value(attr, &attr.name, v, ignored)?;
        if !is_empty(&c) {
            out.insert(attr.name.clone(), c);
        }
    }
    Ok(())
}

/// Puts an extension attribute's coerced value into `out[urn]`. Sent both bare and inside the
/// extension, a multi-valued attribute gets the values of both (without repeats); a
/// single-valued one must be the same in both.
fn put_in_extension(out: &mut Map<String, Value>, urn: &str, name: &str, value: Value) -> Result<(), SchemaError> {
    let ext = out.entry(urn.to_string()).or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(ext) = ext else { unreachable!("extension objects are made here") };
    match (ext.get_mut(name), value) {
        (None, value) => {
            ext.insert(name.to_string(), value);
        }
        (Some(Value::Array(held)), Value::Array(more)) => {
            for v in more {
                if !held.contains(&v) {
                    held.push(v);
                }
            }
        }
        (Some(held), value) if *held == value => {}
        (Some(held), value) => {
            return Err(SchemaError::invalid_value(format!(
                "attribute '{name}' is sent twice with different values, bare ({value}) and in {urn} ({held})"
            )))
        }
    }
    Ok(())
}

fn as_object(body: &Value) -> Result<&Map<String, Value>, SchemaError> {
    body.as_object().ok_or_else(|| {
        SchemaError::invalid_syntax(format!("the request body must be a JSON object, got {}", type_name(body)))
    })
}

/// Validates a User body for POST or PUT.
pub fn parse_user(body: &Value) -> Result<UserInput, SchemaError> {
    let obj = as_object(body)?;
    let mut attributes = Map::new();
    let mut ignored = Vec::new();
    coerce_attrs(&registry().user, obj, &mut attributes, &mut ignored)?;
    let active = match attributes.remove("active") {
        None => None,
        Some(Value::Bool(b)) => Some(b),
        Some(other) => return Err(wrong_type("active", "a boolean", &other)),
    };
    match attributes.get("userName") {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        _ => return Err(SchemaError::invalid_value("required attribute 'userName' is missing or empty")),
    }
    Ok(UserInput { attributes, active, ignored })
}

/// Validates a Group body for POST or PUT.
pub fn parse_group(body: &Value) -> Result<GroupInput, SchemaError> {
    let obj = as_object(body)?;
    let mut attributes = Map::new();
    let mut ignored = Vec::new();
    let members_raw = obj.iter().find(|(k, _)| k.eq_ignore_ascii_case("members")).map(|(_, v)| v);
    let rest: Map<String, Value> =
        obj.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("members")).map(|(k, v)| (k.clone(), v.clone())).collect();
    coerce_attrs(&registry().group, &rest, &mut attributes, &mut ignored)?;
    let display_name = match attributes.remove("displayName") {
        Some(Value::String(s)) if !s.trim().is_empty() => s,
        _ => return Err(SchemaError::invalid_value("required attribute 'displayName' is missing or empty")),
    };
    let members = match members_raw {
        None => None,
        Some(v) => Some(parse_members(v)?),
    };
    Ok(GroupInput { display_name, attributes, members, ignored })
}

/// Parses a `members` value: a list (or one) of `{"value": id, "type": "User"|"Group"}`.
pub fn parse_members(v: &Value) -> Result<Vec<MemberRef>, SchemaError> {
    let items: Vec<&Value> = match v {
        Value::Null => vec![],
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    let mut out: Vec<MemberRef> = Vec::with_capacity(items.len());
    // Duplicates are dropped in one pass: O(n) for the largest list a body can hold.
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::with_capacity(items.len());
    for item in items {
        let Some(obj) = item.as_object() else {
            return Err(wrong_type("members", "a list of objects with a 'value'", item));
        };
        let get = |name: &str| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
        let value = match get("value") {
            Some(Value::String(s)) if !s.is_empty() => {
                no_controls("members.value", s, false)?;
                s.clone()
            }
            Some(other) => return Err(wrong_type("members.value", "a non-empty string", other)),
            None => return Err(SchemaError::invalid_value("a member has no 'value'")),
        };
        let member_type = match get("type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("user") => Some(MemberType::User),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("group") => Some(MemberType::Group),
            Some(other) => {
                return Err(SchemaError::invalid_value(format!(
                    "member type must be \"User\" or \"Group\", got {other}"
                )))
            }
        };
        if seen.insert(value.clone()) {
            out.push(MemberRef { value, member_type });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_coercion_table() {
        let ent = crate::urn::ENTERPRISE_USER;
        let table = vec![
            (
                json!({"schemas": ["x"], "UserName": "a@x", "Active": "False", "id": "mine", "password": "secret"}),
                json!({"userName": "a@x"}),
                Some(false),
            ),
            (
                json!({"userName": "a", "name": {"GivenName": "A", "familyName": ""}, "emails": {"value": "a@x", "type": "work", "primary": "true"}}),
                json!({"userName": "a", "name": {"givenName": "A"}, "emails": [{"value": "a@x", "type": "work", "primary": true}]}),
                None,
            ),
            (
                json!({"userName": "a", "roles": ["urn:r1", {"value": "urn:r2"}], "groups": [{"value": "g"}], "title": null}),
                json!({"userName": "a", "roles": [{"value": "urn:r1"}, {"value": "urn:r2"}]}),
                None,
            ),
            (
                json!({"userName": "a", ent: {"department": "Ops", "manager": [{"value": "m1"}]}}),
                json!({"userName": "a", ent: {"department": "Ops", "manager": {"value": "m1"}}}),
                None,
            ),
        ];
        for (input, want_attrs, want_active) in table {
            let got = parse_user(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(Value::Object(got.attributes), want_attrs, "{input}");
            assert_eq!(got.active, want_active, "{input}");
        }
    }

    #[test]
    fn user_refusal_table() {
        let table = vec![
            (json!([1]), "must be a JSON object"),
            (json!({"displayName": "x"}), "'userName' is missing"),
            (json!({"userName": ""}), "'userName' is missing"),
            (json!({"userName": 5}), "'userName' must be a string, got a number 5"),
            (json!({"userName": "a", "active": "maybe"}), "'active' must be a boolean, got a string \"maybe\""),
            (json!({"userName": "a", "name": "Babs"}), "'name' must be an object"),
            (json!({"userName": "a", "emails": [{"value": 3}]}), "'emails.value' must be a string"),
        ];
        for (input, want) in table {
            let e = parse_user(&input).expect_err(&input.to_string());
            assert!(e.detail.contains(want), "{input}: {}", e.detail);
        }
    }

    #[test]
    fn unknown_and_read_only_attributes_are_reported_not_stored() {
        let got = parse_user(&json!({"userName": "a", "favouriteColour": "red", "meta": {}})).unwrap();
        assert_eq!(got.ignored, vec!["favouriteColour".to_string()]);
        assert!(!got.attributes.contains_key("meta"));
        // readOnly sub-attributes too: the manager's displayName is another person's name.
        let ent = crate::urn::ENTERPRISE_USER;
        let got =
            parse_user(&json!({"userName": "b", ent: {"manager": {"value": "m1", "displayName": "Alice"}}})).unwrap();
        assert_eq!(got.attributes[ent], json!({"manager": {"value": "m1"}}));
        assert_eq!(got.ignored, vec![format!("{ent}:manager.displayName")]);
    }

    #[test]
    fn control_characters_are_refused_with_the_attribute_named() {
        let bad = [
            (json!({"userName": "a\u{0}b"}), "'userName' holds the control character U+0000"),
            (json!({"userName": "a", "externalId": "x\u{1f}y"}), "'externalId' holds the control character U+001F"),
            (
                json!({"userName": "a", "emails": [{"value": "a\n@x.org"}]}),
                "'emails.value' holds the control character U+000A",
            ),
        ];
        for (body, want) in bad {
            let e = parse_user(&body).unwrap_err();
            assert!(e.detail.contains(want), "{body}: {}", e.detail);
        }
        let ok = json!({"userName": "a", "addresses": [{"formatted": "1 Main St\nSpringfield"}]});
        assert!(parse_user(&ok).is_ok(), "a formatted address has lines");
        let e = parse_group(&json!({"displayName": "g", "members": [{"value": "u\u{0}"}]})).unwrap_err();
        assert!(e.detail.contains("'members.value' holds the control character U+0000"), "{}", e.detail);
    }

    /// Testkube sends a group's grants at the top level, Entra a bare `manager`: each is the
    /// extension's attribute, in both shapes, merged with the same attribute sent inside it.
    #[test]
    fn bare_extension_attributes_are_the_extensions() {
        let access = crate::urn::GROUP_ACCESS;
        let ent = crate::urn::ENTERPRISE_USER;
        let g = parse_group(&json!({"displayName": "dev", "roles": ["urn:testkube:role:environment:dev:admin"],
            "entitlements": [{"value": "urn:testkube:entitlement:environment:dev"}]}))
        .unwrap();
        assert_eq!(
            Value::Object(g.attributes),
            json!({access: {"roles": [{"value": "urn:testkube:role:environment:dev:admin"}],
                "entitlements": [{"value": "urn:testkube:entitlement:environment:dev"}]}})
        );
        assert!(g.ignored.is_empty(), "{:?}", g.ignored);
        let both = parse_group(
            &json!({"displayName": "dev", "roles": ["urn:a", "urn:b"], access: {"roles": ["urn:b", "urn:c"]}}),
        )
        .unwrap();
        assert_eq!(
            both.attributes[access]["roles"],
            json!([{"value": "urn:a"}, {"value": "urn:b"}, {"value": "urn:c"}]),
            "the values of both, once each"
        );
        let u = parse_user(&json!({"userName": "a", "manager": "m1", "department": "Ops"})).unwrap();
        assert_eq!(
            Value::Object(u.attributes),
            json!({"userName": "a", ent: {"manager": {"value": "m1"}, "department": "Ops"}})
        );
        let e = parse_user(&json!({"userName": "a", "department": "Ops", ent: {"department": "Sales"}})).unwrap_err();
        assert!(e.detail.contains("'department' is sent twice with different values"), "{}", e.detail);
        // The core schema comes first: a user's `roles` stay the user's own.
        let u = parse_user(&json!({"userName": "a", "roles": ["urn:r"]})).unwrap();
        assert_eq!(u.attributes["roles"], json!([{"value": "urn:r"}]));
    }

    #[test]
    fn group_members() {
        let g = parse_group(&json!({"displayName": "Ops", "externalId": "e1",
            "members": [{"value": "u1", "type": "User"}, {"value": "u1"}, {"value": "g2", "type": "group"}]}))
        .unwrap();
        assert_eq!(g.display_name, "Ops");
        assert_eq!(g.attributes, json!({"externalId": "e1"}).as_object().unwrap().clone());
        assert_eq!(
            g.members.unwrap(),
            vec![
                MemberRef { value: "u1".into(), member_type: Some(MemberType::User) },
                MemberRef { value: "g2".into(), member_type: Some(MemberType::Group) }
            ]
        );
        assert!(parse_group(&json!({"members": []})).unwrap_err().detail.contains("displayName"));
        assert!(parse_group(&json!({"displayName": "x", "members": [{"type": "User"}]})).is_err());
    }
}
