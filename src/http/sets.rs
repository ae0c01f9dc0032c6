//! Security Event Tokens over HTTP: poll delivery (RFC 8936) at
//! `POST /api/v1/sets/streams/{name}/poll`, the tenant's streams at `GET|POST
//! /api/v1/sets/streams` and `DELETE /api/v1/sets/streams/{name}`, and the public keys at
//! `GET /sets/jwks.json`. Each poll first records the acknowledgements it carries (all of
//! them, or none when one names no SET of the stream), then answers the stream's oldest
//! unacknowledged SETs, in log order.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use scimlog_schemas::{SchemaError, ScimType};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ScimErrorDoc};
use super::extract::{Caller, ScimBody};
use super::AppState;
use crate::sets::config::{ConfigError, StreamConfig, SECRETS_DIR};
use crate::sets::deliver::{DeliverError, Deliverer};
use crate::sets::streams::StreamId;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(poll)).routes(routes!(list_streams, add_stream)).routes(routes!(remove_stream))
}

/// `GET /sets/jwks.json`: public keys, no token needed.
pub fn jwks_router() -> Router<AppState> {
    Router::new().route("/sets/jwks.json", get(|State(s): State<AppState>| async move { Json(s.sets.signer.jwks()) }))
}

/// The SETs' signer, what delivers them, and the streams.
pub struct SetState {
    pub signer: std::sync::Arc<crate::sets::Signer>,
    pub deliver: Deliverer,
    /// Every stream, with the push tasks' states.
    pub streams: std::sync::Arc<crate::sets::run::Streams>,
    /// One poll at a time changes a stream's acknowledgements.
    pub lock: tokio::sync::Mutex<()>,
}

/// A poll request (RFC 8936 §2.4).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// The `jti`s of SETs received and processed.
    #[serde(default)]
    ack: Vec<String>,
    /// SETs received that the receiver could not process, by `jti` (`{"err", "description"}`);
    /// they count as delivered.
    #[serde(default, rename = "setErrs")]
    #[schema(value_type = Object)]
    set_errs: Map<String, Value>,
    /// Most SETs to answer (default and limit `--set-poll-max`); 0 only acknowledges.
    #[serde(rename = "maxEvents")]
    max_events: Option<usize>,
    /// Answer at once even with no SET (default false: wait up to `--events-wait-max-s`).
    #[serde(default, rename = "returnImmediately")]
    return_immediately: bool,
}

/// A poll answer: SETs by `jti`, in log order.
#[derive(Serialize, ToSchema)]
pub struct PollResponse {
    /// Compact JWS (ES256, `typ: secevent+jwt`), verifiable with `/sets/jwks.json`.
    #[schema(value_type = Object)]
    sets: Map<String, Value>,
    /// More unacknowledged SETs wait beyond these.
    #[serde(rename = "moreAvailable")]
    more_available: bool,
}

/// An RFC 8936 error body (`err`, `description`), answered 400.
#[derive(Serialize, ToSchema)]
pub struct PollErrorDoc {
    err: String,
    description: String,
}

pub enum PollError {
    InvalidRequest(String),
    Api(ApiError),
}

impl From<ApiError> for PollError {
    fn from(e: ApiError) -> Self {
        PollError::Api(e)
    }
}

impl IntoResponse for PollError {
    fn into_response(self) -> Response {
        match self {
            PollError::InvalidRequest(description) => {
                let doc = PollErrorDoc { err: "invalid_request".into(), description };
                (StatusCode::BAD_REQUEST, Json(doc)).into_response()
            }
            PollError::Api(e) => e.into_response(),
        }
    }
}

