//! `/healthz`: no token needed; says whether the store answers, the writer runs, and where the
//! log stands.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

async fn healthz(State(state): State<AppState>) -> Response {
    if !state.writer.is_running() {
        tracing::error!("health check: the writer has stopped");
        let body = json!({"status": "unavailable", "reason": "the writer has stopped"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    match state.store.head() {
        Ok(head) => {
            let purges = state.writer.purges();
            let mut body = json!({"status": "ok", "logPosition": head.position, "purges": {
                "pending": purges.pending(), "done": purges.done(), "failed": purges.failed(),
            }});
            if let Ok(stats) = state.store.stats() {
                body["store"] = json!(stats);
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
