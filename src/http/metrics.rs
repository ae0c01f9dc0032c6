//! `GET /metrics`: the Prometheus scrape (OpenMetrics text). On the main listener it needs an
//! `admin` token; `--metrics-listen` serves it alone, without a token, on an address of its own
//! (an operator's network, never the IdPs').

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;
use crate::bus::PublisherState;
use crate::metrics::{PublisherScrape, Scrape, CONTENT_TYPE as OPENMETRICS};

/// `/metrics` behind the caller's token: admins only.
pub fn router() -> Router<AppState> {
    Router::new().route(
        "/metrics",
        get(|State(s): State<AppState>, Extension(p): Extension<Principal>| async move {
            if !p.role.may_administer() {
                s.metrics.auth_failure("forbidden");
                return ApiError::Forbidden("/metrics needs an admin token (or serve it apart with --metrics-listen)")
                    .into_response();
            }
            scrape(&s)
        }),
    )
}

/// `/metrics` alone, without a token: for `--metrics-listen`.
pub fn open_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(|State(s): State<AppState>| async move { scrape(&s) })).with_state(state)
}

/// Each SET stream's lag (one read of its watermark) and, for push, its task's figures.
fn set_streams(state: &AppState, head: u64) -> Vec<crate::metrics::SetStreamScrape> {
    let streams = state.sets.streams.all();
    streams
        .iter()
        .map(|st| crate::metrics::SetStreamScrape {
            tenant: st.id.tenant.clone(),
            stream: st.id.name.clone(),
            lag_positions: head.saturating_sub(state.sets.deliver.acks.watermark_now(&st.id)),
            push: state.sets.streams.push_state(&st.id).map(|p| (p.delivered, p.refused, p.failures)),
        })
        .collect()
}

fn scrape(state: &AppState) -> Response {
    let head = state.store.head().map(|h| h.position).unwrap_or(0);
    let snapshot = Scrape {
        head_position: head,
        write_queue_depth: state.writer.queued() as u64,
        publisher: state.publisher.as_ref().map(|p| PublisherScrape {
            state: p.state().0.as_str(),
            states: PublisherState::ALL.iter().map(|s| s.as_str()).collect(),
            published: p.published(),
        }),
        store: state.store.stats().ok(),
        outbound: state.outbound.statuses(None),
        sets: set_streams(state, head),
    };
    let mut resp = (StatusCode::OK, state.metrics.render(&snapshot)).into_response();
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    resp
}
