//! `scimlog`: the service and the CLI. All IO lives in this crate, each kind in one module.
//!
//! # Layout
//!
//! - [`cli`]: the `scimlog` command line (`serve`, `token`).
//! - [`config`]: [`config::ServeConfig`], every flag, variable, default and limit;
//!   [`config_file`]: `--config scimlog.toml` and `scimlog config show`.
//! - [`server`]: start, serve, drain and stop.
//! - [`http`]: the only module that knows axum and status codes; one file per endpoint family.
//! - [`command`]: pure decisions, request + current read model -> events or a refusal.
//! - [`log`]: the only module that knows RocksDB: the event log, the read-model store, and the
//!   single writer with group commit.
//! - [`auth`]: bearer tokens, stored as hashes.
//! - [`bus`]: the only module that knows NATS: the JetStream publisher and `scimlog tail`.
//! - [`cluster`]: cluster mode (`serve --cluster`): the role loop (follow the replicated log,
//!   lead while holding the lease), the writer's replication, this node's view of the cluster.
//! - [`outbound`]: provisioning onward: one connector per downstream SCIM target, a subscriber
//!   of the log with its own state (links, watermark, intents, parked objects).
//! - [`audit`]: reading the log back: hash-chain verification, export.
//! - [`access_cache`]: the access answers' group nodes, kept per group generation.
//! - [`files`]: private, atomic, locked files (keys, tokens) and the permission checks at start.
//! - [`sets`]: SCIM Security Event Tokens (RFC 9967): events rendered as signed SETs, the
//!   streams (poll, push, filters, feeds) and what their receivers acknowledged.
//! - [`net_guard`]: the SSRF guard for URLs tenants choose (outbound targets, push receivers).
//! - [`request_log`]: the recent requests and each token's health, in memory, for the console.
//! - [`malloc`]: the C allocator's housekeeping (RocksDB's memory): arenas, periodic trims.
//! - [`metrics`]: the Prometheus series, one registry per server, rendered at `GET /metrics`.
//! - [`telemetry`]: OpenTelemetry traces over OTLP (off unless `OTEL_EXPORTER_OTLP_ENDPOINT`),
//!   and the W3C `traceparent` a write stores with its events.
//!
//! A write goes HTTP -> `schemas` parsing -> `command::decide` (on the writer thread) -> events ->
//! one fsync'd RocksDB batch with the projections' writes -> response.

pub mod access_cache;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod command;
pub mod config;
pub mod config_file;
pub mod files;
pub mod http;
pub mod log;
pub mod malloc;
pub mod metrics;
pub mod net_guard;
pub mod outbound;
pub mod request_log;
pub mod server;
pub mod sets;
pub mod telemetry;

/// The git revision this binary was built from (`unknown` outside a checkout).
pub const GIT_SHA: &str = env!("SCIMLOG_GIT_SHA");
