//! Users and Groups: cursor-paged tables and search, a user's page (attributes, groups, access
//! with provenance, history with what each event changed, the user as of a moment), a group's
//! page (members paged, grants, history). Everything is read from the read models and the log,
//! as the APIs read them; the history and the as-of view are folds of the user's own events by
//! the live fold (`audit::user_story`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use chrono::{DateTime, NaiveDateTime, Utc};
use scimlog_projections::{access, keys, query, GroupDoc, KvRead, UserDoc};
use scimlog_schemas::event::Event;
use scimlog_schemas::ScimKind;
use scimlog_schemas::{MemberType, ResourceKind};
use serde::Deserialize;
use serde_json::Value;

use super::session::Session;
use super::{render, show, when, ConsoleError, Nav};
use crate::http::{blocking_read, AppState};

/// Rows of a table page.
const PAGE_ROWS: usize = 50;
/// History rows shown on a resource's page (the newest).
const HISTORY_ROWS: usize = 200;
/// Groups listed on a user's page.
const GROUPS_SHOWN: usize = 500;

#[derive(Deserialize, Default)]
pub struct ListParams {
    #[serde(default)]
    q: String,
    after: Option<String>,
}

pub struct Row {
    id: String,
    name: String,
    detail: String,
    active: bool,
    count: String,
    last_change: String,
    position: u64,
}

#[derive(Template)]
#[template(path = "console/list.html")]
struct ListPage {
    nav: Nav,
    kind: &'static str,
    total: u64,
    q: String,
    rows: Vec<Row>,
    next: Option<String>,
    note: Option<String>,
}

/// The last position of a resource's history (what changed it last).
fn last_position(kv: &impl KvRead, t: &str, kind: ResourceKind, id: &str) -> u64 {
    query::history_positions(kv, t, kind, id).last().copied().unwrap_or(0)
}

fn user_row(kv: &impl KvRead, t: &str, u: &UserDoc) -> Row {
    let groups = query::groups_of(kv, t, MemberType::User, &u.id, 101).len();
    Row {
        id: u.id.clone(),
        name: u.user_name().to_string(),
        detail: u.display().to_string(),
        active: u.is_active(),
        count: if groups > 100 { "100+".into() } else { groups.to_string() },
        last_change: when(&u.last_modified),
        position: last_position(kv, t, ResourceKind::User, &u.id),
    }
}

fn group_row(kv: &impl KvRead, t: &str, g: &GroupDoc) -> Row {
    Row {
        id: g.id.clone(),
        name: g.display_name.clone(),
        detail: g.external_id().unwrap_or_default().to_string(),
        active: true,
        count: g.member_count.to_string(),
        last_change: when(&g.last_modified),
        position: last_position(kv, t, ResourceKind::Group, &g.id),
    }
}

/// One page of a search: exact hits through the indexes first (id, userName, externalId,
/// email; a group's displayName and externalId), at any directory size; then the documents
/// after `after` whose names contain `q` (case-insensitive), reading at most `max_scan` of
/// them per page. The cursor is the last id read.
fn search(
    kv: &impl KvRead,
    t: &str,
    kind: ScimKind,
    q: &str,
    after: Option<&str>,
    max_scan: usize,
) -> (Vec<Value>, Option<String>, Option<String>) {
    let mut found: Vec<Value> = Vec::new();
    let doc = |id: &str| match kind {
        ScimKind::User => query::user(kv, t, id).map(|d| d.filterable()),
        ScimKind::Group => query::group(kv, t, id).map(|d| d.filterable()),
    };
    if after.is_none() {
        let mut ids: Vec<String> = vec![q.to_string()];
        match kind {
            ScimKind::User => {
                ids.extend(query::user_id_by_user_name(kv, t, q));
                ids.extend(query::user_id_by_external_id(kv, t, q));
                ids.extend(query::user_ids_by_email(kv, t, q, PAGE_ROWS));
            }
            ScimKind::Group => {
                ids.extend(query::group_id_by_name(kv, t, q));
                ids.extend(query::group_id_by_external_id(kv, t, q));
            }
        }
        for id in ids {
            if !found.iter().any(|d| d["id"] == id.as_str()) {
                found.extend(doc(&id));
            }
        }
    }
    let needle = q.to_lowercase();
    let contains = |d: &Value| {
        ["userName", "displayName", "externalId"]
            .iter()
            .map(|a| &d[*a])
            .chain(std::iter::once(&d["name"]["formatted"]))
            .any(|v| v.as_str().is_some_and(|s| s.to_lowercase().contains(&needle)))
    };
    let prefix = match kind {
        ScimKind::User => keys::users(t),
        ScimKind::Group => keys::groups(t),
    };
    let mut after_key = after.map(|a| match kind {
        ScimKind::User => keys::user(t, a),
        ScimKind::Group => keys::group(t, a),
    });
    let mut read = 0usize;
    loop {
        let batch = kv.scan(&prefix, after_key.as_deref(), 256);
        let Some((last, _)) = batch.last() else { return (found, None, None) };
        after_key = Some(last.clone());
        for (k, v) in &batch {
            // A user's groups list sorts right after its document (`keys::member_of`).
            if keys::is_user_groups(k) {
                continue;
            }
            read += 1;
            let d = match kind {
                ScimKind::User => serde_json::from_slice::<UserDoc>(v).ok().map(|d| d.filterable()),
                ScimKind::Group => serde_json::from_slice::<GroupDoc>(v).ok().map(|d| d.filterable()),
            };
            if let Some(d) = d.filter(|d| contains(d) && !found.iter().any(|f| f["id"] == d["id"])) {
                found.push(d);
            }
            let cursor = || Some(keys::last_part(k));
            if found.len() >= PAGE_ROWS {
                return (found, cursor(), None);
            }
            if read >= max_scan {
                let note = format!("searched {read} documents on this page (--max-scan); go on to search further");
                return (found, cursor(), Some(note));
            }
        }
    }
}

