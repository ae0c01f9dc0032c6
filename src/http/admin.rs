//! The admin API (`/api/v1`), for `admin` tokens: erasure of a person.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use scimlog_schemas::SchemaError;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{Caller, ScimBody};
use super::AppState;
use crate::command::Command;

pub fn router() -> Router<AppState> {
    Router::new().route("/users/{id}/erase", post(erase).fallback(super::method_not_allowed))
}

/// How long an erase request waits for its purge before answering `"purge": "pending"`.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `POST /api/v1/users/{id}/erase {"reason": "..."}`: deletes the user if it still exists and
/// destroys its data key. Answers with the positions of the events it wrote, and whether the
/// files are purged of the person's values yet (`purge`: `done`, or `pending` while a reader
/// that started before the erasure still runs; `/healthz` counts pending purges).
async fn erase(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ApiError> {
    if !caller.principal.role.may_administer() {
        return Err(ApiError::Forbidden("erasure needs an admin token (scimlog token create --role admin)"));
    }
    let reason = match body.get("reason") {
        Some(Value::String(r)) if !r.trim().is_empty() => r.clone(),
        _ => return Err(SchemaError::invalid_value("'reason' is required: say why (no personal data)").into()),
    };
    let committed = s.writer.submit(caller.origin(), Command::EraseUser { id: id.clone(), reason }).await?;
    let positions: Vec<u64> = committed.events.iter().map(|e| e.position).collect();
    // The purge runs apart from the writer; a short wait lets the usual case answer "done".
    let purge = match committed.purge {
        Some(ticket) => {
            let deadline = tokio::time::Instant::now() + PURGE_WAIT;
            while s.writer.purges().finished() < ticket && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            if s.writer.purges().finished() >= ticket {
                "done"
            } else {
                "pending"
            }
        }
        None => "done",
    };
    let body = json!({"erased": id, "eventPositions": positions, "purge": purge});
    Ok((StatusCode::OK, Json(body)).into_response())
}
