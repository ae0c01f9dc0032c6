//! Entra ID's wire forms, as its provisioning engine and SCIM Validator send them: raw quotes in
//! the request target, value paths followed by a sub-attribute, membership lookups.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{q, TestServer};

/// Sends raw request bytes on one connection and reads `answers` responses (each with a
/// Content-Length), returning their status lines and JSON bodies.
async fn raw_exchange(s: &TestServer, request: &str, answers: usize) -> Vec<(String, Value)> {
    let addr = s.base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < answers {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await.expect("answered in time").unwrap();
        assert!(n > 0, "connection closed after {} answers: {}", out.len(), String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        while let Some((status, body, used)) = one_response(&buf) {
            out.push((status, body));
            buf.drain(..used);
        }
    }
    out
}

fn one_response(buf: &[u8]) -> Option<(String, Value, usize)> {
    let text = std::str::from_utf8(buf).ok()?;
    let head_end = text.find("\r\n\r\n")?;
    let head = &text[..head_end];
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    let body_start = head_end + 4;
    if text.len() < body_start + length {
        return None;
    }
    let body = serde_json::from_str(&text[body_start..body_start + length]).unwrap_or(Value::Null);
    Some((head.lines().next().unwrap().to_string(), body, body_start + length))
}

/// The Entra SCIM Validator's request, byte for byte: raw `"` in the query, `+` for spaces, the
/// `@` percent-encoded inside the quotes. Two on one connection, the second after a body, so the
/// adapter that makes this work is seen following HTTP framing.
#[tokio::test]
async fn raw_quotes_in_the_request_target_are_answered() {
    let s = TestServer::start().await;
    let dale = s.post("/Users", &json!({"userName": "dale.mohr@example.com"})).await;
    assert_eq!(dale.status, 201);
    let token = &s.token;
    let body = r#"{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"x\"?y"}"#;
    let request = format!(
        "GET /scim/v2/Users?filter=userName+eq+\"dale.mohr%40example.com\" HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n\
         POST /scim/v2/Users HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/scim+json\r\nContent-Length: {}\r\n\r\n{body}\
         GET /scim/v2/Users?filter=userName+eq+\"nobody%40example.com\" HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n",
        body.len()
    );
    let answers = raw_exchange(&s, &request, 3).await;
    assert!(answers[0].0.starts_with("HTTP/1.1 200"), "{:?}", answers[0]);
    assert_eq!(answers[0].1["totalResults"], 1);
    assert_eq!(answers[0].1["Resources"][0]["id"], dale.id());
    assert!(answers[1].0.starts_with("HTTP/1.1 201"), "{:?}", answers[1]);
    assert_eq!(answers[1].1["userName"], "x\"?y", "the body passed unchanged");
    assert!(answers[2].0.starts_with("HTTP/1.1 200"), "{:?}", answers[2]);
    assert_eq!(answers[2].1["totalResults"], 0);
    s.stop().await;
}

/// `emails[type eq "work"].value eq "x"` and its kin: the element the brackets select must hold
/// the comparison after them.
#[tokio::test]
async fn value_paths_followed_by_a_sub_attribute_find_the_user() {
    let s = TestServer::start().await;
    s.post(
        "/Users",
        &json!({"userName": "pat", "emails": [{"value": "pat@work.example", "type": "work"}, {"value": "pat@home.example", "type": "home"}],
                "addresses": [{"type": "work", "postalCode": "98052"}], "phoneNumbers": [{"type": "mobile", "value": "+1 555 0100"}]}),
    )
    .await;
    s.post("/Users", &json!({"userName": "sam", "emails": [{"value": "pat@home.example", "type": "work"}]})).await;
    let table = [
        (r#"emails[type eq "work"].value eq "pat@work.example""#, vec!["pat"]),
        (r#"emails[type eq "work"].value eq "pat@home.example""#, vec!["sam"]),
        (r#"emails[type eq "home"].value eq "pat@home.example""#, vec!["pat"]),
        (r#"addresses[type eq "work"].postalCode eq "98052""#, vec!["pat"]),
        (r#"addresses[type eq "home"].postalCode eq "98052""#, vec![]),
        (r#"phoneNumbers[type eq "mobile"].value eq "+1 555 0100""#, vec!["pat"]),
        (r#"emails[type eq "work"].value pr and userName sw "s""#, vec!["sam"]),
    ];
    for (filter, want) in table {
        let r = s.get(&format!("/Users?filter={}&sortBy=userName", q(filter))).await;
        assert_eq!(r.status, 200, "{filter}: {}", r.body);
        let got: Vec<&str> =
            r.body["Resources"].as_array().unwrap().iter().map(|u| u["userName"].as_str().unwrap()).collect();
        assert_eq!(got, want, "{filter}");
    }
    s.stop().await;
}

/// Entra checks a membership with `id eq "<group>" and members eq "<user>"`; the members are
/// read by point lookups, combined with any other condition.
#[tokio::test]
async fn membership_filters_combine_with_other_conditions() {
    let s = TestServer::start().await;
    let u = s.post("/Users", &json!({"userName": "member"})).await.id();
    let other = s.post("/Users", &json!({"userName": "outsider"})).await.id();
    let g = s.post("/Groups", &json!({"displayName": "Ops", "members": [{"value": u}]})).await.id();
    let empty = s.post("/Groups", &json!({"displayName": "Empty"})).await.id();
    let table = [
        (format!(r#"id eq "{g}" and members eq "{u}""#), vec!["Ops"]),
        (format!(r#"id eq "{g}" and members eq "{other}""#), vec![]),
        (format!(r#"displayName eq "Ops" and members.value eq "{u}""#), vec!["Ops"]),
        (format!(r#"members[value eq "{u}"]"#), vec!["Ops"]),
        (format!(r#"displayName sw "O" and members[value eq "{u}" or value eq "{other}"]"#), vec!["Ops"]),
        ("members pr".to_string(), vec!["Ops"]),
        ("not (members pr)".to_string(), vec!["Empty"]),
        (format!(r#"id eq "{empty}" and members eq "{u}""#), vec![]),
    ];
    for (filter, want) in table {
        let r = s.get(&format!("/Groups?filter={}&excludedAttributes=members&sortBy=displayName", q(&filter))).await;
        assert_eq!(r.status, 200, "{filter}: {}", r.body);
        let got: Vec<&str> =
            r.body["Resources"].as_array().unwrap().iter().map(|g| g["displayName"].as_str().unwrap()).collect();
        assert_eq!(got, want, "{filter}");
    }
    let refused = s.get(&format!("/Groups?filter={}", q(r#"members co "a""#))).await;
    refused.assert_error(400, Some("invalidFilter"), "members co \"a\"");
    s.stop().await;
}

/// Entra's manager, without the enterprise URN: PATCH Add/Replace/Remove with `path: manager`,
/// and its manager lookup `id eq "<u>" and manager eq "<manager id>"`; also `attributes=manager`
/// and `sortBy=manager`, where the bare name resolves the same way.
#[tokio::test]
async fn the_bare_manager_is_the_enterprise_manager() {
    let s = TestServer::start().await;
    let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let boss = s.post("/Users", &json!({"userName": "boss"})).await.id();
    let chief = s.post("/Users", &json!({"userName": "chief"})).await.id();
    let u = s.post("/Users", &json!({"userName": "report", "title": "Engineer"})).await.id();
    let patch = |op: &str, value: Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": op, "path": "manager", "value": value}]});
    let r = s.send(reqwest::Method::PATCH, &format!("/Users/{u}"), Some(&patch("Add", json!(boss))), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body[ent]["manager"]["value"], boss);
    assert!(r.body["schemas"].as_array().unwrap().contains(&json!(ent)));

    let lookup = |m: &str| format!("/Users?filter={}", q(&format!(r#"id eq "{u}" and manager eq "{m}""#)));
    assert_eq!(s.get(&lookup(&boss)).await.body["totalResults"], 1, "Entra's manager lookup");
    assert_eq!(s.get(&lookup(&chief)).await.body["totalResults"], 0);

    let r = s.send(reqwest::Method::PATCH, &format!("/Users/{u}"), Some(&patch("Replace", json!(chief))), &[]).await;
    assert_eq!(r.body[ent]["manager"]["value"], chief);
    assert_eq!(s.get(&lookup(&chief)).await.body["totalResults"], 1);

    let only = s.get(&format!("/Users/{u}?attributes=manager")).await.body;
    assert_eq!(only[ent], json!({"manager": {"value": chief}}), "{only}");
    assert!(only.get("title").is_none() && only.get("userName").is_none(), "{only}");
    let without = s.get(&format!("/Users/{u}?excludedAttributes=manager")).await.body;
    assert!(without.get(ent).is_none(), "{without}");
    assert_eq!(without["title"], "Engineer");

    // Sorted by the manager's id: users without one come last.
    let other = s.post("/Users", &json!({"userName": "other", ent: {"manager": {"value": boss}}})).await.id();
    let sorted = s.get("/Users?sortBy=manager").await.body;
    let order: Vec<&str> = sorted["Resources"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut want = vec![(boss.clone(), other.clone()), (chief.clone(), u.clone())];
    want.sort();
    assert_eq!(&order[..2], [want[0].1.as_str(), want[1].1.as_str()]);

    let r = s
        .send(
            reqwest::Method::PATCH,
            &format!("/Users/{u}"),
            Some(&json!({"Operations": [{"op": "Remove", "path": "manager"}]})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.get(ent).is_none(), "{}", r.body);
    assert_eq!(s.get(&lookup(&chief)).await.body["totalResults"], 0);
    s.stop().await;
}

/// The Entra validator's forms (tests/fixtures/idp/entra-validator/forms.json) sent byte for
/// byte on a raw connection: raw quotes, `+`, value paths with a sub-attribute, the bare manager,
/// the membership check. Each lookup names the resources it must find.
#[tokio::test]
async fn entra_validator_forms_replayed_raw() {
    let s = TestServer::start().await;
    let path = format!("{}/tests/fixtures/idp/entra-validator/forms.json", crate::support::manifest_dir());
    let f: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut ids: std::collections::HashMap<String, String> = Default::default();
    for step in f["steps"].as_array().unwrap() {
        let what = step["what"].as_str().unwrap();
        let subst = |t: &str| ids.iter().fold(t.to_string(), |t, (k, v)| t.replace(&format!("{{{k}}}"), v));
        let target = subst(step["target"].as_str().unwrap());
        let body = step.get("request").map(|b| subst(&b.to_string())).unwrap_or_default();
        let mut request = format!(
            "{} {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n",
            step["method"].as_str().unwrap(),
            s.token,
            body.len()
        );
        if !body.is_empty() {
            request.push_str("Content-Type: application/scim+json\r\n");
        }
        request.push_str("\r\n");
        request.push_str(&body);
        let (status, answer) = raw_exchange(&s, &request, 1).await.remove(0);
        let want = step["statusCode"].as_u64().unwrap();
        assert!(status.starts_with(&format!("HTTP/1.1 {want}")), "{what}: {status} {answer}");
        if let Some(name) = step["capture"].as_str() {
            ids.insert(name.to_string(), answer["id"].as_str().unwrap().to_string());
        }
        if let Some(finds) = step["finds"].as_array() {
            let mut got: Vec<&str> =
                answer["Resources"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
            let mut want: Vec<&str> = finds.iter().map(|n| ids[n.as_str().unwrap()].as_str()).collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "{what}: {answer}");
        }
    }
    s.stop().await;
}
