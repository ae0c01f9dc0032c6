//! The stored documents of the read models.

use chrono::{DateTime, Utc};
use scimlog_schemas::MemberType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDoc {
    pub id: String,
    pub version: u64,
    pub created: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
    /// As assigned; `None` (unassigned) counts as active.
    pub active: Option<bool>,
    /// Canonical SCIM attributes (see `scimlog_schemas::resource::UserInput`).
    pub attributes: Map<String, Value>,
}

impl UserDoc {
    pub fn is_active(&self) -> bool {
        self.active.unwrap_or(true)
    }
    pub fn user_name(&self) -> &str {
        self.attributes.get("userName").and_then(Value::as_str).unwrap_or_default()
    }
    pub fn external_id(&self) -> Option<&str> {
        self.attributes.get("externalId").and_then(Value::as_str)
    }
    /// The name shown for this user as a group member: displayName, else userName.
    pub fn display(&self) -> &str {
        self.attributes.get("displayName").and_then(Value::as_str).unwrap_or_else(|| self.user_name())
    }
    pub fn emails(&self) -> impl Iterator<Item = &str> {
        emails_of(&self.attributes)
    }
}

pub fn emails_of(attributes: &Map<String, Value>) -> impl Iterator<Item = &str> {
    attributes
        .get("emails")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("value").and_then(Value::as_str))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDoc {
    pub id: String,
    pub version: u64,
    pub created: DateTime<Utc>,
    pub last_modified: DateTime<Utc>,
    pub display_name: String,
    /// Canonical attributes other than displayName and members.
    pub attributes: Map<String, Value>,
    /// Kept up to date by the fold, so that a group's size is known without a scan.
    pub member_count: u64,
}

impl GroupDoc {
    pub fn external_id(&self) -> Option<&str> {
        self.attributes.get("externalId").and_then(Value::as_str)
    }
}

/// A deleted user: enough to erase it later, nothing personal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tombstone {
    pub version: u64,
    pub erased: bool,
}

/// One membership, as stored under the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub id: String,
    #[serde(rename = "type")]
    pub member_type: MemberType,
}
