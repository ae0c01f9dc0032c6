//! Roles and entitlements: the URN grammar (Testkube-compatible with the namespace `testkube`).
//!
//! - role: `urn:<ns>:role:<organization|environment|resource-group>:<id|slug|*>:<role>`
//! - entitlement: `urn:<ns>:entitlement:<environment|resource-group>:<name>`

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::SchemaError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ScopeKind {
    Organization,
    Environment,
    ResourceGroup,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Organization => "organization",
            ScopeKind::Environment => "environment",
            ScopeKind::ResourceGroup => "resource-group",
        }
    }
    fn parse(s: &str) -> Option<ScopeKind> {
        match s.to_ascii_lowercase().as_str() {
            "organization" => Some(ScopeKind::Organization),
            "environment" => Some(ScopeKind::Environment),
            "resource-group" => Some(ScopeKind::ResourceGroup),
            _ => None,
        }
    }
}

/// A role or an entitlement, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "grant")]
pub enum Grant {
    /// `scope` is an id, a slug, or `*` (every scope of the kind).
    Role {
        scope_kind: ScopeKind,
        scope: String,
        role: String,
    },
    Entitlement {
        scope_kind: ScopeKind,
        name: String,
    },
}

impl Grant {
    /// The canonical URN in namespace `ns`.
    pub fn urn(&self, ns: &str) -> String {
        match self {
            Grant::Role { scope_kind, scope, role } => format!("urn:{ns}:role:{}:{scope}:{role}", scope_kind.as_str()),
            Grant::Entitlement { scope_kind, name } => format!("urn:{ns}:entitlement:{}:{name}", scope_kind.as_str()),
        }
    }
    /// The scope the grant names, unless it is `*`: (kind, id or slug).
    pub fn named_scope(&self) -> Option<(ScopeKind, &str)> {
        match self {
            Grant::Role { scope_kind, scope, .. } if scope != "*" => Some((*scope_kind, scope)),
            Grant::Role { .. } => None,
            Grant::Entitlement { scope_kind, name } => Some((*scope_kind, name)),
        }
    }
    pub fn is_role(&self) -> bool {
        matches!(self, Grant::Role { .. })
    }
}

fn valid_segment(s: &str, wildcard: bool) -> bool {
    (wildcard && s == "*")
        || (!s.is_empty()
            && s.len() <= 128
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
}

/// Parses a role (`attr` = "roles") or an entitlement (`attr` = "entitlements") URN.
pub fn parse_grant(ns: &str, attr: &str, text: &str) -> Result<Grant, SchemaError> {
    let bad = |why: &str| SchemaError::invalid_value(format!("{attr} value {text:?} is not a valid {why}"));
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() < 3 || !parts[0].eq_ignore_ascii_case("urn") || !parts[1].eq_ignore_ascii_case(ns) {
        return Err(bad(&format!("URN of namespace {ns:?} (urn:{ns}:...)")));
    }
    match (attr, parts[2].to_ascii_lowercase().as_str(), &parts[3..]) {
        ("roles", "role", [kind, scope, role]) => {
            let scope_kind = ScopeKind::parse(kind)
                .ok_or_else(|| bad("role: the scope kind must be organization, environment or resource-group"))?;
            if !valid_segment(scope, true) || !valid_segment(role, false) {
                return Err(bad("role: scope and role are letters, digits, '-', '_', '.' (scope may be '*')"));
            }
            Ok(Grant::Role { scope_kind, scope: scope.to_string(), role: role.to_string() })
        }
        ("roles", _, _) => {
            Err(bad(&format!("role (urn:{ns}:role:<organization|environment|resource-group>:<scope>:<role>)")))
        }
        ("entitlements", "entitlement", [kind, name]) => {
            let scope_kind = ScopeKind::parse(kind)
                .filter(|k| *k != ScopeKind::Organization)
                .ok_or_else(|| bad("entitlement: the kind must be environment or resource-group"))?;
            if !valid_segment(name, false) {
                return Err(bad("entitlement: the name is letters, digits, '-', '_', '.'"));
            }
            Ok(Grant::Entitlement { scope_kind, name: name.to_string() })
        }
        _ => Err(bad(&format!("entitlement (urn:{ns}:entitlement:<environment|resource-group>:<name>)"))),
    }
}

impl fmt::Display for ScopeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urn_table() {
        let role = |k, s: &str, r: &str| Grant::Role { scope_kind: k, scope: s.into(), role: r.into() };
        let ok: Vec<(&str, &str, &str, Grant)> = vec![
            (
                "testkube",
                "roles",
                "urn:testkube:role:environment:prod:admin",
                role(ScopeKind::Environment, "prod", "admin"),
            ),
            (
                "testkube",
                "roles",
                "URN:Testkube:role:organization:*:owner",
                role(ScopeKind::Organization, "*", "owner"),
            ),
            (
                "scimlog",
                "roles",
                "urn:scimlog:role:resource-group:rg_1:viewer",
                role(ScopeKind::ResourceGroup, "rg_1", "viewer"),
            ),
            (
                "scimlog",
                "entitlements",
                "urn:scimlog:entitlement:environment:staging",
                Grant::Entitlement { scope_kind: ScopeKind::Environment, name: "staging".into() },
            ),
        ];
        for (ns, attr, text, want) in ok {
            let g = parse_grant(ns, attr, text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(g, want, "{text}");
            assert_eq!(parse_grant(ns, attr, &g.urn(ns)).unwrap(), g, "round trip of {text}");
        }
        let bad = [
            ("roles", "urn:other:role:environment:prod:admin", "namespace"),
            ("roles", "urn:scimlog:role:planet:earth:admin", "scope kind"),
            ("roles", "urn:scimlog:role:environment:prod", "role ("),
            ("roles", "urn:scimlog:role:environment:prod:ad min", "letters"),
            ("roles", "urn:scimlog:role:environment::admin", "letters"),
            ("roles", "urn:scimlog:entitlement:environment:prod", "role ("),
            ("entitlements", "urn:scimlog:entitlement:organization:acme", "environment or resource-group"),
            ("entitlements", "urn:scimlog:entitlement:environment:*", "letters"),
            ("entitlements", "prod", "namespace"),
            ("entitlements", "urn:scimlog:entitlement:environment:a:b", "entitlement ("),
        ];
        for (attr, text, why) in bad {
            let e = parse_grant("scimlog", attr, text).expect_err(text);
            assert!(e.detail.contains(text) && e.detail.contains(why), "{text}: {}", e.detail);
        }
    }
}
