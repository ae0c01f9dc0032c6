//! The access API (`/api/v1`, any token of the tenant): what applications ask the directory.
//! A user may be named by SCIM id, userName or externalId, since an application knows the person
//! from its SSO login: `by=id|userName|externalId` says which; without it, a name that matches two
//! different users is answered 409, never guessed. Host links are written by `hosts` (or
//! `admin`) tokens only: they decide whose access a device carries.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use scimlog_projections::access::{self, Effective, GrantRecord, ScopeDoc, TooLarge, Via};
use scimlog_projections::query::UserBy;
use scimlog_projections::{query, KvRead, UserDoc, UserHead};
use scimlog_schemas::access::{Grant, ScopeKind};
use scimlog_schemas::{MemberType, ResourceKind, SchemaError};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ScimErrorDoc};
use super::extract::{Caller, Params, ScimBody};
use super::{blocking_read, AppState};
use crate::access_cache::GroupCache;
use crate::command::{Command, Refusal};
use crate::log::StateView;

/// The access API's routes, each described in the OpenAPI document by its `#[utoipa::path]`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(user_access))
        .routes(routes!(check))
        .routes(routes!(list_environments))
        .routes(routes!(environment_members))
        .routes(routes!(list_resource_groups))
        .routes(routes!(list_organizations))
        .routes(routes!(host_user, link_host, unlink_host))
}

/// A grant a user holds, and where it comes from.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantView {
    /// The role or entitlement URN as the IdP sent it.
    urn: String,
    /// The URN, parsed.
    grant: Grant,
    /// The log position of the event that granted it.
    granted_at_position: u64,
    source: GrantSource,
}

/// Held directly, or through membership of a group (nested groups included).
#[derive(Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum GrantSource {
    Direct,
    Group {
        #[serde(rename = "groupId")]
        group_id: String,
        #[serde(rename = "groupDisplayName")]
        group_display_name: String,
    },
}

impl GrantView {
    /// The grant `g` as the walk over a user's grants meets it.
    fn met(g: &GrantRecord, via: Via<'_>) -> GrantView {
        GrantView::of(&g.urn, &g.grant, g.position, via)
    }

    fn of(urn: &str, grant: &Grant, position: u64, via: Via<'_>) -> GrantView {
        let source = match via {
            Via::Direct => GrantSource::Direct,
            Via::Group { id, display_name } => {
                GrantSource::Group { group_id: id.to_string(), group_display_name: display_name.to_string() }
            }
        };
        GrantView { urn: urn.to_string(), grant: grant.clone(), granted_at_position: position, source }
    }
}

impl From<&Effective> for GrantView {
    fn from(e: &Effective) -> GrantView {
        GrantView::of(&e.urn, &e.grant, e.position, e.via())
    }
}

/// A user's effective roles and entitlements.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserAccess {
    user_id: String,
    user_name: String,
    active: bool,
    grants: Vec<GrantView>,
}

/// The answer to "may this user do this here", with the reason.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessDecision {
    allowed: bool,
    /// Absent when the user is not provisioned.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    reason: String,
    /// The grant that allows it (only when `allowed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    grant: Option<GrantView>,
}

/// An organization, environment or resource group: created when a grant first names it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScopeView {
    id: String,
    slug: String,
    kind: ScopeKind,
    created: DateTime<Utc>,
    /// The token whose request created it.
    created_by: String,
    created_at_position: u64,
    /// The organization an environment or resource group belongs to (absent for organizations).
    #[serde(skip_serializing_if = "Option::is_none")]
    organization: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ScopeList {
    #[serde(rename = "totalResults")]
    total_results: usize,
    #[serde(rename = "Resources")]
    resources: Vec<ScopeView>,
}

/// Who holds access to an environment, and through which grant.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentMembers {
    environment: ScopeView,
    total_results: usize,
    members: Vec<Member>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    user_id: String,
    user_name: String,
    active: bool,
    grant: GrantView,
}

/// The user a host (device) belongs to, with its access, direct groups and department.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostUser {
    host_id: String,
    display_name: String,
    #[serde(flatten)]
    access: UserAccess,
    groups: Vec<GroupRef>,
    /// The enterprise extension's `department`, or null.
    department: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct GroupRef {
    value: String,
    display: String,
}

