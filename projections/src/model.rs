//! The stored documents of the read models.

use chrono::{DateTime, Utc};
use scimlog_schemas::MemberType;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;

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
    /// Whether `roles` or `entitlements` hold a URN (see [`may_hold_grants`]).
    #[serde(default, deserialize_with = "decode_may_hold_grants")]
    roles: bool,
    #[serde(default, deserialize_with = "decode_may_hold_grants")]
    entitlements: bool,
}

impl UserHead {
    pub fn is_active(&self) -> bool {
        self.active.unwrap_or(true)
    }
    pub fn user_name(&self) -> &str {
        &self.attributes.user_name
    }
    /// Whether the user may hold grants of its own. `false` means it holds none, and its grant
    /// records (`keys::grants_of`) need not be read: the fold writes a user's grant record only
    /// beside the URN in its document's `roles` or `entitlements`, and removes the record before
    /// or with the URN (`fold::grant_added`, `grant_removed`, `keep_grants`). Most users get
    /// their access through groups, and the scan that would find nothing costs an access check
    /// about a tenth of its CPU.
    pub fn may_hold_grants(&self) -> bool {
        self.attributes.roles || self.attributes.entitlements
    }
}

/// Whether a stored `roles` or `entitlements` value may name a grant: a list item that is a
/// URN, or an object whose `value` is. Anything else than a list (never stored) counts as "may".
pub fn may_hold_grants(list: &Value) -> bool {
    let is_urn = |v: Option<&str>| v.is_some_and(crate::access::is_urn);
    match list {
        Value::Array(items) => items.iter().any(|item| match item {
            Value::String(s) => is_urn(Some(s)),
            Value::Object(o) => is_urn(o.get("value").and_then(Value::as_str)),
            _ => false,
        }),
        Value::Null => false,
        _ => true,
    }
}

fn decode_may_hold_grants<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(may_hold_grants(&Value::deserialize(d)?))
}

