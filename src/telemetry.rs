//! Traces: OpenTelemetry over OTLP/HTTP, off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the standard `OTEL_*` variables configure it
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL` = `http/protobuf` (default) or `http/json`, `OTEL_BSP_*`).
//!
//! Spans are `tracing` spans (target [`TARGET`]) that `tracing-opentelemetry` exports:
//! - `request` (http): one per HTTP request, child of the caller's `traceparent` header if any;
//! - `decide` (log::writer): one per write, child of its request;
//! - `commit` (log::writer): one per group commit, linked to every request it carries;
//! - `publish` (bus): one per event sent to NATS, child of the request that wrote it.
//!
//! A write's W3C `traceparent` is stored in its events' envelope (`Event::traceparent`) at
//! commit, so the publisher, which runs later and possibly after an outage, continues the trace
//! and sends it on as a NATS header. With tracing off, nothing is stored and the helpers here
//! return `None`: a span without the OpenTelemetry layer has no context.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of the spans that are exported.
pub const TARGET: &str = "scimlog::trace";

/// Exports what is left when dropped (at the end of `main`).
pub struct Guard(SdkTracerProvider);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("scimlog: flushing traces on exit failed: {e}");
        }
    }
}

/// Whether the environment asks for traces.
pub fn requested() -> bool {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| !v.is_empty()))
}

/// The protocol `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL` names
/// (default `http/protobuf`, as the OTLP exporter spec says). gRPC is not built in.
fn protocol() -> anyhow::Result<Protocol> {
    let named = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    match named.as_str() {
        "" | "http/protobuf" => Ok(Protocol::HttpBinary),
        "http/json" => Ok(Protocol::HttpJson),
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported: use http/protobuf (an OTLP/HTTP \
             endpoint, port 4318 by convention) or http/json"
        ),
    }
}

/// The OTLP pipeline, when the environment asks for it: the provider (kept by the [`Guard`]) and
/// the tracer for the layer. Also installs the W3C trace-context propagator.
pub fn pipeline() -> anyhow::Result<Option<(Guard, opentelemetry_sdk::trace::Tracer)>> {
    if !requested() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(protocol()?).build()?;
    let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        format!("{} ({})", env!("CARGO_PKG_VERSION"), crate::GIT_SHA),
    ));
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("scimlog");
    }
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("scimlog");
    Ok(Some((Guard(provider), tracer)))
}

/// A span's context as a W3C `traceparent` value; `None` when it has none (tracing off).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The trace id of a span, for log lines; `None` when tracing is off.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Names a span once what names it is known (a request's route, after routing). `otel.name`
/// recorded late is ignored by the layer once the span has started, so the name is set on the
/// OpenTelemetry span itself.
pub fn rename(span: &tracing::Span, name: String) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        cx.span().update_name(name);
    }
}

/// Makes `span` (not yet entered) a child of the W3C `traceparent` given, if it is valid.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(extract) {
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the span a `traceparent` names (a commit to the requests it carries).
pub fn link_to(span: &tracing::Span, traceparent: &str) {
    if let Some(cx) = extract(traceparent) {
        span.add_link(cx.span().span_context().clone());
    }
}

fn extract(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with_exporter(f: impl FnOnce()) -> Vec<opentelemetry_sdk::trace::SpanData> {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, f);
        provider.force_flush().unwrap();
        exporter.get_finished_spans().unwrap()
    }

    /// A request continues its caller's trace; the traceparent stored for its write names the
    /// request span; the commit links to it; the publish continues it from the stored value.
    #[test]
    fn a_write_is_one_trace_from_the_caller_to_the_publish() {
        let mut stored = None;
        let spans = with_exporter(|| {
            let request = tracing::info_span!(target: TARGET, "request");
            continue_from(&request, Some(CALLER));
            stored = request.in_scope(|| traceparent(&tracing::Span::current()));
            let commit = tracing::info_span!(target: TARGET, "commit");
            link_to(&commit, stored.as_deref().unwrap());
            drop(commit);
            let publish = tracing::info_span!(target: TARGET, "publish");
            continue_from(&publish, stored.as_deref());
            assert_eq!(trace_id(&publish).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        });
        let stored = stored.expect("a traceparent while tracing");
        assert!(stored.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{stored}");
        let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap_or_else(|| panic!("no span {n}"));
        let (request, commit, publish) = (by_name("request"), by_name("commit"), by_name("publish"));
        assert_eq!(request.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(request.parent_span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(stored, format!("00-{}-{}-01", request.span_context.trace_id(), request.span_context.span_id()));
        assert_eq!(commit.links.links.len(), 1);
        assert_eq!(commit.links.links[0].span_context.span_id(), request.span_context.span_id());
        assert_ne!(commit.span_context.trace_id(), request.span_context.trace_id(), "a commit is its own trace");
        assert_eq!(publish.parent_span_id, request.span_context.span_id());
    }

    /// Without the OpenTelemetry layer nothing is stored, and a bad traceparent is ignored.
    #[test]
    fn tracing_off_stores_nothing() {
        let span = tracing::info_span!(target: TARGET, "request");
        continue_from(&span, Some(CALLER));
        assert_eq!(traceparent(&span), None);
        assert_eq!(trace_id(&span), None);
        for bad in ["", "00-zz-00f067aa0ba902b7-01", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"] {
            assert!(extract(bad).is_none(), "{bad}");
        }
    }
}
