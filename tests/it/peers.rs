//! Downstream SCIM servers for the outbound tests: a real `scim2-server` (PyPI, installed into
//! the test venv by `./scripts/setup --test`), SCIMMY (npm, `tests/peers/scimmy`) or
//! django-scim2 (PyPI, `tests/peers/django`) on a free loopback port, and a fault and quirk proxy (in this file) between a connector and it: it
//! records every request, and rules make it answer a status of their own, forward and then lose
//! the answer, or forward.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::Value;

/// A downstream SCIM server process; killed on drop. Fails the test loudly when it is not
/// installed.
pub struct ScimPeer {
    child: std::process::Child,
    pub url: String,
    pub token: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn venv_bin(name: &str) -> String {
    let venv = std::env::var("SCIMLOG_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/scimlog-venv", std::env::var("HOME").unwrap_or_default()));
    format!("{venv}/bin/{name}")
}

impl ScimPeer {
    /// A `scim2-server` (PyPI): PATCH, filters, ETags; in memory.
    pub async fn start(token: &str) -> ScimPeer {
        let port = free_port();
        let bin = venv_bin("scim2-server");
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(["--hostname", "127.0.0.1", "--port", &port.to_string(), "--bearer-token", token]);
        ScimPeer::spawn(cmd, &bin, format!("http://127.0.0.1:{port}"), token).await
    }

    /// SCIMMY (npm) behind its Express routers, with the in-memory handlers of
    /// `tests/peers/scimmy/server.mjs`: PATCH and filters, its own error texts, and a 409
    /// `uniqueness` for a taken userName or displayName.
    pub async fn scimmy(token: &str) -> ScimPeer {
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/scimmy/server.mjs");
        let mut cmd = std::process::Command::new("node");
        cmd.args([script, &port.to_string(), token]);
        ScimPeer::spawn(
            cmd,
            "node (with tests/peers/scimmy's packages)",
            format!("http://127.0.0.1:{port}/scim/v2"),
            token,
        )
        .await
    }

    /// django-scim2 (PyPI) in the Django project of `tests/peers/django`, on a fresh SQLite
    /// file: the lowest capabilities (no filter; PATCH takes members, by a value list, but no
    /// complex attribute; PUT leaves members alone; ids are small integers).
    pub async fn django(token: &str) -> ScimPeer {
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/django/serve.py");
        let python = venv_bin("python3");
        let mut cmd = std::process::Command::new(&python);
        cmd.args([script, &port.to_string(), token]);
        ScimPeer::spawn(cmd, "django-scim2 (in the test venv)", format!("http://127.0.0.1:{port}/scim/v2"), token).await
    }

