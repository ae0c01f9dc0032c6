//! The access API (`/api/v1`, any token of the tenant): what applications ask the directory.
//! A user may be named by SCIM id, userName or externalId, since an application knows the person
//! from its SSO login: `by=id|userName|externalId` says which; without it, a name that matches two
//! different users is answered 409, never guessed. Host links are written by `hosts` (or
//! `admin`) tokens only: they decide whose access a device carries.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use scimlog_projections::access::{self, Effective, ScopeDoc};
use scimlog_projections::query::UserBy;
use scimlog_projections::{query, KvRead, UserDoc};
use scimlog_schemas::access::ScopeKind;
use scimlog_schemas::{ResourceKind, SchemaError};
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{Caller, ScimBody};
use super::{blocking_read, AppState};
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

/// `by` from a query string or a body: absent means [`UserBy::Any`].
fn parse_by(by: Option<&str>) -> Result<UserBy, ApiError> {
    match by {
        None => Ok(UserBy::Any),
        Some(b) => UserBy::parse(b).ok_or_else(|| {
            SchemaError::invalid_value(format!("by {b:?} is not one of id, userName, externalId, any")).into()
        }),
    }
}

/// The user `name` names, as `by` says; two different users is a 409.
fn find_user(kv: &impl KvRead, t: &str, name: &str, by: UserBy) -> Result<Option<UserDoc>, ApiError> {
    match query::find_user(kv, t, name, by) {
        Ok(id) => Ok(id.and_then(|id| query::user(kv, t, &id))),
        Err(ambiguous) => Err(Refusal::Uniqueness(ambiguous.to_string()).into()),
    }
}

fn grant_json(e: &Effective) -> Value {
    let mut v = json!({"urn": e.urn, "grant": e.grant, "grantedAtPosition": e.position});
    v["source"] = match &e.via_group {
        None => json!({"type": "direct"}),
        Some((id, name)) => json!({"type": "group", "groupId": id, "groupDisplayName": name}),
    };
    v
}

fn access_json(kv: &impl KvRead, t: &str, user: &UserDoc, limit: usize) -> Result<Value, ApiError> {
    let grants: Vec<Value> = access::effective(kv, t, &user.id, limit)?.iter().map(grant_json).collect();
    Ok(json!({"userId": user.id, "userName": user.user_name(), "active": user.is_active(), "grants": grants}))
}

async fn user_access(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    blocking_read(&s, move |s| user_access_now(s, &caller, id, &p)).await
}

fn user_access_now(
    s: &AppState,
    caller: &Caller,
    id: String,
    p: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let by = parse_by(p.get("by").map(String::as_str))?;
    let view = s.store.view();
    let t = caller.tenant();
    let body = find_user(&view, t, &id, by)?.map(|u| access_json(&view, t, &u, s.cfg.max_scan)).transpose()?;
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    let body = body.ok_or(ApiError::Refused(Refusal::NotFound { kind: ResourceKind::User, id }))?;
    Ok(Json(body).into_response())
}

/// `GET /api/v1/access/check?user=U&role=R&environment=E[&by=B]`: the answer and the reason.
/// Without `role`, any role or entitlement on the environment counts. An environment that does
/// not exist gives no access to anyone.
async fn check(
    State(s): State<AppState>,
    caller: Caller,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    blocking_read(&s, move |s| check_now(s, &caller, &p)).await
}

fn check_now(s: &AppState, caller: &Caller, p: &HashMap<String, String>) -> Result<Response, ApiError> {
    let user =
        p.get("user").filter(|u| !u.is_empty()).ok_or_else(|| SchemaError::invalid_value("'user' is required"))?;
    let env = p
        .get("environment")
        .filter(|e| !e.is_empty())
        .ok_or_else(|| SchemaError::invalid_value("'environment' is required"))?;
    let role = p.get("role").filter(|r| !r.is_empty()).map(String::as_str);
    let by = parse_by(p.get("by").map(String::as_str))?;
    let view = s.store.view();
    let t = caller.tenant();
    let answer = decide_access(&view, t, &s.cfg, user, by, role, env)?;
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    Ok(Json(answer).into_response())
}

fn decide_access(
    kv: &impl KvRead,
    t: &str,
    cfg: &crate::config::ServeConfig,
    user: &str,
    by: UserBy,
    role: Option<&str>,
    env: &str,
) -> Result<Value, ApiError> {
    let Some(u) = find_user(kv, t, user, by)? else {
        // With SCIM provisioning on, nobody gets in before the IdP provisions them.
        return Ok(json!({"allowed": false, "reason": format!("user {user:?} is not provisioned")}));
    };
    if !u.is_active() {
        return Ok(json!({"allowed": false, "userId": u.id, "reason": "the user is deactivated"}));
    }
    let Some(scope) = access::scope(kv, t, ScopeKind::Environment, env) else {
        return Ok(json!({"allowed": false, "userId": u.id, "reason": format!("environment {env:?} does not exist")}));
    };
    let environment = scope.as_environment(&cfg.default_organization);
    let effective = access::effective(kv, t, &u.id, cfg.max_scan)?;
    Ok(match effective.iter().find(|e| access::allows(e, role, environment)) {
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
    })
}

