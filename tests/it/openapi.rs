//! The OpenAPI description of `/api/v1`: served, equal to the committed snapshot, true to what
//! the server answers, and readable in a docs page that needs no network.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{manifest_dir, TestServer};

const SNAPSHOT: &str = "docs/openapi.json";
const PROD_ADMIN: &str = "urn:scimlog:role:environment:prod:admin";
const GROUP_ACCESS: &str = "urn:scimlog:params:scim:schemas:extension:access:2.0:Group";

async fn public_get(s: &TestServer, path: &str) -> reqwest::Response {
    s.client.get(format!("{}{path}", s.base)).send().await.unwrap()
}

/// The description is public, and it is the committed `docs/openapi.json`: a change to the API
/// shows up in review as a change to that file.
#[tokio::test]
async fn the_description_is_served_without_a_token_and_matches_the_snapshot() {
    let s = TestServer::start().await;
    let resp = public_get(&s, "/api/v1/openapi.json").await;
    assert_eq!(resp.status(), 200);
    let served: Value = resp.json().await.unwrap();
    assert_eq!(served["openapi"], "3.1.0");
    assert_eq!(served["servers"][0]["url"], "/api/v1");
    let path = format!("{}/{SNAPSHOT}", manifest_dir());
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        served == committed,
        "the served description differs from {SNAPSHOT}; if the change is meant, run \
         `scimlog openapi > {SNAPSHOT}` and review the diff"
    );
}

/// The validator of one documented schema (`#/components/schemas/...`), resolved in the document.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["components"] = doc["components"].clone();
    jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}"))
}

/// One request of the table: the route template it exercises, and the status it must get.
struct Case {
    method: Method,
    template: &'static str,
    path: String,
    body: Option<Value>,
    admin: bool,
    status: u16,
}

fn case(method: Method, template: &'static str, path: &str, body: Option<Value>, status: u16) -> Case {
    Case { method, template, path: path.into(), body, admin: false, status }
}