    async fn spawn(mut cmd: std::process::Command, what: &str, url: String, token: &str) -> ScimPeer {
        let child =
            cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap_or_else(|e| {
                panic!("{what} must be installed for the outbound tests (./scripts/setup --test): {e}")
            });
        let mut peer = ScimPeer { child, url, token: token.into() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = reqwest::get(format!("{}/ServiceProviderConfig", peer.url))
                .await
                .is_ok_and(|r| r.status().as_u16() < 500);
            if ok {
                return peer;
            }
            if let Ok(Some(status)) = peer.child.try_wait() {
                panic!(
                    "{what} exited ({status}) before it served {}: is it installed (./scripts/setup --test)?",
                    peer.url
                );
            }
            assert!(Instant::now() < deadline, "{what} did not start at {}", peer.url);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every resource of a type (`Users`, `Groups`), read directly (not through any proxy).
    pub async fn all(&self, endpoint: &str) -> Vec<Value> {
        let r = reqwest::Client::new()
            .get(format!("{}/{endpoint}?count=1000", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        body["Resources"].as_array().cloned().unwrap_or_default()
    }
}

impl ScimPeer {
    /// An out-of-band edit, as an admin of the downstream application would make.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> u16 {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/scim+json").body(b.to_string());
        }
        req.send().await.unwrap().status().as_u16()
    }
}

impl Drop for ScimPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a rule does to a request it matches.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status (with these headers) and a SCIM error body; nothing is forwarded.
    Status(u16, Vec<(&'static str, String)>),
    /// Forward, then break the connection in the middle of the answer: the target did it, the
    /// client never learns.
    LoseAnswer,
    /// Answer this status and body; nothing is forwarded (a quirk: another ServiceProviderConfig).
    Answer(u16, Value),
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub method: Method,
    /// The request's path and query must contain this.
    pub path_has: String,
    /// The request's body must contain this (empty: any).
    pub body_has: String,
    /// How many matching requests it applies to.
    pub times: usize,
    pub fault: Fault,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub body: Value,
    /// What the client got (None: the answer was lost).
    pub status: Option<u16>,
}

#[derive(Default)]
struct Shared {
    rules: Vec<Rule>,
    seen: Vec<Seen>,
    /// Added before each forwarded request (a slow target).
    latency: Duration,
    /// An OAuth 2.0 token endpoint at `/oauth/token`: (client id, secret, the token it hands out).
    oauth: Option<(String, String, String)>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    shared: Arc<Mutex<Shared>>,
}

pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = ProxyState { upstream: upstream.into(), client: reqwest::Client::new(), shared: shared.clone() };
        let app = axum::Router::new().fallback(handle).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add(&self, rule: Rule) {
        self.shared.lock().unwrap().rules.push(rule);
    }

    /// Serves `/oauth/token` (client credentials with HTTP Basic): `token` for `client:secret`,
    /// 401 otherwise.
    pub fn serve_oauth(&self, client: &str, secret: &str, token: &str) {
        self.shared.lock().unwrap().oauth = Some((client.into(), secret.into(), token.into()));
    }

    pub fn clear_rules(&self) {
        self.shared.lock().unwrap().rules.clear();
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().unwrap().latency = latency;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.lock().unwrap().seen.clone()
    }

    /// Requests seen with this method whose path starts with `prefix`.
    pub fn count(&self, method: Method, prefix: &str) -> usize {
        self.seen().iter().filter(|s| s.method == method && s.path.starts_with(prefix)).count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(s): State<ProxyState>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    let fault = {
        let mut shared = s.shared.lock().unwrap();
        let hit = shared
            .rules
            .iter_mut()
            .find(|r| r.times > 0 && r.method == method && path.contains(&r.path_has) && text.contains(&r.body_has));
        hit.map(|r| {
            r.times -= 1;
            r.fault.clone()
        })
    };
    let record = |status: Option<u16>| {
        s.shared.lock().unwrap().seen.push(Seen {
            at: Instant::now(),
            method: method.clone(),
            path: path.clone(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            status,
        })
    };
    let oauth = s.shared.lock().unwrap().oauth.clone();
    if let (Some((client, secret, token)), true) = (oauth, path == "/oauth/token") {
        use base64::Engine as _;
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{client}:{secret}")));
        let ok = headers.get("authorization").is_some_and(|v| v.as_bytes() == basic.as_bytes())
            && text.contains("grant_type=client_credentials");
        record(Some(if ok { 200 } else { 401 }));
        let body = match ok {
            true => serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600}),
            false => serde_json::json!({"error": "invalid_client"}),
        };
        return Response::builder().status(if ok { 200 } else { 401 }).body(Body::from(body.to_string())).unwrap();
    }
    if let Some(Fault::Status(code, extra)) = &fault {
        record(Some(*code));
        let mut r = Response::builder().status(*code).header("content-type", "application/scim+json");
        for (k, v) in extra {
            r = r.header(*k, v);
        }
        let body = serde_json::json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
            "status": code.to_string(), "scimType": "invalidValue", "detail": "injected by the test proxy"
        });
        return r.body(Body::from(body.to_string())).unwrap();
    }
    if let Some(Fault::Answer(code, body)) = &fault {
        record(Some(*code));
        let r = Response::builder().status(*code).header("content-type", "application/scim+json");
        return r.body(Body::from(body.to_string())).unwrap();
    }
    let latency = s.shared.lock().unwrap().latency;
    tokio::time::sleep(latency).await;
    let mut req = s
        .client
        .request(reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap(), format!("{}{path}", s.upstream));
    for name in ["authorization", "content-type", "accept", "user-agent"] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v.as_bytes());
        }
    }
    let answer = req.body(body.to_vec()).send().await;
    let (status, bytes) = match answer {
        Ok(r) => (r.status().as_u16(), r.bytes().await.unwrap_or_default()),
        Err(_) => {
            record(None);
            return Response::builder().status(502).body(Body::empty()).unwrap();
        }
    };
    if let Some(Fault::LoseAnswer) = fault {
        record(None);
        // Headers go out, then the body fails: the connection is cut before the answer is whole.
        // A 204 has no body to cut (hyper would send it whole), so its cut answer says 200.
        let broken = futures::stream::once(async { Err::<Bytes, std::io::Error>(std::io::Error::other("lost")) });
        return Response::builder()
            .status(if status == 204 { 200 } else { status })
            .header("content-length", bytes.len().max(1).to_string())
            .body(Body::from_stream(broken))
            .unwrap();
    }
    record(Some(status));
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/scim+json")
        .body(Body::from(bytes))
        .unwrap()
}
