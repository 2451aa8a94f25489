//! Telemetry: repeated initialisation, W3C propagation, server spans parented by `traceparent`.

use std::sync::Arc;

use axum::Router;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt as _, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use tgb_runtime::config::LogFormat;
use tgb_runtime::http::AlwaysReady;
use tgb_runtime::telemetry;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::support::{App, wait_until};

#[test]
fn init_many_times_does_not_panic() {
    let first = telemetry::init("runtime-it", LogFormat::Pretty);
    let second = telemetry::init("runtime-it-again", LogFormat::Json);
    let exporter = InMemorySpanExporter::default();
    let third = telemetry::init_with_exporter("runtime-it", exporter);
    drop(second);
    drop(first);
    drop(third);
    let _fourth = telemetry::init("runtime-it", LogFormat::Pretty);
}

fn finished_with_trace(exporter: &InMemorySpanExporter, trace_id: TraceId) -> Vec<SpanData> {
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .collect()
}

#[tokio::test]
async fn incoming_traceparent_is_the_parent_of_the_server_span() {
    let exporter = InMemorySpanExporter::default();
    let _guard = telemetry::init_with_exporter("runtime-it", exporter.clone());
    let app = App::spawn(Router::new(), Arc::new(AlwaysReady)).await;

    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let parent_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    let response = reqwest::Client::new()
        .get(app.url("/healthz"))
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response.bytes().await.unwrap();

    // The span ends when the server drops the response body, which may be after the client has
    // read it.
    wait_until("the server span is exported", || {
        let found = !finished_with_trace(&exporter, trace_id).is_empty();
        async move { found }
    })
    .await;
    let spans = finished_with_trace(&exporter, trace_id);
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .unwrap_or_else(|| panic!("no server span in {spans:?}"));
    assert_eq!(server.parent_span_id, parent_id);
    assert_eq!(server.name, "GET /healthz");
    let status = server
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "http.response.status_code")
        .map(|kv| kv.value.to_string());
    assert_eq!(status.as_deref(), Some("200"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn context_injected_into_headers_is_extracted_as_the_same_span() {
    let exporter = InMemorySpanExporter::default();
    let _guard = telemetry::init_with_exporter("runtime-it", exporter);
    let span = tracing::info_span!("outgoing call");
    let cx = span.context();
    let sent = cx.span().span_context().clone();
    assert!(
        sent.is_valid(),
        "the tracing span has an OpenTelemetry context"
    );

    let mut headers = http::HeaderMap::new();
    telemetry::inject_context(&cx, &mut headers);
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", sent.trace_id(), sent.span_id())
    );

    let received = telemetry::extract_context(&headers);
    let received = received.span().span_context().clone();
    assert_eq!(received.trace_id(), sent.trace_id());
    assert_eq!(received.span_id(), sent.span_id());
    assert!(received.is_remote());
}
