use std::time::Duration;

use tgb_runtime::Config;
use tgb_testkit::{NatsServer, RunningService};

#[tokio::test]
async fn it_connects_provisions_serves_health_and_metrics_and_stops_on_shutdown() {
    tgb_testkit::init_test_tracing();
    let nats = NatsServer::start().await.unwrap();
    let config = Config::load_from(None, [("TGB_NATS_URL".to_owned(), nats.url())]).unwrap();
    let service = RunningService::start(&nats.url(), |listener, shutdown| {
        sla_monitor::serve(config, listener, shutdown)
    })
    .await;
    service.stop().await;
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
