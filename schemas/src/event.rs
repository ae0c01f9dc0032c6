//! The events of the log: past-tense facts, each with an explicit type name and schema version,
//! wrapped in an envelope that chains it to its predecessor by SHA-256.
//!
//! Old events are upcast when read ([`Event::decode`]), never rewritten.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::personal::{merge, split, Opener, Sealed, Sealer, ERASED};

/// The SHA-256 of an event's stored bytes: what chains the log. Written (in events, exports,
/// `audit verify`) as 64 lowercase hex characters, exactly as before it was a type, so no stored
/// byte changes; reading it checks that form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventHash(pub [u8; 32]);

impl EventHash {
    /// The `prevHash` of the first event of a log.
    pub const GENESIS: EventHash = EventHash([0; 32]);

    pub fn parse_hex(s: &str) -> Option<EventHash> {
        let mut out = [0u8; 32];
        let lower = s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (s.len() == 64 && lower && hex::decode_to_slice(s, &mut out).is_ok()).then_some(EventHash(out))
    }
}

impl std::fmt::Display for EventHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for EventHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventHash({self})")
    }
}

impl Serialize for EventHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for EventHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EventHash, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        EventHash::parse_hex(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a SHA-256 in lowercase hex")))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    User,
    Group,
    Organization,
    Environment,
    ResourceGroup,
    Host,
    /// A bearer token (its name); never its secret.
    Token,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::User => "User",
            ResourceKind::Group => "Group",
            ResourceKind::Organization => "Organization",
            ResourceKind::Environment => "Environment",
            ResourceKind::ResourceGroup => "ResourceGroup",
            ResourceKind::Host => "Host",
            ResourceKind::Token => "Token",
        }
    }
    /// Users and Groups, the resource types served over SCIM, as such.
    pub fn scim(self) -> Option<ScimKind> {
        match self {
            ResourceKind::User => Some(ScimKind::User),
            ResourceKind::Group => Some(ScimKind::Group),
            ResourceKind::Organization
            | ResourceKind::Environment
            | ResourceKind::ResourceGroup
            | ResourceKind::Host
            | ResourceKind::Token => None,
        }
    }
    pub fn endpoint(self) -> &'static str {
        match self {
            ResourceKind::User => "Users",
            ResourceKind::Group => "Groups",
            ResourceKind::Organization => "Organizations",
            ResourceKind::Environment => "Environments",
            ResourceKind::ResourceGroup => "ResourceGroups",
            ResourceKind::Host => "Hosts",
            ResourceKind::Token => "Tokens",
        }
    }
}

/// The resource types served over SCIM (lists, filters, sorting, the endpoints): the only ones a
/// match on "User or Group" can meet, so no such match needs a catch-all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScimKind {
    User,
    Group,
}

impl ScimKind {
    pub fn resource(self) -> ResourceKind {
        match self {
            ScimKind::User => ResourceKind::User,
            ScimKind::Group => ResourceKind::Group,
        }
    }
    pub fn as_str(self) -> &'static str {
        self.resource().as_str()
    }
    pub fn endpoint(self) -> &'static str {
        self.resource().endpoint()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberType {
    User,
    Group,
}

impl MemberType {
    pub fn kind(self) -> ResourceKind {
        match self {
            MemberType::User => ResourceKind::User,
            MemberType::Group => ResourceKind::Group,
        }
    }
}

