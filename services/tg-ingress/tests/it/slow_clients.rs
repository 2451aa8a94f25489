//! Slow and unsigned clients cannot hold the webhook listener: a request that cannot verify is
//! refused from its headers, before its body is read, and hundreds of clients trickling
//! headers or bodies do not keep a valid webhook from being answered.

use std::time::Instant;

use serde_json::Value;
use tgb_sandbox::SandboxConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{Env, SECRET, case_created, now};

/// The address part of `http://host:port`.
fn addr(env: &Env) -> String {
    env.base.trim_start_matches("http://").to_owned()
}

/// Headers of a webhook POST declaring `length` body bytes, plus `extra` header lines.
fn head(length: usize, extra: &str) -> String {
    format!(
        "POST /webhooks/tg HTTP/1.1\r\nHost: tg-ingress\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n{extra}\r\n"
    )
}

/// One HTTP/1.1 response off a raw stream: status and JSON body.
async fn read_response(stream: &mut TcpStream) -> (u16, Value) {
    let read = async {
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
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
                    let body = serde_json::from_str(&text[end + 4..end + 4 + length])
                        .unwrap_or(Value::Null);
                    return (status, body);
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before a full response: {text:?}");
            received.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(tgb_testkit::HANG_GUARD, read)
        .await
        .expect("a response arrived")
}

#[tokio::test]
async fn unsigned_or_stale_webhooks_are_refused_before_their_body_is_sent() {
    let env = Env::start(SandboxConfig::default(), &[]).await;
    let signature = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let cases = [
        ("", "missing_signature"),
        (
            &format!("webhook-id: evt_1\r\nwebhook-timestamp: {}\r\n", now()) as &str,
            "missing_signature",
        ),
        (
            &format!(
                "webhook-id: evt_1\r\nwebhook-timestamp: {}\r\nwebhook-signature: {signature}\r\n",
                now() - 3600
            ),
            "stale_timestamp",
        ),
        (
            &format!(
                "webhook-id: evt_1\r\nwebhook-timestamp: {}\r\nwebhook-signature: v1,short\r\n",
                now()
            ),
            "invalid_signature",
        ),
    ];
    for (headers, code) in cases {
        let mut stream = TcpStream::connect(addr(&env)).await.unwrap();
        // 1000 bytes announced, none sent: only the headers can decide.
        stream
            .write_all(head(1000, headers).as_bytes())
            .await
            .unwrap();
        let (status, body) = read_response(&mut stream).await;
        assert_eq!(status, 401, "{headers:?}: {body}");
        assert_eq!(body["error"]["code"], code, "{headers:?}: {body}");
    }
    assert_eq!(env.stored().await, 0);
    env.stop().await;
}

#[tokio::test]
async fn five_hundred_slow_clients_do_not_stop_a_valid_webhook() {
    // Long listener bounds, so the slow clients are still held while the valid webhook is sent.
    let env = Env::start(
        SandboxConfig::default(),
        &[
            ("TGB_HTTP__HEADER_READ_TIMEOUT_MS", "600000".into()),
            ("TGB_HTTP__REQUEST_TIMEOUT_MS", "600000".into()),
        ],
    )
    .await;
    let addr = addr(&env);
    let mut slow = Vec::new();
    let mut refused = Vec::new();
    for i in 0..500 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        match i % 5 {
            // Headers that never end.
            0 | 1 => stream
                .write_all(b"POST /webhooks/tg HTTP/1.1\r\nHost: tg-ingress\r\nX-Slow: ")
                .await
                .unwrap(),
            // Well-formed headers (a signature that will not match), then a trickle of body.
            2 | 3 => {
                let headers = format!(
                    "webhook-id: evt_slow_{i}\r\nwebhook-timestamp: {}\r\n\
                     webhook-signature: v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n",
                    now()
                );
                stream
                    .write_all(format!("{}{{\"id\":", head(100_000, &headers)).as_bytes())
                    .await
                    .unwrap();
            }
            // No signature, a body announced and never sent: refused from the headers.
            _ => {
                stream
                    .write_all(head(100_000, "").as_bytes())
                    .await
                    .unwrap();
                refused.push(stream);
                continue;
            }
        }
        slow.push(stream);
    }
    for stream in &mut refused {
        let (status, body) = read_response(stream).await;
        assert_eq!(status, 401, "{body}");
    }

    let body = case_created("evt_amid_slow_clients", "C-SLOW");
    let started = Instant::now();
    let response = tokio::time::timeout(
        tgb_testkit::HANG_GUARD,
        env.post_signed("evt_amid_slow_clients", now(), SECRET, &body),
    )
    .await
    .expect("the valid webhook is answered");
    let latency = started.elapsed();
    assert_eq!(response.status(), 200);
    println!(
        "valid webhook answered in {:.1} ms while {} slow clients held connections \
         ({} unsigned ones were refused from their headers)",
        latency.as_secs_f64() * 1000.0,
        slow.len(),
        refused.len()
    );
    assert_eq!(env.stored().await, 1);
    // The slow clients hang up, so shutdown has nothing left to drain.
    drop(slow);
    env.stop().await;
}
