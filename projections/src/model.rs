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

/// What an access answer needs of a user, decoded from the stored [`UserDoc`] without its other
/// attributes (the decoder skips them: no `Map` of the whole document is built).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct UserHead {
    pub id: String,
    /// As assigned; `None` (unassigned) counts as active.
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    attributes: HeadAttributes,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
struct HeadAttributes {
    #[serde(rename = "userName", default)]
    user_name: String,
}

impl UserHead {
    pub fn is_active(&self) -> bool {
        self.active.unwrap_or(true)
    }
    pub fn user_name(&self) -> &str {
        &self.attributes.user_name
    }
}

impl UserDoc {
    /// The user's [`UserHead`], as `query::user_head` decodes it from the stored document.
    pub fn head(&self) -> UserHead {
        UserHead {
            id: self.id.clone(),
            active: self.active,
            attributes: HeadAttributes { user_name: self.user_name().to_string() },
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The head decoded from a stored document says what the whole document says.
    #[test]
    fn a_user_head_is_the_stored_documents_id_activity_and_user_name() {
        let at = DateTime::parse_from_rfc3339("2026-12-06T12:00:00Z").unwrap().with_timezone(&Utc);
        let attrs = |v: Value| v.as_object().cloned().unwrap();
        let cases = [
            (None, attrs(serde_json::json!({"userName": "a@x.org"}))),
            (
                Some(false),
                attrs(
                    serde_json::json!({"userName": "b@x.org", "name": {"givenName": "B"}, "emails": [{"value": "b@x.org"}]}),
                ),
            ),
            (
                Some(true),
                attrs(
                    serde_json::json!({"displayName": "no userName", "roles": ["urn:scimlog:role:environment:prod:admin"]}),
                ),
            ),
        ];
        for (active, attributes) in cases {
            let doc = UserDoc { id: "u1".into(), version: 3, created: at, last_modified: at, active, attributes };
            let stored = serde_json::to_vec(&doc).unwrap();
            let head: UserHead = serde_json::from_slice(&stored).unwrap();
            assert_eq!(head, doc.head(), "{}", String::from_utf8_lossy(&stored));
            assert_eq!((head.is_active(), head.user_name()), (doc.is_active(), doc.user_name()));
        }
    }
}
