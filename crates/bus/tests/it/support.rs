use std::sync::Arc;
use std::time::Duration;

use tgb_bus::{Bus, BusConfig, ConsumerSpec, Handler};
use tgb_proto::{BusEvent, EntityRef, EventMeta, Origin, TgCommentAdded};
use tgb_testkit::NatsServer;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = tgb_testkit::HANG_GUARD;

pub async fn server_and_bus() -> (NatsServer, Bus) {
    tgb_testkit::init_test_tracing();
    let server = NatsServer::start().await.expect("nats-server");
    let bus = Bus::connect(&server.url(), None, BusConfig::default())
        .await
        .expect("connect and provision");
    (server, bus)
}

/// A comment event on `case`, with the entity set so it serialises per case.
pub fn comment(case: &str, body: &str) -> TgCommentAdded {
    let mut ev = TgCommentAdded {
        case_id: case.into(),
        comment_id: ulid::Ulid::new().to_string(),
        body: body.into(),
        ..Default::default()
    };
    let meta = ev.meta_mut();
    *meta = EventMeta::new(Origin::Tg);
    meta.correlation_id = case.into();
    meta.entity = Some(EntityRef::new("tg", "case", case));
    ev
}

/// A spec with fast backoff for tests.
pub fn spec(name: &str, subjects: &[&str]) -> ConsumerSpec {
    ConsumerSpec {
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ack_wait: Duration::from_secs(5),
        max_deliver: 4,
        concurrency: 8,
        ..ConsumerSpec::new(name, subjects)
    }
}

/// Runs a consumer in the background; cancel the token to stop it.
pub fn spawn_consumer<H: Handler>(
    bus: &Bus,
    spec: ConsumerSpec,
    handler: Arc<H>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), tgb_bus::ConsumerError>>,
) {
    let token = CancellationToken::new();
    let bus = bus.clone();
    let t = token.clone();
    let join = tokio::spawn(async move { tgb_bus::run_consumer(&bus, spec, handler, t).await });
    (token, join)
}

/// (pending, ack pending) of a consumer.
pub async fn consumer_state(bus: &Bus, name: &str) -> (u64, usize) {
    let stream = bus
        .jetstream()
        .get_stream(tgb_bus::names::EVENTS_STREAM)
        .await
        .unwrap();
    let info = stream.consumer_info(name).await.unwrap();
    (info.num_pending, info.num_ack_pending)
}

/// Every message in TGB_DLQ.
pub async fn dead_letters(bus: &Bus) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let stream = bus
        .jetstream()
        .get_stream(tgb_bus::names::DLQ_STREAM)
        .await
        .unwrap();
    let mut stream = stream;
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}
