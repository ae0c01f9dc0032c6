//! `scimlog-schemas`: the vocabulary of scimlog. Pure data and pure functions: no IO, no async, no
//! clock, no randomness. Everything the service reads from the outside world is parsed into the
//! types of this crate at the boundary, and trusted from then on.
//!
//! # Layout
//!
//! - [`access`]: the role and entitlement URN grammar.
//! - [`name`]: [`CiName`], attribute and resource names compared without case.
//! - [`registry`]: the SCIM schema documents (`schemas/scim/*.json`, served by `/Schemas`) and the
//!   attribute registry built from them (type, multiValued, caseExact, mutability, returned).
//! - [`resource`]: validation and coercion of a User or Group body against the registry.
//! - [`path`]: [`AttrPath`], an attribute path such as `name.givenName` or an URN-qualified one.
//! - [`filter`]: the RFC 7644 §3.4.2.2 filter language: parse, print, evaluate.
//! - [`patch`]: the PATCH engine: PatchOp requests applied to a canonical attribute map.
//! - [`event`]: the events of the log: past-tense, versioned, hash-chained envelopes.
//! - [`personal`]: which attributes are personal data, sealed in events with their subject's key.
//! - [`cursor`]: RFC 9865 paging cursors, signed and bound to their query.
//! - [`error`]: [`SchemaError`], every refusal of this layer with its SCIM `scimType`.

pub mod access;
pub mod cursor;
pub mod error;
pub mod event;
pub mod filter;
pub mod name;
pub mod patch;
pub mod path;
pub mod personal;
pub mod registry;
pub mod resource;

pub use error::{SchemaError, ScimType};
pub use event::{Event, EventBody, EventHash, EventType, MemberType, NewEvent, ResourceKind, ScimKind};
pub use filter::Filter;
pub use name::CiName;
pub use path::AttrPath;

/// Schema URNs used throughout.
pub mod urn {
    pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
    pub const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
    pub const ENTERPRISE_USER: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    /// Our extension: roles and entitlements of a Group, inherited by its members.
    pub const GROUP_ACCESS: &str = "urn:scimlog:params:scim:schemas:extension:access:2.0:Group";
    /// draft-ietf-scim-roles-entitlements: the `/Roles` and `/Entitlements` resources.
    pub const ROLE: &str = "urn:ietf:params:scim:schemas:core:2.0:Role";
    pub const ENTITLEMENT: &str = "urn:ietf:params:scim:schemas:core:2.0:Entitlement";
    /// Our extension of Role and Entitlement: how many users and groups hold one directly.
    pub const GRANT_HOLDERS: &str = "urn:scimlog:params:scim:schemas:extension:holders:2.0:Grant";
    pub const LIST_RESPONSE: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
    pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
    pub const SEARCH_REQUEST: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
    pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
}
