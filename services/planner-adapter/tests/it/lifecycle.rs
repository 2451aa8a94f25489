use tgb_testkit::RunningService;

use crate::support::World;

#[tokio::test]
async fn it_connects_provisions_serves_health_and_metrics_and_stops_on_shutdown() {
    let mut w = World::start().await;
    let config = crate::support::config(&w.nats, &w.sandbox, &[]);
    let service = RunningService::start(&w.nats.url(), |listener, shutdown| {
        planner_adapter::serve(config, listener, shutdown)
    })
    .await;
    // The only replica takes the poller lease.
    service
        .wait_for_metric("poller leader gauge", |l| {
            l == "tgb_planner_poller_leader 1"
        })
        .await;
    service.stop().await;
    w.stop_adapter().await;
}

#[tokio::test]
async fn a_routing_mistake_stops_the_start_with_the_key_named() {
    let w = World::start().await;
    let config = crate::support::config(
        &w.nats,
        &w.sandbox,
        &[("TGB_ROUTING__PRIORITIES__HIGH", "very")],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = planner_adapter::serve(config, listener, Default::default())
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("priorities.high"), "{err:#}");
}
