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
use crate::auth::Role;
use crate::command::Command;

pub fn router() -> Router<AppState> {
    Router::new().route("/users/{id}/erase", post(erase).fallback(super::method_not_allowed))
}

/// `POST /api/v1/users/{id}/erase {"reason": "..."}`: deletes the user if it still exists and
/// destroys its data key. Answers with the positions of the events it wrote.
async fn erase(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ApiError> {
    if caller.principal.role != Role::Admin {
        return Err(ApiError::Forbidden("erasure needs an admin token (scimlog token create --role admin)"));
    }
    let reason = match body.get("reason") {
        Some(Value::String(r)) if !r.trim().is_empty() => r.clone(),
        _ => return Err(SchemaError::invalid_value("'reason' is required: say why (no personal data)").into()),
    };
    let committed = s.writer.submit(caller.origin(), Command::EraseUser { id: id.clone(), reason }).await?;
    let positions: Vec<u64> = committed.events.iter().map(|e| e.position).collect();
    Ok((StatusCode::OK, Json(json!({"erased": id, "eventPositions": positions}))).into_response())
}
