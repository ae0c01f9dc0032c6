//! One function per scenario. Each seeds what it needs and pushes its rows onto [`Bench::rows`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use serde_json::{json, Value};

use hyper::Method;

use crate::client::Conn;
use crate::load::{self, drive, CpuClock, Row};
use crate::target::{Nats, Scimlog, Sink, Trivial, NOISY_TENANT, TOKEN};
use crate::Args;

/// Scenarios that change nothing, so that running them again measures the same thing.
const REPEATABLE: &[&str] = &["lookup", "get-by-id", "list-page", "healthz", "floor", "trivial"];

/// The group access extension's schema (a group's roles and entitlements).
const GROUP_ACCESS: &str = "urn:scimlog:params:scim:schemas:extension:access:2.0:Group";
/// The access scenario's groups: one per this many users, at most [`ACCESS_GROUPS_MAX`].
const USERS_PER_ACCESS_GROUP: usize = 100;
const ACCESS_GROUPS_MAX: usize = 10_000;
/// The large group of the access check's group-size rows.
const ACCESS_BIG_GROUP: usize = 100_000;
/// Users the access checks ask about (each checked once before, to be one that is allowed).
const ACCESS_SAMPLE: usize = 10_000;
/// Leaf groups each user of the access scenario is in.
const ACCESS_GROUPS_PER_USER: usize = 5;

/// Connections creating users while the publish lag is measured.
const PUBLISH_LAG_CONNECTIONS: usize = 4;
/// The outbound lag's writer: one connection keeps the create rate under what a connector sends
/// (one request at a time to its target), so the lag measured is a change's way, not a queue.
const OUTBOUND_LAG_CONNECTIONS: usize = 1;

/// The run of median throughput (its percentiles are those of a real run), the spread of all in
/// its name.
fn median(mut rows: Vec<Row>) -> Row {
    let runs = rows.len();
    rows.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let (low, high) = (rows[0].rate(), rows[runs - 1].rate());
    let mut median = rows.swap_remove(runs / 2);
    if runs > 1 {
        median.scenario = format!("{} [median of {runs} runs: {low:.0}–{high:.0}/s]", median.scenario);
    }
    median
}

/// The access scenario's leaf groups (the ones users are in).
struct AccessTree {
    leaves: Vec<String>,
}

/// A start-up measured at one directory size.
pub struct Startup {
    users: usize,
    events: u64,
    data_mb: f64,
    stop: Duration,
    start: Duration,
    rss_mb: Option<f64>,
}

pub fn print_startups(rows: &[Startup]) {
    println!("| users | events | data dir | stop (SIGTERM to exit) | start-up (spawn to first /healthz 200) | RSS after start-up |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for s in rows {
        println!(
            "| {} | {} | {:.0} MB | {} ms | {} ms | {} |",
            s.users,
            s.events,
            s.data_mb,
            s.stop.as_millis(),
            s.start.as_millis(),
            s.rss_mb.map(|m| format!("{m:.0} MB")).unwrap_or_else(|| "-".into())
        );
    }
}

pub struct Bench {
    args: Args,
    /// A connection with the token (copied per worker) and one without, for /healthz.
    conn: Conn,
    health: Conn,
    server: Option<Scimlog>,
    /// Makes this run's userNames unique, so that runs against one --url server do not collide.
    tag: String,
    /// The users this run created: (index in their userName, id).
    users: Vec<(u64, String)>,
    next_user: u64,
    pub rows: Vec<Row>,
    pub startups: Vec<Startup>,
}

fn user_name(tag: &str, i: u64) -> String {
    format!("user{i:07}-{tag}@bench.example")
}

/// A user as Okta creates one.
fn user_body(tag: &str, i: u64) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": user_name(tag, i),
        "externalId": format!("00u{tag}{i:011}"),
        "name": {"givenName": "Bench", "familyName": format!("User{i}")},
        "displayName": format!("Bench User {i}"),
        "emails": [{"value": user_name(tag, i), "type": "work", "primary": true}],
        "active": true,
        "password": "not-stored-ever"
    })
}

/// A cursor as a query value (cursors are base64 with `+`, `/` and `=`).
fn encode_cursor(cursor: &str) -> String {
    cursor.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
}

/// The SCIM requests the scenarios make, on the caller's connection.
#[derive(Clone)]
struct Api {
    tag: String,
}

const SCIM: &str = "/scim/v2";

impl Api {
    async fn create_user(&self, conn: &mut Conn, i: u64) -> Option<String> {
        let body = user_body(&self.tag, i).to_string();
        match conn.request(Method::POST, &format!("{SCIM}/Users"), Some(body)).await {
            Ok((status, body)) if status.as_u16() == 201 => {
                serde_json::from_slice::<Value>(&body).ok()?["id"].as_str().map(String::from)
            }
            _ => None,
        }
    }

    async fn lookup(&self, conn: &mut Conn, i: u64) -> bool {
        let name = user_name(&self.tag, i).replace('@', "%40");
        match conn.get(&format!("{SCIM}/Users?filter=userName%20eq%20%22{name}%22")).await {
            Ok((status, body)) if status.is_success() => {
                std::str::from_utf8(&body).is_ok_and(|t| t.contains("\"totalResults\":1"))
            }
            _ => false,
        }
    }

    async fn get(&self, conn: &mut Conn, path: &str) -> bool {
        matches!(conn.get(&format!("{SCIM}/{path}")).await, Ok((status, _)) if status.is_success())
    }

    async fn send(&self, conn: &mut Conn, method: Method, path: &str, body: Value) -> bool {
        let r = conn.request(method, &format!("{SCIM}/{path}"), Some(body.to_string())).await;
        matches!(r, Ok((status, _)) if status.is_success())
    }

    async fn create_group(&self, conn: &mut Conn, name: &str) -> anyhow::Result<String> {
        self.create_group_with(conn, json!({"displayName": name})).await
    }

    async fn create_group_with(&self, conn: &mut Conn, body: Value) -> anyhow::Result<String> {
        let (status, answer) = conn.request(Method::POST, &format!("{SCIM}/Groups"), Some(body.to_string())).await?;
        anyhow::ensure!(status.as_u16() == 201, "creating group {body}: {status}");
        serde_json::from_slice::<Value>(&answer)?["id"].as_str().map(String::from).context("no group id")
    }

    /// Adds members in PATCHes of 1000, as Okta's group push does on a first sync.
    async fn add_members(&self, conn: &mut Conn, group: &str, ids: &[String]) -> anyhow::Result<()> {
        for chunk in ids.chunks(1000) {
            let value: Vec<Value> = chunk.iter().map(|id| json!({"value": id})).collect();
            let op = json!({"Operations": [{"op": "add", "path": "members", "value": value}]});
            let ok = self.send(conn, Method::PATCH, &format!("Groups/{group}"), op).await;
            anyhow::ensure!(ok, "adding members to {group} failed");
        }
        Ok(())
    }

