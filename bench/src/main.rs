//! `scimlog-bench`: a load generator that plays IdP-like SCIM traffic against a scimlog server and
//! prints one table row per scenario. Loopback only, bounded in requests and time.
//!
//! ```text
//! cargo run --release -p scimlog-bench -- --spawn --scenario create-users,lookup --users 10000
//! cargo run --release -p scimlog-bench -- --url http://127.0.0.1:8080 --token T --scenario lookup
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::json;

#[derive(Parser, Clone)]
struct Args {
    /// Base URL of a running server (its SCIM root is <url>/scim/v2). Loopback only.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token for --url.
    #[arg(long, env = "SCIMLOG_TOKEN", default_value = "")]
    token: String,
    /// Start a scimlog server in this process on a temp data dir instead of using --url.
    #[arg(long)]
    spawn: bool,
    /// Comma-separated scenarios: create-users, lookup, get-by-id, list-page, okta-import,
    /// group-push, replay (needs --spawn), healthz, trivial (an empty axum handler: the HTTP
    /// stack's ceiling), log-append (raw RocksDB commits of 1/16/128 records, fsync on and off:
    /// the disk's ceiling).
    #[arg(long, default_value = "create-users,lookup,get-by-id")]
    scenario: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Requests per scenario (upper bound).
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Time limit per scenario, in seconds.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// Directory size seeded (with create-users) before the read scenarios.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
}

struct Row {
    /// Resident memory of this process (server and load generator when --spawn) after the run.
    rss_mb: f64,
    scenario: String,
    requests: u64,
    errors: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn print_table(rows: &[Row]) {
    println!("| scenario | requests | errors | req/s | p50 | p90 | p99 | max | RSS |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let mut l = r.latencies_us.clone();
        l.sort_unstable();
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {:.0} MB |",
            r.scenario,
            r.requests,
            r.errors,
            r.requests as f64 / r.seconds,
            fmt_us(pct(&l, 0.5)),
            fmt_us(pct(&l, 0.9)),
            fmt_us(pct(&l, 0.99)),
            fmt_us(l.last().copied().unwrap_or(0)),
            r.rss_mb,
        );
    }
}

/// Runs `make_request(i)` for i in 0..requests across `connections` workers, bounded by time.
async fn drive<F, Fut>(name: &str, args: &Args, requests: u64, make_request: F) -> Row
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let f = Arc::new(make_request);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (next, errors, f) = (next.clone(), errors.clone(), f.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                if !f(i).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut latencies_us = Vec::new();
    for w in workers {
        latencies_us.extend(w.await.unwrap_or_default());
    }
    Row {
        rss_mb: rss_mb(),
        scenario: name.to_string(),
        requests: latencies_us.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        latencies_us,
    }
}

/// A cursor as a query value (cursors are base64 with `+`, `/` and `=`).
fn encode_cursor(cursor: &str) -> String {
    cursor.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
}

/// This process's resident set size, from /proc.
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Raw RocksDB commits of `n` 300-byte records per batch, fsync on and off: the disk's limit
/// for a single writer. Each row reports batches/s as req/s and latency per batch.
fn log_append(seconds: u64) -> anyhow::Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let db = rocksdb::DB::open(&opts, dir.path())?;
    let record = vec![b'x'; 300];
    let mut rows = Vec::new();
    let mut key = 0u64;
    for sync in [true, false] {
        for n in [1usize, 16, 128] {
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(sync);
            let started = Instant::now();
            let mut lat = Vec::new();
            while started.elapsed() < Duration::from_secs(seconds) && lat.len() < 200_000 {
                let t = Instant::now();
                let mut batch = rocksdb::WriteBatch::default();
                for _ in 0..n {
                    key += 1;
                    batch.put(key.to_be_bytes(), &record);
                }
                db.write_opt(batch, &wo)?;
                lat.push(t.elapsed().as_micros() as u64);
            }
            let secs = started.elapsed().as_secs_f64();
            rows.push(Row {
                rss_mb: rss_mb(),
                scenario: format!(
                    "log-append: batches of {n} ({:.0} records/s), fsync {}",
                    (lat.len() * n) as f64 / secs,
                    if sync { "on" } else { "OFF" }
                ),
                requests: lat.len() as u64,
                errors: 0,
                seconds: secs,
                latencies_us: lat,
            });
        }
    }
    Ok(rows)
}

