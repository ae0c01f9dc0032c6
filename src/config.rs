//! Configuration of `scimlog serve`: every flag has an environment variable and a default, and
//! every limit is a number here.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(clap::Args, Clone, Debug)]
pub struct ServeConfig {
    /// Read flags from this TOML file (keys are flag names: `max_scan = 100000`). Precedence:
    /// defaults < file < environment < command line. Unknown keys are an error.
    #[arg(long, env = "SCIMLOG_CONFIG", help_heading = "Server")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "SCIMLOG_LISTEN", default_value = "127.0.0.1:8080", help_heading = "Server")]
    pub listen: SocketAddr,
    /// `documentationUri` of `/ServiceProviderConfig`; by default this server's own `/docs`
    /// (the README, served from the binary).
    #[arg(long, env = "SCIMLOG_DOCUMENTATION_URL", help_heading = "Server")]
    pub documentation_url: Option<String>,
    /// Serve `GET /metrics` (Prometheus, OpenMetrics text) on this address too, without a token
    /// (an operator's network). Without it `/metrics` is on `--listen` for admin tokens only.
    #[arg(long, env = "SCIMLOG_METRICS_LISTEN", help_heading = "Server")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where the RocksDB store and the token file live.
    #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data", help_heading = "Server")]
    pub data_dir: PathBuf,
    /// The outbound provisioning targets (`scimlog outbound add` edits it; read again within a
    /// second of a change). Default: `<data-dir>/outbound.toml`.
    #[arg(long, env = "SCIMLOG_OUTBOUND_FILE", help_heading = "Outbound provisioning")]
    pub outbound_file: Option<PathBuf>,
    /// The base URL clients reach this server at, for `meta.location` (default: http://<listen>).
    #[arg(long, env = "SCIMLOG_PUBLIC_URL", help_heading = "Server")]
    pub public_url: Option<String>,
    /// Tenant of the bootstrap token and of the token created on first start.
    #[arg(long, env = "SCIMLOG_TENANT", default_value = "default", help_heading = "Authentication and keys")]
    pub tenant: String,
    /// A bootstrap bearer token (its hash is kept in memory only), named `bootstrap`.
    #[arg(long = "token", env = "SCIMLOG_TOKEN", hide_env_values = true, help_heading = "Authentication and keys")]
    pub bootstrap_token: Option<String>,
    /// A file holding the bootstrap token (instead of --token, which shows in the process list).
    #[arg(
        long,
        env = "SCIMLOG_TOKEN_FILE",
        conflicts_with = "bootstrap_token",
        help_heading = "Authentication and keys"
    )]
    pub token_file: Option<PathBuf>,
    /// An admin bearer token kept in memory only (named `bootstrap-admin`): for monitoring
    /// (`/healthz` details, `/metrics`) and operators, from a secret.
    #[arg(
        long = "admin-token",
        env = "SCIMLOG_ADMIN_TOKEN",
        hide_env_values = true,
        help_heading = "Authentication and keys"
    )]
    pub admin_token: Option<String>,
    /// A file holding the admin token (instead of --admin-token).
    #[arg(
        long,
        env = "SCIMLOG_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token",
        help_heading = "Authentication and keys"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// Serve without authentication (every request acts as `anonymous` in --tenant).
    #[arg(long, help_heading = "Authentication and keys")]
    pub insecure_no_auth: bool,
    /// File holding the master key (64 hex characters) that wraps the per-user data keys
    /// (default: `<data-dir>/master.key`, created on first start).
    #[arg(long, env = "SCIMLOG_MASTER_KEY_FILE", help_heading = "Authentication and keys")]
    pub master_key_file: Option<PathBuf>,
    /// The master key itself, as 64 hex characters (instead of a file).
    #[arg(
        long = "master-key",
        env = "SCIMLOG_MASTER_KEY",
        hide_env_values = true,
        hide = true,
        help_heading = "Authentication and keys"
    )]
    pub master_key_hex: Option<String>,
    /// Namespace of role and entitlement URNs (`urn:<ns>:role:...`); `testkube` accepts
    /// Testkube's URNs unchanged.
    #[arg(long, env = "SCIMLOG_URN_NAMESPACE", default_value = "scimlog", help_heading = "Roles and entitlements")]
    pub urn_namespace: String,
    /// The organization that environments and resource groups named by grants are created in.
    #[arg(
        long,
        env = "SCIMLOG_DEFAULT_ORGANIZATION",
        default_value = "default",
        help_heading = "Roles and entitlements"
    )]
    pub default_organization: String,
    /// How responses show roles and entitlements: `objects` (`[{"value": ...}]`, as Entra sends
    /// them) or `strings` (`["urn:..."]`, as Okta sends them).
    #[arg(long, env = "SCIMLOG_GRANT_SHAPE", value_enum, default_value_t = GrantShape::Objects, help_heading = "Roles and entitlements")]
    pub grant_shape: GrantShape,
    /// The shape for one tenant, overriding `--grant-shape`: `TENANT=strings|objects`; repeat for
    /// several tenants (`SCIMLOG_TENANT_GRANT_SHAPES`: comma-separated).
    #[arg(long = "tenant-grant-shape", env = "SCIMLOG_TENANT_GRANT_SHAPES", value_delimiter = ',', value_parser = parse_tenant_shape, help_heading = "Roles and entitlements")]
    pub tenant_grant_shapes: Vec<(String, GrantShape)>,
    /// Largest accepted request body.
    #[arg(long, env = "SCIMLOG_MAX_BODY_BYTES", default_value_t = 1_048_576, help_heading = "SCIM limits")]
    pub max_body_bytes: usize,
    /// Page size when a list request gives no `count`.
    #[arg(long, env = "SCIMLOG_DEFAULT_PAGE_SIZE", default_value_t = 100, help_heading = "SCIM limits")]
    pub default_page_size: usize,
    /// Largest page a list request gets; larger `count`s are clamped (RFC 7644 §3.4.2.4).
    #[arg(long, env = "SCIMLOG_MAX_PAGE_SIZE", default_value_t = 1000, help_heading = "SCIM limits")]
    pub max_page_size: usize,
    /// Longest accepted filter, in bytes.
    #[arg(long, env = "SCIMLOG_MAX_FILTER_LENGTH", default_value_t = 4096, help_heading = "SCIM limits")]
    pub max_filter_length: usize,
    /// Deepest accepted nesting of parentheses and value paths in a filter.
    #[arg(long, env = "SCIMLOG_MAX_FILTER_DEPTH", default_value_t = 16, help_heading = "SCIM limits")]
    pub max_filter_depth: usize,
    /// How many resources a filter on unindexed attributes may read before it is refused.
    #[arg(long, env = "SCIMLOG_MAX_SCAN", default_value_t = 200_000, help_heading = "SCIM limits")]
    pub max_scan: usize,
    /// Most groups whose name, grants and parent groups the access answers keep in memory (the
    /// names also name a user's groups in SCIM answers; emptied when a group's name, grants or
    /// parents change, or a scope is created; at the limit it starts over). The environments that
    /// checks find are kept beside them, within the same number.
    /// 0: none kept, every answer reads every group and environment from the store.
    #[arg(
        long,
        env = "SCIMLOG_ACCESS_CACHE_GROUPS",
        default_value_t = 100_000,
        help_heading = "Roles and entitlements"
    )]
    pub access_cache_groups: usize,
    /// An access answer (check, a user's access) whose expansion meets at most this many
    /// memberships is computed on the request's own worker: it reads about what a GET of a user
    /// with its groups reads. Larger ones go to the blocking pool (`--max-concurrent-reads`)
    /// with the whole `--max-scan` budget. 0: always the pool.
    #[arg(
        long,
        env = "SCIMLOG_ACCESS_INLINE_MEMBERSHIPS",
        default_value_t = 64,
        help_heading = "Roles and entitlements"
    )]
    pub access_inline_memberships: usize,
    /// Most members one request may name (a group's POST or PUT, or one PATCH's operations
    /// together): the single writer's work per request stays bounded.
    #[arg(long, env = "SCIMLOG_MAX_MEMBERS_PER_REQUEST", default_value_t = 20_000, help_heading = "SCIM limits")]
    pub max_members_per_request: usize,
    /// Most elements of one multi-valued attribute (emails, roles, ...), in a request and in the
    /// resource it makes.
    #[arg(long, env = "SCIMLOG_MAX_VALUES_PER_ATTRIBUTE", default_value_t = 1_000, help_heading = "SCIM limits")]
    pub max_values_per_attribute: usize,
    /// Most operations one PATCH may carry (Entra batches member changes into one PATCH).
    #[arg(long, env = "SCIMLOG_MAX_PATCH_OPERATIONS", default_value_t = 10_000, help_heading = "SCIM limits")]
    pub max_patch_operations: usize,
    /// Most operations in one `/Bulk` request (`maxOperations`); more get 413.
    #[arg(long, env = "SCIMLOG_BULK_MAX_OPERATIONS", default_value_t = 1000, help_heading = "SCIM limits")]
    pub bulk_max_operations: usize,
    /// Largest `/Bulk` body (`maxPayloadSize`); larger get 413.
    #[arg(long, env = "SCIMLOG_BULK_MAX_PAYLOAD_BYTES", default_value_t = 1_048_576, help_heading = "SCIM limits")]
    pub bulk_max_payload_bytes: usize,
    /// Whether `/ServiceProviderConfig` carries `RolesAndEntitlements`, as
    /// draft-ietf-scim-roles-entitlements asks of a server with `/Roles` and `/Entitlements`.
    /// Clients that refuse any attribute RFC 7643 does not define there (python scim2-client
    /// 0.13) fail their discovery on it: `false` leaves it out (the endpoints stay).
    #[arg(long, env = "SCIMLOG_ADVERTISE_ROLES_ENTITLEMENTS", default_value_t = true, action = clap::ArgAction::Set, help_heading = "Roles and entitlements")]
    pub advertise_roles_entitlements: bool,
    /// How long an RFC 9865 cursor stays valid, in seconds.
    #[arg(long, env = "SCIMLOG_CURSOR_TIMEOUT_S", default_value_t = 3600, help_heading = "SCIM limits")]
    pub cursor_timeout_s: u64,
    /// How many writes may wait for the writer; beyond it writes get 503 with Retry-After.
    #[arg(long, env = "SCIMLOG_WRITE_QUEUE_DEPTH", default_value_t = 4096, help_heading = "Writes and rate limits")]
    pub write_queue_depth: usize,
    /// How many of the waiting writes one tenant may hold: the queue cannot be filled by one
    /// tenant alone; beyond it that tenant's writes get 503 with Retry-After.
    #[arg(
        long,
        env = "SCIMLOG_WRITE_QUEUE_PER_TENANT",
        default_value_t = 2048,
        help_heading = "Writes and rate limits"
    )]
    pub write_queue_per_tenant: usize,
    /// Requests per second one token may make (a GCRA bucket per token); 0: no limit. Over it a
    /// request gets 429 with Retry-After.
    #[arg(long, env = "SCIMLOG_RATE_LIMIT_PER_S", default_value_t = 2000, help_heading = "Writes and rate limits")]
    pub rate_limit_per_s: u32,
    /// How many requests a token may make at once above its rate (the bucket's size).
    #[arg(long, env = "SCIMLOG_RATE_LIMIT_BURST", default_value_t = 4000, help_heading = "Writes and rate limits")]
    pub rate_limit_burst: u32,
    /// The rate for the tokens of one tenant, overriding the two above: `TENANT=RATE:BURST`;
    /// repeat for several tenants (`SCIMLOG_TENANT_RATE_LIMITS`: comma-separated).
    #[arg(long = "tenant-rate-limit", env = "SCIMLOG_TENANT_RATE_LIMITS", value_delimiter = ',', value_parser = crate::http::rate::parse_tenant_rate, help_heading = "Writes and rate limits")]
    pub tenant_rate_limits: Vec<(String, crate::http::rate::Rate)>,
    /// How many queued writes share one commit (one fsync).
    #[arg(long, env = "SCIMLOG_GROUP_COMMIT_MAX", default_value_t = 256, help_heading = "Writes and rate limits")]
    pub group_commit_max: usize,
    #[command(flatten, next_help_heading = "NATS")]
    pub nats: crate::bus::NatsConfig,
    #[command(flatten, next_help_heading = "Cluster")]
    pub cluster: crate::cluster::ClusterConfig,
    /// PEM certificate chain: serve HTTPS (TLS 1.2+) instead of HTTP; needs --tls-key.
    #[arg(long, env = "SCIMLOG_TLS_CERT", requires = "tls_key", help_heading = "Server")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SCIMLOG_TLS_KEY", requires = "tls_cert", help_heading = "Server")]
    pub tls_key: Option<PathBuf>,
    /// Most open connections; more are closed at once.
    #[arg(long, env = "SCIMLOG_MAX_CONNECTIONS", default_value_t = 1024, help_heading = "Connections and reads")]
    pub max_connections: usize,
    /// How long a client may take to send a request head (or a TLS handshake), and how long a
    /// kept-alive connection may sit idle before its next request: slow or silent clients
    /// (slowloris) are cut off.
    #[arg(
        long,
        env = "SCIMLOG_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000,
        help_heading = "Connections and reads"
    )]
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send a request body; slower ones get 408.
    #[arg(
        long,
        env = "SCIMLOG_BODY_READ_TIMEOUT_MS",
        default_value_t = 30_000,
        help_heading = "Connections and reads"
    )]
    pub body_read_timeout_ms: u64,
    /// How long a request with `Scimlog-Min-Position: p` waits for this node to have applied p
    /// before it is answered 503 (read-your-writes across nodes; see README "Read levels").
    #[arg(long, env = "SCIMLOG_MIN_POSITION_WAIT_MS", default_value_t = 2000, help_heading = "Connections and reads")]
    pub min_position_wait_ms: u64,
    /// Most events one `GET /api/v1/events` answers (`limit` is clamped to it).
    #[arg(long, env = "SCIMLOG_EVENTS_PAGE_MAX", default_value_t = 1000, help_heading = "Events API")]
    pub events_page_max: usize,
    /// Longest `wait` (seconds) a `GET /api/v1/events` long poll may ask for.
    #[arg(long, env = "SCIMLOG_EVENTS_WAIT_MAX_S", default_value_t = 30, help_heading = "Events API")]
    pub events_wait_max_s: u64,
    /// Reads that can scan (lists, searches, group renders, access expansion) running at once,
    /// off the async runtime; more wait their turn.
    #[arg(long, env = "SCIMLOG_MAX_CONCURRENT_READS", default_value_t = 8, help_heading = "Connections and reads")]
    pub max_concurrent_reads: usize,
    /// How long a read may wait for its turn before it is answered 503 with Retry-After.
    #[arg(long, env = "SCIMLOG_READ_WAIT_MS", default_value_t = 5_000, help_heading = "Connections and reads")]
    pub read_wait_ms: u64,
    /// Most group members one response renders (a group GET, or all groups of a list page);
    /// beyond it the request is refused (400 tooMany): ask with `excludedAttributes=members`.
    #[arg(long, env = "SCIMLOG_MAX_MEMBERS_RENDERED", default_value_t = 20_000, help_heading = "SCIM limits")]
    pub max_members_rendered: usize,
    /// RocksDB block cache (hot blocks of the log and read models), in MiB. With the memtable
    /// budget, it bounds the server's memory; the OS page cache holds the rest of the files.
    #[arg(long, env = "SCIMLOG_BLOCK_CACHE_MB", default_value_t = 64, help_heading = "Store")]
    pub block_cache_mb: usize,
    /// All RocksDB memtables together (recent writes not yet in files), in MiB.
    #[arg(long, env = "SCIMLOG_MEMTABLE_BUDGET_MB", default_value_t = 64, help_heading = "Store")]
    pub memtable_budget_mb: usize,
    /// How often the free pages inside the C allocator's heaps (RocksDB's memory: freed cache
    /// blocks, memtables) are handed back to the kernel, in ms; 0: never. Between 100 and
    /// 3600000. glibc only; see `malloc.rs`.
    #[arg(long, env = "SCIMLOG_MALLOC_TRIM_INTERVAL_MS", default_value_t = 10_000, help_heading = "Store")]
    pub malloc_trim_interval_ms: u64,
    /// On shutdown, how long to keep serving with `/readyz` at 503 before new connections are
    /// refused: the time a load balancer needs to see the instance unready (e.g. 5000 behind a
    /// Kubernetes Service). 0: stop accepting at once.
    #[arg(long, env = "SCIMLOG_SHUTDOWN_DELAY_MS", default_value_t = 0, help_heading = "Server")]
    pub shutdown_delay_ms: u64,
    /// On shutdown, how long in-flight requests may take to finish.
    #[arg(long, env = "SCIMLOG_DRAIN_TIMEOUT_MS", default_value_t = 10_000, help_heading = "Server")]
    pub drain_timeout_ms: u64,
    /// A SET poll stream (RFC 8936) for a receiver, as TENANT/NAME; repeat or separate with
    /// commas. Polled at `POST /api/v1/sets/streams/NAME/poll` with an events or admin token.
    #[arg(long, env = "SCIMLOG_SET_STREAMS", value_delimiter = ',', help_heading = "Events API")]
    pub set_stream: Vec<crate::sets::streams::StreamId>,
    /// A SET push stream (RFC 8935) as TENANT/NAME=URL: its SETs are POSTed to URL in log
    /// order (bearer token, if any, in `<data-dir>/set-push-secrets/NAME`); repeat or separate
    /// with commas.
    #[arg(long, env = "SCIMLOG_SET_PUSH", value_delimiter = ',', help_heading = "Events API")]
    pub set_push: Vec<crate::sets::push::PushTarget>,
    /// Let outbound targets and SET push receivers be loopback, private, link-local or reserved
    /// addresses. Off by default: those URLs are chosen by tenants' admins, and the server would
    /// otherwise send requests into its own network for them (cloud metadata, internal services).
    #[arg(long, env = "SCIMLOG_ALLOW_PRIVATE_NETWORKS", help_heading = "Events API")]
    pub allow_private_networks: bool,
    /// The key SETs are signed with (PKCS#8 ECDSA P-256, PEM or DER); default: one generated at
    /// the first start into `<data-dir>/set-signing-key.p8`.
    #[arg(long, env = "SCIMLOG_SET_SIGNING_KEY_FILE", help_heading = "Events API")]
    pub set_signing_key_file: Option<PathBuf>,
    /// Most SETs one poll answers (`maxEvents` is clamped to it).
    #[arg(long, env = "SCIMLOG_SET_POLL_MAX", default_value_t = 100, help_heading = "Events API")]
    pub set_poll_max: usize,
    /// Most SETs a stream's receiver may have acknowledged beyond the oldest one it has not
    /// (acknowledging out of order); past it, an acknowledgement is refused until the oldest
    /// is acknowledged. Bounds what a stream's state holds.
    #[arg(long, env = "SCIMLOG_SET_MAX_ACKED_AHEAD", default_value_t = 10_000, help_heading = "Events API")]
    pub set_max_acked_ahead: usize,
    /// Where the admin console is served (a path: `/admin`).
    #[arg(long, env = "SCIMLOG_CONSOLE_PATH", default_value = "/admin", help_heading = "Console")]
    pub console_path: String,
    /// Serve no admin console.
    #[arg(long, env = "SCIMLOG_NO_CONSOLE", help_heading = "Console")]
    pub no_console: bool,
    /// How long a console session lasts after its login, in seconds (60 to 604800).
    #[arg(long, env = "SCIMLOG_CONSOLE_SESSION_TTL_S", default_value_t = 28_800, help_heading = "Console")]
    pub console_session_ttl_s: u64,
    /// Most console sessions at once; a new login beyond it ends the oldest session.
    #[arg(long, env = "SCIMLOG_CONSOLE_MAX_SESSIONS", default_value_t = 1000, help_heading = "Console")]
    pub console_max_sessions: usize,
    /// Recent SCIM and /api/v1 requests kept in memory for the console's Requests page (0 to
    /// 100000; no bodies, gone at restart).
    #[arg(long, env = "SCIMLOG_REQUEST_LOG_SIZE", default_value_t = 1000, help_heading = "Console")]
    pub request_log_size: usize,
    /// `scimlog outbound run --target T`: this process is an outbound runner, a copy of a
    /// directory folded from its NATS stream that runs the one target T and refuses writes.
    #[arg(skip)]
    pub runner: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GrantShape {
    Objects,
    Strings,
}

