//! The Events page (the tenant's log, newest first, filtered by type, resource, token and
//! time; each event with its hash and its link to the one before) and the Requests page (the
//! recent SCIM and `/api/v1` requests of the in-memory request log, filterable to errors).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use scimlog_projections::query;
use scimlog_schemas::event::{Event, EventBody, EventType};
use scimlog_schemas::ResourceKind;
use serde::Deserialize;

use super::session::Session;
use super::{render, when, ConsoleError, Nav};
use crate::http::{blocking_read, AppState};

const PAGE_ROWS: usize = 50;
/// Events read back per step of a page's scan.
const SCAN_STEP: u64 = 512;

/// One line saying what an event did, naming users and groups by `name_of(id)`.
pub fn summary(e: &Event, name_of: &dyn Fn(&str) -> String) -> String {
    let keys = |m: &serde_json::Map<String, serde_json::Value>| m.keys().cloned().collect::<Vec<_>>().join(", ");
    let changed = |changed: &serde_json::Map<String, serde_json::Value>, removed: &[String]| match removed.is_empty() {
        true => format!("changed {}", keys(changed)),
        false => format!("changed {}; removed {}", keys(changed), removed.join(", ")),
    };
    match &e.body {
        EventBody::UserCreated { attributes, .. } => {
            format!("created {}", attributes.get("userName").map(super::show).unwrap_or_default())
        }
        EventBody::UserUpdated { changed: c, removed } => changed(c, removed),
        EventBody::UserDeactivated {} => "deactivated".into(),
        EventBody::UserReactivated {} => "reactivated".into(),
        EventBody::UserDeleted {} => "deleted".into(),
        EventBody::UserErased { reason } => format!("erased: {reason}"),
        EventBody::GroupCreated { display_name, .. } => format!("created {display_name}"),
        EventBody::GroupRenamed { display_name, previous_display_name } => {
            format!("renamed {previous_display_name} → {display_name}")
        }
        EventBody::GroupUpdated { changed: c, removed } => changed(c, removed),
        EventBody::GroupDeleted {} => "deleted".into(),
        EventBody::GroupMemberAdded { member_id, .. } => {
            format!("{} joined {}", name_of(member_id), name_of(&e.resource_id))
        }
        EventBody::GroupMemberRemoved { member_id, .. } => {
            format!("{} left {}", name_of(member_id), name_of(&e.resource_id))
        }
        EventBody::RoleAssigned { role, .. } => format!("role {role} assigned"),
        EventBody::RoleRevoked { role } => format!("role {role} revoked"),
        EventBody::EntitlementGranted { entitlement, .. } => format!("entitlement {entitlement} granted"),
        EventBody::EntitlementRevoked { entitlement } => format!("entitlement {entitlement} revoked"),
        EventBody::OrganizationCreated { slug } => format!("organization {slug}"),
        EventBody::EnvironmentCreated { slug, .. } => format!("environment {slug}"),
        EventBody::ResourceGroupCreated { slug, .. } => format!("resource group {slug}"),
        EventBody::HostUserLinked { user_id } => format!("host linked to {}", name_of(user_id)),
        EventBody::HostUserUnlinked { user_id } => format!("host unlinked from {}", name_of(user_id)),
        EventBody::TokenCreated { role } => format!("token created ({role})"),
        EventBody::TokenRevoked {} => "token revoked".into(),
    }
}

/// The console page of an event's resource, if it has one.
fn resource_page(e: &Event) -> Option<&'static str> {
    match e.resource_type {
        ResourceKind::User => Some("users"),
        ResourceKind::Group => Some("groups"),
        _ => None,
    }
}

#[derive(Deserialize, Default)]
pub struct EventParams {
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    before: Option<u64>,
}

pub struct EventRow {
    position: u64,
    at: String,
    event_type: &'static str,
    resource_type: String,
    resource_id: String,
    page: Option<&'static str>,
    actor: String,
    summary: String,
}

#[derive(Template)]
#[template(path = "console/events.html")]
struct EventsPage {
    nav: Nav,
    types: Vec<&'static str>,
    p: EventParams,
    rows: Vec<EventRow>,
    /// Where the next (older) page starts, when there is more.
    next: Option<u64>,
    scanned: usize,
    head: u64,
}

/// A time filter: RFC 3339, or what a `datetime-local` input sends (read as UTC).
fn parse_time(name: &str, v: &str) -> Result<Option<DateTime<Utc>>, ConsoleError> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    super::directory::parse_time(v.trim()).map(Some).ok_or_else(|| {
        ConsoleError::BadRequest(format!("{name} {v:?} is not a time: use 2026-11-27T19:30 (UTC) or RFC 3339"))
    })
}

