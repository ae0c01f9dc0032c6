//! Prometheus metrics: every series scimlog exposes, registered in one registry per server (no
//! global recorder, so servers in one process, as in the tests, keep their own figures).
//!
//! Layout:
//! - [`Metrics`]: the series, updated where things happen (HTTP middleware, writer, publisher);
//! - [`Scrape`]: what is read at scrape time (log head, queue, publisher, RocksDB, process);
//! - [`Metrics::render`]: the OpenMetrics text a Prometheus scrape gets (`GET /metrics`).
//!
//! Names follow Prometheus conventions: base units (`_seconds`, `_bytes`), counters end in
//! `_total` (added by the encoder). Labels are bounded sets: route templates (never raw paths),
//! token names (never tokens), event types, scimTypes; never an id, a userName or a path.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The OpenMetrics text content type a scrape is answered with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

// The labels counted on every request are `&'static str` where their values are a closed set
// (and a method the `http` crate has no constant for is named `other`): building them allocates
// only the route and the token's name.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub http_request_method: &'static str,
    pub http_route: std::sync::Arc<str>,
    pub http_response_status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub http_request_method: &'static str,
    pub http_route: std::sync::Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScimLabels {
    /// The token's name (an IdP connection), never the token.
    pub token: String,
    pub resource: &'static str,
    pub op: &'static str,
    /// `success`, `client_error` or `server_error`.
    pub outcome: &'static str,
    /// The error's scimType, or empty.
    pub scim_type: &'static str,
}

