//! The PATCH engine (RFC 7644 §3.5.2): parse a PatchOp request into [`PatchOp`]s, and apply them
//! to a resource's canonical attribute map.
//!
//! The engine is deliberately forgiving about form and strict about meaning: op names and
//! attribute names compare without case (Entra sends `Replace` and `PascalCase`), path-less
//! values may use dotted and URN-qualified keys, a value-path add or replace that matches nothing
//! creates the element from the filter's `eq` terms (Entra's `emails[type eq "work"].value`).
//! Values are not type-checked here: the patched map is validated as a whole by
//! [`crate::resource`], exactly as a PUT body would be.

use serde_json::{Map, Value};

use crate::error::{SchemaError, ScimType};
use crate::filter::{Filter, FilterLimits};
use crate::path::AttrPath;
use crate::registry::{Attr, AttrType, Mutability, ResourceSchema};
use crate::urn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Remove,
    Replace,
}

/// `attr`, `attr.sub`, `attr[filter]` or `attr[filter].sub`, optionally URN-qualified; or a whole
/// extension (`urn:...:enterprise:2.0:User`).
#[derive(Clone, Debug, PartialEq)]
pub struct PatchPath {
    pub attr: AttrPath,
    pub filter: Option<Filter>,
    /// The sub-attribute after a value filter: `value` in `emails[type eq "work"].value`.
    pub sub_after: Option<String>,
}

impl PatchPath {
    pub fn parse(text: &str, limits: FilterLimits) -> Result<PatchPath, SchemaError> {
        let invalid = |why: &str| SchemaError::new(ScimType::InvalidPath, format!("invalid path {text:?}: {why}"));
        let text = text.trim();
        let Some(open) = text.find('[') else {
            return Ok(PatchPath { attr: AttrPath::parse(text)?, filter: None, sub_after: None });
        };
        let close = text.rfind(']').filter(|c| *c > open).ok_or_else(|| invalid("'[' without ']'"))?;
        let attr = AttrPath::parse(&text[..open])?;
        if attr.sub.is_some() {
            return Err(invalid("a value filter follows a sub-attribute"));
        }
        let filter = Filter::parse(&text[open + 1..close], limits).map_err(|e| {
            SchemaError::new(ScimType::InvalidPath, format!("invalid filter in path {text:?}: {}", e.detail))
        })?;
        let rest = &text[close + 1..];
        let sub_after = match rest.strip_prefix('.') {
            None if rest.is_empty() => None,
            Some(s) if crate::path::is_attr_name(s) => Some(s.to_string()),
            _ => return Err(invalid("expected '.subAttribute' or the end after ']'")),
        };
        Ok(PatchPath { attr, filter: Some(filter), sub_after })
    }

