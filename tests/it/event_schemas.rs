//! Every event type, in its stored (sealed) and opened forms, validates against the JSON Schemas
//! in schemas/events/ that subscribers in any language can use.

use std::collections::BTreeSet;

use reqwest::Method;
use scimlog::log::keys::{KeyRing, MasterKeySource};
use scimlog::log::Store;
use serde_json::{json, Value};

use crate::support::{manifest_dir, validate_event, TestServer};

#[tokio::test]
async fn every_event_type_matches_its_schema() {
    let s = TestServer::start().await;
    let u = s
        .post("/Users", &json!({"userName": "schema.user", "emails": [{"value": "s@x.org"}], "active": true}))
        .await
        .id();
    s.put(&format!("/Users/{u}"), &json!({"userName": "schema.user", "title": "T", "active": false})).await;
    s.send(
        Method::PATCH,
        &format!("/Users/{u}"),
        Some(&json!({"Operations": [{"op": "replace", "path": "active", "value": true}]})),
        &[],
    )
    .await;
    let g = s.post("/Groups", &json!({"displayName": "Schema", "members": [{"value": u}]})).await.id();
    s.put(&format!("/Groups/{g}"), &json!({"displayName": "Schema2", "externalId": "x"})).await;
    let g2 = s.post("/Groups", &json!({"displayName": "Gone"})).await.id();
    s.delete(&format!("/Groups/{g2}")).await;
    let v = s.post("/Users", &json!({"userName": "victim"})).await.id();
    s.post("/Groups", &json!({"displayName": "WithVictim", "members": [{"value": v}]})).await;
    // Roles and entitlements, their scopes, hosts.
    let r = s
        .post(
            "/Users",
            &json!({"userName": "granted", "roles": ["urn:scimlog:role:environment:prod:admin"],
        "entitlements": [{"value": "urn:scimlog:entitlement:resource-group:rg1"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let granted = r.id();
    s.put(&format!("/Users/{granted}"), &json!({"userName": "granted"})).await;
    let hosts = s.new_token(scimlog::auth::Role::Hosts);
    let host_path = format!("{}/api/v1/hosts/laptop-1/user", s.base);
    let h = s.send_as(&hosts, Method::PUT, &host_path, Some(&json!({"user": "granted"})), &[]).await;
    assert_eq!(h.status, 200, "{}", h.body);
    s.send_as(&hosts, Method::DELETE, &host_path, None, &[]).await;
    let admin = scimlog::auth::create_token(s.data_dir(), "admin", "default", scimlog::auth::Role::Admin).unwrap();
    let r = s
        .send_as(
            &admin,
            Method::POST,
            &format!("{}/api/v1/users/{v}/erase", s.base),
            Some(&json!({"reason": "test"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
    s.delete(&format!("/Users/{u}")).await;
    // Token changes are recorded (the request after a change records it).
    scimlog::auth::create_token(s.data_dir(), "temp", "default", scimlog::auth::Role::Scim).unwrap();
    s.get("/Users?count=0").await;
    scimlog::auth::revoke_token(s.data_dir(), "temp").unwrap();
    s.get("/Users?count=0").await;

    let store = Store::open_read_only(s.data_dir()).unwrap();
    let ring = KeyRing::open_read_only(store.clone(), &MasterKeySource::default(), s.data_dir()).unwrap();
    let mut seen = BTreeSet::new();
    for opened in [true, false] {
        let mut out = Vec::new();
        if opened {
            scimlog::audit::export(&store, &ring, 1, None, true, &mut out).unwrap();
        } else {
            scimlog::audit::export(&store, &scimlog_schemas::personal::NoKeys, 1, None, false, &mut out).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        // Regenerate the event fixtures of the current schema versions with
        // SCIMLOG_WRITE_EVENT_FIXTURES=1 (old versions' fixtures are never rewritten).
        if !opened && std::env::var("SCIMLOG_WRITE_EVENT_FIXTURES").is_ok() {
            let path = format!("{}/tests/fixtures/events/v1.jsonl", manifest_dir());
            std::fs::write(path, &text).unwrap();
        }
        for line in text.lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            validate_event(&event);
            seen.insert(event["type"].as_str().unwrap().to_string());
        }
    }
    let all: BTreeSet<String> = scimlog_schemas::EventType::ALL.iter().map(|t| t.as_str().to_string()).collect();
    assert_eq!(seen, all, "the scenario covers every event type");

    // A broken event is refused by the schemas (they are not vacuous).
    let bad = json!({"type": "group.member_added", "data": {"memberId": 3}});
    assert!(std::panic::catch_unwind(|| validate_event(&bad)).is_err());
    // Stop before the process ends: the erasure's compaction must not race the exit.
    drop((store, ring));
    s.stop().await;
}
