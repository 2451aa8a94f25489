use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};
use tgb_sandbox::SandboxConfig;
use tgb_sandbox::config::{RetryConfig, WebhookSubscriptionConfig};

use crate::support::{Env, SECRET, SECRET_NEW, case_created, now};

async fn answer(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn each_kind_of_webhook_gets_its_documented_answer_and_only_valid_ones_are_stored() {
    let env = Env::start(SandboxConfig::default(), &[]).await;

    // Signed and valid: 200 after the PubAck.
    let body = case_created("evt_valid", "C-1");
    let (status, json) = answer(env.post_signed("evt_valid", now(), SECRET, &body).await).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["subject"], "tgb.v1.tg.case.opened");
    assert_eq!(json["duplicate"], false);

    // Signed with the second (rotated-in) secret only: accepted too.
    let body = case_created("evt_rotated", "C-2");
    let (status, _) = answer(
        env.post_signed("evt_rotated", now(), SECRET_NEW, &body)
            .await,
    )
    .await;
    assert_eq!(status, 200);

    // Unsigned: 401.
    let r = env
        .http
        .post(env.webhook_url())
        .body(case_created("evt_unsigned", "C-3"))
        .send()
        .await
        .unwrap();
    let (status, json) = answer(r).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (401, Some("missing_signature"))
    );

    // Expired: signed correctly, 301 s old: 401.
    let body = case_created("evt_old", "C-4");
    let (status, json) = answer(env.post_signed("evt_old", now() - 301, SECRET, &body).await).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (401, Some("stale_timestamp"))
    );

    // Tampered: the signature of one body, another body sent.
    let signed = case_created("evt_tampered", "C-5");
    let sent = case_created("evt_tampered", "C-6");
    let ts = now();
    let sig = tgb_sandbox::webhooks::sign(SECRET, "evt_tampered", ts, &signed).unwrap();
    let r = env
        .http
        .post(env.webhook_url())
        .header("webhook-id", "evt_tampered")
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(sent)
        .send()
        .await
        .unwrap();
    let (status, json) = answer(r).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (401, Some("invalid_signature"))
    );

    // A signature from an unknown secret, and an empty one.
    let body = case_created("evt_other_secret", "C-7");
    let (status, _) = answer(
        env.post_signed(
            "evt_other_secret",
            now(),
            "whsec_c29tZW9uZS1lbHNlcw==",
            &body,
        )
        .await,
    )
    .await;
    assert_eq!(status, 401);
    let r = env
        .http
        .post(env.webhook_url())
        .header("webhook-id", "evt_empty")
        .header("webhook-timestamp", now().to_string())
        .header("webhook-signature", "")
        .body(case_created("evt_empty", "C-8"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Oversized: 1 MiB + 1, signed: 413.
    let mut big = case_created("evt_big", "C-9");
    big.resize((1 << 20) + 1, b' ');
    let (status, json) = answer(env.post_signed("evt_big", now(), SECRET, &big).await).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    // Malformed, signed: 400 naming the field.
    let mut bad: Value = serde_json::from_slice(&case_created("evt_bad", "C-10")).unwrap();
    bad["data"]["revision"] = json!("three");
    let bad = serde_json::to_vec(&bad).unwrap();
    let (status, json) = answer(env.post_signed("evt_bad", now(), SECRET, &bad).await).await;
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["error"]["code"], "invalid_body");
    assert_eq!(json["error"]["field"], "data.revision");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("data.revision: invalid type")
    );
    let (status, _) = answer(
        env.post_signed("evt_nojson", now(), SECRET, b"{not json")
            .await,
    )
    .await;
    assert_eq!(status, 400);

    // Unknown type, signed: acknowledged and kept on its own subject.
    let unknown = serde_json::to_vec(&json!({
        "id": "evt_unknown", "type": "shipment.teleported", "occurred_at": "2026-11-21T09:14:03Z",
        "community_id": "retail-suppliers",
        "partner": {"qualifier": "ZZ", "id": "ACME01", "name": "Acme Corp"},
        "data": {"case_id": "C-1", "beam": "up"}
    }))
    .unwrap();
    let (status, json) = answer(
        env.post_signed("evt_unknown", now(), SECRET, &unknown)
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json["subject"], "tgb.v1.tg.unknown.received");

    // Exactly the three accepted ones reached the stream.
    let stored = env.stored_ids().await;
    let subjects: Vec<&str> = stored.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "tgb.v1.tg.case.opened",
            "tgb.v1.tg.case.opened",
            "tgb.v1.tg.unknown.received"
        ]
    );
    // The unknown event kept the raw body.
    let stream = env.js.get_stream("TGB_EVENTS").await.unwrap();
    let m = stream.get_raw_message(3).await.unwrap();
    let ev = tgb_proto::Event::decode(&m.subject, &m.payload).unwrap();
    let tgb_proto::Event::TgUnknownEvent(u) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(u.raw, unknown);
    assert_eq!(u.tg_type, "shipment.teleported");

    let metrics = env
        .http
        .get(format!("{}/metrics", env.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tgb_tg_webhook_signature_failures_total"),
        "{metrics}"
    );
    assert!(metrics.contains("tgb_tg_webhooks_total"));
    env.stop().await;
}

