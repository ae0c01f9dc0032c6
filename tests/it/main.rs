//! Integration tests: one binary, real HTTP, real RocksDB in temp dirs.

mod access;
mod audit;
mod auth;
mod bulk;
mod cluster;
mod conformance;
mod crash;
mod discovery;
mod entra;
mod erasure;
mod errors;
mod event_schemas;
mod groups;
mod hostile;
mod idp_replay;
mod listing;
mod nats;
mod openapi;
mod operations;
mod patch;
mod rfc;
mod support;
mod telemetry;
mod transport;
mod trust;
mod users;
