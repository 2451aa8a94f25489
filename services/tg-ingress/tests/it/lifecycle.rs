use tgb_runtime::Config;
use tgb_testkit::{NatsServer, RunningService, eventually};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn it_connects_provisions_serves_health_and_metrics_and_stops_on_shutdown() {
    tgb_testkit::init_test_tracing();
    let nats = NatsServer::start().await.unwrap();
    let config = Config::load_from(None, [("TGB_NATS_URL".to_owned(), nats.url())]).unwrap();
    let service = RunningService::start(&nats.url(), |listener, shutdown| {
        tg_ingress::serve(config, listener, shutdown)
    })
    .await;
    // Every service reports the DLQ depth.
    service
        .wait_for_metric("tgb_dlq_depth exported", |l| {
            l.starts_with("tgb_dlq_depth 0")
        })
        .await;
    service.stop().await;
}

#[tokio::test]
async fn readyz_answers_503_while_nats_is_down_and_200_after_it_returns() {
    tgb_testkit::init_test_tracing();
    let mut nats = NatsServer::start().await.unwrap();
    let config = Config::load_from(None, [("TGB_NATS_URL".to_owned(), nats.url())]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(tg_ingress::serve(config, listener, shutdown.clone()));
    let http = reqwest::Client::new();
    let status = |http: reqwest::Client, base: String| async move {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    };
    eventually("ready", tgb_testkit::HANG_GUARD, || async {
        (status(http.clone(), base.clone()).await == Some(200)).then_some(())
    })
    .await
    .unwrap();
    nats.stop().await;
    eventually("not ready", tgb_testkit::HANG_GUARD, || async {
        (status(http.clone(), base.clone()).await == Some(503)).then_some(())
    })
    .await
    .unwrap();
    nats.start_again().await.unwrap();
    eventually("ready again", tgb_testkit::HANG_GUARD, || async {
        (status(http.clone(), base.clone()).await == Some(200)).then_some(())
    })
    .await
    .unwrap();
    shutdown.cancel();
    service.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_binary_exits_0_on_sigterm() {
    let nats = NatsServer::start().await.unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tg-ingress"))
        .env("TGB_NATS_URL", nats.url())
        .env("TGB_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env_remove("TGB_CONFIG")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    eventually("binary ready", tgb_testkit::HANG_GUARD, || async {
        let r = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await
    .unwrap();
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(tgb_testkit::HANG_GUARD, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{exit:?}");
}

#[test]
fn the_default_config_file_holds_the_ingress_defaults() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tg-bridge.toml");
    let config = Config::load_from(Some(&file), Vec::new()).unwrap();
    let from_file: tg_ingress::IngressSettings = config.section("tg_ingress").unwrap();
    let defaults = tg_ingress::IngressSettings::default();
    assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    let overridden = Config::load_from(
        Some(&file),
        [(
            "TGB_TG_INGRESS__POLL_INTERVAL_MS".to_owned(),
            "250".to_owned(),
        )],
    )
    .unwrap();
    let s: tg_ingress::IngressSettings = overridden.section("tg_ingress").unwrap();
    assert_eq!(s.poll_interval_ms, 250);
}
