//! Data keys for personal data (crypto-shredding).
//!
//! Every user (subject) gets a random 256-bit data key the first time an event about it carries
//! personal values. Data keys are stored in the `keys` column family, each wrapped (XChaCha20-
//! Poly1305) by the operator's master key; the master key never touches the store. Erasing a user
//! deletes its data key and compacts the family, after which its sealed values cannot be opened
//! by anyone: the events stay, their hashes stay valid, their personal values are gone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use scimlog_schemas::personal::{OpenError, Opener, Sealer};

use super::{LogError, Store, CF_KEYS};

const MASTER_CHECK_KEY: &[u8] = b"master-check";
const MASTER_CHECK_TEXT: &[u8] = b"scimlog master key check v1";
/// The wrapped index secret (see `scimlog_projections::IndexBlinder`): random, made on a first
/// start, wrapped by the master key like a data key (so a rotation keeps it), exported with them.
const INDEX_SECRET_KEY: &[u8] = b"ix\0index";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the master key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write the master key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{0} already exists: a master key is never overwritten (it is the only way to open the data it sealed); choose another path")]
    Exists(PathBuf),
    #[error("the master key from {0} is not 64 hex characters (32 bytes)")]
    Format(String),
    #[error("the master key from {0} does not open this data dir: wrong key, or the data dir belongs to another key")]
    Wrong(String),
    #[error("this data dir was sealed with a master key, but none was given and {0} does not exist; pass --master-key-file or SCIMLOG_MASTER_KEY")]
    Missing(PathBuf),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Where the master key comes from, in order: `--master-key-file`, `SCIMLOG_MASTER_KEY` (hex),
/// or `<data-dir>/master.key`, created on the first start.
#[derive(Clone, Debug, Default)]
pub struct MasterKeySource {
    pub file: Option<PathBuf>,
    pub hex: Option<String>,
}

#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
    /// Where it came from, for error messages.
    pub origin: String,
}

fn parse_hex_key(text: &str, origin: &str) -> Result<[u8; 32], KeyError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut key).map_err(|_| KeyError::Format(origin.into()))?;
    Ok(key)
}

pub fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    k
}

/// Writes a new random key as hex to a new file at `path` (mode 0600); an existing file is
/// never overwritten.
pub fn write_new_key_file(path: &Path) -> Result<(), KeyError> {
    let text = format!("{}\n", hex::encode(random_key()));
    crate::files::write_new_private(path, text.as_bytes()).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::Exists(path.into()),
        _ => KeyError::Write { path: path.into(), source },
    })
}

impl MasterKey {
    pub fn from_file(path: &Path) -> Result<MasterKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        let origin = path.display().to_string();
        Ok(MasterKey { key: parse_hex_key(&text, &origin)?, origin })
    }

    /// Resolves the master key for `data_dir`, creating `<data-dir>/master.key` on a first start.
    pub fn resolve(source: &MasterKeySource, data_dir: &Path, store_is_sealed: bool) -> Result<MasterKey, KeyError> {
        if let Some(f) = &source.file {
            return MasterKey::from_file(f);
        }
        if let Some(h) = &source.hex {
            return Ok(MasterKey { key: parse_hex_key(h, "SCIMLOG_MASTER_KEY")?, origin: "SCIMLOG_MASTER_KEY".into() });
        }
        let path = default_path(data_dir);
        if path.exists() {
            return MasterKey::from_file(&path);
        }
        if store_is_sealed {
            return Err(KeyError::Missing(path));
        }
        write_new_key_file(&path)?;
        MasterKey::from_file(&path)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.key).into())
    }
}

pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("master.key")
}

fn encrypt(cipher: &XChaCha20Poly1305, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    out
}

fn decrypt(cipher: &XChaCha20Poly1305, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 24 {
        return None;
    }
    let (nonce, ct) = sealed.split_at(24);
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).ok()
}

/// The key of a subject's wrapped data key in the `keys` family.
pub fn data_key_id(tenant: &str, subject: &str) -> Vec<u8> {
    let mut k = b"dk\0".to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(subject.as_bytes());
    k
}

