//! Discovery (RFC 7644 §4): `/ServiceProviderConfig`, `/ResourceTypes`, `/Schemas`, served from the
//! JSON documents in `schemas/scim/`, with the configured limits filled in.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use scimlog_schemas::registry::{registry, RESOURCE_TYPES_JSON, SERVICE_PROVIDER_CONFIG_JSON};
use serde_json::Value;

use super::error::ApiError;
use super::render::{list_response, Rendered};
use super::{scim_response, scim_text, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ServiceProviderConfig", get(service_provider_config).fallback(super::method_not_allowed))
        .route("/ResourceTypes", get(resource_types).fallback(super::method_not_allowed))
        .route("/ResourceTypes/{id}", get(resource_type).fallback(super::method_not_allowed))
        .route("/Schemas", get(schemas).fallback(super::method_not_allowed))
        .route("/Schemas/{id}", get(schema).fallback(super::method_not_allowed))
        .route("/Me", axum::routing::any(me))
}

fn document(text: &str) -> Value {
    serde_json::from_str(text).expect("compiled-in discovery documents are JSON")
}

/// The compiled-in ServiceProviderConfig, parsed once: the configured limits are filled into a
/// copy per request.
static SERVICE_PROVIDER_CONFIG: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| document(SERVICE_PROVIDER_CONFIG_JSON));

/// Relative `meta.location`s in the documents are made absolute.
fn absolute(mut v: Value, base: &str) -> Value {
    if let Some(loc) = v.pointer_mut("/meta/location") {
        if let Some(s) = loc.as_str() {
            *loc = Value::String(format!("{base}{s}"));
        }
    }
    v
}

async fn service_provider_config(State(s): State<AppState>, caller: super::extract::Caller) -> Response {
    let mut doc = absolute(SERVICE_PROVIDER_CONFIG.clone(), &s.scim_base);
    doc["filter"]["maxResults"] = s.cfg.max_page_size.into();
    doc["bulk"] = serde_json::json!({
        "supported": true,
        "maxOperations": s.cfg.bulk_max_operations,
        "maxPayloadSize": s.cfg.bulk_max_payload_bytes,
    });
    doc["pagination"]["defaultPageSize"] = s.cfg.default_page_size.into();
    doc["pagination"]["maxPageSize"] = s.cfg.max_page_size.into();
    doc["pagination"]["cursorTimeout"] = s.cfg.cursor_timeout_s.into();
    doc["documentationUri"] = match &s.cfg.documentation_url {
        Some(url) => url.clone().into(),
        None => format!("{}/docs", s.cfg.base_url()).into(),
    };
    // RFC 9967 §4: the SETs this server issues, when the caller's tenant has a poll stream
    // (absent means "not configured for Security Events").
    let streams = s.sets.streams.all();
    let mut uris: Vec<&str> =
        streams.iter().filter(|st| st.id.tenant == caller.tenant()).flat_map(|st| st.uris()).collect();
    if !uris.is_empty() {
        uris.sort_unstable();
        uris.dedup();
        doc["securityEvents"] = serde_json::json!({"asyncRequest": "none", "eventUris": uris});
    }
    if !s.cfg.advertise_roles_entitlements {
        if let Some(o) = doc.as_object_mut() {
            o.remove("RolesAndEntitlements");
        }
    }
    scim_response(StatusCode::OK, &doc)
}

fn all_resource_types(base: &str) -> Vec<Value> {
    match document(RESOURCE_TYPES_JSON) {
        Value::Array(items) => items.into_iter().map(|v| absolute(v, base)).collect(),
        _ => vec![],
    }
}

async fn resource_types(State(s): State<AppState>) -> Response {
    let items = all_resource_types(&s.scim_base);
    scim_text(StatusCode::OK, list_response(items.len(), 1, items.iter().map(Rendered::of).collect()))
}

async fn resource_type(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    all_resource_types(&s.scim_base)
        .into_iter()
        .find(|r| r["id"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(&id)))
        .map(|r| scim_response(StatusCode::OK, &r))
        .ok_or_else(|| ApiError::NotFound(format!("resource type {id:?} not found")))
}

fn all_schemas(base: &str) -> Vec<Value> {
    registry().documents.iter().cloned().map(|d| absolute(d, base)).collect()
}

async fn schemas(State(s): State<AppState>) -> Response {
    let items = all_schemas(&s.scim_base);
    scim_text(StatusCode::OK, list_response(items.len(), 1, items.iter().map(Rendered::of).collect()))
}

async fn schema(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    all_schemas(&s.scim_base)
        .into_iter()
        .find(|d| d["id"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(&id)))
        .map(|d| scim_response(StatusCode::OK, &d))
        .ok_or_else(|| ApiError::NotFound(format!("schema {id:?} not found")))
}

async fn me() -> ApiError {
    ApiError::NotImplemented("/Me is not supported: tokens belong to IdP integrations, not to users")
}
