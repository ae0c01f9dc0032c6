//! Users over HTTP: create, read, replace, delete, list and filter; restart persistence;
//! uniqueness under concurrency.

use reqwest::Method;
use serde_json::json;

use crate::support::{q, TestServer};

fn alice() -> serde_json::Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "alice@example.com",
        "name": {"givenName": "Alice", "familyName": "Liddell"},
        "emails": [{"value": "alice@example.com", "type": "work", "primary": true}],
        "externalId": "ext-alice",
        "password": "s3cret-Password",
        "active": true
    })
}

#[tokio::test]
async fn user_crud_round_trip() {
    let s = TestServer::start().await;
    let created = s.post("/Users", &alice()).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.id();
    let location = created.header("location").unwrap().to_string();
    assert_eq!(location, s.url(&format!("/Users/{id}")));
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    assert_eq!(created.header("content-type"), Some("application/scim+json"));
    let b = &created.body;
    assert_eq!(b["userName"], "alice@example.com");
    assert_eq!(b["name"]["givenName"], "Alice");
    assert_eq!(b["active"], true);
    assert!(b.get("password").is_none(), "password is never returned");
    assert_eq!(b["meta"]["resourceType"], "User");
    assert_eq!(b["meta"]["version"], "W/\"1\"");
    assert_eq!(b["meta"]["location"], location.as_str());
    assert!(b["meta"]["created"].as_str().unwrap().ends_with('Z'));

    let got = s.get(&format!("/Users/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, created.body);

    // PUT replaces: title added, name.familyName changed, emails removed, deactivated.
    let put = s
        .put(
            &format!("/Users/{id}"),
            &json!({"userName": "alice@example.com", "title": "CTO", "name": {"givenName": "Alice"}, "active": false}),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.body["title"], "CTO");
    assert_eq!(put.body["active"], false);
    assert!(put.body.get("emails").is_none());
    assert_eq!(put.body["meta"]["version"], "W/\"3\"", "user.updated + user.deactivated");
    assert_eq!(put.header("etag"), Some("W/\"3\""));

    // Inactive users stay readable and filterable.
    let list = s.get(&format!("/Users?filter={}", q("active eq false"))).await;
    assert_eq!(list.body["totalResults"], 1);

    let del = s.delete(&format!("/Users/{id}")).await;
    assert_eq!(del.status, 204);
    s.get(&format!("/Users/{id}")).await.assert_error(404, None, &id);
    s.delete(&format!("/Users/{id}")).await.assert_error(404, None, &id);
}

#[tokio::test]
async fn filter_by_user_name_is_case_insensitive_and_lists_have_integer_counts() {
    let s = TestServer::start().await;
    s.post("/Users", &alice()).await;
    s.post("/Users", &json!({"userName": "bob@example.com"})).await;

    let hit = s.get(&format!("/Users?filter={}&startIndex=1&count=100", q("userName eq \"ALICE@example.COM\""))).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:ListResponse");
    assert_eq!(hit.body["totalResults"], 1);
    assert_eq!(hit.body["startIndex"], 1);
    assert_eq!(hit.body["itemsPerPage"], 1);
    assert_eq!(hit.body["Resources"][0]["userName"], "alice@example.com");

    let miss = s.get(&format!("/Users?filter={}", q("userName eq \"nobody\""))).await;
    assert_eq!(miss.body["totalResults"], 0);
    assert_eq!(miss.body["Resources"], json!([]), "Resources is [] when nothing matches");

    for (filter, want) in [
        ("externalId eq \"ext-alice\"", 1),
        ("externalId eq \"EXT-ALICE\"", 0),
        ("emails.value eq \"alice@example.com\"", 1),
        ("userName sw \"b\"", 1),
        ("userName co \"example\" and not (userName sw \"a\")", 1),
    ] {
        let r = s.get(&format!("/Users?filter={}", q(filter))).await;
        assert_eq!(r.body["totalResults"], want, "{filter}");
    }
}

#[tokio::test]
async fn paging_is_stable_and_clamped() {
    let s = TestServer::start().await;
    for i in 0..12 {
        assert_eq!(s.post("/Users", &json!({"userName": format!("user{i:02}")})).await.status, 201);
    }
    let mut seen = Vec::new();
    for start in [1, 6, 11] {
        let page = s.get(&format!("/Users?startIndex={start}&count=5")).await;
        assert_eq!(page.body["totalResults"], 12);
        assert_eq!(page.body["startIndex"], start);
        for r in page.body["Resources"].as_array().unwrap() {
            seen.push(r["userName"].as_str().unwrap().to_string());
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 12, "three pages cover every user once: {seen:?}");
    // startIndex below 1 is read as 1; a negative count as 0.
    let r = s.get("/Users?startIndex=0&count=-1").await;
    assert_eq!((r.body["startIndex"].as_u64(), r.body["itemsPerPage"].as_u64()), (Some(1), Some(0)));
    assert_eq!(r.body["totalResults"], 12);
}

/// Okta imports with startIndex=1, 101, 201, ...: each page resumes after the last one served
/// (O(page) at a million users), so a deletion between pages skips nobody; a first request at any
/// startIndex still answers by position.
#[tokio::test]
async fn index_paging_resumes_after_the_page_before() {
    let s = TestServer::start().await;
    for i in 0..12 {
        assert_eq!(s.post("/Users", &json!({"userName": format!("walk{i:02}")})).await.status, 201);
    }
    let all: Vec<String> = s.get("/Users?count=100").await.body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["userName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.len(), 12);
    // Fresh requests at any position answer by position (ids in creation order).
    for (start, count) in [(4, 3), (12, 5), (13, 5), (7, 1)] {
        let page = s.get(&format!("/Users?startIndex={start}&count={count}")).await.body;
        let got: Vec<&str> =
            page["Resources"].as_array().unwrap().iter().map(|r| r["userName"].as_str().unwrap()).collect();
        let want: Vec<&str> = all.iter().skip(start - 1).take(count).map(String::as_str).collect();
        assert_eq!(got, want, "startIndex={start}&count={count}");
        assert_eq!((page["startIndex"].as_u64(), page["totalResults"].as_u64()), (Some(start as u64), Some(12)));
    }
    // A walk with a deletion between its pages sees every remaining user once.
    let first = s.get("/Users?startIndex=1&count=5").await.body;
    let gone = first["Resources"][1]["id"].as_str().unwrap().to_string();
    assert_eq!(s.delete(&format!("/Users/{gone}")).await.status, 204);
    let mut seen: Vec<String> =
        first["Resources"].as_array().unwrap().iter().map(|r| r["userName"].as_str().unwrap().to_string()).collect();
    for start in [6, 11] {
        let page = s.get(&format!("/Users?startIndex={start}&count=5")).await.body;
        assert_eq!(page["totalResults"], 11);
        seen.extend(page["Resources"].as_array().unwrap().iter().map(|r| r["userName"].as_str().unwrap().to_string()));
    }
    assert_eq!(seen, all, "the walk covers every user once, in order, the deleted one seen before it went");
}

#[tokio::test]
async fn data_survives_a_restart() {
    let s = TestServer::start().await;
    let id = s.post("/Users", &alice()).await.id();
    let g = s.post("/Groups", &json!({"displayName": "Admins", "members": [{"value": id}]})).await;
    assert_eq!(g.status, 201);
    let before_user = s.get(&format!("/Users/{id}")).await.body;
    let position = s.log_position().await;

    let old_base = s.base.clone();
    let s = s.restart().await;
    assert_eq!(s.log_position().await, position);
    // The new server listens on another free port; everything else is the same.
    let before_user = before_user.to_string().replace(&old_base, &s.base);
    assert_eq!(s.get(&format!("/Users/{id}")).await.body.to_string(), before_user);
    let filtered = s.get(&format!("/Groups?filter={}", q("displayName eq \"admins\""))).await;
    assert_eq!(filtered.body["Resources"][0]["members"][0]["value"], id.as_str());
    // Writes after the restart continue the log.
    assert_eq!(s.post("/Users", &json!({"userName": "carol"})).await.status, 201);
    assert_eq!(s.log_position().await, position + 1);
}

#[tokio::test]
async fn concurrent_creates_of_one_user_name_yield_exactly_one_201() {
    let s = TestServer::start().await;
    let bodies = (0..40)
        .map(|i| json!({"userName": if i % 2 == 0 { "race@example.com" } else { "RACE@example.com" }}))
        .collect();
    let statuses: Vec<u16> =
        crate::support::post_concurrently(&s, "/Users", bodies).await.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 39, "{statuses:?}");
    let list = s.get(&format!("/Users?filter={}", q("userName eq \"race@example.com\""))).await;
    assert_eq!(list.body["totalResults"], 1);
    assert_eq!(s.log_position().await, 1);
}

#[tokio::test]
async fn etags_guard_writes_and_reads() {
    let s = TestServer::start().await;
    let id = s.post("/Users", &alice()).await.id();
    let path = format!("/Users/{id}");
    let r = s.send(Method::GET, &path, None, &[("if-none-match", "W/\"1\"")]).await;
    assert_eq!(r.status, 304);
    let body = json!({"userName": "alice@example.com", "title": "x"});
    s.send(Method::PUT, &path, Some(&body), &[("if-match", "W/\"7\"")]).await.assert_error(412, None, "W/\"1\"");
    let ok = s.send(Method::PUT, &path, Some(&body), &[("if-match", "W/\"1\"")]).await;
    assert_eq!(ok.status, 200);
    s.send(Method::DELETE, &path, None, &[("if-match", "W/\"1\"")]).await.assert_error(412, None, "W/\"2\"");
    assert_eq!(s.send(Method::DELETE, &path, None, &[("if-match", "W/\"2\"")]).await.status, 204);
}

#[tokio::test]
async fn post_matching_an_inactive_user_reactivates_it() {
    let s = TestServer::start().await;
    let mut body = alice();
    body["active"] = json!(false);
    let id = s.post("/Users", &body).await.id();
    let again = s.post("/Users", &alice()).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.id(), id, "the existing user came back");
    assert_eq!(again.body["active"], true);
    s.post("/Users", &alice()).await.assert_error(409, Some("uniqueness"), "alice@example.com");
}

#[tokio::test]
async fn search_by_post_on_the_root_and_per_type() {
    let s = TestServer::start().await;
    s.post("/Users", &json!({"userName": "sam", "title": "Eng"})).await;
    s.post("/Users", &json!({"userName": "sue"})).await;
    s.post("/Groups", &json!({"displayName": "Sales"})).await;
    let req = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
        "filter": "userName sw \"s\"", "attributes": ["userName"], "startIndex": 1, "count": 10});
    let r = s.post("/Users/.search", &req).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["totalResults"], 2);
    assert_eq!(r.body["Resources"][0].as_object().unwrap().keys().collect::<Vec<_>>(), ["schemas", "id", "userName"]);
    // On the root, both types are searched: `displayName pr` matches the group only.
    let r = s.post("/.search", &json!({"filter": "displayName pr", "excludedAttributes": ["members"]})).await;
    assert_eq!(r.body["totalResults"], 1, "{}", r.body);
    assert_eq!(r.body["Resources"][0]["displayName"], "Sales");
    let r = s.post("/.search", &json!({})).await;
    assert_eq!(r.body["totalResults"], 3);
    s.post("/.search", &json!({"schemas": ["urn:wrong"]})).await.assert_error(
        400,
        Some("invalidSyntax"),
        "SearchRequest",
    );
    s.post("/.search", &json!({"filter": "userName eq"})).await.assert_error(
        400,
        Some("invalidFilter"),
        "expected a value",
    );
}

