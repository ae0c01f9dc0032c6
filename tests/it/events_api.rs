//! The ordered events API (`GET /api/v1/events`): the tenant's log in order as NATS envelopes,
//! paged by position, filtered, long-polled; for `events` and `admin` tokens only.

use std::time::{Duration, Instant};

use reqwest::Method;
use scimlog::auth::Role;
use serde_json::{json, Value};

use crate::support::{validate_event, Reply, TestServer};

async fn page(s: &TestServer, token: &str, query: &str) -> Reply {
    s.send_as(token, Method::GET, &format!("{}/api/v1/events?{query}", s.base), None, &[]).await
}

fn positions(page: &Value) -> Vec<u64> {
    page["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn the_events_api_pages_the_tenants_log_in_order() {
    let s = TestServer::start().await;
    let events = s.new_token(Role::Events);
    let acme = scimlog::auth::create_token(s.data_dir(), "acme-okta", "acme", Role::Scim).unwrap();
    let alice = s.post("/Users", &json!({"userName": "alice@example.com"})).await.id();
    let r = s.send_as(&acme, Method::POST, "/Users", Some(&json!({"userName": "other@acme.example"})), &[]).await;
    assert_eq!(r.status, 201);
    let group = json!({"displayName": "Readers", "members": [{"value": alice}]});
    assert_eq!(s.post("/Groups", &group).await.status, 201);
    s.post("/Users", &json!({"userName": "bob@example.com"})).await;

    // The whole log of this tenant, two at a time: in order, each event once, none of acme's.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let r = page(&s, &events, &format!("after={after}&limit=2")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        for e in r.body["events"].as_array().unwrap() {
            validate_event(e);
            assert_eq!(e["tenant"], "default", "{e}");
        }
        assert!(positions(&r.body).len() <= 2);
        seen.extend(positions(&r.body));
        let next = r.body["next"].as_u64().unwrap();
        if next == r.body["head"].as_u64().unwrap() && r.body["events"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(next > after, "the cursor advances");
        after = next;
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in log order: {seen:?}");
    let all = page(&s, &events, "limit=1000").await.body;
    assert_eq!(positions(&all), seen, "one page or many: the same events");
    let types: Vec<&str> = all["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"user.created") && types.contains(&"group.member_added"), "{types:?}");

    // Filters: by type (personal values opened, as on NATS), by resource.
    let created = page(&s, &events, "types=user.created").await.body;
    let names: Vec<&str> = created["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["attributes"]["userName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice@example.com", "bob@example.com"]);
    let of_alice = page(&s, &events, &format!("resource={alice}")).await.body;
    assert!(of_alice["events"].as_array().unwrap().iter().all(|e| e["resourceId"] == alice.as_str()));
    assert_eq!(of_alice["events"].as_array().unwrap().len(), 1, "{of_alice}");

    // An admin token reads it too; an IdP's token and a hosts token do not.
    assert_eq!(page(&s, &s.admin_token(), "").await.status, 200);
    page(&s, &s.token, "").await.assert_error(403, None, "events or admin token");
    page(&s, &s.new_token(Role::Hosts), "").await.assert_error(403, None, "events or admin token");
    // An events token may not provision.
    let r = s.send_as(&events, Method::POST, "/Users", Some(&json!({"userName": "x"})), &[]).await;
    r.assert_error(403, None, "may not provision");

    // Bad input names the offending value and reads nothing.
    page(&s, &events, "types=user.created,user.exploded").await.assert_error(
        400,
        Some("invalidValue"),
        "\"user.exploded\"",
    );
    page(&s, &events, "after=-1").await.assert_error(400, Some("invalidValue"), "\"-1\"");
    page(&s, &events, "after=1000000").await.assert_error(400, Some("invalidValue"), "beyond the log's head");
    page(&s, &events, "wait=31").await.assert_error(400, Some("invalidValue"), "--events-wait-max-s");
}

/// `limit` is clamped to `--events-page-max`; a scan stops at `--max-scan` and says where it
/// got to, so a sparse filter advances without reading the whole log at once.
#[tokio::test]
async fn pages_and_scans_are_bounded() {
    let s = TestServer::start_configured(|c| {
        c.events_page_max = 3;
        c.max_scan = 4;
    })
    .await;
    let events = s.new_token(Role::Events);
    for n in 0..6 {
        s.post("/Users", &json!({"userName": format!("bounded{n}@example.com")})).await;
    }
    let r = page(&s, &events, "limit=100").await.body;
    assert_eq!(positions(&r).len(), 3, "clamped to --events-page-max: {r}");
    let r = page(&s, &events, "types=group.created").await.body;
    assert!(r["events"].as_array().unwrap().is_empty());
    assert_eq!(r["next"], 4, "the scan stopped after --max-scan events: {r}");
    assert!(r["head"].as_u64().unwrap() >= 6);
}

/// With `wait`, a consumer at the head is answered as soon as a write commits, and after the
/// wait when nothing comes.
#[tokio::test]
async fn a_long_poll_answers_when_a_write_commits() {
    let s = TestServer::start().await;
    let events = s.new_token(Role::Events);
    s.post("/Users", &json!({"userName": "first@example.com"})).await;
    let head = page(&s, &events, "").await.body["head"].as_u64().unwrap();

    let started = Instant::now();
    let r = page(&s, &events, &format!("after={head}&wait=1")).await.body;
    assert!(r["events"].as_array().unwrap().is_empty());
    assert_eq!(r["next"], head);
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited: {:?}", started.elapsed());

    let poll = {
        let (client, url) = (s.client.clone(), format!("{}/api/v1/events?after={head}&wait=20", s.base));
        let token = events.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = client.get(url).bearer_auth(token).send().await.unwrap();
            (started.elapsed(), crate::support::read(r).await)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.post("/Users", &json!({"userName": "second@example.com"})).await;
    let (took, r) = poll.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body["events"][0]["data"]["attributes"]["userName"], "second@example.com", "{}", r.body);
    assert!(took < Duration::from_secs(10), "answered at the commit, not at the end of the wait: {took:?}");
}

/// 100k events: paged from the beginning in order with none missing or repeated, and resumed
/// from a position in the middle with the same events as the first pass.
#[tokio::test]
async fn the_events_api_pages_over_100k_events_and_resumes_from_a_position() {
    const USERS: usize = 100_000;
    let s = TestServer::start().await;
    let events = s.new_token(Role::Events);
    // The token's first use records it (token.created); the count starts after that.
    assert_eq!(page(&s, &events, "after=0&limit=1").await.status, 200);
    let start = s.log_position().await;
    for chunk in 0..USERS / 1000 {
        let ops: Vec<Value> = (0..1000)
            .map(|n| json!({"method": "POST", "path": "/Users", "bulkId": format!("b{n}"), "data": {"userName": format!("u{chunk}-{n}")}}))
            .collect();
        let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops});
        let r = s.post("/Bulk", &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let head = s.log_position().await;
    assert_eq!(head - start, USERS as u64);
    let mut first_pass = Vec::with_capacity(USERS);
    let mut after = 0;
    while after < head {
        let r = page(&s, &events, &format!("after={after}&limit=1000")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        first_pass.extend(positions(&r.body));
        after = r.body["next"].as_u64().unwrap();
    }
    // The whole log, from the beginning (the token's event before the users' included).
    let want: Vec<u64> = (1..=head).collect();
    assert_eq!(first_pass.len(), want.len());
    assert!(first_pass == want, "every event once, in order");
    // A consumer that stopped at a position resumes there.
    let middle = start + USERS as u64 / 2;
    let r = page(&s, &events, &format!("after={middle}&limit=1000")).await;
    assert_eq!(positions(&r.body), (middle + 1..=middle + 1000).collect::<Vec<_>>());
    assert_eq!(r.body["events"][0]["data"]["attributes"]["userName"], format!("u{}-0", USERS / 2 / 1000));
}
