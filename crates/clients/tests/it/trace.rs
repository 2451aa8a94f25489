use std::sync::{Arc, Mutex};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use secrecy::SecretString;
use tgb_clients::oauth::{ClientCredentials, TokenCache};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// A token endpoint and an API that records the `traceparent` it receives.
async fn server(seen: Arc<Mutex<Vec<String>>>) -> String {
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(|| async {
                axum::Json(serde_json::json!({"access_token": "t", "token_type": "Bearer", "expires_in": 3600}))
            }),
        )
        .route(
            "/v1/cases/{id}/comments",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    let tp = headers.get("traceparent").map(|v| v.to_str().unwrap().to_owned());
                    seen.lock().unwrap().push(tp.unwrap_or_default());
                    axum::http::StatusCode::CREATED
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test(flavor = "current_thread")]
async fn an_outgoing_call_is_a_client_span_whose_context_the_server_receives() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let base = server(seen.clone()).await;
    tgb_clients::oauth::send_trace_context(true);
    let tokens = TokenCache::new(
        reqwest::Client::new(),
        ClientCredentials::new(
            format!("{base}/token").parse().unwrap(),
            "me",
            SecretString::from("s"),
        ),
    );
    let url = format!("{base}/v1/cases/C-1/comments");
    let answer = tokens
        .send(|| reqwest::Client::new().post(&url))
        .instrument(tracing::info_span!("consume tgb.v1.dyn.case.note_added"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 201);

    let spans = exporter.get_finished_spans().unwrap();
    let client = spans
        .iter()
        .find(|s| s.name.starts_with("POST "))
        .expect("client span");
    let parent = spans
        .iter()
        .find(|s| s.name.starts_with("consume"))
        .expect("handler span");
    assert_eq!(client.span_kind, opentelemetry::trace::SpanKind::Client);
    assert_eq!(client.parent_span_id, parent.span_context.span_id());
    let traceparent = seen.lock().unwrap()[0].clone();
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-01",
            client.span_context.trace_id(),
            client.span_context.span_id()
        ),
        "the server is told the client span is its parent"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn third_parties_are_not_sent_the_trace_context_unless_configured() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(InMemorySpanExporter::default())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let base = server(seen.clone()).await;
    let tokens = TokenCache::new(
        reqwest::Client::new(),
        ClientCredentials::new(
            format!("{base}/token").parse().unwrap(),
            "me",
            SecretString::from("s"),
        ),
    );
    let url = format!("{base}/v1/cases/C-1/comments");
    let answer = tokens
        .send(|| reqwest::Client::new().post(&url))
        .instrument(tracing::info_span!("consume tgb.v1.dyn.case.note_added"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status(), 201);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [String::new()],
        "traceparent was sent"
    );
}
