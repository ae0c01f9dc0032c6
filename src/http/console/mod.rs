//! The admin console (`/admin` by default, `--console-path`, off with `--no-console`):
//! server-rendered pages over the same read models, log and writer as the APIs.
//!
//! # Layout
//!
//! - this file: the router, the security headers every page gets, the one error type and its
//!   HTML page, the embedded stylesheet, and what every page shares (`Nav`, times and ages).
//! - [`session`]: login with an admin token exchanged for a session cookie, logout, the
//!   tenant switcher, the `Session` extractor, CSRF (the Origin check and the form token).
//! - [`overview`]: the log head, chain verification, the publisher, the store, each IdP
//!   connection's health.
//! - [`directory`]: Users and Groups (cursor-paged, searched), a user's page (attributes,
//!   groups, access with provenance, history with what each event changed, the user as of a
//!   moment), a group's page.
//! - [`log`]: the Events page (the log, filtered) and one event, and the Requests page.
//! - [`admin`]: tokens (list, create shown once, revoke) and erasure, each behind a
//!   confirmation.
//!
//! Pages are askama templates (`templates/console/`), plain links and forms, no script; every
//! asset is in the binary and the Content-Security-Policy allows nothing but this origin.

mod admin;
mod directory;
mod log;
mod overview;
mod session;

use askama::Template;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};

use super::error::ApiError;
use super::AppState;
pub use overview::Verification;
pub use session::redirect as redirect_to;
pub use session::Sessions;

/// What the console keeps in memory: its sessions and the last chain verification.
pub struct ConsoleState {
    pub sessions: Sessions,
    pub verification: Verification,
}

impl ConsoleState {
    pub fn new(cfg: &crate::config::ServeConfig) -> ConsoleState {
        ConsoleState {
            sessions: Sessions::new(cfg.console_session_ttl_s, cfg.console_max_sessions),
            verification: Verification::default(),
        }
    }
}

/// Whether `path` can hold the console: one or more `/segment`s of `[A-Za-z0-9._-]`, not a
/// path the server serves otherwise.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let ok_segment = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !path.starts_with('/') || !path[1..].split('/').all(ok_segment) {
        return Err("it must look like /admin: segments of letters, digits, '.', '_' and '-', no trailing slash");
    }
    let first = path[1..].split('/').next().unwrap_or_default();
    if ["scim", "api", "metrics", "healthz", "livez", "readyz", "docs"].contains(&first) {
        return Err("the server serves that path already");
    }
    Ok(())
}

/// The console's routes, to be nested at `--console-path`.
pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(overview::page))
        .route("/verify", post(overview::verify))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/tenant", post(session::switch_tenant))
        .route("/users", get(directory::users))
        .route("/users/{id}", get(directory::user))
        .route("/users/{id}/erase", get(admin::erase_confirm).post(admin::erase))
        .route("/groups", get(directory::groups))
        .route("/groups/{id}", get(directory::group))
        .route("/events", get(log::events))
        .route("/events/{position}", get(log::event))
        .route("/requests", get(log::requests))
        .route("/tokens", get(admin::tokens).post(admin::create_token))
        .route("/tokens/{name}/revoke", get(admin::revoke_confirm).post(admin::revoke))
        .route("/console.css", get(stylesheet))
        .fallback(|| async { ConsoleError::NotFound("no such page".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), session::same_origin_posts))
        .layer(middleware::from_fn(security_headers))
}

/// Every console answer: nothing but this origin may be loaded, framed or posted to; no
/// script runs at all (the pages have none); nothing is cached; no page's URL (ids, searches)
/// is sent to another origin as a referrer. (`same-origin`, not `no-referrer`: under
/// `no-referrer` a browser sends `Origin: null` with a form POST, which the CSRF check refuses.)
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

const STYLESHEET: &str = include_str!("../../../templates/console/console.css");

async fn stylesheet() -> Response {
    let mut resp = STYLESHEET.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    resp
}

/// What goes wrong in the console; every variant is answered as an HTML page with its status.
#[derive(Debug)]
pub enum ConsoleError {
    /// No session (or it ended): back to the login page.
    LoggedOut {
        base: String,
    },
    NotFound(String),
    BadRequest(String),
    Forbidden(String),
    /// An error of the layer below (a refusal, a limit, a storage failure), with its status
    /// and detail as the APIs answer it.
    Api(ApiError),
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        ConsoleError::Api(e)
    }
}

impl From<crate::log::LogError> for ConsoleError {
    fn from(e: crate::log::LogError) -> Self {
        ConsoleError::Api(e.into())
    }
}

impl From<crate::audit::AuditError> for ConsoleError {
    fn from(e: crate::audit::AuditError) -> Self {
        match e {
            crate::audit::AuditError::TooLong { .. } => ConsoleError::BadRequest(e.to_string()),
            crate::audit::AuditError::Log(l) => l.into(),
            crate::audit::AuditError::Broken { .. }
            | crate::audit::AuditError::Io(_)
            | crate::audit::AuditError::Keys(_) => {
                tracing::error!(error = %e, "the console cannot read the log");
                ConsoleError::Api(ApiError::Unavailable("the log cannot be read; see the server's log".into()))
            }
        }
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage {
    status: u16,
    reason: String,
    detail: String,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, detail) = match self {
            ConsoleError::LoggedOut { base } => {
                let mut resp = StatusCode::SEE_OTHER.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("{base}/login")) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                return resp;
            }
            ConsoleError::NotFound(d) => (StatusCode::NOT_FOUND, d),
            ConsoleError::BadRequest(d) => (StatusCode::BAD_REQUEST, d),
            ConsoleError::Forbidden(d) => (StatusCode::FORBIDDEN, d),
            // The API's own detail: it never holds an internal cause (logged once below it).
            ConsoleError::Api(e) => {
                let (status, _, detail) = e.parts();
                (status, detail)
            }
        };
        let page =
            ErrorPage { status: status.as_u16(), reason: status.canonical_reason().unwrap_or("").to_string(), detail };
        (status, render(&page)).into_response()
    }
}

/// A page as HTML; a template that cannot render is a bug, answered 500 (logged here, once).
fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a console page did not render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page did not render; see the server's log").into_response()
        }
    }
}

/// What the layout of every signed-in page needs: where the console is, who is signed in, the
/// tenants the session may switch to, and the form token for its POSTs.
pub struct Nav {
    pub base: String,
    pub who: String,
    pub tenant: String,
    pub tenants: Vec<String>,
    pub csrf: String,
    pub active: &'static str,
}

/// `2026-11-27 19:14:42 UTC`.
pub fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// How long ago `t` was, roughly: `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
pub fn age(t: &DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - *t).num_seconds().max(0);
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// A JSON value as one line of text: strings bare, the rest as JSON.
pub fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_paths() {
        for ok in ["/admin", "/console", "/ops/admin", "/a-b_c.d"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in ["admin", "/", "/admin/", "/scim", "/api/x", "/a b", "/a//b", "/metrics", "/a?x"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ages() {
        let now = Utc::now();
        for (secs, text) in [(5, "5 s ago"), (125, "2 min ago"), (7300, "2 h ago"), (200_000, "2 d ago")] {
            assert_eq!(age(&(now - chrono::Duration::seconds(secs)), now), text);
        }
    }
}
