//! The access API (`/api/v1`, any token of the tenant): what applications ask the directory.
//! A user may be named by SCIM id, userName or externalId, since an application knows the person
//! from its SSO login.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use scimlog_projections::access::{self, Effective, ScopeDoc};
use scimlog_projections::{query, KvRead, UserDoc};
use scimlog_schemas::access::ScopeKind;
use scimlog_schemas::{ResourceKind, SchemaError};
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{Caller, ScimBody};
use super::AppState;
use crate::command::{Command, Refusal};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users/{id}/access", get(user_access))
        .route("/access/check", get(check))
        .route("/environments", get(|s, c| list_scopes(s, c, ScopeKind::Environment)))
        .route("/environments/{name}/members", get(environment_members))
        .route("/resource-groups", get(|s, c| list_scopes(s, c, ScopeKind::ResourceGroup)))
        .route("/organizations", get(|s, c| list_scopes(s, c, ScopeKind::Organization)))
        .route("/hosts/{host_id}/user", get(host_user).put(link_host).delete(unlink_host))
}

/// The user `name` names: SCIM id, userName, or externalId.
fn find_user(kv: &impl KvRead, t: &str, name: &str) -> Option<UserDoc> {
    query::user(kv, t, name)
        .or_else(|| query::user_id_by_user_name(kv, t, name).and_then(|id| query::user(kv, t, &id)))
        .or_else(|| query::user_id_by_external_id(kv, t, name).and_then(|id| query::user(kv, t, &id)))
}

fn grant_json(e: &Effective) -> Value {
    let mut v = json!({"urn": e.urn, "grant": e.grant, "grantedAtPosition": e.position});
    v["source"] = match &e.via_group {
        None => json!({"type": "direct"}),
        Some((id, name)) => json!({"type": "group", "groupId": id, "groupDisplayName": name}),
    };
    v
}

fn access_json(kv: &impl KvRead, t: &str, user: &UserDoc) -> Value {
    let grants: Vec<Value> = access::effective(kv, t, &user.id).iter().map(grant_json).collect();
    json!({"userId": user.id, "userName": user.user_name(), "active": user.is_active(), "grants": grants})
}

async fn user_access(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let view = s.store.view();
    let t = caller.tenant();
    let body = find_user(&view, t, &id).map(|u| access_json(&view, t, &u));
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    let body = body.ok_or(ApiError::Refused(Refusal::NotFound { kind: ResourceKind::User, id }))?;
    Ok(Json(body).into_response())
}

/// `GET /api/v1/access/check?user=U&role=R&environment=E`: the answer and the reason. Without
/// `role`, any role or entitlement on the environment counts.
async fn check(
    State(s): State<AppState>,
    caller: Caller,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let user =
        p.get("user").filter(|u| !u.is_empty()).ok_or_else(|| SchemaError::invalid_value("'user' is required"))?;
    let env = p
        .get("environment")
        .filter(|e| !e.is_empty())
        .ok_or_else(|| SchemaError::invalid_value("'environment' is required"))?;
    let role = p.get("role").filter(|r| !r.is_empty()).map(String::as_str);
    let view = s.store.view();
    let t = caller.tenant();
    let answer = match find_user(&view, t, user) {
        // With SCIM provisioning on, nobody gets in before the IdP provisions them.
        None => json!({"allowed": false, "reason": format!("user {user:?} is not provisioned")}),
        Some(u) if !u.is_active() => json!({"allowed": false, "userId": u.id, "reason": "the user is deactivated"}),
        Some(u) => {
            let effective = access::effective(&view, t, &u.id);
            match effective.iter().find(|e| access::allows(e, role, env)) {
                Some(e) => {
                    let how = match &e.via_group {
                        None => "held directly".to_string(),
                        Some((_, name)) => format!("through group {name:?}"),
                    };
                    json!({"allowed": true, "userId": u.id, "reason": format!("{} {how}", e.urn), "grant": grant_json(e)})
                }
                None => json!({"allowed": false, "userId": u.id, "reason": match role {
                    Some(r) => format!("no grant gives role {r:?} in environment {env:?}"),
                    None => format!("no grant gives access to environment {env:?}"),
                }}),
            }
        }
    };
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    Ok(Json(answer).into_response())
}