/// The master key and the (cached) data keys of one store.
pub struct KeyRing {
    store: Store,
    master: MasterKey,
    cache: Mutex<HashMap<Vec<u8>, [u8; 32]>>,
    /// Counts destroyed keys. A key read from the store is cached only if no key was destroyed
    /// since the read began: a reader that fetched a key just before its erasure committed must
    /// not put it back into the cache after [`KeyRing::forget`].
    forgotten: std::sync::atomic::AtomicU64,
}

/// The cache holds at most this many unwrapped data keys (32 bytes each).
const CACHE_MAX: usize = 100_000;

impl KeyRing {
    /// Opens the key ring, proving the master key against the check value stored with the data
    /// (or storing one on a first start). A wrong key fails here, never later with garbage.
    pub fn open(store: Store, source: &MasterKeySource, data_dir: &Path) -> Result<KeyRing, KeyError> {
        let check = store.get_cf(CF_KEYS, MASTER_CHECK_KEY)?;
        let master = MasterKey::resolve(source, data_dir, check.is_some())?;
        let ring = KeyRing::with_master(store, master, check)?;
        ring.load_index_secret(true)?;
        Ok(ring)
    }

    /// Opens the key ring of a read-only store: nothing is created or written.
    pub fn open_read_only(store: Store, source: &MasterKeySource, data_dir: &Path) -> Result<KeyRing, KeyError> {
        let check = store.get_cf(CF_KEYS, MASTER_CHECK_KEY)?;
        let master = match (&source.file, &source.hex) {
            (None, None) if !default_path(data_dir).exists() => return Err(KeyError::Missing(default_path(data_dir))),
            _ => MasterKey::resolve(source, data_dir, true)?,
        };
        if check.is_none() {
            return Ok(KeyRing::new(store, master));
        }
        let ring = KeyRing::with_master(store, master, check)?;
        ring.load_index_secret(false)?;
        Ok(ring)
    }

    /// Unwraps the index secret and gives the store its blinder; on a writable store, makes the
    /// secret first if there is none. (A read-only store of an older layout has none: its index
    /// keys are not blinded, and lookups through them are refused until a server upgrades it.)
    fn load_index_secret(&self, create: bool) -> Result<(), KeyError> {
        let wrapped = match self.store.get_cf(CF_KEYS, INDEX_SECRET_KEY)? {
            Some(w) => w,
            None if create => {
                let w = encrypt(&self.master.cipher(), &random_key(), INDEX_SECRET_KEY);
                self.store.commit_keys(vec![(INDEX_SECRET_KEY.to_vec(), Some(w.clone()))])?;
                w
            }
            None => return Ok(()),
        };
        let secret =
            self.unwrap_key(INDEX_SECRET_KEY, &wrapped).ok_or_else(|| KeyError::Wrong(self.master.origin.clone()))?;
        self.store.set_blinder(scimlog_projections::IndexBlinder::new(secret));
        Ok(())
    }

    fn with_master(store: Store, master: MasterKey, check: Option<Vec<u8>>) -> Result<KeyRing, KeyError> {
        match check {
            Some(sealed) => {
                if decrypt(&master.cipher(), &sealed, b"master-check").as_deref() != Some(MASTER_CHECK_TEXT) {
                    return Err(KeyError::Wrong(master.origin.clone()));
                }
            }
            None => {
                let sealed = encrypt(&master.cipher(), MASTER_CHECK_TEXT, b"master-check");
                store.commit_keys(vec![(MASTER_CHECK_KEY.to_vec(), Some(sealed))])?;
            }
        }
        Ok(KeyRing::new(store, master))
    }

    fn new(store: Store, master: MasterKey) -> KeyRing {
        KeyRing { store, master, cache: Mutex::new(HashMap::new()), forgotten: Default::default() }
    }

    fn unwrap_key(&self, id: &[u8], wrapped: &[u8]) -> Option<[u8; 32]> {
        let plain = decrypt(&self.master.cipher(), wrapped, id)?;
        plain.try_into().ok()
    }

