//! Request extraction: parse at the boundary into types, with SCIM errors for anything malformed.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use scimlog_schemas::filter::{Filter, FilterLimits};
use scimlog_schemas::registry::ResourceSchema;
use scimlog_schemas::{urn, AttrPath, CiName, SchemaError};
use serde_json::Value;

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;
use crate::log::writer::Origin;

/// A JSON request body, sent as `application/scim+json` or `application/json`.
pub struct ScimBody(pub Value);

impl FromRequest<AppState> for ScimBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default();
            let essence = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            if essence != "application/scim+json" && essence != "application/json" {
                return Err(ApiError::UnsupportedMediaType(ct.to_string()));
            }
        }
        let limit = state.cfg.max_body_bytes;
        // A declared length over the limit is refused before a byte of the body is read.
        let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let limit_ms = state.cfg.body_read_timeout_ms;
        let read = Bytes::from_request(req, state);
        let bytes = tokio::time::timeout(std::time::Duration::from_millis(limit_ms), read)
            .await
            .map_err(|_| ApiError::RequestTimeout { limit_ms })?
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge { limit }
                } else {
                    ApiError::Invalid(SchemaError::invalid_syntax(format!("cannot read the request body: {rejection}")))
                }
            })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::Invalid(SchemaError::invalid_syntax(format!("the request body is not valid JSON: {e}")))
        })?;
        Ok(ScimBody(value))
    }
}

/// The authenticated principal and this request's id, as the writer needs them.
#[derive(Clone)]
pub struct Caller {
    pub principal: Principal,
    pub request_id: String,
}

impl Caller {
    pub fn tenant(&self) -> &str {
        &self.principal.tenant
    }
    pub fn origin(&self) -> Origin {
        Origin {
            tenant: self.principal.tenant.clone(),
            actor: self.principal.name.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let principal =
            parts.extensions.get::<Principal>().cloned().ok_or(ApiError::Unauthorized("authentication required"))?;
        let request_id = parts.extensions.get::<super::RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        Ok(Caller { principal, request_id })
    }
}

/// A request's parameters: the query string's, or a SearchRequest's members. Each name is sent
/// once.
///
/// Names match ignoring ASCII case, as SCIM's attribute names do (`startIndex`, `STARTINDEX`).
/// A name sent twice, in any case, is refused: which of the two values the client meant cannot
/// be known, and keeping either would drop the other without a word. Their number is bounded by
/// what carries them: hyper's limit on a request head, `--max-body-bytes` for a SearchRequest.
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses an `application/x-www-form-urlencoded` query string (without its `?`).
    pub fn parse(query: &str) -> Result<Params, SchemaError> {
        let mut params = Params::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            params.insert(&name, value.into_owned())?;
        }
        Ok(params)
    }

    /// Adds a parameter; a name already held (ignoring case) is refused.
    pub fn insert(&mut self, name: &str, value: String) -> Result<(), SchemaError> {
        match self.0.entry(name.to_ascii_lowercase()) {
            std::collections::hash_map::Entry::Occupied(_) => Err(SchemaError::invalid_value(format!(
                "the parameter {name:?} is sent twice; send each parameter once"
            ))),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(value);
                Ok(())
            }
        }
    }

    /// The value of `name`, matched ignoring ASCII case.
    pub fn get(&self, name: &str) -> Option<&str> {
        // Most names asked for are lowercase already (`filter`, `user`): no copy for those.
        let found = match name.bytes().any(|b| b.is_ascii_uppercase()) {
            true => self.0.get(&name.to_ascii_lowercase()),
            false => self.0.get(name),
        };
        found.map(String::as_str)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Params::parse(parts.uri.query().unwrap_or_default())?)
    }
}

/// Parses an entity tag as this server writes them: `W/"7"` (or `"7"`).
fn parse_etag(tag: &str) -> Option<u64> {
    let tag = tag.trim();
    let tag = tag.strip_prefix("W/").unwrap_or(tag);
    tag.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// The version `If-Match` requires: `None` when absent or `*`. A tag that is not one of ours can
/// match no version, so it is turned into one that never matches.
pub fn if_match(headers: &HeaderMap) -> Option<u64> {
    let v = headers.get(IF_MATCH)?.to_str().ok()?.trim();
    if v == "*" {
        return None;
    }
    Some(v.split(',').find_map(parse_etag).unwrap_or(u64::MAX))
}

/// Whether `If-None-Match` names `version` (or is `*`).
pub fn if_none_match_hits(headers: &HeaderMap, version: u64) -> bool {
    let Some(v) = headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    v.trim() == "*" || v.split(',').filter_map(parse_etag).any(|t| t == version)
}

/// Which attributes a response carries (RFC 7644 §3.9), on every response that returns a
/// resource (GET, POST, PUT, PATCH, lists and searches).
#[derive(Clone, Debug, Default)]
pub struct Projection {
    /// `attributes=`: only these (plus those returned always); paths may name a sub-attribute.
    only: Option<Vec<AttrPath>>,
    /// `excludedAttributes=`.
    excluded: Vec<AttrPath>,
}

/// One entry as the rendered JSON holds it: a top-level key (a core attribute, or an
/// extension's URN) and what is kept or dropped inside it (a sub-attribute, or the extension's
/// attribute).
type Entry = (CiName, Option<CiName>);

fn parse_attr_list(s: &str) -> Result<Vec<AttrPath>, SchemaError> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(AttrPath::parse).collect()
}