/// The body of `PUT /hosts/{host_id}/user`.
#[derive(ToSchema)]
#[allow(dead_code)] // Parsed by hand (`link_host`) so that each fault names its value.
pub struct HostLink {
    /// The user's id, userName or externalId.
    user: String,
    /// How `user` names the user: `id`, `userName`, `externalId` or `any` (the default).
    by: Option<String>,
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
/// The user an access answer is about: its head only (id, active, userName).
fn find_user(kv: &impl KvRead, t: &str, name: &str, by: UserBy) -> Result<Option<UserHead>, ApiError> {
    // By id the document is the lookup: read (and decode) it once.
    if matches!(by, UserBy::Id) {
        return Ok(query::user_head(kv, t, name));
    }
    match query::find_user(kv, t, name, by) {
        Ok(id) => Ok(id.and_then(|id| query::user_head(kv, t, &id))),
        Err(ambiguous) => Err(Refusal::Uniqueness(ambiguous.to_string()).into()),
    }
}

/// Why an access answer was not given: its expansion met more memberships than the attempt's
/// budget (see [`expand_access`]), or it failed.
enum Expand {
    TooLarge(TooLarge),
    Failed(ApiError),
}

impl From<TooLarge> for Expand {
    fn from(e: TooLarge) -> Self {
        Expand::TooLarge(e)
    }
}
impl From<ApiError> for Expand {
    fn from(e: ApiError) -> Self {
        Expand::Failed(e)
    }
}
impl From<SchemaError> for Expand {
    fn from(e: SchemaError) -> Self {
        Expand::Failed(e.into())
    }
}
impl From<Expand> for ApiError {
    fn from(e: Expand) -> Self {
        match e {
            Expand::TooLarge(e) => e.into(),
            Expand::Failed(e) => e,
        }
    }
}

/// Computes an access answer with a budget of memberships: first on the request's own worker
/// with `--access-inline-memberships` (a user in a few groups, nested a few levels: it reads
/// about what a GET of the user with its groups reads, and saves the blocking pool's hand-off,
/// a third of a check's CPU), then, when that budget was not enough, on the blocking pool with
/// the whole `--max-scan`, so that a large expansion never holds a worker that answers other
/// requests.
async fn expand_access<T: Send + 'static>(
    s: AppState,
    work: impl Fn(&AppState, usize) -> Result<T, Expand> + Send + 'static,
) -> Result<T, ApiError> {
    let inline = s.cfg.access_inline_memberships.min(s.cfg.max_scan);
    if inline > 0 {
        match work(&s, inline) {
            // Larger than a worker's share: the pool answers it with the whole budget.
            Err(Expand::TooLarge(_)) if inline < s.cfg.max_scan => {}
            done => {
                s.metrics.access_answered("worker");
                return done.map_err(ApiError::from);
            }
        }
    }
    s.metrics.access_answered("pool");
    blocking_read(&s, move |s| work(s, s.cfg.max_scan).map_err(ApiError::from)).await
}

fn user_access_of(
    view: &StateView<'_>,
    groups: &GroupCache,
    t: &str,
    user: &UserHead,
    budget: usize,
) -> Result<UserAccess, Expand> {
    let mut grants = Vec::new();
    groups.walk(view, t, user, budget, &mut |g, via| grants.push(GrantView::met(g, via)))?;
    Ok(UserAccess {
        user_id: user.id.clone(),
        user_name: user.user_name().to_string(),
        active: user.is_active(),
        grants,
    })
}

/// A user's effective roles and entitlements, each with where it comes from.
#[utoipa::path(
    get, path = "/users/{id}/access", tag = "access",
    params(
        ("id" = String, Path, description = "The user's id, userName or externalId"),
        ("by" = Option<String>, Query, description = "How `id` names the user: id, userName, externalId or any (default: any; two different users matching is a 409)"),
    ),
    responses(
        (status = 200, description = "The user's effective access", body = UserAccess),
        (status = 404, description = "No such user", body = ScimErrorDoc),
        (status = 409, description = "The name matches two different users", body = ScimErrorDoc),
    ),
)]
async fn user_access(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    p: Params,
) -> Result<Json<UserAccess>, ApiError> {
    expand_access(s, move |s, budget| user_access_now(s, &caller, &id, &p, budget)).await.map(Json)
}

