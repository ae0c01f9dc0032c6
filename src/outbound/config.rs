//! Targets as configured: the file `<data-dir>/outbound.toml` (one `[[target]]` table each),
//! edited by `scimlog outbound add|remove` under a lock and read again by a running server when
//! it changes, as the token file is. Parsed here into [`Target`]s, then trusted.
//!
//! Secrets are never in the file: a target names a file (`token_file`, `password_file`) or an
//! environment variable (`token_env`) the secret is read from, each time the connector starts or
//! a target answers 401 (a rotated token is picked up without a restart).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::mapping::{Mapping, MappingConfig};
use super::profile::{Knobs, Profile};

/// The file's name in the data dir.
pub const FILE_NAME: &str = "outbound.toml";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Upper bounds of the per-target numbers (a typo must not mean a day-long timeout).
const MAX_TIMEOUT_MS: u64 = 300_000;
const MAX_BATCH: usize = 10_000;
const MAX_RETRIES: u32 = 30;
/// Most groups one target's scope names.
pub const MAX_SCOPE_GROUPS: usize = 100;
/// Most roles and entitlements one target's scope names (together).
pub const MAX_SCOPE_GRANTS: usize = 100;

/// One `[[target]]` table as written in the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub tenant: String,
    /// Unique in the file; `[a-z0-9_-]`, 1-63 characters.
    pub name: String,
    /// The SCIM base URL (`https://app.example.com/scim/v2`).
    pub url: String,
    #[serde(default)]
    pub profile: Profile,
    /// A file holding the bearer token (read when needed, never copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Basic authentication: the user name, with `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// OAuth 2.0 client credentials (RFC 6749 §4.4): the token endpoint, the client id, and a
    /// file holding the client secret (sent with HTTP Basic); an optional scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_token_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_client_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_scope: Option<String>,
    /// What happens remotely when a user is deleted here (an erasure always DELETEs).
    #[serde(default)]
    pub deprovision: Deprovision,
    #[serde(default)]
    pub mode: Mode,
    /// Whether an object that exists remotely but was not created here may be taken over.
    #[serde(default)]
    pub adopt: Adopt,
    /// One request's deadline.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// The first backoff after a 5xx, a timeout or a reset; doubled each try, with full jitter.
    #[serde(default = "defaults::retry_base_ms")]
    pub retry_base_ms: u64,
    /// Tries of one request before the object is parked as `transient`.
    #[serde(default = "defaults::retry_max")]
    pub retry_max: u32,
    /// The longest `Retry-After` honoured as given (longer ones are cut to this).
    #[serde(default = "defaults::max_retry_after_s")]
    pub max_retry_after_s: u64,
    /// How often a quarantined target is probed.
    #[serde(default = "defaults::probe_ms")]
    pub probe_ms: u64,
    /// Log positions read per step.
    #[serde(default = "defaults::batch_max")]
    pub batch_max: usize,
    /// The deletion breaker: deprovisions (users deactivated or deleted, groups deleted) beyond
    /// this many within `breaker_window_s` are held, sent nothing, until `approve-deletes`.
    /// Erasures are never held.
    #[serde(default = "defaults::max_deprovisions")]
    pub max_deprovisions: usize,
    #[serde(default = "defaults::breaker_window_s")]
    pub breaker_window_s: u64,
    /// A verify (report only, never a repair) this often, when the connector is idle; its last
    /// report is kept in the state and shown in the status and `/metrics`. 0: only on demand.
    #[serde(default)]
    pub verify_every_s: u64,
    /// Scope: the ids of the groups whose user members this target gets (with those groups
    /// and their memberships); absent or empty, every user and group of the tenant. A user
    /// who leaves the scope is deprovisioned as `deprovision` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Scope: roles (URNs, `urn:<ns>:role:...`) whose holders this target gets, whether they
    /// hold them directly or through a group (nested groups too). With `groups`, the union.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Scope: entitlements (URNs, `urn:<ns>:entitlement:...`) whose holders this target gets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entitlements: Vec<String>,
    /// Profile knobs set here win over the profile's (see README "Outbound provisioning").
    #[serde(default, skip_serializing_if = "Overrides::is_empty")]
    pub overrides: Overrides,
    /// In cluster mode, the node (its `--node-id`) that runs this target: each node runs the
    /// targets named to it, leader or not, with its own state. Ignored on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Users' attributes dropped or set (from another attribute, or a constant): `mapping.rs`.
    #[serde(default, skip_serializing_if = "MappingConfig::is_empty")]
    pub mapping: MappingConfig,
}

