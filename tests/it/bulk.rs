//! /Bulk: bulkId references, per-operation results, failOnErrors, limits.

use serde_json::{json, Value};

use crate::support::{config, TestServer};

fn bulk(ops: Value) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops})
}

#[tokio::test]
async fn bulk_with_references_commits_in_order() {
    let s = TestServer::start().await;
    let before = s.log_position().await;
    let r = s
        .post(
            "/Bulk",
            &bulk(json!([
                {"method": "POST", "path": "/Users", "bulkId": "u1", "data": {"userName": "bulk.one"}},
                {"method": "POST", "path": "/Users", "bulkId": "u2", "data": {"userName": "bulk.two"}},
                {"method": "POST", "path": "/Groups", "bulkId": "g1",
                 "data": {"displayName": "Bulk", "members": [{"value": "bulkId:u1"}]}},
                {"method": "PATCH", "path": "/Groups/bulkId:g1",
                 "data": {"Operations": [{"op": "add", "path": "members", "value": [{"value": "bulkId:u2"}]}]}},
                {"method": "DELETE", "path": "/Users/bulkId:u1"},
            ])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:BulkResponse");
    let ops = r.body["Operations"].as_array().unwrap();
    let statuses: Vec<&str> = ops.iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201", "201", "201", "200", "204"], "{}", r.body);
    assert_eq!(ops[0]["bulkId"], "u1");
    let group_location = ops[2]["location"].as_str().unwrap();
    assert_eq!(ops[3]["version"], "W/\"3\"", "created, member_added, member_added");
    let group = s.get(group_location).await.body;
    let members: Vec<&str> =
        group["members"].as_array().unwrap().iter().map(|m| m["value"].as_str().unwrap()).collect();
    let u2 = ops[1]["location"].as_str().unwrap().rsplit('/').next().unwrap();
    assert_eq!(members, [u2], "u1 left the group when it was deleted");
    // 2 user.created + group.created + 2 member_added + member_removed + user.deleted.
    assert_eq!(s.log_position().await, before + 7);
}

#[tokio::test]
async fn bulk_errors_are_per_operation_and_fail_on_errors_stops() {
    let s = TestServer::start().await;
    s.post("/Users", &json!({"userName": "taken"})).await;
    let before = s.log_position().await;
    let ops = json!([
        {"method": "POST", "path": "/Users", "bulkId": "a", "data": {"userName": "TAKEN"}},
        {"method": "POST", "path": "/Groups", "bulkId": "b", "data": {"displayName": "G", "members": [{"value": "bulkId:nope"}]}},
        {"method": "POST", "path": "/Users", "bulkId": "c", "data": {"userName": "fresh"}},
    ]);
    let mut body = bulk(ops.clone());
    body["failOnErrors"] = json!(1);
    let r = s.post("/Bulk", &body).await;
    let results = r.body["Operations"].as_array().unwrap();
    assert_eq!(results.len(), 1, "processing stops after failOnErrors errors: {}", r.body);
    assert_eq!(results[0]["status"], "409");
    assert_eq!(results[0]["response"]["scimType"], "uniqueness");
    assert_eq!(s.log_position().await, before, "nothing was written");

    let r = s.post("/Bulk", &bulk(ops)).await;
    let results = r.body["Operations"].as_array().unwrap();
    let statuses: Vec<&str> = results.iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["409", "400", "201"]);
    assert!(results[1]["response"]["detail"].as_str().unwrap().contains("\"nope\""));
    assert_eq!(s.log_position().await, before + 1, "only the operation that succeeded wrote");
}

#[tokio::test]
async fn bulk_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.bulk_max_operations = 2;
    cfg.bulk_max_payload_bytes = 600;
    let s = TestServer::start_with(cfg).await;
    let op = json!({"method": "POST", "path": "/Users", "bulkId": "x", "data": {"userName": "x"}});
    s.post("/Bulk", &bulk(json!([op, op, op]))).await.assert_error(413, Some("tooMany"), "maxOperations (2)");
    let big =
        json!({"method": "POST", "path": "/Users", "bulkId": "x", "data": {"userName": "x", "title": "t".repeat(700)}});
    s.post("/Bulk", &bulk(json!([big]))).await.assert_error(413, None, "600 bytes");
    s.post("/Bulk", &json!({"Operations": [{"method": "GET", "path": "/Users"}]})).await.assert_error(
        400,
        Some("invalidSyntax"),
        "GET",
    );
    s.post("/Bulk", &json!({"Operations": [{"method": "POST", "path": "/Users", "data": {}}]})).await.assert_error(
        400,
        Some("invalidSyntax"),
        "bulkId",
    );
    let r = s.post("/Bulk", &bulk(json!([{"method": "PUT", "path": "/Nowhere/1", "data": {}}]))).await;
    assert_eq!(r.body["Operations"][0]["response"]["scimType"], "invalidPath");
    s.stop().await;
}

