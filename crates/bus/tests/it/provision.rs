use std::time::Duration;

use tgb_bus::{Bus, BusConfig, ProvisionError, names};

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

#[tokio::test]
async fn a_conflicting_stream_is_reported_not_replaced() {
    let (server, bus) = server_and_bus().await;
    let other = BusConfig {
        max_age: Duration::from_secs(60),
        ..BusConfig::default()
    };
    let err = Bus::connect(&server.url(), None, other).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            tgb_bus::BusError::Provision(ProvisionError::Conflict {
                field: "max_age",
                ..
            })
        ),
        "{text}"
    );
    assert!(
        text.contains("TGB_EVENTS") && text.contains("never replaced"),
        "{text}"
    );
    // The stream kept its configuration.
    let mut stream = bus
        .jetstream()
        .get_stream(names::EVENTS_STREAM)
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.max_age, BusConfig::default().max_age);
}

#[tokio::test]
async fn a_duplicate_window_under_an_hour_is_a_conflict_with_an_existing_stream() {
    let (server, _bus) = server_and_bus().await;
    // An operator shrank the window by hand: tg-bridge refuses to run on it.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut cfg = tgb_bus::events_stream(&BusConfig::default());
    cfg.duplicate_window = Duration::from_secs(60);
    js.update_stream(cfg).await.unwrap();
    let err = Bus::connect(&server.url(), None, BusConfig::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("duplicate_window"), "{err}");
}
