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
    /// The form used as an index key: see [`fold`].
    pub fn folded(&self) -> String {
        fold(&self.0)
    }
}

/// The one case folding of every case-insensitive comparison, index and filter, so that all of
/// them agree: ASCII letters lowered; any other text is put in Unicode compatibility form (NFKC),
/// lowered, and put in NFKC again. Characters that are compatibility variants of one another
/// fold to one form (U+212A KELVIN SIGN and `K`, fullwidth `ｋ` and `k`, the ligature `ﬁ` and
/// `fi`), so two userNames that differ only by such characters are one identity: the index
/// refuses the second as a duplicate, and a lookup by either finds the same user.
pub fn fold(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    let lowered = s.nfkc().collect::<String>().to_lowercase();
    lowered.nfkc().collect()
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
        let cases = [
            ("userName", "USERNAME", true),
            ("Émile", "émile", true),
            // Composed and decomposed forms of the same letter.
            ("\u{e9}mile", "e\u{301}mile", true),
            ("a", "b", false),
            // Compatibility variants are one identity.
            ("\u{212A}im", "kim", true),
            ("\u{FF4B}im", "Kim", true),
            ("\u{FB01}nn", "finn", true),
            // Look-alikes from other scripts are not the same letters.
            ("\u{43A}im", "kim", false),
        ];
        for (a, b, eq) in cases {
            assert_eq!(CiName::new(a) == CiName::new(b), eq, "{a} vs {b}");
        }
    }
}