fn user_access_now(s: &AppState, caller: &Caller, id: &str, p: &Params, budget: usize) -> Result<UserAccess, Expand> {
    let by = parse_by(p.get("by"))?;
    let view = s.store.view();
    let t = caller.tenant();
    let body = find_user(&view, t, id, by)?.map(|u| user_access_of(&view, &s.groups, t, &u, budget)).transpose()?;
    if let Some(e) = view.take_error() {
        return Err(ApiError::from(e).into());
    }
    Ok(body.ok_or(ApiError::Refused(Refusal::NotFound { kind: ResourceKind::User, id: id.to_string() }))?)
}

/// Whether a user may act in an environment, and why.
///
/// Without `role`, any role or entitlement on the environment counts. An environment that does
/// not exist gives no access to anyone; nor does a user who is not provisioned or deactivated.
#[utoipa::path(
    get, path = "/access/check", tag = "access",
    params(
        ("user" = String, Query, description = "The user's id, userName or externalId"),
        ("environment" = String, Query, description = "The environment's id or slug"),
        ("role" = Option<String>, Query, description = "The role asked for; without it, any role or entitlement on the environment counts"),
        ("by" = Option<String>, Query, description = "How `user` names the user: id, userName, externalId or any (default)"),
    ),
    responses(
        (status = 200, description = "Allowed or not, and why", body = AccessDecision),
        (status = 400, description = "A parameter is missing or invalid", body = ScimErrorDoc),
        (status = 409, description = "The name matches two different users", body = ScimErrorDoc),
    ),
)]
async fn check(State(s): State<AppState>, caller: Caller, p: Params) -> Result<Json<AccessDecision>, ApiError> {
    expand_access(s, move |s, budget| check_now(s, &caller, &p, budget)).await.map(Json)
}

fn check_now(s: &AppState, caller: &Caller, p: &Params, budget: usize) -> Result<AccessDecision, Expand> {
    let user =
        p.get("user").filter(|u| !u.is_empty()).ok_or_else(|| SchemaError::invalid_value("'user' is required"))?;
    let env = p
        .get("environment")
        .filter(|e| !e.is_empty())
        .ok_or_else(|| SchemaError::invalid_value("'environment' is required"))?;
    let role = p.get("role").filter(|r| !r.is_empty());
    let by = parse_by(p.get("by"))?;
    let view = s.store.view();
    let t = caller.tenant();
    let answer = decide_access(&view, &s.groups, t, &s.cfg, user, by, role, env, budget)?;
    if let Some(e) = view.take_error() {
        return Err(ApiError::from(e).into());
    }
    Ok(answer)
}

fn refused(user_id: Option<&str>, reason: String) -> AccessDecision {
    AccessDecision { allowed: false, user_id: user_id.map(str::to_string), reason, grant: None }
}

#[allow(clippy::too_many_arguments)]
fn decide_access(
    kv: &StateView<'_>,
    groups: &GroupCache,
    t: &str,
    cfg: &crate::config::ServeConfig,
    user: &str,
    by: UserBy,
    role: Option<&str>,
    env: &str,
    budget: usize,
) -> Result<AccessDecision, Expand> {
    let Some(u) = find_user(kv, t, user, by)? else {
        // With SCIM provisioning on, nobody gets in before the IdP provisions them.
        return Ok(refused(None, format!("user {user:?} is not provisioned")));
    };
    if !u.is_active() {
        return Ok(refused(Some(&u.id), "the user is deactivated".into()));
    }
    let Some(scope) = groups.scope(kv, t, ScopeKind::Environment, env) else {
        return Ok(refused(Some(&u.id), format!("environment {env:?} does not exist")));
    };
    let environment = scope.as_environment(&cfg.default_organization);
    // The first grant that allows, in the order `/access` lists them; the walk goes on to the
    // end (the same budget refuses the same users), but copies nothing else.
    let mut first: Option<(String, GrantView)> = None;
    groups.walk(kv, t, &u, budget, &mut |g, via| {
        if first.is_none() && access::record_allows(&g.urn, &g.grant, role, environment) {
            let how = match via {
                Via::Direct => "held directly".to_string(),
                Via::Group { display_name, .. } => format!("through group {display_name:?}"),
            };
            first = Some((format!("{} {how}", g.urn), GrantView::met(g, via)));
        }
    })?;
    Ok(match first {
        Some((reason, grant)) => AccessDecision { allowed: true, user_id: Some(u.id), reason, grant: Some(grant) },
        None => refused(
            Some(&u.id),
            match role {
                Some(r) => format!("no grant gives role {r:?} in environment {env:?}"),
                None => format!("no grant gives access to environment {env:?}"),
            },
        ),
    })
}

