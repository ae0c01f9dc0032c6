//! Cluster mode's building blocks against a real 3-node JetStream cluster of the pinned
//! nats-server 2.15 (issue 15): the replicated log stream's fence, the writer lease, and appends
//! that survive the loss of the NATS node leading the stream. `serve --cluster` is not built yet;
//! these are the guarantees it will stand on, checked on the server version that gives them.

use std::time::Duration;

use bytes::Bytes;
use scimlog::bus::lease::{Lease, LeaseError};
use scimlog::bus::log_stream::{AppendError, LogStream, LOG_STREAM};
use scimlog_schemas::event::SealedEvent;
use sha2::{Digest, Sha256};

use crate::support::NatsCluster;

/// A record as the log stores it: canonical bytes and their hash.
fn record(writer: &str, position: u64) -> SealedEvent {
    let bytes = format!("{{\"position\":{position},\"writer\":\"{writer}\"}}").into_bytes();
    SealedEvent { hash: Sha256::digest(&bytes).into(), bytes }
}

fn records(writer: &str, after: u64, n: u64) -> Vec<(u64, SealedEvent, bool)> {
    (after + 1..=after + n).map(|p| (p, record(writer, p), p == after + n)).collect()
}

/// A JetStream client; a server that has just opened its port may still reset the first
/// connection on a loaded machine, so connecting is tried for up to 10 s.
async fn js(urls: impl async_nats::ToServerAddrs + Clone) -> async_nats::jetstream::Context {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
        match options.connect(urls.clone()).await {
            Ok(client) => return async_nats::jetstream::new(client),
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("connecting to NATS: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot connect to NATS: {e}"),
        }
    }
}

/// Given a writer that appended, when another appends on the head it last saw, then it is fenced
/// and nothing of its append is stored: the stream holds the winner's records only.
#[tokio::test]
async fn the_log_stream_fences_a_stale_writer() {
    let cluster = NatsCluster::start().await;
    let a = open_log(js(&cluster.node_url(0)).await, 3).await;
    let b = open_log(js(&cluster.node_url(2)).await, 3).await;
    assert_eq!(a.head().await.unwrap(), 0);
    assert_eq!(a.append(0, &records("a", 0, 3)).await.unwrap(), 3);
    // On head 2, its second record expects sequence 3, which is the true head: sent before the
    // first was refused, it would be stored.
    for stale in [0, 2] {
        match b.append(stale, &records("b", stale, 2)).await {
            Err(AppendError::Fenced { expected }) => assert_eq!(expected, stale),
            other => panic!("a writer on head {stale} must be fenced, got {other:?}"),
        }
        assert_eq!(a.head().await.unwrap(), 3, "nothing of a fenced append is stored");
    }
    // Having stepped down and caught up, it decides again and appends on the true head.
    assert_eq!(b.append(3, &records("b2", 3, 1)).await.unwrap(), 4, "on the true head it appends");
    assert_eq!(a.head().await.unwrap(), 4);
    for p in 1..=4 {
        let got = a.read(p).await.unwrap().expect("stored");
        assert!(got.is_intact(), "position {p}");
        let want = record(if p <= 3 { "a" } else { "b2" }, p);
        assert_eq!((got.hash, got.bytes), (want.hash, want.bytes), "position {p}");
    }
    assert!(a.read(5).await.unwrap().is_none());

    // Two writers racing on the same head: exactly one wins, the other is fenced.
    let (from_a, from_b) = (records("a", 4, 5), records("b", 4, 5));
    let (ra, rb) = tokio::join!(a.append(4, &from_a), b.append(4, &from_b));
    let won = [ra.is_ok(), rb.is_ok()];
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{ra:?} {rb:?}");
    let loser = if won[0] { rb } else { ra };
    assert!(matches!(loser, Err(AppendError::Fenced { .. })), "{loser:?}");
    let winner = if won[0] { "a" } else { "b" };
    for p in 5..=9 {
        assert_eq!(a.read(p).await.unwrap().unwrap().bytes, record(winner, p).bytes);
    }
}

