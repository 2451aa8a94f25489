use tgb_sandbox::SandboxConfig;
use tgb_sandbox::config::{RetryConfig, WebhookSubscriptionConfig};
use tgb_sandbox::tg::model::{PartnerRef, RaiseCase};

use crate::support::{Env, SECRET};

#[tokio::test]
async fn events_missed_while_webhooks_are_paused_are_recovered_by_the_poller_once() {
    let env = Env::start(
        SandboxConfig::default(),
        &[("TGB_TG_INGRESS__POLL_INTERVAL_MS", "200".into())],
    )
    .await;
    let webhooks = env.sandbox.tg().webhooks();
    webhooks.set_retry(RetryConfig {
        base_ms: 100,
        cap_ms: 400,
        ..RetryConfig::default()
    });
    webhooks
        .add(WebhookSubscriptionConfig {
            name: "ingress".into(),
            url: env.webhook_url(),
            secrets: vec![SECRET.into()],
        })
        .unwrap();
    let partner = PartnerRef {
        qualifier: "ZZ".into(),
        id: "ACME01".into(),
        name: "Acme Corp".into(),
    };
    let tg = env.sandbox.tg();
    for i in 0..5 {
        tg.raise_case(RaiseCase::new(partner.clone(), format!("live {i}")))
            .unwrap();
    }
    tgb_testkit::eventually("delivered by webhook", tgb_testkit::HANG_GUARD, || async {
        (webhooks.stats("ingress").unwrap().delivered == 5).then_some(())
    })
    .await
    .unwrap();

    webhooks.set_paused("ingress", true);
    for i in 0..10 {
        tg.raise_case(RaiseCase::new(partner.clone(), format!("missed {i}")))
            .unwrap();
    }
    assert_eq!(webhooks.stats("ingress").unwrap().skipped_paused, 10);

    // The poller reads the whole feed up to its end: cursor = 15.
    let kv = env.js.get_key_value("tgb_cursors").await.unwrap();
    tgb_testkit::eventually(
        "cursor at the end of the feed",
        tgb_testkit::HANG_GUARD,
        || async {
            let v = kv.get("tg.events").await.ok()??;
            (tg_ingress::poller::FeedCursor::parse(&v).after == "15").then_some(())
        },
    )
    .await
    .unwrap();
    let stored = env.stored_ids().await;
    assert_eq!(stored.len(), 15, "webhook + feed = one event each");
    let expected: std::collections::BTreeSet<String> = tg
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