fn scope_view(d: &ScopeDoc, default_org: &str) -> ScopeView {
    let organization = match d.kind {
        ScopeKind::Environment | ScopeKind::ResourceGroup => {
            Some(d.organization.clone().unwrap_or_else(|| default_org.to_string()))
        }
        ScopeKind::Organization => None,
    };
    ScopeView {
        id: d.slug.clone(),
        slug: d.slug.clone(),
        kind: d.kind,
        created: d.created,
        created_by: d.created_by.clone(),
        created_at_position: d.position,
        organization,
    }
}

async fn list_scopes(s: AppState, caller: Caller, kind: ScopeKind) -> Result<Json<ScopeList>, ApiError> {
    let view = s.store.view();
    let default_org = &s.cfg.default_organization;
    let resources: Vec<ScopeView> =
        access::scopes(&view, caller.tenant(), kind).iter().map(|d| scope_view(d, default_org)).collect();
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    Ok(Json(ScopeList { total_results: resources.len(), resources }))
}

/// The tenant's environments (created when a grant first names one).
#[utoipa::path(get, path = "/environments", tag = "scopes",
    responses((status = 200, description = "Every environment", body = ScopeList)))]
async fn list_environments(State(s): State<AppState>, caller: Caller) -> Result<Json<ScopeList>, ApiError> {
    list_scopes(s, caller, ScopeKind::Environment).await
}

/// The tenant's resource groups.
#[utoipa::path(get, path = "/resource-groups", tag = "scopes",
    responses((status = 200, description = "Every resource group", body = ScopeList)))]
async fn list_resource_groups(State(s): State<AppState>, caller: Caller) -> Result<Json<ScopeList>, ApiError> {
    list_scopes(s, caller, ScopeKind::ResourceGroup).await
}

/// The tenant's organizations.
#[utoipa::path(get, path = "/organizations", tag = "scopes",
    responses((status = 200, description = "Every organization", body = ScopeList)))]
async fn list_organizations(State(s): State<AppState>, caller: Caller) -> Result<Json<ScopeList>, ApiError> {
    list_scopes(s, caller, ScopeKind::Organization).await
}

/// Everyone with access to an environment, and the grant that gives it.
#[utoipa::path(
    get, path = "/environments/{name}/members", tag = "scopes",
    params(("name" = String, Path, description = "The environment's id or slug")),
    responses(
        (status = 200, description = "The environment and its members", body = EnvironmentMembers),
        (status = 404, description = "No such environment", body = ScimErrorDoc),
    ),
)]
async fn environment_members(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<EnvironmentMembers>, ApiError> {
    blocking_read(&s, move |s| environment_members_now(s, &caller, &name)).await.map(Json)
}

fn environment_members_now(s: &AppState, caller: &Caller, name: &str) -> Result<EnvironmentMembers, ApiError> {
    let view = s.store.view();
    let t = caller.tenant();
    let Some(env) = access::scope(&view, t, ScopeKind::Environment, name) else {
        return Err(ApiError::NotFound(format!("environment {name:?} not found")));
    };
    let default_org = &s.cfg.default_organization;
    let members: Vec<Member> = access::environment_members(&view, t, env.as_environment(default_org), s.cfg.max_scan)?
        .into_iter()
        .filter_map(|(uid, e)| query::user(&view, t, &uid).map(|u| (u, e)))
        .map(|(u, e)| Member {
            user_id: u.id.clone(),
            user_name: u.user_name().to_string(),
            active: u.is_active(),
            grant: (&e).into(),
        })
        .collect();
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    Ok(EnvironmentMembers { environment: scope_view(&env, default_org), total_results: members.len(), members })
}

fn valid_host_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control()) {
        return Err(SchemaError::invalid_value(format!("host id {id:?} must be 1 to 128 printable characters")).into());
    }
    Ok(())
}

