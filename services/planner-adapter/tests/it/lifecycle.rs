use std::time::Duration;

use tgb_testkit::eventually;

use crate::support::World;

#[tokio::test]
async fn it_connects_provisions_serves_health_and_metrics_and_stops_on_shutdown() {
    let mut w = World::start().await;
    let config = crate::support::config(&w.nats, &w.sandbox, &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let service = tokio::spawn(planner_adapter::serve(config, listener, shutdown.clone()));

    let http = reqwest::Client::new();
    eventually("ready", Duration::from_secs(20), || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    w.bus.jetstream().get_stream("TGB_EVENTS").await.unwrap();
    // The only replica takes the poller lease.
    eventually("poller leader gauge", Duration::from_secs(20), || async {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l == "tgb_planner_poller_leader 1")
            .then_some(())
    })
    .await
    .unwrap();

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), service)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
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
