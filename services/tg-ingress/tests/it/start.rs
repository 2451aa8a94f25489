//! Where the feed poller starts on its first start (`[tg_ingress] start_from`).

use std::collections::BTreeSet;

use tg_ingress::poller::FeedCursor;
use tgb_sandbox::tg::model::{PartnerRef, RaiseCase};
use tgb_sandbox::{Sandbox, SandboxConfig};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::support::Env;

fn partner() -> PartnerRef {
    PartnerRef {
        qualifier: "ZZ".into(),
        id: "ACME01".into(),
        name: "Acme Corp".into(),
    }
}

/// A sandbox whose TG feed holds `n` cases raised at `at`, ids returned.
async fn seeded(n: usize, at: OffsetDateTime, sandbox: Option<Sandbox>) -> (Sandbox, Vec<String>) {
    let sandbox = match sandbox {
        Some(s) => s,
        None => Sandbox::start(SandboxConfig::default()).await.unwrap(),
    };
    let tg = sandbox.tg();
    tg.set_occurred_at(Some(at));
    let ids = (0..n)
        .map(|i| {
            tg.raise_case(RaiseCase::new(partner(), format!("old {i}")))
                .unwrap()
                .id
        })
        .collect();
    tg.set_occurred_at(None);
    (sandbox, ids)
}

/// Waits until the stored cursor says the poller has read the feed to `end` and caught up.
async fn caught_up(env: &Env, end: usize) -> FeedCursor {
    let kv = env.js.get_key_value("tgb_cursors").await.unwrap();
    tgb_testkit::eventually(
        "the poller caught up with the feed",
        tgb_testkit::HANG_GUARD,
        || async {
            let c = FeedCursor::parse(&kv.get("tg.events").await.ok()??);
            (c.caught_up && c.after == end.to_string()).then_some(c)
        },
    )
    .await
    .unwrap()
}

/// The TG event ids behind the stored events (their derived event ids mapped back).
async fn stored_tg_ids(env: &Env) -> BTreeSet<String> {
    let by_event_id: std::collections::HashMap<String, String> = env
        .sandbox
        .tg()
        .events()
        .iter()
        .map(|e| {
            let t = OffsetDateTime::parse(&e.occurred_at, &Rfc3339).unwrap();
            (
                tg_ingress::mapping::event_id(&e.id, t).to_string(),
                e.id.clone(),
            )
        })
        .collect();
    env.stored_ids()
        .await
        .into_iter()
        .map(|(_, id)| by_event_id[&id].clone())
        .collect()
}

async fn case_messages(env: &Env) -> u64 {
    let mut stream = env.js.get_stream("TGB_EVENTS").await.unwrap();
    let info = stream.info().await.unwrap();
    // With no event stored the subject breakdown is empty; count it when there are some.
    if info.state.messages == 0 {
        return 0;
    }
    use futures::TryStreamExt as _;
    let mut n = 0;
    let mut subjects = stream.info_with_subjects("tgb.v1.tg.case.>").await.unwrap();
    while let Some((_, count)) = subjects.try_next().await.unwrap() {
        n += count as u64;
    }
    n
}

#[tokio::test]
async fn a_first_start_publishes_none_of_1000_old_events_and_then_a_new_one() {
    let (sandbox, _) = seeded(1000, OffsetDateTime::now_utc() - Duration::days(30), None).await;
    let env = Env::start_with(
        sandbox,
        &[("TGB_TG_INGRESS__POLL_INTERVAL_MS", "100".into())],
    )
    .await;

    let cursor = caught_up(&env, 1000).await;
    assert_eq!(cursor.start_from.as_deref(), Some("now"));
    assert_eq!(cursor.skipped, 1000);
    assert_eq!(case_messages(&env).await, 0, "no old case reached the bus");
    assert_eq!(env.stored().await, 0, "nothing at all reached the bus");

    let new = env
        .sandbox
        .tg()
        .raise_case(RaiseCase::new(partner(), "after the start"))
        .unwrap();
    caught_up(&env, 1001).await;
    tgb_testkit::eventually(
        "the new case published",
        tgb_testkit::HANG_GUARD,
        || async { (env.stored().await == 1).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(case_messages(&env).await, 1);
    assert_eq!(stored_tg_ids(&env).await, BTreeSet::from([new.id]));
    env.stop().await;
}

#[tokio::test]
async fn beginning_replays_the_whole_feed() {
    let (sandbox, ids) = seeded(120, OffsetDateTime::now_utc() - Duration::days(30), None).await;
    let env = Env::start_with(
        sandbox,
        &[
            ("TGB_TG_INGRESS__POLL_INTERVAL_MS", "100".into()),
            ("TGB_TG_INGRESS__POLL_PAGE_SIZE", "50".into()),
            ("TGB_TG_INGRESS__START_FROM", "beginning".into()),
        ],
    )
    .await;
    let cursor = caught_up(&env, 120).await;
    assert_eq!(cursor.start_from.as_deref(), Some("beginning"));
    assert_eq!(cursor.skipped, 0);
    assert_eq!(case_messages(&env).await, 120);
    assert_eq!(stored_tg_ids(&env).await, ids.into_iter().collect());
    env.stop().await;
}

#[tokio::test]
async fn a_start_time_replays_only_the_events_that_occurred_from_then() {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let (sandbox, _older) = seeded(40, now - Duration::days(10), None).await;
    let (sandbox, newer) = seeded(30, now - Duration::days(5), Some(sandbox)).await;
    let start = (now - Duration::days(7)).format(&Rfc3339).unwrap();
    let env = Env::start_with(
        sandbox,
        &[
            ("TGB_TG_INGRESS__POLL_INTERVAL_MS", "100".into()),
            ("TGB_TG_INGRESS__POLL_PAGE_SIZE", "25".into()),
            ("TGB_TG_INGRESS__START_FROM", start.clone()),
        ],
    )
    .await;
    let cursor = caught_up(&env, 70).await;
    assert_eq!(cursor.start_from.as_deref(), Some(start.as_str()));
    assert_eq!(cursor.skipped, 40);
    assert_eq!(case_messages(&env).await, 30);
    assert_eq!(stored_tg_ids(&env).await, newer.into_iter().collect());
    env.stop().await;
}