impl UserDoc {
    /// The user's [`UserHead`], as `query::user_head` decodes it from the stored document.
    pub fn head(&self) -> UserHead {
        UserHead {
            id: self.id.clone(),
            active: self.active,
            attributes: HeadAttributes {
                user_name: self.user_name().to_string(),
                roles: self.attributes.get("roles").is_some_and(may_hold_grants),
                entitlements: self.attributes.get("entitlements").is_some_and(may_hold_grants),
            },
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

/// A stored [`UserDoc`] read without building its attributes: each top-level attribute stays the
/// JSON text the fold wrote, borrowed from the stored bytes. A GET renders a user from it by
/// copying that text (`render::user` in the service): the attributes are neither decoded into
/// `Value`s nor encoded again.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredUser<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    pub version: u64,
    #[serde(borrow)]
    pub created: StoredTime<'a>,
    #[serde(borrow)]
    pub last_modified: StoredTime<'a>,
    /// As assigned; `None` (unassigned) counts as active.
    pub active: Option<bool>,
    /// The attributes in their stored order: name, and the value's JSON text.
    #[serde(borrow, deserialize_with = "attribute_texts")]
    pub attributes: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl StoredUser<'_> {
    /// The whole [`UserDoc`], each attribute decoded from its text: for an answer the stored text
    /// does not make as it is, without reading the stored bytes a second time.
    pub fn decode(self) -> Result<UserDoc, serde_json::Error> {
        let attributes = self
            .attributes
            .into_iter()
            .map(|(k, v)| Ok((k.into_owned(), serde_json::from_str(v.get())?)))
            .collect::<Result<Map<String, Value>, serde_json::Error>>()?;
        Ok(UserDoc {
            id: self.id.into_owned(),
            version: self.version,
            created: self.created.time()?,
            last_modified: self.last_modified.time()?,
            active: self.active,
            attributes,
        })
    }
}

/// A time as the fold stored it (chrono's serde form: `2026-12-07T13:41:38.123456789Z`, its
/// fraction 0, 3, 6 or 9 digits), kept as text: an answer shows it with milliseconds, which is
/// a cut of that text, so a GET does not parse it into a `DateTime` and format it again (2.8%
/// of a GET's CPU). Any other form that chrono reads is accepted too and goes the slow way.
#[derive(Debug)]
pub struct StoredTime<'a>(Cow<'a, str>);

impl StoredTime<'_> {
    /// The time with milliseconds (`2026-12-07T13:41:38.123Z`), as
    /// `to_rfc3339_opts(SecondsFormat::Millis, true)` writes it.
    pub fn millis(&self) -> String {
        match millis_cut(&self.0) {
            Some(cut) => cut,
            None => self
                .time()
                .map_or_else(|_| self.0.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        }
    }

    /// The time, parsed as serde parses a stored `DateTime<Utc>`.
    pub fn time(&self) -> Result<DateTime<Utc>, serde_json::Error> {
        self.0.parse().map_err(serde::de::Error::custom)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for StoredTime<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Name(text) = Name::deserialize(d)?;
        let time = StoredTime(text);
        // A text the cut does not take must still be a time: refused here, as a `DateTime` was.
        if cut_fraction(&time.0).is_none() {
            time.time().map_err(serde::de::Error::custom)?;
        }
        Ok(time)
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f…]Z` with its fields in range (a leap second, `:60`, is left to
/// chrono) cut to milliseconds; `None` for any other text.
fn millis_cut(text: &str) -> Option<String> {
    let fraction = cut_fraction(text)?;
    let mut out = String::with_capacity(24);
    out.push_str(&text[..19]);
    out.push('.');
    for i in 0..3 {
        out.push(char::from(*fraction.get(i).unwrap_or(&b'0')));
    }
    out.push('Z');
    Some(out)
}

/// The fraction's digits (none for whole seconds) of a text [`millis_cut`] takes; `None` for
/// any other text. Reading a user checks the shape with this, without building the cut.
fn cut_fraction(text: &str) -> Option<&[u8]> {
    let b = text.as_bytes();
    let (head, rest) = (b.get(..19)?, b.get(19..)?);
    let two = |i: usize| -> Option<u32> {
        let (h, l) = (head[i], head[i + 1]);
        (h.is_ascii_digit() && l.is_ascii_digit()).then(|| u32::from((h - b'0') * 10 + (l - b'0')))
    };
    let shape = head[..4].iter().all(u8::is_ascii_digit)
        && [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')].iter().all(|&(i, c)| head[i] == c);
    let ranges = [(5, 1, 12), (8, 1, 31), (11, 0, 23), (14, 0, 59), (17, 0, 59)];
    if !shape || !ranges.iter().all(|&(i, lo, hi)| two(i).is_some_and(|v| (lo..=hi).contains(&v))) {
        return None;
    }
    match rest {
        [b'Z'] => Some(&[][..]),
        [b'.', digits @ .., b'Z'] if (1..=9).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) => {
            Some(digits)
        }
        _ => None,
    }
}

/// A JSON object's entries, in order, each value kept as its text.
fn attribute_texts<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(Cow<'de, str>, &'de RawValue)>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
            while let Some(Name(k)) = map.next_key()? {
                out.push((k, map.next_value()?));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Entries)
}

/// An object key, borrowed unless it holds an escape.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> serde::de::Visitor<'de> for Text {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(Text)
    }
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

/// What `keys::member_of` holds: the groups a member is directly in, listed (ids in byte order,
/// joined by `keys::SEP`) while they are at most [`MemberOf::LISTED_MAX`], counted beyond (each
/// group is then a `keys::membership` key of its own). A change of membership rewrites at most a
/// list of that bound, so its cost never grows with the groups a member is in, nor with the
/// group's size; and the common case, a user in a few groups, is read with one point read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberOf<'a> {
    Listed(Vec<&'a [u8]>),
    Spilled(u32),
}

impl<'a> MemberOf<'a> {
    /// The most groups a list holds; one more and the member's groups spill into keys.
    pub const LISTED_MAX: usize = 64;
    /// A spilled member whose count falls to this goes back to a list: below the bound, so that a
    /// member going in and out of its 65th group does not move 64 keys each time.
    pub const RELISTED_AT: usize = Self::LISTED_MAX / 2;
    /// The first byte of a count: no id holds a control character (they are refused at the
    /// boundary), so a list never starts with it.
    const SPILLED: u8 = 1;

    pub fn decode(value: &'a [u8]) -> MemberOf<'a> {
        match value {
            [Self::SPILLED, n @ ..] => MemberOf::Spilled(n.try_into().map(u32::from_be_bytes).unwrap_or(u32::MAX)),
            list => MemberOf::Listed(list.split(|b| *b == crate::keys::SEP).filter(|id| !id.is_empty()).collect()),
        }
    }

    /// The stored value; `None` for an empty list (a member in no group has no value).
    pub fn encode(&self) -> Option<Vec<u8>> {
        match self {
            MemberOf::Listed(ids) if ids.is_empty() => None,
            MemberOf::Listed(ids) => Some(ids.join(&crate::keys::SEP)),
            MemberOf::Spilled(n) => Some([&[Self::SPILLED][..], &n.to_be_bytes()].concat()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored time shown with milliseconds: the cut of its text is what chrono writes from the
    /// parsed time, for every fraction length chrono stores, the ends of the year range, and a
    /// walk over seeded times; texts the cut does not take (a leap second, a year past 9999, an
    /// offset) go through chrono; a text that is no time is refused when the user is read.
    #[test]
    fn a_stored_time_is_shown_with_the_milliseconds_chrono_would_write() {
        use chrono::{SecondsFormat, TimeZone};
        let stored = |t: &DateTime<Utc>| serde_json::to_string(t).unwrap();
        let shown = |json: &str| serde_json::from_str::<StoredTime<'_>>(json).map(|t| t.millis());
        let base = Utc.with_ymd_and_hms(2026, 12, 7, 13, 41, 38).unwrap();
        let mut times: Vec<DateTime<Utc>> =
            [0, 1, 999, 1_000, 999_999, 1_000_000, 120_000_000, 123_456_789, 999_999_999]
                .iter()
                .map(|n| base + chrono::Duration::nanoseconds(*n))
                .collect();
        times.push(Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap());
        times.push(Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap() + chrono::Duration::milliseconds(999));
        times.push(Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap());
        times.push(Utc.with_ymd_and_hms(-1, 6, 1, 0, 0, 0).unwrap());
        // A leap second: chrono holds it as 59 s and 1.5e9 ns, and writes `:60`.
        times.push(
            chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
                .unwrap()
                .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
                .unwrap()
                .and_utc(),
        );
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 4_102_444_800) as i64; // 1970 to 2100
            let nanos = match x % 4 {
                0 => 0,
                1 => (x >> 8) % 1_000 * 1_000_000,
                2 => (x >> 8) % 1_000_000 * 1_000,
                _ => (x >> 8) % 1_000_000_000,
            } as u32;
            times.push(Utc.timestamp_opt(secs, nanos).unwrap());
        }
        let mut cut = 0;
        for t in &times {
            let json = stored(t);
            assert_eq!(shown(&json).unwrap(), t.to_rfc3339_opts(SecondsFormat::Millis, true), "{json}");
            assert_eq!(serde_json::from_str::<StoredTime<'_>>(&json).unwrap().time().unwrap(), *t, "{json}");
            cut += usize::from(millis_cut(json.trim_matches('"')).is_some());
        }
        // Every time of years 0 to 9999 but the leap second is cut, not parsed.
        assert_eq!(cut, times.len() - 3, "the seeded times are all cut");
        // Other forms chrono reads are shown as chrono writes them.
        assert_eq!(shown("\"2026-12-07T13:41:38.5+02:00\"").unwrap(), "2026-12-07T11:41:38.500Z");
        assert_eq!(shown("\"2026-12-07t13:41:38Z\"").unwrap(), "2026-12-07T13:41:38.000Z");
        for bad in
            ["\"2026-13-07T13:41:38Z\"", "\"2026-12-07T13:41:38\"", "\"yesterday\"", "\"2026-12-07T25:00:00Z\"", "7"]
        {
            assert!(shown(bad).is_err(), "{bad} is not a stored time");
        }
    }

    /// The head decoded from a stored document says what the whole document says. The last
    /// column: whether the user may hold grants of its own (a URN in `roles` or `entitlements`).
    #[test]
    fn a_user_head_is_the_stored_documents_id_activity_user_name_and_grant_hint() {
        use serde_json::json;
        let at = DateTime::parse_from_rfc3339("2026-12-06T12:00:00Z").unwrap().with_timezone(&Utc);
        let attrs = |v: Value| v.as_object().cloned().unwrap();
        let cases = [
            (None, attrs(json!({"userName": "a@x.org"})), false),
            (
                Some(false),
                attrs(json!({"userName": "b@x.org", "name": {"givenName": "B"}, "emails": [{"value": "b@x.org"}]})),
                false,
            ),
            (
                Some(true),
                attrs(json!({"displayName": "no userName", "roles": ["urn:scimlog:role:environment:prod:admin"]})),
                true,
            ),
            (
                None,
                attrs(json!({"userName": "c", "roles": [{"value": "Employee", "primary": true}, {"value": "urn"}]})),
                false,
            ),
            (
                None,
                attrs(
                    json!({"userName": "d", "roles": [{"value": "Employee"}, {"value": "URN:scimlog:role:environment:prod:viewer"}]}),
                ),
                true,
            ),
            (
                None,
                attrs(
                    json!({"userName": "e", "entitlements": [{"type": "x", "value": "urn:scimlog:entitlement:environment:prod"}]}),
                ),
                true,
            ),
            (
                None,
                attrs(json!({"userName": "f", "roles": [], "entitlements": [{"display": "urn:not-the-value"}]})),
                false,
            ),
            (None, attrs(json!({"userName": "g", "roles": "not a list"})), true),
            (None, attrs(json!({"userName": "h", "roles": null})), false),
        ];
        for (active, attributes, may_hold_grants) in cases {
            let doc = UserDoc { id: "u1".into(), version: 3, created: at, last_modified: at, active, attributes };
            let stored = serde_json::to_vec(&doc).unwrap();
            let head: UserHead = serde_json::from_slice(&stored).unwrap();
            let shown = String::from_utf8_lossy(&stored);
            assert_eq!(head, doc.head(), "{shown}");
            assert_eq!((head.is_active(), head.user_name()), (doc.is_active(), doc.user_name()));
            assert_eq!(head.may_hold_grants(), may_hold_grants, "{shown}");
        }
    }
}