/// What happened, with enough data to rebuild state. The serde tag is the event type name that
/// goes on the wire (`type`) and the content is its `data`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum EventBody {
    /// A user was provisioned. `attributes` are the canonical SCIM attributes, without `id`,
    /// `meta`, `groups`, `password` and `active`; `active` is absent when it was not assigned.
    #[serde(rename = "user.created", rename_all = "camelCase")]
    UserCreated {
        attributes: Map<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        active: Option<bool>,
    },
    /// Top-level attributes changed (`changed` holds their new values) or were removed. `active`
    /// appears here only when it becomes assigned or unassigned without changing whether the user
    /// is active; a change of state is `user.deactivated` / `user.reactivated`.
    #[serde(rename = "user.updated", rename_all = "camelCase")]
    UserUpdated { changed: Map<String, Value>, removed: Vec<String> },
    #[serde(rename = "user.deactivated")]
    UserDeactivated {},
    #[serde(rename = "user.reactivated")]
    UserReactivated {},
    /// The user is gone; its memberships were removed by `group.member_removed` events before it.
    #[serde(rename = "user.deleted")]
    UserDeleted {},
    /// The user's data key was destroyed: every personal value ever sealed for it is unreadable.
    /// Follows `user.deleted`. `reason` is the operator's (it must hold no personal data).
    #[serde(rename = "user.erased")]
    UserErased { reason: String },
    #[serde(rename = "group.created", rename_all = "camelCase")]
    GroupCreated { display_name: String, attributes: Map<String, Value> },
    #[serde(rename = "group.renamed", rename_all = "camelCase")]
    GroupRenamed { display_name: String, previous_display_name: String },
    /// Attributes other than `displayName` and `members` changed or were removed.
    #[serde(rename = "group.updated", rename_all = "camelCase")]
    GroupUpdated { changed: Map<String, Value>, removed: Vec<String> },
    /// The group is gone, and with it every membership in it.
    #[serde(rename = "group.deleted")]
    GroupDeleted {},
    #[serde(rename = "group.member_added", rename_all = "camelCase")]
    GroupMemberAdded { member_id: String, member_type: MemberType },
    #[serde(rename = "group.member_removed", rename_all = "camelCase")]
    GroupMemberRemoved { member_id: String, member_type: MemberType },
    /// A role was given to the subject (the event's resource: a user, or a group and so its
    /// members). `role` is the canonical URN; `value` the element as the subject carries it.
    #[serde(rename = "role.assigned", rename_all = "camelCase")]
    RoleAssigned { role: String, value: Value },
    #[serde(rename = "role.revoked", rename_all = "camelCase")]
    RoleRevoked { role: String },
    #[serde(rename = "entitlement.granted", rename_all = "camelCase")]
    EntitlementGranted { entitlement: String, value: Value },
    #[serde(rename = "entitlement.revoked", rename_all = "camelCase")]
    EntitlementRevoked { entitlement: String },
    /// A scope came into being (the first time a grant named it, or the tenant's default
    /// organization). Its id is its slug.
    #[serde(rename = "organization.created", rename_all = "camelCase")]
    OrganizationCreated { slug: String },
    /// Environments and resource groups belong to one organization (schema version 2; in
    /// version 1 it was not recorded, and such a scope belongs to the default organization).
    #[serde(rename = "environment.created", rename_all = "camelCase")]
    EnvironmentCreated {
        slug: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        organization: Option<String>,
    },
    #[serde(rename = "resource_group.created", rename_all = "camelCase")]
    ResourceGroupCreated {
        slug: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        organization: Option<String>,
    },
    /// A host (device; the event's resource) now belongs to a user.
    #[serde(rename = "host.user_linked", rename_all = "camelCase")]
    HostUserLinked { user_id: String },
    #[serde(rename = "host.user_unlinked", rename_all = "camelCase")]
    HostUserUnlinked { user_id: String },
    /// A bearer token (the event's resource is its name) appeared in the token file; no secret
    /// or hash is recorded.
    #[serde(rename = "token.created", rename_all = "camelCase")]
    TokenCreated { role: String },
    #[serde(rename = "token.revoked")]
    TokenRevoked {},
}

/// The event type names, for filters and catalogues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    UserCreated,
    UserUpdated,
    UserDeactivated,
    UserReactivated,
    UserDeleted,
    UserErased,
    GroupCreated,
    GroupRenamed,
    GroupUpdated,
    GroupDeleted,
    GroupMemberAdded,
    GroupMemberRemoved,
    RoleAssigned,
    RoleRevoked,
    EntitlementGranted,
    EntitlementRevoked,
    OrganizationCreated,
    EnvironmentCreated,
    ResourceGroupCreated,
    HostUserLinked,
    HostUserUnlinked,
    TokenCreated,
    TokenRevoked,
}

impl EventType {
    pub const ALL: [EventType; 23] = [
        EventType::UserCreated,
        EventType::UserUpdated,
        EventType::UserDeactivated,
        EventType::UserReactivated,
        EventType::UserDeleted,
        EventType::UserErased,
        EventType::GroupCreated,
        EventType::GroupRenamed,
        EventType::GroupUpdated,
        EventType::GroupDeleted,
        EventType::GroupMemberAdded,
        EventType::GroupMemberRemoved,
        EventType::RoleAssigned,
        EventType::RoleRevoked,
        EventType::EntitlementGranted,
        EventType::EntitlementRevoked,
        EventType::OrganizationCreated,
        EventType::EnvironmentCreated,
        EventType::ResourceGroupCreated,
        EventType::HostUserLinked,
        EventType::HostUserUnlinked,
        EventType::TokenCreated,
        EventType::TokenRevoked,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::UserCreated => "user.created",
            EventType::UserUpdated => "user.updated",
            EventType::UserDeactivated => "user.deactivated",
            EventType::UserReactivated => "user.reactivated",
            EventType::UserDeleted => "user.deleted",
            EventType::UserErased => "user.erased",
            EventType::GroupCreated => "group.created",
            EventType::GroupRenamed => "group.renamed",
            EventType::GroupUpdated => "group.updated",
            EventType::GroupDeleted => "group.deleted",
            EventType::GroupMemberAdded => "group.member_added",
            EventType::GroupMemberRemoved => "group.member_removed",
            EventType::RoleAssigned => "role.assigned",
            EventType::RoleRevoked => "role.revoked",
            EventType::EntitlementGranted => "entitlement.granted",
            EventType::EntitlementRevoked => "entitlement.revoked",
            EventType::OrganizationCreated => "organization.created",
            EventType::EnvironmentCreated => "environment.created",
            EventType::ResourceGroupCreated => "resource_group.created",
            EventType::HostUserLinked => "host.user_linked",
            EventType::HostUserUnlinked => "host.user_unlinked",
            EventType::TokenCreated => "token.created",
            EventType::TokenRevoked => "token.revoked",
        }
    }
    /// The current schema version of the type's `data`. Bump it when the data changes shape, and
    /// teach [`upcast`] to lift the older version.
    pub fn schema_version(self) -> u32 {
        match self {
            // 2: `organization` recorded.
            EventType::EnvironmentCreated | EventType::ResourceGroupCreated => 2,
            EventType::UserCreated
            | EventType::UserUpdated
            | EventType::UserDeactivated
            | EventType::UserReactivated
            | EventType::UserDeleted
            | EventType::UserErased
            | EventType::GroupCreated
            | EventType::GroupRenamed
            | EventType::GroupUpdated
            | EventType::GroupDeleted
            | EventType::GroupMemberAdded
            | EventType::GroupMemberRemoved
            | EventType::RoleAssigned
            | EventType::RoleRevoked
            | EventType::EntitlementGranted
            | EventType::EntitlementRevoked
            | EventType::OrganizationCreated
            | EventType::HostUserLinked
            | EventType::HostUserUnlinked
            | EventType::TokenCreated
            | EventType::TokenRevoked => 1,
        }
    }
}