fn parse_tenant_shape(s: &str) -> Result<(String, GrantShape), String> {
    let (tenant, shape) = s.split_once('=').ok_or_else(|| format!("expected TENANT=strings|objects, got {s:?}"))?;
    let shape = match shape {
        "strings" => GrantShape::Strings,
        "objects" => GrantShape::Objects,
        other => return Err(format!("shape must be strings or objects, got {other:?}")),
    };
    Ok((tenant.to_string(), shape))
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    config: ServeConfig,
}

/// A trim holds each allocator arena's lock while it walks it: more often than this would be
/// busywork.
const MALLOC_TRIM_MIN_MS: u64 = 100;

impl ServeConfig {
    /// The defaults (and SCIMLOG_* variables) with another data dir: for tests and tools.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> ServeConfig {
        let mut c = Wrapper::parse_from(["scimlog"]).config;
        c.data_dir = data_dir.into();
        c
    }

    /// Refuses limits that would make the server refuse everything or never bound anything: a
    /// zero where at least one is needed. Checked once at start, with the flag named.
    pub fn validate(&self) -> anyhow::Result<()> {
        let at_least_one = [
            ("--max-body-bytes", self.max_body_bytes),
            ("--max-page-size", self.max_page_size),
            ("--max-scan", self.max_scan),
            ("--max-patch-operations", self.max_patch_operations),
            ("--max-members-per-request", self.max_members_per_request),
            ("--max-values-per-attribute", self.max_values_per_attribute),
            ("--max-members-rendered", self.max_members_rendered),
            ("--max-concurrent-reads", self.max_concurrent_reads),
            ("--events-page-max", self.events_page_max),
            ("--set-poll-max", self.set_poll_max),
            ("--set-max-acked-ahead", self.set_max_acked_ahead),
            ("--write-queue-depth", self.write_queue_depth),
            ("--write-queue-per-tenant", self.write_queue_per_tenant),
            ("--group-commit-max", self.group_commit_max),
            ("--max-connections", self.max_connections),
        ];
        for (flag, value) in at_least_one {
            anyhow::ensure!(value >= 1, "{flag} must be at least 1, got {value}");
        }
        anyhow::ensure!(
            (60..=604_800).contains(&self.console_session_ttl_s),
            "--console-session-ttl-s must be between 60 and 604800, got {}",
            self.console_session_ttl_s
        );
        anyhow::ensure!(self.console_max_sessions >= 1, "--console-max-sessions must be at least 1");
        anyhow::ensure!(
            self.malloc_trim_interval_ms == 0
                || (MALLOC_TRIM_MIN_MS..=3_600_000).contains(&self.malloc_trim_interval_ms),
            "--malloc-trim-interval-ms must be 0 (never) or between {MALLOC_TRIM_MIN_MS} and 3600000, got {}",
            self.malloc_trim_interval_ms
        );
        anyhow::ensure!(
            self.request_log_size <= 100_000,
            "--request-log-size must be at most 100000, got {}",
            self.request_log_size
        );
        let mut names: Vec<&crate::sets::streams::StreamId> = self.set_stream.iter().collect();
        names.extend(self.set_push.iter().map(|p| &p.id));
        for (i, id) in names.iter().enumerate() {
            anyhow::ensure!(
                !names[..i].contains(id),
                "SET stream {}/{} is configured twice (--set-stream, --set-push)",
                id.tenant,
                id.name
            );
        }
        if !self.no_console {
            crate::http::console::check_path(&self.console_path)
                .map_err(|why| anyhow::anyhow!("--console-path {:?}: {why}", self.console_path))?;
        }
        if self.runner.is_some() {
            let why = "scimlog outbound run needs --nats-url (the directory's event stream it copies)";
            anyhow::ensure!(self.nats.nats_url.is_some(), "{why}");
            anyhow::ensure!(!self.cluster.cluster, "scimlog outbound run is not a cluster node: leave out --cluster");
            anyhow::ensure!(self.cluster.apply_batch_max >= 1, "--apply-batch-max must be at least 1");
        }
        if self.cluster.cluster {
            anyhow::ensure!(self.nats.nats_url.is_some(), "--cluster needs --nats-url (the cluster's log is on NATS)");
            anyhow::ensure!(self.cluster.lease_ttl_ms >= 300, "--lease-ttl-ms must be at least 300");
            anyhow::ensure!(self.cluster.apply_batch_max >= 1, "--apply-batch-max must be at least 1");
        }
        Ok(())
    }

    /// What one write may ask of the writer.
    pub fn write_limits(&self) -> crate::command::WriteLimits {
        crate::command::WriteLimits {
            members_per_request: self.max_members_per_request,
            values_per_attribute: self.max_values_per_attribute,
            member_visits: self.max_scan,
        }
    }

    pub fn store_memory(&self) -> crate::log::StoreMemory {
        crate::log::StoreMemory {
            block_cache_bytes: self.block_cache_mb << 20,
            memtable_budget_bytes: self.memtable_budget_mb.max(2) << 20,
        }
    }

    pub fn master_key_source(&self) -> crate::log::keys::MasterKeySource {
        crate::log::keys::MasterKeySource { file: self.master_key_file.clone(), hex: self.master_key_hex.clone() }
    }

    /// The grant shape responses use for `tenant`.
    pub fn grant_shape_for(&self, tenant: &str) -> GrantShape {
        self.tenant_grant_shapes.iter().find(|(t, _)| t == tenant).map(|(_, s)| *s).unwrap_or(self.grant_shape)
    }

    /// `<data-dir>/set-streams.toml`: the SET streams added by `scimlog sets add` or the API.
    pub fn set_streams_path(&self) -> PathBuf {
        crate::sets::config::path(&self.data_dir)
    }

    pub fn outbound_path(&self) -> PathBuf {
        self.outbound_file.clone().unwrap_or_else(|| crate::outbound::config::path(&self.data_dir))
    }

    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None if self.tls_cert.is_some() => format!("https://{}", self.listen),
            None => format!("http://{}", self.listen),
        }
    }
}
