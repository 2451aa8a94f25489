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

/// An OTLP/HTTP collector stand-in: records each export request.
async fn spawn_collector() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    use axum::routing::post;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let routes = Router::new().route(
        "/v1/traces",
        post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let content_type = headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send((content_type, body.to_vec()));
                http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, routes).await });
    (endpoint, rx)
}

#[tokio::test]
async fn spans_are_exported_over_otlp_http_protobuf_and_flushed_when_the_guard_drops() {
    let (endpoint, mut exports) = spawn_collector().await;
    let guard = telemetry::init_with_otlp_endpoint("runtime-it", LogFormat::Pretty, &endpoint);

    let span_name = format!("otlp-export-check-{}", std::process::id());
    tracing::info_span!("check", otel.name = %span_name).in_scope(|| {
        tracing::info!("inside the exported span");
    });
    // The batch processor holds the span until the guard flushes it; dropping blocks on the
    // export, so it runs off the async worker.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let (content_type, body) = tokio::time::timeout(crate::support::DEADLINE, async {
        loop {
            let (content_type, body) = exports.recv().await.expect("collector running");
            if contains(&body, span_name.as_bytes()) {
                return (content_type, body);
            }
        }
    })
    .await
    .expect("the span reached the collector");
    assert_eq!(content_type, "application/x-protobuf");
    assert!(
        contains(&body, b"runtime-it"),
        "service.name is in the resource"
    );
}

#[tokio::test]
async fn repeated_init_shares_one_otlp_exporter_so_each_span_is_sent_once() {
    let (endpoint, mut exports) = spawn_collector().await;
    let first = telemetry::init_with_otlp_endpoint("runtime-it", LogFormat::Pretty, &endpoint);
    let second = telemetry::init_with_otlp_endpoint("runtime-it", LogFormat::Pretty, &endpoint);
    // The exporter outlives the first guard while another one holds it.
    tokio::task::spawn_blocking(move || drop(first))
        .await
        .unwrap();

    let span_name = format!("otlp-shared-check-{}", std::process::id());
    tracing::info_span!("check", otel.name = %span_name).in_scope(|| {});
    tokio::task::spawn_blocking(move || drop(second))
        .await
        .unwrap();

    // Shutting the exporter down waits for the collector's answers, so every export request
    // has been recorded by now.
    let mut sent = 0;
    while let Ok((_, body)) = exports.try_recv() {
        if contains(&body, span_name.as_bytes()) {
            sent += 1;
        }
    }
    assert_eq!(sent, 1, "the span is exported exactly once");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
