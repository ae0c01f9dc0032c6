//! The overview: where the log stands, whether its chain verifies, whether NATS is behind, how
//! big the store is, and each IdP connection's health (last success, last failure, the last
//! 24 hours), the early warning before an IdP quarantines the app.

use std::sync::Mutex;

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::Form;
use chrono::{DateTime, Utc};
use scimlog_projections::query;

use super::session::{redirect, CsrfFormBody, Session};
use super::{age, render, when, ConsoleError, Nav};
use crate::http::{blocking_read, AppState};

/// The last chain verification the console ran (in memory: the answer is for this process).
#[derive(Default)]
pub struct Verification(Mutex<VerifyState>);

#[derive(Clone, Default)]
struct VerifyState {
    running: bool,
    last: Option<(DateTime<Utc>, Result<String, String>)>,
}

pub struct Connection {
    name: String,
    role: String,
    last_success: String,
    last_failure: String,
    requests_24h: u64,
    failures_24h: u64,
}

pub struct VerifyView {
    at: String,
    ok: bool,
    text: String,
}

pub struct PublisherView {
    state: String,
    published: u64,
    lag: u64,
    error: String,
}

pub struct TargetRow {
    name: String,
    health: String,
    lag: u64,
    parked: usize,
    last_error: String,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    nav: Nav,
    head: u64,
    last_commit: String,
    users: u64,
    groups: u64,
    writer_running: bool,
    purges_pending: u64,
    verify_running: bool,
    verified: Option<VerifyView>,
    publisher: Option<PublisherView>,
    store_bytes: String,
    memory_bytes: String,
    connections: Vec<Connection>,
    targets: Option<Vec<TargetRow>>,
    request_log_size: usize,
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}

pub async fn page(State(state): State<AppState>, session: Session) -> Result<Response, ConsoleError> {
    let now = Utc::now();
    let t = session.tenant().to_string();
    let (head, last_commit, users, groups) = blocking_read(&state, {
        let t = t.clone();
        move |s| {
            let head = s.store.head()?.position;
            let last = match s.store.events_from(head.max(1), 1)?.into_iter().next() {
                Some((_, sealed)) => sealed
                    .decode(&scimlog_schemas::personal::NoKeys)
                    .map(|e| format!("{} ({})", when(&e.recorded_at), age(&e.recorded_at, Utc::now())))
                    .unwrap_or_else(|e| format!("unreadable: {e}")),
                None => "none yet".into(),
            };
            let view = s.store.view();
            let (users, groups) = (query::user_count(&view, &t), query::group_count(&view, &t));
            Ok((head, last, users, groups))
        }
    })
    .await?;
    let v = state.console.verification.0.lock().expect("verify lock").clone();
    let verified = v.last.map(|(at, r)| {
        let at = format!("{} ({})", when(&at), age(&at, now));
        match r {
            Ok(text) => VerifyView { at, ok: true, text },
            Err(text) => VerifyView { at, ok: false, text },
        }
    });
    let publisher = state.publisher.as_ref().map(|p| {
        let (st, error) = p.state();
        let published = p.published();
        PublisherView {
            state: format!("{st:?}").to_lowercase(),
            published,
            lag: head.saturating_sub(published),
            error: error.unwrap_or_default(),
        }
    });
    let stats = state.store.stats().unwrap_or_default();
    let page = OverviewPage {
        nav: session.nav("overview"),
        head,
        last_commit,
        users,
        groups,
        writer_running: state.writer.is_running(),
        purges_pending: state.writer.purges().pending(),
        verify_running: v.running,
        verified,
        publisher,
        store_bytes: bytes(stats.sst_files_bytes + stats.memtable_bytes),
        memory_bytes: bytes(stats.memtable_bytes + stats.block_cache_bytes + stats.table_reader_bytes),
        connections: connections(&state, &t, now),
        targets: Some(
            state
                .outbound
                .statuses(Some(&t))
                .into_iter()
                .map(|s| TargetRow {
                    health: serde_json::to_value(s.health).map(|v| super::show(&v)).unwrap_or_default(),
                    name: s.name,
                    lag: s.lag_positions,
                    parked: s.parked,
                    last_error: s.last_error.unwrap_or_default(),
                })
                .collect(),
        ),
        request_log_size: state.requests.capacity(),
    };
    Ok(render(&page))
}

/// Every token of the tenant (from the token file, and any other name seen in requests), with
/// its health since this process started.
fn connections(state: &AppState, tenant: &str, now: DateTime<Utc>) -> Vec<Connection> {
    let mut seen = state.requests.health(tenant);
    let known = state.tokens.as_ref().map(|t| t.by_tenant().remove(tenant).unwrap_or_default()).unwrap_or_default();
    for (name, _) in &known {
        if !seen.iter().any(|(n, _)| n == name) {
            seen.push((name.clone(), Default::default()));
        }
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    seen.into_iter()
        .map(|(name, h)| {
            let (requests_24h, failures_24h) = h.last_day(now);
            let role = known.iter().find(|(n, _)| *n == name).map_or("", |(_, r)| r.as_str()).to_string();
            Connection {
                name: if name.is_empty() { "(no valid token)".into() } else { name },
                role,
                last_success: h.last_success.map_or("never".into(), |t| age(&t, now)),
                last_failure: h.last_failure.map_or("never".into(), |(t, status, scim_type)| {
                    format!(
                        "{} — {status}{}",
                        age(&t, now),
                        if scim_type.is_empty() { String::new() } else { format!(" {scim_type}") }
                    )
                }),
                requests_24h,
                failures_24h,
            }
        })
        .collect()
}

/// Runs `audit verify` over the whole log on the blocking pool (one at a time), and goes back
/// to the overview, which shows it running and then its result.
pub async fn verify(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<CsrfFormBody>,
) -> Result<Response, ConsoleError> {
    session.check_csrf(&form.csrf)?;
    {
        let mut v = state.console.verification.0.lock().expect("verify lock");
        if v.running {
            return Ok(redirect(&session.base));
        }
        v.running = true;
    }
    let s = state.clone();
    tokio::task::spawn_blocking(move || {
        let result = match crate::audit::verify(&s.store) {
            Ok(v) => Ok(format!("{} events, head {} ({})", v.count, v.head_position, v.head_hash)),
            Err(e) => Err(e.to_string()),
        };
        let mut v = s.console.verification.0.lock().expect("verify lock");
        v.running = false;
        v.last = Some((Utc::now(), result));
    });
    Ok(redirect(&session.base))
}