    /// One member added or removed, as a group push sends it.
    async fn push(&self, conn: &mut Conn, group: &str, member: &str, add: bool) -> bool {
        let op = if add {
            json!({"op": "add", "path": "members", "value": [{"value": member}]})
        } else {
            json!({"op": "remove", "path": format!("members[value eq \"{member}\"]")})
        };
        self.send(conn, Method::PATCH, &format!("Groups/{group}"), json!({"Operations": [op]})).await
    }
}

impl Bench {
    pub async fn new(mut args: Args) -> anyhow::Result<Bench> {
        let server = if args.spawn {
            let bin = match &args.server_bin {
                Some(b) => b.clone(),
                None => Scimlog::default_bin()?,
            };
            let s = Scimlog::start(bin).await?;
            args.url = s.url.clone();
            args.token = TOKEN.into();
            args.admin_token = crate::target::ADMIN_TOKEN.into();
            Some(s)
        } else {
            None
        };
        crate::check_loopback(&args.url)?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        Ok(Bench {
            conn: Conn::new(&args.url, &args.token)?,
            health: Conn::new(&args.url, &args.admin_token)?,
            server,
            tag: format!("{:06x}", nanos % 0xff_ffff),
            users: Vec::new(),
            next_user: 0,
            rows: Vec::new(),
            startups: Vec::new(),
            args,
        })
    }

    fn api(&self) -> Api {
        Api { tag: self.tag.clone() }
    }

    /// Records a row with the server's RSS now (unless the row has its own).
    fn push(&mut self, mut row: Row) {
        if row.rss_mb.is_none() {
            row.rss_mb = self.server.as_ref().and_then(|s| s.rss_mb());
        }
        self.push_raw(row);
    }

    /// Records a row that has nothing to do with the server's memory (the ceilings).
    fn push_raw(&mut self, row: Row) {
        eprintln!("  {}: {:.0}/s, p99 {}", row.scenario, row.rate(), load::fmt_us(row.percentile_us(0.99)));
        self.rows.push(row);
    }

