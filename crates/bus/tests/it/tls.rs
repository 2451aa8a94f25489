//! TLS with a private CA and client certificates, and credentials kept out of errors, against a
//! real nats-server.

use tgb_bus::{Bus, BusConfig, BusError, NatsAuth};
use tgb_testkit::NatsServer;
use tgb_testkit::tls::Pki;
use tracing::instrument::WithSubscriber;

/// Log lines written while a future runs.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn a_client_certificate_from_the_private_ca_connects_and_provisions() {
    tgb_testkit::init_test_tracing();
    let pki = Pki::generate();
    let server = NatsServer::start_with_config(&pki.server_block())
        .await
        .expect("nats-server with TLS");
    let auth = NatsAuth {
        tls_ca: Some(pki.path("ca.pem")),
        tls_cert: Some(pki.path("client.pem")),
        tls_key: Some(pki.path("client-key.pem")),
        ..NatsAuth::default()
    };
    let bus = Bus::connect_with(&server.url(), &auth, BusConfig::default())
        .await
        .expect("TLS with a client certificate");
    bus.ready().await.expect("ready over TLS");
    // The connection really is TLS: the server requires it, and the client says so.
    assert!(bus.client().server_info().tls_required);
}

#[tokio::test]
async fn without_a_client_certificate_the_connection_is_refused_with_a_clear_error() {
    tgb_testkit::init_test_tracing();
    let pki = Pki::generate();
    let server = NatsServer::start_with_config(&pki.server_block())
        .await
        .expect("nats-server with TLS");
    let only_ca = NatsAuth {
        tls_ca: Some(pki.path("ca.pem")),
        ..NatsAuth::default()
    };
    let err = Bus::connect_with(&server.url(), &only_ca, BusConfig::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BusError::Connect { .. }), "{text}");
    assert!(
        text.contains("cannot connect to NATS at nats://127.0.0.1:")
            && text.contains("requires a TLS client certificate")
            && text.contains("TGB_NATS_TLS_CERT"),
        "{text}"
    );

    // Without the private CA the server's certificate is not trusted: also refused, and said.
    let no_ca = NatsAuth {
        tls_cert: Some(pki.path("client.pem")),
        tls_key: Some(pki.path("client-key.pem")),
        ..NatsAuth::default()
    };
    let err = Bus::connect_with(&server.url(), &no_ca, BusConfig::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, BusError::Connect { .. }) && text.contains("TGB_NATS_TLS_CA"),
        "{text}"
    );
}

#[tokio::test]
async fn a_half_given_client_certificate_or_a_missing_file_is_named_before_connecting() {
    let pki = Pki::generate();
    let half = NatsAuth {
        tls_cert: Some(pki.path("client.pem")),
        ..NatsAuth::default()
    };
    let err = Bus::connect_with("nats://127.0.0.1:9", &half, BusConfig::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("needs both tls_cert and tls_key"),
        "{err}"
    );

    let missing = NatsAuth {
        tls_ca: Some(pki.path("nowhere.pem")),
        ..NatsAuth::default()
    };
    let err = Bus::connect_with("nats://127.0.0.1:9", &missing, BusConfig::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("TLS CA file") && err.to_string().contains("nowhere.pem"),
        "{err}"
    );
}

#[tokio::test]
async fn a_password_in_the_url_never_appears_in_the_error() {
    tgb_testkit::init_test_tracing();
    let server = NatsServer::start_with_config(
        "authorization { users = [ { user: \"svc\", password: \"right-pa55word\" } ] }\n",
    )
    .await
    .expect("nats-server with users");
    let port = server.port();
    // A wrong password: the server refuses, and the error names the server, not the secret;
    // nor does any log line written meanwhile (debug level included).
    let url = format!("nats://svc:wr0ng-pa55word@127.0.0.1:{port}");
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let err = Bus::connect(&url, None, BusConfig::default())
        .with_subscriber(subscriber)
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("wr0ng-pa55word"), "{text}");
    let log = captured.text();
    assert!(!log.contains("wr0ng-pa55word"), "{log}");
    assert!(
        text.contains(&format!("nats://REDACTED@127.0.0.1:{port}"))
            && text.contains("authorization violation"),
        "{text}"
    );
    // The right one connects, and is not logged either.
    let url = format!("nats://svc:right-pa55word@127.0.0.1:{port}");
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    Bus::connect(&url, None, BusConfig::default())
        .with_subscriber(subscriber)
        .await
        .expect("the right password connects");
    let log = captured.text();
    assert!(!log.is_empty() && !log.contains("right-pa55word"), "{log}");
}
