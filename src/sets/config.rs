//! SET streams as configured: the flags (`--set-stream`, `--set-push`) and the file
//! `<data-dir>/set-streams.toml` (one `[[stream]]` table each), which `scimlog sets add|remove`
//! and `POST|DELETE /api/v1/sets/streams` edit under a lock and a running server reads again
//! within a second, as it does the outbound targets file. Parsed here into [`Stream`]s, then
//! trusted.
//!
//! A stream may narrow what it carries: `events` (the event URIs delivered; absent, all) and
//! `groups` (a feed, RFC 9967 §2.3: the user members of these groups, with `feed:add` when one
//! joins and `feed:remove` when one leaves; absent, the whole tenant).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::streams::StreamId;

/// The file's name in the data dir.
pub const FILE_NAME: &str = "set-streams.toml";
/// Where a push stream's bearer token is read from when its table names no `token_file`.
pub const SECRETS_DIR: &str = "set-push-secrets";
/// Most streams in the file, and most groups one feed follows.
pub const MAX_STREAMS: usize = 1000;
pub const MAX_FEED_GROUPS: usize = 100;

pub const FEED_ADD: &str = "urn:ietf:params:scim:event:feed:add";
pub const FEED_REMOVE: &str = "urn:ietf:params:scim:event:feed:remove";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// One `[[stream]]` table as written in the file (and as `POST /api/v1/sets/streams` takes it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub tenant: String,
    /// Unique in its tenant: 1 to 64 of letters, digits, '-', '_' and '.'.
    pub name: String,
    /// A push stream's receiver (RFC 8935); absent, a poll stream (RFC 8936).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A push stream's bearer token, read at each attempt (default:
    /// `<data-dir>/set-push-secrets/<name>`, if it exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub token_file: Option<PathBuf>,
    /// The event URIs this stream carries; absent or empty, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// A feed: the ids of the groups whose user members this stream carries; absent or empty,
    /// every user and group of the tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A stream, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    pub id: StreamId,
    pub push: Option<Push>,
    /// `None`: every event URI.
    pub events: Option<BTreeSet<&'static str>>,
    /// `None`: the whole tenant; otherwise a feed of these groups' user members.
    pub groups: Option<BTreeSet<String>>,
    /// From the flags rather than the file (not removable over the API).
    pub from_flags: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    pub url: String,
    pub token_file: PathBuf,
}

impl Stream {
    /// Whether this stream carries SETs of `uri`.
    pub fn carries(&self, uri: &str) -> bool {
        self.events.as_ref().is_none_or(|e| e.contains(uri))
    }

