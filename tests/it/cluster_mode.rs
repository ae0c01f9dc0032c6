//! `scimlog serve --cluster` (issue 15): several scimlog nodes on a real 3-node JetStream
//! cluster of the pinned nats-server 2.15, in this process, each with its own RocksDB. One
//! leads and writes; the others apply the log, serve reads, and forward (or redirect) writes.
//! Process-level failover (SIGKILL, SIGSTOP) is in `cluster_failover.rs`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{eventually, NatsCluster, TestServer};

/// The master key every node shares (the log's sealed values open with it on every node).
pub const MASTER_HEX: &str = "4f1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100aa";

pub const PUBLIC_URL: &str = "https://scim.example.test";

/// A node's configuration: the test config plus cluster mode on `nats`, short leases.
pub fn cluster_config(
    nats_url: String,
    id: &str,
    forwarding: scimlog::cluster::Forwarding,
    dir: &std::path::Path,
) -> scimlog::config::ServeConfig {
    crate::support::log_if_asked();
    let mut cfg = crate::support::config(dir);
    cfg.nats.nats_url = Some(nats_url);
    cfg.nats.nats_replicas = 3;
    cfg.master_key_hex = Some(MASTER_HEX.into());
    cfg.cluster.cluster = true;
    cfg.cluster.node_id = Some(id.into());
    cfg.cluster.lease_ttl_ms = 1500;
    cfg.cluster.write_forwarding = forwarding;
    // What an IdP is given: the load balancer's URL, the same on every node.
    cfg.public_url = Some(PUBLIC_URL.into());
    cfg
}

pub async fn node(nats: &NatsCluster, id: &str, forwarding: scimlog::cluster::Forwarding) -> TestServer {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_with(cluster_config(nats.urls().join(","), id, forwarding, tmp.path())).await;
    s.adopt_dir(tmp);
    s
}

pub async fn role(s: &TestServer) -> String {
    s.healthz().await["cluster"]["role"].as_str().unwrap_or_default().to_string()
}

/// Every node's events, position by position: (position, hash, canonical bytes).
pub fn log_of(s: &TestServer) -> Vec<(u64, [u8; 32], Vec<u8>)> {
    s.store().events_from(1, 1_000_000).unwrap().into_iter().map(|(p, e)| (p, e.hash, e.bytes)).collect()
}

fn user(name: &str) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name,
           "emails": [{"value": format!("{name}@example.com"), "primary": true}]})
}

