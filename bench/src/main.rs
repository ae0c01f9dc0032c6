//! `scimlog-bench`: a load generator that plays IdP-like SCIM traffic against a scimlog server and
//! prints tables: one row per scenario, with the server's resident memory beside it. Loopback
//! only, bounded in requests and time.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p scimlog-bench -- --spawn --users 10000,100000,1000000
//! cargo run --release -p scimlog-bench -- --url http://127.0.0.1:8080 --token T --scenario create-users,lookup
//! ```
//!
//! Layout:
//! - `main.rs`: arguments, the order scenarios run in, the machine header;
//! - `load.rs`: the driver (N connections, bounded by count and time), percentiles, RSS;
//! - `target.rs`: the processes under test (the scimlog binary on a temp data dir, nats-server,
//!   the trivial handler), each its own process so that their figures are their own;
//! - `scenarios.rs`: one function per scenario, each seeding what it needs.
//!
//! Micro-benchmarks (criterion) live in `benches/micro.rs`: `cargo bench -p scimlog-bench`.

// The same allocator as the server's binary, for the replay measured in this process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client;
mod load;
mod scenarios;
mod target;

use std::time::Duration;

use anyhow::bail;
use clap::Parser;

#[derive(Parser, Clone)]
pub struct Args {
    /// Base URL of a running server (its SCIM root is <url>/scim/v2). Loopback only.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Bearer token for --url.
    #[arg(long, env = "SCIMLOG_TOKEN", default_value = "")]
    token: String,
    /// An admin token of --url, for /healthz's figures (with --spawn, the spawned server's).
    #[arg(long, env = "SCIMLOG_ADMIN_TOKEN", default_value = "")]
    admin_token: String,
    /// Start the scimlog binary as a child process on a temp data dir instead of using --url
    /// (needed by start-up, replay and publish, and for the server's RSS).
    #[arg(long)]
    spawn: bool,
    /// The scimlog binary for --spawn; by default the one beside this binary.
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// Comma-separated scenarios. Run at each directory size of --users, in this order:
    /// create-users (seeds up to the size), lookup, get-by-id, list-page, startup. Then once, at
    /// the largest size: okta-import (startIndex paging), cursor-import (RFC 9865 cursors),
    /// group-push, authentik-sync (every user PUT back unchanged, as authentik's full sync does),
    /// mixed, access (access checks through groups nested 3 deep, then 90% checks with 10% group
    /// pushes), two-tenants (a calm tenant's lookups while another floods), replay,
    /// publish, outbound (the directory replayed into a SCIM target, and write → target lag),
    /// healthz, floor (GET /ServiceProviderConfig: every SCIM layer, no store), trivial (an empty
    /// axum handler: the HTTP stack's ceiling), log-append (raw RocksDB commits: the disk's),
    /// stream-append (the replicated log stream of cluster mode on a 3-node NATS cluster),
    /// cluster-writes (creates through a cluster leader against a single node, and the failover
    /// time); the last two are not in the default list.
    #[arg(
        long,
        default_value = "create-users,lookup,get-by-id,startup,okta-import,cursor-import,group-push,authentik-sync,mixed,access,two-tenants,replay,publish,outbound,healthz,floor,trivial,log-append"
    )]
    scenario: String,
    /// Directory sizes, comma-separated: the per-size scenarios run at each.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    users: Vec<u64>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Concurrent connections of create-users (seeding): durable creates rely on group commit,
    /// which needs writes in flight together.
    #[arg(long, default_value_t = 64)]
    seed_connections: usize,
    /// Requests per measured scenario (upper bound).
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Time limit per measured scenario, in seconds.
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    /// How many times to run each read-only scenario (lookup, get-by-id, list-page, healthz,
    /// floor, trivial); the table shows the run of median throughput and the spread.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Time limit for seeding a directory size, in seconds.
    #[arg(long, default_value_t = 900)]
    seed_timeout_s: u64,
    /// A recent nats-server for stream-append (a 3-node cluster; 2.12+ for atomic batches).
    #[arg(long, env = "SCIMLOG_NATS_SERVER_RECENT", default_value_os_t = default_recent_nats())]
    nats_server_recent: std::path::PathBuf,
    /// Runs the trivial handler (used by the `trivial` scenario, in its own process).
    #[arg(long, hide = true)]
    serve_trivial: bool,
}

/// Where `./scripts/setup --test` installs nats-server 2.15.1.
fn default_recent_nats() -> std::path::PathBuf {
    let venv = std::env::var("SCIMLOG_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/scimlog-venv", std::env::var("HOME").unwrap_or_default()));
    std::path::PathBuf::from(venv).join("bin/nats-server")
}

impl Args {
    fn limit(&self) -> Duration {
        Duration::from_secs(self.duration_s)
    }
}

const PER_SIZE: &[&str] = &["create-users", "lookup", "get-by-id", "list-page", "startup"];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.serve_trivial {
        return target::serve_trivial();
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let scenarios: Vec<String> = args.scenario.split(',').map(|s| s.trim().to_string()).collect();
    let mut sizes = args.users.clone();
    sizes.sort_unstable();
    let mut bench = scenarios::Bench::new(args.clone()).await?;
    for &size in &sizes {
        for s in scenarios.iter().filter(|s| PER_SIZE.contains(&s.as_str())) {
            bench.run(s, size).await?;
        }
    }
    let largest = sizes.last().copied().unwrap_or(0);
    for s in scenarios.iter().filter(|s| !PER_SIZE.contains(&s.as_str())) {
        bench.run(s, largest).await?;
    }
    print_header(&args);
    load::print_table(&bench.rows);
    if !bench.startups.is_empty() {
        println!();
        scenarios::print_startups(&bench.startups);
    }
    Ok(())
}

/// What the figures were measured on: they mean little without it.
fn print_header(args: &Args) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    println!();
    println!(
        "machine: {} cores ({cpu}), {mem_gb:.0} GB; load generator on the same cores; {} connections ({} for create-users); server fsyncs every commit",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        args.connections,
        args.seed_connections,
    );
}

/// Benchmarks load loopback addresses only.
fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url.split("://").nth(1).unwrap_or_default();
    let host = if rest.starts_with("[::1]") { "[::1]" } else { rest.split(['/', ':']).next().unwrap_or_default() };
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
        bail!("refusing to load {host:?}: benchmarks target loopback addresses only");
    }
    Ok(())
}
