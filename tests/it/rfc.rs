//! RFC 7644 read section by section, and Testkube's documented shapes: each test is a worked
//! example a client sends.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{q, TestServer};

const GROUP_ACCESS: &str = "urn:scimlog:params:scim:schemas:extension:access:2.0:Group";

async fn check(s: &TestServer, user: &str, role: &str, env: &str) -> bool {
    let path = format!("{}/api/v1/access/check?user={}&role={}&environment={}", s.base, q(user), q(role), q(env));
    let r = s.send(Method::GET, &path, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["allowed"].as_bool().unwrap()
}

/// Testkube documents `roles` and `entitlements` at the top level of "the resource (User or
/// Group)": on a Group they are its grants, in both shapes, on POST, PUT, PATCH and Bulk.
#[tokio::test]
async fn top_level_group_roles_are_the_groups_grants() {
    let s = TestServer::start_configured(|c| c.urn_namespace = "testkube".into()).await;
    let dev_admin = "urn:testkube:role:environment:dev:admin";
    let u = s.post("/Users", &json!({"userName": "member"})).await.id();
    // POST, strings (Okta's shape).
    let g =
        s.post("/Groups", &json!({"displayName": "dev-admins", "roles": [dev_admin], "members": [{"value": u}]})).await;
    assert_eq!(g.status, 201, "{}", g.body);
    assert_eq!(g.body[GROUP_ACCESS]["roles"], json!([{"value": dev_admin}]), "{}", g.body);
    assert!(check(&s, &u, "admin", "dev").await, "the group's role reaches its member");
    let envs = s.send(Method::GET, &format!("{}/api/v1/environments", s.base), None, &[]).await.body;
    assert_eq!(envs["Resources"][0]["slug"], "dev", "the environment came into being");
    let gid = g.id();

    // PUT, objects (Entra's shape): the role moves to another environment.
    let r = s
        .put(
            &format!("/Groups/{gid}"),
            &json!({"displayName": "dev-admins", "roles": [{"value": "urn:testkube:role:environment:qa:admin"}], "members": [{"value": u}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!check(&s, &u, "admin", "dev").await);
    assert!(check(&s, &u, "admin", "qa").await);

    // PATCH with a bare path, then a path-less value.
    let patch = json!({"Operations": [{"op": "add", "path": "entitlements", "value": ["urn:testkube:entitlement:environment:staging"]},
                                      {"op": "remove", "path": "roles"}]});
    let r = s.send(Method::PATCH, &format!("/Groups/{gid}?excludedAttributes=members"), Some(&patch), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body[GROUP_ACCESS],
        json!({"entitlements": [{"value": "urn:testkube:entitlement:environment:staging"}]})
    );
    assert!(!check(&s, &u, "admin", "qa").await);

    // Bulk.
    let bulk = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": [
        {"method": "POST", "path": "/Groups", "bulkId": "g", "data": {"displayName": "prod-viewers", "roles": ["urn:testkube:role:environment:prod:viewer"], "members": [{"value": u}]}}
    ]});
    let r = s.post("/Bulk", &bulk).await;
    assert_eq!(r.body["Operations"][0]["status"], "201", "{}", r.body);
    assert!(check(&s, &u, "viewer", "prod").await);

    // A malformed grant is refused and nothing is written, as in the extension.
    let before = s.log_position().await;
    let bad =
        s.post("/Groups", &json!({"displayName": "bad", "roles": ["urn:testkube:role:planet:earth:admin"]})).await;
    bad.assert_error(400, Some("invalidValue"), "urn:testkube:role:planet:earth:admin");
    assert_eq!(s.log_position().await, before);
    s.stop().await;
}

/// RFC 7644 §3.9: `attributes` and `excludedAttributes` shape every response that returns a
/// resource: POST, PUT and PATCH as well as GET.
#[tokio::test]
async fn attributes_apply_to_write_responses() {
    let s = TestServer::start().await;
    let body = json!({"userName": "shaped", "title": "Eng", "name": {"givenName": "Sha", "familyName": "Ped"}});
    let created = s.send(Method::POST, "/Users?attributes=userName,name.givenName", Some(&body), &[]).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["userName"], "shaped");
    assert_eq!(created.body["name"], json!({"givenName": "Sha"}));
    assert!(created.body.get("title").is_none() && created.body.get("meta").is_none(), "{}", created.body);
    assert!(created.body["id"].is_string(), "id is always returned");
    let id = created.id();

    let put = s.send(Method::PUT, &format!("/Users/{id}?excludedAttributes=name,meta"), Some(&body), &[]).await;
    assert_eq!(put.status, 200);
    assert!(put.body.get("name").is_none() && put.body.get("meta").is_none(), "{}", put.body);
    assert_eq!(put.body["title"], "Eng");

    let patch = json!({"Operations": [{"op": "replace", "path": "title", "value": "Lead"}]});
    let r = s.send(Method::PATCH, &format!("/Users/{id}?attributes=title"), Some(&patch), &[]).await;
    assert_eq!(r.status, 200);
    let mut keys: Vec<&String> = r.body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["id", "schemas", "title"], "{}", r.body);
    s.stop().await;
}