/// Every documented operation is exercised, and every answer (success or error) has a status
/// the document lists for it, the media type it names, and a body its schema accepts.
#[tokio::test]
async fn every_answer_is_what_the_description_says() {
    let s = TestServer::start_configured(|c| c.set_stream = vec!["default/siem".parse().unwrap()]).await;
    let doc: Value = public_get(&s, "/api/v1/openapi.json").await.json().await.unwrap();
    let user = s.post("/Users", &json!({"userName": "oa.user", "externalId": "ext-oa", "roles": [PROD_ADMIN]})).await;
    let uid = user.id();
    let group = json!({"displayName": "oa", "members": [{"value": uid}],
        GROUP_ACCESS: {"roles": [{"value": "urn:scimlog:role:environment:staging:viewer"}]}});
    assert_eq!(s.post("/Groups", &group).await.status, 201);
    let erased = s.post("/Users", &json!({"userName": "oa.erased"})).await.id();
    // The schemas are not vacuous: a wrong answer is refused.
    let decision = validator(&doc, &json!({"$ref": "#/components/schemas/AccessDecision"}));
    assert!(decision.validate(&json!({"allowed": true, "reason": "r"})).is_ok());
    assert!(decision.validate(&json!({"allowed": "yes", "reason": "r"})).is_err());
    assert!(decision.validate(&json!({"allowed": true})).is_err());

    let mut cases = vec![
        case(Method::GET, "/users/{id}/access", &format!("/users/{uid}/access"), None, 200),
        case(Method::GET, "/users/{id}/access", "/users/ext-oa/access?by=externalId", None, 200),
        case(Method::GET, "/users/{id}/access", "/users/nobody/access", None, 404),
        case(Method::GET, "/access/check", "/access/check?user=oa.user&role=admin&environment=prod", None, 200),
        case(Method::GET, "/access/check", "/access/check?user=oa.user&role=admin&environment=staging", None, 200),
        case(Method::GET, "/access/check", "/access/check?user=nobody&environment=prod", None, 200),
        case(Method::GET, "/access/check", "/access/check?user=oa.user", None, 400),
        case(Method::GET, "/access/check", "/access/check?user=oa.user&environment=prod&by=email", None, 400),
        case(Method::GET, "/environments", "/environments", None, 200),
        case(Method::GET, "/environments/{name}/members", "/environments/staging/members", None, 200),
        case(Method::GET, "/environments/{name}/members", "/environments/nowhere/members", None, 404),
        case(Method::GET, "/resource-groups", "/resource-groups", None, 200),
        case(Method::GET, "/organizations", "/organizations", None, 200),
        case(Method::PUT, "/hosts/{host_id}/user", "/hosts/laptop-1/user", Some(json!({"user": "oa.user"})), 403),
        case(Method::GET, "/hosts/{host_id}/user", "/hosts/laptop-1/user", None, 404),
        case(Method::POST, "/users/{id}/erase", &format!("/users/{erased}/erase"), Some(json!({"reason": "r"})), 403),
        case(Method::GET, "/events", "/events", None, 403),
        case(Method::GET, "/outbound/targets", "/outbound/targets", None, 403),
        case(Method::POST, "/outbound/targets/{name}/{action}", "/outbound/targets/crm/retry", None, 403),
        case(Method::POST, "/sets/streams/{name}/poll", "/sets/streams/siem/poll", Some(json!({})), 403),
        case(Method::GET, "/sets/streams", "/sets/streams", None, 403),
        case(Method::POST, "/sets/streams", "/sets/streams", Some(json!({"name": "feed"})), 403),
        case(Method::DELETE, "/sets/streams/{name}", "/sets/streams/feed", None, 403),
    ];
    let target = json!({"name": "crm", "url": "http://127.0.0.1:9/scim/v2", "token_file": "crm.token"});
    let admin = [
        case(Method::GET, "/events", "/events?limit=3", None, 200),
        case(Method::GET, "/events", "/events?types=user.nope", None, 400),
        case(Method::PUT, "/hosts/{host_id}/user", "/hosts/laptop-1/user", Some(json!({"user": "oa.user"})), 200),
        case(Method::PUT, "/hosts/{host_id}/user", "/hosts/laptop-1/user", Some(json!({"by": "id"})), 400),
        case(Method::GET, "/hosts/{host_id}/user", "/hosts/laptop-1/user", None, 200),
        case(Method::DELETE, "/hosts/{host_id}/user", "/hosts/laptop-1/user", None, 204),
        case(Method::DELETE, "/hosts/{host_id}/user", "/hosts/laptop-1/user", None, 404),
        case(Method::POST, "/users/{id}/erase", &format!("/users/{erased}/erase"), Some(json!({})), 400),
        case(Method::POST, "/users/{id}/erase", &format!("/users/{erased}/erase"), Some(json!({"reason": "r"})), 200),
        case(Method::POST, "/users/{id}/erase", &format!("/users/{erased}/erase"), Some(json!({"reason": "r"})), 404),
        case(Method::GET, "/outbound/targets", "/outbound/targets", None, 200),
        case(Method::POST, "/outbound/targets", "/outbound/targets", Some(json!({"name": "crm"})), 400),
        case(Method::POST, "/outbound/targets", "/outbound/targets", Some(target.clone()), 201),
        case(Method::POST, "/outbound/targets", "/outbound/targets", Some(target), 409),
        case(Method::DELETE, "/outbound/targets/{name}", "/outbound/targets/crm", None, 204),
        case(Method::DELETE, "/outbound/targets/{name}", "/outbound/targets/crm", None, 404),
        case(Method::POST, "/outbound/targets/{name}/{action}", "/outbound/targets/nope/retry", None, 404),
        case(Method::POST, "/outbound/targets/{name}/{action}", "/outbound/targets/nope/explode", None, 400),
        case(
            Method::POST,
            "/sets/streams/{name}/poll",
            "/sets/streams/siem/poll",
            Some(json!({"returnImmediately": true})),
            200,
        ),
        case(
            Method::POST,
            "/sets/streams/{name}/poll",
            "/sets/streams/siem/poll",
            Some(json!({"ack": ["1.0000000000000000"]})),
            400,
        ),
        case(Method::POST, "/sets/streams/{name}/poll", "/sets/streams/nope/poll", Some(json!({})), 404),
        case(Method::GET, "/sets/streams", "/sets/streams", None, 200),
        case(Method::POST, "/sets/streams", "/sets/streams", Some(json!({"name": "feed", "groups": ["nope"]})), 400),
        case(Method::POST, "/sets/streams", "/sets/streams", Some(json!({"name": "feed"})), 201),
        case(Method::POST, "/sets/streams", "/sets/streams", Some(json!({"name": "feed"})), 409),
        case(Method::DELETE, "/sets/streams/{name}", "/sets/streams/feed", None, 204),
        case(Method::DELETE, "/sets/streams/{name}", "/sets/streams/feed", None, 404),
    ];
    cases.extend(admin.into_iter().map(|c| Case { admin: true, ..c }));
    cases.push(Case { admin: false, ..case(Method::GET, "/environments", "/environments", None, 401) });

    let mut exercised = BTreeSet::new();
    for (n, c) in cases.iter().enumerate() {
        let token = match (c.status, c.admin) {
            (401, _) => "not-a-token".to_string(),
            (_, true) => s.admin_token(),
            (_, false) => s.token.clone(),
        };
        let url = format!("{}/api/v1{}", s.base, c.path);
        let r = s.send_as(&token, c.method.clone(), &url, c.body.as_ref(), &[]).await;
        let what = format!("case {n}: {} {}", c.method, c.path);
        assert_eq!(r.status.as_u16(), c.status, "{what}: {}", r.body);
        let method = c.method.as_str().to_ascii_lowercase();
        exercised.insert((c.template.to_string(), method.clone()));
        let op = &doc["paths"][c.template][&method];
        assert!(op.is_object(), "{what}: {} {} is not in the description", c.method, c.template);
        let documented = &op["responses"][c.status.to_string()];
        assert!(documented.is_object(), "{what}: status {} is not documented", c.status);
        let Some(content) = documented["content"].as_object() else {
            assert!(r.body.is_null(), "{what}: documented without a body, answered {}", r.body);
            continue;
        };
        let (media_type, schema) = content.iter().next().unwrap();
        assert_eq!(r.header("content-type"), Some(media_type.as_str()), "{what}");
        let v = validator(&doc, &schema["schema"]);
        if let Err(e) = v.validate(&r.body) {
            panic!("{what}: the answer {} does not match its schema: {e}", r.body);
        }
    }
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, item)| item.as_object().unwrap().keys().map(move |m| (p.clone(), m.clone())))
        .collect();
    assert_eq!(exercised, documented, "every documented operation is exercised, and only those");
}

/// The docs page and everything it loads come from this server: no asset is fetched from the
/// network (no CDN, and Swagger UI's online validator is off).
#[tokio::test]
async fn the_docs_page_loads_only_from_this_server() {
    let s = TestServer::start().await;
    let resp = public_get(&s, "/api/docs/").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = resp.text().await.unwrap();
    let mut assets = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            assets.push(part.split('"').next().unwrap().to_string());
        }
    }
    assert!(assets.iter().any(|a| a.ends_with("swagger-ui-bundle.js")), "{assets:?}");
    for asset in &assets {
        assert!(!asset.contains("://") && !asset.starts_with("//"), "{asset} is not loaded from this server");
        let r = public_get(&s, &format!("/api/docs/{}", asset.trim_start_matches("./"))).await;
        assert_eq!(r.status(), 200, "{asset}");
    }
    let init = public_get(&s, "/api/docs/swagger-initializer.js").await.text().await.unwrap();
    assert!(init.contains("\"url\": \"/api/v1/openapi.json\""), "{init}");
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
}
