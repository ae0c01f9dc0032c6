//! The log: the only module that knows RocksDB.
//!
//! One RocksDB instance under `<data-dir>/db` with column families:
//! - `events`: the append-only event log, key = position (u64 big-endian), value = the SHA-256 of
//!   the canonical event bytes followed by the bytes ([`SealedEvent`]). Never overwritten, never
//!   deleted.
//! - `state`: the read models, laid out by `scimlog_projections::keys`.
//! - `keys`: the wrapped per-user data keys that seal personal values in events ([`keys`]).
//! - `outbound`: the outbound connectors' own state (links to remote ids, last sent documents,
//!   watermarks, intents, parked objects), laid out by `crate::outbound::state`, written only
//!   through [`OutboundStore`] by the connectors, never by the writer.
//!
//! The first three are written together in one `WriteBatch`, fsync'd, by the single [`writer`]. Reads come
//! from snapshots through [`StateView`], which implements the projections' `KvRead`.

pub mod keys;
pub mod purge;
pub mod writer;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, SnapshotWithThreadMode, WriteBatch, WriteOptions, DB,
};
use scimlog_projections::KvRead;
use scimlog_schemas::event::{EventHash, SealedEvent};

pub const CF_EVENTS: &str = "events";
pub const CF_STATE: &str = "state";
pub const CF_KEYS: &str = "keys";
pub const CF_OUTBOUND: &str = "outbound";
const FAMILIES: [&str; 4] = [CF_EVENTS, CF_STATE, CF_KEYS, CF_OUTBOUND];

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the store at {path}: {source}")]
    Open { path: PathBuf, source: rocksdb::Error },
    #[error("storage failure: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error("injected storage fault")]
    Injected,
    #[error("log record at position {position} is corrupt: {detail}")]
    Corrupt { position: u64, detail: String },
}

/// The position and hash of the last event: where the next append continues the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub position: u64,
    pub hash: EventHash,
}

impl Head {
    pub fn genesis() -> Head {
        Head { position: 0, hash: EventHash::GENESIS }
    }
}

/// Makes the next commits fail, as a full disk or an I/O error would: the tests of what a
/// storage failure does to requests and to the state. Nothing outside the process reaches it.
/// It can also make the writer's next decisions panic, as a bug would: the test that the writer
/// survives one.
#[derive(Clone, Default)]
pub struct FaultInjector {
    commits: Arc<std::sync::atomic::AtomicU64>,
    decide_panics: Arc<std::sync::atomic::AtomicU64>,
}

impl FaultInjector {
    pub fn fail_next_commits(&self, n: u64) {
        self.commits.store(n, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn panic_in_next_decides(&self, n: u64) {
        self.decide_panics.store(n, std::sync::atomic::Ordering::SeqCst);
    }
    fn take(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.commits.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok()
    }
    pub(crate) fn maybe_panic_in_decide(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.decide_panics.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
            panic!("injected panic in decide");
        }
    }
}

/// The opened store. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// How index keys blind personal values; set by the key ring once it holds the master key.
    blinder: Arc<std::sync::RwLock<Option<scimlog_projections::IndexBlinder>>>,
    faults: FaultInjector,
    /// A secondary instance's own directory, removed when the last clone goes.
    _scratch: Option<Arc<tempfile::TempDir>>,
    /// Counts commits that change a group node or create a scope (`access::changes_kept_nodes`):
    /// odd while one is being committed, so that a view knows whether group nodes kept from
    /// another view of the same generation are its own (see [`StateView::group_generation`]).
    group_generation: Arc<AtomicU64>,
}

#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStats {
    pub memtable_bytes: u64,
    pub block_cache_bytes: u64,
    pub table_reader_bytes: u64,
    pub running_compactions: u64,
    pub running_flushes: u64,
    pub pending_compaction_bytes: u64,
    /// RocksDB's estimate of the live data in all families.
    pub live_data_bytes: u64,
    /// The size of the families' table files on disk (what was flushed; memtables are apart).
    pub sst_files_bytes: u64,
    /// Background (flush, compaction) errors since the store opened.
    pub background_errors: u64,
}

/// Memory bounds of a store, from the configuration (`--block-cache-mb`, `--memtable-budget-mb`).
#[derive(Clone, Copy, Debug)]
pub struct StoreMemory {
    /// The block cache shared by the store's families.
    pub block_cache_bytes: usize,
    /// All families' memtables together.
    pub memtable_budget_bytes: usize,
}

impl Default for StoreMemory {
    fn default() -> Self {
        StoreMemory { block_cache_bytes: 64 << 20, memtable_budget_bytes: 64 << 20 }
    }
}

/// The block cache shared by a store's families: RocksDB's lock-free HyperClockCache rather than
/// its LRU cache, whose shards take a mutex on every lookup and again on every release (each
/// point read of a lookup or an access check does both: 5.4% of an access check's samples at
/// 100k users went to them). Its table is sized for entries of about a block each
/// (`BLOCK_BYTES`, the block size RocksDB writes by default); a smaller average (index and
/// filter blocks stay outside the cache) costs it some metadata, not hits.
fn block_cache(bytes: usize) -> rocksdb::Cache {
    const BLOCK_BYTES: usize = 4 << 10;
    rocksdb::Cache::new_hyper_clock_cache(bytes, BLOCK_BYTES)
}

