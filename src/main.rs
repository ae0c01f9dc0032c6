// Every request allocates (JSON in and out, RocksDB values): glibc's malloc was a fifth of the
// server's CPU under load (`perf`, lookups at 1M users); mimalloc's thread-local pages are cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    scimlog::malloc::tune_at_start();
    match scimlog::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scimlog: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