/// One holder at a time; a holder that stops renewing loses it after the time to live, and its
/// late renewal is refused; a release hands over at once, whichever node each holder talks to
/// (every read is the stream leader's: a bucket made with direct gets, as an older scimlog made
/// it, is switched over when opened).
#[tokio::test]
async fn the_writer_lease_has_one_holder_and_lapses() {
    let cluster = NatsCluster::start().await;
    let ttl = Duration::from_secs(2);
    let old = async_nats::jetstream::kv::Config {
        bucket: scimlog::bus::lease::LEASE_BUCKET.into(),
        history: 1,
        max_age: Duration::from_secs(60),
        num_replicas: 3,
        ..Default::default()
    };
    js(&cluster.node_url(2)).await.create_key_value(old).await.unwrap();
    let a = Lease::open(&js(&cluster.node_url(0)).await, 3, ttl, Bytes::from_static(b"a")).await.unwrap();
    let b = Lease::open(&js(&cluster.node_url(1)).await, 3, ttl, Bytes::from_static(b"b")).await.unwrap();
    let name = format!("KV_{}", scimlog::bus::lease::LEASE_BUCKET);
    let found = js(&cluster.node_url(2)).await.get_stream(&name).await.unwrap().info().await.unwrap().config.clone();
    assert!(!found.allow_direct, "no replica answers reads of the lease on its own");
    assert_eq!(found.max_age, ttl, "the bucket has this node's time to live");

    let held = a.try_acquire().await.unwrap().expect("a free lease is taken");
    assert_eq!(b.try_acquire().await.unwrap(), None, "held by a");
    assert_eq!(b.holder().await.unwrap().as_deref(), Some(&b"a"[..]));
    let held = a.renew(&held).await.unwrap();

    // a stops renewing (paused): after the time to live b takes over, and a's renewal fails.
    tokio::time::sleep(ttl + Duration::from_millis(1500)).await;
    let mut b_held = b.try_acquire().await.unwrap().expect("a lapsed lease is taken");
    assert!(matches!(a.renew(&held).await, Err(LeaseError::Lost)), "a stale holder cannot renew");
    assert_eq!(a.holder().await.unwrap().as_deref(), Some(&b"b"[..]));

    // Graceful stops: the holder releases, the other takes it at once and is named at once.
    for round in 0..20 {
        b.release(&b_held).await.unwrap();
        let a_held = a.try_acquire().await.unwrap().unwrap_or_else(|| panic!("round {round}: released to a"));
        assert_eq!(b.holder().await.unwrap().as_deref(), Some(&b"a"[..]), "round {round}");
        a.release(&a_held).await.unwrap();
        b_held = b.try_acquire().await.unwrap().unwrap_or_else(|| panic!("round {round}: released to b"));
        assert_eq!(a.holder().await.unwrap().as_deref(), Some(&b"b"[..]), "round {round}");
    }
}