#[tokio::test]
async fn a_thousand_webhooks_with_retries_are_stored_exactly_once() {
    let env = Env::start(SandboxConfig::default(), &[]).await;
    // 1,000 events; the first 100 sent twice, the next 50 three times (10% and 5%).
    let mut sends: Vec<usize> = (0..1000).collect();
    sends.extend(0..100);
    sends.extend(100..150);
    sends.extend(100..150);
    // Interleave the repeats with the rest.
    sends.sort_by_key(|i| (i * 7919) % 1000);
    let bodies: Vec<Vec<u8>> = (0..1000)
        .map(|i| case_created(&format!("evt_bulk_{i}"), &format!("C-{i}")))
        .collect();
    let results: Vec<(u16, bool)> = futures::stream::iter(sends.iter().copied())
        .map(|i| {
            let env = &env;
            let body = &bodies[i];
            async move {
                let r = env
                    .post_signed(&format!("evt_bulk_{i}"), now(), SECRET, body)
                    .await;
                let (status, json) = answer(r).await;
                (status, json["duplicate"].as_bool().unwrap_or(false))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(results.len(), 1200);
    assert!(
        results.iter().all(|(s, _)| *s == 200),
        "every send is acknowledged"
    );
    assert_eq!(results.iter().filter(|(_, dup)| *dup).count(), 200);
    assert_eq!(env.stored().await, 1000);
    env.stop().await;
}

fn subscribed_sandbox(url: String) -> SandboxConfig {
    let mut config = SandboxConfig::default();
    config.tg.webhooks = vec![WebhookSubscriptionConfig {
        name: "ingress".into(),
        url,
        secrets: vec![SECRET.into()],
    }];
    config.tg.webhook_retry = RetryConfig {
        base_ms: 100,
        cap_ms: 400,
        max_attempts: 1000,
        attempt_timeout_ms: 5000,
        max_in_flight: 32,
    };
    config
}

#[tokio::test]
async fn with_nats_stopped_webhooks_get_503_and_the_retries_deliver_everything_once() {
    // The webhook subscription is added once the ingress port is known.
    let mut env = Env::start(
        SandboxConfig::default(),
        // Poll only at start (the feed is empty then): the webhooks alone must deliver.
        &[("TGB_TG_INGRESS__POLL_INTERVAL_MS", "3600000".into())],
    )
    .await;
    let sub = subscribed_sandbox(env.webhook_url()).tg.webhooks.remove(0);
    env.sandbox.tg().webhooks().add(sub).unwrap();
    env.sandbox
        .tg()
        .webhooks()
        .set_retry(subscribed_sandbox(String::new()).tg.webhook_retry);
    let tg = env.sandbox.tg().clone();
    let partner = tgb_sandbox::tg::model::PartnerRef {
        qualifier: "ZZ".into(),
        id: "ACME01".into(),
        name: "Acme Corp".into(),
    };
    let raise = |title: String| {
        tg.raise_case(tgb_sandbox::tg::model::RaiseCase::new(
            partner.clone(),
            title,
        ))
        .unwrap()
    };
    raise("before the outage".into());
    tgb_testkit::eventually("first stored", tgb_testkit::HANG_GUARD, || async {
        (env.stored().await == 1).then_some(())
    })
    .await
    .unwrap();

    env.nats.stop().await;
    let raised: Vec<_> = (0..20)
        .map(|i| raise(format!("during the outage {i}")))
        .collect();
    // A direct delivery during the outage: 503 with Retry-After.
    let body = case_created("evt_outage_direct", "C-X");
    let r = env
        .post_signed("evt_outage_direct", now(), SECRET, &body)
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    // Every event of the outage was refused at least once, with a 503.
    tgb_testkit::eventually(
        "every outage event refused",
        tgb_testkit::HANG_GUARD,
        || async {
            let attempts = env.sandbox.tg().webhooks().deliveries("ingress").unwrap();
            raised
                .iter()
                .all(|e| {
                    attempts
                        .iter()
                        .any(|a| a.webhook_id == e.id && a.status == Some(503))
                })
                .then_some(())
        },
    )
    .await
    .unwrap();
    env.nats.start_again().await.unwrap();
    tgb_testkit::eventually("all delivered", tgb_testkit::HANG_GUARD, || async {
        let s = env.sandbox.tg().webhooks().stats("ingress").unwrap();
        (s.delivered == 21 && s.pending == 0).then_some(())
    })
    .await
    .unwrap();
    let stored = env.stored_ids().await;
    assert_eq!(stored.len(), 21, "every event once: {stored:?}");
    let expected: std::collections::BTreeSet<String> = env
        .sandbox
        .tg()
        .events()
        .iter()
        .map(|e| {
            let t = time::OffsetDateTime::parse(
                &e.occurred_at,
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap();
            tg_ingress::mapping::event_id(&e.id, t).to_string()
        })
        .collect();
    let got: std::collections::BTreeSet<String> = stored.into_iter().map(|(_, id)| id).collect();
    assert_eq!(got, expected);
    env.stop().await;
}

/// Throughput of the webhook route: signed webhooks per second answered 200 (after PubAck).
/// `cargo test -p tg-ingress --release -- --ignored --nocapture ingress_throughput`
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn ingress_throughput() {
    let env = Env::start(SandboxConfig::default(), &[]).await;
    let senders = 32;
    let run_for = Duration::from_secs(5);
    let started = Instant::now();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    futures::stream::iter(0..senders)
        .for_each_concurrent(senders, |s| {
            let env = &env;
            let counter = &counter;
            async move {
                let mut i = 0;
                while started.elapsed() < run_for {
                    let id = format!("evt_tp_{s}_{i}");
                    let body = case_created(&id, &format!("C-{s}-{i}"));
                    let r = env.post_signed(&id, now(), SECRET, &body).await;
                    assert_eq!(r.status(), 200);
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    i += 1;
                }
            }
        })
        .await;
    let n = counter.load(std::sync::atomic::Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ingress throughput: {n} webhooks in {secs:.2} s with {senders} senders = {:.0}/s",
        n as f64 / secs
    );
    assert_eq!(env.stored().await as usize, n);
    env.stop().await;
}
