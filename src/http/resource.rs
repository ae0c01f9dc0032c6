//! The handlers shared by `/Users` and `/Groups`: the resource kind decides how a body is parsed
//! into a command and how a read model is rendered; the HTTP flow around them is the same.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use scimlog_projections::{query, KvRead};
use scimlog_schemas::filter::FilterLimits;
use scimlog_schemas::patch::parse_patch;
use scimlog_schemas::resource::{parse_group, parse_user};
use scimlog_schemas::{ResourceKind, ScimKind};
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use scimlog_schemas::cursor;

use super::extract::{if_match, if_none_match_hits, Caller, ListQuery, Paging, Params, Projection};
use super::render::Rendered;
use super::{render, resource_response, scim_text, AppState};
use crate::command::{Command, Refusal};
use crate::log::writer::Committed;
use crate::log::StateView;

/// Renders the current state of one resource with its version, or `None` if it does not exist.
/// Group members count against `members_left` (what one response may still render, from
/// `--max-members-rendered`); a group over it is refused, as a whole: never half its members.
fn render_one(
    kv: &StateView<'_>,
    t: &str,
    state: &AppState,
    kind: ScimKind,
    id: &str,
    proj: &Projection,
    members_left: &mut usize,
) -> Result<Option<(Rendered, u64)>, ApiError> {
    let (base, shape) = (state.scim_base.as_str(), state.cfg.grant_shape_for(t));
    Ok(match kind {
        ScimKind::User => query::user_bytes(kv, t, id)
            .and_then(|stored| render::user(kv, t, base, &stored, proj, shape, group_name(state, kv, t))),
        ScimKind::Group => match query::group(kv, t, id) {
            None => None,
            Some(d) => {
                if proj.wants("members") {
                    let n = d.member_count as usize;
                    *members_left = members_left.checked_sub(n).ok_or_else(|| too_many_members(state, id, n))?;
                }
                Some((Rendered::of(&render::group(kv, t, base, &d, proj, shape)), d.version))
            }
        },
    })
}

/// A group's displayName for a user's `groups`, from the group nodes the access answers keep.
fn group_name<'a>(state: &'a AppState, view: &'a StateView<'_>, t: &'a str) -> impl Fn(&str) -> Option<String> + 'a {
    move |group| state.groups.display_name(view, t, group)
}

fn too_many_members(state: &AppState, id: &str, n: usize) -> ApiError {
    ApiError::Invalid(scimlog_schemas::SchemaError::new(
        scimlog_schemas::ScimType::TooMany,
        format!(
            "group {id} has {n} members, more than one response renders (--max-members-rendered {}, for all \
             groups of a response together); ask with excludedAttributes=members, or a smaller count",
            state.cfg.max_members_rendered
        ),
    ))
}

fn not_found(kind: ScimKind, id: &str) -> ApiError {
    ApiError::Refused(Refusal::NotFound { kind: kind.resource(), id: id.into() })
}

/// Answers a write with the resource as it left it. A user comes from the document the writer
/// handed back (no read; a user just created has no groups to read either). A group, whose
/// members are part of its version, is read after the write with them (the response is sent
/// only once the write is durable, so this read sees it).
fn respond_written(
    state: &AppState,
    caller: &Caller,
    kind: ScimKind,
    id: &str,
    status: StatusCode,
    proj: &Projection,
    written: &Committed,
) -> Result<Response, ApiError> {
    let location = (status == StatusCode::CREATED).then(|| render::location(&state.scim_base, kind.resource(), id));
    if let Some((body, version)) = render_handed_back(state, caller, proj, written)? {
        return Ok(resource_response(status, body, version, location.as_deref()));
    }
    let view = state.store.view();
    // The write is done: a group too large to render whole is answered without its members.
    let mut budget = state.cfg.max_members_rendered;
    let rendered = match render_one(&view, caller.tenant(), state, kind, id, proj, &mut budget) {
        Err(ApiError::Invalid(_)) => {
            let no_members = Projection::parse(None, Some("members"))?;
            render_one(&view, caller.tenant(), state, kind, id, &no_members, &mut budget)?
        }
        other => other?,
    };
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    let (body, version) = rendered.ok_or_else(|| not_found(kind, id))?;
    Ok(resource_response(status, body, version, location.as_deref()))
}

