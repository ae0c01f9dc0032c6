//! What an admin changes from the console: tokens (list; create, shown once; revoke) and the
//! erasure of a person. Each change is a POST with the form token, behind a confirmation page,
//! and goes through the same code as the CLI and the admin API: the token file (then
//! `token.created` / `token.revoked` events), and the writer's `EraseUser`.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Form;
use scimlog_projections::query;
use serde::Deserialize;

use super::session::{redirect, CsrfFormBody, Session};
use super::{render, when, ConsoleError, Nav};
use crate::auth::{AuthError, Role};
use crate::http::extract::Caller;
use crate::http::AppState;

pub struct TokenRow {
    name: String,
    role: &'static str,
    created: String,
}

#[derive(Template)]
#[template(path = "console/tokens.html")]
struct TokensPage {
    nav: Nav,
    tokens_on: bool,
    rows: Vec<TokenRow>,
    roles: Vec<&'static str>,
    /// A token just created: (name, the token), shown this once.
    created: Option<(String, String)>,
    error: Option<String>,
}

const ROLES: [Role; 4] = [Role::Scim, Role::Hosts, Role::Events, Role::Admin];

fn tokens_page(
    state: &AppState,
    session: &Session,
    created: Option<(String, String)>,
    error: Option<String>,
) -> Result<TokensPage, ConsoleError> {
    let rows = match crate::auth::list_tokens(&state.cfg.data_dir) {
        Ok(all) => all
            .into_iter()
            .filter(|t| t.tenant == session.tenant())
            .map(|t| TokenRow { name: t.name, role: t.role.as_str(), created: when(&t.created_at) })
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "the console cannot read the token file");
            return Err(ConsoleError::Api(crate::http::error::ApiError::Unavailable(
                "the token file cannot be read".into(),
            )));
        }
    };
    Ok(TokensPage {
        nav: session.nav("tokens"),
        tokens_on: state.tokens.is_some(),
        rows,
        roles: ROLES.iter().map(|r| r.as_str()).collect(),
        created,
        error,
    })
}

pub async fn tokens(State(state): State<AppState>, session: Session) -> Result<Response, ConsoleError> {
    Ok(render(&tokens_page(&state, &session, None, None)?))
}

#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    csrf: String,
    name: String,
    role: String,
}

/// After the token file changed: the server reads it and records the change in the log, as
/// the next request would.
async fn token_file_changed(state: &AppState) {
    if let Some(tokens) = &state.tokens {
        if let Err(e) = tokens.refresh() {
            tracing::error!(error = %e, "cannot reload tokens; keeping the last good set");
        }
    }
    crate::http::reconcile_tokens(state).await;
}

pub async fn create_token(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<CreateForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    if state.tokens.is_none() {
        return Err(ConsoleError::BadRequest("tokens are off: the server runs with --insecure-no-auth".into()));
    }
    let name = form.name.trim().to_string();
    let Some(role) = Role::parse(&form.role) else {
        return Err(ConsoleError::BadRequest(format!("no role {:?}: use scim, hosts, events or admin", form.role)));
    };
    let made = {
        let (dir, tenant, name) = (state.cfg.data_dir.clone(), session.tenant().to_string(), name.clone());
        tokio::task::spawn_blocking(move || crate::auth::create_token(&dir, &name, &tenant, role))
            .await
            .map_err(|_| ConsoleError::Api(crate::http::error::ApiError::Internal("token creation failed")))?
    };
    match made {
        Ok(token) => {
            token_file_changed(&state).await;
            tracing::info!(target: "scimlog::console", by = %session.principal.name, token = %name, role = role.as_str(), "token created");
            Ok(render(&tokens_page(&state, &session, Some((name, token)), None)?))
        }
        Err(e @ (AuthError::Exists(_) | AuthError::Name(_) | AuthError::Tenant(_) | AuthError::Unknown(_))) => {
            let page = tokens_page(&state, &session, None, Some(e.to_string()))?;
            Ok((StatusCode::BAD_REQUEST, render(&page)).into_response())
        }
        Err(e @ (AuthError::Io { .. } | AuthError::Format { .. })) => {
            tracing::error!(error = %e, "the console cannot write the token file");
            Err(ConsoleError::Api(crate::http::error::ApiError::Unavailable("the token file cannot be written".into())))
        }
    }
}

#[derive(Template)]
#[template(path = "console/confirm.html")]
struct ConfirmPage {
    nav: Nav,
    title: String,
    warning: String,
    action: String,
    button: String,
    /// Ask for a reason (an erasure's, which stays in the log).
    reason: bool,
    /// What must be typed to confirm (the userName for an erasure).
    type_to_confirm: Option<String>,
}

