//! The listener's bounds against slow and numerous clients, over raw loopback TCP where a
//! well-behaved HTTP client could not misbehave on purpose.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use reqwest::StatusCode;
use serde_json::Value;
use tgb_runtime::http::{AlwaysReady, HttpLimits};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

use crate::support::{App, DEADLINE};

/// Short bounds, so a test that waits for one does not wait long; the tests never assert how
/// long anything took.
fn short(limits: HttpLimits) -> HttpLimits {
    HttpLimits {
        header_read_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_millis(300),
        ..limits
    }
}

/// Reads until the server closes the connection (EOF or reset); what it sent first, if anything.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server never closed the connection");
    received
}

/// One HTTP/1.1 response read off a raw stream: status and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let response = tokio::time::timeout(DEADLINE, async {
        loop {
            let text = String::from_utf8_lossy(&received).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = &text[..end];
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if received.len() >= end + 4 + length {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return (status, text[end + 4..end + 4 + length].to_owned());
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before a full response: {text:?}");
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    response.expect("a response arrived")
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = App::spawn_with(
        Router::new(),
        Arc::new(AlwaysReady),
        short(HttpLimits::default()),
    )
    .await;
    let mut partial = TcpStream::connect(app.addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(app.addr).await.unwrap();

    let answer = read_until_closed(&mut partial).await;
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "an unfinished request was served"
    );
    read_until_closed(&mut silent).await;
    // The listener itself is fine.
    let ok = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_whose_body_never_arrives_is_answered_408_with_a_json_error() {
    let routes = Router::new().route("/echo", post(|body: String| async move { body }));
    let app = App::spawn_with(routes, Arc::new(AlwaysReady), short(HttpLimits::default())).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
              Content-Length: 100\r\n\r\nonly ten b",
        )
        .await
        .unwrap();

    let (status, body) = read_response(&mut stream).await;
    assert_eq!(status, 408, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");

    // A request that arrives whole is served as before.
    let echoed = reqwest::Client::new()
        .post(app.url("/echo"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), StatusCode::OK);
    assert_eq!(echoed.text().await.unwrap(), "hello");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_answered_503_and_health_still_answers() {
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started_rx) = mpsc::channel::<()>(8);
    let routes = Router::new().route(
        "/hold",
        get({
            let gate = gate.clone();
            move || {
                let gate = gate.clone();
                let started_tx = started_tx.clone();
                async move {
                    started_tx.send(()).await.unwrap();
                    gate.acquire().await.unwrap().forget();
                    "done"
                }
            }
        }),
    );
    let limits = HttpLimits {
        max_concurrent_requests: 2,
        ..HttpLimits::default()
    };
    let app = App::spawn_with(routes, Arc::new(AlwaysReady), limits).await;
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(reqwest::get(app.url("/hold"))))
        .collect();
    for _ in 0..2 {
        tokio::time::timeout(DEADLINE, started_rx.recv())
            .await
            .expect("a held request reached its handler")
            .unwrap();
    }

    let refused = reqwest::get(app.url("/hold")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "health is not limited");

    gate.add_permits(3);
    for request in held {
        let response = tokio::time::timeout(DEADLINE, request)
            .await
            .expect("a held request completes")
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let again = reqwest::get(app.url("/hold")).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "the slots are free again");
    app.stop().await.unwrap();
}
