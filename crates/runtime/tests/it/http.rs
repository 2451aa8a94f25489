//! The HTTP listener over real loopback HTTP on port 0.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tgb_runtime::http::{AlwaysReady, Readiness, readiness_fn};
use tokio::sync::{mpsc, oneshot};

use crate::support::{App, DEADLINE, wait_until};

/// Ready or not, as the test says.
struct Switch(Mutex<Result<(), String>>);

impl Readiness for Switch {
    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        let state = self.0.lock().unwrap().clone();
        Box::pin(async move { state })
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let app = App::spawn(Router::new(), Arc::new(AlwaysReady)).await;
    let response = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn readyz_answers_200_when_ready_and_503_with_the_reason_when_not() {
    let switch = Arc::new(Switch(Mutex::new(Ok(()))));
    let app = App::spawn(Router::new(), switch.clone()).await;

    let response = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"ready": true})
    );

    *switch.0.lock().unwrap() = Err("stream TGB_EVENTS missing".into());
    let response = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"ready": false, "reason": "stream TGB_EVENTS missing"})
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_include_a_counter_incremented_in_the_test() {
    let app = App::spawn(Router::new(), Arc::new(AlwaysReady)).await;
    // `serve` installs the recorder too, maybe not yet: installing here (same handle) makes
    // sure the increment is recorded.
    tgb_runtime::metrics::install();
    metrics::counter!("tgb_runtime_it_widgets_total", "kind" => "test").increment(3);

    let response = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let body = response.text().await.unwrap();
    assert!(
        body.lines()
            .any(|l| l == "tgb_runtime_it_widgets_total{kind=\"test\"} 3"),
        "{body}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_http_requests_by_route_and_status() {
    let app = App::spawn(Router::new(), Arc::new(AlwaysReady)).await;
    let response = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let body = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("tgb_http_requests_total{")
                && l.contains("route=\"/healthz\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no request counter for /healthz in {body}"));
    let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1, "{line}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn service_routes_are_served_next_to_the_runtime_endpoints() {
    let routes = Router::new().route("/hello", get(|| async { "hello from the service" }));
    let app = App::spawn(routes, Arc::new(AlwaysReady)).await;
    let response = reqwest::get(app.url("/hello")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "hello from the service");
    let response = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn cancelling_the_token_lets_an_in_flight_request_finish_then_serve_returns() {
    let (started_tx, mut started_rx) = mpsc::channel::<()>(1);
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let routes = Router::new().route(
        "/slow",
        get(move || {
            let started_tx = started_tx.clone();
            let release_rx = release_rx.clone();
            async move {
                started_tx.send(()).await.unwrap();
                let release = release_rx.lock().await.take().unwrap();
                release.await.unwrap();
                "finished"
            }
        }),
    );
    let app = App::spawn(routes, Arc::new(AlwaysReady)).await;

    let request = tokio::spawn(reqwest::get(app.url("/slow")));
    tokio::time::timeout(DEADLINE, started_rx.recv())
        .await
        .expect("the slow handler started")
        .unwrap();

    app.shutdown.cancel();
    // Shutdown has begun once the listener is closed: new connections are refused.
    let addr = app.addr;
    wait_until("the listener refuses new connections", || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !app.server.is_finished(),
        "serve waits for the in-flight request"
    );
    assert!(!request.is_finished(), "the request is still in flight");

    release_tx.send(()).unwrap();
    let response = tokio::time::timeout(DEADLINE, request)
        .await
        .expect("the in-flight request completes")
        .unwrap()
        .expect("the in-flight request is answered, not cut off");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "finished");

    let served = tokio::time::timeout(DEADLINE, app.server)
        .await
        .expect("serve returns after draining")
        .unwrap();
    assert!(served.is_ok(), "{served:?}");
}

#[tokio::test]
async fn readiness_from_a_closure_reports_its_reason() {
    let readiness = readiness_fn(|| async { Err("NATS disconnected".to_owned()) });
    let app = App::spawn(Router::new(), readiness).await;
    let response = reqwest::get(app.url("/readyz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.json::<Value>().await.unwrap()["reason"],
        "NATS disconnected"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_path_is_404_and_still_served_after() {
    let app = App::spawn(Router::new(), Arc::new(AlwaysReady)).await;
    let response = reqwest::get(app.url("/nope")).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn sla_histograms_have_buckets_up_to_a_week() {
    tgb_runtime::metrics::install();
    metrics::histogram!("tgb_sla_time_to_resolution_seconds_bucket_test").record(5400.0);
    let text = tgb_runtime::metrics::install().render();
    assert!(
        text.contains("tgb_sla_time_to_resolution_seconds_bucket_test_bucket{le=\"7200\"} 1"),
        "{text}"
    );
    assert!(text.contains("tgb_sla_time_to_resolution_seconds_bucket_test_bucket{le=\"3600\"} 0"));
}
