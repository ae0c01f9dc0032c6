//! Read models rendered as SCIM JSON.

use chrono::SecondsFormat;
use scimlog_projections::{query, GroupDoc, KvRead, StoredUser, UserDoc};
use scimlog_schemas::registry::registry;
use scimlog_schemas::{urn, MemberType, ResourceKind};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::extract::Projection;
use crate::config::GrantShape;

/// A rendered resource: its JSON text, which goes into a response as it is.
#[derive(Debug)]
pub struct Rendered(Vec<u8>);

impl Rendered {
    pub fn of(v: &Value) -> Rendered {
        Rendered(serde_json::to_vec(v).expect("JSON values serialise"))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A resource's `meta`, its keys in the order of the struct.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    resource_type: &'static str,
    created: String,
    last_modified: String,
    location: String,
    version: String,
}

/// `created` and `last_modified` as shown: with milliseconds.
fn meta(base: &str, kind: ResourceKind, id: &str, created: String, last_modified: String, version: u64) -> Meta {
    Meta {
        resource_type: kind.as_str(),
        created,
        last_modified,
        location: location(base, kind, id),
        version: format!("W/\"{version}\""),
    }
}

/// A decoded document's `meta` as a `Value` (what a built answer holds).
fn meta_value(
    base: &str,
    kind: ResourceKind,
    id: &str,
    created: &chrono::DateTime<chrono::Utc>,
    modified: &chrono::DateTime<chrono::Utc>,
    version: u64,
) -> Value {
    let millis = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let meta = meta(base, kind, id, millis(created), millis(modified), version);
    serde_json::to_value(meta).expect("meta serialises")
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

/// A user as SCIM JSON, with its version, from its stored document (`query::user_bytes`);
/// `None` if the bytes are not a user document. `group_name` names each of the user's groups
/// (`None`: the group is gone, and left out).
pub fn user(
    kv: &impl KvRead,
    t: &str,
    base: &str,
    stored: &[u8],
    proj: &Projection,
    shape: GrantShape,
    group_name: impl Fn(&str) -> Option<String>,
) -> Option<(Rendered, u64)> {
    let groups = |id: &str| {
        query::groups_of(kv, t, MemberType::User, id, usize::MAX)
            .into_iter()
            .filter_map(|g| group_name(&g).map(|name| (g, name)))
            .map(|(g, name)| {
                let reference = location(base, ResourceKind::Group, &g);
                json!({"value": g, "$ref": reference, "display": name, "type": "direct"})
            })
            .collect()
    };
    user_from(base, stored, proj, shape, groups)
}

/// A user just created: no group can name it yet (a member that names no resource is
/// skipped), so its groups are not read.
pub fn new_user(base: &str, stored: &[u8], proj: &Projection, shape: GrantShape) -> Option<(Rendered, u64)> {
    user_from(base, stored, proj, shape, |_| Vec::new())
}

/// Without a projection, and unless the grants are reshaped, the stored attributes are copied
/// into the answer as the text they are stored as ([`copied`]); otherwise the document is decoded
/// and built as a `Value` ([`built`]). Both give the same bytes (`tests::a_copied_user_is_the_built_one`).
fn user_from(
    base: &str,
    stored: &[u8],
    proj: &Projection,
    shape: GrantShape,
    groups: impl FnOnce(&str) -> Vec<Value>,
) -> Option<(Rendered, u64)> {
    let doc = if proj.is_default() {
        let doc: StoredUser<'_> = serde_json::from_slice(stored).ok()?;
        if copies_as_stored(&doc, shape) {
            let version = doc.version;
            return Some((copied(base, doc, groups), version));
        }
        // Parsed once: its attributes are decoded from the texts already found.
        doc.decode().ok()?
    } else {
        serde_json::from_slice::<UserDoc>(stored).ok()?
    };
    let version = doc.version;
    Some((Rendered::of(&built(base, doc, proj, shape, groups)), version))
}

/// For the micro-benchmarks (`scimlog::http::render_stored_user`): a stored user as a GET
/// without a projection answers it, with no groups, copied from its text or built as a `Value`.
pub fn stored_user_text(base: &str, stored: &[u8], copy: bool) -> Option<Vec<u8>> {
    let proj = Projection::default();
    if copy {
        return user_from(base, stored, &proj, GrantShape::Objects, |_| Vec::new()).map(|(r, _)| r.0);
    }
    let doc: UserDoc = serde_json::from_slice(stored).ok()?;
    Some(Rendered::of(&built(base, doc, &proj, GrantShape::Objects, |_| Vec::new())).0)
}

/// Whether the stored attributes go into the answer as they are: none is a key the answer sets
/// itself (never stored: `UserInput` leaves them out), and no grant is to be reshaped.
fn copies_as_stored(doc: &StoredUser<'_>, shape: GrantShape) -> bool {
    doc.attributes.iter().all(|(k, _)| match k.as_ref() {
        "schemas" | "id" | "active" | "groups" | "meta" => false,
        "roles" | "entitlements" | urn::GROUP_ACCESS => shape == GrantShape::Objects,
        _ => true,
    })
}

/// The answer written out from the stored text, key by key as [`built`] orders them: schemas,
/// id, the attributes, active, groups, meta.
fn copied(base: &str, doc: StoredUser<'_>, groups: impl FnOnce(&str) -> Vec<Value>) -> Rendered {
    let text = |out: &mut Vec<u8>, s: &str| serde_json::to_writer(out, s).expect("strings serialise");
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"schemas\":[");
    text(&mut out, urn::USER);
    for (k, _) in doc.attributes.iter().filter(|(k, _)| k.starts_with("urn:")) {
        out.push(b',');
        text(&mut out, k);
    }
    out.extend_from_slice(b"],\"id\":");
    text(&mut out, &doc.id);
    for (k, v) in &doc.attributes {
        // An extension with nothing in it is not shown, as `Projection::apply` leaves it out.
        if k.starts_with("urn:") && v.get() == "{}" {
            continue;
        }
        out.push(b',');
        text(&mut out, k);
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    match doc.active {
        Some(true) => out.extend_from_slice(b",\"active\":true"),
        Some(false) => out.extend_from_slice(b",\"active\":false"),
        None => {}
    }
    let groups = groups(&doc.id);
    if !groups.is_empty() {
        out.extend_from_slice(b",\"groups\":");
        serde_json::to_writer(&mut out, &groups).expect("JSON values serialise");
    }
    out.extend_from_slice(b",\"meta\":");
    let meta = meta(base, ResourceKind::User, &doc.id, doc.created.millis(), doc.last_modified.millis(), doc.version);
    serde_json::to_writer(&mut out, &meta).expect("meta serialises");
    out.push(b'}');
    Rendered(out)
}

/// The answer built as a `Value`, for projections and reshaped grants. The document is taken,
/// not borrowed: its attributes move into the answer instead of being copied.
fn built(
    base: &str,
    doc: UserDoc,
    proj: &Projection,
    shape: GrantShape,
    groups: impl FnOnce(&str) -> Vec<Value>,
) -> Value {
    let schemas = doc.schemas();
    let meta = meta_value(base, ResourceKind::User, &doc.id, &doc.created, &doc.last_modified, doc.version);
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
    let meta = meta_value(base, ResourceKind::Group, &doc.id, &doc.created, &doc.last_modified, doc.version);
    m.insert("meta".into(), meta);
    shape_grants(&mut m, shape);
    proj.apply(&registry().group, Value::Object(m))
}

/// An RFC 9865 page: `nextCursor` while there is more, no `startIndex`.
pub fn cursor_list_response(total: usize, resources: Vec<Rendered>, next_cursor: Option<String>) -> Rendered {
    let mut head = json!({
        "schemas": [urn::LIST_RESPONSE],
        "totalResults": total,
        "itemsPerPage": resources.len(),
    });
    if let Some(c) = next_cursor {
        head["nextCursor"] = Value::String(c);
    }
    page(&head, resources)
}

/// A ListResponse page.
pub fn list_response(total: usize, start_index: usize, resources: Vec<Rendered>) -> Rendered {
    let head = json!({
        "schemas": [urn::LIST_RESPONSE],
        "totalResults": total,
        "startIndex": start_index,
        "itemsPerPage": resources.len(),
    });
    page(&head, resources)
}

/// A page's counts (`head`), then its resources as their text: they are never decoded or
/// copied into a `Value` again.
fn page(head: &Value, resources: Vec<Rendered>) -> Rendered {
    let mut out = Vec::with_capacity(256 + resources.iter().map(|r| r.0.len() + 1).sum::<usize>());
    serde_json::to_writer(&mut out, head).expect("JSON values serialise");
    // The head's closing brace: the resources go after its counts.
    out.pop();
    out.extend_from_slice(b",\"Resources\":[");
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&r.0);
    }
    out.extend_from_slice(b"]}");
    Rendered(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(items: &[Value]) -> Vec<Rendered> {
        items.iter().map(Rendered::of).collect()
    }

    fn shown(r: &Rendered) -> &str {
        std::str::from_utf8(r.as_bytes()).unwrap()
    }

    /// A page is the RFC's ListResponse, its keys in the order clients have always seen, with
    /// the resources as given.
    #[test]
    fn a_list_response_holds_its_resources_after_the_counts() {
        let two = [json!({"id": "a"}), json!({"id": "b", "x": [1, {"y": "\u{e9}\""}]})];
        let cases = [
            (
                list_response(7, 3, texts(&two)),
                r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":7,"startIndex":3,"itemsPerPage":2,"Resources":[{"id":"a"},{"id":"b","x":[1,{"y":"é\""}]}]}"#,
            ),
            (
                list_response(0, 1, Vec::new()),
                r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":0,"startIndex":1,"itemsPerPage":0,"Resources":[]}"#,
            ),
            (
                cursor_list_response(9, texts(&two[..1]), Some("c2".into())),
                r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":9,"itemsPerPage":1,"nextCursor":"c2","Resources":[{"id":"a"}]}"#,
            ),
            (
                cursor_list_response(1, texts(&two[..1]), None),
                r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":1,"itemsPerPage":1,"Resources":[{"id":"a"}]}"#,
            ),
        ];
        for (page, expected) in &cases {
            assert_eq!(shown(page), *expected);
            serde_json::from_slice::<Value>(page.as_bytes()).expect("a page is JSON");
        }
    }

    /// A user copied from its stored text is, byte for byte, the user built as a `Value` (what
    /// every answer was before), whatever the attributes hold; and a stored user the copy cannot
    /// render as it is (a grant to reshape) is built.
    #[test]
    fn a_copied_user_is_the_built_one() {
        use chrono::{DateTime, Utc};
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        let attributes = [
            json!({"userName": "a@x.org"}),
            json!({}),
            json!({"userName": "\"quoted\" \\ back\u{1}slash\u{2028} é ✓ 😀", "displayName": "Zoë </script>"}),
            json!({"userName": "n", "x": [1.5, 1e300, -0.0, 0.1, 18446744073709551615u64, -9223372036854775808i64, null, true]}),
            json!({"userName": "e", "emails": [{"value": "e@x.org", "primary": true}], "name": {"givenName": "E", "familyName": ""}}),
            json!({"userName": "x", ent: {"employeeNumber": "7", "manager": {"value": "m"}}}),
            json!({"userName": "y", ent: {}}),
            json!({"userName": "z", "urn:other:ext": {}, ent: {"department": "R&D"}, "title": "after"}),
            json!({"userName": "r", "roles": [{"value": "urn:scimlog:role:environment:prod:admin"}], "entitlements": []}),
            json!({"userName": "k", "a\"key\u{7}": "odd key"}),
        ];
        let groups = [
            vec![],
            vec![
                json!({"value": "g1", "$ref": "https://h/scim/v2/Groups/g1", "display": "Ünï \"1\"", "type": "direct"}),
            ],
        ];
        for (i, attrs) in attributes.iter().enumerate() {
            for active in [None, Some(true), Some(false)] {
                for g in &groups {
                    let doc = UserDoc {
                        id: format!("0193-{i}"),
                        version: 3 + i as u64,
                        created: at("2026-12-06T12:00:00.123456789Z"),
                        last_modified: at("2026-12-07T01:02:03Z"),
                        active,
                        attributes: attrs.as_object().cloned().unwrap(),
                    };
                    let stored = serde_json::to_vec(&doc).unwrap();
                    let proj = Projection::default();
                    let expected =
                        Rendered::of(&built("https://h/scim/v2", doc.clone(), &proj, GrantShape::Objects, |_| {
                            g.clone()
                        }));
                    let stored_user: StoredUser<'_> = serde_json::from_slice(&stored).unwrap();
                    assert!(copies_as_stored(&stored_user, GrantShape::Objects), "{attrs}");
                    let has_grants = ["roles", "entitlements"].iter().any(|k| attrs.get(k).is_some());
                    assert_eq!(copies_as_stored(&stored_user, GrantShape::Strings), !has_grants, "{attrs}");
                    let copied = copied("https://h/scim/v2", stored_user, |_| g.clone());
                    assert_eq!(shown(&copied), shown(&expected), "stored: {}", String::from_utf8_lossy(&stored));
                    let (answer, version) =
                        user_from("https://h/scim/v2", &stored, &proj, GrantShape::Objects, |_| g.clone()).unwrap();
                    assert_eq!((shown(&answer), version), (shown(&expected), doc.version));
                    // Okta's shape: a user with grants is built (its roles become strings).
                    let strings =
                        Rendered::of(&built("https://h/scim/v2", doc.clone(), &proj, GrantShape::Strings, |_| {
                            g.clone()
                        }));
                    let (answer, _) =
                        user_from("https://h/scim/v2", &stored, &proj, GrantShape::Strings, |_| g.clone()).unwrap();
                    assert_eq!(shown(&answer), shown(&strings));
                }
            }
        }
        // Okta's shape really reshapes (so the comparison above is not vacuous): the roles of the
        // row that has some become strings.
        let doc = UserDoc {
            id: "r".into(),
            version: 1,
            created: at("2026-12-06T12:00:00Z"),
            last_modified: at("2026-12-06T12:00:00Z"),
            active: None,
            attributes: attributes[8].as_object().cloned().unwrap(),
        };
        let stored = serde_json::to_vec(&doc).unwrap();
        let (answer, _) = user_from("h", &stored, &Projection::default(), GrantShape::Strings, |_| vec![]).unwrap();
        let answer: Value = serde_json::from_slice(answer.as_bytes()).unwrap();
        assert_eq!(answer["roles"], json!(["urn:scimlog:role:environment:prod:admin"]));
        // Not a user document: nothing, as before (a read of it answers 404).
        assert!(user_from("h", b"{\"id\":1}", &Projection::default(), GrantShape::Objects, |_| vec![]).is_none());
    }
}
