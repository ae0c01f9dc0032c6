//! Crash safety: the real binary, concurrent writes, SIGKILL at random moments, restart, and the
//! promises checked after every round: every acknowledged write is there, nothing is
//! half-applied, the hash chain verifies, the read models equal a replay of the log, and (with
//! NATS) every committed event is in the stream exactly once.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{eventually, read, NatsServer};

pub const TOKEN: &str = "crash-test-token";

pub struct Proc {
    child: Child,
    pub base: String,
}

impl Proc {
    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the real binary on `dir` (through [`crate::support::serving`]: it binds
/// `127.0.0.1:0` and says where).
pub async fn start(dir: &std::path::Path, nats: Option<&str>) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scimlog"));
    // The check after the crashes reads every acknowledged write at once from one token: not
    // what the rate limit is for (tested in `trust`), so it is off here.
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--token", TOKEN, "--rate-limit-per-s", "0"])
        .args(["--admin-token", crate::support::ADMIN_TOKEN, "--allow-private-networks"])
        .arg("--data-dir")
        .arg(dir)
        .env("SCIMLOG_LOG", "warn");
    if let Some(url) = nats {
        cmd.args(["--nats-url", url]);
    }
    let (child, base) = crate::support::serving(cmd, None).await;
    Proc { child, base }
}

/// xorshift: repeatable randomness without a dependency.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Debug)]
enum Outcome {
    Acked,
    Refused,
    NoAnswer,
}

async fn crash_rounds(rounds: usize, nats: Option<&NatsServer>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("crash harness seed {seed}");
    let mut rng = Rng(seed);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut acked_users: Vec<String> = Vec::new();
    let mut all_groups: Vec<(String, Outcome)> = Vec::new();
    for round in 0..rounds {
        let mut p = start(&dir, nats.map(|n| n.url()).as_deref()).await;
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..8 {
            let (client, base, acked) = (client.clone(), p.base.clone(), acked.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0.. {
                    let name = format!("r{round}-w{w}-{i}");
                    // Users, and groups whose creation is several events (created + members).
                    let (path, body) = if i % 5 == 4 {
                        let members: Vec<Value> = out
                            .iter()
                            .filter_map(|(_, _, id): &(String, Outcome, Option<String>)| id.clone())
                            .take(3)
                            .map(|id| json!({"value": id}))
                            .collect();
                        ("Groups", json!({"displayName": name, "members": members}))
                    } else {
                        ("Users", json!({"userName": name}))
                    };
                    let r = client
                        .post(format!("{base}/scim/v2/{path}"))
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/scim+json")
                        .body(body.to_string())
                        .send()
                        .await;
                    let outcome = match r {
                        Ok(r) if r.status() == 201 => {
                            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let b = read(r).await.body;
                            (name.clone(), Outcome::Acked, b["id"].as_str().map(String::from))
                        }
                        Ok(_) => (name.clone(), Outcome::Refused, None),
                        Err(_) => {
                            out.push((format!("{path}:{name}"), Outcome::NoAnswer, None));
                            return out;
                        }
                    };
                    out.push((format!("{path}:{}", outcome.0), outcome.1, outcome.2));
                }
                out
            }));
        }
        // The kill comes after a random number of answered writes, then a random few ms: so
        // every round writes, however slowly a loaded machine answers (a kill at a random time
        // after the start could come before the first answer, or before any group).
        let (target, deadline) = (8 + rng.next() as usize % 1500, Instant::now() + Duration::from_secs(60));
        while acked.load(std::sync::atomic::Ordering::Relaxed) < target {
            let n = acked.load(std::sync::atomic::Ordering::Relaxed);
            assert!(Instant::now() < deadline, "round {round}: {n} of {target} writes answered in 60 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.next() % 20)).await;
        p.child.kill().unwrap(); // SIGKILL
        p.child.wait().unwrap();
        for t in tasks {
            for (key, outcome, _) in t.await.unwrap() {
                match (key.split_once(':').unwrap(), outcome) {
                    (("Users", name), Outcome::Acked) => acked_users.push(name.to_string()),
                    (("Groups", name), o) => all_groups.push((name.to_string(), o)),
                    _ => {}
                }
            }
        }
    }

    // After the last crash: start again and check every promise.
    let p = start(&dir, nats.map(|n| n.url()).as_deref()).await;
    let get = |path: String| {
        let (client, base) = (client.clone(), p.base.clone());
        async move { read(client.get(format!("{base}/scim/v2{path}")).bearer_auth(TOKEN).send().await.unwrap()).await.body }
    };
    for name in &acked_users {
        let found = get(format!("/Users?filter=userName%20eq%20%22{name}%22")).await;
        assert_eq!(found["totalResults"], 1, "acknowledged user {name} is there");
    }
    for (name, outcome) in &all_groups {
        let found = get(format!("/Groups?filter=displayName%20eq%20%22{name}%22")).await;
        match (outcome, found["totalResults"].as_u64().unwrap()) {
            (Outcome::Acked, 1) | (Outcome::NoAnswer, 0) | (Outcome::NoAnswer, 1) | (Outcome::Refused, 0) => {}
            (o, n) => panic!("group {name}: outcome {o:?} but {n} found"),
        }
    }
    assert!(acked_users.len() > rounds, "the rounds wrote something ({} users)", acked_users.len());

    let store = scimlog::log::Store::open_read_only(&dir).unwrap();
    let verified = scimlog::audit::verify(&store).unwrap();
    let keys = scimlog::log::keys::KeyRing::open_read_only(store.clone(), &Default::default(), &dir).unwrap();
    let rebuilt = scimlog::audit::fold_until(&store, &keys, None, &mut |_| {}).unwrap();
    let diff = scimlog::audit::compare(&store, &rebuilt).unwrap();
    assert_eq!(diff.count, 0, "read models equal the replayed log: {:?}", diff.first);
    // Nothing half-applied: every group in the read models has all the members its events gave.
    let mut groups_checked = 0;
    for (k, v) in rebuilt.0.iter().filter(|(k, _)| k.starts_with(b"g\0")) {
        groups_checked += 1;
        let doc: scimlog_projections::GroupDoc = serde_json::from_slice(v).unwrap();
        let members = scimlog_projections::query::members(&store.view(), "default", &doc.id, None, usize::MAX);
        assert_eq!(members.len() as u64, doc.member_count, "{}", String::from_utf8_lossy(k));
    }
    assert!(groups_checked > 0, "the rounds created groups");

    if let Some(n) = nats {
        let client2 = client.clone();
        let base = p.base.clone();
        eventually(60, "the publisher caught up after the crashes", || {
            let (client, base) = (client2.clone(), base.clone());
            async move {
                let req = client.get(format!("{base}/healthz")).bearer_auth(crate::support::ADMIN_TOKEN);
                let h = read(req.send().await.unwrap()).await.body;
                h["publisher"]["publishedPosition"] == h["logPosition"]
            }
        })
        .await;
        let msgs = crate::support::stream_messages(&n.url(), "SCIMLOG").await;
        assert_eq!(msgs.len() as u64, verified.count, "every committed event is in the stream");
        for (seq, _, _, body) in &msgs {
            assert_eq!(body["position"], *seq, "exactly once, in log order");
        }
    }
    let mut p = p;
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_nothing_acknowledged() {
    crash_rounds(20, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_nats_publishes_every_committed_event_once() {
    let nats = NatsServer::start();
    crash_rounds(8, Some(&nats)).await;
}
