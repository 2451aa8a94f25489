//! TG delivering webhooks duplicated (×3) and out of order; the webhook path down for a
//! stretch while the feed poller recovers.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rand::seq::SliceRandom as _;
use tgb_fault_suite::Options;
use tgb_fault_suite::progress::{Progress, wait_for};
use tgb_fault_suite::system::INGRESS_SUBSCRIPTION;
use tgb_fault_suite::workload::{Expected, publish_poison, raise_range};
use tgb_sandbox::tg::model::TgEvent;

use crate::support::Run;

/// Delivers one event as TG would (Standard Webhooks signature), retrying until tg-ingress
/// answers 2xx, as TG does.
async fn deliver(http: &reqwest::Client, url: &str, secret: &str, event: &TgEvent) {
    let body = serde_json::to_vec(event).expect("event JSON");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let sig =
            tgb_sandbox::webhooks::signature_header(&[secret.to_owned()], &event.id, ts, &body)
                .expect("signature");
        let answer = http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body.clone())
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => return,
            Ok(r) if r.status().is_client_error() => {
                panic!("tg-ingress refused {}: {}", event.id, r.status())
            }
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("{} not accepted within 60 s: {other:?}", event.id),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_tripled_and_out_of_order_lose_and_double_nothing() {
    // Only our deliveries reach tg-ingress: the subscription is paused and the feed is polled
    // at start only (before the burst).
    let opts = Options {
        extra_env: vec![("TGB_TG_INGRESS__POLL_INTERVAL_MS".into(), "3600000".into())],
        ..Options::default()
    };
    let (sys, burst) = Run::system(opts).await;
    sys.sandbox
        .tg()
        .webhooks()
        .set_paused(INGRESS_SUBSCRIPTION, true);
    let started = Instant::now();
    let poison = publish_poison(&sys).await.expect("poison");
    let mut expected = Expected::new();
    raise_range(&sys, &burst, 0..burst.cases, &mut expected).expect("burst raised");
    let events = sys.sandbox.tg().events();
    // Each event three times, shuffled within windows of 40 events: a comment or a resolution
    // often arrives before its case, and copies arrive apart.
    let mut deliveries = Vec::new();
    let mut rng = rand::rng();
    for window in events.chunks(40) {
        let mut w: Vec<&TgEvent> = window.iter().flat_map(|e| [e, e, e]).collect();
        w.shuffle(&mut rng);
        deliveries.extend(w);
    }
    let url = format!("http://{}/webhooks/tg", sys.process("tg-ingress").addr);
    let (http, secret) = (sys.http.clone(), sys.webhook_secret.clone());
    let run = Run::running(
        "webhooks ×3, out of order",
        sys,
        burst,
        expected,
        poison,
        started,
    );
    futures::stream::iter(deliveries)
        .for_each_concurrent(16, |e| deliver(&http, &url, &secret, e))
        .await;
    println!(
        "{} webhooks delivered for {} events",
        events.len() * 3,
        events.len()
    );
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_path_down_for_a_stretch_the_poller_recovers_everything() {
    let (mut sys, burst) = Run::system(Options::default()).await;
    let started = Instant::now();
    let poison = publish_poison(&sys).await.expect("poison");
    let mut expected = Expected::new();
    let quarter = burst.cases / 4;
    raise_range(&sys, &burst, 0..quarter, &mut expected).expect("first quarter raised");
    wait_for(
        &mut sys,
        Progress::WebhooksDelivered,
        1,
        Duration::from_secs(60),
    )
    .await
    .expect("the webhook path works");
    // The path goes down: the rest of the burst is only in TG's feed.
    sys.sandbox
        .tg()
        .webhooks()
        .set_paused(INGRESS_SUBSCRIPTION, true);
    raise_range(&sys, &burst, quarter..burst.cases, &mut expected).expect("rest raised");
    // Every case reaches Dynamics while the path is still down: only the poller can have
    // brought them.
    wait_for(
        &mut sys,
        Progress::Incidents,
        burst.cases as u64,
        Duration::from_secs(180),
    )
    .await
    .expect("the poller recovers every case while webhooks are down");
    let skipped = sys
        .sandbox
        .tg()
        .webhooks()
        .stats(INGRESS_SUBSCRIPTION)
        .map(|s| s.skipped_paused)
        .unwrap_or(0);
    assert!(skipped > 0, "the outage kept events from the webhook path");
    sys.sandbox
        .tg()
        .webhooks()
        .set_paused(INGRESS_SUBSCRIPTION, false);
    println!("{skipped} events not sent by webhook during the outage");
    let run = Run::running("webhook path down", sys, burst, expected, poison, started);
    run.finish().await;
}
