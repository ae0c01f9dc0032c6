//! `/api/v1/outbound/targets`: the outbound targets of the caller's tenant, for `admin` tokens:
//! their status (health, watermark, lag, parked objects, requests by status, the recent
//! journal), and adding or removing one (the same edit of the targets file as `scimlog outbound
//! add|remove`; the supervisor starts or stops its connector within a second). In cluster mode
//! these are served by the node asked, never forwarded to the leader: a target runs on the node
//! it names, with its state in that node's store and its table in that node's targets file.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use scimlog_schemas::{SchemaError, ScimType};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ScimErrorDoc};
use super::extract::{Caller, ScimBody};
use super::AppState;
use crate::outbound::config::{self, ConfigError, TargetConfig};
use crate::outbound::StatusView;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, add)).routes(routes!(remove)).routes(routes!(act))
}

fn admin(caller: &Caller) -> Result<(), ApiError> {
    match caller.principal.role.may_administer() {
        true => Ok(()),
        false => Err(ApiError::Forbidden("outbound targets need an admin token (scimlog token create --role admin)")),
    }
}

/// `GET /api/v1/outbound/targets`: every target of the tenant with its status.
#[utoipa::path(
    get, path = "/outbound/targets", tag = "outbound",
    responses(
        (status = 200, description = "The tenant's targets", body = Vec<StatusView>),
        (status = 403, description = "Not an admin token", body = ScimErrorDoc),
    ),
)]
async fn list(State(s): State<AppState>, caller: Caller) -> Result<Json<Vec<StatusView>>, ApiError> {
    admin(&caller)?;
    if let Some(e) = s.outbound.file_error() {
        tracing::warn!(error = %e, "listing outbound targets while the targets file is not valid");
    }
    Ok(Json(s.outbound.statuses(Some(&caller.principal.tenant))))
}

/// `POST /api/v1/outbound/targets`: adds a target to the caller's tenant (a `[[target]]` table
/// as JSON; `tenant` may be left out). Secrets are named, never given: `token_file` and
/// `password_file` are file names in `<data-dir>/outbound-secrets/`, `token_env` a variable
/// starting with `SCIMLOG_OUTBOUND_`.
#[utoipa::path(
    post, path = "/outbound/targets", tag = "outbound",
    request_body(content = Object, description = "A target: tenant (optional), name, url, profile, token_file | token_env | basic_user + password_file, deprovision, mode, adopt, scope (groups, roles, entitlements), limits"),
    responses(
        (status = 201, description = "Added; its connector starts within a second"),
        (status = 400, description = "Not a valid target", body = ScimErrorDoc),
        (status = 403, description = "Not an admin token", body = ScimErrorDoc),
        (status = 409, description = "A target of that name exists", body = ScimErrorDoc),
    ),
)]
async fn add(State(s): State<AppState>, caller: Caller, ScimBody(body): ScimBody) -> Result<StatusCode, ApiError> {
    admin(&caller)?;
    let mut body = body;
    super::admin::own_tenant(&mut body, &caller)?;
    let mut c: TargetConfig =
        serde_json::from_value(body).map_err(|e| SchemaError::invalid_value(format!("not a valid target: {e}")))?;
    confine_secrets(&mut c, &s.cfg.data_dir)?;
    if !s.cfg.allow_private_networks {
        for url in std::iter::once(&c.url).chain(&c.oauth_token_url) {
            crate::net_guard::check_url(url).map_err(SchemaError::invalid_value)?;
        }
    }
    if let Some(cluster) = &s.cluster {
        // The API edits this node's targets file: the target must be one this node runs.
        match &c.node {
            None => {
                let detail = "in cluster mode a target names the node that runs it: node (a --node-id)";
                return Err(SchemaError::invalid_value(detail).into());
            }
            Some(node) if *node != cluster.node_id => {
                let detail = format!(
                    "this is node {:?}: add a target that runs on node {node:?} through that node's API",
                    cluster.node_id
                );
                return Err(SchemaError::invalid_value(detail).into());
            }
            Some(_) => {}
        }
    }
    super::admin::groups_exist(&s, caller.tenant(), c.groups.clone()).await?;
    config::add(&s.cfg.outbound_path(), c).map_err(config_error)?;
    Ok(StatusCode::CREATED)
}