    /// The event URIs this stream can carry (what `ServiceProviderConfig` lists).
    pub fn uris(&self) -> Vec<&'static str> {
        let mut all: Vec<&'static str> = super::EVENT_URIS.to_vec();
        if self.groups.is_some() {
            all.extend([FEED_ADD, FEED_REMOVE]);
        }
        all.retain(|u| self.carries(u));
        all
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read or write {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path} is not a valid SET streams file: {detail}")]
    Syntax { path: PathBuf, detail: String },
    #[error("SET stream {name:?}: {detail}")]
    Invalid { name: String, detail: String },
    #[error("a SET stream named {0:?} exists already in its tenant")]
    Exists(String),
    #[error("no SET stream named {0:?} in this tenant")]
    Unknown(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamsFile {
    #[serde(default, rename = "stream")]
    streams: Vec<StreamConfig>,
}

/// Every URI a stream may name in `events`.
fn known_uri(uri: &str) -> Option<&'static str> {
    super::EVENT_URIS.iter().chain([&FEED_ADD, &FEED_REMOVE]).find(|u| **u == uri).copied()
}

/// Checks one table and turns it into a [`Stream`].
pub fn check(c: StreamConfig, data_dir: &Path) -> Result<Stream, ConfigError> {
    let bad = |detail: String| ConfigError::Invalid { name: c.name.clone(), detail };
    let id: StreamId = format!("{}/{}", c.tenant, c.name).parse().map_err(bad)?;
    let push = match (&c.url, &c.token_file) {
        (None, Some(_)) => return Err(bad("token_file is for push streams (give url too)".into())),
        (None, None) => None,
        (Some(url), token_file) => {
            let target: super::push::PushTarget = format!("{}/{}={url}", c.tenant, c.name).parse().map_err(bad)?;
            let token_file = token_file.clone().unwrap_or_else(|| data_dir.join(SECRETS_DIR).join(&c.name));
            Some(Push { url: target.url, token_file })
        }
    };
    let mut events = BTreeSet::new();
    for uri in &c.events {
        let known =
            known_uri(uri).ok_or_else(|| bad(format!("events: {uri:?} is not an event URI this server issues")))?;
        events.insert(known);
    }
    if c.groups.is_empty() && (events.contains(FEED_ADD) || events.contains(FEED_REMOVE)) {
        return Err(bad("events: feed:add and feed:remove need groups (a feed)".into()));
    }
    if c.groups.len() > MAX_FEED_GROUPS {
        return Err(bad(format!("groups: {} groups, at most {MAX_FEED_GROUPS}", c.groups.len())));
    }
    let mut groups = BTreeSet::new();
    for g in &c.groups {
        if g.is_empty() || g.len() > 256 || g.contains('\0') {
            return Err(bad(format!("groups: {g:?} is not a group id")));
        }
        groups.insert(g.clone());
    }
    Ok(Stream {
        id,
        push,
        events: (!events.is_empty()).then_some(events),
        groups: (!groups.is_empty()).then_some(groups),
        from_flags: false,
    })
}

/// The streams of the file (none when there is no file). One bad table fails the whole file.
pub fn load(path: &Path, data_dir: &Path) -> Result<Vec<Stream>, ConfigError> {
    let file = read(path)?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(file.streams.len());
    for c in file.streams {
        let s = check(c, data_dir)?;
        if !seen.insert(s.id.clone()) {
            return Err(ConfigError::Exists(s.id.name));
        }
        out.push(s);
    }
    Ok(out)
}

/// The tables of the file as written (for listing them back).
pub fn tables(path: &Path) -> Result<Vec<StreamConfig>, ConfigError> {
    Ok(read(path)?.streams)
}

fn read(path: &Path) -> Result<StreamsFile, ConfigError> {
    crate::files::read_toml(path).map_err(|e| toml_error(path, e))
}

fn toml_error(path: &Path, e: crate::files::TomlError) -> ConfigError {
    match e {
        crate::files::TomlError::Io(error) => ConfigError::Io { path: path.into(), error },
        crate::files::TomlError::Syntax(detail) => ConfigError::Syntax { path: path.into(), detail },
    }
}

/// Reads, changes and writes the file under its lock (two commands take turns).
fn edit(path: &Path, f: impl FnOnce(&mut Vec<StreamConfig>) -> Result<(), ConfigError>) -> Result<(), ConfigError> {
    crate::files::edit_toml(path, |file: &mut StreamsFile| f(&mut file.streams)).map_err(|e| toml_error(path, e))?
}

/// Adds a stream (checked first; `taken` are the names the flags hold in its tenant); a running
/// server serves it within a second.
pub fn add(path: &Path, data_dir: &Path, c: StreamConfig, taken: &[StreamId]) -> Result<(), ConfigError> {
    let s = check(c.clone(), data_dir)?;
    if taken.contains(&s.id) {
        return Err(ConfigError::Exists(c.name));
    }
    edit(path, |streams| {
        if streams.iter().any(|t| t.tenant == c.tenant && t.name == c.name) {
            return Err(ConfigError::Exists(c.name.clone()));
        }
        if streams.len() >= MAX_STREAMS {
            return Err(ConfigError::Invalid {
                name: c.name.clone(),
                detail: format!("at most {MAX_STREAMS} streams"),
            });
        }
        streams.push(c);
        Ok(())
    })
}

/// Removes a stream from the file. What its receiver acknowledged stays in the store: a stream
/// added again under the same name goes on from there.
pub fn remove(path: &Path, id: &StreamId) -> Result<(), ConfigError> {
    edit(path, |streams| {
        let before = streams.len();
        streams.retain(|t| !(t.tenant == id.tenant && t.name == id.name));
        match streams.len() == before {
            true => Err(ConfigError::Unknown(id.name.clone())),
            false => Ok(()),
        }
    })
}

/// The streams the flags configure (`--set-stream`, `--set-push`).
pub fn from_flags(polls: &[StreamId], pushes: &[super::push::PushTarget], data_dir: &Path) -> Vec<Stream> {
    let poll = polls.iter().map(|id| (id.clone(), None));
    let push = pushes.iter().map(|t| {
        let token_file = data_dir.join(SECRETS_DIR).join(&t.id.name);
        (t.id.clone(), Some(Push { url: t.url.clone(), token_file }))
    });
    poll.chain(push).map(|(id, push)| Stream { id, push, events: None, groups: None, from_flags: true }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(extra: &str) -> StreamConfig {
        toml::from_str(&format!("tenant = \"acme\"\nname = \"siem\"\n{extra}")).unwrap()
    }

    #[test]
    fn tables_are_checked_at_the_boundary() {
        let dir = Path::new("/data");
        let poll = check(table(""), dir).unwrap();
        assert_eq!((poll.push, poll.events, poll.groups), (None, None, None));
        let push = check(table("url = \"https://siem.example/sets\""), dir).unwrap();
        assert_eq!(push.push.unwrap().token_file, Path::new("/data/set-push-secrets/siem"));
        let feed = check(table("groups = [\"g1\"]\nevents = [\"urn:ietf:params:scim:event:feed:add\"]"), dir).unwrap();
        assert!(feed.carries(FEED_ADD) && !feed.carries(FEED_REMOVE));
        assert_eq!(feed.uris(), vec![FEED_ADD]);
        let bad: [(&str, &str); 6] = [
            ("url = \"ftp://x/\"", "http or https"),
            ("token_file = \"/t\"", "push streams"),
            ("events = [\"urn:ietf:params:scim:event:prov:put:full\"]", "prov:put:full"),
            ("events = [\"urn:ietf:params:scim:event:feed:remove\"]", "need groups"),
            ("groups = [\"\"]", "not a group id"),
            ("name = \"si em\"", "stream name"),
        ];
        for (extra, want) in bad {
            let c = if extra.starts_with("name") {
                toml::from_str(&format!("tenant = \"acme\"\n{extra}")).unwrap()
            } else {
                table(extra)
            };
            let e = check(c, dir).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
        let many =
            format!("groups = [{}]", (0..=MAX_FEED_GROUPS).map(|i| format!("\"g{i}\"")).collect::<Vec<_>>().join(","));
        assert!(check(table(&many), dir).unwrap_err().to_string().contains("at most 100"));
    }

    #[test]
    fn add_and_remove_keep_the_file_valid_and_names_unique_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        add(&file, dir.path(), table(""), &[]).unwrap();
        assert!(matches!(add(&file, dir.path(), table(""), &[]), Err(ConfigError::Exists(_))));
        let mut other = table("");
        other.tenant = "globex".into();
        add(&file, dir.path(), other, &[]).unwrap();
        let flagged: StreamId = "acme/audit".parse().unwrap();
        let mut clash = table("");
        clash.name = "audit".into();
        assert!(matches!(add(&file, dir.path(), clash, &[flagged]), Err(ConfigError::Exists(_))));
        assert_eq!(load(&file, dir.path()).unwrap().len(), 2);
        remove(&file, &"acme/siem".parse().unwrap()).unwrap();
        assert!(matches!(remove(&file, &"acme/siem".parse().unwrap()), Err(ConfigError::Unknown(_))));
        let left = load(&file, dir.path()).unwrap();
        assert_eq!(left.iter().map(|s| s.id.tenant.as_str()).collect::<Vec<_>>(), ["globex"]);
    }
}
