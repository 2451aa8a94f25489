//! A Graph 503 with `Retry-After` delays the retry of that request only: the lane's other
//! requests go on, and its rate is not lowered.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::json;
use tgb_clients::graph::{GraphClient, GraphError};
use tgb_clients::oauth::{ClientCredentials, TokenCache};
use tgb_governor::{Governor, GovernorConfig};

/// A stand-in Graph: task `down` answers 503 with `Retry-After: 30`, any other task 200.
async fn graph() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(|| async {
                axum::Json(json!({"access_token": "t", "token_type": "Bearer", "expires_in": 3600}))
            }),
        )
        .route(
            "/v1.0/planner/tasks/{id}",
            axum::routing::get(|axum::extract::Path(id): axum::extract::Path<String>| async move {
                if id == "down" {
                    let mut h = HeaderMap::new();
                    h.insert("retry-after", "30".parse().unwrap());
                    let body = json!({"error": {"code": "ServiceUnavailable", "message": "try later"}});
                    return (StatusCode::SERVICE_UNAVAILABLE, h, axum::Json(body));
                }
                let body = json!({"id": id, "planId": "p", "bucketId": "b", "title": "t",
                    "@odata.etag": "W/\"1\"", "percentComplete": 0, "assignments": {}, "appliedCategories": {}});
                (StatusCode::OK, HeaderMap::new(), axum::Json(body))
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test]
async fn a_503_delays_its_own_retry_and_not_the_lanes_other_requests() {
    let base = graph().await;
    let tokens = Arc::new(TokenCache::new(
        reqwest::Client::new(),
        ClientCredentials::new(
            format!("{base}/token").parse().unwrap(),
            "me",
            secrecy::SecretString::from("s"),
        ),
    ));
    let governor = Governor::new("graph:test", GovernorConfig::default());
    let graph = GraphClient::new(
        GraphClient::http_client(Duration::from_secs(30)),
        base.parse().unwrap(),
        tokens,
        governor.clone(),
        "me",
    );

    let err = graph.get_task("down").await.expect_err("503");
    assert!(
        matches!(&err, GraphError::Transient { retry_after: Some(d), .. } if *d == Duration::from_secs(30)),
        "the request's own retry waits what Graph asked: {err:?}"
    );
    assert_eq!(
        governor.pause_remaining(),
        None,
        "the lane is not paused by a 503"
    );
    assert_eq!(governor.state().throttled, 0, "a 503 is not a rate limit");
    let task = graph
        .get_task("up")
        .await
        .expect("the lane's next request goes on");
    assert_eq!(task.id, "up");
}