impl EventBody {
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::UserCreated { .. } => EventType::UserCreated,
            EventBody::UserUpdated { .. } => EventType::UserUpdated,
            EventBody::UserDeactivated {} => EventType::UserDeactivated,
            EventBody::UserReactivated {} => EventType::UserReactivated,
            EventBody::UserDeleted {} => EventType::UserDeleted,
            EventBody::UserErased { .. } => EventType::UserErased,
            EventBody::GroupCreated { .. } => EventType::GroupCreated,
            EventBody::GroupRenamed { .. } => EventType::GroupRenamed,
            EventBody::GroupUpdated { .. } => EventType::GroupUpdated,
            EventBody::GroupDeleted {} => EventType::GroupDeleted,
            EventBody::GroupMemberAdded { .. } => EventType::GroupMemberAdded,
            EventBody::GroupMemberRemoved { .. } => EventType::GroupMemberRemoved,
            EventBody::RoleAssigned { .. } => EventType::RoleAssigned,
            EventBody::RoleRevoked { .. } => EventType::RoleRevoked,
            EventBody::EntitlementGranted { .. } => EventType::EntitlementGranted,
            EventBody::EntitlementRevoked { .. } => EventType::EntitlementRevoked,
            EventBody::OrganizationCreated { .. } => EventType::OrganizationCreated,
            EventBody::EnvironmentCreated { .. } => EventType::EnvironmentCreated,
            EventBody::ResourceGroupCreated { .. } => EventType::ResourceGroupCreated,
            EventBody::HostUserLinked { .. } => EventType::HostUserLinked,
            EventBody::HostUserUnlinked { .. } => EventType::HostUserUnlinked,
            EventBody::TokenCreated { .. } => EventType::TokenCreated,
            EventBody::TokenRevoked {} => EventType::TokenRevoked,
        }
    }
}

/// An event as decided by a command, before the log gives it a position, time and hash.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub resource_type: ResourceKind,
    pub resource_id: String,
    /// The resource's version after this event: its ETag.
    pub resource_version: u64,
    pub body: EventBody,
}

/// The envelope as stored and published. Field order is the canonical byte order that is hashed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub id: Uuid,
    pub position: u64,
    pub tenant: String,
    #[serde(flatten)]
    pub body: EventBody,
    pub schema_version: u32,
    pub resource_type: ResourceKind,
    pub resource_id: String,
    pub resource_version: u64,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub request_id: String,
    /// The W3C `traceparent` of the request that caused the event, when tracing was on: the
    /// publisher continues that trace (and sends it as a NATS header), however much later.
    /// Absent otherwise, so events written without tracing keep their bytes (and hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub prev_hash: EventHash,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event record is shorter than its hash")]
    Truncated,
    #[error("event body is not valid: {0}")]
    Body(#[from] serde_json::Error),
    #[error("event type {0:?} version {1} is newer than this build knows")]
    UnknownVersion(String, u32),
    #[error(transparent)]
    Open(#[from] crate::personal::OpenError),
}

/// One log record: the SHA-256 of the canonical bytes, then the bytes.
#[derive(Clone, Debug)]
pub struct SealedEvent {
    pub hash: [u8; 32],
    pub bytes: Vec<u8>,
}

impl SealedEvent {
    pub fn to_record(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.bytes.len());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.bytes);
        out
    }
    pub fn from_record(record: &[u8]) -> Result<SealedEvent, DecodeError> {
        if record.len() < 32 {
            return Err(DecodeError::Truncated);
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&record[..32]);
        Ok(SealedEvent { hash, bytes: record[32..].to_vec() })
    }
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
    pub fn event_hash(&self) -> EventHash {
        EventHash(self.hash)
    }
    /// Whether the stored hash is the hash of the stored bytes.
    pub fn is_intact(&self) -> bool {
        Sha256::digest(&self.bytes).as_slice() == self.hash
    }
    pub fn decode(&self, opener: &dyn Opener) -> Result<Event, DecodeError> {
        Event::decode(&self.bytes, opener)
    }
    /// The envelope as published and exported: the canonical fields plus `hash`.
    pub fn envelope_json(&self) -> Result<Value, DecodeError> {
        let mut v: Value = serde_json::from_slice(&self.bytes)?;
        if let Value::Object(m) = &mut v {
            m.insert("hash".into(), Value::String(self.hash_hex()));
        }
        Ok(v)
    }
}

