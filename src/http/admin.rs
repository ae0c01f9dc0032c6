//! The admin API (`/api/v1`), for `admin` tokens: erasure of a person.

use axum::extract::{Path, State};
use axum::Json;
use scimlog_schemas::SchemaError;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ScimErrorDoc};
use super::extract::{Caller, ScimBody};
use super::AppState;
use crate::command::Command;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(erase))
}

/// The body of an erase request.
#[derive(ToSchema)]
#[allow(dead_code)] // Parsed by hand (`erase`) so that a missing reason is named.
pub struct EraseRequest {
    /// Why the person is erased (a ticket, a legal basis; no personal data: it stays in the log).
    reason: String,
}

/// What an erasure did.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Erased {
    /// The user's id.
    pub erased: String,
    /// The positions of the events the erasure wrote.
    pub event_positions: Vec<u64>,
    pub purge: Purge,
}

/// Whether the store's files are purged of the person's values yet.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Purge {
    Done,
    /// A reader that started before the erasure still runs; `/healthz` counts pending purges.
    Pending,
}

/// How long an erase request waits for its purge before answering `"purge": "pending"`.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `POST /api/v1/users/{id}/erase {"reason": "..."}`: deletes the user if it still exists and
/// destroys its data key. Answers with the positions of the events it wrote, and whether the
/// files are purged of the person's values yet (`purge`: `done`, or `pending` while a reader
/// that started before the erasure still runs; `/healthz` counts pending purges).
#[utoipa::path(
    post, path = "/users/{id}/erase", tag = "admin",
    params(("id" = String, Path, description = "The user's SCIM id")),
    request_body = EraseRequest,
    responses(
        (status = 200, description = "Erased", body = Erased),
        (status = 400, description = "No reason given", body = ScimErrorDoc),
        (status = 403, description = "Not an admin token", body = ScimErrorDoc),
        (status = 404, description = "No such user, or already erased", body = ScimErrorDoc),
    ),
)]
async fn erase(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Json<Erased>, ApiError> {
    if !caller.principal.role.may_administer() {
        return Err(ApiError::Forbidden("erasure needs an admin token (scimlog token create --role admin)"));
    }
    let reason = match body.get("reason") {
        Some(Value::String(r)) if !r.trim().is_empty() => r.clone(),
        _ => return Err(SchemaError::invalid_value("'reason' is required: say why (no personal data)").into()),
    };
    erase_user(&s, caller.origin(), id, reason).await.map(Json)
}

/// Erases a user (the admin API's and the console's erasure): submits the erasure, then waits
/// a little for its purge so that the usual answer is `done`.
pub(super) async fn erase_user(
    s: &AppState,
    origin: crate::log::writer::Origin,
    id: String,
    reason: String,
) -> Result<Erased, ApiError> {
    let committed = s.writer.submit(origin, Command::EraseUser { id: id.clone(), reason }).await?;
    let positions: Vec<u64> = committed.events.iter().map(|e| e.position).collect();
    // The purge runs apart from the writer; a short wait lets the usual case answer "done".
    let purge = match committed.purge {
        Some(ticket) => {
            let deadline = tokio::time::Instant::now() + PURGE_WAIT;
            while s.writer.purges().finished() < ticket && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            if s.writer.purges().finished() >= ticket {
                Purge::Done
            } else {
                Purge::Pending
            }
        }
        None => Purge::Done,
    };
    Ok(Erased { erased: id, event_positions: positions, purge })
}

/// A body an admin sends to configure something of a tenant (an outbound target, a SET
/// stream) names the caller's tenant: filled in when absent, refused when another.
pub fn own_tenant(body: &mut Value, caller: &Caller) -> Result<(), ApiError> {
    if let Value::Object(m) = body {
        match m.get("tenant") {
            None => {
                m.insert("tenant".into(), Value::String(caller.principal.tenant.clone()));
            }
            Some(Value::String(t)) if *t == caller.principal.tenant => {}
            Some(t) => return Err(SchemaError::invalid_value(format!("tenant {t} is not the token's tenant")).into()),
        }
    }
    Ok(())
}

/// A tenant's admin names secrets, and the server sends them to a URL the admin chose: over the
/// API a secret file is a plain file name in `<data-dir>/<dir>/`. Otherwise
/// `token_file = "<data-dir>/master.key"` would send the master key away. (The CLI, run by the
/// host's operator, may name any file.)
pub fn confine_secret_file(
    file: &mut std::path::PathBuf,
    data_dir: &std::path::Path,
    dir: &str,
    field: &str,
) -> Result<(), ApiError> {
    let name = file.to_string_lossy().into_owned();
    let plain = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    if !plain {
        let detail = format!("{field} {name:?} must be a file name in <data-dir>/{dir}/ (no path)");
        return Err(SchemaError::invalid_value(detail).into());
    }
    *file = data_dir.join(dir).join(name);
    Ok(())
}

/// Refuses, naming it, the first of `groups` that is no group of the tenant (a scope or a feed
/// that names a group which does not exist would silently match no one).
pub async fn groups_exist(s: &AppState, tenant: &str, groups: Vec<String>) -> Result<(), ApiError> {
    if groups.is_empty() {
        return Ok(());
    }
    let tenant = tenant.to_string();
    super::blocking_read(s, move |s| {
        let view = s.store.view();
        let missing = groups.iter().find(|g| scimlog_projections::query::group(&view, &tenant, g).is_none()).cloned();
        if let Some(e) = view.take_error() {
            return Err(e.into());
        }
        match missing {
            Some(g) => Err(SchemaError::invalid_value(format!("groups: no group {g:?} in this tenant")).into()),
            None => Ok(()),
        }
    })
    .await
}