fn db_options(memory: &StoreMemory, cache: &rocksdb::Cache) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Few, larger writes (group commit): a bigger memtable means fewer flushes.
    opts.set_write_buffer_size((64 << 20).min(memory.memtable_budget_bytes / 2).max(1 << 20));
    // All families' memtables together stay under this (the largest is flushed first): resident
    // memory at a million users is bounded by it, the block cache and the files' indexes.
    opts.set_db_write_buffer_size(memory.memtable_budget_bytes);
    opts.increase_parallelism(2);
    // Point reads (a lookup, a uniqueness check before a create) skip the files that cannot hold
    // the key thanks to bloom filters; hot data blocks stay in one cache shared by every family,
    // of a fixed size (the OS page cache holds the rest of the files). Index and filter blocks
    // stay outside that cache, held by the open files (about 2% of the data): in a small cache
    // they were evicted and re-read (checksummed, whole) on every lookup, and creates at 400k
    // users fell from 10k/s to 750/s.
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    // A point read ends in a binary search of a data block's restart points; a small hash of the
    // block's keys (about one byte per key) finds the key at once. Scans still search. Files
    // written before this carry no such hash and are searched as before.
    table.set_data_block_index_type(rocksdb::DataBlockIndexType::BinaryAndHash);
    table.set_data_block_hash_ratio(0.75);
    table.set_block_cache(cache);
    opts.set_block_based_table_factory(&table);
    opts
}

/// The log's files: read only by iterators from a position (replay, publishing, audit, the
/// event feeds), never by a point read, so they carry no bloom filter (filters serve point reads
/// and prefix scans only; the log's were 1.25 bytes an event held in memory, 7.6 MB at 6M
/// events, for nothing). Their blocks are 16 KiB rather than 4: an iterator reads them in order,
/// and the index the open files hold has a quarter of the entries. Files written before keep
/// their filters and blocks, and are read as before.
fn log_table_options(cache: &rocksdb::Cache) -> rocksdb::BlockBasedOptions {
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_size(LOG_BLOCK_BYTES);
    table.set_block_cache(cache);
    table
}

const LOG_BLOCK_BYTES: usize = 16 << 10;

/// A family's options. The read models (`state`) and the connectors' last sent documents
/// (`outbound`) are stored uncompressed, so that the promise of
/// erasure stays checkable: plaintext personal values live only there (events hold them sealed),
/// and a byte search of the files then finds a value if it is anywhere (in LZ4 blocks it may not
/// appear literally). It costs disk, not time: decompression was under 1% of a lookup's CPU at a
/// million users. The log (`events`) and the keys stay LZ4-compressed.
fn family_options(name: &str, memory: &StoreMemory, cache: &rocksdb::Cache) -> Options {
    let mut opts = db_options(memory, cache);
    if name == CF_STATE || name == CF_OUTBOUND {
        opts.set_compression_type(rocksdb::DBCompressionType::None);
    }
    if name == CF_EVENTS {
        opts.set_block_based_table_factory(&log_table_options(cache));
    }
    if name == CF_STATE {
        // "This user's groups", "this subject's grants", "this group's members" are scans of one
        // `tag 0 tenant 0 id 0` prefix, and most of them find nothing (a user in no group, with
        // no grant of its own): the files' bloom filters also hold these prefixes, so such a scan
        // skips every file that has none (see `read_options`). Whole keys stay in the filters
        // for point reads. Files written before this extractor keep serving without it.
        opts.set_prefix_extractor(rocksdb::SliceTransform::create(
            STATE_PREFIX_NAME,
            state_prefix,
            Some(state_prefix_in_domain),
        ));
        // The same prefixes in a bloom filter of the memtable (2% of its size): the newest writes
        // are skipped as cheaply as the files.
        opts.set_memtable_prefix_bloom_ratio(0.02);
        // Whole keys in that filter too, for point reads: most reads (a user by id, an index
        // entry) look for a key the memtable does not hold, and this skips its skip list. Keys
        // outside the prefixes' domain (`u 0 tenant 0 id`) had no filter in the memtable at all.
        opts.set_memtable_whole_key_filtering(true);
    }
    opts
}

/// The name RocksDB stores with the files it filters by [`state_prefix`]: a different name (or
/// none) in a file means its filter does not hold these prefixes, and it is read without them.
const STATE_PREFIX_NAME: &str = "scimlog.state.3parts";
/// How many `0`-terminated parts a `state` prefix spans: `tag 0 tenant 0 id 0`.
const STATE_PREFIX_PARTS: usize = 3;

/// A `state` key's first three parts with their separators (`tag 0 tenant 0 id 0`): the
/// prefix every per-resource scan asks for (`keys::memberships`, `keys::grants_of`,
/// `keys::members`, ...). Only called on keys of its domain.
fn state_prefix(key: &[u8]) -> &[u8] {
    &key[..state_prefix_len(key).unwrap_or(key.len())]
}

