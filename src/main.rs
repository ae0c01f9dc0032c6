// Every request allocates (JSON in and out, RocksDB values): glibc's malloc was a fifth of the
// server's CPU under load (`perf`, lookups at 1M users); mimalloc's thread-local pages are cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    match scimlog::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scimlog: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// RocksDB (C++) allocates with glibc's malloc, which keeps up to 8 arenas per core: the blocks
/// that the request workers and the blocking pool read spread over them, and each arena keeps
/// what was freed in it. At 1M users with 5M memberships (`scimlog-bench --users 1000000
/// --scenario create-users,access`, one build, 2 cores) the server held 399-401 MB with glibc's
/// default and 343-347 MB with `MALLOC_ARENA_MAX=2`. So: one arena per core (at least 2),
/// unless `MALLOC_ARENA_MAX` says otherwise. Called first, before any thread exists.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a limit that applies to arenas created after it.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}
