use std::time::Duration;

use tgb_runtime::Config;
use tgb_testkit::{NatsServer, RunningService};

#[tokio::test]
async fn it_connects_provisions_serves_health_and_metrics_and_stops_on_shutdown() {
    tgb_testkit::init_test_tracing();
    let nats = NatsServer::start().await.unwrap();
    let config = Config::load_from(
        Some(&shipped_file()),
        [("TGB_NATS_URL".to_owned(), nats.url())],
    )
    .unwrap();
    let service = RunningService::start(&nats.url(), |listener, shutdown| {
        sla_monitor::serve(config, listener, shutdown)
    })
    .await;
    service.stop().await;
}

#[test]
fn the_shipped_configuration_is_valid_and_takes_tiers_from_partners() {
    let config = Config::load_from(Some(&shipped_file()), Vec::<(String, String)>::new()).unwrap();
    let policies = sla_monitor::policies_from(&config).unwrap();
    assert_eq!(policies.tier_of("ZZ:ACME01"), "strategic");
    assert_eq!(policies.tier_of("ZZ:SOMEONE"), "standard");
    let urgent = policies.get("strategic", "urgent");
    assert_eq!(urgent.first_response, Duration::from_secs(30 * 60));
    assert_eq!(urgent.escalation.len(), 2);
    assert_eq!(policies.settings().tick_interval_ms, 1000);
}

fn shipped_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tg-bridge.toml")
}

#[tokio::test]
async fn it_refuses_to_start_without_an_sla_section_and_names_it() {
    // Only [bus], from the environment, and no file: no SLA policy is invented.
    let env = [
        ("TGB_NATS_URL", "nats://127.0.0.1:9"),
        ("TGB_BUS__REPLICAS", "1"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let config = Config::load_from(None, env).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = sla_monitor::serve(config, listener, Default::default())
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("section [sla] is required by sla-monitor")
            && text.contains("no configuration file"),
        "{text}"
    );
}