#[tokio::test]
async fn unassigned_active_counts_as_active_and_is_not_invented() {
    let s = TestServer::start().await;
    let u = s.post("/Users", &json!({"userName": "noactive"})).await;
    assert!(u.body.get("active").is_none(), "{}", u.body);
    assert_eq!(s.get(&format!("/Users?filter={}", q("active eq true"))).await.body["totalResults"], 1);
    let id = s.post("/Users", &json!({"userName": "withactive", "active": true})).await.id();
    let r = s
        .send(
            Method::PATCH,
            &format!("/Users/{id}"),
            Some(&json!({"Operations": [{"op": "remove", "path": "active"}]})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.get("active").is_none(), "removing active leaves it unassigned: {}", r.body);
    // From a deactivated user, removing `active` reactivates it and leaves it unassigned.
    let path = format!("/Users/{id}");
    let deactivate = json!({"Operations": [{"op": "replace", "path": "active", "value": false}]});
    assert_eq!(s.send(Method::PATCH, &path, Some(&deactivate), &[]).await.body["active"], false);
    let remove = json!({"Operations": [{"op": "remove", "path": "active"}]});
    let r = s.send(Method::PATCH, &path, Some(&remove), &[]).await;
    assert!(r.body.get("active").is_none(), "{}", r.body);
    assert_eq!(s.get(&format!("/Users?filter={}", q("active eq false"))).await.body["totalResults"], 0);
}

/// Every write that answers with the user answers what a GET with the same parameters answers
/// right after it: the body (groups included, for a user in a group) and the ETag. The writer
/// hands the written document back, and a user just created is rendered without a groups read,
/// so this pins both against the read path.
#[tokio::test]
async fn a_writes_answer_is_what_a_get_answers_after_it() {
    let s = TestServer::start().await;
    let inactive = json!({"userName": "bob@example.com", "externalId": "ext-bob", "active": false});
    let bob = s.post("/Users", &inactive).await.id();
    let carol = s.post("/Users", &json!({"userName": "carol@example.com"})).await.id();
    let group = json!({"displayName": "Ops", "members": [{"value": bob}, {"value": carol}]});
    assert_eq!(s.post("/Groups", &group).await.status, 201);
    let patch = |ops: serde_json::Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    let title = patch(json!([{"op": "replace", "path": "title", "value": "CTO"}]));
    let cases: Vec<(&str, Method, String, serde_json::Value)> = vec![
        ("create", Method::POST, "/Users".into(), alice()),
        (
            "create, some attributes",
            Method::POST,
            "/Users?attributes=userName,groups".into(),
            json!({"userName": "dan"}),
        ),
        (
            "POST reactivates a user in a group",
            Method::POST,
            "/Users".into(),
            json!({"userName": "bob@example.com", "externalId": "ext-bob"}),
        ),
        (
            "PUT of a user in a group",
            Method::PUT,
            format!("/Users/{carol}"),
            json!({"userName": "carol@example.com", "title": "x"}),
        ),
        ("PATCH of a user in a group", Method::PATCH, format!("/Users/{carol}"), title.clone()),
        ("PATCH that changes nothing", Method::PATCH, format!("/Users/{carol}"), title),
        (
            "PATCH, groups excluded",
            Method::PATCH,
            format!("/Users/{carol}?excludedAttributes=groups"),
            patch(json!([{"op": "add", "path": "nickName", "value": "c"}])),
        ),
    ];
    for (case, method, path, body) in cases {
        let written = s.send(method, &path, Some(&body), &[]).await;
        assert!(written.status == 200 || written.status == 201, "{case}: {} {}", written.status, written.body);
        let id = written.id();
        let query = path.split_once('?').map_or(String::new(), |(_, q)| format!("?{q}"));
        let got = s.get(&format!("/Users/{id}{query}")).await;
        assert_eq!(written.body, got.body, "{case}");
        assert_eq!(written.header("etag"), got.header("etag"), "{case}");
        let in_group = id == bob || id == carol;
        assert_eq!(got.body.get("groups").is_some(), in_group && !query.contains("excluded"), "{case}: {}", got.body);
    }
}
