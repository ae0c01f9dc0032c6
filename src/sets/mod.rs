//! SCIM Security Event Tokens (RFC 9967, the SCIM profile of RFC 8417): each change of the log
//! rendered as a signed SET, for receivers that do not speak NATS.
//!
//! # Layout
//!
//! - this file: the rendering of one log event as a SET's claims (`claims`, `feed_claims`), its
//!   `jti` (the position, the start of the event's hash and, for a feed's further SETs of one
//!   event, their index: an acknowledgement names exactly one SET of this log), and the
//!   signing key (`Signer`: ES256, the key from `--set-signing-key-file` or generated once into
//!   `<data-dir>/set-signing-key.p8`, its public half served as a JWKS).
//! - [`config`]: the streams as configured (flags, `<data-dir>/set-streams.toml`): poll or
//!   push, an event filter, a feed's groups.
//! - [`run`]: the streams a running server serves, and one push task per push stream.
//! - [`streams`]: what each stream's receiver acknowledged (`AckStore`: this node's `outbound`
//!   family, or in cluster mode the replicated bucket), so that it survives restarts.
//! - [`feed`]: a feed's own fold of its groups' memberships, in log order.
//! - [`deliver`]: what a stream delivers next (`Source::next`), and `Deliverer`, the step poll
//!   and push share.
//! - [`push`]: RFC 8935 delivery, one SET at a time.
//!
//! One event is one SET (a feed's group deleted: one `feed:remove` per member); the SETs of one
//! request share its `txn` (the request id). Users and
//! groups have SETs (create, patch, activate, deactivate, delete); grants, scopes, hosts and
//! tokens do not (they are not SCIM resources a receiver provisions).

pub mod config;
pub mod deliver;
pub mod feed;
pub mod push;
pub mod run;
pub mod streams;

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use scimlog_schemas::event::{Event, EventBody};
use scimlog_schemas::ResourceKind;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

const PROV: &str = "urn:ietf:params:scim:event:prov";

/// The event URIs this server issues (what `ServiceProviderConfig` advertises).
pub const EVENT_URIS: [&str; 5] = [
    "urn:ietf:params:scim:event:prov:create:full",
    "urn:ietf:params:scim:event:prov:patch:full",
    "urn:ietf:params:scim:event:prov:activate",
    "urn:ietf:params:scim:event:prov:deactivate",
    "urn:ietf:params:scim:event:prov:delete",
];

/// Hex digits of the event's hash in its `jti`.
const JTI_HASH_HEX: usize = 16;

/// `42.9f86d081884c7d65`: the position, then the start of the event's hash; a feed's further
/// SETs of one event (a feed group deleted) add their index: `42.9f86d081884c7d65.1`.
pub fn jti(position: u64, index: u32, hash_hex: &str) -> String {
    let hash = &hash_hex[..JTI_HASH_HEX.min(hash_hex.len())];
    match index {
        0 => format!("{position}.{hash}"),
        i => format!("{position}.{hash}.{i}"),
    }
}

/// The position, index and hash prefix a `jti` names, if it has the shape this server gives.
pub fn parse_jti(jti: &str) -> Option<(u64, u32, &str)> {
    let mut parts = jti.splitn(3, '.');
    let position = parts.next()?.parse().ok().filter(|p| *p > 0)?;
    let hash = parts.next()?;
    let index = match parts.next() {
        None => 0,
        // One spelling per index: no sign, no leading zero (and so never 0).
        Some(i) if !i.starts_with(['+', '0']) => i.parse().ok()?,
        Some(_) => return None,
    };
    (hash.len() == JTI_HASH_HEX && hash.bytes().all(|b| b.is_ascii_hexdigit())).then_some((position, index, hash))
}

fn resource_path(kind: ResourceKind, id: &str) -> Option<String> {
    match kind {
        ResourceKind::User => Some(format!("/Users/{id}")),
        ResourceKind::Group => Some(format!("/Groups/{id}")),
        _ => None,
    }
}

fn patch_op(operations: Vec<Value>) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": operations})
}

