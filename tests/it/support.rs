//! Test support: a real scimlog server on 127.0.0.1:0 over a real RocksDB in a temp dir, and a
//! small SCIM client.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use scimlog::config::ServeConfig;
use scimlog::server::Server;
use serde_json::Value;

pub const TOKEN: &str = "test-token-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct TestServer {
    server: Option<Server>,
    cfg: ServeConfig,
    pub base: String,
    pub client: reqwest::Client,
    pub token: String,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// A response, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn id(&self) -> String {
        self.body["id"].as_str().expect("response has an id").to_string()
    }
    /// Asserts a SCIM error with this status and scimType whose detail mentions `detail_has`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, scim_type: Option<&str>, detail_has: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error", "{}", self.body);
        assert_eq!(self.body["status"], status.to_string(), "status is a string: {}", self.body);
        assert_eq!(self.body["scimType"].as_str(), scim_type, "{}", self.body);
        let detail = self.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(detail_has), "detail {detail:?} should mention {detail_has:?}");
        assert_eq!(self.header("content-type"), Some("application/scim+json"));
    }
}

pub fn config(dir: &Path) -> ServeConfig {
    // Targets and receivers here are on loopback, which the SSRF guard refuses by default.
    let mut cfg = ServeConfig::with_data_dir(dir);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.bootstrap_token = Some(TOKEN.into());
    cfg.admin_token = Some(ADMIN_TOKEN.into());
    cfg.allow_private_networks = true;
    cfg
}

impl TestServer {
    pub async fn start() -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = TestServer::start_with(config(&dir)).await;
        s._tmp = Some(tmp);
        s
    }

    /// A server on a fresh temp data dir with the test config changed by `change`.
    pub async fn start_configured(change: impl FnOnce(&mut ServeConfig)) -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = config(tmp.path());
        change(&mut cfg);
        let mut s = TestServer::start_with(cfg).await;
        s._tmp = Some(tmp);
        s
    }

    pub async fn start_with(cfg: ServeConfig) -> TestServer {
        let dir = cfg.data_dir.clone();
        let token = cfg.bootstrap_token.clone().unwrap_or_default();
        let server = Server::start(cfg.clone()).await.expect("server starts");
        TestServer {
            cfg,
            base: format!("http://{}", server.addr),
            server: Some(server),
            client: reqwest::Client::new(),
            token,
            dir,
            _tmp: None,
        }
    }

    /// Where `/metrics` is served apart (`--metrics-listen`), if it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().and_then(|s| s.metrics_addr)
    }

    /// Keeps `tmp` (the data dir's owner) alive as long as this server.
    pub fn adopt_dir(&mut self, tmp: tempfile::TempDir) {
        self._tmp = Some(tmp);
    }

    /// The running server's store.
    pub fn store(&self) -> scimlog::log::Store {
        self.server.as_ref().expect("running").store.clone()
    }

    pub fn faults(&self) -> scimlog::log::FaultInjector {
        self.server.as_ref().expect("running").faults.clone()
    }

    /// A new token of this server's tenant with `role` (named after the role, numbered).
    pub fn new_token(&self, role: scimlog::auth::Role) -> String {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        scimlog::auth::create_token(&self.dir, &format!("{}-{n}", role.as_str()), &self.cfg.tenant, role)
            .expect("token created")
    }

    /// The token the server created on its first start (when no bootstrap token was given).
    pub fn created_token(&self) -> Option<String> {
        self.server.as_ref().and_then(|s| s.created_token.clone())
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server (draining it) and starts a new one on the same data dir.
    pub async fn restart(mut self) -> TestServer {
        self.server.take().unwrap().stop().await;
        let tmp = self._tmp.take();
        let mut s = TestServer::start_with(self.cfg.clone()).await;
        s._tmp = tmp;
        s
    }

    pub async fn stop(self) {
        self.stop_keeping_data().await;
    }

    /// Stops the server; the data dir stays until the returned guard (if any) is dropped.
    pub async fn stop_keeping_data(mut self) -> Option<tempfile::TempDir> {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        self._tmp.take()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/scim/v2{}", self.base, path)
    }

    /// Sends a request with this server's token and, if given, a JSON body.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Reply {
        self.send_as(&self.token, method, path, body, headers).await
    }

    pub async fn send_as(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let url = if path.starts_with("http") { path.to_string() } else { self.url(path) };
        let mut req = self.client.request(method, url).bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/scim+json").body(serde_json::to_vec(b).unwrap());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request is answered");
        read(resp).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, &[]).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, Some(body), &[]).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::PUT, path, Some(body), &[]).await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None, &[]).await
    }

    /// The log position reported by /healthz (asked with an admin token): unchanged means
    /// nothing was written.
    pub async fn log_position(&self) -> u64 {
        self.healthz().await["logPosition"].as_u64().expect("/healthz details")
    }

    /// `/healthz` with its details, asked with this server's admin token.
    pub async fn healthz(&self) -> Value {
        let r = self.client.get(format!("{}/healthz", self.base)).bearer_auth(self.admin_token()).send().await.unwrap();
        read(r).await.body
    }

    /// `/metrics` as text, scraped with this server's admin token.
    pub async fn metrics_text(&self) -> String {
        let r = self.client.get(format!("{}/metrics", self.base)).bearer_auth(self.admin_token()).send().await.unwrap();
        r.text().await.unwrap()
    }

    /// This server's admin token (`--admin-token`: in memory, never evented).
    pub fn admin_token(&self) -> String {
        self.cfg.admin_token.clone().unwrap_or_default()
    }
}