fn events_page(s: &AppState, session: &Session, p: EventParams) -> Result<EventsPage, ConsoleError> {
    let t = session.tenant();
    let event_type = match p.event_type.as_str() {
        "" => None,
        name => Some(
            EventType::ALL
                .into_iter()
                .find(|ty| ty.as_str() == name)
                .ok_or_else(|| ConsoleError::BadRequest(format!("no event type {name:?}")))?,
        ),
    };
    let (since, until) = (parse_time("since", &p.since)?, parse_time("until", &p.until)?);
    let head = s.store.head()?.position;
    let view = s.store.view();
    let name_of = |id: &str| {
        query::user(&view, t, id)
            .map(|u| u.user_name().to_string())
            .or_else(|| query::group(&view, t, id).map(|g| g.display_name))
            .unwrap_or_else(|| id.to_string())
    };
    let wanted = |e: &Event| {
        e.tenant == t
            && event_type.is_none_or(|ty| e.body.event_type() == ty)
            && (p.resource.is_empty() || e.resource_id == p.resource)
            && (p.token.is_empty() || e.actor == p.token)
            && since.is_none_or(|at| e.recorded_at >= at)
            && until.is_none_or(|at| e.recorded_at <= at)
    };
    // Newest first: steps backwards from `before` (exclusive), at most --max-scan events.
    let mut end = p.before.unwrap_or(head + 1).min(head + 1);
    let (mut rows, mut scanned) = (Vec::new(), 0usize);
    while end > 1 && rows.len() < PAGE_ROWS && scanned < s.cfg.max_scan {
        let from = end.saturating_sub(SCAN_STEP).max(1);
        let step = s.store.events_from(from, (end - from) as usize)?;
        for (position, sealed) in step.into_iter().rev() {
            if rows.len() == PAGE_ROWS || scanned == s.cfg.max_scan {
                break;
            }
            scanned += 1;
            end = position;
            let e = sealed
                .decode(s.keys.as_ref())
                .map_err(|e| crate::audit::AuditError::Broken { position, what: e.to_string() })?;
            if wanted(&e) {
                rows.push(EventRow {
                    position,
                    at: when(&e.recorded_at),
                    event_type: e.body.event_type().as_str(),
                    resource_type: e.resource_type.as_str().to_string(),
                    page: resource_page(&e),
                    summary: summary(&e, &name_of),
                    resource_id: e.resource_id,
                    actor: e.actor,
                });
            }
        }
    }
    if let Some(e) = view.take_error() {
        return Err(crate::http::error::ApiError::from(e).into());
    }
    let next = (end > 1).then_some(end);
    let types = EventType::ALL.iter().map(|t| t.as_str()).collect();
    Ok(EventsPage { nav: session.nav("events"), types, p, rows, next, scanned, head })
}

pub async fn events(
    State(state): State<AppState>,
    session: Session,
    Query(p): Query<EventParams>,
) -> Result<Response, ConsoleError> {
    let page = blocking_read(&state, move |s| Ok(events_page(s, &session, p))).await??;
    Ok(render(&page))
}

#[derive(Template)]
#[template(path = "console/event.html")]
struct EventPage {
    nav: Nav,
    position: u64,
    event_type: &'static str,
    hash: String,
    prev_hash: String,
    /// Whether `prev_hash` is the hash of the event before (`None` for the first event).
    linked: Option<bool>,
    json: String,
    page: Option<&'static str>,
    resource_id: String,
}

fn event_page(s: &AppState, session: &Session, position: u64) -> Result<EventPage, ConsoleError> {
    let not_found = || ConsoleError::NotFound(format!("no event at position {position} in this tenant"));
    let from = position.saturating_sub(1).max(1);
    let pair = s.store.events_from(from, (position - from + 1) as usize)?;
    let (_, sealed) = pair.iter().find(|(p, _)| *p == position).ok_or_else(not_found)?;
    let (event, body) = crate::bus::published_body(sealed, s.keys.as_ref())
        .map_err(|what| crate::audit::AuditError::Broken { position, what })?;
    if event.tenant != session.tenant() {
        return Err(not_found());
    }
    let linked =
        (position > 1).then(|| pair.iter().any(|(p, prev)| *p == position - 1 && prev.event_hash() == event.prev_hash));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Ok(EventPage {
        nav: session.nav("events"),
        position,
        event_type: event.body.event_type().as_str(),
        hash: sealed.hash_hex(),
        prev_hash: event.prev_hash.to_string(),
        linked,
        json: serde_json::to_string_pretty(&json).unwrap_or_default(),
        page: resource_page(&event),
        resource_id: event.resource_id,
    })
}

pub async fn event(
    State(state): State<AppState>,
    session: Session,
    Path(position): Path<u64>,
) -> Result<Response, ConsoleError> {
    if position == 0 {
        return Err(ConsoleError::NotFound("positions start at 1".into()));
    }
    let page = blocking_read(&state, move |s| Ok(event_page(s, &session, position))).await??;
    Ok(render(&page))
}

#[derive(Deserialize, Default)]
pub struct RequestParams {
    #[serde(default)]
    errors: String,
    #[serde(default)]
    token: String,
    before: Option<String>,
}

#[derive(Template)]
#[template(path = "console/requests.html")]
struct RequestsPage {
    nav: Nav,
    errors: bool,
    token: String,
    rows: Vec<crate::request_log::RequestRecord>,
    next: Option<String>,
    capacity: usize,
}

pub async fn requests(
    State(state): State<AppState>,
    session: Session,
    Query(p): Query<RequestParams>,
) -> Result<Response, ConsoleError> {
    let errors = !p.errors.is_empty();
    let rows = state.requests.recent(session.tenant(), p.before.as_deref(), PAGE_ROWS + 1, |r| {
        (!errors || r.failed()) && (p.token.is_empty() || r.token == p.token)
    });
    let next = (rows.len() > PAGE_ROWS).then(|| rows[PAGE_ROWS - 1].request_id.clone());
    let rows = rows.into_iter().take(PAGE_ROWS).collect();
    let page = RequestsPage {
        nav: session.nav("requests"),
        errors,
        token: p.token,
        rows,
        next,
        capacity: state.requests.capacity(),
    };
    Ok(render(&page))
}