/// Appending one record at a time while the NATS node leading the stream is killed: the writer
/// meets ambiguous outcomes, resolves each by reading the head, and in the end every record it
/// was told was stored is there, once, in order.
#[tokio::test]
async fn appends_survive_the_loss_of_the_stream_leader() {
    let mut cluster = NatsCluster::start().await;
    let log = open_log(js(cluster.urls()).await, 3).await;
    let ctx = js(cluster.urls()).await;
    let total = 30u64;
    let mut head = 0u64;
    let mut killed = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while head < total {
        assert!(std::time::Instant::now() < deadline, "appends did not resume; head {head}");
        if head == 10 && killed.is_none() {
            let info = ctx.get_stream(LOG_STREAM).await.unwrap().info().await.unwrap().clone();
            let leader = info.cluster.and_then(|c| c.leader).expect("the stream has a leader");
            let i = NatsCluster::index_of(&leader);
            cluster.kill(i);
            killed = Some(i);
        }
        let next = &records("w", head, 1);
        match log.append(head, next).await {
            Ok(h) => head = h,
            Err(AppendError::Ambiguous(_)) => {
                // Unknown: the head and the record there say whether it was stored.
                match log.head().await {
                    Ok(h)
                        if h == head + 1
                            && log.read(h).await.ok().flatten().map(|r| r.hash) == Some(next[0].1.hash) =>
                    {
                        head = h
                    }
                    Ok(h) => assert_eq!(h, head, "nobody else writes"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            Err(e) => panic!("position {}: {e}", head + 1),
        }
    }
    assert!(killed.is_some());
    for p in 1..=total {
        let got = log.read(p).await.unwrap().expect("every acknowledged record is stored");
        assert_eq!(got.bytes, record("w", p).bytes, "position {p}");
    }
    assert_eq!(log.head().await.unwrap(), total, "no record twice");
    cluster.restart(killed.unwrap());
}

/// One append as one atomic batch (nats-server 2.12+): stored whole; a stale batch is fenced and
/// nothing of it is stored; two racing batches never interleave; a batch whose writer dies
/// before committing leaves nothing.
#[tokio::test]
async fn an_atomic_batch_is_stored_whole_or_not_at_all() {
    let cluster = NatsCluster::start().await;
    let a = open_log(js(&cluster.node_url(0)).await, 3).await;
    let b = open_log(js(&cluster.node_url(1)).await, 3).await;
    assert!(a.atomic(), "nats-server 2.15 stores atomic batches");
    assert_eq!(a.append_atomic(0, &records("a", 0, 5)).await.unwrap(), 5);
    match b.append_atomic(3, &records("b", 3, 4)).await {
        Err(AppendError::Fenced { expected: 3 }) => {}
        other => panic!("a stale batch is fenced, got {other:?}"),
    }
    assert_eq!(a.head().await.unwrap(), 5, "nothing of a fenced batch is stored");

    let (from_a, from_b) = (records("a", 5, 20), records("b", 5, 20));
    let (ra, rb) = tokio::join!(a.append_atomic(5, &from_a), b.append_atomic(5, &from_b));
    assert!(ra.is_ok() != rb.is_ok(), "exactly one of two racing batches: {ra:?} {rb:?}");
    let winner = if ra.is_ok() { "a" } else { "b" };
    assert_eq!(a.head().await.unwrap(), 25);
    for p in 6..=25 {
        assert_eq!(a.read(p).await.unwrap().unwrap().bytes, record(winner, p).bytes, "position {p}");
    }

    // A writer that dies mid-batch: three of five records sent, no commit, connection gone.
    let client = async_nats::connect(cluster.node_url(2)).await.unwrap();
    for (i, (p, sealed, _)) in records("dead", 25, 3).iter().enumerate() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Batch-Id", "dead-writer-batch");
        h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if i == 0 {
            h.insert("Nats-Expected-Last-Sequence", (p - 1).to_string().as_str());
        }
        client.publish_with_headers(scimlog::bus::log_stream::LOG_SUBJECT, h, sealed.to_record().into()).await.unwrap();
    }
    client.flush().await.unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.head().await.unwrap(), 25, "an uncommitted batch stores nothing");
    assert_eq!(a.append_atomic(25, &records("a", 25, 2)).await.unwrap(), 27, "and does not block the next");
}

/// Debian's nats-server 2.9 ignores `allow_atomic_publish` (and batch headers): the log stream
/// says so instead of appending non-atomically.
#[tokio::test]
async fn an_old_server_is_not_taken_for_an_atomic_one() {
    let nats = crate::support::NatsServer::start();
    let log = LogStream::open(js(nats.url()).await, 1).await.unwrap();
    assert!(!log.atomic());
    assert!(matches!(log.append_atomic(0, &records("a", 0, 2)).await, Err(AppendError::Refused(_))));
    assert_eq!(log.append(0, &records("a", 0, 2)).await.unwrap(), 2, "one at a time works on 2.9");
}

/// Opens the log stream on a 3-node cluster, trying again for up to 30 s: under load (the whole
/// suite at once on 2 cores) a JetStream API request can time out while the meta leader is busy,
/// which is not what these tests are about.
async fn open_log(js: async_nats::jetstream::Context, replicas: usize) -> LogStream {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match LogStream::open(js.clone(), replicas).await {
            Ok(log) => return log,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("opening the log stream failed, trying again: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the log stream does not open: {e}"),
        }
    }
}