    /// The subject's data key: `Ok(None)` when it has none (never had, or erased). A read error
    /// or a key the master key cannot unwrap is an error, never "no key": taking it for absent
    /// would mint a new key and make the subject's earlier values unreadable.
    fn data_key(&self, id: &[u8]) -> Result<Option<[u8; 32]>, LogError> {
        if let Some(k) = self.cache.lock().expect("key cache").get(id) {
            return Ok(Some(*k));
        }
        let generation = self.forgotten.load(std::sync::atomic::Ordering::SeqCst);
        let Some(wrapped) = self.store.get_cf(CF_KEYS, id)? else { return Ok(None) };
        let key = self.unwrap_key(id, &wrapped).ok_or_else(|| LogError::Corrupt {
            position: 0,
            detail: format!("data key {:?} cannot be unwrapped with the master key", String::from_utf8_lossy(id)),
        })?;
        self.remember_unless_forgotten_since(generation, id.to_vec(), key);
        Ok(Some(key))
    }

    fn remember(&self, id: Vec<u8>, key: [u8; 32]) {
        let mut cache = self.cache.lock().expect("key cache");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(id, key);
    }

    /// Caches a key read from the store when no key was destroyed since `generation` (checked
    /// under the cache lock, which `forget` takes too).
    fn remember_unless_forgotten_since(&self, generation: u64, id: Vec<u8>, key: [u8; 32]) {
        let mut cache = self.cache.lock().expect("key cache");
        if self.forgotten.load(std::sync::atomic::Ordering::SeqCst) != generation {
            return;
        }
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(id, key);
    }

    /// Forgets a destroyed key, for good: a read of it that began before cannot cache it again.
    pub fn forget(&self, tenant: &str, subject: &str) {
        let mut cache = self.cache.lock().expect("key cache");
        self.forgotten.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        cache.remove(&data_key_id(tenant, subject));
    }

    /// A sealer for one commit: keys it creates are written with the commit ([`BatchSealer::
    /// new_keys`]) and cached only once the commit succeeded ([`KeyRing::committed`]).
    pub fn batch(&self) -> BatchSealer<'_> {
        BatchSealer { ring: self, pending: HashMap::new(), failed: None }
    }

    pub fn committed(&self, sealer: BatchSealer<'_>) {
        for (id, key) in sealer.pending {
            self.remember(id, key);
        }
    }

    /// Re-wraps every data key and the check value under `new`. Offline (the caller holds the
    /// store exclusively).
    pub fn rotate(&self, new: &MasterKey) -> Result<usize, KeyError> {
        let mut writes = Vec::new();
        let data_keys = self.store.scan_cf(CF_KEYS, b"dk\0")?;
        let n = data_keys.len();
        let index_secret = self.store.scan_cf(CF_KEYS, b"ix\0")?;
        for (id, wrapped) in data_keys.into_iter().chain(index_secret) {
            let key = self.unwrap_key(&id, &wrapped).ok_or_else(|| KeyError::Wrong(self.master.origin.clone()))?;
            writes.push((id.clone(), Some(encrypt(&new.cipher(), &key, &id))));
        }
        writes.push((MASTER_CHECK_KEY.to_vec(), Some(encrypt(&new.cipher(), MASTER_CHECK_TEXT, b"master-check"))));
        self.store.commit_keys(writes)?;
        Ok(n)
    }

    /// A secret for another purpose (e.g. signing cursors), derived from the master key, so that
    /// it needs no storage of its own and changes with a rotation.
    pub fn derived_secret(&self, label: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.master.key);
        h.update(b"scimlog derived secret:");
        h.update(label.as_bytes());
        h.finalize().into()
    }

    /// Every wrapped data key and the master check value (for a lossless export).
    pub fn wrapped_keys(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KeyError> {
        let mut all = self.store.scan_cf(CF_KEYS, b"dk\0")?;
        all.extend(self.store.scan_cf(CF_KEYS, b"ix\0")?);
        if let Some(check) = self.store.get_cf(CF_KEYS, MASTER_CHECK_KEY)? {
            all.push((MASTER_CHECK_KEY.to_vec(), check));
        }
        Ok(all)
    }

    /// Restores a wrapped key from an export. The master key must be the one it was wrapped with.
    pub fn restore(&self, id: Vec<u8>, wrapped: Vec<u8>) -> Result<(), KeyError> {
        if id == MASTER_CHECK_KEY {
            if decrypt(&self.master.cipher(), &wrapped, b"master-check").as_deref() != Some(MASTER_CHECK_TEXT) {
                return Err(KeyError::Wrong(self.master.origin.clone()));
            }
        } else if self.unwrap_key(&id, &wrapped).is_none() {
            return Err(KeyError::Wrong(self.master.origin.clone()));
        }
        let index_secret = id == INDEX_SECRET_KEY;
        self.store.commit_keys(vec![(id, Some(wrapped))])?;
        if index_secret {
            // The exported read models were blinded with this secret: the import folds with it.
            self.load_index_secret(false)?;
        }
        Ok(())
    }

    /// Whether the subject's data key is in this store (cluster followers fetch the ones that
    /// are not from the replicated copy before applying records sealed with them).
    pub fn has_key(&self, id: &[u8]) -> Result<bool, LogError> {
        Ok(self.cache.lock().expect("key cache").contains_key(id) || self.store.get_cf(CF_KEYS, id)?.is_some())
    }

    /// An opener that knows `extra` (wrapped data keys brought by replicated records, committed
    /// with them) besides the stored ones. A key the master key cannot unwrap is an error.
    pub fn opener_with(&self, extra: &[(Vec<u8>, Vec<u8>)]) -> Result<BatchOpener<'_>, KeyError> {
        let mut keys = HashMap::new();
        for (id, wrapped) in extra {
            let key = self.unwrap_key(id, wrapped).ok_or_else(|| KeyError::Wrong(self.master.origin.clone()))?;
            keys.insert(id.clone(), key);
        }
        Ok(BatchOpener { ring: self, extra: keys })
    }

    pub fn master_origin(&self) -> &str {
        &self.master.origin
    }
}