fn user_body(i: u64) -> serde_json::Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": format!("user{i:07}@bench.example"),
        "externalId": format!("00u{i:017}"),
        "name": {"givenName": "Bench", "familyName": format!("User{i}")},
        "displayName": format!("Bench User {i}"),
        "emails": [{"value": format!("user{i:07}@bench.example"), "type": "work", "primary": true}],
        "active": true,
        "password": "not-stored-ever"
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let _guard;
    let _server;
    let mut data_dir: Option<std::path::PathBuf> = None;
    if args.spawn {
        let dir = tempfile::tempdir()?;
        data_dir = Some(dir.path().to_path_buf());
        let mut cfg = scimlog::config::ServeConfig::with_data_dir(dir.path());
        cfg.listen = "127.0.0.1:0".parse()?;
        cfg.bootstrap_token = Some("bench-token".into());
        let server = scimlog::server::Server::start(cfg).await?;
        args.url = format!("http://{}", server.addr);
        args.token = "bench-token".into();
        _server = server;
        _guard = dir;
    }
    let host =
        args.url.split("://").nth(1).unwrap_or_default().split(['/', ':']).next().unwrap_or_default().to_string();
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
        bail!("refusing to load {host}: benchmarks target loopback addresses only");
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.connections).build()?;
    let scim = format!("{}/scim/v2", args.url);
    let auth = format!("Bearer {}", args.token);
    let mut rows = Vec::new();
    let mut seeded = 0u64;

    for scenario in args.scenario.split(',').map(str::trim) {
        let (c, scim, auth) = (client.clone(), scim.clone(), auth.clone());
        let row = match scenario {
            "create-users" => {
                let offset = seeded;
                let n = args.requests.max(args.users);
                let row = drive("create-users (fsync on)", &args, n, move |i| {
                    let (c, scim, auth) = (c.clone(), scim.clone(), auth.clone());
                    async move {
                        let r = c
                            .post(format!("{scim}/Users"))
                            .header("authorization", auth)
                            .header("content-type", "application/scim+json")
                            .body(user_body(offset + i).to_string())
                            .send()
                            .await;
                        matches!(r, Ok(r) if r.status().as_u16() == 201)
                    }
                })
                .await;
                seeded += row.requests;
                row
            }
            "lookup" | "get-by-id" | "list-page" if seeded == 0 => {
                bail!("{scenario} needs users: run create-users first")
            }
            "lookup" => {
                let n = seeded;
                drive(&format!("lookup userName eq ({n} users)"), &args, args.requests, move |i| {
                    let (c, scim, auth) = (c.clone(), scim.clone(), auth.clone());
                    async move {
                        let name = format!("user{:07}%40bench.example", (i * 7919) % n);
                        let r = c
                            .get(format!("{scim}/Users?filter=userName%20eq%20%22{name}%22&startIndex=1&count=100"))
                            .header("authorization", auth)
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status().is_success() => {
                                r.text().await.map(|t| t.contains("\"totalResults\":1")).unwrap_or(false)
                            }
                            _ => false,
                        }
                    }
                })
                .await
            }
            "get-by-id" => {
                // Collect ids with one paged listing, then GET them.
                let list: serde_json::Value = c
                    .get(format!("{scim}/Users?count=1000&attributes=id"))
                    .header("authorization", &auth)
                    .send()
                    .await?
                    .json()
                    .await
                    .context("listing ids")?;
                let ids: Arc<Vec<String>> = Arc::new(
                    list["Resources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r["id"].as_str().map(String::from))
                        .collect(),
                );
                let n = seeded;
                drive(&format!("GET /Users/{{id}} ({n} users)"), &args, args.requests, move |i| {
                    let (c, scim, auth, ids) = (c.clone(), scim.clone(), auth.clone(), ids.clone());
                    async move {
                        let id = &ids[(i as usize * 7919) % ids.len()];
                        matches!(c.get(format!("{scim}/Users/{id}")).header("authorization", auth).send().await, Ok(r) if r.status().is_success())
                    }
                })
                .await
            }
            "list-page" => {
                let n = seeded;
                drive(&format!("GET /Users?count=100 ({n} users)"), &args, args.requests.min(2000), move |i| {
                    let (c, scim, auth) = (c.clone(), scim.clone(), auth.clone());
                    async move {
                        let start = 1 + (i * 100) % n;
                        matches!(c.get(format!("{scim}/Users?startIndex={start}&count=100")).header("authorization", auth).send().await, Ok(r) if r.status().is_success())
                    }
                })
                .await
            }
            "group-push" => {
                // One PATCH adding and one removing a member, on groups of 10, 1 000 and 10 000
                // members: the cost must not grow with the group's size.
                let mut ids: Vec<String> = Vec::new();
                let mut cursor = String::new();
                while ids.len() < 10_000 {
                    let page: serde_json::Value = c
                        .get(format!("{scim}/Users?count=1000&attributes=id&cursor={cursor}"))
                        .header("authorization", &auth)
                        .send()
                        .await?
                        .json()
                        .await?;
                    ids.extend(
                        page["Resources"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|r| r["id"].as_str().map(String::from)),
                    );
                    match page["nextCursor"].as_str() {
                        Some(next) => cursor = encode_cursor(next),
                        None => break,
                    }
                }
                anyhow::ensure!(ids.len() >= 20, "group-push needs at least 20 users: run create-users first");
                let mut last = None;
                for size in [10usize, 1_000, 10_000] {
                    // Members are added in PATCHes of 1000 (users may repeat ids beyond the seeded count).
                    let gid = c
                        .post(format!("{scim}/Groups"))
                        .header("authorization", &auth)
                        .header("content-type", "application/scim+json")
                        .body(json!({"displayName": format!("push-{size}-{}", rows.len())}).to_string())
                        .send()
                        .await?
                        .json::<serde_json::Value>()
                        .await?["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let all: Vec<String> = (0..size).map(|i| format!("{}", ids[i % ids.len()])).collect();
                    let mut distinct: Vec<String> = all.clone();
                    distinct.sort();
                    distinct.dedup();
                    for chunk in distinct.chunks(1000) {
                        let value: Vec<serde_json::Value> = chunk.iter().map(|id| json!({"value": id})).collect();
                        c.patch(format!("{scim}/Groups/{gid}"))
                            .header("authorization", &auth)
                            .header("content-type", "application/scim+json")
                            .body(json!({"Operations": [{"op": "add", "path": "members", "value": value}]}).to_string())
                            .send()
                            .await?;
                    }
                    let (c2, scim2, auth2, gid2, ids2) =
                        (c.clone(), scim.clone(), auth.clone(), gid.clone(), Arc::new(ids.clone()));
                    let row = drive(&format!("group-push PATCH add+remove ({} members)", distinct.len()), &args, args.requests.min(2000), move |i| {
                        let (c, scim, auth, gid, ids) = (c2.clone(), scim2.clone(), auth2.clone(), gid2.clone(), ids2.clone());
                        async move {
                            let id = &ids[(i as usize) % ids.len()];
                            let op = if i % 2 == 0 { json!({"op": "remove", "path": format!("members[value eq \"{id}\"]")}) } else { json!({"op": "add", "path": "members", "value": [{"value": id}]}) };
                            matches!(c.patch(format!("{scim}/Groups/{gid}")).header("authorization", auth).header("content-type", "application/scim+json")
                                .body(json!({"Operations": [op]}).to_string()).send().await, Ok(r) if r.status().is_success())
                        }
                    })
                    .await;
                    if let Some(prev) = last.replace(row) {
                        rows.push(prev);
                    }
                }
                last.expect("three sizes ran")
            }
            "replay" => {
                let dir = data_dir.clone().ok_or_else(|| anyhow::anyhow!("replay needs --spawn"))?;
                let store = scimlog::log::Store::open_read_only(&dir)?;
                let keys = scimlog::log::keys::KeyRing::open_read_only(store.clone(), &Default::default(), &dir)?;
                let head = store.head()?.position;
                let started = Instant::now();
                let kv = scimlog::audit::fold_until(&store, &keys, None, &mut |_| {})?;
                let seconds = started.elapsed().as_secs_f64();
                drop(kv);
                Row {
                    rss_mb: rss_mb(),
                    scenario: format!("replay: rebuild all read models ({head} events, opening sealed values)"),
                    requests: head,
                    errors: 0,
                    seconds,
                    latencies_us: vec![],
                }
            }
            "okta-import" => {
                // Okta's import: the whole directory, a page of 100 at a time (cursor paging).
                let started = Instant::now();
                let mut cursor = String::new();
                let (mut pages, mut users, mut lat) = (0u64, 0u64, Vec::new());
                loop {
                    let t = Instant::now();
                    let page: serde_json::Value = c
                        .get(format!("{scim}/Users?count=100&cursor={cursor}"))
                        .header("authorization", &auth)
                        .send()
                        .await?
                        .json()
                        .await?;
                    lat.push(t.elapsed().as_micros() as u64);
                    pages += 1;
                    users += page["Resources"].as_array().map(|a| a.len() as u64).unwrap_or(0);
                    match page["nextCursor"].as_str() {
                        Some(next) => cursor = encode_cursor(next),
                        None => break,
                    }
                    if started.elapsed() > Duration::from_secs(args.duration_s) {
                        break;
                    }
                }
                Row {
                    rss_mb: rss_mb(),
                    scenario: format!("okta-import: {users} users in {pages} pages of 100 (one connection)"),
                    requests: pages,
                    errors: 0,
                    seconds: started.elapsed().as_secs_f64(),
                    latencies_us: lat,
                }
            }
            "trivial" => {
                let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let url = format!("http://{}/", listener.local_addr()?);
                tokio::spawn(async move { axum::serve(listener, app).await });
                drive("trivial axum handler (HTTP stack ceiling)", &args, args.requests, move |_| {
                    let (c, url) = (c.clone(), url.clone());
                    async move { matches!(c.get(url).send().await, Ok(r) if r.status().is_success()) }
                })
                .await
            }
            "log-append" => {
                for row in log_append(args.duration_s.min(5))? {
                    rows.push(row);
                }
                continue;
            }
            "healthz" => {
                let base = args.url.clone();
                drive("GET /healthz (HTTP stack + log head)", &args, args.requests, move |_| {
                    let (c, base) = (c.clone(), base.clone());
                    async move { matches!(c.get(format!("{base}/healthz")).send().await, Ok(r) if r.status().is_success()) }
                })
                .await
            }
            other => bail!("unknown scenario {other:?}"),
        };
        rows.push(row);
    }
    println!(
        "connections: {}, cores: {}",
        args.connections,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    print_table(&rows);
    Ok(())
}
