use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::stream;
use tgb_bus::{Bus, BusConfig, ProvisionError, names};
use tracing::instrument::WithSubscriber;
use tracing_subscriber::fmt::MakeWriter;

use crate::support::server_and_bus;

#[tokio::test]
async fn provisioning_twice_is_a_no_op() {
    let (server, bus) = server_and_bus().await;
    let again = Bus::connect(&server.url(), None, BusConfig::default()).await;
    assert!(again.is_ok(), "{again:?}");
    for (bucket, _) in names::KV_BUCKETS {
        bus.kv(bucket)
            .await
            .unwrap_or_else(|e| panic!("{bucket}: {e}"));
    }
    bus.documents().await.expect("object store");
    bus.ready().await.expect("ready");
}

/// Log lines written while a future runs (the future's own subscriber, not the global one).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Connects with `config`, returning the result and the log lines written meanwhile.
async fn connect_logged(url: &str, config: BusConfig) -> (Result<Bus, tgb_bus::BusError>, String) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let result = Bus::connect(url, None, config)
        .with_subscriber(subscriber)
        .await;
    (result, captured.text())
}

async fn events_config(bus: &Bus) -> stream::Config {
    let mut stream = bus
        .jetstream()
        .get_stream(names::EVENTS_STREAM)
        .await
        .unwrap();
    stream.info().await.unwrap().config.clone()
}

#[tokio::test]
async fn a_changed_max_age_is_updated_in_place_at_start_with_a_log_line() {
    let (server, bus) = server_and_bus().await;
    assert_eq!(
        events_config(&bus).await.max_age,
        BusConfig::default().max_age
    );
    let longer = Duration::from_secs(14 * 24 * 3600);
    let (again, log) = connect_logged(
        &server.url(),
        BusConfig {
            max_age: longer,
            ..BusConfig::default()
        },
    )
    .await;
    let again = again.expect("a changed max_age is not a reason to refuse");
    assert_eq!(events_config(&again).await.max_age, longer);
    assert!(
        log.contains("updated stream TGB_EVENTS in place: max_age 604800s -> 1209600s"),
        "{log}"
    );
    // The other streams did not change, and say nothing.
    assert!(!log.contains("TGB_DLQ"), "{log}");
}

#[tokio::test]
async fn max_bytes_is_set_and_lifted_in_place() {
    let (server, bus) = server_and_bus().await;
    assert_eq!(events_config(&bus).await.max_bytes, -1);
    let limited = BusConfig {
        max_bytes: Some(64 * 1024 * 1024),
        ..BusConfig::default()
    };
    let (limited_bus, log) = connect_logged(&server.url(), limited).await;
    let limited_bus = limited_bus.expect("max_bytes changes in place");
    assert_eq!(
        events_config(&limited_bus).await.max_bytes,
        64 * 1024 * 1024
    );
    assert!(log.contains("max_bytes unlimited -> 67108864"), "{log}");

    let (unlimited_bus, log) = connect_logged(&server.url(), BusConfig::default()).await;
    let unlimited_bus = unlimited_bus.expect("lifting the limit changes in place");
    assert_eq!(events_config(&unlimited_bus).await.max_bytes, -1);
    assert!(log.contains("max_bytes 67108864 -> unlimited"), "{log}");
}

#[tokio::test]
async fn more_replicas_than_a_single_server_holds_are_refused_with_the_fix() {
    let (server, bus) = server_and_bus().await;
    let (result, _log) = connect_logged(
        &server.url(),
        BusConfig {
            replicas: 3,
            ..BusConfig::default()
        },
    )
    .await;
    let err = result.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            tgb_bus::BusError::Provision(ProvisionError::Replicas {
                existing: 1,
                desired: 3,
                ..
            })
        ),
        "{text}"
    );
    assert!(
        text.contains("TGB_EVENTS")
            && text.contains("single nats-server")
            && text.contains("replicas = 1"),
        "{text}"
    );
    assert_eq!(events_config(&bus).await.num_replicas, 1);
}

#[tokio::test]
async fn another_storage_type_refuses_with_the_command_to_run() {
    tgb_testkit::init_test_tracing();
    let server = tgb_testkit::NatsServer::start().await.expect("nats-server");
    // Someone made the stream in memory before tg-bridge first started.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut memory = tgb_bus::events_stream(&BusConfig::default());
    memory.storage = stream::StorageType::Memory;
    js.create_stream(memory).await.unwrap();

    let err = Bus::connect(&server.url(), None, BusConfig::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            tgb_bus::BusError::Provision(ProvisionError::Conflict {
                field: "storage",
                ..
            })
        ),
        "{text}"
    );
    assert!(
        text.contains("nats stream backup TGB_EVENTS") && text.contains("never replaced"),
        "{text}"
    );
    let info = js
        .get_stream(names::EVENTS_STREAM)
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.storage, stream::StorageType::Memory);
}

#[tokio::test]
async fn a_subject_added_by_hand_is_not_removed_silently() {
    let (server, bus) = server_and_bus().await;
    let mut cfg = events_config(&bus).await;
    cfg.subjects.push("partner.>".into());
    bus.jetstream().update_stream(&cfg).await.unwrap();

    let err = Bus::connect(&server.url(), None, BusConfig::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("subjects")
            && text.contains("nats stream edit TGB_EVENTS --subjects tgb.v1.>"),
        "{text}"
    );
    assert!(
        events_config(&bus)
            .await
            .subjects
            .contains(&"partner.>".to_owned())
    );
}

#[tokio::test]
async fn a_duplicate_window_shrunk_by_hand_is_raised_back_in_place() {
    let (server, _bus) = server_and_bus().await;
    // An operator shrank the window by hand: tg-bridge needs at least an hour.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut cfg = tgb_bus::events_stream(&BusConfig::default());
    cfg.duplicate_window = Duration::from_secs(60);
    js.update_stream(cfg).await.unwrap();
    let (bus, log) = connect_logged(&server.url(), BusConfig::default()).await;
    let bus = bus.expect("a short window is raised in place");
    assert_eq!(
        events_config(&bus).await.duplicate_window,
        Duration::from_secs(3600)
    );
    assert!(log.contains("duplicate_window 60s -> 3600s"), "{log}");
}

#[tokio::test]
async fn a_bucket_history_changed_by_hand_is_restored_in_place() {
    let (server, bus) = server_and_bus().await;
    let mut links = bus
        .jetstream()
        .get_stream(format!("KV_{}", names::KV_LINKS))
        .await
        .unwrap();
    let mut cfg = links.info().await.unwrap().config.clone();
    cfg.max_messages_per_subject = 2;
    bus.jetstream().update_stream(&cfg).await.unwrap();

    let (again, log) = connect_logged(&server.url(), BusConfig::default()).await;
    again.expect("history changes in place");
    let info = links.info().await.unwrap();
    assert_eq!(info.config.max_messages_per_subject, 5);
    assert!(
        log.contains("updated KV bucket tgb_links in place: history 2 -> 5"),
        "{log}"
    );
}
