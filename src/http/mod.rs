//! The HTTP layer: the only code that knows axum and status codes. One file per endpoint family,
//! each exposing its `router()`, merged in [`router`].

mod access;
mod admin;
mod bulk;
pub mod console;
mod discovery;
pub mod error;
mod events;
mod extract;
mod forward;
mod grants;
mod groups;
mod health;
mod metrics;
pub mod openapi;
mod outbound;
pub mod rate;
mod render;
pub mod request_line;
mod resource;
mod search;
pub mod serve;
pub mod sets;
mod users;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use uuid::Uuid;

use crate::auth::{Principal, TokenStore};
use crate::config::ServeConfig;
use crate::log::writer::WriterHandle;
use crate::log::Store;
use error::ApiError;

pub const SCIM_CONTENT_TYPE: &str = "application/scim+json";

pub struct Inner {
    pub store: Store,
    pub keys: Arc<crate::log::keys::KeyRing>,
    /// `None` when NATS publishing is off.
    pub publisher: Option<Arc<crate::bus::PublisherStatus>>,
    pub writer: WriterHandle,
    /// Joined when the state goes, so that the store is closed by then (see `Drop`).
    pub writer_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// `None` when serving with `--insecure-no-auth`.
    pub tokens: Option<TokenStore>,
    pub cfg: ServeConfig,
    /// e.g. `http://127.0.0.1:8080/scim/v2`, for `meta.location`.
    pub scim_base: String,
    /// Where index paging left off, so that the next page starts there.
    pub page_hints: resource::PageHints,
    /// Turns for reads that can scan (`--max-concurrent-reads`).
    pub reads: tokio::sync::Semaphore,
    /// Per-token rate limits.
    pub rates: rate::RateLimits,
    pub metrics: crate::metrics::Metrics,
    /// Set when the server begins to stop (`/readyz` answers 503).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Cluster mode: this node's role and the leader (`None`: a single node).
    pub cluster: Option<Arc<crate::cluster::ClusterState>>,
    /// The outbound connectors this node runs (in cluster mode, the targets named to it).
    /// The access answers' group nodes (`--access-cache-groups`).
    pub groups: crate::access_cache::GroupCache,
    /// An outbound runner's copy of a directory (`scimlog outbound run`): how far it is.
    pub copy: Option<Arc<crate::bus::copy::CopyStatus>>,
    pub outbound: Arc<crate::outbound::Outbound>,
    /// The recent SCIM and `/api/v1` requests, and each token's health (the console's).
    pub requests: crate::request_log::RequestLog,
    /// The console's sessions and last chain verification.
    pub console: console::ConsoleState,
    /// The SET signer and poll streams.
    pub sets: sets::SetState,
}

/// When the last handle to the state goes (server stopped, or its runtime dropped), the writer
/// is closed and joined here: it drains its queue and drops its handle of the store, so the
/// store is closed before this returns, never by a thread that outlives the server (a RocksDB
/// closing while the process exits aborts it).
impl Drop for Inner {
    fn drop(&mut self) {
        self.writer.close();
        if let Some(thread) = self.writer_thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
            // Only the server's own state flushes (the writer has stopped: nothing is written
            // after this), so that the next start has no log to replay.
            if let Err(e) = self.store.flush() {
                tracing::warn!(error = %e, "flushing the store on stop failed; the next start replays its log");
            }
        }
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(inner: Inner) -> AppState {
        AppState(Arc::new(inner))
    }
}

/// Runs read work that can scan (lists, searches, group renders, access expansion) on the
/// blocking pool, at most `--max-concurrent-reads` at once, so that it never occupies the async
/// runtime's workers (which answer every other request, `/healthz` included). A read that waits
/// longer than `--read-wait-ms` for its turn is answered 503 with `Retry-After`.
pub async fn blocking_read<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let wait = std::time::Duration::from_millis(state.cfg.read_wait_ms);
    let permit = match tokio::time::timeout(wait, state.reads.acquire()).await {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Err(ApiError::Unavailable("the server is shutting down".into())),
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "{} reads are running and this one waited {} ms for its turn; retry shortly",
                state.cfg.max_concurrent_reads, state.cfg.read_wait_ms
            )))
        }
    };
    let state = state.clone();
    let result = tokio::task::spawn_blocking(move || work(&state)).await;
    drop(permit);
    result.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a read panicked");
        Err(ApiError::Internal("internal error while reading"))
    })
}