/// Given three nodes of which the first leads, when writes go to any node (a follower proxies
/// them, a redirecting one answers 307), then every node answers reads of them at the position
/// the write reported, the logs of all nodes are byte-identical and verify, and an erasure sent
/// to a follower removes the person on every node and from the replicated key copy.
#[tokio::test]
async fn three_nodes_serve_one_directory() {
    let nats = NatsCluster::start().await;
    let a = node(&nats, "a", scimlog::cluster::Forwarding::Proxy).await;
    eventually(20, "node a leads", || async { role(&a).await == "leader" }).await;
    let b = node(&nats, "b", scimlog::cluster::Forwarding::Proxy).await;
    let c = node(&nats, "c", scimlog::cluster::Forwarding::Redirect).await;
    for n in [&b, &c] {
        eventually(20, "a follower knows the leader", || async {
            let h = n.healthz().await;
            h["cluster"]["role"] == "follower" && h["cluster"]["leader"]["node"] == "a"
        })
        .await;
    }

    // A write sent to a follower is proxied: the leader's answer, with its position.
    let created = b.post("/Users", &user("ada")).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.id();
    let position = created.header("scimlog-position").expect("a position").to_string();
    // Read-your-writes on every node: wait for the position, then the same resource.
    for (name, n) in [("a", &a), ("b", &b), ("c", &c)] {
        let r = n.send(Method::GET, &format!("/Users/{id}"), None, &[("Scimlog-Min-Position", &position)]).await;
        assert_eq!(r.status, 200, "node {name} at {position}: {} {:?}", r.body, r.header("scimlog-position"));
        assert_eq!(r.body, created.body, "every node renders the same resource");
        let served_at: u64 = r.header("scimlog-position").unwrap().parse().unwrap();
        assert!(served_at >= position.parse().unwrap());
    }

    // A redirecting node answers a write with 307 to the leader; a client following it writes.
    let no_follow = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_follow
        .post(c.url("/Users"))
        .bearer_auth(&c.token)
        .header("content-type", "application/scim+json")
        .body(user("grace").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(location, a.url("/Users"));
    // A client sends its credentials again to the new origin (HTTP clients drop them on a
    // redirect to another origin, so redirect mode suits API clients that do so, not IdPs).
    let grace = c.send(Method::POST, &location, Some(&user("grace")), &[]).await;
    assert_eq!(grace.status, 201, "{}", grace.body);

    // A small workload over the leader and the proxying follower: users, a group with
    // members, a PATCH, a delete.
    let mut ids = vec![id.clone(), grace.id()];
    for (i, n) in [&a, &b].iter().cycle().take(12).enumerate() {
        let r = n.post("/Users", &user(&format!("u{i}"))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.id());
    }
    let members: Vec<Value> = ids.iter().take(6).map(|i| json!({"value": i})).collect();
    let group =
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "eng", "members": members});
    let g = b.post("/Groups", &group).await;
    assert_eq!(g.status, 201, "{}", g.body);
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "remove", "path": format!("members[value eq \"{}\"]", ids[1])}]});
    let r = b.send(Method::PATCH, &format!("/Groups/{}", g.id()), Some(&patch), &[]).await;
    assert_eq!(r.status, 204, "a group PATCH answers 204: {}", r.body);
    assert_eq!(b.delete(&format!("/Users/{}", ids[7])).await.status, 204);
    // Reads on a follower are served there: a search is not a write.
    let search =
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "userName sw \"u\""});
    let found = b.send(Method::POST, "/.search", Some(&search), &[]).await;
    assert_eq!(found.status, 200, "{}", found.body);

    // Erasure through a follower (admin API, proxied): gone everywhere, key copy purged.
    let erase = format!("{}/api/v1/users/{id}/erase", b.base);
    let r = b.send_as(&b.admin_token(), Method::POST, &erase, Some(&json!({"reason": "ticket 7"})), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let head = a.log_position().await;
    for n in [&a, &b, &c] {
        let at = head.to_string();
        let r = n.send(Method::GET, &format!("/Users/{id}"), None, &[("Scimlog-Min-Position", &at)]).await;
        r.assert_error(404, None, &id);
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats.node_url(1)).await.unwrap());
    let copy = scimlog::bus::keys_kv::ReplicatedKeys::open(&js, 3).await.unwrap();
    let key_id = scimlog::log::keys::data_key_id("default", &id);
    eventually(10, "the erased key is purged from the replicated copy", || async {
        copy.get(&key_id).await.unwrap().is_none()
    })
    .await;
    assert!(copy.get(&scimlog::log::keys::data_key_id("default", &ids[2])).await.unwrap().is_some());

    // Every node holds the same log, byte for byte, and it verifies.
    let logs: Vec<_> = [&a, &b, &c].iter().map(|n| log_of(n)).collect();
    assert_eq!(logs[0].len() as u64, head);
    assert!(logs.iter().all(|l| *l == logs[0]), "all nodes' logs are byte-identical");
    for n in [&a, &b, &c] {
        let verified = scimlog::audit::verify(&n.store()).unwrap();
        assert_eq!(verified.head_position, head);
    }
    // The followers' read models answer like the leader's.
    for path in ["/Users?count=100", &format!("/Groups/{}", g.id())] {
        let want = a.get(path).await.body;
        for n in [&b, &c] {
            assert_eq!(n.get(path).await.body, want, "{path}");
        }
    }
    for n in [b, c, a] {
        n.stop().await;
    }
}

