//! Bearer tokens. Only the SHA-256 of a token is ever stored, in `<data-dir>/tokens.json`, which
//! the CLI edits (also while the server runs) and the server re-reads when it changes, so that a
//! created or revoked token takes effect at the next request.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Who made a request: the token's name (the actor in events), its tenant and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub tenant: String,
    pub role: Role,
}

/// What a token may do: `scim` tokens provision (what IdPs get); `hosts` tokens link devices to
/// users (what a device-management system gets) and may not provision; `events` tokens read the
/// ordered events API (what a SIEM or a webhook relay gets) and may not provision; `admin` tokens
/// may do all of it and use the admin API (erasure). Every role may ask the access API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Scim,
    Hosts,
    Events,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scim => "scim",
            Role::Hosts => "hosts",
            Role::Events => "events",
            Role::Admin => "admin",
        }
    }
    /// The role a name (as events and the token file write it) stands for.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "scim" => Some(Role::Scim),
            "hosts" => Some(Role::Hosts),
            "events" => Some(Role::Events),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    /// SCIM writes and reads (`/scim/v2`).
    pub fn may_provision(self) -> bool {
        match self {
            Role::Scim | Role::Admin => true,
            Role::Hosts | Role::Events => false,
        }
    }
    /// Linking and unlinking hosts: it decides whose access a device carries.
    pub fn may_link_hosts(self) -> bool {
        match self {
            Role::Hosts | Role::Admin => true,
            Role::Scim | Role::Events => false,
        }
    }
    /// The admin API (erasure).
    pub fn may_administer(self) -> bool {
        match self {
            Role::Admin => true,
            Role::Scim | Role::Hosts | Role::Events => false,
        }
    }
    /// The ordered events API (`/api/v1/events`): the whole log of the tenant, personal values
    /// included, so neither an IdP's nor a device manager's token.
    pub fn may_read_events(self) -> bool {
        match self {
            Role::Events | Role::Admin => true,
            Role::Scim | Role::Hosts => false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub name: String,
    pub tenant: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub role: Role,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid token file: {source}")]
    Format { path: PathBuf, source: serde_json::Error },
    #[error("a token named {0:?} already exists")]
    Exists(String),
    #[error("no token named {0:?}")]
    Unknown(String),
    #[error("invalid tenant {0:?}: use 1 to 63 of a-z, 0-9, '-' and '_', starting with a letter or digit")]
    Tenant(String),
    #[error("invalid token name {0:?}: use 1 to 128 of letters, digits, '-', '_', '.' and '@'")]
    Name(String),
}

pub fn valid_tenant(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token: 32 bytes from the OS generator, hex, with a recognisable prefix.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("scimlog_{}", hex::encode(bytes))
}

fn tokens_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tokens.json")
}

fn read_file(path: &Path) -> Result<TokenFile, AuthError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| AuthError::Format { path: path.into(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
        Err(source) => Err(AuthError::Io { path: path.into(), source }),
    }
}

fn write_file(path: &Path, file: &TokenFile) -> Result<(), AuthError> {
    let io = |source| AuthError::Io { path: path.into(), source };
    if let Some(dir) = path.parent() {
        crate::files::create_private_dir(dir).map_err(io)?;
    }
    let bytes = serde_json::to_vec_pretty(file).expect("token file serialises");
    crate::files::replace_private(path, &bytes).map_err(io)
}

/// Reads, changes and writes the token file under its lock: two CLI commands at once (a rotation
/// script) take turns, so neither's change is lost.
fn edit_file<T>(path: &Path, f: impl FnOnce(&mut TokenFile) -> Result<T, AuthError>) -> Result<T, AuthError> {
    if let Some(dir) = path.parent() {
        crate::files::create_private_dir(dir).map_err(|source| AuthError::Io { path: path.into(), source })?;
    }
    let _lock = crate::files::FileLock::acquire(path).map_err(|source| AuthError::Io { path: path.into(), source })?;
    let mut file = read_file(path)?;
    let out = f(&mut file)?;
    write_file(path, &file)?;
    Ok(out)
}

/// Creates a token named `name` for `tenant`, stores its hash and returns the token itself,
/// which is shown once and never again.
pub fn create_token(data_dir: &Path, name: &str, tenant: &str, role: Role) -> Result<String, AuthError> {
    if !valid_tenant(tenant) {
        return Err(AuthError::Tenant(tenant.into()));
    }
    if !valid_token_name(name) {
        return Err(AuthError::Name(name.into()));
    }
    edit_file(&tokens_path(data_dir), |file| {
        if file.tokens.iter().any(|t| t.name == name) {
            return Err(AuthError::Exists(name.into()));
        }
        let token = generate_token();
        file.tokens.push(TokenRecord {
            name: name.into(),
            tenant: tenant.into(),
            sha256: hex::encode(hash_token(&token)),
            created_at: Utc::now(),
            role,
        });
        Ok(token)
    })
}

pub fn revoke_token(data_dir: &Path, name: &str) -> Result<(), AuthError> {
    edit_file(&tokens_path(data_dir), |file| {
        let before = file.tokens.len();
        file.tokens.retain(|t| t.name != name);
        if file.tokens.len() == before {
            return Err(AuthError::Unknown(name.into()));
        }
        Ok(())
    })
}

/// Token names become event resource ids and log fields: printable, no separators.
pub fn valid_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

