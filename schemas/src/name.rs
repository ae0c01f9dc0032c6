//! Names compared without case: SCIM attribute names, userNames, group displayNames.

use std::fmt;
use std::hash::{Hash, Hasher};

/// A name that keeps the spelling it was given but compares, hashes and indexes without case
/// (RFC 7643 §2.1: attribute names are case-insensitive).
#[derive(Clone, Debug)]
pub struct CiName(String);

impl CiName {
    pub fn new(s: impl Into<String>) -> Self {
        CiName(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The form used as an index key: Unicode lower case.
    pub fn folded(&self) -> String {
        fold(&self.0)
    }
}

/// Case folding used by every case-insensitive index, so that all of them agree.
pub fn fold(s: &str) -> String {
    s.to_lowercase()
}

impl PartialEq for CiName {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0) || fold(&self.0) == fold(&other.0)
    }
}
impl Eq for CiName {}
impl PartialEq<str> for CiName {
    fn eq(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other) || fold(&self.0) == fold(other)
    }
}
impl Hash for CiName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        fold(&self.0).hash(state)
    }
}
impl fmt::Display for CiName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn compares_without_case() {
        let cases = [("userName", "USERNAME", true), ("Émile", "émile", true), ("a", "b", false)];
        for (a, b, eq) in cases {
            assert_eq!(CiName::new(a) == CiName::new(b), eq, "{a} vs {b}");
        }
    }
}