/// Where a path is in the rendered JSON of a resource of `schema`. A bare name only an extension
/// defines (`manager`) is that extension's, as everywhere else a path is read.
fn entry(schema: &ResourceSchema, path: &AttrPath) -> Entry {
    let path = schema.qualify(path);
    match path.schema {
        Some(urn) if !urn.eq_ignore_ascii_case(schema.core_urn) => {
            let canonical = schema.extension(&urn).map(|(u, _)| u.to_string()).unwrap_or(urn);
            (CiName::new(&canonical), Some(path.attr))
        }
        _ => (path.attr, path.sub),
    }
}

impl Projection {
    pub fn parse(attributes: Option<&str>, excluded: Option<&str>) -> Result<Projection, SchemaError> {
        Ok(Projection {
            only: attributes.map(parse_attr_list).transpose()?,
            excluded: excluded.map(parse_attr_list).transpose()?.unwrap_or_default(),
        })
    }

    /// The projection a request's query asks for.
    pub fn from_params(params: &Params) -> Result<Projection, SchemaError> {
        Projection::parse(params.get("attributes"), params.get("excludedAttributes"))
    }

    /// Whether the request named any attributes at all.
    pub fn is_default(&self) -> bool {
        self.only.is_none() && self.excluded.is_empty()
    }

    /// Whether the core attribute `name` is wanted at all (to skip loading it).
    pub fn wants(&self, name: &str) -> bool {
        let core = |p: &AttrPath| {
            p.schema.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(urn::USER) || s.eq_ignore_ascii_case(urn::GROUP))
        };
        let excluded_whole = self.excluded.iter().any(|p| core(p) && p.sub.is_none() && p.attr == *name);
        let listed = self.only.as_ref().map(|o| o.iter().any(|p| core(p) && p.attr == *name)).unwrap_or(true);
        !excluded_whole && listed
    }

    /// Applies the projection to a rendered resource of `schema`. `id` and `schemas` are always
    /// returned.
    pub fn apply(&self, schema: &ResourceSchema, mut v: Value) -> Value {
        let Value::Object(obj) = &mut v else { return v };
        let always = |k: &str| k == "id" || k == "schemas";
        if let Some(only) = &self.only {
            let only: Vec<Entry> = only.iter().map(|p| entry(schema, p)).collect();
            obj.retain(|k, _| always(k) || only.iter().any(|(a, _)| a == k.as_str()));
            for (a, sub) in &only {
                let Some(sub) = sub else { continue };
                // `name.givenName` alone keeps only that sub-attribute of `name`, unless `name`
                // itself is listed too.
                if only.iter().any(|(b, s)| b == a && s.is_none()) {
                    continue;
                }
                let keep: Vec<&CiName> = only.iter().filter(|(b, _)| b == a).filter_map(|(_, s)| s.as_ref()).collect();
                if let Some((_, inner)) = obj.iter_mut().find(|(k, _)| a == k.as_str()) {
                    retain_subs(inner, |k| keep.iter().any(|s| *s == k) || *sub == *k);
                }
            }
        }
        for (a, sub) in self.excluded.iter().map(|p| entry(schema, p)) {
            match sub {
                None if !always(a.as_str()) => obj.retain(|k, _| a != *k.as_str()),
                Some(sub) => {
                    if let Some((_, inner)) = obj.iter_mut().find(|(k, _)| a == *k.as_str()) {
                        retain_subs(inner, |k| sub != *k);
                    }
                }
                None => {}
            }
        }
        // An extension left empty by the projection is not shown.
        obj.retain(|k, v| !(k.starts_with("urn:") && v.as_object().is_some_and(|o| o.is_empty())));
        v
    }
}

fn retain_subs(v: &mut Value, keep: impl Fn(&str) -> bool + Copy) {
    match v {
        Value::Object(o) => o.retain(|k, _| keep(k)),
        Value::Array(items) => items.iter_mut().for_each(|i| retain_subs(i, keep)),
        _ => {}
    }
}

/// How a list is paged: by index (RFC 7644, the default) or by cursor (RFC 9865).
#[derive(Debug, PartialEq, Eq)]
pub enum Paging {
    /// 1-based `startIndex`.
    Index { start: usize },
    /// `cursor=` (empty for the first page) or the cursor of the page before.
    Cursor(Option<String>),
}

/// The query of a list request, validated.
pub struct ListQuery {
    pub filter: Option<Filter>,
    /// The filter as sent, for cursor fingerprints.
    pub filter_text: String,
    pub paging: Paging,
    pub count: usize,
    pub projection: Projection,
    /// `sortBy` and whether `sortOrder` is descending.
    pub sort: Option<(scimlog_schemas::AttrPath, bool)>,
}

