//! Traces, end to end: the real binary with the standard `OTEL_*` variables exporting OTLP/HTTP
//! (JSON) to a collector in this test, and a real nats-server. One write is one trace, from the
//! caller's `traceparent` through the request, the decision, the commit (linked) and the publish,
//! and on to the NATS message's `traceparent` header, where a subscriber continues it.

use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use serde_json::{json, Value};

use crate::support::{eventually, stream_messages, validate_event, NatsServer, TestServer};

const TOKEN: &str = "telemetry-test-token";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP collector on loopback that keeps every span it is sent (JSON encoding).
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| async move {
            let req: Value = serde_json::from_slice(&body).expect("OTLP JSON");
            for rs in req["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        let mut span = span.clone();
                        span["resource"] = rs["resource"].clone();
                        kept.lock().unwrap().push(span);
                    }
                }
            }
            axum::Json(json!({}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

struct Traced {
    child: Child,
    base: String,
    log: std::path::PathBuf,
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_traced(dir: &std::path::Path, otlp: &str, nats: &str) -> Traced {
    let log = dir.join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scimlog"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--token", TOKEN, "--nats-url", nats])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("OTEL_SERVICE_NAME", "scimlog-under-test")
        .env("SCIMLOG_LOG", "info");
    let (child, base) = crate::support::serving(cmd, Some(&log)).await;
    Traced { child, base, log }
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    let a = span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?;
    a["value"].as_object()?.values().next()
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    let named = |n: &str| n == name || n.ends_with(&format!(" {name}"));
    spans.iter().filter(|s| s["name"].as_str().is_some_and(named)).collect()
}

#[tokio::test]
async fn a_write_is_one_trace_from_the_caller_to_the_nats_subscriber() {
    let nats = NatsServer::start();
    let (otlp, spans) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let s = start_traced(dir.path(), &otlp, &nats.url()).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/scim/v2/Users", s.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/scim+json")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .body(json!({"userName": "traced@example.com"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // The message on NATS carries the trace on, and the event stored it.
    let mut msgs = Vec::new();
    eventually(10, "the event is published", || {
        let url = nats.url();
        async move { !stream_messages(&url, "SCIMLOG").await.is_empty() }
    })
    .await;
    msgs.extend(stream_messages(&nats.url(), "SCIMLOG").await);
    let (_, _, headers, payload) = &msgs[0];
    validate_event(payload);
    let header = headers.get("traceparent").expect("a traceparent header").as_str().to_string();
    assert!(header.starts_with(&format!("00-{TRACE}-")), "{header}");
    let stored = payload["traceparent"].as_str().expect("the envelope keeps the traceparent");
    assert!(stored.starts_with(&format!("00-{TRACE}-")), "{stored}");

    // The spans: request <- caller; decide <- request; commit links the request; publish <- request.
    let deadline = Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let got = spans.lock().unwrap().clone();
        if ["POST /scim/v2/Users", "decide", "commit", "publish"].iter().all(|n| !named(&got, n).is_empty()) {
            break got;
        }
        let names: Vec<&str> = got.iter().filter_map(|s| s["name"].as_str()).collect();
        let log = std::fs::read_to_string(&s.log).unwrap_or_default();
        assert!(Instant::now() < deadline, "spans missing; exported: {names:?}; server log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let request = *named(&spans, "POST /scim/v2/Users").first().expect("a request span named by its route");
    assert_eq!(request["traceId"], TRACE, "{request}");
    assert_eq!(request["parentSpanId"], CALLER_SPAN);
    assert_eq!(attr(request, "http.route"), Some(&json!("/scim/v2/Users")));
    assert_eq!(
        attr(request, "http.response.status_code").map(|v| v.to_string().trim_matches('"').to_string()).as_deref(),
        Some("201")
    );
    let service = request["resource"]["attributes"].as_array().unwrap().iter().find(|a| a["key"] == "service.name");
    assert_eq!(service.unwrap()["value"]["stringValue"], "scimlog-under-test");
    let request_span = request["spanId"].as_str().unwrap();
    assert_eq!(stored, format!("00-{TRACE}-{request_span}-01"), "the stored context is the request span's");

    let decide = named(&spans, "decide");
    assert!(decide.iter().any(|d| d["traceId"] == TRACE && d["parentSpanId"] == request_span), "{decide:?}");
    let commit = named(&spans, "commit");
    let linked = |c: &&&Value| {
        c["links"].as_array().into_iter().flatten().any(|l| l["traceId"] == TRACE && l["spanId"] == request_span)
    };
    assert!(commit.iter().any(|c| linked(&c)), "a commit span links the request: {commit:?}");
    let publish = named(&spans, "publish");
    let publish = publish.iter().find(|p| p["traceId"] == TRACE).expect("a publish span in the caller's trace");
    assert_eq!(publish["parentSpanId"], request_span);
    assert_eq!(attr(publish, "messaging.system"), Some(&json!("nats")));
    assert_eq!(
        header,
        format!("00-{TRACE}-{}-01", publish["spanId"].as_str().unwrap()),
        "a subscriber's parent is the publish"
    );

    // The access log line names the trace.
    let log = std::fs::read_to_string(&s.log).unwrap();
    let line = log.lines().find(|l| l.contains("route=/scim/v2/Users") && l.contains("status=201")).expect(&log);
    assert!(line.contains(&format!("trace_id={TRACE}")), "{line}");
}

/// With tracing off (no `OTEL_*`), a caller's traceparent is not stored: events keep the bytes
/// they always had, and the access log has no trace_id.
#[tokio::test]
async fn tracing_off_stores_no_trace_context() {
    let s = TestServer::start().await;
    let r = s
        .send(
            reqwest::Method::POST,
            "/Users",
            Some(&json!({"userName": "untraced@example.com"})),
            &[("traceparent", &format!("00-{TRACE}-{CALLER_SPAN}-01"))],
        )
        .await;
    assert_eq!(r.status, 201);
    let store = scimlog::log::Store::open_read_only(s.data_dir()).unwrap();
    let events = scimlog::audit::log(&store, &scimlog_schemas::personal::NoKeys, &Default::default()).unwrap();
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e.traceparent.is_none()));
}
