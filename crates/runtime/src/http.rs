//! The HTTP listener every service runs: `/healthz`, `/readyz`, `/metrics` and the service's
//! own routes, with a server span per request whose parent is the caller's W3C trace context.
//!
//! Bounded ([`HttpLimits`]), so slow or numerous clients cannot hold it:
//!
//! | client | answer |
//! |---|---|
//! | does not finish its headers within `header_read_timeout` | connection closed (hyper) |
//! | request (body included) not done within `request_timeout` | 408 `request_timeout` |
//! | one request more than `max_concurrent_requests` on the service's routes | 503 `overloaded` + `Retry-After` |

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
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

/// `Retry-After` of a 503 `overloaded`, seconds.
pub const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// The bounds of one HTTP listener (see the module table). `[http]` in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time a client has to send a request's headers; then the connection is closed.
    pub header_read_timeout: Duration,
    /// Time one request has, body and handler included; then it is answered 408.
    pub request_timeout: Duration,
    /// Requests on the service's routes at the same time; one more is answered 503.
    pub max_concurrent_requests: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 512,
        }
    }
}

/// [`serve_with`] the default [`HttpLimits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    service_routes: Router,
    readiness: Arc<dyn Readiness>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(
        listener,
        service_routes,
        readiness,
        HttpLimits::default(),
        shutdown,
    )
    .await
}

/// Serves `service_routes` plus `/healthz`, `/readyz` and `/metrics` on `listener`, within
/// `limits`, until `shutdown` is cancelled; then stops accepting connections, lets in-flight
/// requests finish, and returns.
///
/// Panics if `service_routes` defines one of the three runtime paths itself.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    service_routes: Router,
    readiness: Arc<dyn Readiness>,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt as _;

    let app = router(service_routes, readiness, &limits);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, ?limits, "HTTP listener started");
    }
    // axum::serve cannot set a header-read timeout (its hyper builder has no timer), so the
    // accept loop is hyper-util's, as axum's own is, with the timer and the timeout set.
    // HTTP/1.1 only: detecting an HTTP/2 preface waits for the client's first bytes with no
    // timeout, so a client that connects and stays silent would be held forever. (Callers
    // are webhook senders and probes, all HTTP/1.1; TLS and HTTP/2 end at the ingress.)
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let service = app
            .clone()
            .map_request(|request: Request<hyper::body::Incoming>| {
                request.map(axum::body::Body::new)
            });
        let connection = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
    tracing::info!("HTTP listener stopped");
    Ok(())
}

/// What axum's own accept loop does: a per-connection error is nothing; anything else (out of
/// file descriptors) is logged and the loop backs off a little before accepting again.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The router [`serve_with`] runs: the runtime endpoints merged with `service_routes`, with
/// request tracing, HTTP metrics and the request timeout on every route, and the concurrency
/// limit on the service's routes.
pub fn router(
    service_routes: Router,
    readiness: Arc<dyn Readiness>,
    limits: &HttpLimits,
) -> Router {
    // Installing here means `/metrics` always renders the process-wide recorder.
    crate::metrics::install();
    // One semaphore for all the service's routes (a plain ConcurrencyLimitLayer would make one
    // per route); load shedding answers at once instead of queueing without bound.
    let service_routes = service_routes.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(refused))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(
                limits.max_concurrent_requests,
            )),
    );
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(readiness)
        .merge(service_routes)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(refused))
                .timeout(limits.request_timeout),
        )
        .layer(middleware::from_fn(record_http_metrics))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(record_response)
                .on_failure(record_failure),
        )
}

/// The answer when a layer refused a request: the timeout (408) or the concurrency limit (503).
async fn refused(error: tower::BoxError) -> Response {
    let (status, code, message) = if error.is::<tower::timeout::error::Elapsed>() {
        (
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request was not complete within the time allowed",
        )
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests at the same time; retry later",
        )
    } else {
        tracing::error!(%error, "request failed in a middleware");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed",
        )
    };
    let body = Json(json!({ "error": { "code": code, "message": message } }));
    let mut response = (status, body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(OVERLOADED_RETRY_AFTER_SECS),
        );
    }
    response
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