/// RFC 7644 §3.5.2.2 and §3.12: removing a required attribute, or writing a readOnly one, is
/// 400 `mutability`, and nothing is written.
#[tokio::test]
async fn patch_errors_use_the_rfcs_scim_types() {
    let s = TestServer::start().await;
    let u = s.post("/Users", &json!({"userName": "keeps.name"})).await.id();
    let g = s.post("/Groups", &json!({"displayName": "Keeps"})).await.id();
    let before = s.log_position().await;
    let table: Vec<(String, Value, &str, &str)> = vec![
        (
            format!("/Users/{u}"),
            json!([{"op": "remove", "path": "userName"}]),
            "mutability",
            "\"userName\" is required",
        ),
        (
            format!("/Users/{u}"),
            json!([{"op": "replace", "path": "userName", "value": ""}]),
            "mutability",
            "\"userName\" is required",
        ),
        (format!("/Users/{u}"), json!([{"op": "replace", "path": "id", "value": "mine"}]), "mutability", "readOnly"),
        (
            format!("/Users/{u}"),
            json!([{"op": "add", "path": "groups", "value": [{"value": g}]}]),
            "mutability",
            "readOnly",
        ),
        (
            format!("/Groups/{g}"),
            json!([{"op": "remove", "path": "displayName"}]),
            "mutability",
            "\"displayName\" is required",
        ),
        (
            format!("/Users/{u}"),
            json!([{"op": "remove", "path": "nickName[value eq \"x\"]"}]),
            "invalidPath",
            "nickName",
        ),
        (
            format!("/Users/{u}"),
            json!([{"op": "replace", "path": "emails[type eq \"work\" or type eq \"home\"]", "value": {"value": "a@x"}}]),
            "noTarget",
            "emails",
        ),
    ];
    for (path, ops, scim_type, detail) in table {
        let r = s.send(Method::PATCH, &path, Some(&json!({"Operations": ops})), &[]).await;
        r.assert_error(400, Some(scim_type), detail);
    }
    assert_eq!(s.log_position().await, before, "nothing was written");
    s.stop().await;
}

/// draft-ietf-scim-roles-entitlements: `/Roles` and `/Entitlements` list what users and groups
/// hold, with counts of direct holders, filtered, sorted and paged like any list; a grant nobody
/// holds any more is no longer listed; ServiceProviderConfig advertises both.
#[tokio::test]
async fn roles_and_entitlements_list_what_the_directory_knows() {
    let s = TestServer::start().await;
    let prod_admin = "urn:scimlog:role:environment:prod:admin";
    let all_viewer = "urn:scimlog:role:organization:*:viewer";
    let staging = "urn:scimlog:entitlement:environment:staging";
    let a = s
        .post("/Users", &json!({"userName": "a", "roles": [prod_admin, all_viewer], "entitlements": [staging]}))
        .await
        .id();
    s.post("/Users", &json!({"userName": "b", "roles": [prod_admin, "Employee"]})).await;
    s.post("/Groups", &json!({"displayName": "admins", GROUP_ACCESS: {"roles": [prod_admin]}})).await;

    let roles = s.get("/Roles?sortBy=value").await;
    assert_eq!(roles.status, 200, "{}", roles.body);
    assert_eq!(roles.body["totalResults"], 2, "plain values that are not URNs are not roles: {}", roles.body);
    let holders = "urn:scimlog:params:scim:schemas:extension:holders:2.0:Grant";
    let first = &roles.body["Resources"][0];
    assert_eq!(first["value"], prod_admin);
    assert_eq!(first["id"], prod_admin);
    assert_eq!(first["display"], "admin in environment prod");
    assert_eq!(first["type"], "environment");
    assert_eq!(first["supported"], true);
    assert_eq!(first[holders], json!({"users": 2, "groups": 1}));
    assert_eq!(roles.body["Resources"][1]["display"], "viewer in every organization");

    let one = s.get(&format!("/Roles/{prod_admin}")).await;
    assert_eq!(one.body["meta"]["resourceType"], "Role");
    let filtered = s.get(&format!("/Roles?filter={}", q("type eq \"organization\""))).await;
    assert_eq!(filtered.body["totalResults"], 1);
    assert_eq!(filtered.body["Resources"][0]["value"], all_viewer);
    let paged = s.get("/Roles?sortBy=value&sortOrder=descending&startIndex=2&count=1&attributes=value").await;
    assert_eq!(
        paged.body["Resources"],
        json!([{"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Role", holders], "id": prod_admin, "value": prod_admin}])
    );
    s.get(&format!("/Roles?filter={}", q("supported gt true"))).await.assert_error(
        400,
        Some("invalidFilter"),
        "supported",
    );

    let ents = s.get("/Entitlements").await;
    assert_eq!(ents.body["totalResults"], 1);
    assert_eq!(ents.body["Resources"][0]["display"], "environment staging");
    assert_eq!(ents.body["Resources"][0][holders]["users"], 1);

    // Revoked everywhere: no longer known.
    s.put(&format!("/Users/{a}"), &json!({"userName": "a", "roles": [prod_admin]})).await;
    let roles = s.get("/Roles").await;
    assert_eq!(roles.body["totalResults"], 1);
    s.get(&format!("/Roles/{all_viewer}")).await.assert_error(404, None, all_viewer);
    assert_eq!(s.get("/Entitlements").await.body["totalResults"], 0);
    let r = s.send(Method::POST, "/Roles", Some(&json!({"value": "x"})), &[]).await;
    assert_eq!(r.status, 405);

    let spc = s.get("/ServiceProviderConfig").await.body;
    assert_eq!(spc["RolesAndEntitlements"]["roles"]["supported"], true);
    assert_eq!(spc["RolesAndEntitlements"]["entitlements"]["supported"], true);
    let rt = s.get("/ResourceTypes/Role").await.body;
    assert_eq!(rt["endpoint"], "/Roles");
    s.stop().await;
}
