//! The `scimlog` command line: `serve`, `token`, `erase`, `keys`, `audit`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::auth::Role;
use crate::config::ServeConfig;
use crate::log::keys::{KeyRing, MasterKey, MasterKeySource};
use crate::log::Store;
use scimlog_schemas::ResourceKind;

/// `scimlog --version`: the package version and the git revision it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SCIMLOG_GIT_SHA"), ")");

#[derive(Parser)]
#[command(name = "scimlog", version = VERSION, about = "Event-sourced SCIM 2.0 identity directory")]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// The data dir and master key of an existing store.
#[derive(Args, Clone)]
struct StoreArgs {
    #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
    data_dir: PathBuf,
    #[arg(long, env = "SCIMLOG_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    #[arg(long = "master-key", env = "SCIMLOG_MASTER_KEY", hide_env_values = true, hide = true)]
    master_key_hex: Option<String>,
}

impl StoreArgs {
    fn source(&self) -> MasterKeySource {
        MasterKeySource { file: self.master_key_file.clone(), hex: self.master_key_hex.clone() }
    }
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the effective configuration (defaults < --config file < environment < flags) as a
    /// config file, each value with where it came from; secrets redacted.
    Show(ServeConfig),
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve SCIM 2.0 over HTTP.
    Serve(ServeConfig),
    /// Print a shell completion script: `scimlog completions bash > /etc/bash_completion.d/scimlog`.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff): `scimlog man > scimlog.1`.
    #[command(hide = true)]
    Man,
    /// Print the OpenAPI 3.1 description of /api/v1 (as served at /api/v1/openapi.json), e.g. to
    /// generate a client: `scimlog openapi > openapi.json`.
    Openapi,
    /// The configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Exit 0 when the server at `--url` answers `GET /readyz` with 200, 1 otherwise: a
    /// container health check for images without curl.
    Healthcheck {
        /// The server's base URL (plain HTTP; with TLS, probe a plain listener or use curl).
        #[arg(long, env = "SCIMLOG_HEALTHCHECK_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Manage bearer tokens (works while the server runs).
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Outbound provisioning targets (downstream SCIM applications); `add` and `remove` work
    /// while the server runs (it follows the targets file within a second).
    Outbound {
        #[command(subcommand)]
        command: OutboundCmd,
    },
    /// SET streams (RFC 9967 events for receivers that do not speak NATS): `add` and `remove`
    /// work while the server runs (it follows `<data-dir>/set-streams.toml` within a second).
    Sets {
        #[command(subcommand)]
        command: SetsCmd,
    },
    /// Erase a person: delete the user if it still exists and destroy its data key, so that its
    /// personal values in the log can never be read again. Offline: with a server running, use
    /// POST /api/v1/users/{id}/erase with an admin token instead.
    Erase {
        /// `Users/<id>`.
        resource: String,
        /// Why (recorded in the `user.erased` event; no personal data).
        #[arg(long)]
        reason: String,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Master key operations.
    Keys {
        #[command(subcommand)]
        command: KeysCmd,
    },
    /// Read the log back.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Load a `scimlog audit export --sealed` into an empty data dir (needs the source's master
    /// key): hashes and chain are checked, events stored byte for byte, read models folded.
    Import {
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Rebuild every read model from the log, into RocksDB in batches (memory stays bounded):
    /// `--verify` folds into a scratch store inside the data dir (removed after; it needs disk for
    /// a second copy of the read models) and proves it equal to the live one, beside a running
    /// server; `--rebuild` replaces the live one in place (server stopped; if it fails, the read
    /// models are left marked stale and the next start rebuilds them).
    Replay {
        #[arg(long)]
        verify: bool,
        #[arg(long)]
        rebuild: bool,
        /// Read-model writes held in memory before they are written out.
        #[arg(long, default_value_t = crate::audit::REBUILD_BATCH_WRITES, value_parser = clap::builder::TypedValueParser::map(clap::value_parser!(u64).range(1..=4_194_304), |n| n as usize))]
        batch_writes: usize,
        #[command(flatten)]
        store: StoreArgs,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Print events from NATS as JSON lines, from a durable consumer that resumes where it left
    /// off (explicit acks: an event not printed is delivered again).
    Tail {
        #[arg(long, env = "SCIMLOG_NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[arg(long, env = "SCIMLOG_NATS_STREAM", default_value = "SCIMLOG")]
        stream: String,
        /// One subject filter, e.g. 'scimlog.*.group.*' (events are scimlog.<tenant>.<resource>.<event>).
        #[arg(long, default_value = "scimlog.*.*.*")]
        subject: String,
        /// Durable consumer name; without it, an ephemeral consumer reads from the start.
        #[arg(long)]
        durable: Option<String>,
    },
    /// Send a range of the log to NATS again. Within the stream's duplicate window JetStream
    /// drops them; beyond it they are appended again and consumers de-duplicate by event id.
    Republish {
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        nats: crate::bus::NatsConfig,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token and print it once; only its hash is stored.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long, value_enum, default_value_t = Role::Scim)]
        role: Role,
        #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
        data_dir: PathBuf,
    },
    /// Revoke a token by name; takes effect at the next request.
    Revoke {
        #[arg(long)]
        name: String,
        #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
        data_dir: PathBuf,
    },
    /// List token names, tenants and roles (never the tokens).
    List {
        #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum SetsCmd {
    /// Add a stream: poll (RFC 8936) without --url, push (RFC 8935) with it.
    Add {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        name: String,
        /// The receiver's endpoint: SETs are POSTed there in log order.
        #[arg(long)]
        url: Option<String>,
        /// A file holding the push receiver's bearer token (default:
        /// `<data-dir>/set-push-secrets/<name>`), read at each attempt.
        #[arg(long, requires = "url")]
        token_file: Option<PathBuf>,
        /// Carry only these event URIs (repeat or separate with commas; default: all).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// A feed: carry the user members of these groups (ids), with feed:add and
        /// feed:remove as they join and leave (repeat or separate with commas).
        #[arg(long = "group", value_delimiter = ',')]
        groups: Vec<String>,
        #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
        data_dir: PathBuf,
    },
    /// Remove a stream (what its receiver acknowledged stays in the store).
    Remove {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
        data_dir: PathBuf,
    },
    /// The file's streams, each with its watermark and lag (read beside a running server).
    List {
        #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum OutboundCmd {
    /// Add a target: the secret is named by --token-file (or --token-env), never stored.
    Add {
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        name: String,
        /// The target's SCIM base URL.
        #[arg(long)]
        url: String,
        /// A file holding the bearer token (read when needed; a rotated token is picked up).
        #[arg(long, conflicts_with = "token_env", required_unless_present = "token_env")]
        token_file: Option<PathBuf>,
        /// An environment variable (of the server) holding the bearer token.
        #[arg(long)]
        token_env: Option<String>,
        #[arg(long, value_enum, default_value_t = ProfileArg::Generic)]
        profile: ProfileArg,
        /// What a user deleted here becomes remotely (an erasure always DELETEs).
        #[arg(long, value_enum, default_value_t = DeprovisionArg::Deactivate)]
        deprovision: DeprovisionArg,
        /// `dry-run`: real reads, writes journaled and never sent, own watermark.
        #[arg(long, value_enum, default_value_t = ModeArg::Live)]
        mode: ModeArg,
        /// Scope: provision only the user members of these groups (ids; repeat or separate
        /// with commas), with those groups; default: the whole tenant.
        #[arg(long = "group", value_delimiter = ',')]
        groups: Vec<String>,
        /// Scope: provision the holders of this role (a URN; directly or through a group;
        /// repeat for more). With --group, the union.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Scope: provision the holders of this entitlement (a URN; repeat for more).
        #[arg(long = "entitlement")]
        entitlements: Vec<String>,
        /// In cluster mode, the node (its --node-id) that runs the target.
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        file: OutboundFileArgs,
    },
    /// Replay the whole history into another SCIM server (a throwaway one, to try a mapping or
    /// a profile before go-live): adds a live copy of the target (tenant, scope, profile,
    /// mapping, knobs) named --name, at --into, which starts from position 0. Remove it with
    /// `outbound remove` when done.
    Replay {
        #[arg(long)]
        target: String,
        /// The SCIM base URL to replay into.
        #[arg(long)]
        into: String,
        /// A file holding its bearer token.
        #[arg(long)]
        token_file: PathBuf,
        /// The copy's name (default: <target>-replay).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        file: OutboundFileArgs,
    },
    /// Run one target outside the directory's server: a process with its own data dir that
    /// folds the directory's NATS stream (a durable consumer, `scimlog-outbound-<target>`) into
    /// a copy at the same positions and provisions from it. Takes `scimlog serve`'s flags
    /// (--nats-url and --nats-stream name the directory's stream; --listen serves the copy's
    /// reads, /healthz, /metrics and the outbound admin API; writes are refused).
    Run {
        /// The target of the targets file (--outbound-file, default <data-dir>/outbound.toml).
        #[arg(long)]
        target: String,
        #[command(flatten)]
        serve: Box<crate::config::ServeConfig>,
    },
    /// Remove a target (its state in the store stays).
    Remove {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        file: OutboundFileArgs,
    },
    /// Each target: watermark, lag in positions, linked objects, parked objects with their
    /// reason (read from the store, beside a running server).
    Status {
        #[command(flatten)]
        file: OutboundFileArgs,
        /// Parked entries listed per target at most.
        #[arg(long, default_value_t = 20)]
        parked: usize,
    },
    /// One object of a target: its remote id, when it was last sent, an open create intent, why
    /// it is parked.
    Explain {
        #[arg(long)]
        target: String,
        /// `Users/<id>` or `Groups/<id>`.
        resource: String,
        #[command(flatten)]
        file: OutboundFileArgs,
    },
    /// Try every parked object of a target again now (through the running server).
    Retry {
        #[arg(long)]
        target: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Send the deprovisions the deletion breaker holds (through the running server).
    ApproveDeletes {
        #[arg(long)]
        target: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// From position 0 again, every linked object sent whole (through the running server).
    Resync {
        #[arg(long)]
        target: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Read every linked object back and report what differs: missing, drifted (attribute
    /// names), membership drift, orphaned and unmanaged remote objects; `--repair` sends the
    /// missing and drifted ones again (through the running server).
    Verify {
        #[arg(long)]
        target: String,
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print the exact requests the connector would send, from --from (default: its
    /// watermark) to the log's head: one line each, method, path and body. Only reads reach
    /// the target; nothing of its state changes (through the running server).
    Plan {
        #[arg(long)]
        target: String,
        /// The log position to plan from (0: the whole history, as a replay would).
        #[arg(long)]
        from: Option<u64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Forget one object's link; the remote object stays (through the running server).
    Unlink {
        #[arg(long)]
        target: String,
        /// `Users/<id>` or `Groups/<id>`.
        resource: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Where a running server's admin API is (the operator actions go through it: only the
/// connector writes its state).
#[derive(clap::Args)]
struct ServerArgs {
    #[arg(long, env = "SCIMLOG_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A file holding an admin token (or SCIMLOG_ADMIN_TOKEN).
    #[arg(long, env = "SCIMLOG_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct OutboundFileArgs {
    #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
    data_dir: PathBuf,
    /// Default: `<data-dir>/outbound.toml`.
    #[arg(long, env = "SCIMLOG_OUTBOUND_FILE")]
    outbound_file: Option<PathBuf>,
}

impl OutboundFileArgs {
    fn path(&self) -> PathBuf {
        self.outbound_file.clone().unwrap_or_else(|| crate::outbound::config::path(&self.data_dir))
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProfileArg {
    Generic,
    AwsIdentityCenter,
    Slack,
    GithubEmu,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeprovisionArg {
    Deactivate,
    Delete,
    None,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Live,
    DryRun,
    Paused,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Re-wrap every data key under a new master key (offline). Afterwards start the server with
    /// the new key; when the old one was `<data-dir>/master.key`, that file is replaced.
    Rotate {
        #[arg(long)]
        new_master_key_file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write a new random master key file (mode 0600).
    Generate { path: PathBuf },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the hash chain; print the event count and head hash, or the first broken position
    /// (and exit non-zero).
    Verify {
        #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
        data_dir: PathBuf,
        /// A head recorded earlier (`POSITION:HASH`, as this command prints it): the log must
        /// still hold it. Without one, events removed from the end go unnoticed. Repeatable.
        #[arg(long = "expect", value_name = "POSITION:HASH")]
        expect: Vec<crate::audit::Anchor>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Events as JSON lines, personal values opened (erased ones read "[erased]"), or with
    /// `--sealed` exactly as stored and hashed, preceded by the wrapped data keys, which is what
    /// `scimlog import` reads back.
    Export {
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
        #[arg(long)]
        sealed: bool,
        #[command(flatten)]
        store: StoreArgs,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Every event that touched a resource, oldest first: `Users/<id>`, `Groups/<id>` (also
    /// `Hosts/`, `Environments/`, `Organizations/`, `ResourceGroups/`, `Tokens/`), or
    /// `--user-name NAME`.
    History {
        resource: Option<String>,
        #[arg(long)]
        user_name: Option<String>,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Events by time, actor, type, tenant.
    Log {
        /// RFC 3339.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long)]
        actor: Option<String>,
        /// e.g. user.deactivated; may repeat.
        #[arg(long = "type")]
        types: Vec<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The directory (or one resource) as it stood at a time (RFC 3339) or log position.
    AsOf {
        at: String,
        resource: Option<String>,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Logs to stderr (`SCIMLOG_LOG` filter, `SCIMLOG_LOG_FORMAT=json`), and traces to OTLP when the
/// `OTEL_*` environment asks for them. The log lines are the same either way: the trace spans
/// (target `scimlog::trace`) go to the OpenTelemetry layer only.
fn init_logging() -> anyhow::Result<Option<crate::telemetry::Guard>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SCIMLOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(format!("{}=off", crate::telemetry::TARGET).parse()?);
    let json = std::env::var("SCIMLOG_LOG_FORMAT").is_ok_and(|f| f == "json");
    // Colours only on a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() };
    let (guard, traces) = match crate::telemetry::pipeline()? {
        Some((guard, tracer)) => {
            let only_ours =
                tracing_subscriber::filter::Targets::new().with_target(crate::telemetry::TARGET, tracing::Level::INFO);
            (Some(guard), Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_ours)))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(fmt.with_filter(filter)).with(traces).init();
    Ok(guard)
}

fn print_events(events: &[scimlog_schemas::Event], json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for e in events {
        if json {
            serde_json::to_writer(&mut out, e)?;
            writeln!(out)?;
        } else {
            let data = serde_json::to_value(&e.body)?["data"].to_string();
            writeln!(
                out,
                "{:>8}  {}  {:<22} {}/{} v{}  actor={} request={}  {}",
                e.position,
                e.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                e.event_type().as_str(),
                e.resource_type.endpoint(),
                e.resource_id,
                e.resource_version,
                e.actor,
                e.request_id,
                data
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

fn open_exclusive(data_dir: &Path) -> anyhow::Result<Store> {
    Store::open(data_dir).with_context(|| {
        "cannot open the store for writing: if a server runs on this data dir, stop it or use the admin API"
    })
}

/// The runtime of the commands that do IO asynchronously (serve, tail, republish, ...).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// Runs the command line; the process exit code is non-zero on any error.
pub fn main() -> anyhow::Result<()> {
    let (args, from_file) = crate::config_file::with_file(std::env::args_os().collect())?;
    let cli = Cli::parse_from(&args);
    // Kept to the end: dropping it exports the spans still buffered.
    let _traces = init_logging()?;
    match cli.command {
        Cmd::Serve(cfg) => runtime()?.block_on(crate::server::serve(cfg)),
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "scimlog", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Cmd::Openapi => {
            println!("{}", crate::http::openapi::document().to_pretty_json()?);
            Ok(())
        }
        Cmd::Config { command: ConfigCmd::Show(_) } => {
            print!("{}", crate::config_file::show(&args, &from_file)?);
            Ok(())
        }
        Cmd::Healthcheck { url, timeout_ms } => {
            let probe = healthcheck(&url);
            let timeout = std::time::Duration::from_millis(timeout_ms);
            let status = runtime()?
                .block_on(async { tokio::time::timeout(timeout, probe).await })
                .map_err(|_| anyhow::anyhow!("{url}/readyz did not answer within {timeout_ms} ms"))??;
            anyhow::ensure!(status == 200, "{url}/readyz answered {status}");
            Ok(())
        }
        Cmd::Token { command } => match command {
            TokenCmd::Create { name, tenant, role, data_dir } => {
                let token = crate::auth::create_token(&data_dir, &name, &tenant, role)?;
                println!("{token}");
                eprintln!("token {name:?} ({role:?}) for tenant {tenant:?} created; it is shown once, store it now");
                Ok(())
            }
            TokenCmd::Revoke { name, data_dir } => {
                crate::auth::revoke_token(&data_dir, &name)?;
                eprintln!("token {name:?} revoked");
                Ok(())
            }
            TokenCmd::List { data_dir } => {
                for t in crate::auth::list_tokens(&data_dir)? {
                    println!("{}\t{}\t{:?}\t{}", t.name, t.tenant, t.role, t.created_at.to_rfc3339());
                }
                Ok(())
            }
        },
        Cmd::Outbound { command } => outbound_cmd(command),
        Cmd::Sets { command } => sets_cmd(command),
        Cmd::Erase { resource, reason, tenant, store } => {
            let id = resource
                .strip_prefix("Users/")
                .filter(|id| !id.is_empty())
                .with_context(|| format!("expected Users/<id>, got {resource:?}"))?
                .to_string();
            let db = open_exclusive(&store.data_dir)?;
            let keys = Arc::new(KeyRing::open(db.clone(), &store.source(), &store.data_dir)?);
            let committed = runtime()?.block_on(crate::server::erase_offline(db, keys, &tenant, &id, &reason))?;
            for e in committed {
                println!("{}\t{}\t{}", e.position, e.event_type().as_str(), e.resource_id);
            }
            Ok(())
        }
        Cmd::Keys { command } => match command {
            KeysCmd::Generate { path } => {
                crate::log::keys::write_new_key_file(&path)?;
                eprintln!("wrote a new master key to {}", path.display());
                Ok(())
            }
            KeysCmd::Rotate { new_master_key_file, store } => {
                let db = open_exclusive(&store.data_dir)?;
                let ring = KeyRing::open(db, &store.source(), &store.data_dir)?;
                let new = MasterKey::from_file(&new_master_key_file)?;
                let n = ring.rotate(&new)?;
                let default = crate::log::keys::default_path(&store.data_dir);
                if ring.master_origin() == default.display().to_string() {
                    crate::log::keys::replace_key_file(&default, &new)?;
                    eprintln!("re-wrapped {n} data keys; {} now holds the new master key", default.display());
                } else {
                    eprintln!(
                        "re-wrapped {n} data keys; start the server with --master-key-file {}",
                        new_master_key_file.display()
                    );
                }
                Ok(())
            }
        },
        Cmd::Import { file, store, quiet } => {
            let db = open_exclusive(&store.data_dir)?;
            let ring = KeyRing::open(db.clone(), &store.source(), &store.data_dir)?;
            std::fs::File::open(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let bar = progress_bar(None, "checking", quiet);
            let open = || std::fs::File::open(&file).map(std::io::BufReader::new);
            let n = crate::audit::import_with(&db, &ring, open, &mut |p| match p {
                crate::audit::ImportProgress::Checked(n) => bar.set_position(n),
                crate::audit::ImportProgress::Written { done, total } => {
                    bar.set_message("writing");
                    bar.set_length(total);
                    bar.set_position(done);
                }
                crate::audit::ImportProgress::Folded { done, total } => {
                    bar.set_message("folding");
                    bar.set_length(total);
                    bar.set_position(done);
                }
            });
            bar.finish_and_clear();
            let n = n?;
            eprintln!("imported {n} events");
            Ok(())
        }
        Cmd::Replay { verify, rebuild, batch_writes, store, quiet } => {
            anyhow::ensure!(verify != rebuild, "give exactly one of --verify or --rebuild");
            let db = if rebuild { open_exclusive(&store.data_dir)? } else { Store::open_read_only(&store.data_dir)? };
            let ring = if rebuild {
                KeyRing::open(db.clone(), &store.source(), &store.data_dir)?
            } else {
                KeyRing::open_read_only(db.clone(), &store.source(), &store.data_dir)?
            };
            let head = db.head()?.position;
            let started = std::time::Instant::now();
            let bar = progress_bar(Some(head), "replaying", quiet);
            let batch = batch_writes;
            let mut progress = |p| bar.set_position(p);
            if rebuild {
                let done = crate::audit::rebuild(&db, &ring, batch, &mut progress);
                bar.finish_and_clear();
                done?;
                eprintln!("replayed {head} events in {:.2} s", started.elapsed().as_secs_f64());
                println!("rebuilt every read model from {head} events");
                return Ok(());
            }
            let rebuilt = crate::audit::rebuild_beside(&db, &ring, head, &store.data_dir, batch, &mut progress);
            bar.finish_and_clear();
            let rebuilt = rebuilt?;
            eprintln!("replayed {head} events in {:.2} s", started.elapsed().as_secs_f64());
            let d = crate::audit::compare_stores(&db, &rebuilt)?;
            if d.count == 0 {
                println!("ok: the read models rebuilt from {head} events equal the live ones");
                Ok(())
            } else {
                for (k, live, rebuilt) in &d.first {
                    println!("differs: {k}\n  live:    {live:?}\n  rebuilt: {rebuilt:?}");
                }
                anyhow::bail!("{} keys differ between the live and the rebuilt read models", d.count)
            }
        }
        Cmd::Tail { nats_url, stream, subject, durable } => {
            let opts =
                crate::bus::tail::TailOptions { url: nats_url, stream, subject, durable, max: None, idle_exit: None };
            let mut out = std::io::stdout();
            runtime()?.block_on(crate::bus::tail::tail(&opts, &mut out))?;
            Ok(())
        }
        Cmd::Republish { from, to, nats, store } => {
            let db = Store::open_read_only(&store.data_dir)?;
            let ring = KeyRing::open_read_only(db.clone(), &store.source(), &store.data_dir)?;
            let (sent, dup) = runtime()?.block_on(crate::bus::republish(&nats, &db, &ring, from, to))?;
            eprintln!("republished {sent} events ({dup} dropped by JetStream as duplicates)");
            Ok(())
        }
        Cmd::Audit { command } => match command {
            AuditCmd::Verify { data_dir, expect, quiet } => {
                let db = Store::open_read_only(&data_dir)?;
                let bar = progress_bar(Some(db.head()?.position), "verifying", quiet);
                let v = crate::audit::verify_with(&db, &mut |n| bar.set_position(n));
                bar.finish_and_clear();
                let v = v?;
                crate::audit::check_anchors(&db, &v, &expect)?;
                println!("ok: {} events, head position {}, head hash {}", v.count, v.head_position, v.head_hash);
                if !expect.is_empty() {
                    println!("ok: the log holds the {} recorded anchor(s)", expect.len());
                }
                println!("record the head to check later: --expect {}:{}", v.head_position, v.head_hash);
                Ok(())
            }
            AuditCmd::Export { from, to, sealed, store, quiet } => {
                let db = Store::open_read_only(&store.data_dir)?;
                let last = to.unwrap_or(db.head()?.position);
                let bar = progress_bar(Some(last), "exporting", quiet);
                let mut progress = |p: u64| bar.set_position(p);
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                if sealed {
                    if let Ok(ring) = KeyRing::open_read_only(db.clone(), &store.source(), &store.data_dir) {
                        crate::audit::export_keys(&ring, &mut out)?;
                    }
                    let keys = &scimlog_schemas::personal::NoKeys;
                    crate::audit::export_with(&db, keys, from, to, false, &mut out, &mut progress)?;
                } else {
                    let ring = KeyRing::open_read_only(db.clone(), &store.source(), &store.data_dir)?;
                    crate::audit::export_with(&db, &ring, from, to, true, &mut out, &mut progress)?;
                }
                use std::io::Write;
                out.flush()?;
                Ok(())
            }
            AuditCmd::History { resource, user_name, tenant, json, store } => {
                let db = Store::open_read_only(&store.data_dir)?;
                let ring = KeyRing::open_read_only(db.clone(), &store.source(), &store.data_dir)?;
                let (kind, id) = match (resource.as_deref(), user_name.as_deref()) {
                    (Some(r), None) => parse_resource(r)?,
                    (None, Some(n)) => (
                        ResourceKind::User,
                        crate::audit::user_id_by_name(&db, &ring, &tenant, n)?
                            .with_context(|| format!("no user named {n:?} in tenant {tenant:?}"))?,
                    ),
                    _ => anyhow::bail!("give Users/<id>, Groups/<id> or --user-name"),
                };
                print_events(&crate::audit::history(&db, &ring, &tenant, kind, &id)?, json)
            }
            AuditCmd::Log { since, until, actor, types, tenant, json, store } => {
                let db = Store::open_read_only(&store.data_dir)?;
                let ring = KeyRing::open_read_only(db.clone(), &store.source(), &store.data_dir)?;
                let filter = crate::audit::EventFilter { since, until, actor, types, tenant };
                print_events(&crate::audit::log(&db, &ring, &filter)?, json)
            }
            AuditCmd::AsOf { at, resource, tenant, store } => {
                let db = Store::open_read_only(&store.data_dir)?;
                let ring = KeyRing::open_read_only(db.clone(), &store.source(), &store.data_dir)?;
                let position = match at.parse::<u64>() {
                    Ok(p) => p,
                    Err(_) => {
                        let t = chrono::DateTime::parse_from_rfc3339(&at)
                            .with_context(|| format!("{at:?} is neither a position nor an RFC 3339 time"))?;
                        crate::audit::position_at(&db, t.with_timezone(&chrono::Utc))?
                    }
                };
                let kv = crate::audit::fold_until(&db, &ring, Some(position), &mut |p| eprintln!("... position {p}"))?;
                let out = match resource.as_deref() {
                    None => crate::audit::summary(&kv, &tenant),
                    Some(r) => {
                        let (kind, id) = match r.split_once('/') {
                            Some(("Users", id)) => (scimlog_schemas::ResourceKind::User, id),
                            Some(("Groups", id)) => (scimlog_schemas::ResourceKind::Group, id),
                            _ => anyhow::bail!("expected Users/<id> or Groups/<id>, got {r:?}"),
                        };
                        crate::audit::render(&kv, &tenant, kind, id)
                            .with_context(|| format!("{r} did not exist at position {position}"))?
                    }
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"asOfPosition": position, "state": out}))?
                );
                Ok(())
            }
        },
    }
}

/// `Users/<id>`, `Groups/<id>`, `Hosts/<id>`, ...: a resource kind by its endpoint, and an id.
fn parse_resource(r: &str) -> anyhow::Result<(ResourceKind, String)> {
    const KINDS: [ResourceKind; 7] = [
        ResourceKind::User,
        ResourceKind::Group,
        ResourceKind::Organization,
        ResourceKind::Environment,
        ResourceKind::ResourceGroup,
        ResourceKind::Host,
        ResourceKind::Token,
    ];
    let (endpoint, id) = r.split_once('/').with_context(|| format!("expected Users/<id> or Groups/<id>, got {r:?}"))?;
    let kind = KINDS.into_iter().find(|k| k.endpoint().eq_ignore_ascii_case(endpoint)).with_context(|| {
        let names: Vec<&str> = KINDS.iter().map(|k| k.endpoint()).collect();
        format!("{endpoint:?} is not one of {}", names.join(", "))
    })?;
    anyhow::ensure!(!id.is_empty(), "no id after {endpoint}/");
    Ok((kind, id.to_string()))
}

/// `GET <url>/readyz` over one plain HTTP/1.1 connection; the status code.
async fn healthcheck(url: &str) -> anyhow::Result<u16> {
    let uri: axum::http::Uri = format!("{}/readyz", url.trim_end_matches('/')).parse().context("--url is not a URL")?;
    anyhow::ensure!(uri.scheme_str() == Some("http"), "--url must be http://host:port (plain HTTP)");
    let host = uri.host().context("--url has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = axum::http::Request::get(uri.path())
        .header(axum::http::header::HOST, format!("{host}:{port}"))
        .body(axum::body::Body::empty())?;
    Ok(sender.send_request(request).await?.status().as_u16())
}

/// A progress bar on stderr (position/total, events/s, ETA), hidden when stderr is not a
/// terminal or with `--quiet`; without a total, a counter.
fn progress_bar(total: Option<u64>, what: &str, quiet: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(n) => (indicatif::ProgressBar::new(n), "{msg} [{bar:40}] {pos}/{len} events, {per_sec}, ETA {eta}"),
        None => (indicatif::ProgressBar::no_length(), "{msg} {pos} events, {per_sec}"),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_message(what.to_string());
    bar
}

fn sets_cmd(command: SetsCmd) -> anyhow::Result<()> {
    use crate::sets::config::{self, StreamConfig};
    match command {
        SetsCmd::Add { tenant, name, url, token_file, events, groups, data_dir } => {
            let token_file = token_file.map(|f| std::path::absolute(&f).unwrap_or(f));
            let c = StreamConfig { tenant, name: name.clone(), url, token_file, events, groups };
            config::add(&config::path(&data_dir), &data_dir, c, &[])?;
            eprintln!("SET stream {name:?} added; a running server serves it within a second");
            Ok(())
        }
        SetsCmd::Remove { tenant, name, data_dir } => {
            let id = format!("{tenant}/{name}").parse().map_err(|e: String| anyhow::anyhow!(e))?;
            config::remove(&config::path(&data_dir), &id)?;
            eprintln!("SET stream {name:?} removed");
            Ok(())
        }
        SetsCmd::List { data_dir } => {
            let streams = config::load(&config::path(&data_dir), &data_dir)?;
            let store = Store::open_read_only(&data_dir)?;
            let head = store.head()?.position;
            for s in &streams {
                let w = crate::sets::streams::load(&store.outbound(), &s.id)?.watermark;
                let delivery = s.push.as_ref().map_or("poll".to_string(), |p| format!("push {}", p.url));
                let scope = s.groups.as_ref().map_or("tenant".to_string(), |g| format!("groups={}", g.len()));
                println!(
                    "{}/{}	{delivery}	{scope}	events={}	watermark={w}	head={head}	lag={}",
                    s.id.tenant,
                    s.id.name,
                    s.uris().len(),
                    head.saturating_sub(w)
                );
            }
            Ok(())
        }
    }
}

fn outbound_cmd(command: OutboundCmd) -> anyhow::Result<()> {
    use crate::outbound::config::{self, Deprovision, Mode, TargetConfig};
    use crate::outbound::profile::Profile;
    use crate::outbound::state::{Kind, ParkedKey, State};
    match command {
        OutboundCmd::Add {
            tenant,
            name,
            url,
            token_file,
            token_env,
            profile,
            deprovision,
            mode,
            groups,
            roles,
            entitlements,
            node,
            file,
        } => {
            let c = TargetConfig {
                groups,
                roles,
                entitlements,
                node,
                token_file: token_file.map(|f| std::path::absolute(&f).unwrap_or(f)),
                token_env,
                profile: match profile {
                    ProfileArg::Generic => Profile::Generic,
                    ProfileArg::AwsIdentityCenter => Profile::AwsIdentityCenter,
                    ProfileArg::Slack => Profile::Slack,
                    ProfileArg::GithubEmu => Profile::GithubEmu,
                },
                deprovision: match deprovision {
                    DeprovisionArg::Deactivate => Deprovision::Deactivate,
                    DeprovisionArg::Delete => Deprovision::Delete,
                    DeprovisionArg::None => Deprovision::None,
                },
                mode: match mode {
                    ModeArg::Live => Mode::Live,
                    ModeArg::DryRun => Mode::DryRun,
                    ModeArg::Paused => Mode::Paused,
                },
                ..TargetConfig::new(&tenant, &name, &url)
            };
            config::add(&file.path(), c)?;
            eprintln!("target {name:?} added to {}; a running server starts it within a second", file.path().display());
            Ok(())
        }
        OutboundCmd::Replay { target, into, token_file, name, file } => {
            let name = name.unwrap_or_else(|| format!("{target}-replay"));
            let token_file = std::path::absolute(&token_file).unwrap_or(token_file);
            config::add_copy(&file.path(), &target, &name, &into, token_file)?;
            eprintln!("target {name:?} (a copy of {target:?}) added: a running server replays the history into {into}");
            Ok(())
        }
        OutboundCmd::Run { target, serve } => {
            let cfg = crate::config::ServeConfig { runner: Some(target), ..*serve };
            runtime()?.block_on(crate::server::serve(cfg))
        }
        OutboundCmd::Remove { name, file } => {
            config::remove(&file.path(), &name)?;
            eprintln!("target {name:?} removed");
            Ok(())
        }
        OutboundCmd::Status { file, parked } => {
            let targets = config::load(&file.path())?;
            let store = Store::open_read_only(&file.data_dir)?;
            let head = store.head()?.position;
            for t in &targets {
                let state = State::new(store.outbound(), t.name());
                let w = state.watermark()?;
                println!(
                    "{}\ttenant={}\tmode={:?}\turl={}\twatermark={w}\thead={head}\tlag={}\tusers={}\tgroups={}",
                    t.name(),
                    t.tenant(),
                    t.config.mode,
                    t.config.url,
                    head.saturating_sub(w),
                    state.count_links(Kind::User, usize::MAX)?,
                    state.count_links(Kind::Group, usize::MAX)?,
                );
                for (key, p) in state.all_parked(parked)? {
                    let what = match key {
                        ParkedKey::Object(k, id) => format!("{}/{id}", k.endpoint()),
                        ParkedKey::Membership { group, member } => format!("Groups/{group} member {member}"),
                    };
                    println!(
                        "  parked\t{what}\t{}\tattempts={}\tsince={}\t{}",
                        p.class, p.attempts, p.position, p.detail
                    );
                }
            }
            Ok(())
        }
        OutboundCmd::Retry { target, server } => outbound_action(&server, &target, "retry", None),
        OutboundCmd::ApproveDeletes { target, server } => outbound_action(&server, &target, "approve-deletes", None),
        OutboundCmd::Resync { target, server } => outbound_action(&server, &target, "resync", None),
        OutboundCmd::Verify { target, repair, server } => {
            outbound_action(&server, &target, if repair { "repair" } else { "verify" }, None)
        }
        OutboundCmd::Plan { target, from, server } => {
            outbound_action(&server, &target, "plan", Some(serde_json::json!({ "from": from })))
        }
        OutboundCmd::Unlink { target, resource, server } => {
            outbound_action(&server, &target, "unlink", Some(serde_json::json!({ "resource": resource })))
        }
        OutboundCmd::Explain { target, resource, file } => {
            let (kind, id) = match resource.split_once('/') {
                Some(("Users", id)) if !id.is_empty() => (Kind::User, id),
                Some(("Groups", id)) if !id.is_empty() => (Kind::Group, id),
                _ => anyhow::bail!("expected Users/<id> or Groups/<id>, got {resource:?}"),
            };
            let store = Store::open_read_only(&file.data_dir)?;
            let state = State::new(store.outbound(), &target);
            match state.link(kind, id)? {
                Some(l) => println!(
                    "linked\tremote id {}\tlast sent at position {}{}",
                    l.remote_id,
                    l.position,
                    if l.adopted { "\tadopted" } else { "" }
                ),
                None => println!("not linked"),
            }
            if let Some(i) = state.intent(kind, id)? {
                println!("create under way since position {} ({})", i.position, i.at.to_rfc3339());
            }
            if let Some(p) = state.parked(&ParkedKey::Object(kind, id.into()))? {
                println!(
                    "parked\t{}\tattempts={}\tsince position {}\tnext try {}\t{}",
                    p.class,
                    p.attempts,
                    p.position,
                    p.next_attempt.to_rfc3339(),
                    p.detail
                );
            }
            Ok(())
        }
    }
}

/// An operator action through the running server's admin API; prints what it did.
fn outbound_action(
    server: &ServerArgs,
    target: &str,
    action: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let token = match &server.admin_token_file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?.trim().to_string()
        }
        None => std::env::var("SCIMLOG_ADMIN_TOKEN").context("give --admin-token-file or SCIMLOG_ADMIN_TOKEN")?,
    };
    let url = format!("{}/api/v1/outbound/targets/{target}/{action}", server.url.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, answer) = runtime.block_on(async {
        let mut req = reqwest::Client::new().post(&url).bearer_auth(token);
        if let Some(b) = body {
            req = req.header("content-type", "application/scim+json").body(b.to_string());
        }
        let r = req.send().await.with_context(|| format!("cannot reach {url}"))?;
        let status = r.status().as_u16();
        anyhow::Ok((status, r.json::<serde_json::Value>().await.unwrap_or_default()))
    })?;
    match answer.get("done").and_then(serde_json::Value::as_str) {
        Some(done) if status == 200 => {
            println!("{done}");
            if let Some(report) = answer.get("report") {
                println!("{}", serde_json::to_string_pretty(report)?);
            }
            let requests = answer.pointer("/plan/requests").and_then(serde_json::Value::as_array);
            for r in requests.into_iter().flatten() {
                let body = r.get("body").map(|b| format!(" {b}")).unwrap_or_default();
                println!("{} {}{body}", r["method"].as_str().unwrap_or("?"), r["path"].as_str().unwrap_or("?"));
            }
            if answer.pointer("/plan/truncated") == Some(&serde_json::Value::Bool(true)) {
                println!("(cut at {} requests)", crate::outbound::connector::MAX_PLAN_REQUESTS);
            }
            Ok(())
        }
        _ => anyhow::bail!(
            "{url} answered {status}: {}",
            answer.get("detail").and_then(|d| d.as_str()).unwrap_or_default()
        ),
    }
}