/// `DELETE /api/v1/outbound/targets/{name}`: removes a target (its connector stops; its state in
/// the store stays, for a later add under the same name).
#[utoipa::path(
    delete, path = "/outbound/targets/{name}", tag = "outbound",
    params(("name" = String, Path, description = "The target's name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Not an admin token", body = ScimErrorDoc),
        (status = 404, description = "No such target in this tenant", body = ScimErrorDoc),
    ),
)]
async fn remove(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    admin(&caller)?;
    let path = s.cfg.outbound_path();
    let mine = config::load(&path)
        .map_err(config_error)?
        .iter()
        .any(|t| t.name() == name && t.tenant() == caller.principal.tenant);
    if !mine {
        return Err(ApiError::NotFound(format!("no outbound target named {name:?} in this tenant")));
    }
    config::remove(&path, &name).map_err(config_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// What an operator action did.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Done {
    /// In words: how many objects it concerns.
    done: String,
    /// `verify` and `repair`: what was found (checked, missing, drifted, membershipDrift,
    /// orphaned, unmanaged: counts, and the first ids of each; repaired).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    report: Option<Value>,
    /// `plan`: `from` and `to` (log positions), `requests` (method, path, body: what would be
    /// sent, in order), `truncated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    plan: Option<Value>,
}

/// `POST /api/v1/outbound/targets/{name}/{action}`: `retry` (every parked object at the next
/// step), `approve-deletes` (send the deprovisions the deletion breaker holds), `resync` (from
/// position 0, every linked object sent whole), `unlink` (forget one object's link; body
/// `{"resource": "Users/<id>"}`), `verify` (read every linked object back and report what
/// differs), `repair` (verify, then send the missing and drifted objects again), `plan` (the
/// exact requests the connector would send from a position, default its watermark, to the
/// head; body `{"from": <position>}` or none; only reads are sent).
#[utoipa::path(
    post, path = "/outbound/targets/{name}/{action}", tag = "outbound",
    params(
        ("name" = String, Path, description = "The target's name"),
        ("action" = String, Path, description = "retry | approve-deletes | resync | unlink | verify | repair | plan"),
    ),
    request_body(content = Object, description = "For unlink: {\"resource\": \"Users/<id>\" or \"Groups/<id>\"}; for plan, optional: {\"from\": <position>}"),
    responses(
        (status = 200, description = "Done", body = Done),
        (status = 400, description = "No such action, or no resource to unlink", body = ScimErrorDoc),
        (status = 403, description = "Not an admin token", body = ScimErrorDoc),
        (status = 404, description = "No such target in this tenant", body = ScimErrorDoc),
        (status = 503, description = "The connector is busy with its target; try again", body = ScimErrorDoc),
    ),
)]
async fn act(
    State(s): State<AppState>,
    caller: Caller,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Done>, ApiError> {
    use crate::outbound::connector::Control;
    use crate::outbound::state::Kind;
    admin(&caller)?;
    let control = match action.as_str() {
        "retry" => Control::Retry,
        "approve-deletes" => Control::ApproveDeletes,
        "resync" => Control::Resync,
        "verify" => Control::Verify { repair: false },
        "repair" => Control::Verify { repair: true },
        "plan" => {
            let body: Value = match body.is_empty() {
                true => Value::Null,
                false => serde_json::from_slice(&body)
                    .map_err(|e| SchemaError::new(ScimType::InvalidSyntax, format!("plan's body is not JSON: {e}")))?,
            };
            let from = match body.get("from") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    SchemaError::invalid_value(format!("plan's from must be a log position (0 or more), got {v}"))
                })?),
            };
            Control::Plan { from }
        }
        "unlink" => {
            // A small JSON body, or none (the other actions take none).
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let resource = body.get("resource").and_then(Value::as_str).unwrap_or_default();
            match resource.split_once('/') {
                Some(("Users", id)) if !id.is_empty() => Control::Unlink(Kind::User, id.into()),
                Some(("Groups", id)) if !id.is_empty() => Control::Unlink(Kind::Group, id.into()),
                _ => {
                    let detail =
                        format!("unlink needs {{\"resource\": \"Users/<id>\" or \"Groups/<id>\"}}, got {resource:?}");
                    return Err(SchemaError::invalid_value(detail).into());
                }
            }
        }
        other => {
            let detail =
                format!("action {other:?} is not one of retry, approve-deletes, resync, unlink, verify, repair, plan");
            return Err(SchemaError::invalid_value(detail).into());
        }
    };
    match s.outbound.control(&caller.principal.tenant, &name, control).await {
        Ok(done) => match action.as_str() {
            "verify" | "repair" => {
                let report: Value = serde_json::from_str(&done).unwrap_or_default();
                let counts = report["counts"]
                    .as_object()
                    .map(|c| c.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
                let done = format!(
                    "{} linked objects checked; {}",
                    report["checked"],
                    counts.filter(|c| !c.is_empty()).unwrap_or_else(|| "no difference".into())
                );
                Ok(Json(Done { done, report: Some(report), plan: None }))
            }
            "plan" => {
                let plan: Value = serde_json::from_str(&done).unwrap_or_default();
                let n = plan["requests"].as_array().map_or(0, Vec::len);
                let done = format!("{n} requests from position {} to {}", plan["from"], plan["to"]);
                Ok(Json(Done { done, report: None, plan: Some(plan) }))
            }
            _ => Ok(Json(Done { done, report: None, plan: None })),
        },
        Err(e @ crate::outbound::ControlError::Unknown(_)) => Err(ApiError::NotFound(e.to_string())),
        Err(e @ crate::outbound::ControlError::Busy) => Err(ApiError::Unavailable(e.to_string())),
        Err(crate::outbound::ControlError::Refused(why)) => Err(SchemaError::new(ScimType::TooMany, why).into()),
        Err(e @ crate::outbound::ControlError::Failed(_)) => {
            tracing::error!(error = %e, "an outbound action failed");
            Err(ApiError::Unavailable("the connector could not do it; see the server log".into()))
        }
    }
}

