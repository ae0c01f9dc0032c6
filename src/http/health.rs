//! `/docs` (the README) and the probes, no token needed: `/livez` (the process serves HTTP),
//! `/readyz` (it can take traffic: the writer runs, the store answers, it is not stopping), and
//! `/healthz` (the same; with an admin token also where the log, the purges, the store and the
//! publisher stand).
//!
//! A NATS outage does not make the server unready: writes go on and the publisher catches up.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/docs", get(docs))
}

/// The README, from the binary: what `documentationUri` points at by default, with no network.
async fn docs() -> Response {
    let mut resp = include_str!("../../README.md").into_response();
    resp.headers_mut()
        .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("text/markdown; charset=utf-8"));
    resp
}

async fn livez() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let unready = |reason: &str| {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable", "reason": reason}))).into_response()
    };
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return unready("the server is stopping");
    }
    if !state.writer.is_running() {
        return unready("the writer has stopped");
    }
    if let Some(c) = &state.cluster {
        if let Some(gap) = c.gap() {
            return unready(&gap);
        }
        let lag = c.log_head().saturating_sub(*state.writer.committed().borrow());
        if lag > c.ready_max_lag {
            return unready(&format!("{lag} log positions behind the cluster (ready at {} or fewer)", c.ready_max_lag));
        }
    }
    match state.store.head() {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "readiness: cannot read the log");
            unready("the store cannot be read")
        }
    }
}

/// `/healthz`: status for anyone; with an admin token (or `--insecure-no-auth`) also where the
/// log, the purges, the store and the publisher stand, which are figures across tenants.
async fn healthz(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if !state.writer.is_running() {
        tracing::error!("health check: the writer has stopped");
        let body = json!({"status": "unavailable", "reason": "the writer has stopped"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let asks_details = headers.contains_key(axum::http::header::AUTHORIZATION) || state.tokens.is_none();
    let details = if asks_details {
        match super::identify(&state, &headers).await {
            Ok(p) if p.role.may_administer() => true,
            Ok(_) => {
                state.metrics.auth_failure("forbidden");
                return super::error::ApiError::Forbidden("/healthz details need an admin token").into_response();
            }
            Err(e) => return e.into_response(),
        }
    } else {
        false
    };
    match state.store.head() {
        Ok(_) if !details => match &state.cluster {
            Some(c) => Json(json!({"status": "ok", "role": c.role()})).into_response(),
            None => Json(json!({"status": "ok"})).into_response(),
        },
        Ok(head) => {
            let purges = state.writer.purges();
            let mut body = json!({"status": "ok", "logPosition": head.position, "purges": {
                "pending": purges.pending(), "done": purges.done(), "failed": purges.failed(),
            }});
            if let Ok(stats) = state.store.stats() {
                body["store"] = json!(stats);
            }
            if let Some(c) = &state.cluster {
                let log = c.log_head().max(head.position);
                body["cluster"] = json!({
                    "node": c.node_id,
                    "role": c.role(),
                    "leader": c.leader(),
                    "appliedPosition": head.position,
                    "logPosition": log,
                    "lag": log - head.position,
                    "lastError": c.last_error(),
                    "gap": c.gap(),
                    "startedFrom": c.started_from().map(|s| json!({"snapshot": s.name, "position": s.position})),
                });
            }
            if let Some(c) = &state.copy {
                let stream_last = c.stream_last().max(head.position);
                body["runner"] = json!({
                    "target": state.cfg.runner,
                    "consumer": c.consumer,
                    "appliedPosition": head.position,
                    "streamPosition": stream_last,
                    "lag": stream_last - head.position,
                    "deletedPositionsPassedOver": c.holes(),
                    "lastError": c.last_error(),
                });
            }
            if let Some(p) = &state.publisher {
                let (publisher_state, error) = p.state();
                let published = p.published();
                let (gaps, last_gap) = p.gaps();
                body["publisher"] = json!({
                    "state": publisher_state,
                    "publishedPosition": published,
                    "lag": head.position.saturating_sub(published),
                    "lastError": error,
                    "possibleGaps": gaps,
                    "lastGap": last_gap,
                });
            }
            Json(body).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "health check cannot read the log");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "unavailable"}))).into_response()
        }
    }
}
