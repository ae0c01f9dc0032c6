//! The SCIM schema documents and the attribute registry built from them.
//!
//! The JSON documents under `schemas/scim/` are the single source of truth: `/Schemas` serves them
//! and every validation, filter and rendering decision reads the [`Attr`] definitions parsed here.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

use crate::urn;

pub const USER_SCHEMA_JSON: &str = include_str!("../scim/User.json");
pub const GROUP_SCHEMA_JSON: &str = include_str!("../scim/Group.json");
pub const ENTERPRISE_USER_SCHEMA_JSON: &str = include_str!("../scim/EnterpriseUser.json");
pub const GROUP_ACCESS_SCHEMA_JSON: &str = include_str!("../scim/GroupAccess.json");
pub const ROLE_SCHEMA_JSON: &str = include_str!("../scim/Role.json");
pub const ENTITLEMENT_SCHEMA_JSON: &str = include_str!("../scim/Entitlement.json");
pub const GRANT_HOLDERS_SCHEMA_JSON: &str = include_str!("../scim/GrantHolders.json");
pub const RESOURCE_TYPES_JSON: &str = include_str!("../scim/ResourceTypes.json");
pub const SERVICE_PROVIDER_CONFIG_JSON: &str = include_str!("../scim/ServiceProviderConfig.json");

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AttrType {
    String,
    Boolean,
    Decimal,
    Integer,
    DateTime,
    Binary,
    Reference,
    Complex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mutability {
    ReadOnly,
    ReadWrite,
    Immutable,
    WriteOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Returned {
    Always,
    Never,
    Default,
    Request,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attr {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: AttrType,
    pub multi_valued: bool,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub case_exact: bool,
    pub mutability: Mutability,
    pub returned: Returned,
    #[serde(default)]
    pub sub_attributes: Vec<Attr>,
}

impl Attr {
    /// The sub-attribute named `name`, compared without case.
    pub fn sub(&self, name: &str) -> Option<&Attr> {
        find(&self.sub_attributes, name)
    }
}

fn find<'a>(attrs: &'a [Attr], name: &str) -> Option<&'a Attr> {
    attrs.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}

#[derive(Clone, Debug, Deserialize)]
pub struct SchemaDoc {
    pub id: String,
    pub name: String,
    pub attributes: Vec<Attr>,
}

/// The common attributes of RFC 7643 §3.1 (`id`, `externalId`, `meta`), present on every
/// resource: in the registry and in the User and Group documents `/Schemas` serves.
pub const COMMON_ATTRIBUTES_JSON: &str = include_str!("../scim/Common.json");

/// A resource type's schema: its core attributes (with the common ones) and its extensions.
#[derive(Debug)]
pub struct ResourceSchema {
    pub core_urn: &'static str,
    pub attributes: Vec<Attr>,
    pub extensions: Vec<(String, Vec<Attr>)>,
}

impl ResourceSchema {
    /// The core or common attribute named `name`, compared without case.
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        find(&self.attributes, name)
    }
    /// The extension whose URN is `urn`, compared without case, with its canonical URN.
    pub fn extension(&self, urn: &str) -> Option<(&str, &[Attr])> {
        self.extensions.iter().find(|(u, _)| u.eq_ignore_ascii_case(urn)).map(|(u, a)| (u.as_str(), a.as_slice()))
    }
    /// An attribute of the core schema or of an extension, `schema` being the URN or `None`.
    pub fn attr_in(&self, schema: Option<&str>, name: &str) -> Option<&Attr> {
        self.locate(schema, name).map(|(_, attr)| attr)
    }

    /// Where the attribute `name` lives, `schema` being the URN it was qualified with or `None`:
    /// `(None, attr)` for the core schema, `(Some(urn), attr)` for an extension (its canonical
    /// URN). A name without a URN that the core schema lacks resolves to the one extension that
    /// defines it (Entra's bare `manager`, Testkube's group `roles`); a name that several
    /// extensions define stays unresolved. Filters, PATCH, bodies, `attributes=` and `sortBy`
    /// all resolve through here.
    pub fn locate(&self, schema: Option<&str>, name: &str) -> Option<(Option<&str>, &Attr)> {
        match schema {
            Some(s) if !s.eq_ignore_ascii_case(self.core_urn) => {
                let (urn, attrs) = self.extension(s)?;
                find(attrs, name).map(|a| (Some(urn), a))
            }
            Some(_) => self.attr(name).map(|a| (None, a)),
            None => match self.attr(name) {
                Some(a) => Some((None, a)),
                None => {
                    let mut defining = self
                        .extensions
                        .iter()
                        .filter_map(|(urn, attrs)| find(attrs, name).map(|a| (Some(urn.as_str()), a)));
                    match (defining.next(), defining.next()) {
                        (Some(one), None) => Some(one),
                        _ => None,
                    }
                }
            },
        }
    }

    /// The path with the URN of the extension a bare name resolves to (see [`Self::locate`]);
    /// any other path as it is.
    pub fn qualify(&self, path: &crate::AttrPath) -> crate::AttrPath {
        match self.locate(path.schema.as_deref(), path.attr.as_str()) {
            Some((Some(urn), attr)) if path.schema.is_none() => crate::AttrPath {
                schema: Some(urn.to_string()),
                attr: crate::CiName::new(&attr.name),
                sub: path.sub.clone(),
            },
            _ => path.clone(),
        }
    }
}

