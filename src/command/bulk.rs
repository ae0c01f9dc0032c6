//! Bulk (RFC 7644 §3.7), decided purely: each operation is decided against the read models as
//! the operations before it left them (their events folded provisionally into an overlay), with
//! `bulkId:` references resolved to the ids those operations created.

use std::collections::{HashMap, HashSet, VecDeque};

use scimlog_projections::{apply, query, KvRead, Overlay};
use scimlog_schemas::event::{Event, EventHash};
use scimlog_schemas::filter::FilterLimits;
use scimlog_schemas::patch::parse_patch;
use scimlog_schemas::resource::{parse_group, parse_user};
use scimlog_schemas::{SchemaError, ScimKind, ScimType};
use serde_json::Value;

use super::{decide_single, BulkMethod, BulkOp, BulkResult, Command, Ctx, Decision, Refusal};

/// What `bulkId:` references resolve to while a request is decided.
struct Refs {
    /// Every POST's bulkId and the id it creates: known before anything is decided, so that a
    /// reference may point forward.
    ids: HashMap<String, String>,
    /// bulkIds whose POST was decided and created its resource.
    created: HashSet<String>,
    /// bulkIds whose POST was refused.
    failed: HashSet<String>,
}

impl Refs {
    /// Whether `r` names a POST of this request not decided yet.
    fn waiting(&self, r: &str) -> bool {
        self.ids.contains_key(r) && !self.created.contains(r) && !self.failed.contains(r)
    }
}

/// The bulkIds a value refers to (`"bulkId:<id>"` strings anywhere in it).
fn refs_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.extend(s.strip_prefix("bulkId:").map(String::from)),
        Value::Array(items) => items.iter().for_each(|i| refs_in(i, out)),
        Value::Object(o) => o.values().for_each(|i| refs_in(i, out)),
        _ => {}
    }
}

