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