/// Acknowledges the SETs a receiver processed and answers the next ones of its stream.
#[utoipa::path(
    post, path = "/sets/streams/{name}/poll", tag = "events",
    params(("name" = String, Path, description = "The stream's name (`--set-stream TENANT/NAME`)")),
    request_body = PollRequest,
    responses(
        (status = 200, description = "SETs (possibly none) and whether more wait", body = PollResponse),
        (status = 400, description = "The body is not a poll request, or acknowledges a jti that is no SET of this stream; nothing was acknowledged", body = PollErrorDoc),
        (status = 403, description = "Not an events or admin token", body = ScimErrorDoc),
        (status = 404, description = "No such stream in the caller's tenant", body = ScimErrorDoc),
    ),
)]
async fn poll(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Json<PollResponse>, PollError> {
    if !caller.principal.role.may_read_events() {
        return Err(ApiError::Forbidden("SET streams need an events or admin token").into());
    }
    let stream = s
        .sets
        .streams
        .find(caller.tenant(), &name)
        .filter(|st| st.push.is_none())
        .ok_or_else(|| ApiError::NotFound(format!("no SET poll stream {name:?} in this tenant")))?;
    let id = &stream.id;
    let req: PollRequest = serde_json::from_value(body)
        .map_err(|e| PollError::InvalidRequest(format!("not a poll request (RFC 8936): {e}")))?;
    for (jti, err) in &req.set_errs {
        tracing::warn!(stream = %id.name, tenant = %id.tenant, %jti, error = %err, "a SET receiver could not process a SET");
    }
    let mut acks: Vec<String> = req.ack;
    acks.extend(req.set_errs.keys().cloned());
    let max = req.max_events.unwrap_or(s.cfg.set_poll_max).min(s.cfg.set_poll_max);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(s.cfg.events_wait_max_s);
    let mut committed = s.writer.committed();
    loop {
        let guard = s.sets.lock.lock().await;
        let batch = s.sets.deliver.next(&stream, std::mem::take(&mut acks), max).await.map_err(|e| match e {
            DeliverError::UnknownJti(why) | DeliverError::TooFarAhead(why) => PollError::InvalidRequest(why),
            DeliverError::Log(e) => PollError::Api(e.into()),
            DeliverError::Acks(why) => PollError::Api(ApiError::Unavailable(why)),
            DeliverError::Internal(what) => PollError::Api(ApiError::Internal(what)),
        })?;
        drop(guard);
        let page = PollResponse { sets: batch.sets, more_available: batch.more };
        let done = !page.sets.is_empty() || req.return_immediately || max == 0;
        if done || tokio::time::Instant::now() >= deadline {
            return Ok(Json(page));
        }
        // Nothing to deliver: wait for the next commit (or the deadline), then look again.
        let head = batch.head;
        let _ = tokio::time::timeout_at(deadline, committed.wait_for(|h| *h > head)).await;
    }
}

/// A SET stream of the caller's tenant and where it stands.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamView {
    name: String,
    /// `poll` (RFC 8936) or `push` (RFC 8935).
    delivery: String,
    /// The receiver's endpoint (push streams).
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// The event URIs it carries.
    events: Vec<&'static str>,
    /// A feed's groups (absent: the whole tenant).
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<Vec<String>>,
    /// `flags` (`--set-stream`, `--set-push`) or `file` (`set-streams.toml`, the API).
    configured_by: &'static str,
    /// Every position up to here is acknowledged or has no SET for this stream.
    watermark: u64,
    /// SETs acknowledged beyond the watermark.
    acknowledged_above: usize,
    /// The push task's state (push streams, on the node that pushes).
    #[serde(skip_serializing_if = "Option::is_none")]
    push: Option<crate::sets::push::PushState>,
}

fn may_read_events(caller: &Caller) -> Result<(), ApiError> {
    match caller.principal.role.may_read_events() {
        true => Ok(()),
        false => Err(ApiError::Forbidden("SET streams need an events or admin token")),
    }
}

/// The caller's tenant's SET streams, poll and push, with what each receiver acknowledged.
#[utoipa::path(
    get, path = "/sets/streams", tag = "events",
    responses(
        (status = 200, description = "The tenant's SET streams", body = Vec<StreamView>),
        (status = 403, description = "Not an events or admin token", body = ScimErrorDoc),
    ),
)]
async fn list_streams(State(s): State<AppState>, caller: Caller) -> Result<Json<Vec<StreamView>>, ApiError> {
    may_read_events(&caller)?;
    let tenant = caller.tenant().to_string();
    let mut out = Vec::new();
    for st in s.sets.streams.all().iter().filter(|st| st.id.tenant == tenant) {
        let acked = s.sets.deliver.acks.load(&st.id).await.map_err(|e| {
            tracing::warn!(error = %e, "a SET stream's acknowledgements cannot be read");
            ApiError::Unavailable("a SET stream's acknowledgements cannot be read now; try again".into())
        })?;
        out.push(StreamView {
            name: st.id.name.clone(),
            delivery: if st.push.is_some() { "push".into() } else { "poll".into() },
            url: st.push.as_ref().map(|p| p.url.clone()),
            events: st.uris(),
            groups: st.groups.as_ref().map(|g| g.iter().cloned().collect()),
            configured_by: if st.from_flags { "flags" } else { "file" },
            watermark: acked.acked.watermark,
            acknowledged_above: acked.acked.above.len(),
            push: s.sets.streams.push_state(&st.id),
        });
    }
    Ok(Json(out))
}

