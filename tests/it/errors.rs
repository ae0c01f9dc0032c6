//! Every refusal is a SCIM error that names the offending value, and writes nothing.

use reqwest::Method;
use serde_json::json;

use crate::support::{config, q, TestServer};

#[tokio::test]
async fn bad_input_table() {
    let s = TestServer::start().await;
    let id = s.post("/Users", &json!({"userName": "taken"})).await.id();
    let before = s.log_position().await;

    // (method, path, raw body, content type, status, scimType, detail fragment)
    let table: Vec<(Method, String, &str, &str, u16, Option<&str>, &str)> = vec![
        (
            Method::POST,
            "/Users".into(),
            "{not json",
            "application/scim+json",
            400,
            Some("invalidSyntax"),
            "not valid JSON",
        ),
        (Method::POST, "/Users".into(), "[1,2]", "application/scim+json", 400, Some("invalidSyntax"), "JSON object"),
        (
            Method::POST,
            "/Users".into(),
            r#"{"name": {"givenName": "x"}}"#,
            "application/json",
            400,
            Some("invalidValue"),
            "userName",
        ),
        (
            Method::POST,
            "/Users".into(),
            r#"{"userName": 42}"#,
            "application/scim+json",
            400,
            Some("invalidValue"),
            "got a number 42",
        ),
        (
            Method::POST,
            "/Users".into(),
            r#"{"userName": "a", "active": "perhaps"}"#,
            "application/scim+json",
            400,
            Some("invalidValue"),
            "\"perhaps\"",
        ),
        (
            Method::POST,
            "/Users".into(),
            r#"{"userName": "a", "emails": "x@y"}"#,
            "application/scim+json",
            400,
            Some("invalidValue"),
            "'emails' must be a list of objects",
        ),
        (
            Method::POST,
            "/Users".into(),
            r#"{"userName": "TAKEN"}"#,
            "application/scim+json",
            409,
            Some("uniqueness"),
            "\"TAKEN\"",
        ),
        (Method::POST, "/Users".into(), r#"{"userName": "a"}"#, "text/plain", 415, None, "text/plain"),
        (Method::PUT, "/Users/nope".into(), r#"{"userName": "a"}"#, "application/scim+json", 404, None, "\"nope\""),
        (
            Method::PUT,
            format!("/Users/{id}"),
            r#"{"userName": ""}"#,
            "application/scim+json",
            400,
            Some("invalidValue"),
            "userName",
        ),
        (
            Method::POST,
            "/Groups".into(),
            r#"{"members": []}"#,
            "application/scim+json",
            400,
            Some("invalidValue"),
            "displayName",
        ),
        (
            Method::POST,
            "/Groups".into(),
            r#"{"displayName": "g", "members": [{"value": 1}]}"#,
            "application/scim+json",
            400,
            Some("invalidValue"),
            "members.value",
        ),
        (
            Method::GET,
            format!("/Users?filter={}", q("userName eq")),
            "",
            "",
            400,
            Some("invalidFilter"),
            "expected a value",
        ),
        (
            Method::GET,
            format!("/Users?filter={}", q("userName zz \"a\"")),
            "",
            "",
            400,
            Some("invalidFilter"),
            "\"zz\"",
        ),
        (
            Method::GET,
            format!("/Users?filter={}", q("userName eq bob")),
            "",
            "",
            400,
            Some("invalidFilter"),
            "position 12",
        ),
        (Method::GET, "/Users?count=ten".into(), "", "", 400, Some("invalidValue"), "\"ten\""),
        (Method::GET, "/Users/nope".into(), "", "", 404, None, "\"nope\""),
        (Method::GET, "/Groups/nope".into(), "", "", 404, None, "\"nope\""),
        (Method::GET, "/Me".into(), "", "", 501, None, "/Me"),
        (Method::POST, "/Schemas".into(), "{}", "application/scim+json", 405, None, "not allowed"),
        (Method::DELETE, "/ServiceProviderConfig".into(), "", "", 405, None, "not allowed"),
        (Method::GET, "/Nowhere".into(), "", "", 404, None, "no such"),
        (Method::GET, format!("{}/api/v1/users/x/erase", s.base), "", "", 405, None, "not allowed"),
        (Method::POST, format!("{}/api/v1/access/check", s.base), "{}", "application/json", 405, None, "not allowed"),
        (Method::GET, format!("{}/api/v1/nowhere", s.base), "", "", 404, None, "no such"),
    ];
    for (method, path, body, ct, status, scim_type, detail) in table {
        let url = if path.starts_with("http") { path.clone() } else { s.url(&path) };
        let mut req = s.client.request(method.clone(), url).bearer_auth(&s.token);
        if !ct.is_empty() {
            req = req.header("content-type", ct);
        }
        if !body.is_empty() {
            req = req.body(body.to_string());
        }
        let r = crate::support::read(req.send().await.unwrap()).await;
        eprintln!("{method} {path} {body}");
        r.assert_error(status, scim_type, detail);
    }
    assert_eq!(s.log_position().await, before, "no refused request wrote anything");
}

/// A parameter sent twice (in any case) is refused, naming it, on every endpoint that reads
/// parameters: the server cannot know which value was meant, and keeping one would drop the other.
#[tokio::test]
async fn a_parameter_sent_twice_is_refused_and_writes_nothing() {
    let s = TestServer::start().await;
    let id = s.post("/Users", &json!({"userName": "taken"})).await.id();
    let before = s.log_position().await;
    let user = r#"{"userName": "new.one"}"#;
    let patch = r#"{"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "displayName", "value": "D"}]}"#;
    let filters = format!("filter={}&filter={}", q(r#"userName eq "a""#), q(r#"userName eq "b""#));
    let api = |p: &str| format!("{}/api/v1{p}", s.base);

    // (method, path, body, the name the detail quotes)
    let table: Vec<(Method, String, &str, &str)> = vec![
        (Method::GET, format!("/Users?{filters}"), "", "filter"),
        (Method::GET, "/Users?count=1&COUNT=2".into(), "", "COUNT"),
        (Method::GET, "/Groups?startIndex=1&startindex=2".into(), "", "startindex"),
        (Method::GET, "/Users?fil%74er=x&filter=y".into(), "", "filter"),
        (Method::GET, format!("/Users/{id}?attributes=userName&attributes=emails"), "", "attributes"),
        (Method::GET, "/Roles?count=1&count=1".into(), "", "count"),
        (Method::POST, "/Users?attributes=id&attributes=userName".into(), user, "attributes"),
        (Method::PUT, format!("/Users/{id}?excludedAttributes=a&excludedAttributes=b"), user, "excludedAttributes"),
        (Method::PATCH, format!("/Users/{id}?attributes=a&Attributes=b"), patch, "Attributes"),
        (Method::POST, "/Users/.search".into(), r#"{"filter": "userName pr", "Filter": "id pr"}"#, "ilter"),
        (Method::POST, "/.search".into(), r#"{"count": 1, "Count": 2}"#, "ount"),
        (Method::GET, api(&format!("/access/check?user={id}&user=taken&environment=prod")), "", "user"),
        (Method::GET, api(&format!("/users/{id}/access?by=id&by=userName")), "", "by"),
    ];
    for (method, path, body, name) in table {
        let url = if path.starts_with("http") { path.clone() } else { s.url(&path) };
        let mut req = s.client.request(method.clone(), url).bearer_auth(&s.token);
        if !body.is_empty() {
            req = req.header("content-type", "application/scim+json").body(body.to_string());
        }
        let r = crate::support::read(req.send().await.unwrap()).await;
        eprintln!("{method} {path}");
        r.assert_error(400, Some("invalidValue"), &format!("{name}\" is sent twice"));
    }
    // The events API takes an events or admin token.
    let url = api("/events?after=0&limit=5&after=1");
    let r = crate::support::read(s.client.get(url).bearer_auth(s.admin_token()).send().await.unwrap()).await;
    r.assert_error(400, Some("invalidValue"), "\"after\" is sent twice");
    assert_eq!(s.log_position().await, before, "no refused request wrote anything");

    // Once, in any case, a parameter is read as before.
    let found = s.get(&format!("/Users?FILTER={}&Count=5", q(r#"userName eq "taken""#))).await;
    assert_eq!(found.status.as_u16(), 200, "{}", found.body);
    assert_eq!(found.body["totalResults"], 1, "{}", found.body);
    assert_eq!(found.body["Resources"][0]["id"], id.as_str(), "{}", found.body);
}

#[tokio::test]
async fn limits_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.max_body_bytes = 2048;
    cfg.max_page_size = 3;
    cfg.max_filter_length = 64;
    cfg.max_filter_depth = 3;
    cfg.max_scan = 4;
    let s = TestServer::start_with(cfg).await;
    let big = json!({"userName": "a", "title": "x".repeat(4096)});
    s.post("/Users", &big).await.assert_error(413, None, "2048 bytes");
    for i in 0..5 {
        assert_eq!(s.post("/Users", &json!({"userName": format!("u{i}")})).await.status, 201);
    }
    let page = s.get("/Users?count=100").await;
    assert_eq!(page.body["itemsPerPage"], 3, "count is clamped to max_page_size");
    assert_eq!(page.body["totalResults"], 5);
    let long = format!("userName eq \"{}\"", "x".repeat(80));
    s.get(&format!("/Users?filter={}", q(&long))).await.assert_error(400, Some("invalidFilter"), "limit of 64");
    s.get(&format!("/Users?filter={}", q("((((title pr))))"))).await.assert_error(
        400,
        Some("invalidFilter"),
        "limit of 3",
    );
    // An unindexed filter may read at most max_scan resources; an indexed one is not limited.
    s.get(&format!("/Users?filter={}", q("title pr"))).await.assert_error(400, Some("tooMany"), "more than 4");
    assert_eq!(s.get(&format!("/Users?filter={}", q("userName eq \"u1\""))).await.body["totalResults"], 1);
    let spc = s.get("/ServiceProviderConfig").await;
    assert_eq!(spc.body["filter"]["maxResults"], 3);
    s.stop().await;
}

#[tokio::test]
async fn full_write_queue_answers_503_with_retry_after_and_writes_nothing_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.write_queue_depth = 1;
    cfg.group_commit_max = 1;
    let s = TestServer::start_with(cfg).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (client, url, token) = (s.client.clone(), s.url("/Users"), s.token.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/scim+json")
                .body(json!({"userName": format!("q{i}")}).to_string())
                .send()
                .await
                .unwrap();
            crate::support::read(r).await
        }));
    }
    let mut created = 0u64;
    let mut refused = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            201 => created += 1,
            503 => {
                assert_eq!(r.header("retry-after"), Some("1"));
                r.assert_error(503, None, "write queue is full (1 writes waiting)");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(refused > 0, "64 concurrent writes into a queue of 1 must overflow");
    assert_eq!(s.log_position().await, created, "exactly the acknowledged writes are in the log");
    assert_eq!(s.get("/Users").await.body["totalResults"], created);
    s.stop().await;
}