impl Event {
    /// Serialises the event, sealing its personal values with the subject's key, and hashes the
    /// result: the hash chain covers the sealed bytes, so erasing a key never breaks it. Its
    /// `prev_hash` must already be set.
    ///
    /// Written without a `Value` of the event: the two types with personal values serialise a
    /// copy of the envelope whose `data` has the clear values and the sealed part
    /// ([`SealedEnvelope`]); every other type is the event's own serialisation.
    pub fn seal(&self, sealer: &mut dyn Sealer) -> SealedEvent {
        let bytes = match &self.body {
            EventBody::UserCreated { attributes, active } => {
                let (clear, sealed) = self.seal_values(attributes, sealer);
                let attributes = clear.as_ref().unwrap_or(attributes);
                self.sealed_envelope(StoredUserCreatedRef { attributes, active: *active, sealed })
            }
            EventBody::UserUpdated { changed, removed } => {
                let (clear, sealed) = self.seal_values(changed, sealer);
                let changed = clear.as_ref().unwrap_or(changed);
                self.sealed_envelope(StoredUserUpdatedRef { changed, removed, sealed })
            }
            EventBody::UserDeactivated {}
            | EventBody::UserReactivated {}
            | EventBody::UserDeleted {}
            | EventBody::UserErased { .. }
            | EventBody::GroupCreated { .. }
            | EventBody::GroupRenamed { .. }
            | EventBody::GroupUpdated { .. }
            | EventBody::GroupDeleted {}
            | EventBody::GroupMemberAdded { .. }
            | EventBody::GroupMemberRemoved { .. }
            | EventBody::RoleAssigned { .. }
            | EventBody::RoleRevoked { .. }
            | EventBody::EntitlementGranted { .. }
            | EventBody::EntitlementRevoked { .. }
            | EventBody::OrganizationCreated { .. }
            | EventBody::EnvironmentCreated { .. }
            | EventBody::ResourceGroupCreated { .. }
            | EventBody::HostUserLinked { .. }
            | EventBody::HostUserUnlinked { .. }
            | EventBody::TokenCreated { .. }
            | EventBody::TokenRevoked {} => serde_json::to_vec(self).expect("events serialise"),
        };
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        SealedEvent { hash, bytes }
    }

    /// Splits user attributes into clear and personal values and seals the personal ones with
    /// the subject's key: (the clear values, the sealed part), or (None, None) when there is no
    /// personal value (the attributes are stored as they are).
    fn seal_values(
        &self,
        attributes: &Map<String, Value>,
        sealer: &mut dyn Sealer,
    ) -> (Option<Map<String, Value>>, Option<Sealed>) {
        let (clear, personal) = split(attributes);
        if personal.is_empty() {
            return (None, None);
        }
        let plaintext = serde_json::to_vec(&personal).expect("values serialise");
        let sealed = Sealed {
            subject: self.resource_id.clone(),
            attributes: personal.keys().cloned().collect(),
            sealed_box: sealer.seal(&self.tenant, &self.resource_id, &plaintext),
        };
        (Some(clear), Some(sealed))
    }

    fn sealed_envelope<D: Serialize>(&self, data: D) -> Vec<u8> {
        let envelope = SealedEnvelope {
            id: self.id,
            position: self.position,
            tenant: &self.tenant,
            ty: self.event_type().as_str(),
            data,
            schema_version: self.schema_version,
            resource_type: self.resource_type,
            resource_id: &self.resource_id,
            resource_version: self.resource_version,
            recorded_at: self.recorded_at,
            actor: &self.actor,
            request_id: &self.request_id,
            traceparent: self.traceparent.as_deref(),
            prev_hash: self.prev_hash,
        };
        serde_json::to_vec(&envelope).expect("events serialise")
    }

