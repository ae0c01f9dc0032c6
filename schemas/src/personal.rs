//! Personal data in events. The attributes listed here are sealed with the data key of their
//! subject (the user) before an event is hashed and stored; everything else (ids, event types,
//! times, actors, memberships, roles) stays in clear so that audit and replay work without keys.
//! Destroying a subject's key makes its sealed values unreadable everywhere: in the log, in
//! exports and in replays, where they read as [`ERASED`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::urn;

/// Top-level User attributes that are personal data. Extension attributes are named
/// `<extension URN>:<attribute>`. Decided per attribute (README "Personal data and erasure"):
/// whatever names, reaches or singles out the person is sealed, including `externalId` (Entra
/// maps it to the mail nickname), `title` and `department`. Left in clear, because audit and
/// replay need them and they say nothing of who the person is: `active`, `userType`,
/// `preferredLanguage`, `locale`, `timezone`, the enterprise `organization`, `division`,
/// `costCenter` and `manager.value` (an id), `roles`/`entitlements` (grants; their `display`
/// names the grant, not the person) and `groups`. `manager.displayName` is readOnly and never
/// stored.
pub const PERSONAL_USER_ATTRIBUTES: &[&str] = &[
    "userName",
    "externalId",
    "name",
    "displayName",
    "nickName",
    "title",
    "profileUrl",
    "emails",
    "phoneNumbers",
    "ims",
    "photos",
    "addresses",
    "x509Certificates",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
];

/// What a sealed value reads as once its key is destroyed.
pub const ERASED: &str = "[erased]";

pub fn is_personal(name: &str) -> bool {
    PERSONAL_USER_ATTRIBUTES.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Splits canonical User attributes into (clear, personal). Extension attributes are split inside
/// their extension object; personal ones are keyed `<URN>:<name>` in the personal map.
pub fn split(attributes: &Map<String, Value>) -> (Map<String, Value>, Map<String, Value>) {
    let mut clear = Map::new();
    let mut personal = Map::new();
    for (k, v) in attributes {
        if k.eq_ignore_ascii_case(urn::ENTERPRISE_USER) {
            let mut ext_clear = Map::new();
            for (ek, ev) in v.as_object().into_iter().flatten() {
                let full = format!("{k}:{ek}");
                if is_personal(&full) {
                    personal.insert(full, ev.clone());
                } else {
                    ext_clear.insert(ek.clone(), ev.clone());
                }
            }
            if !ext_clear.is_empty() {
                clear.insert(k.clone(), Value::Object(ext_clear));
            }
        } else if is_personal(k) {
            personal.insert(k.clone(), v.clone());
        } else {
            clear.insert(k.clone(), v.clone());
        }
    }
    (clear, personal)
}

/// Puts personal values back beside the clear ones (inverse of [`split`]).
pub fn merge(clear: &mut Map<String, Value>, personal: Map<String, Value>) {
    for (k, v) in personal {
        match k.strip_prefix(urn::ENTERPRISE_USER).and_then(|r| r.strip_prefix(':')) {
            Some(inner) => {
                let ext = clear.entry(urn::ENTERPRISE_USER.to_string()).or_insert_with(|| Value::Object(Map::new()));
                if let Some(o) = ext.as_object_mut() {
                    o.insert(inner.to_string(), v);
                }
            }
            None => {
                clear.insert(k, v);
            }
        }
    }
}

/// The sealed part of an event's data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sealed {
    /// The subject whose data key sealed it (a user id, within the event's tenant).
    pub subject: String,
    /// The names of the sealed attributes (names are not personal; values are).
    pub attributes: Vec<String>,
    /// base64 of nonce ‖ ciphertext of the JSON object of the sealed values.
    pub sealed_box: String,
}

/// Seals bytes for a subject, creating the subject's key if it has none.
pub trait Sealer {
    fn seal(&mut self, tenant: &str, subject: &str, plaintext: &[u8]) -> String;
}

/// Opens what a [`Sealer`] sealed. `Ok(None)`: the subject's key is gone (erased), and only
/// then do its values read `[erased]`. A key that cannot be read (a storage error) or does not
/// open the box is an [`OpenError`], never taken for erased: a reader stops and says so.
pub trait Opener {
    fn open(&self, tenant: &str, subject: &str, sealed_box: &str) -> Result<Option<Vec<u8>>, OpenError>;
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot open the sealed values of subject {subject:?}: {detail}")]
pub struct OpenError {
    pub subject: String,
    pub detail: String,
}

/// Opens nothing: every sealed value reads as erased. For tools that run without keys.
pub struct NoKeys;

impl Opener for NoKeys {
    fn open(&self, _: &str, _: &str, _: &str) -> Result<Option<Vec<u8>>, OpenError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn split_and_merge_are_inverse() {
        let attrs = json!({
            "userName": "a", "title": "Eng", "emails": [{"value": "a@x"}], "externalId": "e",
            "userType": "Employee",
            urn::ENTERPRISE_USER: {"employeeNumber": "7", "department": "Ops", "costCenter": "42"}
        });
        let attrs = attrs.as_object().unwrap();
        let (mut clear, personal) = split(attrs);
        assert_eq!(
            Value::Object(clear.clone()),
            json!({"userType": "Employee", urn::ENTERPRISE_USER: {"costCenter": "42"}})
        );
        assert_eq!(
            personal.keys().cloned().collect::<Vec<_>>(),
            [
                "userName",
                "title",
                "emails",
                "externalId",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
            ]
        );
        merge(&mut clear, personal);
        for (k, v) in attrs {
            assert_eq!(clear.get(k), Some(v), "{k}");
        }
    }
}