/// Replaces every `"bulkId:<id>"` string with the id that operation created.
fn resolve_refs(v: &mut Value, refs: &Refs) -> Result<(), Refusal> {
    match v {
        Value::String(s) => {
            if let Some(r) = s.strip_prefix("bulkId:") {
                if refs.failed.contains(r) {
                    return Err(Refusal::Unresolved(format!(
                        "bulkId {r:?} names an operation of this request that failed, so it cannot be referred to"
                    )));
                }
                let id = refs.ids.get(r).filter(|_| refs.created.contains(r)).ok_or_else(|| {
                    SchemaError::invalid_value(format!("bulkId {r:?} is not created by a POST of this request"))
                })?;
                *s = id.clone();
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|i| resolve_refs(i, refs)),
        Value::Object(o) => o.values_mut().try_for_each(|i| resolve_refs(i, refs)),
        _ => Ok(()),
    }
}

/// A resource body without what refers to operations not decided yet: list elements holding
/// such a reference (a member), and fields holding one (a manager). The first step of a
/// circular reference (RFC 7644 §3.7.1); the full body follows once the others exist.
fn without_waiting(data: &Value, refs: &Refs) -> Value {
    fn holds_waiting(v: &Value, refs: &Refs) -> bool {
        matches!(v, Value::String(s) if s.strip_prefix("bulkId:").is_some_and(|r| refs.waiting(r)))
    }
    fn strip(v: &Value, refs: &Refs) -> Option<Value> {
        match v {
            _ if holds_waiting(v, refs) => None,
            Value::Array(items) => Some(Value::Array(items.iter().filter_map(|i| strip(i, refs)).collect())),
            Value::Object(o) if o.values().any(|x| holds_waiting(x, refs)) => None,
            Value::Object(o) => {
                Some(Value::Object(o.iter().filter_map(|(k, x)| strip(x, refs).map(|x| (k.clone(), x))).collect()))
            }
            other => Some(other.clone()),
        }
    }
    match data {
        Value::Object(o) => {
            Value::Object(o.iter().filter_map(|(k, x)| strip(x, refs).map(|x| (k.clone(), x))).collect())
        }
        other => other.clone(),
    }
}

/// `/Users`, `/Groups/{id}`, ... into (kind, id).
fn parse_path(path: &str, refs: &Refs) -> Result<(ScimKind, Option<String>), Refusal> {
    let bad = || {
        SchemaError::new(ScimType::InvalidPath, format!("bulk path {path:?} is not /Users, /Groups or /<type>/<id>"))
    };
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let kind = match parts.next() {
        Some(p) if p.eq_ignore_ascii_case("Users") => ScimKind::User,
        Some(p) if p.eq_ignore_ascii_case("Groups") => ScimKind::Group,
        _ => return Err(bad().into()),
    };
    let id = match parts.next() {
        None | Some("") => None,
        Some(id) if id.contains('/') => return Err(bad().into()),
        Some(id) => {
            let mut v = Value::String(id.to_string());
            resolve_refs(&mut v, refs)?;
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
        traceparent: None,
        prev_hash: EventHash::GENESIS,
    }
}

/// One step of a bulk request: an operation as sent, or the second half of a POST that was
/// created without its references to operations not decided yet (`fill_in`: its full body, as a
/// replace of the resource it created).
struct Step {
    index: usize,
    op: BulkOp,
    fill_in: bool,
    /// The bulkIds the operation refers to.
    refs: Vec<String>,
}

impl Step {
    fn new(index: usize, op: BulkOp, fill_in: bool) -> Step {
        let mut refs = Vec::new();
        refs_in(&op.data, &mut refs);
        refs_in(&Value::String(op.path.rsplit('/').next().unwrap_or_default().to_string()), &mut refs);
        Step { index, op, fill_in, refs }
    }
}

/// Decides a bulk request. Operations run in request order, except that one referring to a
/// POST of this request that comes later waits for it (forward references). When every
/// operation left waits for another (circular references, RFC 7644 §3.7.1), the first POST
/// among them creates its resource without the references that cannot resolve yet, and its full
/// body is applied once the others exist. A reference to a POST that failed is 409.
pub(super) fn decide_bulk(
    kv: &impl KvRead,
    ctx: &Ctx,
    ops: Vec<BulkOp>,
    fail_on_errors: Option<usize>,
    limits: FilterLimits,
    max_patch_operations: usize,
) -> Decision {
    let ids = ops
        .iter()
        .filter(|op| op.method == BulkMethod::Post)
        .filter_map(|op| op.bulk_id.clone().map(|b| (b, op.new_id.clone())))
        .collect();
    let mut refs = Refs { ids, created: HashSet::new(), failed: HashSet::new() };
    let mut run = Run { overlay: Overlay::new(kv), ctx, limits, max_patch_operations, out: Decision::default() };
    let mut results: Vec<Option<BulkResult>> = vec![None; ops.len()];
    let mut queue: VecDeque<Step> = ops.into_iter().enumerate().map(|(i, op)| Step::new(i, op, false)).collect();
    let mut errors = 0usize;
    let stop = |errors: usize| fail_on_errors.is_some_and(|n| n > 0 && errors >= n);
    'passes: while !queue.is_empty() {
        let mut waiting = VecDeque::new();
        let mut progressed = false;
        while let Some(step) = queue.pop_front() {
            if stop(errors) {
                break 'passes;
            }
            if step.refs.iter().any(|r| refs.waiting(r)) {
                waiting.push_back(step);
                continue;
            }
            progressed = true;
            errors += run.step(&step, step.op.data.clone(), &mut refs, &mut results) as usize;
        }
        if !progressed {
            // Every step left waits for another: break the circle at its first POST. (A step
            // waits only for a POST not yet decided, so there is one; were there none, the first
            // step is decided as it is, and its reference refused, rather than waiting forever.)
            let Some(at) = waiting.iter().position(|s| s.op.method == BulkMethod::Post && !s.fill_in) else {
                let step = waiting.pop_front().expect("a pass without progress leaves steps waiting");
                errors += run.step(&step, step.op.data.clone(), &mut refs, &mut results) as usize;
                queue = waiting;
                continue;
            };
            let step = waiting.remove(at).expect("position found it");
            let partial = without_waiting(&step.op.data, &refs);
            let failed = run.step(&step, partial, &mut refs, &mut results);
            errors += failed as usize;
            if !failed {
                let (kind, _) = parse_path(&step.op.path, &refs).expect("it parsed for the POST");
                let op = BulkOp {
                    method: BulkMethod::Put,
                    path: format!("/{}/{}", kind.endpoint(), step.op.new_id),
                    version: None,
                    ..step.op.clone()
                };
                waiting.push_back(Step::new(step.index, op, true));
            }
        }
        queue = waiting;
    }
    let mut out = run.out;
    out.bulk = results.into_iter().flatten().collect();
    out
}

/// Decides steps against an overlay that holds what the steps before them decided.
struct Run<'a, K: KvRead> {
    overlay: Overlay<'a, K>,
    ctx: &'a Ctx<'a>,
    limits: FilterLimits,
    max_patch_operations: usize,
    out: Decision,
}

