//! Read levels: every answer carries `Scimlog-Position`, which covers the request's own write;
//! `Scimlog-Min-Position` is served once the node has applied it, or answered 503 after
//! `--min-position-wait-ms`.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::support::TestServer;

fn position(r: &crate::support::Reply) -> u64 {
    r.header("scimlog-position").expect("a Scimlog-Position header").parse().unwrap()
}

#[tokio::test]
async fn every_answer_says_the_position_it_covers() {
    let s = TestServer::start().await;
    let before = s.log_position().await;
    let created = s.post("/Users", &json!({"userName": "positions@example.com"})).await;
    assert_eq!(created.status, 201);
    let at = position(&created);
    assert!(at > before, "the write's own event is covered: {at} > {before}");
    assert_eq!(at, s.log_position().await, "nothing else was written");
    let id = created.id();

    // Reads, errors, the access API, probes: all say where the node stood.
    for r in [
        s.get(&format!("/Users/{id}")).await,
        s.get("/Users/nope").await,
        s.send(Method::GET, &format!("{}/api/v1/environments", s.base), None, &[]).await,
        crate::support::read(s.client.get(format!("{}/readyz", s.base)).send().await.unwrap()).await,
    ] {
        assert_eq!(position(&r), at, "{:?}", r.body);
    }

    // Sending the position back reads the write; a bad value is refused naming it.
    let min = at.to_string();
    let r = s.send(Method::GET, &format!("/Users/{id}"), None, &[("Scimlog-Min-Position", &min)]).await;
    assert_eq!(r.status, 200);
    let r = s.send(Method::GET, "/Users", None, &[("Scimlog-Min-Position", "soon")]).await;
    r.assert_error(400, Some("invalidValue"), "\"soon\"");
}

#[tokio::test]
async fn a_position_not_yet_applied_waits_then_answers_503() {
    let s = TestServer::start_configured(|c| c.min_position_wait_ms = 300).await;
    let head = s.log_position().await;
    let ahead = (head + 1).to_string();

    // Nobody writes: after the wait, 503 with Retry-After, naming both positions.
    let started = Instant::now();
    let r = s.send(Method::GET, "/Users", None, &[("Scimlog-Min-Position", &ahead)]).await;
    r.assert_error(503, None, &format!("applied position {head}"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(started.elapsed() >= Duration::from_millis(290), "{:?}", started.elapsed());

    // A write lands during the wait: the read is served with it.
    let s = std::sync::Arc::new(s);
    let reader = {
        let (s, ahead) = (s.clone(), ahead.clone());
        tokio::spawn(async move {
            s.send(
                Method::GET,
                "/Users?filter=userName%20eq%20%22late%40example.com%22",
                None,
                &[("Scimlog-Min-Position", &ahead)],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.post("/Users", &json!({"userName": "late@example.com"})).await.status, 201);
    let r = reader.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["totalResults"], 1, "the read sees the write it waited for");
}
