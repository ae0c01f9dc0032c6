//! `/Bulk` (RFC 7644 §3.7): many operations in one request, decided in order on the writer and
//! committed as one batch; each operation reports its own status.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use scimlog_schemas::filter::FilterLimits;
use scimlog_schemas::SchemaError;
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Caller, ScimBody};
use super::{render, scim_response, AppState};
use crate::command::{BulkMethod, BulkOp, Command};

pub const BULK_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
pub const BULK_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";

pub fn router(max_payload_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/Bulk", post(bulk).fallback(super::method_not_allowed).layer(DefaultBodyLimit::max(max_payload_bytes)))
}

fn get_ci<'a>(o: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

fn parse_op(i: usize, v: &Value) -> Result<BulkOp, SchemaError> {
    let o = v.as_object().ok_or_else(|| SchemaError::invalid_syntax(format!("operation {i} is not an object")))?;
    let method = match get_ci(o, "method").and_then(Value::as_str).map(str::to_ascii_uppercase).as_deref() {
        Some("POST") => BulkMethod::Post,
        Some("PUT") => BulkMethod::Put,
        Some("PATCH") => BulkMethod::Patch,
        Some("DELETE") => BulkMethod::Delete,
        other => {
            return Err(SchemaError::invalid_syntax(format!(
                "operation {i}: method must be POST, PUT, PATCH or DELETE, got {other:?}"
            )))
        }
    };
    let path = get_ci(o, "path")
        .and_then(Value::as_str)
        .ok_or_else(|| SchemaError::invalid_syntax(format!("operation {i} has no 'path'")))?
        .to_string();
    let bulk_id = get_ci(o, "bulkId").and_then(Value::as_str).map(String::from);
    if method == BulkMethod::Post && bulk_id.is_none() {
        return Err(SchemaError::invalid_syntax(format!("operation {i}: a POST needs a 'bulkId'")));
    }
    let version = match get_ci(o, "version").and_then(Value::as_str) {
        None => None,
        Some(tag) => Some(tag.trim().trim_start_matches("W/").trim_matches('"').parse::<u64>().unwrap_or(u64::MAX)),
    };
    let data = get_ci(o, "data").cloned().unwrap_or(Value::Null);
    Ok(BulkOp { method, bulk_id, path, data, version, new_id: Uuid::now_v7().to_string() })
}

async fn bulk(
    State(s): State<AppState>,
    caller: Caller,
    body: Result<ScimBody, ApiError>,
) -> Result<Response, ApiError> {
    let ScimBody(body) = body.map_err(|e| match e {
        ApiError::PayloadTooLarge { .. } => ApiError::PayloadTooLarge { limit: s.cfg.bulk_max_payload_bytes },
        other => other,
    })?;
    let obj = body.as_object().ok_or_else(|| SchemaError::invalid_syntax("a BulkRequest must be a JSON object"))?;
    if let Some(schemas) = get_ci(obj, "schemas") {
        if !schemas.as_array().is_some_and(|a| a.iter().any(|u| u.as_str() == Some(BULK_REQUEST))) {
            return Err(SchemaError::invalid_syntax(format!(
                "a BulkRequest's schemas must be [{BULK_REQUEST:?}], got {schemas}"
            ))
            .into());
        }
    }
    let ops = get_ci(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| SchemaError::invalid_syntax("a BulkRequest needs an 'Operations' list"))?;
    if ops.len() > s.cfg.bulk_max_operations {
        return Err(ApiError::PayloadTooLargeOperations { count: ops.len(), limit: s.cfg.bulk_max_operations });
    }
    let fail_on_errors = match get_ci(obj, "failOnErrors") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().map(|n| n as usize),
        Some(other) => {
            return Err(
                SchemaError::invalid_value(format!("failOnErrors must be a non-negative integer, got {other}")).into()
            )
        }
    };
    let ops = ops.iter().enumerate().map(|(i, v)| parse_op(i, v)).collect::<Result<Vec<_>, _>>()?;
    let limits = FilterLimits { max_length: s.cfg.max_filter_length, max_depth: s.cfg.max_filter_depth };
    let command = Command::Bulk { ops, fail_on_errors, limits, max_patch_operations: s.cfg.max_patch_operations };
    let committed = s.writer.submit(caller.origin(), command).await?;
    let results: Vec<Value> = committed
        .decision
        .bulk
        .iter()
        .map(|r| {
            let mut v = json!({"method": r.method.as_str()});
            if let Some(b) = &r.bulk_id {
                v["bulkId"] = json!(b);
            }
            if let Some((kind, id)) = &r.resource {
                if r.method != BulkMethod::Delete {
                    v["location"] = json!(render::location(&s.scim_base, *kind, id));
                }
            }
            if let Some(version) = r.version {
                v["version"] = json!(format!("W/\"{version}\""));
            }
            match &r.outcome {
                Ok(status) => v["status"] = json!(status.to_string()),
                Err(refusal) => {
                    let (status, body) = ApiError::Refused(refusal.clone()).document();
                    v["status"] = json!(status.as_u16().to_string());
                    v["response"] = body;
                }
            }
            v
        })
        .collect();
    Ok(scim_response(StatusCode::OK, &json!({"schemas": [BULK_RESPONSE], "Operations": results})))
}
