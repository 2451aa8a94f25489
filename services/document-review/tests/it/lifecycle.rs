use std::time::Duration;

use tgb_runtime::Config;
use tgb_testkit::{NatsServer, eventually};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn it_connects_provisions_serves_health_and_metrics_and_stops_on_shutdown() {
    tgb_testkit::init_test_tracing();
    let nats = NatsServer::start().await.unwrap();
    let vars = [
        ("TGB_NATS_URL", nats.url()),
        ("TGB_TG_API_URL", "http://127.0.0.1:9/tg".to_owned()),
        (
            "TGB_TG_TOKEN_URL",
            "http://127.0.0.1:9/tg/oauth2/token".to_owned(),
        ),
        ("TGB_TG_CLIENT_ID", "tgb-bridge".to_owned()),
        ("TGB_TG_CLIENT_SECRET", "tg-secret".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let config = Config::load_from(None, vars).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(document_review::serve(config, listener, shutdown.clone()));

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

#[tokio::test]
async fn it_refuses_to_start_without_the_tg_api_or_with_a_bad_policy() {
    let nats = NatsServer::start().await.unwrap();
    let config = Config::load_from(None, [("TGB_NATS_URL".to_owned(), nats.url())]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = document_review::serve(config, listener, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TGB_TG_API_URL"), "{err}");

    let vars = [
        ("TGB_NATS_URL", nats.url()),
        ("TGB_DOCUMENTS__MAX_SIZE_BYTES", "0".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let config = Config::load_from(None, vars).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = document_review::serve(config, listener, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("documents.max_size_bytes"),
        "{err}"
    );
}

#[test]
fn the_shipped_configuration_is_valid() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tg-bridge.toml");
    let config = Config::load_from(Some(&file), Vec::<(String, String)>::new()).unwrap();
    let (docs, onboarding) = document_review::settings_from(&config).unwrap();
    assert_eq!(docs.max_size_bytes, 25 * 1024 * 1024);
    assert_eq!(docs.review["compliance_certificate"].due_days, 5);
    let keys: Vec<&str> = onboarding.steps.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "account_setup",
            "edi_mapping",
            "compliance_checks",
            "testing"
        ]
    );
}
