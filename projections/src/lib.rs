//! `scimlog-projections`: the read models of scimlog as pure, infallible folds of events over a
//! small key-value trait. The service implements [`Kv`] on RocksDB; tests use [`MemKv`].
//!
//! # Layout
//!
//! - [`kv`]: the [`KvRead`]/[`Kv`] traits, the in-memory [`MemKv`] and the write [`Overlay`] the
//!   single writer stacks over the store so that one batch of commands sees its own writes.
//! - [`keys`]: every key layout (documents, indexes, memberships both ways), in one place.
//! - [`model`]: the stored documents, [`UserDoc`] and [`GroupDoc`], and [`StoredUser`], a user
//!   read with its attributes left as their JSON text.
//! - [`fold`]: [`apply`], one event into the read models. No IO beyond the trait, no clock: the
//!   event carries its time.
//! - [`access`]: grants by subject and scope, scopes, hosts, effective access with provenance.
//! - [`query`]: lookups and the query planner (filter -> index lookups + residual evaluation).
//!
//! A group's members are one key each, never a growing document: adding or removing a member
//! costs the same whatever the group's size. A member's own groups are one value, a list of at
//! most [`MemberOf::LISTED_MAX`] ids (one point read for a GET or an access check), which spills
//! into one key per group beyond: a change rewrites at most that list.

pub mod access;
pub mod fold;
pub mod keys;
pub mod kv;
pub mod model;
pub mod query;

pub use fold::apply;
pub use kv::{IndexBlinder, Kv, KvRead, MemKv, Overlay};
pub use model::{GroupDoc, Member, MemberOf, StoredUser, UserDoc, UserHead};
