//! Micro-benchmarks of the parts a request goes through: filter parsing and evaluation, PATCH
//! application, deciding and folding events into the read models, rendering a stored user as a
//! GET answers it, sealing and decoding one
//! event, and the log append (the writer: decide, seal, hash, fold, commit) with 1, 16 and 128
//! commands per commit, fsync on and off, and the request-line rewriter every read goes through. `cargo bench -p scimlog-bench` (criterion; medians and spreads on stdout).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use scimlog::command::{decide, Command, Ctx};
use scimlog::log::writer::{self, Origin, WriterOptions};
use scimlog::log::{keys::KeyRing, Store};
use scimlog_projections::{apply, MemKv};
use scimlog_schemas::event::{Event, EventBody, EventHash, NewEvent};
use scimlog_schemas::filter::{Filter, FilterLimits};
use scimlog_schemas::patch::{self, parse_patch};
use scimlog_schemas::registry::registry;
use scimlog_schemas::resource::parse_user;
use serde_json::{json, Value};

const CTX: Ctx<'static> = Ctx {
    tenant: "bench",
    namespace: "scimlog",
    default_organization: "default",
    limits: scimlog::command::WriteLimits::DEFAULT,
};

fn user(i: u64) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": format!("user{i:07}@bench.example"),
        "externalId": format!("00u{i:017}"),
        "name": {"givenName": "Bench", "familyName": format!("User{i}")},
        "displayName": format!("Bench User {i}"),
        "emails": [{"value": format!("user{i:07}@bench.example"), "type": "work", "primary": true}],
        "phoneNumbers": [{"value": "+1 555 0100", "type": "mobile"}],
        "active": true,
        "roles": [{"value": "urn:scimlog:role:environment:prod:viewer"}]
    })
}

/// The user as filters see it (id and meta included).
fn filterable(i: u64) -> Value {
    let mut v = user(i);
    v["id"] = json!("0190f5a0-0000-7000-8000-000000000001");
    v["meta"] = json!({"resourceType": "User", "created": "2026-01-02T03:04:05.000Z", "lastModified": "2026-01-02T03:04:05.000Z"});
    v
}

