//! Table-driven PATCH tests: a resource, the operations (as an IdP sends them), the result.

use serde_json::{json, Value};

use super::*;
use crate::registry::registry;

const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

fn run(schema: &ResourceSchema, doc: Value, ops: Value) -> Result<Value, SchemaError> {
    let body = json!({"schemas": [urn::PATCH_OP], "Operations": ops});
    let ops = parse_patch(&body, FilterLimits::default(), 100)?;
    let mut map = doc.as_object().unwrap().clone();
    for op in &ops {
        apply(schema, &mut map, op)?;
    }
    Ok(Value::Object(map))
}

#[test]
fn user_patch_table() {
    let base = json!({
        "userName": "bjensen", "active": true,
        "name": {"givenName": "Barbara", "familyName": "Jensen"},
        "emails": [{"value": "b@home.org", "type": "home"}],
    });
    // (what, ops, expected document)
    let table: Vec<(&str, Value, Value)> = vec![
        (
            "okta path-less replace active",
            json!([{"op": "replace", "value": {"active": false}}]),
            json!({"userName": "bjensen", "active": false, "name": {"givenName": "Barbara", "familyName": "Jensen"}, "emails": [{"value": "b@home.org", "type": "home"}]}),
        ),
        (
            "entra capitalised ops, string boolean stays for validation",
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
            json!({"userName": "bjensen", "active": "False", "name": {"givenName": "Barbara", "familyName": "Jensen"}, "emails": [{"value": "b@home.org", "type": "home"}]}),
        ),
        (
            "entra work email created when missing",
            json!([{"op": "Add", "path": "emails[type eq \"work\"].value", "value": "b@work.com"}]),
            json!({"userName": "bjensen", "active": true, "name": {"givenName": "Barbara", "familyName": "Jensen"}, "emails": [{"value": "b@home.org", "type": "home"}, {"type": "work", "value": "b@work.com"}]}),
        ),
        (
            "value path replace on an existing element",
            json!([{"op": "replace", "path": "emails[type eq \"home\"].value", "value": "new@home.org"}]),
            json!({"userName": "bjensen", "active": true, "name": {"givenName": "Barbara", "familyName": "Jensen"}, "emails": [{"value": "new@home.org", "type": "home"}]}),
        ),
        (
            "sub-attribute and PascalCase",
            json!([{"op": "Replace", "path": "Name.FamilyName", "value": "Smith"}]),
            json!({"userName": "bjensen", "active": true, "name": {"givenName": "Barbara", "familyName": "Smith"}, "emails": [{"value": "b@home.org", "type": "home"}]}),
        ),
        (
            "path-less map with dotted and URN keys",
            json!([{"op": "Replace", "value": {"name.givenName": "Babs", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department": "Ops", "displayName": "Babs J"}}]),
            json!({"userName": "bjensen", "active": true, "name": {"givenName": "Babs", "familyName": "Jensen"}, "emails": [{"value": "b@home.org", "type": "home"}], ENT: {"department": "Ops"}, "displayName": "Babs J"}),
        ),
        (
            "entra manager add, then clear",
            json!([{"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": "m-1"},
                   {"op": "Replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": ""}]),
            json!({"userName": "bjensen", "active": true, "name": {"givenName": "Barbara", "familyName": "Jensen"}, "emails": [{"value": "b@home.org", "type": "home"}]}),
        ),
        (
            "remove a filtered element and clear with null",
            json!([{"op": "remove", "path": "emails[type eq \"home\"]"}, {"op": "replace", "path": "name", "value": null}]),
            json!({"userName": "bjensen", "active": true}),
        ),
        (
            "add to a multi-valued attribute appends, one primary",
            json!([{"op": "add", "path": "emails", "value": [{"value": "x@y", "type": "work", "primary": true}]},
                   {"op": "add", "path": "emails", "value": {"value": "z@y", "primary": true}}]),
            json!({"userName": "bjensen", "active": true, "name": {"givenName": "Barbara", "familyName": "Jensen"},
                   "emails": [{"value": "b@home.org", "type": "home"}, {"value": "x@y", "type": "work", "primary": false}, {"value": "z@y", "primary": true}]}),
        ),
        (
            "whole extension path",
            json!([{"op": "add", "path": ENT, "value": {"employeeNumber": "42"}}]),
            json!({"userName": "bjensen", "active": true, "name": {"givenName": "Barbara", "familyName": "Jensen"}, "emails": [{"value": "b@home.org", "type": "home"}], ENT: {"employeeNumber": "42"}}),
        ),
        (
            "entra's bare manager: add, replace, then remove",
            json!([{"op": "Add", "path": "manager", "value": "m-1"},
                   {"op": "Replace", "path": "manager", "value": "m-2"},
                   {"op": "Add", "path": "department", "value": "Ops"}]),
            json!({"userName": "bjensen", "active": true, "name": {"givenName": "Barbara", "familyName": "Jensen"}, "emails": [{"value": "b@home.org", "type": "home"}], ENT: {"manager": "m-2", "department": "Ops"}}),
        ),
        (
            "bare manager removed",
            json!([{"op": "Add", "path": "manager", "value": {"value": "m-1"}}, {"op": "Remove", "path": "manager"}]),
            json!({"userName": "bjensen", "active": true, "name": {"givenName": "Barbara", "familyName": "Jensen"}, "emails": [{"value": "b@home.org", "type": "home"}]}),
        ),
        (
            "path-less bare manager",
            json!([{"op": "replace", "value": {"manager": {"value": "m-3"}}}]),
            json!({"userName": "bjensen", "active": true, "name": {"givenName": "Barbara", "familyName": "Jensen"}, "emails": [{"value": "b@home.org", "type": "home"}], ENT: {"manager": {"value": "m-3"}}}),
        ),
        (
            "path-less replace ignores readOnly keys",
            json!([{"op": "replace", "value": {"id": "x", "meta": {}, "title": "Eng"}}]),
            json!({"userName": "bjensen", "active": true, "name": {"givenName": "Barbara", "familyName": "Jensen"}, "emails": [{"value": "b@home.org", "type": "home"}], "title": "Eng"}),
        ),
    ];
    for (what, ops, want) in table {
        let got = run(&registry().user, base.clone(), ops).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, want, "{what}");
    }
}

/// RFC 7644 §3.5.2.3: `replace` with a value filter replaces the matching elements, and the
/// primary flag stays on one element: the one the operation wrote when it claims it.
#[test]
fn value_filter_replace_keeps_one_primary() {
    let base = json!({"userName": "a", "addresses": [
        {"type": "work", "locality": "Paris"},
        {"type": "home", "locality": "Lyon", "primary": true},
    ]});
    let table: Vec<(&str, Value, Value)> = vec![
        (
            "replaced element claims primary: it takes the flag",
            json!([{"op": "replace", "path": "addresses[type eq \"work\"]", "value": {"type": "work", "locality": "Nice", "primary": true}}]),
            json!([{"type": "work", "locality": "Nice", "primary": true}, {"type": "home", "locality": "Lyon", "primary": false}]),
        ),
        (
            "replaced element does not claim it: the flag stays",
            json!([{"op": "replace", "path": "addresses[type eq \"work\"]", "value": {"type": "work", "locality": "Nice"}}]),
            json!([{"type": "work", "locality": "Nice"}, {"type": "home", "locality": "Lyon", "primary": true}]),
        ),
        (
            "sub-attribute primary set through a filter",
            json!([{"op": "replace", "path": "addresses[type eq \"work\"].primary", "value": true}]),
            json!([{"type": "work", "locality": "Paris", "primary": true}, {"type": "home", "locality": "Lyon", "primary": false}]),
        ),
        (
            "an added element claiming primary takes it",
            json!([{"op": "add", "path": "addresses", "value": [{"type": "other", "locality": "Rome", "primary": true}]}]),
            json!([{"type": "work", "locality": "Paris"}, {"type": "home", "locality": "Lyon", "primary": false}, {"type": "other", "locality": "Rome", "primary": true}]),
        ),
        (
            "a whole replace keeps the last claim of the new list",
            json!([{"op": "replace", "path": "addresses", "value": [{"type": "a", "primary": true}, {"type": "b", "primary": true}]}]),
            json!([{"type": "a", "primary": false}, {"type": "b", "primary": true}]),
        ),
    ];
    for (what, ops, want) in table {
        let got = run(&registry().user, base.clone(), ops).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got["addresses"], want, "{what}");
    }
}

/// Testkube's group grants at the top level of a PATCH are the access extension's.
#[test]
fn bare_group_roles_patch_the_access_extension() {
    let got = run(
        &registry().group,
        json!({"displayName": "dev"}),
        json!([{"op": "add", "path": "roles", "value": ["urn:testkube:role:environment:dev:admin"]},
               {"op": "add", "value": {"entitlements": [{"value": "urn:testkube:entitlement:environment:dev"}]}}]),
    )
    .unwrap();
    assert_eq!(
        got,
        json!({"displayName": "dev", urn::GROUP_ACCESS: {"roles": ["urn:testkube:role:environment:dev:admin"],
            "entitlements": [{"value": "urn:testkube:entitlement:environment:dev"}]}})
    );
}

#[test]
fn group_patch_leaves_members_to_the_caller_but_patches_names() {
    let got = run(
        &registry().group,
        json!({"displayName": "A"}),
        json!([{"op": "replace", "value": {"id": "g", "displayName": "B"}}, {"op": "add", "path": "externalId", "value": "e"}]),
    )
    .unwrap();
    assert_eq!(got, json!({"displayName": "B", "externalId": "e"}));
}

#[test]
fn refusals_table() {
    let table: Vec<(Value, ScimType, &str)> = vec![
        (json!({"schemas": [urn::PATCH_OP], "Operations": []}), ScimType::InvalidSyntax, "empty"),
        (json!({"schemas": ["urn:x"], "Operations": [{"op": "add", "value": {}}]}), ScimType::InvalidSyntax, "urn:x"),
        (json!({"Operations": [{"op": "move", "path": "a"}]}), ScimType::InvalidSyntax, "\"move\""),
        (json!({"Operations": [{"op": "remove"}]}), ScimType::NoTarget, "needs a 'path'"),
        (json!({"Operations": [{"op": "add", "value": "x"}]}), ScimType::InvalidValue, "object value"),
        (
            json!({"Operations": [{"op": "add", "path": "emails[type eq", "value": "x"}]}),
            ScimType::InvalidPath,
            "'[' without ']'",
        ),
        (
            json!({"Operations": [{"op": "add", "path": "emails[type zz \"a\"]", "value": "x"}]}),
            ScimType::InvalidPath,
            "\"zz\"",
        ),
    ];
    for (body, t, detail) in table {
        let e = parse_patch(&body, FilterLimits::default(), 100).expect_err(&body.to_string());
        assert_eq!(e.scim_type, t, "{body}");
        assert!(e.detail.contains(detail), "{body}: {}", e.detail);
    }
    let too_many = json!({"Operations": vec![json!({"op": "add", "path": "title", "value": "x"}); 3]});
    assert_eq!(parse_patch(&too_many, FilterLimits::default(), 2).unwrap_err().scim_type, ScimType::TooMany);

    let doc = json!({"userName": "a"});
    let cases: Vec<(Value, ScimType, &str)> = vec![
        (json!([{"op": "replace", "path": "groups", "value": []}]), ScimType::Mutability, "readOnly"),
        (json!([{"op": "replace", "path": "id", "value": "x"}]), ScimType::Mutability, "readOnly"),
        (json!([{"op": "replace", "path": "nonsense", "value": "x"}]), ScimType::InvalidPath, "nonsense"),
        // RFC 7644 §3.5.2.2: a required attribute cannot be removed or unassigned.
        (json!([{"op": "remove", "path": "userName"}]), ScimType::Mutability, "\"userName\" is required"),
        (json!([{"op": "replace", "path": "USERNAME", "value": ""}]), ScimType::Mutability, "\"userName\" is required"),
        (json!([{"op": "replace", "path": "userName", "value": null}]), ScimType::Mutability, "required"),
        (
            json!([{"op": "replace", "path": "title[value eq \"x\"]", "value": "x"}]),
            ScimType::InvalidPath,
            "multi-valued complex",
        ),
        (json!([{"op": "add", "path": "emails[value co \"x\"]", "value": "x"}]), ScimType::NoTarget, "how to create"),
    ];
    for (ops, t, detail) in cases {
        let e = run(&registry().user, doc.clone(), ops.clone()).expect_err(&ops.to_string());
        assert_eq!(e.scim_type, t, "{ops}");
        assert!(e.detail.contains(detail), "{ops}: {}", e.detail);
    }
}