pub async fn read(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply { status, headers, body }
}

/// POSTs every body to `path` at once (one task each) and returns the replies in order.
pub async fn post_concurrently(s: &TestServer, path: &str, bodies: Vec<Value>) -> Vec<Reply> {
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (client, url, token) = (s.client.clone(), s.url(path), s.token.clone());
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .bearer_auth(token)
                    .header("content-type", "application/scim+json")
                    .body(body.to_string())
                    .send()
                    .await
                    .expect("request is answered");
                read(r).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

/// Percent-encodes a query value.
pub fn q(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real `nats-server` with JetStream on a free loopback port and a temp store dir. Fails the
/// test loudly when nats-server is not installed (`./scripts/setup` installs it).
pub struct NatsServer {
    child: Option<std::process::Child>,
    pub port: u16,
    pub store_dir: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut n = NatsServer { child: None, port, store_dir: tempfile::tempdir().unwrap() };
        n.spawn();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store_dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server must be installed for these tests (./scripts/setup installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server did not start on port {}", self.port);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every message of a stream, in order: (sequence, subject, headers, payload as JSON). None
/// while the stream does not exist yet (the publisher makes it when it first connects: a test
/// that polls may ask before that, under a loaded machine).
pub async fn stream_messages(url: &str, stream: &str) -> Vec<(u64, String, async_nats::HeaderMap, Value)> {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut s = match js.get_stream(stream).await {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), async_nats::jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return vec![]
        }
        Err(e) => panic!("cannot read stream {stream}: {e}"),
    };
    let last = s.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = s.get_raw_message(seq).await {
            out.push((seq, m.subject.to_string(), m.headers.clone(), serde_json::from_slice(&m.payload).unwrap()));
        }
    }
    out
}

/// Waits until `cond` holds, polling, for at most `secs` seconds.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Validates an event (stored or published form) against `schemas/events/envelope.json` and the
/// schema of its type. Panics with the errors.
pub fn validate_event(event: &Value) {
    use std::sync::OnceLock;
    static SCHEMAS: OnceLock<std::collections::HashMap<String, jsonschema::Validator>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        let dir = format!("{}/schemas/events", manifest_dir());
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let name = e.file_name().to_string_lossy().trim_end_matches(".json").to_string();
                let schema: Value = serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
                (name, jsonschema::validator_for(&schema).unwrap())
            })
            .collect()
    });
    let ty = event["type"].as_str().unwrap_or_default();
    for name in ["envelope", ty] {
        let v = schemas.get(name).unwrap_or_else(|| panic!("no schema for {name:?}"));
        let errors: Vec<String> = v.iter_errors(event).map(|e| format!("{} at {}", e, e.instance_path)).collect();
        assert!(errors.is_empty(), "event fails {name}.json: {errors:?}\n{event}");
    }
}

/// The package's directory, read when the test runs: cargo sets it for every test process. The
/// compile-time value would do as well in one checkout, but a test binary that cargo reuses from
/// a build in another checkout (one shared target dir) carries that checkout's path.
pub fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}

/// The pinned recent nats-server (`./scripts/setup --test` installs 2.15.1 into the venv): the
/// cluster tests need JetStream clustering with `sync_interval: always` (2.10+). Missing, the
/// test fails and says how to install it.
pub fn recent_nats_server() -> String {
    let venv = std::env::var("SCIMLOG_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/scimlog-venv", std::env::var("HOME").unwrap_or_default()));
    let path = format!("{venv}/bin/nats-server");
    let version = std::process::Command::new(&path).arg("--version").output();
    match version {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("v2.15.") => path,
        _ => panic!("{path} is not nats-server 2.15: run ./scripts/setup --test"),
    }
}

/// A 3-node JetStream cluster on loopback (free client and route ports, a store dir each,
/// `sync_interval: always`), of the pinned recent nats-server. The nodes do not tell clients
/// about each other (`no_advertise`): a client reaches the servers it was given, so a test can
/// cut one off with a [`TcpProxy`]. Nodes can be killed, paused and
/// restarted one by one; all are killed on drop.
pub struct NatsCluster {
    binary: String,
    nodes: Vec<ClusterNode>,
    _dir: tempfile::TempDir,
}

