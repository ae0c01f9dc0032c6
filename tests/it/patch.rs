//! PATCH over HTTP: the dialects of Okta and Entra, semantic events, status codes, refusals.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::TestServer;

fn ops(list: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": list})
}

async fn patch(s: &TestServer, path: &str, list: Value) -> crate::support::Reply {
    s.send(Method::PATCH, path, Some(&ops(list)), &[]).await
}

const MANAGER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager";

#[tokio::test]
async fn user_patch_answers_200_with_the_resource() {
    let s = TestServer::start().await;
    let id = s.post("/Users", &json!({"userName": "p1", "name": {"givenName": "A"}})).await.id();
    let path = format!("/Users/{id}");
    let r = patch(
        &s,
        &path,
        json!([{"op": "Replace", "value": {"active": "False", "name.familyName": "B", "Title": "Eng"}}]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["active"], false);
    assert_eq!(r.body["name"], json!({"givenName": "A", "familyName": "B"}));
    assert_eq!(r.body["title"], "Eng");
    assert_eq!(r.body["meta"]["version"], "W/\"3\"", "user.updated then user.deactivated");

    // Entra manager: add as a string, replace, clear.
    let m1 = s.post("/Users", &json!({"userName": "boss1"})).await.id();
    let m2 = s.post("/Users", &json!({"userName": "boss2"})).await.id();
    let r = patch(&s, &path, json!([{"op": "Add", "path": MANAGER, "value": m1}])).await;
    assert_eq!(r.body["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"], m1.as_str());
    assert!(r.body["schemas"]
        .as_array()
        .unwrap()
        .contains(&json!("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User")));
    let r = patch(&s, &path, json!([{"op": "Replace", "path": MANAGER, "value": {"value": m2}}])).await;
    assert_eq!(r.body["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"], m2.as_str());
    let r = patch(&s, &path, json!([{"op": "Remove", "path": MANAGER}])).await;
    assert!(r.body.get("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User").is_none(), "{}", r.body);

    // The work email is created by a value-path replace when missing.
    let r =
        patch(&s, &path, json!([{"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "p1@work.com"}]))
            .await;
    assert_eq!(r.body["emails"], json!([{"type": "work", "value": "p1@work.com"}]));
    let found = s.get("/Users?filter=emails.value%20eq%20%22P1%40work.com%22").await;
    assert_eq!(found.body["totalResults"], 1, "the email index follows PATCH");
}

#[tokio::test]
async fn group_patch_member_operations_are_per_member_events() {
    let s = TestServer::start().await;
    let mut users = Vec::new();
    for i in 0..5 {
        users.push(s.post("/Users", &json!({"userName": format!("m{i}")})).await.id());
    }
    let gid = s.post("/Groups", &json!({"displayName": "Push"})).await.id();
    let path = format!("/Groups/{gid}");
    let position = s.log_position().await;

    let add: Vec<Value> = users.iter().map(|u| json!({"value": u})).collect();
    let r = patch(&s, &path, json!([{"op": "add", "path": "members", "value": add}])).await;
    assert_eq!(r.status, 204, "group PATCH without attributes answers 204");
    assert_eq!(r.header("etag"), Some("W/\"6\""));
    assert_eq!(s.log_position().await, position + 5);

    // Okta removal by value filter; Entra removal by value list; both only touch those named.
    let r = patch(&s, &path, json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", users[0])}])).await;
    assert_eq!(r.status, 204);
    let r = patch(
        &s,
        &path,
        json!([{"op": "Remove", "path": "members", "value": [{"value": users[1]}, {"value": users[2]}]}]),
    )
    .await;
    assert_eq!(r.status, 204);
    let body = s.get(&path).await.body;
    let left: Vec<&str> = body["members"].as_array().unwrap().iter().map(|m| m["value"].as_str().unwrap()).collect();
    assert_eq!(left, [users[3].as_str(), users[4].as_str()]);
    assert_eq!(s.log_position().await, position + 8);

    // Adding someone already there, or removing someone absent, writes nothing.
    patch(&s, &path, json!([{"op": "add", "path": "members", "value": [{"value": users[3]}]}])).await;
    patch(&s, &path, json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", users[0])}])).await;
    assert_eq!(s.log_position().await, position + 8);

    // Asking for attributes gets a 200 with the resource.
    let r = s
        .send(
            Method::PATCH,
            &format!("{path}?excludedAttributes=members"),
            Some(&ops(json!([{"op": "replace", "path": "displayName", "value": "Pushed"}]))),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["displayName"], "Pushed");
    assert!(r.body.get("members").is_none());

    // Remove with no value removes everyone.
    patch(&s, &path, json!([{"op": "remove", "path": "members"}])).await;
    assert!(s.get(&path).await.body.get("members").is_none());
    assert!(s.get(&format!("/Users/{}", users[3])).await.body.get("groups").is_none());
}

#[tokio::test]
async fn many_member_operations_in_one_patch() {
    let s = TestServer::start().await;
    let gid = s.post("/Groups", &json!({"displayName": "Big"})).await.id();
    let mut ops_list = Vec::new();
    let mut ids = Vec::new();
    for i in 0..300 {
        let id = s.post("/Users", &json!({"userName": format!("big{i}")})).await.id();
        ops_list.push(json!({"op": "add", "path": "members", "value": [{"value": id}]}));
        ids.push(id);
    }
    ops_list.push(json!({"op": "remove", "path": format!("members[value eq \"{}\"]", ids[0])}));
    let r = patch(&s, &format!("/Groups/{gid}"), Value::Array(ops_list)).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let g = s.get(&format!("/Groups/{gid}")).await.body;
    assert_eq!(g["members"].as_array().unwrap().len(), 299);
    let by_member = s.get(&format!("/Groups?filter=members.value%20eq%20%22{}%22", ids[299])).await;
    assert_eq!(by_member.body["totalResults"], 1);
}

#[tokio::test]
async fn patch_refusals_write_nothing() {
    let s = TestServer::start().await;
    let id = s.post("/Users", &json!({"userName": "r1"})).await.id();
    s.post("/Users", &json!({"userName": "taken"})).await;
    let gid = s.post("/Groups", &json!({"displayName": "G"})).await.id();
    let before = s.log_position().await;
    let user = format!("/Users/{id}");
    let group = format!("/Groups/{gid}");
    patch(&s, &user, json!([])).await.assert_error(400, Some("invalidSyntax"), "empty");
    patch(&s, &user, json!([{"op": "replace", "path": "groups", "value": []}])).await.assert_error(
        400,
        Some("mutability"),
        "groups",
    );
    patch(&s, &user, json!([{"op": "replace", "path": "bogus", "value": 1}])).await.assert_error(
        400,
        Some("invalidPath"),
        "bogus",
    );
    // RFC 7644 §3.5.2.2: unassigning a required attribute is `mutability`.
    patch(&s, &user, json!([{"op": "replace", "path": "userName", "value": ""}])).await.assert_error(
        400,
        Some("mutability"),
        "userName",
    );
    patch(&s, &user, json!([{"op": "replace", "path": "userName", "value": "TAKEN"}])).await.assert_error(
        409,
        Some("uniqueness"),
        "TAKEN",
    );
    patch(&s, &user, json!([{"op": "replace", "path": "active", "value": "maybe"}])).await.assert_error(
        400,
        Some("invalidValue"),
        "maybe",
    );
    patch(&s, &user, json!([{"op": "remove"}])).await.assert_error(400, Some("noTarget"), "path");
    patch(&s, "/Users/nope", json!([{"op": "replace", "value": {"active": false}}]))
        .await
        .assert_error(404, None, "nope");
    patch(&s, &group, json!([{"op": "add", "path": "members[value eq \"x\"]", "value": []}])).await.assert_error(
        400,
        Some("invalidPath"),
        "remove",
    );
    let stale = s
        .send(
            Method::PATCH,
            &user,
            Some(&ops(json!([{"op": "replace", "value": {"title": "x"}}]))),
            &[("if-match", "W/\"9\"")],
        )
        .await;
    stale.assert_error(412, None, "W/\"1\"");
    // A failing operation anywhere in the list leaves the earlier ones unapplied too.
    patch(
        &s,
        &user,
        json!([{"op": "replace", "path": "title", "value": "x"}, {"op": "replace", "path": "id", "value": "y"}]),
    )
    .await
    .assert_error(400, Some("mutability"), "id");
    assert!(s.get(&user).await.body.get("title").is_none());
    assert_eq!(s.log_position().await, before, "no refused PATCH wrote anything");
}
