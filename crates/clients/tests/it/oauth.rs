use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use secrecy::{ExposeSecret as _, SecretString};
use tgb_clients::oauth::{ClientCredentials, OAuthError, TokenCache};

/// A token endpoint issuing `tok-N` valid for `lifetime` seconds; counts the grants.
async fn issuer(lifetime: u64, status: u16) -> (String, Arc<AtomicU64>) {
    let issued = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(
                move |State(n): State<Arc<AtomicU64>>, body: String| async move {
                    assert!(body.contains("grant_type=client_credentials"), "{body}");
                    assert!(body.contains("client_secret=s3cret"), "{body}");
                    let i = n.fetch_add(1, Ordering::SeqCst) + 1;
                    let code = axum::http::StatusCode::from_u16(status).unwrap();
                    (
                        code,
                        axum::Json(serde_json::json!({
                            "access_token": format!("tok-{i}"),
                            "token_type": "Bearer",
                            "expires_in": lifetime,
                        })),
                    )
                },
            ),
        )
        .with_state(issued.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, issued)
}

fn cache(url: &str) -> TokenCache {
    TokenCache::new(
        reqwest::Client::new(),
        ClientCredentials::new(url.parse().unwrap(), "me", SecretString::from("s3cret")),
    )
}

#[tokio::test]
async fn a_token_is_reused_until_its_refresh_point() {
    let (url, issued) = issuer(3600, 200).await;
    let c = cache(&url);
    assert_eq!(c.token().await.unwrap().expose_secret(), "tok-1");
    assert_eq!(c.token().await.unwrap().expose_secret(), "tok-1");
    assert_eq!(issued.load(Ordering::SeqCst), 1);
    // Invalidating another token keeps the cached one; invalidating it forces a refresh.
    c.invalidate(&SecretString::from("tok-0")).await;
    assert_eq!(c.token().await.unwrap().expose_secret(), "tok-1");
    c.invalidate(&SecretString::from("tok-1")).await;
    assert_eq!(c.token().await.unwrap().expose_secret(), "tok-2");
}

#[tokio::test]
async fn a_token_at_its_refresh_point_is_replaced_before_use() {
    // Lifetime 0: the refresh point is the moment of issue, so every call refreshes.
    let (url, issued) = issuer(0, 200).await;
    let c = cache(&url);
    assert_eq!(c.token().await.unwrap().expose_secret(), "tok-1");
    assert_eq!(c.token().await.unwrap().expose_secret(), "tok-2");
    assert_eq!(issued.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refused_and_unavailable_issuers_are_told_apart() {
    let (url, _) = issuer(3600, 401).await;
    let e = cache(&url).token().await.unwrap_err();
    assert!(matches!(e, OAuthError::Refused { status: 401, .. }), "{e}");
    assert!(!e.is_transient());
    let (url, _) = issuer(3600, 503).await;
    let e = cache(&url).token().await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    let e = cache("http://127.0.0.1:9/token").token().await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}