fn state_prefix_in_domain(key: &[u8]) -> bool {
    state_prefix_len(key).is_some()
}

/// The length of `key`'s first [`STATE_PREFIX_PARTS`] parts with their separators, when it has
/// that many.
fn state_prefix_len(key: &[u8]) -> Option<usize> {
    let sep = scimlog_projections::keys::SEP;
    key.iter().enumerate().filter(|(_, b)| **b == sep).nth(STATE_PREFIX_PARTS - 1).map(|(i, _)| i + 1)
}

/// Read options of a scan of the keys under `prefix`. Every scan is bounded by the prefix's
/// successor, so RocksDB stops at the prefix's end instead of reading the next key (and opening
/// the next file) to find out. A scan of exactly one [`state_prefix`] (every key it meets has
/// that prefix, the key it starts from too) may use the prefix filters; any other scan is in
/// total order, since prefix filters may skip a file's keys of *other* prefixes.
fn read_options(prefix: &[u8]) -> rocksdb::ReadOptions {
    let mut opts = rocksdb::ReadOptions::default();
    if let Some(end) = successor(prefix) {
        opts.set_iterate_upper_bound(end);
    }
    if state_prefix_len(prefix) == Some(prefix.len()) {
        opts.set_prefix_same_as_start(true);
    } else {
        opts.set_total_order_seek(true);
    }
    opts
}

/// The smallest key greater than every key that starts with `prefix` (none when every byte is
/// 0xff or the prefix is empty).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|b| *b != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

impl Store {
    /// Opens (creating if needed) the store under `<data_dir>/db`, with the default memory bounds.
    pub fn open(data_dir: &Path) -> Result<Store, LogError> {
        Store::open_with(data_dir, &StoreMemory::default())
    }

    pub fn open_with(data_dir: &Path, memory: &StoreMemory) -> Result<Store, LogError> {
        let path = data_dir.join("db");
        let cache = block_cache(memory.block_cache_bytes);
        let cfs = FAMILIES.map(|name| ColumnFamilyDescriptor::new(name, family_options(name, memory, &cache)));
        let db = DB::open_cf_descriptors(&db_options(memory, &cache), &path, cfs)
            .map_err(|source| LogError::Open { path, source })?;
        Ok(Store {
            db: Arc::new(db),
            blinder: Default::default(),
            faults: FaultInjector::default(),
            _scratch: None,
            group_generation: Default::default(),
        })
    }

    /// Opens the store for reading beside a live server (audit, export), as a RocksDB secondary
    /// instance: it holds every file it reads open, so the server's compactions cannot pull a
    /// file from under it, and it sees everything committed up to the moment it opens.
    pub fn open_read_only(data_dir: &Path) -> Result<Store, LogError> {
        let path = data_dir.join("db");
        if !path.join("CURRENT").exists() {
            return Err(LogError::Corrupt { position: 0, detail: format!("no store at {}", path.display()) });
        }
        let scratch = tempfile::Builder::new()
            .prefix("scimlog-reader-")
            .tempdir()
            .map_err(|e| LogError::Corrupt { position: 0, detail: format!("cannot create a scratch dir: {e}") })?;
        let memory = StoreMemory::default();
        let cache = block_cache(memory.block_cache_bytes);
        let mut opts = db_options(&memory, &cache);
        opts.create_if_missing(false);
        opts.set_max_open_files(-1);
        let cfs = FAMILIES.map(|name| {
            let mut o = family_options(name, &memory, &cache);
            o.set_max_open_files(-1);
            ColumnFamilyDescriptor::new(name, o)
        });
        let db = DB::open_cf_descriptors_as_secondary(&opts, &path, &scratch.path().to_path_buf(), cfs)
            .map_err(|source| LogError::Open { path: path.clone(), source })?;
        db.try_catch_up_with_primary()?;
        Ok(Store {
            db: Arc::new(db),
            blinder: Default::default(),
            faults: FaultInjector::default(),
            _scratch: Some(Arc::new(scratch)),
            group_generation: Default::default(),
        })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Both families are created at open; a missing one is a programming error.
        self.db.cf_handle(name).expect("column family exists")
    }

    /// The last event's position and hash, read from the end of the `events` family.
    pub fn head(&self) -> Result<Head, LogError> {
        let mut it = self.db.iterator_cf(self.cf(CF_EVENTS), IteratorMode::End);
        match it.next() {
            None => Ok(Head::genesis()),
            Some(item) => {
                let (k, v) = item?;
                let position = decode_position(&k)?;
                let sealed =
                    SealedEvent::from_record(&v).map_err(|e| LogError::Corrupt { position, detail: e.to_string() })?;
                Ok(Head { position, hash: sealed.event_hash() })
            }
        }
    }

    /// A consistent copy of the whole store (every family at one point) in `dir`, which must not
    /// exist: hard links to the immutable files where the file system allows, so it is cheap.
    pub fn checkpoint(&self, dir: &Path) -> Result<(), LogError> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    pub fn faults(&self) -> FaultInjector {
        self.faults.clone()
    }

