//! Console sessions: an admin token, typed once into the login form, is exchanged for a random
//! session id in an `HttpOnly; SameSite=Strict` cookie (`Secure` under TLS). The server keeps
//! only the SHA-256 of the id, and of the token: each request checks that the token is still
//! valid and still an admin's, so revoking it ends the session at once. Logging in again with
//! another tenant's admin token adds that tenant to the switcher; a session sees no other.
//!
//! CSRF: every POST must come from this origin (its `Origin` names the request's host), and
//! every form but the login carries the session's form token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Form;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{render, ConsoleError, Nav};
use crate::auth::{Principal, Role};
use crate::http::AppState;

const COOKIE: &str = "scimlog_console";

/// One tenant the session may act in: the principal of the admin token that opened it.
#[derive(Clone)]
struct Login {
    principal: Principal,
    /// `None` with `--insecure-no-auth` (there are no tokens).
    token_hash: Option<[u8; 32]>,
}

struct SessionData {
    logins: Vec<Login>,
    current: usize,
    csrf: String,
    created: Instant,
    expires: Instant,
}

/// The live sessions, by the SHA-256 of their id; at most `--console-max-sessions` (a login
/// beyond it ends the oldest), each ending `--console-session-ttl-s` after its login.
pub struct Sessions {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<[u8; 32], SessionData>>,
}

fn random_text() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    B64.encode(b)
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Sessions {
    pub fn new(ttl_s: u64, max: usize) -> Sessions {
        Sessions { ttl: Duration::from_secs(ttl_s), max, map: Mutex::new(HashMap::new()) }
    }

    /// A new session for `login`; its id (the cookie's value).
    fn open(&self, login: Login) -> String {
        let id = random_text();
        let now = Instant::now();
        let mut map = self.map.lock().expect("session lock");
        map.retain(|_, s| s.expires > now);
        while map.len() >= self.max {
            let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) else { break };
            map.remove(&oldest);
        }
        let data =
            SessionData { logins: vec![login], current: 0, csrf: random_text(), created: now, expires: now + self.ttl };
        map.insert(digest(&id), data);
        id
    }

    /// Adds a tenant to a live session (or makes it current when it is there already).
    fn add(&self, id: &str, login: Login) -> bool {
        let mut map = self.map.lock().expect("session lock");
        let Some(s) = map.get_mut(&digest(id)).filter(|s| s.expires > Instant::now()) else { return false };
        match s.logins.iter().position(|l| l.principal.tenant == login.principal.tenant) {
            Some(i) => {
                s.logins[i] = login;
                s.current = i;
            }
            None => {
                s.logins.push(login);
                s.current = s.logins.len() - 1;
            }
        }
        true
    }

    fn close(&self, id: &str) {
        self.map.lock().expect("session lock").remove(&digest(id));
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("session lock").len()
    }
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// A signed-in request: who, in which tenant, and the session's form token.
pub struct Session {
    id: String,
    pub principal: Principal,
    pub tenants: Vec<String>,
    csrf: String,
    pub base: String,
}

impl Session {
    pub fn tenant(&self) -> &str {
        &self.principal.tenant
    }

    pub fn nav(&self, active: &'static str) -> Nav {
        Nav {
            base: self.base.clone(),
            who: self.principal.name.clone(),
            tenant: self.principal.tenant.clone(),
            tenants: self.tenants.clone(),
            csrf: self.csrf.clone(),
            active,
        }
    }

    /// A form's token must be this session's (compared in constant time).
    pub fn check_csrf(&self, presented: &str) -> Result<(), ConsoleError> {
        match bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) {
            true => Ok(()),
            false => Err(ConsoleError::Forbidden("the form is stale or not from this console: reload the page".into())),
        }
    }
}

