//! SCIM Security Event Tokens (issue 19, RFC 9967) delivered by poll (RFC 8936): a receiver
//! written here verifies every SET against the server's JWKS and checks order, `txn` grouping
//! and completeness against the log; acknowledgements survive a restart; a `jti` that names no
//! SET of the stream is refused and acknowledges nothing.

use std::collections::BTreeMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{Reply, TestServer, ADMIN_TOKEN};

const STREAM: &str = "/api/v1/sets/streams/siem/poll";

async fn start() -> TestServer {
    TestServer::start_configured(|c| {
        c.set_stream = vec!["default/siem".parse().unwrap()];
        c.set_poll_max = 4;
    })
    .await
}

async fn poll(s: &TestServer, body: Value) -> Reply {
    s.send_as(ADMIN_TOKEN, Method::POST, &format!("{}{STREAM}", s.base), Some(&body), &[]).await
}

/// A receiver: the server's keys, and every SET it verified, by position.
struct Receiver {
    keys: JwkSet,
    aud: String,
    got: BTreeMap<u64, Value>,
}

impl Receiver {
    async fn new(s: &TestServer) -> Receiver {
        let jwks: Value = reqwest::get(format!("{}/sets/jwks.json", s.base)).await.unwrap().json().await.unwrap();
        Receiver {
            keys: serde_json::from_value(jwks).unwrap(),
            aud: format!("{}/sets/streams/siem", s.base),
            got: BTreeMap::new(),
        }
    }

