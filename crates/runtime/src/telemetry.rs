//! Tracing and OpenTelemetry.
//!
//! One tracing subscriber per process: an `EnvFilter` from `RUST_LOG` (default `info`), log
//! lines (pretty or JSON) and a `tracing-opentelemetry` layer over one process-wide tracer
//! provider. Span exporters are attached to that provider by [`init`] (OTLP over HTTP/protobuf,
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set) and [`init_with_exporter`] (tests), and detached
//! when their [`TelemetryGuard`] drops. So calling either many times in one process never
//! panics, and an in-memory exporter sees every span that ends while its guard lives, whatever
//! else the process initialised before.
//!
//! Every call sets the global W3C [`TraceContextPropagator`]; [`inject_context`] and
//! [`extract_context`] carry the context over HTTP headers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, global};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor, Span,
    SpanData, SpanProcessor,
};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::LogFormat;

/// The environment variable that switches OTLP export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Time the guard gives the OTLP exporter to send the last spans.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Initialises telemetry for `service`; idempotent per process.
///
/// The first call installs the subscriber (its `service` and `format` stay for the process);
/// every call sets the W3C propagator and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, attaches
/// an OTLP (HTTP/protobuf) span exporter. Keep the guard until the end of `main`: dropping it
/// flushes the exporter and shuts it down.
pub fn init(service: &'static str, format: LogFormat) -> TelemetryGuard {
    let pipeline = Pipeline::get(service, format);
    let endpoint_set = std::env::var(OTLP_ENDPOINT_ENV).is_ok_and(|v| !v.trim().is_empty());
    if !endpoint_set {
        return TelemetryGuard { _sink: None };
    }
    // The exporter reads the OTEL_EXPORTER_OTLP_* variables itself (endpoint + `/v1/traces`,
    // headers, timeout).
    attach_otlp(pipeline, None)
}

/// Like [`init`], but exports to the OTLP collector at `endpoint` (e.g.
/// `http://127.0.0.1:4318`; `/v1/traces` is appended, as for `OTEL_EXPORTER_OTLP_ENDPOINT`)
/// whatever the environment says.
pub fn init_with_otlp_endpoint(
    service: &'static str,
    format: LogFormat,
    endpoint: &str,
) -> TelemetryGuard {
    let pipeline = Pipeline::get(service, format);
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    attach_otlp(pipeline, Some(traces))
}

fn attach_otlp(pipeline: &Pipeline, traces_endpoint: Option<String>) -> TelemetryGuard {
    // One exporter per endpoint however often `init` runs (e.g. several services in one
    // process): otherwise every span would be sent once per call.
    let mut shared = pipeline.otlp.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(sink) = shared.get(&traces_endpoint).and_then(Weak::upgrade) {
        return TelemetryGuard { _sink: Some(sink) };
    }
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = &traces_endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    match builder.build() {
        Ok(exporter) => {
            let processor = BatchSpanProcessor::builder(exporter).build();
            let sink = pipeline.attach(processor, true);
            shared.insert(traces_endpoint, Arc::downgrade(&sink));
            TelemetryGuard { _sink: Some(sink) }
        }
        Err(error) => {
            tracing::warn!(%error, "OTLP span exporter could not be built; spans are not exported");
            TelemetryGuard { _sink: None }
        }
    }
}

/// Like [`init`] (pretty logs), but spans go to `exporter` as each one ends (tests read them
/// with `get_finished_spans`). The exporter is detached, not shut down, when the guard drops,
/// so its spans stay readable.
pub fn init_with_exporter(service: &'static str, exporter: InMemorySpanExporter) -> TelemetryGuard {
    let pipeline = Pipeline::get(service, LogFormat::Pretty);
    TelemetryGuard {
        _sink: Some(pipeline.attach(SimpleSpanProcessor::new(exporter), false)),
    }
}

/// Keeps a span exporter attached. When the last guard of an exporter drops, the exporter is
/// detached, flushed and shut down.
#[must_use = "dropping the guard stops span export"]
#[derive(Debug)]
pub struct TelemetryGuard {
    /// Held for its `Drop`.
    _sink: Option<Arc<Sink>>,
}

/// The W3C trace context of `headers` (an empty context when they carry none).
pub fn extract_context(headers: &http::HeaderMap) -> Context {
    global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes `cx` into `headers` as `traceparent` / `tracestate` (for outgoing HTTP calls).
pub fn inject_context(cx: &Context, headers: &mut http::HeaderMap) {
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut HeaderInjector(headers)));
}