fn list_page(s: &AppState, session: &Session, kind: ScimKind, p: ListParams) -> Result<ListPage, ConsoleError> {
    let t = session.tenant();
    let view = s.store.view();
    let q = p.q.trim().to_string();
    let (docs, next, note): (Vec<Value>, Option<String>, Option<String>) = if q.is_empty() {
        let mut ids = query::ids_after(&view, t, kind, p.after.as_deref(), PAGE_ROWS + 1);
        let next = (ids.len() > PAGE_ROWS).then(|| ids[PAGE_ROWS - 1].clone());
        ids.truncate(PAGE_ROWS);
        (ids.into_iter().map(|id| Value::String(id)).collect(), next, None)
    } else {
        search(&view, t, kind, &q, p.after.as_deref(), s.cfg.max_scan)
    };
    let rows = docs
        .iter()
        .filter_map(|d| d.as_str().or_else(|| d["id"].as_str()))
        .filter_map(|id| match kind {
            ScimKind::User => query::user(&view, t, id).map(|u| user_row(&view, t, &u)),
            ScimKind::Group => query::group(&view, t, id).map(|g| group_row(&view, t, &g)),
        })
        .collect();
    if let Some(e) = view.take_error() {
        return Err(crate::http::error::ApiError::from(e).into());
    }
    let (nav, kind_name) = match kind {
        ScimKind::User => (session.nav("users"), "users"),
        ScimKind::Group => (session.nav("groups"), "groups"),
    };
    Ok(ListPage { nav, kind: kind_name, total: query::count_of(&view, t, kind), q, rows, next, note })
}

pub async fn users(
    State(state): State<AppState>,
    session: Session,
    Query(p): Query<ListParams>,
) -> Result<Response, ConsoleError> {
    let page = blocking_read(&state, move |s| Ok(list_page(s, &session, ScimKind::User, p))).await??;
    Ok(render(&page))
}

pub async fn groups(
    State(state): State<AppState>,
    session: Session,
    Query(p): Query<ListParams>,
) -> Result<Response, ConsoleError> {
    let page = blocking_read(&state, move |s| Ok(list_page(s, &session, ScimKind::Group, p))).await??;
    Ok(render(&page))
}

/// What one event changed on a resource: attribute, old value, new value.
pub struct Change {
    attr: String,
    old: String,
    new: String,
}

pub struct HistoryRow {
    position: u64,
    at: String,
    event_type: &'static str,
    actor: String,
    summary: String,
    changes: Vec<Change>,
}

pub struct GrantRow {
    urn: String,
    via: Option<(String, String)>,
    position: u64,
}

#[derive(Template)]
#[template(path = "console/user.html")]
struct UserPage {
    nav: Nav,
    id: String,
    user_name: String,
    active: bool,
    attributes: Vec<(String, String)>,
    groups: Vec<(String, String)>,
    more_groups: bool,
    grants: Vec<GrantRow>,
    history: Vec<HistoryRow>,
    history_total: usize,
    at: String,
    as_of: Option<AsOf>,
}