/// A stored user's answer to a GET without a projection (no groups), copied from its stored
/// text (`copy`, what a GET does) or built as a `Value` (what a projection takes): for the
/// micro-benchmarks, which compare the two.
#[doc(hidden)]
pub fn render_stored_user(base: &str, stored: &[u8], copy: bool) -> Option<Vec<u8>> {
    render::stored_user_text(base, stored, copy)
}

/// The id shared by every event of one request, also sent back as `X-Request-Id`.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

pub fn router(state: AppState) -> Router {
    let scim = Router::new()
        .merge(users::router())
        .merge(groups::router())
        .merge(discovery::router())
        .merge(search::router())
        .merge(grants::router())
        .merge(bulk::router(state.cfg.bulk_max_payload_bytes))
        .fallback(|| async { ApiError::NotFound("no such SCIM endpoint".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), scim_gate));
    let (api, description) = openapi::api();
    let api = api
        .fallback(|| async { ApiError::NotFound("no such API endpoint".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), api_gate));
    let metrics = metrics::router()
        .route_layer(middleware::from_fn_with_state(state.clone(), note_route))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let mut app = Router::new().nest("/scim/v2", scim).nest("/api/v1", api);
    if !state.cfg.no_console {
        let base = state.cfg.console_path.clone();
        let console = console::router(&state).route_layer(middleware::from_fn_with_state(state.clone(), note_route));
        // `/admin/` goes to `/admin` (a nested router's root is the prefix alone).
        let root = base.clone();
        app = app
            .nest(&base, console)
            .route(&format!("{base}/"), axum::routing::get(move || async move { console::redirect_to(&root) }));
    }
    app.merge(metrics)
        .merge(sets::jwks_router().route_layer(middleware::from_fn_with_state(state.clone(), note_route)))
        .merge(health::router().route_layer(middleware::from_fn_with_state(state.clone(), note_route)))
        .merge(openapi::docs_router(description).route_layer(middleware::from_fn_with_state(state.clone(), note_route)))
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), request_context))
        .with_state(state)
}

/// The route a request matched (`/scim/v2/Users/{id}`), carried out on its response so that the
/// outermost layer can log it. Shared, not copied, by the access log line, the duration
/// histogram and the in-flight gauge (the console's request record keeps a `String` of it).
#[derive(Clone, Debug)]
struct RouteTemplate(Arc<str>);

/// `/metrics` alone, without a token, for `--metrics-listen`.
pub fn metrics_router(state: AppState) -> Router {
    metrics::open_router(state)
}

/// Notes the matched route on the response (a route layer: it runs once routing is done), and
/// counts the request as in flight on its route while it runs.
async fn note_route(State(state): State<AppState>, matched: MatchedPath, req: Request, next: Next) -> Response {
    noted(&state, &matched, req, next).await
}

/// What [`note_route`] does, for the layers that do more.
async fn noted(state: &AppState, matched: &MatchedPath, req: Request, next: Next) -> Response {
    let template = RouteTemplate(Arc::from(matched.as_str()));
    let labels = crate::metrics::RouteLabels {
        http_request_method: crate::metrics::method_label(req.method()),
        http_route: template.0.clone(),
    };
    let active = state.metrics.http_active.get_or_create_owned(&labels);
    active.inc();
    let mut resp = next.run(req).await;
    active.dec();
    resp.extensions_mut().insert(template);
    resp
}

/// Counts a SCIM request by the token's name, the resource and operation its route says, its
/// outcome and scimType, and notes its route as [`note_route`] does.
async fn counted(state: &AppState, matched: &MatchedPath, principal: &Principal, req: Request, next: Next) -> Response {
    let token = principal.name.clone();
    let (resource, op) = scim_operation(req.method(), matched.as_str());
    let resp = noted(state, matched, req, next).await;
    let outcome = match resp.status() {
        s if s.is_server_error() => "server_error",
        s if s.is_client_error() => "client_error",
        _ => "success",
    };
    let scim_type = resp.extensions().get::<error::ScimTypeTag>().map_or("", |t| t.0);
    let labels = crate::metrics::ScimLabels { token, resource, op, outcome, scim_type };
    state.metrics.scim_requests.get_or_create(&labels).inc();
    resp
}