/// The user the writer handed back, rendered with its version; `None` when there is none (a
/// group's command, or a request that wrote no user document): then it is read.
fn render_handed_back(
    state: &AppState,
    caller: &Caller,
    proj: &Projection,
    written: &Committed,
) -> Result<Option<(Rendered, u64)>, ApiError> {
    // The bytes the fold just wrote: they render as a stored document does (else: read it).
    let Some(stored) = written.user_document.as_deref() else { return Ok(None) };
    let (t, base) = (caller.tenant(), state.scim_base.as_str());
    let shape = state.cfg.grant_shape_for(t);
    if written.decision.created {
        return Ok(render::new_user(base, stored, proj, shape));
    }
    let view = state.store.view();
    let rendered = render::user(&view, t, base, stored, proj, shape, group_name(state, &view, t));
    match view.take_error() {
        Some(e) => Err(e.into()),
        None => Ok(rendered),
    }
}

/// Member values that name no resource are logged by count, not by value: IdPs sometimes send
/// an email there, and logs stay free of personal data.
fn report_skipped(kind: ScimKind, id: &str, skipped: &[String]) {
    if !skipped.is_empty() {
        tracing::warn!(resource = kind.as_str(), %id, skipped = skipped.len(), "member values that name no resource were skipped");
    }
}

pub async fn create(
    state: &AppState,
    caller: Caller,
    kind: ScimKind,
    params: &Params,
    body: Value,
) -> Result<Response, ApiError> {
    let proj = Projection::from_params(params)?;
    let id = Uuid::now_v7().to_string();
    let command = match kind {
        ScimKind::User => Command::CreateUser { id, input: parse_user(&body)? },
        ScimKind::Group => Command::CreateGroup { id, input: parse_group(&body)? },
    };
    let committed = state.writer.submit(caller.origin(), command).await?;
    let d = &committed.decision;
    report_skipped(kind, &d.resource_id, &d.skipped_members);
    respond_written(state, &caller, kind, &d.resource_id, StatusCode::CREATED, &proj, &committed)
}

pub fn get(
    state: &AppState,
    caller: &Caller,
    kind: ScimKind,
    id: &str,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Response, ApiError> {
    let proj = Projection::from_params(params)?;
    let view = state.store.view();
    let mut budget = state.cfg.max_members_rendered;
    let rendered = render_one(&view, caller.tenant(), state, kind, id, &proj, &mut budget)?;
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    let (body, version) = rendered.ok_or_else(|| not_found(kind, id))?;
    if if_none_match_hits(headers, version) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = format!("W/\"{version}\"").parse() {
            resp.headers_mut().insert(axum::http::header::ETAG, v);
        }
        return Ok(resp);
    }
    Ok(resource_response(StatusCode::OK, body, version, None))
}

pub async fn replace(
    state: &AppState,
    caller: Caller,
    kind: ScimKind,
    id: String,
    headers: &HeaderMap,
    params: &Params,
    body: Value,
) -> Result<Response, ApiError> {
    let proj = Projection::from_params(params)?;
    let if_match = if_match(headers);
    let command = match kind {
        ScimKind::User => Command::ReplaceUser { id: id.clone(), input: parse_user(&body)?, if_match },
        ScimKind::Group => Command::ReplaceGroup { id: id.clone(), input: parse_group(&body)?, if_match },
    };
    let committed = state.writer.submit(caller.origin(), command).await?;
    report_skipped(kind, &id, &committed.decision.skipped_members);
    respond_written(state, &caller, kind, &id, StatusCode::OK, &proj, &committed)
}