    pub(crate) fn set_blinder(&self, b: scimlog_projections::IndexBlinder) {
        *self.blinder.write().expect("blinder lock") = Some(b);
    }

    /// The blinder of this store's index keys, once the key ring set it.
    pub fn blinder(&self) -> Option<scimlog_projections::IndexBlinder> {
        *self.blinder.read().expect("blinder lock")
    }

    /// A consistent read view of the read models.
    pub fn view(&self) -> StateView<'_> {
        // A secondary instance cannot take snapshots, and needs none: it does not change after
        // it caught up with the primary.
        let before = self.group_generation.load(Ordering::SeqCst);
        let snapshot = self._scratch.is_none().then(|| self.db.snapshot());
        let after = self.group_generation.load(Ordering::SeqCst);
        // No commit changing a group node began or ended around the snapshot: it shows exactly
        // the group nodes of that generation. A secondary instance has no generation of its own.
        let group_generation = (before == after && before % 2 == 0 && self._scratch.is_none()).then_some(before);
        StateView {
            db: &self.db,
            snapshot,
            cf: self.cf(CF_STATE),
            blinder: self.blinder(),
            error: RefCell::new(None),
            group_generation,
        }
    }

    /// A view of the read models as they are now, without a snapshot: it sees every write made
    /// after it was taken. Only for a rebuild, whose fold reads what its own earlier batches wrote
    /// and which nothing else writes meanwhile.
    pub(crate) fn live_view(&self) -> StateView<'_> {
        StateView {
            db: &self.db,
            snapshot: None,
            cf: self.cf(CF_STATE),
            blinder: self.blinder(),
            error: RefCell::new(None),
            group_generation: None,
        }
    }

    /// Brackets a commit that changes group nodes (see `group_generation`): the generation is
    /// odd from now until the guard drops, after the commit.
    pub(crate) fn group_nodes_changing(&self) -> GroupNodesChanging {
        self.group_generation.fetch_add(1, Ordering::SeqCst);
        GroupNodesChanging(self.group_generation.clone())
    }

    /// Reads up to `limit` events from `from` (inclusive), in log order.
    pub fn events_from(&self, from: u64, limit: usize) -> Result<Vec<(u64, SealedEvent)>, LogError> {
        let key = from.to_be_bytes();
        let it = self.db.iterator_cf(self.cf(CF_EVENTS), IteratorMode::From(&key, Direction::Forward));
        let mut out = Vec::new();
        for item in it.take(limit) {
            let (k, v) = item?;
            let position = decode_position(&k)?;
            let sealed =
                SealedEvent::from_record(&v).map_err(|e| LogError::Corrupt { position, detail: e.to_string() })?;
            out.push((position, sealed));
        }
        Ok(out)
    }

    pub(crate) fn get_cf(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    pub(crate) fn scan_cf(&self, cf: &str, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, LogError> {
        let mode = IteratorMode::From(prefix, Direction::Forward);
        let it = self.db.iterator_cf_opt(self.cf(cf), read_options(prefix), mode);
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Every entry of the `state` family, in key order.
    pub fn scan_state(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, LogError> {
        self.scan_cf(CF_STATE, b"")
    }

    /// Appends already sealed events as they are (import), fsync'd.
    pub fn append_raw(&self, events: &[(u64, SealedEvent)]) -> Result<(), LogError> {
        self.commit(events, std::iter::empty(), vec![], true)
    }

    /// The key layout version the read models were written with (`None`: not recorded, as in
    /// stores written before it was).
    pub fn layout_version(&self) -> Result<Option<u32>, LogError> {
        let Some(v) = self.get_cf(CF_STATE, scimlog_projections::keys::LAYOUT)? else { return Ok(None) };
        let bytes: [u8; 4] = v.as_slice().try_into().map_err(|_| LogError::Corrupt {
            position: 0,
            detail: format!("the read-model layout version is {} bytes, not 4", v.len()),
        })?;
        Ok(Some(u32::from_be_bytes(bytes)))
    }

    /// Empties the `state` family, its layout mark with it: where a rebuild in place starts. A
    /// rebuild a crash cuts off is therefore done again at the next start (no mark, not current).
    /// Whole files are dropped; one range deletion covers what is left in the others.
    pub fn clear_state(&self) -> Result<(), LogError> {
        let cf = self.cf(CF_STATE);
        let first = self.db.iterator_cf(cf, IteratorMode::Start).next().transpose()?;
        let last = self.db.iterator_cf(cf, IteratorMode::End).next().transpose()?;
        let (Some((first, _)), Some((last, _))) = (first, last) else { return Ok(()) };
        // The range's end is exclusive: the smallest key after the last one.
        let mut end = last.into_vec();
        end.push(0);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, &first[..], &end[..]);
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        self.db.delete_file_in_range_cf(cf, &first[..], &end[..])?;
        Ok(())
    }

    /// Writes a batch of a rebuild's read-model entries (`None`: a delete) without the
    /// write-ahead log. Nothing is lost by it: a rebuild ends with [`Store::flush_state`] and only
    /// then writes the layout mark, so one that a crash cut off has no mark and is done again.
    pub fn write_state_unlogged(
        &self,
        writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), LogError> {
        let cf = self.cf(CF_STATE);
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        // In RocksDB batches of a few MB: one batch of a rebuild's tens of thousands of writes
        // grew its buffer by doubling into fresh memory, and the copies and page faults were
        // most of the write's cost. Nothing needs them atomic: the fold reads them once the whole
        // call returned, and nothing else reads the state before its mark.
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let mut batch = WriteBatch::default();
            put_or_delete(&mut batch, cf, writes.by_ref().take(UNLOGGED_WRITES_PER_BATCH));
            self.db.write_opt(batch, &wo)?;
        }
        Ok(())
    }

    /// Writes the `state` family's memtables to its files and waits for it.
    pub fn flush_state(&self) -> Result<(), LogError> {
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(true);
        self.db.flush_cf_opt(self.cf(CF_STATE), &flush)?;
        Ok(())
    }

    /// Every entry of the `state` family in key order, read as it goes (a comparison of two
    /// stores' read models holds one entry of each at a time).
    pub fn state_entries(&self) -> impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), LogError>> + '_ {
        self.db.iterator_cf(self.cf(CF_STATE), IteratorMode::Start).map(|r| r.map_err(LogError::from))
    }

    /// Records that the read models are laid out as this code lays them out.
    pub fn mark_layout_current(&self) -> Result<(), LogError> {
        let version = scimlog_projections::keys::LAYOUT_VERSION.to_be_bytes().to_vec();
        self.commit(&[], [(scimlog_projections::keys::LAYOUT.to_vec(), Some(version))], vec![], true)
    }

    /// Writes to the `keys` family alone, fsync'd.
    pub(crate) fn commit_keys(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), LogError> {
        self.commit(&[], std::iter::empty(), writes, true)
    }

    /// What RocksDB holds in memory, in bytes (memtables, the block cache, and the open files'
    /// indexes and filters, which stay outside the cache), and its background work. Shown by
    /// /healthz; the benchmarks wait for compactions to end before measuring reads.
    pub fn stats(&self) -> Result<StoreStats, LogError> {
        use rocksdb::properties as p;
        let mut stats = StoreStats::default();
        // Every family, the subscribers' (`outbound`) too: its memtable and files are memory the
        // server holds like any other's.
        for name in FAMILIES {
            let cf = self.cf(name);
            let prop = |p| self.db.property_int_value_cf(cf, p).map(|v| v.unwrap_or(0));
            stats.memtable_bytes += prop(p::CUR_SIZE_ALL_MEM_TABLES)?;
            stats.table_reader_bytes += prop(p::ESTIMATE_TABLE_READERS_MEM)?;
            stats.pending_compaction_bytes += prop(p::ESTIMATE_PENDING_COMPACTION_BYTES)?;
            stats.live_data_bytes += prop(p::ESTIMATE_LIVE_DATA_SIZE)?;
            stats.sst_files_bytes += prop(p::TOTAL_SST_FILES_SIZE)?;
            // One cache shared by the families: the same figure from each.
            stats.block_cache_bytes = prop(p::BLOCK_CACHE_USAGE)?;
        }
        stats.running_compactions = self.db.property_int_value(p::NUM_RUNNING_COMPACTIONS)?.unwrap_or(0);
        stats.running_flushes = self.db.property_int_value(p::NUM_RUNNING_FLUSHES)?.unwrap_or(0);
        stats.background_errors = self.db.property_int_value(p::BACKGROUND_ERRORS)?.unwrap_or(0);
        Ok(stats)
    }

    /// Writes every memtable to its files (a clean stop): the next open then has no write-ahead
    /// log to replay, so start-up does not grow with what was written since the last flush.
    pub fn flush(&self) -> Result<(), LogError> {
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(true);
        // Every family: one with unflushed writes keeps the whole write-ahead log since them.
        let cfs: Vec<&rocksdb::ColumnFamily> = FAMILIES.iter().map(|n| self.cf(n)).collect();
        self.db.flush_cfs_opt(&cfs, &flush)?;
        Ok(())
    }

    /// The sequence number of the oldest live snapshot, `None` when there is none.
    pub(crate) fn oldest_snapshot_sequence(&self) -> Result<Option<u64>, LogError> {
        let live = self.db.property_int_value(rocksdb::properties::NUM_SNAPSHOTS)?.unwrap_or(0);
        if live == 0 {
            return Ok(None);
        }
        Ok(Some(self.db.property_int_value("rocksdb.oldest-snapshot-sequence")?.unwrap_or(0)))
    }

    /// The store's last sequence number (of the last committed write).
    pub(crate) fn latest_sequence(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Makes erased data unrecoverable from the files, once no snapshot can see it: flushes every
    /// family (so the write-ahead log that still holds old values becomes obsolete and is
    /// deleted), then rewrites the files that hold the given keys, or the whole `state` family
    /// when they are not known, and the files of the destroyed data keys. A failed compaction is
    /// an error (the purge is reported failed), never ignored.
    pub(crate) fn purge_ranges(&self, state_keys: Option<&[Vec<u8>]>, key_ids: &[Vec<u8>]) -> Result<(), LogError> {
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(true);
        let cfs: Vec<&rocksdb::ColumnFamily> = [CF_EVENTS, CF_STATE, CF_KEYS].iter().map(|n| self.cf(n)).collect();
        self.db.flush_cfs_opt(&cfs, &flush)?;
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        let state = self.cf(CF_STATE);
        match state_keys {
            Some(keys) => {
                for k in keys {
                    self.db.compact_range_cf_opt(state, Some(k), Some(k), &opts);
                }
            }
            None => self.db.compact_range_cf_opt(state, None::<&[u8]>, None::<&[u8]>, &opts),
        }
        for k in key_ids {
            self.db.compact_range_cf_opt(self.cf(CF_KEYS), Some(k), Some(k), &opts);
        }
        if let Some(e) = self.background_error()? {
            return Err(LogError::Corrupt { position: 0, detail: format!("a compaction failed: {e}") });
        }
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// RocksDB's background error count, if any (compactions report failures only there).
    fn background_error(&self) -> Result<Option<u64>, LogError> {
        let n = self.db.property_int_value(rocksdb::properties::BACKGROUND_ERRORS)?.unwrap_or(0);
        Ok((n > 0).then_some(n))
    }

    /// Appends events, read-model writes and key writes atomically, fsync'd when `sync`.
    pub(crate) fn commit(
        &self,
        events: &[(u64, SealedEvent)],
        state_writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
        key_writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        sync: bool,
    ) -> Result<(), LogError> {
        if self.faults.take() {
            return Err(LogError::Injected);
        }
        let mut batch = WriteBatch::default();
        put_or_delete(&mut batch, self.cf(CF_KEYS), key_writes);
        let events_cf = self.cf(CF_EVENTS);
        for (position, sealed) in events {
            batch.put_cf(events_cf, position.to_be_bytes(), sealed.to_record());
        }
        put_or_delete(&mut batch, self.cf(CF_STATE), state_writes);
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }
}

/// How many writes [`Store::write_state_unlogged`] puts in one RocksDB batch.
const UNLOGGED_WRITES_PER_BATCH: usize = 4096;

/// Adds writes of one family to a batch: `Some` puts, `None` deletes.
fn put_or_delete(
    batch: &mut WriteBatch,
    cf: &rocksdb::ColumnFamily,
    writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
) {
    for (k, v) in writes {
        match v {
            Some(v) => batch.put_cf(cf, k, v),
            None => batch.delete_cf(cf, k),
        }
    }
}

/// The subscribers' family (`outbound`): point reads, prefix scans, and writes of one atomic
/// batch. Only `crate::outbound` (per target) and `crate::sets` (per stream, under `\0set\0`)
/// hold one; the writer never touches the family.
#[derive(Clone)]
pub struct OutboundStore(Store);

impl Store {
    pub fn outbound(&self) -> OutboundStore {
        OutboundStore(self.clone())
    }
}

impl OutboundStore {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        self.0.get_cf(CF_OUTBOUND, key)
    }

    /// Up to `limit` entries under `prefix`, after `after` (exclusive) when given, in key order.
    pub fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, LogError> {
        let start = after.filter(|a| *a >= prefix).unwrap_or(prefix);
        let it = self.0.db.iterator_cf(self.0.cf(CF_OUTBOUND), IteratorMode::From(start, Direction::Forward));
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            if after.is_some_and(|a| &*k <= a) {
                continue;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Puts (`Some`) and deletes (`None`) as one atomic batch; with `sync` fsync'd (with every
    /// write before it: the WAL is one file) before it returns.
    pub fn write(&self, entries: Vec<(Vec<u8>, Option<Vec<u8>>)>, sync: bool) -> Result<(), LogError> {
        let cf = self.0.cf(CF_OUTBOUND);
        let mut batch = WriteBatch::default();
        put_or_delete(&mut batch, cf, entries);
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.0.db.write_opt(batch, &wo)?;
        Ok(())
    }

    /// Flushes the family and compacts the keys under `prefix`, so that values deleted there (an
    /// erased person's last sent document) leave the files, not only the live view.
    pub fn purge(&self, prefix: &[u8]) -> Result<(), LogError> {
        let cf = self.0.cf(CF_OUTBOUND);
        self.0.db.flush_cf(cf)?;
        let mut end = prefix.to_vec();
        end.push(0xff);
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        self.0.db.compact_range_cf_opt(cf, Some(prefix), Some(&end[..]), &opts);
        Ok(())
    }
}

fn decode_position(key: &[u8]) -> Result<u64, LogError> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| LogError::Corrupt { position: 0, detail: format!("event key of {} bytes", key.len()) })
}