/// The resource and operation of a SCIM route template and method.
fn scim_operation(method: &axum::http::Method, route: &str) -> (&'static str, &'static str) {
    use axum::http::Method;
    let rest = route.strip_prefix("/scim/v2").unwrap_or(route);
    let mut parts = rest.trim_start_matches('/').split('/');
    let resource = match parts.next().unwrap_or_default() {
        "Users" => "Users",
        "Groups" => "Groups",
        "Bulk" => "Bulk",
        ".search" => "search",
        "Roles" => "Roles",
        "Entitlements" => "Entitlements",
        "ServiceProviderConfig" | "ResourceTypes" | "Schemas" => "discovery",
        _ => "other",
    };
    let one = parts.next();
    let op = match (method, one) {
        (_, Some(".search")) => "search",
        (&Method::POST, _) if resource == "Bulk" => "bulk",
        (&Method::POST, _) if resource == "search" => "search",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "replace",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => "other",
    };
    (resource, op)
}

/// Gives each request an id and logs it once it is answered. What is logged is the route
/// template, never the path itself: paths (`/api/v1/users/{id}/access` with a userName) and
/// queries (filters) carry userNames and emails, which stay out of logs.
async fn request_context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let id = Uuid::now_v7().to_string();
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    // Requests of the APIs that tokens call are kept for the console (never the path itself).
    let recorded = ["/scim/v2/", "/api/v1/"].iter().any(|p| req.uri().path().starts_with(p));
    let started = Instant::now();
    // The trace span (exported only with tracing on): a child of the caller's `traceparent`.
    let span = tracing::info_span!(
        target: crate::telemetry::TARGET,
        "request",
        otel.name = %method,
        otel.kind = "server",
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %id,
    );
    if !span.is_disabled() {
        let caller = req.headers().get("traceparent").and_then(|v| v.to_str().ok());
        crate::telemetry::continue_from(&span, caller);
    }
    // `read_level` is called, not layered: each layer's services are cloned on every request.
    let mut resp = read_level(State(state.clone()), req, next).instrument(span.clone()).await;
    let path = resp.extensions().get::<RouteTemplate>().map_or_else(|| Arc::from("(no route)"), |r| r.0.clone());
    let status = resp.status().as_u16();
    if !span.is_disabled() {
        crate::telemetry::rename(&span, format!("{method} {path}"));
        span.record("http.route", &*path);
        span.record("http.response.status_code", status);
    }
    let trace_id = crate::telemetry::trace_id(&span);
    drop(span);
    let micros = started.elapsed().as_micros() as u64;
    let labels = crate::metrics::HttpLabels {
        http_request_method: crate::metrics::method_label(&method),
        http_route: path.clone(),
        http_response_status_code: status,
    };
    state.metrics.http_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    // One line per request (target `scimlog::access`): never a path, a query, a token or a
    // personal value; the token's name and tenant say which IdP connection asked; `trace_id`
    // (only with tracing on) finds its trace.
    let (token, tenant) =
        resp.extensions().get::<Principal>().map_or(("", ""), |p| (p.name.as_str(), p.tenant.as_str()));
    let scim_type = resp.extensions().get::<error::ScimTypeTag>().map_or("", |t| t.0);
    if resp.status().is_server_error() {
        tracing::warn!(target: "scimlog::access", %method, route = %path, status, micros, request_id = %id, token, tenant, scim_type, trace_id = trace_id.as_deref().map(tracing::field::display), "request failed");
    } else {
        tracing::info!(target: "scimlog::access", %method, route = %path, status, micros, request_id = %id, token, tenant, scim_type, trace_id = trace_id.as_deref().map(tracing::field::display), "request");
    }
    if recorded {
        state.requests.record(crate::request_log::RequestRecord {
            at: chrono::Utc::now(),
            token: token.to_string(),
            tenant: tenant.to_string(),
            method: method.as_str().to_string(),
            route: path.to_string(),
            status,
            scim_type: scim_type.to_string(),
            detail: resp.extensions().get::<error::DetailTag>().map_or_else(String::new, |d| d.0.clone()),
            micros,
            request_id: id.clone(),
        });
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

pub const HEADER_POSITION: &str = "scimlog-position";
pub const HEADER_MIN_POSITION: &str = "scimlog-min-position";

/// Read levels: a request with `Scimlog-Min-Position: p` is served once this node has applied
/// position p (at most `--min-position-wait-ms`, then 503 + `Retry-After`); every answer carries
/// `Scimlog-Position`, the position applied when it was sent, which covers the request's own
/// write (the writer publishes a commit's head before answering). A client that sends back the
/// largest position it has seen reads its writes on any node.
async fn read_level(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // A cluster node missing log records serves nothing but its probes: a read would show a
    // directory with a hole in its history.
    if let Some(gap) = state.cluster.as_ref().and_then(|c| c.gap()) {
        if !matches!(req.uri().path(), "/healthz" | "/livez" | "/readyz" | "/metrics") {
            return ApiError::Unavailable(format!("this node cannot serve: {gap}")).into_response();
        }
    }
    let mut applied = state.writer.committed();
    if let Some(raw) = req.headers().get(HEADER_MIN_POSITION) {
        let wanted = match raw.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()) {
            Some(p) => p,
            None => {
                let v = String::from_utf8_lossy(raw.as_bytes());
                return ApiError::from(scimlog_schemas::SchemaError::invalid_value(format!(
                    "Scimlog-Min-Position {v:?} is not a log position (a non-negative integer)"
                )))
                .into_response();
            }
        };
        let wait = std::time::Duration::from_millis(state.cfg.min_position_wait_ms);
        // Reached, or not: the wait ran out, or the writer stopped (the channel closed).
        let reached = matches!(tokio::time::timeout(wait, applied.wait_for(|p| *p >= wanted)).await, Ok(Ok(_)));
        if !reached {
            let have = *applied.borrow();
            return ApiError::Unavailable(format!(
                "this node has applied position {have}, and Scimlog-Min-Position asks for {wanted}; retry shortly"
            ))
            .into_response();
        }
    }
    let mut resp = next.run(req).await;
    // A write the leader answered carries the leader's position (which covers it), not ours.
    if resp.extensions().get::<forward::ForwardedAnswer>().is_some() {
        return resp;
    }
    let position = *applied.borrow_and_update();
    resp.headers_mut().insert(HEADER_POSITION, HeaderValue::from(position));
    resp
}

