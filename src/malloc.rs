//! The C allocator's housekeeping. The Rust code allocates with mimalloc (`main.rs`); RocksDB,
//! in C++, allocates with glibc's malloc: its block cache, memtables and the open files'
//! indexes and filters, about half of the server's memory at a million users.
//!
//! glibc keeps what is freed inside its heaps and gives back only a free end of a heap. The block
//! cache frees and allocates blocks all the time, so the freed memory is spread through the
//! heaps: at 1M users with 5M memberships, after the access benchmark, glibc held 294 MB of
//! which 169 MB were in use (`malloc_stats`), and the process's RSS was 344 MB. `malloc_trim(0)`
//! hands the free pages inside the heaps back to the kernel (`MADV_DONTNEED`); called once there,
//! RSS fell to 235 MB. So the server calls it every `--malloc-trim-interval-ms`.
//!
//! Architecture Invariant: nothing here allocates for anyone or frees anything in use; a trim
//! only returns pages glibc already holds free. On other C libraries both calls do nothing.

use std::time::{Duration, Instant};

/// Sets glibc's malloc up for RocksDB, before any thread exists (called first in `main`). A
/// variable glibc reads itself (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`) still wins.
///
/// - One arena per core (at least 2). glibc's default is 8 per core: RocksDB's blocks read by
///   the request workers and the blocking pool spread over up to 16 arenas here, each keeping
///   what was freed in it. At 1M users with 5M memberships (`scimlog-bench --users 1000000
///   --scenario create-users,access`, one build, 2 cores) the server held 399-401 MB with
///   glibc's default and 343-347 MB with `MALLOC_ARENA_MAX=2`.
/// - Allocations of 1 MiB and more are mapped apart and unmapped when freed, always. glibc
///   starts at 128 KiB, but raises that threshold to the size of the largest mapped block ever
///   freed (up to 32 MiB): after the first memtable's 4 MiB blocks were freed, memtables and
///   compaction buffers came from the heaps and left holes in them that only a trim gives back.
///   The same comparison: 346-349 MB, then 290-299 MB with glibc's 128 KiB fixed. 1 MiB rather
///   than 128 KiB (by reasoning, not measured apart) keeps a group commit's write batch (a few
///   hundred KiB) in the heap instead of mapping and unmapping it on every commit; the
///   memtables' blocks are 4 MiB.
pub fn tune_at_start() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
            let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt only sets a limit that applies to arenas created after it.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: mallopt only sets the size from which later allocations are mapped apart.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        }
    }
}

/// The size from which glibc maps a block apart, kept fixed (see [`tune_at_start`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// What one trim did.
#[derive(Clone, Copy, Debug)]
pub struct Trimmed {
    /// The process's resident memory before and after, in bytes (0 when `/proc` is unreadable).
    pub resident_before: u64,
    pub resident_after: u64,
    pub took: Duration,
}

impl Trimmed {
    pub fn released(&self) -> u64 {
        self.resident_before.saturating_sub(self.resident_after)
    }
}

/// Gives the free pages inside glibc's heaps back to the kernel. It holds each arena's lock
/// while it walks that arena's free chunks, so it runs off the async runtime.
pub fn trim() -> Trimmed {
    let resident_before = resident_bytes();
    let started = Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory glibc holds; it frees nothing in use.
    unsafe {
        libc::malloc_trim(0);
    }
    Trimmed { resident_before, took: started.elapsed(), resident_after: resident_bytes() }
}

/// Trims every `interval` until `stop` changes; each trim is counted in `metrics`.
pub async fn trim_every(
    interval: Duration,
    metrics: crate::metrics::Metrics,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let Ok(t) = tokio::task::spawn_blocking(trim).await else { return };
        metrics.malloc_trimmed(t.released(), t.took);
        tracing::debug!(released = t.released(), took_us = t.took.as_micros() as u64, "malloc trim");
    }
}

/// This process's resident memory in bytes, from `/proc/self/statm` (0 when unreadable).
fn resident_bytes() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages = text.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory freed in the middle of a heap stays resident until a trim hands it back.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_trim_gives_back_the_pages_freed_inside_the_heap() {
        const PIECE: usize = 4 << 10;
        // 64 MiB in blocks the size of RocksDB's, on a thread of its own, so that the pieces come
        // from one arena that nothing else uses.
        const PIECES: usize = 16 << 10;
        let (freed, trimmed) = std::thread::spawn(|| {
            // SAFETY: each piece is written once, then freed once; the last is kept so that
            // the freed ones sit inside the heap, not at its end (which glibc trims itself).
            unsafe {
                let pieces: Vec<*mut u8> = (0..PIECES).map(|_| libc::malloc(PIECE) as *mut u8).collect();
                for &p in &pieces {
                    std::ptr::write_bytes(p, 0xA5, PIECE);
                }
                for &p in &pieces[..PIECES - 1] {
                    libc::free(p as *mut libc::c_void);
                }
                let freed = resident_bytes();
                let t = trim();
                libc::free(pieces[PIECES - 1] as *mut libc::c_void);
                (freed, t)
            }
        })
        .join()
        .unwrap();
        assert!(freed > 0, "/proc/self/statm is readable");
        assert!(
            trimmed.released() >= 32 << 20,
            "64 MiB freed inside the heap, {} MiB given back (resident {} -> {} MiB)",
            trimmed.released() >> 20,
            trimmed.resident_before >> 20,
            trimmed.resident_after >> 20
        );
    }
}
