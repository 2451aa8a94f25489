use tgb_runtime::Config;
use tgb_testkit::{NatsServer, RunningService};

#[tokio::test]
async fn it_connects_provisions_serves_health_and_metrics_and_stops_on_shutdown() {
    tgb_testkit::init_test_tracing();
    let nats = NatsServer::start().await.unwrap();
    let config = Config::load_from(None, [("TGB_NATS_URL".to_owned(), nats.url())]).unwrap();
    let service = RunningService::start(&nats.url(), |listener, shutdown| {
        dynamics_adapter::serve(config, listener, shutdown)
    })
    .await;
    service.stop().await;
}