/// RFC 7644 §3.7.1: a forward reference (a group naming a user POSTed after it) and a circular
/// one (two groups each naming the other, the RFC's own example) are resolved: every resource is
/// created, then the references are filled in. Results keep the request's order.
#[tokio::test]
async fn forward_and_circular_references_are_resolved() {
    let s = TestServer::start().await;
    let ops = json!([
        {"method": "POST", "path": "/Groups", "bulkId": "early", "data": {"displayName": "Early", "members": [{"value": "bulkId:late", "type": "User"}]}},
        {"method": "POST", "path": "/Groups", "bulkId": "qwerty", "data": {"displayName": "Group A", "members": [{"type": "Group", "value": "bulkId:ytrewq"}]}},
        {"method": "POST", "path": "/Groups", "bulkId": "ytrewq", "data": {"displayName": "Group B", "members": [{"type": "Group", "value": "bulkId:qwerty"}]}},
        {"method": "PATCH", "path": "/Groups/bulkId:later", "data": {"Operations": [{"op": "add", "path": "members", "value": [{"value": "bulkId:late"}]}]}},
        {"method": "POST", "path": "/Users", "bulkId": "late", "data": {"userName": "late.user", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"manager": {"value": "bulkId:boss"}}}},
        {"method": "POST", "path": "/Users", "bulkId": "boss", "data": {"userName": "boss.user"}},
        {"method": "POST", "path": "/Groups", "bulkId": "later", "data": {"displayName": "Later"}},
    ]);
    let r = s.post("/Bulk", &bulk(ops)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.body["Operations"].as_array().unwrap();
    let statuses: Vec<&str> = results.iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201", "201", "201", "200", "201", "201", "201"], "{}", r.body);
    let bulk_ids: Vec<&str> = results.iter().map(|o| o["bulkId"].as_str().unwrap_or("-")).collect();
    assert_eq!(bulk_ids, ["early", "qwerty", "ytrewq", "-", "late", "boss", "later"]);
    let id_of = |i: usize| results[i]["location"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
    let members = |id: String| {
        let s = &s;
        async move {
            let g = s.get(&format!("/Groups/{id}")).await.body;
            let mut m: Vec<String> =
                g["members"].as_array().unwrap().iter().map(|m| m["value"].as_str().unwrap().to_string()).collect();
            m.sort();
            m
        }
    };
    let (early, a, b, late, boss, later) = (id_of(0), id_of(1), id_of(2), id_of(4), id_of(5), id_of(6));
    assert_eq!(members(early).await, [late.clone()]);
    assert_eq!(members(a.clone()).await, [b.clone()], "A holds B");
    assert_eq!(members(b).await, [a.clone()], "B holds A");
    assert_eq!(members(later).await, [late.clone()], "the PATCH waited for the group it names");
    let u = s.get(&format!("/Users/{late}")).await.body;
    assert_eq!(u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["manager"]["value"], boss);
    // The version in each result is the resource's final one.
    let a_now = s.get(&format!("/Groups/{a}")).await;
    assert_eq!(results[1]["version"].as_str(), a_now.header("etag"), "{}", r.body);
}

/// A reference to an operation of the request that failed is 409, never a second 400; the
/// circle it would have closed is reported on the operation that could not be completed.
#[tokio::test]
async fn references_to_failed_operations_are_conflicts() {
    let s = TestServer::start().await;
    s.post("/Users", &json!({"userName": "taken"})).await;
    let ops = json!([
        {"method": "POST", "path": "/Users", "bulkId": "dup", "data": {"userName": "taken"}},
        {"method": "POST", "path": "/Groups", "bulkId": "g", "data": {"displayName": "G", "members": [{"value": "bulkId:dup"}]}},
        {"method": "PATCH", "path": "/Users/bulkId:dup", "data": {"Operations": [{"op": "replace", "path": "title", "value": "x"}]}},
    ]);
    let r = s.post("/Bulk", &bulk(ops)).await;
    let results = r.body["Operations"].as_array().unwrap();
    let statuses: Vec<&str> = results.iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["409", "409", "409"], "{}", r.body);
    assert_eq!(results[0]["response"]["scimType"], "uniqueness");
    for i in [1, 2] {
        let detail = results[i]["response"]["detail"].as_str().unwrap();
        assert!(detail.contains("\"dup\"") && detail.contains("failed"), "{detail}");
    }
    s.stop().await;
}
