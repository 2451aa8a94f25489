use std::time::Duration;

use tgb_runtime::Config;
use tgb_testkit::{NatsServer, eventually};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn it_connects_provisions_serves_health_and_metrics_and_stops_on_shutdown() {
    tgb_testkit::init_test_tracing();
    let nats = NatsServer::start().await.unwrap();
    let config = Config::load_from(None, [("TGB_NATS_URL".to_owned(), nats.url())]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(sla_monitor::serve(config, listener, shutdown.clone()));

    let http = reqwest::Client::new();
    eventually("ready", Duration::from_secs(20), || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await
    .unwrap();
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);

    // It provisioned the streams.
    let js = async_nats_jetstream(&nats.url()).await;
    js.get_stream("TGB_EVENTS").await.unwrap();
    js.get_stream("TGB_DLQ").await.unwrap();

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), service)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

async fn async_nats_jetstream(url: &str) -> tgb_bus::async_nats::jetstream::Context {
    let client = tgb_bus::async_nats::connect(url).await.unwrap();
    tgb_bus::async_nats::jetstream::new(client)
}

#[test]
fn the_shipped_configuration_is_valid_and_takes_tiers_from_partners() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tg-bridge.toml");
    let config = Config::load_from(Some(&file), Vec::<(String, String)>::new()).unwrap();
    let policies = sla_monitor::policies_from(&config).unwrap();
    assert_eq!(policies.tier_of("ZZ:ACME01"), "strategic");
    assert_eq!(policies.tier_of("ZZ:SOMEONE"), "standard");
    let urgent = policies.get("strategic", "urgent");
    assert_eq!(urgent.first_response, Duration::from_secs(30 * 60));
    assert_eq!(urgent.escalation.len(), 2);
    assert_eq!(policies.settings().tick_interval_ms, 1000);
}
