//! The ordered events API (`GET /api/v1/events`), for consumers that do not speak NATS: the
//! tenant's log in order, as the same JSON envelopes NATS carries (`schemas/events/`), paged by
//! position. The cursor is the position, so a consumer resumes (or replays from 0) whenever it
//! likes; `wait` long-polls when nothing is new. `events` or `admin` tokens only: the envelopes
//! hold personal values.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use scimlog_schemas::event::EventType;
use scimlog_schemas::SchemaError;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ScimErrorDoc};
use super::extract::{Caller, Params};
use super::{blocking_read, AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

/// Events read per step of a scan (the log holds every tenant's events).
const SCAN_STEP: usize = 256;

/// A page of the log.
#[derive(Serialize, ToSchema)]
pub struct EventPage {
    /// The tenant's events after `after`, in log order: envelopes as on NATS (personal values
    /// opened; those of an erased person read `[erased]`), each with its `position` and `hash`.
    #[schema(value_type = Vec<Object>)]
    events: Vec<Value>,
    /// Pass as `after` to continue: the last position this page looked at (past events of other
    /// tenants or filtered out, so a sparse filter still advances).
    next: u64,
    /// The log's head when the page was read.
    head: u64,
}

/// What one request asks, parsed at the boundary.
struct PageQuery {
    after: u64,
    limit: usize,
    types: Vec<EventType>,
    resource: Option<String>,
    wait: Duration,
}

fn parse(p: &Params, s: &AppState) -> Result<PageQuery, ApiError> {
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        match p.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| SchemaError::invalid_value(format!("{name} {v:?} is not a non-negative integer")).into()),
        }
    };
    let types = match p.get("types").filter(|t| !t.is_empty()) {
        None => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|t| {
                EventType::ALL.into_iter().find(|k| k.as_str() == t.trim()).ok_or_else(|| {
                    SchemaError::invalid_value(format!("event type {t:?} is not one of scimlog's (schemas/events/)"))
                        .into()
                })
            })
            .collect::<Result<_, ApiError>>()?,
    };
    let wait = number("wait", 0)?;
    if wait > s.cfg.events_wait_max_s {
        let max = s.cfg.events_wait_max_s;
        return Err(SchemaError::invalid_value(format!("wait {wait} is more than --events-wait-max-s ({max})")).into());
    }
    Ok(PageQuery {
        after: number("after", 0)?,
        limit: (number("limit", 100)? as usize).clamp(1, s.cfg.events_page_max),
        types,
        resource: p.get("resource").filter(|r| !r.is_empty()).map(str::to_string),
        wait: Duration::from_secs(wait),
    })
}

/// The tenant's events after a position, in log order.
#[utoipa::path(
    get, path = "/events", tag = "events",
    params(
        ("after" = Option<u64>, Query, description = "Position to start after (default 0: the beginning); a page's `next`; beyond the log's head is 400"),
        ("limit" = Option<usize>, Query, description = "Most events to answer (default 100, clamped to --events-page-max)"),
        ("types" = Option<String>, Query, description = "Comma-separated event types, e.g. user.created,group.member_added"),
        ("resource" = Option<String>, Query, description = "Only the events of this resource id"),
        ("wait" = Option<u64>, Query, description = "Seconds to wait for a new event when there is none (long poll; at most --events-wait-max-s)"),
    ),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "A parameter is invalid", body = ScimErrorDoc),
        (status = 403, description = "Not an events or admin token", body = ScimErrorDoc),
    ),
)]
async fn events(State(s): State<AppState>, caller: Caller, p: Params) -> Result<Json<EventPage>, ApiError> {
    if !caller.principal.role.may_read_events() {
        return Err(ApiError::Forbidden(
            "the events API needs an events or admin token (scimlog token create --role events)",
        ));
    }
    let q = std::sync::Arc::new(parse(&p, &s)?);
    let mut committed = s.writer.committed();
    let deadline = tokio::time::Instant::now() + q.wait;
    let mut after = q.after;
    loop {
        let (tenant, query) = (caller.tenant().to_string(), q.clone());
        let page = blocking_read(&s, move |s| read_page(s, &tenant, &query, after)).await?;
        if !page.events.is_empty() || page.next < page.head || tokio::time::Instant::now() >= deadline {
            return Ok(Json(page));
        }
        // Nothing new for this consumer up to the head: wait for the next commit, then look
        // again from where this page ended.
        after = page.next;
        let _ = tokio::time::timeout_at(deadline, committed.wait_for(|head| *head > page.head)).await;
    }
}

/// Scans from `after + 1` towards the head: at most `limit` matching events, and at most
/// `--max-scan` events looked at.
fn read_page(s: &AppState, tenant: &str, q: &PageQuery, after: u64) -> Result<EventPage, ApiError> {
    let head = s.store.head()?.position;
    if after > head {
        // A cursor from another log (or a restored backup): never silently "nothing new".
        return Err(SchemaError::invalid_value(format!("after {after} is beyond the log's head ({head})")).into());
    }
    let (mut events, mut next, mut scanned) = (Vec::new(), after, 0usize);
    while next < head && events.len() < q.limit && scanned < s.cfg.max_scan {
        let step = store_step(s, next + 1, SCAN_STEP.min(s.cfg.max_scan - scanned))?;
        if step.is_empty() {
            break;
        }
        for (position, sealed) in step {
            scanned += 1;
            let (event, body) = crate::bus::published_body(&sealed, s.keys.as_ref()).map_err(|e| {
                tracing::error!(position, error = %e, "an event cannot be decoded for the events API");
                ApiError::Internal("an event cannot be read")
            })?;
            next = position;
            let wanted = event.tenant == tenant
                && (q.types.is_empty() || q.types.contains(&event.event_type()))
                && q.resource.as_deref().is_none_or(|r| r == event.resource_id);
            if wanted {
                events.push(serde_json::from_slice(&body).expect("a published body is JSON"));
                if events.len() == q.limit {
                    break;
                }
            }
        }
    }
    Ok(EventPage { events, next, head })
}

fn store_step(s: &AppState, from: u64, n: usize) -> Result<Vec<(u64, scimlog_schemas::event::SealedEvent)>, ApiError> {
    Ok(s.store.events_from(from, n)?)
}
