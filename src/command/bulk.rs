//! Bulk (RFC 7644 §3.7), decided purely: each operation is decided against the read models as
//! the operations before it left them (their events folded provisionally into an overlay), with
//! `bulkId:` references resolved to the ids those operations created.

use std::collections::HashMap;

use scimlog_projections::{apply, query, KvRead, Overlay};
use scimlog_schemas::event::{Event, EventHash};
use scimlog_schemas::filter::FilterLimits;
use scimlog_schemas::patch::parse_patch;
use scimlog_schemas::resource::{parse_group, parse_user};
use scimlog_schemas::{SchemaError, ScimKind, ScimType};
use serde_json::Value;

use super::{decide_single, BulkMethod, BulkOp, BulkResult, Command, Ctx, Decision, Refusal};

/// Replaces every `"bulkId:<id>"` string with the id that operation created.
fn resolve_refs(v: &mut Value, created: &HashMap<String, String>) -> Result<(), SchemaError> {
    match v {
        Value::String(s) => {
            if let Some(r) = s.strip_prefix("bulkId:") {
                let id = created.get(r).ok_or_else(|| {
                    SchemaError::invalid_value(format!(
                        "bulkId {r:?} is not created by an earlier operation of this request"
                    ))
                })?;
                *s = id.clone();
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|i| resolve_refs(i, created)),
        Value::Object(o) => o.values_mut().try_for_each(|i| resolve_refs(i, created)),
        _ => Ok(()),
    }
}

/// `/Users`, `/Groups/{id}`, ... into (kind, id).
fn parse_path(path: &str, created: &HashMap<String, String>) -> Result<(ScimKind, Option<String>), SchemaError> {
    let bad = || {
        SchemaError::new(ScimType::InvalidPath, format!("bulk path {path:?} is not /Users, /Groups or /<type>/<id>"))
    };
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let kind = match parts.next() {
        Some(p) if p.eq_ignore_ascii_case("Users") => ScimKind::User,
        Some(p) if p.eq_ignore_ascii_case("Groups") => ScimKind::Group,
        _ => return Err(bad()),
    };
    let id = match parts.next() {
        None | Some("") => None,
        Some(id) if id.contains('/') => return Err(bad()),
        Some(id) => {
            let mut v = Value::String(id.to_string());
            resolve_refs(&mut v, created)?;
            v.as_str().map(String::from)
        }
    };
    Ok((kind, id))
}

fn to_command(
    op: &BulkOp,
    data: Value,
    kind: ScimKind,
    id: Option<String>,
    limits: FilterLimits,
    max_patch_operations: usize,
) -> Result<Command, SchemaError> {
    let need_id = || {
        id.clone().ok_or_else(|| {
            SchemaError::new(
                ScimType::InvalidPath,
                format!("{} needs /<type>/<id>, got {:?}", op.method.as_str(), op.path),
            )
        })
    };
    Ok(match (op.method, kind) {
        (BulkMethod::Post, _) if id.is_some() => {
            return Err(SchemaError::new(
                ScimType::InvalidPath,
                format!("POST goes to /Users or /Groups, got {:?}", op.path),
            ))
        }
        (BulkMethod::Post, ScimKind::User) => Command::CreateUser { id: op.new_id.clone(), input: parse_user(&data)? },
        (BulkMethod::Post, ScimKind::Group) => {
            Command::CreateGroup { id: op.new_id.clone(), input: parse_group(&data)? }
        }
        (BulkMethod::Put, ScimKind::User) => {
            Command::ReplaceUser { id: need_id()?, input: parse_user(&data)?, if_match: op.version }
        }
        (BulkMethod::Put, ScimKind::Group) => {
            Command::ReplaceGroup { id: need_id()?, input: parse_group(&data)?, if_match: op.version }
        }
        (BulkMethod::Patch, ScimKind::User) => Command::PatchUser {
            id: need_id()?,
            ops: parse_patch(&data, limits, max_patch_operations)?,
            if_match: op.version,
        },
        (BulkMethod::Patch, ScimKind::Group) => Command::PatchGroup {
            id: need_id()?,
            ops: parse_patch(&data, limits, max_patch_operations)?,
            if_match: op.version,
        },
        (BulkMethod::Delete, ScimKind::User) => Command::DeleteUser { id: need_id()?, if_match: op.version },
        (BulkMethod::Delete, ScimKind::Group) => Command::DeleteGroup { id: need_id()?, if_match: op.version },
    })
}

/// Stamps an event well enough for a provisional fold: nothing decided depends on time or
/// position, and the writer folds the real, stamped events again.
fn provisional(tenant: &str, new: &scimlog_schemas::NewEvent) -> Event {
    Event {
        id: uuid::Uuid::nil(),
        position: 0,
        tenant: tenant.to_string(),
        schema_version: new.body.event_type().schema_version(),
        body: new.body.clone(),
        resource_type: new.resource_type,
        resource_id: new.resource_id.clone(),
        resource_version: new.resource_version,
        recorded_at: chrono::DateTime::UNIX_EPOCH,
        actor: String::new(),
        request_id: String::new(),
        prev_hash: EventHash::GENESIS,
    }
}

pub(super) fn decide_bulk(
    kv: &impl KvRead,
    ctx: &Ctx,
    ops: Vec<BulkOp>,
    fail_on_errors: Option<usize>,
    limits: FilterLimits,
    max_patch_operations: usize,
) -> Decision {
    let mut overlay = Overlay::new(kv);
    let mut created: HashMap<String, String> = HashMap::new();
    let mut out = Decision::default();
    let mut errors = 0usize;
    for op in ops {
        if fail_on_errors.is_some_and(|n| n > 0 && errors >= n) {
            break;
        }
        let mut data = op.data.clone();
        let prepared =
            resolve_refs(&mut data, &created).and_then(|_| parse_path(&op.path, &created)).and_then(|(kind, id)| {
                to_command(&op, data, kind, id.clone(), limits, max_patch_operations).map(|c| (kind, c))
            });
        let decided = prepared
            .map_err(Refusal::Invalid)
            .and_then(|(kind, command)| decide_single(&overlay, ctx, command).map(|d| (kind, d)));
        match decided {
            Ok((kind, d)) => {
                for e in &d.events {
                    apply(&mut overlay, &provisional(ctx.tenant, e));
                }
                if let (BulkMethod::Post, Some(b)) = (op.method, &op.bulk_id) {
                    created.insert(b.clone(), d.resource_id.clone());
                }
                let version = match kind {
                    ScimKind::User => query::user(&overlay, ctx.tenant, &d.resource_id).map(|u| u.version),
                    ScimKind::Group => query::group(&overlay, ctx.tenant, &d.resource_id).map(|g| g.version),
                };
                let status = match op.method {
                    BulkMethod::Post => 201,
                    BulkMethod::Put | BulkMethod::Patch => 200,
                    BulkMethod::Delete => 204,
                };
                out.skipped_members.extend(d.skipped_members);
                out.events.extend(d.events);
                out.bulk.push(BulkResult {
                    method: op.method,
                    bulk_id: op.bulk_id,
                    resource: Some((kind.resource(), d.resource_id)),
                    version,
                    outcome: Ok(status),
                });
            }
            Err(r) => {
                errors += 1;
                out.bulk.push(BulkResult {
                    method: op.method,
                    bulk_id: op.bulk_id,
                    resource: None,
                    version: None,
                    outcome: Err(r),
                });
            }
        }
    }
    out
}
