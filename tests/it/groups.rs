//! Groups over HTTP, with memberships seen from both sides.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{q, TestServer};

#[tokio::test]
async fn group_membership_both_ways() {
    let s = TestServer::start().await;
    let u1 = s.post("/Users", &json!({"userName": "u1", "displayName": "User One"})).await.id();
    let u2 = s.post("/Users", &json!({"userName": "u2"})).await.id();

    let g = s
        .post("/Groups", &json!({"displayName": "Engineering", "externalId": "eng", "members": [{"value": u1, "type": "User"}, {"value": u2}]}))
        .await;
    assert_eq!(g.status, 201, "{}", g.body);
    let gid = g.id();
    assert_eq!(g.header("location").unwrap(), s.url(&format!("/Groups/{gid}")));
    let members = g.body["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    let m1 = members.iter().find(|m| m["value"] == u1.as_str()).unwrap();
    assert_eq!(m1["display"], "User One");
    assert_eq!(m1["type"], "User");
    assert_eq!(m1["$ref"], s.url(&format!("/Users/{u1}")).as_str());
    assert_eq!(g.body["meta"]["version"], "W/\"3\"", "created + two member_added");

    let user = s.get(&format!("/Users/{u1}")).await.body;
    assert_eq!(
        user["groups"],
        json!([{"value": gid, "$ref": s.url(&format!("/Groups/{gid}")), "display": "Engineering", "type": "direct"}])
    );

    // excludedAttributes=members leaves members out.
    let slim = s.get(&format!("/Groups/{gid}?excludedAttributes=members")).await.body;
    assert!(slim.get("members").is_none());
    assert_eq!(slim["displayName"], "Engineering");

    // Filters on members.value and displayName (case-insensitive) use the indexes.
    let by_member = s.get(&format!("/Groups?filter={}", q(&format!("members.value eq \"{u2}\"")))).await;
    assert_eq!(by_member.body["totalResults"], 1);
    let by_name =
        s.get(&format!("/Groups?filter={}&excludedAttributes=members", q("displayName eq \"ENGINEERING\""))).await;
    assert_eq!(by_name.body["Resources"][0]["id"], gid.as_str());
    assert!(by_name.body["Resources"][0].get("members").is_none());

    // PUT renames and replaces the member list.
    let put = s.put(&format!("/Groups/{gid}"), &json!({"displayName": "Eng", "members": [{"value": u2}]})).await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.body["displayName"], "Eng");
    assert_eq!(put.body["members"].as_array().unwrap().len(), 1);
    assert!(put.body.get("externalId").is_none(), "PUT replaces: externalId was not sent");
    assert!(s.get(&format!("/Users/{u1}")).await.body.get("groups").is_none());

    // Deleting a member user ends its membership.
    assert_eq!(s.delete(&format!("/Users/{u2}")).await.status, 204);
    let after = s.get(&format!("/Groups/{gid}")).await.body;
    assert!(after.get("members").is_none(), "{after}");

    assert_eq!(s.delete(&format!("/Groups/{gid}")).await.status, 204);
    s.get(&format!("/Groups/{gid}")).await.assert_error(404, None, &gid);
}

#[tokio::test]
async fn unknown_member_ids_are_skipped_not_fatal() {
    let s = TestServer::start().await;
    let u1 = s.post("/Users", &json!({"userName": "u1"})).await.id();
    let g =
        s.post("/Groups", &json!({"displayName": "Ops", "members": [{"value": "no-such-id"}, {"value": u1}]})).await;
    assert_eq!(g.status, 201, "{}", g.body);
    let values: Vec<&str> =
        g.body["members"].as_array().unwrap().iter().map(|m| m["value"].as_str().unwrap()).collect();
    assert_eq!(values, [u1.as_str()]);
}

#[tokio::test]
async fn group_display_names_are_unique_without_case() {
    let s = TestServer::start().await;
    assert_eq!(s.post("/Groups", &json!({"displayName": "Sales"})).await.status, 201);
    let before = s.log_position().await;
    s.post("/Groups", &json!({"displayName": "SALES"})).await.assert_error(409, Some("uniqueness"), "SALES");
    assert_eq!(s.log_position().await, before);
}

#[tokio::test]
async fn nested_groups_are_members_too() {
    let s = TestServer::start().await;
    let inner = s.post("/Groups", &json!({"displayName": "Inner"})).await.id();
    let outer =
        s.post("/Groups", &json!({"displayName": "Outer", "members": [{"value": inner, "type": "Group"}]})).await;
    assert_eq!(outer.body["members"][0]["type"], "Group");
    assert_eq!(outer.body["members"][0]["display"], "Inner");
    // Deleting the inner group removes it from the outer one.
    assert_eq!(s.delete(&format!("/Groups/{inner}")).await.status, 204);
    assert!(s.get(&format!("/Groups/{}", outer.id())).await.body.get("members").is_none());
}

