//! `POST /.search` on the service root: one search over Users and Groups (RFC 7644 §3.4.3).

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use scimlog_schemas::ScimKind;

use super::extract::{Caller, ScimBody};
use super::{resource, AppState};

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/.search",
        post(|State(s): State<AppState>, caller: Caller, ScimBody(body): ScimBody| async move {
            resource::search(&s, caller, vec![ScimKind::User, ScimKind::Group], &body).await
        })
        .fallback(super::method_not_allowed),
    )
}