/// Replaces the key file at `path` with `new` after a rotation (when the old key came from it),
/// atomically: a crash leaves the old key or the new one, never an empty file.
pub fn replace_key_file(path: &Path, new: &MasterKey) -> Result<(), KeyError> {
    let text = format!("{}\n", hex::encode(new.key));
    crate::files::replace_private(path, text.as_bytes()).map_err(|source| KeyError::Write { path: path.into(), source })
}

impl Opener for KeyRing {
    /// `Ok(None)` only when the subject has no key (it was erased); a read error, or a box the
    /// key does not open, is an error: readers stop rather than show real values as erased.
    fn open(&self, tenant: &str, subject: &str, sealed_box: &str) -> Result<Option<Vec<u8>>, OpenError> {
        let fail = |detail: String| OpenError { subject: subject.to_string(), detail };
        let Some(key) = self.data_key(&data_key_id(tenant, subject)).map_err(|e| fail(e.to_string()))? else {
            return Ok(None);
        };
        open_with(&key, subject, sealed_box).map(Some)
    }
}

/// Opens with a batch's own keys first, then the ring's (see [`KeyRing::opener_with`]).
pub struct BatchOpener<'a> {
    ring: &'a KeyRing,
    extra: HashMap<Vec<u8>, [u8; 32]>,
}

impl Opener for BatchOpener<'_> {
    fn open(&self, tenant: &str, subject: &str, sealed_box: &str) -> Result<Option<Vec<u8>>, OpenError> {
        match self.extra.get(&data_key_id(tenant, subject)) {
            Some(key) => open_with(key, subject, sealed_box).map(Some),
            None => self.ring.open(tenant, subject, sealed_box),
        }
    }
}

fn open_with(key: &[u8; 32], subject: &str, sealed_box: &str) -> Result<Vec<u8>, OpenError> {
    let fail = |detail: String| OpenError { subject: subject.to_string(), detail };
    let sealed = B64.decode(sealed_box).map_err(|e| fail(format!("the sealed box is not base64: {e}")))?;
    decrypt(&XChaCha20Poly1305::new(key.into()), &sealed, subject.as_bytes())
        .ok_or_else(|| fail("the subject's key does not open the sealed box".into()))
}

