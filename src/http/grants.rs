//! `/Roles` and `/Entitlements` (draft-ietf-scim-roles-entitlements): the roles and
//! entitlements the directory knows, read-only, listed, filtered, sorted and paged like Users, so
//! that an IdP can offer its admins the values in use instead of free text.
//!
//! A grant is known while a user or a group holds it directly (the `gv` read model); its
//! resource says how many of each (`urn:scimlog:...:holders:2.0:Grant`). Its `id` is its URN.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use scimlog_projections::access::{self, KnownGrant};
use scimlog_schemas::access::Grant;
use scimlog_schemas::filter::{compare_sort_keys, sort_value};
use scimlog_schemas::registry::{registry, ResourceSchema};
use scimlog_schemas::{urn, SchemaError};
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{Caller, ListQuery, Paging, Params};
use super::render::{list_response, Rendered};
use super::{scim_response, scim_text, AppState};

/// Which of the two resource types.
#[derive(Clone, Copy, Debug)]
enum GrantKind {
    Role,
    Entitlement,
}

impl GrantKind {
    /// The attribute of Users and Groups that holds them.
    fn attr(self) -> &'static str {
        match self {
            GrantKind::Role => "roles",
            GrantKind::Entitlement => "entitlements",
        }
    }
    fn resource_type(self) -> &'static str {
        match self {
            GrantKind::Role => "Role",
            GrantKind::Entitlement => "Entitlement",
        }
    }
    fn endpoint(self) -> &'static str {
        match self {
            GrantKind::Role => "Roles",
            GrantKind::Entitlement => "Entitlements",
        }
    }
    fn schema(self) -> &'static ResourceSchema {
        match self {
            GrantKind::Role => &registry().role,
            GrantKind::Entitlement => &registry().entitlement,
        }
    }
}

pub fn router() -> Router<AppState> {
    let mut r = Router::new();
    for kind in [GrantKind::Role, GrantKind::Entitlement] {
        r = r
            .route(
                &format!("/{}", kind.endpoint()),
                get(move |State(s): State<AppState>, caller: Caller, p: Params| async move {
                    let q = ListQuery::from_params(&p, &s)?;
                    super::blocking_read(&s, move |s| list(s, &caller, kind, q)).await
                })
                .fallback(super::method_not_allowed),
            )
            .route(
                &format!("/{}/{{id}}", kind.endpoint()),
                get(move |State(s): State<AppState>, caller: Caller, Path(id): Path<String>| async move {
                    one(&s, &caller, kind, &id)
                })
                .fallback(super::method_not_allowed),
            );
    }
    r
}

/// The grant in words, and the kind of scope it applies to.
fn describe(kind: GrantKind, urn: &str) -> (String, &'static str) {
    match access::parse_any(kind.attr(), urn) {
        Some(Grant::Role { scope_kind, scope, role }) if scope == "*" => {
            (format!("{role} in every {}", scope_kind.as_str()), scope_kind.as_str())
        }
        Some(Grant::Role { scope_kind, scope, role }) => {
            (format!("{role} in {} {scope}", scope_kind.as_str()), scope_kind.as_str())
        }
        Some(Grant::Entitlement { scope_kind, name }) => {
            (format!("{} {name}", scope_kind.as_str()), scope_kind.as_str())
        }
        // Only URNs of the grammar are ever known; shown as they are otherwise.
        None => (urn.to_string(), "unknown"),
    }
}

fn render(base: &str, kind: GrantKind, g: &KnownGrant) -> Value {
    let (display, scope_type) = describe(kind, &g.urn);
    json!({
        "schemas": [kind.schema().core_urn, urn::GRANT_HOLDERS],
        "id": g.urn,
        "value": g.urn,
        "display": display,
        "type": scope_type,
        "supported": true,
        "limitedAssignmentsPermitted": false,
        urn::GRANT_HOLDERS: {"users": g.users, "groups": g.groups},
        "meta": {"resourceType": kind.resource_type(), "location": format!("{base}/{}/{}", kind.endpoint(), g.urn)},
    })
}

fn one(state: &AppState, caller: &Caller, kind: GrantKind, id: &str) -> Result<Response, ApiError> {
    let view = state.store.view();
    let found = access::known_grant(&view, caller.tenant(), kind.attr(), id);
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    let g = found.ok_or_else(|| {
        ApiError::NotFound(format!("{} {id:?} is not held by any user or group", kind.resource_type().to_lowercase()))
    })?;
    Ok(scim_response(StatusCode::OK, &render(&state.scim_base, kind, &g)))
}

fn list(state: &AppState, caller: &Caller, kind: GrantKind, q: ListQuery) -> Result<Response, ApiError> {
    let schema = kind.schema();
    if let Some(f) = &q.filter {
        f.check_types(schema)?;
    }
    let start = match q.paging {
        Paging::Index { start } => start,
        Paging::Cursor(_) => {
            return Err(ApiError::Invalid(SchemaError::invalid_value(format!(
                "/{} pages by startIndex and count; cursor paging is offered for /Users and /Groups",
                kind.endpoint()
            ))))
        }
    };
    let limit = state.cfg.max_scan;
    let view = state.store.view();
    let known = access::known_grants(&view, caller.tenant(), kind.attr(), limit.saturating_add(1));
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    if known.len() > limit {
        return Err(scimlog_projections::query::QueryError::ListTooLarge { limit }.into());
    }
    let mut docs: Vec<Value> = known
        .iter()
        .map(|g| render(&state.scim_base, kind, g))
        .filter(|d| q.filter.as_ref().is_none_or(|f| f.matches(schema, d)))
        .collect();
    if let Some((path, descending)) = &q.sort {
        docs.sort_by(|a, b| {
            let (def, x) = sort_value(schema, path, a);
            let (_, y) = sort_value(schema, path, b);
            compare_sort_keys(def, x, y, *descending)
        });
    }
    let total = docs.len();
    let page: Vec<Rendered> =
        docs.into_iter().skip(start - 1).take(q.count).map(|d| Rendered::of(&q.projection.apply(schema, d))).collect();
    Ok(scim_text(StatusCode::OK, list_response(total, start, page)))
}