pub async fn delete(
    state: &AppState,
    caller: Caller,
    kind: ScimKind,
    id: String,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let if_match = if_match(headers);
    let command = match kind {
        ScimKind::User => Command::DeleteUser { id, if_match },
        ScimKind::Group => Command::DeleteGroup { id, if_match },
    };
    state.writer.submit(caller.origin(), command).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// PATCH (RFC 7644 §3.5.2). A user PATCH answers 200 with the resource; a group PATCH answers
/// 204 unless the request asks for attributes (`attributes`/`excludedAttributes`), because a
/// group's members can be many and IdPs (Entra) do not read them back.
pub async fn patch(
    state: &AppState,
    caller: Caller,
    kind: ScimKind,
    id: String,
    headers: &HeaderMap,
    params: &Params,
    body: Value,
) -> Result<Response, ApiError> {
    let proj = Projection::from_params(params)?;
    let limits = FilterLimits { max_length: state.cfg.max_filter_length, max_depth: state.cfg.max_filter_depth };
    let ops = parse_patch(&body, limits, state.cfg.max_patch_operations)?;
    let if_match = if_match(headers);
    let command = match kind {
        ScimKind::User => Command::PatchUser { id: id.clone(), ops, if_match },
        ScimKind::Group => Command::PatchGroup { id: id.clone(), ops, if_match },
    };
    let committed = state.writer.submit(caller.origin(), command).await?;
    report_skipped(kind, &id, &committed.decision.skipped_members);
    if kind == ScimKind::Group && proj.is_default() {
        let version = group_version_after(state, &caller, &id, &committed)?;
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if let Ok(v) = format!("W/\"{version}\"").parse() {
            resp.headers_mut().insert(axum::http::header::ETAG, v);
        }
        return Ok(resp);
    }
    respond_written(state, &caller, kind, &id, StatusCode::OK, &proj, &committed)
}

/// A group's version after a write: the last one this request's own events gave it (events of
/// other resources in the request, such as an environment a role creates, do not count); read
/// when the request changed nothing.
fn group_version_after(state: &AppState, caller: &Caller, id: &str, written: &Committed) -> Result<u64, ApiError> {
    let own = written.events.iter().filter(|e| e.resource_type == ResourceKind::Group && e.resource_id == id);
    if let Some(v) = own.map(|e| e.resource_version).max() {
        return Ok(v);
    }
    let view = state.store.view();
    let version = query::group(&view, caller.tenant(), id).map(|g| g.version);
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    version.ok_or_else(|| not_found(ScimKind::Group, id))
}

/// A list (`GET /Users`) or search (`POST /.search`) over one or more resource types. What can
/// scan, sort or render members runs on the blocking pool behind `--max-concurrent-reads`; a
/// user lookup an index answers, and a page of the whole user collection (O(page)), are point
/// reads and are answered here.
pub async fn list(
    state: &AppState,
    caller: Caller,
    kinds: Vec<ScimKind>,
    params: Params,
) -> Result<Response, ApiError> {
    let q = ListQuery::from_params(&params, state)?;
    if let Some(f) = &q.filter {
        for kind in &kinds {
            f.check_types(query::schema_of(*kind))?;
        }
    }
    if answers_inline(state, &caller, &kinds, &q) {
        return list_now(state, &caller, &kinds, q);
    }
    super::blocking_read(state, move |s| list_now(s, &caller, &kinds, q)).await
}

/// Point reads only: Users, not sorted, and either a page of the whole collection that starts
/// where it is known (the first page, a cursor, or a `startIndex` the page before left a hint
/// for), or a filter that indexes answer with point lookups. A `meta.lastModified` range and a
/// far first `startIndex` walk keys: those take their turn on the blocking pool.
fn answers_inline(state: &AppState, caller: &Caller, kinds: &[ScimKind], q: &ListQuery) -> bool {
    let point = |l: &query::Lookup| match l {
        query::Lookup::Id(_)
        | query::Lookup::UserName(_)
        | query::Lookup::ExternalId(_)
        | query::Lookup::Email(_)
        | query::Lookup::DisplayName(_)
        | query::Lookup::Member(_) => true,
        query::Lookup::LastModified(..) => false,
    };
    let page_start_known = match &q.paging {
        Paging::Cursor(_) | Paging::Index { start: 1 } => true,
        Paging::Index { start } => state.page_hints.get(caller.tenant(), ScimKind::User, *start).is_some(),
    };
    let cheap = match &q.filter {
        None => page_start_known,
        Some(f) => matches!(query::plan(ScimKind::User, f), query::Plan::Lookup(ref l) if l.iter().all(point)),
    };
    matches!(kinds, [ScimKind::User]) && q.sort.is_none() && cheap
}

/// One resource type after another, each in a stable order.
fn list_now(state: &AppState, caller: &Caller, kinds: &[ScimKind], q: ListQuery) -> Result<Response, ApiError> {
    let t = caller.tenant();
    let view = state.store.view();
    // Results of one type without sortBy are in id order: a cursor can then point after an id.
    let id_ordered = kinds.len() == 1 && q.sort.is_none();
    let cursor_context = || {
        let kinds_text: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        let sort_text = q.sort.as_ref().map(|(p, d)| format!("{p}:{d}")).unwrap_or_default();
        let fp = cursor::fingerprint(&[t, &kinds_text.join(","), &q.filter_text, &sort_text]);
        (state.keys.derived_secret("cursor"), fp, chrono::Utc::now().timestamp())
    };
    let (total, page, next_cursor) = match (id_ordered, &q.filter) {
        (true, None) => whole_collection_page(state, &view, t, kinds[0], &q, cursor_context)?,
        _ => search_page(state, &view, t, kinds, &q, id_ordered, cursor_context)?,
    };
    let mut budget = state.cfg.max_members_rendered;
    let mut resources: Vec<Rendered> = Vec::with_capacity(page.len());
    for (kind, id) in &page {
        if let Some((v, _)) = render_one(&view, t, state, *kind, id, &q.projection, &mut budget)? {
            resources.push(v);
        }
    }
    if let Some(e) = view.take_error() {
        return Err(e.into());
    }
    let body = match &q.paging {
        Paging::Index { start } => render::list_response(total, *start, resources),
        Paging::Cursor(_) => render::cursor_list_response(total, resources, next_cursor),
    };
    Ok(scim_text(StatusCode::OK, body))
}

/// (total, the page's resources, the next cursor when paging by cursor).
type Page = (usize, Vec<(ScimKind, String)>, Option<String>);

/// One page of a whole collection, O(page) whatever the directory's size: it starts after an id,
/// the cursor's, or for `startIndex` (Okta's import asks 1, 101, 201, ...) the last id of the page
/// before, remembered in `PageHints`; only a first request at a far startIndex walks the keys
/// to it. Ids are time-ordered (UUIDv7), so new resources land at the end and do not shift
/// earlier pages.
fn whole_collection_page(
    state: &AppState,
    view: &impl KvRead,
    t: &str,
    kind: ScimKind,
    q: &ListQuery,
    cursor_context: impl Fn() -> ([u8; 32], String, i64),
) -> Result<Page, ApiError> {
    let total = query::count_of(view, t, kind) as usize;
    let (ids, next) = match &q.paging {
        Paging::Cursor(token) => {
            let (secret, fp, now) = cursor_context();
            let after = match token {
                None => None,
                Some(c) => cursor::open(&secret, &fp, c, now)?.after,
            };
            let mut ids = query::ids_after(view, t, kind, after.as_deref(), q.count + 1);
            let more = ids.len() > q.count;
            ids.truncate(q.count);
            let next = (more && !ids.is_empty())
                .then(|| cursor::issue(&secret, &fp, 0, ids.last().cloned(), now, state.cfg.cursor_timeout_s));
            (ids, next)
        }
        Paging::Index { start } => {
            let start = *start;
            // Past the end there is nothing to walk to; before it, a far first request walks
            // keys, at most `--max-scan` of them.
            let after = match start {
                1 => None,
                _ if start > total => None,
                _ => match state.page_hints.get(t, kind, start) {
                    Some(hint) => Some(hint),
                    None => query::id_at(view, t, kind, start as u64 - 1, state.cfg.max_scan)?,
                },
            };
            let ids = match (start, &after) {
                (2.., None) => vec![],
                _ => query::ids_after(view, t, kind, after.as_deref(), q.count),
            };
            if let Some(last) = ids.last() {
                state.page_hints.put(t, kind, start + ids.len(), last.clone());
            }
            (ids, None)
        }
    };
    Ok((total, ids.into_iter().map(|id| (kind, id)).collect(), next))
}

/// One page of a filtered or sorted list, or of several types: every match is listed first.
fn search_page(
    state: &AppState,
    view: &impl KvRead,
    t: &str,
    kinds: &[ScimKind],
    q: &ListQuery,
    id_ordered: bool,
    cursor_context: impl Fn() -> ([u8; 32], String, i64),
) -> Result<Page, ApiError> {
    let mut ids: Vec<(ScimKind, String)> = Vec::new();
    for kind in kinds {
        let mut found = query::search_ids(view, t, *kind, q.filter.as_ref(), state.cfg.max_scan)?;
        if let Some((path, descending)) = &q.sort {
            found = query::sort_ids(view, t, *kind, found, path, *descending, state.cfg.max_scan)?;
        }
        ids.extend(found.into_iter().map(|id| (*kind, id)));
    }
    let total = ids.len();
    let (start, next_cursor) = match &q.paging {
        Paging::Index { start } => (start - 1, None),
        Paging::Cursor(token) => {
            let (secret, fp, now) = cursor_context();
            let start = match token {
                None => 0,
                Some(c) => {
                    let st = cursor::open(&secret, &fp, c, now)?;
                    match st.after.filter(|_| id_ordered) {
                        Some(after) => ids.partition_point(|(_, id)| id.as_str() <= after.as_str()),
                        None => st.offset,
                    }
                }
            };
            // `start` comes from a cursor the client holds: no arithmetic on it may wrap.
            let end = start.saturating_add(q.count).min(total);
            let next = (end < total).then(|| {
                let after = if id_ordered && end > start { Some(ids[end - 1].1.clone()) } else { None };
                cursor::issue(&secret, &fp, end, after, now, state.cfg.cursor_timeout_s)
            });
            (start, next)
        }
    };
    Ok((total, ids.into_iter().skip(start).take(q.count).collect(), next_cursor))
}

/// Where index paging left off: (tenant, type, next startIndex) → the last id served before it.
/// Bounded; a hint older than ten minutes is not used (the walk to the index is, once).
#[derive(Default)]
pub struct PageHints(std::sync::Mutex<HashMap<(String, ScimKind, usize), (String, std::time::Instant)>>);

const PAGE_HINTS_MAX: usize = 10_000;
const PAGE_HINT_TTL: std::time::Duration = std::time::Duration::from_secs(600);

impl PageHints {
    fn get(&self, tenant: &str, kind: ScimKind, start: usize) -> Option<String> {
        let hints = self.0.lock().expect("page hints lock");
        hints
            .get(&(tenant.to_string(), kind, start))
            .filter(|(_, at)| at.elapsed() < PAGE_HINT_TTL)
            .map(|(id, _)| id.clone())
    }

    fn put(&self, tenant: &str, kind: ScimKind, next_start: usize, last_id: String) {
        let mut hints = self.0.lock().expect("page hints lock");
        if hints.len() >= PAGE_HINTS_MAX {
            hints.retain(|_, (_, at)| at.elapsed() < PAGE_HINT_TTL);
            if hints.len() >= PAGE_HINTS_MAX {
                hints.clear();
            }
        }
        hints.insert((tenant.to_string(), kind, next_start), (last_id, std::time::Instant::now()));
    }
}

/// `POST .search` (RFC 7644 §3.4.3): the SearchRequest body read as the list parameters.
pub async fn search(
    state: &AppState,
    caller: Caller,
    kinds: Vec<ScimKind>,
    body: &Value,
) -> Result<Response, ApiError> {
    let params = search_params(body)?;
    list(state, caller, kinds, params).await
}

fn search_params(body: &Value) -> Result<Params, ApiError> {
    use scimlog_schemas::SchemaError;
    let obj = body.as_object().ok_or_else(|| SchemaError::invalid_syntax("a SearchRequest must be a JSON object"))?;
    if let Some(schemas) = obj.iter().find(|(k, _)| k.eq_ignore_ascii_case("schemas")).map(|(_, v)| v) {
        let ok = schemas
            .as_array()
            .is_some_and(|s| s.iter().any(|u| u.as_str() == Some(scimlog_schemas::urn::SEARCH_REQUEST)));
        if !ok {
            return Err(SchemaError::invalid_syntax(format!(
                "a SearchRequest's schemas must be [{:?}], got {schemas}",
                scimlog_schemas::urn::SEARCH_REQUEST
            ))
            .into());
        }
    }
    let mut params = Params::default();
    for (k, v) in obj {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","),
            Value::Null => continue,
            other => other.to_string(),
        };
        if !k.eq_ignore_ascii_case("schemas") {
            params.insert(k, text)?;
        }
    }
    Ok(params)
}

