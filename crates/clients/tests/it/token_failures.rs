//! A TG secret the token endpoint refuses, or a token endpoint that is down, is counted in
//! `tgb_token_refresh_failures_total{target="tg"}` (the alert TgbTokenRefreshFailing reads it).

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tgb_clients::oauth::{ClientCredentials, TokenCache};
use tgb_clients::tg::{TgClient, TgError};

/// A stand-in whose token endpoint answers `status` to every request.
async fn token_endpoint(status: u16) -> String {
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move || async move {
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                axum::Json(serde_json::json!({"error": "invalid_client"})),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn client(base: &str) -> TgClient {
    let http = TgClient::http_client(Duration::from_secs(30));
    let tokens = TokenCache::new(
        http.clone(),
        ClientCredentials::new(
            format!("{base}/token").parse().unwrap(),
            "tg-client",
            SecretString::from("expired-secret"),
        ),
    );
    TgClient::new(http, base.parse().unwrap(), Arc::new(tokens))
}

#[test]
fn refused_and_unavailable_tg_tokens_are_counted_by_reason() {
    let text = crate::metrics_of(|| async {
        let refused = client(&token_endpoint(401).await);
        for _ in 0..2 {
            let e = refused.case("C-1").await.unwrap_err();
            assert!(matches!(e, TgError::Auth(_)), "{e}");
        }
        let down = client(&token_endpoint(503).await);
        let e = down.case("C-1").await.unwrap_err();
        assert!(matches!(e, TgError::Auth(_)), "{e}");
    });
    assert!(
        text.contains(r#"tgb_token_refresh_failures_total{target="tg",reason="refused"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tgb_token_refresh_failures_total{target="tg",reason="unavailable"} 1"#),
        "{text}"
    );
    assert!(!text.contains("expired-secret"), "{text}");
}