/// Where secrets of targets added over the API live: `<data-dir>/outbound-secrets/`.
pub const SECRETS_DIR: &str = "outbound-secrets";
/// The prefix of the environment variables a target added over the API may name.
pub const SECRET_ENV_PREFIX: &str = "SCIMLOG_OUTBOUND_";

/// Secret files over the API are plain names in `<data-dir>/outbound-secrets/`; a variable must
/// start with `SCIMLOG_OUTBOUND_` (see `admin::confine_secret_file`).
fn confine_secrets(c: &mut TargetConfig, data_dir: &std::path::Path) -> Result<(), ApiError> {
    let files = [
        ("token_file", &mut c.token_file),
        ("password_file", &mut c.password_file),
        ("oauth_client_secret_file", &mut c.oauth_client_secret_file),
    ];
    for (field, file) in files {
        if let Some(file) = file {
            super::admin::confine_secret_file(file, data_dir, SECRETS_DIR, field)?;
        }
    }
    if let Some(var) = c.token_env.as_deref().filter(|v| !v.starts_with(SECRET_ENV_PREFIX)) {
        let detail = format!("token_env {var:?} must start with {SECRET_ENV_PREFIX}");
        return Err(SchemaError::invalid_value(detail).into());
    }
    Ok(())
}

fn config_error(e: ConfigError) -> ApiError {
    match e {
        ConfigError::Invalid { .. } => SchemaError::invalid_value(e.to_string()).into(),
        ConfigError::Exists(_) => SchemaError::new(ScimType::Uniqueness, e.to_string()).into(),
        ConfigError::Unknown(_) => ApiError::NotFound(e.to_string()),
        ConfigError::Io { .. } | ConfigError::Syntax { .. } => {
            tracing::error!(error = %e, "the outbound targets file cannot be edited");
            ApiError::Unavailable("the outbound targets file cannot be edited".into())
        }
    }
}
