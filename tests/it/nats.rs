//! Every event out on a real nats-server (JetStream, 2.9 from Debian): subjects, bodies, order,
//! exactly once through outages, restarts and a NATS that lost its tail.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{config, eventually, stream_messages, NatsServer, TestServer};

async fn server_with(nats: &NatsServer) -> TestServer {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.nats.nats_url = Some(nats.url());
    let mut s = TestServer::start_with(cfg).await;
    s.adopt_dir(tmp);
    s
}

async fn health(s: &TestServer) -> Value {
    s.healthz().await
}

async fn caught_up(s: &TestServer) {
    eventually(30, "the publisher caught up with the log", || async {
        let h = health(s).await;
        h["publisher"]["lag"] == 0 && h["publisher"]["publishedPosition"] == h["logPosition"]
    })
    .await;
}

/// The stream holds the log exactly: message n is the event at position n, each once.
async fn assert_stream_is_the_log(nats: &NatsServer, s: &TestServer) {
    let head = s.log_position().await;
    let msgs = stream_messages(&nats.url(), "SCIMLOG").await;
    assert_eq!(msgs.len() as u64, head, "one message per event");
    let mut ids = HashSet::new();
    for (seq, subject, headers, body) in &msgs {
        crate::support::validate_event(body);
        assert_eq!(body["position"], *seq, "stream sequence = log position");
        assert_eq!(headers.get("Scimlog-Position").unwrap().as_str(), seq.to_string());
        let id = body["id"].as_str().unwrap();
        let msg_id =
            headers.iter().find(|(k, _)| k.to_string() == "Nats-Msg-Id").map(|(_, v)| v[0].as_str().to_string());
        assert_eq!(msg_id.as_deref(), Some(id), "Nats-Msg-Id is the event id");
        assert!(ids.insert(id.to_string()), "event {id} twice");
        assert_eq!(
            subject,
            &format!("scimlog.{}.{}", body["tenant"].as_str().unwrap(), body["type"].as_str().unwrap())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_published_in_order_with_its_subject_and_body() {
    let nats = NatsServer::start();
    let s = server_with(&nats).await;
    let uid = s.post("/Users", &json!({"userName": "nats.user", "emails": [{"value": "n@x.org"}]})).await.id();
    let gid = s.post("/Groups", &json!({"displayName": "Ops", "members": [{"value": uid}]})).await.id();
    let patch = json!({"Operations": [{"op": "replace", "value": {"active": false}}]});
    s.send(Method::PATCH, &format!("/Users/{uid}"), Some(&patch), &[]).await;
    s.delete(&format!("/Users/{uid}")).await;
    caught_up(&s).await;
    assert_stream_is_the_log(&nats, &s).await;

    let msgs = stream_messages(&nats.url(), "SCIMLOG").await;
    let subjects: Vec<&str> = msgs.iter().map(|(_, subject, _, _)| subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "scimlog.default.user.created",
            "scimlog.default.group.created",
            "scimlog.default.group.member_added",
            "scimlog.default.user.deactivated",
            "scimlog.default.group.member_removed",
            "scimlog.default.user.deleted",
        ]
    );
    let created = &msgs[0].3;
    assert_eq!(created["data"]["attributes"]["userName"], "nats.user", "subscribers get personal values opened");
    assert_eq!(created["resourceId"], uid.as_str());
    assert_eq!(created["hash"].as_str().unwrap().len(), 64);
    let added = &msgs[2];
    assert_eq!(added.3["data"], json!({"memberId": uid, "memberType": "User"}));
    assert_eq!(added.3["resourceId"], gid.as_str());
    assert_eq!(added.2.get("Scimlog-Event-Type").unwrap().as_str(), "group.member_added");
    assert_eq!(added.2.get("Scimlog-Schema-Version").unwrap().as_str(), "1");
    assert_eq!(added.2.get("Scimlog-Request-Id").unwrap().as_str(), added.3["requestId"].as_str().unwrap());
    // Everything one request caused shares its request id.
    assert_eq!(msgs[1].3["requestId"], msgs[2].3["requestId"]);
    // The scrape says the same: published up to the head, no lag, one ack timed per event.
    // (The admin token's first use records its `token.created`: published before the scrape.)
    let admin = s.new_token(scimlog::auth::Role::Admin);
    let scrape = || async {
        s.client.get(format!("{}/metrics", s.base)).bearer_auth(&admin).send().await.unwrap().text().await.unwrap()
    };
    scrape().await;
    caught_up(&s).await;
    let text = scrape().await;
    let head = s.log_position().await;
    for line in [
        format!("scimlog_publisher_published_position {head}"),
        "scimlog_publisher_lag_events 0".to_string(),
        "scimlog_publisher_state{state=\"publishing\"} 1".to_string(),
        format!("scimlog_publisher_commit_to_ack_seconds_count {head}"),
        "scimlog_publisher_errors_total 0".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_a_nats_outage_all_arrive_once_in_order() {
    let mut nats = NatsServer::start();
    let s = server_with(&nats).await;
    s.post("/Users", &json!({"userName": "before"})).await;
    caught_up(&s).await;
    nats.kill();
    for i in 0..500 {
        let r = s.post("/Users", &json!({"userName": format!("outage{i}")})).await;
        assert_eq!(r.status, 201, "writes go on while NATS is down");
    }
    let h = health(&s).await;
    assert!(h["publisher"]["lag"].as_u64().unwrap() >= 500, "the lag is visible: {h}");
    nats.restart();
    caught_up(&s).await;
    assert_stream_is_the_log(&nats, &s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_scimlog_mid_publish_loses_and_duplicates_nothing() {
    let nats = NatsServer::start();
    let s = server_with(&nats).await;
    let bodies = (0..300).map(|i| json!({"userName": format!("r{i}")})).collect();
    for r in crate::support::post_concurrently(&s, "/Users", bodies).await {
        assert_eq!(r.status, 201);
    }
    // Stop at once, whatever the publisher has done so far, and start again.
    let s = s.restart().await;
    s.post("/Users", &json!({"userName": "after-restart"})).await;
    caught_up(&s).await;
    assert_stream_is_the_log(&nats, &s).await;
    s.stop().await;
}

/// Simulates the file store losing its newest messages in a crash (nats-server 2.9 syncs only
/// every 60 s): kill it, cut the end off its message block, start it again.
fn lose_tail(nats: &mut NatsServer) {
    nats.kill();
    let mut blocks = Vec::new();
    let mut stack = vec![nats.store_dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "blk") && p.components().any(|c| c.as_os_str() == "SCIMLOG") {
                blocks.push(p);
            } else if p.extension().is_some_and(|x| x == "idx") || p.file_name().is_some_and(|n| n == "index.db") {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    blocks.sort();
    let last = blocks.last().expect("the stream has a message block");
    let len = std::fs::metadata(last).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    f.set_len(len / 2).unwrap();
    nats.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_that_lost_its_tail_is_refilled_from_the_log() {
    let mut nats = NatsServer::start();
    let s = server_with(&nats).await;
    for i in 0..60 {
        s.post("/Users", &json!({"userName": format!("tail{i}")})).await;
    }
    caught_up(&s).await;
    lose_tail(&mut nats);
    let left = stream_messages(&nats.url(), "SCIMLOG").await.len();
    assert!(left < 60, "the simulated crash lost messages ({left} left)");
    // The publisher notices (idle check or next publish) and re-sends what is missing.
    s.post("/Users", &json!({"userName": "after-loss"})).await;
    caught_up(&s).await;
    assert_stream_is_the_log(&nats, &s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_with_a_durable_consumer_resumes_after_the_last_acked_event() {
    let nats = NatsServer::start();
    let s = server_with(&nats).await;
    for i in 0..10 {
        s.post("/Users", &json!({"userName": format!("t{i}")})).await;
    }
    s.post("/Groups", &json!({"displayName": "G"})).await;
    caught_up(&s).await;
    let opts = |max| scimlog::bus::tail::TailOptions {
        url: nats.url(),
        stream: "SCIMLOG".into(),
        subject: "scimlog.*.user.*".into(),
        durable: Some("printer".into()),
        max,
        idle_exit: Some(std::time::Duration::from_secs(2)),
    };
    let mut first = Vec::new();
    assert_eq!(scimlog::bus::tail::tail(&opts(Some(4)), &mut first).await.unwrap(), 4);
    let mut rest = Vec::new();
    assert_eq!(scimlog::bus::tail::tail(&opts(None), &mut rest).await.unwrap(), 6, "no acked event again");
    let positions = |out: &[u8]| -> Vec<u64> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["position"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(positions(&first), [1, 2, 3, 4]);
    assert_eq!(positions(&rest), [5, 6, 7, 8, 9, 10], "group events are filtered out by the subject");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_within_the_window_is_deduplicated_and_publishing_goes_on() {
    let nats = NatsServer::start();
    let s = server_with(&nats).await;
    for i in 0..5 {
        s.post("/Users", &json!({"userName": format!("rp{i}")})).await;
    }
    caught_up(&s).await;
    let store = scimlog::log::Store::open_read_only(s.data_dir()).unwrap();
    let ring = scimlog::log::keys::KeyRing::open_read_only(store.clone(), &Default::default(), s.data_dir()).unwrap();
    let mut cfg = config(s.data_dir()).nats;
    cfg.nats_url = Some(nats.url());
    let (sent, duplicates) = scimlog::bus::republish(&cfg, &store, &ring, 2, Some(4)).await.unwrap();
    assert_eq!((sent, duplicates), (0, 3), "JetStream drops what it saw within the window");
    s.post("/Users", &json!({"userName": "after-republish"})).await;
    caught_up(&s).await;
    assert_stream_is_the_log(&nats, &s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_nats_ends_with_every_event_once() {
    let mut nats = NatsServer::start();
    let s = server_with(&nats).await;
    for round in 0..3 {
        for i in 0..40 {
            assert_eq!(s.post("/Users", &json!({"userName": format!("flap{round}-{i}")})).await.status, 201);
            if i == 20 {
                nats.kill();
            }
        }
        assert!(health(&s).await["publisher"]["lag"].as_u64().unwrap() > 0, "the lag shows while NATS is down");
        nats.restart();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    caught_up(&s).await;
    assert_stream_is_the_log(&nats, &s).await;
    s.stop().await;
}

/// `republish` beyond the duplicate window appends copies (sequence != position from then on);
/// a restart after it still resumes right after the last event this publisher sent, and the
/// stream ends with every position once among the publisher's messages, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republish_beyond_the_window_then_a_restart_loses_and_repeats_nothing() {
    let nats = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.nats.nats_url = Some(nats.url());
    cfg.nats.nats_duplicate_window_s = 1;
    let mut s = TestServer::start_with(cfg.clone()).await;
    s.adopt_dir(tmp);
    for i in 0..5 {
        s.post("/Users", &json!({"userName": format!("rb{i}")})).await;
    }
    caught_up(&s).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    {
        let store = scimlog::log::Store::open_read_only(s.data_dir()).unwrap();
        let ring =
            scimlog::log::keys::KeyRing::open_read_only(store.clone(), &Default::default(), s.data_dir()).unwrap();
        let (sent, duplicates) = scimlog::bus::republish(&cfg.nats, &store, &ring, 2, Some(4)).await.unwrap();
        assert_eq!((sent, duplicates), (3, 0), "beyond the window the copies are appended");
    }
    let s = s.restart().await;
    s.post("/Users", &json!({"userName": "after-restart"})).await;
    caught_up(&s).await;
    let msgs = stream_messages(&nats.url(), "SCIMLOG").await;
    let republished = |h: &async_nats::HeaderMap| h.get("Scimlog-Republished").is_some();
    let own: Vec<u64> = msgs.iter().filter(|m| !republished(&m.2)).map(|m| m.3["position"].as_u64().unwrap()).collect();
    let copies: Vec<u64> =
        msgs.iter().filter(|m| republished(&m.2)).map(|m| m.3["position"].as_u64().unwrap()).collect();
    assert_eq!(own, (1..=s.log_position().await).collect::<Vec<_>>(), "every position once, in order");
    assert_eq!(copies, [2, 3, 4]);
    assert_eq!(health(&s).await["publisher"]["possibleGaps"], 0);
    s.stop().await;
}

/// A stream that lost every message of this log (purged, or all aged out) cannot say where the
/// log stands in it: the publisher resumes after its last sequence and reports a possible gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_no_message_of_the_log_is_reported_as_a_possible_gap() {
    let nats = NatsServer::start();
    let s = server_with(&nats).await;
    for i in 0..3 {
        s.post("/Users", &json!({"userName": format!("gap{i}")})).await;
    }
    caught_up(&s).await;
    let s = {
        let tmp = s.stop_keeping_data().await;
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        js.get_stream("SCIMLOG").await.unwrap().purge().await.unwrap();
        let mut cfg = config(tmp.as_ref().unwrap().path());
        cfg.nats.nats_url = Some(nats.url());
        let mut s = TestServer::start_with(cfg).await;
        s.adopt_dir(tmp.unwrap());
        s
    };
    s.post("/Users", &json!({"userName": "after-purge"})).await;
    caught_up(&s).await;
    let p = health(&s).await["publisher"].clone();
    assert_eq!(p["possibleGaps"], 1, "{p}");
    assert!(p["lastGap"].as_str().unwrap().contains("republish --from 1"), "{p}");
    let msgs = stream_messages(&nats.url(), "SCIMLOG").await;
    assert_eq!(msgs.len(), 1);
    assert_eq!((msgs[0].0, msgs[0].3["position"].as_u64()), (4, Some(4)), "sequence = position still");
    s.stop().await;
}

/// An erasure in a backlog (written while NATS was down): the publisher keeps many messages in
/// flight, but `user.erased` waits until the person's messages, sent just before it, are stored,
/// so that they are found and deleted; nothing of the person is left in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_in_a_backlog_deletes_the_messages_sent_just_before_it() {
    let mut nats = NatsServer::start();
    let s = server_with(&nats).await;
    caught_up(&s).await;
    nats.kill();
    for i in 0..300 {
        assert_eq!(s.post("/Users", &json!({"userName": format!("backlog{i}")})).await.status, 201);
    }
    let email = format!("gone-{}@example.com", uuid::Uuid::new_v4().simple());
    let id = s.post("/Users", &json!({"userName": "gone", "emails": [{"value": email}]})).await.id();
    s.put(&format!("/Users/{id}"), &json!({"userName": "gone", "emails": [{"value": email}], "title": "T"})).await;
    let admin = s.new_token(scimlog::auth::Role::Admin);
    let url = format!("{}/api/v1/users/{id}/erase", s.base);
    let r = s.send_as(&admin, Method::POST, &url, Some(&json!({"reason": "ticket 8"})), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    nats.restart();
    caught_up(&s).await;
    let after = stream_messages(&nats.url(), "SCIMLOG").await;
    for (seq, _, _, body) in &after {
        assert!(!body.to_string().contains(&email), "message {seq} still holds the erased email: {body}");
    }
    let types: Vec<&str> = after.iter().map(|m| m.3["type"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|t| **t == "user.created").count(), 300, "everyone else's stay");
    assert_eq!(types.iter().filter(|t| **t == "user.updated").count(), 0, "the person's update is deleted");
    assert!(types.contains(&"user.erased"), "{types:?}");
    s.stop().await;
}

/// After an erasure the stream no longer holds the person's values in clear: the messages that
/// carried them are deleted before `user.erased` goes out; everyone else's stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_persons_messages_are_deleted_from_the_stream() {
    let nats = NatsServer::start();
    let s = server_with(&nats).await;
    let email = format!("gone-{}@example.com", uuid::Uuid::new_v4().simple());
    let id = s.post("/Users", &json!({"userName": "gone", "emails": [{"value": email}]})).await.id();
    s.put(&format!("/Users/{id}"), &json!({"userName": "gone", "emails": [{"value": email}], "title": "T"})).await;
    s.post("/Users", &json!({"userName": "stays", "emails": [{"value": "stays@example.com"}]})).await;
    caught_up(&s).await;
    let before = stream_messages(&nats.url(), "SCIMLOG").await;
    assert!(before.iter().any(|m| m.3.to_string().contains(&email)), "published in clear before");
    let admin = s.new_token(scimlog::auth::Role::Admin);
    let url = format!("{}/api/v1/users/{id}/erase", s.base);
    let r = s.send_as(&admin, Method::POST, &url, Some(&json!({"reason": "ticket 7"})), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    caught_up(&s).await;
    let after = stream_messages(&nats.url(), "SCIMLOG").await;
    for (seq, _, _, body) in &after {
        assert!(!body.to_string().contains(&email), "message {seq} still holds the erased email: {body}");
    }
    let types: Vec<&str> = after.iter().map(|m| m.3["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"user.erased") && types.contains(&"user.deleted"), "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "user.created").count(), 1, "the other person's stays: {types:?}");
    assert!(after.iter().any(|m| m.3.to_string().contains("stays@example.com")));
    s.stop().await;
}
