//! A target's attribute mapping (`[target.mapping]`): what a user's document downstream holds
//! besides what its profile renders: attributes dropped, and attributes set from another of the
//! user's attributes or to a constant. Parsed once, at the boundary, into a [`Mapping`]; applied
//! by `render::user` as a pure function, so a mapping change is a change of the rendered document
//! like any other (diffed against what was last sent).
//!
//! Paths: `attr`, `attr.sub`, `<schema URN>:attr`, `<schema URN>:attr.sub`. A source path into a
//! multi-valued attribute (`emails.value`) reads its primary value, else its first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Rules of one mapping at most (drops and sets together).
pub const MAX_RULES: usize = 50;

/// What a mapping may neither set nor drop: the link (`externalId`), the state deprovisioning
/// decides (`active`), and what no client writes.
const PROTECTED: [&str; 6] = ["schemas", "id", "externalId", "active", "meta", "groups"];

/// `[target.mapping]` as written in the targets file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Attributes never sent (top-level, sub-attributes, or an extension's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
    /// Attributes set: to the value of another attribute of the user (`from`), or to a
    /// constant (`value`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, SourceConfig>,
}

impl MappingConfig {
    pub fn is_empty(&self) -> bool {
        self.drop.is_empty() && self.set.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// An attribute's place in a document.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    schema: Option<String>,
    attr: String,
    sub: Option<String>,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$')
        && s.len() <= 128
}

impl Path {
    pub fn parse(text: &str) -> Result<Path, String> {
        let bad = || format!("{text:?} is not an attribute path (attr, attr.sub, or <schema URN>:attr[.sub])");
        let (schema, rest) = match text.strip_prefix("urn:") {
            Some(_) => {
                let i = text.rfind(':').ok_or_else(bad)?;
                (Some(text[..i].to_string()), &text[i + 1..])
            }
            None => (None, text),
        };
        let (attr, sub) = match rest.split_once('.') {
            Some((a, s)) => (a, Some(s)),
            None => (rest, None),
        };
        if !valid_name(attr) || sub.is_some_and(|s| !valid_name(s)) || schema.as_ref().is_some_and(|s| s.len() > 256) {
            return Err(bad());
        }
        Ok(Path { schema, attr: attr.into(), sub: sub.map(str::to_string) })
    }

    fn is_protected(&self) -> bool {
        self.schema.is_none() && PROTECTED.contains(&self.attr.as_str())
    }

    fn container<'a>(&self, doc: &'a Map<String, Value>) -> Option<&'a Map<String, Value>> {
        match &self.schema {
            None => Some(doc),
            Some(s) => doc.get(s).and_then(Value::as_object),
        }
    }

    /// The value at this path (a multi-valued attribute's sub-attribute: its primary, else first).
    fn get(&self, doc: &Map<String, Value>) -> Option<Value> {
        let v = self.container(doc)?.get(&self.attr)?;
        let Some(sub) = &self.sub else { return Some(v.clone()) };
        match v {
            Value::Array(items) => {
                let primary = items.iter().find(|i| i.get("primary") == Some(&Value::Bool(true)));
                primary.or(items.first())?.get(sub).cloned()
            }
            Value::Object(o) => o.get(sub).cloned(),
            _ => None,
        }
    }

    fn set(&self, doc: &mut Map<String, Value>, value: Value) {
        let container = match &self.schema {
            None => doc,
            Some(s) => object_at(doc, s),
        };
        match &self.sub {
            None => {
                container.insert(self.attr.clone(), value);
            }
            Some(sub) => {
                object_at(container, &self.attr).insert(sub.clone(), value);
            }
        }
    }

    fn remove(&self, doc: &mut Map<String, Value>) {
        let container = match &self.schema {
            None => Some(doc),
            Some(s) => doc.get_mut(s).and_then(Value::as_object_mut),
        };
        let Some(container) = container else { return };
        match &self.sub {
            None => {
                container.remove(&self.attr);
            }
            Some(sub) => match container.get_mut(&self.attr) {
                Some(Value::Object(o)) => {
                    o.remove(sub);
                }
                Some(Value::Array(items)) => items.iter_mut().filter_map(Value::as_object_mut).for_each(|o| {
                    o.remove(sub);
                }),
                _ => {}
            },
        }
    }
}

/// The object under `key`, made (or made an object) when it is not one.
fn object_at<'a>(doc: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = doc.entry(key.to_string()).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("made an object above")
}

#[derive(Clone, Debug, PartialEq)]
enum Source {
    From(Path),
    Value(Value),
}

/// A mapping, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mapping {
    drop: Vec<Path>,
    set: Vec<(Path, Source)>,
}

impl Mapping {
    pub fn parse(c: &MappingConfig) -> Result<Mapping, String> {
        if c.drop.len() + c.set.len() > MAX_RULES {
            return Err(format!("mapping: {} rules, at most {MAX_RULES}", c.drop.len() + c.set.len()));
        }
        let target = |text: &str| {
            let p = Path::parse(text).map_err(|e| format!("mapping: {e}"))?;
            match p.is_protected() {
                true => Err(format!("mapping: {text:?} cannot be set or dropped (scimlog decides it)")),
                false => Ok(p),
            }
        };
        let drop = c.drop.iter().map(|d| target(d)).collect::<Result<_, _>>()?;
        let mut set = Vec::with_capacity(c.set.len());
        for (to, source) in &c.set {
            let source = match (&source.from, &source.value) {
                (Some(from), None) => Source::From(Path::parse(from).map_err(|e| format!("mapping: {to:?} from {e}"))?),
                (None, Some(v)) => Source::Value(v.clone()),
                _ => return Err(format!("mapping: {to:?} needs exactly one of from and value")),
            };
            set.push((target(to)?, source));
        }
        Ok(Mapping { drop, set })
    }

