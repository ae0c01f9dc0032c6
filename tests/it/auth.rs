//! Authentication and tenancy.

use reqwest::Method;
use serde_json::json;

use crate::support::{config, TestServer};

#[tokio::test]
async fn missing_or_wrong_tokens_get_401_with_a_challenge() {
    let s = TestServer::start().await;
    let r = crate::support::read(s.client.get(s.url("/Users")).send().await.unwrap()).await;
    r.assert_error(401, None, "bearer token is required");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let r = s.send_as("wrong", Method::GET, "/Users", None, &[]).await;
    r.assert_error(401, None, "not valid");
    assert!(r.header("www-authenticate").is_some());
    let before = s.log_position().await;
    s.send_as("wrong", Method::POST, "/Users", Some(&json!({"userName": "x"})), &[]).await.assert_error(401, None, "");
    assert_eq!(s.log_position().await, before, "an unauthenticated write writes nothing");
    // /healthz needs no token.
    let h = s.client.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(h.status(), 200);
}

#[tokio::test]
async fn a_token_sees_only_its_tenant() {
    let s = TestServer::start().await;
    let id = s.post("/Users", &json!({"userName": "alice"})).await.id();
    let gid = s.post("/Groups", &json!({"displayName": "G", "members": [{"value": id}]})).await.id();
    let other = scimlog::auth::create_token(s.data_dir(), "acme-okta", "acme", scimlog::auth::Role::Scim).unwrap();

    let as_other = |m: Method, p: String, b: Option<serde_json::Value>| {
        let s = &s;
        let other = other.clone();
        async move { s.send_as(&other, m, &p, b.as_ref(), &[]).await }
    };
    as_other(Method::GET, format!("/Users/{id}"), None).await.assert_error(404, None, &id);
    as_other(Method::GET, format!("/Groups/{gid}"), None).await.assert_error(404, None, &gid);
    as_other(Method::PUT, format!("/Users/{id}"), Some(json!({"userName": "x"}))).await.assert_error(404, None, &id);
    as_other(Method::DELETE, format!("/Users/{id}"), None).await.assert_error(404, None, &id);
    let list = as_other(Method::GET, "/Users?filter=userName%20eq%20%22alice%22".into(), None).await;
    assert_eq!(list.body["totalResults"], 0);
    assert_eq!(as_other(Method::GET, "/Users".into(), None).await.body["totalResults"], 0);
    // The other tenant's userName space is its own; members across tenants are unknown.
    let mine = as_other(Method::POST, "/Users".into(), Some(json!({"userName": "alice"}))).await;
    assert_eq!(mine.status, 201);
    let g =
        as_other(Method::POST, "/Groups".into(), Some(json!({"displayName": "G", "members": [{"value": id}]}))).await;
    assert_eq!(g.status, 201);
    assert!(g.body.get("members").is_none());
    // And the first tenant still sees exactly its own.
    assert_eq!(s.get("/Users").await.body["totalResults"], 1);
    // Revocation takes effect at the next request.
    scimlog::auth::revoke_token(s.data_dir(), "acme-okta").unwrap();
    as_other(Method::GET, "/Users".into(), None).await.assert_error(401, None, "");
    // Both changes are in the audit trail, without the secret.
    let store = scimlog::log::Store::open_read_only(s.data_dir()).unwrap();
    let mut out = Vec::new();
    scimlog::audit::export(&store, &scimlog_schemas::personal::NoKeys, 1, None, false, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let token_events: Vec<(String, String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["resourceType"] == "Token")
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["tenant"].as_str().unwrap().into(),
                e["resourceId"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        token_events,
        [
            ("token.created".into(), "acme".into(), "acme-okta".into()),
            ("token.revoked".into(), "acme".into(), "acme-okta".into())
        ]
    );
    assert!(!text.contains(&other[8..]), "no secret in the log");
}

#[tokio::test]
async fn first_start_without_tokens_creates_one_and_stores_only_its_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.bootstrap_token = None;
    cfg.admin_token = None;
    let server = scimlog::server::Server::start(cfg).await.unwrap();
    let token = server.created_token.clone().expect("a token is created on first start");
    let stored = std::fs::read_to_string(tmp.path().join("tokens.json")).unwrap();
    assert!(!stored.contains(&token));
    let r = reqwest::Client::new()
        .get(format!("http://{}/scim/v2/Users", server.addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
    // A second start creates no further token.
    let mut cfg = config(tmp.path());
    cfg.bootstrap_token = None;
    cfg.admin_token = None;
    let again = scimlog::server::Server::start(cfg).await.unwrap();
    assert!(again.created_token.is_none());
    again.stop().await;
}

#[tokio::test]
async fn insecure_mode_needs_no_token() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.bootstrap_token = None;
    cfg.admin_token = None;
    cfg.insecure_no_auth = true;
    let s = TestServer::start_with(cfg).await;
    let r = crate::support::read(s.client.get(s.url("/Users")).send().await.unwrap()).await;
    assert_eq!(r.status, 200);
    assert!(!tmp.path().join("tokens.json").exists(), "no token is created in insecure mode");
    s.stop().await;
}
