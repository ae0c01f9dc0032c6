//! Right to erasure in an immutable log: a person's data key is destroyed, their personal values
//! become unreadable everywhere, and the log still verifies.

use std::path::Path;

use reqwest::Method;
use scimlog::auth::{create_token, Role};
use scimlog::log::keys::{KeyRing, MasterKey, MasterKeySource};
use scimlog::log::Store;
use serde_json::json;

use crate::support::{config, TestServer};

/// Every file under `dir` that contains `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p.display().to_string());
                }
            }
        }
    }
    hits
}

pub fn export(dir: &Path, opened: bool, source: &MasterKeySource) -> String {
    let store = Store::open_read_only(dir).unwrap();
    let mut out = Vec::new();
    if opened {
        let ring = KeyRing::open_read_only(store.clone(), source, dir).unwrap();
        scimlog::audit::export(&store, &ring, 1, None, true, &mut out).unwrap();
    } else {
        scimlog::audit::export(&store, &scimlog_schemas::personal::NoKeys, 1, None, false, &mut out).unwrap();
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn erasing_a_user_with_history() {
    let s = TestServer::start().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (name, email, email2) =
        (format!("erase-{tag}"), format!("first-{tag}@example.com"), format!("second-{tag}@example.com"));
    let id = s
        .post(
            "/Users",
            &json!({"userName": name, "emails": [{"value": email, "type": "work"}], "title": "Engineer",
                "externalId": format!("ext-{tag}"), "userType": "Contractor",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": format!("dept-{tag}"),
                    "manager": {"value": "mgr-1", "displayName": format!("Manager {tag}")}}}),
        )
        .await
        .id();
    s.put(
        &format!("/Users/{id}"),
        &json!({"userName": name, "emails": [{"value": email2, "type": "work"}], "title": "Engineer",
            "userType": "Contractor"}),
    )
    .await;
    let patch = json!({"Operations": [{"op": "replace", "path": "displayName", "value": format!("Display {tag}")}]});
    assert_eq!(s.send(Method::PATCH, &format!("/Users/{id}"), Some(&patch), &[]).await.status, 200);
    let gid = s.post("/Groups", &json!({"displayName": "Team", "members": [{"value": id}]})).await.id();
    // The control value shares nothing with the erased ones, so compression cannot hide it.
    let keep_name = format!("keep-{}", uuid::Uuid::new_v4().simple());
    let keep = s.post("/Users", &json!({"userName": keep_name})).await.id();

    // Personal values never reach the log in clear, even before erasure.
    assert!(!export(s.data_dir(), false, &MasterKeySource::default()).contains(&email));
    let opened = export(s.data_dir(), true, &MasterKeySource::default());
    assert!(opened.contains(&email) && opened.contains(&email2), "the keys open the values");

    // Only an admin token may erase.
    let scim_token = create_token(s.data_dir(), "okta", "default", Role::Scim).unwrap();
    let admin = create_token(s.data_dir(), "dpo", "default", Role::Admin).unwrap();
    let url = format!("{}/api/v1/users/{id}/erase", s.base);
    let body = json!({"reason": "ticket 1234"});
    s.send_as(&scim_token, Method::POST, &url, Some(&body), &[]).await.assert_error(403, None, "admin token");
    s.send_as(&admin, Method::POST, &url, Some(&json!({})), &[]).await.assert_error(
        400,
        Some("invalidValue"),
        "reason",
    );
    let r = s.send_as(&admin, Method::POST, &url, Some(&body), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["eventPositions"].as_array().unwrap().len(), 3, "member_removed, user.deleted, user.erased");
    s.send_as(&admin, Method::POST, &url, Some(&body), &[]).await.assert_error(404, None, &id);

    // The person is gone from the API; the others are untouched.
    s.get(&format!("/Users/{id}")).await.assert_error(404, None, &id);
    assert!(s.get(&format!("/Groups/{gid}")).await.body.get("members").is_none());
    assert_eq!(s.get(&format!("/Users/{keep}")).await.status, 200);

    // The log still verifies; the history keeps the events, with the values erased.
    let store = Store::open_read_only(s.data_dir()).unwrap();
    let verified = scimlog::audit::verify(&store).unwrap();
    assert_eq!(verified.count, s.log_position().await);
    drop(store);
    let opened = export(s.data_dir(), true, &MasterKeySource::default());
    assert!(!opened.contains(&email) && !opened.contains(&email2) && !opened.contains(&name), "{opened}");
    assert!(opened.contains("\"userName\":\"[erased]\""));
    assert!(opened.contains("\"userType\":\"Contractor\""), "non-personal values stay readable");
    for sealed in [format!("ext-{tag}"), format!("dept-{tag}"), "Engineer".to_string()] {
        assert!(!opened.contains(&sealed), "{sealed} is sealed, so erased");
    }
    // The manager's name was never stored (readOnly); the manager's id stays.
    assert!(!opened.contains(&format!("Manager {tag}")) && opened.contains("mgr-1"));
    assert!(opened.contains(&keep_name), "other people's values stay readable");
    assert!(opened.contains("\"type\":\"user.erased\"") && opened.contains("ticket 1234"));

    // Once the server has stopped, no file of the data dir holds any of the person's values.
    let dir = s.data_dir().to_path_buf();
    let _data = s.stop_keeping_data().await;
    for needle in [&email, &email2, &name, &format!("ext-{tag}"), &format!("dept-{tag}")] {
        let hits = files_containing(&dir, needle.as_bytes());
        assert!(hits.is_empty(), "{needle:?} still in {hits:?}");
    }
    // ... while the other person's values are still there (the search would find them).
    assert!(!files_containing(&dir, keep_name.as_bytes()).is_empty());
}

/// A reader that started before an erasure (its snapshot can still see the values) holds the
/// purge back, never the writer; once it ends, the purge runs, and no file of the data dir holds
/// the person's values while the server keeps running.
#[tokio::test]
async fn the_purge_waits_for_readers_that_started_before_the_erasure() {
    let s = TestServer::start().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let (name, email) = (format!("held-{tag}"), format!("held-{tag}@example.com"));
    let id = s.post("/Users", &json!({"userName": name, "emails": [{"value": email}]})).await.id();
    let keep_name = format!("kept-{}", uuid::Uuid::new_v4().simple());
    s.post("/Users", &json!({"userName": keep_name})).await;
    let admin = s.new_token(Role::Admin);
    let health = || async { s.healthz().await["purges"].clone() };

    let store = s.store();
    let reader = store.view();
    let url = format!("{}/api/v1/users/{id}/erase", s.base);
    let r = s.send_as(&admin, Method::POST, &url, Some(&json!({"reason": "ticket 99"})), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["purge"], "pending", "a reader from before the erasure is still open");
    assert_eq!(health().await["pending"], 1);
    // Writes keep flowing meanwhile.
    assert_eq!(s.post("/Users", &json!({"userName": format!("after-{tag}")})).await.status, 201);
    assert_eq!(health().await["pending"], 1, "still waiting for the reader");
    drop(reader);
    crate::support::eventually(20, "the purge is done", || async { health().await["pending"] == 0 }).await;
    assert_eq!(health().await["done"], 1);
    for needle in [&email, &name] {
        let hits = files_containing(s.data_dir(), needle.as_bytes());
        assert!(hits.is_empty(), "{needle:?} still in {hits:?}");
    }
    assert!(!files_containing(s.data_dir(), keep_name.as_bytes()).is_empty(), "the control value is found");
    // An erasure with no reader in the way is purged before it is answered.
    let other = s.post("/Users", &json!({"userName": format!("quick-{tag}")})).await.id();
    let url = format!("{}/api/v1/users/{other}/erase", s.base);
    let r = s.send_as(&admin, Method::POST, &url, Some(&json!({"reason": "ticket 100"})), &[]).await;
    assert_eq!(r.body["purge"], "done", "{}", r.body);
    s.stop().await;
}

#[tokio::test]
async fn master_key_rotation_and_wrong_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config(tmp.path())).await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    s.post("/Users", &json!({"userName": format!("rot-{tag}"), "emails": [{"value": format!("rot-{tag}@x.org")}]}))
        .await;
    s.stop().await;

    // Rotate offline to a new key file, as `scimlog keys rotate` does.
    let new_key = tmp.path().join("new.key");
    scimlog::log::keys::write_new_key_file(&new_key).unwrap();
    {
        let store = Store::open(tmp.path()).unwrap();
        let ring = KeyRing::open(store, &MasterKeySource::default(), tmp.path()).unwrap();
        assert_eq!(ring.rotate(&MasterKey::from_file(&new_key).unwrap()).unwrap(), 1);
    }
    let new_source = MasterKeySource { file: Some(new_key.clone()), hex: None };
    assert!(
        export(tmp.path(), true, &new_source).contains(&format!("rot-{tag}@x.org")),
        "rotation keeps values readable"
    );

    // The old key no longer opens the data dir: start-up fails clearly instead of serving garbage.
    let err = scimlog::server::Server::start(config(tmp.path())).await.err().expect("old key refused");
    assert!(format!("{err:#}").contains("does not open this data dir"), "{err:#}");
    let wrong = tmp.path().join("wrong.key");
    scimlog::log::keys::write_new_key_file(&wrong).unwrap();
    let mut cfg = config(tmp.path());
    cfg.master_key_file = Some(wrong);
    let err = scimlog::server::Server::start(cfg).await.err().expect("wrong key refused");
    assert!(format!("{err:#}").contains("does not open this data dir"), "{err:#}");

    // With the new key it serves the same data.
    let mut cfg = config(tmp.path());
    cfg.master_key_file = Some(new_key);
    let s = TestServer::start_with(cfg).await;
    assert_eq!(s.get("/Users").await.body["totalResults"], 1);
    // The blinded indexes survive the rotation (the index secret was re-wrapped, not changed).
    let filter = format!("userName%20eq%20%22rot-{tag}%22");
    assert_eq!(s.get(&format!("/Users?filter={filter}")).await.body["totalResults"], 1);
    let filter = format!("emails.value%20eq%20%22rot-{tag}%40x.org%22");
    assert_eq!(s.get(&format!("/Users?filter={filter}")).await.body["totalResults"], 1);
    s.stop().await;
}