/// POSTs a user, retrying a 503 (with its `Retry-After`) for up to 20 s, as a client would.
async fn post_retrying(n: &TestServer, body: &Value) -> crate::support::Reply {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = n.post("/Users", body).await;
        if r.status != 503 || std::time::Instant::now() > deadline {
            return r;
        }
        assert!(r.header("retry-after").is_some(), "a 503 says when to retry");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Given a leader, when it stops (gracefully: it hands the lease over), then another node
/// takes over within the lease's life, writes go on through any node, and the new leader's
/// records continue the same hash chain; the old node, started again, follows and catches up.
#[tokio::test]
async fn a_stopped_leader_hands_over() {
    let nats = NatsCluster::start().await;
    let a = node(&nats, "a", scimlog::cluster::Forwarding::Proxy).await;
    eventually(20, "node a leads", || async { role(&a).await == "leader" }).await;
    let b = node(&nats, "b", scimlog::cluster::Forwarding::Proxy).await;
    let c = node(&nats, "c", scimlog::cluster::Forwarding::Proxy).await;
    for i in 0..5 {
        assert_eq!(b.post("/Users", &user(&format!("before{i}"))).await.status, 201);
    }
    let kept = a.stop_keeping_data().await;
    eventually(20, "b or c leads", || async { role(&b).await == "leader" || role(&c).await == "leader" }).await;
    // A follower may still name the old leader for a moment: 503 with Retry-After, retried.
    for i in 0..5 {
        let r = post_retrying(&c, &user(&format!("after{i}"))).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    // The first node comes back as a follower and catches up.
    let kept = kept.unwrap();
    let cfg = cluster_config(nats.urls().join(","), "a", scimlog::cluster::Forwarding::Proxy, kept.path());
    let mut a = TestServer::start_with(cfg).await;
    a.adopt_dir(kept);
    let head = b.log_position().await.max(c.log_position().await);
    eventually(20, "the old leader catches up", || async { a.log_position().await == head }).await;
    assert_eq!(role(&a).await, "follower");
    let logs: Vec<_> = [&a, &b, &c].iter().map(|n| log_of(n)).collect();
    assert!(logs.iter().all(|l| *l == logs[0]), "all nodes' logs are byte-identical");
    for n in [&a, &b, &c] {
        scimlog::audit::verify(&n.store()).unwrap();
    }
    let r = a.get("/Users?filter=userName%20sw%20%22after%22").await;
    assert_eq!(r.body["totalResults"], 5, "{}", r.body);
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// `/readyz` and `/healthz` in cluster mode: the role is public, the details (leader, positions,
/// lag) need an admin token; Debian's nats-server 2.9 (no atomic batches) is refused at start.
#[tokio::test]
async fn cluster_health_and_refusals() {
    let nats = NatsCluster::start().await;
    let a = node(&nats, "a", scimlog::cluster::Forwarding::Proxy).await;
    eventually(20, "node a leads", || async { role(&a).await == "leader" }).await;
    let public: Value = reqwest::get(format!("{}/healthz", a.base)).await.unwrap().json().await.unwrap();
    assert_eq!(public, json!({"status": "ok", "role": "leader"}));
    let h = a.healthz().await;
    assert_eq!(h["cluster"]["node"], "a");
    assert_eq!(h["cluster"]["leader"]["url"], a.base);
    assert_eq!(h["cluster"]["lag"], 0);
    assert_eq!(reqwest::get(format!("{}/readyz", a.base)).await.unwrap().status(), 200);
    a.stop().await;

    let old = crate::support::NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cluster_config(old.url(), "x", scimlog::cluster::Forwarding::Proxy, dir.path());
    cfg.nats.nats_replicas = 1;
    let err = scimlog::server::Server::start(cfg).await.err().expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("2.12 or newer") && text.contains("2.9"), "{text}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Given a leader that puts snapshots into the Object Store, when a node starts with an empty
/// data dir, then it starts from the newest snapshot (checked at the join point) and follows the
/// log's tail from there, ending with the same log; after an erasure, every snapshot older than
/// it is gone (they hold the erased person's key and values).
#[tokio::test]
async fn a_new_node_starts_from_a_snapshot() {
    let nats = NatsCluster::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = cluster_config(nats.urls().join(","), "a", scimlog::cluster::Forwarding::Proxy, tmp.path());
    cfg.cluster.snapshot_interval_s = 1;
    cfg.cluster.snapshot_min_events = 5;
    let mut a = TestServer::start_with(cfg).await;
    a.adopt_dir(tmp);
    eventually(20, "node a leads", || async { role(&a).await == "leader" }).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = a.post("/Users", &user(&format!("s{i}"))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.id());
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats.node_url(0)).await.unwrap());
    let snapshots = scimlog::bus::snapshots::Snapshots::open(&js, 3).await.unwrap();
    eventually(30, "a snapshot is taken", || async { !snapshots.list().await.unwrap().is_empty() }).await;
    let first = snapshots.list().await.unwrap()[0].clone();
    assert!(first.position >= 5, "{first:?}");
    for i in 0..3 {
        assert_eq!(a.post("/Users", &user(&format!("tail{i}"))).await.status, 201);
    }

    let b = node(&nats, "b", scimlog::cluster::Forwarding::Proxy).await;
    let head = a.log_position().await;
    eventually(20, "the new node catches up", || async { b.log_position().await == head }).await;
    let started = b.healthz().await["cluster"]["startedFrom"].clone();
    let from = started["position"].as_u64().expect("started from a snapshot");
    assert!(from >= first.position && from < head, "{started}");
    assert_eq!(log_of(&a), log_of(&b), "the same log, byte for byte");
    scimlog::audit::verify(&b.store()).unwrap();
    assert_eq!(b.get(&format!("/Users/{}", ids[0])).await.body, a.get(&format!("/Users/{}", ids[0])).await.body);

    let erase = format!("{}/api/v1/users/{}/erase", a.base, ids[0]);
    let r = a.send_as(&a.admin_token(), Method::POST, &erase, Some(&json!({"reason": "ticket 9"})), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let erased_at = a.log_position().await;
    eventually(30, "only snapshots taken after the erasure are left", || async {
        let list = snapshots.list().await.unwrap();
        !list.is_empty() && list.iter().all(|s| s.position >= erased_at)
    })
    .await;
    for n in [b, a] {
        n.stop().await;
    }
}

/// Given a follower that was stopped, when the log is trimmed past what it applied (an operator
/// purged the stream), then started again it serves nothing but its probes, saying why, rather
/// than a directory with a hole in its history.
#[tokio::test]
async fn a_node_behind_a_trimmed_log_refuses_to_serve() {
    let nats = NatsCluster::start().await;
    let a = node(&nats, "a", scimlog::cluster::Forwarding::Proxy).await;
    eventually(20, "node a leads", || async { role(&a).await == "leader" }).await;
    let b = node(&nats, "b", scimlog::cluster::Forwarding::Proxy).await;
    for i in 0..3 {
        assert_eq!(a.post("/Users", &user(&format!("early{i}"))).await.status, 201);
    }
    let head = a.log_position().await;
    eventually(20, "b follows", || async { b.log_position().await == head }).await;
    let b_dir = b.stop_keeping_data().await.unwrap();
    for i in 0..5 {
        assert_eq!(a.post("/Users", &user(&format!("late{i}"))).await.status, 201);
    }
    let js = async_nats::jetstream::new(async_nats::connect(nats.node_url(0)).await.unwrap());
    let stream = js.get_stream(scimlog::bus::log_stream::LOG_STREAM).await.unwrap();
    stream.purge().keep(2).await.unwrap();

    let cfg = cluster_config(nats.urls().join(","), "b", scimlog::cluster::Forwarding::Proxy, b_dir.path());
    let mut b = TestServer::start_with(cfg).await;
    b.adopt_dir(b_dir);
    eventually(20, "b reports the gap", || async { !b.healthz().await["cluster"]["gap"].is_null() }).await;
    let ready = reqwest::get(format!("{}/readyz", b.base)).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert!(body["reason"].as_str().unwrap().contains("trimmed"), "{body}");
    b.get("/Users").await.assert_error(503, None, "cannot serve");
    for n in [b, a] {
        n.stop().await;
    }
}

/// Given a leader whose only way to NATS is cut (a partition), when its lease lapses, then
/// another node takes over and writes go on through the others; the cut-off node stops deciding
/// (no write it answers 2xx is lost), and once the network is back it follows again and ends
/// with the same log.
#[tokio::test]
async fn a_leader_cut_off_from_nats_is_replaced() {
    let nats = NatsCluster::start().await;
    let proxy = crate::support::TcpProxy::start(nats.node_url(0).trim_start_matches("nats://")).await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = cluster_config(proxy.url(), "a", scimlog::cluster::Forwarding::Proxy, tmp.path());
    let mut a = TestServer::start_with(cfg).await;
    a.adopt_dir(tmp);
    eventually(20, "node a leads", || async { role(&a).await == "leader" }).await;
    let b = node(&nats, "b", scimlog::cluster::Forwarding::Proxy).await;
    let mut acked = Vec::new();
    for i in 0..3 {
        let r = post_retrying(&b, &user(&format!("before{i}"))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        acked.push(r.id());
    }

    proxy.cut();
    eventually(30, "b takes over", || async { role(&b).await == "leader" }).await;
    eventually(30, "a steps down", || async { role(&a).await != "leader" }).await;
    for i in 0..3 {
        let r = post_retrying(&b, &user(&format!("during{i}"))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        acked.push(r.id());
    }
    // The cut-off node answers a write with 503 (its leader is unreachable or unknown), never 2xx.
    let r = a.post("/Users", &user("to-the-cut-off-node")).await;
    assert!(r.status == 503 || r.status == 201, "{} {}", r.status, r.body);
    if r.status == 201 {
        acked.push(r.id()); // proxied over HTTP to b, which leads: fine, and it must be kept
    }

    proxy.restore().await;
    let head = b.log_position().await;
    eventually(30, "a catches up", || async { a.log_position().await >= head }).await;
    for id in &acked {
        for n in [&a, &b] {
            let r = n
                .send(Method::GET, &format!("/Users/{id}"), None, &[("Scimlog-Min-Position", &head.to_string())])
                .await;
            assert_eq!(r.status, 200, "{id}: {}", r.body);
        }
    }
    let (la, lb) = (log_of(&a), log_of(&b));
    let n = la.len().min(lb.len());
    assert!(n as u64 >= head);
    assert_eq!(la[..n], lb[..n], "the same log, byte for byte");
    for n in [a, b] {
        n.stop().await;
    }
}

/// SET streams in cluster mode: polls sent to a follower go to the leader, and what the
/// receiver acknowledged is in the replicated bucket, so that after the leader stops the new
/// one delivers exactly what was not acknowledged, never what was.
#[tokio::test]
async fn set_acknowledgements_follow_the_lead() {
    let nats = NatsCluster::start().await;
    let with_stream = |id: &str, dir: &std::path::Path| {
        let mut cfg = cluster_config(nats.urls().join(","), id, scimlog::cluster::Forwarding::Proxy, dir);
        cfg.set_stream = vec!["default/siem".parse().unwrap()];
        cfg
    };
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = TestServer::start_with(with_stream("a", a_dir.path())).await;
    eventually(20, "node a leads", || async { role(&a).await == "leader" }).await;
    let b = TestServer::start_with(with_stream("b", b_dir.path())).await;
    eventually(20, "b follows a", || async { b.healthz().await["cluster"]["leader"]["node"] == "a" }).await;
    for i in 0..6 {
        assert_eq!(a.post("/Users", &user(&format!("set{i}"))).await.status, 201);
    }
    let poll = |n: &TestServer, body: Value| {
        let (url, token) = (format!("{}/api/v1/sets/streams/siem/poll", n.base), n.admin_token());
        let client = n.client.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let r = client.post(&url).bearer_auth(&token).json(&body).send().await.unwrap();
                let status = r.status();
                let v: Value = r.json().await.unwrap_or_default();
                if status == 200 {
                    return v["sets"].as_object().unwrap().keys().cloned().collect::<Vec<String>>();
                }
                // An election under way, or a follower still naming the old leader: retried.
                assert!(status == 503 && std::time::Instant::now() < deadline, "{status}: {v}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let all = poll(&b, json!({"returnImmediately": true, "maxEvents": 6})).await;
    assert_eq!(all.len(), 6, "{all:?}");
    let (acked, rest) = all.split_at(3);
    assert!(poll(&b, json!({"ack": acked, "maxEvents": 0})).await.is_empty());
    a.stop().await;
    eventually(20, "b leads", || async { role(&b).await == "leader" }).await;
    let after = poll(&b, json!({"returnImmediately": true, "maxEvents": 6})).await;
    assert_eq!(after, rest, "the new leader sends what was not acknowledged, and only that");
    b.stop().await;
}