fn changes(changed: &Map<String, Value>, removed: &[String]) -> Vec<Value> {
    let mut ops: Vec<Value> = changed.iter().map(|(k, v)| json!({"op": "replace", "path": k, "value": v})).collect();
    ops.extend(removed.iter().map(|k| json!({"op": "remove", "path": k})));
    ops
}

/// The event URI and payload of a log event, or `None` when it has no SET.
fn payload(e: &Event) -> Option<(String, Value)> {
    let full = |verb: &str, data: Value| (format!("{PROV}:{verb}:full"), json!({"data": data}));
    let bare = |verb: &str| (format!("{PROV}:{verb}"), json!({}));
    let created = |schema: &str, attributes: &Map<String, Value>, extra: Map<String, Value>| {
        let mut data = Map::new();
        data.insert("schemas".into(), json!([schema]));
        data.insert("id".into(), json!(e.resource_id));
        data.extend(extra);
        data.extend(attributes.clone());
        full("create", Value::Object(data))
    };
    let out = match &e.body {
        EventBody::UserCreated { attributes, active } => {
            let extra = active.map(|a| Map::from_iter([("active".to_string(), json!(a))])).unwrap_or_default();
            created(scimlog_schemas::urn::USER, attributes, extra)
        }
        EventBody::GroupCreated { display_name, attributes } => {
            let extra = Map::from_iter([("displayName".to_string(), json!(display_name))]);
            created(scimlog_schemas::urn::GROUP, attributes, extra)
        }
        EventBody::UserUpdated { changed, removed } | EventBody::GroupUpdated { changed, removed } => {
            full("patch", patch_op(changes(changed, removed)))
        }
        EventBody::GroupRenamed { display_name, .. } => {
            full("patch", patch_op(vec![json!({"op": "replace", "path": "displayName", "value": display_name})]))
        }
        EventBody::GroupMemberAdded { member_id, member_type } => {
            let member = json!({"value": member_id, "type": member_type.kind().as_str()});
            full("patch", patch_op(vec![json!({"op": "add", "path": "members", "value": [member]})]))
        }
        EventBody::GroupMemberRemoved { member_id, .. } => {
            let path = format!("members[value eq \"{member_id}\"]");
            full("patch", patch_op(vec![json!({"op": "remove", "path": path})]))
        }
        EventBody::UserReactivated {} => bare("activate"),
        EventBody::UserDeactivated {} => bare("deactivate"),
        EventBody::UserDeleted {} | EventBody::GroupDeleted {} => bare("delete"),
        // An erasure follows the user's deletion (its SET); the rest are not SCIM resources.
        EventBody::UserErased { .. }
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
        | EventBody::TokenRevoked {} => return None,
    };
    Some(out)
}

/// The event URI of a log event's SET (`None`: it has none).
pub fn event_uri(e: &Event) -> Option<String> {
    resource_path(e.resource_type, &e.resource_id)?;
    payload(e).map(|(uri, _)| uri)
}

/// The claims of a feed's `feed:add` or `feed:remove` (`event_uri`) of `user`, caused by the
/// event `e` (its request is the `txn`, its time the `iat`).
pub fn feed_claims(e: &Event, user: &str, event_uri: &str, jti: String, iss: &str, aud: &str) -> Value {
    json!({
        "iss": iss,
        "iat": e.recorded_at.timestamp(),
        "jti": jti,
        "aud": aud,
        "txn": e.request_id,
        "sub_id": {"format": "scim", "uri": format!("/Users/{user}"), "id": user},
        "events": {event_uri: {}},
    })
}

/// The claims of the SET for a log event (`None`: it has none): `iss` the SCIM base URL, `aud`
/// the stream, `txn` the request id shared by the request's events, `sub_id` in the `scim`
/// format, and the event's payload with `version`, the resource's ETag after the event.
pub fn claims(e: &Event, jti: String, iss: &str, aud: &str) -> Option<Value> {
    let uri = resource_path(e.resource_type, &e.resource_id)?;
    let (event_uri, mut body) = payload(e)?;
    body["version"] = json!(format!("W/\"{}\"", e.resource_version));
    let mut sub_id = json!({"format": "scim", "uri": uri, "id": e.resource_id});
    let external_id = match &e.body {
        EventBody::UserCreated { attributes, .. } | EventBody::GroupCreated { attributes, .. } => {
            attributes.get("externalId")
        }
        _ => None,
    };
    if let Some(x) = external_id {
        sub_id["externalId"] = x.clone();
    }
    Some(json!({
        "iss": iss,
        "iat": e.recorded_at.timestamp(),
        "jti": jti,
        "aud": aud,
        "txn": e.request_id,
        "sub_id": sub_id,
        "events": {event_uri: body},
    }))
}