    /// Parses canonical bytes, lifting older schema versions to the current one and opening
    /// sealed values with `opener`; values whose key is gone read as [`ERASED`].
    ///
    /// Typed all the way: the envelope's fields straight into their types, `data` kept as its
    /// raw JSON until the type and version are known, then read into that type's data (no
    /// `Value` of the whole event, no buffer for the flattened body). Publishing, replays and
    /// rebuilds decode every event, so this is on their hot path.
    pub fn decode(bytes: &[u8], opener: &dyn Opener) -> Result<Event, DecodeError> {
        let stored: StoredEvent<'_> = serde_json::from_slice(bytes)?;
        upcast(&stored.ty, stored.schema_version)?;
        let body = decode_body(&stored.ty, stored.data, &stored.tenant, opener)?;
        Ok(Event {
            id: stored.id,
            position: stored.position,
            tenant: stored.tenant,
            body,
            schema_version: stored.schema_version,
            resource_type: stored.resource_type,
            resource_id: stored.resource_id,
            resource_version: stored.resource_version,
            recorded_at: stored.recorded_at,
            actor: stored.actor,
            request_id: stored.request_id,
            traceparent: stored.traceparent,
            prev_hash: stored.prev_hash,
        })
    }

    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }

    /// The envelope as published and exported: the canonical fields of the (opened) event, then
    /// `hash`, the hash of its stored (sealed) form — the bytes `serde_json::to_value` of the
    /// event plus `hash` gave, written without building that `Value`.
    pub fn published_json(&self, hash: &EventHash) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("events serialise");
        debug_assert_eq!(out.last(), Some(&b'}'), "an event serialises as an object");
        out.pop();
        out.extend_from_slice(b",\"hash\":\"");
        out.extend_from_slice(hash.to_string().as_bytes());
        out.extend_from_slice(b"\"}");
        out
    }
}

/// The envelope as [`Event`] serialises it (the same fields in the same order: the canonical
/// bytes), with a `data` of the caller's: a user type's data with its sealed part.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SealedEnvelope<'a, D> {
    id: Uuid,
    position: u64,
    tenant: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
    data: D,
    schema_version: u32,
    resource_type: ResourceKind,
    resource_id: &'a str,
    resource_version: u64,
    recorded_at: DateTime<Utc>,
    actor: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    prev_hash: EventHash,
}

/// `user.created`'s data as stored (see [`StoredUserCreated`], which reads it back).
#[derive(Serialize)]
struct StoredUserCreatedRef<'a> {
    attributes: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    active: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
}

/// `user.updated`'s data as stored (see [`StoredUserUpdated`]).
#[derive(Serialize)]
struct StoredUserUpdatedRef<'a> {
    changed: &'a Map<String, Value>,
    removed: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
}

/// The stored envelope's fields, `data` as its raw JSON (borrowed from the record).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredEvent<'a> {
    id: Uuid,
    position: u64,
    tenant: String,
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a serde_json::value::RawValue>,
    schema_version: u32,
    resource_type: ResourceKind,
    resource_id: String,
    resource_version: u64,
    recorded_at: DateTime<Utc>,
    actor: String,
    request_id: String,
    #[serde(default)]
    traceparent: Option<String>,
    prev_hash: EventHash,
}

/// `user.created`'s data as stored: the clear attributes, and the sealed ones apart.
#[derive(Deserialize)]
struct StoredUserCreated {
    attributes: Map<String, Value>,
    #[serde(default)]
    active: Option<bool>,
    #[serde(default)]
    sealed: Option<Sealed>,
}

/// `user.updated`'s data as stored: the clear changes, and the sealed ones apart.
#[derive(Deserialize)]
struct StoredUserUpdated {
    changed: Map<String, Value>,
    removed: Vec<String>,
    #[serde(default)]
    sealed: Option<Sealed>,
}

/// The body of an event of type `ty` from its raw `data`: the two types that carry personal
/// values are read with their sealed part and opened; every other type is read by the
/// `EventBody` derive itself, from `{"type": ty, "data": data}` (tag first, so serde reads the
/// data straight into the variant).
fn decode_body(
    ty: &str,
    data: Option<&serde_json::value::RawValue>,
    tenant: &str,
    opener: &dyn Opener,
) -> Result<EventBody, DecodeError> {
    let raw = data.map(|d| d.get());
    match (ty, raw) {
        ("user.created", Some(raw)) => {
            let mut d: StoredUserCreated = serde_json::from_str(raw)?;
            open_into(&mut d.attributes, d.sealed, tenant, opener)?;
            Ok(EventBody::UserCreated { attributes: d.attributes, active: d.active })
        }
        ("user.updated", Some(raw)) => {
            let mut d: StoredUserUpdated = serde_json::from_str(raw)?;
            open_into(&mut d.changed, d.sealed, tenant, opener)?;
            Ok(EventBody::UserUpdated { changed: d.changed, removed: d.removed })
        }
        (_, raw) => {
            let tag = serde_json::to_string(ty)?;
            let json = match raw {
                Some(raw) => format!("{{\"type\":{tag},\"data\":{raw}}}"),
                None => format!("{{\"type\":{tag}}}"),
            };
            Ok(serde_json::from_str(&json)?)
        }
    }
}

/// Opens a sealed part into the clear attributes it was split from; values whose key is gone
/// read as [`ERASED`].
fn open_into(
    clear: &mut Map<String, Value>,
    sealed: Option<Sealed>,
    tenant: &str,
    opener: &dyn Opener,
) -> Result<(), DecodeError> {
    let Some(sealed) = sealed else { return Ok(()) };
    let personal: Map<String, Value> = match opener.open(tenant, &sealed.subject, &sealed.sealed_box)? {
        Some(plain) => serde_json::from_slice(&plain)?,
        None => sealed.attributes.iter().map(|a| (a.clone(), Value::String(ERASED.into()))).collect(),
    };
    merge(clear, personal);
    Ok(())
}