pub struct BatchSealer<'a> {
    ring: &'a KeyRing,
    pending: HashMap<Vec<u8>, [u8; 32]>,
    /// The first failure to read a key: the batch must not be committed.
    failed: Option<LogError>,
}

impl BatchSealer<'_> {
    /// The wrapped keys created by this batch, to commit with it.
    pub fn new_keys(&self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.pending.iter().map(|(id, key)| (id.clone(), Some(encrypt(&self.ring.master.cipher(), key, id)))).collect()
    }

    pub fn take_error(&mut self) -> Option<LogError> {
        self.failed.take()
    }

    /// Drops a key created in this batch (its subject was erased in the same batch).
    pub fn discard(&mut self, tenant: &str, subject: &str) {
        self.pending.remove(&data_key_id(tenant, subject));
    }
}

impl Sealer for BatchSealer<'_> {
    fn seal(&mut self, tenant: &str, subject: &str, plaintext: &[u8]) -> String {
        let id = data_key_id(tenant, subject);
        let existing = match self.pending.get(&id) {
            Some(k) => Ok(Some(*k)),
            None => self.ring.data_key(&id),
        };
        let key = match existing {
            Ok(Some(k)) => k,
            Ok(None) => {
                let k = random_key();
                self.pending.insert(id, k);
                k
            }
            Err(e) => {
                self.failed.get_or_insert(e);
                return String::new();
            }
        };
        B64.encode(encrypt(&XChaCha20Poly1305::new((&key).into()), plaintext, subject.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> (tempfile::TempDir, KeyRing) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ring = KeyRing::open(store, &MasterKeySource::default(), dir.path()).unwrap();
        (dir, ring)
    }

    /// Only a missing key reads as erased; a key that is there but cannot be used is an error,
    /// so no reader (the publisher, an export) ever shows a real person's values as erased.
    #[test]
    fn a_key_that_cannot_be_used_is_an_error_never_erased() {
        let (_dir, ring) = ring();
        let mut sealer = ring.batch();
        let sealed = sealer.seal("t", "alice", b"{\"userName\":\"alice\"}");
        ring.store.commit_keys(sealer.new_keys()).unwrap();
        ring.committed(sealer);
        assert_eq!(ring.open("t", "alice", &sealed).unwrap().as_deref(), Some(&b"{\"userName\":\"alice\"}"[..]));
        assert_eq!(ring.open("t", "nobody", &sealed).unwrap(), None, "no key: erased");
        // A wrapped key the master key cannot unwrap (damaged), read past the cache.
        ring.store.commit_keys(vec![(data_key_id("t", "bob"), Some(vec![7u8; 72]))]).unwrap();
        let err = ring.open("t", "bob", &sealed).unwrap_err();
        assert!(err.detail.contains("cannot be unwrapped"), "{err}");
        // A box the subject's key does not open.
        let err = ring.open("t", "alice", "AAAA").unwrap_err();
        assert!(err.detail.contains("does not open"), "{err}");
    }

    /// A key read before its erasure committed is not cached after the erasure forgot it.
    #[test]
    fn a_forgotten_key_never_comes_back_into_the_cache() {
        let (_dir, ring) = ring();
        let mut sealer = ring.batch();
        let sealed = sealer.seal("t", "carol", b"{}");
        ring.store.commit_keys(sealer.new_keys()).unwrap();
        let id = data_key_id("t", "carol");
        // A reader starts: it notes the generation and reads the wrapped key...
        let generation = ring.forgotten.load(std::sync::atomic::Ordering::SeqCst);
        let key = ring.unwrap_key(&id, &ring.store.get_cf(CF_KEYS, &id).unwrap().unwrap()).unwrap();
        // ...the erasure commits (the key is deleted) and forgets it...
        ring.store.commit_keys(vec![(id.clone(), None)]).unwrap();
        ring.forget("t", "carol");
        // ...and the reader would cache what it read: it must not.
        ring.remember_unless_forgotten_since(generation, id.clone(), key);
        assert!(!ring.cache.lock().unwrap().contains_key(&id));
        assert_eq!(ring.open("t", "carol", &sealed).unwrap(), None, "erased");
    }
}