/// A record of the file as a principal, if it is valid.
fn valid_record(path: &Path, t: TokenRecord) -> Option<([u8; 32], Principal)> {
    let mut h = [0u8; 32];
    let hash_ok = hex::decode_to_slice(&t.sha256, &mut h).is_ok();
    if !valid_tenant(&t.tenant) || !valid_token_name(&t.name) || !hash_ok {
        tracing::error!(
            file = %path.display(),
            name = %t.name.escape_debug(),
            "a token record has an invalid tenant, name or hash; it is ignored"
        );
        return None;
    }
    Some((h, Principal { name: t.name, tenant: t.tenant, role: t.role }))
}

pub fn list_tokens(data_dir: &Path) -> Result<Vec<TokenRecord>, AuthError> {
    Ok(read_file(&tokens_path(data_dir))?.tokens)
}

// The token file is replaced by a rename, so every write gives a new inode; mtime, ctime
// (nanoseconds) and length catch an edit in place as well.
use crate::files::FileStamp as Stamp;

struct Loaded {
    /// The file's stamp when last read: `None` before the first read, `Some(None)` when there
    /// was no file (checked again by `stat` alone, like a present one).
    stamp: Option<Option<Stamp>>,
    tokens: Vec<([u8; 32], Principal)>,
}

/// The server's view of the tokens: the file (reloaded when its mtime or size changes) plus the
/// bootstrap tokens from the configuration (`--token`, `--admin-token`), kept in memory only.
pub struct TokenStore {
    path: PathBuf,
    bootstrap: Vec<([u8; 32], Principal)>,
    loaded: Mutex<Loaded>,
}

impl TokenStore {
    pub fn open(data_dir: &Path, bootstrap: Vec<(String, Principal)>) -> Result<TokenStore, AuthError> {
        let store = TokenStore {
            path: tokens_path(data_dir),
            bootstrap: bootstrap.into_iter().map(|(token, p)| (hash_token(&token), p)).collect(),
            loaded: Mutex::new(Loaded { stamp: None, tokens: vec![] }),
        };
        store.refresh()?;
        Ok(store)
    }

    /// Whether any token could authenticate a request.
    pub fn is_empty(&self) -> bool {
        let _ = self.refresh();
        self.bootstrap.is_empty() && self.loaded.lock().expect("token lock").tokens.is_empty()
    }

    /// Re-reads the token file if it changed; `true` when it did. A record whose tenant, name or
    /// hash is not valid (a hand edit) is left out, with an error in the log: a tenant such as
    /// `"a\u0000x"` would otherwise reach into another tenant's keys.
    pub fn refresh(&self) -> Result<bool, AuthError> {
        let stamp = Stamp::of(&self.path);
        let mut loaded = self.loaded.lock().expect("token lock");
        if loaded.stamp == Some(stamp) {
            return Ok(false);
        }
        let file = read_file(&self.path)?;
        loaded.tokens = file.tokens.into_iter().filter_map(|t| valid_record(&self.path, t)).collect();
        loaded.stamp = Some(stamp);
        Ok(true)
    }

    /// The tokens of the file (not the bootstrap token), per tenant: (name, role).
    pub fn by_tenant(&self) -> std::collections::BTreeMap<String, Vec<(String, Role)>> {
        let loaded = self.loaded.lock().expect("token lock");
        let mut out: std::collections::BTreeMap<String, Vec<(String, Role)>> = Default::default();
        for (_, p) in &loaded.tokens {
            out.entry(p.tenant.clone()).or_default().push((p.name.clone(), p.role));
        }
        out
    }

    /// The principal a presented token belongs to. Every stored hash is compared in constant time,
    /// so the answer's timing says nothing about which hash came close.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        if let Err(e) = self.refresh() {
            tracing::error!(error = %e, "cannot reload tokens; keeping the last good set");
        }
        self.authenticate_loaded(presented)
    }

    /// The principal of the token whose SHA-256 is `hash`, if it is still valid (the file is
    /// looked at again first): a console session holds the hash of the token it logged in with,
    /// so that revoking the token ends the session at its next request.
    pub fn principal_of_hash(&self, hash: &[u8; 32]) -> Option<Principal> {
        if let Err(e) = self.refresh() {
            tracing::error!(error = %e, "cannot reload tokens; keeping the last good set");
        }
        self.find_hash(hash)
    }

    /// Like [`TokenStore::authenticate`], without looking at the file again.
    pub fn authenticate_loaded(&self, presented: &str) -> Option<Principal> {
        self.find_hash(&hash_token(presented))
    }

    fn find_hash(&self, h: &[u8; 32]) -> Option<Principal> {
        let loaded = self.loaded.lock().expect("token lock");
        let mut found = None;
        for (stored, p) in loaded.tokens.iter().chain(self.bootstrap.iter()) {
            if bool::from(stored.ct_eq(h)) && found.is_none() {
                found = Some(p.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path(), vec![]).unwrap();
        assert!(store.is_empty());
        let token = create_token(dir.path(), "okta", "acme", Role::Scim).unwrap();
        assert!(token.starts_with("scimlog_") && token.len() == 72);
        let stored = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(!stored.contains(&token[8..]), "the token itself is never stored");
        assert_eq!(
            store.authenticate(&token),
            Some(Principal { name: "okta".into(), tenant: "acme".into(), role: Role::Scim })
        );
        assert_eq!(store.authenticate("scimlog_wrong"), None);
        assert!(matches!(create_token(dir.path(), "okta", "acme", Role::Scim), Err(AuthError::Exists(_))));
        assert!(matches!(create_token(dir.path(), "x", "Bad Tenant", Role::Scim), Err(AuthError::Tenant(_))));
        revoke_token(dir.path(), "okta").unwrap();
        assert_eq!(store.authenticate(&token), None);
    }
}
