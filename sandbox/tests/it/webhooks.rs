use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tgb_sandbox::config::{RetryConfig, WebhookSubscriptionConfig};
use tgb_sandbox::tg::model::{PartnerComment, Person, RaiseCase};
use tgb_sandbox::{Sandbox, SandboxConfig};

use crate::common::*;

const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const VECTOR_TS: i64 = 1614265330;
const VECTOR_BODY: &str = r#"{"test": 2432232314}"#;
const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

/// The receiving side, written from the Standard Webhooks specification only.
fn verify(secrets: &[&str], headers: &HeaderMap, body: &[u8], now: i64) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sigs)) = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(ts_num) = ts.parse::<i64>() else {
        return false;
    };
    if (now - ts_num).abs() > 300 {
        return false;
    }
    let signed = format!("{id}.{ts}.{}", String::from_utf8_lossy(body));
    secrets.iter().any(|secret| {
        let key = STANDARD.decode(&secret["whsec_".len()..]).unwrap();
        sigs.split(' ').any(|entry| {
            let Some(b64) = entry.strip_prefix("v1,") else {
                return false;
            };
            let Ok(sig) = STANDARD.decode(b64) else {
                return false;
            };
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            mac.update(signed.as_bytes());
            mac.verify_slice(&sig).is_ok()
        })
    })
}

fn vector_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("webhook-id", VECTOR_ID.parse().unwrap());
    h.insert("webhook-timestamp", VECTOR_TS.to_string().parse().unwrap());
    h.insert("webhook-signature", VECTOR_SIG.parse().unwrap());
    h
}

#[test]
fn signer_reproduces_the_standard_webhooks_test_vector() {
    let sig =
        tgb_sandbox::webhooks::sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY.as_bytes())
            .unwrap();
    assert_eq!(sig, VECTOR_SIG);
}

#[test]
fn independent_verifier_accepts_the_vector_and_rejects_tampering() {
    let h = vector_headers();
    assert!(verify(
        &[VECTOR_SECRET],
        &h,
        VECTOR_BODY.as_bytes(),
        VECTOR_TS
    ));
    assert!(!verify(
        &[VECTOR_SECRET],
        &h,
        br#"{"test": 2432232315}"#,
        VECTOR_TS
    ));
    assert!(!verify(
        &[VECTOR_SECRET],
        &h,
        VECTOR_BODY.as_bytes(),
        VECTOR_TS + 301
    ));
    let mut empty = h.clone();
    empty.insert("webhook-signature", "".parse().unwrap());
    assert!(!verify(
        &[VECTOR_SECRET],
        &empty,
        VECTOR_BODY.as_bytes(),
        VECTOR_TS
    ));
}

