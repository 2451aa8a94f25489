use tgb_runtime::Config;
use tgb_testkit::{NatsServer, RunningService};
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
    let config = Config::load_from(Some(&shipped_file()), vars).unwrap();
    let service = RunningService::start(&nats.url(), |listener, shutdown| {
        document_review::serve(config, listener, shutdown)
    })
    .await;
    service.stop().await;
}

#[tokio::test]
async fn it_refuses_to_start_without_the_tg_api_or_with_a_bad_policy() {
    let nats = NatsServer::start().await.unwrap();
    let config = Config::load_from(
        Some(&shipped_file()),
        [("TGB_NATS_URL".to_owned(), nats.url())],
    )
    .unwrap();
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
    let config = Config::load_from(Some(&shipped_file()), Vec::<(String, String)>::new()).unwrap();
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

fn shipped_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/tg-bridge.toml")
}

#[tokio::test]
async fn it_refuses_to_start_without_its_documents_or_onboarding_section_and_names_it() {
    let tg = [
        ("TGB_NATS_URL", "nats://127.0.0.1:9"),
        ("TGB_TG_API_URL", "http://127.0.0.1:9/tg"),
        ("TGB_TG_TOKEN_URL", "http://127.0.0.1:9/tg/oauth2/token"),
        ("TGB_TG_CLIENT_ID", "tgb-bridge"),
        ("TGB_TG_CLIENT_SECRET", "tg-secret"),
    ];
    for (text, missing) in [
        ("[bus]\nreplicas = 1\n", "documents"),
        ("[documents]\nmax_size_bytes = 4096\n", "onboarding"),
    ] {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        let env = tg.map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = Config::load_from(Some(file.path()), env).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = document_review::serve(config, listener, CancellationToken::new())
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!(
                "section [{missing}] is required by document-review"
            )) && text.contains(&file.path().display().to_string()),
            "{text}"
        );
    }
}