    /// Applies the mapping to a rendered user `out`; sources are read from the user's own
    /// attributes (`source`, before anything is dropped, by the profile or here). A source that
    /// is absent leaves its target attribute out.
    pub fn apply(&self, source: &Map<String, Value>, out: &mut Map<String, Value>) {
        let values: Vec<(&Path, Option<Value>)> = self
            .set
            .iter()
            .map(|(to, from)| match from {
                Source::From(p) => (to, p.get(source)),
                Source::Value(v) => (to, Some(v.clone())),
            })
            .collect();
        for p in &self.drop {
            p.remove(out);
        }
        for (to, value) in values {
            match value {
                Some(v) => to.set(out, v),
                None => to.remove(out),
            }
        }
        // An extension left empty goes; one set here is named in `schemas`.
        out.retain(|k, v| !k.starts_with("urn:") || v.as_object().is_none_or(|o| !o.is_empty()));
        let extensions: Vec<Value> =
            out.keys().filter(|k| k.starts_with("urn:")).map(|k| Value::from(k.as_str())).collect();
        if let Some(Value::Array(schemas)) = out.get_mut("schemas") {
            let core = schemas.first().cloned();
            schemas.retain(|s| Some(s) == core.as_ref() || extensions.contains(s));
            for e in extensions {
                if !schemas.contains(&e) {
                    schemas.push(e);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.drop.is_empty() && self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

    fn mapping(toml_text: &str) -> Result<Mapping, String> {
        Mapping::parse(&toml::from_str::<MappingConfig>(toml_text).map_err(|e| e.to_string())?)
    }

    #[test]
    fn mappings_are_checked_at_the_boundary() {
        let cases: &[(&str, Option<&str>)] = &[
            ("drop = [\"title\", \"name.middleName\"]", None),
            ("set.title = { from = \"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department\" }", None),
            ("set.userType = { value = \"Employee\" }", None),
            ("drop = [\"externalId\"]", Some("\"externalId\" cannot be set or dropped")),
            ("set.active = { value = true }", Some("\"active\" cannot be set or dropped")),
            ("set.title = { from = \"a.b.c\" }", Some("\"title\" from \"a.b.c\" is not an attribute path")),
            ("set.title = { from = \"x\", value = 1 }", Some("exactly one of from and value")),
            ("set.title = {}", Some("exactly one of from and value")),
            ("drop = [\"9lives\"]", Some("\"9lives\" is not an attribute path")),
            ("rename = [\"x\"]", Some("unknown field `rename`")),
        ];
        for (text, want) in cases {
            match (mapping(text), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, wanted {want:?}"),
            }
        }
        let many = format!("drop = [{}]", (0..51).map(|i| format!("\"a{i}\"")).collect::<Vec<_>>().join(","));
        assert!(mapping(&many).unwrap_err().contains("51 rules, at most 50"));
    }

    #[test]
    fn a_mapping_drops_sets_and_reads_primary_values() {
        let m = mapping(&format!(
            "drop = [\"title\", \"nickName\"]\n\
             [set]\n\
             displayName = {{ from = \"emails.value\" }}\n\
             userType = {{ value = \"Employee\" }}\n\
             \"{ENTERPRISE}:department\" = {{ from = \"title\" }}\n\
             \"name.formatted\" = {{ from = \"nickName\" }}\n\
             locale = {{ from = \"preferredLanguage\" }}"
        ))
        .unwrap();
        let source = json!({"userName": "ann", "title": "CTO", "nickName": "Annie", "locale": "de-DE",
            "name": {"givenName": "Ann", "formatted": "Ann Lee"},
            "emails": [{"value": "a@x"}, {"value": "b@x", "primary": true}]});
        let mut out = source.as_object().unwrap().clone();
        out.insert("schemas".into(), json!(["urn:ietf:params:scim:schemas:core:2.0:User"]));
        m.apply(source.as_object().unwrap(), &mut out);
        let want = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
            "userName": "ann", "displayName": "b@x", "userType": "Employee",
            "name": {"givenName": "Ann", "formatted": "Annie"},
            "emails": [{"value": "a@x"}, {"value": "b@x", "primary": true}],
            ENTERPRISE: {"department": "CTO"}});
        assert_eq!(Value::Object(out.clone()), want, "locale: its source is absent, so it is left out");
        // An extension the mapping empties goes, with its schema.
        let m = mapping(&format!("drop = [\"{ENTERPRISE}:department\"]")).unwrap();
        m.apply(&Map::new(), &mut out);
        assert_eq!(out["schemas"], json!(["urn:ietf:params:scim:schemas:core:2.0:User"]));
        assert!(out.get(ENTERPRISE).is_none());
    }
}
