use tgb_runtime::Config;
use tgb_testkit::{NatsServer, RunningService};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn it_connects_provisions_serves_health_and_metrics_and_stops_on_shutdown() {
    tgb_testkit::init_test_tracing();
    let nats = NatsServer::start().await.unwrap();
    // The TG endpoints are only called when an event arrives.
    let config = Config::load_from(
        None,
        [
            ("TGB_NATS_URL", nats.url()),
            ("TGB_TG_API_URL", "http://127.0.0.1:9/tg".into()),
            (
                "TGB_TG_TOKEN_URL",
                "http://127.0.0.1:9/tg/oauth2/token".into(),
            ),
            ("TGB_TG_CLIENT_ID", "tgb-bridge".into()),
            ("TGB_TG_CLIENT_SECRET", "tg-secret".into()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    )
    .unwrap();
    let service = RunningService::start(&nats.url(), |listener, shutdown| {
        tg_egress::serve(config, listener, shutdown)
    })
    .await;
    service.stop().await;
}

#[tokio::test]
async fn it_refuses_to_start_without_the_tg_api_settings() {
    let nats = NatsServer::start().await.unwrap();
    let config = Config::load_from(None, [("TGB_NATS_URL".to_owned(), nats.url())]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = tg_egress::serve(config, listener, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("TGB_TG_API_URL"), "{err:#}");
}

#[test]
fn the_default_config_file_holds_the_egress_defaults() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tg-bridge.toml");
    let config = Config::load_from(Some(&file), Vec::new()).unwrap();
    let from_file: tg_egress::EgressSettings = config.section("tg_egress").unwrap();
    let defaults = tg_egress::EgressSettings::default();
    assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
}