    /// Whether the path names the top-level attribute `name` (any filter or sub-attribute).
    pub fn is_attr(&self, name: &str) -> bool {
        self.attr
            .schema
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(urn::GROUP) || s.eq_ignore_ascii_case(urn::USER))
            && self.attr.attr.as_str().eq_ignore_ascii_case(name)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PatchOp {
    pub op: OpKind,
    /// The path text as sent, kept for error details.
    pub path_text: Option<String>,
    pub path: Option<PatchPath>,
    /// `Value::Null` when the operation has no value.
    pub value: Value,
}

fn get_ci<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// Parses a PatchOp request body. `max_operations` bounds the `Operations` list.
pub fn parse_patch(body: &Value, limits: FilterLimits, max_operations: usize) -> Result<Vec<PatchOp>, SchemaError> {
    let obj = body.as_object().ok_or_else(|| SchemaError::invalid_syntax("the PATCH body must be a JSON object"))?;
    if let Some(schemas) = get_ci(obj, "schemas") {
        let ok = schemas
            .as_array()
            .is_some_and(|s| s.iter().any(|u| u.as_str().is_some_and(|u| u.eq_ignore_ascii_case(urn::PATCH_OP))));
        if !ok {
            return Err(SchemaError::invalid_syntax(format!(
                "the PATCH body's schemas must be [{:?}], got {schemas}",
                urn::PATCH_OP
            )));
        }
    }
    let ops = get_ci(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| SchemaError::invalid_syntax("the PATCH body needs an 'Operations' list"))?;
    if ops.is_empty() {
        return Err(SchemaError::invalid_syntax("'Operations' is empty: a PATCH needs at least one operation"));
    }
    if ops.len() > max_operations {
        return Err(SchemaError::new(
            ScimType::TooMany,
            format!("{} operations in one PATCH, more than the limit of {max_operations}", ops.len()),
        ));
    }
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let o =
                op.as_object().ok_or_else(|| SchemaError::invalid_syntax(format!("operation {i} is not an object")))?;
            let kind = match get_ci(o, "op").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
                Some("add") => OpKind::Add,
                Some("remove") => OpKind::Remove,
                Some("replace") => OpKind::Replace,
                other => {
                    return Err(SchemaError::invalid_syntax(format!(
                        "operation {i}: 'op' must be add, remove or replace, got {}",
                        other.map(|s| format!("{s:?}")).unwrap_or_else(|| "nothing".into())
                    )))
                }
            };
            let path_text = match get_ci(o, "path") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.trim().is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(SchemaError::new(
                        ScimType::InvalidPath,
                        format!("operation {i}: 'path' must be a string, got {other}"),
                    ))
                }
            };
            let path = path_text.as_deref().map(|p| PatchPath::parse(p, limits)).transpose()?;
            let value = get_ci(o, "value").cloned().unwrap_or(Value::Null);
            if path.is_none() {
                match kind {
                    OpKind::Remove => {
                        return Err(SchemaError::new(
                            ScimType::NoTarget,
                            format!("operation {i}: remove needs a 'path'"),
                        ))
                    }
                    _ if !value.is_object() => {
                        return Err(SchemaError::invalid_value(format!(
                            "operation {i}: {} without a path needs an object value, got {value}",
                            if kind == OpKind::Add { "add" } else { "replace" }
                        )))
                    }
                    _ => {}
                }
            }
            Ok(PatchOp { op: kind, path_text, path, value })
        })
        .collect()
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Where an attribute lives: the core map, or an extension's object under its URN.
struct Target<'s> {
    extension: Option<&'s str>,
    attr: &'s Attr,
}

fn locate<'s>(schema: &'s ResourceSchema, path: &AttrPath) -> Option<Target<'s>> {
    schema.locate(path.schema.as_deref(), path.attr.as_str()).map(|(extension, attr)| Target { extension, attr })
}

fn container<'d>(doc: &'d mut Map<String, Value>, extension: Option<&str>) -> &'d mut Map<String, Value> {
    match extension {
        None => doc,
        Some(urn) => {
            let slot = doc.entry(urn.to_string()).or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            slot.as_object_mut().expect("just made an object")
        }
    }
}

/// Drops an extension object left empty.
fn tidy(doc: &mut Map<String, Value>, extension: Option<&str>) {
    if let Some(urn) = extension {
        if doc.get(urn).and_then(Value::as_object).is_some_and(|o| o.is_empty()) {
            doc.remove(urn);
        }
    }
}

/// The canonical spelling of a sub-attribute, or the name as given when the schema has none.
fn sub_name(attr: &Attr, name: &str) -> String {
    attr.sub(name).map(|s| s.name.clone()).unwrap_or_else(|| name.to_string())
}

/// Canonicalises the keys of a complex value against the attribute's sub-attributes.
fn canonical_object(attr: &Attr, v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (sub_name(attr, k), v.clone())).collect()),
        other => other.clone(),
    }
}

