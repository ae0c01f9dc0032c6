//! The key-value trait the read models are folded over.

use std::collections::BTreeMap;

/// How personal values (userNames, emails, externalIds) appear in index keys: blinded with
/// HMAC-SHA256 under the store's index secret, so that no key holds one in clear. Keys end up in
/// places a purge cannot rewrite (RocksDB's MANIFEST records each file's first and last key); a
/// blinded one cannot be read back, or confirmed by a guess, without the master key that wraps
/// the secret.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexBlinder([u8; 32]);

impl IndexBlinder {
    pub fn new(secret: [u8; 32]) -> IndexBlinder {
        IndexBlinder(secret)
    }
    /// The index form of a (folded) value: 32 hex characters.
    pub fn blind(&self, value: &str) -> String {
        use hmac::{Hmac, Mac};
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(value.as_bytes());
        hex::encode(&m.finalize().into_bytes()[..16])
    }
}

impl std::fmt::Debug for IndexBlinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexBlinder(..)")
    }
}

/// Reads. Implementations that can fail (RocksDB) remember the first failure themselves and the
/// caller checks it after the fold: the fold stays infallible.
pub trait KvRead {
    /// The blinder of this store's index keys.
    fn blinder(&self) -> IndexBlinder;
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Up to `limit` entries whose key starts with `prefix` and sorts after `after` (if given),
    /// in key order.
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// As [`KvRead::scan`], keys only: for walks that need no values (ids of a collection), so a
    /// store can skip copying them.
    fn scan_keys(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<Vec<u8>> {
        self.scan(prefix, after, limit).into_iter().map(|(k, _)| k).collect()
    }
}

pub trait Kv: KvRead {
    fn put(&mut self, key: &[u8], value: &[u8]);
    fn delete(&mut self, key: &[u8]);
}

impl<T: KvRead + ?Sized> KvRead for &T {
    fn blinder(&self) -> IndexBlinder {
        (**self).blinder()
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        (**self).get(key)
    }
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (**self).scan(prefix, after, limit)
    }
    fn scan_keys(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<Vec<u8>> {
        (**self).scan_keys(prefix, after, limit)
    }
}

/// An ordered in-memory store, for tests and scratch rebuilds. A rebuild that is to equal a
/// store's read models uses that store's blinder ([`MemKv::with_blinder`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemKv(pub BTreeMap<Vec<u8>, Vec<u8>>, pub IndexBlinder);

impl MemKv {
    pub fn with_blinder(blinder: IndexBlinder) -> MemKv {
        MemKv(BTreeMap::new(), blinder)
    }
}

impl KvRead for MemKv {
    fn blinder(&self) -> IndexBlinder {
        self.1
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        use std::ops::Bound;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        self.0
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Kv for MemKv {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.0.insert(key.to_vec(), value.to_vec());
    }
    fn delete(&mut self, key: &[u8]) {
        self.0.remove(key);
    }
}

/// Pending writes over a base store: reads see the writes first. The single writer folds a whole
/// group commit into one overlay and turns its writes into one atomic batch.
pub struct Overlay<'a, B: KvRead + ?Sized> {
    base: &'a B,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a, B: KvRead + ?Sized> Overlay<'a, B> {
    pub fn new(base: &'a B) -> Self {
        Overlay { base, writes: BTreeMap::new() }
    }
    /// The pending writes: `None` is a delete.
    pub fn into_writes(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.writes
    }
    pub fn writes(&self) -> &BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        &self.writes
    }
    /// Takes over writes made by an overlay stacked on this one.
    pub fn absorb(&mut self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
        self.writes.extend(writes);
    }
}

impl<B: KvRead + ?Sized> KvRead for Overlay<'_, B> {
    fn blinder(&self) -> IndexBlinder {
        self.base.blinder()
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.writes.get(key) {
            Some(v) => v.clone(),
            None => self.base.get(key),
        }
    }
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        use std::ops::Bound;
        // Merge the base's scan with the pending writes; deletes hide base entries, so ask the
        // base for as many more as there are pending deletes under the prefix.
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        let pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> =
            self.writes.range((start, Bound::Unbounded)).take_while(|(k, _)| k.starts_with(prefix)).collect();
        let deletes = pending.iter().filter(|(_, v)| v.is_none()).count();
        let base = self.base.scan(prefix, after, limit.saturating_add(deletes));
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = base.into_iter().map(|(k, v)| (k, Some(v))).collect();
        for (k, v) in pending {
            merged.insert(k.clone(), v.clone());
        }
        merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).take(limit).collect()
    }
}

impl<B: KvRead + ?Sized> Kv for Overlay<'_, B> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
    }
    fn delete(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_scan_merges_puts_and_hides_deletes() {
        let mut base = MemKv::default();
        for k in ["p/a", "p/b", "p/c", "q/a"] {
            base.put(k.as_bytes(), b"base");
        }
        let mut o = Overlay::new(&base);
        o.delete(b"p/a");
        o.put(b"p/bb", b"new");
        let keys =
            |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect::<Vec<_>>();
        assert_eq!(keys(o.scan(b"p/", None, 10)), ["p/b", "p/bb", "p/c"]);
        assert_eq!(keys(o.scan(b"p/", None, 2)), ["p/b", "p/bb"]);
        assert_eq!(keys(o.scan(b"p/", Some(b"p/bb"), 10)), ["p/c"]);
        assert_eq!(o.get(b"p/a"), None);
        assert_eq!(o.get(b"p/b"), Some(b"base".to_vec()));
    }
}