struct ClusterNode {
    port: u16,
    config: PathBuf,
    child: Option<std::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl NatsCluster {
    /// Three nodes on free loopback ports. A port found free can be taken by another test
    /// before the node binds it (then the node exits and the cluster never forms): the cluster
    /// is then started again on new ports, at most three times.
    pub async fn start() -> NatsCluster {
        for attempt in 1..=3 {
            let mut cluster = NatsCluster::on_new_ports();
            if cluster.wait_for_jetstream().await {
                return cluster;
            }
            eprintln!("the NATS cluster did not form (attempt {attempt}); again on new ports");
        }
        panic!("the NATS cluster did not place a 3-replica stream in three attempts");
    }

    fn on_new_ports() -> NatsCluster {
        let binary = recent_nats_server();
        let dir = tempfile::tempdir().unwrap();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_list: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
        let mut nodes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let port = free_port();
            let store = dir.path().join(format!("n{i}"));
            let config = dir.path().join(format!("n{i}.conf"));
            let text = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
                 cluster {{ name: scimlog-test, listen: 127.0.0.1:{route}, routes: [{}], no_advertise: true }}\n",
                store.display(),
                route_list.join(", ")
            );
            std::fs::write(&config, text).unwrap();
            nodes.push(ClusterNode { port, config, child: None });
        }
        let mut cluster = NatsCluster { binary, nodes, _dir: dir };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = std::process::Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the pinned nats-server starts");
        node.child = Some(child);
    }

    /// Until the cluster places a 3-replica stream: a meta leader answering is not enough, the
    /// peers must be known to it too (else "no suitable peers for placement", 10005). 0.2-3 s
    /// here, more while other tests load the cores. `false`: a node exited (its port was
    /// taken), or 60 s went by.
    async fn wait_for_jetstream(&mut self) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let probe = async_nats::jetstream::stream::Config {
            name: "HARNESS_PROBE".into(),
            subjects: vec!["harness.probe".into()],
            num_replicas: 3,
            ..Default::default()
        };
        loop {
            if let Ok(c) = async_nats::connect(self.urls()).await {
                let js = async_nats::jetstream::new(c);
                if js.create_stream(probe.clone()).await.is_ok() && js.delete_stream("HARNESS_PROBE").await.is_ok() {
                    return true;
                }
            }
            let exited =
                self.nodes.iter_mut().any(|n| n.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_)))));
            if exited || std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Every node's client URL (what a client is given, to fail over between them).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect()
    }

    /// The client URL of node `i` alone.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Node `i`'s index by its `server_name` (`n0`..`n2`), as JetStream reports a leader.
    pub fn index_of(name: &str) -> usize {
        name.trim_start_matches('n').parse().expect("a node name n0..n2")
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// With `SCIMLOG_TEST_LOG=<filter>` (e.g. `scimlog=debug`), the servers of this test process
/// log to stderr: what to read when a multi-node test waits for something that never happens.
pub fn log_if_asked() {
    if let Ok(filter) = std::env::var("SCIMLOG_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
}

/// A TCP proxy on loopback in front of `upstream`, that a test can cut (every connection
/// closed, new ones refused) and restore on the same port: a network partition.
pub struct TcpProxy {
    pub port: u16,
    upstream: String,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TcpProxy {
    pub async fn start(upstream: &str) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = TcpProxy { port, upstream: upstream.to_string(), tasks: Default::default() };
        proxy.serve(listener);
        proxy
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (upstream, tasks) = (self.upstream.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(conn);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Accepts again, on the same port.
    pub async fn restore(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

/// Spawns `cmd`, a `scimlog serve … --listen 127.0.0.1:0`, and answers the child and the base
/// URL it printed once serving. The port is the child's own pick: a port picked by the test
/// and bound by the child later could be taken in between (by another test's server or any
/// connection's ephemeral port), and the test would talk to somebody else's server or wait for
/// one that exited. A child that exits before it serves fails the test with its stderr: the
/// last 64 KiB of it, or the file `stderr_to` when it goes there.
pub async fn serving(
    mut cmd: std::process::Command,
    stderr_to: Option<&std::path::Path>,
) -> (std::process::Child, String) {
    use std::process::Stdio;
    cmd.stdout(Stdio::piped());
    match stderr_to {
        Some(path) => cmd.stderr(std::fs::File::create(path).unwrap()),
        None => cmd.stderr(Stdio::piped()),
    };
    let mut child = cmd.spawn().expect("the scimlog binary starts");
    let tail = child.stderr.take().map(tail_of);
    let said = || match (&tail, stderr_to) {
        (Some(t), _) => String::from_utf8_lossy(&t.lock().unwrap()).into_owned(),
        (None, Some(path)) => std::fs::read_to_string(path).unwrap_or_default(),
        (None, None) => String::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        use std::io::BufRead;
        // Read to the end, so that the child never blocks on a full pipe.
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("scimlog serving SCIM at ") {
                let _ = tx.send(url.trim_end_matches("/scim/v2").to_string());
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(base) = rx.try_recv() {
            return (child, base);
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("scimlog exited before serving ({status}); its stderr:\n{}", said());
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("scimlog did not come up in 30 s; its stderr:\n{}", said());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last 64 KiB a child wrote to `pipe`, read by a thread until the pipe closes.
fn tail_of(mut pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let tail = Arc::new(Mutex::new(Vec::new()));
    let kept = tail.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            let mut t = kept.lock().unwrap();
            t.extend_from_slice(&buf[..n]);
            let over = t.len().saturating_sub(64 << 10);
            t.drain(..over);
        }
    });
    tail
}
