//! Attribute paths: `userName`, `name.givenName`, `emails.value`, and URN-qualified paths such as
//! `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value`.

use std::fmt;

use crate::error::SchemaError;
use crate::name::CiName;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrPath {
    /// The schema URN the path was qualified with, if any.
    pub schema: Option<String>,
    pub attr: CiName,
    pub sub: Option<CiName>,
}

impl AttrPath {
    pub fn new(attr: &str) -> Self {
        AttrPath { schema: None, attr: CiName::new(attr), sub: None }
    }

    /// Parses an attribute path. The URN prefix, when present, ends at the last `:`.
    pub fn parse(text: &str) -> Result<AttrPath, SchemaError> {
        let bad = || SchemaError::new(crate::ScimType::InvalidPath, format!("invalid attribute path {text:?}"));
        let (schema, rest) = if text.len() > 4 && text.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("urn:")) {
            let i = text.rfind(':').ok_or_else(bad)?;
            (Some(text[..i].to_string()), &text[i + 1..])
        } else {
            (None, text)
        };
        let mut parts = rest.splitn(2, '.');
        let attr = parts.next().filter(|s| is_attr_name(s)).ok_or_else(bad)?;
        let sub = match parts.next() {
            None => None,
            Some(s) if is_attr_name(s) => Some(CiName::new(s)),
            Some(_) => return Err(bad()),
        };
        Ok(AttrPath { schema, attr: CiName::new(attr), sub })
    }
}

/// RFC 7643 §2.1 ATTRNAME = ALPHA *(nameChar), nameChar = "-" / "_" / DIGIT / ALPHA; `$ref` too.
pub fn is_attr_name(s: &str) -> bool {
    if s == "$ref" {
        return true;
    }
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.schema {
            write!(f, "{s}:")?;
        }
        write!(f, "{}", self.attr)?;
        if let Some(s) = &self.sub {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        let table: &[(&str, Option<(Option<&str>, &str, Option<&str>)>)] = &[
            ("userName", Some((None, "userName", None))),
            ("name.givenName", Some((None, "name", Some("givenName")))),
            ("members.$ref", Some((None, "members", Some("$ref")))),
            (
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value",
                Some((Some(ent), "manager", Some("value"))),
            ),
            ("1abc", None),
            ("a.b.c", None),
            ("", None),
            ("urn:x:", None),
            // Found by the fuzzer: a multi-byte character across byte 4 must not panic.
            ("act˂O'Malley", None),
        ];
        for (input, want) in table {
            let got = AttrPath::parse(input).ok();
            let got = got.as_ref().map(|p| (p.schema.as_deref(), p.attr.as_str(), p.sub.as_ref().map(|s| s.as_str())));
            assert_eq!(got, *want, "{input}");
        }
    }
}