static PIPELINE: OnceLock<Pipeline> = OnceLock::new();

struct Pipeline {
    sinks: Arc<Sinks>,
    /// The OTLP exporters by traces endpoint (`None`: from the environment).
    otlp: Mutex<HashMap<Option<String>, Weak<Sink>>>,
    resource: Resource,
    /// Kept so the provider (and its span processor) lives as long as the process.
    _provider: SdkTracerProvider,
}

impl Pipeline {
    fn get(service: &'static str, format: LogFormat) -> &'static Pipeline {
        set_propagator();
        PIPELINE.get_or_init(|| Self::install(service, format))
    }

    fn install(service: &'static str, format: LogFormat) -> Pipeline {
        let resource = Resource::builder().with_service_name(service).build();
        let sinks = Arc::new(Sinks::default());
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(FanOut(sinks.clone()))
            .build();
        global::set_tracer_provider(provider.clone());
        let tracer = provider.tracer(service);

        let (filter, filter_error) = match EnvFilter::try_from_default_env() {
            Ok(filter) => (filter, None),
            Err(error) => (
                EnvFilter::new("info"),
                std::env::var("RUST_LOG").ok().map(|v| (v, error)),
            ),
        };
        let logs = match format {
            LogFormat::Pretty => tracing_subscriber::fmt::layer().boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .boxed(),
        };
        let installed = tracing_subscriber::registry()
            .with(filter)
            .with(tracing_opentelemetry::layer().with_tracer(tracer))
            .with(logs)
            .try_init();
        if let Err(error) = installed {
            eprintln!(
                "telemetry: a tracing subscriber was already installed ({error}); keeping it"
            );
        }
        if let Some((value, error)) = filter_error {
            tracing::warn!(rust_log = %value, %error, "RUST_LOG is invalid; logging at info");
        }
        Pipeline {
            sinks,
            otlp: Mutex::default(),
            resource,
            _provider: provider,
        }
    }

    fn attach<P: SpanProcessor + 'static>(
        &self,
        mut processor: P,
        shutdown_on_drop: bool,
    ) -> Arc<Sink> {
        processor.set_resource(&self.resource);
        let processor: Arc<dyn SpanProcessor> = Arc::new(processor);
        let id = self.sinks.attach(processor.clone());
        Arc::new(Sink {
            id,
            processor,
            shutdown_on_drop,
        })
    }
}

fn set_propagator() {
    global::set_text_map_propagator(TraceContextPropagator::new());
}

/// An attached span processor; detached, flushed and (for real exporters) shut down on drop.
#[derive(Debug)]
struct Sink {
    id: u64,
    processor: Arc<dyn SpanProcessor>,
    shutdown_on_drop: bool,
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(pipeline) = PIPELINE.get() {
            pipeline.sinks.detach(self.id);
        }
        if let Err(error) = self.processor.force_flush() {
            eprintln!("telemetry: flushing spans failed: {error}");
        }
        if self.shutdown_on_drop
            && let Err(error) = self.processor.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            eprintln!("telemetry: shutting the span exporter down failed: {error}");
        }
    }
}

/// The span processors attached right now.
#[derive(Debug, Default)]
struct Sinks {
    next_id: AtomicU64,
    attached: RwLock<Vec<(u64, Arc<dyn SpanProcessor>)>>,
}

impl Sinks {
    fn attach(&self, processor: Arc<dyn SpanProcessor>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.write().push((id, processor));
        id
    }

    fn detach(&self, id: u64) {
        self.write().retain(|(i, _)| *i != id);
    }

    fn snapshot(&self) -> Vec<Arc<dyn SpanProcessor>> {
        let guard = self.attached.read().unwrap_or_else(|e| e.into_inner());
        guard.iter().map(|(_, p)| p.clone()).collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<(u64, Arc<dyn SpanProcessor>)>> {
        self.attached.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The provider's one span processor: hands every span to each attached processor.
#[derive(Debug)]
struct FanOut(Arc<Sinks>);

impl SpanProcessor for FanOut {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        for sink in self.0.snapshot() {
            sink.on_start(span, cx);
        }
    }

    fn on_end(&self, span: SpanData) {
        let mut sinks = self.0.snapshot();
        let Some(last) = sinks.pop() else {
            return;
        };
        for sink in sinks {
            sink.on_end(span.clone());
        }
        last.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0
            .snapshot()
            .iter()
            .map(|s| s.force_flush())
            .fold(Ok(()), Result::and)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Attached processors belong to their guards, which shut them down.
        let _ = timeout;
        Ok(())
    }
}