fn token_of_tenant(state: &AppState, session: &Session, name: &str) -> Result<(), ConsoleError> {
    let all = crate::auth::list_tokens(&state.cfg.data_dir).unwrap_or_default();
    match all.iter().any(|t| t.name == name && t.tenant == session.tenant()) {
        true => Ok(()),
        false => Err(ConsoleError::NotFound(format!("no token {name:?} in tenant {:?}", session.tenant()))),
    }
}

pub async fn revoke_confirm(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
) -> Result<Response, ConsoleError> {
    token_of_tenant(&state, &session, &name)?;
    Ok(render(&ConfirmPage {
        title: format!("Revoke the token {name}?"),
        warning: format!(
            "Whoever uses the token {name} is refused from its next request on. An IdP connection using it stops provisioning."
        ),
        action: format!("{}/tokens/{}/revoke", session.base, percent(&name)),
        button: "Revoke".into(),
        reason: false,
        type_to_confirm: None,
        nav: session.nav("tokens"),
    }))
}

/// A path segment, percent-encoded.
fn percent(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub async fn revoke(
    State(state): State<AppState>,
    session: Session,
    Path(name): Path<String>,
    Form(form): Form<CsrfFormBody>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    token_of_tenant(&state, &session, &name)?;
    let dir = state.cfg.data_dir.clone();
    let revoked = {
        let name = name.clone();
        tokio::task::spawn_blocking(move || crate::auth::revoke_token(&dir, &name))
            .await
            .map_err(|_| ConsoleError::Api(crate::http::error::ApiError::Internal("token revocation failed")))?
    };
    if let Err(e) = revoked {
        return Err(ConsoleError::BadRequest(e.to_string()));
    }
    token_file_changed(&state).await;
    tracing::info!(target: "scimlog::console", by = %session.principal.name, token = %name, "token revoked");
    Ok(redirect(&format!("{}/tokens", session.base)))
}

fn user_name_of(state: &AppState, session: &Session, id: &str) -> Result<String, ConsoleError> {
    let view = state.store.view();
    query::user(&view, session.tenant(), id).map(|u| u.user_name().to_string()).ok_or_else(|| {
        ConsoleError::NotFound(format!("no user {id:?} in tenant {:?} (already deleted or erased?)", session.tenant()))
    })
}

pub async fn erase_confirm(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let user_name = user_name_of(&state, &session, &id)?;
    Ok(render(&ConfirmPage {
        title: format!("Erase {user_name}?"),
        warning: "The user is deleted, and their data key destroyed: every personal value the log ever held for them reads [erased], for good, here and in every export. The events stay, with their hashes. This cannot be undone.".into(),
        action: format!("{}/users/{}/erase", session.base, percent(&id)),
        button: "Erase for good".into(),
        reason: true,
        type_to_confirm: Some(user_name),
        nav: session.nav("users"),
    }))
}

#[derive(Deserialize)]
pub struct EraseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: String,
}

#[derive(Template)]
#[template(path = "console/erased.html")]
struct ErasedPage {
    nav: Nav,
    id: String,
    positions: Vec<u64>,
    purge_done: bool,
}

pub async fn erase(
    State(state): State<AppState>,
    session: Session,
    caller_id: Option<axum::Extension<crate::http::RequestId>>,
    Path(id): Path<String>,
    Form(form): Form<EraseForm>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    let user_name = user_name_of(&state, &session, &id)?;
    if form.confirm.trim() != user_name {
        return Err(ConsoleError::BadRequest(format!(
            "to erase, type the userName {user_name:?} exactly; {:?} was typed",
            form.confirm.trim()
        )));
    }
    if form.reason.trim().is_empty() {
        return Err(ConsoleError::BadRequest(
            "say why (a ticket, a legal basis; no personal data): the reason stays in the log".into(),
        ));
    }
    let caller = Caller {
        principal: session.principal.clone(),
        request_id: caller_id.map(|r| r.0 .0.clone()).unwrap_or_default(),
    };
    let erased = crate::http::admin::erase_user(&state, caller.origin(), id, form.reason.trim().to_string()).await?;
    tracing::info!(target: "scimlog::console", by = %session.principal.name, "user erased");
    Ok(render(&ErasedPage {
        nav: session.nav("users"),
        id: erased.erased,
        positions: erased.event_positions,
        purge_done: matches!(erased.purge, crate::http::admin::Purge::Done),
    }))
}