impl TargetConfig {
    /// A table with these three fields and every other at its default (no secret yet).
    pub fn new(tenant: &str, name: &str, url: &str) -> TargetConfig {
        let mut t = toml::Table::new();
        for (k, v) in [("tenant", tenant), ("name", name), ("url", url)] {
            t.insert(k.into(), toml::Value::String(v.into()));
        }
        t.try_into().expect("the other fields have defaults")
    }
}

mod defaults {
    pub fn timeout_ms() -> u64 {
        30_000
    }
    pub fn retry_base_ms() -> u64 {
        1_000
    }
    pub fn retry_max() -> u32 {
        8
    }
    pub fn max_retry_after_s() -> u64 {
        900
    }
    pub fn probe_ms() -> u64 {
        60_000
    }
    pub fn batch_max() -> usize {
        500
    }
    pub fn max_deprovisions() -> usize {
        50
    }
    pub fn breaker_window_s() -> u64 {
        600
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_members_per_request: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<f64>,
    /// `filter` (default) or `value`: how a member removal is phrased (see `MemberRemove`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_remove: Option<super::profile::MemberRemove>,
    /// Member changes by PATCH even with `patch = false` (see `Knobs::members_by_patch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members_by_patch: Option<bool>,
}

impl Overrides {
    fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Deprovision {
    /// `active: false`; the remote account stays, linked (re-provisioning reactivates it).
    #[default]
    Deactivate,
    /// DELETE the remote account.
    Delete,
    /// Leave the remote account as it is (and forget the link).
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Live,
    /// Reads are real; writes are journaled as "would send", never sent. Own watermark.
    DryRun,
    /// Nothing is read or sent; the watermark stays.
    Paused,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Adopt {
    /// A remote object with the same userName/displayName parks the local one as `conflict`.
    Never,
    /// Only a remote object whose externalId is this scimlog id is linked (ours, from a create
    /// whose answer was lost).
    #[default]
    IfExternalIdMatches,
    /// Also a remote object found by userName/displayName (authentik's behaviour), flagged
    /// `adopted`.
    ByIdentity,
}

/// How a target authenticates, parsed from the file's fields.
#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    BearerFile(PathBuf),
    BearerEnv(String),
    Basic {
        user: String,
        password_file: PathBuf,
    },
    /// Client credentials: the client gets (and renews) an access token (`client.rs`).
    OAuth2 {
        token_url: String,
        client_id: String,
        secret_file: PathBuf,
        scope: Option<String>,
    },
}

impl Auth {
    /// The `Authorization` header's value, read from its source now.
    pub fn header(&self) -> Result<String, String> {
        use base64::Engine as _;
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        match self {
            Auth::BearerFile(p) => Ok(format!("Bearer {}", read(p)?)),
            Auth::BearerEnv(var) => {
                std::env::var(var).map(|t| format!("Bearer {}", t.trim())).map_err(|_| format!("${var} is not set"))
            }
            Auth::Basic { user, password_file } => {
                let pair = format!("{user}:{}", read(password_file)?);
                Ok(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
            }
            Auth::OAuth2 { .. } => Err("an OAuth 2.0 target's header comes from its token endpoint".into()),
        }
    }

    /// The client secret of an OAuth 2.0 target, read now.
    pub fn client_secret(path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    }
}

/// A target, checked: what the connector runs on.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub config: TargetConfig,
    pub auth: Auth,
    pub knobs: Knobs,
    pub mapping: Mapping,
    /// `None`: the whole tenant.
    pub scope: Option<Scope>,
}

/// Who a target provisions when it is not the whole tenant: the user members of `groups`
/// (those groups go out too, with their memberships) and the holders of `grants`. Judged on
/// the read models as they are when a change is sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    pub groups: std::collections::BTreeSet<String>,
    /// Roles and entitlements, parsed: held directly or through any group, nested too.
    grants: std::collections::BTreeSet<String>,
}

impl Scope {
    /// Whether a group goes out: only the scope's own groups (a scope of roles alone sends
    /// no group).
    pub fn has_group(&self, id: &str) -> bool {
        self.groups.contains(id)
    }
    /// Whether an effective grant is one of the scope's (any namespace, without case: the
    /// directory matches scopes by id or slug without case).
    pub fn holds(&self, held: &scimlog_schemas::access::Grant) -> bool {
        self.grants.contains(&Scope::norm(held))
    }
    /// Whether the scope names roles or entitlements.
    pub fn by_grant(&self) -> bool {
        !self.grants.is_empty()
    }
    /// A grant as the scope compares it: its URN without namespace or case.
    fn norm(g: &scimlog_schemas::access::Grant) -> String {
        g.urn("-").to_ascii_lowercase()
    }
    fn describe(scope: Option<&Scope>) -> String {
        let Some(s) = scope else { return "tenant".into() };
        format!("groups={:?};grants={:?}", s.groups, s.grants)
    }
}

impl Target {
    pub fn name(&self) -> &str {
        &self.config.name
    }
    pub fn tenant(&self) -> &str {
        &self.config.tenant
    }
    /// A fingerprint of what decides who is sent and what they are sent as: the scope, the
    /// profile and the mapping. A change of it makes the connector go over the history again
    /// (users entering are provisioned, users leaving deprovisioned, changed documents sent).
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let text = format!(
            "scope={};profile={};mapping={:?}",
            Scope::describe(self.scope.as_ref()),
            self.config.profile.as_str(),
            self.config.mapping
        );
        hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
    }
    /// The base URL without a trailing slash.
    pub fn base(&self) -> &str {
        self.config.url.trim_end_matches('/')
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read or write {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path} is not a valid targets file: {detail}")]
    Syntax { path: PathBuf, detail: String },
    #[error("target {name:?}: {detail}")]
    Invalid { name: String, detail: String },
    #[error("a target named {0:?} exists already")]
    Exists(String),
    #[error("no target named {0:?}")]
    Unknown(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    #[serde(default, rename = "target")]
    targets: Vec<TargetConfig>,
}

/// Checks one table and turns it into a [`Target`].
pub fn check(c: TargetConfig) -> Result<Target, ConfigError> {
    let bad = |detail: String| ConfigError::Invalid { name: c.name.clone(), detail };
    if !crate::auth::valid_tenant(&c.name) {
        return Err(bad("the name must be 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit".into()));
    }
    if !crate::auth::valid_tenant(&c.tenant) {
        return Err(bad(format!("tenant {:?} is not a valid tenant", c.tenant)));
    }
    let url = c.url.as_str();
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) || url.contains(['?', '#', ' ']) {
        return Err(bad(format!("url {url:?} is not an http(s) base URL without query or fragment")));
    }
    let oauth = (&c.oauth_token_url, &c.oauth_client_id, &c.oauth_client_secret_file);
    let auth = match (&c.token_file, &c.token_env, &c.basic_user, &c.password_file, oauth) {
        (Some(f), None, None, None, (None, None, None)) => Auth::BearerFile(f.clone()),
        (None, Some(v), None, None, (None, None, None)) => Auth::BearerEnv(v.clone()),
        (None, None, Some(u), Some(f), (None, None, None)) => Auth::Basic { user: u.clone(), password_file: f.clone() },
        (None, None, None, None, (Some(url), Some(id), Some(f))) => {
            if !url.starts_with("https://") && !url.starts_with("http://") {
                return Err(bad(format!("oauth_token_url {url:?} is not an http(s) URL")));
            }
            let scope = c.oauth_scope.clone();
            Auth::OAuth2 { token_url: url.clone(), client_id: id.clone(), secret_file: f.clone(), scope }
        }
        _ => {
            return Err(bad("give exactly one of token_file, token_env, basic_user with password_file, \
                 or oauth_token_url with oauth_client_id and oauth_client_secret_file"
                .into()))
        }
    };
    let ranges: [(&str, u64, u64, u64); 8] = [
        ("verify_every_s", c.verify_every_s, 0, 7 * 86_400),
        ("breaker_window_s", c.breaker_window_s, 1, 7 * 86_400),
        ("max_deprovisions", c.max_deprovisions as u64, 1, 1_000_000),
        ("timeout_ms", c.timeout_ms, 1, MAX_TIMEOUT_MS),
        ("retry_base_ms", c.retry_base_ms, 1, MAX_TIMEOUT_MS),
        ("retry_max", c.retry_max.into(), 1, MAX_RETRIES.into()),
        ("probe_ms", c.probe_ms, 1, 3_600_000),
        ("batch_max", c.batch_max as u64, 1, MAX_BATCH as u64),
    ];
    for (field, v, lo, hi) in ranges {
        if v < lo || v > hi {
            return Err(bad(format!("{field} {v} is outside {lo}..={hi}")));
        }
    }
    let knobs = c.profile.knobs().with(&c.overrides).map_err(bad)?;
    if c.groups.len() > MAX_SCOPE_GROUPS {
        return Err(bad(format!("groups: {} groups, at most {MAX_SCOPE_GROUPS}", c.groups.len())));
    }
    if let Some(g) = c.groups.iter().find(|g| g.is_empty() || g.len() > 256) {
        return Err(bad(format!("groups: {g:?} is not a group id")));
    }
    let mut grants = std::collections::BTreeSet::new();
    for (attr, list) in [("roles", &c.roles), ("entitlements", &c.entitlements)] {
        for urn in list {
            // In the namespace it names: a target may name grants of any namespace.
            let ns = urn.split(':').nth(1).filter(|n| !n.is_empty()).unwrap_or("scimlog");
            let g = scimlog_schemas::access::parse_grant(ns, attr, urn).map_err(|e| bad(e.detail))?;
            grants.insert(Scope::norm(&g));
        }
    }
    if grants.len() > MAX_SCOPE_GRANTS {
        return Err(bad(format!("roles and entitlements: {}, at most {MAX_SCOPE_GRANTS}", grants.len())));
    }
    let scope = (!c.groups.is_empty() || !grants.is_empty())
        .then(|| Scope { groups: c.groups.iter().cloned().collect(), grants });
    if let Some(n) = c.node.as_deref().filter(|n| n.is_empty() || n.len() > 128 || n.contains(char::is_whitespace)) {
        return Err(bad(format!("node {n:?} is not a node id (--node-id)")));
    }
    let mapping = Mapping::parse(&c.mapping).map_err(bad)?;
    Ok(Target { auth, knobs, mapping, scope, config: c })
}

/// The targets of the file (none when there is no file). Every table is checked; one bad table
/// fails the whole file, so a typo is an error at once, not a target silently missing.
pub fn load(path: &Path) -> Result<Vec<Target>, ConfigError> {
    let file = read(path)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(file.targets.len());
    for c in file.targets {
        if !seen.insert(c.name.clone()) {
            return Err(ConfigError::Exists(c.name));
        }
        out.push(check(c)?);
    }
    Ok(out)
}

fn read(path: &Path) -> Result<TargetsFile, ConfigError> {
    crate::files::read_toml(path).map_err(|e| toml_error(path, e))
}

fn toml_error(path: &Path, e: crate::files::TomlError) -> ConfigError {
    match e {
        crate::files::TomlError::Io(error) => ConfigError::Io { path: path.into(), error },
        crate::files::TomlError::Syntax(detail) => ConfigError::Syntax { path: path.into(), detail },
    }
}

/// Reads, changes and writes the file under its lock (two commands take turns).
fn edit(path: &Path, f: impl FnOnce(&mut Vec<TargetConfig>) -> Result<(), ConfigError>) -> Result<(), ConfigError> {
    crate::files::edit_toml(path, |file: &mut TargetsFile| f(&mut file.targets)).map_err(|e| toml_error(path, e))?
}

/// Adds a target (checked first); a running server starts its connector within a second.
pub fn add(path: &Path, c: TargetConfig) -> Result<(), ConfigError> {
    check(c.clone())?;
    edit(path, |targets| {
        if targets.iter().any(|t| t.name == c.name) {
            return Err(ConfigError::Exists(c.name.clone()));
        }
        targets.push(c);
        Ok(())
    })
}

/// Adds a copy of target `from` named `name`, at `url` with the bearer token in `token_file`
/// (a throwaway server, say): the same tenant, scope, profile, mapping and knobs, live. A new
/// target starts at position 0, so the copy gets the whole history, rendered as `from` renders
/// it (`scimlog outbound replay`).
pub fn add_copy(path: &Path, from: &str, name: &str, url: &str, token_file: PathBuf) -> Result<(), ConfigError> {
    let Some(original) = read(path)?.targets.into_iter().find(|t| t.name == from) else {
        return Err(ConfigError::Unknown(from.into()));
    };
    let copy = TargetConfig {
        name: name.into(),
        url: url.into(),
        token_file: Some(token_file),
        token_env: None,
        basic_user: None,
        password_file: None,
        oauth_token_url: None,
        oauth_client_id: None,
        oauth_client_secret_file: None,
        oauth_scope: None,
        mode: Mode::Live,
        ..original
    };
    add(path, copy)
}

/// Removes a target from the file; its state in the store stays (for `status` and a re-add).
pub fn remove(path: &Path, name: &str) -> Result<(), ConfigError> {
    edit(path, |targets| {
        let before = targets.len();
        targets.retain(|t| t.name != name);
        match targets.len() == before {
            true => Err(ConfigError::Unknown(name.into())),
            false => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> TargetConfig {
        toml::from_str(
            r#"tenant = "acme"
name = "crm"
url = "http://127.0.0.1:9/scim/v2"
token_file = "/run/crm.token""#,
        )
        .unwrap()
    }

    #[test]
    fn tables_are_checked_at_the_boundary() {
        let cases: &[(&str, fn(&mut TargetConfig), Option<&str>)] = &[
            ("minimal", |_| {}, None),
            ("bad name", |c| c.name = "Crm!".into(), Some("the name must be")),
            ("bad tenant", |c| c.tenant = "a b".into(), Some("tenant \"a b\"")),
            ("ftp url", |c| c.url = "ftp://x".into(), Some("url \"ftp://x\"")),
            ("query in url", |c| c.url = "https://x/scim?a=1".into(), Some("without query")),
            ("two secrets", |c| c.token_env = Some("T".into()), Some("exactly one")),
            ("no secret", |c| c.token_file = None, Some("exactly one")),
            ("zero timeout", |c| c.timeout_ms = 0, Some("timeout_ms 0")),
            ("huge batch", |c| c.batch_max = 1 << 20, Some("batch_max 1048576")),
            ("a node", |c| c.node = Some("n1".into()), None),
            (
                "101 grants",
                |c| c.roles = (0..101).map(|i| format!("urn:scimlog:role:environment:e{i}:admin")).collect(),
                Some("roles and entitlements: 101, at most 100"),
            ),
            ("an empty node", |c| c.node = Some(String::new()), Some("node \"\" is not a node id")),
            (
                "a role and an entitlement",
                |c| {
                    c.roles = vec!["urn:scimlog:role:environment:prod:admin".into()];
                    c.entitlements = vec!["urn:scimlog:entitlement:environment:prod".into()];
                },
                None,
            ),
            (
                "a role of no scope kind",
                |c| c.roles = vec!["urn:scimlog:role:planet:x:admin".into()],
                Some(r#"roles value "urn:scimlog:role:planet:x:admin" is not a valid role"#),
            ),
            (
                "an entitlement given as a role",
                |c| c.roles = vec!["urn:scimlog:entitlement:environment:prod".into()],
                Some(r#"roles value "urn:scimlog:entitlement:environment:prod" is not a valid role"#),
            ),
            (
                "a plain entitlement name",
                |c| c.entitlements = vec!["crm-access".into()],
                Some(r#"entitlements value "crm-access" is not a valid URN"#),
            ),
            (
                "members cap over the profile's",
                |c| {
                    c.profile = Profile::AwsIdentityCenter;
                    c.overrides.max_members_per_request = Some(500)
                },
                Some("max_members_per_request 500"),
            ),
        ];
        for (what, change, want) in cases {
            let mut c = base();
            change(&mut c);
            match (check(c), want) {
                (Ok(_), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{what}: {e}"),
                (got, want) => panic!("{what}: got {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn a_scope_matches_grants_without_case_or_namespace_and_the_fingerprint_follows_scope_and_mapping() {
        let mut c = base();
        c.roles = vec!["urn:scimlog:role:environment:Prod:admin".into()];
        let scope = check(c.clone()).unwrap().scope.expect("a scope of roles");
        let held = |urn: &str| scimlog_projections::access::parse_any("roles", urn).unwrap();
        assert!(scope.holds(&held("urn:scimlog:role:environment:prod:admin")));
        assert!(scope.holds(&held("urn:testkube:role:environment:PROD:Admin")));
        assert!(!scope.holds(&held("urn:scimlog:role:environment:prod:viewer")));
        assert!(!scope.has_group("any"), "a scope of roles alone sends no group");
        let fingerprint = |c: &TargetConfig| check(c.clone()).unwrap().fingerprint();
        let roles_only = fingerprint(&c);
        assert_eq!(roles_only, fingerprint(&c), "stable");
        c.groups = vec!["g1".into()];
        let with_group = fingerprint(&c);
        c.roles.clear();
        c.groups.clear();
        let whole = fingerprint(&c);
        c.mapping.drop = vec!["title".into()];
        let mapped = fingerprint(&c);
        c.mapping.drop.clear();
        c.timeout_ms = 1000;
        assert_eq!(fingerprint(&c), whole, "a timeout decides nothing sent");
        let all = [&roles_only, &with_group, &whole, &mapped];
        assert_eq!(all.iter().collect::<std::collections::BTreeSet<_>>().len(), 4, "{all:?}");
    }

    #[test]
    fn add_and_remove_keep_the_file_valid_and_names_unique() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        add(&p, base()).unwrap();
        assert!(matches!(add(&p, base()), Err(ConfigError::Exists(_))));
        let loaded = load(&p).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].auth, Auth::BearerFile("/run/crm.token".into()));
        assert!(!std::fs::read_to_string(&p).unwrap().contains("Bearer"));
        remove(&p, "crm").unwrap();
        assert!(matches!(remove(&p, "crm"), Err(ConfigError::Unknown(_))));
        assert!(load(&p).unwrap().is_empty());
    }
}
