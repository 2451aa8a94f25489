use std::sync::Arc;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tgb_bus::{Delivery, Handler, HandlerError, Outcome};
use tgb_proto::{BusEvent, TgCommentAdded};
use tgb_testkit::eventually;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::*;

struct InSpan;

impl Handler for InSpan {
    async fn handle(&self, _d: Delivery) -> Result<Outcome, HandlerError> {
        tracing::info_span!("handler work").in_scope(|| {});
        Ok(Outcome::applied("T1"))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_consumer_span_has_the_publisher_span_as_parent() {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // current_thread: every task of this test runs under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let (_server, bus) = server_and_bus().await;
    let root = tracing::info_span!("webhook received");
    bus.publisher()
        .publish(&comment("C-1", "x"))
        .instrument(root)
        .await
        .unwrap();
    let (stop, join) = spawn_consumer(
        &bus,
        spec("traced", &[TgCommentAdded::SUBJECT]),
        Arc::new(InSpan),
    );
    let spans = eventually("consumer span exported", WAIT, || async {
        let spans = exporter.get_finished_spans().unwrap();
        spans
            .iter()
            .any(|s| s.name.starts_with("traced "))
            .then_some(spans)
    })
    .await
    .unwrap();
    stop.cancel();
    join.await.unwrap().unwrap();

    let publish = spans
        .iter()
        .find(|s| s.name == "publish")
        .expect("publish span");
    let consume = spans
        .iter()
        .find(|s| s.name.starts_with("traced "))
        .expect("consume span");
    assert_eq!(
        consume.span_context.trace_id(),
        publish.span_context.trace_id(),
        "one trace"
    );
    assert_eq!(
        consume.parent_span_id,
        publish.span_context.span_id(),
        "publish is the parent"
    );
    assert_eq!(consume.span_kind, opentelemetry::trace::SpanKind::Consumer);
}