/// Two elements of a multi-valued attribute are the same when their `value`s are (or, lacking
/// one, when they are equal).
fn same_element(a: &Value, b: &Value) -> bool {
    match (a.get("value"), b.get("value")) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// What [`same_element`] compares, as a key: the `value` if there is one, else the whole element.
fn element_identity(el: &Value) -> String {
    match el.get("value") {
        Some(v) => format!("v{v}"),
        None => format!("w{el}"),
    }
}

fn merge_into(target: &mut Value, attr: &Attr, value: &Value) {
    match (target.as_object_mut(), value) {
        (Some(t), Value::Object(v)) => {
            for (k, sv) in v {
                let k = sub_name(attr, k);
                if is_empty(sv) {
                    t.remove(&k);
                } else {
                    t.insert(k, sv.clone());
                }
            }
        }
        _ => *target = canonical_object(attr, value),
    }
}

/// Applies one operation to a resource's canonical attribute map.
pub fn apply(schema: &ResourceSchema, doc: &mut Map<String, Value>, op: &PatchOp) -> Result<(), SchemaError> {
    let Some(path) = &op.path else {
        // Path-less add/replace: each key is a path of its own; unknown and readOnly keys are
        // ignored as they are in a PUT body (Okta sends the group's `id` along with a rename).
        let Value::Object(values) = &op.value else { return Ok(()) };
        for (key, v) in values {
            if key.eq_ignore_ascii_case("schemas") {
                continue;
            }
            if let Some((ext_urn, _)) = schema.extension(key) {
                let Value::Object(ext_values) = v else { continue };
                for (k, ev) in ext_values {
                    let p =
                        AttrPath { schema: Some(ext_urn.to_string()), attr: crate::CiName::new(k.as_str()), sub: None };
                    apply_at(schema, doc, op.op, &PatchPath { attr: p, filter: None, sub_after: None }, ev, true)?;
                }
                continue;
            }
            let Ok(attr_path) = AttrPath::parse(key) else { continue };
            apply_at(schema, doc, op.op, &PatchPath { attr: attr_path, filter: None, sub_after: None }, v, true)?;
        }
        return Ok(());
    };
    // A path naming a whole extension.
    if path.filter.is_none() {
        if let Some(full) = op.path_text.as_deref() {
            if let Some((ext_urn, _)) = schema.extension(full.trim()) {
                return match op.op {
                    OpKind::Remove => {
                        doc.remove(ext_urn);
                        Ok(())
                    }
                    _ => apply(
                        schema,
                        doc,
                        &PatchOp {
                            op: op.op,
                            path_text: None,
                            path: None,
                            value: Value::Object(Map::from_iter([(ext_urn.to_string(), op.value.clone())])),
                        },
                    ),
                };
            }
        }
    }
    apply_at(schema, doc, op.op, path, &op.value, false)
}

fn apply_at(
    schema: &ResourceSchema,
    doc: &mut Map<String, Value>,
    op: OpKind,
    path: &PatchPath,
    value: &Value,
    lenient: bool,
) -> Result<(), SchemaError> {
    let Some(target) = locate(schema, &path.attr) else {
        if lenient {
            return Ok(());
        }
        return Err(SchemaError::new(
            ScimType::InvalidPath,
            format!("attribute {:?} is not in the schema", path.attr.to_string()),
        ));
    };
    let attr = target.attr;
    if attr.mutability == Mutability::ReadOnly {
        if lenient {
            return Ok(());
        }
        return Err(SchemaError::new(ScimType::Mutability, format!("attribute {:?} is readOnly", attr.name)));
    }
    // RFC 7644 §3.5.2.2: removing a required attribute, or making it unassigned, is a
    // `mutability` error (userName, a group's displayName).
    let unassigns = op == OpKind::Remove || (op == OpKind::Replace && is_empty(value));
    if attr.required && unassigns && path.filter.is_none() && path.attr.sub.is_none() {
        return Err(SchemaError::new(
            ScimType::Mutability,
            format!("attribute {:?} is required: it cannot be removed or made empty", attr.name),
        ));
    }
    let name = attr.name.clone();
    let map = container(doc, target.extension);
    let result = match (&path.filter, &path.attr.sub) {
        (None, None) => apply_whole(map, attr, &name, op, value),
        (None, Some(sub)) => apply_sub_everywhere(map, attr, &name, &sub_name(attr, sub.as_str()), op, value),
        (Some(filter), _) => apply_filtered(map, attr, &name, filter, path.sub_after.as_deref(), op, value),
    };
    tidy(doc, target.extension);
    result
}

fn apply_whole(
    map: &mut Map<String, Value>,
    attr: &Attr,
    name: &str,
    op: OpKind,
    value: &Value,
) -> Result<(), SchemaError> {
    match op {
        OpKind::Remove => {
            // Entra removes chosen members (or other elements) with `path: members` and a list.
            if attr.multi_valued && !is_empty(value) {
                let drop: Vec<Value> = match value {
                    Value::Array(a) => a.clone(),
                    v => vec![v.clone()],
                };
                if let Some(Value::Array(items)) = map.get_mut(name) {
                    items.retain(|el| !drop.iter().any(|d| same_element(el, d)));
                    if items.is_empty() {
                        map.remove(name);
                    }
                }
            } else {
                map.remove(name);
            }
        }
        _ if is_empty(value) => {
            // `""` and `null` clear an attribute; adding an empty list changes nothing.
            if !(op == OpKind::Add && value.is_array()) {
                map.remove(name);
            }
        }
        _ if attr.multi_valued => {
            let new: Vec<Value> = match value {
                Value::Array(a) => a.iter().map(|v| canonical_object(attr, v)).collect(),
                v => vec![canonical_object(attr, v)],
            };
            let (items, written) = match (op, map.get(name)) {
                (OpKind::Add, Some(Value::Array(existing))) => {
                    // One pass with an index by element identity: O(n) however many are added.
                    let mut items = existing.clone();
                    let mut written = Vec::with_capacity(new.len());
                    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
                    for (i, el) in items.iter().enumerate() {
                        index.entry(element_identity(el)).or_insert(i);
                    }
                    for v in new {
                        match index.get(&element_identity(&v)) {
                            Some(&i) => {
                                merge_into(&mut items[i], attr, &v);
                                written.push(i);
                            }
                            None => {
                                index.insert(element_identity(&v), items.len());
                                written.push(items.len());
                                items.push(v);
                            }
                        }
                    }
                    (items, written)
                }
                _ => {
                    let written = (0..new.len()).collect();
                    (new, written)
                }
            };
            map.insert(name.to_string(), Value::Array(one_primary(items, &written)));
        }
        _ if attr.ty == AttrType::Complex && value.is_object() => {
            let slot = map.entry(name.to_string()).or_insert_with(|| Value::Object(Map::new()));
            merge_into(slot, attr, value);
            if slot.as_object().is_some_and(|o| o.is_empty()) {
                map.remove(name);
            }
        }
        _ => {
            map.insert(name.to_string(), value.clone());
        }
    }
    Ok(())
}

/// Keeps `primary: true` on one element only (RFC 7643 §2.4: at most one): the last of those
/// this operation wrote (`written`, indexes into `items`) that claims it, else the last element
/// that claims it. A replaced work address marked primary takes the flag from the home one.
fn one_primary(mut items: Vec<Value>, written: &[usize]) -> Vec<Value> {
    let is_primary = |v: &Value| {
        matches!(v.get("primary"), Some(Value::Bool(true)))
            || v.get("primary").and_then(Value::as_str).is_some_and(|s| s.eq_ignore_ascii_case("true"))
    };
    let last_written = written.iter().copied().filter(|i| items.get(*i).is_some_and(is_primary)).max();
    if let Some(last) = last_written.or_else(|| items.iter().rposition(is_primary)) {
        for (i, el) in items.iter_mut().enumerate() {
            if i != last && is_primary(el) {
                if let Some(o) = el.as_object_mut() {
                    o.insert("primary".into(), Value::Bool(false));
                }
            }
        }
    }
    items
}

fn set_sub(el: &mut Value, sub: &str, op: OpKind, value: &Value) {
    if !el.is_object() {
        *el = Value::Object(Map::new());
    }
    let o = el.as_object_mut().expect("object");
    if op == OpKind::Remove || is_empty(value) {
        o.remove(sub);
    } else {
        o.insert(sub.to_string(), value.clone());
    }
}

fn apply_sub_everywhere(
    map: &mut Map<String, Value>,
    attr: &Attr,
    name: &str,
    sub: &str,
    op: OpKind,
    value: &Value,
) -> Result<(), SchemaError> {
    if attr.ty != AttrType::Complex {
        return Err(SchemaError::new(
            ScimType::InvalidPath,
            format!("attribute {name:?} has no sub-attribute {sub:?}"),
        ));
    }
    if attr.multi_valued {
        match map.get_mut(name) {
            Some(Value::Array(items)) if !items.is_empty() => {
                items.iter_mut().for_each(|el| set_sub(el, sub, op, value))
            }
            _ if op != OpKind::Remove && !is_empty(value) => {
                map.insert(
                    name.to_string(),
                    Value::Array(vec![Value::Object(Map::from_iter([(sub.to_string(), value.clone())]))]),
                );
            }
            _ => {}
        }
    } else {
        if op == OpKind::Remove && !map.contains_key(name) {
            return Ok(());
        }
        let slot = map.entry(name.to_string()).or_insert_with(|| Value::Object(Map::new()));
        set_sub(slot, sub, op, value);
    }
    if map.get(name).and_then(Value::as_object).is_some_and(|o| o.is_empty()) {
        map.remove(name);
    }
    Ok(())
}

fn apply_filtered(
    map: &mut Map<String, Value>,
    attr: &Attr,
    name: &str,
    filter: &Filter,
    sub_after: Option<&str>,
    op: OpKind,
    value: &Value,
) -> Result<(), SchemaError> {
    if !(attr.multi_valued && attr.ty == AttrType::Complex) {
        return Err(SchemaError::new(
            ScimType::InvalidPath,
            format!("a value filter needs a multi-valued complex attribute; {name:?} is not one"),
        ));
    }
    let sub = sub_after.map(|s| sub_name(attr, s));
    let mut items: Vec<Value> = match map.remove(name) {
        Some(Value::Array(a)) => a,
        Some(other) => vec![other],
        None => vec![],
    };
    let matching: Vec<usize> = (0..items.len()).filter(|i| filter.matches_element(attr, &items[*i])).collect();
    let mut written = matching.clone();
    match op {
        OpKind::Remove => match &sub {
            None => {
                let mut i = 0;
                items.retain(|_| {
                    let keep = !matching.contains(&i);
                    i += 1;
                    keep
                });
            }
            Some(sub) => matching.iter().for_each(|i| set_sub(&mut items[*i], sub, op, value)),
        },
        OpKind::Add | OpKind::Replace if matching.is_empty() => {
            // Entra's `emails[type eq "work"].value` creates the work email when there is none.
            let terms = filter.eq_terms().ok_or_else(|| {
                SchemaError::new(
                    ScimType::NoTarget,
                    format!("no {name} element matches [{filter}], and the filter does not say how to create one"),
                )
            })?;
            let mut el = Value::Object(terms.into_iter().map(|(k, v)| (sub_name(attr, &k), v)).collect());
            match &sub {
                Some(sub) => set_sub(&mut el, sub, op, value),
                None => merge_into(&mut el, attr, value),
            }
            if !is_empty(value) {
                written = vec![items.len()];
                items.push(el);
            }
        }
        OpKind::Add | OpKind::Replace => {
            for i in &matching {
                match &sub {
                    Some(sub) => set_sub(&mut items[*i], sub, op, value),
                    None if op == OpKind::Replace => items[*i] = canonical_object(attr, value),
                    None => merge_into(&mut items[*i], attr, value),
                }
            }
        }
    }
    if !items.is_empty() {
        map.insert(name.to_string(), Value::Array(one_primary(items, &written)));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