/// The routes of one resource type: `/<Endpoint>` and `/<Endpoint>/{id}`.
pub fn routes(kind: ScimKind) -> axum::Router<AppState> {
    use axum::extract::{Path, State};
    use axum::routing::get as get_route;

    use super::extract::ScimBody;

    let base = format!("/{}", kind.endpoint());
    let one = format!("/{}/{{id}}", kind.endpoint());
    let search_path = format!("/{}/.search", kind.endpoint());
    axum::Router::new()
        .route(
            &search_path,
            axum::routing::post(move |State(s): State<AppState>, caller: Caller, ScimBody(body): ScimBody| async move {
                search(&s, caller, vec![kind], &body).await
            })
            .fallback(super::method_not_allowed),
        )
        .route(
            &base,
            get_route(move |State(s): State<AppState>, caller: Caller, p: Params| async move {
                list(&s, caller, vec![kind], p).await
            })
                .post(move |State(s): State<AppState>, caller: Caller, p: Params, ScimBody(body): ScimBody| async move {
                    create(&s, caller, kind, &p, body).await
                })
                .fallback(super::method_not_allowed),
        )
        .route(
            &one,
            get_route(move |State(s): State<AppState>, caller: Caller, Path(id): Path<String>, headers: HeaderMap, p: Params| async move {
                match kind {
                    // A user is one point read; a group renders its members, off the runtime.
                    ScimKind::User => get(&s, &caller, kind, &id, &headers, &p),
                    ScimKind::Group => super::blocking_read(&s, move |s| get(s, &caller, kind, &id, &headers, &p)).await,
                }
            })
            .put(move |State(s): State<AppState>, caller: Caller, Path(id): Path<String>, headers: HeaderMap, p: Params, ScimBody(body): ScimBody| async move {
                replace(&s, caller, kind, id, &headers, &p, body).await
            })
            .delete(move |State(s): State<AppState>, caller: Caller, Path(id): Path<String>, headers: HeaderMap| async move {
                delete(&s, caller, kind, id, &headers).await
            })
            .patch(move |State(s): State<AppState>, caller: Caller, Path(id): Path<String>, headers: HeaderMap, p: Params, ScimBody(body): ScimBody| async move {
                patch(&s, caller, kind, id, &headers, &p, body).await
            })
            .fallback(super::method_not_allowed),
        )
}