/// The principal a login stands for now: its token must still be valid and an admin's.
fn still_valid(state: &AppState, login: &Login) -> Option<Principal> {
    match (&state.tokens, &login.token_hash) {
        (None, _) => Some(login.principal.clone()),
        (Some(tokens), Some(hash)) => tokens.principal_of_hash(hash).filter(|p| p.role.may_administer()),
        (Some(_), None) => None,
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Session, ConsoleError> {
        let base = state.cfg.console_path.clone();
        let logged_out = || ConsoleError::LoggedOut { base: base.clone() };
        let id = cookie_value(&parts.headers).ok_or_else(logged_out)?;
        let key = digest(&id);
        let sessions = &state.console.sessions;
        let mut map = sessions.map.lock().expect("session lock");
        let Some(s) = map.get_mut(&key) else { return Err(logged_out()) };
        // A revoked token (or one no longer an admin's) leaves the session at once.
        let current_tenant = s.logins.get(s.current).map(|l| l.principal.tenant.clone());
        s.logins.retain_mut(|l| match still_valid(state, l) {
            Some(p) => {
                l.principal = p;
                true
            }
            None => false,
        });
        if s.expires <= Instant::now() || s.logins.is_empty() {
            map.remove(&key);
            return Err(logged_out());
        }
        s.current = s.logins.iter().position(|l| Some(&l.principal.tenant) == current_tenant.as_ref()).unwrap_or(0);
        let mut tenants: Vec<String> = s.logins.iter().map(|l| l.principal.tenant.clone()).collect();
        tenants.sort();
        Ok(Session { id, principal: s.logins[s.current].principal.clone(), tenants, csrf: s.csrf.clone(), base })
    }
}

/// Refuses a POST that does not come from this origin: its `Origin` must name the host the
/// request was sent to, or be `--public-url` (a browser always sends `Origin` with a form POST
/// when the page's referrer policy allows it, as the console's does). With the form token
/// this is the CSRF defence; `SameSite=Strict` is a third.
pub async fn same_origin_posts(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok());
    // Behind a proxy that rewrites Host, the page's origin is the public URL's.
    let public = state.cfg.public_url.as_deref().map(|u| u.trim_end_matches('/'));
    let same = match (origin, host) {
        (Some(o), _) if public.is_some_and(|p| p.eq_ignore_ascii_case(o)) => true,
        (Some(o), Some(h)) => o
            .split_once("://")
            .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && rest.eq_ignore_ascii_case(h)),
        _ => false,
    };
    if !same {
        state.metrics.auth_failure("forbidden");
        return ConsoleError::Forbidden(format!(
            "a console form must be posted from this origin; this one came from {}",
            origin.unwrap_or("nowhere (no Origin header)")
        ))
        .into_response();
    }
    next.run(req).await
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    base: String,
    needs_token: bool,
    error: Option<String>,
}

pub async fn login_page(State(state): State<AppState>) -> Response {
    render(&LoginPage { base: state.cfg.console_path.clone(), needs_token: state.tokens.is_some(), error: None })
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

pub async fn login(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let base = state.cfg.console_path.clone();
    let refuse = |status: StatusCode, error: &str| {
        let page = LoginPage { base: base.clone(), needs_token: true, error: Some(error.to_string()) };
        (status, render(&page)).into_response()
    };
    let login = match &state.tokens {
        None => Login {
            principal: Principal { name: "anonymous".into(), tenant: state.cfg.tenant.clone(), role: Role::Admin },
            token_hash: None,
        },
        Some(tokens) => match tokens.authenticate(form.token.trim()) {
            Some(p) if p.role.may_administer() => {
                Login { principal: p, token_hash: Some(crate::auth::hash_token(form.token.trim())) }
            }
            Some(p) => {
                state.metrics.auth_failure("forbidden");
                let why = format!(
                    "the token {:?} has the role {}; the console needs an admin token",
                    p.name,
                    p.role.as_str()
                );
                return refuse(StatusCode::FORBIDDEN, &why);
            }
            None => {
                state.metrics.auth_failure("invalid");
                return refuse(StatusCode::UNAUTHORIZED, "that token is not valid");
            }
        },
    };
    tracing::info!(target: "scimlog::console", token = %login.principal.name, tenant = %login.principal.tenant, "console login");
    let existing = cookie_value(&headers).filter(|id| state.console.sessions.add(id, login.clone()));
    let mut resp = redirect(&base);
    if existing.is_none() {
        let id = state.console.sessions.open(login);
        let secure = state.cfg.tls_cert.is_some() || state.cfg.base_url().starts_with("https://");
        let cookie = format!(
            "{COOKIE}={id}; Path={base}; HttpOnly; SameSite=Strict; Max-Age={}{}",
            state.cfg.console_session_ttl_s,
            if secure { "; Secure" } else { "" }
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    resp
}

/// A 303 to `to` (after a POST, the browser GETs it).
pub fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A form that carries nothing but the session's form token.
#[derive(Deserialize)]
pub struct CsrfFormBody {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(State(state): State<AppState>, session: Session, Form(form): Form<CsrfFormBody>) -> Response {
    if let Err(e) = session.check_csrf(&form.csrf) {
        return e.into_response();
    }
    state.console.sessions.close(&session.id);
    let mut resp = redirect(&format!("{}/login", session.base));
    let cookie = format!("{COOKIE}=; Path={}; HttpOnly; SameSite=Strict; Max-Age=0", session.base);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
pub struct TenantForm {
    #[serde(default)]
    csrf: String,
    tenant: String,
}

pub async fn switch_tenant(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<TenantForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let mut map = state.console.sessions.map.lock().expect("session lock");
    let s = map.get_mut(&digest(&session.id)).ok_or(ConsoleError::LoggedOut { base: session.base.clone() })?;
    s.current = s.logins.iter().position(|l| l.principal.tenant == form.tenant).ok_or_else(|| {
        ConsoleError::Forbidden(format!(
            "this session has no admin token of tenant {:?}: sign in with one to add it",
            form.tenant
        ))
    })?;
    Ok(redirect(&session.base))
}