/// Lifts an event of an older schema version to the current one. Every version ever written
/// stays readable: add a step here whenever a type's `schema_version` is bumped.
fn upcast(ty: &str, version: u32) -> Result<(), DecodeError> {
    let current = EventType::ALL.iter().find(|t| t.as_str() == ty).map(|t| t.schema_version()).unwrap_or(1);
    if version > current {
        return Err(DecodeError::UnknownVersion(ty.to_string(), version));
    }
    // environment.created / resource_group.created 1 -> 2 added an optional `organization`:
    // a version 1 event reads as it is (no organization recorded). No other type changed shape.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::personal::{NoKeys, OpenError};
    use serde_json::json;

    /// Seals by hex-encoding: reversible, for checking the format without crypto.
    struct HexSealer;
    impl Sealer for HexSealer {
        fn seal(&mut self, _: &str, _: &str, plaintext: &[u8]) -> String {
            hex::encode(plaintext)
        }
    }
    impl Opener for HexSealer {
        fn open(&self, _: &str, subject: &str, sealed_box: &str) -> Result<Option<Vec<u8>>, OpenError> {
            hex::decode(sealed_box).map(Some).map_err(|e| OpenError { subject: subject.into(), detail: e.to_string() })
        }
    }

    fn sample(body: EventBody) -> Event {
        Event {
            id: Uuid::nil(),
            position: 7,
            tenant: "default".into(),
            schema_version: body.event_type().schema_version(),
            body,
            resource_type: ResourceKind::Group,
            resource_id: "g1".into(),
            resource_version: 3,
            recorded_at: DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").unwrap().with_timezone(&Utc),
            actor: "okta".into(),
            request_id: "r1".into(),
            traceparent: None,
            prev_hash: EventHash::GENESIS,
        }
    }

    /// A hash is written exactly as the 64-hex string it was before it became a type (the chain's
    /// bytes do not change), and only that form reads back.
    #[test]
    fn event_hashes_keep_their_wire_form() {
        let h = EventHash([0xab; 32]);
        assert_eq!(serde_json::to_value(h).unwrap(), json!("ab".repeat(32)));
        assert_eq!(serde_json::from_value::<EventHash>(json!("ab".repeat(32))).unwrap(), h);
        assert_eq!(serde_json::to_value(EventHash::GENESIS).unwrap(), json!("0".repeat(64)));
        for bad in ["AB".repeat(32), "ab".repeat(31), "zz".repeat(32), String::new()] {
            assert!(serde_json::from_value::<EventHash>(json!(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn envelope_wire_form() {
        let e = sample(EventBody::GroupMemberAdded { member_id: "u1".into(), member_type: MemberType::User });
        let sealed = e.seal(&mut HexSealer);
        let v = sealed.envelope_json().unwrap();
        assert_eq!(v["type"], "group.member_added");
        assert_eq!(v["data"], json!({"memberId": "u1", "memberType": "User"}));
        assert_eq!(v["schemaVersion"], 1);
        assert_eq!(v["resourceVersion"], 3);
        assert_eq!(v["hash"].as_str().unwrap().len(), 64);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(&keys[..4], &["id", "position", "tenant", "type"]);
    }

    #[test]
    fn every_type_round_trips() {
        let bodies = vec![
            EventBody::UserCreated { attributes: Map::new(), active: Some(true) },
            EventBody::UserUpdated { changed: Map::new(), removed: vec!["title".into()] },
            EventBody::UserDeactivated {},
            EventBody::UserReactivated {},
            EventBody::UserDeleted {},
            EventBody::UserErased { reason: "request 42".into() },
            EventBody::GroupCreated { display_name: "Ops".into(), attributes: Map::new() },
            EventBody::GroupRenamed { display_name: "Ops2".into(), previous_display_name: "Ops".into() },
            EventBody::GroupUpdated { changed: Map::new(), removed: vec![] },
            EventBody::GroupDeleted {},
            EventBody::GroupMemberAdded { member_id: "u".into(), member_type: MemberType::User },
            EventBody::GroupMemberRemoved { member_id: "g".into(), member_type: MemberType::Group },
            EventBody::RoleAssigned {
                role: "urn:x:role:environment:prod:admin".into(),
                value: json!({"value": "urn:x:role:environment:prod:admin"}),
            },
            EventBody::RoleRevoked { role: "urn:x:role:environment:prod:admin".into() },
            EventBody::EntitlementGranted {
                entitlement: "urn:x:entitlement:environment:prod".into(),
                value: json!({"value": "e"}),
            },
            EventBody::EntitlementRevoked { entitlement: "urn:x:entitlement:environment:prod".into() },
            EventBody::OrganizationCreated { slug: "default".into() },
            EventBody::EnvironmentCreated { slug: "prod".into(), organization: Some("default".into()) },
            EventBody::ResourceGroupCreated { slug: "rg".into(), organization: Some("default".into()) },
            EventBody::HostUserLinked { user_id: "u".into() },
            EventBody::HostUserUnlinked { user_id: "u".into() },
            EventBody::TokenCreated { role: "scim".into() },
            EventBody::TokenRevoked {},
        ];
        assert_eq!(bodies.len(), EventType::ALL.len());
        for b in bodies {
            let e = sample(b);
            let sealed = e.seal(&mut HexSealer);
            assert!(sealed.is_intact());
            let back = SealedEvent::from_record(&sealed.to_record()).unwrap().decode(&HexSealer).unwrap();
            assert_eq!(back, e);
            assert_eq!(serde_json::to_value(&e).unwrap()["type"], e.event_type().as_str());
        }
    }

    /// The data field of an event type that holds user attributes (the `Value` paths' rule).
    fn personal_field(event_type: &str) -> Option<&'static str> {
        match event_type {
            "user.created" => Some("attributes"),
            "user.updated" => Some("changed"),
            _ => None,
        }
    }

    /// The decode before the typed one (whole event as a `Value`, opened in place, then
    /// `from_value`), and the published body it gave: the oracle the typed path must equal.
    fn decode_via_value(bytes: &[u8], opener: &dyn Opener) -> Event {
        let mut raw: Value = serde_json::from_slice(bytes).unwrap();
        let tenant = raw["tenant"].as_str().unwrap().to_string();
        let field = personal_field(raw["type"].as_str().unwrap());
        if let (Some(field), Some(Value::Object(data))) = (field, raw.get_mut("data")) {
            if let Some(sealed) = data.remove("sealed") {
                let sealed: Sealed = serde_json::from_value(sealed).unwrap();
                let personal: Map<String, Value> =
                    match opener.open(&tenant, &sealed.subject, &sealed.sealed_box).unwrap() {
                        Some(plain) => serde_json::from_slice(&plain).unwrap(),
                        None => sealed.attributes.iter().map(|a| (a.clone(), Value::String(ERASED.into()))).collect(),
                    };
                let slot = data.entry(field.to_string()).or_insert_with(|| Value::Object(Map::new()));
                merge(slot.as_object_mut().unwrap(), personal);
            }
        }
        serde_json::from_value(raw).unwrap()
    }

    fn published_via_value(event: &Event, sealed: &SealedEvent) -> Vec<u8> {
        let mut v = serde_json::to_value(event).unwrap();
        v["hash"] = json!(sealed.hash_hex());
        serde_json::to_vec(&v).unwrap()
    }

    /// The seal before the typed one (the event as a `Value`, its personal values swapped for
    /// the sealed part in place): the oracle of the typed seal's bytes.
    fn seal_via_value(e: &Event, sealer: &mut dyn Sealer) -> Vec<u8> {
        let mut v = serde_json::to_value(e).unwrap();
        let field = personal_field(e.event_type().as_str());
        if let (Some(field), Some(Value::Object(data))) = (field, v.get_mut("data")) {
            let (clear, personal) = split(data[field].as_object().unwrap());
            if !personal.is_empty() {
                let plaintext = serde_json::to_vec(&personal).unwrap();
                let sealed = Sealed {
                    subject: e.resource_id.clone(),
                    attributes: personal.keys().cloned().collect(),
                    sealed_box: sealer.seal(&e.tenant, &e.resource_id, &plaintext),
                };
                data.insert(field.to_string(), Value::Object(clear));
                data.insert("sealed".to_string(), serde_json::to_value(sealed).unwrap());
            }
        }
        serde_json::to_vec(&v).unwrap()
    }

    /// The typed seal writes the bytes the `Value` seal wrote, so the canonical form (and so
    /// every hash of an event written the same way) is unchanged: personal values with and
    /// without `active`, none at all, an enterprise extension with only personal values or
    /// empty, a trace context, every other type.
    #[test]
    fn the_typed_seal_writes_what_the_value_seal_wrote() {
        let personal = json!({"userName": "bob", "emails": [{"value": "b@x.org"}], "userType": "Eng",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "9"}});
        let clear_only = json!({"userType": "Eng", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {}});
        let (personal, clear_only) = (personal.as_object().unwrap().clone(), clear_only.as_object().unwrap().clone());
        let mut events = vec![
            sample(EventBody::UserCreated { attributes: personal.clone(), active: Some(true) }),
            sample(EventBody::UserCreated { attributes: personal.clone(), active: None }),
            sample(EventBody::UserCreated { attributes: clear_only.clone(), active: Some(false) }),
            sample(EventBody::UserCreated { attributes: Map::new(), active: None }),
            sample(EventBody::UserUpdated { changed: personal.clone(), removed: vec!["title".into()] }),
            sample(EventBody::UserUpdated { changed: clear_only, removed: vec![] }),
            sample(EventBody::GroupCreated { display_name: "Ops".into(), attributes: personal }),
            sample(EventBody::EnvironmentCreated { slug: "prod".into(), organization: None }),
            sample(EventBody::TokenRevoked {}),
        ];
        events[1].traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        for (i, e) in events.iter().enumerate() {
            let sealed = e.seal(&mut HexSealer);
            assert_eq!(
                String::from_utf8(sealed.bytes.clone()).unwrap(),
                String::from_utf8(seal_via_value(e, &mut HexSealer)).unwrap(),
                "event {i}"
            );
            assert!(sealed.is_intact());
            assert_eq!(sealed.decode(&HexSealer).unwrap(), *e, "event {i} reads back");
        }
    }

    /// The typed decode reads every stored form as the `Value` decode did, and the published
    /// body is byte for byte the one built through a `Value`: every type, personal values
    /// (a core attribute, a multi-valued one, the enterprise extension's) opened or erased, a
    /// trace context, a version 1 scope without an organization, a published envelope (with
    /// `hash`, as `outbound run` reads them) and fields in another order.
    #[test]
    fn the_typed_decode_reads_what_the_value_decode_read() {
        let attrs = json!({
            "userName": "alice", "userType": "Eng", "emails": [{"value": "alice@x.org", "primary": true}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "7", "costCenter": "c"},
            "score": 1.5e300
        });
        let attrs = attrs.as_object().unwrap().clone();
        let mut events: Vec<Event> = vec![
            sample(EventBody::UserCreated { attributes: attrs.clone(), active: None }),
            sample(EventBody::UserCreated { attributes: Map::new(), active: Some(false) }),
            sample(EventBody::UserUpdated { changed: attrs.clone(), removed: vec!["title".into()] }),
            sample(EventBody::GroupCreated { display_name: "Ops \"1\"".into(), attributes: attrs.clone() }),
            sample(EventBody::EnvironmentCreated { slug: "prod".into(), organization: None }),
            sample(EventBody::RoleAssigned { role: "urn:r".into(), value: json!({"value": "urn:r", "primary": true}) }),
            sample(EventBody::UserErased { reason: "ticket \u{e9}".into() }),
        ];
        events[0].traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        events[4].schema_version = 1;
        for e in &mut events {
            e.resource_type = ResourceKind::User;
        }
        for (i, e) in events.iter().enumerate() {
            let sealed = e.seal(&mut HexSealer);
            for opener in [&HexSealer as &dyn Opener, &NoKeys] {
                let typed = sealed.decode(opener).unwrap();
                assert_eq!(typed, decode_via_value(&sealed.bytes, opener), "event {i}");
                let published = typed.published_json(&sealed.event_hash());
                assert_eq!(published, published_via_value(&typed, &sealed), "event {i}");
                // A published envelope reads back as the event (the outbound runner's copy).
                assert_eq!(Event::decode(&published, &NoKeys).unwrap(), typed, "event {i}, published");
            }
        }
        // Fields in another order than the canonical one (data before type) read the same.
        let e = sample(EventBody::GroupMemberAdded { member_id: "u1".into(), member_type: MemberType::User });
        let v = serde_json::to_value(&e).unwrap();
        let mut reordered = Map::new();
        for key in ["data", "prevHash", "type"] {
            reordered.insert(key.into(), v[key].clone());
        }
        for (k, val) in v.as_object().unwrap() {
            reordered.entry(k.clone()).or_insert_with(|| val.clone());
        }
        assert_eq!(Event::decode(&serde_json::to_vec(&reordered).unwrap(), &NoKeys).unwrap(), e);
        // A data that is not the type's is refused as before.
        let mut bad = v.clone();
        bad["data"] = json!({"memberId": 5});
        assert!(matches!(Event::decode(&serde_json::to_vec(&bad).unwrap(), &NoKeys), Err(DecodeError::Body(_))));
    }

    #[test]
    fn personal_values_are_sealed_and_read_as_erased_without_the_key() {
        let attributes = json!({"userName": "alice", "userType": "Eng", "emails": [{"value": "alice@x.org"}]});
        let mut e =
            sample(EventBody::UserCreated { attributes: attributes.as_object().unwrap().clone(), active: Some(true) });
        e.resource_type = ResourceKind::User;
        let sealed = e.seal(&mut HexSealer);
        let stored = String::from_utf8(sealed.bytes.clone()).unwrap();
        assert!(!stored.contains("alice"), "no personal value in clear: {stored}");
        assert!(stored.contains("\"userType\":\"Eng\""), "non-personal values stay readable: {stored}");
        assert_eq!(sealed.decode(&HexSealer).unwrap(), e);
        let erased = sealed.decode(&NoKeys).unwrap();
        match erased.body {
            EventBody::UserCreated { attributes, .. } => {
                assert_eq!(Value::Object(attributes), json!({"userType": "Eng", "userName": ERASED, "emails": ERASED}));
            }
            other => panic!("{other:?}"),
        }
        assert!(sealed.is_intact(), "erasure never touches the hashed bytes");
    }

    #[test]
    fn tampering_breaks_the_hash_and_unknown_versions_are_refused() {
        let mut sealed = sample(EventBody::UserDeleted {}).seal(&mut HexSealer);
        sealed.bytes[10] ^= 1;
        assert!(!sealed.is_intact());
        let mut v: Value = serde_json::to_value(sample(EventBody::UserDeleted {})).unwrap();
        v["schemaVersion"] = json!(99);
        let err = Event::decode(&serde_json::to_vec(&v).unwrap(), &NoKeys).unwrap_err();
        assert!(matches!(err, DecodeError::UnknownVersion(_, 99)));
    }
}