/// The user a host (device) is linked to, with the access the device carries.
#[utoipa::path(
    get, path = "/hosts/{host_id}/user", tag = "hosts",
    params(("host_id" = String, Path, description = "The host's id (1 to 128 printable characters)")),
    responses(
        (status = 200, description = "The linked user", body = HostUser),
        (status = 404, description = "The host is not linked to a user", body = ScimErrorDoc),
    ),
)]
async fn host_user(
    State(s): State<AppState>,
    caller: Caller,
    Path(host_id): Path<String>,
) -> Result<Json<HostUser>, ApiError> {
    blocking_read(&s, move |s| host_user_now(s, &caller, &host_id)).await.map(Json)
}

fn host_user_now(s: &AppState, caller: &Caller, host_id: &str) -> Result<HostUser, ApiError> {
    let view = s.store.view();
    let t = caller.tenant();
    let user = access::host_user(&view, t, host_id).and_then(|u| query::user(&view, t, &u));
    let body = match user {
        None => None,
        Some(u) => Some(host_view(&view, &s.groups, t, &u, host_id, s.cfg.max_scan)?),
    };
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    body.ok_or_else(|| ApiError::NotFound(format!("host {host_id:?} is not linked to a user")))
}

/// The user a host belongs to: its effective access, direct groups and department.
fn host_view(
    kv: &StateView<'_>,
    cache: &GroupCache,
    t: &str,
    u: &UserDoc,
    host_id: &str,
    limit: usize,
) -> Result<HostUser, ApiError> {
    let groups = query::groups_of(kv, t, MemberType::User, &u.id, limit)
        .into_iter()
        .filter_map(|g| query::group(kv, t, &g))
        .map(|g| GroupRef { value: g.id, display: g.display_name })
        .collect();
    let department = u
        .attributes
        .get(scimlog_schemas::urn::ENTERPRISE_USER)
        .and_then(|e| e.get("department"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(HostUser {
        host_id: host_id.to_string(),
        display_name: u.display().to_string(),
        access: user_access_of(kv, cache, t, &u.head(), limit)?,
        groups,
        department,
    })
}

fn may_link_hosts(caller: &Caller) -> Result<(), ApiError> {
    if caller.principal.role.may_link_hosts() {
        return Ok(());
    }
    Err(ApiError::Forbidden("linking hosts needs a hosts or admin token (scimlog token create --role hosts)"))
}

/// Links a host to a user (a `hosts` or `admin` token): the device then carries that user's access.
#[utoipa::path(
    put, path = "/hosts/{host_id}/user", tag = "hosts",
    params(("host_id" = String, Path, description = "The host's id (1 to 128 printable characters)")),
    request_body = HostLink,
    responses(
        (status = 200, description = "Linked; the linked user", body = HostUser),
        (status = 400, description = "The body or the host id is invalid", body = ScimErrorDoc),
        (status = 403, description = "The token's role may not link hosts", body = ScimErrorDoc),
        (status = 404, description = "No such user", body = ScimErrorDoc),
    ),
)]
async fn link_host(
    State(s): State<AppState>,
    caller: Caller,
    Path(host_id): Path<String>,
    ScimBody(body): ScimBody,
) -> Result<Json<HostUser>, ApiError> {
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

/// Removes a host's link (a `hosts` or `admin` token).
#[utoipa::path(
    delete, path = "/hosts/{host_id}/user", tag = "hosts",
    params(("host_id" = String, Path, description = "The host's id")),
    responses(
        (status = 204, description = "Unlinked"),
        (status = 403, description = "The token's role may not link hosts", body = ScimErrorDoc),
        (status = 404, description = "The host is not linked to a user", body = ScimErrorDoc),
    ),
)]
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
