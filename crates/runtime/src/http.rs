//! The HTTP listener every service runs: `/healthz`, `/readyz`, `/metrics` and the service's
//! own routes, with a server span per request whose parent is the caller's W3C trace context.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Longest a readiness check may take before `/readyz` answers 503.
pub const READINESS_TIMEOUT: Duration = Duration::from_secs(5);

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the service can do its work (NATS connected, streams present, ...).
pub trait Readiness: Send + Sync + 'static {
    /// `Err(reason)` makes `/readyz` answer 503 `{"ready":false,"reason":...}`.
    fn ready(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// Always ready: for services (and tests) with nothing to wait for.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysReady;

impl Readiness for AlwaysReady {
    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// A [`Readiness`] from an async closure, e.g.
/// `readiness_fn(move || { let c = client.clone(); async move { check(&c).await } })`.
pub fn readiness_fn<F, Fut>(check: F) -> Arc<dyn Readiness>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    struct FnReadiness<F>(F);
    impl<F, Fut> Readiness for FnReadiness<F>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
            Box::pin((self.0)())
        }
    }
    Arc::new(FnReadiness(check))
}

/// Serves `service_routes` plus `/healthz`, `/readyz` and `/metrics` on `listener` until
/// `shutdown` is cancelled; then stops accepting connections, lets in-flight requests finish,
/// and returns.
///
/// Panics if `service_routes` defines one of the three runtime paths itself.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service_routes: Router,
    readiness: Arc<dyn Readiness>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(service_routes, readiness);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP listener started");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    tracing::info!("HTTP listener stopped");
    Ok(())
}

/// The router [`serve`] runs: the runtime endpoints merged with `service_routes`, with request
/// tracing and HTTP metrics on every route.
pub fn router(service_routes: Router, readiness: Arc<dyn Readiness>) -> Router {
    // Installing here means `/metrics` always renders the process-wide recorder.
    crate::metrics::install();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(readiness)
        .merge(service_routes)
        .layer(middleware::from_fn(record_http_metrics))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(record_response)
                .on_failure(record_failure),
        )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(readiness): State<Arc<dyn Readiness>>) -> Response {
    let outcome = match tokio::time::timeout(READINESS_TIMEOUT, readiness.ready()).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!(
            "readiness check took longer than {}s",
            READINESS_TIMEOUT.as_secs()
        )),
    };
    match outcome {
        Ok(()) => (StatusCode::OK, Json(json!({ "ready": true }))).into_response(),
        Err(reason) => {
            tracing::debug!(%reason, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "ready": false, "reason": reason })),
            )
                .into_response()
        }
    }
}

async fn render_metrics() -> Response {
    let body = crate::metrics::install().render();
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], body).into_response()
}

/// The server span of one request, child of the caller's `traceparent` when there is one.
fn request_span<B>(request: &Request<B>) -> Span {
    let method = request.method();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let name = format!("{method} {}", route.as_deref().unwrap_or("unmatched"));
    let span = tracing::info_span!(
        "http.request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let parent = crate::telemetry::extract_context(request.headers());
    // Fails only when the span is disabled by the filter; then there is nothing to parent.
    let _ = span.set_parent(parent);
    span
}

fn record_response<B>(response: &Response<B>, latency: Duration, span: &Span) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    tracing::debug!(
        status = status.as_u16(),
        latency_ms = latency.as_millis(),
        "response"
    );
}

fn record_failure(failure: ServerErrorsFailureClass, _latency: Duration, span: &Span) {
    span.record("otel.status_code", "ERROR");
    tracing::warn!(%failure, "request failed");
}

/// `tgb_http_requests_total{method,route,status}` and
/// `tgb_http_request_duration_seconds{method,route}`.
async fn record_http_metrics(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        "tgb_http_requests_total",
        "method" => method.clone(),
        "route" => route.clone(),
        "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "tgb_http_request_duration_seconds",
        "method" => method,
        "route" => route
    )
    .record(started.elapsed().as_secs_f64());
    response
}