/// A snapshot of the `state` family as the projections' [`KvRead`]. A RocksDB read error is kept
/// (the first one) and returns "absent" to the caller; whoever folds or answers checks
/// [`StateView::take_error`] before trusting the result.
pub struct StateView<'a> {
    db: &'a DB,
    snapshot: Option<SnapshotWithThreadMode<'a, DB>>,
    cf: &'a rocksdb::ColumnFamily,
    blinder: Option<scimlog_projections::IndexBlinder>,
    error: RefCell<Option<rocksdb::Error>>,
    group_generation: Option<u64>,
}

/// See [`Store::group_nodes_changing`].
pub(crate) struct GroupNodesChanging(Arc<AtomicU64>);

impl Drop for GroupNodesChanging {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl StateView<'_> {
    /// The generation of group nodes this view shows, when it is known: group nodes read from
    /// any view of the same generation are this view's too. `None`: a commit changing them was
    /// under way when the view was taken (or a secondary instance): read them from this view.
    pub fn group_generation(&self) -> Option<u64> {
        self.group_generation
    }

    /// Whether a read through this view failed (the error is still to be taken).
    pub fn failed(&self) -> bool {
        self.error.borrow().is_some()
    }

    pub fn take_error(&self) -> Option<LogError> {
        self.error.borrow_mut().take().map(LogError::Storage)
    }
    fn note(&self, e: rocksdb::Error) {
        let mut slot = self.error.borrow_mut();
        if slot.is_none() {
            *slot = Some(e);
        }
    }
}