/// Adds a SET stream to the caller's tenant (in `<data-dir>/set-streams.toml`): served within
/// a second, from position 0 on. A push stream's `token_file` is a file name in
/// `<data-dir>/set-push-secrets/`. Admin tokens only.
#[utoipa::path(
    post, path = "/sets/streams", tag = "events",
    request_body = crate::sets::config::StreamConfig,
    responses(
        (status = 201, description = "Added; served within a second"),
        (status = 400, description = "Not a valid stream (the detail names the field), or a feed group that does not exist", body = ScimErrorDoc),
        (status = 403, description = "Not an admin token", body = ScimErrorDoc),
        (status = 409, description = "A stream of that name exists in the tenant", body = ScimErrorDoc),
    ),
)]
async fn add_stream(
    State(s): State<AppState>,
    caller: Caller,
    ScimBody(mut body): ScimBody,
) -> Result<StatusCode, ApiError> {
    admin(&caller)?;
    super::admin::own_tenant(&mut body, &caller)?;
    let mut c: StreamConfig =
        serde_json::from_value(body).map_err(|e| SchemaError::invalid_value(format!("not a valid SET stream: {e}")))?;
    if let Some(file) = &mut c.token_file {
        super::admin::confine_secret_file(file, &s.cfg.data_dir, SECRETS_DIR, "token_file")?;
    }
    if let Some(url) = c.url.as_deref().filter(|_| !s.cfg.allow_private_networks) {
        crate::net_guard::check_url(url).map_err(SchemaError::invalid_value)?;
    }
    super::admin::groups_exist(&s, caller.tenant(), c.groups.clone()).await?;
    let flags: Vec<StreamId> = s.sets.streams.all().iter().filter(|st| st.from_flags).map(|st| st.id.clone()).collect();
    crate::sets::config::add(&s.cfg.set_streams_path(), &s.cfg.data_dir, c, &flags).map_err(config_error)?;
    Ok(StatusCode::CREATED)
}

/// Removes a SET stream of the caller's tenant from the file (what its receiver acknowledged
/// stays: added again under its name, it goes on from there). Admin tokens only.
#[utoipa::path(
    delete, path = "/sets/streams/{name}", tag = "events",
    params(("name" = String, Path, description = "The stream's name")),
    responses(
        (status = 204, description = "Removed; no longer served within a second"),
        (status = 403, description = "Not an admin token", body = ScimErrorDoc),
        (status = 404, description = "No such stream in the file for this tenant", body = ScimErrorDoc),
    ),
)]
async fn remove_stream(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&caller)?;
    let id: StreamId = format!("{}/{name}", caller.tenant())
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no SET stream named {name:?} in this tenant")))?;
    crate::sets::config::remove(&s.cfg.set_streams_path(), &id).map_err(config_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn admin(caller: &Caller) -> Result<(), ApiError> {
    match caller.principal.role.may_administer() {
        true => Ok(()),
        false => Err(ApiError::Forbidden("managing SET streams needs an admin token")),
    }
}

fn config_error(e: ConfigError) -> ApiError {
    match e {
        ConfigError::Invalid { .. } => SchemaError::invalid_value(e.to_string()).into(),
        ConfigError::Exists(_) => SchemaError::new(ScimType::Uniqueness, e.to_string()).into(),
        ConfigError::Unknown(_) => ApiError::NotFound(e.to_string()),
        ConfigError::Io { .. } | ConfigError::Syntax { .. } => {
            tracing::error!(error = %e, "the SET streams file cannot be edited");
            ApiError::Unavailable("the SET streams file cannot be edited".into())
        }
    }
}