#[test]
fn secrets_without_the_whsec_prefix_or_base64_are_refused() {
    use tgb_sandbox::webhooks::{SecretError, sign};
    assert_eq!(
        sign("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "i", 1, b""),
        Err(SecretError::Prefix)
    );
    assert_eq!(sign("whsec_!!!", "i", 1, b""), Err(SecretError::Base64));
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    pub answers: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    pub async fn start() -> (Self, String) {
        let receiver = Receiver::default();
        let app = axum::Router::new()
            .route(
                "/webhooks/tg",
                axum::routing::post(
                    |State(r): State<Receiver>, headers: HeaderMap, body: Bytes| async move {
                        r.got.lock().unwrap().push((headers, body));
                        let status = r.answers.lock().unwrap().pop_front().unwrap_or(200);
                        StatusCode::from_u16(status).unwrap()
                    },
                ),
            )
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks/tg", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    pub fn received(&self) -> Vec<(HeaderMap, Bytes)> {
        self.got.lock().unwrap().clone()
    }
}

fn fast_retry() -> RetryConfig {
    RetryConfig {
        base_ms: 5,
        cap_ms: 20,
        max_attempts: 5,
        attempt_timeout_ms: 5_000,
        max_in_flight: 8,
    }
}

async fn sandbox_with_receiver(secrets: &[&str]) -> (Sandbox, Receiver) {
    let (receiver, url) = Receiver::start().await;
    let mut config = SandboxConfig::default();
    config.tg.webhook_retry = fast_retry();
    config.tg.webhooks.push(WebhookSubscriptionConfig {
        name: "ingress".into(),
        url,
        secrets: secrets.iter().map(|s| s.to_string()).collect(),
    });
    (start_with(config).await, receiver)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

const OTHER_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=";

#[tokio::test]
async fn delivered_webhooks_verify_with_every_active_secret() {
    let (sb, receiver) = sandbox_with_receiver(&[VECTOR_SECRET, OTHER_SECRET]).await;
    let event = sb
        .tg()
        .raise_case(RaiseCase::new(acme_ref(), "Pallets short"))
        .unwrap();
    let got = wait_for(WAIT_SECS, || {
        let r = receiver.received();
        async move { r.first().cloned() }
    })
    .await;
    let (headers, body) = got;
    assert_eq!(headers["webhook-id"], event.id.as_str());
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    assert!(verify(&[VECTOR_SECRET], &headers, &body, now()));
    assert!(verify(&[OTHER_SECRET], &headers, &body, now()));
    assert!(!verify(&["whsec_d3Jvbmc="], &headers, &body, now()));
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["type"], "case.created");
    assert_eq!(body["id"], event.id);
    assert_eq!(body["partner"]["qualifier"], "ZZ");
    assert_eq!(body["data"]["title"], "Pallets short");
}

#[tokio::test]
async fn rotated_secrets_sign_the_next_delivery() {
    let (sb, receiver) = sandbox_with_receiver(&[VECTOR_SECRET]).await;
    let r = http()
        .put(format!(
            "{}/_sandbox/tg/webhooks/ingress/secrets",
            sb.base_url()
        ))
        .json(&serde_json::json!({"secrets": [OTHER_SECRET]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT);
    sb.tg()
        .raise_case(RaiseCase::new(acme_ref(), "after rotation"))
        .unwrap();
    let (headers, body) = wait_for(WAIT_SECS, || {
        let r = receiver.received();
        async move { r.first().cloned() }
    })
    .await;
    assert!(verify(&[OTHER_SECRET], &headers, &body, now()));
    assert!(!verify(&[VECTOR_SECRET], &headers, &body, now()));
}

#[tokio::test]
async fn a_receiver_answering_500_gets_the_same_webhook_id_again_until_200() {
    let (sb, receiver) = sandbox_with_receiver(&[VECTOR_SECRET]).await;
    receiver.answers.lock().unwrap().extend([500, 503]);
    let event = sb
        .tg()
        .raise_case(RaiseCase::new(acme_ref(), "retry me"))
        .unwrap();
    let stats = wait_for(WAIT_SECS, || {
        let s = sb.tg().webhooks().stats("ingress").unwrap();
        async move { (s.delivered == 1).then_some(s) }
    })
    .await;
    assert_eq!(stats.attempts, 3);
    assert_eq!(stats.failed_attempts, 2);
    assert_eq!(stats.pending, 0);
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    for (headers, body) in &got {
        assert_eq!(headers["webhook-id"], event.id.as_str());
        assert!(verify(&[VECTOR_SECRET], headers, body, now()));
    }
    let attempts = sb.tg().webhooks().deliveries("ingress").unwrap();
    let statuses: Vec<_> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![Some(500), Some(503), Some(200)]);
}

#[tokio::test]
async fn an_unreachable_receiver_is_retried_then_given_up() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/webhooks/tg", listener.local_addr().unwrap());
    drop(listener);
    let mut config = SandboxConfig::default();
    config.tg.webhook_retry = RetryConfig {
        max_attempts: 3,
        ..fast_retry()
    };
    config.tg.webhooks.push(WebhookSubscriptionConfig {
        name: "gone".into(),
        url,
        secrets: vec![VECTOR_SECRET.into()],
    });
    let sb = start_with(config).await;
    sb.tg()
        .raise_case(RaiseCase::new(acme_ref(), "nobody home"))
        .unwrap();
    let stats = wait_for(WAIT_SECS, || {
        let s = sb.tg().webhooks().stats("gone").unwrap();
        async move { (s.gave_up == 1).then_some(s) }
    })
    .await;
    assert_eq!((stats.attempts, stats.delivered, stats.pending), (3, 0, 0));
    let attempts = sb.tg().webhooks().deliveries("gone").unwrap();
    assert!(
        attempts
            .iter()
            .all(|a| a.status.is_none() && a.error.is_some())
    );
}

#[tokio::test]
async fn paused_subscription_skips_events_that_still_reach_the_feed() {
    let (sb, receiver) = sandbox_with_receiver(&[VECTOR_SECRET]).await;
    let base = sb.base_url();
    let r = http()
        .post(format!("{base}/_sandbox/tg/webhooks/ingress/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT);
    let during = raise_case(&sb, "while paused").await;
    sb.tg()
        .partner_comment(
            &during,
            PartnerComment {
                author: Person {
                    name: "Ann".into(),
                    email: "ann@acme.example".into(),
                },
                body: "hello?".into(),
            },
        )
        .unwrap();
    let stats = sb.tg().webhooks().stats("ingress").unwrap();
    assert_eq!((stats.skipped_paused, stats.events), (2, 0));
    assert_eq!(sb.tg().events().len(), 2);

    http()
        .post(format!("{base}/_sandbox/tg/webhooks/ingress/resume"))
        .send()
        .await
        .unwrap();
    let after = sb
        .tg()
        .raise_case(RaiseCase::new(acme_ref(), "after resume"))
        .unwrap();
    wait_for(WAIT_SECS, || {
        let s = sb.tg().webhooks().stats("ingress").unwrap();
        async move { (s.delivered == 1).then_some(()) }
    })
    .await;
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0["webhook-id"], after.id.as_str());
    let listed: Value = http()
        .get(format!("{base}/_sandbox/tg/webhooks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["subscriptions"][0]["stats"]["skipped_paused"], 2);
    assert_eq!(listed["subscriptions"][0]["paused"], false);
}

#[tokio::test]
async fn subscriptions_can_be_added_at_run_time_over_http() {
    let sb = start().await;
    let (receiver, url) = Receiver::start().await;
    let r = http()
        .post(format!("{}/_sandbox/tg/webhooks", sb.base_url()))
        .json(&serde_json::json!({"name": "late", "url": url, "secrets": [VECTOR_SECRET]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let bad = http()
        .post(format!("{}/_sandbox/tg/webhooks", sb.base_url()))
        .json(&serde_json::json!({"name": "bad", "url": url, "secrets": ["plain"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
    raise_case(&sb, "x").await;
    wait_for(WAIT_SECS, || {
        let n = receiver.received().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn every_event_is_delivered_once_after_a_stretch_of_503s() {
    let (sb, receiver) = sandbox_with_receiver(&[VECTOR_SECRET]).await;
    sb.tg().webhooks().set_retry(RetryConfig {
        max_attempts: 100,
        ..fast_retry()
    });
    receiver
        .answers
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n(503, 150));
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(
            sb.tg()
                .raise_case(RaiseCase::new(acme_ref(), format!("bulk {i}")))
                .unwrap()
                .id,
        );
    }
    let stats = wait_for(WAIT_SECS, || {
        let s = sb.tg().webhooks().stats("ingress").unwrap();
        async move { (s.delivered == 100).then_some(s) }
    })
    .await;
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.gave_up, 0);
    assert_eq!(stats.failed_attempts, 150);
    let attempts = sb.tg().webhooks().deliveries("ingress").unwrap();
    let mut delivered: Vec<String> = attempts
        .iter()
        .filter(|a| a.status == Some(200))
        .map(|a| a.webhook_id.clone())
        .collect();
    delivered.sort();
    ids.sort();
    assert_eq!(delivered, ids, "each event delivered exactly once");
    let over_http: Value = http()
        .get(format!(
            "{}/_sandbox/tg/webhooks/ingress/deliveries",
            sb.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http["deliveries"].as_array().unwrap().len(), 250);
}