/// The key SETs are signed with (ES256), and its public half as a JWK.
pub struct Signer {
    key: EncodingKey,
    kid: String,
    jwk: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("cannot read or write the SET signing key {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the SET signing key {path} is not a PKCS#8 ECDSA P-256 key (PEM or DER): {why}")]
    Key { path: PathBuf, why: String },
}

/// Where the generated key lives.
pub fn default_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("set-signing-key.p8")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Signer {
    /// The key in `file` (PKCS#8, PEM or DER), or the one generated at the first start into
    /// `<data-dir>/set-signing-key.p8` (0600).
    pub fn open(data_dir: &Path, file: Option<&Path>) -> Result<Signer, SignerError> {
        let path = file.map(Path::to_path_buf).unwrap_or_else(|| default_key_path(data_dir));
        let io = |source| SignerError::Io { path: path.clone(), source };
        let rng = ring::rand::SystemRandom::new();
        if file.is_none() && !path.exists() {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| io(std::io::Error::other("key generation failed")))?;
            crate::files::write_new_private(&path, doc.as_ref()).map_err(io)?;
        }
        let raw = std::fs::read(&path).map_err(io)?;
        let der = match std::str::from_utf8(&raw).ok().filter(|t| t.contains("-----BEGIN")) {
            Some(text) => pem::parse(text)
                .map_err(|e| SignerError::Key { path: path.clone(), why: e.to_string() })?
                .into_contents(),
            None => raw,
        };
        let bad = |why: String| SignerError::Key { path: path.clone(), why };
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).map_err(|e| bad(e.to_string()))?;
        // An uncompressed P-256 point: 0x04, then x and y of 32 bytes each.
        let point = pair.public_key().as_ref();
        let (x, y) = (&point[1..33], &point[33..65]);
        let kid = hex::encode(&Sha256::digest(point)[..8]);
        let jwk =
            json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "use": "sig", "alg": "ES256", "kid": kid});
        Ok(Signer { key: EncodingKey::from_ec_der(&der), kid, jwk })
    }

    /// The SET as a compact JWS (`typ: secevent+jwt`, RFC 8417 §2.3).
    pub fn sign(&self, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("secevent+jwt".into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
    }

    /// The public key set receivers verify SETs with.
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jti_names_a_position_and_a_hash() {
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let j = jti(42, 0, hash);
        assert_eq!(j, "42.9f86d081884c7d65");
        assert_eq!(parse_jti(&j), Some((42, 0, "9f86d081884c7d65")));
        assert_eq!(jti(42, 3, hash), "42.9f86d081884c7d65.3");
        assert_eq!(parse_jti("42.9f86d081884c7d65.3"), Some((42, 3, "9f86d081884c7d65")));
        let bad = [
            "42",
            "x.9f86d081884c7d65",
            "0.9f86d081884c7d65",
            "42.9f86",
            "42.zz86d081884c7d65",
            "",
            "42.9f86d081884c7d65.0",
            "42.9f86d081884c7d65.03",
            "42.9f86d081884c7d65.+3",
            "42.9f86d081884c7d65.x",
        ];
        for bad in bad {
            assert_eq!(parse_jti(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_key_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Signer::open(dir.path(), None).unwrap();
        let b = Signer::open(dir.path(), None).unwrap();
        assert_eq!(a.jwks(), b.jwks(), "the second start reads the first one's key");
        assert_eq!(crate::files::loose_mode(&default_key_path(dir.path())), None, "the key file is private");
        let token = a.sign(&json!({"jti": "1.0000000000000000"})).unwrap();
        assert_eq!(token.split('.').count(), 3);
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        assert!(matches!(Signer::open(dir.path(), Some(&bad)), Err(SignerError::Key { .. })));
    }
}