/// A request method as a label value: one of the methods HTTP defines, else `other` (a client
/// may send any token as a method, and a label's values stay a bounded set).
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Where an access answer was computed: `worker` (the request's own) or `pool` (blocking pool).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhereLabels {
    pub r#where: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// An outbound target (its configured name, never a URL or a token).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

/// A SET stream (its tenant and configured name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub tenant: String,
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetStateLabels {
    pub target: String,
    pub state: String,
}

/// An outbound target and a class (of parked objects) or an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetClassLabels {
    pub target: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetRequestLabels {
    pub target: String,
    pub method: String,
    /// The status code, or `error` when no answer came (timeout, reset).
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub git_sha: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn latency_buckets() -> Histogram {
    // 100 µs to ~26 s: a point read to a slow bulk.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

fn size_buckets() -> Histogram {
    // 1 to 4096 commands or events per commit.
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Every series. Cloning shares them (each is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: std::sync::Arc<Registry>,
    pub http_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    pub http_active: Family<RouteLabels, Gauge>,
    pub scim_requests: Family<ScimLabels, Counter>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    pub write_queue_rejected: Family<ReasonLabels, Counter>,
    pub events_written: Family<TypeLabels, Counter>,
    /// Access answers by where they were computed (`--access-inline-memberships`).
    pub access_answers: Family<WhereLabels, Counter>,
    pub batch_commands: Histogram,
    pub batch_events: Histogram,
    /// One RocksDB write batch with its fsync.
    pub write_duration: Histogram,
    /// A write as a request sees it: queued, decided, durable.
    pub commit_duration: Histogram,
    pub publisher_ack: Histogram,
    pub publisher_errors: Counter,
    /// `malloc::trim`: how long each took and the resident memory it gave back.
    malloc_trim_duration: Histogram,
    malloc_trimmed: Counter,
    head_position: Gauge,
    write_queue_depth: Gauge,
    publisher_position: Gauge,
    publisher_lag: Gauge,
    publisher_state: Family<StateLabels, Gauge>,
    rocksdb: RocksDbGauges,
    process: ProcessGauges,
    /// Requests the outbound connectors sent, by target, method and status.
    pub outbound_requests: Family<TargetRequestLabels, Counter>,
    /// Outcome events by target and outcome (`class`), and those lost to a full queue.
    pub outbound_outcomes: Family<TargetClassLabels, Counter>,
    pub outbound_outcomes_dropped: Counter,
    outbound: OutboundGauges,
    sets: SetGauges,
}

#[derive(Clone, Default)]
struct SetGauges {
    lag_positions: Family<StreamLabels, Gauge>,
    delivered: Family<StreamLabels, Gauge>,
    refused: Family<StreamLabels, Gauge>,
    failures: Family<StreamLabels, Gauge>,
}

/// A SET stream at scrape time.
#[derive(Clone, Debug)]
pub struct SetStreamScrape {
    pub tenant: String,
    pub stream: String,
    /// Log positions after the stream's watermark (not yet acknowledged, or not yet looked at).
    pub lag_positions: u64,
    /// A push stream's figures since start: delivered, refused, failures in a row.
    pub push: Option<(u64, u64, u32)>,
}

#[derive(Clone, Default)]
struct OutboundGauges {
    lag_positions: Family<TargetLabels, Gauge>,
    lag_seconds: Family<TargetLabels, FloatGauge>,
    parked: Family<TargetClassLabels, Gauge>,
    drift: Family<TargetClassLabels, Gauge>,
    health: Family<TargetStateLabels, Gauge>,
}

#[derive(Clone, Default)]
struct RocksDbGauges {
    live_data: Gauge,
    pending_compaction: Gauge,
    memtable: Gauge,
    block_cache: Gauge,
    running_compactions: Gauge,
    background_errors: Gauge,
}

#[derive(Clone, Default)]
struct ProcessGauges {
    cpu_seconds: FloatGauge,
    resident_memory: Gauge,
    open_fds: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[derive(Clone, Debug, Default)]
pub struct PublisherScrape {
    pub state: &'static str,
    pub states: Vec<&'static str>,
    pub published: u64,
}

/// What is read at scrape time, from the parts that own it.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub head_position: u64,
    pub write_queue_depth: u64,
    /// When a publisher runs: its state, every state it can be in, its published position.
    pub publisher: Option<PublisherScrape>,
    pub store: Option<crate::log::StoreStats>,
    /// Each outbound target's status.
    pub outbound: Vec<crate::outbound::StatusView>,
    /// Each SET stream.
    pub sets: Vec<SetStreamScrape>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Default::default(),
            http_duration: Family::new_with_constructor(latency_buckets as fn() -> Histogram),
            http_active: Family::default(),
            scim_requests: Family::default(),
            auth_failures: Family::default(),
            write_queue_rejected: Family::default(),
            events_written: Family::default(),
            access_answers: Family::default(),
            batch_commands: size_buckets(),
            batch_events: size_buckets(),
            write_duration: latency_buckets(),
            commit_duration: latency_buckets(),
            publisher_ack: latency_buckets(),
            publisher_errors: Counter::default(),
            malloc_trim_duration: latency_buckets(),
            malloc_trimmed: Counter::default(),
            head_position: Gauge::default(),
            write_queue_depth: Gauge::default(),
            publisher_position: Gauge::default(),
            publisher_lag: Gauge::default(),
            publisher_state: Family::default(),
            rocksdb: RocksDbGauges::default(),
            process: ProcessGauges::default(),
            outbound_requests: Family::default(),
            outbound_outcomes: Family::default(),
            outbound_outcomes_dropped: Counter::default(),
            outbound: OutboundGauges::default(),
            sets: SetGauges::default(),
        };
        let mut r = Registry::default();
        r.register(
            "http_server_request_duration_seconds",
            "HTTP requests by method, route template and status",
            m.http_duration.clone(),
        );
        r.register("http_server_active_requests", "HTTP requests in flight", m.http_active.clone());
        r.register(
            "scimlog_scim_requests",
            "SCIM requests by token name, resource, operation, outcome and scimType",
            m.scim_requests.clone(),
        );
        r.register("scimlog_auth_failures", "Refused credentials by reason", m.auth_failures.clone());
        r.register("scimlog_log_head_position", "Position of the last committed event", m.head_position.clone());
        r.register(
            "scimlog_log_commit_batch_commands",
            "Writes committed together (group commit)",
            m.batch_commands.clone(),
        );
        r.register("scimlog_log_commit_batch_events", "Events appended by one commit", m.batch_events.clone());
        r.register(
            "scimlog_log_write_duration_seconds",
            "One RocksDB write batch with its fsync",
            m.write_duration.clone(),
        );
        r.register(
            "scimlog_log_commit_duration_seconds",
            "A write from submission to its answer (queued, decided, durable)",
            m.commit_duration.clone(),
        );
        r.register("scimlog_write_queue_depth", "Writes waiting for the writer", m.write_queue_depth.clone());
        r.register(
            "scimlog_write_queue_rejected",
            "Writes refused with 503 because the queue (or the tenant's share) was full",
            m.write_queue_rejected.clone(),
        );
        r.register("scimlog_events_written", "Events appended to the log by type", m.events_written.clone());
        r.register(
            "scimlog_access_answers",
            "Access answers (checks, a user's access) by where they were computed: on the request's worker, \
             or on the blocking pool when they met more than --access-inline-memberships memberships",
            m.access_answers.clone(),
        );
        r.register(
            "scimlog_publisher_published_position",
            "Last log position known to be in the JetStream stream",
            m.publisher_position.clone(),
        );
        r.register(
            "scimlog_publisher_lag_events",
            "Committed events not yet acknowledged by JetStream",
            m.publisher_lag.clone(),
        );
        r.register(
            "scimlog_publisher_commit_to_ack_seconds",
            "From an event's commit to its JetStream acknowledgement",
            m.publisher_ack.clone(),
        );
        r.register("scimlog_publisher_state", "1 for the publisher's current state", m.publisher_state.clone());
        r.register(
            "scimlog_publisher_errors",
            "NATS failures that restarted the publisher's session",
            m.publisher_errors.clone(),
        );
        r.register("scimlog_rocksdb_live_data_bytes", "Estimated live data in RocksDB", m.rocksdb.live_data.clone());
        r.register(
            "scimlog_rocksdb_pending_compaction_bytes",
            "Bytes RocksDB estimates compaction must rewrite",
            m.rocksdb.pending_compaction.clone(),
        );
        r.register("scimlog_rocksdb_memtable_bytes", "Memtable memory", m.rocksdb.memtable.clone());
        r.register(
            "scimlog_rocksdb_block_cache_usage_bytes",
            "Block cache memory in use",
            m.rocksdb.block_cache.clone(),
        );
        r.register(
            "scimlog_rocksdb_running_compactions",
            "Compactions running now",
            m.rocksdb.running_compactions.clone(),
        );
        r.register(
            "scimlog_rocksdb_background_errors",
            "Background errors RocksDB has met since it opened",
            m.rocksdb.background_errors.clone(),
        );
        r.register("process_cpu_seconds", "User and system CPU time of the process", m.process.cpu_seconds.clone());
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            m.process.resident_memory.clone(),
        );
        r.register("process_open_fds", "Open file descriptors of the process", m.process.open_fds.clone());
        r.register(
            "scimlog_malloc_trim_duration_seconds",
            "One hand-back of the C allocator's free pages (--malloc-trim-interval-ms)",
            m.malloc_trim_duration.clone(),
        );
        r.register(
            "scimlog_malloc_trimmed_bytes",
            "Resident memory the C allocator's trims gave back",
            m.malloc_trimmed.clone(),
        );
        r.register(
            "scimlog_outbound_requests",
            "Requests sent to outbound targets by target, method and status",
            m.outbound_requests.clone(),
        );
        r.register(
            "scimlog_outbound_lag_positions",
            "Log positions an outbound target has not applied yet",
            m.outbound.lag_positions.clone(),
        );
        r.register(
            "scimlog_outbound_lag_seconds",
            "Age of the oldest event an outbound target has not applied yet",
            m.outbound.lag_seconds.clone(),
        );
        r.register(
            "scimlog_outbound_parked",
            "Objects an outbound target holds back, by class (rejected, conflict, transient, blocked, held, repair)",
            m.outbound.parked.clone(),
        );
        r.register(
            "scimlog_outbound_drift",
            "What the last verify of an outbound target found, by class (missing, drifted, membershipDrift, orphaned, unmanaged)",
            m.outbound.drift.clone(),
        );
        r.register(
            "scimlog_outbound_outcomes",
            "Outcome events of outbound targets by target and outcome (also on NATS when configured)",
            m.outbound_outcomes.clone(),
        );
        r.register(
            "scimlog_outbound_outcomes_dropped",
            "Outcome events not published because NATS was behind or away and the queue was full",
            m.outbound_outcomes_dropped.clone(),
        );
        r.register("scimlog_outbound_health", "1 for an outbound target's current health", m.outbound.health.clone());
        r.register(
            "scimlog_set_stream_lag_positions",
            "Log positions after a SET stream's watermark (not acknowledged yet)",
            m.sets.lag_positions.clone(),
        );
        r.register("scimlog_set_push_delivered", "SETs a push receiver accepted since start", m.sets.delivered.clone());
        r.register(
            "scimlog_set_push_refused",
            "SETs a push receiver refused (RFC 8935 error) since start",
            m.sets.refused.clone(),
        );
        r.register("scimlog_set_push_failures", "Failed push attempts in a row", m.sets.failures.clone());
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into(), git_sha: crate::GIT_SHA.into() })
            .set(1);
        r.register("scimlog_build_info", "The build: version and git revision", build);
        Metrics { registry: std::sync::Arc::new(r), ..m }
    }

    /// The metrics as OpenMetrics text, with the scrape-time figures read first.
    pub fn render(&self, scrape: &Scrape) -> String {
        self.head_position.set(scrape.head_position as i64);
        self.write_queue_depth.set(scrape.write_queue_depth as i64);
        if let Some(p) = &scrape.publisher {
            self.publisher_position.set(p.published as i64);
            self.publisher_lag.set(scrape.head_position.saturating_sub(p.published) as i64);
            for s in &p.states {
                self.publisher_state.get_or_create(&StateLabels { state: s.to_string() }).set((*s == p.state) as i64);
            }
        }
        if let Some(st) = &scrape.store {
            self.rocksdb.live_data.set(st.live_data_bytes as i64);
            self.rocksdb.pending_compaction.set(st.pending_compaction_bytes as i64);
            self.rocksdb.memtable.set(st.memtable_bytes as i64);
            self.rocksdb.block_cache.set(st.block_cache_bytes as i64);
            self.rocksdb.running_compactions.set(st.running_compactions as i64);
            self.rocksdb.background_errors.set(st.background_errors as i64);
        }
        // Removed targets leave the families.
        self.outbound.lag_positions.clear();
        self.outbound.lag_seconds.clear();
        self.outbound.parked.clear();
        self.outbound.drift.clear();
        self.outbound.health.clear();
        for t in &scrape.outbound {
            let l = TargetLabels { target: t.name.clone() };
            self.outbound.lag_positions.get_or_create(&l).set(t.lag_positions as i64);
            self.outbound.lag_seconds.get_or_create(&l).set(t.lag_seconds);
            if let Some(v) = &t.last_verify {
                for class in crate::outbound::connector::DRIFT_CLASSES {
                    let labels = TargetClassLabels { target: t.name.clone(), class: class.into() };
                    self.outbound.drift.get_or_create(&labels).set(v.counts.get(class).copied().unwrap_or(0) as i64);
                }
            }
            for class in crate::outbound::state::PARKED_CLASSES {
                let labels = TargetClassLabels { target: t.name.clone(), class: class.into() };
                let n = t.parked_by_class.get(class).copied().unwrap_or(0);
                self.outbound.parked.get_or_create(&labels).set(n as i64);
            }
            for h in crate::outbound::Health::ALL {
                let labels = TargetStateLabels { target: t.name.clone(), state: h.as_str().into() };
                self.outbound.health.get_or_create(&labels).set((h == t.health) as i64);
            }
        }
        self.sets.lag_positions.clear();
        for st in &scrape.sets {
            let l = StreamLabels { tenant: st.tenant.clone(), stream: st.stream.clone() };
            self.sets.lag_positions.get_or_create(&l).set(st.lag_positions as i64);
            if let Some((delivered, refused, failures)) = st.push {
                self.sets.delivered.get_or_create(&l).set(delivered as i64);
                self.sets.refused.get_or_create(&l).set(refused as i64);
                self.sets.failures.get_or_create(&l).set(failures as i64);
            }
        }
        if let Some(p) = process_figures() {
            self.process.cpu_seconds.set(p.cpu_seconds);
            self.process.resident_memory.set(p.resident_bytes as i64);
            self.process.open_fds.set(p.open_fds as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts refused credentials by why (`missing`, `invalid`, `forbidden`).
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    /// Counts an access answer computed on the request's `worker` or on the blocking `pool`.
    pub fn access_answered(&self, r#where: &str) {
        self.access_answers.get_or_create(&WhereLabels { r#where: r#where.into() }).inc();
    }

    /// Records one `malloc::trim`.
    pub fn malloc_trimmed(&self, released_bytes: u64, took: std::time::Duration) {
        self.malloc_trim_duration.observe(took.as_secs_f64());
        self.malloc_trimmed.inc_by(released_bytes);
    }

    /// Counts a refused write by why (`queue_full`, `tenant_share`).
    pub fn write_rejected(&self, reason: &str) {
        self.write_queue_rejected.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }
}

struct ProcessFigures {
    cpu_seconds: f64,
    resident_bytes: u64,
    open_fds: u64,
}

/// This process's CPU time, resident memory and open descriptors, from `/proc/self`.
fn process_figures() -> Option<ProcessFigures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which may hold spaces) start after its closing parenthesis;
    // utime and stime are fields 14 and 15, RSS (pages) is field 24.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    // SAFETY: sysconf only reads a system constant.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let cpu_ticks = field(14)? + field(15)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    Some(ProcessFigures {
        cpu_seconds: cpu_ticks as f64 / ticks.max(1) as f64,
        resident_bytes: field(24)? * page.max(1) as u64,
        open_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions_and_scrape_figures_show() {
        let m = Metrics::new();
        m.events_written.get_or_create(&TypeLabels { r#type: "user.created".into() }).inc();
        m.write_duration.observe(0.002);
        let text = m.render(&Scrape {
            head_position: 7,
            write_queue_depth: 2,
            publisher: Some(PublisherScrape {
                state: "publishing",
                states: vec!["publishing", "retrying"],
                published: 5,
            }),
            store: None,
            outbound: vec![],
            sets: vec![],
        });
        for line in [
            "scimlog_events_written_total{type=\"user.created\"} 1",
            "scimlog_log_head_position 7",
            "scimlog_write_queue_depth 2",
            "scimlog_publisher_lag_events 2",
            "scimlog_publisher_state{state=\"publishing\"} 1",
            "scimlog_publisher_state{state=\"retrying\"} 0",
            "scimlog_log_write_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(text.contains("scimlog_build_info{version=\""), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