const FILTERS: &[(&str, &str)] = &[
    ("userName eq", r#"userName eq "user0000042@bench.example""#),
    ("Entra and/or", r#"(externalId eq "00u00000000000000042" or userName eq "x") and active eq true"#),
    (
        "value path + dates",
        r#"emails[type eq "work" and value ew "@bench.example"] and meta.lastModified gt "2025-01-01T00:00:00Z""#,
    ),
];

fn filters(c: &mut Criterion) {
    let mut g = c.benchmark_group("filter");
    for (name, text) in FILTERS {
        g.bench_function(format!("parse: {name}"), |b| {
            b.iter(|| Filter::parse(black_box(text), FilterLimits::default()).unwrap())
        });
    }
    let doc = filterable(42);
    let schema = &registry().user;
    for (name, text) in FILTERS {
        let f = Filter::parse(text, FilterLimits::default()).unwrap();
        g.bench_function(format!("evaluate: {name}"), |b| b.iter(|| black_box(f.matches(schema, black_box(&doc)))));
    }
    g.finish();
}

fn patches(c: &mut Criterion) {
    let mut g = c.benchmark_group("patch");
    let schema = &registry().user;
    let bodies = [
        ("Okta deactivate", json!({"Operations": [{"op": "replace", "value": {"active": false}}]})),
        (
            "Entra dotted replace x3",
            json!({"Operations": [
                {"op": "Replace", "path": "name.familyName", "value": "Renamed"},
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "new@bench.example"},
                {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Ops"}
            ]}),
        ),
        (
            "remove by value filter",
            json!({"Operations": [{"op": "remove", "path": "phoneNumbers[type eq \"mobile\"]"}]}),
        ),
    ];
    let doc = user(42).as_object().unwrap().clone();
    for (name, body) in &bodies {
        g.bench_function(format!("parse + apply: {name}"), |b| {
            b.iter_batched(
                || doc.clone(),
                |mut d| {
                    for op in parse_patch(body, FilterLimits::default(), 100).unwrap() {
                        patch::apply(schema, &mut d, &op).unwrap();
                    }
                    d
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn stamp(position: u64, new: NewEvent) -> Event {
    Event {
        id: uuid::Uuid::now_v7(),
        position,
        tenant: CTX.tenant.into(),
        schema_version: 1,
        body: new.body,
        resource_type: new.resource_type,
        resource_id: new.resource_id,
        resource_version: new.resource_version,
        recorded_at: chrono::Utc::now(),
        actor: "bench".into(),
        request_id: "r".into(),
        traceparent: None,
        prev_hash: EventHash::GENESIS,
    }
}

fn folds(c: &mut Criterion) {
    let mut g = c.benchmark_group("fold");
    // A directory of 10k users to fold into (index lookups then hit a populated map).
    let mut kv = MemKv::default();
    let mut position = 0;
    for i in 0..10_000u64 {
        let cmd = Command::CreateUser { id: format!("u{i:07}"), input: parse_user(&user(i)).unwrap() };
        for e in decide(&kv, &CTX, cmd).unwrap().events {
            position += 1;
            apply(&mut kv, &stamp(position, e));
        }
    }
    let mut next = 10_000u64;
    g.bench_function("decide + fold: create a user (10k users)", |b| {
        b.iter_batched(
            || {
                next += 1;
                Command::CreateUser { id: format!("u{next:07}"), input: parse_user(&user(next)).unwrap() }
            },
            |cmd| {
                for e in decide(&kv, &CTX, cmd).unwrap().events {
                    position += 1;
                    apply(&mut kv, &stamp(position, e));
                }
            },
            BatchSize::SmallInput,
        )
    });
    // The fold alone, of one user.created event (decided once, folded under fresh ids).
    let created =
        decide(&kv, &CTX, Command::CreateUser { id: "template".into(), input: parse_user(&user(99_999_999)).unwrap() })
            .unwrap()
            .events;
    let mut n = 0u64;
    g.bench_function("fold: user.created event", |b| {
        b.iter_batched(
            || {
                n += 1;
                created
                    .iter()
                    .map(|e| {
                        let mut e = stamp(position + n, e.clone());
                        e.resource_id = format!("f{n:09}");
                        e
                    })
                    .collect::<Vec<_>>()
            },
            |events| {
                let mut scratch = MemKv::default();
                for e in &events {
                    apply(&mut scratch, e);
                }
                scratch
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A GET's answer from the user's stored document, as it is written (its attributes copied from
/// their stored text) and as it was (decoded into `Value`s, built, encoded again).
fn renders(c: &mut Criterion) {
    let mut kv = MemKv::default();
    let cmd = Command::CreateUser { id: "u0000001".into(), input: parse_user(&user(1)).unwrap() };
    for (i, e) in decide(&kv, &CTX, cmd).unwrap().events.into_iter().enumerate() {
        apply(&mut kv, &stamp(i as u64 + 1, e));
    }
    let stored = scimlog_projections::query::user_bytes(&kv, CTX.tenant, "u0000001").expect("the user is stored");
    let base = "https://scim.example.com/scim/v2";
    let copied = scimlog::http::render_stored_user(base, &stored, true).unwrap();
    assert_eq!(copied, scimlog::http::render_stored_user(base, &stored, false).unwrap(), "the two give the same bytes");
    let mut g = c.benchmark_group("render a stored user");
    g.throughput(Throughput::Bytes(copied.len() as u64));
    for (name, copy) in [("copied from its stored text", true), ("decoded into Values and built", false)] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(scimlog::http::render_stored_user(base, black_box(&stored), copy)))
        });
    }
    g.finish();
}

/// One event's way through the log and out: sealed (personal values encrypted with the
/// subject's key, serialised, hashed: on the writer), decoded with its values opened (replays,
/// the publisher, feeds) and made the published body (the publisher), for a `user.created` with
/// personal values. The subject's key is cached, so no store read is measured.
fn events(c: &mut Criterion) {
    let mut g = c.benchmark_group("event");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let keys = KeyRing::open(store, &Default::default(), dir.path()).unwrap();
    let cmd = Command::CreateUser { id: "u1".into(), input: parse_user(&user(1)).unwrap() };
    let new = decide(&MemKv::default(), &CTX, cmd).unwrap().events.into_iter();
    let created = new.filter(|e| matches!(e.body, EventBody::UserCreated { .. })).next().expect("a user.created");
    let event = stamp(1, created);
    let mut sealer = keys.batch();
    let sealed = event.seal(&mut sealer);
    keys.committed(sealer);
    g.bench_function("seal a user.created", |b| {
        b.iter(|| {
            let mut sealer = keys.batch();
            black_box(event.seal(&mut sealer))
        })
    });
    g.bench_function("decode it, values opened", |b| b.iter(|| black_box(sealed.decode(&keys).unwrap())));
    g.bench_function("decode it and make the published body", |b| {
        b.iter(|| black_box(scimlog::bus::published_body(&sealed, &keys).unwrap()))
    });
    g.finish();
}

/// The writer end to end on a real RocksDB in a temp dir: `n` creates submitted together, so one
/// commit (one fsync when on) carries up to `n` of them.
fn log_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("log append (writer)");
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    for sync in [true, false] {
        for n in [1usize, 16, 128] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            let keys = Arc::new(KeyRing::open(store.clone(), &Default::default(), dir.path()).unwrap());
            let opts = WriterOptions {
                queue_depth: 4096,
                queue_per_tenant: 4096,
                group_commit_max: n,
                sync,
                namespace: "scimlog".into(),
                default_organization: "default".into(),
                limits: scimlog::command::WriteLimits::DEFAULT,
                metrics: Default::default(),
                replication: None,
                copy: false,
            };
            let (handle, thread) = writer::start(store, keys, opts).unwrap();
            let origin = Origin { tenant: "bench".into(), actor: "bench".into(), request_id: "r".into() };
            let mut next = 0u64;
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(format!("{n} creates per commit, fsync {}", if sync { "on" } else { "OFF" }), |b| {
                b.iter_batched(
                    || {
                        (0..n)
                            .map(|_| {
                                next += 1;
                                Command::CreateUser {
                                    id: format!("u{next:09}"),
                                    input: parse_user(&user(next)).unwrap(),
                                }
                            })
                            .collect::<Vec<_>>()
                    },
                    |commands| {
                        rt.block_on(async {
                            let waits = commands.into_iter().map(|c| handle.submit(origin.clone(), c));
                            for r in futures::future::join_all(waits).await {
                                r.unwrap();
                            }
                        })
                    },
                    BatchSize::SmallInput,
                )
            });
            drop(handle);
            thread.join().unwrap();
        }
    }
    g.finish();
}

/// Every byte a connection reads goes through the request-line rewriter (raw quotes in Entra's
/// filters): a GET head as Entra sends it, and a POST head with a 1 KiB body.
fn request_lines(c: &mut Criterion) {
    use scimlog::http::request_line::Rewriter;
    let get = "GET /scim/v2/Users?filter=userName+eq+\"dale.mohr%40example.com\" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
               Authorization: Bearer 0123456789abcdef0123456789abcdef\r\nAccept: application/scim+json\r\n\
               User-Agent: Microsoft.Identity.Provisioning\r\nClient-Request-Id: 3f1c7a52-8d9e-4b7a-9c1d-2e6f5a4b3c21\r\n\r\n";
    let body = format!("{{\"userName\":\"{}\"}}", "x".repeat(1000));
    let post = format!(
        "POST /scim/v2/Users HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer 0123456789abcdef\r\n\
         Content-Type: application/scim+json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut g = c.benchmark_group("request line rewrite");
    for (name, input) in [("Entra GET head", get.to_string()), ("POST head + 1 KiB body", post)] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        let mut out = Vec::with_capacity(8192);
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                Rewriter::default().feed(black_box(input.as_bytes()), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = filters, patches, folds, renders, events, log_append, request_lines
}
criterion_main!(micro);