/// Entra sometimes URL-encodes a filter value twice (`userName eq "a%40b.com"`): a string value
/// that still holds `%XX` escapes after the query was decoded, and decodes to valid UTF-8, is
/// decoded once more.
fn decode_twice_encoded(f: &mut Filter) {
    match f {
        Filter::Compare { value: serde_json::Value::String(s), .. } => {
            let has_escape =
                s.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit());
            if has_escape {
                if let Ok(d) = percent_encoding::percent_decode_str(s).decode_utf8() {
                    *s = d.into_owned();
                }
            }
        }
        Filter::And(a, b) | Filter::Or(a, b) => {
            decode_twice_encoded(a);
            decode_twice_encoded(b);
        }
        Filter::Not(a) | Filter::ValuePath { filter: a, .. } => decode_twice_encoded(a),
        _ => {}
    }
}

impl ListQuery {
    pub fn from_params(params: &Params, state: &AppState) -> Result<ListQuery, ApiError> {
        let get = |name: &str| params.get(name);
        let int = |name: &str| -> Result<Option<i64>, ApiError> {
            get(name)
                .map(|v| {
                    v.trim().parse::<i64>().map_err(|_| {
                        ApiError::Invalid(SchemaError::invalid_value(format!("{name} must be an integer, got {v:?}")))
                    })
                })
                .transpose()
        };
        let sort = match get("sortBy").filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(by) => {
                let path = scimlog_schemas::AttrPath::parse(by.trim())
                    .map_err(|_| SchemaError::invalid_value(format!("sortBy {by:?} is not an attribute path")))?;
                let descending = match get("sortOrder").map(|o| o.trim().to_ascii_lowercase()).as_deref() {
                    None | Some("") | Some("ascending") => false,
                    Some("descending") => true,
                    Some(other) => {
                        return Err(SchemaError::invalid_value(format!(
                            "sortOrder must be \"ascending\" or \"descending\", got {other:?}"
                        ))
                        .into())
                    }
                };
                Some((path, descending))
            }
        };
        let limits = FilterLimits { max_length: state.cfg.max_filter_length, max_depth: state.cfg.max_filter_depth };
        let filter_text = get("filter").unwrap_or_default().trim().to_string();
        let mut filter = (!filter_text.is_empty()).then(|| Filter::parse(&filter_text, limits)).transpose()?;
        if let Some(f) = &mut filter {
            decode_twice_encoded(f);
        }
        let paging = match (get("cursor"), get("startIndex")) {
            (Some(_), Some(_)) => {
                return Err(SchemaError::invalid_value("use either cursor or startIndex, not both (RFC 9865)").into())
            }
            (Some(c), None) => Paging::Cursor((!c.is_empty()).then(|| c.to_string())),
            // RFC 7644 §3.4.2.4: startIndex < 1 is read as 1, a negative count as 0.
            (None, _) => Paging::Index { start: int("startIndex")?.unwrap_or(1).max(1) as usize },
        };
        let count = match int("count")? {
            None => state.cfg.default_page_size,
            Some(c) => (c.max(0) as u64).min(state.cfg.max_page_size as u64) as usize,
        };
        let projection = Projection::parse(get("attributes"), get("excludedAttributes"))?;
        Ok(ListQuery { filter, filter_text, paging, count, projection, sort })
    }
}

#[cfg(test)]
mod tests {
    use super::Params;

    /// (query string, the parameters read, or the name the refusal quotes)
    #[test]
    fn a_query_string_is_read_once_per_name() {
        let table: &[(&str, Result<&[(&str, &str)], &str>)] = &[
            ("", Ok(&[])),
            ("filter=a&count=2", Ok(&[("filter", "a"), ("count", "2")])),
            ("startIndex=3", Ok(&[("STARTINDEX", "3"), ("startindex", "3")])),
            ("a=%41+b&b=&&c", Ok(&[("a", "A b"), ("b", ""), ("c", "")])),
            ("filter=a&filter=b", Err("filter")),
            ("filter=a&filter=a", Err("filter")),
            ("count=1&COUNT=2", Err("COUNT")),
            ("fil%74er=x&filter=y", Err("filter")),
            ("b=&b", Err("b")),
        ];
        for (query, expected) in table {
            match (Params::parse(query), expected) {
                (Ok(p), Ok(pairs)) => {
                    for (name, value) in *pairs {
                        assert_eq!(p.get(name), Some(*value), "{query}: {name}");
                    }
                    assert_eq!(
                        p.0.len(),
                        pairs
                            .iter()
                            .map(|(n, _)| n.to_ascii_lowercase())
                            .collect::<std::collections::HashSet<_>>()
                            .len(),
                        "{query}"
                    );
                }
                (Err(e), Err(name)) => {
                    let detail = e.to_string();
                    assert!(detail.contains(&format!("{name:?} is sent twice")), "{query}: {detail}");
                }
                (got, want) => panic!("{query}: got {got:?}, want {want:?}"),
            }
        }
    }
}