/// A group PATCH answered 204 carries the ETag a GET gives right after it: the version its own
/// events gave the group (events of other resources in the same request, such as an environment
/// created when a role first names it, do not count), or the stored one when nothing changed.
#[tokio::test]
async fn a_group_patch_without_a_body_has_the_etag_a_get_gives() {
    let s = TestServer::start().await;
    let u = s.post("/Users", &json!({"userName": "ann"})).await.id();
    let v = s.post("/Users", &json!({"userName": "ben"})).await.id();
    let g = s.post("/Groups", &json!({"displayName": "Ops"})).await.id();
    let op = |ops: serde_json::Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    let cases = [
        ("add two members", op(json!([{"op": "add", "path": "members", "value": [{"value": u}, {"value": v}]}]))),
        (
            "add a member again (nothing changes)",
            op(json!([{"op": "add", "path": "members", "value": [{"value": u}]}])),
        ),
        ("remove one", op(json!([{"op": "remove", "path": format!("members[value eq \"{v}\"]")}]))),
        ("rename", op(json!([{"op": "replace", "path": "displayName", "value": "Operations"}]))),
        (
            "a role that creates its environment",
            op(json!([{"op": "add", "path": "roles", "value": ["urn:scimlog:role:environment:ops:admin"]}])),
        ),
    ];
    for (case, body) in cases {
        let r = s.send(Method::PATCH, &format!("/Groups/{g}"), Some(&body), &[]).await;
        assert_eq!(r.status, 204, "{case}: {}", r.body);
        let got = s.get(&format!("/Groups/{g}")).await;
        assert_eq!(r.header("etag"), got.header("etag"), "{case}");
        assert_eq!(got.body["meta"]["version"].as_str(), got.header("etag"), "{case}");
    }
}

/// A user's `groups` name each group as it is now. The names come from the group nodes the
/// access answers keep in memory; no answer given after a rename or a deletion was acknowledged
/// may show the old name. GETs race the writes and keep the nodes in use. Every way a user is
/// answered is asked: a GET, a lookup (a list), and the answer to a PATCH of the user. The
/// same with the cache off (`--access-cache-groups 0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_groups_are_named_as_they_are_now() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    for cache in [100_000, 0] {
        let s = Arc::new(TestServer::start_configured(|c| c.access_cache_groups = cache).await);
        let u = s.post("/Users", &json!({"userName": "named"})).await.id();
        let a = s.post("/Groups", &json!({"displayName": "a0", "members": [{"value": u}]})).await.id();
        let b = s.post("/Groups", &json!({"displayName": "b", "members": [{"value": u}]})).await.id();
        let stop = Arc::new(AtomicBool::new(false));
        let racer = {
            let (s, path, stop) = (s.clone(), format!("/Users/{u}"), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(s.get(&path).await.status, 200);
                }
            })
        };
        let named = |user: &Value| -> BTreeMap<String, String> {
            let groups = user["groups"].as_array().map(Vec::as_slice).unwrap_or_default();
            groups
                .iter()
                .map(|g| (g["value"].as_str().unwrap().into(), g["display"].as_str().unwrap().into()))
                .collect()
        };
        let answers = |want: BTreeMap<String, String>, step: String| {
            let (s, u) = (s.clone(), u.clone());
            async move {
                let got = s.get(&format!("/Users/{u}")).await.body;
                assert_eq!(named(&got), want, "{step}, cache {cache}: GET");
                let found = s.get(&format!("/Users?filter={}", q("userName eq \"named\""))).await.body;
                assert_eq!(named(&found["Resources"][0]), want, "{step}, cache {cache}: lookup");
                let op = json!({"Operations": [{"op": "replace", "path": "title", "value": step}]});
                let patched = s.send(Method::PATCH, &format!("/Users/{u}"), Some(&op), &[]).await;
                assert_eq!(named(&patched.body), want, "{step}, cache {cache}: the PATCH's answer");
            }
        };
        let both =
            |a_name: &str, b_name: &str| BTreeMap::from([(a.clone(), a_name.into()), (b.clone(), b_name.into())]);
        answers(both("a0", "b"), "created".into()).await;
        for round in 1..=5 {
            let rename =
                json!({"Operations": [{"op": "replace", "path": "displayName", "value": format!("a{round}")}]});
            assert_eq!(s.send(Method::PATCH, &format!("/Groups/{a}"), Some(&rename), &[]).await.status, 204);
            answers(both(&format!("a{round}"), "b"), format!("round {round}: a renamed by PATCH")).await;
        }
        let put = s.put(&format!("/Groups/{b}"), &json!({"displayName": "b put", "members": [{"value": u}]})).await;
        assert_eq!(put.status, 200, "{}", put.body);
        answers(both("a5", "b put"), "b renamed by PUT".into()).await;
        assert_eq!(s.delete(&format!("/Groups/{a}")).await.status, 204);
        answers(BTreeMap::from([(b.clone(), "b put".into())]), "a deleted".into()).await;
        stop.store(true, Ordering::Relaxed);
        racer.await.unwrap();
    }
}