    /// Verifies one SET (signature by a key of the JWKS, ES256, `typ`, audience) and returns
    /// its claims.
    fn verify(&self, jti: &str, jws: &str) -> Value {
        let header = jsonwebtoken::decode_header(jws).unwrap();
        assert_eq!(header.typ.as_deref(), Some("secevent+jwt"));
        let jwk = self.keys.find(header.kid.as_deref().expect("a kid")).expect("the kid is in the JWKS");
        let mut v = Validation::new(jsonwebtoken::Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.set_audience(&[&self.aud]);
        let claims = jsonwebtoken::decode::<Value>(jws, &DecodingKey::from_jwk(jwk).unwrap(), &v)
            .expect("a valid signature")
            .claims;
        assert_eq!(claims["jti"], jti, "the envelope's jti is the SET's");
        claims
    }

    /// Polls until nothing is left, acknowledging each batch with the next poll.
    async fn drain(&mut self, s: &TestServer) -> usize {
        let mut ack: Vec<String> = vec![];
        let mut polls = 0;
        loop {
            let r = poll(s, json!({"ack": ack, "returnImmediately": true})).await;
            assert_eq!(r.status, 200, "{}", r.body);
            polls += 1;
            let sets = r.body["sets"].as_object().unwrap();
            assert!(sets.len() <= 4, "maxEvents defaults to --set-poll-max");
            ack = vec![];
            let mut last = self.got.keys().last().copied().unwrap_or(0);
            for (jti, jws) in sets {
                let claims = self.verify(jti, jws.as_str().unwrap());
                let position: u64 = jti.split('.').next().unwrap().parse().unwrap();
                assert!(position > last, "SETs come in log order");
                last = position;
                assert!(self.got.insert(position, claims).is_none(), "no SET is delivered twice once acknowledged");
                ack.push(jti.clone());
            }
            if sets.is_empty() {
                assert_eq!(r.body["moreAvailable"], false);
                return polls;
            }
        }
    }
}

#[tokio::test]
async fn a_receiver_gets_every_change_signed_in_order_grouped_by_request() {
    let s = start().await;
    // A scripted workload: creates (one with an externalId), a PATCH, a deactivation, a group
    // with two members made in one request, a member removed, a deletion.
    let alice = s.post("/Users", &json!({"userName": "alice", "externalId": "A-1"})).await.id();
    let bob = s.post("/Users", &json!({"userName": "bob"})).await.id();
    let patch = |ops: Value| json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    s.send(
        Method::PATCH,
        &format!("/Users/{alice}"),
        Some(&patch(json!([{"op": "replace", "path": "title", "value": "CTO"}]))),
        &[],
    )
    .await;
    s.send(
        Method::PATCH,
        &format!("/Users/{bob}"),
        Some(&patch(json!([{"op": "replace", "path": "active", "value": false}]))),
        &[],
    )
    .await;
    let group =
        s.post("/Groups", &json!({"displayName": "Eng", "members": [{"value": alice}, {"value": bob}]})).await.id();
    s.send(
        Method::PATCH,
        &format!("/Groups/{group}"),
        Some(&patch(json!([{"op": "remove", "path": format!("members[value eq \"{bob}\"]")}]))),
        &[],
    )
    .await;
    assert_eq!(s.delete(&format!("/Users/{bob}")).await.status, 204);

    let mut receiver = Receiver::new(&s).await;
    receiver.drain(&s).await;
    // Completeness: one SET per user or group event of the log, and none for anything else.
    let log = s.send_as(ADMIN_TOKEN, Method::GET, &format!("{}/api/v1/events?limit=1000", s.base), None, &[]).await;
    let events = log.body["events"].as_array().unwrap();
    let expected: Vec<u64> = events
        .iter()
        .filter(|e| matches!(e["resourceType"].as_str(), Some("User" | "Group")) && e["type"] != "user.erased")
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(receiver.got.keys().copied().collect::<Vec<_>>(), expected);
    let uri_of = |p: u64| receiver.got[&p]["events"].as_object().unwrap().keys().next().unwrap().clone();
    for e in events.iter().filter(|e| expected.contains(&e["position"].as_u64().unwrap())) {
        let p = e["position"].as_u64().unwrap();
        let set = &receiver.got[&p];
        // txn: the request id, shared by every event of one request.
        assert_eq!(set["txn"], e["requestId"]);
        let kind = if e["resourceType"] == "User" { "Users" } else { "Groups" };
        assert_eq!(set["sub_id"]["format"], "scim");
        assert_eq!(set["sub_id"]["uri"], format!("/{kind}/{}", e["resourceId"].as_str().unwrap()));
        assert_eq!(set["iss"], format!("{}/scim/v2", s.base));
        let body = &set["events"][uri_of(p)];
        assert_eq!(body["version"], format!("W/\"{}\"", e["resourceVersion"]));
        let want = match e["type"].as_str().unwrap() {
            "user.created" | "group.created" => "urn:ietf:params:scim:event:prov:create:full",
            "user.updated" | "group.updated" | "group.renamed" | "group.member_added" | "group.member_removed" => {
                "urn:ietf:params:scim:event:prov:patch:full"
            }
            "user.deactivated" => "urn:ietf:params:scim:event:prov:deactivate",
            "user.reactivated" => "urn:ietf:params:scim:event:prov:activate",
            "user.deleted" | "group.deleted" => "urn:ietf:params:scim:event:prov:delete",
            other => panic!("no SET expected for {other}"),
        };
        assert_eq!(uri_of(p), want, "position {p}");
    }
    // The group and its two members came in one request: one txn over three SETs.
    let created = events.iter().find(|e| e["type"] == "group.created").unwrap();
    let same_txn = receiver.got.values().filter(|c| c["txn"] == created["requestId"]).count();
    assert_eq!(same_txn, 3);
    let alice_created = receiver.got.values().find(|c| c["sub_id"]["uri"] == format!("/Users/{alice}")).unwrap();
    assert_eq!(alice_created["sub_id"]["externalId"], "A-1");
    let data = &alice_created["events"]["urn:ietf:params:scim:event:prov:create:full"]["data"];
    assert_eq!((data["id"].as_str(), data["userName"].as_str()), (Some(alice.as_str()), Some("alice")));
    // ServiceProviderConfig says what this server issues.
    let spc = s.get("/ServiceProviderConfig").await;
    let uris: Vec<&str> =
        spc.body["securityEvents"]["eventUris"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    for p in receiver.got.keys() {
        assert!(uris.contains(&uri_of(*p).as_str()));
    }
    assert_eq!(spc.body["securityEvents"]["asyncRequest"], "none");
    // A tenant without a stream is told none is configured (the attribute is absent).
    let other = scimlog::auth::create_token(s.data_dir(), "other-idp", "other", scimlog::auth::Role::Scim).unwrap();
    let spc = s.send_as(&other, Method::GET, "/ServiceProviderConfig", None, &[]).await;
    assert_eq!(spc.status, 200);
    assert!(spc.body.get("securityEvents").is_none(), "{}", spc.body);
}

/// What was delivered and not acknowledged comes again, after a restart too; what was
/// acknowledged never does.
#[tokio::test]
async fn acknowledgements_survive_a_restart() {
    let s = start().await;
    for n in 0..6 {
        s.post("/Users", &json!({"userName": format!("u{n}")})).await;
    }
    let first = poll(&s, json!({"maxEvents": 2, "returnImmediately": true})).await;
    let jtis: Vec<String> = first.body["sets"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(jtis.len(), 2);
    assert_eq!(first.body["moreAvailable"], true);
    let s = s.restart().await;
    let again = poll(&s, json!({"maxEvents": 2, "returnImmediately": true})).await;
    assert_eq!(
        again.body["sets"].as_object().unwrap().keys().cloned().collect::<Vec<_>>(),
        jtis,
        "not acknowledged: sent again"
    );
    // Acknowledge only the second: the first comes again, the second never.
    let r = poll(&s, json!({"ack": [jtis[1]], "maxEvents": 2, "returnImmediately": true})).await;
    let next: Vec<String> = r.body["sets"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(next[0], jtis[0]);
    assert!(!next.contains(&jtis[1]));
    let s = s.restart().await;
    let mut receiver = Receiver::new(&s).await;
    poll(&s, json!({"ack": [jtis[0]], "maxEvents": 0})).await;
    receiver.drain(&s).await;
    assert_eq!(receiver.got.len(), 4, "the six creates, less the two acknowledged");
    assert!(jtis.iter().all(|j| !receiver.got.values().any(|c| c["jti"] == j.as_str())));
}

#[tokio::test]
async fn an_unknown_jti_is_refused_and_acknowledges_nothing() {
    let s = start().await;
    s.post("/Users", &json!({"userName": "x"})).await;
    let r = poll(&s, json!({"returnImmediately": true})).await;
    let good = r.body["sets"].as_object().unwrap().keys().next().unwrap().clone();
    let (position, _) = good.split_once('.').unwrap();
    let cases = [
        "999.0123456789abcdef".to_string(),     // beyond the log
        format!("{position}.0000000000000000"), // a real position, another hash
        "not-a-jti".to_string(),
    ];
    for bad in cases {
        let r = poll(&s, json!({"ack": [good.clone(), bad.clone()], "returnImmediately": true})).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.body["err"], "invalid_request");
        assert!(r.body["description"].as_str().unwrap().contains(&bad), "{}", r.body);
    }
    let r = poll(&s, json!({"returnImmediately": true})).await;
    assert!(r.body["sets"].as_object().unwrap().contains_key(&good), "the good jti was not acknowledged either");
    let r = poll(&s, json!({"acks": [], "returnImmediately": true})).await;
    assert_eq!(r.status, 400, "an unknown member is refused, not ignored");
}

#[tokio::test]
async fn streams_are_per_tenant_and_for_event_readers() {
    let s = start().await;
    let r = s.send(Method::POST, &format!("{}{STREAM}", s.base), Some(&json!({})), &[]).await;
    assert_eq!(r.status, 403, "a scim token may not read SETs");
    let r = s
        .send_as(
            ADMIN_TOKEN,
            Method::POST,
            &format!("{}/api/v1/sets/streams/other/poll", s.base),
            Some(&json!({})),
            &[],
        )
        .await;
    r.assert_error(404, None, "no SET poll stream \"other\"");
}

/// A poll with nothing to deliver waits for the next write.
#[tokio::test]
async fn a_poll_waits_for_the_next_change() {
    let s = start().await;
    let (client, url) = (s.client.clone(), format!("{}{STREAM}", s.base));
    let waiting = tokio::spawn(async move {
        client.post(url).bearer_auth(ADMIN_TOKEN).json(&json!({})).send().await.unwrap().json::<Value>().await.unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "nothing to deliver yet: the poll waits");
    s.post("/Users", &json!({"userName": "late"})).await;
    let body = waiting.await.unwrap();
    assert_eq!(body["sets"].as_object().unwrap().len(), 1);
}

/// A signing key that is not a P-256 PKCS#8 key stops the start, naming the file.
#[tokio::test]
async fn a_bad_signing_key_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("set.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n").unwrap();
    let mut cfg = crate::support::config(dir.path());
    cfg.set_signing_key_file = Some(key.clone());
    let e = scimlog::server::Server::start(cfg).await.err().expect("the start fails").to_string();
    assert!(e.contains("SET signing key") && e.contains("set.pem"), "{e}");
}

/// A SET receiver's endpoint on loopback: answers 503 to the first `fail` SETs, 400 with an
/// RFC 8935 error to the next `refuse`, then 202; keeps every SET it accepted, in order.
struct Endpoint {
    url: String,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    attempts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn endpoint(fail: usize, refuse: usize) -> Endpoint {
    use std::sync::atomic::Ordering;
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (acc, att) = (accepted.clone(), attempts.clone());
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (acc, att) = (acc.clone(), att.clone());
            async move {
                assert_eq!(headers["content-type"], "application/secevent+jwt");
                let n = att.fetch_add(1, Ordering::SeqCst);
                if n < fail {
                    return (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new());
                }
                if n < fail + refuse {
                    let err = json!({"err": "invalid_key", "description": "not this key"}).to_string();
                    return (axum::http::StatusCode::BAD_REQUEST, err);
                }
                acc.lock().unwrap().push(body);
                (axum::http::StatusCode::ACCEPTED, String::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Endpoint { url, accepted, attempts }
}

async fn streams(s: &TestServer) -> Value {
    s.send_as(ADMIN_TOKEN, Method::GET, &format!("{}/api/v1/sets/streams", s.base), None, &[]).await.body
}

/// Push (RFC 8935): every SET reaches the receiver in log order, once, through failures (503:
/// retried with backoff) and refusals (400 with an error: kept, not retried), and across a
/// restart; the stream's state is visible.
#[tokio::test]
async fn push_delivers_in_order_once_through_failures_and_restarts() {
    let hook = endpoint(2, 1).await;
    let target = format!("default/hook={}", hook.url);
    let s = TestServer::start_configured(|c| c.set_push = vec![target.parse().unwrap()]).await;
    for n in 0..5 {
        s.post("/Users", &json!({"userName": format!("p{n}")})).await;
    }
    let accepted = hook.accepted.clone();
    crate::support::eventually(30, "four SETs accepted", || {
        let a = accepted.clone();
        async move { a.lock().unwrap().len() == 4 }
    })
    .await;
    let view = streams(&s).await;
    let hook_view = view.as_array().unwrap().iter().find(|v| v["name"] == "hook").unwrap().clone();
    assert_eq!(hook_view["delivery"], "push");
    assert_eq!((hook_view["push"]["delivered"].as_u64(), hook_view["push"]["refused"].as_u64()), (Some(4), Some(1)));
    assert!(hook_view["push"]["lastError"].as_str().unwrap().contains("invalid_key"), "{hook_view}");
    assert_eq!(hook.attempts.load(std::sync::atomic::Ordering::SeqCst), 2 + 5, "503s retried, the refusal not");
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", s.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "scimlog_set_push_delivered{tenant=\"default\",stream=\"hook\"} 4",
        "scimlog_set_push_refused{tenant=\"default\",stream=\"hook\"} 1",
        "scimlog_set_push_failures{tenant=\"default\",stream=\"hook\"} 0",
        "scimlog_set_stream_lag_positions{tenant=\"default\",stream=\"hook\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // After a restart, only new changes are sent.
    let s = s.restart().await;
    s.post("/Users", &json!({"userName": "after-restart"})).await;
    let accepted = hook.accepted.clone();
    crate::support::eventually(30, "the new SET accepted", || {
        let a = accepted.clone();
        async move { a.lock().unwrap().len() == 5 }
    })
    .await;
    let mut receiver = Receiver::new(&s).await;
    let mut last = 0;
    for jws in hook.accepted.lock().unwrap().iter() {
        let header = jsonwebtoken::decode_header(jws).unwrap();
        assert_eq!(header.typ.as_deref(), Some("secevent+jwt"));
        let claims: Value = {
            let parts: Vec<&str> = jws.split('.').collect();
            use base64::Engine;
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
        };
        let jti = claims["jti"].as_str().unwrap().to_string();
        // Each server start listens on a new port: the audience is that of the SET's issuer.
        receiver.aud = format!("{}/sets/streams/hook", claims["iss"].as_str().unwrap().trim_end_matches("/scim/v2"));
        receiver.verify(&jti, jws);
        let position: u64 = jti.split('.').next().unwrap().parse().unwrap();
        assert!(position > last, "in log order, each once");
        last = position;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(hook.accepted.lock().unwrap().len(), 5, "nothing sent twice");
    assert_eq!(hook.attempts.load(std::sync::atomic::Ordering::SeqCst), 2 + 5 + 1);
}

async fn add_stream(s: &TestServer, body: Value) -> Reply {
    s.send_as(ADMIN_TOKEN, Method::POST, &format!("{}/api/v1/sets/streams", s.base), Some(&body), &[]).await
}

async fn poll_stream(s: &TestServer, name: &str, body: Value) -> Reply {
    let url = format!("{}/api/v1/sets/streams/{name}/poll", s.base);
    s.send_as(ADMIN_TOKEN, Method::POST, &url, Some(&body), &[]).await
}

/// Waits until the running server serves stream `name` (it reads the file within a second).
async fn served(s: &TestServer, name: &str, present: bool) {
    let (client, url) = (s.client.clone(), format!("{}/api/v1/sets/streams", s.base));
    crate::support::eventually(10, &format!("stream {name} served: {present}"), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let v: Value = client.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
            v.as_array().unwrap().iter().any(|st| st["name"] == name) == present
        }
    })
    .await;
}

/// Every SET of a stream, verified, acknowledged as it goes: (jti, event URI, subject id).
async fn drain_stream(s: &TestServer, name: &str) -> Vec<(String, String, String, Value)> {
    let mut receiver = Receiver::new(s).await;
    receiver.aud = format!("{}/sets/streams/{name}", s.base);
    let (mut ack, mut out): (Vec<String>, Vec<_>) = (vec![], vec![]);
    loop {
        let r = poll_stream(s, name, json!({"ack": ack, "returnImmediately": true, "maxEvents": 3})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let sets = r.body["sets"].as_object().unwrap().clone();
        if sets.is_empty() {
            assert_eq!(r.body["moreAvailable"], false);
            return out;
        }
        ack = sets.keys().cloned().collect();
        for (jti, jws) in sets {
            let claims = receiver.verify(&jti, jws.as_str().unwrap());
            let uri = claims["events"].as_object().unwrap().keys().next().unwrap().clone();
            let subject = claims["sub_id"]["id"].as_str().unwrap().to_string();
            out.push((jti, uri, subject, claims));
        }
    }
}

const FEED_ADD: &str = "urn:ietf:params:scim:event:feed:add";
const FEED_REMOVE: &str = "urn:ietf:params:scim:event:feed:remove";
const PROV: &str = "urn:ietf:params:scim:event:prov";

fn members(op: &str, ids: &[&str]) -> Value {
    let value: Vec<Value> = ids.iter().map(|id| json!({"value": id})).collect();
    let op = match op {
        "add" => json!({"op": "add", "path": "members", "value": value}),
        _ => json!({"op": "remove", "path": format!("members[value eq \"{}\"]", ids[0])}),
    };
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [op]})
}

async fn patch(s: &TestServer, path: String, body: Value) {
    let r = s.send(Method::PATCH, &path, Some(&body), &[]).await;
    assert!(r.status.as_u16() < 300, "{path}: {}", r.body);
}

fn retitle(title: &str) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
           "Operations": [{"op": "replace", "path": "title", "value": title}]})
}

/// A feed (RFC 9967 §2.3): a stream scoped to a group carries its user members only, with
/// feed:add as they join, feed:remove as they leave (and none for a member deleted: its
/// prov:delete instead), feed:remove for every member when the group is deleted; the fold
/// goes on across a restart with what was acknowledged.
#[tokio::test]
async fn a_feed_carries_its_groups_members_with_feed_add_and_remove() {
    let s = TestServer::start().await;
    let alice = s.post("/Users", &json!({"userName": "alice"})).await.id();
    let bob = s.post("/Users", &json!({"userName": "bob"})).await.id();
    let carol = s.post("/Users", &json!({"userName": "carol"})).await.id();
    let eng = s.post("/Groups", &json!({"displayName": "Eng"})).await.id();
    let sales = s.post("/Groups", &json!({"displayName": "Sales"})).await.id();
    assert_eq!(add_stream(&s, json!({"name": "eng-feed", "groups": [eng]})).await.status, 201);
    served(&s, "eng-feed", true).await;
    patch(&s, format!("/Groups/{eng}"), members("add", &[&alice])).await; // feed:add alice
    patch(&s, format!("/Users/{alice}"), retitle("CTO")).await; // her change
    patch(&s, format!("/Users/{bob}"), retitle("Intern")).await; // not in the feed
    patch(&s, format!("/Groups/{sales}"), members("add", &[&alice])).await; // not a feed group
    patch(&s, format!("/Groups/{eng}"), members("add", &[&bob])).await; // feed:add bob

    // Half now, acknowledged; the rest after a restart.
    let first = drain_stream(&s, "eng-feed").await;
    let s = s.restart().await;
    patch(&s, format!("/Groups/{eng}"), members("remove", &[&alice])).await; // feed:remove alice
    patch(&s, format!("/Users/{alice}"), retitle("CEO")).await; // out of the feed
    assert_eq!(s.delete(&format!("/Users/{bob}")).await.status, 204); // prov:delete, no feed:remove
    patch(&s, format!("/Groups/{eng}"), members("add", &[&carol])).await; // feed:add carol
    assert_eq!(s.delete(&format!("/Groups/{eng}")).await.status, 204); // feed:remove carol
    let second = drain_stream(&s, "eng-feed").await;

    let got: Vec<(String, String)> =
        first.iter().chain(&second).map(|(_, uri, subject, _)| (uri.clone(), subject.clone())).collect();
    let want = vec![
        (FEED_ADD.to_string(), alice.clone()),
        (format!("{PROV}:patch:full"), alice.clone()),
        (FEED_ADD.to_string(), bob.clone()),
        (FEED_REMOVE.to_string(), alice.clone()),
        (format!("{PROV}:delete"), bob.clone()),
        (FEED_ADD.to_string(), carol.clone()),
        (FEED_REMOVE.to_string(), carol.clone()),
    ];
    assert_eq!(got, want);
    // The feed's SETs are about users, named as SCIM names them, in the request's txn.
    let log = s.send_as(ADMIN_TOKEN, Method::GET, &format!("{}/api/v1/events?limit=1000", s.base), None, &[]).await;
    let events = log.body["events"].as_array().unwrap();
    for (jti, _, subject, claims) in first.iter().chain(&second) {
        assert_eq!(claims["sub_id"]["uri"], format!("/Users/{subject}"));
        let position: u64 = jti.split('.').next().unwrap().parse().unwrap();
        let e = events.iter().find(|e| e["position"] == position).unwrap();
        assert_eq!(claims["txn"], e["requestId"], "{jti}");
    }
    let jtis: std::collections::BTreeSet<&String> = first.iter().chain(&second).map(|(j, ..)| j).collect();
    assert_eq!(jtis.len(), want.len(), "every jti is its own");
    // The server says a feed carries feed events.
    let spc = s.get("/ServiceProviderConfig").await;
    let uris = spc.body["securityEvents"]["eventUris"].as_array().unwrap();
    assert!(uris.contains(&json!(FEED_ADD)) && uris.contains(&json!(FEED_REMOVE)), "{uris:?}");
}

/// Streams are added and removed while the server runs, by the admin API and by the CLI;
/// bad tables are refused naming the value; an event filter narrows what a stream carries.
#[tokio::test]
async fn streams_are_managed_over_the_api_and_the_cli_while_the_server_runs() {
    let s = TestServer::start().await;
    let bad: [(Value, u16, &str); 7] = [
        (json!({"name": "x", "events": ["urn:ietf:params:scim:event:prov:put:full"]}), 400, "prov:put:full"),
        (json!({"name": "x", "events": [FEED_ADD]}), 400, "need groups"),
        (json!({"name": "x", "groups": ["no-such-group"]}), 400, "no-such-group"),
        (json!({"name": "x", "url": "http://127.0.0.1:9/", "token_file": "../master.key"}), 400, "../master.key"),
        (json!({"name": "x", "tenant": "other"}), 400, "other"),
        (json!({"name": "x", "colour": "red"}), 400, "colour"),
        (json!({"name": "x y"}), 400, "x y"),
    ];
    for (body, status, detail) in bad {
        add_stream(&s, body.clone()).await.assert_error(status, Some("invalidValue"), detail);
    }
    let url = format!("{}/api/v1/sets/streams", s.base);
    let r = s.send(Method::POST, &url, Some(&json!({"name": "x"})), &[]).await;
    assert_eq!(r.status, 403, "a scim token may not add streams");
    let deletes = json!({"name": "deletes", "events": [format!("{PROV}:delete")]});
    assert_eq!(add_stream(&s, deletes.clone()).await.status, 201);
    add_stream(&s, deletes).await.assert_error(409, Some("uniqueness"), "deletes");
    served(&s, "deletes", true).await;

    // The CLI, beside the running server.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_scimlog"))
            .args(args)
            .arg("--data-dir")
            .arg(s.data_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    cli(&["sets", "add", "--name", "from-cli"]);
    served(&s, "from-cli", true).await;
    let u = s.post("/Users", &json!({"userName": "gone-soon"})).await.id();
    assert_eq!(s.delete(&format!("/Users/{u}")).await.status, 204);
    let only_deletes = drain_stream(&s, "deletes").await;
    assert_eq!(
        only_deletes.iter().map(|(_, uri, id, _)| (uri.as_str(), id.as_str())).collect::<Vec<_>>(),
        [(format!("{PROV}:delete").as_str(), u.as_str())],
        "the filter lets deletes through only"
    );
    assert_eq!(drain_stream(&s, "from-cli").await.len(), 2, "an unfiltered stream: the create and the delete");
    let listed = cli(&["sets", "list"]);
    assert!(listed.lines().any(|l| l.starts_with("default/deletes\tpoll\ttenant\tevents=1")), "{listed}");

    // Removed by the CLI and by the API: no longer served.
    cli(&["sets", "remove", "--name", "from-cli"]);
    let r = s.send_as(ADMIN_TOKEN, Method::DELETE, &format!("{url}/deletes"), None, &[]).await;
    assert_eq!(r.status, 204);
    let r = s.send_as(ADMIN_TOKEN, Method::DELETE, &format!("{url}/deletes"), None, &[]).await;
    r.assert_error(404, None, "deletes");
    served(&s, "from-cli", false).await;
    served(&s, "deletes", false).await;
    poll_stream(&s, "deletes", json!({})).await.assert_error(404, None, "deletes");
}

/// A push receiver that can go away and come back on the same port: it keeps every SET it
/// accepted as (jti, position, the scimlog incarnation that was running then).
struct Receiving {
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, u64, usize)>>>,
    epoch: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    addr: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiving {
    async fn start() -> Receiving {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = Receiving {
            got: Default::default(),
            epoch: Default::default(),
            addr: listener.local_addr().unwrap(),
            task: None,
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (got, epoch) = (self.got.clone(), self.epoch.clone());
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |body: String| {
                let (got, epoch) = (got.clone(), epoch.clone());
                async move {
                    use base64::Engine;
                    let payload = body.split('.').nth(1).unwrap();
                    let claims: Value = serde_json::from_slice(
                        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap(),
                    )
                    .unwrap();
                    let jti = claims["jti"].as_str().unwrap().to_string();
                    let position = jti.split('.').next().unwrap().parse().unwrap();
                    got.lock().unwrap().push((jti, position, epoch.load(std::sync::atomic::Ordering::SeqCst)));
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
        self.task = Some(tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }));
    }

    /// Gone: connections are refused until `back`.
    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn back(&mut self) {
        if self.task.is_none() {
            let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
            self.serve(listener);
        }
    }
}

/// RFC 8935 push, killed: the real binary is SIGKILLed at random moments while it writes and
/// pushes, and the receiver goes away and comes back. Every SET arrives, in log order; a SET
/// arrives twice only when the server died between the receiver's 202 and recording it, and
/// then it is the first thing the next incarnation sends, the same SET the last one sent last.
#[tokio::test]
async fn push_is_exact_across_sigkills_of_the_server_and_absences_of_the_receiver() {
    use crate::crash::{start, Rng, TOKEN};
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiving::start().await;
    let url = format!("http://{}/events", receiver.addr);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scimlog"))
        .args(["sets", "add", "--name", "hook", "--url", &url, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let client = reqwest::Client::new();
    let mut rng = Rng(0x5e7_9935);
    let created = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    const ROUNDS: usize = 25;
    for round in 0..ROUNDS {
        receiver.epoch.store(round, std::sync::atomic::Ordering::SeqCst);
        let mut p = start(dir.path(), None).await;
        // Writes go on while the server pushes, until it is killed.
        let writes = {
            let (client, base, created) = (client.clone(), p.base.clone(), created.clone());
            tokio::spawn(async move {
                loop {
                    let n = created.load(std::sync::atomic::Ordering::SeqCst);
                    let body = json!({"userName": format!("k{round}-{n}")});
                    let r = client.post(format!("{base}/scim/v2/Users")).bearer_auth(TOKEN).json(&body).send().await;
                    match r {
                        Ok(r) if r.status() == 201 => created.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                        _ => break,
                    };
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
        };
        if rng.next().is_multiple_of(4) {
            receiver.down();
        }
        tokio::time::sleep(std::time::Duration::from_millis(rng.next() % 300)).await;
        receiver.back().await;
        tokio::time::sleep(std::time::Duration::from_millis(50 + rng.next() % 300)).await;
        p.kill();
        let _ = writes.await;
        // Whatever the killed process had in flight has landed before the next incarnation.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let created = created.load(std::sync::atomic::Ordering::SeqCst);
    receiver.epoch.store(ROUNDS, std::sync::atomic::Ordering::SeqCst);
    let p = start(dir.path(), None).await;
    // Every user event of the log, by position.
    let admin = crate::support::ADMIN_TOKEN;
    let mut want: Vec<u64> = Vec::new();
    loop {
        let after = want.last().copied().unwrap_or(0);
        let url = format!("{}/api/v1/events?after={after}&limit=1000&types=user.created", p.base);
        let page: Value = client.get(url).bearer_auth(admin).send().await.unwrap().json().await.unwrap();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        want.extend(events.iter().map(|e| e["position"].as_u64().unwrap()));
    }
    assert!(want.len() >= created, "every acknowledged create is in the log: {} of {created}", want.len());
    let got = receiver.got.clone();
    let last = *want.last().unwrap();
    crate::support::eventually(60, "every SET pushed", || {
        let got = got.clone();
        async move { got.lock().unwrap().iter().any(|(_, p, _)| *p == last) }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got = receiver.got.lock().unwrap().clone();
    let mut firsts: Vec<u64> = Vec::new();
    let mut duplicates = 0;
    for (i, (jti, position, epoch)) in got.iter().enumerate() {
        if firsts.contains(position) {
            duplicates += 1;
            let (prev_jti, _, prev_epoch) = &got[i - 1];
            assert!(
                prev_jti == jti && prev_epoch < epoch,
                "{jti} again in incarnation {epoch}: only the last SET of a killed incarnation may come again, first"
            );
            continue;
        }
        assert!(firsts.last().is_none_or(|l| l < position), "{jti}: in log order");
        firsts.push(*position);
    }
    assert_eq!(firsts, want, "every SET, none missing");
    assert!(duplicates < ROUNDS, "{duplicates} redeliveries in {ROUNDS} kills");
    eprintln!("{} SETs over {ROUNDS} SIGKILLs: {duplicates} redelivered after a kill", want.len());
}

/// Every SET payload this server issues, of every event URI (a feed's too), validates against
/// `schemas/sets/set.json`, which receivers in any language can use; the schema is not vacuous.
#[tokio::test]
async fn every_set_matches_its_json_schema() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/schemas/sets/set.json", crate::support::manifest_dir())).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let s = TestServer::start().await;
    let team = s.post("/Groups", &json!({"displayName": "Team"})).await.id();
    assert_eq!(add_stream(&s, json!({"name": "all"})).await.status, 201);
    assert_eq!(add_stream(&s, json!({"name": "feed", "groups": [team]})).await.status, 201);
    served(&s, "feed", true).await;
    let u = s
        .post("/Users", &json!({"userName": "schema.set", "externalId": "X-1", "name": {"givenName": "S"}}))
        .await
        .id();
    patch(&s, format!("/Groups/{team}"), members("add", &[&u])).await;
    patch(&s, format!("/Users/{u}"), retitle("Lead")).await;
    let active = |on: bool| {
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
               "Operations": [{"op": "replace", "path": "active", "value": on}]})
    };
    patch(&s, format!("/Users/{u}"), active(false)).await;
    patch(&s, format!("/Users/{u}"), active(true)).await;
    patch(&s, format!("/Groups/{team}"), members("remove", &[&u])).await;
    assert_eq!(s.delete(&format!("/Users/{u}")).await.status, 204);
    assert_eq!(s.delete(&format!("/Groups/{team}")).await.status, 204);
    let mut uris = std::collections::BTreeSet::new();
    for name in ["all", "feed"] {
        for (jti, uri, _, claims) in drain_stream(&s, name).await {
            let errors: Vec<String> =
                validator.iter_errors(&claims).map(|e| format!("{e} at {}", e.instance_path)).collect();
            assert!(errors.is_empty(), "{jti} ({uri}) fails set.json: {errors:?}\n{claims}");
            uris.insert(uri);
        }
    }
    let mut every: Vec<String> = ["create:full", "patch:full", "activate", "deactivate", "delete"]
        .iter()
        .map(|v| format!("{PROV}:{v}"))
        .collect();
    every.extend([FEED_ADD.to_string(), FEED_REMOVE.to_string()]);
    assert_eq!(uris, every.into_iter().collect(), "every event URI was seen");
    let good = json!({"iss": "i", "iat": 1, "jti": "4.0123456789abcdef", "aud": "a", "txn": "t",
        "sub_id": {"format": "scim", "uri": "/Users/u", "id": "u"}, "events": {FEED_ADD: {}}});
    assert!(validator.is_valid(&good));
    for bad in [
        json!({"jti": "4.0123"}),
        json!({"jti": "4.0123456789abcdef.0"}),
        json!({"events": {}}),
        json!({"events": {"urn:ietf:params:scim:event:prov:put:full": {}}}),
        json!({"sub_id": {"format": "email", "uri": "/Users/u", "id": "u"}}),
        json!({"events": {format!("{PROV}:delete"): {}}}),
    ] {
        let mut v = good.clone();
        v.as_object_mut().unwrap().extend(bad.as_object().unwrap().clone());
        assert!(!validator.is_valid(&v), "{v}");
    }
}

/// A receiver acknowledging out of order may run at most `--set-max-acked-ahead` SETs beyond
/// the oldest it has not acknowledged: past that, the acknowledgement is refused, naming the
/// limit, and nothing is acknowledged; acknowledging the oldest lets it go on.
#[tokio::test]
async fn acknowledging_far_ahead_of_the_oldest_is_refused_at_the_limit() {
    let s = TestServer::start_configured(|c| {
        c.set_stream = vec!["default/siem".parse().unwrap()];
        c.set_max_acked_ahead = 2;
    })
    .await;
    for n in 0..4 {
        s.post("/Users", &json!({"userName": format!("a{n}")})).await;
    }
    let r = poll(&s, json!({"returnImmediately": true})).await;
    let jtis: Vec<String> = r.body["sets"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(jtis.len(), 4);
    let r = poll(&s, json!({"ack": jtis[1..4], "returnImmediately": true})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["err"], "invalid_request");
    assert!(r.body["description"].as_str().unwrap().contains("at most 2, --set-max-acked-ahead"), "{}", r.body);
    let r = poll(&s, json!({"ack": jtis[1..3], "returnImmediately": true})).await;
    let again: Vec<String> = r.body["sets"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(again, [jtis[0].clone(), jtis[3].clone()], "two ahead is allowed; the rest comes again");
    let r = poll(&s, json!({"ack": [jtis[0].clone(), jtis[3].clone()], "returnImmediately": true})).await;
    assert_eq!((r.status.as_u16(), r.body["sets"].as_object().unwrap().len()), (200, 0));
}