impl<K: KvRead> Run<'_, K> {
    /// Decides one step with `data` as its body and records its result; true when it failed.
    fn step(&mut self, step: &Step, mut data: Value, refs: &mut Refs, results: &mut [Option<BulkResult>]) -> bool {
        let op = &step.op;
        let prepared = resolve_refs(&mut data, refs).and_then(|_| parse_path(&op.path, refs)).and_then(|(kind, id)| {
            to_command(op, data, kind, id, self.limits, self.max_patch_operations)
                .map(|c| (kind, c))
                .map_err(Refusal::from)
        });
        let decided =
            prepared.and_then(|(kind, command)| decide_single(&self.overlay, self.ctx, command).map(|d| (kind, d)));
        let (kind, d) = match decided {
            Ok(ok) => ok,
            Err(r) => {
                if step.fill_in {
                    // The resource exists (its first half was created); say what is missing.
                    let created = results[step.index].as_mut().expect("the first half was recorded");
                    created.outcome = Err(Refusal::Unresolved(format!(
                        "created without its references to other operations of this request, which could not be filled in: {}",
                        refusal_text(&r)
                    )));
                } else {
                    if let (BulkMethod::Post, Some(b)) = (op.method, &op.bulk_id) {
                        refs.failed.insert(b.clone());
                    }
                    results[step.index] = Some(BulkResult {
                        method: op.method,
                        bulk_id: op.bulk_id.clone(),
                        resource: None,
                        version: None,
                        outcome: Err(r),
                    });
                }
                return true;
            }
        };
        for e in &d.events {
            apply(&mut self.overlay, &provisional(self.ctx.tenant, e));
        }
        if let (BulkMethod::Post, Some(b)) = (op.method, &op.bulk_id) {
            refs.created.insert(b.clone());
        }
        let version = match kind {
            ScimKind::User => query::user(&self.overlay, self.ctx.tenant, &d.resource_id).map(|u| u.version),
            ScimKind::Group => query::group(&self.overlay, self.ctx.tenant, &d.resource_id).map(|g| g.version),
        };
        let status = match op.method {
            BulkMethod::Post => 201,
            BulkMethod::Put | BulkMethod::Patch => 200,
            BulkMethod::Delete => 204,
        };
        self.out.skipped_members.extend(d.skipped_members);
        self.out.events.extend(d.events);
        match (step.fill_in, results[step.index].as_mut()) {
            // The second half of a POST: the result stays the POST's, at the final version.
            (true, Some(created)) => created.version = version,
            _ => {
                results[step.index] = Some(BulkResult {
                    method: op.method,
                    bulk_id: op.bulk_id.clone(),
                    resource: Some((kind.resource(), d.resource_id)),
                    version,
                    outcome: Ok(status),
                })
            }
        }
        false
    }
}

fn refusal_text(r: &Refusal) -> String {
    match r {
        Refusal::NotFound { kind, id } => format!("{} {id:?} not found", kind.as_str()),
        Refusal::Uniqueness(d) | Refusal::Unresolved(d) => d.clone(),
        Refusal::VersionMismatch { current, expected } => format!("version {expected} expected, {current} found"),
        Refusal::Invalid(e) => e.detail.clone(),
    }
}