pub struct Registry {
    pub user: ResourceSchema,
    pub group: ResourceSchema,
    /// `/Roles` and `/Entitlements` (read-only; listed, filtered and paged like Users).
    pub role: ResourceSchema,
    pub entitlement: ResourceSchema,
    /// The schema documents as served by `/Schemas`, in order.
    pub documents: Vec<Value>,
}

fn parse_doc(text: &str) -> (SchemaDoc, Value) {
    // The documents are compiled in; a malformed one is a build defect caught by the unit tests.
    let doc: SchemaDoc = serde_json::from_str(text).expect("schema document parses");
    let value: Value = serde_json::from_str(text).expect("schema document is JSON");
    (doc, value)
}

/// The registry, built once from the compiled-in documents.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let (user, mut user_v) = parse_doc(USER_SCHEMA_JSON);
        let (group, mut group_v) = parse_doc(GROUP_SCHEMA_JSON);
        let (ent, ent_v) = parse_doc(ENTERPRISE_USER_SCHEMA_JSON);
        let (access, access_v) = parse_doc(GROUP_ACCESS_SCHEMA_JSON);
        let common: Vec<Attr> = serde_json::from_str(COMMON_ATTRIBUTES_JSON).expect("common attributes parse");
        let common_v: Vec<Value> = serde_json::from_str(COMMON_ATTRIBUTES_JSON).expect("common attributes are JSON");
        for doc in [&mut user_v, &mut group_v] {
            if let Some(Value::Array(attrs)) = doc.get_mut("attributes") {
                attrs.splice(0..0, common_v.iter().cloned());
            }
        }
        let (role, role_v) = parse_doc(ROLE_SCHEMA_JSON);
        let (entitlement, entitlement_v) = parse_doc(ENTITLEMENT_SCHEMA_JSON);
        let (holders, holders_v) = parse_doc(GRANT_HOLDERS_SCHEMA_JSON);
        let mut user_attrs = common.clone();
        user_attrs.extend(user.attributes);
        let mut group_attrs = common;
        group_attrs.extend(group.attributes);
        Registry {
            user: ResourceSchema {
                core_urn: urn::USER,
                attributes: user_attrs,
                extensions: vec![(ent.id, ent.attributes)],
            },
            group: ResourceSchema {
                core_urn: urn::GROUP,
                attributes: group_attrs,
                extensions: vec![(access.id, access.attributes)],
            },
            role: ResourceSchema {
                core_urn: urn::ROLE,
                attributes: role.attributes,
                extensions: vec![(holders.id.clone(), holders.attributes.clone())],
            },
            entitlement: ResourceSchema {
                core_urn: urn::ENTITLEMENT,
                attributes: entitlement.attributes,
                extensions: vec![(holders.id, holders.attributes)],
            },
            documents: vec![user_v, group_v, ent_v, access_v, role_v, entitlement_v, holders_v],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_parse_and_describe_known_attributes() {
        let r = registry();
        let user_name = r.user.attr("USERNAME").unwrap();
        assert_eq!(user_name.name, "userName");
        assert!(!user_name.case_exact);
        assert_eq!(r.user.attr("password").unwrap().returned, Returned::Never);
        assert_eq!(r.user.attr("groups").unwrap().mutability, Mutability::ReadOnly);
        assert!(r.user.attr("id").unwrap().case_exact);
        assert_eq!(r.user.attr_in(Some(urn::ENTERPRISE_USER), "manager").unwrap().ty, AttrType::Complex);
        assert!(r.group.attr("members").unwrap().multi_valued);
        assert_eq!(r.documents.len(), 7);
        assert_eq!(r.role.attr("supported").unwrap().ty, AttrType::Boolean);
        assert!(r.group.attr_in(Some(urn::GROUP_ACCESS), "roles").unwrap().multi_valued);
        // Bare names resolve to the one extension that defines them; the core schema first.
        let table = [
            (&r.user, None, "manager", Some((Some(urn::ENTERPRISE_USER), "manager"))),
            (&r.user, None, "DEPARTMENT", Some((Some(urn::ENTERPRISE_USER), "department"))),
            (&r.user, None, "roles", Some((None, "roles"))),
            (&r.group, None, "roles", Some((Some(urn::GROUP_ACCESS), "roles"))),
            (&r.group, None, "entitlements", Some((Some(urn::GROUP_ACCESS), "entitlements"))),
            (&r.group, None, "manager", None),
            (&r.user, Some(urn::USER), "manager", None),
            (&r.user, Some(urn::ENTERPRISE_USER), "userName", None),
        ];
        for (schema, qualifier, name, want) in table {
            let got = schema.locate(qualifier, name).map(|(u, a)| (u, a.name.as_str()));
            assert_eq!(got, want, "{qualifier:?} {name}");
        }
        let _: Value = serde_json::from_str(RESOURCE_TYPES_JSON).unwrap();
        let _: Value = serde_json::from_str(SERVICE_PROVIDER_CONFIG_JSON).unwrap();
    }
}