/// Which token API a request is for: they differ in which roles may use them and in how a 405
/// is answered.
#[derive(Clone, Copy, Debug)]
enum TokenApi {
    Scim,
    Api,
}

async fn scim_gate(State(state): State<AppState>, matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    token_gate(state, TokenApi::Scim, matched, req, next).await
}

async fn api_gate(State(state): State<AppState>, matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    token_gate(state, TokenApi::Api, matched, req, next).await
}

/// The gate of the token APIs, in this order: who asks (a valid token), the token's rate, whether
/// its role may use this API, and in cluster mode a write sent on to the leader. A request served
/// here that matched a route (`matched`: none for the fallback's 404) is then noted and counted
/// ([`noted`], and for SCIM [`counted`]). One layer rather than six: axum clones every service
/// under a `from_fn` layer on each request (the last route layer merged in here took 2 µs off
/// each SCIM request: `GET /ServiceProviderConfig` 24-25 → 21-23 µs of CPU, alternated 5 times).
async fn token_gate(
    state: AppState,
    api: TokenApi,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let principal = match identify(&state, req.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let admitted = rate::admit(&state, &principal).and_then(|()| match api {
        TokenApi::Scim => provisioning_only(&state, &principal),
        TokenApi::Api => Ok(()),
    });
    let mut resp = match admitted {
        Err(refused) => refused.into_response(),
        Ok(()) => {
            req.extensions_mut().insert(principal.clone());
            let resp = match forward::writes_to_leader(&state, req).await {
                Ok(forwarded) => forwarded,
                Err(req) => match (&matched, api) {
                    (Some(route), TokenApi::Scim) => counted(&state, route, &principal, req, next).await,
                    (Some(route), TokenApi::Api) => noted(&state, route, req, next).await,
                    (None, TokenApi::Scim | TokenApi::Api) => next.run(req).await,
                },
            };
            match api {
                TokenApi::Scim => resp,
                TokenApi::Api => scim_method_not_allowed(resp),
            }
        }
    };
    // For the access log line (`request_context`): who asked.
    resp.extensions_mut().insert(principal);
    resp
}

/// Authenticates a route family of its own (`/metrics`).
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let principal = match identify(&state, req.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    req.extensions_mut().insert(principal.clone());
    let mut resp = next.run(req).await;
    // For the access log line (`request_context`): who asked.
    resp.extensions_mut().insert(principal);
    resp
}

/// Who the request's bearer token belongs to (with `--insecure-no-auth`, an anonymous admin).
/// A missing or unknown token is counted and refused.
pub(crate) async fn identify(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Principal, ApiError> {
    let Some(tokens) = &state.tokens else {
        return Ok(Principal {
            name: "anonymous".into(),
            tenant: state.cfg.tenant.clone(),
            role: crate::auth::Role::Admin,
        });
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let Some(presented) = presented else {
        state.metrics.auth_failure("missing");
        return Err(ApiError::Unauthorized("a bearer token is required (Authorization: Bearer <token>)"));
    };
    // A changed token file is written to the audit trail before the request goes on, so that
    // what a new token does follows its `token.created`.
    match tokens.refresh() {
        Ok(true) => reconcile_tokens(state).await,
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "cannot reload tokens; keeping the last good set"),
    }
    tokens.authenticate_loaded(&presented).ok_or_else(|| {
        state.metrics.auth_failure("invalid");
        ApiError::Unauthorized("the bearer token is not valid")
    })
}

/// `/scim/v2` is for tokens that provision: a `hosts` or `events` token is refused.
fn provisioning_only(state: &AppState, p: &Principal) -> Result<(), ApiError> {
    if p.role.may_provision() {
        return Ok(());
    }
    state.metrics.auth_failure("forbidden");
    Err(ApiError::Forbidden("this token may not provision (its role is hosts or events); use a scim or admin token"))
}

/// Records the token file's changes as `token.created` / `token.revoked` events (names, tenants
/// and roles only), one command per tenant that differs.
pub async fn reconcile_tokens(state: &AppState) {
    let Some(tokens) = &state.tokens else { return };
    // An outbound runner's log is the directory's: its tokens are its own, never evented.
    if state.copy.is_some() {
        return;
    }
    // In a cluster the leader records them (each node reads the same file), once it leads.
    if state.cluster.as_ref().is_some_and(|c| !c.is_leader()) {
        return;
    }
    let wanted = tokens.by_tenant();
    let known = {
        let view = state.store.view();
        scimlog_projections::query::known_tokens(&view)
    };
    let mut tenants: std::collections::BTreeSet<String> = wanted.keys().cloned().collect();
    tenants.extend(known.iter().map(|(t, _, _)| t.clone()));
    for tenant in tenants {
        let mut want = wanted.get(&tenant).cloned().unwrap_or_default();
        let mut have: Vec<(String, Option<crate::auth::Role>)> = known
            .iter()
            .filter(|(t, _, _)| *t == tenant)
            .map(|(_, n, r)| (n.clone(), crate::auth::Role::parse(r)))
            .collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        have.sort_by(|a, b| a.0.cmp(&b.0));
        let same = want.len() == have.len() && want.iter().zip(&have).all(|(w, h)| w.0 == h.0 && Some(w.1) == h.1);
        if same {
            continue;
        }
        let origin = crate::log::writer::Origin {
            tenant: tenant.clone(),
            actor: "token-file".into(),
            request_id: Uuid::now_v7().to_string(),
        };
        if let Err(e) = state.writer.submit(origin, crate::command::Command::ReconcileTokens { tokens: want }).await {
            tracing::error!(error = %e, %tenant, "cannot record token changes");
        }
    }
}

/// A SCIM JSON response with the SCIM media type.
pub fn scim_response(status: StatusCode, body: &Value) -> Response {
    scim_text(status, render::Rendered::of(body))
}

/// A SCIM answer from JSON already written out.
pub fn scim_text(status: StatusCode, body: render::Rendered) -> Response {
    let mut resp = (status, body.into_bytes()).into_response();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(SCIM_CONTENT_TYPE));
    resp
}

/// A resource response with its `ETag` (and `Location` on creation).
pub fn resource_response(status: StatusCode, body: render::Rendered, version: u64, location: Option<&str>) -> Response {
    let mut resp = scim_text(status, body);
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        resp.headers_mut().insert(axum::http::header::ETAG, v);
    }
    if let Some(l) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        resp.headers_mut().insert(axum::http::header::LOCATION, l);
    }
    resp
}

/// axum's own 405 (a route without the method asked) as a SCIM error, keeping its `Allow`.
/// A 405 of the router (a route without that method) answered as a SCIM error, with its `Allow`.
fn scim_method_not_allowed(resp: Response) -> Response {
    if resp.status() != StatusCode::METHOD_NOT_ALLOWED || resp.extensions().get::<error::ScimTypeTag>().is_some() {
        return resp;
    }
    let mut scim = ApiError::MethodNotAllowed.into_response();
    if let Some(allow) = resp.headers().get(axum::http::header::ALLOW) {
        scim.headers_mut().insert(axum::http::header::ALLOW, allow.clone());
    }
    scim
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