    /// [`drive`] on --connections connections, with the CPU time the server (`pid`) and this
    /// process spent per operation.
    async fn measure<F, Fut>(&self, name: &str, pid: Option<u32>, requests: u64, limit: Duration, op: F) -> Row
    where
        F: Fn(Conn, u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = (Conn, bool)> + Send,
    {
        self.measure_on(&self.conn, self.args.connections, name, pid, requests, limit, op).await
    }

    /// [`Bench::measure`] --runs times: the run of median throughput, the spread in its name.
    async fn measure_median<F, Fut>(&self, name: &str, op: F) -> Row
    where
        F: Fn(Conn, u64) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = (Conn, bool)> + Send,
    {
        let mut runs = Vec::new();
        for _ in 0..self.args.runs.max(1) {
            runs.push(self.measure(name, self.server_pid(), self.args.requests, self.args.limit(), op.clone()).await);
        }
        median(runs)
    }

    #[allow(clippy::too_many_arguments)]
    async fn measure_on<F, Fut>(
        &self,
        conn: &Conn,
        connections: usize,
        name: &str,
        pid: Option<u32>,
        requests: u64,
        limit: Duration,
        op: F,
    ) -> Row
    where
        F: Fn(Conn, u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = (Conn, bool)> + Send,
    {
        let (server, own) = (CpuClock::start(pid), CpuClock::start(Some(std::process::id())));
        let mut row = drive(name, conn, connections, requests, limit, op).await;
        row.server_cpu_us = server.per_op_us(row.requests);
        row.generator_cpu_us = own.per_op_us(row.requests);
        row
    }

    fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(|s| s.pid())
    }

    fn server(&mut self, scenario: &str) -> anyhow::Result<&mut Scimlog> {
        self.server.as_mut().with_context(|| format!("{scenario} needs --spawn"))
    }

    fn need_users(&self, scenario: &str) -> anyhow::Result<()> {
        if self.users.is_empty() {
            bail!("{scenario} needs users: put create-users before it");
        }
        Ok(())
    }

    async fn healthz_json(&mut self) -> anyhow::Result<Value> {
        let (status, body) = self.health.get("/healthz").await?;
        anyhow::ensure!(status.is_success(), "/healthz answered {status}");
        Ok(serde_json::from_slice(&body)?)
    }

    /// Waits (at most 5 minutes) until the store has no flush or compaction running, so that a
    /// measurement does not depend on where the compactions after a seeding happen to be.
    async fn settle(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let store = self.healthz_json().await?["store"].clone();
            let busy =
                store["runningCompactions"].as_u64().unwrap_or(0) + store["runningFlushes"].as_u64().unwrap_or(0);
            if busy == 0 || started.elapsed() > Duration::from_secs(300) {
                if started.elapsed() > Duration::from_secs(1) {
                    eprintln!("  (waited {:.0} s for the store's compactions)", started.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn log_position(&mut self) -> anyhow::Result<u64> {
        self.healthz_json().await?["logPosition"].as_u64().context("/healthz without logPosition")
    }

    /// Runs a scenario; the read-only ones --runs times, keeping the run of median throughput
    /// (its percentiles are those of a real run) and noting the spread in its name.
    pub async fn run(&mut self, scenario: &str, size: u64) -> anyhow::Result<()> {
        let runs = if REPEATABLE.contains(&scenario) { self.args.runs.max(1) } else { 1 };
        if scenario != "create-users" {
            self.settle().await?;
        }
        let before = self.rows.len();
        for _ in 0..runs {
            self.run_once(scenario, size).await?;
        }
        if runs > 1 {
            let rows: Vec<Row> = self.rows.drain(before..).collect();
            self.rows.push(median(rows));
        }
        Ok(())
    }

    async fn run_once(&mut self, scenario: &str, size: u64) -> anyhow::Result<()> {
        eprintln!("{scenario} ({} users so far)", self.users.len());
        match scenario {
            "create-users" => self.create_users(size).await,
            "lookup" => self.lookup().await,
            "get-by-id" => self.get_by_id().await,
            "list-page" => self.list_page().await,
            "startup" => self.startup().await,
            "okta-import" => self.import(false).await,
            "cursor-import" => self.import(true).await,
            "group-push" => self.group_push().await,
            "authentik-sync" => self.authentik_sync().await,
            "mixed" => self.mixed().await,
            "access" => self.access().await,
            "two-tenants" => self.two_tenants().await,
            "replay" => self.replay().await,
            "publish" => self.publish().await,
            "outbound" => self.outbound().await,
            "healthz" => self.healthz().await,
            "floor" => self.floor().await,
            "trivial" => self.trivial().await,
            "log-append" => {
                for row in log_append(self.args.duration_s.min(5))? {
                    self.push_raw(row);
                }
                Ok(())
            }
            "cluster-writes" => self.cluster_writes().await,
            "stream-append" => {
                for row in stream_append(&self.args.nats_server_recent, self.args.duration_s.min(5)).await? {
                    self.push_raw(row);
                }
                Ok(())
            }
            other => bail!("unknown scenario {other:?}"),
        }
    }

    /// Durable creates through a cluster's leader (its log an R3 stream on a 3-node NATS cluster
    /// with `sync_interval: always`) against a single node, in the same run; then the failover
    /// time: the last 2xx before the leader is SIGKILLed to the first 2xx after, for a client
    /// writing through the other node.
    async fn cluster_writes(&mut self) -> anyhow::Result<()> {
        const MASTER: &str = "5e1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100aa";
        const TTL_MS: u64 = 3000;
        let bin = match &self.args.server_bin {
            Some(b) => b.clone(),
            None => Scimlog::default_bin()?,
        };
        let nats = crate::target::NatsCluster::start(&self.args.nats_server_recent).await?;
        let urls = nats.urls.join(",");
        let node = |id: &str| -> Vec<String> {
            let flags =
                ["--cluster", "--node-id", id, "--nats-url", &urls, "--nats-replicas", "3", "--master-key", MASTER];
            let mut v: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
            v.extend(["--lease-ttl-ms".to_string(), TTL_MS.to_string()]);
            v
        };
        let single = Scimlog::start(bin.clone()).await?;
        let mut leader = Scimlog::start_with(bin.clone(), node("a")).await?;
        wait_for_role(&leader.url, "leader").await?;
        let n = self.args.requests.min(20_000);
        for (label, server) in [("single node", &single), ("cluster leader, R3 log stream", &leader)] {
            let (api, offset) = (self.api(), self.next_user);
            self.next_user += n;
            let conn = Conn::new(&server.url, TOKEN)?;
            let name = format!("{label}: POST /Users (fsync on, {} connections)", self.args.seed_connections);
            let limit = self.args.limit();
            let row = self
                .measure_on(&conn, self.args.seed_connections, &name, server.pid(), n, limit, move |mut conn, i| {
                    let api = api.clone();
                    async move {
                        let ok = api.create_user(&mut conn, offset + i).await.is_some();
                        (conn, ok)
                    }
                })
                .await;
            self.push_raw(row);
        }
        drop(single);

        let follower = Scimlog::start_with(bin, node("b")).await?;
        wait_for_role(&follower.url, "follower").await?;
        let (api, offset) = (self.api(), self.next_user);
        self.next_user += 1_000_000;
        let mut conn = Conn::new(&follower.url, TOKEN)?;
        let mut last_before = Instant::now();
        let started = Instant::now();
        let mut killed_at = None;
        let mut i = 0;
        let first_after = loop {
            i += 1;
            let ok = api.create_user(&mut conn, offset + i).await.is_some();
            let now = Instant::now();
            match (killed_at, ok) {
                (None, true) => last_before = now,
                (Some(_), true) => break now,
                _ => {}
            }
            if killed_at.is_none() && started.elapsed() > Duration::from_secs(2) {
                leader.kill().await?;
                killed_at = Some(Instant::now());
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "no write went through after the failover");
            if !ok {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let took = first_after - last_before;
        let name = format!(
            "cluster failover: last 2xx before SIGKILL of the leader to the first 2xx after (lease TTL {TTL_MS} ms)"
        );
        self.push_raw(Row::new(name, 1, took.as_secs_f64(), vec![took.as_micros() as u64]));
        Ok(())
    }

    /// POST /Users until the directory holds `size` users of this run (bounded by
    /// --seed-timeout-s), recording their ids.
    async fn create_users(&mut self, size: u64) -> anyhow::Result<()> {
        let have = self.users.len() as u64;
        if have >= size {
            return Ok(());
        }
        let (offset, n) = (self.next_user, size - have);
        self.next_user += n;
        let created = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
        let (api, sink) = (self.api(), created.clone());
        let name =
            format!("create-users {have}→{size} (POST /Users, fsync on, {} connections)", self.args.seed_connections);
        let limit = Duration::from_secs(self.args.seed_timeout_s);
        let row = self
            .measure_on(
                &self.conn,
                self.args.seed_connections,
                &name,
                self.server_pid(),
                n,
                limit,
                move |mut conn, i| {
                    let (api, sink) = (api.clone(), sink.clone());
                    async move {
                        let id = api.create_user(&mut conn, offset + i).await;
                        let ok = id.is_some();
                        if let Some(id) = id {
                            sink.lock().unwrap().push((offset + i, id));
                        }
                        (conn, ok)
                    }
                },
            )
            .await;
        let mut created = std::mem::take(&mut *created.lock().unwrap());
        created.sort_unstable();
        self.users.extend(created);
        self.push(row);
        Ok(())
    }

    async fn lookup(&mut self) -> anyhow::Result<()> {
        self.need_users("lookup")?;
        let (api, users) = (self.api(), Arc::new(self.users.iter().map(|u| u.0).collect::<Vec<_>>()));
        let name = format!("lookup filter=userName eq ({} users)", users.len());
        let row = self
            .measure(&name, self.server_pid(), self.args.requests, self.args.limit(), move |mut conn, i| {
                let (api, users) = (api.clone(), users.clone());
                async move {
                    let ok = api.lookup(&mut conn, users[(i as usize * 7919) % users.len()]).await;
                    (conn, ok)
                }
            })
            .await;
        self.push(row);
        Ok(())
    }

    /// authentik's periodic full sync: every user PUT back as it is (authentik's user client
    /// always PUTs the whole mapping, with the id). Nothing changed, so nothing may be written:
    /// the row says how many events the sync wrote. Bounded by the seeding time limit.
    async fn authentik_sync(&mut self) -> anyhow::Result<()> {
        self.need_users("authentik-sync")?;
        let before = self.log_position().await?;
        let (api, users) = (self.api(), Arc::new(self.users.clone()));
        let n = users.len() as u64;
        let name = format!("authentik-sync: PUT each of {n} users unchanged");
        let limit = Duration::from_secs(self.args.seed_timeout_s);
        let mut row = self
            .measure(&name, self.server_pid(), n, limit, move |mut conn, i| {
                let (api, users) = (api.clone(), users.clone());
                async move {
                    let (number, id) = &users[i as usize % users.len()];
                    let mut body = user_body(&api.tag, *number);
                    body["id"] = Value::String(id.clone());
                    let ok = api.send(&mut conn, Method::PUT, &format!("Users/{id}"), body).await;
                    (conn, ok)
                }
            })
            .await;
        let written = self.log_position().await? - before;
        row.scenario = format!("{} ({written} events written)", row.scenario);
        self.push(row);
        Ok(())
    }

    fn ids(&self) -> Arc<Vec<String>> {
        Arc::new(self.users.iter().map(|u| u.1.clone()).collect())
    }

    async fn get_by_id(&mut self) -> anyhow::Result<()> {
        self.need_users("get-by-id")?;
        let (api, ids) = (self.api(), self.ids());
        let name = format!("GET /Users/{{id}} ({} users)", ids.len());
        let row = self
            .measure(&name, self.server_pid(), self.args.requests, self.args.limit(), move |mut conn, i| {
                let (api, ids) = (api.clone(), ids.clone());
                async move {
                    let ok = api.get(&mut conn, &format!("Users/{}", ids[(i as usize * 7919) % ids.len()])).await;
                    (conn, ok)
                }
            })
            .await;
        self.push(row);
        Ok(())
    }

    async fn list_page(&mut self) -> anyhow::Result<()> {
        self.need_users("list-page")?;
        let (api, n) = (self.api(), self.users.len() as u64);
        let name = format!("GET /Users?startIndex=…&count=100 ({n} users)");
        let row = self
            .measure(&name, self.server_pid(), self.args.requests.min(2000), self.args.limit(), move |mut conn, i| {
                let api = api.clone();
                async move {
                    let ok = api.get(&mut conn, &format!("Users?startIndex={}&count=100", 1 + (i * 100) % n)).await;
                    (conn, ok)
                }
            })
            .await;
        self.push(row);
        Ok(())
    }

    /// Stops the server (SIGTERM) and starts it again on the same data dir.
    async fn startup(&mut self) -> anyhow::Result<()> {
        let events = self.log_position().await?;
        let users = self.users.len();
        let server = self.server("startup")?;
        let data_mb = load::dir_bytes(server.data_dir()) as f64 / 1e6;
        let (stop, start) = server.restart(None).await?;
        let rss_mb = server.rss_mb();
        eprintln!("  start-up at {users} users: {} ms", start.as_millis());
        self.startups.push(Startup { users, events, data_mb, stop, start, rss_mb });
        Ok(())
    }

    /// The whole directory, a page of 100 at a time, on one connection: as Okta imports
    /// (`startIndex=1, 101, ...`), or by RFC 9865 cursors (`cursor=`, then each `nextCursor`).
    async fn import(&mut self, by_cursor: bool) -> anyhow::Result<()> {
        let started = Instant::now();
        let cpu = CpuClock::start(self.server_pid());
        let mut conn = self.conn.try_clone();
        let mut cursor = String::new();
        let (mut pages, mut users, mut latencies) = (0u64, 0u64, Vec::new());
        loop {
            let url = match by_cursor {
                true => format!("{SCIM}/Users?count=100&cursor={cursor}"),
                false => format!("{SCIM}/Users?count=100&startIndex={}", users + 1),
            };
            let t = Instant::now();
            let (status, body) = conn.get(&url).await?;
            anyhow::ensure!(status.is_success(), "a page answered {status}");
            latencies.push(t.elapsed().as_micros() as u64);
            let page: Value = serde_json::from_slice(&body)?;
            pages += 1;
            let got = page["Resources"].as_array().map_or(0, |a| a.len() as u64);
            users += got;
            let more = match by_cursor {
                true => page["nextCursor"].as_str().map(|next| cursor = encode_cursor(next)).is_some(),
                false => got > 0 && users < page["totalResults"].as_u64().unwrap_or(0),
            };
            if !more || started.elapsed() > Duration::from_secs(self.args.seed_timeout_s) {
                break;
            }
        }
        let how = if by_cursor { "cursor-import: RFC 9865 cursors" } else { "okta-import: startIndex" };
        let name = format!("{how}, {users} users in {pages} pages of 100 (pages/s; one connection)");
        let mut row = Row::new(name, pages, started.elapsed().as_secs_f64(), latencies);
        row.server_cpu_us = cpu.per_op_us(pages);
        self.push(row);
        Ok(())
    }

    /// PATCH one member in or out of groups of 10, 10k and 100k members (capped at the users
    /// there are): the cost must not grow with the group.
    async fn group_push(&mut self) -> anyhow::Result<()> {
        self.need_users("group-push")?;
        let ids = self.ids();
        let mut sizes: Vec<usize> = [10, 10_000, 100_000].iter().map(|&s| s.min(ids.len())).collect();
        sizes.dedup();
        for size in sizes {
            let api = self.api();
            let mut conn = self.conn.try_clone();
            let group = api.create_group(&mut conn, &format!("push-{size}-{}", self.tag)).await?;
            api.add_members(&mut conn, &group, &ids[..size]).await?;
            // Adding 100k members is a lot of writes: let their flushes and compactions end, or
            // the measurement of the pushes would carry them.
            self.settle().await?;
            // Even pushes add a user from outside the seed, odd ones remove it again.
            let ids = ids.clone();
            let row = self
                .measure(
                    &format!("group-push PATCH one member ({size} members)"),
                    self.server_pid(),
                    self.args.requests.min(5000),
                    self.args.limit(),
                    move |mut conn, i| {
                        let (api, group) = (api.clone(), group.clone());
                        let member = ids[(size + (i as usize / 2)) % ids.len()].clone();
                        async move {
                            let ok = api.push(&mut conn, &group, &member, i % 2 == 0).await;
                            (conn, ok)
                        }
                    },
                )
                .await;
            self.push(row);
        }
        Ok(())
    }

    /// The access check an application makes on each of its own requests. Groups nested three
    /// deep (a user's leaf group is in a middle group, which is in a top group; one group per 100
    /// users, at most 10 000: 80% leaves, 10% middles, 10% tops), each user in 5 leaf groups,
    /// and only the top groups holding the environment's role: every allowed answer comes
    /// through three levels. Then the same checks with 10% writes among them (group pushes on
    /// leaf groups), as an application's traffic meets an IdP's.
    async fn access(&mut self) -> anyhow::Result<()> {
        self.need_users("access")?;
        let users = self.ids();
        let (env, role) = (format!("bench-{}", self.tag), "viewer");
        let tree = self.seed_access_tree(&users, &env, role).await?;
        self.settle().await?;
        let (n, groups) = (users.len(), tree.leaves.len() * 10 / 8);
        let check = move |u: &str| format!("/api/v1/access/check?user={u}&environment={env}&role={role}&by=id");
        let all = users.clone();
        let users = self.allowed_sample(&users, &check).await?;
        // The GET of the same users reads the same state as the checks (their 5 groups rendered):
        // the check's rate against a GET's, side by side.
        let rows: [(&str, Arc<dyn Fn(&str) -> String + Send + Sync>); 3] = [
            ("access check, allowed through 3 nested groups", Arc::new(check.clone())),
            ("GET /api/v1/users/{id}/access", Arc::new(|u: &str| format!("/api/v1/users/{u}/access"))),
            (
                "GET /Users/{id} of the same users, their groups rendered",
                Arc::new(|u: &str| format!("{SCIM}/Users/{u}")),
            ),
        ];
        // Read-only: --runs times each, the median kept.
        for (what, path) in rows {
            let name = format!("{what} ({n} users, {groups} groups, {ACCESS_GROUPS_PER_USER} per user)");
            let users = users.clone();
            let row = self
                .measure_median(&name, move |mut conn, i| {
                    let (users, path) = (users.clone(), path.clone());
                    async move {
                        let url = path(&users[(i as usize * 7919) % users.len()]);
                        let ok = matches!(conn.get(&url).await, Ok((s, b)) if s.is_success() && !b.starts_with(b"{\"allowed\":false"));
                        (conn, ok)
                    }
                })
                .await;
            self.push(row);
        }
        self.access_by_group_size(&users, &all).await?;
        let (api, leaves) = (self.api(), Arc::new(tree.leaves));
        let name = format!("application: 90% access checks, 10% group pushes ({n} users, {groups} groups)");
        let row = self
            .measure(&name, self.server_pid(), self.args.requests, self.args.limit(), move |mut conn, i| {
                let (api, users, leaves, check) = (api.clone(), users.clone(), leaves.clone(), check.clone());
                let all = all.clone();
                async move {
                    let ok = match i % 10 {
                        0 => {
                            // Each pair of pushes adds a user to a leaf group it is not in (user
                            // u is in leaves 5u..5u+4), then takes it out again.
                            let k = i as usize / 10;
                            let u = (k / 2 * 7919) % all.len();
                            let leaf = &leaves[(u * ACCESS_GROUPS_PER_USER + ACCESS_GROUPS_PER_USER) % leaves.len()];
                            api.push(&mut conn, leaf, &all[u], k % 2 == 0).await
                        }
                        _ => {
                            let user = &users[(i as usize * 7919) % users.len()];
                            matches!(conn.get(&check(user)).await, Ok((s, _)) if s.is_success())
                        }
                    };
                    (conn, ok)
                }
            })
            .await;
        self.push(row);
        Ok(())
    }

    /// The check's cost against the size of the group that grants the role: 10 users in a group
    /// of 10, then 10 users in a group of up to 100 000 (each group alone holding a role of an
    /// environment of its own): the two rows should cost the same.
    async fn access_by_group_size(&mut self, allowed: &[String], users: &[String]) -> anyhow::Result<()> {
        anyhow::ensure!(allowed.len() >= 20, "the group-size rows need 20 users who are allowed");
        // The users asked about are allowed ones (active); the big group's others, any.
        let small: Vec<String> = allowed[..10].to_vec();
        let asked: std::collections::HashSet<&String> = allowed[..20].iter().collect();
        let mut big: Vec<String> = allowed[10..20].to_vec();
        big.extend(users.iter().filter(|u| !asked.contains(u)).take(ACCESS_BIG_GROUP - 10).cloned());
        for (size, members) in [(small.len(), small), (big.len(), big)] {
            let (api, env) = (self.api(), format!("size-{size}-{}", self.tag));
            let mut conn = self.conn.try_clone();
            let urn = format!("urn:scimlog:role:environment:{env}:viewer");
            let body =
                json!({"displayName": format!("size-{size}-{}", self.tag), GROUP_ACCESS: {"roles": [{"value": urn}]}});
            let group = api.create_group_with(&mut conn, body).await?;
            api.add_members(&mut conn, &group, &members).await?;
            self.settle().await?;
            let asked = Arc::new(members[..10].to_vec());
            let name = format!("access check through a group of {size} members ({} users)", users.len());
            let row = self
                .measure_median(&name, move |mut conn, i| {
                    let url = format!(
                        "/api/v1/access/check?user={}&environment={env}&role=viewer&by=id",
                        asked[i as usize % asked.len()]
                    );
                    async move {
                        let ok = matches!(conn.get(&url).await, Ok((s, b)) if s.is_success() && b.starts_with(b"{\"allowed\":true"));
                        (conn, ok)
                    }
                })
                .await;
            self.push(row);
        }
        Ok(())
    }

    /// Up to 10 000 users whose check is allowed (earlier scenarios may have deactivated some),
    /// each asked once: the measured checks then count a denial as an error.
    async fn allowed_sample(
        &self,
        users: &[String],
        check: &(dyn Fn(&str) -> String + Sync),
    ) -> anyhow::Result<Arc<Vec<String>>> {
        let mut conn = self.conn.try_clone();
        let step = (users.len() / ACCESS_SAMPLE).max(1);
        let mut allowed = Vec::new();
        for u in users.iter().step_by(step).take(ACCESS_SAMPLE) {
            let (status, body) = conn.get(&check(u)).await?;
            anyhow::ensure!(status.is_success(), "an access check answered {status}");
            if serde_json::from_slice::<Value>(&body)?["allowed"] == true {
                allowed.push(u.clone());
            }
        }
        let asked = users.len().div_ceil(step).min(ACCESS_SAMPLE);
        anyhow::ensure!(allowed.len() * 2 >= asked, "only {} of {asked} users are allowed", allowed.len());
        Ok(Arc::new(allowed))
    }

    /// Creates the access scenario's groups and memberships (see [`Bench::access`]).
    async fn seed_access_tree(&mut self, users: &[String], env: &str, role: &str) -> anyhow::Result<AccessTree> {
        let groups = (users.len() / USERS_PER_ACCESS_GROUP).clamp(30, ACCESS_GROUPS_MAX);
        let (tops, mids) = (groups / 10, groups / 10);
        let leaves = groups - tops - mids;
        let api = self.api();
        let mut conn = self.conn.try_clone();
        let started = Instant::now();
        let urn = format!("urn:scimlog:role:environment:{env}:{role}");
        let mut top_ids = Vec::with_capacity(tops);
        for i in 0..tops {
            let body =
                json!({"displayName": format!("top-{i}-{}", self.tag), GROUP_ACCESS: {"roles": [{"value": urn}]}});
            top_ids.push(api.create_group_with(&mut conn, body).await?);
        }
        let mut mid_ids = Vec::with_capacity(mids);
        for i in 0..mids {
            let id = api.create_group(&mut conn, &format!("mid-{i}-{}", self.tag)).await?;
            api.add_members(&mut conn, &top_ids[i % tops], std::slice::from_ref(&id)).await?;
            mid_ids.push(id);
        }
        let mut leaf_ids = Vec::with_capacity(leaves);
        for i in 0..leaves {
            let id = api.create_group(&mut conn, &format!("leaf-{i}-{}", self.tag)).await?;
            api.add_members(&mut conn, &mid_ids[i % mids], std::slice::from_ref(&id)).await?;
            leaf_ids.push(id);
        }
        // User u is in leaves (u * 5 + k) % leaves, k < 5: five different ones.
        let mut members: Vec<Vec<String>> = vec![Vec::new(); leaves];
        for (u, id) in users.iter().enumerate() {
            for k in 0..ACCESS_GROUPS_PER_USER {
                members[(u * ACCESS_GROUPS_PER_USER + k) % leaves].push(id.clone());
            }
        }
        for (leaf, ids) in leaf_ids.iter().zip(&members) {
            api.add_members(&mut conn, leaf, ids).await?;
        }
        eprintln!(
            "  access tree: {groups} groups, {} memberships in {:.1} s",
            users.len() * ACCESS_GROUPS_PER_USER + mids + leaves,
            started.elapsed().as_secs_f64()
        );
        Ok(AccessTree { leaves: leaf_ids })
    }

    /// An IdP-like mix: per 20 requests, 10 lookups by userName, 3 GETs by id, 2 creates, 2
    /// PUTs, 1 deactivation and 2 group pushes (on a group of 1000).
    async fn mixed(&mut self) -> anyhow::Result<()> {
        self.need_users("mixed")?;
        let api = self.api();
        let users = Arc::new(self.users.clone());
        let mut conn = self.conn.try_clone();
        let group = api.create_group(&mut conn, &format!("mixed-{}", self.tag)).await?;
        let first: Vec<String> = users.iter().take(1000).map(|u| u.1.clone()).collect();
        api.add_members(&mut conn, &group, &first).await?;
        let offset = self.next_user;
        let requests = self.args.requests;
        self.next_user += requests;
        let name = format!(
            "mixed IdP traffic ({} users; 50% lookup, 15% GET, 10% POST, 10% PUT, 5% deactivate, 10% group push)",
            users.len()
        );
        let row = self
            .measure(&name, self.server_pid(), requests, self.args.limit(), move |mut conn, i| {
                let (api, users, group) = (api.clone(), users.clone(), group.clone());
                async move {
                    let (index, id) = &users[(i as usize * 7919) % users.len()];
                    let ok = match i % 20 {
                        0..=9 => api.lookup(&mut conn, *index).await,
                        10..=12 => api.get(&mut conn, &format!("Users/{id}")).await,
                        13..=14 => api.create_user(&mut conn, offset + i).await.is_some(),
                        15..=16 => {
                            let mut body = user_body(&api.tag, *index);
                            body["displayName"] = json!(format!("Renamed {i}"));
                            api.send(&mut conn, Method::PUT, &format!("Users/{id}"), body).await
                        }
                        17 => {
                            let op = json!({
                                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                "Operations": [{"op": "replace", "value": {"active": false}}]
                            });
                            api.send(&mut conn, Method::PATCH, &format!("Users/{id}"), op).await
                        }
                        _ => api.push(&mut conn, &group, id, i % 40 < 20).await,
                    };
                    (conn, ok)
                }
            })
            .await;
        self.push(row);
        Ok(())
    }

    /// Two tenants on one server: a calm tenant's lookups (8 connections) alone, then while a
    /// noisy tenant floods writes and unindexed searches from --connections connections. What
    /// keeps the calm tenant answered is the server's own: the noisy token's rate (1000/s, burst
    /// 2000, from the spawned server's `--tenant-rate-limit`), its share of the write queue and
    /// the turns scanning reads take. The row's name counts the flood's answers by status.
    async fn two_tenants(&mut self) -> anyhow::Result<()> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        self.need_users("two-tenants")?;
        let name = format!("noisy-{}", self.tag);
        let server = self.server("two-tenants")?;
        let token = server.create_token(&name, NOISY_TENANT)?;
        let url = server.url.clone();
        let (api, n) = (self.api(), self.users.len() as u64);
        let requests = self.args.requests.min(5000);
        let lookups = |api: Api| {
            move |mut conn: Conn, i: u64| {
                let api = api.clone();
                async move {
                    let ok = api.lookup(&mut conn, (i * 7919) % n).await;
                    (conn, ok)
                }
            }
        };
        let alone = self
            .measure_on(
                &self.conn,
                8,
                "two-tenants: calm tenant lookups, alone",
                self.server_pid(),
                requests,
                self.args.limit(),
                lookups(api.clone()),
            )
            .await;
        self.push(alone);

        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default()); // 2xx, 429, 503, other
        let mut flood = Vec::new();
        for c in 0..self.args.connections {
            let (stop, counts, mut conn) = (stop.clone(), counts.clone(), Conn::new(&url, &token)?);
            flood.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let r = if i % 10 == 0 {
                        conn.get(&format!("{SCIM}/Users?filter=title%20co%20%22x%22&count=1")).await
                    } else {
                        let body = json!({"userName": format!("noisy-{c}-{i}"), "title": "x"}).to_string();
                        conn.request(Method::POST, &format!("{SCIM}/Users"), Some(body)).await
                    };
                    let slot = match r.map(|(s, _)| s.as_u16()) {
                        Ok(200..=299) => 0,
                        Ok(429) => 1,
                        Ok(503) => 2,
                        _ => 3,
                    };
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                    if slot == 1 || slot == 2 {
                        // A well-behaved client backs off as Retry-After says; this one barely does.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let name =
            format!("two-tenants: calm tenant lookups while another floods ({} connections)", self.args.connections);
        let mut during =
            self.measure_on(&self.conn, 8, &name, self.server_pid(), requests, self.args.limit(), lookups(api)).await;
        stop.store(true, Ordering::Relaxed);
        for f in flood {
            let _ = f.await;
        }
        let c: Vec<u64> = counts.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        during.scenario =
            format!("{} [flood: {} 2xx, {} 429, {} 503, {} other]", during.scenario, c[0], c[1], c[2], c[3]);
        self.push(during);
        Ok(())
    }

    /// Rebuilds every read model from the log, in this process, as `scimlog replay` does.
    async fn replay(&mut self) -> anyhow::Result<()> {
        let dir = self.server("replay")?.data_dir().to_path_buf();
        let store = scimlog::log::Store::open_read_only(&dir)?;
        let keys = scimlog::log::keys::KeyRing::open_read_only(store.clone(), &Default::default(), &dir)?;
        let head = store.head()?.position;
        let before = load::rss_mb(std::process::id()).unwrap_or(0.0);
        load::reset_peak_rss(std::process::id())?;
        let started = Instant::now();
        let cpu = CpuClock::start(Some(std::process::id()));
        let batch = scimlog::audit::REBUILD_BATCH_WRITES;
        let rebuilt = scimlog::audit::rebuild_beside(&store, &keys, head, &dir, batch, &mut |_| {})?;
        let name = format!(
            "replay: rebuild all read models from {head} events into RocksDB (events/s; CPU and peak RSS of the replaying process, {before:.0} MB before)"
        );
        let mut row = Row::new(name, head, started.elapsed().as_secs_f64(), vec![]);
        row.server_cpu_us = cpu.per_op_us(head);
        row.rss_mb = load::peak_rss_mb(std::process::id());
        drop(rebuilt);
        self.push(row);
        Ok(())
    }

    /// Events from the log to JetStream: first the whole backlog (the server restarted with
    /// NATS configured publishes everything it has), then, under creates, the lag from a 201 to
    /// the event's delivery by a JetStream consumer (it was stored and acknowledged by then).
    async fn publish(&mut self) -> anyhow::Result<()> {
        let nats = Nats::start().await?;
        let head = self.log_position().await?;
        self.server("publish")?.restart(Some(&nats.url)).await?;
        let started = Instant::now();
        let cpu = CpuClock::start(self.server_pid());
        loop {
            let published = self.healthz_json().await?["publisher"]["publishedPosition"].as_u64().unwrap_or(0);
            if published >= head {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(self.args.seed_timeout_s),
                "the publisher reached {published} of {head} events in --seed-timeout-s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let name = format!("publish: backlog of {head} events to JetStream (events/s)");
        let mut row = Row::new(name, head, started.elapsed().as_secs_f64(), vec![]);
        row.server_cpu_us = cpu.per_op_us(head);
        self.push(row);

        let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await?);
        let consumer = js
            .get_stream("SCIMLOG")
            .await?
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: "scimlog.*.user.created".into(),
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let delivered: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
        let reader = {
            let delivered = delivered.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = messages.next().await {
                    let at = Instant::now();
                    if let Ok(v) = serde_json::from_slice::<Value>(&m.payload) {
                        if let Some(id) = v["resourceId"].as_str() {
                            delivered.lock().unwrap().insert(id.to_string(), at);
                        }
                    }
                }
            })
        };
        // The lag is measured under an IdP's steady pace (4 connections), not at saturation,
        // where it only measures the queue in front of a CPU shared by three processes.
        let requests = self.args.requests.min(20_000);
        let (load, answered) =
            self.timed_creates(PUBLISH_LAG_CONNECTIONS, "(creates while publishing)", requests).await;
        let lags = arrival_lags(&answered, &delivered).await;
        reader.abort();
        let name = format!(
            "publish lag: 201 → delivered by a JetStream consumer, during {:.0} creates/s on {PUBLISH_LAG_CONNECTIONS} connections (errors = never delivered)",
            load.rate()
        );
        let mut row = Row::new(name, lags.len() as u64, load.seconds, lags);
        row.errors = answered.len() as u64 - row.requests + load.errors;
        (row.server_cpu_us, row.generator_cpu_us) = (load.server_cpu_us, load.generator_cpu_us);
        self.push(row);
        self.server("publish")?.restart(None).await?;
        nats.stop().await
    }

    /// Outbound provisioning into a SCIM target that takes everything (`Sink`): the backlog of
    /// the directory so far replayed into a new target (events/s, the server's CPU per event),
    /// then the time from a create's 201 to its POST reaching the target, at an IdP's pace.
    async fn outbound(&mut self) -> anyhow::Result<()> {
        let sink = Sink::start().await?;
        let head = self.log_position().await?;
        let token_file = self.server("outbound")?.data_dir().with_extension("sink-token");
        std::fs::write(&token_file, "sink-token")?;
        let token_arg = token_file.to_string_lossy().into_owned();
        let add = ["outbound", "add", "--name", "bench", "--url", &sink.url, "--token-file", &token_arg];
        self.server("outbound")?.cli(&add)?;
        let started = Instant::now();
        let cpu = CpuClock::start(self.server_pid());
        loop {
            let targets = self.admin_get("/api/v1/outbound/targets").await?;
            let w = targets[0]["watermark"].as_u64().unwrap_or(0);
            if w >= head {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(self.args.seed_timeout_s),
                "the outbound target reached {w} of {head} in --seed-timeout-s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let name = format!("outbound: backlog of {head} events into a SCIM target (events/s)");
        let mut row = Row::new(name, head, started.elapsed().as_secs_f64(), vec![]);
        row.server_cpu_us = cpu.per_op_us(head);
        self.push(row);

        let requests = self.args.requests.min(5_000);
        let (load, answered) =
            self.timed_creates(OUTBOUND_LAG_CONNECTIONS, "(creates while provisioning onward)", requests).await;
        let lags = arrival_lags(&answered, &sink.arrivals).await;
        let name = format!(
            "outbound lag: 201 → POST at the target, during {:.0} creates/s on {OUTBOUND_LAG_CONNECTIONS} connections (errors = never arrived)",
            load.rate()
        );
        let mut row = Row::new(name, lags.len() as u64, load.seconds, lags);
        row.errors = answered.len() as u64 - row.requests + load.errors;
        (row.server_cpu_us, row.generator_cpu_us) = (load.server_cpu_us, load.generator_cpu_us);
        self.push(row);
        self.server("outbound")?.cli(&["outbound", "remove", "--name", "bench"])?;
        Ok(())
    }

    /// Creates `requests` users on `connections` connections; answers the load's row and when
    /// each 201 came back, by user id.
    async fn timed_creates(
        &mut self,
        connections: usize,
        label: &str,
        requests: u64,
    ) -> (Row, HashMap<String, Instant>) {
        let answered: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
        let (api, sink, offset) = (self.api(), answered.clone(), self.next_user);
        self.next_user += requests;
        let load = self
            .measure_on(
                &self.conn,
                connections,
                label,
                self.server_pid(),
                requests,
                self.args.limit(),
                move |mut conn, i| {
                    let (api, sink) = (api.clone(), sink.clone());
                    async move {
                        let id = api.create_user(&mut conn, offset + i).await;
                        let at = Instant::now();
                        let ok = id.map(|id| sink.lock().unwrap().insert(id, at)).is_some();
                        (conn, ok)
                    }
                },
            )
            .await;
        let answered = std::mem::take(&mut *answered.lock().unwrap());
        (load, answered)
    }

    async fn admin_get(&mut self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.health.get(path).await?;
        anyhow::ensure!(status.is_success(), "{path} answered {status}");
        Ok(serde_json::from_slice(&body)?)
    }

    async fn healthz(&mut self) -> anyhow::Result<()> {
        let row = self
            .measure_on(
                &self.health,
                self.args.connections,
                "GET /healthz with an admin token (HTTP stack + token + log head + store figures)",
                self.server_pid(),
                self.args.requests,
                self.args.limit(),
                |mut conn, _| async move {
                    let ok = matches!(conn.get("/healthz").await, Ok((status, _)) if status.is_success());
                    (conn, ok)
                },
            )
            .await;
        self.push(row);
        Ok(())
    }

    /// `GET /ServiceProviderConfig` with the SCIM token: every layer a SCIM read passes through
    /// (the token gate, request context, metrics, SCIM headers, routing) and an answer from
    /// memory, no store. What a GET costs beyond it is the store and the rendering.
    async fn floor(&mut self) -> anyhow::Result<()> {
        let api = self.api();
        let row = self
            .measure(
                "GET /ServiceProviderConfig (every SCIM layer, a document from memory, no store: our request path's floor)",
                self.server_pid(),
                self.args.requests,
                self.args.limit(),
                move |mut conn, _| {
                    let api = api.clone();
                    async move {
                        let ok = api.get(&mut conn, "ServiceProviderConfig").await;
                        (conn, ok)
                    }
                },
            )
            .await;
        self.push(row);
        Ok(())
    }

    /// The same generator against an empty axum handler in its own process: the HTTP stack's
    /// ceiling on this machine.
    async fn trivial(&mut self) -> anyhow::Result<()> {
        let trivial = Trivial::start().await?;
        let conn = Conn::new(&trivial.url, "")?;
        let mut row = self
            .measure_on(
                &conn,
                self.args.connections,
                "trivial axum handler (HTTP stack ceiling)",
                Some(trivial.pid),
                self.args.requests,
                self.args.limit(),
                |mut conn, _| async move {
                    let ok = matches!(conn.get("/").await, Ok((status, _)) if status.is_success());
                    (conn, ok)
                },
            )
            .await;
        row.rss_mb = load::rss_mb(trivial.pid);
        self.push_raw(row);
        Ok(())
    }
}

/// From each answer to the arrival of the same id elsewhere (a NATS consumer, a SCIM target),
/// after waiting (at most 30 s) until every answered id has arrived. Negative lags (arrived
/// before the HTTP answer reached the generator) count as 0.
async fn arrival_lags(answered: &HashMap<String, Instant>, arrived: &Mutex<HashMap<String, Instant>>) -> Vec<u64> {
    let waited = Instant::now();
    while !answered.keys().all(|id| arrived.lock().unwrap().contains_key(id))
        && waited.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrived = arrived.lock().unwrap();
    answered
        .iter()
        .filter_map(|(id, at)| arrived.get(id).map(|d| d.saturating_duration_since(*at).as_micros() as u64))
        .collect()
}

/// Raw RocksDB commits of `n` 300-byte records per batch, fsync on and off: the disk's limit
/// for a single writer. Each row reports batches/s and the latency per batch.
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
            let mut latencies = Vec::new();
            while started.elapsed() < Duration::from_secs(seconds) && latencies.len() < 200_000 {
                let t = Instant::now();
                let mut batch = rocksdb::WriteBatch::default();
                for _ in 0..n {
                    key += 1;
                    batch.put(key.to_be_bytes(), &record);
                }
                db.write_opt(batch, &wo)?;
                latencies.push(t.elapsed().as_micros() as u64);
            }
            let seconds = started.elapsed().as_secs_f64();
            let name = format!(
                "RocksDB commits of {n} records ({:.0} records/s), fsync {} (disk ceiling)",
                (latencies.len() * n) as f64 / seconds,
                if sync { "on" } else { "OFF" }
            );
            rows.push(Row::new(name, latencies.len() as u64, seconds, latencies));
        }
    }
    Ok(rows)
}

/// Waits (at most 60 s) until the node at `url` has the cluster role `role`.
async fn wait_for_role(url: &str, role: &str) -> anyhow::Result<()> {
    let mut health = Conn::new(url, crate::target::ADMIN_TOKEN)?;
    let started = Instant::now();
    loop {
        if let Ok((status, body)) = health.get("/healthz").await {
            if status.is_success() && serde_json::from_slice::<Value>(&body)?["cluster"]["role"] == role {
                return Ok(());
            }
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "{url} did not become {role}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Appends of 300-byte records to the replicated log stream (cluster mode's source of truth) on a
/// 3-node cluster with `sync_interval: always`: one record at a time (each fenced on the one
/// before) against one atomic batch per append (2.12+), each for up to `seconds`.
async fn stream_append(binary: &std::path::Path, seconds: u64) -> anyhow::Result<Vec<Row>> {
    use scimlog::bus::log_stream::LogStream;
    use scimlog_schemas::event::SealedEvent;
    let cluster = crate::target::NatsCluster::start(binary).await?;
    let js = async_nats::jetstream::new(async_nats::connect(cluster.urls.clone()).await?);
    let log = LogStream::open(js, 3).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let record = SealedEvent { hash: [7; 32], bytes: vec![b'x'; 300] };
    let mut rows = Vec::new();
    for (atomic, n) in [(false, 1u64), (false, 16), (true, 1), (true, 16), (true, 128)] {
        let started = Instant::now();
        let mut latencies = Vec::new();
        let mut head = log.head().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        while started.elapsed() < Duration::from_secs(seconds) && latencies.len() < 100_000 {
            let batch: Vec<_> = (head + 1..=head + n).map(|p| (p, record.clone(), p == head + n)).collect();
            let t = Instant::now();
            head = match atomic {
                true => log.append_atomic(head, &batch).await,
                false => log.append(head, &batch).await,
            }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            latencies.push(t.elapsed().as_micros() as u64);
        }
        let seconds = started.elapsed().as_secs_f64();
        let how = if atomic { "one atomic batch" } else { "one at a time" };
        let name = format!(
            "R3 stream appends of {n} records, {how} ({:.0} records/s), sync always",
            (latencies.len() as u64 * n) as f64 / seconds
        );
        rows.push(Row::new(name, latencies.len() as u64, seconds, latencies));
    }
    Ok(rows)
}