fn scope_json(d: &ScopeDoc) -> Value {
    json!({"id": d.slug, "slug": d.slug, "kind": d.kind, "created": d.created, "createdBy": d.created_by, "createdAtPosition": d.position})
}

async fn list_scopes(State(s): State<AppState>, caller: Caller, kind: ScopeKind) -> Result<Response, ApiError> {
    let view = s.store.view();
    let items: Vec<Value> = access::scopes(&view, caller.tenant(), kind).iter().map(scope_json).collect();
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    Ok(Json(json!({"totalResults": items.len(), "Resources": items})).into_response())
}

async fn environment_members(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let view = s.store.view();
    let t = caller.tenant();
    let Some(env) = access::scope(&view, t, ScopeKind::Environment, &name) else {
        return Err(ApiError::NotFound(format!("environment {name:?} not found")));
    };
    let members: Vec<Value> = access::scope_members(&view, t, ScopeKind::Environment, &env.slug)
        .into_iter()
        .filter_map(|(uid, e)| query::user(&view, t, &uid).map(|u| (u, e)))
        .map(|(u, e)| json!({"userId": u.id, "userName": u.user_name(), "active": u.is_active(), "grant": grant_json(&e)}))
        .collect();
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    Ok(Json(json!({"environment": scope_json(&env), "totalResults": members.len(), "members": members}))
        .into_response())
}

fn valid_host_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control()) {
        return Err(SchemaError::invalid_value(format!("host id {id:?} must be 1 to 128 printable characters")).into());
    }
    Ok(())
}

async fn host_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(host_id): Path<String>,
) -> Result<Response, ApiError> {
    let view = s.store.view();
    let t = caller.tenant();
    let user = access::host_user(&view, t, &host_id).and_then(|u| query::user(&view, t, &u));
    let body = user.map(|u| {
        let groups: Vec<Value> = query::groups_of(&view, t, &u.id, usize::MAX)
            .into_iter()
            .filter_map(|g| query::group(&view, t, &g))
            .map(|g| json!({"value": g.id, "display": g.display_name}))
            .collect();
        let department = u
            .attributes
            .get(scimlog_schemas::urn::ENTERPRISE_USER)
            .and_then(|e| e.get("department"))
            .cloned()
            .unwrap_or(Value::Null);
        let mut v = access_json(&view, t, &u);
        v["hostId"] = json!(host_id);
        v["displayName"] = json!(u.display());
        v["groups"] = Value::Array(groups);
        v["department"] = department;
        v
    });
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    let body = body.ok_or_else(|| ApiError::NotFound(format!("host {host_id:?} is not linked to a user")))?;
    Ok(Json(body).into_response())
}

/// `PUT /api/v1/hosts/{host_id}/user {"user": "<id | userName | externalId>"}`.
async fn link_host(
    State(s): State<AppState>,
    caller: Caller,
    Path(host_id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ApiError> {
    valid_host_id(&host_id)?;
    let user = body
        .get("user")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| SchemaError::invalid_value("'user' (id, userName or externalId) is required"))?
        .to_string();
    s.writer.submit(caller.origin(), Command::LinkHost { host_id: host_id.clone(), user }).await?;
    host_user(State(s), caller, Path(host_id)).await
}

async fn unlink_host(
    State(s): State<AppState>,
    caller: Caller,
    Path(host_id): Path<String>,
) -> Result<Response, ApiError> {
    valid_host_id(&host_id)?;
    s.writer.submit(caller.origin(), Command::UnlinkHost { host_id }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