/// The user as it stood at a moment.
pub struct AsOf {
    label: String,
    attributes: Option<Vec<(String, String)>>,
}

#[derive(Deserialize, Default)]
pub struct UserParams {
    #[serde(default)]
    at: String,
}

/// Where in the log "as of" stands: after a position, or at a time.
enum Moment {
    Position(u64),
    Time(DateTime<Utc>),
}

fn parse_moment(at: &str) -> Result<Moment, ConsoleError> {
    let at = at.trim();
    if let Ok(p) = at.parse::<u64>() {
        return Ok(Moment::Position(p));
    }
    parse_time(at).map(Moment::Time).ok_or_else(|| {
        ConsoleError::BadRequest(format!(
            "as of {at:?}: give a log position (1234) or a UTC time (2026-11-27T19:30 or RFC 3339)"
        ))
    })
}

/// RFC 3339, or what a `datetime-local` input sends (read as UTC).
pub fn parse_time(at: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(at) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(at, format).ok())
        .map(|t| t.and_utc())
}

/// A resource's attributes as (name, value) rows, without what every resource has.
fn attribute_rows(doc: &Value) -> Vec<(String, String)> {
    doc.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "schemas" | "meta" | "groups" | "members"))
                .map(|(k, v)| (k.clone(), show(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The ids in a rendered user's `groups`.
fn group_ids(doc: Option<&Value>) -> Vec<String> {
    doc.and_then(|d| d["groups"].as_array())
        .map(|gs| gs.iter().filter_map(|g| g["value"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// What changed between two renders of a user: each attribute whose value differs, and the
/// groups joined (`+`) and left (`−`), named as they are named now.
fn changes(before: Option<&Value>, after: Option<&Value>, group_name: &dyn Fn(&str) -> String) -> Vec<Change> {
    let empty = serde_json::Map::new();
    let (b, a) =
        (before.and_then(Value::as_object).unwrap_or(&empty), after.and_then(Value::as_object).unwrap_or(&empty));
    let mut names: Vec<&String> = b.keys().chain(a.keys()).collect();
    names.sort();
    names.dedup();
    let mut out: Vec<Change> = names
        .into_iter()
        .filter(|k| !matches!(k.as_str(), "schemas" | "meta" | "groups" | "id"))
        .filter(|k| b.get(*k) != a.get(*k))
        .map(|k| Change {
            attr: k.clone(),
            old: b.get(k).map_or("—".into(), show),
            new: a.get(k).map_or("—".into(), show),
        })
        .collect();
    let (was, is) = (group_ids(before), group_ids(after));
    for g in is.iter().filter(|g| !was.contains(g)) {
        out.push(Change { attr: "groups".into(), old: String::new(), new: format!("+ {}", group_name(g)) });
    }
    for g in was.iter().filter(|g| !is.contains(g)) {
        out.push(Change { attr: "groups".into(), old: format!("− {}", group_name(g)), new: String::new() });
    }
    out
}

/// A user's or a group's name as it is now, for history lines.
fn name_now(kv: &impl KvRead, t: &str, id: &str) -> String {
    query::user(kv, t, id)
        .map(|u| u.user_name().to_string())
        .or_else(|| query::group(kv, t, id).map(|g| g.display_name))
        .unwrap_or_else(|| format!("({id}, gone)"))
}

fn user_page(s: &AppState, session: &Session, id: &str, p: &UserParams) -> Result<UserPage, ConsoleError> {
    let t = session.tenant();
    let view = s.store.view();
    let doc = query::user(&view, t, id).ok_or_else(|| {
        ConsoleError::NotFound(format!(
            "no user {id:?} in tenant {t:?}: a deleted or erased user has no page (its events stay in Events)"
        ))
    })?;
    let name_of = |id: &str| name_now(&view, t, id);
    let mut member_of = query::groups_of(&view, t, MemberType::User, id, GROUPS_SHOWN + 1);
    let more_groups = member_of.len() > GROUPS_SHOWN;
    member_of.truncate(GROUPS_SHOWN);
    let groups = member_of.into_iter().map(|g| (name_of(&g), g)).collect();
    let grants = s
        .groups
        .effective(&view, t, &doc.head(), s.cfg.max_scan)
        .map_err(|e| ConsoleError::BadRequest(e.to_string()))?
        .into_iter()
        .map(|e| GrantRow { urn: e.urn, via: e.via_group, position: e.position })
        .collect();
    let story = crate::audit::user_story(&s.store, &*s.keys, t, id, s.cfg.max_scan)?;
    let mut history = Vec::with_capacity(story.len().min(HISTORY_ROWS));
    for (i, (e, after)) in story.iter().enumerate().skip(story.len().saturating_sub(HISTORY_ROWS)) {
        let before = i.checked_sub(1).and_then(|j| story[j].1.as_ref());
        history.push(history_row(e, changes(before, after.as_ref(), &name_of), &name_of));
    }
    history.reverse();
    let as_of = match p.at.trim() {
        "" => None,
        at => Some(as_of(parse_moment(at)?, &story)),
    };
    let mut attributes = vec![("id".to_string(), doc.id.clone())];
    attributes.extend(attribute_rows(&doc.filterable()).into_iter().filter(|(k, _)| k != "id"));
    Ok(UserPage {
        nav: session.nav("users"),
        id: doc.id.clone(),
        user_name: doc.user_name().to_string(),
        active: doc.is_active(),
        attributes,
        groups,
        more_groups,
        grants,
        history,
        history_total: story.len(),
        at: p.at.trim().to_string(),
        as_of,
    })
}

fn as_of(moment: Moment, story: &[(Event, Option<Value>)]) -> AsOf {
    let upto = |e: &Event| match moment {
        Moment::Position(p) => e.position <= p,
        Moment::Time(t) => e.recorded_at <= t,
    };
    let label = match moment {
        Moment::Position(p) => format!("after position {p}"),
        Moment::Time(t) => format!("at {}", when(&t)),
    };
    let state = story.iter().take_while(|(e, _)| upto(e)).last().and_then(|(_, after)| after.as_ref());
    let rows = state.map(|doc| {
        let mut rows = attribute_rows(doc);
        let names: Vec<String> = doc["groups"]
            .as_array()
            .map(|gs| gs.iter().map(|g| g["display"].as_str().unwrap_or("?").to_string()).collect())
            .unwrap_or_default();
        rows.push(("groups".into(), if names.is_empty() { "none".into() } else { names.join(", ") }));
        rows
    });
    AsOf { label, attributes: rows }
}

fn history_row(e: &Event, changes: Vec<Change>, name_of: &dyn Fn(&str) -> String) -> HistoryRow {
    HistoryRow {
        position: e.position,
        at: when(&e.recorded_at),
        event_type: e.body.event_type().as_str(),
        actor: e.actor.clone(),
        summary: super::log::summary(e, name_of),
        changes,
    }
}

pub async fn user(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(p): Query<UserParams>,
) -> Result<Response, ConsoleError> {
    let page = blocking_read(&state, move |s| Ok(user_page(s, &session, &id, &p))).await??;
    Ok(render(&page))
}

pub struct MemberRow {
    id: String,
    kind: &'static str,
    name: String,
}

#[derive(Template)]
#[template(path = "console/group.html")]
struct GroupPage {
    nav: Nav,
    id: String,
    display_name: String,
    attributes: Vec<(String, String)>,
    member_count: u64,
    members: Vec<MemberRow>,
    next_members: Option<String>,
    grants: Vec<(String, u64)>,
    history: Vec<HistoryRow>,
    history_total: usize,
}

#[derive(Deserialize, Default)]
pub struct GroupParams {
    after: Option<String>,
}

fn group_page(s: &AppState, session: &Session, id: &str, p: &GroupParams) -> Result<GroupPage, ConsoleError> {
    let t = session.tenant();
    let view = s.store.view();
    let doc = query::group(&view, t, id).ok_or_else(|| {
        ConsoleError::NotFound(format!("no group {id:?} in tenant {t:?} (a deleted group has no page)"))
    })?;
    let mut page = query::members(&view, t, id, p.after.as_deref(), PAGE_ROWS + 1);
    let next_members = (page.len() > PAGE_ROWS).then(|| page[PAGE_ROWS - 1].id.clone());
    page.truncate(PAGE_ROWS);
    let members = page
        .into_iter()
        .map(|m| {
            let (kind, name) = match m.member_type.kind() {
                ResourceKind::Group => ("group", query::group(&view, t, &m.id).map(|g| g.display_name)),
                _ => ("user", query::user(&view, t, &m.id).map(|u| u.user_name().to_string())),
            };
            MemberRow { name: name.unwrap_or_else(|| "(gone)".into()), kind, id: m.id }
        })
        .collect();
    let grants = access::grants_of(&view, t, id).into_iter().map(|g| (g.urn, g.position)).collect();
    let (history_total, events) =
        crate::audit::history_tail(&s.store, &*s.keys, t, ResourceKind::Group, id, HISTORY_ROWS)?;
    let name_of = |m: &str| name_now(&view, t, m);
    let mut history: Vec<HistoryRow> = events.iter().map(|e| history_row(e, vec![], &name_of)).collect();
    history.reverse();
    Ok(GroupPage {
        nav: session.nav("groups"),
        id: doc.id.clone(),
        display_name: doc.display_name.clone(),
        attributes: attribute_rows(&doc.filterable()),
        member_count: doc.member_count,
        members,
        next_members,
        grants,
        history,
        history_total,
    })
}

pub async fn group(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(p): Query<GroupParams>,
) -> Result<Response, ConsoleError> {
    let page = blocking_read(&state, move |s| Ok(group_page(s, &session, &id, &p))).await??;
    Ok(render(&page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOSTILE: &str = "<script>alert(1)</script>";

    fn nav() -> Nav {
        Nav {
            base: "/admin".into(),
            who: HOSTILE.into(),
            tenant: "acme".into(),
            tenants: vec!["acme".into()],
            csrf: "a\"b".into(),
            active: "users",
        }
    }

    /// What a client sent (a userName, an attribute, an id) is shown as text, never as markup,
    /// and ids in links are percent-encoded.
    #[test]
    fn templates_escape_what_clients_send() {
        let row = Row {
            id: "\"><img src=x onerror=alert(1)>".into(),
            name: HOSTILE.into(),
            detail: HOSTILE.into(),
            active: true,
            count: "0".into(),
            last_change: String::new(),
            position: 1,
        };
        let list = ListPage {
            nav: nav(),
            kind: "users",
            total: 1,
            q: HOSTILE.into(),
            rows: vec![row],
            next: Some(HOSTILE.into()),
            note: None,
        };
        let user = UserPage {
            nav: nav(),
            id: "\"><img src=x>".into(),
            user_name: HOSTILE.into(),
            active: true,
            attributes: vec![("title".into(), HOSTILE.into())],
            groups: vec![(HOSTILE.into(), "g".into())],
            more_groups: false,
            grants: vec![],
            history: vec![HistoryRow {
                position: 1,
                at: String::new(),
                event_type: "user.updated",
                actor: HOSTILE.into(),
                summary: HOSTILE.into(),
                changes: vec![Change { attr: HOSTILE.into(), old: HOSTILE.into(), new: HOSTILE.into() }],
            }],
            history_total: 1,
            at: HOSTILE.into(),
            as_of: Some(AsOf { label: HOSTILE.into(), attributes: Some(vec![(HOSTILE.into(), HOSTILE.into())]) }),
        };
        for html in [list.render().unwrap(), user.render().unwrap()] {
            assert!(!html.contains("<script") && !html.contains("<img"), "{html}");
            assert!(html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"), "{html}");
            assert!(html.contains("value=\"a&#34;b\""), "attribute values are escaped too");
        }
        assert!(list.render().unwrap().contains("/admin/users/%22%3E%3Cimg"), "ids in links are percent-encoded");
    }

    #[test]
    fn moments() {
        assert!(matches!(parse_moment("42"), Ok(Moment::Position(42))));
        for t in ["2026-11-27T19:30", "2026-11-27T19:30:00Z", "2026-11-27 19:30:00"] {
            assert!(matches!(parse_moment(t), Ok(Moment::Time(_))), "{t}");
        }
        assert!(matches!(parse_moment("yesterday"), Err(ConsoleError::BadRequest(d)) if d.contains("yesterday")));
    }

    #[test]
    fn changes_name_old_and_new_values_and_groups() {
        let before =
            json!({"id": "1", "userName": "a", "title": "x", "groups": [{"value": "g1"}], "meta": {"version": "1"}});
        let after = json!({"id": "1", "userName": "a", "displayName": "A", "groups": [{"value": "g2"}], "meta": {"version": "2"}});
        let name = |g: &str| format!("G-{g}");
        let got: Vec<(String, String, String)> =
            changes(Some(&before), Some(&after), &name).into_iter().map(|c| (c.attr, c.old, c.new)).collect();
        let want = [("displayName", "—", "A"), ("title", "x", "—"), ("groups", "", "+ G-g2"), ("groups", "− G-g1", "")]
            .map(|(a, o, n)| (a.to_string(), o.to_string(), n.to_string()));
        assert_eq!(got, want);
        assert!(changes(Some(&before), Some(&before), &name).is_empty(), "no change, no line");
    }
}