fn scope_json(d: &ScopeDoc, default_org: &str) -> Value {
    let mut v = json!({"id": d.slug, "slug": d.slug, "kind": d.kind, "created": d.created, "createdBy": d.created_by, "createdAtPosition": d.position});
    match d.kind {
        ScopeKind::Environment | ScopeKind::ResourceGroup => {
            v["organization"] = json!(d.organization.as_deref().unwrap_or(default_org));
        }
        ScopeKind::Organization => {}
    }
    v
}

async fn list_scopes(State(s): State<AppState>, caller: Caller, kind: ScopeKind) -> Result<Response, ApiError> {
    let view = s.store.view();
    let default_org = &s.cfg.default_organization;
    let items: Vec<Value> =
        access::scopes(&view, caller.tenant(), kind).iter().map(|d| scope_json(d, default_org)).collect();
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
    blocking_read(&s, move |s| environment_members_now(s, &caller, &name)).await
}

fn environment_members_now(s: &AppState, caller: &Caller, name: &str) -> Result<Response, ApiError> {
    let view = s.store.view();
    let t = caller.tenant();
    let Some(env) = access::scope(&view, t, ScopeKind::Environment, &name) else {
        return Err(ApiError::NotFound(format!("environment {name:?} not found")));
    };
    let default_org = &s.cfg.default_organization;
    let members: Vec<Value> = access::environment_members(&view, t, env.as_environment(default_org), s.cfg.max_scan)?
        .into_iter()
        .filter_map(|(uid, e)| query::user(&view, t, &uid).map(|u| (u, e)))
        .map(|(u, e)| json!({"userId": u.id, "userName": u.user_name(), "active": u.is_active(), "grant": grant_json(&e)}))
        .collect();
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    Ok(Json(json!({"environment": scope_json(&env, default_org), "totalResults": members.len(), "members": members}))
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
    blocking_read(&s, move |s| host_user_now(s, &caller, &host_id)).await
}

fn host_user_now(s: &AppState, caller: &Caller, host_id: &str) -> Result<Response, ApiError> {
    let view = s.store.view();
    let t = caller.tenant();
    let user = access::host_user(&view, t, host_id).and_then(|u| query::user(&view, t, &u));
    let body = match user {
        None => None,
        Some(u) => Some(host_json(&view, t, &u, host_id, s.cfg.max_scan)?),
    };
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    let body = body.ok_or_else(|| ApiError::NotFound(format!("host {host_id:?} is not linked to a user")))?;
    Ok(Json(body).into_response())
}

/// The user a host belongs to: its effective access, direct groups and department.
fn host_json(kv: &impl KvRead, t: &str, u: &UserDoc, host_id: &str, limit: usize) -> Result<Value, ApiError> {
    let groups: Vec<Value> = query::groups_of(kv, t, &u.id, limit)
        .into_iter()
        .filter_map(|g| query::group(kv, t, &g))
        .map(|g| json!({"value": g.id, "display": g.display_name}))
        .collect();
    let department = u
        .attributes
        .get(scimlog_schemas::urn::ENTERPRISE_USER)
        .and_then(|e| e.get("department"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut v = access_json(kv, t, u, limit)?;
    v["hostId"] = json!(host_id);
    v["displayName"] = json!(u.display());
    v["groups"] = Value::Array(groups);
    v["department"] = department;
    Ok(v)
}

fn may_link_hosts(caller: &Caller) -> Result<(), ApiError> {
    if caller.principal.role.may_link_hosts() {
        return Ok(());
    }
    Err(ApiError::Forbidden("linking hosts needs a hosts or admin token (scimlog token create --role hosts)"))
}

/// `PUT /api/v1/hosts/{host_id}/user {"user": "<id | userName | externalId>", "by": "..."}`.
async fn link_host(
    State(s): State<AppState>,
    caller: Caller,
    Path(host_id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Response, ApiError> {
    may_link_hosts(&caller)?;
    valid_host_id(&host_id)?;
    let user = body
        .get("user")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| SchemaError::invalid_value("'user' (id, userName or externalId) is required"))?
        .to_string();
    let by = match body.get("by") {
        None | Some(Value::Null) => UserBy::Any,
        Some(Value::String(b)) => parse_by(Some(b))?,
        Some(other) => return Err(SchemaError::invalid_value(format!("by {other} is not a string")).into()),
    };
    s.writer.submit(caller.origin(), Command::LinkHost { host_id: host_id.clone(), user, by }).await?;
    host_user(State(s), caller, Path(host_id)).await
}

async fn unlink_host(
    State(s): State<AppState>,
    caller: Caller,
    Path(host_id): Path<String>,
) -> Result<Response, ApiError> {
    may_link_hosts(&caller)?;
    valid_host_id(&host_id)?;
    s.writer.submit(caller.origin(), Command::UnlinkHost { host_id }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