impl KvRead for StateView<'_> {
    fn blinder(&self) -> scimlog_projections::IndexBlinder {
        // Every path that reads or writes an index of personal values opens the key ring first.
        self.blinder.expect(
            "the store's index secret is missing: open the key ring first, or start the server once to upgrade the data dir",
        )
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let got = match &self.snapshot {
            Some(s) => s.get_cf(self.cf, key),
            None => self.db.get_cf(self.cf, key),
        };
        match got {
            Ok(v) => v,
            Err(e) => {
                self.note(e);
                None
            }
        }
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let start = match after {
            Some(a) if a >= prefix => a,
            _ => prefix,
        };
        let (mode, opts) = (IteratorMode::From(start, Direction::Forward), read_options(prefix));
        let it = match &self.snapshot {
            Some(s) => s.iterator_cf_opt(self.cf, opts, mode),
            None => self.db.iterator_cf_opt(self.cf, opts, mode),
        };
        let mut out = Vec::new();
        for item in it {
            match item {
                Ok((k, v)) => {
                    if !k.starts_with(prefix) {
                        break;
                    }
                    if after.is_some_and(|a| &*k <= a) {
                        continue;
                    }
                    if out.len() >= limit {
                        break;
                    }
                    out.push((k.into_vec(), v.into_vec()));
                }
                Err(e) => {
                    self.note(e);
                    break;
                }
            }
        }
        out
    }
    fn scan_keys(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Vec<Vec<u8>> {
        let start = match after {
            Some(a) if a >= prefix => a,
            _ => prefix,
        };
        // The raw iterator hands out the key in place: values are never copied.
        let mut it = match &self.snapshot {
            Some(s) => s.raw_iterator_cf_opt(self.cf, read_options(prefix)),
            None => self.db.raw_iterator_cf_opt(self.cf, read_options(prefix)),
        };
        it.seek(start);
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(k) = it.key() else { break };
            if !k.starts_with(prefix) {
                break;
            }
            if !after.is_some_and(|a| k <= a) {
                out.push(k.to_vec());
            }
            it.next();
        }
        if let Err(e) = it.status() {
            self.note(e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(parts: &[&str]) -> Vec<u8> {
        parts.join("\0").into_bytes()
    }

    /// A family's files' properties summed (`rocksdb.aggregated-table-properties`), by name.
    fn table_properties(store: &Store, cf: &str) -> std::collections::HashMap<String, f64> {
        let text = store.db.property_value_cf(store.cf(cf), "rocksdb.aggregated-table-properties").unwrap().unwrap();
        text.split("; ")
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }

    /// The log's files hold no bloom filter (nothing reads the log by point read) and larger
    /// blocks than the read models' (their index, held in memory by the open files, has a
    /// quarter of the entries); the read models' files keep their filters for point reads.
    #[test]
    fn the_logs_files_hold_no_filter_and_larger_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut x: u64 = 7;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let events_cf = store.cf(CF_EVENTS);
        for position in 0..4_000u64 {
            store.db.put_cf(events_cf, position.to_be_bytes(), noise(500)).unwrap();
            store.db.put_cf(store.cf(CF_STATE), key(&["u", "t", &position.to_string()]), noise(500)).unwrap();
        }
        store.flush().unwrap();
        let (log, state) = (table_properties(&store, CF_EVENTS), table_properties(&store, CF_STATE));
        let block =
            |p: &std::collections::HashMap<String, f64>| (p["raw key size"] + p["raw value size"]) / p["# data blocks"];
        assert_eq!(log["# entries"], 4_000.0, "{log:?}");
        assert_eq!(log["filter block size"], 0.0, "the log's files hold a filter: {log:?}");
        assert!(block(&log) >= 15_000.0, "the log's blocks hold {} bytes: {log:?}", block(&log));
        assert!(state["filter block size"] > 0.0, "the read models' files lost their filter: {state:?}");
        assert!(block(&state) <= 4_600.0, "the read models' blocks hold {} bytes: {state:?}", block(&state));
    }

    /// What `/healthz` and the RocksDB gauges show counts the subscribers' family too, and a
    /// clean stop's flush writes its memtable to files like every other family's.
    #[test]
    fn the_store_figures_count_every_familys_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let before = store.stats().unwrap();
        let entries = (0..2_000u32).map(|i| (key(&["t", &i.to_string()]), Some(vec![7u8; 1_000]))).collect();
        store.outbound().write(entries, false).unwrap();
        let written = store.stats().unwrap();
        let grew = written.memtable_bytes.saturating_sub(before.memtable_bytes);
        assert!(grew >= 2_000_000, "2 MB written to `outbound`, the memtables grew by {grew} bytes");
        store.flush().unwrap();
        let flushed = store.stats().unwrap();
        assert!(
            flushed.sst_files_bytes >= before.sst_files_bytes + 1_000_000,
            "`outbound` was not flushed to a file, or its file is not counted: {} -> {} bytes",
            before.sst_files_bytes,
            flushed.sst_files_bytes
        );
    }

    /// Scans through the prefix filters answer what a scan in key order answers, whichever files
    /// and memtable hold the keys: including scans that start inside one `tag 0 tenant 0 id 0`
    /// prefix and go on into others (a file whose filter has no entry for the start's prefix
    /// still holds later keys).
    #[test]
    fn scans_answer_the_same_with_prefix_filters_on_files_and_memtable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let put = |keys: &[Vec<u8>]| {
            let writes: Vec<_> = keys.iter().map(|k| (k.clone(), Some(b"v".to_vec()))).collect();
            store.commit(&[], writes.into_iter(), vec![], true).unwrap();
        };
        // One file with two groups' members and a time index, another with a third group's, then a
        // memtable with a fourth's.
        put(&[
            key(&["gm", "t", "alice", "g1"]),
            key(&["gm", "t", "carol", "g2"]),
            key(&["iu/lm", "t", "2026-01-01", "alice"]),
            key(&["iu/lm", "t", "2026-03-01", "carol"]),
            key(&["u", "t", "alice"]),
            key(&["u", "t", "carol"]),
        ]);
        store.flush().unwrap();
        put(&[key(&["gm", "t", "bob", "g1"]), key(&["iu/lm", "t", "2026-02-01", "bob"])]);
        store.flush().unwrap();
        put(&[key(&["gm", "t", "dave", "g3"]), key(&["u", "t", "dave"])]);

        let view = store.view();
        let last_parts = |keys: Vec<Vec<u8>>| -> Vec<String> { keys.iter().map(|k| keys::last_part(k)).collect() };
        use scimlog_projections::keys;
        let cases: &[(&str, Vec<u8>, Option<Vec<u8>>, &[&str])] = &[
            ("a group's members, in a file", keys::members("t", "alice"), None, &["g1"]),
            ("a group's members, in the second file", keys::members("t", "bob"), None, &["g1"]),
            ("a group's members, in the memtable", keys::members("t", "dave"), None, &["g3"]),
            ("a group with no members", keys::members("t", "erin"), None, &[]),
            ("a group id that is a prefix of another", keys::members("t", "car"), None, &[]),
            ("every member of a tenant's groups", keys::prefix(&[b"gm", b"t"]), None, &["g1", "g1", "g2", "g3"]),
            (
                "members after one: into other groups' prefixes",
                keys::prefix(&[b"gm", b"t"]),
                Some(key(&["gm", "t", "alice", "g1"])),
                &["g1", "g2", "g3"],
            ),
            (
                "time index after a time no file's filter holds",
                keys::prefix(&[b"iu/lm", b"t"]),
                Some(key(&["iu/lm", "t", "2026-01-15", "zed"])),
                &["bob", "carol"],
            ),
            ("every user", keys::users("t"), None, &["alice", "carol", "dave"]),
            ("users after one", keys::users("t"), Some(keys::user("t", "alice")), &["carol", "dave"]),
        ];
        for (name, prefix, after, want) in cases {
            let scanned = view.scan(prefix, after.as_deref(), usize::MAX).into_iter().map(|(k, _)| k).collect();
            assert_eq!(last_parts(scanned), *want, "scan: {name}");
            let keys_only = view.scan_keys(prefix, after.as_deref(), usize::MAX);
            assert_eq!(last_parts(keys_only), *want, "scan_keys: {name}");
        }
        assert!(view.take_error().is_none());
    }

    #[test]
    fn a_prefix_scan_uses_the_filters_only_within_one_prefix() {
        let cases: &[(&[u8], Option<usize>, Option<&[u8]>)] = &[
            (b"gm\0t\0alice\0", Some(11), Some(b"gm\0t\0alice\x01")),
            (b"gm\0t\0alice\0g1", Some(11), Some(b"gm\0t\0alice\0g2")),
            (b"gm\0t\0", None, Some(b"gm\0t\x01")),
            (b"u\0t\0alice", None, Some(b"u\0t\0alicf")),
            (b"", None, None),
            (b"\xff\xff", None, None),
        ];
        for (key, prefix_len, end) in cases {
            assert_eq!(state_prefix_len(key), *prefix_len, "{key:?}");
            assert_eq!(successor(key).as_deref(), *end, "{key:?}");
        }
    }
}
