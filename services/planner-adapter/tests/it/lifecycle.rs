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

#[tokio::test]
async fn it_refuses_to_start_without_a_routing_section_and_names_it() {
    // A configuration with only [bus]: before, the adapter started and skipped every case.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, b"[bus]\nreplicas = 1\n").unwrap();
    let env = [
        ("TGB_NATS_URL", "nats://127.0.0.1:9"),
        ("TGB_AZURE_TENANT_ID", "tenant"),
        ("TGB_AZURE_CLIENT_ID", "tgb-bridge"),
        ("TGB_AZURE_CLIENT_SECRET", "tgb-bridge-secret"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let config = tgb_runtime::Config::load_from(Some(file.path()), env).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = planner_adapter::serve(config, listener, Default::default())
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("section [routing] is required by planner-adapter")
            && text.contains(&file.path().display().to_string()),
        "{text}"
    );
    assert!(
        err.chain().any(|e| matches!(
            e.downcast_ref::<tgb_runtime::ConfigError>(),
            Some(tgb_runtime::ConfigError::MissingSection { section, .. }) if section == "routing"
        )),
        "{text}"
    );
}
